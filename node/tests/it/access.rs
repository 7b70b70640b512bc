//! Write access between real `canopy serve` processes: a microblog only its owner posts to,
//! driven through the `canopy` client as a user types it, and a hostile peer whose forged posts
//! no node applies.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use canopy_crdt::sync::{Message, SyncConfig, WireBlock};
use canopy_crdt::{Block, Delta, Head, Signer};
use common::{NodeProcess, canopy, outside_peer, wait_until};
use serde_json::Value;

/// Runs the `canopy` client against `node`; returns (success, stdout, stderr).
fn client(node: &NodeProcess, args: &[&str]) -> (bool, String, String) {
    let output = canopy().args(args).args(["--api", &node.api]).output().expect("canopy runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
        String::from_utf8_lossy(&output.stderr).trim().to_string(),
    )
}

fn ok(node: &NodeProcess, args: &[&str]) -> String {
    let (success, stdout, stderr) = client(node, args);
    assert!(success, "canopy {args:?} failed: {stderr}");
    stdout
}

fn metric(node: &NodeProcess, name: &str) -> u64 {
    let text = node.http.get(node.url("/metrics")).send().unwrap().text().unwrap();
    text.lines().find_map(|line| line.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
}

/// The path segment of a topic name (owned topics hold a `/`).
fn segment(topic: &str) -> String {
    topic.replace('/', "%2F")
}

#[test]
fn a_microblog_is_posted_by_its_owner_alone_and_read_by_every_follower() {
    let dir = tempfile::tempdir().unwrap();
    let author = NodeProcess::start(&dir.path().join("author"), &[], &[]);
    let first = NodeProcess::start(&dir.path().join("first"), &[author.address()], &[]);
    let second = NodeProcess::start(&dir.path().join("second"), &[author.address(), first.address()], &[]);

    let id = ok(&author, &["id"]);
    assert_eq!(id, author.peer_id, "a node writes as its peer id");
    let created = ok(&author, &["topic", "create", "microblog", "--mode", "owned"]);
    let topic = format!("{id}/microblog");
    assert_eq!(created, format!("created owned topic {topic}"));
    for follower in [&first, &second] {
        ok(follower, &["subscribe", &topic]);
    }
    let info: Value = serde_json::from_str(&ok(&first, &["topic", "info", &topic, "--json"])).unwrap();
    assert_eq!(info["mode"], "owned");
    assert_eq!(info["owner"], id.as_str());
    assert_eq!(info["writers"], serde_json::json!([id]));

    for i in 0..5 {
        ok(&author, &["put", &topic, &format!("post/{i}"), &format!("post number {i}")]);
    }
    // A follower cannot post, through the client or the API.
    let (success, _, stderr) = client(&first, &["put", &topic, "post/0", "rewritten"]);
    assert!(!success, "a follower's post must fail");
    assert!(stderr.contains("owned by"), "the refusal names the rule: {stderr}");
    let status = first
        .http
        .put(first.url(&format!("/v1/topics/{}/kv/post/9", segment(&topic))))
        .body("sneaky")
        .send()
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN);

    for follower in [&first, &second] {
        wait_until("every post reaches every follower", || {
            (0..5).all(|i| {
                follower.get(&segment(&topic), &format!("post/{i}")).as_deref() == Some(&format!("post number {i}")[..])
            })
        });
        assert_eq!(follower.get(&segment(&topic), "post/9"), None);
    }
    // An open topic of the same node stays writable by everyone.
    ok(&author, &["topic", "create", "chat"]);
    ok(&first, &["subscribe", "chat"]);
    ok(&first, &["put", "chat", "hello", "from a follower"]);
    wait_until("open topics take every writer", || author.get("chat", "hello").is_some());
}

#[test]
fn a_writer_granted_then_revoked_writes_only_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let owner = NodeProcess::start(&dir.path().join("owner"), &[], &[]);
    let member = NodeProcess::start(&dir.path().join("member"), &[owner.address()], &[]);
    let reader = NodeProcess::start(&dir.path().join("reader"), &[owner.address(), member.address()], &[]);

    let created = ok(&owner, &["topic", "create", "notes", "--mode", "writers"]);
    let topic = format!("{}/writers/notes", owner.peer_id);
    assert_eq!(created, format!("created writers topic {topic}"));
    ok(&member, &["subscribe", &topic]);
    ok(&reader, &["subscribe", &topic]);

    // Not granted yet: refused with the rule named, through the client and the API.
    let (success, _, stderr) = client(&member, &["put", &topic, "note/1", "too early"]);
    assert!(!success && stderr.contains("writer list"), "{stderr}");
    // Only the owner keeps the list.
    let (success, _, stderr) = client(&member, &["topic", "grant", &topic, &member.peer_id]);
    assert!(!success && stderr.contains("only its owner"), "{stderr}");

    let granted = ok(&owner, &["topic", "grant", &topic, &member.peer_id]);
    assert!(granted.starts_with(&format!("granted {} in {topic}", member.peer_id)), "{granted}");
    let info: Value = serde_json::from_str(&ok(&owner, &["topic", "info", &topic, "--json"])).unwrap();
    assert_eq!(info["mode"], "writers");
    assert_eq!(info["writers"], serde_json::json!([owner.peer_id, member.peer_id]));

    wait_until("the member learns of its grant", || {
        let (success, _, _) = client(&member, &["put", &topic, "note/1", "written while granted"]);
        success
    });
    for node in [&owner, &reader] {
        wait_until("the member's note reaches every node", || {
            node.get(&segment(&topic), "note/1").as_deref() == Some("written while granted")
        });
    }

    let revoked = ok(&owner, &["topic", "revoke", &topic, &member.peer_id]);
    assert!(revoked.starts_with("revoked"), "{revoked}");
    let info: Value = serde_json::from_str(&ok(&owner, &["topic", "info", &topic, "--json"])).unwrap();
    assert_eq!(info["writers"], serde_json::json!([owner.peer_id]));
    // Once the revocation has reached the member, its writes are refused there and nowhere taken.
    wait_until("the member learns of its revocation", || {
        let info: Value = serde_json::from_str(&ok(&member, &["topic", "info", &topic, "--json"])).unwrap();
        info["writers"] == serde_json::json!([owner.peer_id])
    });
    let (success, _, stderr) = client(&member, &["put", &topic, "note/2", "after the revocation"]);
    assert!(!success && stderr.contains("writer list"), "{stderr}");
    let status = member
        .http
        .put(member.url(&format!("/v1/topics/{}/kv/note/2", segment(&topic))))
        .body("after the revocation")
        .send()
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN);
    ok(&owner, &["put", &topic, "note/3", "by the owner"]);
    for node in [&member, &reader] {
        wait_until("the owner's note reaches every node", || node.get(&segment(&topic), "note/3").is_some());
        assert_eq!(node.get(&segment(&topic), "note/2"), None);
        assert_eq!(node.get(&segment(&topic), "note/1").as_deref(), Some("written while granted"));
    }
}

/// A block of `topic` by `signer` that sets `key`, above `parent`.
fn forged(topic: &str, signer: &Signer, parent: &Head, key: &str) -> Block {
    let delta =
        Delta { adds: vec![(key.as_bytes().to_vec(), b"forged".to_vec())], removes: vec![], ..Default::default() };
    Block::build(topic, vec![parent.cid], parent.height + 1, delta.encode(), signer).unwrap()
}

fn wire(block: &Block) -> WireBlock {
    WireBlock { cid: block.cid(), bytes: serde_bytes::ByteBuf::from(block.bytes().to_vec()) }
}

#[test]
fn a_hostile_peer_forging_posts_is_refused_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let author = NodeProcess::start(&dir.path().join("author"), &[], &[]);
    let topic = format!("{}/microblog", author.peer_id);
    let follower = NodeProcess::start(&dir.path().join("follower"), &[author.address()], &[&topic]);
    ok(&author, &["topic", "create", "microblog", "--mode", "owned"]);
    ok(&author, &["put", &topic, "post/1", "the real post"]);
    wait_until("the follower has the post", || follower.get(&segment(&topic), "post/1").is_some());
    let head: Head = {
        let heads = follower.heads(&segment(&topic));
        let head = &heads["heads"][0];
        Head { cid: head["cid"].as_str().unwrap().parse().unwrap(), height: head["height"].as_u64().unwrap() }
    };

    // A libp2p peer with a key of its own: it announces posts it signed, inside announcements
    // and as heads it serves when asked, each rewriting the real post.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let hostile = {
        let (stop, topic, target) = (stop.clone(), topic.clone(), follower.address());
        let signer = Signer::generate();
        runtime.spawn(async move {
            let served = forged(&topic, &signer, &head, "post/1");
            let answer = {
                let served = wire(&served);
                let topic = topic.clone();
                move |_, bytes: Vec<u8>| match Message::decode(&bytes, &SyncConfig::default()) {
                    Ok(Message::Want { id, .. }) => Ok(Message::Blocks {
                        topic: topic.clone(),
                        id,
                        blocks: vec![served.clone()],
                        more: false,
                        frontier: Vec::new(),
                        snapshots: Vec::new(),
                        snapshot_pending: false,
                    }
                    .encode()),
                    _ => Err("no".to_string()),
                }
            };
            let transport = outside_peer(target, Arc::new(answer)).await;
            transport.handle.subscribe(&topic);
            let mut round = 0u64;
            while !stop.load(Ordering::SeqCst) {
                round += 1;
                let message = if round.is_multiple_of(2) {
                    let inline = forged(&topic, &signer, &head, &format!("post/{round}"));
                    let heads = vec![Head { cid: inline.cid(), height: inline.height() }];
                    Message::Heads { topic: topic.clone(), heads, blocks: vec![wire(&inline)], unawaited: false }
                } else {
                    let heads = vec![Head { cid: served.cid(), height: served.height() }];
                    Message::Heads { topic: topic.clone(), heads, blocks: Vec::new(), unawaited: false }
                };
                transport.handle.publish(&topic, message.encode());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            transport.handle.shutdown().await;
        })
    };
    wait_until("forged announcements are refused", || metric(&follower, "canopy_announcements_rejected_total") > 0);
    wait_until("forged blocks served on request are refused", || metric(&follower, "canopy_blocks_refused_total") > 0);
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(hostile).unwrap();

    assert_eq!(follower.get(&segment(&topic), "post/1").as_deref(), Some("the real post"));
    assert_eq!(follower.key_count(&topic), 1, "no forged post is applied");
    ok(&author, &["put", &topic, "post/2", "still serving"]);
    wait_until("the owner's posts still arrive", || follower.get(&segment(&topic), "post/2").is_some());
    assert_eq!(author.get(&segment(&topic), "post/1").as_deref(), Some("the real post"));
    assert_eq!(metric(&author, "canopy_blocks_applied_total"), 0, "the owner applied nothing from anyone");
}
