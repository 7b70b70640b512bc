//! The CRDT laws as property tests: merging replicas is commutative, associative and
//! idempotent, so any delivery order of the same blocks gives the same state.

use std::collections::BTreeMap;

use canopy_crdt::sim::reference_state;
use canopy_crdt::snapshot::Manifest;
use canopy_crdt::{Batch, Block, Cid, Store, StoreOptions, Topic};
use proptest::prelude::*;

/// One step of a history: a write on a source replica, or one source learning another's blocks.
#[derive(Clone, Debug)]
enum Step {
    Put { replica: usize, key: u8, value: u8 },
    Delete { replica: usize, key: u8 },
    Batch { replica: usize, ops: Vec<(u8, Option<u8>)> },
    Sync { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    let replica = 0..3usize;
    prop_oneof![
        4 => (replica.clone(), 0..6u8, any::<u8>()).prop_map(|(replica, key, value)| Step::Put { replica, key, value }),
        2 => (replica.clone(), 0..6u8).prop_map(|(replica, key)| Step::Delete { replica, key }),
        1 => (replica.clone(), prop::collection::vec((0..6u8, prop::option::of(any::<u8>())), 1..5))
            .prop_map(|(replica, ops)| Step::Batch { replica, ops }),
        2 => (replica.clone(), replica).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

fn open(dir: &tempfile::TempDir, name: &str) -> Topic {
    let options = StoreOptions { writer_threads: 1, cache_bytes: 1 << 20, ..StoreOptions::default() };
    Store::open(dir.path().join(name), options).unwrap().topic("t").unwrap()
}

/// Runs the history on three source replicas and returns every block each one made or learnt.
fn history(steps: &[Step], dir: &tempfile::TempDir) -> Vec<BTreeMap<Cid, Block>> {
    let sources: Vec<Topic> = (0..3).map(|i| open(dir, &format!("source-{i}"))).collect();
    let mut known: Vec<BTreeMap<Cid, Block>> = vec![BTreeMap::new(); 3];
    for step in steps {
        let (replica, commit) = match step {
            Step::Put { replica, key, value } => {
                (*replica, Some(sources[*replica].put(vec![b'k', *key], vec![*value]).unwrap()))
            }
            Step::Delete { replica, key } => (*replica, sources[*replica].delete(vec![b'k', *key]).unwrap()),
            Step::Batch { replica, ops } => {
                let mut batch = Batch::new();
                for (key, value) in ops {
                    match value {
                        Some(value) => batch.put(vec![b'k', *key], vec![*value]),
                        None => batch.delete(vec![b'k', *key]),
                    };
                }
                (*replica, sources[*replica].batch(batch).unwrap())
            }
            Step::Sync { from, to } => {
                let blocks: Vec<Block> = known[*from].values().cloned().collect();
                sources[*to].ingest(blocks.clone()).unwrap();
                for block in blocks {
                    known[*to].insert(block.cid(), block);
                }
                continue;
            }
        };
        if let Some(commit) = commit {
            let bytes = sources[replica].block(&commit.cid).unwrap().unwrap();
            let block = Block::decode("t", commit.cid, &bytes, &Default::default()).unwrap();
            known[replica].insert(block.cid(), block);
        }
    }
    known
}

fn state(topic: &Topic) -> (BTreeMap<Vec<u8>, Vec<u8>>, Vec<canopy_crdt::Head>) {
    let page = topic.query(b"", None, 10_000).unwrap();
    (page.entries.into_iter().collect(), topic.heads())
}

/// Delivers each group of blocks, in order, to a fresh replica.
fn deliver(
    dir: &tempfile::TempDir,
    name: &str,
    groups: &[Vec<Block>],
) -> (BTreeMap<Vec<u8>, Vec<u8>>, Vec<canopy_crdt::Head>) {
    let topic = open(dir, name);
    for group in groups {
        topic.ingest(group.clone()).unwrap();
    }
    assert_eq!(topic.pending_count(), 0, "every block's ancestry was delivered");
    state(&topic)
}

/// Copies the snapshot `manifest` of `from` to `to`, part by part, and merges it.
fn merge_snapshot(from: &Topic, to: &Topic, manifest: Cid) {
    let bytes = from.snapshot_part(&manifest).unwrap().expect("the manifest is stored");
    let decoded = Manifest::decode(&manifest, &bytes).unwrap();
    let mut parts = vec![(manifest, bytes)];
    for chunk in &decoded.chunks {
        parts.push((*chunk, from.snapshot_part(chunk).unwrap().expect("every chunk is stored")));
    }
    to.stage_snapshot_parts(&parts).unwrap();
    to.merge_snapshot(manifest).unwrap();
}

fn union(sets: &[&BTreeMap<Cid, Block>]) -> BTreeMap<Cid, Block> {
    sets.iter().flat_map(|set| set.iter().map(|(c, b)| (*c, b.clone()))).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn merge_is_commutative_associative_and_idempotent(
        steps in prop::collection::vec(step(), 1..40),
        order_seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let known = history(&steps, &dir);
        let (a, b, c) = (&known[0], &known[1], &known[2]);
        let set = |m: &BTreeMap<Cid, Block>| m.values().cloned().collect::<Vec<_>>();

        let all = union(&[a, b, c]);
        let expected = reference_state(&all);

        let ab = deliver(&dir, "ab", &[set(a), set(b)]);
        let ba = deliver(&dir, "ba", &[set(b), set(a)]);
        prop_assert_eq!(&ab, &ba, "commutative");

        let ab_c = deliver(&dir, "ab_c", &[set(&union(&[a, b])), set(c)]);
        let a_bc = deliver(&dir, "a_bc", &[set(a), set(&union(&[b, c]))]);
        prop_assert_eq!(&ab_c, &a_bc, "associative");
        prop_assert_eq!(&ab_c.0, &expected, "equals the reference model");

        let twice = deliver(&dir, "twice", &[set(&all), set(&all)]);
        prop_assert_eq!(&twice, &ab_c, "idempotent");

        // Any order, one block at a time, children possibly before parents.
        let mut shuffled = set(&all);
        let mut x = order_seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let one_by_one: Vec<Vec<Block>> = shuffled.into_iter().map(|b| vec![b]).collect();
        let any_order = deliver(&dir, "any_order", &one_by_one);
        prop_assert_eq!(&any_order, &ab_c, "any delivery order");
    }

    /// Merging snapshot(H) into a replica holding any blocks, before or after other blocks
    /// and other snapshots, gives exactly the state of the union of the full histories.
    #[test]
    fn merging_snapshots_equals_the_uncompacted_state(steps in prop::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let known = history(&steps, &dir);
        let (a, b, c) = (&known[0], &known[1], &known[2]);
        let set = |m: &BTreeMap<Cid, Block>| m.values().cloned().collect::<Vec<_>>();
        // Compacted copies of sources 0 and 2: each holds only its snapshot.
        let compacted: Vec<(Topic, Option<Cid>)> = [(a, "snap-a"), (c, "snap-c")]
            .into_iter()
            .map(|(blocks, name)| {
                let topic = open(&dir, name);
                topic.ingest(set(blocks)).unwrap();
                let snapshot = topic.compact().unwrap().snapshot;
                (topic, snapshot)
            })
            .collect();
        let [(source_a, snap_a), (source_c, snap_c)] = &compacted[..] else { unreachable!() };

        let full_ab = deliver(&dir, "full_ab", &[set(&union(&[a, b]))]);
        let b_then_a = open(&dir, "b_then_a");
        b_then_a.ingest(set(b)).unwrap();
        if let Some(snap) = snap_a {
            merge_snapshot(source_a, &b_then_a, *snap);
        }
        prop_assert_eq!(state(&b_then_a), full_ab.clone(), "blocks, then a snapshot");

        let a_then_b = open(&dir, "a_then_b");
        if let Some(snap) = snap_a {
            merge_snapshot(source_a, &a_then_b, *snap);
        }
        a_then_b.ingest(set(b)).unwrap();
        prop_assert_eq!(state(&a_then_b), full_ab.clone(), "a snapshot, then blocks");

        let full = deliver(&dir, "full", &[set(&union(&[a, b, c]))]);
        prop_assert_eq!(&full.0, &reference_state(&union(&[a, b, c])));
        for (name, order) in [("c_a", [snap_c, snap_a]), ("a_c", [snap_a, snap_c])] {
            let topic = open(&dir, name);
            topic.ingest(set(b)).unwrap();
            for snap in order.iter().copied().flatten() {
                let from = if Some(*snap) == *snap_a { source_a } else { source_c };
                merge_snapshot(from, &topic, *snap);
            }
            prop_assert_eq!(state(&topic), full.clone(), "two snapshots at other frontiers, in order {}", name);
            // Blocks the snapshots cover arrive late: duplicates, nothing resurrects.
            topic.ingest(set(&union(&[a, b, c]))).unwrap();
            prop_assert_eq!(state(&topic), full.clone(), "late blocks change nothing");
            // A compacted replica compacts again and serves the same state.
            topic.compact().unwrap();
            prop_assert_eq!(state(&topic), full.clone(), "compacting again");
        }
    }
}
