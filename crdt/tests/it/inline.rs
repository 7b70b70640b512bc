//! Blocks carried inside announcements: applied with no request when their parents are here,
//! fetched as usual otherwise. Two replicas over real RocksDB, messages passed by hand.

use canopy_crdt::sync::{Effect, Message, Replicator, SyncConfig};
use canopy_crdt::{Store, StoreOptions, Topic};

struct Replica {
    sync: Replicator<u32>,
    topic: Topic,
    _dir: tempfile::TempDir,
}

fn replica(config: SyncConfig) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions { cache_bytes: 1 << 20, ..StoreOptions::default() }).unwrap();
    let mut sync = Replicator::new(store, config);
    let topic = sync.subscribe("t").unwrap();
    Replica { sync, topic, _dir: dir }
}

/// The announcement among `effects`.
fn announcement(effects: Vec<Effect<u32>>) -> Message {
    effects
        .into_iter()
        .find_map(|effect| match effect {
            Effect::Publish { message: message @ Message::Heads { .. }, .. } => Some(message),
            _ => None,
        })
        .expect("an announcement")
}

fn inline_count(message: &Message) -> usize {
    match message {
        Message::Heads { blocks, .. } => blocks.len(),
        _ => unreachable!("announcements only"),
    }
}

/// The requests among `effects`.
fn requests(effects: &[Effect<u32>]) -> Vec<Message> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Send { message: message @ Message::Want { .. }, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

/// Plays `requests` from `to` against `from` until `to` asks for nothing more and has applied
/// every answer.
fn serve(from: &mut Replica, to: &mut Replica, mut pending: Vec<Message>) {
    while let Some(request) = pending.pop() {
        for effect in from.sync.handle(0, 2, request).unwrap() {
            if let Effect::Send { message, .. } = effect {
                pending.extend(requests(&to.sync.handle(0, 1, message).unwrap()));
            }
        }
    }
    to.sync.settle().unwrap();
}

#[test]
fn an_announced_commit_is_applied_without_a_request() {
    let mut writer = replica(SyncConfig::default());
    let mut reader = replica(SyncConfig::default());
    let commit = writer.topic.put("k", "v").unwrap();
    let message = announcement(writer.sync.announce_commits("t", &[commit.cid]));
    assert_eq!(inline_count(&message), 1);
    // Through its wire form, as a peer gets it.
    let effects = reader.sync.handle_bytes(0, 1, &message.encode()).unwrap();
    assert!(requests(&effects).is_empty(), "nothing to fetch: {effects:?}");
    assert_eq!(reader.topic.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(reader.topic.heads(), writer.topic.heads());
    assert_eq!(reader.sync.stats().blocks_inline, 1);
    assert_eq!(reader.sync.fetches(), 0);

    // Commits coalesced into one announcement travel together and apply in one go.
    let commits: Vec<_> = (0..5).map(|i| writer.topic.put(format!("k{i}"), "v").unwrap().cid).collect();
    let message = announcement(writer.sync.announce_commits("t", &commits));
    assert_eq!(inline_count(&message), 5);
    assert!(requests(&reader.sync.handle(0, 1, message).unwrap()).is_empty());
    assert_eq!(reader.topic.key_count(), 6);
    assert_eq!(reader.sync.stats().blocks_inline, 6);

    // Re-announcements carry no blocks.
    assert_eq!(inline_count(&announcement(writer.sync.announce("t"))), 0);
}

#[test]
fn an_announcement_above_a_missing_parent_falls_back_to_a_fetch() {
    let mut writer = replica(SyncConfig::default());
    let mut reader = replica(SyncConfig::default());
    writer.topic.put("first", "1").unwrap();
    let second = writer.topic.put("second", "2").unwrap();
    // The reader missed the first announcement: the second's block waits for its parent.
    let message = announcement(writer.sync.announce_commits("t", &[second.cid]));
    let effects = reader.sync.handle(0, 1, message).unwrap();
    let wants = requests(&effects);
    assert_eq!(wants.len(), 1, "the missing parent is fetched: {effects:?}");
    assert_eq!(reader.topic.get(b"second").unwrap(), None, "not applied above a gap");
    serve(&mut writer, &mut reader, wants);
    assert_eq!(reader.topic.get(b"first").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(reader.topic.get(b"second").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(reader.topic.heads(), writer.topic.heads());
}

#[test]
fn a_commit_larger_than_the_inline_bound_is_fetched() {
    let config = SyncConfig { inline_bytes_max: 1024, ..SyncConfig::default() };
    let mut writer = replica(config.clone());
    let mut reader = replica(config);
    let small = writer.topic.put("small", "v").unwrap();
    let large = writer.topic.put("large", vec![7u8; 4096]).unwrap();
    let message = announcement(writer.sync.announce_commits("t", &[small.cid, large.cid]));
    assert_eq!(inline_count(&message), 1, "the small commit fits, the large one does not");
    let wants = requests(&reader.sync.handle(0, 1, message).unwrap());
    assert_eq!(reader.topic.get(b"small").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(wants.len(), 1, "the large block is fetched");
    serve(&mut writer, &mut reader, wants);
    assert_eq!(reader.topic.get(b"large").unwrap().map(|v| v.len()), Some(4096));

    let off = SyncConfig { inline_bytes_max: 0, ..SyncConfig::default() };
    let mut quiet = replica(off);
    let commit = quiet.topic.put("k", "v").unwrap();
    assert_eq!(inline_count(&announcement(quiet.sync.announce_commits("t", &[commit.cid]))), 0);
}

#[test]
fn a_corrupt_inline_block_is_refused_and_fetched_instead() {
    let mut writer = replica(SyncConfig::default());
    let mut reader = replica(SyncConfig::default());
    let commit = writer.topic.put("k", "v").unwrap();
    let mut message = announcement(writer.sync.announce_commits("t", &[commit.cid]));
    let plain = match &mut message {
        Message::Heads { topic, heads, blocks, .. } => {
            *blocks[0].bytes.last_mut().unwrap() ^= 0x55;
            Message::Heads { topic: topic.clone(), heads: heads.clone(), blocks: Vec::new(), unawaited: false }
        }
        _ => unreachable!("announcements only"),
    };
    // Gossip arrives signed and intact: a corrupt block was sent so. The announcement is dropped
    // and its sender penalised; nothing is asked of it.
    let effects = reader.sync.handle(0, 1, message).unwrap();
    assert!(matches!(&effects[..], [Effect::Penalize { peer: 1, .. }]), "{effects:?}");
    assert_eq!(reader.sync.stats().blocks_rejected, 1);
    assert_eq!(reader.sync.stats().blocks_inline, 0);
    assert_eq!(reader.topic.get(b"k").unwrap(), None);
    // The head is fetched once an honest peer announces it (here, the writer's re-announcement).
    let wants = requests(&reader.sync.handle(0, 1, plain).unwrap());
    assert_eq!(wants.len(), 1, "the head is fetched from the announcer");
    serve(&mut writer, &mut reader, wants);
    assert_eq!(reader.topic.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_re_announcement_waits_briefly_for_the_announcement_of_a_fresh_commit() {
    let mut writer = replica(SyncConfig::default());
    // A commit the node has not announced yet: a re-announcement falling due now would give
    // peers its head without its block, and they would fetch it.
    let commit = writer.topic.put("k", "v").unwrap();
    assert!(writer.sync.tick(0).is_empty(), "the re-announcement waits");
    let message = announcement(writer.sync.announce_commits("t", &[commit.cid]));
    assert_eq!(inline_count(&message), 1, "the commit's own announcement carries its block");
    assert!(writer.sync.tick(60).is_empty(), "nothing more is due: the heads were just announced");

    // Heads that changed with nobody announcing them go out after the short wait.
    writer.topic.put("k2", "v").unwrap();
    let later = 10_000;
    let effects = writer.sync.tick(later);
    assert!(effects.is_empty(), "{effects:?}");
    let message = announcement(writer.sync.tick(later + 50));
    assert_eq!(inline_count(&message), 0);
    match message {
        Message::Heads { heads, .. } => assert_eq!(heads, writer.topic.heads()),
        _ => unreachable!("announcements only"),
    }
}

#[test]
fn a_receiver_announces_its_heads_at_once_only_when_a_writer_waits_for_copies() {
    let mut writer = replica(SyncConfig::default());
    let mut reader = replica(SyncConfig::default());
    let published = |effects: &[Effect<u32>]| effects.iter().filter(|e| matches!(e, Effect::Publish { .. })).count();

    let first = writer.topic.put("k", "v").unwrap();
    let message = announcement(writer.sync.announce_commits_awaited("t", &[first.cid], false));
    let effects = reader.sync.handle_bytes(0, 1, &message.encode()).unwrap();
    assert_eq!(reader.topic.heads(), writer.topic.heads(), "the carried block is applied all the same");
    assert_eq!(published(&effects), 0, "no writer waits, so nothing goes out at once: {effects:?}");

    let second = writer.topic.put("k", "w").unwrap();
    let message = announcement(writer.sync.announce_commits_awaited("t", &[second.cid], true));
    // An awaited announcement encodes as announcements always have, so earlier versions read it.
    assert!(!String::from_utf8_lossy(&message.encode()).contains("unawaited"));
    let effects = reader.sync.handle_bytes(100, 1, &message.encode()).unwrap();
    assert_eq!(reader.topic.heads(), writer.topic.heads());
    match &effects[..] {
        [Effect::Publish { message: Message::Heads { heads, .. }, .. }] => assert_eq!(heads, &reader.topic.heads()),
        other => panic!("a writer waits, so the reader's heads go out at once: {other:?}"),
    }
}
