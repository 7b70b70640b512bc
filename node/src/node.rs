//! The embeddable node: a store, its subscribed topics, the sync actor and the transport.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use canopy_crdt::sync::{Effect, Message, Sync, SyncConfig, SyncStats, answer};
use canopy_crdt::{
    Access, AuthorId, BlockLimits, Cid, Head, Limits, Mode, Signer, Store, StoreOptions, Topic, TopicError,
};
use canopy_transport::{PeerId, PeerInfo, Transport, TransportConfig, TransportEvent, TransportHandle};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use crate::config::{ConfigError, NodeConfig};
use crate::files::{identity_signer, load_or_create_identity, read_subscriptions, write_subscriptions};
use crate::metrics::Stages;

mod topic;

pub use topic::NodeTopic;

/// The peers admitted to the node's network (itself among them), when it admits only some.
pub(crate) fn admitted(config: &NodeConfig, me: &PeerId) -> Option<std::collections::HashSet<PeerId>> {
    if config.admit.is_empty() {
        return None;
    }
    // The configuration was validated: every entry parses.
    let mut peers: std::collections::HashSet<PeerId> =
        config.admit.iter().filter_map(|peer| peer.parse().ok()).collect();
    peers.insert(*me);
    Some(peers)
}

/// Events the sync actor takes; the queue holding them is bounded.
const SYNC_QUEUE_DEPTH: usize = 8192;
/// Events the sync actor handles before it checks the clock again.
const SYNC_DRAIN_MAX: usize = 1024;
/// Rounds of 10 ms to wait at start for the swarm to report its listen addresses.
const LISTEN_WAIT_ROUNDS: usize = 500;
/// How often the sync actor ticks when nothing else happens.
const SYNC_TICK_INTERVAL: Duration = Duration::from_millis(200);
/// Longest [`Node::shutdown`] waits for the database to close.
const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// A request in flight this long is no longer tracked for the round-trip histogram.
const IN_FLIGHT_FORGET: Duration = Duration::from_secs(60);

/// Failure to start or use a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be prepared.
    #[error("data directory {path}: {message}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The store failed to open.
    #[error("cannot open the store: {0}")]
    Open(#[from] canopy_crdt::OpenError),
    /// A topic operation failed.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The network could not start.
    #[error("cannot start networking: {0}")]
    Transport(#[from] canopy_transport::TransportError),
    /// The API tokens file is unusable.
    #[error(transparent)]
    Tokens(#[from] crate::auth::TokensError),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Closed,
}

enum SyncEvent {
    Subscribe(String, Sender<Result<Topic, TopicError>>),
    Unsubscribe(String),
    LocalCommit { topic: String, cid: Option<Cid>, at: Instant },
    Message { from: PeerId, bytes: Vec<u8>, at: Instant },
    RequestFailed { peer: PeerId, id: u64 },
    PeerSubscribed(String),
    Stop,
}

/// Counters exported as metrics.
#[derive(Default)]
pub(crate) struct Counters {
    pub writes: AtomicU64,
    pub blocks_applied: AtomicU64,
    pub blocks_rejected: AtomicU64,
    /// Received blocks refused because their author may not write their topic.
    pub blocks_refused: AtomicU64,
    /// Announcements refused by the gossip validator (malformed, or carrying blocks that fail
    /// their hash or signature or whose author may not write the topic); shared with it.
    pub announcements_rejected: Arc<AtomicU64>,
    pub messages_rejected: AtomicU64,
    pub answers_unrequested: AtomicU64,
    pub fetches_abandoned: AtomicU64,
    pub snapshots_merged: AtomicU64,
    /// Snapshots offered by peers that may not speak for the topic, not merged.
    pub snapshots_refused: AtomicU64,
    pub parts_rejected: AtomicU64,
    pub events_dropped: AtomicU64,
    pub blocks_inline: AtomicU64,
    /// Levels of catch-ups taken from answers asked for ahead of their turn.
    pub levels_ahead: AtomicU64,
    pub stages: Stages,
    /// Server-sent-event watchers open now.
    pub watchers: AtomicU64,
}

pub(crate) struct NodeInner {
    pub config: NodeConfig,
    pub store: Store,
    pub transport: TransportHandle,
    pub counters: Counters,
    pub started: Instant,
    sync_events: Sender<SyncEvent>,
    pub(crate) subscribed: Arc<Mutex<BTreeSet<String>>>,
    actor: Mutex<Option<JoinHandle<()>>>,
    transport_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The node's part in the cluster's tables, once it joined them.
    pub tables: std::sync::OnceLock<Arc<crate::tables::Tables>>,
    /// What peers announced of each subscribed topic (kept once the node joined tables).
    pub announced: Mutex<HashMap<String, Announced>>,
    /// The API tokens and member proofs.
    pub guard: crate::auth::Guard,
}

/// The heads peers announced of one topic.
#[derive(Default)]
pub(crate) struct Announced {
    /// The latest announcement's heads: a copy that holds them all has caught up with its peer.
    pub last: Vec<Cid>,
    /// Each peer's latest heads: a peer whose heads are this node's has everything it has.
    pub by_peer: HashMap<PeerId, Vec<Cid>>,
}

impl NodeInner {
    fn expiry_of(&self, ttl: Duration) -> u64 {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.store.options().clock.now().saturating_add(ttl_ms)
    }
}

/// A running canopy node. Cheap to clone; [`Node::shutdown`] stops it.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

/// One row of [`Node::topics`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TopicInfo {
    /// Topic name.
    pub topic: String,
    /// Current heads.
    pub heads: Vec<HeadInfo>,
    /// Largest head height.
    pub max_height: u64,
    /// Keys with a visible value.
    pub keys: u64,
    /// Who may write it: `open`, `owned`, `writers` or `keyed`.
    pub mode: &'static str,
}

/// A head as shown to users.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HeadInfo {
    /// CID in its canonical text form.
    pub cid: String,
    /// Height.
    pub height: u64,
}

impl From<Head> for HeadInfo {
    fn from(head: Head) -> HeadInfo {
        HeadInfo { cid: head.cid.to_string(), height: head.height }
    }
}

/// The node's identity and addresses.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    /// libp2p peer id.
    pub peer_id: String,
    /// The author the node signs its blocks as (a peer id; the node's own unless it was started
    /// with another key).
    pub author: String,
    /// canopy version.
    pub version: String,
    /// libp2p listen addresses and the block endpoint.
    pub listen: Vec<String>,
    /// Connected peers.
    pub peers: usize,
    /// Subscribed topics.
    pub topics: usize,
}

impl Node {
    /// Opens the data directory and starts replication. Must run inside a tokio runtime. The
    /// node signs its blocks with its identity key, so its author is its peer id.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        Node::start_as(config, None).await
    }

    /// Like [`Node::start`], signing blocks with `author` instead of the identity key when one
    /// is given: an embedding program that writes as its user's key, whatever node it runs on.
    pub async fn start_as(config: NodeConfig, author: Option<Signer>) -> Result<Node, NodeError> {
        config.validate()?;
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| NodeError::DataDir { path: data_dir.clone(), message: e.to_string() })?;
        let keypair = load_or_create_identity(&data_dir.join("identity.key"))?;
        let guard = crate::auth::Guard::load(config.tokens.as_deref(), keypair.clone())?;
        let author = match author {
            Some(author) => author,
            None => identity_signer(&keypair, &data_dir.join("identity.key"))?,
        };
        let store_options = StoreOptions {
            author: Some(author),
            sync_writes: config.sync_writes,
            limits: Limits {
                key_bytes_max: config.key_bytes_max,
                value_bytes_max: config.value_bytes_max,
                // Batches from the library are bounded by the protocol alone; HTTP batches by
                // `batch_ops_max`.
                delta_ops_max: canopy_crdt::DELTA_OPS_MAX,
            },
            compact_after_blocks: config.compact_after_blocks,
            compact_after_bytes: config.compact_after_bytes,
            snapshot_retain_ms: (config.snapshot_retain_s > 0).then_some(config.snapshot_retain_s * 1000),
            key_history: config.key_history,
            ..StoreOptions::default()
        };
        let store = {
            let path = data_dir.join("db");
            tokio::task::spawn_blocking(move || Store::open(path, store_options))
                .await
                .map_err(|_| NodeError::Closed)??
        };
        // The transport reports every failed or unanswered request; the sync timeout is only a
        // backstop for reports lost to a full queue, so it runs a little longer.
        let request_timeout = TransportConfig::default().request_timeout;
        let sync_config = SyncConfig {
            rebroadcast_interval_ms: config.rebroadcast_interval_s * 1000,
            request_timeout_ms: request_timeout.as_millis() as u64 + 1_000,
            inline_bytes_max: config.inline_bytes_max,
            fetch_ahead_max: config.fetch_ahead_max,
            seed: rand_seed(),
            ..SyncConfig::default()
        };
        let transport_config = TransportConfig {
            keypair: keypair.clone(),
            listen: config.listen.clone(),
            peers: config.peers.clone(),
            mdns: config.mdns,
            blocks_listen: config.blocks,
            gossip_bytes_max: 1 << 20,
            request_bytes_max: 1 << 20,
            response_bytes_max: sync_config.message_bytes_max,
            request_timeout,
            admit: admitted(&config, &keypair.public().to_peer_id()),
            ..TransportConfig::default()
        };
        let subscribed = Arc::new(Mutex::new(BTreeSet::new()));
        let server = block_server(store.clone(), sync_config.clone(), subscribed.clone());
        let counters = Counters::default();
        let validator: canopy_transport::GossipValidator = {
            let config = sync_config.clone();
            let rejected = counters.announcements_rejected.clone();
            let valid = move |topic: &str, bytes: &[u8]| match Message::decode(bytes, &config) {
                // Blocks carried in an announcement must hash to their CIDs, carry their
                // author's signature for this topic, and be by an author who may write it: a
                // tampered or forged announcement is neither delivered nor forwarded, and costs
                // its sender.
                Ok(Message::Heads { topic: t, blocks, .. }) if t == topic => {
                    let Ok(access) = Access::of(topic) else { return false };
                    blocks.iter().all(|block| {
                        canopy_crdt::Block::decode(topic, block.cid, &block.bytes, &BlockLimits::PROTOCOL)
                            .is_ok_and(|block| access.admits_block(&block).is_ok())
                    })
                }
                _ => false,
            };
            Arc::new(move |topic: &str, bytes: &[u8]| {
                let accepted = valid(topic, bytes);
                if !accepted {
                    rejected.fetch_add(1, Ordering::Relaxed);
                }
                accepted
            })
        };
        let Transport { handle: transport, events } =
            canopy_transport::start(transport_config, server, validator).await?;

        let (sync_events, sync_rx) = bounded(SYNC_QUEUE_DEPTH);
        let inner = Arc::new(NodeInner {
            config: config.clone(),
            store: store.clone(),
            transport: transport.clone(),
            counters,
            started: Instant::now(),
            sync_events,
            subscribed,
            actor: Mutex::new(None),
            transport_task: Mutex::new(None),
            tables: std::sync::OnceLock::new(),
            announced: Mutex::new(HashMap::new()),
            guard,
        });
        let actor = {
            let inner = Arc::downgrade(&inner);
            // A peer id embeds its ed25519 key, and the block transport authenticates it.
            let mut sync = Sync::new(store.clone(), sync_config)
                .with_peer_authors(|peer: &PeerId| AuthorId::from_peer_id(peer).ok());
            // A node that admits only its cluster takes snapshots of open topics only from the
            // admitted peers: they speak for a topic's history, strangers do not.
            if let Some(admitted) = admitted(&config, &transport.peer_id()) {
                let speakers: std::collections::HashSet<AuthorId> =
                    admitted.iter().filter_map(|peer| AuthorId::from_peer_id(peer).ok()).collect();
                sync = sync.with_snapshot_speakers(move |author| speakers.contains(author));
            }
            let transport = transport.clone();
            std::thread::Builder::new()
                .name("canopy-sync".into())
                .spawn(move || run_sync(sync, sync_rx, transport, inner))
                .map_err(|e| NodeError::DataDir { path: data_dir.clone(), message: e.to_string() })?
        };
        *inner.actor.lock().expect("actor lock") = Some(actor);
        *inner.transport_task.lock().expect("task lock") = Some(tokio::spawn(forward_events(events, inner.clone())));

        // Listen addresses arrive as swarm events; wait for them (bounded) so that status and the
        // start-up banner show real ports.
        let wanted = config.listen.len();
        for _ in 0..LISTEN_WAIT_ROUNDS {
            if inner.transport.listen_addrs().len() >= wanted {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let node = Node { inner };
        let mut topics: BTreeSet<String> = read_subscriptions(&data_dir)?;
        topics.extend(config.topics.iter().cloned());
        let topics: Vec<String> = topics.into_iter().collect();
        let subscribing = node.clone();
        tokio::task::spawn_blocking(move || subscribing.subscribe_all(&topics))
            .await
            .map_err(|_| NodeError::Closed)??;
        Ok(node)
    }

    /// Subscribes `name` (idempotent): creates the topic if needed and starts replicating it.
    /// Blocks briefly; call it from a blocking context inside async code.
    pub fn subscribe(&self, name: &str) -> Result<NodeTopic, NodeError> {
        self.subscribe_all(&[name])?;
        let topic = self.inner.store.topic(name)?;
        Ok(NodeTopic { topic, node: self.inner.clone() })
    }

    /// Subscribes every topic of `names` (idempotent), saving the subscriptions once: the way
    /// to take on thousands of topics at a time.
    pub fn subscribe_all(&self, names: &[impl AsRef<str>]) -> Result<(), NodeError> {
        for name in names {
            canopy_crdt::validate_topic_name(name.as_ref())?;
        }
        let mut subscribed = self.inner.subscribed.lock().expect("subscribed lock");
        let before = subscribed.len();
        let mut outcome = Ok(());
        for name in names.iter().map(AsRef::as_ref) {
            if subscribed.contains(name) {
                continue;
            }
            let (reply, result) = bounded(1);
            if self.inner.sync_events.send(SyncEvent::Subscribe(name.to_string(), reply)).is_err() {
                outcome = Err(NodeError::Closed);
                break;
            }
            match result.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    outcome = Err(error.into());
                    break;
                }
                Err(_) => {
                    outcome = Err(NodeError::Closed);
                    break;
                }
            }
            self.inner.transport.subscribe(name);
            subscribed.insert(name.to_string());
        }
        // What was subscribed before a failure stays subscribed, and is saved.
        if subscribed.len() != before {
            write_subscriptions(&self.inner.config.data_dir, &subscribed)?;
        }
        outcome
    }

    /// Stops replicating `name`. Its data stays unless `purge` is set.
    pub fn unsubscribe(&self, name: &str, purge: bool) -> Result<bool, NodeError> {
        let mut subscribed = self.inner.subscribed.lock().expect("subscribed lock");
        let was = subscribed.remove(name);
        if was {
            self.inner.transport.unsubscribe(name);
            let _ = self.inner.sync_events.send(SyncEvent::Unsubscribe(name.to_string()));
            write_subscriptions(&self.inner.config.data_dir, &subscribed)?;
        }
        if purge {
            return Ok(self.inner.store.drop_topic(name)? || was);
        }
        Ok(was)
    }

    /// A subscribed topic.
    pub fn topic(&self, name: &str) -> Option<NodeTopic> {
        if !self.inner.subscribed.lock().expect("subscribed lock").contains(name) {
            return None;
        }
        let topic = self.inner.store.existing_topic(name)?;
        Some(NodeTopic { topic, node: self.inner.clone() })
    }

    /// Subscribed topics with their heads and sizes.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let names: Vec<String> = self.inner.subscribed.lock().expect("subscribed lock").iter().cloned().collect();
        names
            .iter()
            .filter_map(|name| self.inner.store.existing_topic(name))
            .map(|topic| TopicInfo {
                topic: topic.name().to_string(),
                heads: topic.heads().into_iter().map(HeadInfo::from).collect(),
                max_height: topic.max_height(),
                keys: topic.key_count(),
                mode: topic.access().mode().as_str(),
            })
            .collect()
    }

    /// The author this node signs its blocks as.
    pub fn author(&self) -> AuthorId {
        self.inner.store.author()
    }

    /// Creates (subscribes) the topic `name` with `mode`: an open topic is named `name`, an
    /// owned one `<author>/<name>`, which only this node's author writes. Returns the topic,
    /// whose name is the one others subscribe to.
    pub fn create_topic(&self, name: &str, mode: Mode) -> Result<NodeTopic, NodeError> {
        let full = Access::topic_name(mode, &self.author(), name)?;
        self.subscribe(&full)
    }

    /// The node's identity, addresses and counts.
    pub fn status(&self) -> Status {
        let mut listen: Vec<String> = self.inner.transport.listen_addrs().iter().map(ToString::to_string).collect();
        if let Some(blocks) = self.inner.transport.blocks_addr() {
            listen.push(format!("blocks={blocks}"));
        }
        Status {
            peer_id: self.inner.transport.peer_id().to_string(),
            author: self.author().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            listen,
            peers: self.inner.transport.peers().len(),
            topics: self.inner.subscribed.lock().expect("subscribed lock").len(),
        }
    }

    /// Connected peers.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.inner.transport.peers()
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The expiry time, in wall-clock milliseconds since the Unix epoch by this node's clock,
    /// of a value written now to live `ttl`.
    pub fn expiry_of(&self, ttl: Duration) -> u64 {
        self.inner.expiry_of(ttl)
    }

    pub(crate) fn inner(&self) -> &Arc<NodeInner> {
        &self.inner
    }

    pub(crate) fn from_inner(inner: Arc<NodeInner>) -> Node {
        Node { inner }
    }

    /// Reads the API tokens file again (on SIGHUP, say): tokens added to it are accepted from
    /// now on and tokens removed are refused. Returns how many tokens are in force; on an error
    /// the tokens in force before stay.
    pub fn reload_tokens(&self) -> Result<usize, crate::auth::TokensError> {
        self.inner.guard.reload()
    }

    /// Stops replication and networking and closes the store once the last handle is gone;
    /// returns once it is closed (waiting at most 5 s for handles the program still holds), so
    /// a node can be started on the same directory right after.
    pub async fn shutdown(self) {
        self.leave_tables();
        let closed = self.inner.store.closed();
        let _ = self.inner.sync_events.send(SyncEvent::Stop);
        if let Some(task) = self.inner.transport_task.lock().expect("task lock").take() {
            task.abort();
        }
        self.inner.transport.shutdown().await;
        let actor = self.inner.actor.lock().expect("actor lock").take();
        if let Some(actor) = actor {
            let _ = tokio::task::spawn_blocking(move || actor.join()).await;
        }
        // The block server's last tasks release their store handles as their connections
        // close: wait for the database to close, so the directory can be opened again at once.
        // Handles the program still holds keep it open; the wait is bounded.
        drop(self);
        let _ = tokio::task::spawn_blocking(move || closed.recv_timeout(SHUTDOWN_CLOSE_WAIT)).await;
    }
}

/// The sync actor: the only user of the node's [`Sync`]. It runs on its own thread because
/// every call may wait on RocksDB.
fn run_sync(
    mut sync: Sync<PeerId>,
    events: Receiver<SyncEvent>,
    transport: TransportHandle,
    inner: std::sync::Weak<NodeInner>,
) {
    let clock = Instant::now();
    let mut last_tick = Instant::now();
    let stages = inner.upgrade().map(|inner| inner.counters.stages.clone());
    // Requests in flight and when each was sent, for the round-trip histogram.
    let mut in_flight: HashMap<u64, Instant> = HashMap::new();
    loop {
        let first = match events.recv_timeout(SYNC_TICK_INTERVAL) {
            Ok(event) => Some(event),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch: Vec<SyncEvent> = first.into_iter().collect();
        while batch.len() < SYNC_DRAIN_MAX {
            match events.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        let now_ms = clock.elapsed().as_millis() as u64;
        // Local commits of one round are announced once per topic, carrying their blocks.
        let mut commits: BTreeMap<String, (Vec<Cid>, Vec<Instant>)> = BTreeMap::new();
        for event in batch {
            match event {
                SyncEvent::Stop => return,
                SyncEvent::Subscribe(name, reply) => {
                    let _ = reply.send(sync.subscribe(&name));
                }
                SyncEvent::Unsubscribe(name) => {
                    sync.unsubscribe(&name);
                    if let Some(inner) = inner.upgrade() {
                        inner.announced.lock().expect("announced lock").remove(&name);
                    }
                }
                SyncEvent::LocalCommit { topic, cid, at } => {
                    let (cids, times) = commits.entry(topic).or_default();
                    cids.extend(cid);
                    times.push(at);
                }
                SyncEvent::Message { from, bytes, at } => {
                    let started = Instant::now();
                    if let Some(stages) = &stages {
                        stages.queue_wait.observe(started.duration_since(at).as_secs_f64());
                    }
                    let message = match sync.decode(&bytes) {
                        Ok(message) => message,
                        Err(error) => {
                            tracing::debug!(%from, %error, "refused a message");
                            transport.penalize(from);
                            continue;
                        }
                    };
                    // Members of a cluster's tables judge whether their copy of a partition has
                    // caught up by the heads its other holders announce.
                    if let (Message::Heads { topic, heads, .. }, Some(inner)) = (&message, inner.upgrade())
                        && inner.tables.get().is_some()
                    {
                        let cids: Vec<Cid> = heads.iter().map(|head| head.cid).collect();
                        let mut announced = inner.announced.lock().expect("announced lock");
                        let entry = announced.entry(topic.clone()).or_default();
                        entry.by_peer.insert(from, cids.clone());
                        entry.last = cids;
                    }
                    // The histogram of this kind of message, known before the message is
                    // handed over.
                    let handling = stages.as_ref().and_then(|stages| match &message {
                        Message::Heads { .. } => Some(&stages.handle_heads),
                        Message::Blocks { .. } | Message::Parts { .. } => Some(&stages.handle_blocks),
                        _ => None,
                    });
                    if let Some(sent) = message.request_id().and_then(|id| in_flight.remove(&id))
                        && let Some(stages) = &stages
                    {
                        stages.fetch_round_trip.observe(started.duration_since(sent).as_secs_f64());
                    }
                    // Sent at once: a request that follows an answer travels while the answer
                    // is being applied.
                    match sync.handle(now_ms, from, message) {
                        Ok(effects) => dispatch(&transport, effects, &mut in_flight),
                        Err(error) => {
                            tracing::debug!(%from, %error, "refused a message");
                            transport.penalize(from);
                        }
                    }
                    if let Some(histogram) = handling {
                        histogram.observe(started.elapsed().as_secs_f64());
                    }
                }
                SyncEvent::RequestFailed { peer, id } => {
                    in_flight.remove(&id);
                    sync.request_failed(&peer, id);
                }
                SyncEvent::PeerSubscribed(topic) => dispatch(&transport, sync.peer_subscribed(&topic), &mut in_flight),
            }
        }
        for (topic, (cids, times)) in commits {
            dispatch(&transport, sync.announce_commits(&topic, &cids), &mut in_flight);
            if let Some(stages) = &stages {
                for at in times {
                    stages.commit_to_publish.observe(at.elapsed().as_secs_f64());
                }
            }
        }
        if last_tick.elapsed() >= SYNC_TICK_INTERVAL {
            last_tick = Instant::now();
            dispatch(&transport, sync.tick(now_ms), &mut in_flight);
            // Requests the transport never reported on are forgotten after a generous wait.
            in_flight.retain(|_, sent| sent.elapsed() < IN_FLIGHT_FORGET);
        }
        if let Some(inner) = inner.upgrade() {
            copy_stats(sync.stats(), &inner.counters);
        }
    }
}

/// Hands effects to the transport, noting when each request left.
fn dispatch(transport: &TransportHandle, effects: Vec<Effect<PeerId>>, in_flight: &mut HashMap<u64, Instant>) {
    for effect in effects {
        match effect {
            Effect::Publish { topic, message } => transport.publish(&topic, message.encode()),
            Effect::Send { to, message } => {
                let id = message.request_id().unwrap_or_default();
                in_flight.insert(id, Instant::now());
                transport.request(to, id, message.encode())
            }
            Effect::Penalize { peer, reason } => {
                tracing::warn!(%peer, %reason, "peer sent blocks no honest replica sends");
                transport.penalize(peer);
            }
        }
    }
}

fn copy_stats(stats: &SyncStats, counters: &Counters) {
    // Inline blocks are counted before applied ones: a reader that sees a block applied sees
    // how it came.
    counters.blocks_inline.store(stats.blocks_inline, Ordering::SeqCst);
    counters.levels_ahead.store(stats.levels_ahead, Ordering::Relaxed);
    counters.blocks_applied.store(stats.blocks_applied, Ordering::SeqCst);
    counters.blocks_rejected.store(stats.blocks_rejected, Ordering::Relaxed);
    counters.blocks_refused.store(stats.blocks_refused, Ordering::Relaxed);
    counters.messages_rejected.store(stats.messages_rejected, Ordering::Relaxed);
    counters.answers_unrequested.store(stats.answers_unrequested, Ordering::Relaxed);
    counters.fetches_abandoned.store(stats.fetches_abandoned, Ordering::Relaxed);
    counters.snapshots_merged.store(stats.snapshots_merged, Ordering::Relaxed);
    counters.snapshots_refused.store(stats.snapshots_refused, Ordering::Relaxed);
    counters.parts_rejected.store(stats.parts_rejected, Ordering::Relaxed);
}

async fn forward_events(mut events: tokio::sync::mpsc::Receiver<TransportEvent>, inner: Arc<NodeInner>) {
    while let Some(event) = events.recv().await {
        let event = match event {
            TransportEvent::Gossip { from, bytes, .. } | TransportEvent::Response { from, bytes, .. } => {
                SyncEvent::Message { from, bytes, at: Instant::now() }
            }
            TransportEvent::RequestFailed { to, tag } => SyncEvent::RequestFailed { peer: to, id: tag },
            TransportEvent::PeerSubscribed { topic, .. } => SyncEvent::PeerSubscribed(topic),
            _ => continue,
        };
        if inner.sync_events.try_send(event).is_err() {
            // Dropped work is redone: heads are re-announced and requests retried.
            inner.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Answers block and snapshot-part requests from peers, for the topics this node replicates
/// (others get an empty answer).
fn block_server(
    store: Store,
    config: SyncConfig,
    subscribed: Arc<Mutex<BTreeSet<String>>>,
) -> canopy_transport::RequestServer {
    Arc::new(move |_from: PeerId, request: Vec<u8>| -> Result<Vec<u8>, String> {
        let request = Message::decode(&request, &config).map_err(|e| e.to_string())?;
        let served = subscribed.lock().expect("subscribed lock").contains(request.topic());
        let topic = if served { store.existing_topic(request.topic()) } else { None };
        match answer(topic.as_ref(), request, &config).map_err(|e| e.to_string())? {
            Some(answer) => Ok(answer.encode()),
            None => Err("only Want and WantParts requests are served on the block endpoint".into()),
        }
    })
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}
