//! `canopy-bench faults`: a fault test of real `canopy serve --tables` processes, each in a
//! Linux network namespace of its own. Client threads write through random members while a
//! seeded nemesis partitions, slows, pauses, kills and skews one member at a time; after the
//! heal, a checker asks every member until every acknowledged write is readable with its value
//! and every counter is within its bounds.

mod check;
mod member;
mod nemesis;
mod net;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use canopy_node::wire;
use serde::Serialize;

pub use check::Findings;
pub use nemesis::{Fault, FaultKind, schedule};
pub use workload::{CausalRead, Op, OpKind, Outcome, ReadResult};

use member::{Member, Shared};
use net::{Network, Tools};

/// Most members a run starts: addresses are `10.X.0.1` to `10.X.0.253`, and each member is a
/// process on this machine.
pub const MEMBERS_MAX: usize = 32;

/// `--member-ttl-s` of every member: short, so a killed member's partitions move within the run.
const MEMBER_TTL_S: u64 = 6;

/// Longest wait for the members to list each other and for the table to be balanced.
const SETUP_TIMEOUT: Duration = Duration::from_secs(90);

/// How long after the heal every check must pass.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

/// Client threads of the workload.
const CLIENTS: usize = 4;

/// How often a setup wait asks the members again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Set by `SIGINT` or `SIGTERM` once [`stop_on_signals`] runs: the run stops, heals, and
/// deletes its namespaces.
static STOP: AtomicBool = AtomicBool::new(false);

/// What a fault run does.
#[derive(Clone, Debug)]
pub struct FaultsConfig {
    /// Seed of the nemesis's schedule and of the workload's choices.
    pub seed: u64,
    /// Members started.
    pub members: usize,
    /// Seconds of workload under faults.
    pub duration_s: u64,
    /// The `canopy` binary the members run.
    pub canopy: PathBuf,
    /// Where every process's log is kept; by default a temporary directory, kept only when a
    /// check fails.
    pub keep_logs: Option<PathBuf>,
}

/// Counts of a kind of write's outcomes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    /// Replies 2xx.
    pub acknowledged: u64,
    /// Replies 4xx.
    pub failed: u64,
    /// Timeouts, connection errors and 5xx.
    pub indeterminate: u64,
}

/// What a fault run found.
#[derive(Clone, Debug, Serialize)]
pub struct FaultsReport {
    /// The seed.
    pub seed: u64,
    /// Members started.
    pub members: usize,
    /// Seconds of workload.
    pub duration_s: u64,
    /// Writes acknowledged at ack 2 that some member could not read 120 s after the heal.
    pub lost: usize,
    /// Writes acknowledged at ack 1 that some member could not read 120 s after the heal.
    pub lost_ack1: usize,
    /// Seconds from the heal until every check passed; `None` when they did not within 120 s.
    pub converge_s: Option<f64>,
    /// Seconds from the last fault's heal to the end of the workload, when the final heal and
    /// the checks begin (the whole workload when no fault was begun).
    pub quiet_s: f64,
    /// Reads of acknowledged puts with their causal token, through another random member, by
    /// result.
    pub causal_reads: BTreeMap<ReadResult, u64>,
    /// Reads with a causal token that went back in time (another value, or none).
    pub causal_violations: usize,
    /// Faults begun, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Writes by kind and outcome (a batch counts once per key).
    pub ops: BTreeMap<OpKind, Outcomes>,
    /// Writes not acknowledged, by what their reply was: a status, or the client's error.
    pub unacknowledged_replies: BTreeMap<String, u64>,
    /// The faults begun, in order.
    pub schedule: Vec<Fault>,
    /// What the last round of checks found wrong, described.
    pub problems: Vec<String>,
    /// Members whose process exited on its own during the run.
    pub crashed: Vec<String>,
    /// Where every process's log is, when kept.
    pub logs: Option<PathBuf>,
}

impl FaultsReport {
    /// Whether the run passed: nothing lost, every check passed within the time to converge,
    /// no read with a causal token went back in time, no member crashed.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.converge_s.is_some() && self.crashed.is_empty() && self.causal_violations == 0
    }
}

/// Why a fault run cannot run on this machine (not root, `ip` or `nft` missing), if it cannot.
pub fn refusal() -> Option<String> {
    if !net::is_root() {
        return Some("canopy-bench faults creates network namespaces: run it as root".into());
    }
    Tools::find().err().map(|error| format!("{error:#}"))
}

/// Makes `SIGINT` and `SIGTERM` stop a run cleanly (healing, killing the members and deleting
/// the namespaces) instead of ending the process at once.
pub fn stop_on_signals() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("faults: stopping, then deleting the namespaces");
            STOP.store(true, Ordering::SeqCst);
        });
    });
    Ok(())
}

/// Whether the run was told to stop.
fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Runs the fault test described by `config`.
pub fn run(config: &FaultsConfig) -> anyhow::Result<FaultsReport> {
    if let Some(refusal) = refusal() {
        bail!("{refusal}");
    }
    if !(1..=MEMBERS_MAX).contains(&config.members) {
        bail!("--members must be 1 to {MEMBERS_MAX}, not {}", config.members);
    }
    if !config.canopy.is_file() {
        bail!(
            "no canopy binary at {}: build it (cargo build -p canopy-node --bins) or name it with --canopy",
            config.canopy.display()
        );
    }
    let canopy = config.canopy.canonicalize()?;
    let tools = Tools::find()?;
    let faults = schedule(config.seed, config.members, config.duration_s as f64);
    eprintln!("faults: seed {} schedule ({} faults):", config.seed, faults.len());
    for fault in &faults {
        eprintln!("  {fault}");
    }
    let dir = tempfile::Builder::new().prefix("canopy-faults-").tempdir()?;
    let logs = match &config.keep_logs {
        Some(logs) => logs.clone(),
        None => dir.path().join("logs"),
    };
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    match run_in(config, &canopy, tools, &faults, dir.path(), &logs) {
        Ok(report) => Ok(report),
        Err(error) => match keep(&logs, config, &[]) {
            Ok(kept) => Err(error.context(format!("the fault run failed (logs kept in {})", kept.display()))),
            Err(_) => Err(error),
        },
    }
}

/// Runs the fault test with `faults`, the members' data under `dir` and their logs in `logs`.
fn run_in(
    config: &FaultsConfig,
    canopy: &Path,
    tools: Tools,
    faults: &[Fault],
    dir: &Path,
    logs: &Path,
) -> anyhow::Result<FaultsReport> {
    let (shared, token) = prepare(canopy, dir, config.members)?;
    let http = client(&token, workload::REQUEST_TIMEOUT)?;
    let network = Network::create(config.members, tools)?;
    let mut members: Vec<Member> = (0..config.members)
        .map(|i| Member::new(i, dir.join(format!("member-{i}")), logs.join(format!("member-{i}.log"))))
        .collect();
    let apis: Vec<String> = (0..config.members).map(|i| Member::api(&network, i)).collect();
    eprintln!("faults: members at {} (logs in {})", apis.join(" "), logs.display());
    for member in &mut members {
        member.start(&network, &shared, &http, None)?;
    }
    wait_listed(&apis, &shared.peers, &http)?;
    create_table(&apis, &shared.peers, &http)?;

    eprintln!("faults: {} s of workload under the nemesis", config.duration_s);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(config.duration_s);
    // Set when the nemesis fails, so the clients stop too.
    let aborted = AtomicBool::new(false);
    let stop = || stopped() || aborted.load(Ordering::SeqCst);
    let (ops, reads, begun) = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (apis, http, stop) = (&apis, &http, &stop);
                scope.spawn(move || workload::client(apis, http, config.seed, c, started, deadline, stop))
            })
            .collect();
        let begun = nemesis::drive(faults, &mut members, &network, &shared, &http, started, &stopped);
        if begun.is_err() {
            aborted.store(true, Ordering::SeqCst);
        }
        let (mut ops, mut reads) = (Vec::new(), Vec::new());
        for client in clients {
            let (client_ops, client_reads) = client.join().unwrap_or_default();
            ops.extend(client_ops);
            reads.extend(client_reads);
        }
        (ops, reads, begun)
    });
    let begun = begun?;
    if stopped() {
        bail!("stopped by a signal");
    }
    let crashed: Vec<String> = members
        .iter_mut()
        .filter_map(|m| m.exited().map(|status| format!("member {} exited on its own: {status}", m.index)))
        .collect();
    if !crashed.is_empty() {
        for member in &mut members {
            if member.exited().is_some() {
                member.kill();
            }
        }
        nemesis::heal(&mut members, &network, &shared, &http)?;
    }
    eprintln!("faults: healed; {} writes; checking every member (at most {CONVERGE_TIMEOUT:?})", ops.len());
    let ops_binary = canopy.with_file_name("canopy-ops");
    let heads = check::Heads { ops: &ops_binary, token: &token };
    let (converge_s, findings) = check::until_converged(&ops, &apis, &http, &heads, CONVERGE_TIMEOUT, &stopped);
    let mut report = report(config, &ops, &reads, &begun, converge_s, &findings, crashed);
    if !report.passed() || !findings.clean() || config.keep_logs.is_some() {
        report.logs = Some(keep(logs, config, &ops)?);
    }
    drop(members);
    drop(network);
    Ok(report)
}

/// Writes the tokens file and every member's identity key under `dir`; returns what every
/// member is started with and the admin token the clients call with.
fn prepare(canopy: &Path, dir: &Path, members: usize) -> anyhow::Result<(Shared, String)> {
    let tokens = dir.join("tokens.toml");
    let output = std::process::Command::new(canopy)
        .args(["token", "create", "--name", "faults", "--role", "admin", "--file"])
        .arg(&tokens)
        .output()
        .with_context(|| format!("cannot run {}", canopy.display()))?;
    if !output.status.success() {
        bail!("canopy token create failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let token = String::from_utf8(output.stdout)?.trim().to_string();
    let mut peers = Vec::new();
    for index in 0..members {
        let data_dir = dir.join(format!("member-{index}"));
        std::fs::create_dir_all(&data_dir)?;
        let keypair = canopy_transport::Keypair::generate_ed25519();
        std::fs::write(data_dir.join("identity.key"), keypair.to_protobuf_encoding()?)?;
        peers.push(keypair.public().to_peer_id().to_string());
    }
    let shared = Shared {
        canopy: canopy.to_path_buf(),
        tokens,
        peers,
        member_ttl_s: MEMBER_TTL_S,
        topic: workload::TOPIC.to_string(),
    };
    Ok((shared, token))
}

/// A client sending `token`, giving up on a request after `timeout`.
fn client(token: &str, timeout: Duration) -> anyhow::Result<reqwest::blocking::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    Ok(reqwest::blocking::Client::builder().timeout(timeout).default_headers(headers).build()?)
}

/// Waits until every member lists exactly `peers`.
fn wait_listed(apis: &[String], peers: &[String], http: &reqwest::blocking::Client) -> anyhow::Result<()> {
    let mut expected = peers.to_vec();
    expected.sort();
    poll("every member lists every member", || {
        for (index, api) in apis.iter().enumerate() {
            let listed: wire::Members = match get_json(http, &format!("{api}/v1/members")) {
                Ok(listed) => listed,
                Err(error) => return Some(format!("member {index}: {error:#}")),
            };
            let mut listed: Vec<String> = listed.members.iter().map(|m| m.peer_id.to_string()).collect();
            listed.sort();
            listed.dedup();
            if listed != expected {
                return Some(format!("member {index} lists {} of {} members", listed.len(), expected.len()));
            }
        }
        None
    })
}

/// Creates the table through the first member and waits until every member places it alike
/// and holds exactly the partitions placed on it.
fn create_table(apis: &[String], peers: &[String], http: &reqwest::blocking::Client) -> anyhow::Result<()> {
    let body = wire::CreateTable {
        name: workload::TABLE.to_string(),
        partitions: workload::PARTITIONS,
        replicas: workload::REPLICAS,
    };
    let response = http.post(format!("{}/v1/tables", apis[0])).json(&body).send()?;
    let status = response.status();
    if !status.is_success() {
        let message = wire::ErrorBody::message_in(&response.bytes()?).unwrap_or_default();
        bail!("creating table {} failed: {status} {message}", workload::TABLE);
    }
    poll("the table is placed and held alike by every member", || {
        let mut agreed: Option<Vec<Vec<String>>> = None;
        for (index, api) in apis.iter().enumerate() {
            let shown: wire::TableShown = match get_json(http, &format!("{api}/v1/tables/{}", workload::TABLE)) {
                Ok(shown) => shown,
                Err(error) => return Some(format!("member {index}: {error:#}")),
            };
            let mut placement = shown.placement.clone();
            placement.sort_by_key(|p| p.partition);
            let owners: Vec<Vec<String>> =
                placement.iter().map(|p| p.owners.iter().map(ToString::to_string).collect()).collect();
            if agreed.get_or_insert_with(|| owners.clone()) != &owners {
                return Some(format!("member {index} places the table differently from member 0"));
            }
            for p in &placement {
                if p.owners.iter().any(|o| o.to_string() == peers[index]) != p.held_here {
                    return Some(format!("member {index} does not hold exactly its partitions yet ({})", p.partition));
                }
            }
        }
        None
    })
}

/// `GET url` as `T`.
fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::blocking::Client, url: &str) -> anyhow::Result<T> {
    let response = http.get(url).send()?;
    let status = response.status();
    if !status.is_success() {
        bail!("GET {url}: {status}");
    }
    Ok(response.json()?)
}

/// Asks `pending` every [`POLL_INTERVAL`] until it has nothing left to say, at most
/// [`SETUP_TIMEOUT`]; on a timeout, fails with its last answer.
fn poll(what: &str, mut pending: impl FnMut() -> Option<String>) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        match pending() {
            None => return Ok(()),
            Some(_) if stopped() => bail!("stopped by a signal"),
            Some(last) if started.elapsed() >= SETUP_TIMEOUT => {
                bail!("timed out after {SETUP_TIMEOUT:?} waiting until {what}: {last}")
            }
            Some(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// The report of a run from its operations, faults and last findings.
fn report(
    config: &FaultsConfig,
    ops: &[Op],
    reads: &[CausalRead],
    begun: &[Fault],
    converge_s: Option<f64>,
    findings: &Findings,
    crashed: Vec<String>,
) -> FaultsReport {
    let mut by_kind: BTreeMap<OpKind, Outcomes> = BTreeMap::new();
    for op in ops {
        let outcomes = by_kind.entry(op.kind).or_default();
        match op.outcome {
            Outcome::Acknowledged => outcomes.acknowledged += 1,
            Outcome::Failed => outcomes.failed += 1,
            Outcome::Indeterminate => outcomes.indeterminate += 1,
        }
    }
    let mut replies: BTreeMap<String, u64> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.outcome != Outcome::Acknowledged) {
        *replies.entry(reply_class(&op.reply)).or_default() += 1;
    }
    let mut faults: BTreeMap<FaultKind, u64> = BTreeMap::new();
    for fault in begun {
        *faults.entry(fault.kind).or_default() += 1;
    }
    let by_key: BTreeMap<&str, &Op> = ops.iter().map(|op| (op.key.as_str(), op)).collect();
    let describe_lost = |(key, members): (&String, &Vec<usize>)| {
        let Some(op) = by_key.get(key.as_str()) else { return format!("{key}: missing on members {members:?}") };
        let active: Vec<String> = begun
            .iter()
            .filter(|f| f.start_s <= op.done_s && f.end_s >= op.sent_s)
            .map(|f| format!("{} of member {}", f.kind, f.member))
            .collect();
        format!(
            "{:?} {key} acknowledged by member {} ({:.1}s..{:.1}s, reply {}), missing on members {members:?}; \
             faults active: {}",
            op.kind,
            op.member,
            op.sent_s,
            op.done_s,
            op.reply.chars().take(120).collect::<String>(),
            if active.is_empty() { "none".to_string() } else { active.join(", ") }
        )
    };
    let mut problems = Vec::new();
    problems.extend(check::examples(findings.lost.iter().map(describe_lost).collect::<Vec<_>>().into_iter()));
    problems.extend(check::examples(
        findings
            .lost_ack1
            .iter()
            .map(|entry| format!("ack 1: {}", describe_lost(entry)))
            .collect::<Vec<_>>()
            .into_iter(),
    ));
    let violations: Vec<String> = reads
        .iter()
        .filter(|read| read.result == ReadResult::Violation)
        .map(|read| {
            format!(
                "causal read of {} (put through member {}) through member {} at {:.1}s: {}",
                read.key, read.written_through, read.member, read.sent_s, read.reply
            )
        })
        .collect();
    problems.extend(check::examples(violations.clone().into_iter()));
    let mut causal_reads: BTreeMap<ReadResult, u64> = BTreeMap::new();
    for read in reads {
        *causal_reads.entry(read.result).or_default() += 1;
    }
    for list in [
        &findings.wrong_values,
        &findings.phantoms,
        &findings.counters_out_of_bounds,
        &findings.diverged,
        &findings.unreachable,
    ] {
        problems.extend(check::examples(list.iter().cloned()));
    }
    FaultsReport {
        seed: config.seed,
        members: config.members,
        duration_s: config.duration_s,
        lost: findings.lost.len(),
        lost_ack1: findings.lost_ack1.len(),
        converge_s,
        causal_reads,
        causal_violations: violations.len(),
        quiet_s: config.duration_s as f64 - begun.iter().map(|fault| fault.end_s).fold(0.0, f64::max),
        faults,
        ops: by_kind,
        unacknowledged_replies: replies,
        schedule: begun.to_vec(),
        problems,
        crashed,
        logs: None,
    }
}

/// What kind of reply `reply` (as a write recorded it) was: its status with the error's first
/// words, or the client's error.
fn reply_class(reply: &str) -> String {
    // A batch's reply names its partition, which does not tell kinds apart.
    match reply.split_once(", partition ") {
        Some((status, rest)) => format!("batch {status}: {}", rest.split_once(": ").map_or(rest, |(_, s)| s)),
        None => reply.to_string(),
    }
}

/// Keeps the logs of a run, with its operations beside them (`ops.jsonl`), where they survive
/// the run: in `--keep-logs`, else in a directory of their own under the system's temporary one.
fn keep(logs: &Path, config: &FaultsConfig, ops: &[Op]) -> anyhow::Result<PathBuf> {
    let kept = match &config.keep_logs {
        Some(kept) => kept.clone(),
        None => {
            let kept = std::env::temp_dir().join(format!("canopy-faults-{}-{}", config.seed, std::process::id()));
            std::fs::create_dir_all(&kept)?;
            for entry in std::fs::read_dir(logs)? {
                let entry = entry?;
                std::fs::copy(entry.path(), kept.join(entry.file_name()))?;
            }
            kept
        }
    };
    let lines: Vec<String> = ops.iter().filter_map(|op| serde_json::to_string(op).ok()).collect();
    std::fs::write(kept.join("ops.jsonl"), lines.join("\n") + "\n")?;
    Ok(kept)
}
