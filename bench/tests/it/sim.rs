//! The simulator over a fixed set of seeds with every fault kind, and its reproducibility.

use std::process::Command;

use canopy_bench::sim::{SimConfig, run};
use canopy_crdt::sim::Faults;

fn all_faults(seed: u64) -> SimConfig {
    SimConfig {
        replicas: 5,
        topics: 3,
        ops: 300,
        seed,
        faults: Faults { drop: 0.1, dup: 0.1, reorder: 0.2, corrupt: 0.05 },
        partitions: true,
        crashes: true,
        ..SimConfig::default()
    }
}

#[test]
fn fixed_seeds_converge_under_every_fault() {
    for seed in [1, 2, 3, 5, 8, 13, 21, 34] {
        let report = run(&all_faults(seed)).unwrap();
        println!("{report}");
        assert!(report.passed(), "seed {seed} failed: {report}");
        let faults = &report.faults;
        assert!(faults.dropped > 0 && faults.duplicated > 0 && faults.reordered > 0 && faults.corrupted > 0);
        assert!(report.acknowledged > 0);
    }
}

#[test]
fn hostile_peers_neither_stall_nor_corrupt_the_honest_replicas() {
    for seed in [3, 7, 11] {
        let config = SimConfig { adversaries: 2, ..all_faults(seed) };
        let report = run(&config).unwrap();
        println!("{report}");
        assert!(report.passed(), "seed {seed} failed: {report}");
    }
}

#[test]
fn byzantine_replicas_never_get_a_refused_block_applied_and_the_honest_ones_converge() {
    for seed in [4, 9] {
        let config = SimConfig { byzantine: 2, compact: 0.02, ..all_faults(seed) };
        let report = run(&config).unwrap();
        println!("{report}");
        assert!(report.passed(), "seed {seed} failed: {report}");
        assert!(report.refused_writes > 0, "non-owners tried to write the owned topic: {report}");
        assert!(report.blocks_refused > 0, "byzantine blocks reached the replicas and were refused: {report}");
    }
}

/// Once fetched forever: wide histories made the serving walk spend its visits on blocks the
/// requester had, and answer with the same blocks or frontier again.
#[test]
fn pinned_seed_where_wide_histories_made_fetches_repeat() {
    let config = SimConfig { ops: 1000, adversaries: 2, ..all_faults(1) };
    let report = run(&config).unwrap();
    assert!(report.passed(), "{report}");
}

#[test]
fn a_deep_chain_is_caught_up_under_faults_and_attacks() {
    let config = SimConfig { replicas: 3, topics: 2, ops: 150, deep: 2_000, adversaries: 1, ..all_faults(17) };
    let report = run(&config).unwrap();
    assert!(report.passed(), "{report}");
}

#[test]
fn each_fault_alone_converges() {
    let alone = [
        Faults { drop: 0.3, ..Faults::default() },
        Faults { dup: 0.5, ..Faults::default() },
        Faults { reorder: 0.5, ..Faults::default() },
        Faults { corrupt: 0.2, ..Faults::default() },
    ];
    for (i, faults) in alone.into_iter().enumerate() {
        let config =
            SimConfig { replicas: 4, topics: 2, ops: 200, seed: 100 + i as u64, faults, ..SimConfig::default() };
        let report = run(&config).unwrap();
        assert!(report.passed(), "{report}");
    }
    let partitions = SimConfig { ops: 300, seed: 200, partitions: true, ..SimConfig::default() };
    let report = run(&partitions).unwrap();
    assert!(report.passed() && report.faults.partitions > 0, "{report}");
    let crashes = SimConfig { ops: 400, seed: 201, crashes: true, ..SimConfig::default() };
    let report = run(&crashes).unwrap();
    assert!(report.passed() && report.faults.crashes > 0, "{report}");
}

#[test]
fn compaction_under_every_fault_and_a_late_joiner_converge_to_the_full_history() {
    let faults = Faults { drop: 0.1, dup: 0.1, reorder: 0.1, corrupt: 0.05 };
    for seed in [300, 301] {
        let config = SimConfig {
            replicas: 4,
            topics: 2,
            ops: 300,
            seed,
            faults: faults.clone(),
            partitions: true,
            crashes: true,
            adversaries: 1,
            compact: 0.05,
            ..SimConfig::default()
        };
        let report = run(&config).unwrap();
        assert!(report.passed() && report.late_joiner && report.compactions > 8, "{report}");
        assert!(report.snapshots_merged > 0, "the late joiner caught up from a snapshot: {report}");
    }
}

#[test]
fn the_same_seed_prints_the_same_run_byte_for_byte() {
    let sim = |seed: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_canopy-bench"))
            .args(["sim", "--replicas", "4", "--topics", "2", "--ops", "150", "--seed", seed])
            .args([
                "--drop",
                "0.1",
                "--dup",
                "0.1",
                "--reorder",
                "0.1",
                "--corrupt",
                "0.05",
                "--partitions",
                "--crashes",
                "--compact",
                "0.05",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    };
    let first = sim("42");
    assert_eq!(first, sim("42"));
    assert_ne!(first, sim("43"));
    let line = String::from_utf8(first).unwrap();
    assert!(line.starts_with("seed=42 replicas=4 topics=2 ops=150 "), "{line}");
    assert!(line.trim_end().ends_with("diverged=0"), "{line}");
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let output = Command::new(env!("CARGO_BIN_EXE_canopy-bench")).args(["sim", "--drop", "1.5"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("probability"));
}
