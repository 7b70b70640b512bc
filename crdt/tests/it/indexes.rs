//! Documents' indexes: a declaration on one replica is built from existing rows on every
//! replica, kept with every later write, rebuilt on a replica that bootstraps from a snapshot,
//! and dropped everywhere; the records always equal what the documents hold.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::time::{Duration, Instant};

use canopy_crdt::sim::Cluster;
use canopy_crdt::{DocWrite, IndexDef, IndexKind, IndexScan, Topic};
use serde_json::{Value, json};

const STEPS_MAX: u64 = 400_000;

fn cluster(replicas: usize, seed: u64) -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(dir.path(), replicas, &["t".to_string()], seed).unwrap();
    (dir, cluster)
}

/// The document `i`: its env, a number, a nested region, and filler fields.
fn document(i: u64, env: &str) -> DocWrite {
    let mut fields = vec![
        ("env".to_string(), serde_json::to_vec(&json!(env)).unwrap()),
        ("n".to_string(), serde_json::to_vec(&json!(i as f64 - 50.5)).unwrap()),
        ("meta".to_string(), serde_json::to_vec(&json!({"region": format!("r{}", i % 3)})).unwrap()),
    ];
    for f in 0..5 {
        fields.push((format!("f{f}"), serde_json::to_vec(&json!(f)).unwrap()));
    }
    DocWrite::Put(fields)
}

fn envs(i: u64) -> &'static str {
    ["dev", "prod", "test"][(i % 3) as usize]
}

/// Waits (at most a minute) until the replica's indexes are exactly `names`, all built.
fn wait_built(topic: &Topic, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let indexes = topic.indexes();
        let held: Vec<&str> = indexes.iter().map(|index| index.name.as_str()).collect();
        if held == names && indexes.iter().all(|index| index.ready) {
            return;
        }
        assert!(Instant::now() < deadline, "indexes {indexes:?}, waiting for {names:?} built");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every record of the index `name`, as (encoded value, document key).
fn records(topic: &Topic, name: &str) -> BTreeSet<(Vec<u8>, Vec<u8>)> {
    let scan = IndexScan { lower: Bound::Unbounded, upper: Bound::Unbounded, after: None };
    let records = topic.index_records(name, &scan, usize::MAX).unwrap().expect("a built index");
    records.into_iter().map(|record| (record.value, record.doc)).collect()
}

/// The records the documents' visible fields give an index on `def`.
fn expected(topic: &Topic, def: &IndexDef) -> BTreeSet<(Vec<u8>, Vec<u8>)> {
    let mut out = BTreeSet::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = topic.docs(after.as_deref(), 1_000).unwrap();
        for (key, fields) in &page.docs {
            let Some((_, json)) = fields.iter().find(|(name, _)| *name == def.path[0]) else { continue };
            let field: Value = serde_json::from_slice(json).unwrap();
            let value = def.path[1..].iter().try_fold(&field, |value, name| value.get(name));
            if let Some(encoded) = value.and_then(|value| def.encode_value(value)) {
                out.insert((encoded, key.clone()));
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

#[test]
fn an_index_declared_on_one_replica_is_built_and_kept_on_every_replica() {
    let (_dir, mut cluster) = cluster(2, 11);
    // 700 documents of 8 fields: 5,600 entries, more than one build step reads.
    for i in 0..700u64 {
        cluster.doc_write(0, "t", format!("svc-{i:04}").as_bytes(), document(i, envs(i))).unwrap();
    }
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let by_env = IndexDef::new("env", IndexKind::String).unwrap();
    let by_n = IndexDef::new("n", IndexKind::Number).unwrap();
    let by_region = IndexDef::new("meta.region", IndexKind::String).unwrap();
    cluster.declare_index(1, "t", "by_env", &by_env).unwrap();
    cluster.declare_index(1, "t", "by_n", &by_n).unwrap();
    cluster.declare_index(0, "t", "by_region", &by_region).unwrap();
    // Writes go on while the indexes build.
    for i in 0..100u64 {
        cluster.doc_write(0, "t", format!("svc-{i:04}").as_bytes(), document(i, "staging")).unwrap();
    }
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let defs = [("by_env", &by_env), ("by_n", &by_n), ("by_region", &by_region)];
    for replica in 0..2 {
        let topic = cluster.topic(replica, "t").unwrap();
        wait_built(&topic, &["by_env", "by_n", "by_region"]);
        for (name, def) in defs {
            let held = records(&topic, name);
            assert_eq!(held.len(), 700, "replica {replica} index {name}");
            assert_eq!(held, expected(&topic, def), "replica {replica} index {name}");
        }
    }

    // Later writes keep every index: a patch moves a document, a field of another type leaves
    // the index, a delete removes the document's records.
    cluster.doc_write(1, "t", b"svc-0001", patch("env", json!("prod"))).unwrap();
    cluster.doc_write(0, "t", b"svc-0002", patch("n", json!("not a number"))).unwrap();
    cluster.doc_write(0, "t", b"svc-0003", DocWrite::Delete).unwrap();
    cluster.doc_write(1, "t", b"svc-0004", patch("meta", json!({"region": "r9"}))).unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    for replica in 0..2 {
        let topic = cluster.topic(replica, "t").unwrap();
        for (name, def) in defs {
            assert_eq!(records(&topic, name), expected(&topic, def), "replica {replica} index {name}");
        }
        assert_eq!(records(&topic, "by_n").len(), 698);
        let prod = by_env.encode_value(&json!("prod")).unwrap();
        let scan = IndexScan { lower: Bound::Included(&prod), upper: Bound::Included(&prod), after: None };
        let found = topic.index_records("by_env", &scan, 1_000).unwrap().unwrap();
        assert!(found.iter().any(|record| record.doc == b"svc-0001"));
        assert!(found.iter().all(|record| record.value == prod));
    }

    // Dropping an index anywhere drops it everywhere, records and all.
    cluster.drop_index(0, "t", "by_n").unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    for replica in 0..2 {
        let topic = cluster.topic(replica, "t").unwrap();
        wait_built(&topic, &["by_env", "by_region"]);
        let scan = IndexScan { lower: Bound::Unbounded, upper: Bound::Unbounded, after: None };
        assert_eq!(topic.index_records("by_n", &scan, 10).unwrap(), None);
    }
}

#[test]
fn a_replica_bootstrapped_from_a_snapshot_builds_the_declared_indexes() {
    let (_dir, mut cluster) = cluster(2, 12);
    let by_env = IndexDef::new("env", IndexKind::String).unwrap();
    cluster.declare_index(0, "t", "by_env", &by_env).unwrap();
    for i in 0..300u64 {
        cluster.doc_write(i as usize % 2, "t", format!("svc-{i:04}").as_bytes(), document(i, envs(i))).unwrap();
    }
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    cluster.compact(0, "t").unwrap();
    cluster.compact(1, "t").unwrap();
    let fresh = cluster.add_replica().unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    assert!(cluster.snapshots_merged() > 0, "the new replica caught up from a snapshot");
    let topic = cluster.topic(fresh, "t").unwrap();
    wait_built(&topic, &["by_env"]);
    assert_eq!(records(&topic, "by_env").len(), 300);
    assert_eq!(records(&topic, "by_env"), expected(&topic, &by_env));
    assert_eq!(records(&topic, "by_env"), records(&cluster.topic(0, "t").unwrap(), "by_env"));
}

fn patch(field: &str, value: Value) -> DocWrite {
    DocWrite::Patch { set: vec![(field.to_string(), serde_json::to_vec(&value).unwrap())], remove: Vec::new() }
}

/// The `doc_index` family of the closed store at `path`, opened with plain RocksDB.
fn open_plain(path: &std::path::Path) -> rocksdb::DB {
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), path).unwrap();
    rocksdb::DB::open_cf(&rocksdb::Options::default(), path, families).unwrap()
}

/// Every `doc_index` key, journal entries (a zero byte after the topic's prefix) apart.
fn index_keys(db: &rocksdb::DB) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let cf = db.cf_handle("doc_index").unwrap();
    let keys = db.iterator_cf(cf, rocksdb::IteratorMode::Start).map(|item| item.unwrap().0.to_vec());
    keys.partition(|key| key[4] != 0)
}

/// A journal entry's value: per record its flag (1 put, 0 delete), its key's length, its key.
fn journal_entry(records: &[(&[u8], bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, put) in records {
        out.push(u8::from(*put));
        assert!(key.len() < 128, "a one-byte length");
        out.push(key.len() as u8);
        out.extend_from_slice(key);
    }
    out
}

#[test]
fn index_records_a_crash_left_in_the_journal_are_put_in_place_when_the_store_opens() {
    use canopy_crdt::{Store, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let by_env = IndexDef::new("env", IndexKind::String).unwrap();
    let expected_records = {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let topic = store.topic("t").unwrap();
        topic.declare_index("by_env", &by_env).unwrap();
        wait_built(&topic, &["by_env"]);
        let writes: Vec<(Vec<u8>, DocWrite)> =
            (0..300u64).map(|i| (format!("svc-{i:04}").into_bytes(), document(i, envs(i)))).collect();
        for chunk in writes.chunks(50) {
            topic.doc_batch(chunk.to_vec(), None).unwrap();
        }
        topic.doc_write(b"svc-0000", patch("env", json!("qa")), None).unwrap();
        // Read right after the writes, the index holds every one of them.
        let held = records(&topic, "by_env");
        assert_eq!(held, expected(&topic, &by_env));
        assert_eq!(held.len(), 300);
        drop(topic);
        let closed = store.closed();
        drop(store);
        let _ = closed.recv();
        held
    };

    // What a crash leaves between a batch and the journal thread's write: the batch's entries,
    // their records not in place. Here 40 records are taken out and put back by one entry; a
    // record deleted by a second entry is put again by a third, which must be applied last.
    let removed = {
        let db = open_plain(&path);
        let (records, journal) = index_keys(&db);
        assert!(journal.is_empty(), "a store closed cleanly leaves no journal entry");
        assert_eq!(records.len(), 300);
        let cf = db.cf_handle("doc_index").unwrap();
        let topic = records[0][..4].to_vec();
        let entry = |number: u64| [topic.as_slice(), &[0], &number.to_be_bytes()].concat();
        let taken = &records[100..140];
        for key in taken {
            db.delete_cf(cf, key).unwrap();
        }
        let puts: Vec<(&[u8], bool)> = taken.iter().map(|key| (key.as_slice(), true)).collect();
        db.put_cf(cf, entry(7), journal_entry(&puts)).unwrap();
        db.put_cf(cf, entry(8), journal_entry(&[(records[5].as_slice(), false)])).unwrap();
        db.put_cf(cf, entry(9), journal_entry(&[(records[5].as_slice(), true)])).unwrap();
        taken.len()
    };
    assert_eq!(index_keys(&open_plain(&path)).0.len(), 300 - removed);

    // Read-only, verification counts the entries as the records they will be.
    let report = canopy_crdt::inspect::Inspector::open(&path).unwrap().verify(&[]).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // Opened, the store puts them in place before anything reads.
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let topic = store.topic("t").unwrap();
        wait_built(&topic, &["by_env"]);
        assert_eq!(records(&topic, "by_env"), expected_records);
        assert_eq!(topic.check_indexes().unwrap(), vec![]);
        drop(topic);
        let closed = store.closed();
        drop(store);
        let _ = closed.recv();
    }
    let (records, journal) = index_keys(&open_plain(&path));
    assert_eq!((records.len(), journal.len()), (300, 0), "the records are in place and the entries gone");
}

#[test]
fn a_write_is_found_through_its_index_at_once_while_a_load_keeps_the_journal_busy() {
    use canopy_crdt::{Store, StoreOptions};
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let by_env = IndexDef::new("env", IndexKind::String).unwrap();
    let (busy, quiet) = (store.topic("busy").unwrap(), store.topic("quiet").unwrap());
    for topic in [&busy, &quiet] {
        topic.declare_index("by_env", &by_env).unwrap();
        wait_built(topic, &["by_env"]);
    }
    let found = |topic: &Topic, env: &str| -> Vec<Vec<u8>> {
        let value = by_env.encode_value(&json!(env)).unwrap();
        let scan = IndexScan { lower: Bound::Included(&value), upper: Bound::Included(&value), after: None };
        let records = topic.index_records("by_env", &scan, 10).unwrap().expect("a built index");
        records.into_iter().map(|record| record.doc).collect()
    };
    let loading = AtomicBool::new(true);
    let deadline = Instant::now() + Duration::from_secs(120);
    std::thread::scope(|scope| {
        // A load of one topic: its journal entries keep coming, so the journal thread holds them.
        let loader = scope.spawn(|| {
            let mut batches = 0u64;
            while loading.load(Ordering::SeqCst) {
                let writes: Vec<(Vec<u8>, DocWrite)> = (0..50)
                    .map(|i| {
                        let n = batches * 50 + i;
                        (format!("load-{n:07}").into_bytes(), document(n, envs(n)))
                    })
                    .collect();
                busy.doc_batch(writes, None).unwrap();
                batches += 1;
            }
            batches
        });
        // The load stops however the checks below end.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let stop = Stop(&loading);
        // Meanwhile each write, to either topic, is found through the index as soon as its
        // caller hears back.
        for i in 0..60u64 {
            let topic = if i % 2 == 0 { &quiet } else { &busy };
            let (key, env) = (format!("own-{i:03}"), format!("own-env-{i}"));
            topic.doc_write(key.as_bytes(), document(i, &env), None).unwrap();
            assert_eq!(found(topic, &env), vec![key.into_bytes()], "write {i}");
            assert!(Instant::now() < deadline, "reads through the index stopped being answered");
        }
        drop(stop);
        assert!(loader.join().unwrap() > 0);
    });
    let held = records(&busy, "by_env");
    assert_eq!(held, expected(&busy, &by_env));
}
