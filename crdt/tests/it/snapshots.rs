//! Compaction and snapshots over real RocksDB: pruning, canonical snapshots, bootstrap from a
//! snapshot, and crashes (real processes killed with SIGKILL) during compaction and merge.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use canopy_crdt::snapshot::Manifest;
use canopy_crdt::{Batch, Block, Cid, Clock, Store, StoreOptions, Topic};

/// The author these tests sign their hand-made blocks as.
fn signer() -> canopy_crdt::Signer {
    canopy_crdt::Signer::from_secret([3; 32])
}

/// Compaction only when a test asks for it.
fn options() -> StoreOptions {
    super::common::manual_compaction()
}

/// Waits up to a minute for `condition`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(60), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn open(path: &std::path::Path) -> Store {
    Store::open(path, options()).unwrap()
}

fn contents(topic: &Topic) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut all = BTreeMap::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = topic.query(b"", after.as_deref(), 10_000).unwrap();
        all.extend(page.entries);
        match page.next {
            Some(next) => after = Some(next),
            None => return all,
        }
    }
}

/// Writes `n` keys in batches of 100, then overwrites every third and deletes every seventh.
fn fill(topic: &Topic, n: usize) -> Vec<Cid> {
    let mut commits = Vec::new();
    for start in (0..n).step_by(100) {
        let mut batch = Batch::new();
        for i in start..(start + 100).min(n) {
            batch.put(format!("key-{i:06}"), format!("value-{i}"));
        }
        commits.push(topic.batch(batch).unwrap().unwrap().cid);
    }
    for i in (0..n).step_by(3) {
        commits.push(topic.put(format!("key-{i:06}"), format!("again-{i}")).unwrap().cid);
    }
    for i in (0..n).step_by(7) {
        commits.extend(topic.delete(format!("key-{i:06}")).unwrap().map(|commit| commit.cid));
    }
    commits
}

fn copy_snapshot(from: &Topic, to: &Topic, manifest: Cid) {
    let bytes = from.snapshot_part(&manifest).unwrap().unwrap();
    let decoded = Manifest::decode(&manifest, &bytes).unwrap();
    let mut parts = vec![(manifest, bytes)];
    for chunk in &decoded.chunks {
        parts.push((*chunk, from.snapshot_part(chunk).unwrap().unwrap()));
    }
    to.stage_snapshot_parts(&parts).unwrap();
}

#[test]
fn compaction_prunes_history_and_keeps_every_value() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let topic = store.topic("t").unwrap();
    let commits = fill(&topic, 2000);
    let before = contents(&topic);
    let heads = topic.heads();

    let compaction = topic.compact().unwrap();
    let snapshot = compaction.snapshot.expect("a topic with history gets a snapshot");
    assert_eq!(compaction.heads, heads);
    assert_eq!(compaction.keys, before.len() as u64);
    assert_eq!(compaction.pruned_blocks as usize, commits.len());
    assert_eq!(contents(&topic), before, "compaction changes no value");
    assert_eq!(topic.key_count(), before.len() as u64);
    assert!(topic.block(&commits[0]).unwrap().is_none(), "covered payloads are gone");
    assert!(topic.contains(&commits[0]).unwrap(), "a pruned block still counts as applied");
    assert_eq!(topic.snapshots().cover, vec![snapshot]);

    // Writes go on above the snapshot; a second compaction replaces the first.
    topic.put("after", "compaction").unwrap();
    topic.delete("key-000001").unwrap();
    let second = topic.compact().unwrap();
    assert_eq!(second.pruned_blocks, 2);
    assert_eq!(topic.snapshots().cover, vec![second.snapshot.unwrap()]);
    assert!(topic.snapshot_part(&snapshot).unwrap().is_none(), "the replaced manifest is removed");
    assert_eq!(topic.get(b"after").unwrap(), Some(b"compaction".to_vec()));
    assert_eq!(topic.get(b"key-000001").unwrap(), None);

    // Everything holds across a restart.
    let expected = contents(&topic);
    drop((topic, store));
    let store = open(dir.path());
    let topic = store.topic("t").unwrap();
    assert_eq!(contents(&topic), expected);
    assert_eq!(topic.snapshots().cover, vec![second.snapshot.unwrap()]);
}

#[test]
fn replicas_with_the_same_blocks_make_the_same_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(&dir.path().join("source")).topic("t").unwrap();
    let commits = fill(&source, 500);
    let blocks: Vec<Block> = commits
        .iter()
        .map(|cid| Block::decode("t", *cid, &source.block(cid).unwrap().unwrap(), &Default::default()).unwrap())
        .collect();
    let forward = open(&dir.path().join("forward")).topic("t").unwrap();
    forward.ingest(blocks.clone()).unwrap();
    let backward = open(&dir.path().join("backward")).topic("t").unwrap();
    for block in blocks.iter().rev() {
        backward.ingest(vec![block.clone()]).unwrap();
    }
    let a = forward.compact().unwrap().snapshot.unwrap();
    let b = backward.compact().unwrap().snapshot.unwrap();
    let c = source.compact().unwrap().snapshot.unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
}

#[test]
fn an_empty_replica_bootstraps_from_a_snapshot_and_follows_blocks_above_it() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(&dir.path().join("source")).topic("t").unwrap();
    fill(&source, 3000);
    let snapshot = source.compact().unwrap().snapshot.unwrap();
    let fresh = open(&dir.path().join("fresh")).topic("t").unwrap();
    copy_snapshot(&source, &fresh, snapshot);
    let outcome = fresh.merge_snapshot(snapshot).unwrap();
    assert!(!outcome.already_had);
    assert_eq!(contents(&fresh), contents(&source));
    assert_eq!(fresh.heads(), source.heads());
    assert_eq!(fresh.key_count(), source.key_count());
    assert!(fresh.snapshots().known.contains(&snapshot));

    // A block above the snapshot applies on the fresh replica: its parents count as applied.
    let next = source.put("key-000002", "newest").unwrap();
    let block = Block::decode("t", next.cid, &source.block(&next.cid).unwrap().unwrap(), &Default::default()).unwrap();
    assert_eq!(fresh.ingest(vec![block]).unwrap().applied, 1);
    assert_eq!(fresh.get(b"key-000002").unwrap(), Some(b"newest".to_vec()));
    // Merging again changes nothing.
    assert!(fresh.merge_snapshot(snapshot).unwrap().already_had);
    assert_eq!(contents(&fresh), contents(&source));
}

#[test]
fn a_snapshot_with_a_missing_or_foreign_part_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(&dir.path().join("source")).topic("t").unwrap();
    fill(&source, 20_000);
    let snapshot = source.compact().unwrap().snapshot.unwrap();
    let bytes = source.snapshot_part(&snapshot).unwrap().unwrap();
    let manifest = Manifest::decode(&snapshot, &bytes).unwrap();
    assert!(manifest.chunks.len() > 1);

    let store = open(&dir.path().join("fresh"));
    let fresh = store.topic("t").unwrap();
    fresh.stage_snapshot_parts(&[(snapshot, bytes.clone())]).unwrap();
    assert!(fresh.merge_snapshot(snapshot).is_err(), "no chunk is staged");
    assert!(contents(&fresh).is_empty() && fresh.heads().is_empty());
    let other = store.topic("other").unwrap();
    copy_snapshot(&source, &other, snapshot);
    assert!(other.merge_snapshot(snapshot).is_err(), "a snapshot of topic t is refused for another topic");
    assert!(other.heads().is_empty());
}

#[test]
fn a_topic_prunes_itself_past_the_threshold_and_makes_a_snapshot_when_one_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let options =
        StoreOptions { compact_after_blocks: 50, compact_after_bytes: 0, snapshot_retain_ms: Some(0), ..options() };
    let store = Store::open(dir.path(), options).unwrap();
    let topic = store.topic("t").unwrap();
    let first = topic.put("k0", "v").unwrap().cid;
    for i in 1..49 {
        topic.put(format!("k{i}"), "v").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(topic.snapshots().frontier.is_empty(), "49 blocks stay below the threshold");
    topic.put("k49", "v").unwrap();
    wait_until("the topic pruned itself", || !topic.snapshots().frontier.is_empty());
    wait_until("the first block is pruned", || topic.block(&first).unwrap().is_none());
    // A pruning makes no snapshot: the heads it pruned below stand for the pruned blocks.
    assert!(topic.snapshots().cover.is_empty());
    assert!(!topic.snapshot_parts_held());
    assert_eq!(topic.key_count(), 50);
    // A peer that needs a snapshot gets one made; its chunks are made from the rows when asked
    // for, never stored.
    topic.put("k50", "v").unwrap();
    topic.request_snapshot();
    wait_until("a snapshot is made", || topic.snapshots().cover.len() == 1);
    let snapshot = topic.snapshots().cover[0];
    assert!(topic.snapshots().frontier.is_empty(), "the snapshot covers what was pruned");
    let manifest = Manifest::decode(&snapshot, &topic.snapshot_part(&snapshot).unwrap().unwrap()).unwrap();
    assert_eq!(manifest.keys, 51);
    // Retention 0: the served snapshot is let go as soon as the compaction thread looks; the
    // manifest stays, the chunks can no longer be made.
    wait_until("the idle snapshot is let go", || !topic.snapshot_parts_held());
    assert!(topic.snapshot_part(&snapshot).unwrap().is_some());
    assert!(topic.snapshot_part(&manifest.chunks[0]).unwrap().is_none());
    assert_eq!(contents(&topic).len(), 51);
}

/// The child side of the crash tests: runs until the parent kills it.
#[test]
#[ignore = "run by the crash tests in a child process"]
fn crash_child() {
    let Ok(path) = std::env::var("CANOPY_CRASH_DIR") else { return };
    let store = open(std::path::Path::new(&path));
    match std::env::var("CANOPY_CRASH_MODE").unwrap().as_str() {
        "compact" => {
            let topic = store.topic("t").unwrap();
            println!("ready");
            loop {
                for i in (0..3000).step_by(11) {
                    topic.put(format!("key-{i:06}"), format!("again-{i}")).unwrap();
                }
                topic.compact().unwrap();
            }
        }
        _ => {
            let source = store.topic("t").unwrap();
            // A snapshot is served from a view of the rows, not kept across a restart: make one.
            source.serve_snapshot().unwrap();
            let snapshot = source.snapshots().cover[0];
            let target = open(&std::path::Path::new(&path).join("target"));
            println!("ready");
            loop {
                target.drop_topic("t").unwrap();
                let topic = target.topic("t").unwrap();
                copy_snapshot(&source, &topic, snapshot);
                topic.merge_snapshot(snapshot).unwrap();
                println!("merged");
            }
        }
    }
}

/// Starts the child in `mode` with the failpoint `failpoint` (if any) armed, and waits until it
/// is ready.
fn spawn(
    path: &std::path::Path,
    mode: &str,
    failpoint: Option<&str>,
) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "snapshots::crash_child", "--ignored", "--nocapture"])
        .env("CANOPY_CRASH_DIR", path)
        .env("CANOPY_CRASH_MODE", mode)
        .env_remove("CANOPY_FAILPOINT")
        .stdout(Stdio::piped());
    if let Some(failpoint) = failpoint {
        command.env("CANOPY_FAILPOINT", failpoint);
    }
    let mut child = command.spawn().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0, "the child ended early");
    }
    (child, stdout)
}

/// Starts the child in `mode`, waits until it is ready, lets it run, then kills it. Returns
/// the lines it printed after "ready".
fn crash(path: &std::path::Path, mode: &str, run: Duration) -> Vec<String> {
    let (mut child, stdout) = spawn(path, mode, None);
    std::thread::sleep(run);
    child.kill().unwrap();
    child.wait().unwrap();
    std::io::BufRead::lines(stdout).map_while(Result::ok).collect()
}

/// Starts the child in `mode` and kills it when it stops at `failpoint`, which it must reach
/// before it prints anything else.
fn crash_at(path: &std::path::Path, mode: &str, failpoint: &str) {
    let (mut child, mut stdout) = spawn(path, mode, Some(failpoint));
    let mut line = String::new();
    assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0, "the child ended early");
    assert_eq!(line.trim_end(), format!("failpoint {failpoint}"), "the child went past the failpoint");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_crash_during_compaction_leaves_the_topic_correct() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let store = open(dir.path());
        let topic = store.topic("t").unwrap();
        fill(&topic, 3000);
        for i in (0..3000).step_by(11) {
            topic.put(format!("key-{i:06}"), format!("again-{i}")).unwrap();
        }
        contents(&topic)
    };
    for run_ms in [150, 400, 900] {
        crash(dir.path(), "compact", Duration::from_millis(run_ms));
        let store = open(dir.path());
        let topic = store.topic("t").unwrap();
        assert_eq!(contents(&topic), expected, "after a kill {run_ms} ms in");
        assert_eq!(topic.key_count(), expected.len() as u64);
        topic.compact().unwrap();
        assert_eq!(contents(&topic), expected);
    }
}

#[test]
fn a_crash_during_a_merge_is_finished_when_the_topic_loads() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let store = open(dir.path());
        let source = store.topic("t").unwrap();
        fill(&source, 20_000);
        source.compact().unwrap();
        (contents(&source), source.heads())
    };
    let mut merged = 0;
    for run_ms in [100, 300, 700, 1500] {
        merged += crash(dir.path(), "merge", Duration::from_millis(run_ms)).len();
        let store = open(&dir.path().join("target"));
        let topic = store.topic("t").unwrap();
        if topic.heads().is_empty() {
            assert!(contents(&topic).is_empty(), "no heads, so nothing merged");
        } else {
            assert_eq!((contents(&topic), topic.heads()), expected, "after a kill {run_ms} ms in");
            assert_eq!(topic.key_count(), expected.0.len() as u64);
        }
    }
    assert!(merged > 0, "the child finished at least one merge");
}

#[test]
fn a_crash_around_the_row_file_ingest_is_finished_when_the_topic_loads() {
    // A fresh replica's merge ingests its rows as one file, then writes what goes with them (the
    // key count, the expiry index). The child stops right before the ingest, or between the
    // ingest and that write, and is killed there.
    const LEASES: usize = 40;
    const LEASE_END_MS: u64 = 4_102_444_800_000;
    for failpoint in ["merge-before-row-ingest", "merge-after-row-ingest"] {
        let dir = tempfile::tempdir().unwrap();
        let expected = {
            let store = open(dir.path());
            let source = store.topic("t").unwrap();
            fill(&source, 3000);
            let mut batch = Batch::new();
            for i in 0..LEASES {
                batch.put_until(format!("lease-{i:03}"), "held", LEASE_END_MS);
            }
            source.batch(batch).unwrap();
            source.compact().unwrap();
            (contents(&source), source.heads())
        };
        crash_at(dir.path(), "merge", failpoint);

        let now = Arc::new(AtomicU64::new(Clock::system().now()));
        let clock = {
            let now = now.clone();
            Clock::from_fn(move || now.load(Ordering::SeqCst))
        };
        let store = Store::open(dir.path().join("target"), StoreOptions { clock, ..options() }).unwrap();
        let topic = store.topic("t").unwrap();
        assert_eq!((contents(&topic), topic.heads()), expected, "killed at {failpoint}");
        assert_eq!(topic.key_count(), expected.0.len() as u64, "killed at {failpoint}: the key count counts the rows");
        // The expiring elements are indexed: they are collected once due, and leave the count.
        now.store(LEASE_END_MS, Ordering::SeqCst);
        let before = topic.key_count();
        topic.collect_expired().unwrap();
        assert_eq!(before - topic.key_count(), LEASES as u64, "killed at {failpoint}: the leases are collected");
        assert_eq!(contents(&topic).len(), expected.0.len() - LEASES);
    }
}

#[test]
fn a_replica_bootstrapped_from_a_snapshot_holds_what_one_that_applied_the_blocks_holds() {
    // The row file a fresh replica ingests goes with the same derived records (key count,
    // expiry index) as rows written block by block.
    const LEASES: usize = 40;
    const LEASE_END_MS: u64 = 4_102_444_800_000;
    let dir = tempfile::tempdir().unwrap();
    let now = Arc::new(AtomicU64::new(Clock::system().now()));
    let clock = {
        let now = now.clone();
        Clock::from_fn(move || now.load(Ordering::SeqCst))
    };
    let open_at = |name: &str| Store::open(dir.path().join(name), StoreOptions { clock: clock.clone(), ..options() });
    let source_store = open_at("source").unwrap();
    let source = source_store.topic("t").unwrap();
    let mut commits = fill(&source, 2000);
    let mut batch = Batch::new();
    for i in 0..LEASES {
        batch.put_until(format!("lease-{i:03}"), "held", LEASE_END_MS);
        batch.add(format!("hits-{i:03}"), 2);
    }
    commits.push(source.batch(batch).unwrap().unwrap().cid);
    let blocks: Vec<Block> = commits
        .iter()
        .map(|cid| Block::decode("t", *cid, &source.block(cid).unwrap().unwrap(), &Default::default()).unwrap())
        .collect();
    let snapshot = source.compact().unwrap().snapshot.unwrap();

    let from_snapshot_store = open_at("from-snapshot").unwrap();
    let from_snapshot = from_snapshot_store.topic("t").unwrap();
    copy_snapshot(&source, &from_snapshot, snapshot);
    assert!(!from_snapshot.merge_snapshot(snapshot).unwrap().already_had);
    let from_blocks_store = open_at("from-blocks").unwrap();
    let from_blocks = from_blocks_store.topic("t").unwrap();
    assert_eq!(from_blocks.ingest(blocks).unwrap().applied, commits.len());

    for replica in [&from_snapshot, &from_blocks] {
        assert_eq!(contents(replica), contents(&source));
        assert_eq!(replica.key_count(), source.key_count());
    }
    // Both indexed the expiring elements alike: collected once due, they leave the same count.
    now.store(LEASE_END_MS, Ordering::SeqCst);
    for replica in [&source, &from_snapshot, &from_blocks] {
        let before = replica.key_count();
        replica.collect_expired().unwrap();
        assert_eq!(before - replica.key_count(), LEASES as u64);
    }
    assert_eq!(contents(&from_snapshot), contents(&from_blocks));
    assert_eq!(from_snapshot.key_count(), from_blocks.key_count());
}

#[test]
fn a_remove_naming_a_foreign_cid_survives_a_snapshot() {
    // Any peer may publish a remove naming an element id no canopy block could have (another
    // codec or hash). Replicas accept such a block, so a snapshot of their state must merge too.
    let dir = tempfile::tempdir().unwrap();
    let source = open(&dir.path().join("source")).topic("t").unwrap();
    let base = source.put("key", "value").unwrap();
    let foreign: Cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".parse().unwrap();
    let delta = canopy_crdt::Delta { adds: vec![], removes: vec![(b"other".to_vec(), foreign)], ..Default::default() };
    let block = Block::build("t", vec![base.cid], base.height + 1, delta.encode(), &signer()).unwrap();
    assert_eq!(source.ingest(vec![block]).unwrap().applied, 1);
    let snapshot = source.compact().unwrap().snapshot.unwrap();
    let fresh = open(&dir.path().join("fresh")).topic("t").unwrap();
    copy_snapshot(&source, &fresh, snapshot);
    fresh.merge_snapshot(snapshot).unwrap();
    assert_eq!(fresh.heads(), source.heads());
    assert_eq!(contents(&fresh), contents(&source));
}

#[test]
fn every_chunk_of_a_large_snapshot_is_made_again_from_the_rows_and_merges_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a")).topic("t").unwrap();
    let b = open(&dir.path().join("b")).topic("t").unwrap();
    // Two replicas write every key at once: each row ends with two concurrent elements of about
    // 1.5 KiB, so a chunk holds an odd number of elements and some rows are cut in two.
    let mut written = (Vec::new(), Vec::new());
    for start in (0..1500).step_by(100) {
        for (topic, side, commits) in [(&a, "a", &mut written.0), (&b, "b", &mut written.1)] {
            let mut batch = Batch::new();
            for i in start..start + 100 {
                batch.put(format!("key-{i:05}"), format!("{side}-{i:05}-{}", "x".repeat(1500)));
            }
            commits.push(topic.batch(batch).unwrap().unwrap().cid);
        }
    }
    let blocks = |from: &Topic, cids: &[Cid]| -> Vec<Block> {
        cids.iter()
            .map(|cid| Block::decode("t", *cid, &from.block(cid).unwrap().unwrap(), &Default::default()).unwrap())
            .collect()
    };
    a.ingest(blocks(&b, &written.1)).unwrap();
    b.ingest(blocks(&a, &written.0)).unwrap();
    assert_eq!(a.heads(), b.heads());

    let snapshot = a.compact().unwrap().snapshot.unwrap();
    let manifest = Manifest::decode(&snapshot, &a.snapshot_part(&snapshot).unwrap().unwrap()).unwrap();
    assert_eq!((manifest.keys, manifest.elements), (1500, 3000));
    assert!(manifest.chunks.len() >= 4, "{} chunks", manifest.chunks.len());
    // Each chunk is made again from where it starts, in any order, and hashes to its CID.
    let mut chunks = BTreeMap::new();
    for cid in manifest.chunks.iter().rev() {
        let bytes = a.snapshot_part(cid).unwrap().expect("every chunk of the served snapshot is made");
        chunks.insert(*cid, canopy_crdt::snapshot::Chunk::decode(cid, &bytes).unwrap());
    }
    let ordered: Vec<_> = manifest.chunks.iter().map(|cid| &chunks[cid]).collect();
    let cut_rows = ordered
        .windows(2)
        .filter(|pair| {
            let (last, first) = (pair[0].elements.last(), pair[1].elements.first());
            last.zip(first).is_some_and(|(last, first)| last.key == first.key)
        })
        .count();
    assert!(cut_rows > 0, "a row is cut between two chunks");
    // The other replica, at the same heads, makes the same snapshot.
    assert_eq!(b.compact().unwrap().snapshot, Some(snapshot));
    // A fresh replica merges it and holds the same state.
    let fresh = open(&dir.path().join("fresh")).topic("t").unwrap();
    copy_snapshot(&a, &fresh, snapshot);
    fresh.merge_snapshot(snapshot).unwrap();
    assert_eq!(contents(&fresh), contents(&a));
    assert_eq!(fresh.heads(), a.heads());
}

#[test]
fn topics_each_below_the_thresholds_are_pruned_once_the_store_holds_its_budget_of_unpruned_blocks() {
    let dir = tempfile::tempdir().unwrap();
    // Each topic alone stays far below 64 MiB; together they pass the store's 8 MiB, and a
    // topic is pruned once it added a 64th of that (at least 1 MiB).
    let options = StoreOptions { compact_after_bytes: 64 << 20, unpruned_bytes_max: 8 << 20, ..options() };
    let store = Store::open(dir.path(), options).unwrap();
    let topics: Vec<Topic> = (0..8).map(|i| store.topic(&format!("t{i}")).unwrap()).collect();
    let value = "v".repeat(1200);
    for round in 0..15 {
        for topic in &topics {
            let mut batch = Batch::new();
            for i in 0..100 {
                batch.put(format!("key-{round:02}-{i:03}"), value.clone());
            }
            topic.batch(batch).unwrap();
        }
    }
    let pruned = || topics.iter().filter(|topic| !topic.snapshots().frontier.is_empty()).count();
    wait_until("most topics are pruned", || pruned() >= 4);
    for topic in &topics {
        assert_eq!(topic.key_count(), 1500, "pruning keeps every value");
    }
}
