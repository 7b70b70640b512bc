//! A connection whose gossipsub gave up is replaced, not kept. After a few replaced streams on
//! one connection (faults and restarts cause them) gossipsub stops exchanging gossip on that
//! connection for good and says nothing; two members whose only path that was stopped hearing
//! each other's heads until the connection closed. Nothing keeps such a connection alive, so it
//! now closes within the transport's idle timeout and configured peers are dialled afresh.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_transport::{GossipValidator, RequestServer};
use common::{WAIT_MAX, config};
use futures::StreamExt as _;
use libp2p::StreamProtocol;
use libp2p::swarm::SwarmEvent;

/// The gossipsub protocol the peer below speaks to the node's gossipsub.
const MESHSUB: StreamProtocol = StreamProtocol::new("/meshsub/1.1.0");

fn refuse() -> RequestServer {
    Arc::new(|_, _| Err("nothing served here".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_gossipsub_gave_up_is_closed_soon() {
    let accept_all: GossipValidator = Arc::new(|_, _| true);
    let node = canopy_transport::start(config(Vec::new()), refuse(), accept_all).await.unwrap();
    node.handle.subscribe("t");
    let started = Instant::now();
    let listen = loop {
        if let Some(address) = node.handle.listen_addrs().into_iter().next() {
            break address;
        }
        assert!(started.elapsed() < WAIT_MAX, "no listen address");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    // A peer that keeps its side of every connection open and opens gossipsub streams at will.
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    let mut control = swarm.behaviour().new_control();
    let mut incoming = control.accept(MESHSUB).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(stream) = incoming.next().await {
            held.push(stream);
        }
    });
    swarm.dial(listen).unwrap();
    let (events, mut connection) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => {
                    let _ = events.send(true);
                }
                SwarmEvent::ConnectionClosed { .. } => {
                    let _ = events.send(false);
                }
                _ => {}
            }
        }
    });
    let established = tokio::time::timeout(WAIT_MAX, connection.recv()).await.unwrap();
    assert_eq!(established, Some(true));

    // Gossipsub takes a few inbound streams on one connection, then gives up on it.
    let peer = node.handle.peer_id();
    let mut held = Vec::new();
    for _ in 0..6 {
        if let Ok(stream) = control.open_stream(peer, MESHSUB).await {
            held.push(stream);
        }
    }
    let gave_up = Instant::now();
    let closed = tokio::time::timeout(WAIT_MAX, connection.recv()).await;
    assert_eq!(
        closed.ok().flatten(),
        Some(false),
        "the connection was kept {:?} after gossipsub gave up",
        gave_up.elapsed()
    );
    node.handle.shutdown().await;
}
