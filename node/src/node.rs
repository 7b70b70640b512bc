//! The embeddable node: a store, its subscribed topics, the replicator and the transport, and
//! the hooks through which parts built on it (tables) attach, follow announcements and leave
//! at shutdown.

use std::any::Any;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use canopy_crdt::{Access, AuthorId, Cid, Head, Mode, Store, TopicError};
use canopy_transport::{PeerId, PeerInfo, TransportHandle};
use crossbeam_channel::{Sender, bounded};

use crate::config::{ConfigError, NodeConfig};
use crate::files::write_subscriptions;

mod acks;
mod counters;
mod docs;
pub mod filter;
mod messages;
mod query;
mod replicator;
mod start;
mod topic;

pub use acks::AckWait;
pub(crate) use counters::Counters;
pub(crate) use docs::sorted_page;
pub use docs::{
    DocBatchOp, Document, DocumentPage, FindError, FoundPage, Order, SORT_DOCS_MAX, find_documents, merge_patch,
};
pub use messages::{MessageListener, Published, TopicMessage};
use replicator::SyncEvent;
pub(crate) use start::admitted;
pub use topic::NodeTopic;

/// Longest [`Node::shutdown`] waits for the database to close.
const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_secs(5);

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
    /// The topic is not subscribed on this node.
    #[error("topic {0} is not subscribed on this node: subscribe it first")]
    NotSubscribed(String),
    /// A message is larger than a message may be.
    #[error("a message of {bytes} bytes exceeds the {max} a message may hold")]
    MessageTooLarge {
        /// Its size.
        bytes: usize,
        /// The most a message may hold.
        max: usize,
    },
    /// This node may not write the topic, so may not publish on it.
    #[error("this node may not write topic {0}, so may not publish messages on it")]
    MessageForbidden(String),
    /// This node published messages faster than any publisher may.
    #[error("messages are published faster than {per_s} a second: slow down")]
    MessageRate {
        /// The rate every node holds a publisher to.
        per_s: f64,
    },
}

impl From<crate::files::FileError> for NodeError {
    fn from(error: crate::files::FileError) -> NodeError {
        NodeError::DataDir { path: error.path, message: error.message }
    }
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
    /// Parts built on the node (its part in the cluster's tables), one of each type.
    parts: Mutex<Vec<Arc<dyn Any + Send + Sync>>>,
    /// Who hears what peers announce.
    listeners: RwLock<Vec<Listener>>,
    /// What runs when the node shuts down, before replication stops.
    on_shutdown: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    /// The API tokens and member proofs.
    pub guard: crate::auth::Guard,
    /// Topic writes waiting for peers' copies.
    peer_acks: Arc<acks::PeerAcks>,
    /// Listeners to topics' ephemeral messages.
    pub(crate) messages: messages::Messages,
    /// Set once the node stops: open change and message streams end.
    streams_end: tokio::sync::watch::Sender<bool>,
}

/// What the node heard from its peers, told to the parts that follow it.
#[derive(Clone, Copy)]
pub(crate) enum Heard<'a> {
    /// A peer announced `heads` of `topic`: itself when `first_hand`, else relayed by `from`;
    /// `signer` signed the announcement, however it came.
    Heads { topic: &'a str, from: PeerId, first_hand: bool, signer: Option<PeerId>, heads: &'a [Cid] },
    /// The node's last connection with a peer closed.
    Disconnected(PeerId),
    /// The node stopped replicating a topic: what was heard of it is stale.
    Unsubscribed(&'a str),
}

/// A part's ear for what the node hears; called on the sync actor's thread, so it must be quick.
pub(crate) type Listener = Arc<dyn Fn(Heard<'_>) + Send + Sync>;

impl NodeInner {
    fn expiry_of(&self, ttl: Duration) -> u64 {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.store.options().clock.now().saturating_add(ttl_ms)
    }

    fn has_listeners(&self) -> bool {
        !self.listeners.read().expect("listeners lock").is_empty()
    }

    fn tell(&self, heard: Heard<'_>) {
        for listener in self.listeners.read().expect("listeners lock").iter() {
            listener(heard);
        }
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

    /// Deletes `name`, which must not be subscribed, if its heads are exactly `heads`: judged
    /// on its writer thread, so a write acknowledged before the deletion keeps the topic, and
    /// one made after it fails. Returns whether it was deleted.
    pub(crate) fn purge_at(&self, name: &str, heads: &[Cid]) -> Result<bool, NodeError> {
        // Held throughout, so the topic is not subscribed again meanwhile.
        let subscribed = self.inner.subscribed.lock().expect("subscribed lock");
        if subscribed.contains(name) {
            return Ok(false);
        }
        Ok(self.inner.store.drop_topic_at(name, heads)?)
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

    /// Attaches `part` to the node, unless a part of its type is attached already (that one is
    /// returned then).
    pub(crate) fn attach<T: Any + Send + Sync>(&self, part: Arc<T>) -> Result<(), Arc<T>> {
        let mut parts = self.inner.parts.lock().expect("parts lock");
        if let Some(existing) = parts.iter().find_map(|p| p.clone().downcast::<T>().ok()) {
            return Err(existing);
        }
        parts.push(part);
        Ok(())
    }

    /// The attached part of type `T`.
    pub(crate) fn part<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.inner.parts.lock().expect("parts lock").iter().find_map(|p| p.clone().downcast::<T>().ok())
    }

    /// Has `listener` hear what peers announce from now on.
    pub(crate) fn listen(&self, listener: Listener) {
        self.inner.listeners.write().expect("listeners lock").push(listener);
    }

    /// Runs `hook` when the node shuts down, before replication stops.
    pub(crate) fn on_shutdown(&self, hook: Box<dyn FnOnce() + Send>) {
        self.inner.on_shutdown.lock().expect("shutdown hooks lock").push(hook);
    }

    /// Ends every change and message stream the node's API has open (their clients see the
    /// stream end), so that an HTTP server's graceful shutdown need not wait for them; a stream
    /// opened afterwards ends at once. Shutting the node down does it too.
    pub fn end_streams(&self) {
        self.inner.streams_end.send_replace(true);
    }

    /// Resolves once [`Node::end_streams`] has been called.
    pub(crate) fn streams_ended(&self) -> impl std::future::Future<Output = ()> + Send + use<> {
        let mut ended = self.inner.streams_end.subscribe();
        async move {
            // Fails only once the node is gone, which ends its streams as well.
            let _ = ended.wait_for(|ended| *ended).await;
        }
    }

    /// Stops replication and networking and closes the store once the last handle is gone;
    /// returns once it is closed (waiting at most 5 s for handles the program still holds), so
    /// a node can be started on the same directory right after.
    pub async fn shutdown(self) {
        self.end_streams();
        let hooks = std::mem::take(&mut *self.inner.on_shutdown.lock().expect("shutdown hooks lock"));
        for hook in hooks {
            hook();
        }
        // A part may hold handles on the node (a table's topics do): dropped here, it cannot keep
        // the node, and so the store, alive past the wait below.
        let parts = std::mem::take(&mut *self.inner.parts.lock().expect("parts lock"));
        drop(parts);
        let closed = self.inner.store.closed();
        let _ = self.inner.sync_events.send(SyncEvent::Stop);
        if let Some(task) = self.inner.transport_task.lock().expect("task lock").take() {
            task.abort();
        }
        self.inner.transport.shutdown().await;
        tracing::debug!("shutdown: transport stopped");
        let actor = self.inner.actor.lock().expect("actor lock").take();
        if let Some(actor) = actor {
            let _ = tokio::task::spawn_blocking(move || actor.join()).await;
        }
        tracing::debug!("shutdown: replicator stopped");
        // The block server's last tasks release their store handles as their connections
        // close: wait for the database to close, so the directory can be opened again at once.
        // Handles the program still holds keep it open; the wait is bounded.
        drop(self);
        let waited = tokio::task::spawn_blocking(move || closed.recv_timeout(SHUTDOWN_CLOSE_WAIT)).await;
        tracing::debug!("shutdown: store closed or given up");
        if let Ok(Err(crossbeam_channel::RecvTimeoutError::Timeout)) = waited {
            tracing::warn!(
                waited_s = SHUTDOWN_CLOSE_WAIT.as_secs(),
                "the store is still open: handles on the node outlive its shutdown"
            );
        }
    }
}
