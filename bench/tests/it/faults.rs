//! A tiny fault run over real `canopy serve --tables` processes in network namespaces: three
//! members, a seeded nemesis, and the checker's verdict. It needs root (and `ip`, `nft`), and
//! says why it skips when it lacks them.

use canopy_bench::faults::{self, FaultsConfig};

/// The seed of the tiny run; its schedule makes one member lossy while another pauses, then
/// has one member leave while another restarts with its clock a minute ahead.
const SEED: u64 = 6;

/// The `canopy` binary cargo built beside this package's binary.
fn canopy_binary() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_canopy-bench")).with_file_name("canopy");
    assert!(path.is_file(), "{} is missing: build it with cargo build -p canopy-node --bins", path.display());
    path
}

#[test]
fn a_tiny_fault_run_loses_no_acknowledged_write_and_keeps_counters_in_bounds() {
    if let Some(refusal) = faults::refusal() {
        eprintln!("skipped: {refusal}");
        return;
    }
    let schedule = faults::schedule(SEED, 3, 20.0);
    assert!(!schedule.is_empty(), "seed {SEED} schedules no fault");
    assert_eq!(schedule, faults::schedule(SEED, 3, 20.0), "one seed gives one schedule");
    let config = FaultsConfig { seed: SEED, members: 3, duration_s: 20, canopy: canopy_binary(), keep_logs: None };
    let report = faults::run(&config).unwrap();
    let acknowledged: u64 = report.ops.values().map(|outcomes| outcomes.acknowledged).sum();
    assert!(acknowledged > 0, "no write was acknowledged: {report:?}");
    assert_eq!(report.schedule, schedule, "the run injected another schedule than the seed's");
    assert_eq!(
        report.lost, 0,
        "seed {SEED}: acknowledged writes lost: {:?} (logs: {:?})",
        report.problems, report.logs
    );
    assert!(report.crashed.is_empty(), "seed {SEED}: {:?}", report.crashed);
    assert_eq!(report.causal_violations, 0, "seed {SEED}: reads went back in time: {:?}", report.problems);
    assert!(!report.causal_reads.is_empty(), "seed {SEED}: no read with a causal token was made");
    assert!(
        report.converge_s.is_some(),
        "seed {SEED}: not converged, counters or values wrong: {:?} (logs: {:?})",
        report.problems,
        report.logs
    );
}

#[test]
fn a_schedule_is_the_seeds_own_and_faults_a_member_once_at_a_time() {
    let mut overlaps = 0;
    for seed in 0..200 {
        let schedule = faults::schedule(seed, 5, 180.0);
        assert_eq!(schedule, faults::schedule(seed, 5, 180.0), "seed {seed}: two schedules");
        assert!(schedule.len() >= 10, "seed {seed}: only {} faults in 180 s", schedule.len());
        for fault in &schedule {
            assert!(fault.member < 5, "seed {seed}: {fault}");
            assert!(fault.start_s < fault.end_s && fault.end_s <= 179.0, "seed {seed}: {fault}");
        }
        for (i, a) in schedule.iter().enumerate() {
            let during: Vec<_> = schedule.iter().filter(|b| b.start_s < a.end_s && a.start_s < b.end_s).collect();
            assert!(during.len() <= 2, "seed {seed}: {during:?} at once");
            for b in &schedule[i + 1..] {
                if a.start_s < b.end_s && b.start_s < a.end_s {
                    overlaps += 1;
                    assert_ne!(a.member, b.member, "seed {seed}: {a} overlaps {b} on one member");
                }
            }
        }
    }
    assert!(overlaps > 200, "only {overlaps} overlapping faults in 200 schedules");
    let kinds: std::collections::BTreeSet<_> =
        (0..20).flat_map(|seed| faults::schedule(seed, 5, 180.0)).map(|fault| fault.kind).collect();
    assert_eq!(kinds.len(), 7, "20 seeds drew only {kinds:?}");
    assert_ne!(faults::schedule(1, 5, 180.0), faults::schedule(2, 5, 180.0));
}
