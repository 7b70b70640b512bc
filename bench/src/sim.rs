//! `canopy-bench sim`: a whole cluster in one process under a seeded workload and faults.

use std::collections::BTreeMap;
use std::fmt;

use canopy_crdt::sim::{
    Cluster, FaultCounts, Faults, SimError, reference_counters, reference_docs, reference_refused, reference_state,
    reference_state_at,
};
use canopy_crdt::{Access, Batch, DocWrite, IndexDef, IndexKind, Mode, Op, WriteError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of replicas.
    pub replicas: usize,
    /// Number of topics, all subscribed by every replica.
    pub topics: usize,
    /// Number of workload operations (puts, deletes, batches).
    pub ops: usize,
    /// Seed of everything random in the run.
    pub seed: u64,
    /// Network fault probabilities during the workload.
    pub faults: Faults,
    /// Split replicas into random groups now and then, and heal them.
    pub partitions: bool,
    /// Crash replicas now and then and reopen them from disk.
    pub crashes: bool,
    /// Hostile participants attacking the replicas during the workload.
    pub adversaries: usize,
    /// Byzantine participants: adversaries that also forge and replay other authors' blocks.
    /// With any, the cluster also has a topic owned by replica 0.
    pub byzantine: usize,
    /// Before the workload, replica 0 writes this many single puts (one block each, a chain)
    /// while cut off from the others, who then catch up the whole chain.
    pub deep: usize,
    /// Probability per workload operation that a random replica compacts a random topic; with
    /// it, a late joiner catches up from compacted replicas at the end.
    pub compact: f64,
    /// Most simulation steps allowed to reach quiescence after the faults stop.
    pub quiet_steps_max: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            replicas: 5,
            topics: 3,
            ops: 1000,
            seed: 1,
            faults: Faults::default(),
            partitions: false,
            crashes: false,
            adversaries: 0,
            byzantine: 0,
            deep: 0,
            compact: 0.0,
            quiet_steps_max: 2_000_000,
        }
    }
}

/// Outcome of a simulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReport {
    /// The configuration's seed.
    pub seed: u64,
    /// Replicas simulated.
    pub replicas: usize,
    /// Topics simulated.
    pub topics: usize,
    /// Operations run.
    pub ops: usize,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// Messages sent.
    pub messages: u64,
    /// Steps from the end of the faults to quiescence, if it was reached.
    pub rounds: Option<u64>,
    /// Simulated milliseconds of the whole run.
    pub sim_ms: u64,
    /// Replica-topic pairs whose state differs from the reference model, plus acknowledged
    /// writes missing from some replica.
    pub diverged: u64,
    /// Acknowledged writes.
    pub acknowledged: usize,
    /// Hostile participants.
    pub adversaries: usize,
    /// Byzantine participants.
    pub byzantine: usize,
    /// Local writes refused because the replica may not write the topic.
    pub refused_writes: u64,
    /// Received blocks refused by replicas running at the end because their author may not
    /// write the topic.
    pub blocks_refused: u64,
    /// Grants and revocations replica 0 made in the topic with a writer list.
    pub list_changes: u64,
    /// Blocks by byzantine participants that every replica holds at the end: written while
    /// they were on the writer list (their other blocks were refused).
    pub byzantine_admitted: u64,
    /// Acknowledged increments of counters.
    pub increments: u64,
    /// Acknowledged puts of values that expire.
    pub expiring: u64,
    /// Acknowledged writes of documents (puts, patches and deletes).
    pub docs: u64,
    /// Keys whose visible value at the end differs from what it would be had nothing expired.
    pub expired: u64,
    /// Length of the chain caught up before the workload.
    pub deep: usize,
    /// Compactions made.
    pub compactions: u64,
    /// Snapshots fetched from peers and merged by replicas running at the end.
    pub snapshots_merged: u64,
    /// Snapshots replicas running at the end refused because the peer offering them may not
    /// speak for the topic (hostile participants' lies among them).
    pub snapshots_refused: u64,
    /// Whether a replica that started empty joined after every replica compacted everything.
    pub late_joiner: bool,
    /// Peak resident memory of the process once the replicas were quiet, before the check
    /// (which loads every block to recompute the state from scratch). Not printed: it varies
    /// from run to run.
    pub quiet_peak_rss_bytes: Option<u64>,
}

impl SimReport {
    /// True when the cluster converged to the reference state with nothing lost.
    pub fn passed(&self) -> bool {
        self.rounds.is_some() && self.diverged == 0
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.faults;
        write!(
            f,
            "seed={} replicas={} topics={} ops={} adversaries={} byzantine={} refused_writes={} blocks_refused={} \
             list_changes={} byzantine_admitted={} deep={} acknowledged={} increments={} expiring={} expired={} docs={} \
             dropped={} duplicated={} \
             reordered={} corrupted={} partitioned={} partitions={} crashes={} compactions={} snapshots_merged={} \
             snapshots_refused={} late_joiner={} \
             messages={} rounds={} sim_ms={} diverged={}",
            self.seed,
            self.replicas,
            self.topics,
            self.ops,
            self.adversaries,
            self.byzantine,
            self.refused_writes,
            self.blocks_refused,
            self.list_changes,
            self.byzantine_admitted,
            self.deep,
            self.acknowledged,
            self.increments,
            self.expiring,
            self.expired,
            self.docs,
            c.dropped,
            c.duplicated,
            c.reordered,
            c.corrupted,
            c.partitioned,
            c.partitions,
            c.crashes,
            self.compactions,
            self.snapshots_merged,
            self.snapshots_refused,
            self.late_joiner,
            self.messages,
            self.rounds.map_or_else(|| "never".to_string(), |r| r.to_string()),
            self.sim_ms,
            self.diverged
        )
    }
}

/// Runs a simulation in a fresh temporary directory.
pub fn run(config: &SimConfig) -> Result<SimReport, SimError> {
    let dir = tempfile::tempdir().map_err(|e| SimError::Open(canopy_crdt::OpenError::Thread(e)))?;
    let mut topics: Vec<String> = (0..config.topics).map(|t| format!("topic-{t}")).collect();
    if config.byzantine > 0 {
        // A topic only replica 0 writes: everyone else, byzantine participants included, is
        // refused.
        let owner = Cluster::replica_author(config.seed, 0);
        topics.push(Access::topic_name(Mode::Owned, &owner, "owned").expect("a valid owned name"));
        // A topic replica 0 owns and keeps a writer list for: it grants and revokes the other
        // replicas and the byzantine participants, which go on writing after their revocation.
        topics.push(Access::topic_name(Mode::Writers, &owner, "team").expect("a valid writers name"));
    }
    let mut cluster = Cluster::new(dir.path(), config.replicas, &topics, config.seed)?;
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5eed_c0de);
    if config.deep > 0 {
        write_chain(&mut cluster, &topics[0], config.deep)?;
    }
    cluster.add_adversaries(config.adversaries);
    cluster.add_byzantine(config.byzantine);
    let (mut refused_writes, mut wrong_writes, mut list_changes) = (0, 0, 0);
    // Every acknowledged increment, summed per topic and counter: what every replica's counters
    // must end at.
    let mut counted = Counted::new();
    cluster.set_faults(config.faults.clone());

    let mut heal_at: Option<usize> = None;
    let mut restarts: Vec<(usize, usize)> = Vec::new();
    for op in 0..config.ops {
        if config.partitions {
            if heal_at.is_some_and(|at| op >= at) {
                cluster.heal();
                heal_at = None;
            } else if heal_at.is_none() && rng.random_bool(0.01) {
                cluster.random_partition();
                heal_at = Some(op + rng.random_range(10..100));
            }
        }
        if config.crashes {
            restarts.retain(|&(replica, at)| {
                if op >= at {
                    cluster.restart(replica).expect("a crashed replica reopens from disk");
                    false
                } else {
                    true
                }
            });
            let up = (0..config.replicas).filter(|r| cluster.is_up(*r)).count();
            if up > 1 && rng.random_bool(0.01) {
                let replica = rng.random_range(0..config.replicas);
                if cluster.is_up(replica) {
                    if config.compact > 0.0 && rng.random_bool(0.5) {
                        let topic = &topics[rng.random_range(0..topics.len())];
                        cluster.compact(replica, topic)?;
                    }
                    cluster.crash(replica);
                    restarts.push((replica, op + rng.random_range(5..60)));
                }
            }
        }
        if config.byzantine > 0 && cluster.is_up(0) && rng.random_bool(0.05) {
            list_changes +=
                u64::from(change_writers(&mut cluster, &mut rng, config, topics.last().expect("a writers topic"))?);
        }
        match workload_step(&mut cluster, &mut rng, config, &topics, &mut counted)? {
            Written::Yes => {}
            Written::Refused => refused_writes += 1,
            Written::Wrongly => wrong_writes += 1,
        }
        if config.compact > 0.0 && rng.random_bool(config.compact) {
            let up: Vec<usize> = (0..config.replicas).filter(|r| cluster.is_up(*r)).collect();
            let replica = up[rng.random_range(0..up.len())];
            cluster.compact(replica, &topics[rng.random_range(0..topics.len())])?;
        }
        let pause = rng.random_range(0..30);
        cluster.run_for(pause)?;
    }

    cluster.set_faults(Faults::default());
    cluster.silence_adversaries();
    cluster.heal();
    for replica in 0..config.replicas {
        cluster.restart(replica)?;
    }
    let mut rounds = cluster.run_until_quiet(config.quiet_steps_max).ok();
    let late_joiner = config.compact > 0.0 && rounds.is_some();
    if late_joiner {
        // History compacted everywhere, then a replica that starts empty joins.
        for replica in 0..config.replicas {
            for topic in &topics {
                cluster.compact(replica, topic)?;
            }
        }
        cluster.add_replica()?;
        rounds = cluster.run_until_quiet(config.quiet_steps_max).ok().map(|more| rounds.unwrap_or(0) + more);
    }
    let quiet_peak_rss_bytes = peak_rss_bytes();
    // Every replica collects what expired by the end, so key counts are settled too.
    cluster.collect_expired()?;
    let diverged = wrong_writes + if rounds.is_some() { count_divergence(&cluster, &topics, &counted)? } else { 0 };
    let mut expired = 0;
    for topic in &topics {
        let blocks = cluster.all_blocks(topic)?;
        let (ever, now) = (reference_state(&blocks), reference_state_at(&blocks, cluster.wall_ms()));
        expired += ever.iter().filter(|(key, value)| now.get(*key) != Some(value)).count() as u64;
    }
    Ok(SimReport {
        seed: config.seed,
        replicas: config.replicas,
        topics: config.topics,
        ops: config.ops,
        faults: cluster.fault_counts().clone(),
        messages: cluster.messages(),
        rounds,
        sim_ms: cluster.now_ms(),
        diverged,
        acknowledged: cluster.acknowledged().len(),
        increments: counted.increments,
        expiring: counted.expiring,
        docs: counted.docs,
        expired,
        adversaries: config.adversaries,
        byzantine: config.byzantine,
        refused_writes,
        blocks_refused: cluster.blocks_refused(),
        list_changes,
        byzantine_admitted: byzantine_admitted(&cluster, &topics)?,
        deep: config.deep,
        compactions: cluster.compactions(),
        snapshots_merged: cluster.snapshots_merged(),
        snapshots_refused: cluster.snapshots_refused(),
        late_joiner,
        quiet_peak_rss_bytes,
    })
}

/// Blocks by hostile participants held in topics with a writer list.
fn byzantine_admitted(cluster: &Cluster, topics: &[String]) -> Result<u64, SimError> {
    let hostile = cluster.adversary_authors();
    let mut held = 0;
    for topic in topics {
        if Access::of(topic)?.mode() == Mode::Writers {
            held += cluster.all_blocks(topic)?.values().filter(|block| hostile.contains(&block.author())).count();
        }
    }
    Ok(held as u64)
}

/// The process's peak resident set so far, from /proc (None where there is no /proc).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Replica 0 writes `length` single puts alone, one block each on top of the last: a chain the
/// other replicas then catch up from nothing.
fn write_chain(cluster: &mut Cluster, topic: &str, length: usize) -> Result<(), SimError> {
    let mut groups = vec![1; cluster.len()];
    groups[0] = 0;
    cluster.partition(groups);
    let handle = cluster.topic(0, topic)?;
    for i in 0..length {
        // Written through the topic directly: announcing each block to nobody would only cost.
        handle.put(format!("chain/{:08}", i % 100_000).into_bytes(), (i as u64).to_be_bytes().to_vec())?;
    }
    cluster.heal();
    Ok(())
}

fn key(rng: &mut StdRng) -> Vec<u8> {
    // A few hot keys written by many replicas, and a wider cold set.
    if rng.random_bool(0.3) {
        format!("hot/{}", rng.random_range(0..4)).into_bytes()
    } else {
        format!("cold/{:04}", rng.random_range(0..400)).into_bytes()
    }
}

fn value(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.random_range(0..100) {
        0..=59 => rng.random_range(0..32),
        60..=97 => rng.random_range(32..1024),
        _ => rng.random_range(1024..16_384),
    };
    (0..len).map(|_| rng.random()).collect()
}

/// What became of a workload write.
enum Written {
    /// Written, by a replica that may write the topic.
    Yes,
    /// Refused, to a replica that may not write the topic.
    Refused,
    /// Written although the replica may not write the topic, or refused although it may.
    Wrongly,
}

/// Replica 0 grants or revokes, on the topic it keeps a writer list for, another replica or
/// (half the time) a byzantine participant. Returns whether the list changed.
fn change_writers(cluster: &mut Cluster, rng: &mut StdRng, config: &SimConfig, topic: &str) -> Result<bool, SimError> {
    let hostile = cluster.adversary_authors();
    let writer = if !hostile.is_empty() && rng.random_bool(0.5) {
        hostile[rng.random_range(0..hostile.len())]
    } else {
        Cluster::replica_author(config.seed, rng.random_range(1..config.replicas.max(2)))
    };
    let changed =
        if rng.random_bool(0.5) { cluster.grant(0, topic, writer)? } else { cluster.revoke(0, topic, writer)? };
    Ok(changed.is_some())
}

/// Acknowledged increments: their number and their sum per topic and counter; and acknowledged
/// puts that expire.
#[derive(Default)]
struct Counted {
    increments: u64,
    expiring: u64,
    docs: u64,
    sums: BTreeMap<(String, Vec<u8>), i128>,
}

impl Counted {
    fn new() -> Counted {
        Counted::default()
    }
}

/// One workload operation on a random replica and topic.
fn workload_step(
    cluster: &mut Cluster,
    rng: &mut StdRng,
    config: &SimConfig,
    topics: &[String],
    counted: &mut Counted,
) -> Result<Written, SimError> {
    let up: Vec<usize> = (0..config.replicas).filter(|r| cluster.is_up(*r)).collect();
    let replica = up[rng.random_range(0..up.len())];
    let topic = &topics[rng.random_range(0..topics.len())];
    let author = Cluster::replica_author(config.seed, replica);
    let handle = cluster.topic(replica, topic)?;
    let admitted = match handle.access() {
        // The list at this replica's heads decides, as it will for every peer of the block.
        Access::Writers { owner } => owner == author || handle.writers()?.contains(&author),
        access => access.admits(&author).is_ok(),
    };
    match write(cluster, rng, replica, topic) {
        Ok(written) if admitted => {
            counted.expiring += u64::from(written.expiring);
            counted.docs += u64::from(written.doc);
            for (key, n) in written.increments {
                counted.increments += 1;
                *counted.sums.entry((topic.clone(), key)).or_default() += i128::from(n);
            }
            Ok(Written::Yes)
        }
        Err(SimError::Write(WriteError::Forbidden(_))) if !admitted => Ok(Written::Refused),
        Ok(_) | Err(SimError::Write(WriteError::Forbidden(_))) => Ok(Written::Wrongly),
        Err(error) => Err(error),
    }
}

/// What one random write did beyond setting and deleting keys.
struct WriteMade {
    /// Increments, as `(counter, n)`.
    increments: Vec<(Vec<u8>, i64)>,
    /// Whether it put a value that expires.
    expiring: bool,
    /// Whether it wrote a document.
    doc: bool,
}

/// One random write.
fn write(cluster: &mut Cluster, rng: &mut StdRng, replica: usize, topic: &str) -> Result<WriteMade, SimError> {
    let mut increments = Vec::new();
    let mut expiring = false;
    let mut doc = false;
    match rng.random_range(0..100) {
        0..=9 => {
            let (key, n) = (counter_key(rng), rng.random_range(-5..=20));
            cluster.increment(replica, topic, &key, n)?;
            increments.push((key, n));
        }
        10..=49 => {
            let (key, value) = (key(rng), value(rng));
            cluster.put(replica, topic, &key, &value)?;
        }
        50..=59 => {
            // Lifetimes around the time a partition or a crash lasts, so some expire while a
            // replica cannot hear of the value, and some only after the run settles.
            let (key, value, ttl_ms) = (key(rng), value(rng), rng.random_range(50..5_000));
            cluster.put_for(replica, topic, (&key, &value), ttl_ms)?;
            expiring = true;
        }
        60..=71 => {
            let key = key(rng);
            cluster.delete(replica, topic, &key)?;
        }
        72..=79 => {
            // A few documents of a few fields, so replicas patch and delete them concurrently.
            let key = format!("doc/{}", rng.random_range(0..4)).into_bytes();
            let field = |rng: &mut StdRng| format!("f{}", rng.random_range(0..4));
            let json = |rng: &mut StdRng| rng.random_range(0..1000).to_string().into_bytes();
            let change = match rng.random_range(0..8) {
                0..=1 => DocWrite::Put(vec![(field(rng), json(rng)), (field(rng), json(rng))]),
                2..=5 => DocWrite::Patch { set: vec![(field(rng), json(rng))], remove: Vec::new() },
                6 => DocWrite::Patch { set: Vec::new(), remove: vec![field(rng)] },
                _ => DocWrite::Delete,
            };
            cluster.doc_write(replica, topic, &key, change)?;
            // Now and then an index on a field is declared or dropped, on any replica.
            match rng.random_range(0..40) {
                0 => {
                    let def = IndexDef::new("f0", IndexKind::Number).expect("a valid path");
                    cluster.declare_index(replica, topic, "by_f0", &def)?;
                }
                1 => {
                    cluster.drop_index(replica, topic, "by_f0")?;
                }
                _ => {}
            }
            doc = true;
        }
        _ => {
            let mut batch = Batch::new();
            let mut adds = Vec::new();
            for _ in 0..rng.random_range(1..12) {
                match rng.random_range(0..8) {
                    0..=4 => batch.put(key(rng), value(rng)),
                    5 => batch.add(counter_key(rng), rng.random_range(-5..=20)),
                    _ => batch.delete(key(rng)),
                };
            }
            cluster.batch(replica, topic, batch.clone())?;
            adds.extend(batch.ops().iter().filter_map(|op| match op {
                Op::Add(key, n) => Some((key.clone(), *n)),
                _ => None,
            }));
            increments = adds;
        }
    }
    Ok(WriteMade { increments, expiring, doc })
}

/// A counter of the workload: few, so replicas increment the same ones concurrently.
fn counter_key(rng: &mut StdRng) -> Vec<u8> {
    format!("likes/{}", rng.random_range(0..3)).into_bytes()
}

/// Counts replica-topic pairs that differ from the reference model, or from each other's
/// heads, plus acknowledged writes some replica lacks and blocks some replica holds although
/// the topic's rule refuses their author.
fn count_divergence(cluster: &Cluster, topics: &[String], counted: &Counted) -> Result<u64, SimError> {
    let mut diverged = 0;
    for topic in topics {
        let blocks = cluster.all_blocks(topic)?;
        let access = Access::of(topic)?;
        diverged += blocks.values().filter(|block| access.admits_block(block).is_err()).count() as u64;
        if let Access::Writers { owner } = access {
            // Blocks a replica holds must be those the writer lists of their pasts admit.
            diverged += reference_refused(owner, &blocks).len() as u64;
        }
        let reference = reference_state_at(&blocks, cluster.wall_ms());
        // Counters end at the exact sum of the acknowledged increments, on every replica.
        let counters = reference_counters(&blocks);
        let expected: BTreeMap<Vec<u8>, i128> = counted
            .sums
            .iter()
            .filter(|((of, _), _)| of == topic)
            .map(|((_, key), sum)| (key.clone(), *sum))
            .filter(|(_, sum)| *sum != 0)
            .collect();
        let nonzero: BTreeMap<Vec<u8>, i128> =
            counters.iter().filter(|(_, sum)| **sum != 0).map(|(k, v)| (k.clone(), *v)).collect();
        diverged += u64::from(nonzero != expected);
        for replica in 0..cluster.len() {
            let handle = cluster.topic(replica, topic)?;
            for (key, sum) in &counters {
                diverged += u64::from(handle.counter(key)? != *sum);
            }
        }
        // Documents end as the documents' rule gives for the blocks, on every replica.
        let docs = reference_docs(&blocks);
        for replica in 0..cluster.len() {
            let held: BTreeMap<Vec<u8>, BTreeMap<String, Vec<u8>>> = cluster
                .topic(replica, topic)?
                .docs(None, usize::MAX)?
                .docs
                .into_iter()
                .map(|(key, fields)| (key, fields.into_iter().collect()))
                .collect();
            diverged += u64::from(held != docs);
            // Every index this replica built holds exactly what its documents give.
            let handle = cluster.topic(replica, topic)?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !handle.indexes().iter().all(|index| index.ready) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            diverged += handle.check_indexes()?.len() as u64;
            diverged += u64::from(!handle.indexes().iter().all(|index| index.ready));
        }
        let heads = cluster.topic(0, topic)?.heads();
        for replica in 0..cluster.len() {
            let handle = cluster.topic(replica, topic)?;
            let state = cluster.dump(replica, topic)?;
            if state != reference || handle.heads() != heads || handle.key_count() != reference.len() as u64 {
                diverged += 1;
            }
        }
    }
    for (topic, commit) in cluster.acknowledged() {
        for replica in 0..cluster.len() {
            if !cluster.topic(replica, topic)?.contains(&commit.cid)? {
                diverged += 1;
            }
        }
    }
    Ok(diverged)
}
