//! gossipsub scoring over real QUIC on loopback: a peer whose announcements fail validation
//! loses score (the application-specific score canopy sets), and the score decays back.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy_transport::{GossipValidator, RequestServer, Transport};
use common::{WAIT_MAX, config};

fn refuse() -> RequestServer {
    Arc::new(|_, _| Err("nothing served here".into()))
}

/// The gossip score the transport shows for its only peer.
fn score(transport: &Transport) -> Option<f64> {
    transport.handle.peers().first().and_then(|peer| peer.gossip_score)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_invalid_announcements_loses_score_then_recovers() {
    let reject_all: GossipValidator = Arc::new(|_, _| false);
    let strict = canopy_transport::start(config(Vec::new()), refuse(), reject_all).await.unwrap();
    strict.handle.subscribe("t");
    let started = Instant::now();
    let listen = loop {
        if let Some(address) = strict.handle.listen_addrs().into_iter().next() {
            break address;
        }
        assert!(started.elapsed() < WAIT_MAX, "no listen address");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let address = format!("{listen}/p2p/{}", strict.handle.peer_id());
    let accept_all: GossipValidator = Arc::new(|_, _| true);
    let sender = canopy_transport::start(config(vec![address]), refuse(), accept_all).await.unwrap();
    sender.handle.subscribe("t");

    // Every announcement the sender makes fails the strict side's validation.
    let mut round = 0u64;
    while score(&strict).is_none_or(|score| score > -20.0) {
        assert!(started.elapsed() < WAIT_MAX, "the score never fell: {:?}", score(&strict));
        round += 1;
        sender.handle.publish("t", round.to_be_bytes().to_vec());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Once it stops, the penalty halves every second and is forgotten.
    let stopped = Instant::now();
    while score(&strict).is_none_or(|score| score < 0.0) {
        assert!(stopped.elapsed() < WAIT_MAX, "the score never recovered: {:?}", score(&strict));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sender.handle.shutdown().await;
    strict.handle.shutdown().await;
}
