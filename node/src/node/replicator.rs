//! The replicator: the sync actor that runs the node's [`Replicator`] state machine on its own thread
//! (fed by the transport's events and the node's commits, its effects handed to the
//! transport), the block server that answers peers' requests, and the gossip validator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canopy_crdt::sync::{Effect, Message, Replicator, SyncConfig, answer};
use canopy_crdt::{Access, BlockLimits, Cid, Store, Topic, TopicError};
use canopy_transport::{PeerId, TransportEvent, TransportHandle};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::{Heard, NodeInner};

/// Events the sync actor takes; the queue holding them is bounded.
pub(super) const SYNC_QUEUE_DEPTH: usize = 8192;
/// Events the sync actor handles before it checks the clock again.
const SYNC_DRAIN_MAX: usize = 1024;
/// How often the sync actor ticks when nothing else happens.
const SYNC_TICK_INTERVAL: Duration = Duration::from_millis(200);
/// A request in flight this long is no longer tracked for the round-trip histogram.
const IN_FLIGHT_FORGET: Duration = Duration::from_secs(60);

/// What the sync actor is told.
pub(super) enum SyncEvent {
    Subscribe(String, Sender<Result<Topic, TopicError>>),
    Unsubscribe(String),
    LocalCommit {
        topic: String,
        cid: Option<Cid>,
        at: Instant,
    },
    /// A peer's message; `first_hand` when its sender sent it itself (not relayed), signed by
    /// `signer` when known.
    Message {
        from: PeerId,
        first_hand: bool,
        signer: Option<PeerId>,
        bytes: Vec<u8>,
        at: Instant,
    },
    RequestFailed {
        peer: PeerId,
        id: u64,
    },
    PeerSubscribed(String),
    Stop,
}

/// The sync actor: the only user of the node's [`Replicator`]. It runs on its own thread because
/// every call may wait on RocksDB.
pub(super) fn run_sync(
    mut sync: Replicator<PeerId>,
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
                        inner.tell(Heard::Unsubscribed(&name));
                    }
                }
                SyncEvent::LocalCommit { topic, cid, at } => {
                    let (cids, times) = commits.entry(topic).or_default();
                    cids.extend(cid);
                    times.push(at);
                }
                SyncEvent::Message { from, first_hand, signer, bytes, at } => {
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
                    // Parts of the node that follow announcements hear of them (tables judge whether
                    // a copy of a partition has caught up by the heads its other holders announce).
                    if let (Message::Heads { topic, heads, .. }, Some(inner)) = (&message, inner.upgrade())
                        && inner.has_listeners()
                    {
                        let cids: Vec<Cid> = heads.iter().map(|head| head.cid).collect();
                        inner.tell(Heard::Heads { topic, from, first_hand, signer, heads: &cids });
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
            let awaited = inner.upgrade().is_none_or(|inner| inner.peer_acks.awaited(&topic));
            dispatch(&transport, sync.announce_commits_awaited(&topic, &cids, awaited), &mut in_flight);
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
            inner.counters.copy_stats(sync.stats());
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

pub(super) async fn forward_events(mut events: tokio::sync::mpsc::Receiver<TransportEvent>, inner: Arc<NodeInner>) {
    while let Some(event) = events.recv().await {
        let event = match event {
            TransportEvent::Gossip { from, first_hand, signer, bytes, .. } => {
                SyncEvent::Message { from, first_hand, signer, bytes, at: Instant::now() }
            }
            // An answer comes from the peer asked, over its own connection.
            TransportEvent::Response { from, bytes, .. } => {
                SyncEvent::Message { from, first_hand: true, signer: Some(from), bytes, at: Instant::now() }
            }
            TransportEvent::PeerDisconnected { peer } => {
                inner.tell(Heard::Disconnected(peer));
                continue;
            }
            TransportEvent::RequestFailed { to, tag } => SyncEvent::RequestFailed { peer: to, id: tag },
            TransportEvent::PeerSubscribed { topic, .. } => SyncEvent::PeerSubscribed(topic),
            TransportEvent::Message { topic, signer, bytes } => {
                let delivered = may_publish(&inner, &topic, signer) && inner.messages.deliver(&topic, signer, bytes);
                if !delivered {
                    inner.counters.messages_dropped.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            _ => continue,
        };
        if inner.sync_events.try_send(event).is_err() {
            // Dropped work is redone: heads are re-announced and requests retried.
            inner.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether `signer` may publish messages on `topic` here: the topic is subscribed and its rule
/// lets the signer write it (anyone, in an open or keyed topic).
pub(super) fn may_publish(inner: &NodeInner, topic: &str, signer: PeerId) -> bool {
    let Some(handle) = inner.store.existing_topic(topic) else { return false };
    if !inner.subscribed.lock().expect("subscribed lock").contains(topic) {
        return false;
    }
    let Ok(author) = canopy_crdt::AuthorId::from_peer_id(&signer) else { return false };
    match handle.access() {
        canopy_crdt::Access::Writers { owner } if owner != author => {
            handle.writers().is_ok_and(|writers| writers.contains(&author))
        }
        access => access.admits(&author).is_ok(),
    }
}

/// Answers block and snapshot-part requests from peers, for the topics this node replicates
/// (others get an empty answer).
pub(super) fn block_server(
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

/// The gossip validator: blocks carried in an announcement must hash to their CIDs, carry their
/// author's signature for this topic, and be by an author who may write it, so a tampered or
/// forged announcement is neither delivered nor forwarded, and costs its sender. Refusals are
/// counted in `rejected`.
pub(super) fn gossip_validator(config: SyncConfig, rejected: Arc<AtomicU64>) -> canopy_transport::GossipValidator {
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
}
