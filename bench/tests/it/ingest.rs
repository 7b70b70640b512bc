//! The ingest benchmark writes what it says on both sides (no timing is asserted).

use canopy_bench::ingest::{IngestConfig, run};

#[test]
fn small_ingest_reports_both_sides() {
    for (batch, writers, topics) in [(100, 1, 1), (1, 8, 3)] {
        let config = IngestConfig {
            keys: 2000,
            key_bytes: 16,
            value_bytes: 20,
            batch,
            topics,
            writers,
            store_writer_threads: 2,
            seed: 9,
            dir: None,
            rounds: 1,
            compact: false,
            compact_during: batch == 1,
            key_history: batch == 1,
        };
        let report = run(&config).unwrap();
        assert_eq!(report.keys, 2000);
        for side in [&report.canopy, &report.bare] {
            assert!(side.keys_per_s > 0.0 && side.disk_bytes_per_key > 0.0);
            assert!(side.p50_us <= side.p99_us && side.p99_us <= side.p999_us);
        }
        assert!(report.ratio > 0.0);
        assert_eq!(report.compactions_during.is_some(), batch == 1);
    }
}

#[test]
fn compaction_after_overwrites_leaves_the_disk_of_the_live_keys() {
    let config = IngestConfig {
        keys: 20_000,
        key_bytes: 32,
        value_bytes: 100,
        batch: 100,
        topics: 2,
        writers: 1,
        store_writer_threads: 2,
        seed: 3,
        dir: None,
        rounds: 5,
        compact: true,
        compact_during: false,
        key_history: true,
    };
    let report = run(&config).unwrap();
    let compacted = report.compacted_disk_bytes_per_key.unwrap();
    assert!(report.compact_seconds.is_some());
    assert!(
        compacted < report.disk_bytes_per_key / 2.0,
        "compaction drops the overwritten history: {compacted} vs {} B/key",
        report.disk_bytes_per_key
    );
}
