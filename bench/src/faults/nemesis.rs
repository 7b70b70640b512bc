//! The nemesis of a fault run: a schedule of faults drawn from a seeded RNG (the same seed gives
//! the same schedule), each healed at its end. Faults follow one another on one member at a
//! time, and some overlap a second fault on another member.

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

/// Percent of the faults overlapped by a second fault on another member.
const OVERLAP_PERCENT: u32 = 35;

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
    /// The member drained (`POST /v1/admin/drain`: it hands its partitions off), stopped once it
    /// holds none or at the fault's end, and started again at the end, when it joins again.
    Leave,
}

/// Every kind, in the order a draw picks from.
const KINDS: [FaultKind; 7] = [
    FaultKind::Partition,
    FaultKind::Asymmetric,
    FaultKind::Loss,
    FaultKind::Pause,
    FaultKind::Kill,
    FaultKind::Skew,
    FaultKind::Leave,
];

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

/// The faults of a run of `duration_s` over `members`, drawn from `seed`, by start time.
pub fn schedule(seed: u64, members: usize, duration_s: f64) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    let mut start_s = FIRST_FAULT_S;
    let last_s = duration_s - QUIET_END_S;
    let draw = |rng: &mut StdRng, start_s: f64, member: usize| {
        let kind = KINDS[rng.random_range(0..KINDS.len())];
        let length_s = match kind {
            FaultKind::Pause => rng.random_range(PAUSE_S),
            FaultKind::Kill => rng.random_range(DOWN_S),
            _ => rng.random_range(FAULT_S),
        };
        Fault { start_s, end_s: (start_s + length_s).min(last_s), kind, member }
    };
    while start_s + DOWN_S.start < last_s && members > 0 {
        let member = rng.random_range(0..members);
        let fault = draw(&mut rng, start_s, member);
        let end_s = fault.end_s;
        let overlap_s = start_s + rng.random_range(0.0..(end_s - start_s) / 2.0);
        let overlapped = members > 1 && rng.random_range(0..100) < OVERLAP_PERCENT;
        faults.push(fault);
        if overlapped && overlap_s + DOWN_S.start < last_s {
            let other = (member + rng.random_range(1..members)) % members;
            faults.push(draw(&mut rng, overlap_s, other));
        }
        start_s = faults.iter().map(|fault| fault.end_s).fold(end_s, f64::max) + rng.random_range(GAP_S);
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
        FaultKind::Pause | FaultKind::Kill | FaultKind::Skew | FaultKind::Leave => None,
    }
}

/// Drives `faults` on `members`, beginning and healing each at its times from `started`,
/// until `stop` says to stop early; returns the faults begun. Everything is healed on return,
/// also on an error.
pub(crate) fn drive(
    faults: &[Fault],
    members: &mut [Member],
    network: &Network,
    shared: &Shared,
    http: &reqwest::blocking::Client,
    started: Instant,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<Vec<Fault>> {
    // Every fault's beginning and end, in time order (an end before a beginning at one time).
    let mut events: Vec<(f64, bool, usize)> =
        faults.iter().enumerate().flat_map(|(i, f)| [(f.start_s, true, i), (f.end_s, false, i)]).collect();
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut begun = Vec::new();
    let mut active = vec![false; faults.len()];
    // Members draining to leave, stopped once they hold no partition.
    let mut leaving: Vec<usize> = Vec::new();
    let outcome = (|| {
        for (at_s, begins, index) in events {
            let deadline = started + Duration::from_secs_f64(at_s);
            while !stop() && Instant::now() < deadline {
                std::thread::sleep(STEP.min(deadline - Instant::now()));
                leaving.retain(|&member| !left(&mut members[member], network, http));
            }
            if stop() {
                return Ok(());
            }
            let fault = &faults[index];
            if begins {
                eprintln!("nemesis: begin {fault}");
                if begin(fault, members, network, shared, http)? {
                    leaving.push(fault.member);
                }
                begun.push(fault.clone());
                active[index] = true;
            } else if active[index] {
                eprintln!("nemesis: heal  {fault}");
                if leaving.contains(&fault.member) {
                    eprintln!("nemesis: member {} still held partitions at its leave's end", fault.member);
                    leaving.retain(|&member| member != fault.member);
                    members[fault.member].kill();
                }
                heal_member(&mut members[fault.member], network, shared, http)?;
                active[index] = false;
            }
        }
        Ok(())
    })();
    let healed = heal(members, network, shared, http);
    outcome.and(healed).map(|()| begun)
}

/// How often the nemesis looks at the clock and at the members leaving.
const STEP: Duration = Duration::from_millis(200);

/// Starts `fault` on its member; `true` for a leave the member took, which the nemesis then
/// follows until the member has handed its partitions off.
fn begin(
    fault: &Fault,
    members: &mut [Member],
    network: &Network,
    shared: &Shared,
    http: &reqwest::blocking::Client,
) -> anyhow::Result<bool> {
    let others: Vec<String> =
        (0..members.len()).filter(|&i| i != fault.member).map(|i| network.address(i).to_string()).collect();
    let member = &mut members[fault.member];
    if let Some(rules) = rules(fault.kind, &others.join(", ")) {
        network.set_rules(fault.member, &rules)?;
        return Ok(false);
    }
    match fault.kind {
        FaultKind::Pause if member.running() => member.signal("STOP")?,
        FaultKind::Kill => member.kill(),
        FaultKind::Skew => {
            member.kill();
            member.start(network, shared, http, Some(SKEW))?;
        }
        FaultKind::Leave => {
            let url = format!("{}/v1/admin/drain", Member::api(network, member.index));
            if member.running() && http.post(&url).send().is_ok_and(|response| response.status().is_success()) {
                return Ok(true);
            }
            // A member that cannot take the drain (paused, cut off, its clock skewed) is
            // stopped as it is, which the cluster must survive as it does a kill.
            eprintln!("nemesis: member {} did not take the drain; stopping it as it is", member.index);
            member.kill();
        }
        FaultKind::Pause | FaultKind::Partition | FaultKind::Asymmetric | FaultKind::Loss => {}
    }
    Ok(false)
}

/// Whether `member`, draining to leave, holds no partition any more; it is then stopped.
fn left(member: &mut Member, network: &Network, http: &reqwest::blocking::Client) -> bool {
    let url = format!("{}/v1/admin/drain", Member::api(network, member.index));
    let done = http
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .ok()
        .and_then(|response| response.json::<canopy_node::wire::Drain>().ok())
        .is_some_and(|drain| drain.done);
    if done {
        eprintln!("nemesis: member {} handed every partition off; stopping it", member.index);
        member.kill();
    }
    done
}

/// Heals every member.
pub(crate) fn heal(
    members: &mut [Member],
    network: &Network,
    shared: &Shared,
    http: &reqwest::blocking::Client,
) -> anyhow::Result<()> {
    for member in members.iter_mut() {
        heal_member(member, network, shared, http)?;
    }
    Ok(())
}

/// Heals `member`: removes its fault rules, continues it if paused, and starts it again if
/// killed, left, or running with a skewed clock.
fn heal_member(
    member: &mut Member,
    network: &Network,
    shared: &Shared,
    http: &reqwest::blocking::Client,
) -> anyhow::Result<()> {
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
    Ok(())
}
