//! The HTTP API and the client commands against one real `canopy serve` process.

use crate::common;

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::Stdio;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{NodeProcess, canopy};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn node() -> (tempfile::TempDir, NodeProcess) {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start(&dir.path().join("node"), &[], &[]);
    (dir, node)
}

fn error_of(response: reqwest::blocking::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().expect("errors are JSON");
    (status, body["error"].as_str().expect("an error message").to_string())
}

#[test]
fn keys_values_batches_and_listings() {
    let (_dir, node) = node();
    let http = &node.http;
    assert!(http.put(node.url("/v1/topics/users")).send().unwrap().status().is_success());
    assert!(http.put(node.url("/v1/topics/users")).send().unwrap().status().is_success(), "subscribe is idempotent");

    let reply = node.put("users", "alice", "admin");
    assert!(reply["cid"].as_str().unwrap().starts_with('b'));
    assert_eq!(reply["height"], 1);
    // A key with slashes, percent-encoded, and a value with arbitrary bytes.
    let bytes = vec![0u8, 159, 146, 150, 255];
    let response = http.put(node.url("/v1/topics/users/kv/%2Fpath%2Fto%2Fthing")).body(bytes.clone()).send().unwrap();
    assert!(response.status().is_success());
    let got = http.get(node.url("/v1/topics/users/kv/%2Fpath%2Fto%2Fthing")).send().unwrap();
    assert_eq!(got.bytes().unwrap().to_vec(), bytes);

    let batch = json!({ "ops": [
        { "op": "put", "key": "bob", "value": BASE64.encode("reader") },
        { "op": "put", "key": "carol", "value": BASE64.encode("x") },
        { "op": "delete", "key": "carol" },
    ]});
    let reply: Value = http.post(node.url("/v1/topics/users/batch")).json(&batch).send().unwrap().json().unwrap();
    assert_eq!(reply["height"], 3);
    assert_eq!(node.get("users", "bob").as_deref(), Some("reader"));
    assert_eq!(node.get("users", "carol"), None);

    let page: Value = node.json("/v1/topics/users/kv?limit=1");
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["entries"][0]["key"], "/path/to/thing");
    assert_eq!(page["entries"][0]["key_base64"], BASE64.encode("/path/to/thing"));
    let next = page["next"].as_str().unwrap().to_string();
    let rest: Value =
        http.get(node.url("/v1/topics/users/kv")).query(&[("after", next.as_str())]).send().unwrap().json().unwrap();
    let keys: Vec<&str> = rest["entries"].as_array().unwrap().iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, vec!["alice", "bob"]);
    assert_eq!(rest["next"], Value::Null);
    let prefixed: Value = node.json("/v1/topics/users/kv?prefix=b");
    assert_eq!(prefixed["entries"][0]["value"], BASE64.encode("reader"));

    let deleted = http.delete(node.url("/v1/topics/users/kv/alice")).send().unwrap();
    assert!(deleted.status().is_success());
    let again = http.delete(node.url("/v1/topics/users/kv/alice")).send().unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);

    let heads = node.heads("users");
    assert_eq!(heads["heads"].as_array().unwrap().len(), 1);
    assert_eq!(heads["heads"][0]["height"], 4);
    let topics = node.json("/v1/topics");
    assert_eq!(topics[0]["topic"], "users");
    assert_eq!(topics[0]["keys"], 2);
    assert_eq!(topics[0]["max_height"], 4);

    let status = node.json("/v1/status");
    assert_eq!(status["peer_id"], node.peer_id.as_str());
    assert_eq!(status["topics"], 1);
    assert!(status["version"].is_string() && status["listen"].is_array() && status["peers"] == 0);
    assert!(node.json("/v1/peers").as_array().unwrap().is_empty());
    let metrics = http.get(node.url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("canopy_local_commits_total 4"), "{metrics}");
    assert!(metrics.contains("canopy_topic_keys{topic=\"users\"} 2"), "{metrics}");
    assert_eq!(http.get(node.url("/livez")).send().unwrap().status(), StatusCode::OK);
    assert_eq!(http.get(node.url("/readyz")).send().unwrap().status(), StatusCode::OK);

    let unsubscribed = http.delete(node.url("/v1/topics/users?purge=true")).send().unwrap();
    assert!(unsubscribed.status().is_success());
    assert!(node.json("/v1/topics").as_array().unwrap().is_empty());
    assert_eq!(http.get(node.url("/v1/topics/users/kv/bob")).send().unwrap().status(), StatusCode::NOT_FOUND);
}

#[test]
fn caller_mistakes_get_4xx_json_errors() {
    let (_dir, node) = node();
    let http = &node.http;
    node.subscribe("t");
    node.put("t", "k", "v");
    // Writes never subscribe on their own: a typo gets a 404, not a new replicated topic.
    let (status, message) = error_of(http.put(node.url("/v1/topics/tpyo/kv/k")).body("v").send().unwrap());
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(message.contains("not subscribed") && message.contains("subscribe"), "{message}");
    let batch = json!({ "ops": [{ "op": "delete", "key": "k" }] });
    assert_eq!(
        http.post(node.url("/v1/topics/tpyo/batch")).json(&batch).send().unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(node.json("/v1/topics").as_array().unwrap().len(), 1);
    let cases = [
        (http.put(node.url("/v1/topics/bad%20topic/kv/k")).body("v"), StatusCode::BAD_REQUEST),
        (http.put(node.url("/v1/topics/t/kv/k")).body(vec![0u8; (1 << 20) + 1]), StatusCode::PAYLOAD_TOO_LARGE),
        (http.get(node.url("/v1/topics/t/kv/missing")), StatusCode::NOT_FOUND),
        (http.get(node.url("/v1/topics/unknown/kv/k")), StatusCode::NOT_FOUND),
        (http.post(node.url("/v1/topics/t/batch")).body("{not json"), StatusCode::BAD_REQUEST),
        (
            http.post(node.url("/v1/topics/t/batch")).body(r#"{"ops":[{"op":"put","key":"k","value":"***"}]}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            http.post(node.url("/v1/topics/t/batch")).body(r#"{"ops":[{"op":"frobnicate","key":"k"}]}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            http.post(node.url("/v1/topics/t/batch"))
                .body(r#"{"ops":[{"op":"delete","key":"k","key_base64":"aw=="}]}"#),
            StatusCode::BAD_REQUEST,
        ),
        (http.get(node.url("/v1/topics/t/kv?after_base64=%%%")), StatusCode::BAD_REQUEST),
        (http.get(node.url("/v1/topics/t/kv?limit=zero")), StatusCode::BAD_REQUEST),
        (http.delete(node.url("/v1/topics/t?purge=maybe")), StatusCode::BAD_REQUEST),
        (http.get(node.url("/v2/anything")), StatusCode::NOT_FOUND),
    ];
    for (request, expected) in cases {
        let (status, message) = error_of(request.send().unwrap());
        assert_eq!(status, expected, "{message}");
        assert!(!message.is_empty() && !message.ends_with('.'), "{message:?}");
    }
    let ops: Vec<Value> = (0..10_001).map(|i| json!({ "op": "delete", "key": format!("k{i}") })).collect();
    let (status, message) =
        error_of(http.post(node.url("/v1/topics/t/batch")).json(&json!({ "ops": ops })).send().unwrap());
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("batch_ops_max"), "{message}");
    assert_eq!(node.get("t", "k").as_deref(), Some("v"), "nothing was lost on the way");
}

#[test]
fn binary_keys_round_trip_through_batches_and_listings() {
    let (_dir, node) = node();
    node.subscribe("bin");
    let keys: [&[u8]; 3] = [&[0xff, 0x00, b'a'], &[0xc3, 0x28], b"plain"];
    let ops: Vec<Value> = keys
        .iter()
        .map(|key| json!({ "op": "put", "key_base64": BASE64.encode(key), "value": BASE64.encode(key) }))
        .collect();
    let response = node.http.post(node.url("/v1/topics/bin/batch")).json(&json!({ "ops": ops })).send().unwrap();
    assert!(response.status().is_success());
    let mut listed: Vec<Vec<u8>> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut request = node.http.get(node.url("/v1/topics/bin/kv")).query(&[("limit", "1")]);
        if let Some(after) = &after {
            request = request.query(&[("after_base64", after)]);
        }
        let page: Value = request.send().unwrap().json().unwrap();
        for entry in page["entries"].as_array().unwrap() {
            let key = BASE64.decode(entry["key_base64"].as_str().unwrap()).unwrap();
            assert_eq!(entry["value"].as_str().unwrap(), BASE64.encode(&key));
            let text = std::str::from_utf8(&key).ok();
            assert_eq!(entry["key"].as_str(), text, "text only for UTF-8 keys");
            listed.push(key);
        }
        match page["next_base64"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    let mut expected: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    expected.sort();
    assert_eq!(listed, expected, "every key exactly, in byte order, page by page");
}

#[test]
fn hundreds_of_watchers_hold_no_threads_and_their_number_is_bounded() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProcess::start_with(&dir.path().join("node"), &[], &["w"], &["--watchers-max", "600"]);
    let address = node.api.trim_start_matches("http://").to_string();
    let open_watch = || {
        let mut stream = std::net::TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
        stream.write_all(b"GET /v1/topics/w/watch HTTP/1.1\r\nHost: canopy\r\n\r\n").unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        (String::from_utf8_lossy(&head).into_owned(), stream)
    };
    // More watchers than the runtime has blocking threads (512).
    let mut watchers = Vec::new();
    for _ in 0..600 {
        let (head, stream) = open_watch();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        watchers.push(stream);
    }
    let (head, _) = open_watch();
    assert!(head.starts_with("HTTP/1.1 503"), "the 601st watcher is refused: {head}");
    // Reads and writes still go through, and the watchers see the change.
    node.put("w", "k", "v");
    assert_eq!(node.get("w", "k").as_deref(), Some("v"));
    let mut seen = String::new();
    let mut buffer = [0u8; 512];
    while !seen.contains("data:") {
        let n = watchers[599].read(&mut buffer).unwrap();
        assert!(n > 0, "the stream ended");
        seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(seen.contains(r#""key":"k""#), "{seen}");
    drop(watchers);
    common::wait_until("closed watchers are counted out", || {
        let metrics = node.http.get(node.url("/metrics")).send().unwrap().text().unwrap();
        metrics.contains("canopy_watchers 0")
    });
}

#[test]
fn watch_streams_changes_as_server_sent_events() {
    let (_dir, node) = node();
    node.subscribe("w");
    node.put("w", "first", "1");
    let response =
        node.http.get(node.url("/v1/topics/w/watch")).timeout(std::time::Duration::from_secs(60)).send().unwrap();
    assert!(response.status().is_success());
    node.put("w", "second", "2");
    let mut lines = BufReader::new(response).lines();
    let data =
        lines.by_ref().map(|l| l.unwrap()).find_map(|l| l.strip_prefix("data:").map(|d| d.trim().to_string())).unwrap();
    let change: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        change,
        json!({ "key": "second", "key_base64": BASE64.encode("second"), "value": BASE64.encode("2"), "height": 2 })
    );
}

#[test]
fn client_commands_talk_to_the_node() {
    let (_dir, node) = node();
    let run = |args: &[&str], input: Option<&str>| {
        let api: &[&str] = if args.contains(&"--api") { &[] } else { &["--api", &node.api] };
        let mut child = canopy()
            .args(args)
            .args(api)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = input {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let output = child.wait_with_output().unwrap();
        (output.status.success(), String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
    };
    let (ok, _, err) = run(&["put", "cli", "greeting", "hello"], None);
    assert!(!ok && err.contains("not subscribed"), "{err}");
    let (ok, out, _) = run(&["subscribe", "cli"], None);
    assert!(ok && out.contains("subscribed cli"), "{out}");
    let (ok, out, _) = run(&["put", "cli", "greeting", "hello"], None);
    assert!(ok && out.contains("height 1"), "{out}");
    let (ok, out, _) = run(&["put", "cli", "piped", "-"], Some("from stdin"));
    assert!(ok, "{out}");
    let (ok, out, _) = run(&["get", "cli", "piped"], None);
    assert!(ok);
    assert_eq!(out, "from stdin");
    let batch = json!({ "ops": [{ "op": "put", "key": "b", "value": BASE64.encode("batched") }] }).to_string();
    let (ok, _, _) = run(&["batch", "cli", "-"], Some(&batch));
    assert!(ok);
    let (ok, out, _) = run(&["ls", "cli"], None);
    assert!(ok);
    assert_eq!(out, "b\tbatched\ngreeting\thello\npiped\tfrom stdin\n");
    let (ok, out, _) = run(&["ls", "cli", "--prefix", "g", "--json"], None);
    assert!(ok);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["key"], "greeting");
    let (ok, out, _) = run(&["ls", "cli", "--after", "b", "--limit", "1"], None);
    assert!(ok);
    assert_eq!(out, "greeting\thello\n");
    let (ok, out, _) = run(&["topics", "--json"], None);
    assert!(ok && out.contains("\"cli\""), "{out}");
    let (ok, out, _) = run(&["heads", "cli"], None);
    assert!(ok && out.contains("height 3"), "{out}");
    let (ok, out, _) = run(&["status"], None);
    assert!(ok && out.contains(&node.peer_id), "{out}");
    let (ok, _, _) = run(&["del", "cli", "greeting"], None);
    assert!(ok);
    let (ok, _, err) = run(&["get", "cli", "greeting"], None);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = run(&["get", "cli", "x", "--api", "http://127.0.0.1:1"], None);
    assert!(!ok && err.contains("cannot reach"), "{err}");
}

#[test]
fn serve_refuses_bad_configuration_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("canopy.toml");
    std::fs::write(&config, "no_such_setting = 1\n").unwrap();
    let output = canopy().args(["serve", "--config"]).arg(&config).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_such_setting"));
    let output = canopy()
        .args(["serve", "--api", "127.0.0.1:0", "--topic", "not a topic", "--data-dir"])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid"), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn serve_refuses_unreadable_files_of_its_directory_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let serve = |data_dir: &Path| {
        let output = canopy()
            .args([
                "serve",
                "--api",
                "127.0.0.1:0",
                "--blocks",
                "127.0.0.1:0",
                "--listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    for (file, says) in [("identity.key", "remove it to get a new identity"), ("subscriptions", "is not text")] {
        let data_dir = dir.path().join(file);
        std::fs::create_dir_all(&data_dir).unwrap();
        std::fs::write(data_dir.join(file), b"\xff\xfe not a key \x00").unwrap();
        let err = serve(&data_dir);
        assert!(err.contains(&format!("{}", data_dir.join(file).display())) && err.contains(says), "{file}: {err}");
    }
    // A line naming no topic is skipped, with a warning; the other subscriptions stand.
    let data_dir = dir.path().join("lines");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("subscriptions"), "kept\nnot a topic\n\n").unwrap();
    let log = dir.path().join("lines.log");
    let node = NodeProcess::start_logged(&data_dir, &[], &[], &log);
    node.put("kept", "k", "v");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("skipping a line that names no topic") && log.contains("line=2"), "{log}");
}

#[test]
fn serve_on_a_directory_in_use_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let _running = NodeProcess::start(dir.path(), &[], &[]);
    let output = canopy()
        .args(["serve", "--api", "127.0.0.1:0", "--blocks", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(err.matches("in use by another process").count(), 1, "{err}");
    // Each cause is said once, though every layer's message names the one below it.
    assert_eq!(err.matches("LOCK").count(), 1, "{err}");
}

#[test]
fn the_identity_survives_a_restart_and_only_its_owner_can_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("node");
    let mut first = NodeProcess::start(&data_dir, &[], &[]);
    let peer_id = first.peer_id.clone();
    first.kill();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data_dir.join("identity.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "identity.key is private, mode {mode:o}");
    }
    let second = NodeProcess::start(&data_dir, &[], &[]);
    assert_eq!(second.peer_id, peer_id);
}

#[test]
fn sigterm_stops_the_node_with_its_store_closed_and_its_writes_kept() {
    for extra in [&[][..], &["--tables"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let (data_dir, log) = (dir.path().join("node"), dir.path().join("node.log"));
        let mut node = NodeProcess::start_logged(&data_dir, &["t"], extra, &log);
        // Open streams end when the node stops; they do not hold its shutdown up.
        let streams: Vec<_> = ["/v1/topics/t/watch", "/v1/topics/t/messages"]
            .into_iter()
            .map(|path| {
                let client = reqwest::blocking::Client::builder().timeout(None).build().unwrap();
                let mut response = client.get(node.url(path)).send().unwrap();
                assert_eq!(response.status(), StatusCode::OK, "{path}");
                std::thread::spawn(move || response.copy_to(&mut std::io::sink()).map(|_| ()))
            })
            .collect();
        node.put("t", "kept", "yes");
        let status = node.terminate();
        for stream in streams {
            stream.join().unwrap().expect("a stream ends cleanly when its node stops");
        }
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "{extra:?}: exit {status}, log:\n{log}");
        assert!(log.contains("shutting down"), "{extra:?}: {log}");
        // The store closes before the process ends, not when its wait gives up.
        assert!(!log.contains("still") && !log.contains("ERROR"), "{extra:?}: {log}");
        let again = NodeProcess::start(&data_dir, &[], &["t"]);
        assert_eq!(again.get("t", "kept").as_deref(), Some("yes"), "{extra:?}");
    }
}

#[test]
fn a_batch_in_cbor_is_applied_like_its_json_and_a_malformed_one_changes_nothing() {
    use canopy_node::wire::{CBOR_BATCH, CborBatch};
    let (_dir, node) = node();
    node.subscribe("c");
    let mut batch = canopy_node::Batch::new();
    batch.put(b"a".to_vec(), vec![0, 255]);
    batch.add(b"hits".to_vec(), 5);
    batch.put(b"b".to_vec(), b"2".to_vec());
    batch.delete(b"b".to_vec());
    let post = |body: Vec<u8>| {
        node.http
            .post(node.url("/v1/topics/c/batch"))
            .header(reqwest::header::CONTENT_TYPE, CBOR_BATCH)
            .body(body)
            .send()
            .unwrap()
    };
    let reply: Value = post(CborBatch::of(&batch).encode()).json().unwrap();
    assert!(reply["cid"].is_string(), "{reply}");
    let value = node.http.get(node.url("/v1/topics/c/kv/a")).send().unwrap().bytes().unwrap();
    assert_eq!(value.as_ref(), [0, 255]);
    assert_eq!(node.json("/v1/topics/c/counters/hits")["value"], 5);
    assert_eq!(node.get("c", "b"), None, "the last operation on a key wins within a batch");
    let mut wrong = CborBatch::of(&batch);
    wrong.ops[0].add = Some(1);
    for body in [b"\xa1\x63ops\x01".to_vec(), b"{\"ops\":[]}".to_vec(), wrong.encode()] {
        let (status, message) = error_of(post(body));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
    }
    assert_eq!(node.json("/v1/topics/c/counters/hits")["value"], 5, "no refused batch was applied");
}
