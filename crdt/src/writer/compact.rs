//! What a topic's writer thread does for compactions: record a snapshot or a pruning as what
//! stands for the pruned blocks, release the served snapshot, and remove parts nobody uses;
//! plus the scans and range compactions the compaction (`crate::compaction`) and merge share.

use std::collections::HashSet;

use canopy_dag::{Cid, TopicId};
use rocksdb::{DB, WriteBatch};

use super::{Context, TopicState};
use crate::error::{StorageError, TopicError};
use crate::schema::{CF_META, CF_SNAPSHOTS, META_COVER, META_FRONTIER, META_KNOWN, encode_cids, meta_key, prefix_scan};
use crate::snapshot::Manifest;
use crate::types::KNOWN_SNAPSHOTS_MAX;

/// Records a snapshot made of the heads at a freeze: it becomes the cover of every pruned block
/// (those heads are above every block pruned before the freeze, and above the frontier, which
/// cannot change between: prunings and snapshots take the topic's compaction lock), together
/// with the snapshots merged since the freeze (the new one does not cover those). Returns the
/// manifests it replaces.
pub(super) fn record(
    context: &Context,
    state: &mut TopicState,
    manifest: Cid,
    frozen_cover: &[Cid],
) -> Result<Vec<Cid>, TopicError> {
    let mut cover = vec![manifest];
    cover.extend(merged_since(state, frozen_cover).filter(|cid| *cid != manifest));
    let mut known = state.snapshots.known.clone();
    remember(&mut known, manifest);
    let replaced = write_cover(context, state, cover, Vec::new(), known)?;
    state.publish();
    Ok(replaced)
}

/// Records, before a pruning of everything below `heads` (the heads at a freeze) starts, that
/// those heads now stand for the pruned blocks, beside the snapshots merged since the freeze.
/// Returns the manifests they replace.
pub(super) fn record_pruning(
    context: &Context,
    state: &mut TopicState,
    heads: Vec<Cid>,
    frozen_cover: &[Cid],
) -> Result<Vec<Cid>, TopicError> {
    let cover: Vec<Cid> = merged_since(state, frozen_cover).collect();
    let known = state.snapshots.known.clone();
    let replaced = write_cover(context, state, cover, heads, known)?;
    // Blocks applied while the pruning ran are not below its heads: they count toward the next.
    let (blocks, bytes) = std::mem::take(&mut state.grown_at_freeze);
    state.grown_blocks = state.grown_blocks.saturating_sub(blocks);
    let pruned = bytes.min(state.grown_bytes);
    state.grown_bytes -= pruned;
    context.forget_unpruned(pruned);
    state.compaction_requested = false;
    state.publish();
    Ok(replaced)
}

/// The cover's snapshots merged since a freeze that saw `frozen_cover`.
fn merged_since<'a>(state: &'a TopicState, frozen_cover: &'a [Cid]) -> impl Iterator<Item = Cid> + 'a {
    state.snapshots.cover.iter().filter(|cid| !frozen_cover.contains(cid)).copied()
}

/// Writes a new cover and frontier; returns the manifests that left the cover.
fn write_cover(
    context: &Context,
    state: &mut TopicState,
    cover: Vec<Cid>,
    frontier: Vec<Cid>,
    known: Vec<Cid>,
) -> Result<Vec<Cid>, TopicError> {
    let topic = state.shared.id;
    let replaced: Vec<Cid> = state.snapshots.cover.iter().filter(|cid| !cover.contains(cid)).copied().collect();
    let mut batch = WriteBatch::default();
    batch.put_cf(context.cf(CF_META), meta_key(META_COVER, topic), encode_cids(&cover));
    batch.put_cf(context.cf(CF_META), meta_key(META_FRONTIER, topic), encode_cids(&frontier));
    batch.put_cf(context.cf(CF_META), meta_key(META_KNOWN, topic), encode_cids(&known));
    context.write(batch)?;
    state.snapshots.cover = cover;
    state.snapshots.frontier = frontier;
    state.snapshots.known = known;
    Ok(replaced)
}

/// Stops serving the topic's snapshot and deletes the stored chunks of the cover's snapshots
/// (merged ones; their manifests stay, small). A peer that needs a snapshot gets a new one.
pub(super) fn release(context: &Context, state: &mut TopicState) -> Result<(), TopicError> {
    state.shared.serving.lock().expect("serving lock").take();
    delete_chunks(context, state.shared.id, &state.snapshots.cover)?;
    Ok(())
}

/// Deletes the stored chunks of the snapshots `manifests`, keeping the manifests.
pub(super) fn delete_chunks(context: &Context, topic: TopicId, manifests: &[Cid]) -> Result<(), StorageError> {
    let mut batch = WriteBatch::default();
    for manifest in manifests {
        let key = topic.key(&manifest.to_bytes());
        let Some(bytes) = context.db.get_cf(context.cf(CF_SNAPSHOTS), key)? else {
            continue;
        };
        let manifest =
            Manifest::decode(manifest, &bytes).map_err(|e| StorageError::Corrupt(format!("stored manifest: {e}")))?;
        for chunk in manifest.chunks {
            batch.delete_cf(context.cf(CF_SNAPSHOTS), topic.key(&chunk.to_bytes()));
        }
    }
    context.write(batch)?;
    Ok(())
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
