//! Documents across real nodes: concurrent patches of different fields all survive, a delete
//! racing a patch ends by the documented rule on every node, and bad input is refused whole.

use crate::common::{self, NodeProcess, canopy, wait_until};

use reqwest::StatusCode;
use serde_json::{Value, json};

fn doc(node: &NodeProcess, key: &str) -> Option<Value> {
    let response = node.http.get(node.url(&format!("/v1/topics/reg/docs/{key}"))).send().unwrap();
    match response.status() {
        StatusCode::OK => Some(response.json().unwrap()),
        StatusCode::NOT_FOUND => None,
        status => panic!("GET document {key}: {status}"),
    }
}

fn patch(node: &NodeProcess, key: &str, body: Value) -> Value {
    let response = node.http.patch(node.url(&format!("/v1/topics/reg/docs/{key}"))).json(&body).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().unwrap()
}

#[test]
fn concurrent_patches_of_different_fields_end_whole_on_every_node_and_a_racing_delete_keeps_the_patch() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = common::cluster(dir.path(), 3, "reg");
    let put = nodes[0]
        .http
        .put(nodes[0].url("/v1/topics/reg/docs/svc"))
        .json(&json!({ "env": "dev", "port": 80, "tags": { "tier": "web" } }))
        .send()
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    for node in &nodes {
        wait_until("every node holds the document", || doc(node, "svc").is_some());
    }
    // Each node patches a field of its own at the same moment.
    let patches = [json!({ "env": "prod" }), json!({ "port": 443 }), json!({ "tags": { "zone": "b" } })];
    std::thread::scope(|scope| {
        for (node, body) in nodes.iter().zip(patches) {
            scope.spawn(move || patch(node, "svc", body));
        }
    });
    let whole = json!({ "env": "prod", "port": 443, "tags": { "tier": "web", "zone": "b" } });
    for node in &nodes {
        wait_until("every node holds every patched field", || doc(node, "svc").as_ref() == Some(&whole));
    }

    // A delete on node 0 races a patch on node 2, which is cut off: neither sees the other.
    let cut_dir = nodes[2].data_dir.clone();
    nodes[2].kill();
    let alone = NodeProcess::start(&cut_dir, &[], &["reg"]);
    let deleted = nodes[0].http.delete(nodes[0].url("/v1/topics/reg/docs/svc")).send().unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    patch(&alone, "svc", json!({ "port": 8443, "owner": "core" }));
    assert_eq!(doc(&nodes[0], "svc"), None);
    drop(alone);
    nodes[2] = NodeProcess::start(&cut_dir, &[nodes[0].address()], &["reg"]);
    // The rule: a delete removes the fields it saw; fields written concurrently survive.
    let rule = json!({ "owner": "core", "port": 8443 });
    for node in &nodes {
        wait_until("every node ends by the delete-and-patch rule", || doc(node, "svc").as_ref() == Some(&rule));
    }
    let heads: Vec<Value> = nodes.iter().map(|node| node.heads("reg")).collect();
    assert!(heads.iter().all(|h| h == &heads[0]), "{heads:?}");
}

#[test]
fn documents_are_json_objects_listed_in_key_order_and_bad_input_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("node"), &[], &["reg"]);
    let http = &node.http;
    for (key, body) in [("b", json!({ "n": 2 })), ("a", json!({ "n": 1 })), ("c/d", json!({ "n": 3 }))] {
        let response = http.put(node.url(&format!("/v1/topics/reg/docs/{key}"))).json(&body).send().unwrap();
        let reply: Value = response.json().unwrap();
        assert!(reply["cid"].is_string() && reply["causal_token"].is_string(), "{reply}");
    }
    // An empty document is no document: putting one where there is none makes no block.
    let empty: Value = http.put(node.url("/v1/topics/reg/docs/e")).json(&json!({})).send().unwrap().json().unwrap();
    assert!(empty["cid"].is_null(), "{empty}");
    assert_eq!(doc(&node, "e"), None);
    let page: Value = http.get(node.url("/v1/topics/reg/docs?limit=2")).send().unwrap().json().unwrap();
    let keys: Vec<&str> = page["docs"].as_array().unwrap().iter().map(|d| d["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(page["docs"][1]["doc"], json!({ "n": 2 }));
    let next = page["next"].as_str().unwrap();
    let rest: Value =
        http.get(node.url("/v1/topics/reg/docs")).query(&[("after", next)]).send().unwrap().json().unwrap();
    assert_eq!(rest["docs"][0]["key"], "c/d");
    assert!(rest["next"].is_null());
    // Documents and keys stay apart.
    assert!(node.json("/v1/topics/reg/kv")["entries"].as_array().unwrap().is_empty());
    for body in ["[1, 2]", "\"text\"", "{not json", ""] {
        for method in [reqwest::Method::PUT, reqwest::Method::PATCH] {
            let response = http.request(method.clone(), node.url("/v1/topics/reg/docs/a")).body(body).send().unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{method} {body:?}");
            let error: Value = response.json().unwrap();
            assert!(error["error"].as_str().unwrap().contains("JSON"), "{error}");
        }
    }
    let missing = http.delete(node.url("/v1/topics/reg/docs/nope")).send().unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(doc(&node, "a"), Some(json!({ "n": 1 })), "nothing refused was applied");

    // A watcher hears a document's change as the whole document, then its deletion.
    let watch = http.get(node.url("/v1/topics/reg/watch")).send().unwrap();
    http.patch(node.url("/v1/topics/reg/docs/w")).json(&json!({ "a": 1, "b": [true] })).send().unwrap();
    http.delete(node.url("/v1/topics/reg/docs/w")).send().unwrap();
    let mut events = std::io::BufRead::lines(std::io::BufReader::new(watch))
        .map(|line| line.unwrap())
        .filter_map(|line| line.strip_prefix("data:").map(|data| serde_json::from_str::<Value>(data.trim()).unwrap()));
    let first = events.next().unwrap();
    assert_eq!(first["doc"], "w", "{first}");
    assert!(first["value"] == json!({ "a": 1, "b": [true] }) || first["value"].is_null(), "{first}");
    let deleted = events.find(|event| event["value"].is_null()).unwrap();
    assert_eq!(deleted["doc"], "w");

    // The CLI: put, patch (a null removes a field), get as JSON, list, delete.
    let run = |args: &[&str]| {
        let output = canopy().args(args).args(["--api", &node.api]).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    run(&["doc", "put", "reg", "svc", r#"{"env":"dev","port":80}"#]);
    run(&["doc", "patch", "reg", "svc", r#"{"port":null,"zone":"b"}"#]);
    let shown: Value = serde_json::from_str(&run(&["doc", "get", "reg", "svc"])).unwrap();
    assert_eq!(shown, json!({ "env": "dev", "zone": "b" }));
    let listed = run(&["doc", "ls", "reg"]);
    assert_eq!(listed.lines().count(), 4, "{listed}");
    run(&["doc", "del", "reg", "svc"]);
    assert_eq!(doc(&node, "svc"), None);
}

#[test]
fn queries_find_documents_by_their_fields_and_a_filtered_watch_follows_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("node"), &[], &["reg"]);
    let http = &node.http;
    let services = [
        ("api-1", json!({ "env": "prod", "port": 443, "meta": { "region": "eu-west" } })),
        ("api-2", json!({ "env": "prod", "port": 80, "meta": { "region": "us-east" } })),
        ("db-1", json!({ "env": "prod", "port": 5432 })),
        ("db-2", json!({ "env": "dev", "port": 5432 })),
        ("web-1", json!({ "env": "staging", "port": "8080" })),
        ("web-2", json!({ "env": "dev" })),
    ];
    for (key, doc) in &services {
        let response = http.put(node.url(&format!("/v1/topics/reg/docs/{key}"))).json(doc).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let find = |query: &[(&str, &str)]| -> Value {
        let response = http.get(node.url("/v1/topics/reg/docs")).query(query).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{query:?}");
        response.json().unwrap()
    };
    let keys = |page: &Value| -> Vec<String> {
        page["docs"].as_array().unwrap().iter().map(|d| d["key"].as_str().unwrap().to_string()).collect()
    };
    let prod = find(&[("where", "env=prod")]);
    assert_eq!(keys(&prod), ["api-1", "api-2", "db-1"]);
    assert_eq!(prod["scanned"], 6, "no index: every document is read");
    assert_eq!(keys(&find(&[("where", "env=prod"), ("where", "port>=443")])), ["api-1", "db-1"]);
    assert_eq!(keys(&find(&[("where", "env=dev|staging")])), ["db-2", "web-1", "web-2"]);
    assert_eq!(keys(&find(&[("where", "meta.region^=eu")])), ["api-1"]);
    assert_eq!(keys(&find(&[("where", "port<1000")])), ["api-1", "api-2"], "a string is no number");
    // Ordered by a field, largest first, a page at a time: the reverse of numbers before strings,
    // ties by key, and documents without the field last.
    let first = find(&[("where", "port!=0"), ("order", "-port"), ("limit", "3")]);
    assert_eq!(keys(&first), ["web-1", "db-1", "db-2"]);
    let next = first["next"].as_str().unwrap().to_string();
    let rest = find(&[("where", "port!=0"), ("order", "-port"), ("limit", "3"), ("after", &next)]);
    assert_eq!(keys(&rest), ["api-1", "api-2", "web-2"]);
    assert!(rest["next"].is_null());
    for bad in ["env", "port^=8", "=x"] {
        let response = http.get(node.url("/v1/topics/reg/docs")).query(&[("where", bad)]).send().unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let output = canopy().args(["doc", "find", "reg", "env=prod", "port<=443", "--api", &node.api]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let found: Vec<Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(found.iter().map(|f| f["key"].as_str().unwrap()).collect::<Vec<_>>(), ["api-1", "api-2"]);

    // A watch with conditions follows the documents meeting them: one entering, one leaving,
    // and nothing for a change outside them.
    let watch = http.get(node.url("/v1/topics/reg/watch")).query(&[("where", "env=prod")]).send().unwrap();
    let patch = |key: &str, body: Value| {
        let response = http.patch(node.url(&format!("/v1/topics/reg/docs/{key}"))).json(&body).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    };
    node.put("reg", "plain", "a key's change is not a document's");
    patch("db-2", json!({ "env": "prod" }));
    patch("api-2", json!({ "env": "dev" }));
    patch("web-2", json!({ "port": 9 }));
    patch("db-1", json!({ "port": 5433 }));
    let events: Vec<Value> = std::io::BufRead::lines(std::io::BufReader::new(watch))
        .map(|line| line.unwrap())
        .filter_map(|line| line.strip_prefix("data:").map(|data| serde_json::from_str::<Value>(data.trim()).unwrap()))
        .take(3)
        .collect();
    assert_eq!(events[0]["doc"], "db-2");
    assert_eq!(events[0]["value"]["env"], "prod");
    assert_eq!((&events[1]["doc"], &events[1]["value"]), (&json!("api-2"), &Value::Null), "{events:?}");
    assert_eq!(events[2]["doc"], "db-1", "{events:?}");
    assert_eq!(events[2]["value"]["port"], 5433);
}

fn indexes(node: &NodeProcess) -> Vec<Value> {
    node.json("/v1/topics/reg/indexes").as_array().unwrap().clone()
}

fn find(node: &NodeProcess, query: &str) -> Value {
    let response = node.http.get(node.url(&format!("/v1/topics/reg/docs?{query}"))).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{query}");
    response.json().unwrap()
}

fn keys(page: &Value) -> Vec<String> {
    page["docs"].as_array().unwrap().iter().map(|entry| entry["key"].as_str().unwrap().to_string()).collect()
}

#[test]
fn an_index_declared_through_one_node_serves_queries_on_every_node_until_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = common::cluster(dir.path(), 2, "reg");
    let envs = ["dev", "prod", "test"];
    for i in 0..60 {
        let body = json!({ "env": envs[i % 3], "n": i, "meta": { "region": format!("r{}", i % 4) } });
        let put =
            nodes[0].http.put(nodes[0].url(&format!("/v1/topics/reg/docs/svc-{i:02}"))).json(&body).send().unwrap();
        assert_eq!(put.status(), StatusCode::OK);
    }
    // Declared through either node, with the CLI or over HTTP.
    let created =
        canopy().args(["doc", "index", "create", "reg", "by_env", "env", "--api", &nodes[1].api]).output().unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let by_n = json!({ "path": "n", "type": "number" });
    let put = nodes[0].http.put(nodes[0].url("/v1/topics/reg/indexes/by_n")).json(&by_n).send().unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    for node in &nodes {
        wait_until("every node built both indexes", || {
            let held = indexes(node);
            held.len() == 2 && held.iter().all(|index| index["ready"] == json!(true))
        });
        wait_until("every node holds every document", || {
            find(node, "where=n>=0&limit=100")["docs"].as_array().unwrap().len() == 60
        });
    }
    let prod: Vec<String> = (0..60).filter(|i| i % 3 == 1).map(|i| format!("svc-{i:02}")).collect();
    for node in &nodes {
        let page = find(node, "where=env=prod");
        assert_eq!(keys(&page), prod);
        assert_eq!((page["index"].as_str(), page["scanned"].as_u64()), (Some("by_env"), Some(20)), "{page}");
        // Bounds on one field combine, and the index gives the order.
        let page = find(node, "where=n>=10&where=n<20&where=env!=dev&order=-n");
        let expected: Vec<String> = (10..20).rev().filter(|i| i % 3 != 0).map(|i| format!("svc-{i:02}")).collect();
        assert_eq!(keys(&page), expected);
        assert_eq!((page["index"].as_str(), page["scanned"].as_u64()), (Some("by_n"), Some(10)), "{page}");
        // Pages of an indexed query, in key order.
        assert_eq!(find_all(node, "where=env=prod", 7), prod);
        // A field no index holds is scanned, and the answer says so.
        let page = find(node, "where=meta.region=r1");
        assert_eq!(page["docs"].as_array().unwrap().len(), 15);
        assert_eq!((page.get("index"), page["scanned"].as_u64()), (None, Some(60)), "{page}");
    }
    let found = canopy().args(["doc", "find", "reg", "env=prod", "--api", &nodes[0].api]).output().unwrap();
    assert!(found.status.success());
    assert_eq!(String::from_utf8_lossy(&found.stdout).lines().count(), 20);
    let said = String::from_utf8_lossy(&found.stderr);
    assert!(said.contains("20 found, 20 documents read through index by_env"), "{said}");

    // Bad declarations change nothing.
    for (name, body) in [
        ("by_x", json!({ "path": "x", "type": "date" })),
        ("by x", json!({ "path": "x", "type": "string" })),
        ("by_x", json!({ "path": "a..b", "type": "string" })),
    ] {
        let response =
            nodes[0].http.put(nodes[0].url(&format!("/v1/topics/reg/indexes/{name}"))).json(&body).send().unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name} {body}");
    }
    let missing = nodes[0].http.delete(nodes[0].url("/v1/topics/reg/indexes/by_nothing")).send().unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    // Dropped through one node, gone on both: the same query scans.
    let dropped = canopy().args(["doc", "index", "drop", "reg", "by_env", "--api", &nodes[0].api]).output().unwrap();
    assert!(dropped.status.success(), "{}", String::from_utf8_lossy(&dropped.stderr));
    for node in &nodes {
        wait_until("every node dropped the index", || indexes(node).len() == 1);
        let page = find(node, "where=env=prod");
        assert_eq!(keys(&page), prod);
        assert_eq!((page.get("index"), page["scanned"].as_u64()), (None, Some(60)), "{page}");
    }
    let listed = canopy().args(["doc", "index", "ls", "reg", "--api", &nodes[1].api]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "by_n\tn\tnumber\tbuilt");
}

#[test]
fn a_document_batch_is_one_block_and_bad_input_refuses_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("node"), &[], &["reg"]);
    let post = |body: Value| node.http.post(node.url("/v1/topics/reg/docs")).json(&body).send().unwrap();
    let first = post(json!([
        { "key": "a", "put": { "env": "dev", "tags": { "tier": "web" } } },
        { "key": "b", "put": { "env": "prod" } },
        { "key": "c", "put": { "env": "test" } },
    ]));
    assert_eq!(first.status(), StatusCode::OK);
    let heads_before = node.heads("reg");
    let reply: Value = post(json!([
        { "key": "a", "patch": { "tags": { "zone": "b" }, "env": null } },
        { "key": "b", "delete": true },
        { "key": "d", "put": { "env": "new" } },
    ]))
    .json()
    .unwrap();
    assert!(reply["cid"].is_string(), "{reply}");
    assert_eq!(
        reply["height"].as_u64(),
        heads_before["heads"][0]["height"].as_u64().map(|h| h + 1),
        "one block: {reply}"
    );
    assert_eq!(doc(&node, "a"), Some(json!({ "tags": { "tier": "web", "zone": "b" } })));
    assert_eq!(doc(&node, "b"), None);
    assert_eq!(doc(&node, "d"), Some(json!({ "env": "new" })));
    // A bad change anywhere refuses the whole batch.
    for bad in [
        json!([{ "key": "c", "put": { "env": "changed" } }, { "key": "e", "put": [1] }]),
        json!([{ "key": "c", "put": { "env": "changed" } }, { "key": "e", "put": {}, "delete": true }]),
        json!([{ "key": "c", "put": { "env": "changed" } }, { "key": "e" }]),
        json!({ "key": "c" }),
    ] {
        assert_eq!(post(bad.clone()).status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(doc(&node, "c"), Some(json!({ "env": "test" })));
}

/// Every document key a query finds, page after page of at most `limit`.
fn find_all(node: &NodeProcess, query: &str, limit: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut after = String::new();
    loop {
        let page = find(node, &format!("{query}&limit={limit}{after}"));
        found.extend(keys(&page));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return found,
        }
    }
}

#[test]
fn documents_acknowledged_before_a_kill_are_found_through_their_index_after_the_restart() {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let mut node = NodeProcess::start(&data_dir, &[], &["reg"]);
    let by_env = json!({ "path": "env", "type": "string" });
    let put = node.http.put(node.url("/v1/topics/reg/indexes/by_env")).json(&by_env).send().unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    wait_until("the index is built", || indexes(&node).iter().all(|index| index["ready"] == json!(true)));
    // Four clients write batches of documents until the node is killed; a batch whose reply
    // came back is acknowledged, and its documents must be found after the restart.
    let acknowledged: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for client in 0..4 {
            let (node, acknowledged, stop) = (&node, &acknowledged, &stop);
            scope.spawn(move || {
                let http = common::client_with_token(None);
                for batch in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let docs: Vec<(String, String)> = (0..50)
                        .map(|i| (format!("c{client}-{batch:05}-{i:02}"), format!("e{}", (batch * 50 + i) % 7)))
                        .collect();
                    let body: Vec<Value> = docs
                        .iter()
                        .map(|(key, env)| json!({ "key": key, "put": { "env": env, "n": batch, "pad": "x".repeat(60) } }))
                        .collect();
                    match http.post(node.url("/v1/topics/reg/docs")).json(&body).send() {
                        Ok(reply) if reply.status() == StatusCode::OK => {
                            acknowledged.lock().unwrap().extend(docs);
                        }
                        _ => return,
                    }
                }
            });
        }
        wait_until("a few thousand documents are acknowledged", || acknowledged.lock().unwrap().len() >= 4000);
        // SIGKILL while the clients write on.
        let killed = std::process::Command::new("kill").args(["-9", &node.child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    node.kill();
    let acknowledged = acknowledged.into_inner().unwrap();
    let node = NodeProcess::start(&data_dir, &[], &[]);
    for env in 0..7 {
        let env = format!("e{env}");
        let found: BTreeSet<String> = find_all(&node, &format!("where=env={env}"), 1000).into_iter().collect();
        let lost: Vec<&String> = acknowledged
            .iter()
            .filter(|(key, held)| *held == env && !found.contains(key))
            .map(|(key, _)| key)
            .collect();
        assert!(
            lost.is_empty(),
            "{} acknowledged documents of env {env} not found: {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
    // The index and the documents agree, whatever the kill cut short.
    let report: Value = node
        .http
        .post(node.url("/v1/admin/verify"))
        .json(&json!({ "topics": ["reg"] }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(report["problems"], json!([]), "{report}");
}
