//! A deterministic in-process cluster: real stores, the real sync logic, a seeded network.
//!
//! Every replica has its own RocksDB under a caller-given directory and its own [`Replicator`]. The
//! network carries encoded [`Message`]s with a random latency and can drop, duplicate, delay
//! (reorder) and corrupt them, and split replicas into partitions. Time is simulated: the
//! cluster jumps from one event (a delivery or a tick) to the next, so a run with the same seed
//! makes the same calls in the same order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use canopy_dag::{AuthorId, Block, BlockLimits, Cid, Signer, WalkLimits};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{OpenError, ReadError, TopicError, WriteError};
use crate::expiry::Clock;
use crate::options::StoreOptions;
use crate::store::Store;
use crate::sync::{Effect, Replicator, SyncConfig};
use crate::topic::{Batch, Topic};
use crate::types::{Commit, Head};

mod adversary;
mod reference;

use adversary::Adversary;
pub use reference::{reference_counters, reference_docs, reference_refused, reference_state, reference_state_at};

/// Probabilities of network faults, each per delivered message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// A message is lost.
    pub drop: f64,
    /// A message is delivered twice.
    pub dup: f64,
    /// A message is held back by up to `reorder_delay_max_ms`, so later ones overtake it.
    pub reorder: f64,
    /// One to four bytes of a message are altered.
    pub corrupt: f64,
}

/// Faults injected so far, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Messages dropped by the fault model.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Messages delayed out of order.
    pub reordered: u64,
    /// Messages corrupted.
    pub corrupted: u64,
    /// Messages lost to a partition.
    pub partitioned: u64,
    /// Partitions made.
    pub partitions: u64,
    /// Replica crashes.
    pub crashes: u64,
    /// Penalties replicas gave senders of blocks no honest replica sends.
    pub penalized: u64,
}

/// The cluster could not reach a state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A store failed to open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A topic failed to open.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// A write failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A read failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The replicas did not converge within the step bound.
    #[error("no quiescence after {steps} steps")]
    NotQuiet {
        /// Steps taken.
        steps: u64,
    },
    /// The replica is crashed.
    #[error("replica {0} is down")]
    Down(usize),
    /// A compaction failed.
    #[error("compaction failed: {0}")]
    Compact(String),
}

struct Envelope {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

/// Timing of the simulated network and replicas.
#[derive(Clone, Debug)]
pub struct SimTiming {
    /// Least one-way latency.
    pub latency_min_ms: u64,
    /// Greatest one-way latency.
    pub latency_max_ms: u64,
    /// Extra delay of a reordered message, at most.
    pub reorder_delay_max_ms: u64,
    /// Interval between ticks of every replica.
    pub tick_interval_ms: u64,
}

impl Default for SimTiming {
    fn default() -> Self {
        SimTiming { latency_min_ms: 1, latency_max_ms: 20, reorder_delay_max_ms: 300, tick_interval_ms: 100 }
    }
}

/// The replicas' wall clock at simulated time 0 (milliseconds since the Unix epoch), so expiry
/// times look like real ones.
pub const WALL_CLOCK_START_MS: u64 = 1_800_000_000_000;

/// A simulated cluster of replicas that all subscribe the same topics, plus hostile
/// participants (numbered after the replicas) that attack them.
pub struct Cluster {
    /// The seed the cluster was made with; replicas' keys derive from it.
    seed: u64,
    dir: PathBuf,
    topics: Vec<String>,
    nodes: Vec<Option<Replicator<usize>>>,
    adversaries: Vec<Adversary>,
    store_options: StoreOptions,
    sync_config: SyncConfig,
    timing: SimTiming,
    faults: Faults,
    counts: FaultCounts,
    /// Partition group of each replica; replicas talk only within a group.
    groups: Vec<usize>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: HashMap<u64, Envelope>,
    sequence: u64,
    now_ms: u64,
    /// The replicas' wall clock: [`WALL_CLOCK_START_MS`] plus the simulated time.
    wall: Arc<AtomicU64>,
    next_tick_ms: u64,
    rng: StdRng,
    messages: u64,
    acknowledged: Vec<(String, Commit)>,
    /// Every block a compaction pruned, by topic: the reference model keeps every block ever
    /// made, whatever the replicas pruned.
    archive: BTreeMap<String, BTreeMap<Cid, Block>>,
    compactions: u64,
    /// The replicas' authors: the cluster members whose snapshots of open topics replicas
    /// merge (hostile participants hold no replica's key, so theirs are refused).
    speakers: Arc<RwLock<BTreeSet<AuthorId>>>,
}

impl Cluster {
    /// Starts `replicas` replicas under `dir`, each subscribed to every topic of `topics`.
    ///
    /// The simulated replicas use small walks and a small pending bound, so that even short
    /// histories take the deep paths of catch-up: descents through frontiers, answers cut by
    /// their bounds, evictions.
    pub fn new(dir: &Path, replicas: usize, topics: &[String], seed: u64) -> Result<Cluster, SimError> {
        // Compaction happens when the workload says, never on a wall-clock timer, so that runs
        // stay reproducible.
        let store_options = StoreOptions {
            writer_threads: 1,
            cache_bytes: 4 << 20,
            pending_blocks_max: 64,
            compact_after_blocks: 0,
            compact_after_bytes: 0,
            snapshot_retain_ms: None,
            snapshots_inline: true,
            ..StoreOptions::default()
        };
        let sync_config = SyncConfig {
            rebroadcast_interval_ms: 1_000,
            rebroadcast_backoff_max: 2,
            request_timeout_ms: 2_000,
            walk: WalkLimits { blocks_max: 64, bytes_max: 256 << 10, visits_max: 256, frontier_max: 64 },
            ..SyncConfig::default()
        };
        Cluster::with_options(dir, replicas, topics, seed, store_options, sync_config)
    }

    /// Like [`Cluster::new`], with the replicas' store and sync settings given.
    pub fn with_options(
        dir: &Path,
        replicas: usize,
        topics: &[String],
        seed: u64,
        store_options: StoreOptions,
        sync_config: SyncConfig,
    ) -> Result<Cluster, SimError> {
        let mut cluster = Cluster {
            seed,
            dir: dir.to_path_buf(),
            topics: topics.to_vec(),
            nodes: Vec::new(),
            adversaries: Vec::new(),
            store_options,
            sync_config,
            timing: SimTiming::default(),
            faults: Faults::default(),
            counts: FaultCounts::default(),
            groups: vec![0; replicas],
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            sequence: 0,
            now_ms: 0,
            wall: Arc::new(AtomicU64::new(WALL_CLOCK_START_MS)),
            next_tick_ms: 0,
            rng: StdRng::seed_from_u64(seed),
            messages: 0,
            acknowledged: Vec::new(),
            archive: BTreeMap::new(),
            compactions: 0,
            speakers: Arc::new(RwLock::new((0..replicas).map(|r| Cluster::replica_author(seed, r)).collect())),
        };
        for replica in 0..replicas {
            let node = cluster.open(replica)?;
            cluster.nodes.push(Some(node));
        }
        Ok(cluster)
    }

    fn open(&self, replica: usize) -> Result<Replicator<usize>, SimError> {
        let origin = (self.seed ^ (replica as u64).rotate_left(32)).to_be_bytes();
        let wall = self.wall.clone();
        let options = StoreOptions {
            author: Some(replica_signer(self.seed, replica)),
            origin: Some(origin),
            clock: Clock::from_fn(move || wall.load(Ordering::SeqCst)),
            ..self.store_options.clone()
        };
        let store = Store::open(self.dir.join(format!("replica-{replica}")), options)?;
        let config = SyncConfig { seed: replica as u64 + 1, ..self.sync_config.clone() };
        // Participant `p` is known by replica p's key (hostile ones are numbered after the
        // replicas, so none is replica 0, the owner of owned topics, and none is a speaker).
        let seed = self.seed;
        let speakers = self.speakers.clone();
        let mut sync = Replicator::new(store, config)
            .with_peer_authors(move |peer| Some(Cluster::replica_author(seed, *peer)))
            .with_snapshot_speakers(move |author| speakers.read().expect("never poisoned").contains(author));
        for topic in &self.topics {
            sync.subscribe(topic)?;
        }
        Ok(sync)
    }

    /// Number of replicas, up or down (hostile participants not counted).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Adds `count` hostile participants; they start attacking at once. Among their attacks are
    /// snapshots that lie about real blocks: no hostile participant holds a replica's key, so
    /// none is among the snapshot speakers and replicas refuse them.
    pub fn add_adversaries(&mut self, count: usize) {
        for _ in 0..count {
            let seed = self.rng.random();
            self.adversaries.push(Adversary::new(seed, &self.topics, self.nodes.len(), false));
        }
    }

    /// Adds `count` byzantine participants: besides everything an adversary does, they replay
    /// real blocks they overhear re-signed under their own key, in their topic and in others,
    /// and send them with forged, stripped and re-attributed signatures. In an owned topic
    /// (whose owner is not theirs) every block they write is refused.
    pub fn add_byzantine(&mut self, count: usize) {
        for _ in 0..count {
            let seed = self.rng.random();
            self.adversaries.push(Adversary::new(seed, &self.topics, self.nodes.len(), true));
        }
    }

    /// The author replica `replica` of a cluster made with `seed` signs as.
    pub fn replica_author(seed: u64, replica: usize) -> canopy_dag::AuthorId {
        replica_signer(seed, replica).author()
    }

    /// Blocks replicas refused because their author may not write the topic, over the running
    /// replicas.
    pub fn blocks_refused(&self) -> u64 {
        self.nodes.iter().flatten().map(|node| node.stats().blocks_refused).sum()
    }

    /// Penalties replicas gave senders of blocks no honest replica sends.
    pub fn penalized(&self) -> u64 {
        self.counts.penalized
    }

    /// Stops every hostile participant: it neither sends nor answers from now on.
    pub fn silence_adversaries(&mut self) {
        for adversary in &mut self.adversaries {
            adversary.silent = true;
        }
    }

    /// Fetches still running on running replicas.
    pub fn fetches(&self) -> usize {
        self.nodes.iter().flatten().map(Replicator::fetches).sum()
    }

    /// True for a cluster without replicas.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Sets the fault probabilities from now on.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Faults injected so far.
    pub fn fault_counts(&self) -> &FaultCounts {
        &self.counts
    }

    /// Messages sent so far (before faults).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Simulated time, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The replicas' wall clock, in milliseconds since the Unix epoch.
    pub fn wall_ms(&self) -> u64 {
        self.wall.load(Ordering::SeqCst)
    }

    fn advance(&mut self, to_ms: u64) {
        self.now_ms = to_ms;
        self.wall.store(WALL_CLOCK_START_MS + to_ms, Ordering::SeqCst);
    }

    /// Every local write acknowledged so far, as `(topic, commit)`.
    pub fn acknowledged(&self) -> &[(String, Commit)] {
        &self.acknowledged
    }

    /// The topic handle of a running replica.
    pub fn topic(&self, replica: usize, topic: &str) -> Result<Topic, SimError> {
        let node = self.nodes[replica].as_ref().ok_or(SimError::Down(replica))?;
        Ok(node.topic(topic).expect("every replica subscribes every topic").clone())
    }

    /// True when the replica is running.
    pub fn is_up(&self, replica: usize) -> bool {
        self.nodes[replica].is_some()
    }

    /// Puts on one replica and announces the new heads.
    pub fn put(&mut self, replica: usize, topic: &str, key: &[u8], value: &[u8]) -> Result<Commit, SimError> {
        let commit = self.topic(replica, topic)?.put(key, value)?;
        self.committed(replica, topic, Some(commit));
        Ok(commit)
    }

    /// Puts a value that expires `ttl_ms` of simulated time from now, and announces the new
    /// heads.
    pub fn put_for(
        &mut self,
        replica: usize,
        topic: &str,
        (key, value): (&[u8], &[u8]),
        ttl_ms: u64,
    ) -> Result<Commit, SimError> {
        let ttl = std::time::Duration::from_millis(ttl_ms);
        let commit = self.topic(replica, topic)?.put_for(key, value, ttl)?;
        self.committed(replica, topic, Some(commit));
        Ok(commit)
    }

    /// Collects every expired element on every running replica now (their writer threads do
    /// it on their own as elements fall due).
    pub fn collect_expired(&self) -> Result<(), SimError> {
        for node in self.nodes.iter().flatten() {
            for topic in &self.topics {
                node.topic(topic).expect("every replica subscribes every topic").collect_expired()?;
            }
        }
        Ok(())
    }

    /// Deletes on one replica and announces the new heads.
    pub fn delete(&mut self, replica: usize, topic: &str, key: &[u8]) -> Result<Option<Commit>, SimError> {
        let commit = self.topic(replica, topic)?.delete(key)?;
        self.committed(replica, topic, commit);
        Ok(commit)
    }

    /// Adds `n` to a counter on one replica and announces the new heads.
    pub fn increment(&mut self, replica: usize, topic: &str, key: &[u8], n: i64) -> Result<Commit, SimError> {
        let commit = self.topic(replica, topic)?.increment(key, n)?;
        self.committed(replica, topic, Some(commit));
        Ok(commit)
    }

    /// Writes a document on one replica and announces the new heads.
    pub fn doc_write(
        &mut self,
        replica: usize,
        topic: &str,
        key: &[u8],
        write: crate::DocWrite,
    ) -> Result<Option<Commit>, SimError> {
        let commit = self.topic(replica, topic)?.doc_write(key, write, None)?;
        self.committed(replica, topic, commit);
        Ok(commit)
    }

    /// Declares a documents' index on one replica and announces it.
    pub fn declare_index(
        &mut self,
        replica: usize,
        topic: &str,
        name: &str,
        def: &crate::IndexDef,
    ) -> Result<Option<Commit>, SimError> {
        let commit = self.topic(replica, topic)?.declare_index(name, def)?;
        self.committed(replica, topic, commit);
        Ok(commit)
    }

    /// Drops a documents' index on one replica and announces it.
    pub fn drop_index(&mut self, replica: usize, topic: &str, name: &str) -> Result<Option<Commit>, SimError> {
        let commit = self.topic(replica, topic)?.drop_index(name)?;
        self.committed(replica, topic, commit);
        Ok(commit)
    }

    /// Applies a batch on one replica and announces the new heads.
    pub fn batch(&mut self, replica: usize, topic: &str, batch: Batch) -> Result<Option<Commit>, SimError> {
        let commit = self.topic(replica, topic)?.batch(batch)?;
        self.committed(replica, topic, commit);
        Ok(commit)
    }

    /// Grants `writer` on one replica's writers topic (the replica must own it) and announces it.
    pub fn grant(&mut self, replica: usize, topic: &str, writer: AuthorId) -> Result<Option<Commit>, SimError> {
        let commit = self.topic(replica, topic)?.grant(writer)?;
        self.committed(replica, topic, commit);
        Ok(commit)
    }

    /// Revokes `writer` on one replica's writers topic and announces it.
    pub fn revoke(&mut self, replica: usize, topic: &str, writer: AuthorId) -> Result<Option<Commit>, SimError> {
        let commit = self.topic(replica, topic)?.revoke(writer)?;
        self.committed(replica, topic, commit);
        Ok(commit)
    }

    /// The authors the hostile participants sign as, in the order they were added.
    pub fn adversary_authors(&self) -> Vec<AuthorId> {
        self.adversaries.iter().map(|adversary| adversary.author()).collect()
    }

    fn committed(&mut self, replica: usize, topic: &str, commit: Option<Commit>) {
        let Some(commit) = commit else { return };
        self.acknowledged.push((topic.to_string(), commit));
        let effects =
            self.nodes[replica].as_mut().map(|node| node.announce_commits(topic, &[commit.cid])).unwrap_or_default();
        self.dispatch(replica, effects);
    }

    /// Compacts `topic` on one replica: every other time its history is pruned and a snapshot
    /// made, else only pruned (a peer that needs a snapshot then gets one made). The blocks it
    /// prunes are kept aside for the reference model.
    pub fn compact(&mut self, replica: usize, topic: &str) -> Result<(), SimError> {
        let blocks = self.replica_blocks(replica, topic)?;
        self.archive.entry(topic.to_string()).or_default().extend(blocks);
        let handle = self.topic(replica, topic)?;
        let done = if self.compactions.is_multiple_of(2) { handle.compact() } else { handle.prune() };
        match done {
            Ok(_) => self.compactions += 1,
            // Only the owner compacts a topic with a writer list.
            Err(crate::error::CompactError::NotListOwner { .. }) => {}
            Err(error) => return Err(SimError::Compact(error.to_string())),
        }
        Ok(())
    }

    /// Compactions so far.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// Snapshots fetched and merged by the running replicas since they last started.
    pub fn snapshots_merged(&self) -> u64 {
        self.nodes.iter().flatten().map(|node| node.stats().snapshots_merged).sum()
    }

    /// Snapshots the running replicas refused since they last started because the peer offering
    /// them may not speak for the topic.
    pub fn snapshots_refused(&self) -> u64 {
        self.nodes.iter().flatten().map(|node| node.stats().snapshots_refused).sum()
    }

    /// Adds a replica that starts empty (a late joiner), subscribed to every topic, in the
    /// group of replica 0. Call it while no message is in flight: hostile participants are
    /// numbered after the replicas.
    pub fn add_replica(&mut self) -> Result<usize, SimError> {
        let replica = self.nodes.len();
        self.speakers.write().expect("never poisoned").insert(Cluster::replica_author(self.seed, replica));
        let node = self.open(replica)?;
        self.nodes.push(Some(node));
        let group = self.groups.first().copied().unwrap_or(0);
        self.groups.push(group);
        for adversary in &mut self.adversaries {
            adversary.replicas = self.nodes.len();
        }
        Ok(replica)
    }

    /// Splits the replicas: `groups[i]` is replica i's group; only replicas of one group talk.
    pub fn partition(&mut self, groups: Vec<usize>) {
        assert_eq!(groups.len(), self.nodes.len(), "one group per replica");
        self.groups = groups;
        self.counts.partitions += 1;
    }

    /// Splits the replicas into random groups (at least two when there are two replicas).
    pub fn random_partition(&mut self) {
        let n = self.nodes.len();
        let group_count = self.rng.random_range(2..=n.clamp(2, 4));
        let groups = (0..n).map(|_| self.rng.random_range(0..group_count)).collect();
        self.partition(groups);
    }

    /// Joins every replica into one group again.
    pub fn heal(&mut self) {
        self.groups = vec![0; self.nodes.len()];
    }

    /// Stops a replica at once: queued commands and messages to it are lost; what RocksDB
    /// committed stays on disk.
    pub fn crash(&mut self, replica: usize) {
        if self.nodes[replica].take().is_some() {
            self.counts.crashes += 1;
        }
    }

    /// Reopens a crashed replica from its data directory.
    pub fn restart(&mut self, replica: usize) -> Result<(), SimError> {
        if self.nodes[replica].is_none() {
            self.nodes[replica] = Some(self.open(replica)?);
        }
        Ok(())
    }

    /// A random number from the cluster's seeded generator, for workloads driven from outside.
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    fn dispatch(&mut self, from: usize, effects: Vec<Effect<usize>>) {
        for effect in effects {
            match effect {
                Effect::Publish { message, .. } => self.publish(from, message.encode()),
                Effect::Send { to, message } => self.send(from, to, message.encode()),
                // The simulated network keeps every link; penalties are counted only.
                Effect::Penalize { .. } => self.counts.penalized += 1,
            }
        }
    }

    /// Sends `bytes` to every participant but `from`, hostile ones included.
    fn publish(&mut self, from: usize, bytes: Vec<u8>) {
        for to in 0..self.nodes.len() + self.adversaries.len() {
            if to != from {
                self.send(from, to, bytes.clone());
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, mut bytes: Vec<u8>) {
        self.messages += 1;
        let honest = self.nodes.len();
        // Hostile participants stand outside partitions: they reach everyone.
        if from < honest && to < honest && self.groups[from] != self.groups[to] {
            self.counts.partitioned += 1;
            return;
        }
        if self.rng.random_bool(self.faults.drop) {
            self.counts.dropped += 1;
            return;
        }
        if self.rng.random_bool(self.faults.corrupt) && !bytes.is_empty() {
            self.counts.corrupted += 1;
            for _ in 0..self.rng.random_range(1..=4) {
                let at = self.rng.random_range(0..bytes.len());
                bytes[at] ^= self.rng.random_range(1..=255u8);
            }
        }
        let copies = if self.rng.random_bool(self.faults.dup) {
            self.counts.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.rng.random_range(self.timing.latency_min_ms..=self.timing.latency_max_ms);
            if self.rng.random_bool(self.faults.reorder) {
                self.counts.reordered += 1;
                delay += self.rng.random_range(0..=self.timing.reorder_delay_max_ms);
            }
            self.sequence += 1;
            self.in_flight.insert(self.sequence, Envelope { from, to, bytes: bytes.clone() });
            self.queue.push(Reverse((self.now_ms + delay, self.sequence)));
        }
    }

    /// Runs one event: the next delivery or the next round of ticks, whichever comes first.
    pub fn step(&mut self) -> Result<(), SimError> {
        let next_message = self.queue.peek().map(|Reverse((at, _))| *at);
        if next_message.is_some_and(|at| at < self.next_tick_ms) {
            let Reverse((at, sequence)) = self.queue.pop().expect("peeked");
            self.advance(at);
            let envelope = self.in_flight.remove(&sequence).expect("queued messages are in flight");
            if envelope.to >= self.nodes.len() {
                let index = envelope.to - self.nodes.len();
                let sends = self.adversaries[index].receive(envelope.from, &envelope.bytes);
                for (to, bytes) in sends {
                    self.send(envelope.to, to, bytes);
                }
                return Ok(());
            }
            let Some(node) = self.nodes[envelope.to].as_mut() else {
                return Ok(());
            };
            // A bad message is the sender's fault: the receiver refuses it and carries on.
            if let Ok(effects) = node.handle_bytes(self.now_ms, envelope.from, &envelope.bytes) {
                self.dispatch(envelope.to, effects);
            }
            // An answer's blocks may still be applying: settled here, so every step ends with
            // the replica's state as its messages left it and runs stay reproducible.
            let node = self.nodes[envelope.to].as_mut().expect("running");
            if let Ok(effects) = node.settle() {
                self.dispatch(envelope.to, effects);
            }
            return Ok(());
        }
        self.advance(self.next_tick_ms);
        self.next_tick_ms += self.timing.tick_interval_ms;
        for replica in 0..self.nodes.len() {
            let effects = match self.nodes[replica].as_mut() {
                Some(node) => node.tick(self.now_ms),
                None => continue,
            };
            self.dispatch(replica, effects);
        }
        for index in 0..self.adversaries.len() {
            let from = self.nodes.len() + index;
            for (to, bytes) in self.adversaries[index].tick() {
                match to {
                    Some(to) => self.send(from, to, bytes),
                    None => self.publish(from, bytes),
                }
            }
        }
        Ok(())
    }

    /// Runs for `ms` of simulated time.
    pub fn run_for(&mut self, ms: u64) -> Result<(), SimError> {
        let until = self.now_ms + ms;
        while self.now_ms < until {
            self.step()?;
        }
        Ok(())
    }

    /// Runs until every running replica has the same heads in every topic, nothing is waiting
    /// for parents and no message is in flight, or fails after `steps_max` steps. Returns the
    /// steps taken.
    pub fn run_until_quiet(&mut self, steps_max: u64) -> Result<u64, SimError> {
        for steps in 0..steps_max {
            if self.queue.is_empty() && self.converged() {
                return Ok(steps);
            }
            self.step()?;
        }
        Err(SimError::NotQuiet { steps: steps_max })
    }

    /// True when every running replica has the same heads in every topic and no fetch is
    /// running. Blocks a hostile peer sent above invented parents may still wait, evictable.
    pub fn converged(&self) -> bool {
        self.fetches() == 0
            && self.topics.iter().all(|topic| {
                let mut heads: Option<Vec<Head>> = None;
                self.nodes.iter().flatten().all(|node| {
                    let mine = node.topic(topic).expect("subscribed").heads();
                    *heads.get_or_insert_with(|| mine.clone()) == mine
                })
            })
    }

    /// Every key and visible value of `topic` on one replica.
    pub fn dump(&self, replica: usize, topic: &str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, SimError> {
        let handle = self.topic(replica, topic)?;
        let mut out = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = handle.query(b"", after.as_deref(), 1000)?;
            out.extend(page.entries);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Every block of `topic` held by any running replica or pruned by a compaction, by CID.
    pub fn all_blocks(&self, topic: &str) -> Result<BTreeMap<Cid, Block>, SimError> {
        let mut blocks = self.archive.get(topic).cloned().unwrap_or_default();
        for replica in 0..self.nodes.len() {
            if self.is_up(replica) {
                blocks.extend(self.replica_blocks(replica, topic)?);
            }
        }
        Ok(blocks)
    }

    /// The blocks of `topic` whose payload one running replica holds.
    fn replica_blocks(&self, replica: usize, topic: &str) -> Result<BTreeMap<Cid, Block>, SimError> {
        let node = self.nodes[replica].as_ref().ok_or(SimError::Down(replica))?;
        let handle = node.topic(topic).expect("subscribed");
        let mut blocks = BTreeMap::new();
        for item in node.store().blocks().iter_topic(handle.id()) {
            let (cid, bytes) = item.map_err(|e| ReadError::Storage(e.into()))?;
            let block = Block::decode(topic, cid, &bytes, &BlockLimits::PROTOCOL)
                .map_err(|e| ReadError::Storage(crate::StorageError::Corrupt(e.to_string())))?;
            blocks.insert(cid, block);
        }
        Ok(blocks)
    }
}

/// Each replica signs with a key of its own, derived from the seed so runs repeat.
fn replica_signer(seed: u64, replica: usize) -> Signer {
    let mut secret = [0u8; 32];
    StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(replica as u64)).fill(&mut secret);
    Signer::from_secret(secret)
}
