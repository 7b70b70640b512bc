//! Counters between real `canopy serve` processes: three nodes counting likes at once reach the
//! exact total, through the client as a user types it and through the HTTP API.

use crate::common;

use std::io::{BufRead, BufReader};

use common::{NodeProcess, canopy, wait_until};
use serde_json::{Value, json};

fn count(node: &NodeProcess, topic: &str, key: &str) -> i64 {
    let reply: Value =
        node.http.get(node.url(&format!("/v1/topics/{topic}/counters/{key}"))).send().unwrap().json().unwrap();
    reply["value"].as_i64().unwrap_or_else(|| panic!("no value in {reply}"))
}

#[test]
fn three_nodes_counting_likes_at_once_reach_the_exact_total() {
    let dir = tempfile::tempdir().unwrap();
    let a = NodeProcess::start(&dir.path().join("a"), &[], &[]);
    let b = NodeProcess::start(&dir.path().join("b"), &[a.address()], &[]);
    let c = NodeProcess::start(&dir.path().join("c"), &[a.address(), b.address()], &[]);
    let nodes = [&a, &b, &c];
    for node in nodes {
        let status = node.http.put(node.url("/v1/topics/posts")).send().unwrap().status();
        assert!(status.is_success(), "subscribe: {status}");
    }
    // A plain key of the same name is independent of the counter.
    a.http.put(a.url("/v1/topics/posts/kv/likes/1")).body("a post").send().unwrap();

    // Every node increments the same counters concurrently: 40 likes each, a few taken back.
    std::thread::scope(|scope| {
        for node in nodes {
            scope.spawn(move || {
                for i in 0..40 {
                    let url = node.url("/v1/topics/posts/counters/likes/1");
                    let reply: Value = node.http.post(url).json(&json!({ "add": 1 })).send().unwrap().json().unwrap();
                    assert!(reply["cid"].is_string(), "{reply}");
                    if i % 10 == 0 {
                        let url = node.url("/v1/topics/posts/counters/likes/1");
                        node.http.post(url).json(&json!({ "add": -1 })).send().unwrap();
                    }
                }
            });
        }
    });
    let expected = 3 * (40 - 4);
    for node in nodes {
        wait_until("every node counts every like", || count(node, "posts", "likes/1") == expected);
    }
    let plain = a.http.get(a.url("/v1/topics/posts/kv/likes/1")).send().unwrap().text().unwrap();
    assert_eq!(plain, "a post");

    // The client, as a user types it; the watch stream reports the counter's new sum.
    let watch = c.http.get(c.url("/v1/topics/posts/watch")).send().unwrap();
    let output = canopy().args(["incr", "posts", "likes/1", "5", "--api", &b.api]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), (expected + 5).to_string());
    let output = canopy().args(["incr", "posts", "likes/1", "-2", "--api", &b.api]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), (expected + 3).to_string());
    let mut events = BufReader::new(watch).lines();
    let mut seen = Vec::new();
    while seen.last() != Some(&(expected + 3)) {
        let line = events.next().expect("the watch stream stays open").unwrap();
        let Some(data) = line.strip_prefix("data:") else { continue };
        let event: Value = serde_json::from_str(data.trim()).unwrap();
        assert_eq!(event["counter"], "likes/1", "{event}");
        seen.push(event["value"].as_i64().unwrap());
    }
    wait_until("the client's increments reach every node", || {
        let output = canopy().args(["count", "posts", "likes/1", "--api", &a.api]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).trim() == (expected + 3).to_string()
    });

    // Bad input is refused with a clear error and changes nothing.
    let bad = a.http.post(a.url("/v1/topics/posts/counters/likes/1")).body("{\"add\": 1.5}").send().unwrap();
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(bad.text().unwrap().contains("add"));
    let output = canopy().args(["incr", "posts", "likes/1", "many", "--api", &a.api]).output().unwrap();
    assert!(!output.status.success());
    assert_eq!(count(&a, "posts", "likes/1"), expected + 3);
}
