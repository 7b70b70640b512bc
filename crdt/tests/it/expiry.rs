//! Expiring entries: a value written with a lifetime is hidden on every replica once its time
//! comes, as if deleted, then collected from storage; watchers hear of it; snapshots, late
//! joiners, restarts and every network fault agree.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use canopy_crdt::sim::{Cluster, Faults, WALL_CLOCK_START_MS, reference_state_at};
use canopy_crdt::{Batch, Clock, Store, StoreOptions};
use proptest::prelude::*;

const STEPS_MAX: u64 = 200_000;
const START_MS: u64 = 1_800_000_000_000;

/// A store whose clock the test sets.
fn store(dir: &std::path::Path, now: &Arc<AtomicU64>) -> Store {
    let now = now.clone();
    let options = StoreOptions { clock: Clock::from_fn(move || now.load(Ordering::SeqCst)), ..StoreOptions::default() };
    Store::open(dir, options).unwrap()
}

#[test]
fn an_expired_value_is_hidden_then_collected_and_watchers_hear_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(START_MS));
    let store = store(dir.path(), &now);
    let topic = store.topic("registry").unwrap();
    let changes = topic.watch();
    topic.put_for("services/web-1", "10.0.0.1:80", Duration::from_secs(30)).unwrap();
    topic.put("services/db", "10.0.0.9:5432").unwrap();
    let mut batch = Batch::new();
    batch.put_until("services/web-2", "10.0.0.2:80", START_MS + 60_000);
    topic.batch(batch).unwrap();
    assert_eq!(topic.key_count(), 3);

    now.store(START_MS + 30_000, Ordering::SeqCst);
    assert_eq!(topic.get(b"services/web-1").unwrap(), None, "hidden from its expiry on");
    let listed: Vec<Vec<u8>> = topic.query(b"services/", None, 10).unwrap().entries.into_iter().map(|e| e.0).collect();
    assert_eq!(listed, [b"services/db".to_vec(), b"services/web-2".to_vec()]);

    topic.collect_expired().unwrap();
    assert_eq!(topic.key_count(), 2, "collected, the key leaves the count");
    let seen: Vec<_> = changes.try_iter().collect();
    let expired = seen.iter().find(|change| change.expired).expect("watchers hear of the expiry");
    assert_eq!((expired.key.as_slice(), expired.value.as_deref()), (&b"services/web-1"[..], None));

    // A heartbeat renews an entry: its new lifetime counts from the renewal.
    topic.put_for("services/web-2", "10.0.0.2:80", Duration::from_secs(60)).unwrap();
    now.store(START_MS + 61_000, Ordering::SeqCst);
    assert!(topic.get(b"services/web-2").unwrap().is_some());
    // A plain put makes an expiring key permanent.
    topic.put_for("config/mode", "trial", Duration::from_secs(1)).unwrap();
    topic.put("config/mode", "paid").unwrap();
    now.store(START_MS + 200_000, Ordering::SeqCst);
    assert_eq!(topic.get(b"services/web-2").unwrap(), None);
    assert_eq!(topic.get(b"config/mode").unwrap().as_deref(), Some(&b"paid"[..]));
    // Deleting a key whose value has expired deletes nothing.
    assert_eq!(topic.delete("services/web-2").unwrap(), None);
}

#[test]
fn the_writer_thread_collects_on_its_own_and_a_restart_keeps_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(START_MS));
    {
        let store = store(dir.path(), &now);
        let topic = store.topic("cache").unwrap();
        for i in 0..100 {
            topic.put_for(format!("entry/{i:03}"), "cached", Duration::from_millis(100 + i)).unwrap();
        }
        topic.put("entry/keep", "forever").unwrap();
        assert_eq!(topic.key_count(), 101);
    }
    now.store(START_MS + 150, Ordering::SeqCst);
    let store = store(dir.path(), &now);
    let topic = store.topic("cache").unwrap();
    assert_eq!(
        topic.query(b"entry/", None, 1000).unwrap().entries.len(),
        50,
        "51 expired; 49 live and the permanent one"
    );
    now.store(START_MS + 10_000, Ordering::SeqCst);
    // No call asks for it: the writer thread wakes when the next expiry is due (within a second
    // of a clock that jumped).
    let start = std::time::Instant::now();
    while topic.key_count() != 1 {
        assert!(start.elapsed() < Duration::from_secs(60), "never collected: {} keys", topic.key_count());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(topic.get(b"entry/keep").unwrap().as_deref(), Some(&b"forever"[..]));
}

#[test]
fn replicas_hide_an_entry_together_and_a_late_joiner_never_sees_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(dir.path(), 3, &["t".to_string()], 5).unwrap();
    cluster.put_for(0, "t", (b"lease", b"node-0"), 2_000).unwrap();
    cluster.put(1, "t", b"plain", b"stays").unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    for replica in 0..3 {
        assert_eq!(cluster.topic(replica, "t").unwrap().get(b"lease").unwrap().as_deref(), Some(&b"node-0"[..]));
    }
    cluster.run_for(2_500).unwrap();
    cluster.collect_expired().unwrap();
    for replica in 0..3 {
        let topic = cluster.topic(replica, "t").unwrap();
        assert_eq!(topic.get(b"lease").unwrap(), None, "replica {replica}");
        assert_eq!(topic.key_count(), 1);
    }
    // A compaction after the expiry leaves the element out; a replica that starts empty
    // catches up from the snapshot and the blocks alike without ever showing it.
    for replica in 0..3 {
        cluster.compact(replica, "t").unwrap();
    }
    let late = cluster.add_replica().unwrap();
    cluster.run_until_quiet(STEPS_MAX).unwrap();
    assert_eq!(cluster.dump(late, "t").unwrap().keys().cloned().collect::<Vec<_>>(), [b"plain".to_vec()]);
    assert_eq!(cluster.topic(late, "t").unwrap().key_count(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Puts with and without lifetimes and deletes on random replicas, under drops,
    /// duplicates, reordering, corruption, partitions, crashes and compactions: at the end every
    /// replica shows exactly what the blocks give at the cluster's time, expired entries gone.
    #[test]
    fn under_every_fault_expired_entries_disappear_everywhere(
        seed in 0u64..1_000,
        ops in proptest::collection::vec((0usize..4, 0u8..6, 0u64..3_000, 0u8..4, any::<bool>(), 0u8..20), 1..40),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Cluster::new(dir.path(), 4, &["t".to_string()], seed).unwrap();
        cluster.set_faults(Faults { drop: 0.1, dup: 0.1, reorder: 0.2, corrupt: 0.05 });
        let mut expiring = 0;
        for (replica, key, ttl, kind, compact, event) in ops {
            match event {
                0 => cluster.random_partition(),
                1 => cluster.heal(),
                2 if cluster.is_up(replica) => cluster.crash(replica),
                3 => cluster.restart(replica).unwrap(),
                _ => {}
            }
            if !cluster.is_up(replica) {
                continue;
            }
            let key = format!("k{key}").into_bytes();
            match kind {
                0 => {
                    cluster.put(replica, "t", &key, b"plain").unwrap();
                }
                1 => {
                    cluster.delete(replica, "t", &key).unwrap();
                }
                _ => {
                    cluster.put_for(replica, "t", (&key, format!("ttl {ttl}").as_bytes()), ttl + 1).unwrap();
                    expiring += 1;
                }
            }
            if compact {
                cluster.compact(replica, "t").unwrap();
            }
            cluster.run_for(100).unwrap();
        }
        cluster.set_faults(Faults::default());
        cluster.heal();
        for replica in 0..4 {
            cluster.restart(replica).unwrap();
        }
        cluster.run_until_quiet(STEPS_MAX).unwrap();
        // Collection removes only what the reads already hide: before and after, the same.
        let reference = reference_state_at(&cluster.all_blocks("t").unwrap(), cluster.wall_ms());
        for replica in 0..4 {
            prop_assert_eq!(&cluster.dump(replica, "t").unwrap(), &reference, "replica {} before collection", replica);
        }
        cluster.collect_expired().unwrap();
        for replica in 0..4 {
            prop_assert_eq!(&cluster.dump(replica, "t").unwrap(), &reference, "replica {}", replica);
            prop_assert_eq!(cluster.topic(replica, "t").unwrap().key_count(), reference.len() as u64);
        }
        // Long after, every lifetime has run out.
        cluster.run_for(5_000).unwrap();
        cluster.collect_expired().unwrap();
        let later = reference_state_at(&cluster.all_blocks("t").unwrap(), cluster.wall_ms());
        prop_assert!(later.values().all(|value| value.as_slice() == b"plain"), "{} expiring puts", expiring);
        for replica in 0..4 {
            prop_assert_eq!(&cluster.dump(replica, "t").unwrap(), &later);
            prop_assert_eq!(cluster.topic(replica, "t").unwrap().key_count(), later.len() as u64);
        }
        prop_assert!(cluster.wall_ms() > WALL_CLOCK_START_MS);
    }
}
