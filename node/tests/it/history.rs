//! Key history between real `canopy serve` processes: the versions a key went through on two
//! nodes, read over HTTP and with `canopy history`, before and after a compaction.

use crate::common;

use common::{NodeProcess, canopy, cluster, wait_until};
use serde_json::Value;

/// The versions of `key` on `node` as `(value, deleted)`, newest first.
fn versions(node: &NodeProcess, topic: &str, key: &str) -> Vec<(Option<String>, bool)> {
    let reply = node.json(&format!("/v1/topics/{topic}/history/{key}"));
    reply["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions in {reply}"))
        .iter()
        .map(|version| {
            let value = version["value"].as_str().map(|value| {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD.decode(value).unwrap();
                String::from_utf8(bytes).unwrap()
            });
            (value, version["deleted"].as_bool().unwrap())
        })
        .collect()
}

fn put_value(value: &str) -> (Option<String>, bool) {
    (Some(value.to_string()), false)
}

#[test]
fn a_keys_versions_from_two_nodes_are_listed_newest_first_until_a_compaction_drops_them() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), 2, "config");
    let (a, b) = (&nodes[0], &nodes[1]);

    // Each write waits for the one before it, so the versions form one chain.
    let steps: [(&NodeProcess, Option<&str>); 4] = [(a, Some("v1")), (b, Some("v2")), (a, None), (b, Some("v3"))];
    for (node, value) in steps {
        let height = match value {
            Some(value) => node.put("config", "feature/x", value)["height"].as_u64().unwrap(),
            None => {
                let reply: Value =
                    node.http.delete(node.url("/v1/topics/config/kv/feature/x")).send().unwrap().json().unwrap();
                reply["height"].as_u64().unwrap()
            }
        };
        for other in [a, b] {
            wait_until("the write reaches both nodes", || {
                other.heads("config")["heads"].as_array().unwrap().iter().any(|h| h["height"].as_u64() == Some(height))
            });
        }
    }
    let expected = vec![put_value("v3"), (None, true), put_value("v2"), put_value("v1")];
    assert_eq!(versions(a, "config", "feature/x"), expected);
    assert_eq!(versions(b, "config", "feature/x"), expected);
    assert!(versions(a, "config", "feature/y").is_empty(), "a key never written has no history");

    // The client, as a user types it: one line per version, newest first, and --limit.
    let output = canopy().args(["history", "config", "feature/x", "--api", &a.api]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    let last_fields: Vec<&str> = text.lines().map(|line| line.rsplit('\t').next().unwrap()).collect();
    assert_eq!(last_fields, ["v3", "(deleted)", "v2", "v1"], "{text}");
    let output = canopy().args(["history", "config", "feature/x", "--limit", "2", "--api", &b.api]).output().unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap().lines().count(), 2);

    // Bad input gets a clear error.
    let bad = a.http.get(a.url("/v1/topics/config/history/feature/x?limit=none")).send().unwrap();
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(bad.text().unwrap().contains("limit"));
    let missing = a.http.get(a.url("/v1/topics/unknown/history/feature/x")).send().unwrap();
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);

    // A compaction prunes the blocks it covers: what was superseded goes, the live value stays
    // until it is overwritten, and writes after it are recorded again.
    let compacted = a.http.post(a.url("/v1/topics/config/compact")).send().unwrap();
    assert!(compacted.status().is_success(), "{}", compacted.status());
    assert_eq!(versions(a, "config", "feature/x"), vec![put_value("v3")]);
    assert_eq!(versions(b, "config", "feature/x"), expected, "a compaction elsewhere changes nothing here");
    a.put("config", "feature/x", "v4");
    a.put("config", "feature/x", "v5");
    assert_eq!(versions(a, "config", "feature/x"), vec![put_value("v5"), put_value("v4")]);
}

#[test]
fn a_node_without_key_history_lists_the_live_value_alone() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_with(dir.path(), &[], &["config"], &["--key-history", "false"]);
    node.put("config", "mode", "a");
    node.put("config", "mode", "b");
    assert_eq!(versions(&node, "config", "mode"), vec![put_value("b")]);
}
