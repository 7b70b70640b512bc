//! A cluster that trusts only its members and operators, tried against real `canopy serve`
//! processes: API tokens and roles, the refusal to serve an open API beyond loopback, the
//! cluster's own topics, confined backups, forwarding headers, imports and admission.

use crate::common;

use std::path::Path;
use std::process::Stdio;

use common::{NodeProcess, canopy, client_with_token, create_token, metric, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn status_of(response: reqwest::Result<reqwest::blocking::Response>) -> StatusCode {
    response.expect("the node answers").status()
}

/// A node with a tokens file holding a read, a write, an admin and a prefix-limited token.
struct Secured {
    node: NodeProcess,
    tokens: std::path::PathBuf,
    read: String,
    write: String,
    admin: String,
    alice: String,
}

fn secured(dir: &Path, extra: &[&str]) -> Secured {
    let tokens = dir.join("tokens.toml");
    let read = create_token(&tokens, "reader", "read", &[]);
    let write = create_token(&tokens, "writer", "write", &[]);
    let admin = create_token(&tokens, "operator", "admin", &[]);
    let alice = create_token(&tokens, "alice", "write", &["alice."]);
    let mut args = vec!["--tokens", tokens.to_str().unwrap()];
    args.extend_from_slice(extra);
    let node = NodeProcess::start_with(&dir.join("node"), &[], &["shared"], &args).with_token(&admin);
    Secured { node, tokens, read, write, admin, alice }
}

#[test]
fn api_tokens_gate_every_route_by_role_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let Secured { node, tokens, read, write, admin, alice } = secured(dir.path(), &[]);
    let text = std::fs::read_to_string(&tokens).unwrap();
    for secret in [&read, &write, &admin, &alice] {
        assert!(secret.starts_with("canopy_") && !text.contains(secret.as_str()), "the file keeps only hashes");
    }
    let anonymous = client_with_token(None);
    let as_read = client_with_token(Some(&read));
    let as_write = client_with_token(Some(&write));
    let as_alice = client_with_token(Some(&alice));
    let url = |path: &str| node.url(path);

    // No token: 401, except the probes.
    assert_eq!(status_of(anonymous.get(url("/v1/topics")).send()), StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(anonymous.put(url("/v1/topics/shared/kv/k")).body("v").send()), StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(anonymous.get(url("/metrics")).send()), StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(anonymous.get(url("/livez")).send()), StatusCode::OK);
    assert_eq!(status_of(anonymous.get(url("/readyz")).send()), StatusCode::OK);
    let wrong = client_with_token(Some("canopy_not-a-token"));
    assert_eq!(status_of(wrong.get(url("/v1/topics")).send()), StatusCode::UNAUTHORIZED);

    // read: reads only.
    assert_eq!(status_of(as_read.get(url("/v1/topics/shared/kv")).send()), StatusCode::OK);
    assert_eq!(status_of(as_read.get(url("/metrics")).send()), StatusCode::OK);
    let refused = as_read.put(url("/v1/topics/shared/kv/k")).body("v").send().unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let error: Value = refused.json().unwrap();
    assert!(error["error"].as_str().unwrap().contains("role read"), "{error}");

    // write: writes, but no operations.
    assert_eq!(status_of(as_write.put(url("/v1/topics/shared/kv/k")).body("v").send()), StatusCode::OK);
    assert_eq!(status_of(as_write.post(url("/v1/topics/shared/compact")).send()), StatusCode::FORBIDDEN);
    assert_eq!(status_of(as_write.get(url("/v1/admin/status")).send()), StatusCode::FORBIDDEN);
    // admin: everything.
    assert_eq!(status_of(node.http.post(url("/v1/topics/shared/compact")).send()), StatusCode::OK);
    assert_eq!(status_of(node.http.get(url("/v1/admin/status")).send()), StatusCode::OK);

    // A token limited to a prefix reaches its own topics and nothing else.
    assert_eq!(status_of(as_alice.put(url("/v1/topics/alice.notes")).send()), StatusCode::OK);
    assert_eq!(status_of(as_alice.put(url("/v1/topics/alice.notes/kv/k")).body("v").send()), StatusCode::OK);
    assert_eq!(status_of(as_alice.get(url("/v1/topics/shared/kv/k")).send()), StatusCode::FORBIDDEN);
    assert_eq!(status_of(as_alice.get(url("/v1/topics")).send()), StatusCode::FORBIDDEN);
    assert_eq!(status_of(as_alice.get(url("/v1/status")).send()), StatusCode::OK);

    // The client takes --token (and CANOPY_TOKEN); without one it fails with the node's reason.
    let get = |token: Option<&str>| {
        let mut command = canopy();
        command.args(["get", "shared", "k", "--api", &node.api]).env_remove("CANOPY_TOKEN");
        if let Some(token) = token {
            command.env("CANOPY_TOKEN", token);
        }
        command.output().unwrap()
    };
    let output = get(Some(&read));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "v");
    let output = get(None);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("API token"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Revoked by editing the file and SIGHUP, without a restart.
    let kept: String = std::fs::read_to_string(&tokens)
        .unwrap()
        .split("[[token]]")
        .filter(|entry| !entry.contains("\"writer\""))
        .collect::<Vec<_>>()
        .join("[[token]]");
    std::fs::write(&tokens, kept).unwrap();
    let hangup = std::process::Command::new("kill").args(["-HUP", &node.child.id().to_string()]).status().unwrap();
    assert!(hangup.success());
    wait_until("the write token is refused", || {
        status_of(as_write.get(url("/v1/topics/shared/kv/k")).send()) == StatusCode::UNAUTHORIZED
    });
    assert_eq!(status_of(as_read.get(url("/v1/topics/shared/kv/k")).send()), StatusCode::OK);
}

#[test]
fn an_open_api_beyond_loopback_is_refused_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |extra: &[&str]| {
        let mut command = canopy();
        command
            .args(["serve", "--api", "0.0.0.0:0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
            .arg("--data-dir")
            .arg(dir.path().join("node"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let output = serve(&[]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tokens") && stderr.contains("--insecure-open-api"), "{stderr}");
    // Said explicitly, it starts.
    let mut child = serve(&["--insecure-open-api"]).spawn().unwrap();
    let mut banner = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut banner).unwrap();
    assert!(banner.starts_with("canopy "), "{banner}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_cluster_topics_take_no_writes_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_with(&dir.path().join("node"), &[], &[], &["--tables"]);
    wait_until("the node is a member", || node.json("/v1/members")["members"].as_array().unwrap().len() == 1);
    let fake = json!({ "api": "http://127.0.0.1:9/x#" }).to_string();
    for path in [
        "/v1/topics/keyed%2F_canopy:members/kv/zzz",
        "/v1/topics/_canopy:members/kv/zzz",
        "/v1/topics/_canopy%3Atables/kv/users",
    ] {
        let response = node.http.put(node.url(path)).body(fake.clone()).send().unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        let error: Value = response.json().unwrap();
        assert!(error["error"].as_str().unwrap().contains("cluster's own topics"), "{error}");
    }
    let batch = json!({ "ops": [{ "op": "put", "key": "zzz", "value": "e30=" }] });
    let response = node.http.post(node.url("/v1/topics/keyed%2F_canopy:members/batch")).json(&batch).send().unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let members = node.json("/v1/members");
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");
    // Reading them stays open to readers.
    assert_eq!(status_of(node.http.get(node.url("/v1/topics/keyed%2F_canopy:members/kv")).send()), StatusCode::OK);
}

#[test]
fn backups_go_under_the_backup_directory_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("backups");
    let node =
        NodeProcess::start_with(&dir.path().join("node"), &[], &["t"], &["--backup-dir", backups.to_str().unwrap()]);
    node.put("t", "k", "v");
    let outside = dir.path().join("outside");
    for body in [
        json!({ "out": outside.to_str().unwrap() }),
        json!({ "name": outside.to_str().unwrap() }),
        json!({ "name": "../outside" }),
        json!({ "name": ".." }),
        json!({ "name": "" }),
    ] {
        let response = node.http.post(node.url("/v1/admin/backup")).json(&body).send().unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    assert!(!outside.exists());
    let response = node.http.post(node.url("/v1/admin/backup")).json(&json!({ "name": "nightly" })).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(backups.join("nightly/db/CURRENT").exists());
    let again = node.http.post(node.url("/v1/admin/backup")).json(&json!({ "name": "nightly" })).send().unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
}

#[test]
fn a_follower_refuses_an_owned_topics_snapshot_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let owner = NodeProcess::start(&dir.path().join("owner"), &[], &[]);
    let created = owner.create_topic("log", "owned");
    // An owned topic's name holds a `/`: as one path segment it is escaped.
    let topic = created["topic"].as_str().unwrap().replace('/', "%2F");
    for i in 0..20 {
        owner.put(&topic, &format!("k{i}"), "v");
    }
    assert_eq!(status_of(owner.http.post(owner.url(&format!("/v1/topics/{topic}/compact"))).send()), StatusCode::OK);
    let car = owner.http.get(owner.url(&format!("/v1/admin/topics/{topic}/export"))).send().unwrap().bytes().unwrap();
    let missing = owner.http.get(owner.url("/v1/admin/topics/nothing-here/export")).send().unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND, "an export fails before it starts, with its reason");

    // Another node may not take the owner's history from a file: only the owner speaks for it.
    let follower = NodeProcess::start(&dir.path().join("follower"), &[], &[]);
    let path = format!("/v1/admin/topics/{topic}/import");
    let response = follower.http.post(follower.url(&path)).body(car.clone()).send().unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let error: Value = response.json().unwrap();
    assert!(error["error"].as_str().unwrap().contains("only its owner"), "{error}");
    // A file cut short is refused with the reason, whoever sends it.
    let response = owner.http.post(owner.url(&path)).body(car[..car.len() / 2].to_vec()).send().unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().unwrap();
    assert!(error["error"].as_str().unwrap().contains("cut short"), "{error}");
    // The owner's own node takes its file back.
    let response = owner.http.post(owner.url(&path)).body(car).send().unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{}", response.text().unwrap());
}

#[test]
fn only_admitted_peers_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let admitted = NodeProcess::start(&dir.path().join("admitted"), &[], &["t"]);
    let node = NodeProcess::start_with(
        &dir.path().join("node"),
        &[admitted.address()],
        &["t"],
        &["--admit", &admitted.peer_id],
    );
    let stranger = NodeProcess::start(&dir.path().join("stranger"), &[node.address()], &["t"]);
    node.put("t", "k", "v");
    wait_until("the admitted peer replicates", || admitted.get("t", "k").as_deref() == Some("v"));
    // The stranger dials the node all along; each connection is refused as it is established.
    for _ in 0..3 {
        node.put("t", "k", "again");
        wait_until("the admitted peer replicates again", || admitted.get("t", "k").as_deref() == Some("again"));
        node.put("t", "k", "v");
        wait_until("the admitted peer replicates", || admitted.get("t", "k").as_deref() == Some("v"));
    }
    assert_eq!(node.json("/v1/status")["peers"], 1, "only the admitted peer is connected");
    assert_eq!(stranger.json("/v1/status")["peers"], 0);
    assert_eq!(stranger.get("t", "k"), None, "the stranger got nothing");
}

#[test]
fn a_table_cluster_with_tokens_serves_through_every_member_and_ignores_forged_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let admin = create_token(&tokens, "operator", "admin", &[]);
    let write = create_token(&tokens, "app", "write", &["users"]);
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for i in 0..3 {
        let peers: Vec<String> = nodes.iter().take(1).map(NodeProcess::address).collect();
        let extra = ["--tables", "--member-ttl-s", "3", "--tokens", tokens.to_str().unwrap()];
        nodes.push(
            NodeProcess::start_with(&dir.path().join(format!("node-{i}")), &peers, &[], &extra).with_token(&admin),
        );
    }
    for node in &nodes {
        wait_until("every member sees the others", || {
            node.json("/v1/members")["members"].as_array().unwrap().len() == 3
        });
    }
    let shape = json!({ "name": "users", "partitions": 8, "replicas": 1 });
    assert_eq!(status_of(nodes[0].http.post(nodes[0].url("/v1/tables")).json(&shape).send()), StatusCode::CREATED);
    for node in &nodes {
        wait_until("every member knows the table", || {
            status_of(node.http.get(node.url("/v1/tables/users")).send()) == StatusCode::OK
        });
    }
    // The application's token writes and reads through any member; members forward to the
    // partition's holder with their proof.
    let app = client_with_token(Some(&write));
    let mut forwarded = 0;
    for i in 0..30 {
        let node = &nodes[i % 3];
        let response = app.put(node.url(&format!("/v1/tables/users/kv/user{i}"))).body(format!("v{i}")).send().unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{}", response.text().unwrap());
        let written: Value = response.json().unwrap();
        forwarded += usize::from(written["node"] != node.peer_id.as_str());
    }
    assert!(forwarded > 0, "some writes went to another member");
    for node in &nodes {
        for i in 0..30 {
            let response = app.get(node.url(&format!("/v1/tables/users/kv/user{i}"))).send().unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.text().unwrap(), format!("v{i}"));
        }
    }
    assert_eq!(
        status_of(client_with_token(None).get(nodes[0].url("/v1/tables/users/kv/user0")).send()),
        StatusCode::UNAUTHORIZED
    );

    // A key whose only holder is another member, asked of nodes[0] with a hand-set forwarding
    // header: the header counts for nothing, the request is routed as any client's, and
    // nodes[0] takes no copy of the partition.
    let held = |node: &NodeProcess| -> Vec<String> {
        node.json("/v1/topics").as_array().unwrap().iter().map(|t| t["topic"].as_str().unwrap().to_string()).collect()
    };
    let (key, partition) = (0..200)
        .map(|i| format!("stray{i}"))
        .find_map(|key| {
            let response = app.put(nodes[0].url(&format!("/v1/tables/users/kv/{key}"))).body("x").send().unwrap();
            let written: Value = response.json().unwrap();
            (written["node"] != nodes[0].peer_id.as_str()).then(|| (key, written["partition"].as_u64().unwrap()))
        })
        .expect("some key is held elsewhere");
    let topic = format!("table:users:{partition}");
    assert!(!held(&nodes[0]).contains(&topic));
    for value in ["last", "1"] {
        let response = app
            .put(nodes[0].url(&format!("/v1/tables/users/kv/{key}")))
            .header("canopy-forwarded", value)
            .body("forged")
            .send()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let written: Value = response.json().unwrap();
        assert_ne!(written["node"], nodes[0].peer_id.as_str(), "served by the holder, not here");
    }
    assert!(!held(&nodes[0]).contains(&topic), "a forged forwarding header took no copy of {topic}");
    // A made-up member proof counts for nothing either: without a token it is refused.
    let response = client_with_token(None)
        .get(nodes[0].url(&format!("/v1/tables/users/kv/{key}")))
        .header("canopy-forwarded", "last")
        .header("canopy-member-proof", format!("{} 0 AAAAAAAAAAAAAAAAAAAAAA AAAA", nodes[1].peer_id))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// A certificate authority and a certificate it signed for 127.0.0.1 and localhost, as PEM
/// files in `dir`: (authority, certificate, key).
fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "canopy test authority");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("api.pem"), dir.join("api.key"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn a_table_cluster_with_tokens_and_tls_works_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let tokens = dir.path().join("tokens.toml");
    let admin = create_token(&tokens, "operator", "admin", &[]);
    let pem = std::fs::read(&ca).unwrap();
    let client = |token: &str| {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        reqwest::blocking::Client::builder()
            .default_headers(headers)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap()
    };
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for i in 0..3 {
        let peers: Vec<String> = nodes.iter().take(1).map(NodeProcess::address).collect();
        let extra = [
            "--tables",
            "--member-ttl-s",
            "3",
            "--tokens",
            tokens.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-ca",
            ca.to_str().unwrap(),
        ];
        let node = NodeProcess::start_with(&dir.path().join(format!("node-{i}")), &peers, &[], &extra);
        assert!(node.api.starts_with("https://"), "{}", node.api);
        nodes.push(node.with_client(client(&admin)));
    }
    for node in &nodes {
        wait_until("every member sees the others", || {
            node.json("/v1/members")["members"].as_array().unwrap().len() == 3
        });
    }
    // Plain HTTP reaches nothing, and neither does a client that does not trust the authority.
    let plain = nodes[0].api.replace("https://", "http://");
    assert!(client_with_token(Some(&admin)).get(format!("{plain}/v1/status")).send().is_err());
    assert!(client_with_token(Some(&admin)).get(nodes[0].url("/v1/status")).send().is_err());

    // The commands a newcomer runs, through the canopy client.
    let canopy_at = |node: &NodeProcess, args: &[&str]| {
        let output = canopy()
            .args(args)
            .args(["--api", &node.api, "--cacert", ca.to_str().unwrap(), "--token", &admin])
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    canopy_at(&nodes[0], &["table", "create", "users", "--partitions", "8", "--replicas", "2"]);
    for node in &nodes {
        wait_until("every member knows the table", || {
            status_of(node.http.get(node.url("/v1/tables/users")).send()) == StatusCode::OK
        });
    }
    for i in 0..12 {
        canopy_at(&nodes[i % 3], &["table", "put", "users", &format!("user{i}"), &format!("v{i}")]);
    }
    for node in &nodes {
        for i in 0..12 {
            assert_eq!(canopy_at(node, &["table", "get", "users", &format!("user{i}")]).trim(), format!("v{i}"));
        }
    }
}

#[test]
fn a_peer_writing_another_members_entry_is_refused_by_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeProcess::start_with(&dir.path().join("a"), &[], &[], &["--tables", "--member-ttl-s", "3"]);
    let second =
        NodeProcess::start_with(&dir.path().join("b"), &[first.address()], &[], &["--tables", "--member-ttl-s", "3"]);
    let nodes = [&first, &second];
    for node in nodes {
        wait_until("both are members", || node.json("/v1/members")["members"].as_array().unwrap().len() == 2);
    }
    // A libp2p peer of its own key announces a block that rewrites the second member's entry
    // (pointing its API elsewhere) and adds a member that does not exist.
    let topic = canopy_node::tables::MEMBERS_TOPIC;
    let forger = canopy_crdt::Signer::from_secret([7; 32]);
    let forged = json!({ "api": "http://127.0.0.1:9/x#", "addresses": [], "joined_ms": 0 }).to_string();
    let delta = canopy_crdt::Delta {
        adds: vec![
            (second.peer_id.clone().into_bytes(), forged.clone().into_bytes()),
            (b"zzz".to_vec(), forged.into_bytes()),
        ],
        removes: vec![],
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let transport =
        runtime.block_on(common::outside_peer(first.address(), std::sync::Arc::new(|_, _| Err("no".into()))));
    let block = announce_until_judged(&transport, &first, topic, delta, &forger);
    let heads_path = format!("/v1/topics/{}/heads", topic.replace('/', "%2F"));
    // Both members keep the true entries, whatever the forger announced; neither applied its
    // block (its heads never show it).
    for node in nodes {
        let members = node.json("/v1/members");
        let members = members["members"].as_array().unwrap();
        assert_eq!(members.len(), 2, "{members:?}");
        assert!(members.iter().all(
            |m| m["api"].as_str().unwrap().starts_with("http://127.0.0.1:") && m["api"] != "http://127.0.0.1:9/x#"
        ));
        let heads = node.json(&heads_path).to_string();
        assert!(!heads.contains(&block.cid().to_string()), "{heads}");
    }
    runtime.block_on(transport.handle.shutdown());
}

/// Announces a root block of `delta` in `topic`, signed by `signer`, through `transport` until
/// `node` has refused it or applied it; returns the block.
fn announce_until_judged(
    transport: &canopy_transport::Transport,
    node: &NodeProcess,
    topic: &str,
    delta: canopy_crdt::Delta,
    signer: &canopy_crdt::Signer,
) -> canopy_crdt::Block {
    let block = canopy_crdt::Block::build(topic, vec![], 1, delta.encode(), signer).unwrap();
    let wire =
        canopy_crdt::sync::WireBlock { cid: block.cid(), bytes: serde_bytes::ByteBuf::from(block.bytes().to_vec()) };
    let head = canopy_crdt::Head { cid: block.cid(), height: 1 };
    let message = canopy_crdt::sync::Message::Heads {
        topic: topic.into(),
        heads: vec![head],
        blocks: vec![wire],
        unawaited: false,
    };
    let rejected_before = metric(node, "canopy_announcements_rejected_total");
    transport.handle.subscribe(topic);
    let heads_path = format!("/v1/topics/{}/heads", topic.replace('/', "%2F"));
    wait_until("the node refuses the announcement, or takes it", || {
        transport.handle.publish(topic, message.encode());
        std::thread::sleep(std::time::Duration::from_millis(50));
        metric(node, "canopy_announcements_rejected_total") > rejected_before
            || node.json(&heads_path).to_string().contains(&block.cid().to_string())
    });
    block
}

#[test]
fn the_catalog_counts_only_the_entries_admitted_members_write_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    // A peer the node admits (its network identity and its signing key are one key), and a key
    // the node does not admit, whose blocks that peer relays.
    let member_secret = [9; 32];
    let member = canopy_crdt::Signer::from_secret(member_secret);
    let stranger = canopy_crdt::Signer::from_secret([7; 32]);
    let member_id = member.author().to_string();
    let node = NodeProcess::start_with(
        &dir.path().join("node"),
        &[],
        &[],
        &["--tables", "--member-ttl-s", "2", "--admit", &member_id],
    );
    let created =
        node.http.post(node.url("/v1/tables")).json(&json!({"name": "users", "partitions": 8, "replicas": 1}));
    assert_eq!(status_of(created.send()), StatusCode::CREATED);
    let topic = canopy_node::tables::TABLES_TOPIC;
    let heads_path = format!("/v1/topics/{}/heads", topic.replace('/', "%2F"));
    let entry = |partitions: u32| json!({ "partitions": partitions, "replicas": 1, "created_ms": 0 }).to_string();
    let write = |key: String, partitions| canopy_crdt::Delta {
        adds: vec![(key.into_bytes(), entry(partitions).into_bytes())],
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let keypair = canopy_transport::Keypair::ed25519_from_bytes(member_secret).unwrap();
    assert_eq!(keypair.public().to_peer_id().to_string(), member_id);
    let transport = runtime.block_on(common::outside_peer_as(
        keypair,
        node.address(),
        std::sync::Arc::new(|_, _| Err("no".into())),
    ));
    let node_id = node.peer_id.clone();
    // The admitted member rewriting the node's entry: refused, like any block writing another
    // author's key of a keyed topic.
    let forged = announce_until_judged(&transport, &node, topic, write(format!("{node_id}/users"), 1), &member);
    // A stranger's entry of its own, claiming the table earlier with one partition: stored (it
    // breaks no rule of the topic) but not counted, its author not being admitted.
    let stranger_id = stranger.author().to_string();
    let early = announce_until_judged(&transport, &node, topic, write(format!("{stranger_id}/users"), 1), &stranger);
    // The admitted member's own entry counts.
    let orders = announce_until_judged(&transport, &node, topic, write(format!("{member_id}/orders"), 3), &member);
    let heads = node.json(&heads_path).to_string();
    assert!(!heads.contains(&forged.cid().to_string()), "{heads}");
    assert!(heads.contains(&early.cid().to_string()), "{heads}");
    assert!(heads.contains(&orders.cid().to_string()), "{heads}");
    let tables = node.json("/v1/tables");
    let shapes: Vec<(String, u64)> = tables["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t["partitions"].as_u64().unwrap()))
        .collect();
    assert_eq!(shapes, vec![("orders".to_string(), 3), ("users".to_string(), 8)], "{tables}");
    runtime.block_on(transport.handle.shutdown());
}

#[test]
fn a_keyed_topic_takes_only_the_nodes_own_keys_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("node"), &[], &[]);
    let created = node.create_topic("registry", "keyed");
    assert_eq!(created["topic"], "keyed/registry");
    assert_eq!(created["mode"], "keyed");
    let me = node.json("/v1/status")["author"].as_str().unwrap().to_string();
    let put = |key: &str| node.http.put(node.url(&format!("/v1/topics/keyed%2Fregistry/kv/{key}"))).body("x").send();
    assert_eq!(status_of(put(&me)), StatusCode::OK);
    assert_eq!(status_of(put(&format!("{me}%2Fservice-a"))), StatusCode::OK);
    let refused = put("someone-else").unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let error: Value = refused.json().unwrap();
    assert!(error["error"].as_str().unwrap().contains("keyed topic"), "{error}");
}
