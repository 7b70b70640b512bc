//! canopy's networking. Head announcements travel over libp2p gossipsub (one gossip topic per
//! canopy topic, messages signed by the node's identity and validated strictly before they are
//! forwarded); blocks travel over a QUIC endpoint (quinn) whose TLS certificates carry the same
//! libp2p identity, so the peer a block request reaches is the peer that announced.
//!
//! The transport moves bytes. It asks the caller to validate gossip and to answer block
//! requests, and hands everything else up as [`TransportEvent`]s on a bounded channel.

mod blocks;
mod swarm;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use libp2p::identity::{Keypair, PublicKey};
pub use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::mpsc;

/// Answers one block request from a peer: request bytes in, response bytes out. It runs on a
/// blocking thread.
pub type RequestServer = Arc<dyn Fn(PeerId, Vec<u8>) -> Result<Vec<u8>, String> + Send + Sync>;

/// Decides whether a gossip message on a canopy topic is valid: `(topic, bytes) -> valid`.
/// Invalid messages are not forwarded and count against their sender.
pub type GossipValidator = Arc<dyn Fn(&str, &[u8]) -> bool + Send + Sync>;

/// Prefix of the gossipsub topic that carries a canopy topic's heads.
pub const GOSSIP_TOPIC_PREFIX: &str = "canopy/heads/";

/// Prefix of the gossipsub topic that carries a canopy topic's ephemeral messages.
pub const MESSAGES_TOPIC_PREFIX: &str = "canopy/messages/";

/// Largest ephemeral message, in bytes: a larger one is refused where it is published and
/// rejected where it arrives.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// Settings of the transport.
#[derive(Clone)]
pub struct TransportConfig {
    /// The node's identity.
    pub keypair: Keypair,
    /// libp2p listen multiaddrs.
    pub listen: Vec<String>,
    /// Peers to dial at start.
    pub peers: Vec<String>,
    /// Discover peers with mDNS.
    pub mdns: bool,
    /// UDP address of the block endpoint.
    pub blocks_listen: SocketAddr,
    /// Largest gossip message.
    pub gossip_bytes_max: usize,
    /// Largest block request.
    pub request_bytes_max: usize,
    /// Largest block response.
    pub response_bytes_max: usize,
    /// Most outgoing block requests at once; more are dropped and retried by the caller.
    pub requests_in_flight_max: usize,
    /// Most incoming requests served at once per connection.
    pub streams_per_connection_max: u32,
    /// Most incoming requests served at once for one peer, over all its connections. At 1 (the
    /// default) a peer's requests are answered one after another in the order they came, so a
    /// catch-up that asks for several levels at once gets the one it needs first first, and the
    /// others follow with no pause between them.
    pub serving_per_peer_max: usize,
    /// An outgoing request not answered within this is abandoned.
    pub request_timeout: Duration,
    /// Commands queued to the swarm before callers' messages are dropped.
    pub command_queue_depth: usize,
    /// Events queued for the caller before new ones are dropped.
    pub event_queue_depth: usize,
    /// Topics a peer may be known to subscribe, and may announce in one gossipsub message.
    /// Beyond it a peer's subscriptions are ignored, so it must cover the most topics a node
    /// replicates (gossipsub's own default is 100).
    pub topics_per_peer_max: usize,
    /// When set, the only peers admitted: libp2p connections from or to any other peer are
    /// refused as they are established, and the block endpoint serves none of its requests.
    pub admit: Option<std::collections::HashSet<PeerId>>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            keypair: Keypair::generate_ed25519(),
            listen: vec!["/ip4/0.0.0.0/udp/0/quic-v1".into(), "/ip4/0.0.0.0/tcp/0".into()],
            peers: Vec::new(),
            mdns: false,
            blocks_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            gossip_bytes_max: 1 << 20,
            request_bytes_max: 1 << 20,
            response_bytes_max: 32 << 20,
            requests_in_flight_max: 64,
            streams_per_connection_max: 32,
            serving_per_peer_max: 1,
            request_timeout: Duration::from_secs(5),
            command_queue_depth: 4096,
            event_queue_depth: 8192,
            topics_per_peer_max: 1_000_000,
            admit: None,
        }
    }
}

/// Failure to start the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A multiaddr does not parse.
    #[error("invalid multiaddr {address:?}: {message}")]
    Multiaddr {
        /// The text given.
        address: String,
        /// What is wrong.
        message: String,
    },
    /// The libp2p swarm could not be built or could not listen.
    #[error("libp2p: {0}")]
    Libp2p(String),
    /// The block endpoint could not start.
    #[error("block endpoint: {0}")]
    Blocks(String),
}

/// Something the network delivered.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportEvent {
    /// A validated gossip message on a canopy topic.
    Gossip {
        /// canopy topic name.
        topic: String,
        /// The peer to ask for blocks: the signer when connected, else the forwarder.
        from: PeerId,
        /// The signer sent the message itself over a live connection (it was not relayed):
        /// first-hand evidence of what the signer holds.
        first_hand: bool,
        /// The peer that signed the message, however it came: what it says is that peer's.
        signer: Option<PeerId>,
        /// The message.
        bytes: Vec<u8>,
    },
    /// The answer to a block request.
    Response {
        /// The peer that answered.
        from: PeerId,
        /// The tag the request was sent with.
        tag: u64,
        /// The answer.
        bytes: Vec<u8>,
    },
    /// A block request got no answer: no address known for the peer, too many requests in
    /// flight, a connection or stream error, or the timeout.
    RequestFailed {
        /// The peer asked.
        to: PeerId,
        /// The tag the request was sent with.
        tag: u64,
    },
    /// The last connection with a peer closed: what it said before may be stale.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// An ephemeral message published on a canopy topic's messages (signed by its publisher).
    Message {
        /// canopy topic name.
        topic: String,
        /// The peer that published it.
        signer: PeerId,
        /// The message.
        bytes: Vec<u8>,
    },
    /// A peer joined the gossip of a canopy topic.
    PeerSubscribed {
        /// The peer.
        peer: PeerId,
        /// canopy topic name.
        topic: String,
    },
}

/// A connected peer, as shown to users.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PeerInfo {
    /// Its peer id.
    pub peer_id: String,
    /// Address of the connection.
    pub address: String,
    /// Its block endpoint, once identify told us.
    pub blocks: Option<String>,
    /// Its agent string.
    pub agent: Option<String>,
    /// Its gossipsub score, refreshed every second: negative once it sent invalid
    /// announcements (below -10 it is sent no gossip, below -80 it is ignored).
    pub gossip_score: Option<f64>,
}

#[derive(Default)]
pub(crate) struct PeerState {
    pub address: Option<Multiaddr>,
    pub blocks: Option<SocketAddr>,
    pub agent: Option<String>,
    pub gossip_score: Option<f64>,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub listen: RwLock<Vec<Multiaddr>>,
    pub peers: RwLock<BTreeMap<PeerId, PeerState>>,
}

/// A running transport: the handle to use it and the events it delivers.
pub struct Transport {
    /// Cheap to clone; every clone drives the same transport.
    pub handle: TransportHandle,
    /// Gossip and responses, in arrival order.
    pub events: mpsc::Receiver<TransportEvent>,
}

/// Drives a running transport.
#[derive(Clone)]
pub struct TransportHandle {
    peer_id: PeerId,
    commands: mpsc::Sender<swarm::Command>,
    shared: Arc<Shared>,
    blocks: blocks::Client,
}

/// Starts the swarm and the block endpoint. Must run inside a tokio runtime.
pub async fn start(
    config: TransportConfig,
    server: RequestServer,
    validator: GossipValidator,
) -> Result<Transport, TransportError> {
    // libp2p's TLS uses aws-lc-rs while quinn also links ring; with both present rustls cannot
    // pick a process default on its own, so one is installed before any config is built.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let peer_id = config.keypair.public().to_peer_id();
    let shared = Arc::new(Shared::default());
    let (events_tx, events) = mpsc::channel(config.event_queue_depth);
    let blocks = blocks::start(&config, shared.clone(), server, events_tx.clone())?;
    let commands = swarm::start(&config, blocks.local_addr(), shared.clone(), validator, events_tx)?;
    Ok(Transport { handle: TransportHandle { peer_id, commands, shared, blocks }, events })
}

impl TransportHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Addresses the swarm listens on.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared.listen.read().expect("listen lock").clone()
    }

    /// Address of the block endpoint.
    pub fn blocks_addr(&self) -> Option<SocketAddr> {
        Some(self.blocks.local_addr())
    }

    /// Connected peers.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.shared
            .peers
            .read()
            .expect("peers lock")
            .iter()
            .map(|(id, state)| PeerInfo {
                peer_id: id.to_string(),
                address: state.address.as_ref().map(ToString::to_string).unwrap_or_default(),
                blocks: state.blocks.map(|a| a.to_string()),
                agent: state.agent.clone(),
                gossip_score: state.gossip_score,
            })
            .collect()
    }

    fn command(&self, command: swarm::Command) {
        // A full queue drops the command: announcements are repeated and requests retried.
        if self.commands.try_send(command).is_err() {
            tracing::debug!("swarm command queue full; dropping a command");
        }
    }

    /// Joins the gossip topic of a canopy topic.
    pub fn subscribe(&self, topic: &str) {
        self.command(swarm::Command::Subscribe(topic.to_string()));
    }

    /// Leaves the gossip topic of a canopy topic.
    pub fn unsubscribe(&self, topic: &str) {
        self.command(swarm::Command::Unsubscribe(topic.to_string()));
    }

    /// Publishes on a canopy topic's gossip topic.
    pub fn publish(&self, topic: &str, bytes: Vec<u8>) {
        self.command(swarm::Command::Publish(topic.to_string(), bytes));
    }

    /// Joins the messages of a canopy topic: messages published on it arrive as
    /// [`TransportEvent::Message`].
    pub fn subscribe_messages(&self, topic: &str) {
        self.command(swarm::Command::SubscribeMessages(topic.to_string()));
    }

    /// Leaves the messages of a canopy topic.
    pub fn unsubscribe_messages(&self, topic: &str) {
        self.command(swarm::Command::UnsubscribeMessages(topic.to_string()));
    }

    /// Publishes an ephemeral message on a canopy topic's messages; resolves to whether some
    /// peer listening to them was sent it.
    pub async fn publish_message(&self, topic: &str, bytes: Vec<u8>) -> bool {
        let (reply, sent) = tokio::sync::oneshot::channel();
        self.command(swarm::Command::PublishMessage(topic.to_string(), bytes, reply));
        sent.await.unwrap_or(false)
    }

    /// Sends a block request to `to`; the answer arrives as [`TransportEvent::Response`] with
    /// the same `tag`, or a [`TransportEvent::RequestFailed`] says it never will.
    pub fn request(&self, to: PeerId, tag: u64, bytes: Vec<u8>) {
        let address = self.shared.peers.read().expect("peers lock").get(&to).and_then(|p| p.blocks);
        match address {
            Some(address) => self.blocks.request(to, tag, address, bytes),
            None => {
                tracing::debug!(%to, "no block endpoint known for peer yet");
                self.blocks.failed(to, tag);
            }
        }
    }

    /// Reports a peer that sent an invalid message; it is disconnected.
    pub fn penalize(&self, peer: PeerId) {
        self.command(swarm::Command::Disconnect(peer));
    }

    /// Connects to `peer` at `addresses` unless it is connected or being dialled: how nodes
    /// that learn of each other from replicated data (the members of a cluster) meet. Of two
    /// nodes that both ask, only the one with the smaller peer id dials.
    pub fn connect(&self, peer: PeerId, addresses: Vec<Multiaddr>) {
        self.command(swarm::Command::Connect(peer, addresses));
    }

    /// Stops the swarm and the block endpoint.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(swarm::Command::Shutdown).await;
        self.blocks.shutdown().await;
    }
}

/// The gossipsub topic name of a canopy topic.
pub fn gossip_topic(topic: &str) -> String {
    format!("{GOSSIP_TOPIC_PREFIX}{topic}")
}

/// The gossipsub topic carrying a canopy topic's ephemeral messages.
pub fn messages_topic(topic: &str) -> String {
    format!("{MESSAGES_TOPIC_PREFIX}{topic}")
}
