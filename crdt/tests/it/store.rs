//! One replica's API over real RocksDB in temporary directories.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use canopy_crdt::sync::{Effect, Message, Replicator, SyncConfig, WireBlock};
use canopy_crdt::{
    BLOCK_BYTES_MAX, Batch, Block, Change, Cid, Delta, LINKS_MAX, Limits, OpenError, Store, StoreOptions, Topic,
    TopicError, VALUE_BYTES_MAX, WalkLimits, WriteError,
};
use serde_bytes::ByteBuf;

/// The author these tests sign their hand-made blocks as.
fn signer() -> canopy_crdt::Signer {
    canopy_crdt::Signer::from_secret([3; 32])
}

/// Every store of these tests signs as the same author, so equal writes on equal histories
/// make equal blocks on every store (as a user's key does on each of their devices).
fn options() -> StoreOptions {
    StoreOptions { cache_bytes: 1 << 20, author: Some(signer()), ..StoreOptions::default() }
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), options()).unwrap()
}

/// Every block of `topic`, parents first.
fn blocks_of(topic: &Topic) -> Vec<Block> {
    let heads: Vec<_> = topic.heads().iter().map(|h| h.cid).collect();
    let unbounded =
        WalkLimits { blocks_max: usize::MAX, bytes_max: usize::MAX, visits_max: usize::MAX, frontier_max: 0 };
    let walk = topic.walk(&heads, &[], &unbounded, false).unwrap();
    assert!(!walk.more && walk.frontier.is_empty());
    walk.blocks.into_iter().map(|(cid, bytes)| Block::decode("t", cid, &bytes, &Default::default()).unwrap()).collect()
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
fn a_catch_up_cut_by_a_crash_resumes_without_holes() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = open(&source_dir).topic("t").unwrap();
    for i in 0..30 {
        source.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    let blocks = blocks_of(&source);
    assert_eq!(blocks.len(), 30);
    assert!(blocks.windows(2).all(|pair| pair[0].height() < pair[1].height()), "served lowest first");
    let (bottom, top) = blocks.split_at(12);

    let dir = tempfile::tempdir().unwrap();
    {
        let topic = open(&dir).topic("t").unwrap();
        // Blocks above a gap wait in memory and are not kept across a crash.
        assert_eq!(topic.ingest(top.to_vec()).unwrap().applied, 0);
        assert!(topic.heads().is_empty(), "no head is adopted above a gap");
        let outcome = topic.ingest(bottom[..5].to_vec()).unwrap();
        assert_eq!(outcome.applied, 5);
    }
    let topic = open(&dir).topic("t").unwrap();
    assert_eq!(topic.pending_count(), 0);
    assert_eq!(topic.heads().len(), 1);
    assert_eq!(topic.heads()[0].cid, bottom[4].cid(), "what was applied is a whole prefix: no hole");
    let wanted = topic.unknown(vec![source.heads()[0].cid], 10).unwrap();
    assert_eq!(wanted, vec![source.heads()[0].cid]);
    let have: Vec<_> = topic.heads().iter().map(|h| h.cid).collect();
    let rest = source.walk(&wanted, &have, &Default::default(), false).unwrap();
    assert_eq!(rest.blocks.len(), 25, "the peer serves exactly what is missing");
    let rest: Vec<Block> = rest
        .blocks
        .into_iter()
        .map(|(cid, bytes)| Block::decode("t", cid, &bytes, &Default::default()).unwrap())
        .collect();
    assert_eq!(topic.ingest(rest).unwrap().applied, 25);
    assert_eq!(topic.heads(), source.heads());
    assert_eq!(topic.key_count(), 30);
    assert_eq!(topic.query(b"", None, 100).unwrap(), source.query(b"", None, 100).unwrap());
}

#[test]
fn a_replica_with_more_heads_than_a_block_may_link_still_makes_blocks_peers_accept() {
    // Someone published many blocks without parents: every one is a head here.
    let dir = tempfile::tempdir().unwrap();
    let topic = open(&dir).topic("t").unwrap();
    let spam: Vec<Block> = (0..LINKS_MAX as u32 + 300)
        .map(|i| {
            let delta =
                Delta { adds: vec![(format!("spam{i}").into_bytes(), vec![1])], removes: vec![], ..Default::default() };
            Block::build("t", vec![], 1, delta.encode(), &signer()).unwrap()
        })
        .collect();
    assert_eq!(topic.ingest(spam).unwrap().applied, LINKS_MAX + 300);
    topic.put("mine", "1").unwrap();
    assert!(topic.heads().len() <= LINKS_MAX, "the local commit merged heads in bounded steps");

    // A fresh replica takes every block under the protocol's limits and ends up equal.
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = open(&peer_dir).topic("t").unwrap();
    let blocks = blocks_of(&topic);
    assert!(blocks.iter().all(|b| b.links().len() <= LINKS_MAX && b.bytes().len() <= BLOCK_BYTES_MAX));
    let outcome = peer.ingest(blocks).unwrap();
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected.first());
    assert_eq!(peer.heads(), topic.heads());
    assert_eq!(peer.get(b"mine").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(peer.key_count(), topic.key_count());
}

#[test]
fn a_batch_too_large_for_one_block_is_refused_and_concurrent_puts_are_cut_into_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let topic = store.topic("t").unwrap();
    let mut batch = Batch::new();
    for i in 0..20 {
        batch.put(format!("big{i}"), vec![7u8; 1 << 20]);
    }
    assert!(matches!(topic.batch(batch), Err(WriteError::TooLarge { .. })));
    assert_eq!(topic.key_count(), 0, "nothing of a refused batch is written");

    let threads: Vec<_> = (0..24)
        .map(|i| {
            let topic = topic.clone();
            std::thread::spawn(move || topic.put(format!("value{i}"), vec![i as u8; 1 << 20]).unwrap())
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(topic.key_count(), 24);
    let blocks = blocks_of(&topic);
    assert!(blocks.iter().all(|b| b.bytes().len() <= BLOCK_BYTES_MAX), "every block fits the protocol");
    let peer_dir = tempfile::tempdir().unwrap();
    let peer = open(&peer_dir).topic("t").unwrap();
    assert_eq!(peer.ingest(blocks).unwrap().rejected.len(), 0);
    assert_eq!(peer.key_count(), 24);

    let above =
        StoreOptions { limits: Limits { value_bytes_max: VALUE_BYTES_MAX + 1, ..Limits::default() }, ..options() };
    let other = tempfile::tempdir().unwrap();
    assert!(matches!(Store::open(other.path(), above), Err(OpenError::InvalidOptions(_))));
}

#[test]
fn a_remove_that_arrives_before_its_element_still_removes_it() {
    let added = Block::build(
        "t",
        vec![],
        1,
        Delta { adds: vec![(b"k".to_vec(), b"v".to_vec())], removes: vec![], ..Default::default() }.encode(),
        &signer(),
    )
    .unwrap();
    // A block that is not above `added` yet tombstones its element.
    let remover = Block::build(
        "t",
        vec![],
        1,
        Delta { adds: vec![], removes: vec![(b"k".to_vec(), added.cid())], ..Default::default() }.encode(),
        &signer(),
    )
    .unwrap();
    let in_order = tempfile::tempdir().unwrap();
    let first = open(&in_order).topic("t").unwrap();
    first.ingest(vec![added.clone()]).unwrap();
    first.ingest(vec![remover.clone()]).unwrap();
    assert_eq!(first.get(b"k").unwrap(), None);

    let reversed = tempfile::tempdir().unwrap();
    {
        let second = open(&reversed).topic("t").unwrap();
        second.ingest(vec![remover.clone()]).unwrap();
    }
    // The tombstone waits on disk, across a restart, for the element it removes.
    let second = open(&reversed).topic("t").unwrap();
    second.ingest(vec![added.clone()]).unwrap();
    assert_eq!(second.get(b"k").unwrap(), None, "the result does not depend on the order of delivery");
    assert_eq!(second.key_count(), 0);
    assert_eq!(second.heads(), first.heads());

    let together = tempfile::tempdir().unwrap();
    let third = open(&together).topic("t").unwrap();
    third.ingest(vec![remover, added]).unwrap();
    assert_eq!(third.get(b"k").unwrap(), None);
}

#[test]
fn blocks_with_a_wrong_height_or_bad_delta_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let topic = open(&dir).topic("t").unwrap();
    let delta = Delta { adds: vec![(b"k".to_vec(), b"v".to_vec())], removes: vec![], ..Default::default() };
    let root = Block::build("t", vec![], 1, delta.encode(), &signer()).unwrap();
    let wrong_height = Block::build("t", vec![root.cid()], 5, delta.encode(), &signer()).unwrap();
    let bad_delta = Block::build("t", vec![root.cid()], 2, b"not a delta".to_vec(), &signer()).unwrap();
    let child_of_bad = Block::build("t", vec![wrong_height.cid()], 6, delta.encode(), &signer()).unwrap();
    let outcome = topic.ingest(vec![root.clone(), wrong_height.clone(), bad_delta.clone(), child_of_bad]).unwrap();
    assert_eq!(outcome.applied, 1);
    assert_eq!(outcome.rejected.len(), 3, "{:?}", outcome.rejected);
    assert_eq!(topic.heads().len(), 1);
    assert_eq!(topic.heads()[0].cid, root.cid());
    assert!(!topic.contains(&wrong_height.cid()).unwrap());
    assert!(!topic.contains(&bad_delta.cid()).unwrap());
    // A node's own limits bound its local writes only; received blocks are judged by the
    // protocol's limits, the same on every node, so nodes with other settings still agree.
    let larger = Delta { adds: vec![(b"k".to_vec(), vec![0; 64])], removes: vec![], ..Default::default() };
    let tight = StoreOptions { limits: Limits { value_bytes_max: 8, ..Limits::default() }, ..options() };
    let tight_dir = tempfile::tempdir().unwrap();
    let tight_topic = Store::open(tight_dir.path(), tight).unwrap().topic("t").unwrap();
    let outcome = tight_topic.ingest(vec![Block::build("t", vec![], 1, larger.encode(), &signer()).unwrap()]).unwrap();
    assert_eq!(outcome.applied, 1);
    assert!(matches!(tight_topic.put("k2", vec![0; 64]), Err(WriteError::InvalidValue(_))));
}

/// The request a sync sent, from its effects.
fn sent_want(effects: &[Effect<u32>]) -> (u32, u64) {
    match effects {
        [Effect::Send { to, message: Message::Want { id, .. } }] => (*to, *id),
        other => panic!("expected one Want, got {other:?}"),
    }
}

fn answer(id: u64, blocks: Vec<WireBlock>) -> Message {
    Message::Blocks {
        topic: "t".into(),
        id,
        blocks,
        more: false,
        frontier: vec![],
        snapshots: vec![],
        snapshot_pending: false,
    }
}

#[test]
fn tampered_blocks_from_a_peer_are_refused_and_the_replica_carries_on() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = open(&source_dir).topic("t").unwrap();
    source.put("k", "v").unwrap();
    let block = blocks_of(&source).pop().unwrap();
    let mut tampered = block.bytes().to_vec();
    *tampered.last_mut().unwrap() ^= 0x55;
    let wire = |bytes: Vec<u8>| vec![WireBlock { cid: block.cid(), bytes: ByteBuf::from(bytes) }];

    let dir = tempfile::tempdir().unwrap();
    let mut sync: Replicator<u32> = Replicator::new(open(&dir), SyncConfig::default());
    let topic = sync.subscribe("t").unwrap();
    let heads = Message::Heads { topic: "t".into(), heads: source.heads(), blocks: Vec::new(), unawaited: false };
    let (to, id) = sent_want(&sync.handle(0, 1, heads).unwrap());
    assert_eq!(to, 1);
    // Blocks travel intact: a tampered one was sent so. Its sender is penalised and its fetch
    // ends; the heads are fetched again when announced again.
    let effects = sync.handle(0, 1, answer(id, wire(tampered))).unwrap();
    assert!(matches!(&effects[..], [Effect::Penalize { peer: 1, .. }]), "{effects:?}");
    assert_eq!(sync.stats().blocks_rejected, 1);
    assert!(topic.heads().is_empty());
    assert_eq!(sync.fetches(), 0);
    assert!(sync.handle_bytes(0, 1, b"\xff\x00garbage").is_err());
    let heads = Message::Heads { topic: "t".into(), heads: source.heads(), blocks: Vec::new(), unawaited: false };
    let (_, retry) = sent_want(&sync.handle(0, 2, heads).unwrap());
    let mut effects = sync.handle(0, 2, answer(retry, wire(block.bytes().to_vec()))).unwrap();
    // The answer completes the fetch; its blocks are applied once settled.
    effects.extend(sync.settle().unwrap());
    assert_eq!(topic.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(matches!(&effects[..], [Effect::Publish { .. }]), "new heads are announced: {effects:?}");
    assert_eq!(sync.fetches(), 0, "the fetch is done");
}

#[test]
fn answers_nobody_asked_for_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut sync: Replicator<u32> = Replicator::new(open(&dir), SyncConfig::default());
    let topic = sync.subscribe("t").unwrap();
    let delta = Delta { adds: vec![(b"k".to_vec(), b"forged".to_vec())], removes: vec![], ..Default::default() };
    let block = Block::build("t", vec![], 1, delta.encode(), &signer()).unwrap();
    let blocks = vec![WireBlock { cid: block.cid(), bytes: ByteBuf::from(block.bytes().to_vec()) }];
    assert!(sync.handle(0, 9, answer(42, blocks.clone())).unwrap().is_empty());
    assert!(topic.heads().is_empty(), "a block nobody asked for is not applied");
    assert_eq!(sync.stats().answers_unrequested, 1);

    // Nor is an answer from a peer other than the one asked.
    let heads = Message::Heads {
        topic: "t".into(),
        heads: vec![canopy_crdt::Head { cid: block.cid(), height: 1 }],
        blocks: Vec::new(),
        unawaited: false,
    };
    let (_, id) = sent_want(&sync.handle(0, 1, heads).unwrap());
    sync.handle(0, 2, answer(id, blocks.clone())).unwrap();
    assert!(topic.heads().is_empty());
    sync.handle(0, 1, answer(id, blocks)).unwrap();
    sync.settle().unwrap();
    assert_eq!(topic.heads().len(), 1);
}

#[test]
fn a_peer_that_never_answers_holds_up_only_its_own_fetch() {
    let source_dir = tempfile::tempdir().unwrap();
    let source = open(&source_dir).topic("t").unwrap();
    source.put("k", "v").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sync: Replicator<u32> = Replicator::new(open(&dir), SyncConfig::default());
    sync.subscribe("t").unwrap();
    // Peer 1 announces a head that does not exist and never answers.
    let fake = Block::build("t", vec![], 1, b"nothing".to_vec(), &signer()).unwrap().cid();
    let fake_heads = Message::Heads {
        topic: "t".into(),
        heads: vec![canopy_crdt::Head { cid: fake, height: 9 }],
        blocks: Vec::new(),
        unawaited: false,
    };
    let (to, stalled) = sent_want(&sync.handle(0, 1, fake_heads.clone()).unwrap());
    assert_eq!(to, 1);
    // Peer 2's real heads are fetched at once, not after peer 1's timeout.
    let real = Message::Heads { topic: "t".into(), heads: source.heads(), blocks: Vec::new(), unawaited: false };
    let (to, _) = sent_want(&sync.handle(1, 2, real).unwrap());
    assert_eq!(to, 2);
    // A failed request frees its fetch: the next announcement starts a new one.
    assert!(sync.handle(2, 1, fake_heads.clone()).unwrap().is_empty(), "one fetch per peer");
    sync.request_failed(&1, stalled);
    let (to, _) = sent_want(&sync.handle(3, 1, fake_heads).unwrap());
    assert_eq!(to, 1);
}

#[test]
fn re_announcements_are_spread_over_time_and_quiet_topics_back_off() {
    let dir = tempfile::tempdir().unwrap();
    let config = SyncConfig { rebroadcast_interval_ms: 1_000, announce_per_tick_max: 100, ..SyncConfig::default() };
    let mut sync: Replicator<u32> = Replicator::new(open(&dir), config);
    let topics = 1_500;
    for i in 0..topics {
        let topic = sync.subscribe(&format!("t{i}")).unwrap();
        topic.put("k", "v").unwrap();
    }
    let mut per_tick_max = 0;
    let mut announced = 0;
    for tick in 0..=600 {
        let effects = sync.tick(tick * 100);
        per_tick_max = per_tick_max.max(effects.len());
        announced += effects.len();
    }
    assert!(per_tick_max <= 100, "a tick announced {per_tick_max} topics at once");
    // A minute at a fixed 1 s interval would be 60 announcements per topic; quiet topics
    // double their interval up to 16 s.
    assert!(announced >= topics * 4, "every topic is still re-announced: {announced}");
    assert!(announced <= topics * 15, "quiet topics back off: {announced}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert!(matches!(store.topic("has space"), Err(TopicError::InvalidName { .. })));
    assert!(matches!(store.topic(""), Err(TopicError::InvalidName { .. })));
    assert!(matches!(store.topic(&"x".repeat(129)), Err(TopicError::InvalidName { .. })));
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
            Change { key: b"a".to_vec(), value: Some(b"1".to_vec()), height: 1, expired: false },
            Change { key: b"a".to_vec(), value: None, height: 2, expired: false },
        ]
    );
    topic.put("b", "2").unwrap();
    assert!(store.drop_topic("w").unwrap());
    assert!(matches!(topic.put("c", "3"), Err(WriteError::TopicDropped)));
    let again = store.topic("w").unwrap();
    assert_eq!(again.get(b"b").unwrap(), None);
    assert!(again.heads().is_empty());
}

#[test]
fn a_received_block_waiting_for_a_block_made_here_is_applied_with_it() {
    // Two replicas that make the same write on the same (empty) history make the same block.
    let twin_dir = tempfile::tempdir().unwrap();
    let twin = open(&twin_dir).topic("t").unwrap();
    let shared = twin.put("k", "v").unwrap();
    let child = twin.put("k2", "v2").unwrap();
    let blocks = blocks_of(&twin);
    assert_eq!(blocks.len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let topic = open(&dir).topic("t").unwrap();
    let above = blocks.into_iter().find(|b| b.cid() == child.cid).unwrap();
    assert_eq!(topic.ingest(vec![above]).unwrap().pending, 1, "its parent is missing");
    assert_eq!(topic.put("k", "v").unwrap().cid, shared.cid, "the same write makes the same block");
    assert_eq!(topic.pending_count(), 0, "the waiting block is released");
    assert_eq!(topic.heads(), twin.heads());
    assert_eq!(topic.get(b"k2").unwrap().as_deref(), Some(&b"v2"[..]));
}

#[test]
fn a_topic_is_dropped_at_given_heads_only_and_never_with_a_write_acknowledged_since() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let topic = store.topic("t").unwrap();
    topic.put("a", "1").unwrap();
    let seen: Vec<Cid> = topic.heads().iter().map(|head| head.cid).collect();
    // A write acknowledged after the heads were taken: the drop refuses, and keeps it.
    topic.put("b", "2").unwrap();
    assert!(!store.drop_topic_at("t", &seen).unwrap());
    assert_eq!(topic.get(b"b").unwrap(), Some(b"2".to_vec()));
    // At the heads it holds now, it is dropped; a write through an old handle then fails.
    let now: Vec<Cid> = topic.heads().iter().map(|head| head.cid).collect();
    assert!(store.drop_topic_at("t", &now).unwrap());
    assert!(matches!(topic.put("c", "3"), Err(WriteError::TopicDropped)));
    assert!(store.existing_topic("t").is_none());
    assert!(!store.drop_topic_at("t", &now).unwrap(), "nothing left to drop");
}

#[test]
fn expiring_overwrites_of_long_keys_are_sized_with_their_expiries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let topic = store.topic("t").unwrap();
    let key = |i: usize| format!("{i:04}{}", "k".repeat(4000)).into_bytes();
    let mut batch = Batch::new();
    for i in 0..2000 {
        batch.put(key(i), "v");
    }
    topic.batch(batch).unwrap();
    // Each overwrite tombstones the old element and names its key in the delta's expiries as
    // well as in its add: 2000 of them need more than one block, so the batch is refused.
    let mut batch = Batch::new();
    for i in 0..2000 {
        batch.put_until(key(i), "w", u64::MAX);
    }
    match topic.batch(batch) {
        Err(WriteError::TooLarge { .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Half as many fit one block.
    let mut batch = Batch::new();
    for i in 0..1000 {
        batch.put_until(key(i), "w", u64::MAX);
    }
    topic.batch(batch).unwrap();
    assert_eq!(topic.get(&key(0)).unwrap().as_deref(), Some(&b"w"[..]));
    assert_eq!(topic.get(&key(1999)).unwrap().as_deref(), Some(&b"v"[..]));
}

/// Rewrites, with plain RocksDB, every row of `path` in the first row encoding (per element its
/// height, 8 bytes BE; the CID's length, top bit set when an expiry follows; the CID; the expiry,
/// 8 bytes BE; the value's length, 4 bytes BE; the value) and marks the directory format 3.
/// Returns how many rows it rewrote.
fn write_format_3(path: &std::path::Path) -> usize {
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), path).unwrap();
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), path, families).unwrap();
    let kv = db.cf_handle("kv").unwrap();
    let rows: Vec<_> = db.iterator_cf(kv, rocksdb::IteratorMode::Start).map(Result::unwrap).collect();
    let varint = |rest: &mut &[u8]| {
        let (n, tail) = unsigned_varint::decode::u64(rest).unwrap();
        *rest = tail;
        n
    };
    let mut rewritten = 0;
    for (key, value) in rows {
        if key[4..].starts_with(canopy_crdt::doc::namespace()) {
            continue;
        }
        // The compact encoding: 0x80, then per element flags (0x80: an expiry follows), the
        // height, the block's 32-byte digest, the expiry, the value's length (varints), the value.
        assert_eq!(value[0], 0x80, "a row written in the compact encoding");
        let mut rest = &value[1..];
        let mut first = Vec::new();
        while !rest.is_empty() {
            let flags = rest[0];
            rest = &rest[1..];
            assert_eq!(flags & 0x7f, 0, "every element id is a block's CID");
            first.extend(varint(&mut rest).to_be_bytes());
            first.push(36 | (flags & 0x80));
            first.extend([0x01, 0x71, 0x1e, 0x20]);
            first.extend(&rest[..32]);
            rest = &rest[32..];
            if flags & 0x80 != 0 {
                first.extend(varint(&mut rest).to_be_bytes());
            }
            let len = varint(&mut rest) as usize;
            first.extend((len as u32).to_be_bytes());
            first.extend(&rest[..len]);
            rest = &rest[len..];
        }
        db.put_cf(kv, &key, first).unwrap();
        rewritten += 1;
    }
    db.put_cf(db.cf_handle("meta").unwrap(), b"format", 3u32.to_be_bytes()).unwrap();
    rewritten
}

#[test]
fn rows_of_format_3_are_read_as_they_are_and_rewritten_by_writes() {
    let dir = tempfile::tempdir().unwrap();
    let far = 4_000_000_000_000;
    {
        let store = open(&dir);
        let topic = store.topic("t").unwrap();
        let mut batch = Batch::new();
        for n in 0..50 {
            batch.put(format!("k{n}"), vec![n as u8; 100]);
        }
        batch.put_until("lasting", "until far", far);
        topic.batch(batch).unwrap();
        topic.put("k0", "second").unwrap();
        topic.delete("k1").unwrap();
    }
    assert_eq!(write_format_3(dir.path()), 50, "49 keys and the expiring one");
    let store = open(&dir);
    let topic = store.topic("t").unwrap();
    assert_eq!(topic.get(b"k0").unwrap().as_deref(), Some(&b"second"[..]));
    assert_eq!(topic.get(b"k1").unwrap(), None);
    assert_eq!(topic.get(b"k7").unwrap(), Some(vec![7; 100]));
    assert_eq!(topic.get(b"lasting").unwrap().as_deref(), Some(&b"until far"[..]));
    assert_eq!(topic.key_count(), 50);
    // An overwrite reads the row of the first encoding to remove its element, and writes the
    // compact one.
    topic.put("k7", "third").unwrap();
    let report = store.inspector().unwrap().verify(&[]).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    drop((topic, store));
    let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), dir.path()).unwrap();
    let db = rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), dir.path(), families, false).unwrap();
    let format = db.get_cf(db.cf_handle("meta").unwrap(), b"format").unwrap().unwrap();
    assert_eq!(format, 4u32.to_be_bytes(), "the directory is marked with this version's format");
    let kv = db.cf_handle("kv").unwrap();
    let first_bytes = db
        .iterator_cf(kv, rocksdb::IteratorMode::Start)
        .map(Result::unwrap)
        .filter(|(key, value)| key.ends_with(b"k7") && value[0] == 0x80);
    assert_eq!(first_bytes.count(), 1, "the rewritten row is compact");
}
