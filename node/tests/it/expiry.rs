//! Expiring entries between real `canopy serve` processes: the service-registry pattern. An
//! instance registers with a lifetime and renews it with a heartbeat; one that stops renewing
//! disappears from every node, and watchers hear of it.

use crate::common;

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};

use common::{NodeProcess, canopy, cluster, wait_until};
use serde_json::Value;

/// The instances listed under `services/web/` on `node`.
fn instances(node: &NodeProcess) -> Vec<String> {
    let page = node.json("/v1/topics/registry/kv?prefix=services/web/");
    page["entries"].as_array().unwrap().iter().map(|entry| entry["key"].as_str().unwrap().to_string()).collect()
}

#[test]
fn an_instance_that_stops_renewing_disappears_from_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 3, "registry");
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let watch = c.http.get(c.url("/v1/topics/registry/watch")).send().unwrap();

    // b1 registers once, with the client as a user types it.
    let output = canopy()
        .args(["put", "registry", "services/web/b1", "10.0.0.2:80", "--ttl", "3s", "--api", &b.api])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("expires"), "the client says when");
    // a1 registers and renews every half second, over HTTP.
    let beating = AtomicBool::new(true);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while beating.load(Ordering::SeqCst) {
                let url = a.url("/v1/topics/registry/kv/services/web/a1?ttl=3s");
                let reply: Value = a.http.put(url).body("10.0.0.1:80").send().unwrap().json().unwrap();
                assert!(reply["expires_ms"].is_u64(), "{reply}");
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        });
        for node in [a, b, c] {
            wait_until("both instances are listed everywhere", || {
                instances(node) == ["services/web/a1", "services/web/b1"]
            });
        }
        for node in [a, b, c] {
            wait_until("b1, which stopped renewing, is gone everywhere", || instances(node) == ["services/web/a1"]);
            assert_eq!(node.get("registry", "services/web/b1"), None);
        }
        beating.store(false, Ordering::SeqCst);
    });
    for node in [a, b, c] {
        wait_until("a1 is gone once its heartbeat stops", || instances(node).is_empty());
        wait_until("expired keys leave the key count", || node.key_count("registry") == 0);
    }
    // The watch stream reported both expiries.
    let mut expired = Vec::new();
    for line in BufReader::new(watch).lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data:") else { continue };
        let event: Value = serde_json::from_str(data.trim()).unwrap();
        if event["expired"] == true {
            assert!(event["value"].is_null(), "{event}");
            expired.push(event["key"].as_str().unwrap().to_string());
            if expired.len() == 2 {
                break;
            }
        }
    }
    expired.sort();
    assert_eq!(expired, ["services/web/a1", "services/web/b1"]);

    // Bad lifetimes are refused and write nothing.
    for ttl in ["soon", "0s", "-3s", "1000y"] {
        let url = a.url(&format!("/v1/topics/registry/kv/services/web/bad?ttl={ttl}"));
        let response = a.http.put(url).body("x").send().unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST, "ttl {ttl}");
        assert!(response.text().unwrap().contains("ttl"));
    }
    let batch =
        serde_json::json!({ "ops": [{ "op": "put", "key": "services/web/bad", "value": "eA==", "ttl": "never" }] });
    let response = a.http.post(a.url("/v1/topics/registry/batch")).json(&batch).send().unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
    assert_eq!(a.get("registry", "services/web/bad"), None);
}
