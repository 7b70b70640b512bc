//! Write access over real RocksDB: signed blocks, owned topics, refusals of local writes and of
//! received blocks, and the sync replies to peers that send refused blocks.

use crate::common;

use canopy_crdt::sync::{Effect, Message, Replicator, SyncConfig, WireBlock};
use canopy_crdt::{
    Access, Block, Delta, Mode, OpenError, Signer, Store, StoreOptions, TopicError, WriteError, validate_blocks,
};
use common::serve;

fn store(dir: &tempfile::TempDir, name: &str, author: &Signer) -> Store {
    let options = StoreOptions { cache_bytes: 1 << 20, author: Some(author.clone()), ..StoreOptions::default() };
    Store::open(dir.path().join(name), options).unwrap()
}

fn owner() -> Signer {
    Signer::from_secret([1; 32])
}

fn follower() -> Signer {
    Signer::from_secret([2; 32])
}

fn blog() -> String {
    Access::topic_name(Mode::Owned, &owner().author(), "microblog").unwrap()
}

/// A block of `topic` by `signer` that adds `key`, above `parents`.
fn post(topic: &str, signer: &Signer, parents: Vec<canopy_crdt::Cid>, height: u64, key: &str) -> Block {
    let delta =
        Delta { adds: vec![(key.as_bytes().to_vec(), b"forged".to_vec())], removes: vec![], ..Default::default() };
    Block::build(topic, parents, height, delta.encode(), signer).unwrap()
}

fn wire(block: &Block) -> WireBlock {
    WireBlock { cid: block.cid(), bytes: serde_bytes::ByteBuf::from(block.bytes().to_vec()) }
}

#[test]
fn only_the_owner_writes_an_owned_topic_and_followers_apply_its_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let author = store(&dir, "owner", &owner()).topic(&blog()).unwrap();
    let reader = store(&dir, "follower", &follower()).topic(&blog()).unwrap();
    assert_eq!(author.access(), Access::Owned { owner: owner().author() });

    let commit = author.put("post/1", "hello").unwrap();
    let refused = reader.put("post/1", "rewritten");
    assert!(matches!(refused, Err(WriteError::Forbidden(_))), "{refused:?}");
    let message = refused.unwrap_err().to_string();
    assert!(message.contains(&owner().author().to_string()), "the refusal names the owner: {message}");

    let bytes = author.block(&commit.cid).unwrap().unwrap();
    let blocks: Vec<Block> =
        validate_blocks(&blog(), vec![(commit.cid, bytes)]).into_iter().map(Result::unwrap).collect();
    assert_eq!(blocks[0].author(), owner().author());
    let outcome = reader.ingest(blocks).unwrap();
    assert_eq!((outcome.applied, outcome.refused), (1, 0));
    assert_eq!(reader.get(b"post/1").unwrap().as_deref(), Some(&b"hello"[..]));
}

#[test]
fn blocks_by_other_authors_are_refused_with_everything_built_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let author = store(&dir, "owner", &owner()).topic(&blog()).unwrap();
    let root = author.put("post/1", "hello").unwrap();

    // Well signed, but by an author the topic does not admit, above the owner's real head.
    let forged = post(&blog(), &follower(), vec![root.cid], root.height + 1, "post/1");
    let child = post(&blog(), &owner(), vec![forged.cid()], root.height + 2, "post/2");
    let outcome = author.ingest(vec![forged.clone(), child.clone()]).unwrap();
    assert_eq!((outcome.applied, outcome.refused, outcome.rejected.len()), (0, 1, 2), "{outcome:?}");
    assert_eq!(author.get(b"post/1").unwrap().as_deref(), Some(&b"hello"[..]));
    assert_eq!(author.get(b"post/2").unwrap(), None);
    assert_eq!(author.heads().len(), 1);
    // Known bad: an announcement naming it leads nowhere.
    assert!(author.unknown(vec![forged.cid(), child.cid()], 8).unwrap().is_empty());

    // An open topic admits every well-signed author.
    let open = store(&dir, "open", &owner()).topic("board").unwrap();
    let note = post("board", &follower(), vec![], 1, "note");
    assert_eq!(open.ingest(vec![note]).unwrap().applied, 1);
}

#[test]
fn a_block_signed_for_one_topic_is_invalid_in_another() {
    let other = Access::topic_name(Mode::Owned, &owner().author(), "drafts").unwrap();
    let block = post(&other, &owner(), vec![], 1, "draft");
    let results = validate_blocks(&blog(), vec![(block.cid(), block.bytes().to_vec())]);
    let error = results.into_iter().next().unwrap().unwrap_err();
    assert!(error.to_string().contains("not signed"), "{error}");
}

#[test]
fn topic_names_carry_a_valid_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir, "s", &owner());
    assert!(matches!(store.topic("nobody/microblog"), Err(TopicError::InvalidName { .. })));
    let name = Access::topic_name(Mode::Owned, &store.author(), "microblog").unwrap();
    assert_eq!(store.topic(&name).unwrap().access().owner(), Some(owner().author()));
}

#[test]
fn peers_sending_refused_blocks_are_penalised_and_nothing_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut sync = Replicator::new(store(&dir, "owner", &owner()), SyncConfig::default());
    let topic = sync.subscribe(&blog()).unwrap();
    let root = topic.put("post/1", "hello").unwrap();

    // An announcement carrying a forged post: dropped, and its sender penalised.
    let forged = post(&blog(), &follower(), vec![root.cid], root.height + 1, "post/1");
    let heads = vec![canopy_crdt::Head { cid: forged.cid(), height: forged.height() }];
    let announcement =
        Message::Heads { topic: blog(), heads: heads.clone(), blocks: vec![wire(&forged)], unawaited: false };
    let effects = sync.handle_bytes(0, 7u32, &announcement.encode()).unwrap();
    assert!(matches!(&effects[..], [Effect::Penalize { peer: 7, .. }]), "{effects:?}");
    assert_eq!(sync.stats().blocks_refused, 1);
    assert_eq!(topic.get(b"post/1").unwrap().as_deref(), Some(&b"hello"[..]));

    // Announced again without the block: the head is known to be refused, nothing is fetched.
    let bare = Message::Heads { topic: blog(), heads, blocks: Vec::new(), unawaited: false };
    let effects = sync.handle_bytes(0, 8u32, &bare.encode()).unwrap();
    assert!(effects.is_empty(), "{effects:?}");

    // A forged block served in answer to a request for a head the peer announced.
    let other = post(&blog(), &follower(), vec![root.cid], root.height + 1, "post/9");
    let announced = Message::Heads {
        topic: blog(),
        heads: vec![canopy_crdt::Head { cid: other.cid(), height: other.height() }],
        blocks: Vec::new(),
        unawaited: false,
    };
    let effects = sync.handle_bytes(0, 9u32, &announced.encode()).unwrap();
    let id = match &effects[..] {
        [Effect::Send { to: 9, message: Message::Want { id, .. } }] => *id,
        other => panic!("a request for the announced head: {other:?}"),
    };
    let answer = Message::Blocks {
        topic: blog(),
        id,
        blocks: vec![wire(&other)],
        more: false,
        frontier: Vec::new(),
        snapshots: Vec::new(),
        snapshot_pending: false,
    };
    let mut effects = sync.handle_bytes(0, 9u32, &answer.encode()).unwrap();
    effects.extend(sync.settle().unwrap());
    assert!(effects.iter().any(|e| matches!(e, Effect::Penalize { peer: 9, .. })), "{effects:?}");
    assert_eq!(sync.stats().blocks_refused, 2);
    assert_eq!(sync.fetches(), 0);
    assert_eq!(topic.get(b"post/9").unwrap(), None);
}

/// Drops `store` and waits until its database is closed.
fn close(store: Store) {
    let closed = store.closed();
    drop(store);
    let _ = closed.recv();
}

#[test]
fn a_data_directory_of_another_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    store.topic("t").unwrap().put("k", "v").unwrap();
    let author = store.author();
    close(store);
    // Reopened: same format, same stored author.
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.author(), author);
    close(store);

    // A directory written before blocks were signed has applied blocks and no format record.
    {
        let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, families).unwrap();
        db.delete_cf(db.cf_handle("meta").unwrap(), b"format").unwrap();
    }
    match Store::open(&path, StoreOptions::default()) {
        Err(error @ OpenError::Format { found: 1, expected: 4 }) => {
            assert!(error.to_string().contains("new data directory"), "the error says what to do: {error}")
        }
        other => panic!("format 1 must be refused: {:?}", other.err()),
    }
}

#[test]
fn an_owned_topic_merges_only_its_owners_snapshots() {
    const OWNER: u32 = 10;
    const FIRST: u32 = 11;
    let dir = tempfile::tempdir().unwrap();
    let peers = |peer: &u32| match *peer {
        OWNER => Some(owner().author()),
        FIRST => Some(follower().author()),
        _ => None,
    };
    let sync = |name: &str, signer: &Signer| {
        let mut sync = Replicator::new(store(&dir, name, signer), SyncConfig::default()).with_peer_authors(peers);
        let topic = sync.subscribe(&blog()).unwrap();
        (sync, topic)
    };
    let (mut author, posts) = sync("owner", &owner());
    for i in 0..20 {
        posts.put(format!("post/{i}"), "text").unwrap();
    }
    posts.compact().unwrap();
    let announce = |sync: &mut Replicator<u32>| match sync.announce(&blog()).pop() {
        Some(Effect::Publish { message, .. }) => message,
        other => panic!("an announcement: {other:?}"),
    };

    // The first follower takes the owner's snapshot, then compacts its own copy.
    let (mut first, copy) = sync("first", &follower());
    let effects = first.handle(0, OWNER, announce(&mut author)).unwrap();
    serve(&mut author, &mut first, OWNER, effects);
    assert_eq!(first.stats().snapshots_merged, 1);
    assert_eq!(copy.key_count(), 20);
    copy.compact().unwrap();

    // A newcomer is offered the first follower's snapshot: not the owner's, so not merged.
    let (mut newcomer, fresh) = sync("newcomer", &Signer::from_secret([5; 32]));
    let effects = newcomer.handle(0, FIRST, announce(&mut first)).unwrap();
    serve(&mut first, &mut newcomer, FIRST, effects);
    assert_eq!(newcomer.stats().snapshots_refused, 1);
    assert_eq!(newcomer.stats().snapshots_merged, 0);
    assert_eq!(fresh.key_count(), 0);
    assert_eq!(newcomer.fetches(), 0);
    // From the owner it is.
    let effects = newcomer.handle(0, OWNER, announce(&mut author)).unwrap();
    serve(&mut author, &mut newcomer, OWNER, effects);
    assert_eq!(newcomer.stats().snapshots_merged, 1);
    assert_eq!(fresh.key_count(), 20);
    assert_eq!(fresh.heads(), posts.heads());
}

#[test]
fn a_data_directory_from_before_the_newer_column_families_opens_and_is_inspected_once_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    store.topic("t").unwrap().put("k", "v").unwrap();
    close(store);
    {
        let families = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).unwrap();
        let mut db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, families).unwrap();
        db.drop_cf("expiries").unwrap();
        db.drop_cf("history").unwrap();
    }
    match canopy_crdt::inspect::Inspector::open(&path) {
        Err(error) => assert!(error.to_string().contains("older canopy"), "the error says what to do: {error}"),
        Ok(_) => panic!("an inspector cannot read families that are not there"),
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    assert_eq!(store.topic("t").unwrap().get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    close(store);
    assert!(canopy_crdt::inspect::Inspector::open(&path).is_ok());
}

#[test]
fn in_a_keyed_topic_each_author_writes_only_its_own_entries_on_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let topic = Access::topic_name(Mode::Keyed, &owner().author(), "members").unwrap();
    let alice = store(&dir, "alice", &owner()).topic(&topic).unwrap();
    let bob = store(&dir, "bob", &follower()).topic(&topic).unwrap();
    let alice_id = owner().author().to_string();
    let bob_id = follower().author().to_string();

    // Locally: one's own entry (and keys under it) are written, another's is refused.
    let own = alice.put(alice_id.clone(), "http://a").unwrap();
    alice.put(format!("{alice_id}/service"), "x").unwrap();
    let refused = alice.put(bob_id.clone(), "http://forged");
    assert!(matches!(refused, Err(WriteError::Forbidden(_))), "{refused:?}");
    assert!(alice.put("zzz", "http://forged").is_err());

    // From a peer: a block of Alice's writing Bob's entry is refused by Bob's replica, as it is
    // by every replica, whoever relays it; Alice's own entry is applied.
    let mine = validate_blocks(&topic, vec![(own.cid, alice.block(&own.cid).unwrap().unwrap())]);
    let outcome = bob.ingest(mine.into_iter().map(Result::unwrap).collect()).unwrap();
    assert_eq!((outcome.applied, outcome.refused), (1, 0));
    let forged = post(&topic, &owner(), vec![own.cid], own.height + 1, &bob_id);
    let outcome = bob.ingest(vec![forged]).unwrap();
    assert_eq!((outcome.applied, outcome.refused), (0, 1));
    assert_eq!(bob.get(bob_id.as_bytes()).unwrap(), None);
    assert_eq!(bob.get(alice_id.as_bytes()).unwrap().as_deref(), Some(&b"http://a"[..]));
    assert!(Access::Keyed.admits_block(&post(&topic, &follower(), vec![], 1, &bob_id)).is_ok());
}
