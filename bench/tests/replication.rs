//! The replication benchmark runs end to end on loopback (no timing is asserted).

use std::time::Duration;

use canopy_bench::replication::{ReplicationConfig, run};

#[test]
fn small_replication_runs_with_and_without_a_snapshot() {
    for compact in [false, true] {
        let config = ReplicationConfig {
            samples: 20,
            catch_up_keys: 5000,
            batch: 500,
            value_bytes: 20,
            timeout: Duration::from_secs(60),
            compact,
        };
        let report = run(&config).unwrap();
        assert_eq!(report.samples, 20);
        assert_eq!(report.catch_up_keys, 5000);
        assert!(report.latency_p50_us <= report.latency_p99_us && report.latency_p99_us <= report.latency_max_us);
        assert_eq!(report.compacted, compact);
        assert_eq!(report.compact_s.is_some(), compact);
    }
}
