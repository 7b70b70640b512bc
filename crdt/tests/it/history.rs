//! Key history: the versions of a key a replica holds, newest first, local and replicated, and
//! what a compaction leaves of them.

use canopy_crdt::sim::Cluster;
use canopy_crdt::{Store, StoreOptions};

const STEPS_MAX: u64 = 200_000;

fn values(versions: &[canopy_crdt::Version]) -> Vec<Option<&str>> {
    versions.iter().map(|v| v.value.as_deref().map(|bytes| std::str::from_utf8(bytes).unwrap())).collect()
}

#[test]
fn a_keys_versions_come_newest_first_with_deletes_and_replicated_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), 2, &["t".to_string()], 11).unwrap();
    cluster.put(0, "t", b"config/a", b"one").unwrap();
    cluster.put(0, "t", b"config/a", b"two").unwrap();
    cluster.put(0, "t", b"config/ab", b"another key").unwrap();
    cluster.delete(0, "t", b"config/a").unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    cluster.put(1, "t", b"config/a", b"three").unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    for replica in 0..2 {
        let topic = cluster.topic(replica, "t").unwrap();
        let versions = topic.history(b"config/a", 100).unwrap();
        assert_eq!(values(&versions), vec![Some("three"), None, Some("two"), Some("one")], "replica {replica}");
        assert!(versions[1].deleted() && !versions[0].deleted());
        assert!(versions.windows(2).all(|pair| pair[0].height > pair[1].height));
        assert_eq!(values(&topic.history(b"config/a", 2).unwrap()), vec![Some("three"), None]);
        assert_eq!(values(&topic.history(b"config/ab", 100).unwrap()), vec![Some("another key")]);
        assert!(topic.history(b"config/", 100).unwrap().is_empty());
    }
}

#[test]
fn compaction_leaves_the_live_versions_and_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let topic = store.topic("t").unwrap();
    for value in ["a", "b", "c"] {
        topic.put(b"k".to_vec(), value.as_bytes().to_vec()).unwrap();
    }
    topic.put(b"gone".to_vec(), b"x".to_vec()).unwrap();
    topic.delete(b"gone".to_vec()).unwrap();
    topic.compact().unwrap();
    assert_eq!(values(&topic.history(b"k", 100).unwrap()), vec![Some("c")]);
    assert!(topic.history(b"gone", 100).unwrap().is_empty());
    // Writes after the compaction have their blocks: they are history again. The value that was
    // live at the compaction had its block pruned: once superseded it is gone.
    topic.put(b"k".to_vec(), b"d".to_vec()).unwrap();
    topic.put(b"k".to_vec(), b"e".to_vec()).unwrap();
    assert_eq!(values(&topic.history(b"k", 100).unwrap()), vec![Some("e"), Some("d")]);
}

#[test]
fn without_key_history_a_key_has_its_live_value_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions { key_history: false, ..StoreOptions::default() }).unwrap();
    let topic = store.topic("t").unwrap();
    topic.put(b"k".to_vec(), b"a".to_vec()).unwrap();
    topic.put(b"k".to_vec(), b"b".to_vec()).unwrap();
    assert_eq!(values(&topic.history(b"k", 100).unwrap()), vec![Some("b")]);
}

#[test]
fn an_expired_value_stays_in_the_history_with_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), 2, &["t".to_string()], 12).unwrap();
    cluster.put(0, "t", b"lease", b"first").unwrap();
    let expiring = cluster.put_for(0, "t", (b"lease", b"second"), 1_000).unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    cluster.run_for(2_000).unwrap();
    cluster.collect_expired().unwrap();
    for replica in 0..2 {
        let topic = cluster.topic(replica, "t").unwrap();
        assert_eq!(topic.get(b"lease").unwrap(), None);
        let versions = topic.history(b"lease", 10).unwrap();
        assert_eq!(values(&versions), vec![Some("second"), Some("first")], "replica {replica}");
        assert_eq!(versions[0].cid, expiring.cid);
        assert!(versions[0].expires.is_some_and(|at| at <= cluster.wall_ms()) && versions[1].expires.is_none());
    }
}
