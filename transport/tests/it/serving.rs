//! The block endpoint over real QUIC on loopback: one peer asking a lot waits for its own turns
//! and never takes another peer's, and every request ends in an answer or a failure event.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use canopy_transport::{GossipValidator, PeerId, RequestServer, Transport, TransportConfig, TransportEvent};
use common::{WAIT_MAX, config};

fn accept_all() -> GossipValidator {
    Arc::new(|_, _| true)
}

/// Requests being served per peer right now, the most seen at once, and a gate that holds the
/// busy peer's requests until it opens.
#[derive(Default)]
struct Serving {
    now: HashMap<PeerId, usize>,
    most: HashMap<PeerId, usize>,
    open: bool,
}

async fn next_event(transport: &mut Transport) -> TransportEvent {
    tokio::time::timeout(WAIT_MAX, transport.events.recv()).await.expect("an event in time").expect("events open")
}

async fn wait_for_block_endpoint(transport: &Transport, peer: PeerId) {
    let peer = peer.to_string();
    tokio::time::timeout(WAIT_MAX, async {
        while !transport.handle.peers().iter().any(|p| p.peer_id == peer && p.blocks.is_some()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("identify tells the block endpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_peer_is_served_a_few_requests_at_a_time_and_others_still_get_through() {
    let state = Arc::new((Mutex::new(Serving::default()), Condvar::new()));
    let busy_config = config(Vec::new());
    let busy_id = busy_config.keypair.public().to_peer_id();
    let server: RequestServer = {
        let state = state.clone();
        Arc::new(move |from: PeerId, request: Vec<u8>| {
            let (lock, gate) = &*state;
            let mut serving = lock.lock().unwrap();
            let now = serving.now.entry(from).or_default();
            *now += 1;
            let now = *now;
            let most = serving.most.entry(from).or_default();
            *most = (*most).max(now);
            if from == busy_id {
                serving = gate.wait_timeout_while(serving, WAIT_MAX, |s| !s.open).unwrap().0;
            }
            *serving.now.get_mut(&from).unwrap() -= 1;
            Ok(request)
        })
    };
    // Four requests of one peer at a time (the default answers one at a time, in order).
    let serving = TransportConfig { serving_per_peer_max: 4, ..config(Vec::new()) };
    let server = canopy_transport::start(serving, server, accept_all()).await.unwrap();
    let server_id = server.handle.peer_id();
    let listen = tokio::time::timeout(WAIT_MAX, async {
        loop {
            if let Some(address) = server.handle.listen_addrs().first() {
                return address.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server listens");
    let address = format!("{listen}/p2p/{server_id}");
    let refuse: RequestServer = Arc::new(|_, _| Err("no".into()));
    let mut busy = canopy_transport::start(
        TransportConfig { peers: vec![address.clone()], ..busy_config },
        refuse.clone(),
        accept_all(),
    )
    .await
    .unwrap();
    let mut other = canopy_transport::start(config(vec![address]), refuse, accept_all()).await.unwrap();
    wait_for_block_endpoint(&busy, server_id).await;
    wait_for_block_endpoint(&other, server_id).await;

    for tag in 0..20 {
        busy.handle.request(server_id, tag, vec![tag as u8]);
    }
    // Wait until the busy peer's requests hold every turn they can get.
    tokio::time::timeout(WAIT_MAX, async {
        while state.0.lock().unwrap().now.get(&busy_id).copied().unwrap_or(0) < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the busy peer's requests reach the server");
    other.handle.request(server_id, 99, b"other".to_vec());
    match next_event(&mut other).await {
        TransportEvent::Response { tag: 99, bytes, .. } => assert_eq!(bytes, b"other"),
        event => panic!("unexpected {event:?}"),
    }
    {
        let (lock, gate) = &*state;
        let mut serving = lock.lock().unwrap();
        let most = serving.most[&busy_id];
        assert_eq!(most, 4, "{most} requests of one peer were served at once");
        serving.open = true;
        gate.notify_all();
    }
    let mut answered = Vec::new();
    while answered.len() < 20 {
        match next_event(&mut busy).await {
            TransportEvent::Response { tag, .. } => answered.push(tag),
            TransportEvent::RequestFailed { tag, .. } => panic!("request {tag} failed"),
            _ => {}
        }
    }
    answered.sort_unstable();
    assert_eq!(answered, (0..20).collect::<Vec<u64>>(), "the busy peer's requests all got their turn");

    // A request to a peer whose block endpoint is unknown fails at once, with its tag.
    let stranger = canopy_transport::Keypair::generate_ed25519().public().to_peer_id();
    other.handle.request(stranger, 7, b"anyone?".to_vec());
    loop {
        match next_event(&mut other).await {
            TransportEvent::RequestFailed { to, tag } => {
                assert_eq!((to, tag), (stranger, 7));
                break;
            }
            TransportEvent::Response { .. } => panic!("no answer can come"),
            _ => {}
        }
    }
    for transport in [&busy, &other, &server] {
        transport.handle.shutdown().await;
    }
}
