//! One replica's API over real RocksDB in temporary directories.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use canopy_crdt::sync::{Effect, Message, Sync, SyncConfig, WireBlock};
use canopy_crdt::{Batch, Block, Change, Delta, Limits, Store, StoreOptions, Topic, TopicError, WriteError};
use serde_bytes::ByteBuf;

fn options() -> StoreOptions {
    StoreOptions { cache_bytes: 1 << 20, ..StoreOptions::default() }
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), options()).unwrap()
}

fn blocks_of(topic: &Topic) -> Vec<Block> {
    let heads: Vec<_> = topic.heads().iter().map(|h| h.cid).collect();
    let walk = topic.walk(&heads, &[], &Default::default()).unwrap();
    walk.blocks.into_iter().map(|(cid, bytes)| Block::decode(cid, &bytes, &Default::default()).unwrap()).collect()
}

#[test]
fn put_get_delete_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let topic = open(&dir).topic("kv").unwrap();
    assert_eq!(topic.get(b"a").unwrap(), None);
    let first = topic.put("a", "1").unwrap();
    assert_eq!(first.height, 1);
    let second = topic.put("b", "2").unwrap();
    assert_eq!(second.height, 2);
    assert_eq!(topic.heads().len(), 1);
    assert_eq!(topic.heads()[0].cid, second.cid);
    assert_eq!(topic.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert!(topic.has(b"b").unwrap());
    assert_eq!(topic.key_count(), 2);
    topic.put("a", "one").unwrap();
    assert_eq!(topic.key_count(), 2);
    assert!(topic.delete("a").unwrap().is_some());
    assert!(topic.delete("a").unwrap().is_none(), "deleting an absent key writes nothing");
    assert_eq!(topic.max_height(), 4);
    assert_eq!(topic.key_count(), 1);
    assert!(!topic.has(b"a").unwrap());
}

#[test]
fn prefix_query_pages_in_key_order() {
    let dir = tempfile::tempdir().unwrap();
    let topic = open(&dir).topic("q").unwrap();
    let mut batch = Batch::new();
    for i in (0..25).rev() {
        batch.put(format!("user/{i:03}"), format!("v{i}"));
    }
    batch.put("other", "x").put("user", "bare");
    topic.batch(batch).unwrap();

    let mut seen = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = topic.query(b"user/", after.as_deref(), 10).unwrap();
        assert!(page.entries.len() <= 10);
        seen.extend(page.entries.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("user/{i:03}")).collect();
    assert_eq!(seen, expected);
    let all = topic.query(b"", None, 100).unwrap();
    assert_eq!(all.entries.len(), 27);
    assert_eq!(all.next, None);
    let after_last = topic.query(b"user/", Some(b"user/024"), 10).unwrap();
    assert!(after_last.entries.is_empty());
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let (heads, count) = {
        let store = open(&dir);
        let topic = store.topic("persist").unwrap();
        store.topic("second").unwrap().put("x", "y").unwrap();
        for i in 0..100 {
            topic.put(format!("k{i}"), format!("v{i}")).unwrap();
        }
        topic.delete("k5").unwrap();
        (topic.heads(), topic.key_count())
    };
    let store = open(&dir);
    assert_eq!(store.topic_names(), vec!["persist".to_string(), "second".to_string()]);
    let topic = store.topic("persist").unwrap();
    assert_eq!(topic.heads(), heads);
    assert_eq!(topic.key_count(), count);
    assert_eq!(count, 99);
    assert_eq!(topic.get(b"k99").unwrap().as_deref(), Some(&b"v99"[..]));
    assert_eq!(topic.get(b"k5").unwrap(), None);
    assert_eq!(topic.put("k100", "v").unwrap().height, 102);
}

#[test]
fn a_batch_is_invisible_until_committed() {
    let dir = tempfile::tempdir().unwrap();
    let topic = open(&dir).topic("atomic").unwrap();
    let keys = 2000;
    let mut batch = Batch::new();
    for i in 0..keys {
        batch.put(format!("k{i:05}"), "old");
    }
    topic.batch(batch).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let topic = topic.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut snapshots = 0;
            while !done.load(Ordering::SeqCst) || snapshots == 0 {
                let page = topic.query(b"k", None, keys).unwrap();
                assert_eq!(page.entries.len(), keys);
                let first = &page.entries[0].1;
                assert!(page.entries.iter().all(|(_, v)| v == first), "a reader saw half a batch");
                snapshots += 1;
            }
            snapshots
        })
    };
    for round in 0..20 {
        let mut batch = Batch::new();
        for i in 0..keys {
            batch.put(format!("k{i:05}"), format!("round-{round}"));
        }
        topic.batch(batch).unwrap();
    }
    done.store(true, Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0);
}

#[test]
fn concurrent_writers_are_grouped_without_losing_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let topic = open(&dir).topic("group").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let topic = topic.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    topic.put(format!("t{t}-{i}"), format!("{i}")).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(topic.key_count(), 1600);
    assert_eq!(topic.query(b"", None, 5000).unwrap().entries.len(), 1600);
    assert_eq!(topic.heads().len(), 1);
    assert!(topic.max_height() <= 1600);
}

#[test]
fn an_interrupted_catch_up_resumes_after_reopening_without_holes() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = open(&source_dir).topic("t").unwrap();
    for i in 0..30 {
        source.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    let blocks = blocks_of(&source);
    assert_eq!(blocks.len(), 30);
    let (top, bottom) = blocks.split_at(12);

    let dir = tempfile::tempdir().unwrap();
    {
        let topic = open(&dir).topic("t").unwrap();
        let outcome = topic.ingest(top.to_vec()).unwrap();
        assert_eq!(outcome.applied, 0);
        assert_eq!(outcome.pending, 12);
        assert_eq!(outcome.missing, vec![top.last().unwrap().links()[0]]);
        assert!(topic.heads().is_empty(), "no head is adopted above a gap");
    }
    let topic = open(&dir).topic("t").unwrap();
    assert_eq!(topic.pending_count(), 12, "pending blocks survive a restart");
    let wanted = topic.unknown(vec![source.heads()[0].cid], 10).unwrap();
    assert_eq!(wanted, vec![top.last().unwrap().links()[0]], "it asks for what lies below, not for the head again");
    let outcome = topic.ingest(bottom.to_vec()).unwrap();
    assert_eq!(outcome.applied, 30);
    assert_eq!(topic.pending_count(), 0);
    assert_eq!(topic.heads(), source.heads());
    assert_eq!(topic.key_count(), 30);
    assert_eq!(topic.query(b"", None, 100).unwrap(), source.query(b"", None, 100).unwrap());
}

#[test]
fn blocks_with_a_wrong_height_or_bad_delta_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let topic = open(&dir).topic("t").unwrap();
    let delta = Delta { adds: vec![(b"k".to_vec(), b"v".to_vec())], removes: vec![] };
    let root = Block::build(vec![], 1, delta.encode()).unwrap();
    let wrong_height = Block::build(vec![root.cid()], 5, delta.encode()).unwrap();
    let bad_delta = Block::build(vec![root.cid()], 2, b"not a delta".to_vec()).unwrap();
    let child_of_bad = Block::build(vec![wrong_height.cid()], 6, delta.encode()).unwrap();
    let outcome = topic.ingest(vec![root.clone(), wrong_height.clone(), bad_delta.clone(), child_of_bad]).unwrap();
    assert_eq!(outcome.applied, 1);
    assert_eq!(outcome.rejected.len(), 3, "{:?}", outcome.rejected);
    assert_eq!(topic.heads().len(), 1);
    assert_eq!(topic.heads()[0].cid, root.cid());
    assert!(!topic.contains(&wrong_height.cid()).unwrap());
    assert!(!topic.contains(&bad_delta.cid()).unwrap());
    let too_big = Delta { adds: vec![(b"k".to_vec(), vec![0; 64])], removes: vec![] };
    let tight = StoreOptions { limits: Limits { value_bytes_max: 8, ..Limits::default() }, ..options() };
    let tight_dir = tempfile::tempdir().unwrap();
    let tight_topic = Store::open(tight_dir.path(), tight).unwrap().topic("t").unwrap();
    let outcome = tight_topic.ingest(vec![Block::build(vec![], 1, too_big.encode()).unwrap()]).unwrap();
    assert_eq!(outcome.rejected.len(), 1);
}

#[test]
fn tampered_blocks_from_a_peer_are_refused_and_the_replica_carries_on() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = open(&source_dir).topic("t").unwrap();
    source.put("k", "v").unwrap();
    let block = blocks_of(&source).pop().unwrap();
    let mut tampered = block.bytes().to_vec();
    *tampered.last_mut().unwrap() ^= 0x55;

    let dir = tempfile::tempdir().unwrap();
    let mut sync: Sync<u32> = Sync::new(open(&dir), SyncConfig::default());
    let topic = sync.subscribe("t").unwrap();
    let message = |bytes: Vec<u8>| Message::Blocks {
        topic: "t".into(),
        blocks: vec![WireBlock { cid: block.cid(), bytes: ByteBuf::from(bytes) }],
        truncated: false,
    };
    sync.handle(0, 1, message(tampered)).unwrap();
    assert_eq!(sync.stats().blocks_rejected, 1);
    assert!(topic.heads().is_empty());
    assert!(sync.handle_bytes(0, 1, b"\xff\x00garbage").is_err());
    let effects = sync.handle(0, 1, message(block.bytes().to_vec())).unwrap();
    assert_eq!(topic.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(matches!(&effects[..], [Effect::Publish { .. }]), "new heads are announced: {effects:?}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(matches!(store.topic("has space"), Err(TopicError::InvalidName(_))));
    assert!(matches!(store.topic(""), Err(TopicError::InvalidName(_))));
    assert!(matches!(store.topic(&"x".repeat(129)), Err(TopicError::InvalidName(_))));
    let topic = store.topic("ok.name_1:2-3").unwrap();
    assert!(matches!(topic.put("", "v"), Err(WriteError::InvalidKey(_))));
    assert!(matches!(topic.put(vec![b'k'; 5000], "v"), Err(WriteError::InvalidKey(_))));
    assert!(matches!(topic.put("k", vec![0; (1 << 20) + 1]), Err(WriteError::InvalidValue(_))));
    assert!(topic.batch(Batch::new()).unwrap().is_none());
    assert_eq!(topic.key_count(), 0);
}

#[test]
fn watchers_see_every_change_and_dropped_topics_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let topic = store.topic("w").unwrap();
    let changes = topic.watch();
    topic.put("a", "1").unwrap();
    topic.delete("a").unwrap();
    let seen: Vec<Change> = changes.try_iter().collect();
    assert_eq!(
        seen,
        vec![
            Change { key: b"a".to_vec(), value: Some(b"1".to_vec()), height: 1 },
            Change { key: b"a".to_vec(), value: None, height: 2 },
        ]
    );
    topic.put("b", "2").unwrap();
    assert!(store.drop_topic("w").unwrap());
    assert!(matches!(topic.put("c", "3"), Err(WriteError::TopicDropped)));
    let again = store.topic("w").unwrap();
    assert_eq!(again.get(b"b").unwrap(), None);
    assert!(again.heads().is_empty());
}
