//! What a topic's writer thread does for compactions: record a finished snapshot as the
//! topic's cover, release parts, and remove parts nobody uses; plus the scans and range
//! compactions the compaction (`crate::compaction`) and merge share.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use canopy_dag::{Cid, TOPIC_ID_BYTES, TopicId};
use rocksdb::{DB, Direction, IteratorMode, ReadOptions, WriteBatch};

use super::{Context, TopicState};
use crate::error::{StorageError, TopicError};
use crate::schema::{CF_META, CF_SNAPSHOTS, META_COVER, META_KNOWN, encode_cids, meta_key};
use crate::snapshot::{CHUNK_BYTES_TARGET, Manifest};
use crate::types::{KNOWN_SNAPSHOTS_MAX, wall_ms};

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
    // Blocks applied while the compaction ran are not covered by it: they count toward the next.
    let (blocks, bytes) = std::mem::take(&mut state.grown_at_freeze);
    state.grown_blocks = state.grown_blocks.saturating_sub(blocks);
    state.grown_bytes = state.grown_bytes.saturating_sub(bytes);
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

/// Removes snapshot parts that no snapshot of `cover` uses: those of a compaction or a fetch
/// that did not finish. Runs when a topic loads, before anything else writes parts.
pub(crate) fn remove_orphan_parts(db: &DB, topic: TopicId, cover: &[Cid]) -> Result<(), StorageError> {
    let cf = db.cf_handle(CF_SNAPSHOTS).expect("every canopy column family is opened with the database");
    let kept = parts_of(db, topic, cover)?;
    let mut batch = WriteBatch::default();
    for item in prefix_scan(db, cf, topic) {
        let (key, _) = item?;
        let cid = Cid::try_from(key.as_slice()).map_err(|e| StorageError::Corrupt(format!("snapshot key: {e}")))?;
        if !kept.contains(&cid) {
            batch.delete_cf(cf, topic.key(&key));
        }
    }
    db.write(batch)?;
    Ok(())
}

/// The manifests `manifests` and their chunks, as far as they are stored.
pub(crate) fn parts_of(db: &DB, topic: TopicId, manifests: &[Cid]) -> Result<HashSet<Cid>, StorageError> {
    let cf = db.cf_handle(CF_SNAPSHOTS).expect("every canopy column family is opened with the database");
    let mut parts = HashSet::new();
    for cid in manifests {
        parts.insert(*cid);
        if let Some(bytes) = db.get_cf(cf, topic.key(&cid.to_bytes()))? {
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

/// Reads options bounded to one topic's range.
pub(crate) fn topic_read_options(topic: TopicId) -> ReadOptions {
    let mut options = ReadOptions::default();
    options.set_prefix_same_as_start(true);
    if let Some(end) = topic.range_end() {
        options.set_iterate_upper_bound(end.to_vec());
    }
    options
}

pub(crate) type Records<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a>;

/// A topic's records in one column family, keys without the topic prefix.
pub(crate) fn prefix_scan<'a>(db: &'a DB, cf: &rocksdb::ColumnFamily, topic: TopicId) -> Records<'a> {
    let prefix = topic.prefix();
    let iter = db.iterator_cf_opt(cf, topic_read_options(topic), IteratorMode::From(&prefix, Direction::Forward));
    Box::new(strip(iter, prefix))
}

pub(crate) fn strip<'a>(
    iter: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + 'a,
    prefix: [u8; TOPIC_ID_BYTES],
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a {
    iter.take_while(move |item| item.as_ref().map_or(true, |(key, _)| key.starts_with(&prefix))).map(|item| {
        let (key, value) = item?;
        Ok((key[TOPIC_ID_BYTES..].to_vec(), value.into_vec()))
    })
}
