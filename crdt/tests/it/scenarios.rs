//! The replication scenarios users rely on, each driving several replicas (real RocksDB in
//! temporary directories) through the real sync logic over the simulated network.

use std::collections::BTreeMap;

use canopy_crdt::Batch;
use canopy_crdt::sim::{Cluster, reference_state};
use rand::{Rng, SeedableRng};

const STEPS_MAX: u64 = 200_000;

fn cluster(replicas: usize, topics: &[&str]) -> (tempfile::TempDir, Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    let cluster = Cluster::new(dir.path(), replicas, &topics, 7).unwrap();
    (dir, cluster)
}

/// Every replica holds the same keys and values, equal to what the semantics give for the
/// union of all blocks; returns that state.
fn assert_converged(cluster: &Cluster, topic: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    assert!(cluster.converged(), "replicas disagree on heads of {topic}");
    let first = cluster.dump(0, topic).unwrap();
    for replica in 1..cluster.len() {
        assert_eq!(cluster.dump(replica, topic).unwrap(), first, "replica {replica} differs in {topic}");
    }
    let reference = reference_state(&cluster.all_blocks(topic).unwrap());
    assert_eq!(first, reference, "state differs from the reference model in {topic}");
    for replica in 0..cluster.len() {
        assert_eq!(cluster.topic(replica, topic).unwrap().key_count(), first.len() as u64);
    }
    first
}

#[test]
fn one_put_reaches_every_replica() {
    let (_dir, mut cluster) = cluster(5, &["t"]);
    cluster.put(2, "t", b"hello", b"world").unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    for replica in 0..5 {
        assert_eq!(cluster.topic(replica, "t").unwrap().get(b"hello").unwrap().as_deref(), Some(&b"world"[..]));
    }
    assert_converged(&cluster, "t");
}

#[test]
fn fifty_random_keys_written_then_overwritten_converge() {
    let (_dir, mut cluster) = cluster(4, &["t"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(50);
    let keys: Vec<String> = (0..50).map(|i| format!("key-{i}-{}", rng.random::<u32>())).collect();
    for (round, label) in ["first", "second"].iter().enumerate() {
        for key in &keys {
            let replica = rng.random_range(0..4);
            cluster.put(replica, "t", key.as_bytes(), format!("{label}-{key}").as_bytes()).unwrap();
            if rng.random_bool(0.3) {
                cluster.run_for(15).unwrap();
            }
        }
        cluster.run_until_quiet(STEPS_MAX).unwrap();
        let state = assert_converged(&cluster, "t");
        assert_eq!(state.len(), 50, "round {round}");
        for key in &keys {
            assert_eq!(state[key.as_bytes()], format!("{label}-{key}").into_bytes());
        }
    }
}

#[test]
fn fifteen_concurrent_writers_of_one_key_converge_and_a_later_put_wins() {
    let (_dir, mut cluster) = cluster(15, &["t"]);
    cluster.partition((0..15).collect());
    for replica in 0..15 {
        cluster.put(replica, "t", b"key", format!("value-{replica:02}").as_bytes()).unwrap();
    }
    cluster.heal();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let state = assert_converged(&cluster, "t");
    // All writes have height 1, so the greatest value wins.
    assert_eq!(state[&b"key"[..]], b"value-14");

    cluster.put(3, "t", b"key", b"later").unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let state = assert_converged(&cluster, "t");
    assert_eq!(state[&b"key"[..]], b"later");
    assert_eq!(cluster.topic(7, "t").unwrap().heads().len(), 1);
}

#[test]
fn a_replica_that_missed_every_announcement_catches_up_from_the_next_one() {
    let (_dir, mut cluster) = cluster(3, &["t"]);
    cluster.partition(vec![0, 0, 1]);
    for i in 0..40 {
        cluster.put(i % 2, "t", format!("k{i}").as_bytes(), b"v").unwrap();
    }
    cluster.run_for(500).unwrap();
    assert_eq!(cluster.topic(2, "t").unwrap().key_count(), 0, "the isolated replica heard nothing");
    cluster.heal();
    cluster.put(0, "t", b"last", b"v").unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let state = assert_converged(&cluster, "t");
    assert_eq!(state.len(), 41);
}

#[test]
fn put_put_delete_against_a_concurrent_put_across_a_partition_converge() {
    let (_dir, mut cluster) = cluster(4, &["t"]);
    cluster.put(0, "t", b"k", b"base").unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    cluster.partition(vec![0, 0, 1, 1]);
    cluster.put(0, "t", b"k", b"one").unwrap();
    cluster.put(1, "t", b"k", b"two").unwrap();
    cluster.run_for(300).unwrap();
    assert!(cluster.delete(0, "t", b"k").unwrap().is_some());
    cluster.put(2, "t", b"k", b"other side").unwrap();
    cluster.run_for(300).unwrap();
    cluster.heal();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let state = assert_converged(&cluster, "t");
    // The delete could not see the other side's put: add wins.
    assert_eq!(state[&b"k"[..]], b"other side");

    cluster.delete(3, "t", b"k").unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    assert!(assert_converged(&cluster, "t").is_empty());
}

#[test]
fn nested_looking_keys_stay_independent() {
    let (_dir, mut cluster) = cluster(2, &["t"]);
    cluster.put(0, "t", b"/path", b"parent").unwrap();
    cluster.put(1, "t", b"/path/to/something", b"child").unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    cluster.delete(1, "t", b"/path").unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let state = assert_converged(&cluster, "t");
    assert_eq!(state.len(), 1);
    assert_eq!(state[&b"/path/to/something"[..]], b"child");
    let page = cluster.topic(0, "t").unwrap().query(b"/path", None, 10).unwrap();
    assert_eq!(page.entries, vec![(b"/path/to/something".to_vec(), b"child".to_vec())]);
}

#[test]
fn topics_never_see_each_others_keys() {
    let (_dir, mut cluster) = cluster(3, &["alpha", "beta"]);
    cluster.put(0, "alpha", b"shared-name", b"from alpha").unwrap();
    cluster.put(1, "beta", b"shared-name", b"from beta").unwrap();
    cluster.put(2, "beta", b"only-beta", b"x").unwrap();
    let mut batch = Batch::new();
    batch.put("a1", "1").put("a2", "2");
    cluster.batch(2, "alpha", batch).unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let alpha = assert_converged(&cluster, "alpha");
    let beta = assert_converged(&cluster, "beta");
    assert_eq!(alpha.keys().map(|k| k.as_slice()).collect::<Vec<_>>(), vec![&b"a1"[..], b"a2", b"shared-name"]);
    assert_eq!(alpha[&b"shared-name"[..]], b"from alpha");
    assert_eq!(beta.keys().map(|k| k.as_slice()).collect::<Vec<_>>(), vec![&b"only-beta"[..], b"shared-name"]);
    assert_eq!(beta[&b"shared-name"[..]], b"from beta");
}

#[test]
fn a_batch_replicates_as_one_delta_with_last_operation_winning() {
    let (_dir, mut cluster) = cluster(3, &["t"]);
    cluster.put(0, "t", b"gone", b"soon").unwrap();
    let mut batch = Batch::new();
    batch.put("k", "first").put("k", "second").delete("gone").put("x", "1").delete("x");
    let commit = cluster.batch(1, "t", batch).unwrap();
    assert!(commit.is_some());
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    let state = assert_converged(&cluster, "t");
    assert_eq!(state.get(&b"k"[..]).map(Vec::as_slice), Some(&b"second"[..]));
    assert!(!state.contains_key(&b"x"[..]));
    // The batch was written on replica 1 without having seen "gone"; add wins.
    assert_eq!(state.get(&b"gone"[..]).map(Vec::as_slice), Some(&b"soon"[..]));
}

#[test]
fn a_deep_history_is_caught_up_bottom_up_in_bounded_memory() {
    let (_dir, mut cluster) = cluster(3, &["t"]);
    cluster.partition(vec![0, 1, 1]);
    let writer = cluster.topic(0, "t").unwrap();
    // 3,000 blocks in a chain: far deeper than one walk of the simulated replicas visits (256)
    // and than the blocks they keep waiting for parents (64).
    for i in 0..3_000 {
        writer.put(format!("k{}", i % 500), format!("{i}")).unwrap();
    }
    cluster.heal();
    let mut waiting_max = 0;
    let mut steps = 0;
    while !(cluster.converged() && cluster.topic(1, "t").unwrap().max_height() == 3_000) {
        assert!(steps < STEPS_MAX, "no convergence after {steps} steps");
        cluster.step().unwrap();
        steps += 1;
        for replica in 1..3 {
            waiting_max = waiting_max.max(cluster.topic(replica, "t").unwrap().pending_count());
        }
    }
    assert!(waiting_max <= 64, "a catch-up held {waiting_max} blocks above a gap");
    let state = assert_converged(&cluster, "t");
    assert_eq!(state.len(), 500);
}
