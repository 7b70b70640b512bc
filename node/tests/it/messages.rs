//! Ephemeral messages across real nodes: published once to every listener on any node, never
//! stored nor replayed, bounded in size and rate.

use std::io::BufRead as _;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{self, NodeProcess, canopy};

use reqwest::StatusCode;
use serde_json::Value;

/// Listens to `topic`'s messages on `node` from a thread: each message's text arrives on the
/// channel.
fn listen(node: &NodeProcess, topic: &str) -> mpsc::Receiver<String> {
    let response = node.http.get(node.url(&format!("/v1/topics/{topic}/messages"))).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data:") {
                let event: Value = serde_json::from_str(data.trim()).unwrap();
                if sender.send(event["data"].as_str().unwrap_or_default().to_string()).is_err() {
                    return;
                }
            }
        }
    });
    receiver
}

fn publish(node: &NodeProcess, topic: &str, body: impl Into<reqwest::blocking::Body>) -> (StatusCode, Value) {
    let response = node.http.post(node.url(&format!("/v1/topics/{topic}/messages"))).body(body).send().unwrap();
    (response.status(), response.json().unwrap())
}

/// Publishes probes through `node` until every listener of `listeners` has heard one.
fn until_heard(node: &NodeProcess, listeners: &[&mpsc::Receiver<String>]) {
    let started = Instant::now();
    let mut heard = vec![false; listeners.len()];
    while heard.iter().any(|h| !h) {
        assert!(started.elapsed() < common::WAIT_MAX, "the listeners never heard a probe");
        publish(node, "chat", "probe");
        for (listener, heard) in listeners.iter().zip(&mut heard) {
            while let Ok(text) = listener.recv_timeout(Duration::from_millis(100)) {
                *heard |= text == "probe";
            }
        }
    }
}

/// The messages `listener` hears that are not probes, until it has heard `count`.
fn heard(listener: &mpsc::Receiver<String>, count: usize) -> Vec<String> {
    let mut texts = Vec::new();
    while texts.len() < count {
        let text = listener.recv_timeout(common::WAIT_MAX).expect("a message never arrived");
        if text != "probe" {
            texts.push(text);
        }
    }
    texts
}

#[test]
fn messages_reach_every_listener_once_and_are_neither_stored_nor_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = common::cluster(dir.path(), 3, "chat");
    let here = listen(&nodes[0], "chat");
    let there = listen(&nodes[2], "chat");
    until_heard(&nodes[0], &[&here, &there]);
    for i in 1..=3 {
        let (status, reply) = publish(&nodes[0], "chat", format!("m-{i}"));
        assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
        assert_eq!(reply["sent"], true, "{reply}");
    }
    let mut far = heard(&there, 3);
    far.sort();
    assert_eq!(far, ["m-1", "m-2", "m-3"]);
    let mut near = heard(&here, 3);
    near.sort();
    assert_eq!(near, ["m-1", "m-2", "m-3"], "the publishing node's own listeners hear it too");

    // Nothing is stored: no key, no block, and a listener that comes later hears only what
    // is published after it came.
    assert!(nodes[2].json("/v1/topics/chat/kv")["entries"].as_array().unwrap().is_empty());
    assert!(nodes[2].heads("chat")["heads"].as_array().unwrap().is_empty(), "a message makes no block");
    let late = listen(&nodes[1], "chat");
    until_heard(&nodes[0], &[&late]);
    publish(&nodes[2], "chat", "m-4");
    assert_eq!(heard(&late, 1), ["m-4"]);

    // Bounded: too large a message, an unsubscribed topic, a publisher over its rate.
    let (status, reply) = publish(&nodes[0], "chat", vec![b'x'; 64 * 1024 + 1]);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{reply}");
    assert_eq!(publish(&nodes[0], "elsewhere", "hi").0, StatusCode::NOT_FOUND);
    // Eight clients at once outpace the rate however slow each round trip is.
    let refused = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for client in 0..8 {
            let (node, refused) = (&nodes[1], &refused);
            scope.spawn(move || {
                for i in 0..200 {
                    if refused.lock().unwrap().is_some() {
                        return;
                    }
                    let (status, reply) = publish(node, "chat", format!("r-{client}-{i}"));
                    if status != StatusCode::ACCEPTED {
                        refused.lock().unwrap().get_or_insert((status, reply));
                        return;
                    }
                }
            });
        }
    });
    let (status, reply) = refused.into_inner().unwrap().expect("a publisher is held to a rate");
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("slow down"), "{reply}");

    // In an owned topic only the owner publishes.
    let owned = nodes[0].create_topic("notices", "owned")["topic"].as_str().unwrap().replace('/', "%2F");
    nodes[2].subscribe(&owned);
    let (status, reply) = publish(&nodes[2], &owned, "not mine to say");
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    assert_eq!(publish(&nodes[0], &owned, "the owner's").0, StatusCode::ACCEPTED);
}

#[test]
fn the_cli_publishes_and_prints_messages() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = common::cluster(dir.path(), 2, "chat");
    let mut listener = canopy()
        .args(["messages", "chat", "--count", "1", "--api", &nodes[1].api])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // The listener joins the topic's messages at once; publish until it has printed one and left.
    while listener.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < common::WAIT_MAX, "the listener heard nothing");
        let output = canopy().args(["publish", "chat", "hello there", "--api", &nodes[0].api]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = listener.wait_with_output().unwrap();
    let printed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(printed.trim(), format!("{}: hello there", nodes[0].peer_id), "{printed}");
    assert!(output.status.success());

    // A listener whose node stops is told so, and fails.
    let mut nodes = nodes;
    let listener = canopy()
        .args(["messages", "chat", "--api", &nodes[1].api])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its stream is open once its node counts it among the topic's listeners.
    let started = Instant::now();
    loop {
        let reply: serde_json::Value =
            nodes[1].http.post(nodes[1].url("/v1/topics/chat/messages")).body("ping").send().unwrap().json().unwrap();
        if reply["local_listeners"].as_u64() == Some(1) {
            break;
        }
        assert!(started.elapsed() < common::WAIT_MAX, "the listener never joined: {reply}");
        std::thread::sleep(Duration::from_millis(20));
    }
    nodes[1].terminate();
    let output = listener.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("closed the messages stream"));
}
