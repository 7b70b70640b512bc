//! Several peers announcing the same heads: one is asked, the others stand by and take over
//! when its fetch ends before the heads are here. Real RocksDB, messages passed by hand.

use crate::common;

use canopy_crdt::sync::{Effect, Message, Replicator, SyncConfig};
use canopy_crdt::{Store, StoreOptions, Topic};
use common::serve;

fn replica(dir: &tempfile::TempDir, name: &str) -> (Replicator<u32>, Topic) {
    let options = StoreOptions { cache_bytes: 1 << 20, ..StoreOptions::default() };
    let store = Store::open(dir.path().join(name), options).unwrap();
    // No blocks inside announcements: every head is fetched.
    let mut sync = Replicator::new(store, SyncConfig { inline_bytes_max: 0, ..SyncConfig::default() });
    let topic = sync.subscribe("t").unwrap();
    (sync, topic)
}

/// The peers `effects` send requests to, with the requests' ids.
fn requests(effects: &[Effect<u32>]) -> Vec<(u32, u64)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send { to, message: Message::Want { id, .. } } => Some((*to, *id)),
            _ => None,
        })
        .collect()
}

fn asked(effects: &[Effect<u32>]) -> Vec<u32> {
    requests(effects).into_iter().map(|(to, _)| to).collect()
}

#[test]
fn a_second_peer_with_the_same_heads_stands_by_and_takes_over_a_failed_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut source, topic) = replica(&dir, "source");
    for i in 0..10 {
        topic.put(format!("k{i}"), "v").unwrap();
    }
    let announcement = source.announce("t").into_iter().next().expect("an announcement");
    let Effect::Publish { message, .. } = announcement else { panic!("an announcement: {announcement:?}") };
    let (mut reader, copy) = replica(&dir, "reader");

    let first = requests(&reader.handle(0, 1, message.clone()).unwrap());
    let [(1, id)] = first[..] else { panic!("one request, to peer 1: {first:?}") };
    // Peer 2 holds the same heads: asking it too would bring every block twice.
    assert!(asked(&reader.handle(0, 2, message.clone()).unwrap()).is_empty());
    assert!(asked(&reader.tick(10)).is_empty(), "peer 2 waits while peer 1's fetch runs");
    assert_eq!(reader.fetches(), 1);

    // Peer 1's request fails: peer 2 takes over at the next tick and serves the blocks.
    reader.request_failed(&1, id);
    let effects = reader.tick(20);
    assert_eq!(asked(&effects), vec![2]);
    serve(&mut source, &mut reader, 2, effects);
    assert_eq!(copy.heads(), topic.heads());
    assert_eq!(copy.key_count(), 10);
    // Nothing left to take over.
    assert!(asked(&reader.tick(30)).is_empty());
}
