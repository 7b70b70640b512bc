//! A topic's key filter, over real RocksDB: writes of keys it never held skip reading their
//! rows, and every key that has a row is still read, through reopening, building, received
//! blocks and snapshot merges.
//!
//! A write that skipped the read of an existing row would not replace the element there: the key
//! count would grow on an overwrite, and a delete would find nothing to remove. The tests check
//! both after each way rows come to exist.

use std::time::Duration;

use canopy_crdt::snapshot::Manifest;
use canopy_crdt::{Batch, Block, DocWrite, Store, StoreOptions, Topic, WalkLimits};

/// Compaction only when a test asks for it.
fn options() -> StoreOptions {
    super::common::manual_compaction()
}

fn key(i: usize) -> String {
    format!("key-{i:06}")
}

/// Puts keys `range` with values tagged `tag`, 1,000 a block.
fn put_range(topic: &Topic, range: std::ops::Range<usize>, tag: &str) {
    let keys: Vec<usize> = range.collect();
    for chunk in keys.chunks(1000) {
        let mut batch = Batch::new();
        for i in chunk {
            batch.put(key(*i), format!("{tag}-{i}"));
        }
        topic.batch(batch).unwrap();
    }
}

/// Waits up to a minute until the topic's key filter is ready.
fn wait_ready(topic: &Topic) {
    let started = std::time::Instant::now();
    while !topic.key_filter().ready {
        assert!(started.elapsed() < Duration::from_secs(60), "the key filter was not built: {:?}", topic.key_filter());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Overwrites keys `0..n` and deletes every seventh: each existing row must be read for the
/// key count to stay and the deletes to find their elements.
fn overwrite_and_delete(topic: &Topic, n: usize) {
    put_range(topic, 0..n, "again");
    assert_eq!(topic.key_count(), n as u64, "an overwrite of an existing key added a key");
    for i in (0..n).step_by(7) {
        assert!(topic.delete(key(i)).unwrap().is_some(), "the delete of {} found no element", key(i));
        assert_eq!(topic.get(key(i).as_bytes()).unwrap(), None);
    }
    assert_eq!(topic.key_count(), (n - n.div_ceil(7)) as u64);
    assert_eq!(topic.get(key(1).as_bytes()).unwrap(), Some(b"again-1".to_vec()));
}

#[test]
fn writes_over_existing_rows_read_them_once_the_filter_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let n = 40_000;
    {
        let topic = Store::open(dir.path(), options()).unwrap().topic("t").unwrap();
        assert!(!topic.key_filter().ready, "a topic's filter waits for its first write");
        put_range(&topic, 0..n, "first");
        wait_ready(&topic);
        let state = topic.key_filter();
        assert!(state.keys >= n as u64 && state.bytes > 0, "{state:?}");
        overwrite_and_delete(&topic, n);
    }
    // Reopened, the filter is built from the rows (over several steps: more rows than one
    // step adds), while writes go on.
    let topic = Store::open(dir.path(), options()).unwrap().topic("t").unwrap();
    assert!(!topic.key_filter().ready && !topic.key_filter().building);
    put_range(&topic, n..n + 100_000, "more");
    wait_ready(&topic);
    let n = n + 100_000;
    put_range(&topic, 0..n, "restored");
    overwrite_and_delete(&topic, n);
}

#[test]
fn rows_from_received_blocks_and_snapshot_merges_are_read_before_they_are_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let source = Store::open(dir.path().join("source"), options()).unwrap().topic("t").unwrap();
    let n = 5_000;
    put_range(&source, 0..n, "first");

    // Received blocks make rows on a replica whose filter is built.
    let replica = Store::open(dir.path().join("replica"), options()).unwrap().topic("t").unwrap();
    replica.put("own", "x").unwrap();
    wait_ready(&replica);
    let heads: Vec<_> = source.heads().iter().map(|h| h.cid).collect();
    let unbounded =
        WalkLimits { blocks_max: usize::MAX, bytes_max: usize::MAX, visits_max: usize::MAX, frontier_max: 0 };
    let walk = source.walk(&heads, &[], &unbounded, false).unwrap();
    let blocks: Vec<Block> = walk
        .blocks
        .into_iter()
        .map(|(cid, bytes)| Block::decode("t", cid, &bytes, &Default::default()).unwrap())
        .collect();
    replica.ingest(blocks).unwrap();
    assert_eq!(replica.key_count(), n as u64 + 1);
    replica.delete("own").unwrap();
    overwrite_and_delete(&replica, n);

    // A replica with nothing yet takes a snapshot's rows as a file, apart from the filter,
    // which starts again. The delete of an absent key writes nothing but builds the filter.
    let snapshot = source.compact().unwrap().snapshot.unwrap();
    let merged = Store::open(dir.path().join("merged"), options()).unwrap().topic("t").unwrap();
    assert!(merged.delete("absent").unwrap().is_none());
    wait_ready(&merged);
    let bytes = source.snapshot_part(&snapshot).unwrap().unwrap();
    let mut parts = vec![(snapshot, bytes.clone())];
    for chunk in &Manifest::decode(&snapshot, &bytes).unwrap().chunks {
        parts.push((*chunk, source.snapshot_part(chunk).unwrap().unwrap()));
    }
    merged.stage_snapshot_parts(&parts).unwrap();
    merged.merge_snapshot(snapshot).unwrap();
    assert!(!merged.key_filter().ready, "a merge leaves the filter to be built again");
    assert_eq!(merged.key_count(), n as u64);
    assert_eq!(merged.heads(), source.heads(), "the merge took the snapshot whole");
    merged.put("key-000001", "building").unwrap();
    wait_ready(&merged);
    overwrite_and_delete(&merged, n);
}

#[test]
fn a_document_put_over_a_held_document_removes_the_fields_it_leaves_out() {
    let dir = tempfile::tempdir().unwrap();
    let field = |name: &str, value: &str| (name.to_string(), format!("\"{value}\"").into_bytes());
    let n = 2_000;
    let doc_key = |i: usize| format!("doc-{i:05}").into_bytes();
    {
        let topic = Store::open(dir.path(), options()).unwrap().topic("t").unwrap();
        let writes = (0..n).map(|i| (doc_key(i), DocWrite::Put(vec![field("a", "1"), field("b", "2")]))).collect();
        topic.doc_batch(writes, None).unwrap();
        wait_ready(&topic);
        // Documents the topic never held are written without reading; those it holds are read.
        let writes = (0..2 * n).map(|i| (doc_key(i), DocWrite::Put(vec![field("a", "3")]))).collect();
        topic.doc_batch(writes, None).unwrap();
        let all: Vec<Vec<u8>> = (0..2 * n).map(doc_key).collect();
        assert!(topic.docs_of(&all).unwrap().iter().all(|fields| fields.as_deref() == Some(&[field("a", "3")][..])));
    }
    // Reopened, the filter is built from the field rows: each document as its prefix.
    let topic = Store::open(dir.path(), options()).unwrap().topic("t").unwrap();
    topic.doc_write(b"new", DocWrite::Put(vec![field("c", "4")]), None).unwrap();
    wait_ready(&topic);
    let writes = (0..2 * n).map(|i| (doc_key(i), DocWrite::Put(vec![field("b", "5")]))).collect();
    topic.doc_batch(writes, None).unwrap();
    let all: Vec<Vec<u8>> = (0..2 * n).map(doc_key).collect();
    for (i, fields) in topic.docs_of(&all).unwrap().into_iter().enumerate() {
        assert_eq!(fields, Some(vec![field("b", "5")]), "document {i}");
    }
}
