//! The nemesis of a fault run: a schedule of faults drawn from a seeded RNG (the same seed gives
//! the same schedule), one member faulted at a time, each fault healed at its end.

use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::member::{Member, Shared};
use super::net::Network;

/// Seconds into the run before the first fault, so the workload starts on a whole cluster.
const FIRST_FAULT_S: f64 = 3.0;

/// Seconds between the end of one fault and the start of the next.
const GAP_S: std::ops::Range<f64> = 1.0..3.0;

/// Seconds a partition, a loss or a skew lasts.
const FAULT_S: std::ops::Range<f64> = 4.0..10.0;

/// Seconds a member stays paused by `SIGSTOP`.
const PAUSE_S: std::ops::Range<f64> = 5.0..10.0;

/// Seconds a killed member stays down before it restarts.
const DOWN_S: std::ops::Range<f64> = 2.0..5.0;

/// Seconds before the end of the workload by which every fault has ended.
const QUIET_END_S: f64 = 1.0;

/// Percent of the packets between a lossy member and the others dropped, each way.
const LOSS_PERCENT: u32 = 20;

/// How far ahead a skewed member's wall clock runs, as `faketime` takes it.
const SKEW: &str = "+60s";

/// What a fault does to its member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Every packet from and to the other members dropped; the clients still reach it.
    Partition,
    /// Every packet from the other members dropped, its own still sent; the clients still reach it.
    Asymmetric,
    /// [`LOSS_PERCENT`] of the packets from and to the other members dropped.
    Loss,
    /// The process stopped by `SIGSTOP`, then continued by `SIGCONT`.
    Pause,
    /// The process killed by `SIGKILL`, then started again on its data directory.
    Kill,
    /// The process killed and started again with its wall clock [`SKEW`] ahead, then killed and
    /// started again with the machine's clock at the fault's end.
    Skew,
}

/// Every kind, in the order a draw picks from.
const KINDS: [FaultKind; 6] =
    [FaultKind::Partition, FaultKind::Asymmetric, FaultKind::Loss, FaultKind::Pause, FaultKind::Kill, FaultKind::Skew];

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        f.write_str(&name)
    }
}

/// One fault of the schedule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fault {
    /// Seconds into the workload it starts.
    pub start_s: f64,
    /// Seconds into the workload it is healed.
    pub end_s: f64,
    /// What it does.
    pub kind: FaultKind,
    /// The member it does it to.
    pub member: usize,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>6.1}s..{:>6.1}s  {:<10} member {}", self.start_s, self.end_s, self.kind, self.member)
    }
}

/// The faults of a run of `duration_s` over `members`, drawn from `seed`.
pub fn schedule(seed: u64, members: usize, duration_s: f64) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let mut start_s = FIRST_FAULT_S;
    let last_s = duration_s - QUIET_END_S;
    while start_s + DOWN_S.start < last_s && members > 0 {
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        let member = rng.random_range(0..members);
        let length_s = match kind {
            FaultKind::Pause => rng.random_range(PAUSE_S),
            FaultKind::Kill => rng.random_range(DOWN_S),
            _ => rng.random_range(FAULT_S),
        };
        let end_s = (start_s + length_s).min(last_s);
        faults.push(Fault { start_s, end_s, kind, member });
        start_s = end_s + rng.random_range(GAP_S);
    }
    faults
}

/// The nft chains of `kind` in a member's namespace, given the other members' addresses.
fn rules(kind: FaultKind, others: &str) -> Option<String> {
    let chain = |hook: &str, rule: &str| {
        format!("chain {hook} {{ type filter hook {hook} priority 0; policy accept; {rule}; }}\n")
    };
    match kind {
        FaultKind::Partition => Some(
            chain("input", &format!("ip saddr {{ {others} }} drop"))
                + &chain("output", &format!("ip daddr {{ {others} }} drop")),
        ),
        FaultKind::Asymmetric => Some(chain("input", &format!("ip saddr {{ {others} }} drop"))),
        FaultKind::Loss => {
            let drop = format!("numgen random mod 100 < {LOSS_PERCENT} drop");
            Some(
                chain("input", &format!("ip saddr {{ {others} }} {drop}"))
                    + &chain("output", &format!("ip daddr {{ {others} }} {drop}")),
            )
        }
        FaultKind::Pause | FaultKind::Kill | FaultKind::Skew => None,
    }
}

/// Drives `faults` on `members`, starting each at its time from `started`, until `stop` says
/// to stop early; returns the faults begun. Everything is healed on return, also on an error.
pub(crate) fn drive(
    faults: &[Fault],
    members: &mut [Member],
    network: &Network,
    shared: &Shared,
    http: &reqwest::blocking::Client,
    started: Instant,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<Vec<Fault>> {
    let mut begun = Vec::new();
    let outcome = (|| {
        for fault in faults {
            if !sleep_until(started + Duration::from_secs_f64(fault.start_s), stop) {
                return Ok(());
            }
            eprintln!("nemesis: begin {fault}");
            begin(fault, members, network, shared, http)?;
            begun.push(fault.clone());
            let ended = sleep_until(started + Duration::from_secs_f64(fault.end_s), stop);
            eprintln!("nemesis: heal  {fault}");
            heal(members, network, shared, http)?;
            if !ended {
                return Ok(());
            }
        }
        Ok(())
    })();
    let healed = heal(members, network, shared, http);
    outcome.and(healed).map(|()| begun)
}

/// Starts `fault` on its member.
fn begin(
    fault: &Fault,
    members: &mut [Member],
    network: &Network,
    shared: &Shared,
    http: &reqwest::blocking::Client,
) -> anyhow::Result<()> {
    let others: Vec<String> =
        (0..members.len()).filter(|&i| i != fault.member).map(|i| network.address(i).to_string()).collect();
    let member = &mut members[fault.member];
    if let Some(rules) = rules(fault.kind, &others.join(", ")) {
        return network.set_rules(fault.member, &rules);
    }
    match fault.kind {
        FaultKind::Pause => member.signal("STOP"),
        FaultKind::Kill => {
            member.kill();
            Ok(())
        }
        FaultKind::Skew => {
            member.kill();
            member.start(network, shared, http, Some(SKEW))
        }
        FaultKind::Partition | FaultKind::Asymmetric | FaultKind::Loss => Ok(()),
    }
}

/// Heals every member: removes every fault rule, continues a paused process, starts a killed
/// one, and starts a skewed one again with the machine's clock.
pub(crate) fn heal(
    members: &mut [Member],
    network: &Network,
    shared: &Shared,
    http: &reqwest::blocking::Client,
) -> anyhow::Result<()> {
    for member in members.iter_mut() {
        network.clear_rules(member.index)?;
        if member.paused {
            member.signal("CONT")?;
        }
        if member.skew.is_some() {
            member.kill();
        }
        if !member.running() {
            member.start(network, shared, http, None)?;
        }
    }
    Ok(())
}

/// Sleeps until `deadline` in short steps; `false` when `stop` said to stop first.
fn sleep_until(deadline: Instant, stop: &dyn Fn() -> bool) -> bool {
    const STEP: Duration = Duration::from_millis(100);
    loop {
        if stop() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep(STEP.min(deadline - now));
    }
}
