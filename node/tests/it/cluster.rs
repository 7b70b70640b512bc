//! Three and more real `canopy serve` processes on loopback.

use crate::common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::UdpSocket;
use std::time::Instant;

use common::{NodeProcess, cluster, metric, outside_peer, wait_until};
use serde_json::json;

/// The author these tests sign their hand-made blocks as.
fn signer() -> canopy_crdt::Signer {
    canopy_crdt::Signer::from_secret([3; 32])
}

#[test]
fn writes_on_each_node_reach_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 3, "t");
    for (i, node) in nodes.iter().enumerate() {
        node.put("t", &format!("from-{i}"), &format!("value-{i}"));
    }
    for node in &nodes {
        wait_until("every write is everywhere", || (0..3).all(|i| node.get("t", &format!("from-{i}")).is_some()));
        for i in 0..3 {
            assert_eq!(node.get("t", &format!("from-{i}")).unwrap(), format!("value-{i}"));
        }
    }
}

#[test]
fn a_topic_write_waits_for_the_peers_its_ack_level_asks_and_a_causal_read_sees_it_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3, "t");
    let put = |node: &NodeProcess, key: &str, ack: &str| {
        let url = node.url(&format!("/v1/topics/t/kv/{key}"));
        let response = node.http.put(url).query(&[("ack", ack)]).body(key.to_string()).send().unwrap();
        (response.status(), response.json::<serde_json::Value>().unwrap())
    };
    // Acknowledged by all three: the others serve it at once, with no waiting.
    for i in 0..20 {
        let key = format!("acked-{i}");
        let (status, written) = put(&nodes[i % 3], &key, "3");
        assert_eq!(status, reqwest::StatusCode::OK, "{written}");
        assert_eq!(written["acknowledged"], 3, "{written}");
        for node in &nodes {
            assert_eq!(node.get("t", &key).as_deref(), Some(key.as_str()), "{key} missing right after its ack");
        }
    }
    let (status, body) = put(&nodes[0], "all", "all");
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    let output =
        common::canopy().args(["put", "t", "cli", "v", "--ack", "3", "--api", &nodes[1].api]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("acknowledged by 3"));

    // A causal read on another node waits until that node holds the write.
    for i in 0..20 {
        let key = format!("causal-{i}");
        let (status, written) = put(&nodes[0], &key, "1");
        assert_eq!(status, reqwest::StatusCode::OK);
        let token = written["causal_token"].as_str().unwrap();
        let url = nodes[1 + i % 2].url(&format!("/v1/topics/t/kv/{key}"));
        let response = nodes[1 + i % 2].http.get(url).query(&[("causal", token)]).send().unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert!(response.headers().contains_key(canopy_node::causal::CAUSAL_HEADER));
        assert_eq!(response.text().unwrap(), key);
    }
    // Counters and histories are read at a token too, and carry the one they were read at.
    let url = nodes[0].url("/v1/topics/t/counters/hits");
    let incremented: serde_json::Value = nodes[0].http.post(url).body("").send().unwrap().json().unwrap();
    let token = incremented["causal_token"].as_str().unwrap();
    for path in ["/v1/topics/t/counters/hits", "/v1/topics/t/history/causal-0"] {
        let response = nodes[2].http.get(nodes[2].url(path)).query(&[("causal", token)]).send().unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{path}");
        assert!(response.headers().contains_key(canopy_node::causal::CAUSAL_HEADER), "{path}");
        if path.contains("counters") {
            assert_eq!(response.json::<serde_json::Value>().unwrap()["value"], 1);
        }
    }
    // A token naming writes this node never gets is answered 503 once the wait runs out.
    nodes[0].subscribe("elsewhere");
    let written = nodes[0].put("elsewhere", "k", "v");
    let foreign = format!("t~{}", written["cid"].as_str().unwrap());
    let url = nodes[1].url("/v1/topics/t/kv/causal-0");
    let response = nodes[1].http.get(url).query(&[("causal", foreign.as_str())]).send().unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let bad =
        nodes[1].http.get(nodes[1].url("/v1/topics/t/kv/causal-0")).query(&[("causal", "t~nope")]).send().unwrap();
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);

    // With a peer gone, a write asking for all three copies is applied but answered 504 with
    // the two that hold it and its token.
    nodes[2].kill();
    let (status, body) = put(&nodes[0], "short", "3");
    assert_eq!(status, reqwest::StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["acknowledged"], 2, "{body}");
    assert!(body["causal_token"].as_str().is_some_and(|token| token.starts_with("t~")));
    assert_eq!(nodes[0].get("t", "short").as_deref(), Some("short"));
    assert!(metric(&nodes[0], "canopy_writes_unacknowledged_total") >= 1);
    // Of the twenty writes acknowledged by three copies, every third was written through it.
    assert!(metric(&nodes[0], "canopy_writes_acknowledged_total") >= 6);
}

#[test]
fn concurrent_writes_of_one_key_converge_to_one_value() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 3, "t");
    std::thread::scope(|scope| {
        for (i, node) in nodes.iter().enumerate() {
            scope.spawn(move || {
                for round in 0..20 {
                    node.put("t", "contended", &format!("node-{i}-round-{round}"));
                }
            });
        }
    });
    wait_until("all nodes agree on heads and value", || {
        let heads: BTreeSet<String> = nodes.iter().map(|n| n.heads("t").to_string()).collect();
        let values: BTreeSet<Option<String>> = nodes.iter().map(|n| n.get("t", "contended")).collect();
        heads.len() == 1 && values.len() == 1
    });
    let value = nodes[0].get("t", "contended").unwrap();
    assert!(value.ends_with("round-19"), "the winner is one of the last writes: {value}");
}

#[test]
fn a_node_killed_with_sigkill_keeps_acknowledged_writes_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = cluster(dir.path(), 3, "t");
    // Every one of these is acknowledged (a 2xx with a CID) before the kill.
    for i in 0..50 {
        nodes[2].put("t", &format!("before-{i:02}"), &format!("acknowledged-{i}"));
    }
    nodes[2].kill();
    for i in 0..100 {
        nodes[i % 2].put("t", &format!("during-{i:03}"), &format!("written-while-down-{i}"));
    }
    // Restarted with the same data directory (so the same identity and subscriptions) and
    // the same peers; it is not told its topics again.
    let peers = vec![nodes[0].address(), nodes[1].address()];
    let data_dir = nodes[2].data_dir.clone();
    nodes[2] = NodeProcess::start(&data_dir, &peers, &[]);
    for i in 0..50 {
        assert_eq!(
            nodes[2].get("t", &format!("before-{i:02}")).as_deref(),
            Some(format!("acknowledged-{i}").as_str()),
            "an acknowledged write survives kill -9"
        );
    }
    for node in &nodes {
        wait_until("every node has every write", || node.key_count("t") == 150);
    }
    for node in &nodes {
        for i in 0..50 {
            assert_eq!(node.get("t", &format!("before-{i:02}")).unwrap(), format!("acknowledged-{i}"));
        }
        for i in 0..100 {
            assert_eq!(node.get("t", &format!("during-{i:03}")).unwrap(), format!("written-while-down-{i}"));
        }
    }
    wait_until("the three replicas have the same heads", || {
        nodes.iter().map(|n| n.heads("t").to_string()).collect::<BTreeSet<_>>().len() == 1
    });
}

#[test]
fn an_empty_node_catches_up_a_topic_of_100000_keys() {
    let dir = tempfile::tempdir().unwrap();
    let source = NodeProcess::start(&dir.path().join("source"), &[], &["big"]);
    let value = "v".repeat(100);
    for batch in 0..100 {
        let ops: Vec<_> = (0..1000)
            .map(|i| json!({ "op": "put", "key": format!("key-{batch:03}-{i:04}"), "value": base64_of(&value) }))
            .collect();
        let response =
            source.http.post(source.url("/v1/topics/big/batch")).json(&json!({ "ops": ops })).send().unwrap();
        assert!(response.status().is_success());
    }
    assert_eq!(source.key_count("big"), 100_000);
    let started = Instant::now();
    let empty = NodeProcess::start(&dir.path().join("empty"), &[source.address()], &["big"]);
    wait_until("the empty node holds all 100000 keys", || empty.key_count("big") == 100_000);
    println!("catch-up of 100000 keys took {:?} including start-up", started.elapsed());
    assert_eq!(empty.heads("big"), source.heads("big"));
    assert_eq!(empty.get("big", "key-099-0999").as_deref(), Some(value.as_str()));
}

#[test]
fn an_empty_node_catches_up_a_chain_deeper_than_one_walk() {
    let dir = tempfile::tempdir().unwrap();
    let source = NodeProcess::start(&dir.path().join("source"), &[], &["deep"]);
    // One put at a time: every put is its own block on top of the last, a chain of 20,000,
    // deeper than one walk of the block server visits (16,384), so the catch-up descends
    // through a frontier before it climbs back, over real QUIC.
    let client = &source.http;
    for i in 0..20_000 {
        let url = source.url(&format!("/v1/topics/deep/kv/key-{:03}", i % 500));
        assert!(client.put(url).body(i.to_string()).send().unwrap().status().is_success());
    }
    assert_eq!(source.heads("deep")["heads"][0]["height"], 20_000);
    let empty = NodeProcess::start(&dir.path().join("empty"), &[source.address()], &["deep"]);
    wait_until("the empty node holds the whole chain", || empty.heads("deep") == source.heads("deep"));
    assert_eq!(empty.key_count("deep"), 500);
    assert_eq!(empty.get("deep", "key-499").as_deref(), Some("19999"));
}

#[test]
fn a_peer_announcing_heads_it_never_serves_does_not_stall_a_topic() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 2, "t");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A libp2p peer that keeps announcing well-formed heads that exist nowhere, and refuses
    // every block request.
    let rogue = {
        let stop = stop.clone();
        let target = nodes[1].address();
        runtime.spawn(async move {
            let transport = outside_peer(target, std::sync::Arc::new(|_, _| Err("no".into()))).await;
            transport.handle.subscribe("t");
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                round += 1;
                let fake =
                    canopy_crdt::Block::build("t", vec![], 1, round.to_be_bytes().to_vec(), &signer()).unwrap().cid();
                let heads = vec![canopy_crdt::Head { cid: fake, height: round }];
                let message = canopy_crdt::sync::Message::Heads {
                    topic: "t".into(),
                    heads,
                    blocks: Vec::new(),
                    unawaited: false,
                };
                transport.handle.publish("t", message.encode());
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            transport.handle.shutdown().await;
        })
    };
    wait_until("the rogue peer is connected", || nodes[1].json("/v1/status")["peers"].as_u64() == Some(2));
    for i in 0..20 {
        nodes[0].put("t", &format!("while-attacked-{i}"), "honest");
    }
    wait_until("honest writes arrive while the rogue announces", || {
        (0..20).all(|i| nodes[1].get("t", &format!("while-attacked-{i}")).is_some())
    });
    // Honest writes may arrive (inside their announcements) before the first fetch from the
    // rogue peer has failed: the rogue keeps announcing until one has been given up.
    wait_until("the fetches from the rogue peer are given up", || {
        metric(&nodes[1], "canopy_fetches_abandoned_total") > 0
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    runtime.block_on(rogue).unwrap();
    nodes[0].put("t", "after-the-rogue", "honest");
    wait_until("writes still arrive", || nodes[1].get("t", "after-the-rogue").is_some());
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn garbage_on_the_block_port_and_bogus_announcements_do_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 2, "t");
    let status = nodes[0].json("/v1/status");
    let blocks = status["listen"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a.as_str()?.strip_prefix("blocks=").map(String::from))
        .unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let garbage: Vec<u8> = (0..(i % 1200 + 1)).map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8).collect();
        socket.send_to(&garbage, &blocks).unwrap();
    }
    let mut tcp = std::net::TcpStream::connect(nodes[0].api.trim_start_matches("http://")).unwrap();
    tcp.write_all(b"\x00\xffnot http at all\r\n\r\n").unwrap();
    drop(tcp);

    // A libp2p peer that announces nonsense heads and sends garbage block requests.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let transport = outside_peer(nodes[0].address(), std::sync::Arc::new(|_, _| Err("no".into()))).await;
        let handle = transport.handle;
        handle.subscribe("t");
        let target: canopy_transport::PeerId = nodes[0].peer_id.parse().unwrap();
        for round in 0..50u8 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            handle.publish("t", vec![round; 64]);
            handle.request(target, u64::from(round), vec![0xa1, round, 0xff, 0x00]);
        }
        handle.shutdown().await;
    });

    nodes[0].put("t", "after-garbage", "still works");
    wait_until("replication still works", || nodes[1].get("t", "after-garbage").is_some());
    let live = nodes[0].http.get(nodes[0].url("/livez")).send().unwrap();
    assert!(live.status().is_success());
}

#[test]
fn a_node_joining_after_compaction_gets_every_key_from_the_snapshot() {
    join_after_compaction(&[]);
}

#[test]
fn a_node_joining_after_the_snapshot_parts_were_released_gets_a_new_snapshot() {
    join_after_compaction(&["--snapshot-retain-s", "2"]);
}

#[test]
fn a_node_joining_after_automatic_pruning_gets_a_snapshot_made_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeProcess::start_with(&dir.path().join("node-0"), &[], &["t"], &["--compact-after-blocks", "5"]);
    for batch in 0..12 {
        let ops: Vec<_> = (0..100)
            .map(|i| json!({ "op": "put", "key": format!("key-{batch:02}-{i:03}"), "value": base64_of(&format!("v{i}")) }))
            .collect();
        let response = first.http.post(first.url("/v1/topics/t/batch")).json(&json!({ "ops": ops })).send();
        assert!(response.unwrap().status().is_success());
    }
    // The policy prunes without making a snapshot: the pruned heads are the frontier.
    let frontier = |node: &NodeProcess| node.json("/v1/topics/t/snapshots")["frontier"].as_array().unwrap().len();
    wait_until("the history is pruned", || frontier(&first) > 0);
    assert_eq!(first.json("/v1/topics/t/snapshots")["cover"].as_array().unwrap().len(), 0);

    // A node that needs the pruned blocks gets a snapshot the first node makes for it.
    let late = NodeProcess::start(&dir.path().join("late"), &[first.address()], &["t"]);
    wait_until("the late node holds every key", || late.key_count("t") == 1200);
    assert_eq!(late.get("t", "key-11-099").as_deref(), Some("v99"));
    wait_until("the late node has the same heads", || late.heads("t") == first.heads("t"));
    let snapshots = first.json("/v1/topics/t/snapshots");
    assert_eq!(snapshots["cover"].as_array().unwrap().len(), 1, "{snapshots}");
    assert_eq!(frontier(&first), 0, "the snapshot covers what was pruned: {snapshots}");
    assert!(metric(&late, "canopy_snapshots_merged_total") >= 1);
}

/// Two nodes write, both compact, one writes again; a third node started empty gets every
/// key. With `extra` settings that release parts, the join waits until they are released.
fn join_after_compaction(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeProcess::start_with(&dir.path().join("node-0"), &[], &["t"], extra);
    let second = NodeProcess::start_with(&dir.path().join("node-1"), &[first.address()], &["t"], extra);
    let nodes = [first, second];
    for node in &nodes {
        wait_until("both nodes see each other", || node.json("/v1/status")["peers"].as_u64() == Some(1));
    }
    for batch in 0..10 {
        let ops: Vec<_> = (0..200)
            .map(|i| json!({ "op": "put", "key": format!("key-{batch:02}-{i:03}"), "value": base64_of(&format!("v{i}")) }))
            .collect();
        let response =
            nodes[batch % 2].http.post(nodes[batch % 2].url("/v1/topics/t/batch")).json(&json!({ "ops": ops })).send();
        assert!(response.unwrap().status().is_success());
    }
    nodes[1].put("t", "key-00-000", "overwritten");
    for node in &nodes {
        wait_until("both nodes hold every key", || node.key_count("t") == 2000);
    }
    wait_until("both nodes have the same heads", || nodes[0].heads("t") == nodes[1].heads("t"));
    // Both compact, one through the CLI: their history is pruned everywhere.
    let output = common::canopy().args(["compact", "t", "--api", &nodes[0].api, "--json"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["keys"], 2000);
    assert!(reply["pruned_blocks"].as_u64().unwrap() >= 11, "{reply}");
    let reply: serde_json::Value =
        nodes[1].http.post(nodes[1].url("/v1/topics/t/compact")).send().unwrap().json().unwrap();
    assert_eq!(reply["snapshot"], nodes[1].json("/v1/topics/t/snapshots")["cover"][0]);
    nodes[0].put("t", "after", "the compaction");
    if !extra.is_empty() {
        for node in &nodes {
            wait_until("the snapshot parts are released", || {
                let metrics = node.http.get(node.url("/metrics")).send().unwrap().text().unwrap();
                metrics.lines().any(|l| l == "canopy_snapshot_parts_held 0")
            });
        }
    }

    let peers: Vec<String> = nodes.iter().map(NodeProcess::address).collect();
    let late = NodeProcess::start(&dir.path().join("late"), &peers, &["t"]);
    wait_until("the late node holds every key", || late.key_count("t") == 2001);
    assert_eq!(late.get("t", "key-00-000").as_deref(), Some("overwritten"));
    assert_eq!(late.get("t", "key-09-199").as_deref(), Some("v199"));
    assert_eq!(late.get("t", "after").as_deref(), Some("the compaction"));
    wait_until("the late node has the same heads", || late.heads("t") == nodes[0].heads("t"));
    let metrics = late.http.get(late.url("/metrics")).send().unwrap().text().unwrap();
    let merged = metrics.lines().find(|l| l.starts_with("canopy_snapshots_merged_total")).unwrap();
    assert!(!merged.ends_with(" 0"), "the late node merged a snapshot: {merged}");
}

/// The value of an unlabelled counter or histogram count in a node's `/metrics`.

#[test]
fn small_writes_reach_a_peer_inside_the_announcement_with_no_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 2, "t");
    // Once a first write has gone across, both gossip meshes are up.
    nodes[0].put("t", "warm-up", "v");
    wait_until("the first write arrives", || nodes[1].get("t", "warm-up").is_some());
    // The sync actor copies its figures to /metrics after applying: wait until the warm-up
    // block is counted, however it came.
    wait_until("the warm-up is counted", || metric(&nodes[1], "canopy_blocks_applied_total") >= 1);
    let applied_before = metric(&nodes[1], "canopy_blocks_applied_total");
    let inline_before = metric(&nodes[1], "canopy_blocks_inline_total");
    let fetches_before = metric(&nodes[1], "canopy_fetch_round_trip_seconds_count");
    for i in 0..5 {
        nodes[0].put("t", &format!("k{i}"), &format!("v{i}"));
        wait_until("the write arrives", || nodes[1].get("t", &format!("k{i}")).is_some());
    }
    wait_until("the writes are counted", || metric(&nodes[1], "canopy_blocks_applied_total") >= applied_before + 5);
    assert_eq!(metric(&nodes[1], "canopy_blocks_inline_total") - inline_before, 5);
    assert_eq!(metric(&nodes[1], "canopy_fetch_round_trip_seconds_count"), fetches_before, "no block was fetched");
    assert!(metric(&nodes[1], "canopy_handle_heads_seconds_count") >= 5);
    assert!(metric(&nodes[0], "canopy_commit_to_publish_seconds_count") >= 6);
}
