//! Writer lists over real RocksDB: grants and revocations as blocks of the topic, decided on each
//! block's causal past, the same on every replica whatever the delivery order, and carried by
//! snapshots.

use std::collections::BTreeMap;

use canopy_crdt::snapshot::Manifest;
use canopy_crdt::{
    Access, AuthorId, Block, Cid, Delta, Mode, Refusal, Signer, Store, StoreOptions, Topic, WriteError, validate_blocks,
};

fn store(dir: &tempfile::TempDir, name: &str, author: &Signer) -> Store {
    let options = StoreOptions {
        cache_bytes: 1 << 20,
        author: Some(author.clone()),
        compact_after_blocks: 0,
        compact_after_bytes: 0,
        snapshot_retain_ms: None,
        ..StoreOptions::default()
    };
    Store::open(dir.path().join(name), options).unwrap()
}

fn owner() -> Signer {
    Signer::from_secret([1; 32])
}

fn writer() -> Signer {
    Signer::from_secret([2; 32])
}

fn stranger() -> Signer {
    Signer::from_secret([3; 32])
}

fn team() -> String {
    Access::topic_name(Mode::Writers, &owner().author(), "team").unwrap()
}

/// Hands the blocks `cids` of `from` to `to`, as a peer would send them; returns
/// `(applied, refused)`.
fn ship(from: &Topic, to: &Topic, cids: &[Cid]) -> (usize, usize) {
    let raw: Vec<(Cid, Vec<u8>)> = cids.iter().map(|cid| (*cid, from.block(cid).unwrap().unwrap())).collect();
    let blocks: Vec<Block> = validate_blocks(from.name(), raw).into_iter().map(Result::unwrap).collect();
    let outcome = to.ingest(blocks).unwrap();
    (outcome.applied, outcome.refused)
}

fn heads(topic: &Topic) -> Vec<Cid> {
    topic.heads().into_iter().map(|head| head.cid).collect()
}

/// A block of `topic` by `signer` carrying `delta`, above `parents`.
fn block(topic: &str, signer: &Signer, parents: &[(Cid, u64)], delta: Delta) -> Block {
    let height = parents.iter().map(|(_, h)| *h).max().unwrap_or(0) + 1;
    Block::build(topic, parents.iter().map(|(cid, _)| *cid).collect(), height, delta.encode(), signer).unwrap()
}

fn put(key: &str) -> Delta {
    Delta { adds: vec![(key.as_bytes().to_vec(), b"v".to_vec())], ..Default::default() }
}

fn contents(topic: &Topic) -> BTreeMap<Vec<u8>, Vec<u8>> {
    topic.query(b"", None, 10_000).unwrap().entries.into_iter().collect()
}

#[test]
fn a_granted_writer_writes_until_a_revocation_it_has_seen() {
    let dir = tempfile::tempdir().unwrap();
    let at_owner = store(&dir, "owner", &owner()).topic(&team()).unwrap();
    let at_writer = store(&dir, "writer", &writer()).topic(&team()).unwrap();
    assert_eq!(at_owner.access(), Access::Writers { owner: owner().author() });

    let refused = at_writer.put("note", "before the grant");
    assert!(matches!(refused, Err(WriteError::Forbidden(Refusal::NotWriter { .. }))), "{refused:?}");

    let grant = at_owner.grant(writer().author()).unwrap().expect("a grant makes a block");
    assert!(at_owner.grant(writer().author()).unwrap().is_none(), "granting twice changes nothing");
    assert_eq!(at_owner.writers().unwrap(), vec![writer().author()]);
    assert_eq!(ship(&at_owner, &at_writer, &[grant.cid]), (1, 0));
    assert_eq!(at_writer.writers().unwrap(), vec![writer().author()]);

    let note = at_writer.put("note", "from the writer").unwrap();
    assert_eq!(ship(&at_writer, &at_owner, &[note.cid]), (1, 0));
    assert_eq!(at_owner.get(b"note").unwrap().as_deref(), Some(&b"from the writer"[..]));

    // The owner revokes; the writer, not having seen it, writes concurrently: that block stands.
    let revoke = at_owner.revoke(writer().author()).unwrap().expect("a revocation makes a block");
    assert!(at_owner.revoke(writer().author()).unwrap().is_none(), "revoking twice changes nothing");
    assert!(at_owner.writers().unwrap().is_empty());
    let concurrent = at_writer.put("late", "concurrent with the revocation").unwrap();
    assert_eq!(ship(&at_writer, &at_owner, &[concurrent.cid]), (1, 0));
    assert_eq!(ship(&at_owner, &at_writer, &[revoke.cid]), (1, 0));
    assert_eq!(at_owner.get(b"late").unwrap().as_deref(), Some(&b"concurrent with the revocation"[..]));

    // Once the writer's heads include the revocation, it may not write, locally or by a block.
    let refused = at_writer.put("after", "after the revocation");
    assert!(matches!(refused, Err(WriteError::Forbidden(Refusal::NotWriter { .. }))), "{refused:?}");
    let parents: Vec<(Cid, u64)> = at_owner.heads().into_iter().map(|h| (h.cid, h.height)).collect();
    let forged = block(&team(), &writer(), &parents, put("after"));
    let outcome = at_owner.ingest(vec![forged]).unwrap();
    assert_eq!((outcome.applied, outcome.refused), (0, 1), "{outcome:?}");
    assert_eq!(at_owner.get(b"after").unwrap(), None);
    assert_eq!(contents(&at_owner), contents(&at_writer));
}

#[test]
fn only_the_owner_changes_the_list_and_only_in_a_writers_topic() {
    let dir = tempfile::tempdir().unwrap();
    let at_owner = store(&dir, "owner", &owner()).topic(&team()).unwrap();
    let at_stranger = store(&dir, "stranger", &stranger()).topic(&team()).unwrap();
    let granted = at_stranger.grant(stranger().author());
    assert!(matches!(granted, Err(WriteError::Forbidden(Refusal::NotListOwner { .. }))), "{granted:?}");

    // A stranger's block granting itself is refused, and so is its write built on it.
    let grant = Delta { grants: vec![stranger().author()], ..Default::default() };
    let self_grant = block(&team(), &stranger(), &[], grant.clone());
    let write = block(&team(), &stranger(), &[(self_grant.cid(), 1)], put("spam"));
    let outcome = at_owner.ingest(vec![self_grant, write]).unwrap();
    assert_eq!((outcome.applied, outcome.refused, outcome.rejected.len()), (0, 1, 2), "{outcome:?}");
    assert!(at_owner.writers().unwrap().is_empty());

    // A writer's block that changes the list is refused although the writer may write.
    let granted = at_owner.grant(writer().author()).unwrap().unwrap();
    let by_writer = block(&team(), &writer(), &[(granted.cid, granted.height)], grant.clone());
    assert_eq!(at_owner.ingest(vec![by_writer]).unwrap().refused, 1);

    // Topics without a writer list refuse list changes, even the owner's.
    let owned = Access::topic_name(Mode::Owned, &owner().author(), "blog").unwrap();
    let at_blog = store(&dir, "blog", &owner()).topic(&owned).unwrap();
    let change = block(&owned, &owner(), &[], grant);
    assert_eq!(at_blog.ingest(vec![change]).unwrap().refused, 1);
    let granted = at_blog.grant(writer().author());
    assert!(matches!(granted, Err(WriteError::Forbidden(Refusal::NoWriterList))), "{granted:?}");
}

/// The history of one writers topic: a grant, writes, a revocation, a write concurrent with it,
/// and a write over it.
struct History {
    blocks: Vec<Block>,
    /// The one block every replica must refuse.
    refused: Cid,
}

fn history() -> History {
    let topic = team();
    let grant = block(&topic, &owner(), &[], Delta { grants: vec![writer().author()], ..Default::default() });
    let first = block(&topic, &writer(), &[(grant.cid(), 1)], put("first"));
    let owner_put = block(&topic, &owner(), &[(first.cid(), 2)], put("owner"));
    let revoke = block(
        &topic,
        &owner(),
        &[(owner_put.cid(), 3)],
        Delta { revokes: vec![(writer().author(), grant.cid())], ..Default::default() },
    );
    let concurrent = block(&topic, &writer(), &[(owner_put.cid(), 3)], put("concurrent"));
    let merged = block(&topic, &owner(), &[(revoke.cid(), 4), (concurrent.cid(), 4)], put("merged"));
    let after = block(&topic, &writer(), &[(merged.cid(), 5)], put("after"));
    // A second grant concurrent with the revocation keeps the writer on the list above both.
    let regrant = block(
        &topic,
        &owner(),
        &[(owner_put.cid(), 3)],
        Delta { grants: vec![writer().author()], ..Default::default() },
    );
    let refused = after.cid();
    let above_both = block(&topic, &writer(), &[(revoke.cid(), 4), (regrant.cid(), 4)], put("above-both"));
    History { blocks: vec![grant, first, owner_put, revoke, concurrent, merged, after, regrant, above_both], refused }
}

#[test]
fn every_replica_decides_alike_whatever_the_delivery_order() {
    let dir = tempfile::tempdir().unwrap();
    let History { blocks, refused } = history();
    let mut results = Vec::new();
    for (n, order) in
        [vec![0, 1, 2, 3, 4, 5, 6, 7, 8], vec![8, 6, 5, 4, 3, 7, 2, 1, 0], vec![4, 7, 0, 8, 3, 6, 1, 5, 2]]
            .into_iter()
            .enumerate()
    {
        let topic = store(&dir, &format!("replica-{n}"), &stranger()).topic(&team()).unwrap();
        let mut refused_total = 0;
        for i in order {
            let outcome = topic.ingest(vec![blocks[i].clone()]).unwrap();
            refused_total += outcome.refused;
        }
        assert_eq!(refused_total, 1, "replica {n} refuses exactly the write over the revocation");
        assert!(topic.block(&refused).unwrap().is_none());
        let keys: Vec<String> = contents(&topic).keys().map(|k| String::from_utf8(k.clone()).unwrap()).collect();
        assert_eq!(keys, ["above-both", "concurrent", "first", "merged", "owner"], "replica {n}");
        assert_eq!(topic.writers().unwrap(), vec![writer().author()], "the concurrent grant stands");
        results.push((contents(&topic), heads(&topic)));
    }
    assert!(results.windows(2).all(|pair| pair[0] == pair[1]));
}

#[test]
fn a_replica_bootstrapped_from_a_snapshot_judges_later_blocks_alike() {
    let dir = tempfile::tempdir().unwrap();
    let History { blocks, refused } = history();
    let source = store(&dir, "source", &owner()).topic(&team()).unwrap();
    // Everything up to the merge block; the write over the revocation and the regrant come later.
    let early: Vec<Block> = blocks.iter().take(6).cloned().collect();
    assert_eq!(source.ingest(early).unwrap().applied, 6);
    let compaction = source.compact().unwrap();
    assert!(compaction.pruned_blocks >= 6, "{compaction:?}");
    let manifest = compaction.snapshot.unwrap();

    let fresh = store(&dir, "fresh", &stranger()).topic(&team()).unwrap();
    let bytes = source.snapshot_part(&manifest).unwrap().unwrap();
    let mut parts = vec![(manifest, bytes.clone())];
    for chunk in Manifest::decode(&manifest, &bytes).unwrap().chunks {
        parts.push((chunk, source.snapshot_part(&chunk).unwrap().unwrap()));
    }
    fresh.stage_snapshot_parts(&parts).unwrap();
    fresh.merge_snapshot(manifest).unwrap();
    assert!(fresh.writers().unwrap().is_empty(), "revoked at the snapshot's heads");

    // The later blocks: the write over the revocation is refused, the write over a concurrent
    // regrant stands, on the bootstrapped replica as on the source.
    let later: Vec<Block> = blocks[6..].to_vec();
    for topic in [&source, &fresh] {
        let outcome = topic.ingest(later.clone()).unwrap();
        assert_eq!((outcome.applied, outcome.refused), (2, 1), "{outcome:?}");
        assert!(topic.block(&refused).unwrap().is_none());
    }
    assert_eq!(contents(&fresh), contents(&source));
    assert_eq!(fresh.writers().unwrap(), vec![writer().author()]);
}

#[test]
fn the_writer_list_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let topic = store(&dir, "owner", &owner()).topic(&team()).unwrap();
        topic.grant(writer().author()).unwrap();
        topic.grant(stranger().author()).unwrap();
        topic.revoke(stranger().author()).unwrap();
    }
    let topic = store(&dir, "owner", &owner()).topic(&team()).unwrap();
    let expected: Vec<AuthorId> = vec![writer().author()];
    assert_eq!(topic.writers().unwrap(), expected);
}

/// A writer that caught up from the owner's snapshot serves its new block to a replica on
/// another branch: its walk meets a parent it pruned and cannot tell whether the requester has
/// it; the requester, which does, names it as had and gets the block, with no snapshot from a
/// peer it does not take snapshots from.
#[test]
fn a_block_above_a_pruned_parent_reaches_a_replica_that_holds_the_parent() {
    use canopy_crdt::sim::Cluster;
    let dir = tempfile::tempdir().unwrap();
    let seed = 11;
    let topic = Access::topic_name(Mode::Writers, &Cluster::replica_author(seed, 0), "team").unwrap();
    let mut cluster = Cluster::new(dir.path(), 3, std::slice::from_ref(&topic), seed).unwrap();
    cluster.grant(0, &topic, Cluster::replica_author(seed, 1)).unwrap();
    cluster.run_until_quiet(100_000).unwrap();
    // Replica 1 away: the owner writes and compacts; replica 2 holds every block.
    cluster.partition(vec![0, 1, 0]);
    cluster.put(0, &topic, b"config", b"1").unwrap();
    cluster.run_for(2_000).unwrap();
    cluster.compact(0, &topic).unwrap();
    // Replica 1 catches up from the owner alone: through its snapshot, so the owner's last
    // block is pruned on replica 1 too. Then it writes on top of it.
    cluster.partition(vec![0, 0, 1]);
    cluster.run_for(5_000).unwrap();
    let parent = cluster.topic(0, &topic).unwrap().heads();
    assert_eq!(cluster.topic(1, &topic).unwrap().heads(), parent, "replica 1 caught up");
    assert_eq!(cluster.topic(1, &topic).unwrap().block(&parent[0].cid).unwrap(), None, "through the snapshot");
    // Too large to travel inside an announcement: it is fetched.
    let written = cluster.put(1, &topic, b"from-writer", &[7; 200 << 10]).unwrap();
    // Meanwhile the owner moves on with replica 2, on another branch, far enough that the
    // ancestors replica 2 samples as had stop short of the shared parent.
    cluster.partition(vec![0, 1, 0]);
    for i in 0..200 {
        cluster.put(0, &topic, b"config", format!("{i}").as_bytes()).unwrap();
    }
    cluster.run_for(5_000).unwrap();
    // Replica 2 can reach replica 1 alone.
    cluster.partition(vec![0, 1, 1]);
    cluster.run_for(10_000).unwrap();
    assert!(cluster.topic(2, &topic).unwrap().contains(&written.cid).unwrap(), "the writer's block arrived");
    cluster.heal();
    cluster.run_until_quiet(100_000).unwrap();
}

/// Only the owner's node compacts a topic with a writer list: a writer's snapshot could prune
/// its own blocks before the owner has them, and peers take such a topic's snapshots from the
/// owner alone, so those blocks would be lost to everyone.
#[test]
fn a_writer_does_not_compact_a_topic_with_a_writer_list() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = store(&dir, "writer", &writer());
    let topic = elsewhere.topic(&team()).unwrap();
    match topic.compact() {
        Err(error @ canopy_crdt::CompactError::NotListOwner { .. }) => {
            assert!(error.to_string().contains("only the owner"), "{error}")
        }
        other => panic!("a writer's compaction must be refused: {other:?}"),
    }
    let home = store(&dir, "owner", &owner());
    let topic = home.topic(&team()).unwrap();
    topic.put("k", "v").unwrap();
    assert!(topic.compact().unwrap().snapshot.is_some());
}
