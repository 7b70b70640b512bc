//! Compaction: write a snapshot of a topic at its current heads, then prune what it covers.
//!
//! The compaction runs on the caller's thread, beside the writer threads: the topic's writer
//! thread is held still only while RocksDB takes a snapshot of the database, so the state read
//! afterwards is exactly the state at the heads of that instant, and writes go on meanwhile.
//! Rows are never touched: compaction only adds snapshot parts and then drops covered block
//! payloads, so a crash at any point leaves the topic readable and correct, and the next
//! compaction starts again (parts left by an interrupted one are removed when the topic loads).

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use canopy_dag::{BlockMeta, CF_BLOCKS, CF_INDEX, Cid, TOPIC_ID_BYTES, TopicId};
use crossbeam_channel::bounded;
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, SnapshotWithThreadMode, WriteBatch, WriteOptions};

use super::{Command, Context, TopicState};
use crate::compactor::wall_ms;
use crate::error::{CompactError, StorageError, TopicError};
use crate::row::Row;
use crate::snapshot::{CHUNK_BYTES_TARGET, ChunkWriter, Manifest, SnapshotElement};
use crate::store::{
    CF_HEADS, CF_KV, CF_META, CF_SNAPSHOTS, CF_TOMBSTONES, KNOWN_SNAPSHOTS_MAX, META_COVER, META_KNOWN, StoreInner,
    TopicShared, encode_cids, meta_key,
};
use crate::topic::Compaction;

/// Snapshot parts written per RocksDB write.
const PARTS_PER_WRITE: usize = 8;
/// Blocks pruned per RocksDB write.
const PRUNES_PER_WRITE: usize = 4096;

/// Compacts one topic: snapshot at the current heads, prune the covered blocks, drop the parts
/// of the snapshots the new one replaces, and compact the topic's RocksDB ranges.
pub(crate) fn compact(store: &StoreInner, shared: &TopicShared) -> Result<Compaction, CompactError> {
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
    for item in scan(&view, store.cf(CF_KV), topic) {
        let (key, value) = item?;
        let row = Row::decode(&value).map_err(|e| StorageError::Corrupt(format!("row: {e}")))?;
        for element in row.elements() {
            writer.element(SnapshotElement {
                key: key.clone(),
                height: element.height,
                id: element.id,
                value: element.value.clone(),
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
    db.write(batch).map_err(StorageError::from)?;
    drop(view);
    remove_parts(store, topic, &replaced, &[manifest_cid])?;
    // Rows are not changed by a compaction: only the ranges that lost records are compacted.
    for cf in [CF_BLOCKS, CF_INDEX, CF_SNAPSHOTS] {
        compact_topic_range(db, store.cf(cf), topic);
    }
    outcome.bytes_after = topic_bytes(store, topic);
    Ok(outcome)
}

/// Records a finished snapshot on the writer thread: it becomes the cover of every pruned
/// block, together with the snapshots merged since the compaction froze the topic (the new one
/// does not cover those). Returns the manifests it replaces.
pub(super) fn record(
    context: &Context,
    state: &mut TopicState,
    manifest: Cid,
    frozen_cover: &[Cid],
) -> Result<Vec<Cid>, TopicError> {
    let topic = state.shared.id;
    let mut cover = vec![manifest];
    cover.extend(state.snapshots.cover.iter().filter(|cid| !frozen_cover.contains(cid) && **cid != manifest));
    let replaced: Vec<Cid> = state.snapshots.cover.iter().filter(|cid| !cover.contains(cid)).copied().collect();
    let mut known = state.snapshots.known.clone();
    remember(&mut known, manifest);
    let mut batch = WriteBatch::default();
    batch.put_cf(context.cf(CF_META), meta_key(META_COVER, topic), encode_cids(&cover));
    batch.put_cf(context.cf(CF_META), meta_key(META_KNOWN, topic), encode_cids(&known));
    context.write(batch)?;
    state.snapshots.cover = cover;
    state.snapshots.known = known;
    state.grown_blocks = 0;
    state.grown_bytes = 0;
    state.compaction_requested = false;
    state.snapshot_bytes = snapshot_bytes(&context.db, topic, &state.snapshots.cover)?;
    state.shared.parts_held.store(true, Ordering::SeqCst);
    state.shared.parts_used_ms.store(wall_ms(), Ordering::SeqCst);
    state.publish();
    Ok(replaced)
}

/// Deletes the chunks of the topic's cover snapshots (their manifests stay, small, so peers
/// still learn what covers the pruned blocks); a peer that needs them gets a new snapshot.
pub(super) fn release(context: &Context, state: &mut TopicState) -> Result<(), TopicError> {
    let topic = state.shared.id;
    let mut batch = WriteBatch::default();
    for manifest in &state.snapshots.cover {
        let key = topic.key(&manifest.to_bytes());
        let Some(bytes) = context.db.get_cf(context.cf(CF_SNAPSHOTS), key).map_err(StorageError::from)? else {
            continue;
        };
        let manifest =
            Manifest::decode(manifest, &bytes).map_err(|e| StorageError::Corrupt(format!("stored manifest: {e}")))?;
        for chunk in manifest.chunks {
            batch.delete_cf(context.cf(CF_SNAPSHOTS), topic.key(&chunk.to_bytes()));
        }
    }
    context.write(batch)?;
    state.shared.parts_held.store(false, Ordering::SeqCst);
    Ok(())
}

/// Approximate bytes of the snapshots `cover`: a chunk holds about [`CHUNK_BYTES_TARGET`].
pub(crate) fn snapshot_bytes(db: &DB, topic: TopicId, cover: &[Cid]) -> Result<u64, StorageError> {
    let cf = db.cf_handle(CF_SNAPSHOTS).expect("every canopy column family is opened with the database");
    let mut bytes = 0;
    for cid in cover {
        if let Some(stored) = db.get_cf(cf, topic.key(&cid.to_bytes()))? {
            let manifest =
                Manifest::decode(cid, &stored).map_err(|e| StorageError::Corrupt(format!("stored manifest: {e}")))?;
            bytes += manifest.chunks.len() as u64 * CHUNK_BYTES_TARGET as u64;
        }
    }
    Ok(bytes)
}

/// Adds `manifest` to a list of known snapshots, newest last, keeping the newest
/// [`KNOWN_SNAPSHOTS_MAX`].
pub(super) fn remember(known: &mut Vec<Cid>, manifest: Cid) {
    known.retain(|cid| *cid != manifest);
    known.push(manifest);
    if known.len() > KNOWN_SNAPSHOTS_MAX {
        known.remove(0);
    }
}

/// Removes the parts of the `old` snapshots that no snapshot in `keep` also uses.
fn remove_parts(store: &StoreInner, topic: TopicId, old: &[Cid], keep: &[Cid]) -> Result<(), StorageError> {
    if old.is_empty() {
        return Ok(());
    }
    let kept = parts_of(&store.db, store, topic, keep)?;
    let mut batch = WriteBatch::default();
    for cid in parts_of(&store.db, store, topic, old)?.difference(&kept) {
        batch.delete_cf(store.cf(CF_SNAPSHOTS), topic.key(&cid.to_bytes()));
    }
    store.db.write(batch)?;
    Ok(())
}

/// Removes snapshot parts that no snapshot of `cover` uses: those of a compaction or a fetch
/// that did not finish. Runs when a topic loads, before anything else writes parts.
pub(crate) fn remove_orphan_parts(store: &StoreInner, topic: TopicId, cover: &[Cid]) -> Result<(), StorageError> {
    let kept = parts_of(&store.db, store, topic, cover)?;
    let mut batch = WriteBatch::default();
    for item in prefix_scan(&store.db, store.cf(CF_SNAPSHOTS), topic) {
        let (key, _) = item?;
        let cid = Cid::try_from(key.as_slice()).map_err(|e| StorageError::Corrupt(format!("snapshot key: {e}")))?;
        if !kept.contains(&cid) {
            batch.delete_cf(store.cf(CF_SNAPSHOTS), topic.key(&key));
        }
    }
    store.db.write(batch)?;
    Ok(())
}

/// The manifests `manifests` and their chunks, as far as they are stored.
fn parts_of(db: &DB, store: &StoreInner, topic: TopicId, manifests: &[Cid]) -> Result<HashSet<Cid>, StorageError> {
    let mut parts = HashSet::new();
    for cid in manifests {
        parts.insert(*cid);
        if let Some(bytes) = db.get_cf(store.cf(CF_SNAPSHOTS), topic.key(&cid.to_bytes()))? {
            let manifest =
                Manifest::decode(cid, &bytes).map_err(|e| StorageError::Corrupt(format!("stored manifest: {e}")))?;
            parts.extend(manifest.chunks);
        }
    }
    Ok(parts)
}

/// Compacts one topic's range of a column family, beside RocksDB's own compactions rather than
/// holding them off (an exclusive manual compaction would let flushed files pile up and slow
/// the writes going on meanwhile).
pub(crate) fn compact_topic_range(db: &DB, cf: &rocksdb::ColumnFamily, topic: TopicId) {
    let end = topic.range_end().map_or_else(|| vec![0xff; 64], |end| end.to_vec());
    let mut options = rocksdb::CompactOptions::default();
    options.set_exclusive_manual_compaction(false);
    db.compact_range_cf_opt(cf, Some(&topic.prefix()[..]), Some(&end[..]), &options);
}

/// Approximate bytes of a topic's records in every column family, as RocksDB estimates them
/// (memtables included).
pub(crate) fn topic_bytes(store: &StoreInner, topic: TopicId) -> u64 {
    let end = topic.range_end().map_or_else(|| vec![0xff; 64], |end| end.to_vec());
    let mut total = 0;
    let start = topic.prefix();
    for cf in [CF_BLOCKS, CF_INDEX, CF_KV, CF_HEADS, CF_TOMBSTONES, CF_SNAPSHOTS] {
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

/// Reads options bounded to one topic's range.
fn topic_read_options(topic: TopicId) -> ReadOptions {
    let mut options = ReadOptions::default();
    options.set_prefix_same_as_start(true);
    if let Some(end) = topic.range_end() {
        options.set_iterate_upper_bound(end.to_vec());
    }
    options
}

type Records<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a>;

/// A topic's records in one column family as seen by `view`, keys without the topic prefix.
fn scan<'a>(view: &'a SnapshotWithThreadMode<'a, DB>, cf: &rocksdb::ColumnFamily, topic: TopicId) -> Records<'a> {
    let prefix = topic.prefix();
    let iter = view.iterator_cf_opt(cf, topic_read_options(topic), IteratorMode::From(&prefix, Direction::Forward));
    Box::new(strip(iter, prefix))
}

/// A topic's records in one column family, keys without the topic prefix.
pub(super) fn prefix_scan<'a>(db: &'a DB, cf: &rocksdb::ColumnFamily, topic: TopicId) -> Records<'a> {
    let prefix = topic.prefix();
    let iter = db.iterator_cf_opt(cf, topic_read_options(topic), IteratorMode::From(&prefix, Direction::Forward));
    Box::new(strip(iter, prefix))
}

fn strip<'a>(
    iter: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + 'a,
    prefix: [u8; TOPIC_ID_BYTES],
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a {
    iter.take_while(move |item| item.as_ref().map_or(true, |(key, _)| key.starts_with(&prefix))).map(|item| {
        let (key, value) = item?;
        Ok((key[TOPIC_ID_BYTES..].to_vec(), value.into_vec()))
    })
}
