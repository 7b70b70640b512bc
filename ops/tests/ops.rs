//! `canopy-ops` as a user runs it: against stopped data directories (damaged on purpose with raw
//! RocksDB writes and a flipped byte in a table file) and against running nodes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use canopy_crdt::{Batch, Store, StoreOptions};
use canopy_node::{Node, NodeConfig};
use serde_json::Value;

fn ops(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_canopy-ops")).args(args).output().expect("canopy-ops runs")
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A data directory holding topic `t` with 300 keys in 3 batches, some overwritten and
/// deleted, and the node closed.
fn stopped_data_dir(dir: &Path) -> PathBuf {
    let db = dir.join("db");
    let store = Store::open(&db, StoreOptions::default()).unwrap();
    let topic = store.topic("t").unwrap();
    for b in 0..3 {
        let mut batch = Batch::new();
        for i in 0..100 {
            batch.put(format!("key-{b}-{i:03}"), format!("value-{i}"));
        }
        topic.batch(batch).unwrap();
    }
    topic.put("key-0-000", "overwritten").unwrap();
    topic.delete("key-0-001").unwrap();
    drop((topic, store));
    dir.to_path_buf()
}

#[test]
fn a_healthy_stopped_data_dir_verifies_and_lists_its_topics() {
    let dir = tempfile::tempdir().unwrap();
    let data = stopped_data_dir(dir.path());
    let data = data.to_str().unwrap();
    let output = ops(&["verify", "--data-dir", data]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stdout));
    assert!(String::from_utf8_lossy(&output.stdout).contains("0 problems"));

    let topics = json(&ops(&["topics", "--data-dir", data, "--json"]));
    assert_eq!(topics[0]["name"], "t");
    assert_eq!(topics[0]["keys"], 299);
    assert_eq!(topics[0]["blocks_kept"], 5);
    let status = ops(&["status", "--data-dir", data]);
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("1 topics, 299 keys"));

    // The DAG: its shape, one block decoded, and a drawing of it.
    let stat = json(&ops(&["dag", "stat", "t", "--data-dir", data, "--json"]));
    assert_eq!(
        (stat["blocks_kept"].as_u64(), stat["max_height"].as_u64(), stat["roots"].as_u64()),
        (Some(5), Some(5), Some(1))
    );
    let head = json(&ops(&["heads", "t", "--data-dir", data, "--json"]))["nodes"][0]["heads"][0]["cid"]
        .as_str()
        .unwrap()
        .to_string();
    let shown = json(&ops(&["dag", "show", "t", &head, "--data-dir", data, "--json"]));
    assert_eq!(shown["height"], 5);
    assert_eq!(shown["removes"][0][0], "key-0-001", "the delete tombstones the key's element");
    let dot = ops(&["dag", "dot", "t", "--data-dir", data, "--depth", "2"]);
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(dot.starts_with("digraph") && dot.contains("style=filled") && dot.matches("->").count() == 3, "{dot}");

    // A backup is a data directory with the same state.
    let copy = dir.path().join("copy");
    assert!(ops(&["backup", "--out", copy.to_str().unwrap(), "--data-dir", data]).status.success());
    let restored = Store::open(copy.join("db"), StoreOptions::default()).unwrap();
    assert_eq!(restored.topic("t").unwrap().key_count(), 299);
    drop(restored);
    assert_eq!(ops(&["backup", "--out", copy.to_str().unwrap(), "--data-dir", data]).status.code(), Some(2));

    // Offline compaction, then the same checks pass on the compacted topic.
    let compacted = json(&ops(&["compact", "--data-dir", data, "--json"]));
    assert_eq!(compacted[0]["pruned_blocks"], 5);
    assert_eq!(ops(&["verify", "--data-dir", data]).status.code(), Some(0));
    let topics = json(&ops(&["topics", "--data-dir", data, "--json"]));
    assert_eq!((topics[0]["blocks_kept"].as_u64(), topics[0]["blocks_pruned"].as_u64()), (Some(0), Some(5)));
    // A pruned history is not recomputed: the rows are the only copy of what it held (a
    // snapshot is made from them), checked by the checksum scan.
    let report = json(&ops(&["verify", "--data-dir", data, "--json"]));
    assert_eq!(report["recomputed"], 0, "{report}");
    assert!(report["problems"].as_array().unwrap().is_empty(), "{report}");

    // RocksDB alone: the DAG is left as it is.
    let storage = json(&ops(&["compact", "t", "--db", "--data-dir", data, "--json"]));
    assert!(storage[0]["snapshot"].is_null() && storage[0]["pruned_blocks"] == 0, "{storage}");
    assert!(storage[0]["bytes_after"].as_u64().unwrap() > 0, "{storage}");
}

#[test]
fn verify_recomputes_the_rows_from_the_blocks_and_repair_rewrites_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = stopped_data_dir(dir.path());
    let text = data.to_str().unwrap();
    // A key deleted, and then a row swapped for another key's.
    {
        let store = Store::open(data.join("db"), StoreOptions::default()).unwrap();
        store.topic("t").unwrap().delete("key-1-050").unwrap();
    }
    assert_eq!(ops(&["verify", "--data-dir", text]).status.code(), Some(0));
    let db = raw(&data);
    let kv = db.cf_handle("kv").unwrap();
    let (row_key, _) = db.iterator_cf(kv, rocksdb::IteratorMode::End).next().unwrap().unwrap();
    let (_, other) = db.iterator_cf(kv, rocksdb::IteratorMode::Start).next().unwrap().unwrap();
    db.put_cf(kv, &row_key, &other).unwrap();
    drop(db);
    let output = ops(&["verify", "--data-dir", text, "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["subject"] == "key \"key-2-099\"" && p["what"].as_str().unwrap().contains("blocks")),
        "{report}"
    );
    assert!(ops(&["repair", "t", "--data-dir", text]).status.success());
    assert_eq!(ops(&["verify", "--data-dir", text]).status.code(), Some(0));
}

/// Opens the database with plain RocksDB, as a careless tool would, once a stopped node has let
/// go of it (its API server may still be finishing).
fn raw(dir: &Path) -> rocksdb::DB {
    let started = Instant::now();
    loop {
        let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.join("db"))
            .unwrap_or_else(|error| panic!("cannot list the column families in {}: {error}", dir.display()));
        match rocksdb::DB::open_cf(&rocksdb::Options::default(), dir.join("db"), names) {
            Ok(db) => return db,
            Err(error) if started.elapsed() < Duration::from_secs(30) && error.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("cannot open {}: {error}", dir.display()),
        }
    }
}

/// Flips the last byte of the first stored block and gives the last key the first key's row
/// (it decodes, but names an element no block gives that key). Returns the damaged block's CID.
fn damage(data: &Path) -> String {
    let db = raw(data);
    let blocks = db.cf_handle("blocks").unwrap();
    let (key, mut value) = db.iterator_cf(blocks, rocksdb::IteratorMode::Start).next().unwrap().unwrap();
    let last = value.len() - 1;
    value[last] ^= 0x40;
    db.put_cf(blocks, &key, &value).unwrap();
    let kv = db.cf_handle("kv").unwrap();
    let (row_key, _) = db.iterator_cf(kv, rocksdb::IteratorMode::End).next().unwrap().unwrap();
    let (_, other) = db.iterator_cf(kv, rocksdb::IteratorMode::Start).next().unwrap().unwrap();
    db.put_cf(kv, &row_key, &other).unwrap();
    db.flush_cf(kv).unwrap();
    db.flush_cf(blocks).unwrap();
    canopy_crdt::Cid::try_from(&key[4..]).unwrap().to_string()
}

#[test]
fn verify_finds_a_damaged_block_a_wrong_row_and_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let data = stopped_data_dir(dir.path());
    damage(&data);
    let output = ops(&["verify", "--data-dir", data.to_str().unwrap(), "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    let problems: Vec<String> =
        report["problems"].as_array().unwrap().iter().map(|p| format!("{} {}", p["subject"], p["what"])).collect();
    assert!(problems.iter().any(|p| p.contains("stored block")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("key-2-099") && p.contains("live elements")), "{problems:?}");

    // A flipped byte in the middle of the largest table file.
    let table = std::fs::read_dir(data.join("db"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&table).unwrap();
    let middle = bytes.len() / 3;
    bytes[middle] ^= 0xff;
    std::fs::write(&table, bytes).unwrap();
    let output = ops(&["verify", "--data-dir", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{text}");
    assert!(text.to_lowercase().contains("corrupt") || text.contains("checksum"), "{text}");
}

struct Running {
    node: Option<Node>,
    api: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    data_dir: PathBuf,
}

fn start(runtime: &tokio::runtime::Runtime, data_dir: PathBuf, peers: Vec<String>) -> Running {
    runtime.block_on(async {
        let config = NodeConfig {
            data_dir: data_dir.clone(),
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
            blocks: "127.0.0.1:0".parse().unwrap(),
            peers,
            topics: vec!["t".into()],
            rebroadcast_interval_s: 1,
            ..NodeConfig::default()
        };
        let node = Node::start(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = node.clone();
        tokio::spawn(async move {
            let _ = canopy_node::http::serve(serving, listener, async {
                let _ = stopped.await;
            })
            .await;
        });
        Running { node: Some(node), api, stop: Some(stop), data_dir }
    })
}

impl Running {
    fn address(&self) -> String {
        let status = self.node.as_ref().unwrap().status();
        format!("{}/p2p/{}", status.listen[0], status.peer_id)
    }

    fn stop(&mut self, runtime: &tokio::runtime::Runtime) {
        let _ = self.stop.take().unwrap().send(());
        runtime.block_on(self.node.take().unwrap().shutdown());
    }
}

#[test]
fn heads_across_three_nodes_disagree_while_one_is_stopped_and_agree_after_it_rejoins() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = start(&runtime, dir.path().join("a"), vec![]);
    let peers = vec![first.address()];
    let mut nodes = vec![
        first,
        start(&runtime, dir.path().join("b"), peers.clone()),
        start(&runtime, dir.path().join("c"), peers.clone()),
    ];
    let topic = nodes[0].node.as_ref().unwrap().subscribe("t").unwrap();
    topic.put("k", "v").unwrap();
    let heads = |nodes: &[Running], extra: &[&str]| {
        let mut args = vec!["heads", "t"];
        for node in nodes {
            args.extend(["--api", node.api.as_str()]);
        }
        args.extend(extra);
        ops(&args)
    };
    let mut last = String::new();
    let started = Instant::now();
    while heads(&nodes, &[]).status.code() != Some(0) {
        last = String::from_utf8_lossy(&heads(&nodes, &[]).stdout).to_string();
        assert!(started.elapsed() < Duration::from_secs(60), "the three nodes never agreed: {last}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = last;
    let agreed = heads(&nodes, &[]);
    assert!(String::from_utf8_lossy(&agreed.stdout).contains("all agree"));

    nodes[2].stop(&runtime);
    topic.put("k2", "written while c is down").unwrap();
    // The stopped node is read from its data directory, beside the two running ones.
    let c_dir = nodes[2].data_dir.clone();
    let mut args = vec!["heads", "t", "--api", &nodes[0].api, "--api", &nodes[1].api, "--json"];
    let c_arg = c_dir.to_str().unwrap().to_string();
    args.extend(["--data-dir", &c_arg]);
    wait_until("a and b agree, c lags", || {
        let report = json(&ops(&args));
        report["nodes"][0]["heads"] == report["nodes"][1]["heads"] && report["nodes"][2]["behind_by"] == 1
    });
    let disagreement = ops(&args);
    assert_eq!(disagreement.status.code(), Some(1));
    let report = json(&disagreement);
    assert_eq!(report["agree"], false);
    assert_eq!(report["nodes"][2]["lacks"].as_array().unwrap().len(), 1);
    assert_eq!(report["nodes"][2]["lacks"][0], report["nodes"][0]["heads"][0]["cid"]);
    // c's head is in a's and b's past: they lack nothing.
    assert!(report["nodes"][0]["lacks"].as_array().unwrap().is_empty(), "{report}");

    let restarted = start(&runtime, c_dir, peers);
    nodes[2] = restarted;
    wait_until("c rejoined and caught up", || heads(&nodes, &[]).status.code() == Some(0));

    // The rest of the online commands against a running node.
    let api = nodes[1].api.clone();
    let status = json(&ops(&["status", "--api", &api, "--json"]));
    assert_eq!(status["topics"][0]["keys"], 2);
    assert!(status["families"].as_array().unwrap().iter().any(|f| f["name"] == "kv"));
    assert_eq!(ops(&["verify", "--api", &api]).status.code(), Some(0));
    let compacted = json(&ops(&["compact", "t", "--api", &api, "--json"]));
    assert!(compacted[0]["snapshot"].is_string());
    let stat = json(&ops(&["dag", "stat", "t", "--api", &api, "--json"]));
    assert_eq!(stat["blocks_pruned"], 2);
    // A running node writes a backup under its backup directory, by name only.
    let outside = dir.path().join("online-copy");
    assert_eq!(ops(&["backup", "--out", outside.to_str().unwrap(), "--api", &api]).status.code(), Some(2));
    assert!(!outside.exists());
    let backed_up = json(&ops(&["backup", "--out", "online-copy", "--api", &api, "--json"]));
    let copy = nodes[1].data_dir.join("backups/online-copy");
    assert_eq!(backed_up["out"].as_str().map(std::path::PathBuf::from), Some(copy.clone()));
    let restored = Store::open(copy.join("db"), StoreOptions::default()).unwrap();
    assert_eq!(restored.topic("t").unwrap().key_count(), 2);
    drop(restored);
    // A writing command on a running node's directory is refused, naming --api.
    let refused = ops(&["compact", "--data-dir", nodes[1].data_dir.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--api") && said.matches("in use").count() == 1, "{said}");
    for node in &mut nodes {
        node.stop(&runtime);
    }
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let output = ops(&["topics"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--data-dir"));
    let dir = tempfile::tempdir().unwrap();
    let output = ops(&["verify", "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no canopy database"));
}

#[test]
fn repair_rebuilds_a_row_and_the_node_fetches_the_removed_block_again() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = start(&runtime, dir.path().join("a"), vec![]);
    let mut copy = start(&runtime, dir.path().join("b"), vec![source.address()]);
    let topic = source.node.as_ref().unwrap().subscribe("t").unwrap();
    for b in 0..3 {
        let mut batch = Batch::new();
        for i in 0..50 {
            batch.put(format!("key-{b}-{i:02}"), format!("value-{i}"));
        }
        topic.batch(batch).unwrap();
    }
    let replica = copy.node.as_ref().unwrap().subscribe("t").unwrap();
    wait_until("the copy holds every key", || replica.key_count() == 150);
    drop(replica);
    copy.stop(&runtime);

    // Damage the stopped copy: one block's bytes and one row.
    let damaged_block = damage(&copy.data_dir);
    let data = copy.data_dir.to_str().unwrap().to_string();
    assert_eq!(ops(&["verify", "--data-dir", &data]).status.code(), Some(1));
    let repaired = ops(&["repair", "t", "--data-dir", &data, "--json"]);
    assert!(repaired.status.success(), "{}", String::from_utf8_lossy(&repaired.stderr));
    let report = json(&repaired);
    assert!(report["removed_blocks"].as_array().unwrap().iter().any(|c| c == damaged_block.as_str()), "{report}");
    assert!(!report["rows_fixed"].as_array().unwrap().is_empty(), "{report}");
    assert_eq!(ops(&["verify", "--data-dir", &data]).status.code(), Some(0), "the repaired copy verifies");
    let again = json(&ops(&["repair", "t", "--data-dir", &data, "--json"]));
    assert!(
        again["removed_blocks"].as_array().unwrap().is_empty() && again["rows_fixed"].as_array().unwrap().is_empty()
    );

    // Started again, the copy fetches what repair removed from its peer.
    let copy = start(&runtime, dir.path().join("b"), vec![source.address()]);
    let replica = copy.node.as_ref().unwrap().subscribe("t").unwrap();
    wait_until("the copy fetched the removed blocks again", || {
        replica.key_count() == 150 && replica.heads() == topic.heads()
    });
    assert_eq!(replica.get(b"key-2-49").unwrap(), Some(b"value-49".to_vec()));
    assert_eq!(ops(&["verify", "--api", &copy.api]).status.code(), Some(0));
}

#[test]
fn export_then_import_into_an_empty_node_gives_the_same_keys_and_heads() {
    let dir = tempfile::tempdir().unwrap();
    let data = stopped_data_dir(&dir.path().join("source"));
    let data = data.to_str().unwrap();
    let heads = |dir: &str| json(&ops(&["heads", "t", "--data-dir", dir, "--json"]))["nodes"][0]["heads"].clone();
    let keys = |dir: &str| json(&ops(&["topics", "--data-dir", dir, "--json"]))[0]["keys"].clone();
    for (round, compacted) in [(0, false), (1, true)] {
        if compacted {
            assert!(ops(&["compact", "--data-dir", data]).status.success());
        }
        let car = dir.path().join(format!("t-{round}.car"));
        let exported = json(&ops(&["export", "t", "--out", car.to_str().unwrap(), "--data-dir", data, "--json"]));
        assert_eq!(exported["roots"].as_array().unwrap().len(), if compacted { 2 } else { 1 }, "{exported}");
        let target = dir.path().join(format!("empty-{round}"));
        let target = target.to_str().unwrap();
        let mut args = vec!["import", car.to_str().unwrap(), "--data-dir", target, "--json"];
        if !compacted {
            args.extend(["--topic", "t"]);
        }
        let imported = ops(&args);
        assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
        assert_eq!(json(&imported)["snapshots"], if compacted { 1 } else { 0 });
        assert_eq!(heads(target), heads(data));
        assert_eq!(keys(target), keys(data));
        assert_eq!(ops(&["verify", "--data-dir", target]).status.code(), Some(0));
        // Twice changes nothing.
        let again = json(&ops(&args));
        assert_eq!((again["applied"].as_u64(), again["snapshots"].as_u64()), (Some(0), Some(0)), "{again}");
    }
    // A damaged file is refused with a clear message.
    let car = dir.path().join("t-0.car");
    let bytes = std::fs::read(&car).unwrap();
    std::fs::write(&car, &bytes[..bytes.len() / 2]).unwrap();
    let empty = dir.path().join("empty-damaged");
    let output = ops(&["import", car.to_str().unwrap(), "--topic", "t", "--data-dir", empty.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("damaged"), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn export_and_import_through_running_nodes() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let source = start(&runtime, dir.path().join("a"), vec![]);
    let target = start(&runtime, dir.path().join("b"), vec![]);
    let topic = source.node.as_ref().unwrap().subscribe("t").unwrap();
    for b in 0..3 {
        let mut batch = Batch::new();
        for i in 0..40 {
            batch.put(format!("key-{b}-{i:02}"), format!("value-{i}"));
        }
        topic.batch(batch).unwrap();
    }
    assert!(ops(&["compact", "t", "--dag", "--api", &source.api]).status.success());
    topic.put("after", "the snapshot").unwrap();

    let car = dir.path().join("t.car");
    let car = car.to_str().unwrap();
    let exported = json(&ops(&["export", "t", "--out", car, "--api", &source.api, "--json"]));
    assert_eq!(exported["roots"].as_array().unwrap().len(), 2, "a snapshot and a head: {exported}");
    let imported = ops(&["import", car, "--api", &target.api, "--json"]);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let imported = json(&imported);
    // The export's snapshot is made as it is written, so it covers the later write too.
    let counts = (imported["snapshots"].as_u64(), imported["applied"].as_u64(), imported["duplicates"].as_u64());
    assert_eq!(counts, (Some(1), Some(0), Some(1)), "{imported}");
    let copy = target.node.as_ref().unwrap().topic("t").unwrap();
    assert_eq!(copy.heads(), topic.heads());
    assert_eq!(copy.key_count(), 121);
    assert_eq!(copy.get(b"after").unwrap(), Some(b"the snapshot".to_vec()));
    assert_eq!(ops(&["verify", "--api", &target.api]).status.code(), Some(0));
    let again = json(&ops(&["import", car, "--api", &target.api, "--json"]));
    assert_eq!((again["applied"].as_u64(), again["snapshots"].as_u64()), (Some(0), Some(0)), "{again}");
    // A topic the node does not have cannot be exported.
    let missing = ops(&["export", "nope", "--out", car, "--api", &source.api]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no topic nope"));
}

/// Opens the store in `dir`, lets it build its declared indexes, and closes it.
fn build_indexes(dir: &Path) {
    let store = Store::open(dir.join("db"), StoreOptions::default()).unwrap();
    let topic = store.topic("docs").unwrap();
    wait_until("the indexes are built", || !topic.indexes().is_empty() && topic.indexes().iter().all(|i| i.ready));
}

#[test]
fn verify_checks_documents_indexes_against_the_rows_and_repair_has_them_built_again() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().to_str().unwrap();
    {
        let store = Store::open(dir.path().join("db"), StoreOptions::default()).unwrap();
        let topic = store.topic("docs").unwrap();
        let def = canopy_crdt::IndexDef::new("env", canopy_crdt::IndexKind::String).unwrap();
        topic.declare_index("by_env", &def).unwrap();
        for i in 0..50 {
            let fields = vec![("env".to_string(), format!("\"e{}\"", i % 5).into_bytes())];
            topic.doc_write(format!("d{i:02}").as_bytes(), canopy_crdt::DocWrite::Put(fields), None).unwrap();
        }
    }
    build_indexes(dir.path());
    let report = json(&ops(&["verify", "--data-dir", text, "--json"]));
    assert!(report["problems"].as_array().unwrap().is_empty(), "{report}");

    // One record lost: verify says which index and how many.
    {
        let db = raw(dir.path());
        let records = db.cf_handle("doc_index").unwrap();
        let (key, _) = db.iterator_cf(records, rocksdb::IteratorMode::Start).next().unwrap().unwrap();
        db.delete_cf(records, key).unwrap();
    }
    let output = ops(&["verify", "--data-dir", text, "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let report = json(&output);
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["subject"] == "index by_env" && p["what"].as_str().unwrap().contains("1 missing")),
        "{report}"
    );
    // Repair drops the records; the store builds the index again when it next opens.
    assert!(ops(&["repair", "docs", "--data-dir", text]).status.success());
    build_indexes(dir.path());
    let report = json(&ops(&["verify", "--data-dir", text, "--json"]));
    assert!(report["problems"].as_array().unwrap().is_empty(), "{report}");
}
