//! Replication logic without I/O.
//!
//! [`Replicator`] consumes events (a local commit, a message from a peer, the passing of time) and
//! returns [`Effect`]s (publish to a topic's gossip channel, send to one peer). The node wires
//! effects to libp2p and QUIC; the simulator wires them to a seeded, faulty network. Time is
//! passed in as milliseconds, so runs are reproducible.
//!
//! The protocol has three messages. `Heads` announces a replica's heads. A replica that hears of
//! heads it lacks starts a *fetch* from the announcer: it sends `Want` (numbered, naming the
//! heads and what it has: its heads plus ancestors sampled at depths 1, 2, 4, ...). The peer
//! walks down from the wanted blocks to what the requester has and answers with `Blocks`:
//! the *lowest* missing blocks first, so the requester applies each answer at once and never
//! holds a block above a gap. When the gap is deeper than one walk may visit, the answer is a
//! *frontier* instead: the requester descends (fetching below the frontier first), then climbs
//! back to its earlier wants. A DAG of depth N costs about N / `blocks_max` round trips and
//! the requester's memory is bounded by the fetch's stack of wants, whatever N. The next request
//! of a fetch leaves before the answer is applied, so applying overlaps the next round trip.
//!
//! Each fetch belongs to one peer, and a topic runs a few at once, so a peer that never answers,
//! or answers with junk, holds up only its own fetch. An answer is taken only from the peer
//! asked and only for the request it answers.

use std::collections::{BTreeMap, BTreeSet};

use canopy_dag::{AuthorId, Block, BlockLimits, Cid, WalkLimits, validate_batch};

use crate::error::{IngestError, ReadError, TopicError};
use crate::store::Store;
use crate::topic::{Ingesting, Topic};
use crate::types::{Head, IngestOutcome};

mod ahead;
mod answer;
mod fetch;
mod message;

use ahead::Ahead;
use fetch::Fetch;

pub use answer::answer;
pub use message::{INLINE_BLOCKS_MAX, Message, MessageError, PARTS_PER_REQUEST_MAX, WireBlock};

/// Bounds and timings of the sync protocol.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Interval between re-announcements of a topic's heads; each is jittered by up to a
    /// quarter so replicas do not announce in lockstep. A topic whose heads stay the same is
    /// re-announced less and less often, up to `rebroadcast_backoff_max` doublings.
    pub rebroadcast_interval_ms: u64,
    /// Most doublings of the re-announcement interval of a quiet topic.
    pub rebroadcast_backoff_max: u32,
    /// Most topics re-announced in one tick; the rest wait for the next ticks.
    pub announce_per_tick_max: usize,
    /// A request with no answer after this long is abandoned; the fetch starts again when
    /// the heads are announced again.
    pub request_timeout_ms: u64,
    /// Most CIDs asked for in one request.
    pub want_max: usize,
    /// Most CIDs a request lists as already had.
    pub have_max: usize,
    /// Most heads in one announcement.
    pub heads_max: usize,
    /// Bounds on the blocks returned for one request.
    pub walk: WalkLimits,
    /// Largest encoded message accepted.
    pub message_bytes_max: usize,
    /// Most fetches one topic runs at once, each from a different peer.
    pub fetches_per_topic_max: usize,
    /// Most CIDs one fetch keeps on its stack of wants; past it the fetch is abandoned, and
    /// the heads are learnt again from the next announcement.
    pub fetch_cids_max: usize,
    /// Most levels of its stack of wants a climbing fetch asks for ahead of their turn, from
    /// its peer and from peers standing by with the same heads (0: none; one request in flight
    /// per fetch).
    pub fetch_ahead_max: usize,
    /// Most bytes of answers asked ahead, held or on their way, over every topic; a request
    /// on its way counts as the largest answer (`walk.bytes_max`).
    pub ahead_bytes_max: usize,
    /// Most bytes of blocks carried inside the announcement of a local commit (0: none). A
    /// receiver that holds their parents applies them with no request; larger commits, and
    /// receivers that lack a parent, fetch as usual.
    pub inline_bytes_max: usize,
    /// Seed of the re-announcement jitter.
    pub seed: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            rebroadcast_interval_ms: 5_000,
            rebroadcast_backoff_max: 4,
            announce_per_tick_max: 256,
            request_timeout_ms: 10_000,
            want_max: 256,
            // Room for every head a replica may have (a block links at most LINKS_MAX) and what
            // earlier answers showed it has: with its heads, the serving walk knows exactly what
            // the requester has, whatever the width of the DAG.
            have_max: 2048,
            heads_max: 1024,
            walk: WalkLimits::default(),
            message_bytes_max: 32 << 20,
            fetches_per_topic_max: 3,
            fetch_cids_max: 65_536,
            fetch_ahead_max: 4,
            ahead_bytes_max: 64 << 20,
            inline_bytes_max: 64 << 10,
            seed: 0,
        }
    }
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect<P> {
    /// Publish `message` on the gossip channel of `topic`.
    Publish {
        /// Topic name.
        topic: String,
        /// The message.
        message: Message,
    },
    /// Send `message` to one peer.
    Send {
        /// The peer.
        to: P,
        /// The message.
        message: Message,
    },
    /// `peer` sent blocks no honest replica sends (failing their hash or signature, or by an
    /// author who may not write the topic): penalise it.
    Penalize {
        /// The peer.
        peer: P,
        /// What it sent.
        reason: String,
    },
}

/// Failure while handling an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The peer sent bytes that are not a valid message; drop or penalise it.
    #[error("bad message from peer: {0}")]
    BadMessage(#[from] MessageError),
    /// Local storage failed while taking in blocks.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Local storage failed while reading.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// Counters of what a [`Replicator`] has seen, for metrics and the simulator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Blocks received that failed validation (hash, encoding, signature, height, delta).
    pub blocks_rejected: u64,
    /// Blocks received whose author may not write their topic.
    pub blocks_refused: u64,
    /// Blocks applied from peers.
    pub blocks_applied: u64,
    /// Requests answered.
    pub requests_served: u64,
    /// Messages refused as malformed or out of bounds.
    pub messages_rejected: u64,
    /// Answers dropped because no request to their sender was waiting for them.
    pub answers_unrequested: u64,
    /// Fetches given up: timed out, failed, or answered with nothing useful.
    pub fetches_abandoned: u64,
    /// Snapshots fetched from peers and merged.
    pub snapshots_merged: u64,
    /// Snapshots not merged because the peer offering them may not speak for the topic: not
    /// the owner of an owned topic or one with a writer list, not a snapshot speaker (see
    /// [`Replicator::with_snapshot_speakers`]) for one with no owner.
    pub snapshots_refused: u64,
    /// Snapshot parts received that failed their hash check or decoding.
    pub parts_rejected: u64,
    /// Blocks that came inside announcements and were applied with no request.
    pub blocks_inline: u64,
    /// Levels of catch-ups taken from answers asked for ahead of their turn.
    pub levels_ahead: u64,
}

struct TopicSync<P> {
    topic: Topic,
    /// Catch-ups in progress, one per peer.
    fetches: BTreeMap<P, Fetch>,
    /// Peers that announced heads another peer's fetch was already getting, with those heads:
    /// asking them too would only bring the same blocks twice. One takes over when that fetch
    /// ends before the heads are here.
    standby: BTreeMap<P, Vec<Cid>>,
    /// Levels of fetches asked for ahead of their turn, by request id.
    ahead: BTreeMap<u64, Ahead<P>>,
    /// When the heads are announced next, as scheduled in [`Replicator::schedule`].
    due_ms: u64,
    /// Re-announcements since the heads last changed.
    quiet: u32,
    /// The heads last announced.
    announced: Vec<Head>,
    /// Whether the due re-announcement was put off once because the heads had changed since.
    deferred: bool,
    /// When the heads were last announced because blocks carried in a peer's announcement
    /// changed them.
    echoed_ms: Option<u64>,
}

/// How long a re-announcement waits when the heads changed since the last announcement: the
/// change is most likely a local commit whose own announcement, carrying its blocks, is on its
/// way, and peers that got the heads first would fetch what the announcement brings them.
const REANNOUNCE_DEFER_MS: u64 = 50;

/// Least time between two announcements of a topic's heads made because blocks carried in peers'
/// announcements changed them: a writer waiting for copies of its write learns within this
/// that this replica holds it, however fast the writes come.
pub const ECHO_INTERVAL_MS: u64 = 10;

/// The sync state machine of one replica, over all its subscribed topics.
pub struct Replicator<P> {
    store: Store,
    config: SyncConfig,
    topics: BTreeMap<String, TopicSync<P>>,
    /// Re-announcements by due time.
    schedule: BTreeSet<(u64, String)>,
    now_ms: u64,
    next_request_id: u64,
    jitter_state: u64,
    stats: SyncStats,
    /// Answers whose blocks the writer threads are still applying, by topic, peer of the fetch
    /// and peer that served them: their outcome is collected by [`Replicator::settle`].
    applying: Vec<(String, P, P, Ingesting)>,
    /// Bytes of the answers asked ahead, held or on their way, over every topic.
    ahead_bytes: usize,
    /// The author a peer is, when its identity says (see [`Replicator::with_peer_authors`]).
    peer_author: Option<PeerAuthor<P>>,
    /// The authors whose snapshots of topics with no owner are merged, once set (see
    /// [`Replicator::with_snapshot_speakers`]); until then, every peer's.
    speakers: Option<Speakers>,
}

/// Tells the author a peer's identity embeds.
type PeerAuthor<P> = Box<dyn Fn(&P) -> Option<AuthorId> + Send>;

/// Tells whether an author may speak for a topic with no owner through a snapshot.
type Speakers = Box<dyn Fn(&AuthorId) -> bool + Send>;

impl<P: Clone + Ord> Replicator<P> {
    /// A replicator over `store`; topics are added with [`Replicator::subscribe`].
    pub fn new(store: Store, config: SyncConfig) -> Replicator<P> {
        let jitter_state = config.seed | 1;
        Replicator {
            store,
            config,
            topics: BTreeMap::new(),
            schedule: BTreeSet::new(),
            now_ms: 0,
            next_request_id: 1,
            jitter_state,
            stats: SyncStats::default(),
            applying: Vec::new(),
            ahead_bytes: 0,
            peer_author: None,
            speakers: None,
        }
    }

    /// Tells sync which author each peer is (a libp2p peer id embeds its ed25519 key; the
    /// block transport authenticates it). Snapshots are not signed, so an owned topic merges a
    /// snapshot only from its owner; without this, owned topics merge none and catch up from
    /// blocks alone.
    pub fn with_peer_authors(mut self, author: impl Fn(&P) -> Option<AuthorId> + Send + 'static) -> Replicator<P> {
        self.peer_author = Some(Box::new(author));
        self
    }

    /// Tells sync which authors may speak through a snapshot for a topic with no owner (an open
    /// or keyed one): the node's cluster members. A snapshot is not signed and its chunks
    /// cannot be checked against blocks nobody holds any more, so a peer could offer one that
    /// names an honest block as covered but leaves out its writes; a replica merging it would
    /// never apply them. Once set, such a topic merges a snapshot only from a peer whose author
    /// (see [`Replicator::with_peer_authors`]) `speaks` admits; a peer whose author is unknown is
    /// refused. The fetch offered the snapshot ends (`snapshots_refused`) and the heads are
    /// fetched from another peer. Without this, every peer speaks for such a topic. Owned topics
    /// and topics with a writer list take their owner's snapshots only, whatever this says.
    pub fn with_snapshot_speakers(mut self, speaks: impl Fn(&AuthorId) -> bool + Send + 'static) -> Replicator<P> {
        self.speakers = Some(Box::new(speaks));
        self
    }

    /// Whether a snapshot of `topic` served by `peer` may be merged: the owner's only for an
    /// owned topic or one with a writer list; for a topic with no owner, a snapshot speaker's
    /// once speakers are set, any peer's until then.
    fn trusts_snapshots(&self, topic: &str, peer: &P) -> bool {
        let author = || self.peer_author.as_ref().and_then(|author| author(peer));
        match self.topics.get(topic).and_then(|sync| sync.topic.access().owner()) {
            Some(owner) => author() == Some(owner),
            None => match &self.speakers {
                Some(speaks) => author().is_some_and(|author| speaks(&author)),
                None => true,
            },
        }
    }

    /// The store underneath.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configuration in force.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// Starts replicating `name` (creating the topic if needed) and returns its handle.
    pub fn subscribe(&mut self, name: &str) -> Result<Topic, TopicError> {
        if let Some(sync) = self.topics.get(name) {
            return Ok(sync.topic.clone());
        }
        let topic = self.store.topic(name)?;
        let due_ms = self.now_ms;
        self.topics.insert(
            name.to_string(),
            TopicSync {
                topic: topic.clone(),
                fetches: BTreeMap::new(),
                standby: BTreeMap::new(),
                ahead: BTreeMap::new(),
                due_ms,
                quiet: 0,
                announced: Vec::new(),
                echoed_ms: None,
                deferred: false,
            },
        );
        self.schedule.insert((due_ms, name.to_string()));
        Ok(topic)
    }

    /// Stops replicating `name`; its data stays in the store.
    pub fn unsubscribe(&mut self, name: &str) -> bool {
        let Some(sync) = self.topics.remove(name) else { return false };
        self.schedule.remove(&(sync.due_ms, name.to_string()));
        let held: usize = sync.ahead.values().map(|entry| entry.bytes).sum();
        self.ahead_bytes = self.ahead_bytes.saturating_sub(held);
        true
    }

    /// Names of the subscribed topics, sorted.
    pub fn subscribed(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    /// The handle of a subscribed topic.
    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name).map(|sync| &sync.topic)
    }

    /// Fetches in progress over all topics.
    pub fn fetches(&self) -> usize {
        self.topics.values().map(|sync| sync.fetches.len()).sum()
    }

    /// Announces `topic`'s heads; its re-announcements start again from the shortest interval.
    pub fn announce(&mut self, topic: &str) -> Vec<Effect<P>> {
        self.announce_commits(topic, &[])
    }

    /// Announces `topic`'s heads after local commits (`commits`, in the order they were made),
    /// carrying the commits' blocks as far as they fit `inline_bytes_max`, so peers that hold
    /// their parents apply them with no request, and announce their heads at once in return.
    pub fn announce_commits(&mut self, topic: &str, commits: &[Cid]) -> Vec<Effect<P>> {
        self.announce_commits_awaited(topic, commits, true)
    }

    /// [`Replicator::announce_commits`], saying whether a writer waits for copies of the
    /// commits: when none does, the peers they reach need not announce their heads in return
    /// (they do at their next re-announcement), which saves a signed message per peer per
    /// commit under a steady load of writes.
    pub fn announce_commits_awaited(&mut self, topic: &str, commits: &[Cid], awaited: bool) -> Vec<Effect<P>> {
        self.reschedule(topic, true);
        let Some(sync) = self.topics.get_mut(topic) else {
            return Vec::new();
        };
        sync.announced = sync.topic.heads();
        sync.deferred = false;
        let Some(mut effect) = heads_effect(&sync.topic, self.config.heads_max) else {
            return Vec::new();
        };
        if let Effect::Publish { message: Message::Heads { blocks, unawaited, .. }, .. } = &mut effect {
            *blocks = inline_blocks(&sync.topic, commits, self.config.inline_bytes_max);
            *unawaited = !awaited && !blocks.is_empty();
        }
        vec![effect]
    }

    /// A peer joined `topic`'s gossip: it learns the heads now rather than at the next
    /// re-announcement.
    pub fn peer_subscribed(&mut self, topic: &str) -> Vec<Effect<P>> {
        let Some(sync) = self.topics.get(topic) else {
            return Vec::new();
        };
        heads_effect(&sync.topic, self.config.heads_max).into_iter().collect()
    }

    /// A request could not be sent or was not answered: its fetch is given up at once, so the
    /// next announcement starts a new one. A level asked ahead is forgotten instead, and a
    /// climb waiting for it asks for the level itself at the next tick.
    pub fn request_failed(&mut self, peer: &P, id: u64) {
        let now_ms = self.now_ms;
        for sync in self.topics.values_mut() {
            if sync.fetches.get(peer).is_some_and(|fetch| fetch.asked(id)) {
                sync.fetches.remove(peer);
                self.stats.fetches_abandoned += 1;
            }
            if sync.ahead.get(&id).is_some_and(|entry| entry.server == *peer) {
                let entry = sync.ahead.remove(&id).expect("checked above");
                self.ahead_bytes = self.ahead_bytes.saturating_sub(entry.bytes);
                if let Some(fetch) = sync.fetches.get_mut(&entry.fetch).filter(|fetch| fetch.waiting == Some(id)) {
                    fetch.waiting = None;
                    fetch.retry_ms = Some(now_ms);
                }
            }
        }
    }

    /// Handles raw bytes from `from`. A decoding failure is returned so the caller can drop
    /// or penalise the peer; nothing is changed.
    pub fn handle_bytes(&mut self, now_ms: u64, from: P, bytes: &[u8]) -> Result<Vec<Effect<P>>, SyncError> {
        let message = self.decode(bytes)?;
        self.handle(now_ms, from, message)
    }

    /// Decodes a peer's message under this replica's bounds, counting a refusal.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Message, SyncError> {
        Ok(Message::decode(bytes, &self.config).inspect_err(|_| self.stats.messages_rejected += 1)?)
    }

    /// Handles a decoded message from `from`. Answers still being applied are settled first.
    pub fn handle(&mut self, now_ms: u64, from: P, message: Message) -> Result<Vec<Effect<P>>, SyncError> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut effects = self.settle()?;
        effects.extend(self.handle_settled(now_ms, from, message)?);
        Ok(effects)
    }

    fn handle_settled(&mut self, now_ms: u64, from: P, message: Message) -> Result<Vec<Effect<P>>, SyncError> {
        match message {
            Message::Heads { topic, heads, blocks, unawaited } => {
                self.on_heads(now_ms, from, &topic, heads, (blocks, unawaited))
            }
            request @ (Message::Want { .. } | Message::WantParts { .. }) => self.on_request(from, request),
            Message::Blocks { topic, id, blocks, more, frontier, snapshots, snapshot_pending } => {
                let answer = fetch::Answer { blocks, more, frontier, snapshots, snapshot_pending };
                self.on_blocks(now_ms, from, &topic, id, answer)
            }
            Message::Parts { topic, id, parts } => self.on_parts(now_ms, from, &topic, id, parts),
        }
    }

    /// Advances time: abandons requests that timed out and re-announces the topics that are
    /// due, at most `announce_per_tick_max` of them.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Effect<P>> {
        self.now_ms = self.now_ms.max(now_ms);
        // A storage failure here shows again at the next ingest, which reports it.
        let mut effects = self.settle().unwrap_or_default();
        let timeout = self.config.request_timeout_ms;
        let mut due = Vec::new();
        let mut ahead_bytes = 0;
        for (name, sync) in &mut self.topics {
            // Levels asked ahead whose answer is late, or whose fetch ended or popped them, are
            // forgotten; a climb waiting for one asks for its level itself.
            let stale: Vec<u64> =
                sync.ahead.iter().filter(|(_, entry)| !entry.keep(sync, now_ms, timeout)).map(|(id, _)| *id).collect();
            for id in stale {
                let entry = sync.ahead.remove(&id).expect("listed above");
                if let Some(fetch) = sync.fetches.get_mut(&entry.fetch).filter(|fetch| fetch.waiting == Some(id)) {
                    fetch.waiting = None;
                    fetch.retry_ms = Some(now_ms);
                }
            }
            ahead_bytes += sync.ahead.values().map(|entry| entry.bytes).sum::<usize>();
            let before = sync.fetches.len();
            sync.fetches.retain(|_, fetch| fetch.retry_ms.is_some() || now_ms.saturating_sub(fetch.sent_ms) < timeout);
            self.stats.fetches_abandoned += (before - sync.fetches.len()) as u64;
            for (peer, fetch) in &mut sync.fetches {
                if fetch.retry_ms.is_some_and(|at| at <= now_ms) {
                    fetch.retry_ms = None;
                    due.push((name.clone(), peer.clone()));
                }
            }
        }
        self.ahead_bytes = ahead_bytes;
        for (topic, peer) in due {
            match self.next_request(now_ms, peer, &topic) {
                Ok(request) => effects.extend(request),
                Err(_) => self.stats.fetches_abandoned += 1,
            }
        }
        effects.extend(self.take_over(now_ms).unwrap_or_default());
        while effects.len() < self.config.announce_per_tick_max {
            if self.schedule.first().is_none_or(|(due, _)| *due > now_ms) {
                break;
            }
            let (_, name) = self.schedule.pop_first().expect("checked above");
            let Some(sync) = self.topics.get_mut(&name) else { continue };
            let heads = sync.topic.heads();
            if heads != sync.announced && !sync.deferred {
                sync.deferred = true;
                sync.due_ms = now_ms + REANNOUNCE_DEFER_MS;
                self.schedule.insert((sync.due_ms, name));
                continue;
            }
            sync.deferred = false;
            sync.announced = heads;
            self.reschedule(&name, false);
            if let Some(effect) =
                self.topics.get(&name).and_then(|sync| heads_effect(&sync.topic, self.config.heads_max))
            {
                effects.push(effect);
            }
        }
        effects
    }

    /// Schedules `topic`'s next re-announcement: after the base interval when its heads just
    /// changed (`fresh`), after a doubled one for each quiet round otherwise.
    fn reschedule(&mut self, topic: &str, fresh: bool) {
        let base = self.config.rebroadcast_interval_ms;
        let jitter = self.next_jitter() % (base / 4 + 1);
        let backoff = self.config.rebroadcast_backoff_max;
        let now = self.now_ms;
        let Some(sync) = self.topics.get_mut(topic) else { return };
        self.schedule.remove(&(sync.due_ms, topic.to_string()));
        sync.quiet = if fresh { 0 } else { (sync.quiet + 1).min(backoff) };
        let interval = base << sync.quiet.min(backoff);
        sync.due_ms = now + interval - base / 8 + jitter;
        self.schedule.insert((sync.due_ms, topic.to_string()));
    }

    fn next_jitter(&mut self) -> u64 {
        // xorshift64: enough to spread announcements, and reproducible from the seed.
        let mut x = self.jitter_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_state = x;
        x
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    fn on_request(&mut self, from: P, request: Message) -> Result<Vec<Effect<P>>, SyncError> {
        self.stats.requests_served += 1;
        let topic = self.topics.get(request.topic()).map(|sync| &sync.topic);
        Ok(answer(topic, request, &self.config)?
            .map(|message| Effect::Send { to: from, message })
            .into_iter()
            .collect())
    }
}

/// Checks received blocks of `topic` against their CIDs, their signatures and the protocol's
/// bounds, on the rayon pool: returns those that pass and how many failed (counted, dropped).
fn validate(topic: &str, blocks: Vec<WireBlock>, stats: &mut SyncStats) -> (Vec<Block>, usize) {
    let items = blocks.into_iter().map(|b| (b.cid, b.bytes.into_vec())).collect();
    let mut valid = Vec::new();
    let mut invalid = 0;
    for result in validate_batch(topic, items, &BlockLimits::PROTOCOL) {
        match result {
            Ok(block) => valid.push(block),
            Err(_) => invalid += 1,
        }
    }
    stats.blocks_rejected += invalid as u64;
    (valid, invalid)
}

/// Counts what an ingest did; returns whether it refused blocks, which only a hostile peer
/// sends.
fn count_ingest(stats: &mut SyncStats, outcome: &IngestOutcome) -> bool {
    stats.blocks_applied += outcome.applied as u64;
    stats.blocks_rejected += (outcome.rejected.len() - outcome.refused) as u64;
    stats.blocks_refused += outcome.refused as u64;
    outcome.refused > 0
}

/// The blocks of `commits` that fit together in `bytes_max`, in commit order, stopping at the
/// first that does not fit (a later one would only wait for it). Blocks no longer stored
/// (pruned by a compaction) are left out.
fn inline_blocks(topic: &Topic, commits: &[Cid], bytes_max: usize) -> Vec<WireBlock> {
    let mut blocks = Vec::new();
    let mut bytes = 0;
    for cid in commits.iter().take(INLINE_BLOCKS_MAX) {
        let Ok(Some(block)) = topic.block(cid) else { continue };
        bytes += block.len();
        if bytes > bytes_max {
            break;
        }
        blocks.push(WireBlock { cid: *cid, bytes: block.into() });
    }
    blocks
}

fn heads_effect<P>(topic: &Topic, heads_max: usize) -> Option<Effect<P>> {
    let mut heads = topic.heads();
    if heads.is_empty() {
        return None;
    }
    // With more heads than fit one message, the highest are announced; the others travel once
    // a local write has merged them under one block.
    if heads.len() > heads_max {
        heads.sort_by(|a, b| b.height.cmp(&a.height).then(a.cid.cmp(&b.cid)));
        heads.truncate(heads_max);
    }
    Some(Effect::Publish {
        topic: topic.name().to_string(),
        message: Message::Heads { topic: topic.name().to_string(), heads, blocks: Vec::new(), unawaited: false },
    })
}
