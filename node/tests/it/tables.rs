//! Sharded tables across real `canopy serve --tables` processes on loopback.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use canopy_node::wire;
use common::{NodeProcess, canopy, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Seconds a member entry lives in these tests: a killed node drops out quickly.
const MEMBER_TTL_S: &str = "3";

/// Starts `n` table members, each dialling only the first (the members find each other through
/// the members topic), and waits until each sees all.
pub(crate) fn members(dir: &std::path::Path, n: usize) -> Vec<NodeProcess> {
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for i in 0..n {
        let peers: Vec<String> = nodes.iter().take(1).map(NodeProcess::address).collect();
        let extra = ["--tables", "--member-ttl-s", MEMBER_TTL_S];
        nodes.push(NodeProcess::start_with(&dir.join(format!("node-{i}")), &peers, &[], &extra));
    }
    for node in &nodes {
        wait_until("every member sees the others", || member_ids(node).len() == n);
    }
    nodes
}

/// The proof `member` would attach to a request it forwards: made with its identity key.
fn member_proof(member: &NodeProcess, method: &str, path: &str, forwarded: &str) -> String {
    let key = std::fs::read(member.data_dir.join("identity.key")).unwrap();
    let identity = canopy_transport::Keypair::from_protobuf_encoding(&key).unwrap();
    let request =
        canopy_node::auth::ProvenRequest { method, path_and_query: path, forwarding: [forwarded, ""], body: &[] };
    canopy_node::auth::prove(&identity, &request, canopy_node::auth::now_ms())
}

fn member_ids(node: &NodeProcess) -> BTreeSet<String> {
    let members: wire::Members = node.http.get(node.url("/v1/members")).send().unwrap().json().unwrap();
    members.members.into_iter().map(|member| member.peer_id.to_string()).collect()
}

fn topics_held(node: &NodeProcess) -> BTreeSet<String> {
    let topics: Vec<wire::TopicSummary> = node.http.get(node.url("/v1/topics")).send().unwrap().json().unwrap();
    topics.into_iter().map(|topic| topic.topic).collect()
}

fn create(node: &NodeProcess, body: Value) -> (StatusCode, Value) {
    let response = node.http.post(node.url("/v1/tables")).json(&body).send().unwrap();
    (response.status(), response.json().unwrap())
}

fn table_get(node: &NodeProcess, key: &str) -> Option<String> {
    let response = node.http.get(node.url(&format!("/v1/tables/users/kv/{key}"))).send().unwrap();
    match response.status() {
        StatusCode::NOT_FOUND => None,
        StatusCode::OK => Some(response.text().unwrap()),
        status => panic!("get {key}: {status} {}", response.text().unwrap()),
    }
}

/// Partition → its owners' peer ids of table `users`, as `node` places them.
fn placement(node: &NodeProcess) -> BTreeMap<u64, Vec<String>> {
    placement_of(node, "users")
}

/// Partition → its owners' peer ids of `table`, as `node` places them.
fn placement_of(node: &NodeProcess, table: &str) -> BTreeMap<u64, Vec<String>> {
    let shown = node.json(&format!("/v1/tables/{table}"));
    shown["placement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let owners = p["owners"].as_array().unwrap().iter().map(|o| o.as_str().unwrap().to_string()).collect();
            (p["partition"].as_u64().unwrap(), owners)
        })
        .collect()
}

/// Every key of the table through `node`'s listing, paged by `limit`.
fn listed(node: &NodeProcess, limit: usize) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(after) = &after {
            query.push(("after", after.clone()));
        }
        let page: Value = node.http.get(node.url("/v1/tables/users/kv")).query(&query).send().unwrap().json().unwrap();
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= limit, "a page longer than its limit");
        keys.extend(entries.iter().map(|e| e["key"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => return keys,
        }
    }
}

#[test]
fn a_table_spreads_over_its_members_and_any_member_serves_any_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = members(dir.path(), 3);

    // The catalog: created once, the same shape again is no change, another shape a conflict,
    // and bad shapes are refused.
    let shape = json!({ "name": "users", "partitions": 8, "replicas": 2 });
    assert_eq!(create(&nodes[0], shape.clone()).0, StatusCode::CREATED);
    assert_eq!(create(&nodes[0], shape.clone()).0, StatusCode::OK);
    let (status, body) = create(&nodes[0], json!({ "name": "users", "partitions": 4, "replicas": 2 }));
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    for bad in [
        json!({ "name": "users", "partitions": 0, "replicas": 2 }),
        json!({ "name": "a:b", "partitions": 2, "replicas": 2 }),
        json!({ "name": "t", "partitions": 2, "replicas": 17 }),
        json!({ "name": "t", "partitions": 2, "replicas": 1, "extra": true }),
    ] {
        let (status, body) = create(&nodes[1], bad.clone());
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} gave {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let missing = nodes[2].http.get(nodes[2].url("/v1/tables/nope/kv/a")).send().unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    for node in &nodes {
        wait_until("every member knows the table", || {
            node.http.get(node.url("/v1/tables/users")).send().unwrap().status() == StatusCode::OK
        });
    }

    // Placement: every member places the partitions alike, two distinct owners each, and each
    // member holds exactly the partitions placed on it.
    let owners = placement(&nodes[0]);
    assert_eq!(owners.len(), 8);
    for node in &nodes[1..] {
        assert_eq!(placement(node), owners);
    }
    for node in &nodes {
        let mine: BTreeSet<String> =
            owners.iter().filter(|(_, o)| o.contains(&node.peer_id)).map(|(p, _)| format!("table:users:{p}")).collect();
        wait_until("members hold the partitions placed on them", || {
            topics_held(node).into_iter().filter(|t| t.starts_with("table:")).collect::<BTreeSet<_>>() == mine
        });
    }
    for list in owners.values() {
        assert_eq!(list.len(), 2);
        assert_ne!(list[0], list[1]);
    }
    // A copy still catching up passes requests on to the next owner: until each has caught up,
    // a write may land on a partition's second owner and a read right after it, the first
    // owner having caught up meanwhile, be served by the first.
    for node in &nodes {
        wait_until("every copy held has caught up", || {
            let shown = node.json("/v1/tables/users");
            shown["placement"].as_array().unwrap().iter().all(|p| p["held_here"] == p["caught_up_here"])
        });
    }

    // Writes through any member land on the key's partition, on one of its owners.
    let mut partition_of = BTreeMap::new();
    let mut forwarded = 0;
    for i in 0..120 {
        let node = &nodes[i % 3];
        let key = format!("user-{i:03}");
        let response =
            node.http.put(node.url(&format!("/v1/tables/users/kv/{key}"))).body(format!("v{i}")).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK, "put {key}");
        let written: Value = response.json().unwrap();
        let partition = written["partition"].as_u64().unwrap();
        assert!(owners[&partition].contains(&written["node"].as_str().unwrap().to_string()), "{written}");
        if written["node"] != node.peer_id.as_str() {
            forwarded += 1;
        }
        partition_of.insert(key, partition);
    }
    // A third of the writes arrive at a member that holds no copy of their partition.
    assert!(forwarded > 20, "only {forwarded} writes went to another member");
    // Reads through any member see every write at once: a key's requests all go to its
    // partition's first owner.
    for node in &nodes {
        for (i, key) in partition_of.keys().enumerate() {
            assert_eq!(table_get(node, key), Some(format!("v{i}")), "{key} through {}", node.api);
        }
    }
    for i in 0..30 {
        let key = format!("again-{i}");
        let (writer, reader) = (&nodes[i % 3], &nodes[(i + 1) % 3]);
        let response = writer.http.put(writer.url(&format!("/v1/tables/users/kv/{key}"))).body("x").send().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(table_get(reader, &key).as_deref(), Some("x"), "read-your-writes for {key}");
        let response = reader.http.delete(reader.url(&format!("/v1/tables/users/kv/{key}"))).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(table_get(writer, &key), None);
    }
    // Members that never dialled each other met through the members topic.
    for node in &nodes {
        wait_until("members connect to each other", || node.json("/v1/status")["peers"].as_u64() == Some(2));
    }
    // A key lives in its partition's topic on that partition's owners, and nowhere else.
    for (key, partition) in partition_of.iter().take(20) {
        for node in &nodes {
            let topic = format!("table:users:{partition}");
            if owners[partition].contains(&node.peer_id) {
                wait_until("an owner holds the key", || node.get(&topic, key).is_some());
            } else {
                assert!(!topics_held(node).contains(&topic), "a non-owner holds {topic}");
                // A member forwarding a request (proven with its own key) to a non-owner is
                // sent on with a 421; the same header set by hand is ignored.
                let path = format!("/v1/tables/users/kv/{key}");
                let forwarder = nodes.iter().find(|other| other.peer_id != node.peer_id).unwrap();
                let proof = member_proof(forwarder, "GET", &path, "1");
                let forwarded = node
                    .http
                    .get(node.url(&path))
                    .header("canopy-forwarded", "1")
                    .header("canopy-member-proof", proof)
                    .send()
                    .unwrap();
                assert_eq!(forwarded.status(), StatusCode::MISDIRECTED_REQUEST);
                let by_hand = node.http.get(node.url(&path)).header("canopy-forwarded", "1").send().unwrap();
                assert_eq!(by_hand.status(), StatusCode::OK);
            }
        }
    }
    // Listings merge the partitions in key order, page after page.
    let all: Vec<String> = partition_of.keys().cloned().collect();
    assert_eq!(listed(&nodes[2], 50), all);
    assert_eq!(listed(&nodes[0], 7), all);

    // The command line goes through the same routes.
    let output = canopy().args(["table", "get", "users", "user-005", "--api", &nodes[1].api]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "v5");
    let output = canopy().args(["table", "del", "users", "user-000", "--api", &nodes[2].api]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for node in &nodes {
        wait_until("a delete is seen everywhere", || table_get(node, "user-000").is_none());
    }

    // A member killed outright drops out when its entry runs out; the two left then hold every
    // partition between them, and every key is still there.
    nodes[2].kill();
    for node in &nodes[..2] {
        wait_until("the killed member drops out", || member_ids(node).len() == 2);
        wait_until("the survivors hold every partition", || {
            topics_held(node).iter().filter(|t| t.starts_with("table:users:")).count() == 8
        });
    }
    for node in &nodes[..2] {
        for (i, key) in partition_of.keys().enumerate().skip(1) {
            wait_until("every key survives", || table_get(node, key).as_deref() == Some(&format!("v{i}")));
        }
        assert_eq!(listed(node, 1000), all[1..].to_vec());
    }
}

#[test]
fn a_node_without_tables_says_how_to_enable_them() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(dir.path(), &[], &[]);
    let response = node.http.get(node.url("/v1/tables")).send().unwrap();
    assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
    let body: Value = response.json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("--tables"), "{body}");

    // A reader that goes away ends the output, not in a panic.
    let mut child = canopy()
        .args(["status", "--api", &node.api])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A member must be reachable at the address it announces.
    let output = canopy()
        .args(["serve", "--tables", "--api", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("wildcard"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("advertise_api"));
}

#[test]
fn a_member_joining_takes_partitions_on_without_hiding_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = members(dir.path(), 2);
    // One replica: a partition placed on the newcomer has no other owner to answer while the
    // newcomer's copy catches up from the partition's earlier holder. 32 partitions, so that
    // rendezvous hashing places some on the newcomer whatever the peer ids (with 8, none in 4%
    // of runs).
    let (status, body) = create(&nodes[0], json!({ "name": "users", "partitions": 32, "replicas": 1 }));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    wait_until("both members know the table", || {
        nodes[1].http.get(nodes[1].url("/v1/tables/users")).send().unwrap().status() == StatusCode::OK
    });
    let keys: Vec<String> = (0..200).map(|i| format!("k-{i:03}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let node = &nodes[i % 2];
        let response = node.http.put(node.url(&format!("/v1/tables/users/kv/{key}"))).body(key.clone()).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK, "put {key}: {}", response.text().unwrap());
    }
    let extra = ["--tables", "--member-ttl-s", MEMBER_TTL_S];
    let newcomer = NodeProcess::start_with(&dir.path().join("node-new"), &[nodes[0].address()], &[], &extra);
    nodes.push(newcomer);
    // Read every key through every member while the newcomer joins and takes partitions on:
    // no read may miss a key.
    let mut rounds = 0;
    let mut settled_rounds = 0;
    while settled_rounds < 3 {
        for (index, node) in nodes.iter().enumerate() {
            for key in &keys {
                let got = table_get(node, key);
                if got.as_deref() != Some(key.as_str()) {
                    let views: Vec<Value> = nodes.iter().map(|n| n.json("/v1/tables/users")).collect();
                    let held: Vec<BTreeSet<String>> = nodes.iter().map(topics_held).collect();
                    let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
                    panic!(
                        "{key} through node {index} in round {rounds}: {got:?}\nids {ids:?}\nviews {views:#?}\nheld {held:?}"
                    );
                }
            }
        }
        rounds += 1;
        let placed_on_newcomer =
            placement(&nodes[0]).values().filter(|owners| owners.contains(&nodes[2].peer_id)).count();
        let held = topics_held(&nodes[2]).iter().filter(|t| t.starts_with("table:users:")).count();
        if placed_on_newcomer > 0 && held == placed_on_newcomer {
            settled_rounds += 1;
        }
        if rounds >= 60 {
            let held: Vec<BTreeSet<String>> = nodes.iter().map(topics_held).collect();
            let ids: Vec<&str> = nodes.iter().map(|n| n.peer_id.as_str()).collect();
            let newcomer = (nodes[2].json("/v1/tables"), nodes[2].json("/v1/members"), nodes[2].json("/v1/topics"));
            panic!(
                "the newcomer never took its partitions on\nids {ids:?}\nplacement {:?}\nheld {held:?}\nnewcomer {newcomer:?}",
                placement(&nodes[0])
            );
        }
    }
    // The earlier holders hand the newcomer's partitions off: in the end each partition has
    // one copy, on its owner, and every key is still there.
    let owners = placement(&nodes[0]);
    for node in &nodes {
        let mine: BTreeSet<String> =
            owners.iter().filter(|(_, o)| o.contains(&node.peer_id)).map(|(p, _)| format!("table:users:{p}")).collect();
        wait_until("each member holds exactly its partitions", || {
            topics_held(node).into_iter().filter(|t| t.starts_with("table:")).collect::<BTreeSet<_>>() == mine
        });
    }
    for node in &nodes {
        assert_eq!(listed(node, 1000), keys);
    }
}

/// Creates table `users` of 8 partitions and 2 replicas through `nodes[0]` and waits until every
/// member knows it.
pub(crate) fn users_table(nodes: &[NodeProcess]) {
    let (status, body) = create(&nodes[0], json!({ "name": "users", "partitions": 8, "replicas": 2 }));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for node in nodes {
        wait_until("every member knows the table", || {
            node.http.get(node.url("/v1/tables/users")).send().unwrap().status() == StatusCode::OK
        });
    }
}

/// `PUT` of `key` in table `users` through `node` with `query`: the status and the JSON reply.
fn table_put(node: &NodeProcess, key: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
    let url = node.url(&format!("/v1/tables/users/kv/{key}"));
    let response = node.http.put(url).query(query).body(key.to_string()).send().unwrap();
    (response.status(), response.json().unwrap())
}

/// The members of `nodes` that own `key`'s partition, as `nodes[0]` places it.
fn owners_of(nodes: &[NodeProcess], key: &str) -> Vec<usize> {
    let partition = canopy_node::tables::partition_of(key.as_bytes(), 8) as u64;
    let owners = placement(&nodes[0])[&partition].clone();
    (0..nodes.len()).filter(|&i| owners.contains(&nodes[i].peer_id)).collect()
}

#[test]
fn a_write_waits_for_the_copies_its_ack_level_asks_and_says_when_they_do_not_hold_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = members(dir.path(), 3);
    users_table(&nodes);
    for node in &nodes {
        let mine = placement(node).values().filter(|owners| owners.contains(&node.peer_id)).count();
        wait_until("members hold their partitions", || {
            topics_held(node).iter().filter(|t| t.starts_with("table:users:")).count() == mine
        });
    }

    // ack=2 and ack=all: both owners hold the write when it is acknowledged, so each owner's
    // copy serves it at once, and the reply's token reads it back through any member.
    for i in 0..24 {
        let key = format!("k-{i:02}");
        let ack = if i % 2 == 0 { "2" } else { "all" };
        let (status, written) = table_put(&nodes[i % 3], &key, &[("ack", ack)]);
        assert_eq!(status, StatusCode::OK, "{written}");
        assert_eq!(written["acknowledged"], 2, "{written}");
        let token = written["causal_token"].as_str().unwrap().to_string();
        assert!(token.starts_with(&format!("{}~", written["partition"])), "{token}");
        for owner in owners_of(&nodes, &key) {
            let topic = format!("table:users:{}", written["partition"]);
            assert_eq!(nodes[owner].get(&topic, &key).as_deref(), Some(key.as_str()), "owner {owner} lacks {key}");
        }
        let reader = &nodes[(i + 1) % 3];
        let url = reader.url(&format!("/v1/tables/users/kv/{key}"));
        let response = reader.http.get(url).query(&[("causal", token.as_str())]).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let read_token = response.headers()[canopy_node::causal::CAUSAL_HEADER].to_str().unwrap().to_string();
        assert!(!read_token.is_empty());
        assert_eq!(response.text().unwrap(), key);
    }
    // An ack above the table's replicas is refused, and so is a malformed one.
    for bad in ["3", "0", "most"] {
        let (status, body) = table_put(&nodes[0], "k-bad", &[("ack", bad)]);
        assert_eq!(status, StatusCode::BAD_REQUEST, "ack={bad}: {body}");
    }

    // With an owner killed (and not yet dropped out of the members), a write asking for two
    // copies is applied by the surviving owner and answered 504 with one copy and its token:
    // the token then reads it back, so a client can check instead of writing again.
    let key = (0..100).map(|i| format!("d-{i}")).find(|key| owners_of(&nodes, key).contains(&2)).unwrap();
    let survivor = owners_of(&nodes, &key).into_iter().find(|&i| i != 2).unwrap();
    nodes[2].kill();
    let (status, body) = table_put(&nodes[survivor], &key, &[("ack", "2")]);
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["acknowledged"], 1, "{body}");
    let token = body["causal_token"].as_str().expect("a 504 carries the write's causal token");
    let url = nodes[survivor].url(&format!("/v1/tables/users/kv/{key}"));
    let read = nodes[survivor].http.get(url).query(&[("causal", token)]).send().unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.text().unwrap(), key);
    assert!(common::metric(&nodes[survivor], "canopy_writes_unacknowledged_total") >= 1);
}

#[test]
fn a_table_batch_is_split_by_partition_and_names_each_partitions_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = members(dir.path(), 3);
    users_table(&nodes);
    let keys: Vec<String> = (0..300).map(|i| format!("b-{i:03}")).collect();
    let ops: Vec<Value> = keys
        .iter()
        .map(|key| {
            use base64::Engine as _;
            json!({ "op": "put", "key": key, "value": base64::engine::general_purpose::STANDARD.encode(key) })
        })
        .collect();
    let response =
        nodes[1].http.post(nodes[1].url("/v1/tables/users/batch")).json(&json!({ "ops": ops })).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let reply: wire::TableBatched = response.json().unwrap();
    assert_eq!(reply.partitions.len(), 8, "{reply:?}");
    assert_eq!(reply.partitions.iter().map(|outcome| outcome.ops).sum::<usize>(), keys.len());
    assert!(reply.partitions.iter().all(|o| o.status == 200 && o.causal_token.is_some()), "{reply:?}");
    // The partitions' tokens together make the batch's: a listing given it, through any member
    // and a moment after the table was created, is served by copies that hold the whole batch.
    let token: Vec<&str> = reply.partitions.iter().filter_map(|o| o.causal_token.as_deref()).collect();
    let token = token.join(".");
    for node in &nodes {
        let page: wire::Page = node
            .http
            .get(node.url("/v1/tables/users/kv"))
            .query(&[("causal", token.as_str()), ("limit", "1000")])
            .send()
            .unwrap()
            .json()
            .unwrap();
        let listed: Vec<String> = page.entries.iter().map(|entry| entry.key.clone().unwrap()).collect();
        assert_eq!(listed, keys);
        assert_eq!(page.causal_token.unwrap().split('.').count(), 8);
    }

    // The same through `canopy table batch`, from a file.
    let file = dir.path().join("batch.json");
    std::fs::write(
        &file,
        json!({ "ops": [{ "op": "delete", "key": "b-000" }, { "op": "put", "key": "c", "value": "Yw==" }] })
            .to_string(),
    )
    .unwrap();
    let output = canopy()
        .args(["table", "batch", "users"])
        .arg(&file)
        .args(["--api", &nodes[2].api, "--ack", "2"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("acknowledged by 2"));
    assert_eq!(table_get(&nodes[0], "b-000"), None);
    assert_eq!(table_get(&nodes[0], "c").as_deref(), Some("c"));

    // With a member killed, the partitions it owns answer 504 at ack=2 while the others apply:
    // 207, each partition named, and the command fails naming the partitions that did.
    nodes[0].kill();
    let response = nodes[1]
        .http
        .post(nodes[1].url("/v1/tables/users/batch"))
        .query(&[("ack", "2")])
        .json(&json!({ "ops": ops }))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::MULTI_STATUS);
    let reply: wire::TableBatched = response.json().unwrap();
    let failed: Vec<u32> = reply.partitions.iter().filter(|o| o.status != 200).map(|o| o.partition).collect();
    let owned_by_killed: Vec<u32> = placement(&nodes[1])
        .iter()
        .filter(|(_, owners)| owners.contains(&nodes[0].peer_id))
        .map(|(partition, _)| *partition as u32)
        .collect();
    assert_eq!(failed, owned_by_killed, "{reply:?}");
    assert!(reply.partitions.iter().filter(|o| o.status == 504).all(|o| o.acknowledged == Some(1)));
}

#[test]
fn a_listing_names_the_partitions_no_copy_of_which_answers() {
    let dir = tempfile::tempdir().unwrap();
    // The listing is asked right after two members are killed, well within the seconds their
    // member entries live on.
    let mut nodes = members(dir.path(), 3);
    users_table(&nodes);
    let keys: Vec<String> = (0..80).map(|i| format!("l-{i:02}")).collect();
    for key in &keys {
        assert_eq!(table_put(&nodes[0], key, &[]).0, StatusCode::OK);
    }
    let owners = placement(&nodes[0]);
    // The survivor is the member owning the fewest partitions: some partition has no copy on it
    // (16 copies over 3 members), so killing the other two leaves one unanswered.
    let owned = |node: &NodeProcess| owners.values().filter(|o| o.contains(&node.peer_id)).count();
    let fewest = (0..nodes.len()).min_by_key(|&i| owned(&nodes[i])).unwrap();
    nodes.swap(0, fewest);
    let survivor_id = nodes[0].peer_id.clone();
    let lost: Vec<u64> = owners.iter().filter(|(_, o)| !o.contains(&survivor_id)).map(|(p, _)| *p).collect();
    assert!(!lost.is_empty());
    // A copy taken on to serve a request while the table was new is handed back first, so the
    // survivor holds exactly the partitions placed on it.
    let mine: BTreeSet<String> =
        owners.iter().filter(|(_, o)| o.contains(&survivor_id)).map(|(p, _)| format!("table:users:{p}")).collect();
    wait_until("the survivor holds exactly its partitions", || {
        topics_held(&nodes[0]).into_iter().filter(|t| t.starts_with("table:")).collect::<BTreeSet<_>>() == mine
    });
    // A key another owner took reaches the survivor's copy by replication: it must have before
    // the others go.
    for key in &keys {
        let partition = canopy_node::tables::partition_of(key.as_bytes(), 8);
        if !lost.contains(&u64::from(partition)) {
            let topic = format!("table:users:{partition}");
            wait_until("the survivor's copies hold their keys", || nodes[0].get(&topic, key).is_some());
        }
    }
    nodes[1].kill();
    nodes[2].kill();
    let response = nodes[0].http.get(nodes[0].url("/v1/tables/users/kv")).send().unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{:?}", response.text());
    let page: wire::Page = response.json().unwrap();
    let failed: Vec<u64> = page.failed.iter().map(|failure| u64::from(failure.partition)).collect();
    assert_eq!(failed, lost);
    let listed: Vec<String> = page.entries.iter().map(|entry| entry.key.clone().unwrap()).collect();
    let expected: Vec<String> = keys
        .iter()
        .filter(|key| !lost.contains(&u64::from(canopy_node::tables::partition_of(key.as_bytes(), 8))))
        .cloned()
        .collect();
    assert_eq!(listed, expected);
    let output = canopy().args(["table", "list", "users", "--api", &nodes[0].api]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("partitions no copy of which answered"));
}

#[test]
fn keys_written_under_a_shape_the_catalog_did_not_keep_stay_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--tables", "--member-ttl-s", MEMBER_TTL_S];
    // Two members that have not met each create `users`, with different partition counts, and
    // both take writes (one key on both).
    let first = NodeProcess::start_with(&dir.path().join("a"), &[], &[], &extra);
    let (status, body) = create(&first, json!({ "name": "users", "partitions": 16, "replicas": 2 }));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Started after the first created its table, the second creates its own later.
    let mut second = NodeProcess::start_with(&dir.path().join("b"), &[], &[], &extra);
    let (status, body) = create(&second, json!({ "name": "users", "partitions": 5, "replicas": 2 }));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let put = |node: &NodeProcess, key: &str, value: &str| {
        let response =
            node.http.put(node.url(&format!("/v1/tables/users/kv/{key}"))).body(value.to_string()).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK, "put {key}: {}", response.text().unwrap());
    };
    let keys_a: Vec<String> = (0..60).map(|i| format!("a-{i:02}")).collect();
    let keys_b: Vec<String> = (0..60).map(|i| format!("b-{i:02}")).collect();
    for key in &keys_a {
        put(&first, key, key);
    }
    for key in &keys_b {
        put(&second, key, key);
    }
    put(&first, "both", "from-a");
    put(&second, "both", "from-b");

    // They meet: every node keeps the earlier shape, and every key is read through either.
    second.kill();
    let second = NodeProcess::start_with(&dir.path().join("b"), &[first.address()], &[], &extra);
    let nodes = [first, second];
    for node in &nodes {
        wait_until("both members and one shape", || {
            member_ids(node).len() == 2 && node.json("/v1/tables/users")["partitions"] == 16
        });
    }
    for node in &nodes {
        for key in keys_a.iter().chain(&keys_b) {
            wait_until(&format!("{key} is reachable through {}", node.peer_id), || {
                table_get(node, key).as_deref() == Some(key.as_str())
            });
        }
    }
    // The key written under both shapes keeps the value written under the shape kept.
    for node in &nodes {
        assert_eq!(table_get(node, "both").as_deref(), Some("from-a"));
    }
    let mut all: Vec<String> = keys_a.iter().chain(&keys_b).cloned().collect();
    all.push("both".into());
    all.sort();
    for node in &nodes {
        wait_until("the listing holds every key once", || listed(node, 1000) == all);
    }
}

#[test]
fn a_member_whose_clock_runs_ahead_still_sees_the_others_and_places_alike() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--tables", "--member-ttl-s", MEMBER_TTL_S];
    let mut nodes = vec![NodeProcess::start_with(&dir.path().join("n0"), &[], &[], &extra)];
    nodes.push(NodeProcess::start_with(&dir.path().join("n1"), &[nodes[0].address()], &[], &extra));
    // An hour ahead: under a wall-clock lifetime, every other member's entry has run out for it.
    nodes.push(NodeProcess::start_skewed(&dir.path().join("n2"), &[nodes[0].address()], &extra, "+1h"));
    for node in &nodes {
        wait_until("every member sees the others", || member_ids(node).len() == 3);
    }
    users_table(&nodes);
    // Throughout several member lifetimes, every member sees all three and places alike.
    let lifetimes = std::time::Duration::from_secs(4 * MEMBER_TTL_S.parse::<u64>().unwrap());
    let watched = std::time::Instant::now();
    let owners = placement(&nodes[0]);
    while watched.elapsed() < lifetimes {
        for node in &nodes {
            assert_eq!(member_ids(node).len(), 3, "{} lost sight of a member", node.peer_id);
            assert_eq!(placement(node), owners);
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    // Requests still flow around it: its copies refuse proofs dated by the others' clocks with
    // a 421 saying why, and the next owner serves. What it forwards itself is refused by every
    // other member, with a 503 that names the clocks.
    for i in 0..40 {
        let key = format!("skew-{i:02}");
        let (status, body) = table_put(&nodes[i % 2], &key, &[]);
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
    }
    // A table of 64 partitions, so the skewed member surely lacks a copy of some (of `users`'
    // 8 it holds every one about once in 25 runs).
    let (status, body) = create(&nodes[0], json!({ "name": "wide", "partitions": 64, "replicas": 2 }));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for node in &nodes {
        wait_until("every member knows the table", || {
            node.http.get(node.url("/v1/tables/wide")).send().unwrap().status() == StatusCode::OK
        });
    }
    let wide = placement_of(&nodes[0], "wide");
    let foreign = (0..1000)
        .map(|i| format!("far-{i}"))
        .find(|key| {
            let partition = canopy_node::tables::partition_of(key.as_bytes(), 64) as u64;
            !wide[&partition].contains(&nodes[2].peer_id)
        })
        .expect("a key the skewed member holds no copy of");
    let url = nodes[2].url(&format!("/v1/tables/wide/kv/{foreign}"));
    let response = nodes[2].http.put(url).body("v").send().unwrap();
    let (status, body): (StatusCode, Value) = (response.status(), response.json().unwrap());
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("clocks disagree"), "{body}");
    // A member that stops is dropped by every member's own clock, the skewed one's too.
    nodes[1].kill();
    for node in [&nodes[0], &nodes[2]] {
        wait_until("the stopped member drops out", || member_ids(node).len() == 2);
    }
}

#[test]
fn a_drained_member_hands_every_partition_off_and_stopping_it_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = members(dir.path(), 3);
    // One replica: each partition's only copy is on one member, so stopping a member that has
    // not handed its copies off loses their keys.
    let (status, body) = create(&nodes[0], json!({ "name": "users", "partitions": 8, "replicas": 1 }));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for node in &nodes {
        wait_until("every member knows the table", || {
            node.http.get(node.url("/v1/tables/users")).send().unwrap().status() == StatusCode::OK
        });
    }
    let keys: Vec<String> = (0..120).map(|i| format!("k-{i:03}")).collect();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(table_put(&nodes[i % 3], key, &[]).0, StatusCode::OK);
    }
    let held = |node: &NodeProcess| topics_held(node).iter().filter(|t| t.starts_with("table:users:")).count();
    // Drain the member placed the most partitions: placement may leave some member none.
    let owners = placement(&nodes[0]);
    let placed = |node: &NodeProcess| owners.values().filter(|o| o.contains(&node.peer_id)).count();
    let drained = (0..nodes.len()).max_by_key(|&i| placed(&nodes[i])).unwrap();
    nodes.swap(drained, 2);
    wait_until("the drained member holds some partitions", || held(&nodes[2]) > 0);

    let output = canopy().args(["member", "drain", "--timeout-s", "110", "--api", &nodes[2].api]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("drained"));
    // The copies that took the drained member's partitions on have caught up with it.
    let text: String =
        nodes[..2].iter().map(|node| node.http.get(node.url("/metrics")).send().unwrap().text().unwrap()).collect();
    let lags: Vec<&str> =
        text.lines().filter(|line| line.starts_with("canopy_table_partition_missing_heads{")).collect();
    assert!(!lags.is_empty(), "no partition lag in /metrics");
    assert!(lags.iter().all(|line| line.ends_with(" 0")), "{lags:?}");
    assert_eq!(held(&nodes[2]), 0);
    // The others no longer place anything on it, and hold every partition between them.
    let owners = placement(&nodes[0]);
    assert!(owners.values().all(|o| !o.contains(&nodes[2].peer_id)), "{owners:?}");
    nodes[2].kill();
    for node in &nodes[..2] {
        assert_eq!(listed(node, 1000), keys);
    }
}
