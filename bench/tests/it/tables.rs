//! The tables benchmark runs end to end over `canopy serve --tables` processes, and every key it
//! wrote can be read back through any member afterwards (no timing is asserted).

use std::time::Duration;

use canopy_bench::tables::{TablesConfig, key_of, run_with, value_of};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Keys read back through random members after the run, beside the run's own read-back.
const SAMPLE: usize = 200;

/// The `canopy` binary cargo built beside this package's binary.
fn canopy_binary() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_canopy-bench")).with_file_name("canopy");
    assert!(path.is_file(), "{} is missing: build it with cargo build -p canopy-node --bins", path.display());
    path
}

#[test]
fn a_small_tables_run_writes_every_key_and_balances_after_a_join() {
    let config = TablesConfig {
        canopy: canopy_binary(),
        members: 3,
        replicas: 2,
        partitions: 16,
        keys: 2_000,
        batch: 200,
        cbor: true,
        clients: 2,
        singles: 50,
        gets: 50,
        join_keys: 2_000,
        read_back: 100,
        member_ttl_s: 3,
        timeout: Duration::from_secs(120),
    };
    let mut sampled = 0;
    let report = run_with(&config, |apis| {
        assert_eq!(apis.len(), 4, "the three members and the newcomer");
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build()?;
        let mut rng = StdRng::seed_from_u64(5);
        // Keys of the batches, of the single puts and of the acknowledged puts.
        let written = 2_000 + 2 * 50 + 50;
        for _ in 0..SAMPLE {
            let index = rng.random_range(0..written);
            let api = &apis[rng.random_range(0..apis.len())];
            let response = http.get(format!("{api}/v1/tables/bench/kv/{}", key_of(index))).send()?;
            assert!(response.status().is_success(), "key {index} through {api}: {}", response.status());
            assert_eq!(response.bytes()?.as_ref(), value_of(index).as_slice(), "key {index} through {api}");
            sampled += 1;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(sampled, SAMPLE);
    assert_eq!(report.failures, 0, "{:?}: {:?}", report.failures_by_phase, report.failure_examples);
    assert_eq!(report.written_keys, 2_000 + 2 * 50 + 50);
    assert!(report.latencies_idle, "the members never reported their compactions done");
    assert_eq!(report.join_keys, 2_150);
    assert!(report.join_s.is_some(), "the table was not balanced after the join: {:?}", report.join_pending);
    assert!(report.get_p50_us.is_some() && report.ack2_p50_us.is_some(), "{report:?}");
    assert!(report.batch_keys_per_s > 0.0 && report.ingest_keys_per_s > 0.0 && report.ratio > 0.0);
    // The embedded figure is the middle one of its runs.
    let mut runs = report.ingest_runs_keys_per_s.clone();
    runs.sort_by(f64::total_cmp);
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[1], report.ingest_keys_per_s);
    assert!(report.command.starts_with("canopy-bench tables --members 3 --replicas 2 --partitions 16 --keys 2000"));
}

#[test]
fn a_tables_run_refuses_a_shape_no_cluster_can_have() {
    let config = TablesConfig {
        canopy: canopy_binary(),
        members: 3,
        replicas: 0,
        partitions: 16,
        keys: 10,
        batch: 10,
        cbor: true,
        clients: 1,
        singles: 1,
        gets: 1,
        join_keys: 0,
        read_back: 1,
        member_ttl_s: 3,
        timeout: Duration::from_secs(10),
    };
    let error = run_with(&config, |_| Ok(())).unwrap_err().to_string();
    assert!(error.contains("replicas must be between 1 and"), "{error}");
    let missing = TablesConfig { canopy: "/nonexistent/canopy".into(), replicas: 2, ..config };
    let error = run_with(&missing, |_| Ok(())).unwrap_err().to_string();
    assert!(error.contains("no canopy binary at /nonexistent/canopy"), "{error}");
}
