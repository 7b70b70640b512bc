//! Who may speak for a topic through a snapshot, over real RocksDB with messages passed by hand
//! (and once through the simulator). A snapshot is not signed, and the blocks it covers may be
//! pruned everywhere, so nothing in it can be checked against them: a replica merges an open
//! topic's snapshot only from a snapshot speaker (a cluster member), an owned topic's only from
//! its owner. A peer outside the speakers that offers a well-made snapshot lying about a block
//! it covers is refused, and the replica converges with the honest ones.

use crate::common;

use std::collections::BTreeMap;

use canopy_crdt::sim::{Cluster, reference_state};
use canopy_crdt::snapshot::{Chunk, ChunkWriter, Manifest, SnapshotElement};
use canopy_crdt::sync::{Effect, Message, Replicator, SyncConfig, WireBlock};
use canopy_crdt::{Access, AuthorId, Batch, Cid, Mode, Signer, Store, StoreOptions, Topic};
use common::{sends, serve};

/// Writes and compacts.
const WRITER: u32 = 1;
/// Writes concurrently with the writer, and keeps every block.
const HOLDER: u32 = 2;
/// Serves a snapshot that lies; known by its key, but no cluster member.
const LIAR: u32 = 3;
/// An honest peer whose author the replicas cannot tell.
const STRANGER: u32 = 4;
/// Replicas that catch up.
const FRESH: u32 = 5;
const SECOND: u32 = 6;
/// A replica that lets every peer speak for an open topic.
const CONTROL: u32 = 7;

/// The open topic of these tests.
const TOPIC: &str = "t";

/// A replica's sync and its handle of the topic.
type Replica = (Replicator<u32>, Topic);

fn signer(peer: u32) -> Signer {
    Signer::from_secret([peer as u8; 32])
}

/// The author each peer is, as an authenticated transport tells: every peer's but the stranger's.
fn author_of(peer: &u32) -> Option<AuthorId> {
    (*peer != STRANGER).then(|| signer(*peer).author())
}

/// A replica signing as `peer`'s key, subscribed to `topic`, that takes snapshots of open topics
/// from `speakers` only (from every peer when `None`). Announcements carry no blocks, so every
/// head is fetched; compaction happens only when a test asks.
fn replica(dir: &tempfile::TempDir, peer: u32, topic: &str, speakers: Option<&[u32]>) -> Replica {
    let options = StoreOptions {
        cache_bytes: 1 << 20,
        author: Some(signer(peer)),
        compact_after_blocks: 0,
        compact_after_bytes: 0,
        snapshot_retain_ms: None,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path().join(format!("replica-{peer}")), options).unwrap();
    let mut sync = Replicator::new(store, SyncConfig { inline_bytes_max: 0, ..SyncConfig::default() })
        .with_peer_authors(author_of);
    if let Some(speakers) = speakers {
        let authors: Vec<AuthorId> = speakers.iter().map(|peer| signer(*peer).author()).collect();
        sync = sync.with_snapshot_speakers(move |author| authors.contains(author));
    }
    let handle = sync.subscribe(topic).unwrap();
    (sync, handle)
}

/// `sync`'s announcement of `topic`'s heads.
fn announcement(sync: &mut Replicator<u32>, topic: &str) -> Message {
    match sync.announce(topic).pop() {
        Some(Effect::Publish { message, .. }) => message,
        other => panic!("an announcement: {other:?}"),
    }
}

/// Every key and visible value of `topic`.
fn contents(topic: &Topic) -> BTreeMap<Vec<u8>, Vec<u8>> {
    topic.query(b"", None, 10_000).unwrap().entries.into_iter().collect()
}

/// `to` hears `from`'s heads from `peer` and fetches them from `from`.
fn catch_up(from: &mut Replicator<u32>, to: &mut Replicator<u32>, peer: u32, topic: &str) {
    let effects = to.handle(0, peer, announcement(from, topic)).unwrap();
    serve(from, to, peer, effects);
}

/// An open topic written by two replicas: the writer's keys `k0`..`k9` and `c`, and the
/// holder's concurrent block Y, which writes `c` (losing to the writer's, higher) and `y`. Both
/// replicas end with every block; the writer compacts, pruning all of them. Returns the
/// writer, the holder, the snapshot and Y.
fn history(dir: &tempfile::TempDir) -> (Replica, Replica, Cid, Cid) {
    let (mut writer, written) = replica(dir, WRITER, TOPIC, None);
    let (mut holder, held) = replica(dir, HOLDER, TOPIC, None);
    for i in 0..10 {
        written.put(format!("k{i}"), format!("v{i}")).unwrap();
    }
    written.put("c", "from-writer").unwrap();
    let mut batch = Batch::new();
    batch.put("c", "from-holder");
    batch.put("y", "from-holder");
    let y = held.batch(batch).unwrap().unwrap().cid;
    catch_up(&mut holder, &mut writer, HOLDER, TOPIC);
    catch_up(&mut writer, &mut holder, WRITER, TOPIC);
    assert_eq!(written.heads(), held.heads());
    assert_eq!(written.get(b"c").unwrap().as_deref(), Some(&b"from-writer"[..]));
    let snapshot = written.compact().unwrap().snapshot.expect("a snapshot");
    assert!(written.block(&y).unwrap().is_none(), "the writer pruned every block");
    ((writer, written), (holder, held), snapshot, y)
}

/// How a made-up snapshot lies about one covered block.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// The block's writes are left out.
    LeaveOut,
    /// The block's writes are there at a height above the winning one.
    Raise,
}

/// A snapshot made up from an honest one: the same heads and covered blocks, every part well
/// encoded and named by its hash, but the chunks lie about `block`'s writes.
struct LyingSnapshot {
    manifest: Cid,
    parts: BTreeMap<Cid, Vec<u8>>,
}

fn make_lie(honest: &Topic, snapshot: Cid, block: Cid, lie: Lie) -> LyingSnapshot {
    let part = |cid: &Cid| honest.snapshot_part(cid).unwrap().expect("the snapshot's parts are held");
    let manifest = Manifest::decode(&snapshot, &part(&snapshot)).unwrap();
    let chunks: Vec<Chunk> = manifest.chunks.iter().map(|cid| Chunk::decode(cid, &part(cid)).unwrap()).collect();
    let mut elements: Vec<SnapshotElement> = Vec::new();
    for element in chunks.iter().flat_map(|chunk| &chunk.elements) {
        match lie {
            Lie::LeaveOut if element.id == block => {}
            Lie::Raise if element.id == block => elements.push(SnapshotElement { height: 100, ..element.clone() }),
            _ => elements.push(element.clone()),
        }
    }
    // By key, best first within a key: a raised element goes first.
    elements.sort_by(|a, b| a.key.cmp(&b.key).then((&b.height, &b.value, &b.id).cmp(&(&a.height, &a.value, &a.id))));
    let mut parts = BTreeMap::new();
    let mut writer = ChunkWriter::new(|cid, bytes| {
        parts.insert(cid, bytes);
    });
    elements.into_iter().for_each(|element| writer.element(element));
    for (id, key) in chunks.iter().flat_map(|chunk| &chunk.removes) {
        writer.remove(*id, key.clone());
    }
    for (cid, height) in chunks.iter().flat_map(|chunk| &chunk.blocks) {
        writer.block(*cid, *height);
    }
    let (cid, bytes) = writer.finish(&manifest.topic, manifest.heads.clone()).encode();
    parts.insert(cid, bytes);
    assert_ne!(cid, snapshot, "the lie differs from the honest snapshot");
    LyingSnapshot { manifest: cid, parts }
}

/// Plays the requests among `effects` against the liar, which answers every want with its
/// snapshot (as if it had pruned the blocks) and every request for parts with them, until
/// `client` asks for nothing more.
fn serve_lie(lie: &LyingSnapshot, client: &mut Replicator<u32>, effects: Vec<Effect<u32>>) {
    let mut pending = sends(effects);
    while let Some(request) = pending.pop() {
        let answer = match request {
            Message::Want { topic, id, .. } => Message::Blocks {
                topic,
                id,
                blocks: Vec::new(),
                more: false,
                frontier: Vec::new(),
                snapshots: vec![lie.manifest],
                snapshot_pending: false,
            },
            Message::WantParts { topic, id, cids } => {
                let parts = cids
                    .iter()
                    .filter_map(|cid| Some(WireBlock { cid: *cid, bytes: lie.parts.get(cid)?.clone().into() }))
                    .collect();
                Message::Parts { topic, id, parts }
            }
            other => panic!("a request: {other:?}"),
        };
        pending.extend(sends(client.handle(0, LIAR, answer).unwrap()));
    }
    client.settle().unwrap();
}

fn a_lie_is_refused_and_the_replica_converges(lie: Lie) {
    let dir = tempfile::tempdir().unwrap();
    let ((mut writer, written), (mut holder, held), snapshot, y) = history(&dir);
    let lying = make_lie(&written, snapshot, y, lie);
    let honest = contents(&written);

    // The lie is well made: a replica that lets every peer speak for an open topic merges it,
    // believes it holds every block, and never gets Y's writes right.
    let (mut control, misled) = replica(&dir, CONTROL, TOPIC, None);
    let effects = control.handle(0, LIAR, announcement(&mut writer, TOPIC)).unwrap();
    serve_lie(&lying, &mut control, effects);
    assert_eq!(control.stats().snapshots_merged, 1, "{lie:?}");
    assert_eq!(misled.heads(), written.heads());
    assert_ne!(contents(&misled), honest, "{lie:?}");
    assert!(sends(control.handle(0, HOLDER, announcement(&mut holder, TOPIC)).unwrap()).is_empty());
    assert_ne!(contents(&misled), honest, "{lie:?}: nothing repairs the lie");

    // A replica whose speakers are the writer and the holder refuses it: the fetch from the
    // liar ends, nothing is merged.
    let (mut fresh, copy) = replica(&dir, FRESH, TOPIC, Some(&[WRITER, HOLDER]));
    let effects = fresh.handle(0, LIAR, announcement(&mut writer, TOPIC)).unwrap();
    serve_lie(&lying, &mut fresh, effects);
    assert_eq!(fresh.stats().snapshots_refused, 1, "{lie:?}");
    assert_eq!(fresh.stats().snapshots_merged, 0);
    assert_eq!(fresh.fetches(), 0, "the fetch from the liar is abandoned");
    assert!(copy.heads().is_empty() && copy.key_count() == 0);
    // It catches up from the holder's blocks and from the writer's snapshot alike.
    catch_up(&mut holder, &mut fresh, HOLDER, TOPIC);
    assert_eq!(copy.heads(), written.heads());
    assert_eq!(contents(&copy), honest);
    assert_eq!(contents(&held), honest);
    let (mut second, other_copy) = replica(&dir, SECOND, TOPIC, Some(&[WRITER, HOLDER]));
    catch_up(&mut writer, &mut second, WRITER, TOPIC);
    assert_eq!(second.stats().snapshots_merged, 1);
    assert_eq!(other_copy.heads(), written.heads());
    assert_eq!(contents(&other_copy), honest);
    assert_eq!(copy.key_count(), honest.len() as u64);
}

#[test]
fn a_snapshot_leaving_out_a_covered_blocks_writes_from_a_peer_outside_the_speakers_is_refused() {
    a_lie_is_refused_and_the_replica_converges(Lie::LeaveOut);
}

#[test]
fn a_snapshot_giving_a_covered_element_another_height_from_a_peer_outside_the_speakers_is_refused() {
    a_lie_is_refused_and_the_replica_converges(Lie::Raise);
}

#[test]
fn a_speakers_snapshot_bootstraps_a_fresh_replica_when_every_holder_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let ((mut writer, written), (mut holder, held), _, _) = history(&dir);
    let (mut stranger, strangers) = replica(&dir, STRANGER, TOPIC, None);
    catch_up(&mut holder, &mut stranger, HOLDER, TOPIC);
    held.compact().unwrap();
    strangers.compact().unwrap();
    let honest = contents(&written);
    assert_eq!(contents(&strangers), honest);

    // Only the holder speaks for the topic here: the stranger's snapshot (an honest one, but
    // from a peer whose author is unknown) and the writer's are refused, the holder's merged.
    let (mut fresh, copy) = replica(&dir, FRESH, TOPIC, Some(&[HOLDER]));
    catch_up(&mut stranger, &mut fresh, STRANGER, TOPIC);
    catch_up(&mut writer, &mut fresh, WRITER, TOPIC);
    assert_eq!(fresh.stats().snapshots_refused, 2);
    assert_eq!((fresh.fetches(), copy.key_count()), (0, 0));
    catch_up(&mut holder, &mut fresh, HOLDER, TOPIC);
    assert_eq!(fresh.stats().snapshots_merged, 1);
    assert_eq!(copy.heads(), written.heads());
    assert_eq!(contents(&copy), honest);

    // Blocks written after the compactions follow as usual.
    written.put("after", "compaction").unwrap();
    catch_up(&mut writer, &mut fresh, WRITER, TOPIC);
    assert_eq!(copy.get(b"after").unwrap().as_deref(), Some(&b"compaction"[..]));
    assert_eq!(copy.heads(), written.heads());
}

#[test]
fn speakers_do_not_speak_for_an_owned_topic_only_its_owner_does() {
    let dir = tempfile::tempdir().unwrap();
    let blog = Access::topic_name(Mode::Owned, &signer(WRITER).author(), "blog").unwrap();
    let (mut owner, posts) = replica(&dir, WRITER, &blog, None);
    for i in 0..10 {
        posts.put(format!("post/{i}"), "text").unwrap();
    }
    posts.compact().unwrap();
    let (mut follower, copy) = replica(&dir, HOLDER, &blog, None);
    catch_up(&mut owner, &mut follower, WRITER, &blog);
    copy.compact().unwrap();

    // The follower is a speaker, but no owner: its snapshot of the owned topic is refused.
    let (mut fresh, fresh_copy) = replica(&dir, FRESH, &blog, Some(&[HOLDER]));
    catch_up(&mut follower, &mut fresh, HOLDER, &blog);
    assert_eq!((fresh.stats().snapshots_refused, fresh.stats().snapshots_merged), (1, 0));
    assert_eq!(fresh_copy.key_count(), 0);
    // The owner's is merged, though the owner is no speaker.
    catch_up(&mut owner, &mut fresh, WRITER, &blog);
    assert_eq!(fresh.stats().snapshots_merged, 1);
    assert_eq!(contents(&fresh_copy), contents(&posts));
}

/// The simulator's hostile participants make up snapshots of real blocks they overhear and offer
/// them to replicas that lack those blocks (here, a replica cut off from the writers): the
/// replicas refuse them and converge once the partition heals.
#[test]
fn replicas_refuse_the_simulators_lying_snapshots_and_converge() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), 3, &[TOPIC.to_string()], 11).unwrap();
    cluster.add_adversaries(1);
    cluster.partition(vec![0, 0, 1]);
    for i in 0..40 {
        cluster.put(i % 2, TOPIC, format!("k{i}").as_bytes(), b"v").unwrap();
        cluster.run_for(200).unwrap();
    }
    let (refused, merged) = (cluster.snapshots_refused(), cluster.snapshots_merged());
    cluster.silence_adversaries();
    cluster.heal();
    cluster.run_until_quiet(200_000).unwrap();
    let reference = reference_state(&cluster.all_blocks(TOPIC).unwrap());
    // The adversary's own writes to an open topic are accepted; every write of the replicas is
    // there too.
    assert!((0..40).all(|i| reference.contains_key(format!("k{i}").as_bytes())));
    for replica in 0..3 {
        assert_eq!(cluster.dump(replica, TOPIC).unwrap(), reference, "replica {replica}");
    }
    assert!(refused > 0, "replica 2 was offered lies about the blocks it lacked");
    assert_eq!(merged, 0);
}
