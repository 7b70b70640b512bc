//! Compaction: write a snapshot of a topic at its current heads, then prune what it covers.
//!
//! The compaction runs on the caller's thread, beside the writer threads: the topic's writer
//! thread is held still only while RocksDB takes a snapshot of the database, so the state read
//! afterwards is exactly the state at the heads of that instant, and writes go on meanwhile.
//! Rows are never touched: compaction only adds snapshot parts and then drops covered block
//! payloads, so a crash at any point leaves the topic readable and correct, and the next
//! compaction starts again (parts left by an interrupted one are removed when the topic loads).
//! What the topic's writer thread does for a compaction is in `writer/compact.rs`.

use canopy_dag::{BlockMeta, CF_BLOCKS, CF_INDEX, Cid, TopicId};
use crossbeam_channel::bounded;
use rocksdb::{DB, Direction, IteratorMode, SnapshotWithThreadMode, WriteBatch, WriteOptions};

use crate::access::Mode;
use crate::error::{CompactError, StorageError, TopicError};
use crate::inner::StoreInner;
use crate::row::Row;
use crate::schema::{CF_HISTORY, CF_KV, CF_SNAPSHOTS, CF_TOMBSTONES, CF_WRITERS, TOPIC_FAMILIES};
use crate::shared::TopicShared;
use crate::snapshot::{ChunkWriter, SnapshotElement};
use crate::types::Compaction;
use crate::writer::Command;
use crate::writer::compact::{Records, compact_topic_range, parts_of, strip, topic_read_options};

/// Snapshot parts written per RocksDB write.
const PARTS_PER_WRITE: usize = 8;
/// Blocks pruned per RocksDB write.
const PRUNES_PER_WRITE: usize = 4096;

/// Compacts one topic: snapshot at the current heads, prune the covered blocks, drop the parts
/// of the snapshots the new one replaces, and compact the topic's RocksDB ranges.
pub(crate) fn compact(store: &StoreInner, shared: &TopicShared) -> Result<Compaction, CompactError> {
    if let crate::access::Access::Writers { owner } = shared.access
        && owner != store.signer.author()
    {
        return Err(CompactError::NotListOwner { owner });
    }
    let _one_at_a_time = shared.compacting.lock().expect("compaction lock");
    let topic = shared.id;
    let bytes_before = topic_bytes(store, topic);
    let (reply, frozen) = bounded(1);
    let (resume, resume_rx) = bounded(1);
    store.send(topic, Command::Freeze { topic, reply, resume: resume_rx }).map_err(|_| TopicError::Closed)?;
    let (heads, snapshots) = frozen.recv().map_err(|_| TopicError::Closed)??;
    let view = store.db.snapshot();
    let _ = resume.send(());

    let mut outcome =
        Compaction { heads: heads.clone(), bytes_before, bytes_after: bytes_before, ..Compaction::default() };
    if heads.is_empty() {
        return Ok(outcome);
    }
    let db = &store.db;
    // Parts bypass the log: they would queue local writes behind megabytes of log writes.
    // They are flushed to table files before the snapshot is recorded, so a recorded snapshot's
    // parts are always on disk, and an interrupted compaction's are removed at the next load.
    let mut unlogged = WriteOptions::default();
    unlogged.disable_wal(true);
    let mut parts = WriteBatch::default();
    let mut queued = 0usize;
    let mut failed: Option<rocksdb::Error> = None;
    let mut writer = ChunkWriter::new(|cid: Cid, bytes: Vec<u8>| {
        parts.put_cf(store.cf(CF_SNAPSHOTS), topic.key(&cid.to_bytes()), bytes);
        queued += 1;
        if queued >= PARTS_PER_WRITE {
            queued = 0;
            if let Err(error) = db.write_opt(std::mem::take(&mut parts), &unlogged) {
                failed.get_or_insert(error);
            }
        }
    });
    // An element expired by now is left out, as if collected: replicas that merge the snapshot
    // drop it too. So two snapshots of the same heads differ when an element expired between
    // them; each is the state of the heads at its own time.
    let now = store.options.clock.now();
    for item in scan(&view, store.cf(CF_KV), topic) {
        let (key, value) = item?;
        let row = Row::decode(&value).map_err(|e| StorageError::Corrupt(format!("row: {e}")))?;
        for element in row.elements().iter().filter(|element| !element.expired(now)) {
            writer.element(SnapshotElement {
                key: key.clone(),
                height: element.height,
                id: element.id,
                value: element.value.clone(),
                expires: element.expires,
            });
        }
    }
    for item in scan(&view, store.cf(CF_TOMBSTONES), topic) {
        let (key, _) = item?;
        let mut rest = key.as_slice();
        let id = Cid::read_bytes(&mut rest).map_err(|e| StorageError::Corrupt(format!("tombstone key: {e}")))?;
        writer.remove(id, rest.to_vec());
    }
    for item in scan(&view, store.cf(CF_INDEX), topic) {
        let (key, value) = item?;
        let (cid, meta) = index_record(&key, &value)?;
        writer.block(cid, meta.height);
    }
    if shared.access.mode() == Mode::Writers {
        // The clocks and list changes of every covered block: a replica bootstrapped from the
        // snapshot judges later blocks by the same writer lists.
        for item in scan(&view, store.cf(CF_WRITERS), topic) {
            let (key, value) = item?;
            writer.writer_record(key, value);
        }
    }
    let manifest = writer.finish(&shared.name, heads);
    let (manifest_cid, manifest_bytes) = manifest.encode();
    parts.put_cf(store.cf(CF_SNAPSHOTS), topic.key(&manifest_cid.to_bytes()), manifest_bytes);
    if let Some(error) = failed {
        return Err(StorageError::Rocks(error).into());
    }
    db.write_opt(parts, &unlogged).map_err(StorageError::from)?;
    db.flush_cf(store.cf(CF_SNAPSHOTS)).map_err(StorageError::from)?;
    outcome.snapshot = Some(manifest_cid);
    outcome.keys = manifest.keys;
    outcome.blocks = manifest.blocks;

    let (reply, recorded) = bounded(1);
    let command = Command::Covered { topic, manifest: manifest_cid, frozen_cover: snapshots.cover.clone(), reply };
    store.send(topic, command).map_err(|_| TopicError::Closed)?;
    let replaced = recorded.recv().map_err(|_| TopicError::Closed)??;

    // Prune: every block the snapshot covers keeps its height in the index and loses its bytes.
    let mut batch = WriteBatch::default();
    let mut in_batch = 0;
    for item in scan(&view, store.cf(CF_INDEX), topic) {
        let (key, value) = item?;
        let (cid, meta) = index_record(&key, &value)?;
        if meta.pruned {
            continue;
        }
        store.blocks.put_pruned(&mut batch, topic, &cid, meta.height);
        outcome.pruned_blocks += 1;
        in_batch += 1;
        if in_batch >= PRUNES_PER_WRITE {
            if shared.dropped.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(TopicError::Closed.into());
            }
            db.write(std::mem::take(&mut batch)).map_err(StorageError::from)?;
            in_batch = 0;
        }
    }
    // The history records of the pruned blocks go with them: what the view holds is exactly
    // what the snapshot covers.
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
    remove_parts(store, topic, &replaced, &[manifest_cid])?;
    // Rows are not changed by a compaction: only the ranges that lost records are compacted.
    for cf in [CF_BLOCKS, CF_INDEX, CF_SNAPSHOTS, CF_HISTORY] {
        compact_topic_range(db, store.cf(cf), topic);
    }
    outcome.bytes_after = topic_bytes(store, topic);
    Ok(outcome)
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

fn index_record(key: &[u8], value: &[u8]) -> Result<(Cid, BlockMeta), StorageError> {
    let cid = Cid::try_from(key).map_err(|e| StorageError::Corrupt(format!("index key: {e}")))?;
    let meta = BlockMeta::decode(value).map_err(|e| StorageError::Corrupt(format!("index record: {e}")))?;
    Ok((cid, meta))
}

/// A topic's records in one column family as seen by `view`, keys without the topic prefix.
fn scan<'a>(view: &'a SnapshotWithThreadMode<'a, DB>, cf: &rocksdb::ColumnFamily, topic: TopicId) -> Records<'a> {
    let prefix = topic.prefix();
    let iter = view.iterator_cf_opt(cf, topic_read_options(topic), IteratorMode::From(&prefix, Direction::Forward));
    Box::new(strip(iter, prefix))
}
