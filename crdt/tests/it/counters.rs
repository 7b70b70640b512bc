//! Counters: every increment made on any replica counts exactly once, whatever the delivery,
//! duplication, crashes and compactions; counters and plain keys share a topic without
//! touching each other; nobody writes another's share of a counter.

use canopy_crdt::sim::{Cluster, Faults, reference_counters};
use canopy_crdt::{Batch, Block, Delta, Signer, Store, StoreOptions, WriteError};
use proptest::prelude::*;

const STEPS_MAX: u64 = 200_000;

fn cluster(replicas: usize, seed: u64) -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::new(dir.path(), replicas, &["t".to_string()], seed).unwrap();
    (dir, cluster)
}

fn counter(cluster: &Cluster, replica: usize, key: &str) -> i128 {
    cluster.topic(replica, "t").unwrap().counter(key.as_bytes()).unwrap()
}

#[test]
fn concurrent_increments_on_every_replica_add_up() {
    let (_dir, mut cluster) = cluster(4, 3);
    for replica in 0..4 {
        for _ in 0..5 {
            cluster.increment(replica, "t", b"likes", 2).unwrap();
        }
        cluster.increment(replica, "t", b"likes", -1).unwrap();
    }
    for replica in 0..4 {
        assert_eq!(counter(&cluster, replica, "likes"), 9, "replica {replica} before any exchange");
    }
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    for replica in 0..4 {
        assert_eq!(counter(&cluster, replica, "likes"), 36);
        assert_eq!(counter(&cluster, replica, "never"), 0);
    }
}

#[test]
fn counters_and_plain_keys_share_a_topic_apart() {
    let (_dir, mut cluster) = cluster(2, 4);
    cluster.put(0, "t", b"likes", b"a plain value").unwrap();
    let mut batch = Batch::new();
    batch.add("likes", 3).add("likes", 4).put("other", "x");
    cluster.batch(1, "t", batch).unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    for replica in 0..2 {
        let topic = cluster.topic(replica, "t").unwrap();
        assert_eq!(topic.get(b"likes").unwrap().as_deref(), Some(&b"a plain value"[..]));
        assert_eq!(topic.counter(b"likes").unwrap(), 7);
        // Listings and the key count see the two plain keys only.
        let page = topic.query(b"", None, 100).unwrap();
        let keys: Vec<&[u8]> = page.entries.iter().map(|(key, _)| key.as_slice()).collect();
        assert_eq!(keys, vec![&b"likes"[..], b"other"]);
        assert_eq!(topic.key_count(), 2);
        assert!(topic.query(b"\0", None, 100).unwrap().entries.is_empty());
        assert_eq!(topic.get(b"\0c").unwrap(), None);
    }
    cluster.delete(0, "t", b"likes").unwrap();
    assert_eq!(cluster.topic(0, "t").unwrap().counter(b"likes").unwrap(), 7);
    let reserved = cluster.topic(0, "t").unwrap().put(b"\0c-mine".to_vec(), b"x".to_vec());
    assert!(matches!(reserved, Err(WriteError::InvalidKey(_))), "{reserved:?}");
}

#[test]
fn compaction_and_snapshots_count_nothing_twice() {
    let (_dir, mut cluster) = cluster(3, 5);
    for round in 0..4 {
        for replica in 0..3 {
            cluster.increment(replica, "t", b"views", 10 + replica as i64).unwrap();
        }
        cluster.run_for(40).unwrap();
        // Compactions on replicas that have seen different parts of the history.
        cluster.compact(round % 3, "t").unwrap();
    }
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    for replica in 0..3 {
        cluster.compact(replica, "t").unwrap();
    }
    // A replica that starts empty bootstraps from the snapshots, then more increments arrive.
    let joiner = cluster.add_replica().unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    cluster.increment(joiner, "t", b"views", 1).unwrap();
    cluster.increment(0, "t", b"views", 1).unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    assert!(cluster.snapshots_merged() > 0, "the joiner merged no snapshot");
    let expected = 4 * (10 + 11 + 12) + 2;
    for replica in 0..=joiner {
        assert_eq!(counter(&cluster, replica, "views"), expected, "replica {replica}");
    }
}

#[test]
fn a_received_block_may_not_write_another_authors_share() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("a"), StoreOptions::default()).unwrap();
    let topic = store.topic("t").unwrap();
    let honest = store.topic("t").unwrap().increment(b"likes".to_vec(), 5).unwrap();
    let honest_block = Block::decode(
        "t",
        honest.cid,
        &topic.block(&honest.cid).unwrap().unwrap(),
        &canopy_crdt::BlockLimits::PROTOCOL,
    )
    .unwrap();
    // A forger copies the honest delta (which names the honest author's share) into a block of
    // its own: refused, and the counter is unchanged.
    let forger = Signer::from_secret([3; 32]);
    let forged = Block::build("t", vec![honest.cid], 2, honest_block.payload().to_vec(), &forger).unwrap();
    let outcome = topic.ingest(vec![forged]).unwrap();
    assert_eq!(outcome.applied, 0);
    assert_eq!(outcome.rejected.len(), 1, "{outcome:?}");
    // A block by another author with a share in the wrong format is refused too.
    let mut delta = Delta::default();
    delta.adds.push((canopy_crdt::counter::entry_key(b"likes", &forger.author(), &[1; 8]), vec![1, 2, 3]));
    let malformed = Block::build("t", vec![honest.cid], 2, delta.encode(), &forger).unwrap();
    assert_eq!(topic.ingest(vec![malformed]).unwrap().applied, 0);
    assert_eq!(topic.counter(b"likes").unwrap(), 5);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random increments on random replicas under drops, duplicates, reordering, corruption,
    /// partitions, crashes and compactions end at the exact sum everywhere.
    #[test]
    fn under_every_fault_counters_end_at_the_exact_sum(
        seed in 0u64..1_000,
        ops in proptest::collection::vec((0usize..4, 0u8..3, -50i64..50, any::<bool>(), 0u8..20), 1..40),
    ) {
        let (_dir, mut cluster) = cluster(4, seed);
        cluster.set_faults(Faults { drop: 0.1, dup: 0.1, reorder: 0.2, corrupt: 0.05 });
        let mut expected = [0i128; 3];
        for (replica, key, n, compact, event) in ops {
            if event == 0 {
                cluster.random_partition();
            } else if event == 1 {
                cluster.heal();
            } else if event == 2 && cluster.is_up(replica) {
                cluster.crash(replica);
            } else if event == 3 {
                cluster.restart(replica).unwrap();
            }
            if !cluster.is_up(replica) {
                continue;
            }
            cluster.increment(replica, "t", format!("k{key}").as_bytes(), n).unwrap();
            expected[usize::from(key)] += i128::from(n);
            if compact {
                cluster.compact(replica, "t").unwrap();
            }
            cluster.run_for(10).unwrap();
        }
        cluster.set_faults(Faults::default());
        cluster.heal();
        for replica in 0..4 {
            cluster.restart(replica).unwrap();
        }
        cluster.run_until_quiet(STEPS_MAX).unwrap();
        let reference = reference_counters(&cluster.all_blocks("t").unwrap());
        for (key, sum) in expected.iter().enumerate() {
            let name = format!("k{key}");
            prop_assert_eq!(reference.get(name.as_bytes()).copied().unwrap_or(0), *sum);
            for replica in 0..4 {
                prop_assert_eq!(counter(&cluster, replica, &name), *sum, "replica {} counter {}", replica, name);
            }
        }
    }
}
