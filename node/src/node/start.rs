//! Starting a node: its settings become the store's, the replicator's and the transport's, and
//! the parts are wired together.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_crdt::sync::{Replicator, SyncConfig};
use canopy_crdt::{AuthorId, Limits, Signer, Store, StoreOptions};
use canopy_transport::{Keypair, PeerId, Transport, TransportConfig};
use crossbeam_channel::bounded;

use super::counters::Counters;
use super::replicator::{SYNC_QUEUE_DEPTH, block_server, forward_events, gossip_validator, run_sync};
use super::{Node, NodeError, NodeInner};
use crate::config::NodeConfig;
use crate::files::{identity_signer, load_or_create_identity, read_subscriptions};

/// Rounds of 10 ms to wait at start for the swarm to report its listen addresses.
const LISTEN_WAIT_ROUNDS: usize = 500;

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
        let store_options = store_options(&config, author);
        let store = {
            let path = data_dir.join("db");
            tokio::task::spawn_blocking(move || Store::open(path, store_options))
                .await
                .map_err(|_| NodeError::Closed)??
        };
        let sync_config = sync_config(&config);
        let transport_config = transport_config(&config, &keypair, &sync_config);
        let subscribed = Arc::new(Mutex::new(BTreeSet::new()));
        let server = block_server(store.clone(), sync_config.clone(), subscribed.clone());
        let counters = Counters::default();
        let validator = gossip_validator(sync_config.clone(), counters.announcements_rejected.clone());
        let Transport { handle: transport, events } =
            canopy_transport::start(transport_config, server, validator).await?;

        let (sync_events, sync_rx) = bounded(SYNC_QUEUE_DEPTH);
        let peer_acks = Arc::new(super::acks::PeerAcks::default());
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
            parts: Mutex::new(Vec::new()),
            listeners: std::sync::RwLock::new(vec![peer_acks.listener()]),
            peer_acks,
            on_shutdown: Mutex::new(Vec::new()),
            guard,
            messages: super::messages::Messages::default(),
            streams_end: tokio::sync::watch::Sender::new(false),
        });
        let actor = {
            let inner = Arc::downgrade(&inner);
            // A peer id embeds its ed25519 key, and the block transport authenticates it.
            let mut sync = Replicator::new(store.clone(), sync_config)
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
}

/// The store's options: the node's limits (tighter than the protocol's only), compaction,
/// key history, and the key it signs with.
fn store_options(config: &NodeConfig, author: Signer) -> StoreOptions {
    StoreOptions {
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
        unpruned_bytes_max: config.unpruned_bytes_max,
        snapshot_retain_ms: (config.snapshot_retain_s > 0).then_some(config.snapshot_retain_s * 1000),
        key_history: config.key_history,
        ..StoreOptions::default()
    }
}

/// The replicator's settings.
fn sync_config(config: &NodeConfig) -> SyncConfig {
    // The transport reports every failed or unanswered request; the replicator's timeout is
    // only a backstop for reports lost to a full queue, so it runs a little longer.
    let request_timeout = TransportConfig::default().request_timeout;
    SyncConfig {
        rebroadcast_interval_ms: config.rebroadcast_interval_s * 1000,
        request_timeout_ms: request_timeout.as_millis() as u64 + 1_000,
        inline_bytes_max: config.inline_bytes_max,
        fetch_ahead_max: config.fetch_ahead_max,
        seed: rand_seed(),
        ..SyncConfig::default()
    }
}

/// The transport's settings: the node's addresses and peers, message bounds that fit the
/// replicator's, and the admitted peers.
fn transport_config(config: &NodeConfig, keypair: &Keypair, sync_config: &SyncConfig) -> TransportConfig {
    TransportConfig {
        keypair: keypair.clone(),
        listen: config.listen.clone(),
        peers: config.peers.clone(),
        mdns: config.mdns,
        blocks_listen: config.blocks,
        gossip_bytes_max: 1 << 20,
        request_bytes_max: 1 << 20,
        response_bytes_max: sync_config.message_bytes_max,
        admit: admitted(config, &keypair.public().to_peer_id()),
        ..TransportConfig::default()
    }
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
}
