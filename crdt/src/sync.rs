//! Replication logic without I/O.
//!
//! [`Sync`] consumes events (a local commit, a message from a peer, the passing of time) and
//! returns [`Effect`]s (publish to a topic's gossip channel, send to one peer). The node wires
//! effects to libp2p and QUIC; the simulator wires them to a seeded, faulty network. Time is
//! passed in as milliseconds, so runs are reproducible.
//!
//! The protocol has three messages. `Heads` announces a replica's heads. A replica that hears of
//! heads it lacks sends `Want` to the announcer, naming the heads (and parents it still lacks)
//! and what it has: its heads plus ancestors sampled at depths 1, 2, 4, ... The peer walks down
//! from the wanted blocks, stops at what the requester has, and answers with `Blocks`, highest
//! first and bounded. If a bound cut the answer short, the requester asks again for the parents
//! it still lacks, so a DAG of depth N costs N / `blocks_max` round trips, not N.

use std::collections::BTreeMap;

use canopy_dag::{Cid, WalkLimits, validate_batch};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::error::{IngestError, ReadError, TopicError};
use crate::store::{Store, validate_topic_name};
use crate::topic::{Head, Topic};

/// Bounds and timings of the sync protocol.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Interval between re-announcements of every topic's heads; each is jittered by up to a
    /// quarter so replicas do not announce in lockstep.
    pub rebroadcast_interval_ms: u64,
    /// A request with no answer after this long is forgotten and may be sent again.
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
    /// Seed of the re-announcement jitter.
    pub seed: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            rebroadcast_interval_ms: 5_000,
            request_timeout_ms: 10_000,
            want_max: 256,
            have_max: 64,
            heads_max: 1024,
            walk: WalkLimits::default(),
            message_bytes_max: 32 << 20,
            seed: 0,
        }
    }
}

/// A block as carried in a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBlock {
    /// The CID the bytes must hash to.
    pub cid: Cid,
    /// The encoded block.
    pub bytes: ByteBuf,
}

/// A sync protocol message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// "These are my heads of `topic`."
    Heads {
        /// Topic name.
        topic: String,
        /// The sender's heads.
        heads: Vec<Head>,
    },
    /// "Send me the blocks below `want` that are not below `have`."
    Want {
        /// Topic name.
        topic: String,
        /// Blocks the sender lacks.
        want: Vec<Cid>,
        /// Blocks the sender has: its heads and sampled ancestors.
        have: Vec<Cid>,
    },
    /// Blocks answering a `Want`, highest first.
    Blocks {
        /// Topic name.
        topic: String,
        /// The blocks.
        blocks: Vec<WireBlock>,
        /// True when a bound cut the answer short.
        truncated: bool,
    },
}

/// Why a message was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// Larger than `message_bytes_max`.
    #[error("message of {bytes} bytes exceeds message_bytes_max {max}")]
    TooLarge {
        /// Size of the message.
        bytes: usize,
        /// The limit in force.
        max: usize,
    },
    /// Not a DAG-CBOR sync message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Well-formed but outside the protocol's bounds.
    #[error("invalid message: {0}")]
    Invalid(String),
}

impl Message {
    /// The topic the message is about.
    pub fn topic(&self) -> &str {
        match self {
            Message::Heads { topic, .. } | Message::Want { topic, .. } | Message::Blocks { topic, .. } => topic,
        }
    }

    /// The DAG-CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        serde_ipld_dagcbor::to_vec(self).expect("encoding a message into memory cannot fail")
    }

    /// Decodes a message and checks it against `config`'s bounds.
    pub fn decode(bytes: &[u8], config: &SyncConfig) -> Result<Message, MessageError> {
        if bytes.len() > config.message_bytes_max {
            return Err(MessageError::TooLarge { bytes: bytes.len(), max: config.message_bytes_max });
        }
        let message: Message =
            serde_ipld_dagcbor::from_slice(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
        validate_topic_name(message.topic()).map_err(|e| MessageError::Invalid(e.to_string()))?;
        let over = |what: &str, n: usize, max: usize| {
            if n > max { Err(MessageError::Invalid(format!("{n} {what} exceed the bound {max}"))) } else { Ok(()) }
        };
        match &message {
            Message::Heads { heads, .. } => over("heads", heads.len(), config.heads_max)?,
            Message::Want { want, have, .. } => {
                over("wanted blocks", want.len(), config.want_max)?;
                over("had blocks", have.len(), config.have_max)?;
            }
            Message::Blocks { blocks, .. } => over("blocks", blocks.len(), config.walk.blocks_max)?,
        }
        Ok(message)
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

/// Counters of what a [`Sync`] has seen, for metrics and the simulator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Blocks received that failed validation (hash, encoding, height, delta).
    pub blocks_rejected: u64,
    /// Blocks applied from peers.
    pub blocks_applied: u64,
    /// Requests answered.
    pub requests_served: u64,
    /// Messages refused as malformed or out of bounds.
    pub messages_rejected: u64,
}

struct TopicSync<P> {
    topic: Topic,
    /// The peer asked last and when, while the answer is awaited.
    in_flight: Option<(P, u64)>,
}

/// The sync state machine of one replica, over all its subscribed topics.
pub struct Sync<P> {
    store: Store,
    config: SyncConfig,
    topics: BTreeMap<String, TopicSync<P>>,
    next_rebroadcast_ms: Option<u64>,
    jitter_state: u64,
    stats: SyncStats,
}

impl<P: Clone + Eq> Sync<P> {
    /// Sync over `store`; topics are added with [`Sync::subscribe`].
    pub fn new(store: Store, config: SyncConfig) -> Sync<P> {
        let jitter_state = config.seed | 1;
        Sync {
            store,
            config,
            topics: BTreeMap::new(),
            next_rebroadcast_ms: None,
            jitter_state,
            stats: SyncStats::default(),
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
        self.topics.insert(name.to_string(), TopicSync { topic: topic.clone(), in_flight: None });
        Ok(topic)
    }

    /// Stops replicating `name`; its data stays in the store.
    pub fn unsubscribe(&mut self, name: &str) -> bool {
        self.topics.remove(name).is_some()
    }

    /// Names of the subscribed topics, sorted.
    pub fn subscribed(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    /// The handle of a subscribed topic.
    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name).map(|sync| &sync.topic)
    }

    /// Announces `topic`'s heads, typically after a local commit.
    pub fn announce(&self, topic: &str) -> Vec<Effect<P>> {
        let Some(sync) = self.topics.get(topic) else {
            return Vec::new();
        };
        heads_effect(&sync.topic, self.config.heads_max).into_iter().collect()
    }

    /// Handles raw bytes from `from`. A decoding failure is returned so the caller can drop
    /// or penalise the peer; nothing is changed.
    pub fn handle_bytes(&mut self, now_ms: u64, from: P, bytes: &[u8]) -> Result<Vec<Effect<P>>, SyncError> {
        let message = Message::decode(bytes, &self.config).inspect_err(|_| self.stats.messages_rejected += 1)?;
        self.handle(now_ms, from, message)
    }

    /// Handles a decoded message from `from`.
    pub fn handle(&mut self, now_ms: u64, from: P, message: Message) -> Result<Vec<Effect<P>>, SyncError> {
        match message {
            Message::Heads { topic, heads } => self.on_heads(now_ms, from, &topic, heads),
            Message::Want { topic, want, have } => self.on_want(from, topic, &want, &have),
            Message::Blocks { topic, blocks, truncated } => self.on_blocks(now_ms, from, &topic, blocks, truncated),
        }
    }

    /// Advances time: re-announces heads when due and forgets requests that timed out.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Effect<P>> {
        let timeout = self.config.request_timeout_ms;
        for sync in self.topics.values_mut() {
            if sync.in_flight.as_ref().is_some_and(|(_, sent)| now_ms.saturating_sub(*sent) >= timeout) {
                sync.in_flight = None;
            }
        }
        let due = self.next_rebroadcast_ms.is_none_or(|next| now_ms >= next);
        if !due {
            return Vec::new();
        }
        let interval = self.config.rebroadcast_interval_ms;
        let jitter = self.next_jitter() % (interval / 4 + 1);
        self.next_rebroadcast_ms = Some(now_ms + interval - interval / 8 + jitter);
        self.topics.values().filter_map(|sync| heads_effect(&sync.topic, self.config.heads_max)).collect()
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

    fn on_heads(&mut self, now_ms: u64, from: P, topic: &str, heads: Vec<Head>) -> Result<Vec<Effect<P>>, SyncError> {
        let want_max = self.config.want_max;
        let have_max = self.config.have_max;
        let timeout = self.config.request_timeout_ms;
        let Some(sync) = self.topics.get_mut(topic) else {
            return Ok(Vec::new());
        };
        if sync.in_flight.as_ref().is_some_and(|(_, sent)| now_ms.saturating_sub(*sent) < timeout) {
            return Ok(Vec::new());
        }
        let want = sync.topic.unknown(heads.iter().map(|h| h.cid).collect(), want_max)?;
        if want.is_empty() {
            return Ok(Vec::new());
        }
        let have = sync.topic.have_sample(have_max)?;
        sync.in_flight = Some((from.clone(), now_ms));
        Ok(vec![Effect::Send { to: from, message: Message::Want { topic: topic.to_string(), want, have } }])
    }

    fn on_want(&mut self, from: P, topic: String, want: &[Cid], have: &[Cid]) -> Result<Vec<Effect<P>>, SyncError> {
        self.stats.requests_served += 1;
        let walk = match self.topics.get(&topic) {
            Some(sync) => sync.topic.walk(want, have, &self.config.walk)?,
            None => canopy_dag::Walk::default(),
        };
        let blocks =
            walk.blocks.into_iter().map(|(cid, bytes)| WireBlock { cid, bytes: ByteBuf::from(bytes) }).collect();
        Ok(vec![Effect::Send { to: from, message: Message::Blocks { topic, blocks, truncated: walk.truncated } }])
    }

    fn on_blocks(
        &mut self,
        now_ms: u64,
        from: P,
        topic: &str,
        blocks: Vec<WireBlock>,
        truncated: bool,
    ) -> Result<Vec<Effect<P>>, SyncError> {
        let Some(sync) = self.topics.get_mut(topic) else {
            return Ok(Vec::new());
        };
        if sync.in_flight.as_ref().is_some_and(|(peer, _)| *peer == from) {
            sync.in_flight = None;
        }
        let items = blocks.into_iter().map(|b| (b.cid, b.bytes.into_vec())).collect();
        let mut valid = Vec::new();
        for result in validate_batch(items, &self.store.options().block_limits) {
            match result {
                Ok(block) => valid.push(block),
                Err(_) => self.stats.blocks_rejected += 1,
            }
        }
        let pending_before = sync.topic.pending_count();
        let outcome = sync.topic.ingest(valid)?;
        self.stats.blocks_applied += outcome.applied as u64;
        self.stats.blocks_rejected += outcome.rejected.len() as u64;
        let progressed = outcome.applied > 0 || outcome.pending as u64 > pending_before;
        let mut effects = Vec::new();
        if !outcome.missing.is_empty() && (progressed || truncated) {
            let have = sync.topic.have_sample(self.config.have_max)?;
            let mut want = outcome.missing;
            want.truncate(self.config.want_max);
            sync.in_flight = Some((from.clone(), now_ms));
            effects.push(Effect::Send { to: from, message: Message::Want { topic: topic.to_string(), want, have } });
        }
        if outcome.heads_changed {
            effects.extend(heads_effect(&sync.topic, self.config.heads_max));
        }
        Ok(effects)
    }
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
        message: Message::Heads { topic: topic.name().to_string(), heads },
    })
}
