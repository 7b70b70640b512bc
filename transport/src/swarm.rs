//! The libp2p swarm task: gossipsub for heads, identify to learn block endpoints, mDNS.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, allow_block_list, connection_limits, gossipsub, identify, mdns, noise,
    quic, tcp, yamux,
};
use tokio::sync::mpsc;

use crate::{
    GOSSIP_TOPIC_PREFIX, GossipValidator, MESSAGE_BYTES_MAX, MESSAGES_TOPIC_PREFIX, Shared, TransportConfig,
    TransportError, TransportEvent, gossip_topic, messages_topic,
};

/// What the agent string says after the version: the UDP port of the block endpoint.
const BLOCKS_PORT_TAG: &str = "blocks-port=";

pub(crate) enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Publish(String, Vec<u8>),
    SubscribeMessages(String),
    UnsubscribeMessages(String),
    /// Publish a message; the sender learns whether a peer was sent it.
    PublishMessage(String, Vec<u8>, tokio::sync::oneshot::Sender<bool>),
    Disconnect(PeerId),
    /// Connect to a peer at these addresses (only when its id is the larger one).
    Connect(PeerId, Vec<Multiaddr>),
    Shutdown,
}

/// How often configured peers that are not connected are dialled again.
const REDIAL_INTERVAL: Duration = Duration::from_secs(5);
/// How often an idle QUIC connection is probed, and how long without an answer before it is
/// declared dead. A peer killed without closing its connections is noticed this fast.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(1);
const QUIC_IDLE_TIMEOUT_MS: u32 = 5_000;
/// How long a connection no protocol keeps alive stays open. Gossipsub keeps a connection alive
/// while the peer is in one of its meshes; a connection whose gossipsub gave up (after a few
/// failed or replaced streams, which faults and restarts cause, it stops exchanging gossip on
/// that connection for good and says nothing) is kept by nothing, so it closes this soon after
/// and the peer is dialled again on a fresh connection.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(NetworkBehaviour)]
struct Behaviour {
    // Admission and limits first, so a refused connection is refused before any other
    // behaviour records it. Admission: when the node admits only listed peers, a connection
    // with any other peer is denied as it is established (QUIC connections cannot be wrapped
    // in a pre-shared key, so admission is by peer id).
    admission: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    // One connection per peer: gossipsub keeps per-peer state (subscriptions, its send queue)
    // that goes stale when a restarted peer's new connection overlaps the dead one; with one
    // connection the restarted peer is refused until the dead connection times out, then
    // rejoins as a new peer.
    limits: connection_limits::Behaviour,
    gossipsub: gossipsub::Behaviour,
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Peer scoring: a peer whose announcements fail validation loses score, stops being sent
/// gossip, then is ignored (graylisted) and pruned from the mesh. Many peers on one IP address
/// are normal for canopy (several nodes per host, tests on loopback), so colocation is not
/// penalised. The penalty is the application-specific score ([`Invalid`]) rather than
/// gossipsub's per-topic scores: with a score parameter per topic, gossipsub computes a peer's
/// score over all its topics, many times per heartbeat and message, which with thousands of
/// topics takes the swarm's whole time.
fn peer_score_params() -> gossipsub::PeerScoreParams {
    gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        app_specific_weight: 1.0,
        ..gossipsub::PeerScoreParams::default()
    }
}

/// Score per invalid announcement, squared: one takes a peer below the gossip threshold (-10),
/// a few below the graylist threshold (-80).
const INVALID_PENALTY: f64 = -20.0;
/// Factor applied to the count of invalid announcements every [`INVALID_DECAY_INTERVAL`].
const INVALID_DECAY: f64 = 0.5;
const INVALID_DECAY_INTERVAL: Duration = Duration::from_secs(1);
/// A count below this is forgotten.
const INVALID_FORGET: f64 = 0.1;

/// Invalid announcements per peer, decaying over time, as the peers' application scores.
#[derive(Default)]
struct Invalid(HashMap<PeerId, f64>);

impl Invalid {
    fn record(&mut self, swarm: &mut Swarm<Behaviour>, peer: PeerId) {
        let count = self.0.entry(peer).or_default();
        *count += 1.0;
        swarm.behaviour_mut().gossipsub.set_application_score(&peer, INVALID_PENALTY * *count * *count);
    }

    fn decay(&mut self, swarm: &mut Swarm<Behaviour>) {
        let gossipsub = &mut swarm.behaviour_mut().gossipsub;
        self.0.retain(|peer, count| {
            *count *= INVALID_DECAY;
            let keep = *count >= INVALID_FORGET;
            gossipsub.set_application_score(peer, if keep { INVALID_PENALTY * *count * *count } else { 0.0 });
            keep
        });
    }
}

fn libp2p_error(error: impl std::fmt::Display) -> TransportError {
    TransportError::Libp2p(error.to_string())
}

fn parse(address: &str) -> Result<Multiaddr, TransportError> {
    address.parse().map_err(|e: libp2p::multiaddr::Error| TransportError::Multiaddr {
        address: address.to_string(),
        message: e.to_string(),
    })
}

pub(crate) fn start(
    config: &TransportConfig,
    blocks_addr: SocketAddr,
    shared: Arc<Shared>,
    validator: GossipValidator,
    events: mpsc::Sender<TransportEvent>,
) -> Result<mpsc::Sender<Command>, TransportError> {
    let agent = format!("canopy/{} {BLOCKS_PORT_TAG}{}", env!("CARGO_PKG_VERSION"), blocks_addr.port());
    let gossip_bytes_max = config.gossip_bytes_max;
    let topics_per_peer_max = config.topics_per_peer_max;
    let mdns_enabled = config.mdns;
    let admit = config.admit.clone();
    let mut swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(libp2p_error)?
        .with_quic_config(|mut quic: quic::Config| {
            quic.keep_alive_interval = QUIC_KEEP_ALIVE;
            quic.max_idle_timeout = QUIC_IDLE_TIMEOUT_MS;
            quic
        })
        .with_behaviour(|key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            let gossip_config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(gossip_bytes_max)
                .heartbeat_interval(Duration::from_millis(500))
                .build()?;
            let filter = gossipsub::MaxCountSubscriptionFilter {
                filter: gossipsub::AllowAllSubscriptionFilter {},
                max_subscribed_topics: topics_per_peer_max,
                max_subscriptions_per_request: topics_per_peer_max,
            };
            let mut gossipsub = gossipsub::Behaviour::new_with_subscription_filter(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
                filter,
            )?;
            gossipsub.with_peer_score(peer_score_params(), gossipsub::PeerScoreThresholds::default())?;
            let identify = identify::Behaviour::new(
                identify::Config::new("/canopy/id/1.0.0".into(), key.public()).with_agent_version(agent.clone()),
            );
            let mdns = if mdns_enabled {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), key.public().to_peer_id())?)
            } else {
                None
            };
            let limits = connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default().with_max_established_per_peer(Some(1)),
            );
            // A connection to or from a peer not admitted is closed as it is established,
            // before any protocol runs on it.
            let admission = admit.map(|peers| {
                let mut allowed = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
                for peer in peers {
                    allowed.allow_peer(peer);
                }
                allowed
            });
            Ok(Behaviour { admission: Toggle::from(admission), limits, gossipsub, identify, mdns: Toggle::from(mdns) })
        })
        .map_err(libp2p_error)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    for address in &config.listen {
        swarm.listen_on(parse(address)?).map_err(libp2p_error)?;
    }
    let configured: Vec<Multiaddr> = config.peers.iter().map(|a| parse(a)).collect::<Result<_, _>>()?;
    for address in &configured {
        swarm.dial(dial_opts(address)).map_err(libp2p_error)?;
    }
    let (commands, receiver) = mpsc::channel(config.command_queue_depth);
    tokio::spawn(run(swarm, receiver, shared, validator, events, configured));
    Ok(commands)
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    validator: GossipValidator,
    events: mpsc::Sender<TransportEvent>,
    configured_peers: Vec<Multiaddr>,
) {
    // Configured peers that are down are dialled again now and then, so a restarted peer
    // rejoins without help.
    let mut redial = tokio::time::interval_at(tokio::time::Instant::now() + REDIAL_INTERVAL, REDIAL_INTERVAL);
    let mut decay = tokio::time::interval(INVALID_DECAY_INTERVAL);
    let mut invalid = Invalid::default();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None | Some(Command::Shutdown) => return,
                Some(command) => handle_command(&mut swarm, command),
            },
            event = swarm.select_next_some() => {
                handle_event(&mut swarm, event, &shared, &validator, &events, &mut invalid)
            }
            _ = redial.tick() => redial_configured(&mut swarm, &shared, &configured_peers),
            _ = decay.tick() => {
                invalid.decay(&mut swarm);
                let gossipsub = &swarm.behaviour().gossipsub;
                for (peer, state) in shared.peers.write().expect("peers lock").iter_mut() {
                    state.gossip_score = gossipsub.peer_score(peer);
                }
            }
        }
    }
}

/// Dials the configured peers that are not connected. An address without a `/p2p/` peer id
/// cannot be matched to a connection; those are dialled while fewer peers than configured are
/// connected.
fn redial_configured(swarm: &mut Swarm<Behaviour>, shared: &Shared, configured: &[Multiaddr]) {
    let peers = shared.peers.read().expect("peers lock");
    let too_few = peers.len() < configured.len();
    let to_dial: Vec<Multiaddr> = configured
        .iter()
        .filter(|address| match peer_of(address) {
            Some(peer) => !peers.contains_key(&peer),
            None => too_few,
        })
        .cloned()
        .collect();
    drop(peers);
    for address in to_dial {
        let _ = swarm.dial(dial_opts(&address));
    }
}

/// Dial options for a configured address: when it names the peer, no second connection is
/// attempted while one exists or is being dialled (one connection per peer is allowed).
fn dial_opts(address: &Multiaddr) -> DialOpts {
    match peer_of(address) {
        Some(peer) => dial_peer(peer, address.clone()),
        None => DialOpts::unknown_peer_id().address(address.clone()).build(),
    }
}

/// Dials `peer` at `address` unless it is already connected or being dialled.
fn dial_peer(peer: PeerId, address: Multiaddr) -> DialOpts {
    DialOpts::peer_id(peer).addresses(vec![address]).condition(PeerCondition::DisconnectedAndNotDialing).build()
}

/// The peer id a multiaddr names in its `/p2p/` component.
fn peer_of(address: &Multiaddr) -> Option<PeerId> {
    address.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

fn handle_command(swarm: &mut Swarm<Behaviour>, command: Command) {
    let gossipsub = &mut swarm.behaviour_mut().gossipsub;
    match command {
        Command::Subscribe(topic) => {
            let gossip = gossipsub::IdentTopic::new(gossip_topic(&topic));
            if let Err(error) = gossipsub.subscribe(&gossip) {
                tracing::warn!(%topic, %error, "cannot subscribe gossip topic");
            }
        }
        Command::Unsubscribe(topic) => {
            gossipsub.unsubscribe(&gossipsub::IdentTopic::new(gossip_topic(&topic)));
        }
        Command::Publish(topic, bytes) => {
            match gossipsub.publish(gossipsub::IdentTopic::new(gossip_topic(&topic)), bytes) {
                Ok(_) => {}
                // Nobody listens yet; the periodic re-announcement reaches peers once they do.
                Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
                Err(error) => tracing::debug!(%topic, %error, "gossip publish failed"),
            }
        }
        Command::SubscribeMessages(topic) => {
            if let Err(error) = gossipsub.subscribe(&gossipsub::IdentTopic::new(messages_topic(&topic))) {
                tracing::warn!(%topic, %error, "cannot subscribe a topic's messages");
            }
        }
        Command::UnsubscribeMessages(topic) => {
            gossipsub.unsubscribe(&gossipsub::IdentTopic::new(messages_topic(&topic)));
        }
        Command::PublishMessage(topic, bytes, reply) => {
            let sent = match gossipsub.publish(gossipsub::IdentTopic::new(messages_topic(&topic)), bytes) {
                Ok(_) => true,
                Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => false,
                Err(error) => {
                    tracing::debug!(%topic, %error, "message publish failed");
                    false
                }
            };
            let _ = reply.send(sent);
        }
        Command::Disconnect(peer) => {
            let _ = swarm.disconnect_peer_id(peer);
        }
        Command::Connect(peer, addresses) => {
            // Both sides may learn of each other at once; as with mDNS, only the smaller peer id
            // dials, so the two never refuse each other's connection (one connection per peer).
            if *swarm.local_peer_id() < peer && !addresses.is_empty() {
                let options = DialOpts::peer_id(peer)
                    .addresses(addresses)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                let _ = swarm.dial(options);
            }
        }
        Command::Shutdown => {}
    }
}

fn remote_ip(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

fn handle_event(
    swarm: &mut Swarm<Behaviour>,
    event: SwarmEvent<BehaviourEvent>,
    shared: &Shared,
    validator: &GossipValidator,
    events: &mpsc::Sender<TransportEvent>,
    invalid: &mut Invalid,
) {
    match event {
        SwarmEvent::NewListenAddr { address, .. } => {
            tracing::info!(%address, "listening");
            shared.listen.write().expect("listen lock").push(address);
        }
        SwarmEvent::ExpiredListenAddr { address, .. } => {
            shared.listen.write().expect("listen lock").retain(|a| *a != address);
        }
        SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
            let address = match endpoint {
                ConnectedPoint::Dialer { address, .. } => address,
                ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
            };
            tracing::debug!(%peer_id, %address, "connected");
            let mut peers = shared.peers.write().expect("peers lock");
            let state = peers.entry(peer_id).or_default();
            state.address = Some(address);
        }
        SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
            shared.peers.write().expect("peers lock").remove(&peer_id);
            if events.try_send(TransportEvent::PeerDisconnected { peer: peer_id }).is_err() {
                tracing::debug!("event queue full; dropping a disconnection");
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
            let port = info
                .agent_version
                .split_whitespace()
                .find_map(|part| part.strip_prefix(BLOCKS_PORT_TAG))
                .and_then(|port| port.parse::<u16>().ok());
            let mut peers = shared.peers.write().expect("peers lock");
            let state = peers.entry(peer_id).or_default();
            state.agent = Some(info.agent_version.clone());
            if let (Some(port), Some(ip)) = (port, state.address.as_ref().and_then(remote_ip)) {
                state.blocks = Some(SocketAddr::new(ip, port));
            }
            drop(peers);
            for address in info.listen_addrs {
                swarm.add_peer_address(peer_id, address);
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
            // Both sides discover each other; only the smaller peer id dials, so the two never
            // dial at once and refuse each other's connection (one connection per peer).
            let local = *swarm.local_peer_id();
            for (peer_id, address) in found {
                swarm.add_peer_address(peer_id, address.clone());
                if local < peer_id {
                    let _ = swarm.dial(dial_peer(peer_id, address));
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic, .. })) => {
            if let Some(topic) = topic.as_str().strip_prefix(GOSSIP_TOPIC_PREFIX)
                && events.try_send(TransportEvent::PeerSubscribed { peer: peer_id, topic: topic.to_string() }).is_err()
            {
                tracing::debug!("event queue full; dropping a subscription");
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        })) => {
            if let Some(topic) = message.topic.as_str().strip_prefix(MESSAGES_TOPIC_PREFIX) {
                // An ephemeral message: signed (strict validation), bounded, passed on as it is.
                let signer = message.source.filter(|_| message.data.len() <= MESSAGE_BYTES_MAX);
                let acceptance = match signer {
                    Some(_) => gossipsub::MessageAcceptance::Accept,
                    None => gossipsub::MessageAcceptance::Reject,
                };
                let gossipsub = &mut swarm.behaviour_mut().gossipsub;
                gossipsub.report_message_validation_result(&message_id, &propagation_source, acceptance);
                match signer {
                    Some(signer) => {
                        let event = TransportEvent::Message { topic: topic.to_string(), signer, bytes: message.data };
                        if events.try_send(event).is_err() {
                            tracing::debug!("event queue full; dropping a message");
                        }
                    }
                    None => invalid.record(swarm, propagation_source),
                }
                return;
            }
            let topic = message.topic.as_str().strip_prefix(GOSSIP_TOPIC_PREFIX).map(str::to_string);
            let valid = topic.as_deref().is_some_and(|topic| validator(topic, &message.data));
            let acceptance =
                if valid { gossipsub::MessageAcceptance::Accept } else { gossipsub::MessageAcceptance::Reject };
            swarm.behaviour_mut().gossipsub.report_message_validation_result(
                &message_id,
                &propagation_source,
                acceptance,
            );
            let (Some(topic), true) = (topic, valid) else {
                tracing::debug!(%propagation_source, "rejected a gossip message");
                invalid.record(swarm, propagation_source);
                return;
            };
            // Blocks are fetched from the announcer when it is a direct peer: it has them.
            let from = match message.source {
                Some(source) if swarm.is_connected(&source) => source,
                _ => propagation_source,
            };
            let first_hand = message.source == Some(propagation_source);
            if events
                .try_send(TransportEvent::Gossip {
                    topic,
                    from,
                    first_hand,
                    signer: message.source,
                    bytes: message.data,
                })
                .is_err()
            {
                tracing::debug!("event queue full; dropping an announcement");
            }
        }
        _ => {}
    }
}
