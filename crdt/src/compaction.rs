//! Compaction: prune a topic's history below its heads, and make the snapshot that stands for
//! it when a peer needs one.
//!
//! Both run on the caller's thread, beside the writer threads: the topic's writer thread is held
//! still only while RocksDB takes a snapshot of the database, so what is read afterwards is
//! exactly the state at the heads of that instant, and writes go on meanwhile. Rows are never
//! touched. A pruning first records its heads (the topic's *frontier*), then drops the payloads
//! of the blocks below them; its work is the history it prunes, not the state. A snapshot is
//! cut from a view of the rows by a thread that then keeps the view to make chunks again when
//! they are asked for ([`crate::serving`]): only its manifest is stored. A crash at any point
//! leaves the topic readable and correct; the next compaction starts again.
//! What a topic's writer thread does for a compaction is in `writer/compact.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use canopy_dag::{CF_BLOCKS, CF_INDEX, Cid, TopicId};
use crossbeam_channel::{Sender, bounded};
use rocksdb::{DB, SnapshotWithThreadMode, WriteBatch};

use crate::access::Mode;
use crate::error::{CompactError, StorageError, TopicError};
use crate::inner::StoreInner;
use crate::schema::scan_from;
use crate::schema::{CF_HISTORY, CF_SNAPSHOTS, TOPIC_FAMILIES};
use crate::schema::{Records, compact_topic_range};
use crate::serving::{Serving, Source};
use crate::shared::TopicShared;
use crate::types::{Compaction, Head, Snapshots, wall_ms};
use crate::writer::Command;
use crate::writer::compact::parts_of;

/// Blocks pruned per RocksDB write.
const PRUNES_PER_WRITE: usize = 4096;

/// Compacts one topic: prunes every block below the current heads, then makes a snapshot of
/// the heads after that, which this replica serves.
pub(crate) fn compact(store: &StoreInner, shared: &TopicShared) -> Result<Compaction, CompactError> {
    may_compact(store, shared)?;
    let _one_at_a_time = shared.compacting.lock().expect("compaction lock");
    let bytes_before = topic_bytes(store, shared.id);
    let mut outcome = prune_locked(store, shared)?;
    outcome.bytes_before = bytes_before;
    if outcome.heads.is_empty() {
        outcome.bytes_after = bytes_before;
        return Ok(outcome);
    }
    let Some(serving) = snapshot_locked(store, shared)? else {
        outcome.bytes_after = topic_bytes(store, shared.id);
        return Ok(outcome);
    };
    outcome.heads = serving.manifest.heads.clone();
    outcome.snapshot = Some(serving.manifest_cid);
    outcome.keys = serving.manifest.keys;
    outcome.blocks = serving.manifest.blocks;
    outcome.bytes_after = topic_bytes(store, shared.id);
    Ok(outcome)
}

/// Prunes every block below the topic's current heads, making no snapshot: what the policy
/// does as history grows. A peer that later lacks pruned blocks gets a snapshot made then.
pub(crate) fn prune(store: &StoreInner, shared: &TopicShared) -> Result<Compaction, CompactError> {
    may_compact(store, shared)?;
    let _one_at_a_time = shared.compacting.lock().expect("compaction lock");
    let bytes_before = topic_bytes(store, shared.id);
    let mut outcome = prune_locked(store, shared)?;
    outcome.bytes_before = bytes_before;
    outcome.bytes_after = topic_bytes(store, shared.id);
    Ok(outcome)
}

/// Makes a snapshot of the topic's current heads for peers that lack pruned blocks, unless the
/// one it serves already stands for all of them. Prunes nothing.
pub(crate) fn serve_snapshot(store: &StoreInner, shared: &TopicShared) -> Result<(), CompactError> {
    may_compact(store, shared)?;
    let _one_at_a_time = shared.compacting.lock().expect("compaction lock");
    if !serves_cover(shared) {
        snapshot_locked(store, shared)?;
    }
    Ok(())
}

/// Whether the snapshot this replica serves is the whole cover of its pruned blocks.
pub(crate) fn serves_cover(shared: &TopicShared) -> bool {
    let snapshots = shared.snapshots.read().expect("snapshots lock");
    let serving = shared.serving.lock().expect("serving lock");
    snapshots.frontier.is_empty() && serving.as_ref().is_some_and(|serving| snapshots.cover == [serving.manifest_cid])
}

fn may_compact(store: &StoreInner, shared: &TopicShared) -> Result<(), CompactError> {
    match shared.access {
        // Nobody takes a writer's snapshot: only the list's owner compacts.
        crate::access::Access::Writers { owner } if owner != store.signer.author() => {
            Err(CompactError::NotListOwner { owner })
        }
        _ => Ok(()),
    }
}

/// Holds the topic's writer thread still: returns the heads and snapshots of the instant, and
/// the sender that lets it go on (sent to or dropped once the caller took its view).
fn freeze(store: &StoreInner, shared: &TopicShared) -> Result<(Vec<Head>, Snapshots, Sender<()>), CompactError> {
    let topic = shared.id;
    let (reply, frozen) = bounded(1);
    let (resume, resume_rx) = bounded(1);
    store.send(topic, Command::Freeze { topic, reply, resume: resume_rx }).map_err(|_| TopicError::Closed)?;
    let (heads, snapshots) = frozen.recv().map_err(|_| TopicError::Closed)??;
    Ok((heads, snapshots, resume))
}

fn prune_locked(store: &StoreInner, shared: &TopicShared) -> Result<Compaction, CompactError> {
    let topic = shared.id;
    let db = &store.db;
    let (heads, snapshots, resume) = freeze(store, shared)?;
    let view = db.snapshot();
    let _ = resume.send(());
    let mut outcome = Compaction { heads: heads.clone(), ..Compaction::default() };
    if heads.is_empty() {
        return Ok(outcome);
    }
    // The heads stand for what is pruned before anything is: a crash in between leaves blocks
    // that are covered but still held.
    let (reply, recorded) = bounded(1);
    let heads_cids = heads.iter().map(|head| head.cid).collect();
    let command = Command::Pruning { topic, heads: heads_cids, frozen_cover: snapshots.cover.clone(), reply };
    store.send(topic, command).map_err(|_| TopicError::Closed)?;
    let replaced = recorded.recv().map_err(|_| TopicError::Closed)??;

    // Every block whose payload the view holds keeps its height in the index and loses its
    // bytes. The payloads are exactly the blocks not pruned yet, so the work is the history
    // since the last pruning, however long the pruned history is.
    let mut batch = WriteBatch::default();
    let mut in_batch = 0;
    let mut cids = Vec::with_capacity(PRUNES_PER_WRITE);
    let mut records = scan(&view, store.cf(CF_BLOCKS), topic).peekable();
    while let Some(item) = records.next() {
        let (key, _) = item?;
        cids.push(Cid::try_from(key.as_slice()).map_err(|e| StorageError::Corrupt(format!("block key: {e}")))?);
        if cids.len() < PRUNES_PER_WRITE && records.peek().is_some() {
            continue;
        }
        if shared.dropped.load(Ordering::SeqCst) {
            return Err(TopicError::Closed.into());
        }
        let metas = store.blocks.metas(topic, &cids).map_err(StorageError::from)?;
        for (cid, meta) in cids.drain(..).zip(metas) {
            let meta = meta.ok_or_else(|| StorageError::Corrupt(format!("block {cid} has no index record")))?;
            store.blocks.put_pruned(&mut batch, topic, &cid, meta.height);
            outcome.pruned_blocks += 1;
        }
        db.write(std::mem::take(&mut batch)).map_err(StorageError::from)?;
    }
    drop(records);
    // The history records of the pruned blocks go with them: what the view holds is exactly
    // what is pruned.
    let prefix = topic.prefix();
    for item in scan(&view, store.cf(CF_HISTORY), topic) {
        let (key, _) = item?;
        batch.delete_cf(store.cf(CF_HISTORY), [prefix.as_slice(), key.as_slice()].concat());
        in_batch += 1;
        if in_batch >= PRUNES_PER_WRITE {
            db.write(std::mem::take(&mut batch)).map_err(StorageError::from)?;
            in_batch = 0;
        }
    }
    db.write(batch).map_err(StorageError::from)?;
    drop(view);
    remove_parts(store, topic, &replaced, &[])?;
    // Rows are not changed: only the ranges that lost records are compacted.
    for cf in [CF_BLOCKS, CF_INDEX, CF_SNAPSHOTS, CF_HISTORY] {
        compact_topic_range(db, store.cf(cf), topic);
    }
    Ok(outcome)
}

/// Makes the snapshot of the current heads, stores its manifest, serves it and records it as
/// the cover. `None` for a topic with no history.
fn snapshot_locked(store: &StoreInner, shared: &TopicShared) -> Result<Option<Arc<Serving>>, CompactError> {
    let topic = shared.id;
    let (heads, snapshots, resume) = freeze(store, shared)?;
    if heads.is_empty() {
        return Ok(None);
    }
    // The view is taken while the writer thread stands at `heads`: the snapshot is of them.
    // Elements expired by now are left out, as if collected: replicas that merge the snapshot
    // drop them too. Two snapshots of the same heads differ when an element expired between
    // them; each is the state of the heads at its own time.
    let now = store.options.clock.now();
    let writers = shared.access.mode() == Mode::Writers;
    let source = Source { topic, name: shared.name.clone(), now, writers };
    let serving = Arc::new(Serving::start(store.db.clone(), source, move || {
        let _ = resume.send(());
    })?);
    let manifest_key = topic.key(&serving.manifest_cid.to_bytes());
    store.db.put_cf(store.cf(CF_SNAPSHOTS), manifest_key, &serving.manifest_bytes).map_err(StorageError::from)?;
    *shared.serving.lock().expect("serving lock") = Some(serving.clone());
    shared.parts_used_ms.store(wall_ms(), Ordering::SeqCst);
    let (reply, recorded) = bounded(1);
    let command =
        Command::Covered { topic, manifest: serving.manifest_cid, frozen_cover: snapshots.cover.clone(), reply };
    store.send(topic, command).map_err(|_| TopicError::Closed)?;
    let replaced = recorded.recv().map_err(|_| TopicError::Closed)??;
    remove_parts(store, topic, &replaced, &[serving.manifest_cid])?;
    Ok(Some(serving))
}

/// Compacts every RocksDB range of one topic down to the last level, memtables flushed first,
/// so overwritten and deleted records leave the disk: what `canopy-ops compact --db` does.
/// Returns the topic's bytes before and after.
pub(crate) fn compact_storage(store: &StoreInner, topic: TopicId) -> Result<(u64, u64), StorageError> {
    for cf in TOPIC_FAMILIES {
        store.db.flush_cf(store.cf(cf))?;
    }
    let before = topic_bytes(store, topic);
    let end = topic.range_end().map_or_else(|| vec![0xff; 64], |end| end.to_vec());
    let mut options = rocksdb::CompactOptions::default();
    options.set_exclusive_manual_compaction(false);
    options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
    for cf in TOPIC_FAMILIES {
        store.db.compact_range_cf_opt(store.cf(cf), Some(&topic.prefix()[..]), Some(&end[..]), &options);
    }
    Ok((before, topic_bytes(store, topic)))
}

/// Removes the parts of the `old` snapshots that no snapshot in `keep` also uses.
fn remove_parts(store: &StoreInner, topic: TopicId, old: &[Cid], keep: &[Cid]) -> Result<(), StorageError> {
    if old.is_empty() {
        return Ok(());
    }
    let kept = parts_of(&store.db, topic, keep)?;
    let mut batch = WriteBatch::default();
    for cid in parts_of(&store.db, topic, old)?.difference(&kept) {
        batch.delete_cf(store.cf(CF_SNAPSHOTS), topic.key(&cid.to_bytes()));
    }
    store.db.write(batch)?;
    Ok(())
}

/// Approximate bytes of a topic's records in every column family, as RocksDB estimates them
/// (memtables included).
fn topic_bytes(store: &StoreInner, topic: TopicId) -> u64 {
    let end = topic.range_end().map_or_else(|| vec![0xff; 64], |end| end.to_vec());
    let mut total = 0;
    let start = topic.prefix();
    for cf in TOPIC_FAMILIES {
        let range = rocksdb::Range::new(&start[..], &end[..]);
        total += store.db.get_approximate_sizes_cf(store.cf(cf), &[range]).first().copied().unwrap_or(0);
    }
    total
}

/// A topic's records in one column family as seen by `view`, keys without the topic prefix.
fn scan<'a>(view: &'a SnapshotWithThreadMode<'a, DB>, cf: &rocksdb::ColumnFamily, topic: TopicId) -> Records<'a> {
    scan_from(view, cf, topic, &[])
}
