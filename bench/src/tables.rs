//! `canopy-bench tables`: sharded tables across real `canopy serve --tables` processes on
//! loopback, driven through their HTTP API as a client drives them.
//!
//! One run starts the members, creates a table and measures: routed batch ingest (each batch
//! goes to a random member, which splits it by partition and sends each part to its owners)
//! beside the embedded engine's ingest of as many keys into one topic; single puts through
//! random members; the latency of a get sent to a member holding no copy of the key's partition
//! and of a put acknowledged by two copies (`?ack=2`); and how long the table takes to be
//! balanced again after one more member starts. Key *i* and its value are functions of *i*
//! ([`key_of`], [`value_of`]), so a sample of every key written is read back at the end.

mod cluster;
mod load;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure};
use serde::Serialize;

use crate::ingest::{self, IngestConfig};
use cluster::Cluster;
use load::{Phase, Placement};

/// Bytes of every key: the hex text of 16 bytes, so keys travel in URL paths unescaped.
pub const KEY_BYTES: usize = 32;

/// Longest wait for the members to finish compacting before latencies are timed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Bytes of every value, as `canopy-bench ingest` writes them.
pub const VALUE_BYTES: usize = 100;

/// The table the measurements write.
pub const TABLE: &str = "bench";

/// The table of the join measurement when it runs on a cluster of its own (`join_keys` differs
/// from `keys`).
pub const JOIN_TABLE: &str = "join";

/// Most members a run starts (the newcomer of the join aside).
pub const MEMBERS_MAX: usize = 16;

/// Most concurrent client threads.
pub const CLIENTS_MAX: usize = 16;

/// Most operations in one batch request: the node's default `batch_ops_max`.
pub const BATCH_OPS_MAX: usize = 10_000;

/// Failure messages a report keeps, the first ones.
pub const FAILURE_EXAMPLES_MAX: usize = 5;

/// The acknowledgement count of the acknowledged puts' latency (`PUT ...?ack=2`).
const ACK: u32 = 2;

/// Times the embedded ingest runs; its figure is their median. One 1M-key run lasts about 3 s,
/// and on a shared 2-core machine single runs of the same binary differed by up to 2×.
const EMBEDDED_RUNS: usize = 3;

/// What to run and measure.
#[derive(Clone, Debug)]
pub struct TablesConfig {
    /// The `canopy` binary the members run.
    pub canopy: PathBuf,
    /// Members started before the table is created.
    pub members: usize,
    /// Copies of each partition.
    pub replicas: u32,
    /// Partitions of the table.
    pub partitions: u32,
    /// Keys of the routed batch ingest.
    pub keys: usize,
    /// Keys per batch request.
    pub batch: usize,
    /// The batch requests' body: DAG-CBOR rather than JSON.
    pub cbor: bool,
    /// Concurrent client threads of the batch ingest and the concurrent single puts.
    pub clients: usize,
    /// Single puts, once from one sequential client and once from `clients`.
    pub singles: usize,
    /// Samples of each latency: forwarded gets, and puts acknowledged by two copies.
    pub gets: usize,
    /// Keys of the table when one more member joins: `keys` measures the join on the ingested
    /// table itself, another count on a cluster of its own; 0 measures no join.
    pub join_keys: usize,
    /// Keys read back at the end, each through a random member.
    pub read_back: usize,
    /// How long a member stays one without renewing its entry (`canopy serve --member-ttl-s`).
    pub member_ttl_s: u64,
    /// Longest wait for the cluster to be ready, and for the table to be balanced after a join.
    pub timeout: Duration,
}

impl TablesConfig {
    /// Refuses a configuration no run can carry out, saying which setting to change.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!((1..=MEMBERS_MAX).contains(&self.members), "members must be between 1 and {MEMBERS_MAX}");
        let replicas_max = canopy_node::tables::REPLICAS_MAX;
        ensure!((1..=replicas_max).contains(&self.replicas), "replicas must be between 1 and {replicas_max}");
        let partitions_max = canopy_node::tables::PARTITIONS_MAX;
        ensure!((1..=partitions_max).contains(&self.partitions), "partitions must be between 1 and {partitions_max}");
        ensure!(self.keys > 0, "keys must be positive");
        ensure!((1..=BATCH_OPS_MAX).contains(&self.batch), "batch must be between 1 and {BATCH_OPS_MAX}");
        ensure!((1..=CLIENTS_MAX).contains(&self.clients), "clients must be between 1 and {CLIENTS_MAX}");
        ensure!(self.member_ttl_s > 0, "member-ttl-s must be positive");
        if !self.canopy.is_file() {
            bail!(
                "no canopy binary at {}: build it (cargo build -p canopy-node --bins) or name it with --canopy",
                self.canopy.display()
            );
        }
        Ok(())
    }

    /// The command that runs this configuration alone.
    pub fn command(&self) -> String {
        format!(
            "canopy-bench tables --members {} --replicas {} --partitions {} --keys {} --batch {} --body {} \
             --clients {} --singles {} --gets {} --join-keys {} --read-back {} --member-ttl-s {}",
            self.members,
            self.replicas,
            self.partitions,
            self.keys,
            self.batch,
            if self.cbor { "cbor" } else { "json" },
            self.clients,
            self.singles,
            self.gets,
            self.join_keys,
            self.read_back,
            self.member_ttl_s
        )
    }
}

/// Failed operations, by phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Failures {
    /// Keys of the batch ingest whose partition did not apply them.
    pub batch_keys: u64,
    /// Single puts refused or unanswered, sequential and concurrent.
    pub singles: u64,
    /// Forwarded gets refused, unanswered or answered with another value.
    pub gets: u64,
    /// Acknowledged puts refused, unanswered or acknowledged by fewer copies.
    pub acknowledged_puts: u64,
    /// Keys read back at the end that were missing or had another value.
    pub read_back: u64,
}

impl Failures {
    /// Every failure of the run.
    pub fn total(&self) -> u64 {
        self.batch_keys + self.singles + self.gets + self.acknowledged_puts + self.read_back
    }
}

/// Figures of a run.
#[derive(Clone, Debug, Serialize)]
pub struct TablesReport {
    /// The command that runs this measurement alone.
    pub command: String,
    /// Members before the join.
    pub members: usize,
    /// Copies of each partition.
    pub replicas: u32,
    /// Partitions of the table.
    pub partitions: u32,
    /// Keys of the batch ingest.
    pub keys: usize,
    /// Keys per batch request.
    pub batch: usize,
    /// The batch requests' body: `cbor` or `json`.
    pub body: String,
    /// Concurrent client threads.
    pub clients: usize,
    /// Keys per second of the routed batch ingest.
    pub batch_keys_per_s: f64,
    /// Median batch request latency, microseconds.
    pub batch_p50_us: u64,
    /// 99th percentile batch request latency, microseconds.
    pub batch_p99_us: u64,
    /// Keys per second of the embedded engine writing as many keys in the same batches into
    /// one topic (`canopy-bench ingest`): the median of [`EMBEDDED_RUNS`] runs.
    pub ingest_keys_per_s: f64,
    /// Keys per second of each of those runs, in the order they ran.
    pub ingest_runs_keys_per_s: Vec<f64>,
    /// `batch_keys_per_s` over `ingest_keys_per_s`.
    pub ratio: f64,
    /// Single puts of each single-put measurement.
    pub singles: usize,
    /// Single puts per second from one sequential client.
    pub singles_per_s: f64,
    /// Median latency of those puts, microseconds.
    pub singles_p50_us: u64,
    /// 99th percentile of the same.
    pub singles_p99_us: u64,
    /// Single puts per second from `clients` concurrent clients.
    pub singles_concurrent_per_s: f64,
    /// Samples of each latency.
    pub gets: usize,
    /// Median latency of a get sent to a member holding no copy of the key, microseconds;
    /// `None` when every member holds every partition.
    pub get_p50_us: Option<u64>,
    /// 99th percentile of the same.
    pub get_p99_us: Option<u64>,
    /// Whether the members had finished compacting when the latencies were timed.
    pub latencies_idle: bool,
    /// Median latency of a put acknowledged by two copies, microseconds; `None` with fewer
    /// than two replicas.
    pub ack2_p50_us: Option<u64>,
    /// 99th percentile of the same.
    pub ack2_p99_us: Option<u64>,
    /// Keys of the table when the new member joined (0: no join measured).
    pub join_keys: usize,
    /// Seconds from starting the new member until the table was balanced again; `None` when
    /// it was not within the timeout, or no join was measured.
    pub join_s: Option<f64>,
    /// What was still unbalanced when the timeout ran out.
    pub join_pending: Option<String>,
    /// Keys the run wrote into the measured table: key 0 up to this one, excluded.
    pub written_keys: u64,
    /// Keys read back at the end.
    pub read_back: usize,
    /// Every failure of the run.
    pub failures: u64,
    /// The failures by phase.
    pub failures_by_phase: Failures,
    /// The first failures' messages.
    pub failure_examples: Vec<String>,
    /// The measured cluster's members in the order they started (the newcomer of the join
    /// last, when it joined this cluster), each as its API URL and peer id, to tell which
    /// member a failure names.
    pub member_ids: Vec<String>,
}

/// Key `index` of every run: 32 hex digits.
pub fn key_of(index: u64) -> String {
    crate::scale::key_of(index, KEY_BYTES / 2).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The value of key `index`.
pub fn value_of(index: u64) -> Vec<u8> {
    crate::scale::value_of(index, VALUE_BYTES)
}

/// Runs the measurements.
pub fn run(config: &TablesConfig) -> anyhow::Result<TablesReport> {
    run_with(config, |_| Ok(()))
}

/// Runs the measurements and, before the measured cluster stops, calls `inspect` with the API
/// URLs of all its members (the newcomer too, when the join ran on it).
pub fn run_with(
    config: &TablesConfig,
    inspect: impl FnOnce(&[String]) -> anyhow::Result<()>,
) -> anyhow::Result<TablesReport> {
    config.check()?;
    let mut failures = Failures::default();
    let mut examples = Vec::new();
    let mut note = |phase: &Phase| {
        for example in &phase.examples {
            if examples.len() < FAILURE_EXAMPLES_MAX {
                examples.push(example.clone());
            }
        }
        phase.failures
    };

    // The embedded engine first, before any member runs, so they do not share the cores.
    let mut ingest_runs_keys_per_s = Vec::with_capacity(EMBEDDED_RUNS);
    for _ in 0..EMBEDDED_RUNS {
        ingest_runs_keys_per_s.push(embedded_ingest(config)?);
    }
    let ingest_keys_per_s = median(&ingest_runs_keys_per_s);

    let mut cluster = Cluster::start(&config.canopy, config.members, config.member_ttl_s, config.timeout)?;
    cluster.create_table(TABLE, config.partitions, config.replicas)?;
    load::warm_up(cluster.members(), TABLE, config.partitions)?;
    let keys = config.keys as u64;
    let batches = load::batch_ingest(
        cluster.members(),
        TABLE,
        config.partitions,
        0..keys,
        (config.batch, config.cbor),
        config.clients,
    )?;
    failures.batch_keys = note(&batches);
    let batch_keys_per_s = keys as f64 / batches.seconds;

    let singles = config.singles as u64;
    let sequential = load::puts(cluster.members(), TABLE, keys..keys + singles, 1, None)?;
    let concurrent = load::puts(cluster.members(), TABLE, keys + singles..keys + 2 * singles, config.clients, None)?;
    failures.singles = note(&sequential) + note(&concurrent);
    let mut written = keys + 2 * singles;

    // Latencies are an idle cluster's: the members first finish compacting what the load left.
    let idle = cluster.wait_idle(IDLE_TIMEOUT);
    if let Err(busy) = &idle {
        eprintln!("tables: timing gets on a cluster still compacting: {busy}");
    }
    let placement = Placement::of(cluster.members(), TABLE, config.partitions)?;
    let gets = load::forwarded_gets(cluster.members(), TABLE, &placement, keys, config.gets)?;
    if let Some(gets) = &gets {
        failures.gets = note(gets);
    }
    let acknowledged = if config.replicas >= ACK && config.members >= ACK as usize {
        let range = written..written + config.gets as u64;
        written = range.end;
        Some(load::puts(cluster.members(), TABLE, range, 1, Some(ACK))?)
    } else {
        None
    };
    if let Some(acknowledged) = &acknowledged {
        failures.acknowledged_puts = note(acknowledged);
    }

    let mut join = Join::default();
    if config.join_keys == config.keys {
        join = measure_join(&mut cluster, TABLE, written as usize, config.timeout)?;
    }
    let read_back = load::read_back(cluster.members(), TABLE, written, config.read_back)?;
    failures.read_back = note(&read_back);
    let apis: Vec<String> = cluster.members().iter().map(|member| member.api.clone()).collect();
    let member_ids = cluster.members().iter().map(|member| format!("{} {}", member.api, member.peer_id)).collect();
    inspect(&apis)?;
    drop(cluster);

    if config.join_keys != config.keys && config.join_keys > 0 {
        let filled;
        (join, filled) = join_on_own_cluster(config)?;
        failures.batch_keys += note(&filled);
    }

    let latency =
        |phase: &Option<Phase>, quantile: f64| phase.as_ref().map(|p| p.latencies.value_at_quantile(quantile));
    Ok(TablesReport {
        command: config.command(),
        members: config.members,
        replicas: config.replicas,
        partitions: config.partitions,
        keys: config.keys,
        batch: config.batch,
        body: if config.cbor { "cbor" } else { "json" }.to_string(),
        clients: config.clients,
        batch_keys_per_s,
        batch_p50_us: batches.latencies.value_at_quantile(0.5),
        batch_p99_us: batches.latencies.value_at_quantile(0.99),
        ingest_keys_per_s,
        ingest_runs_keys_per_s,
        ratio: batch_keys_per_s / ingest_keys_per_s,
        singles: config.singles,
        singles_per_s: sequential.per_s(),
        singles_p50_us: sequential.latencies.value_at_quantile(0.5),
        singles_p99_us: sequential.latencies.value_at_quantile(0.99),
        singles_concurrent_per_s: concurrent.per_s(),
        gets: config.gets,
        get_p50_us: latency(&gets, 0.5),
        get_p99_us: latency(&gets, 0.99),
        latencies_idle: idle.is_ok(),
        ack2_p50_us: latency(&acknowledged, 0.5),
        ack2_p99_us: latency(&acknowledged, 0.99),
        join_keys: join.keys,
        join_s: join.seconds,
        join_pending: join.pending,
        written_keys: written,
        read_back: config.read_back,
        failures: failures.total(),
        failures_by_phase: failures,
        failure_examples: examples,
        member_ids,
    })
}

/// The median of `figures` (of an even number, the upper of the middle two).
fn median(figures: &[f64]) -> f64 {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Keys per second of the embedded engine writing `keys` keys in batches of `batch` into one
/// topic, as `canopy-bench ingest --keys K --batch B` measures it (its bare RocksDB side aside).
fn embedded_ingest(config: &TablesConfig) -> anyhow::Result<f64> {
    let report = ingest::run(&IngestConfig {
        keys: config.keys,
        key_bytes: KEY_BYTES,
        value_bytes: VALUE_BYTES,
        batch: config.batch,
        topics: 1,
        writers: 1,
        store_writer_threads: 2,
        seed: 1,
        dir: None,
        rounds: 1,
        compact: false,
        compact_during: false,
        key_history: true,
    })?;
    Ok(report.canopy.keys_per_s)
}

/// Starts a cluster of its own, fills a table of `join_keys` keys, and measures one more
/// member joining it; returns the join and the filling's requests.
fn join_on_own_cluster(config: &TablesConfig) -> anyhow::Result<(Join, Phase)> {
    let mut cluster = Cluster::start(&config.canopy, config.members, config.member_ttl_s, config.timeout)?;
    cluster.create_table(JOIN_TABLE, config.partitions, config.replicas)?;
    let range = 0..config.join_keys as u64;
    let filled = load::batch_ingest(
        cluster.members(),
        JOIN_TABLE,
        config.partitions,
        range,
        (config.batch, config.cbor),
        config.clients,
    )?;
    let join = measure_join(&mut cluster, JOIN_TABLE, config.join_keys, config.timeout)?;
    Ok((join, filled))
}

/// What a join measurement found.
#[derive(Default)]
struct Join {
    /// Keys of the table.
    keys: usize,
    /// Seconds until the table was balanced, if it was.
    seconds: Option<f64>,
    /// What was still unbalanced at the timeout, if it was not.
    pending: Option<String>,
}

/// Starts one more member and waits, at most `timeout`, until `table` (holding `keys` keys) is
/// balanced again: every member, the newcomer too, holds exactly the partitions placed on it.
fn measure_join(cluster: &mut Cluster, table: &str, keys: usize, timeout: Duration) -> anyhow::Result<Join> {
    let started = std::time::Instant::now();
    cluster.add_member()?;
    let (seconds, pending) = match cluster.wait_balanced(table, timeout.saturating_sub(started.elapsed())) {
        Ok(()) => (Some(started.elapsed().as_secs_f64()), None),
        Err(pending) => (None, Some(pending)),
    };
    Ok(Join { keys, seconds, pending })
}
