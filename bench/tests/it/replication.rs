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
            deep: false,
            processes: None,
            secure: false,
        };
        let report = run(&config).unwrap();
        assert_eq!(report.samples, 20);
        assert_eq!(report.catch_up_keys, 5000);
        assert!(report.latency_p50_us <= report.latency_p99_us && report.latency_p99_us <= report.latency_max_us);
        assert_eq!(report.compacted, compact);
        assert_eq!(report.compact_s.is_some(), compact);
    }
}

/// The `canopy` binary cargo built beside this package's binary for the workspace's tests.
fn canopy_binary() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_canopy-bench")).with_file_name("canopy");
    assert!(path.is_file(), "{} is missing: run the tests with cargo test --workspace", path.display());
    path
}

#[test]
fn replication_between_secured_processes_catches_up_a_deep_history() {
    // Secured: every call carries an API token and the processes admit only each other.
    let config = ReplicationConfig {
        samples: 10,
        catch_up_keys: 300,
        batch: 1,
        value_bytes: 20,
        timeout: Duration::from_secs(120),
        compact: false,
        deep: true,
        processes: Some(canopy_binary()),
        secure: true,
    };
    let report = run(&config).unwrap();
    assert_eq!(report.mode, "processes");
    assert!(report.deep);
    assert_eq!(report.catch_up_progress.last().map(|p| p.1), Some(300), "the third process holds every key");
    assert_eq!(report.latencies.iter().map(|(_, n)| n).sum::<u64>(), 10);
}
