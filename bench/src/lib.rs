//! canopy's workloads, simulator driver and reports, behind the `canopy-bench` binary.

pub mod docs;
pub mod faults;
pub mod ingest;
pub mod replication;
pub mod report;
pub mod scale;
pub mod sim;
pub mod tables;
pub mod threads;
pub mod topics;

use hdrhistogram::Histogram;

/// Longest latency a histogram tracks exactly, in microseconds (one hour); longer ones are
/// counted as one hour.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// A histogram of latencies in microseconds, 3 significant figures, from 1 µs to an hour.
///
/// Bounds are fixed up front: `saturating_record` on an auto-resizing histogram clamps to its
/// current (tiny) range instead of growing it.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_histograms_keep_large_values() {
        let mut histogram = latency_histogram();
        for micros in [150, 1_500, 15_000, 2_000_000] {
            histogram.saturating_record(micros);
        }
        assert_eq!(histogram.value_at_quantile(0.5), histogram.highest_equivalent(1_500));
        assert!(histogram.max() >= 2_000_000, "max {}", histogram.max());
    }
}
