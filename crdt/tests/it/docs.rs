//! Documents: fields merge on their own on every replica, a delete racing a patch ends by the
//! documented rule, received entries are checked, and under every fault the replicas end at the
//! documents the reference model gives.

use std::collections::BTreeMap;

use canopy_crdt::sim::{Cluster, Faults, reference_docs};
use canopy_crdt::{Block, Delta, DocWrite, Signer};
use proptest::prelude::*;

const STEPS_MAX: u64 = 200_000;

fn cluster(replicas: usize, seed: u64) -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(dir.path(), replicas, &["t".to_string()], seed).unwrap();
    (dir, cluster)
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs.iter().map(|(name, json)| (name.to_string(), json.as_bytes().to_vec())).collect()
}

fn patch(set: &[(&str, &str)], remove: &[&str]) -> DocWrite {
    DocWrite::Patch { set: fields(set), remove: remove.iter().map(|name| name.to_string()).collect() }
}

/// Replica `replica`'s document `key` as field name → JSON text.
fn doc(cluster: &Cluster, replica: usize, key: &[u8]) -> Option<BTreeMap<String, String>> {
    let fields = cluster.topic(replica, "t").unwrap().doc(key).unwrap()?;
    Some(fields.into_iter().map(|(name, json)| (name, String::from_utf8(json).unwrap())).collect())
}

fn expected(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(pairs.iter().map(|(name, json)| (name.to_string(), json.to_string())).collect())
}

#[test]
fn a_field_named_twice_in_one_write_takes_its_last_value_in_any_order() {
    let (_dir, mut cluster) = cluster(2, 3);
    let put = fields(&[("port", "1"), ("env", "\"dev\""), ("port", "2"), ("a", "true")]);
    cluster.doc_write(0, "t", b"svc", DocWrite::Put(put)).unwrap();
    cluster.doc_write(0, "t", b"svc", patch(&[("z", "1"), ("env", "\"x\""), ("env", "\"prod\"")], &[])).unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let all = expected(&[("a", "true"), ("env", "\"prod\""), ("port", "2"), ("z", "1")]);
    for replica in 0..2 {
        assert_eq!(doc(&cluster, replica, b"svc"), all, "replica {replica}");
    }
}

#[test]
fn concurrent_patches_of_different_fields_all_survive() {
    let (_dir, mut cluster) = cluster(3, 1);
    cluster.doc_write(0, "t", b"svc", DocWrite::Put(fields(&[("env", "\"dev\""), ("port", "80")]))).unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    cluster.doc_write(0, "t", b"svc", patch(&[("env", "\"prod\"")], &[])).unwrap();
    cluster.doc_write(1, "t", b"svc", patch(&[("port", "443")], &[])).unwrap();
    cluster.doc_write(2, "t", b"svc", patch(&[("owner", "{\"team\":\"core\"}")], &[])).unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let all = expected(&[("env", "\"prod\""), ("owner", "{\"team\":\"core\"}"), ("port", "443")]);
    for replica in 0..3 {
        assert_eq!(doc(&cluster, replica, b"svc"), all, "replica {replica}");
    }
    // A patch that removes a field, and concurrent writes of one field: one winner everywhere.
    cluster.doc_write(0, "t", b"svc", patch(&[("port", "8080")], &["owner"])).unwrap();
    cluster.doc_write(1, "t", b"svc", patch(&[("port", "9090")], &[])).unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let winner = doc(&cluster, 0, b"svc").unwrap();
    assert!(!winner.contains_key("owner"));
    assert!(["8080", "9090"].contains(&winner["port"].as_str()), "{winner:?}");
    for replica in 1..3 {
        assert_eq!(doc(&cluster, replica, b"svc").as_ref(), Some(&winner));
    }
}

#[test]
fn a_delete_racing_a_patch_leaves_the_fields_the_patch_wrote() {
    let (_dir, mut cluster) = cluster(2, 2);
    cluster.doc_write(0, "t", b"svc", DocWrite::Put(fields(&[("env", "\"dev\""), ("port", "80")]))).unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    cluster.doc_write(0, "t", b"svc", DocWrite::Delete).unwrap();
    cluster.doc_write(1, "t", b"svc", patch(&[("port", "443"), ("zone", "\"b\"")], &[])).unwrap();
    assert_eq!(doc(&cluster, 0, b"svc"), None);
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    // The delete removed what it saw (env, port 80); the patch's fields were not seen by it.
    let rule = expected(&[("port", "443"), ("zone", "\"b\"")]);
    for replica in 0..2 {
        assert_eq!(doc(&cluster, replica, b"svc"), rule, "replica {replica}");
    }
    assert_eq!(reference_docs(&cluster.all_blocks("t").unwrap())[&b"svc".to_vec()].len(), 2);
    // A delete that saw everything removes the document everywhere.
    cluster.doc_write(1, "t", b"svc", DocWrite::Delete).unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    assert_eq!((doc(&cluster, 0, b"svc"), doc(&cluster, 1, b"svc")), (None, None));
}

#[test]
fn a_put_replaces_the_document_and_documents_keep_apart_from_keys() {
    let (_dir, mut cluster) = cluster(1, 3);
    cluster.put(0, "t", b"svc", b"a plain value").unwrap();
    cluster.doc_write(0, "t", b"svc", DocWrite::Put(fields(&[("a", "1"), ("b", "2")]))).unwrap();
    cluster.doc_write(0, "t", b"svc", DocWrite::Put(fields(&[("b", "3"), ("c", "null")]))).unwrap();
    assert_eq!(doc(&cluster, 0, b"svc"), expected(&[("b", "3"), ("c", "null")]));
    for key in ["a\0b", "a", "b", "ab"] {
        cluster.doc_write(0, "t", key.as_bytes(), DocWrite::Put(fields(&[("k", "1")]))).unwrap();
    }
    let topic = cluster.topic(0, "t").unwrap();
    assert_eq!(topic.get(b"svc").unwrap().as_deref(), Some(&b"a plain value"[..]));
    assert_eq!(topic.key_count(), 1);
    let page = topic.query(b"", None, 100).unwrap();
    assert_eq!(page.entries.len(), 1, "listings of keys leave documents out");
    // Documents list in key order, a page at a time.
    let mut listed = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = topic.docs(after.as_deref(), 2).unwrap();
        assert!(page.docs.len() <= 2);
        listed.extend(page.docs.iter().map(|(key, _)| String::from_utf8(key.clone()).unwrap()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(listed, ["a", "a\0b", "ab", "b", "svc"]);
    let refused = topic.doc_write(b"svc", DocWrite::Put(fields(&[("x", "{not json")])), None);
    assert!(refused.is_err());
    assert_eq!(doc(&cluster, 0, b"svc"), expected(&[("b", "3"), ("c", "null")]), "a refused write changes nothing");
}

#[test]
fn received_document_entries_must_be_well_formed_json() {
    let (_dir, mut cluster) = cluster(1, 4);
    let honest = cluster.doc_write(0, "t", b"svc", DocWrite::Put(fields(&[("a", "1")]))).unwrap().unwrap();
    let topic = cluster.topic(0, "t").unwrap();
    let peer = Signer::from_secret([3; 32]);
    let mut not_json = Delta::default();
    not_json.adds.push((canopy_crdt::doc::entry_key(b"svc", "b"), b"{oops".to_vec()));
    let mut malformed = Delta::default();
    malformed.adds.push((vec![0x00, b'd', b's'], b"1".to_vec()));
    for delta in [not_json, malformed] {
        let block = Block::build("t", vec![honest.cid], 2, delta.encode(), &peer).unwrap();
        assert_eq!(topic.ingest(vec![block]).unwrap().applied, 0);
    }
    let mut good = Delta::default();
    good.adds.push((canopy_crdt::doc::entry_key(b"svc", "b"), b"[true]".to_vec()));
    let block = Block::build("t", vec![honest.cid], 2, good.encode(), &peer).unwrap();
    assert_eq!(topic.ingest(vec![block]).unwrap().applied, 1);
    assert_eq!(doc(&cluster, 0, b"svc"), expected(&[("a", "1"), ("b", "[true]")]));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    /// Random puts, patches and deletes of a few documents on random replicas under drops,
    /// duplicates, reordering, corruption, partitions, crashes and compactions: every replica
    /// ends at the documents the reference model gives for the blocks written.
    #[test]
    fn under_every_fault_documents_end_as_the_reference_gives(
        seed in 0u64..1_000,
        ops in proptest::collection::vec((0usize..3, 0u8..3, 0u8..4, 0u8..4, any::<bool>(), 0u8..20), 1..40),
    ) {
        let (_dir, mut cluster) = cluster(3, seed);
        cluster.set_faults(Faults { drop: 0.1, dup: 0.1, reorder: 0.2, corrupt: 0.05 });
        for (step, (replica, key, kind, field, compact, event)) in ops.into_iter().enumerate() {
            match event {
                0 => cluster.random_partition(),
                1 => cluster.heal(),
                2 if cluster.is_up(replica) => cluster.crash(replica),
                3 => cluster.restart(replica).unwrap(),
                _ => {}
            }
            if !cluster.is_up(replica) {
                continue;
            }
            let key = format!("d{key}");
            let name = format!("f{field}");
            let value = step.to_string();
            let write = match kind {
                0 => DocWrite::Put(fields(&[(&name, &value), ("f0", "0")])),
                1 => patch(&[(&name, &value)], &[]),
                2 => patch(&[], &[&name]),
                _ => DocWrite::Delete,
            };
            cluster.doc_write(replica, "t", key.as_bytes(), write).unwrap();
            if compact {
                cluster.compact(replica, "t").unwrap();
            }
            cluster.run_for(10).unwrap();
        }
        cluster.set_faults(Faults::default());
        cluster.heal();
        for replica in 0..3 {
            cluster.restart(replica).unwrap();
        }
        cluster.run_until_quiet(STEPS_MAX).unwrap();
        let reference = reference_docs(&cluster.all_blocks("t").unwrap());
        for key in 0..3 {
            let key = format!("d{key}");
            let want: Option<BTreeMap<String, String>> = reference.get(key.as_bytes()).map(|fields| {
                fields.iter().map(|(name, json)| (name.clone(), String::from_utf8(json.clone()).unwrap())).collect()
            });
            for replica in 0..3 {
                prop_assert_eq!(&doc(&cluster, replica, key.as_bytes()), &want, "replica {} document {}", replica, key);
            }
        }
    }
}

/// Rewrites, with plain RocksDB, each document record of `path` but those of `keep` as the
/// record per field format 2 kept, and marks the directory format 2.
fn write_format_2(path: &std::path::Path, keep: &[u8]) {
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), path, families).unwrap();
    let kv = db.cf_handle("kv").unwrap();
    let records: Vec<_> = db.iterator_cf(kv, rocksdb::IteratorMode::Start).map(Result::unwrap).collect();
    let mut rewritten = 0;
    for (key, value) in records {
        if !key[4..].starts_with(canopy_crdt::doc::namespace()) || key[4..] == canopy_crdt::doc::entries_prefix(keep) {
            continue;
        }
        // A record (see `doc_row.rs`): version 2, the headers (each as a row's element begins),
        // then per field its name and its elements, each naming its header, with varint counts,
        // lengths and places; a row per field is its elements, each its header, value length
        // (4 bytes) and value.
        assert_eq!(value[0], 2);
        let mut rest = &value[1..];
        let take = |rest: &mut &[u8], n: usize| {
            let (head, tail) = rest.split_at(n);
            *rest = tail;
            head.to_vec()
        };
        let varint = |rest: &mut &[u8]| {
            let (n, tail) = unsigned_varint::decode::usize(rest).unwrap();
            *rest = tail;
            n
        };
        let mut headers = Vec::new();
        for _ in 0..varint(&mut rest) {
            let mut header = take(&mut rest, 9);
            let flagged = header[8] & 0x80 != 0;
            header.extend(take(&mut rest, usize::from(header[8] & 0x7f) + if flagged { 8 } else { 0 }));
            headers.push(header);
        }
        db.delete_cf(kv, &key).unwrap();
        while !rest.is_empty() {
            let name_len = varint(&mut rest);
            let name = take(&mut rest, name_len);
            let mut row = Vec::new();
            for _ in 0..varint(&mut rest) {
                row.extend(&headers[varint(&mut rest)]);
                let value_len = varint(&mut rest);
                row.extend((value_len as u32).to_be_bytes());
                row.extend(take(&mut rest, value_len));
            }
            db.put_cf(kv, [&key[..], &name].concat(), row).unwrap();
        }
        rewritten += 1;
    }
    assert_eq!(rewritten, 2);
    db.put_cf(db.cf_handle("meta").unwrap(), b"format", 2u32.to_be_bytes()).unwrap();
}

#[test]
fn a_directory_keeping_a_record_per_field_is_rewritten_at_open_and_reads_the_same() {
    use canopy_crdt::{IndexDef, IndexKind, Store, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let topic = store.topic("t").unwrap();
    topic.declare_index("by_env", &IndexDef::new("env", IndexKind::String).unwrap()).unwrap();
    topic.doc_write(b"a", DocWrite::Put(fields(&[("env", "\"prod\""), ("port", "80"), ("x", "1")])), None).unwrap();
    topic.doc_write(b"a", patch(&[("port", "81")], &["x"]), None).unwrap();
    topic.doc_write(b"b", DocWrite::Put(fields(&[("env", "\"dev\""), ("", "true")])), None).unwrap();
    topic.doc_write(b"c", DocWrite::Put(fields(&[("env", "\"prod\"")])), None).unwrap();
    topic.put("plain", "v").unwrap();
    let before = topic.docs(None, 100).unwrap();
    assert_eq!(before.docs.len(), 3);
    // Merges resolved into whole records, which plain RocksDB reads.
    topic.compact_storage().unwrap();
    drop(topic);
    let closed = store.closed();
    drop(store);
    let _ = closed.recv();

    // `c` stays a record, as a migration cut short by a crash leaves a document.
    write_format_2(&path, b"c");
    // Read-only, the inspector cannot rewrite it, and says what to do.
    match canopy_crdt::inspect::Inspector::open(&path) {
        Err(error) => assert!(error.to_string().contains("start the node on it once"), "{error}"),
        Ok(_) => panic!("an inspector must refuse a directory of format 2"),
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let topic = store.topic("t").unwrap();
    assert_eq!(topic.docs(None, 100).unwrap(), before);
    assert_eq!(topic.doc(b"b").unwrap(), Some(fields(&[("", "true"), ("env", "\"dev\"")])));
    assert_eq!(topic.get(b"plain").unwrap(), Some(b"v".to_vec()));
    assert_eq!(topic.check_indexes().unwrap(), vec![]);
    // Written on after the rewrite, a patch changes one field and leaves the others.
    topic.doc_write(b"a", patch(&[("env", "\"dev\"")], &[]), None).unwrap();
    assert_eq!(topic.doc(b"a").unwrap(), Some(fields(&[("env", "\"dev\""), ("port", "81")])));
    assert_eq!(topic.check_indexes().unwrap(), vec![]);
    let report = store.inspector().unwrap().verify(&[]).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
}

#[test]
fn writes_of_one_document_apply_in_order_within_a_batch_and_across_concurrent_writers() {
    use canopy_crdt::{IndexDef, IndexKind, Store, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let topic = store.topic("t").unwrap();
    topic.declare_index("by_env", &IndexDef::new("env", IndexKind::String).unwrap()).unwrap();
    topic.doc_write(b"a", DocWrite::Put(fields(&[("env", "\"prod\""), ("x", "1")])), None).unwrap();
    // A patch, then a put: the put removes what the patch set, as every field it leaves out.
    let writes = vec![
        (b"a".to_vec(), patch(&[("y", "2")], &[])),
        (b"a".to_vec(), DocWrite::Put(fields(&[("env", "\"dev\"")]))),
        (b"b".to_vec(), DocWrite::Put(fields(&[("env", "\"prod\""), ("z", "3")]))),
        (b"b".to_vec(), patch(&[("w", "4"), ("z", "5")], &["env"])),
        (b"c".to_vec(), DocWrite::Delete),
        (b"c".to_vec(), patch(&[("env", "\"qa\"")], &[])),
    ];
    topic.doc_batch(writes, None).unwrap();
    assert_eq!(topic.doc(b"a").unwrap(), Some(fields(&[("env", "\"dev\"")])));
    assert_eq!(topic.doc(b"b").unwrap(), Some(fields(&[("w", "4"), ("z", "5")])));
    assert_eq!(topic.doc(b"c").unwrap(), Some(fields(&[("env", "\"qa\"")])));
    // A field set and removed by one patch is removed; a delete of nothing writes no block.
    topic.doc_write(b"c", patch(&[("v", "1")], &["v"]), None).unwrap();
    assert_eq!(topic.doc(b"c").unwrap(), Some(fields(&[("env", "\"qa\"")])));
    assert_eq!(topic.doc_write(b"none", DocWrite::Delete, None).unwrap(), None);

    // Writers racing on a few documents: group commits fold several requests on one document,
    // and cut them into several blocks. Whatever the interleaving, the index agrees with the
    // documents, and a last put by one writer alone decides each document.
    std::thread::scope(|scope| {
        for writer in 0..4 {
            let topic = &topic;
            scope.spawn(move || {
                for round in 0..200 {
                    let key = format!("d{}", round % 5).into_bytes();
                    let value = format!("\"w{writer}r{round}\"");
                    let write = match round % 3 {
                        0 => DocWrite::Put(fields(&[("env", &value), ("big", &format!("\"{}\"", "x".repeat(9000)))])),
                        1 => patch(&[("env", &value)], &["big"]),
                        _ => DocWrite::Delete,
                    };
                    topic.doc_write(&key, write, None).unwrap();
                }
            });
        }
    });
    assert_eq!(topic.check_indexes().unwrap(), vec![]);
    for key in 0..5 {
        let key = format!("d{key}").into_bytes();
        topic.doc_write(&key, DocWrite::Put(fields(&[("env", "\"last\"")])), None).unwrap();
        assert_eq!(topic.doc(&key).unwrap(), Some(fields(&[("env", "\"last\"")])));
    }
    assert_eq!(topic.check_indexes().unwrap(), vec![]);
    let report = store.inspector().unwrap().verify(&[]).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
}

#[test]
fn racing_writers_of_large_documents_are_cut_into_blocks_that_every_peer_accepts() {
    use canopy_crdt::{Store, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let topic = store.topic("t").unwrap();
    let big = format!("\"{}\"", "x".repeat(600_000));
    // Six writers' requests of 6 MB each: a group of three no longer fits one block.
    std::thread::scope(|scope| {
        for writer in 0..6 {
            let (topic, big) = (&topic, &big);
            scope.spawn(move || {
                for round in 0..16 {
                    let key = format!("d{}", (writer + round) % 3).into_bytes();
                    let write = match round % 2 {
                        0 => DocWrite::Put(
                            (0..10).map(|field| (format!("f{field}"), big.clone().into_bytes())).collect(),
                        ),
                        _ => patch(&[("f0", "0")], &["f1", "f2"]),
                    };
                    topic.doc_write(&key, write, None).unwrap();
                }
            });
        }
    });
    let report = store.inspector().unwrap().verify(&[]).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
}

/// Records of `kv` under the document namespace in the store at `path` (closed), read with
/// plain RocksDB.
fn document_records(path: &std::path::Path) -> usize {
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), path).unwrap();
    let db = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), path, families, false).unwrap();
    let kv = db.cf_handle("kv").unwrap();
    let records = db.iterator_cf(kv, rocksdb::IteratorMode::Start).map(Result::unwrap);
    records.filter(|(key, _)| key[4..].starts_with(canopy_crdt::doc::namespace())).count()
}

#[test]
fn a_document_whose_fields_all_expired_leaves_no_record_once_compacted() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    // In the past, so `verify`, which judges expiry by the system clock, sees what the store's
    // clock does.
    const START_MS: u64 = 1_700_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(START_MS));
    {
        let clock = now.clone();
        let clock = canopy_crdt::Clock::from_fn(move || clock.load(Ordering::SeqCst));
        let store = canopy_crdt::Store::open(
            dir.path(),
            canopy_crdt::StoreOptions { clock, ..canopy_crdt::StoreOptions::default() },
        )
        .unwrap();
        let topic = store.topic("registry").unwrap();
        let writes = vec![
            (b"svc/a".to_vec(), DocWrite::Put(fields(&[("addr", "\"10.0.0.1\""), ("env", "\"prod\"")]))),
            (b"svc/b".to_vec(), DocWrite::Put(fields(&[("addr", "\"10.0.0.2\"")]))),
        ];
        topic.doc_batch(writes, Some(START_MS + 30_000)).unwrap();
        topic.doc_batch(vec![(b"svc/c".to_vec(), DocWrite::Put(fields(&[("addr", "\"10.0.0.3\"")])))], None).unwrap();
        now.store(START_MS + 30_000, Ordering::SeqCst);
        topic.collect_expired().unwrap();
        assert_eq!(topic.doc(b"svc/a").unwrap(), None);
        topic.compact_storage().unwrap();
        assert_eq!(topic.doc(b"svc/a").unwrap(), None);
        assert!(topic.doc(b"svc/c").unwrap().is_some());
        let report = store.inspector().unwrap().verify(&[]).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
    assert_eq!(document_records(dir.path()), 1, "the expired documents' records are gone, svc/c's stays");
}
