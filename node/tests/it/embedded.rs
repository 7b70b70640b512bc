//! The node as a library: a node that served a peer, or took part in the tables, is shut down and
//! started again on the same directory at once, in the same process.

use std::path::Path;
use std::time::{Duration, Instant};

use canopy_node::{Node, NodeConfig};

fn config(dir: &Path, peers: Vec<String>) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_path_buf(),
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
        blocks: "127.0.0.1:0".parse().unwrap(),
        peers,
        topics: vec!["t".into()],
        rebroadcast_interval_s: 1,
        ..NodeConfig::default()
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_served_a_peer_starts_again_on_its_directory_right_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let node = Node::start(config(&dir.path().join("a"), vec![])).await.unwrap();
        let status = node.status();
        let address = format!("{}/p2p/{}", status.listen[0], status.peer_id);
        let writer = node.subscribe("t").unwrap();
        for i in 0..50 {
            writer.put(format!("round-{round}-{i}"), "v").unwrap();
        }
        // A peer fetches the topic from it, so its block server has served requests.
        let peer = Node::start(config(&dir.path().join(format!("peer-{round}")), vec![address])).await.unwrap();
        let reader = peer.subscribe("t").unwrap();
        let expected = (round + 1) * 50;
        wait_until("the peer holds every key", || reader.key_count() == expected).await;
        drop((writer, reader));
        node.shutdown().await;
        peer.shutdown().await;
    }
    let node = Node::start(config(&dir.path().join("a"), vec![])).await.unwrap();
    assert_eq!(node.subscribe("t").unwrap().key_count(), 150);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_the_tables_starts_again_on_its_directory_right_after_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let node = Node::start(config(dir.path(), vec![])).await.unwrap();
        // Its tables' part holds topics of the node and tasks of its own: none of them may keep
        // the store open once the node is shut down.
        node.join_tables("http://127.0.0.1:9", Duration::from_secs(20)).await.unwrap();
        if round == 0 {
            node.create_table("users", 4, 1).unwrap();
        }
        assert_eq!(node.tables().unwrap().len(), 1, "round {round}");
        node.shutdown().await;
    }
}
