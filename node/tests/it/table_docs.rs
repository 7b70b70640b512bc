//! A sharded table's documents across real `canopy serve --tables` processes on loopback:
//! writes and reads through any member, indexes declared on every partition, batches split by
//! partition.

use crate::common;
use crate::tables::{members, users_table};

use common::{NodeProcess, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[test]
fn a_tables_documents_are_written_and_read_through_any_member() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = members(dir.path(), 3);
    users_table(&nodes);
    let url = |node: &NodeProcess, key: &str| node.url(&format!("/v1/tables/users/docs/{key}"));
    // Keys owned by each member and by none of some, so some writes are forwarded.
    for i in 0..6 {
        let key = format!("svc-{i}");
        let put = nodes[i % 3].http.put(url(&nodes[i % 3], &key)).query(&[("ack", "2")]);
        let reply: Value = put.json(&json!({ "env": "dev", "port": i })).send().unwrap().json().unwrap();
        assert_eq!(reply["acknowledged"], 2, "{reply}");
        let patch = nodes[(i + 1) % 3].http.patch(url(&nodes[(i + 1) % 3], &key));
        let reply: Value = patch.json(&json!({ "env": "prod", "zone": "b" })).send().unwrap().json().unwrap();
        let token = reply["causal_token"].as_str().unwrap().to_string();
        let reader = &nodes[(i + 2) % 3];
        let response = reader.http.get(url(reader, &key)).query(&[("causal", &token)]).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{key}");
        assert!(response.headers().contains_key("canopy-causal-token"));
        let doc: Value = response.json().unwrap();
        assert_eq!(doc, json!({ "env": "prod", "port": i, "zone": "b" }), "{key}");
    }
    let deleted = nodes[0].http.delete(url(&nodes[0], "svc-4")).send().unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    for node in &nodes {
        let status = node.http.get(url(node, "svc-4")).send().unwrap().status();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(node.http.delete(url(node, "never")).send().unwrap().status(), StatusCode::NOT_FOUND);
    }
    let bad = nodes[1].http.put(url(&nodes[1], "svc-1")).body("[1]").send().unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // A query fans out over the partitions and pages through the merge in key order.
    let patched = nodes[2].http.patch(url(&nodes[2], "svc-5")).query(&[("ack", "2")]).json(&json!({ "env": "dev" }));
    assert_eq!(patched.send().unwrap().status(), StatusCode::OK);
    for node in &nodes {
        let mut keys = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("where", "env=prod".to_string()), ("limit", "2".to_string())];
            query.extend(after.clone().map(|after| ("after", after)));
            let page: Value =
                node.http.get(node.url("/v1/tables/users/docs")).query(&query).send().unwrap().json().unwrap();
            assert!(page["docs"].as_array().unwrap().len() <= 2, "{page}");
            keys.extend(page["docs"].as_array().unwrap().iter().map(|d| d["key"].as_str().unwrap().to_string()));
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(keys, ["svc-0", "svc-1", "svc-2", "svc-3"], "through {}", node.api);
    }
}

#[test]
fn an_index_declared_on_a_table_is_built_on_every_partition_and_serves_its_queries() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = members(dir.path(), 3);
    users_table(&nodes);
    let envs = ["dev", "prod", "test"];
    for i in 0..60 {
        let node = &nodes[i % 3];
        let put = node.http.put(node.url(&format!("/v1/tables/users/docs/svc-{i:02}"))).query(&[("ack", "2")]);
        let reply = put.json(&json!({ "env": envs[i % 3], "n": i })).send().unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
    }
    let query = |node: &NodeProcess| -> Value {
        let page = node.http.get(node.url("/v1/tables/users/docs")).query(&[("where", "env=prod"), ("limit", "100")]);
        page.send().unwrap().json().unwrap()
    };
    let prod: Vec<String> = (0..60).filter(|i| i % 3 == 1).map(|i| format!("svc-{i:02}")).collect();
    let keys = |page: &Value| -> Vec<String> {
        page["docs"].as_array().unwrap().iter().map(|d| d["key"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(query(&nodes[0])["scanned"], 60, "no index: every document is read");

    // Declared through one member: every partition's topic gets it, through its holders.
    let declared = nodes[1]
        .http
        .put(nodes[1].url("/v1/tables/users/indexes/by_env"))
        .json(&json!({ "path": "env", "type": "string" }));
    let declared = declared.send().unwrap();
    assert_eq!(declared.status(), StatusCode::OK);
    let reply: Value = declared.json().unwrap();
    assert_eq!(reply["changed"].as_array().unwrap().len(), 8, "{reply}");
    for node in &nodes {
        wait_until("every partition holds the index built", || {
            let listed: Value = node.http.get(node.url("/v1/tables/users/indexes")).send().unwrap().json().unwrap();
            listed["indexes"][0]["name"] == "by_env" && listed["indexes"][0]["built_by"] == 8
        });
        wait_until("the query reads only what the index names", || query(node)["scanned"] == 20);
        assert_eq!(keys(&query(node)), prod);
    }
    // Ordered by a field over every partition, a page at a time.
    let ordered = |node: &NodeProcess, after: Option<&str>| -> Value {
        let mut query = vec![("where", "env=prod"), ("order", "-n"), ("limit", "5")];
        query.extend(after.map(|after| ("after", after)));
        node.http.get(node.url("/v1/tables/users/docs")).query(&query).send().unwrap().json().unwrap()
    };
    let first = ordered(&nodes[2], None);
    assert_eq!(keys(&first), ["svc-58", "svc-55", "svc-52", "svc-49", "svc-46"], "{first}");
    let second = ordered(&nodes[0], first["next"].as_str());
    assert_eq!(keys(&second), ["svc-43", "svc-40", "svc-37", "svc-34", "svc-31"], "{second}");

    // Declared again, nothing changes; a bad declaration is refused whole.
    let again = nodes[2]
        .http
        .put(nodes[2].url("/v1/tables/users/indexes/by_env"))
        .json(&json!({ "path": "env", "type": "string" }));
    let again: Value = again.send().unwrap().json().unwrap();
    assert_eq!((again["changed"].as_array().unwrap().len(), again["unchanged"].as_array().unwrap().len()), (0, 8));
    let bad = nodes[0]
        .http
        .put(nodes[0].url("/v1/tables/users/indexes/by_env"))
        .json(&json!({ "path": "env", "type": "date" }));
    assert_eq!(bad.send().unwrap().status(), StatusCode::BAD_REQUEST);

    // Dropped through another member: gone from every partition.
    let dropped = nodes[0].http.delete(nodes[0].url("/v1/tables/users/indexes/by_env")).send().unwrap();
    assert_eq!(dropped.status(), StatusCode::OK);
    for node in &nodes {
        wait_until("the query scans again", || query(node)["scanned"] == 60);
        assert_eq!(keys(&query(node)), prod);
    }
    let missing = nodes[1].http.delete(nodes[1].url("/v1/tables/users/indexes/by_env")).send().unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[test]
fn a_tables_document_batch_is_split_by_partition_and_applied_on_the_owners() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = members(dir.path(), 3);
    users_table(&nodes);
    let post = |node: &NodeProcess, body: Value| {
        node.http.post(node.url("/v1/tables/users/docs")).query(&[("ack", "2")]).json(&body).send().unwrap()
    };
    let puts: Vec<Value> =
        (0..12).map(|i| json!({ "key": format!("d-{i:02}"), "put": { "n": i, "env": "dev" } })).collect();
    let first = post(&nodes[0], Value::Array(puts));
    assert_eq!(first.status(), StatusCode::OK);
    let reply: Value = first.json().unwrap();
    let parts = reply["partitions"].as_array().unwrap();
    assert!(parts.len() > 1, "{reply}");
    assert_eq!(parts.iter().map(|p| p["ops"].as_u64().unwrap()).sum::<u64>(), 12);
    assert!(parts.iter().all(|p| p["status"] == 200 && p["acknowledged"] == 2), "{reply}");
    let changes = json!([
        { "key": "d-00", "patch": { "env": "prod" } },
        { "key": "d-01", "delete": true },
        { "key": "d-02", "put": { "n": 2 } },
    ]);
    assert_eq!(post(&nodes[1], changes).status(), StatusCode::OK);
    let url = |node: &NodeProcess, key: &str| node.url(&format!("/v1/tables/users/docs/{key}"));
    for node in &nodes {
        let get = |key: &str| node.http.get(url(node, key)).send().unwrap();
        assert_eq!(get("d-00").json::<Value>().unwrap(), json!({ "n": 0, "env": "prod" }));
        assert_eq!(get("d-01").status(), StatusCode::NOT_FOUND);
        assert_eq!(get("d-02").json::<Value>().unwrap(), json!({ "n": 2 }));
        assert_eq!(get("d-11").json::<Value>().unwrap(), json!({ "n": 11, "env": "dev" }));
    }
    let bad = post(&nodes[2], json!([{ "key": "d-03", "patch": { "env": "x" } }, { "key": "d-04", "put": 7 }]));
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(nodes[0].http.get(url(&nodes[0], "d-03")).send().unwrap().json::<Value>().unwrap()["env"], "dev");
}
