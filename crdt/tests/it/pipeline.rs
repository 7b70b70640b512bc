//! A catch-up asks for the next blocks as soon as an answer arrives, before that answer is
//! applied, naming the answer's top block as had. Two replicas over real RocksDB, messages
//! passed by hand.

use crate::common;

use canopy_crdt::sync::{Message, Replicator, SyncConfig};
use canopy_crdt::{Store, StoreOptions, Topic, WalkLimits};
use common::sends as sent;

fn store(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), StoreOptions { cache_bytes: 1 << 20, ..StoreOptions::default() }).unwrap()
}

/// A replica holding a chain of `keys` single puts in topic `t`, and an empty one; answers
/// carry at most 4 blocks and announcements none.
struct Pair {
    source: Replicator<u32>,
    reader: Replicator<u32>,
    written: Topic,
    caught: Topic,
    _dirs: [tempfile::TempDir; 2],
}

fn pair(keys: usize) -> Pair {
    let config = SyncConfig {
        walk: WalkLimits { blocks_max: 4, ..WalkLimits::default() },
        inline_bytes_max: 0,
        ..SyncConfig::default()
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut source: Replicator<u32> = Replicator::new(store(&dirs[0]), config.clone());
    let written = source.subscribe("t").unwrap();
    for i in 0..keys {
        written.put(format!("k{i:02}"), format!("v{i}")).unwrap();
    }
    let mut reader: Replicator<u32> = Replicator::new(store(&dirs[1]), config);
    let caught = reader.subscribe("t").unwrap();
    Pair { source, reader, written, caught, _dirs: dirs }
}

#[test]
fn the_next_request_leaves_before_the_answer_is_applied_and_names_its_top_as_had() {
    let Pair { mut source, mut reader, written, caught, .. } = pair(30);
    let heads = Message::Heads { topic: "t".into(), heads: written.heads(), blocks: Vec::new(), unawaited: false };
    let mut requests = sent(reader.handle(0, 1, heads).unwrap());
    let mut round_trips = 0;
    while let Some(request) = requests.pop() {
        round_trips += 1;
        assert!(round_trips <= 20, "the catch-up ends");
        let answer = sent(source.handle(0, 2, request).unwrap()).pop().expect("an answer");
        let Message::Blocks { blocks, more, .. } = &answer else { panic!("blocks expected: {answer:?}") };
        let top = blocks.last().map(|block| block.cid);
        let more = *more;
        requests = sent(reader.handle(0, 1, answer).unwrap());
        if more {
            let [Message::Want { have, .. }] = &requests[..] else { panic!("one request follows: {requests:?}") };
            assert!(have.contains(&top.unwrap()), "the answer's top is named as had before it is applied");
        }
    }
    reader.settle().unwrap();
    assert_eq!(round_trips, 8, "30 blocks, 4 per answer");
    assert_eq!(caught.heads(), written.heads());
    assert_eq!(caught.key_count(), 30);
    assert_eq!(reader.stats().blocks_applied, 30);
    assert_eq!(reader.fetches(), 0);
    let every = |topic: &canopy_crdt::Topic| topic.query(b"", None, 100).unwrap();
    assert_eq!(every(&caught), every(&written));
}

#[test]
fn a_tampered_block_in_an_answer_ends_the_fetch_and_the_next_announcement_completes_it() {
    let Pair { mut source, mut reader, written, caught, .. } = pair(10);
    let heads = Message::Heads { topic: "t".into(), heads: written.heads(), blocks: Vec::new(), unawaited: false };
    let mut requests = sent(reader.handle(0, 1, heads).unwrap());
    let mut first = true;
    while let Some(request) = requests.pop() {
        let mut answer = sent(source.handle(0, 2, request).unwrap()).pop().expect("an answer");
        if let Message::Blocks { blocks, .. } = &mut answer
            && first
        {
            *blocks.last_mut().unwrap().bytes.last_mut().unwrap() ^= 0x55;
            first = false;
        }
        requests = sent(reader.handle(0, 1, answer).unwrap());
    }
    reader.settle().unwrap();
    assert_eq!(reader.stats().blocks_rejected, 1);
    assert_eq!(reader.fetches(), 0, "the peer that sent it is not asked again");
    assert_ne!(caught.heads(), written.heads());
    // Another peer announces the heads: the catch-up completes from there.
    let heads = Message::Heads { topic: "t".into(), heads: written.heads(), blocks: Vec::new(), unawaited: false };
    let mut requests = sent(reader.handle(0, 3, heads).unwrap());
    while let Some(request) = requests.pop() {
        let answer = sent(source.handle(0, 2, request).unwrap()).pop().expect("an answer");
        requests = sent(reader.handle(0, 3, answer).unwrap());
    }
    reader.settle().unwrap();
    assert_eq!(caught.heads(), written.heads());
    assert_eq!(caught.key_count(), 10);
}
