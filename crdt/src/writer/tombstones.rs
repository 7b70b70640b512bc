//! Removes that arrive before the element they remove.

use std::collections::HashSet;

use canopy_dag::{Block, Cid};
use rocksdb::WriteBatch;

use super::{Context, RoundRows, TopicState};
use crate::delta::{Delta, DeltaError};
use crate::error::StorageError;
use crate::schema::{CF_TOMBSTONES, tombstone_key};

/// Tombstones of elements whose block was not applied when the remove arrived, as one round
/// sees them.
pub(super) struct Tombstones {
    /// Element ids named by the round's removes that were applied before the round.
    pub(super) applied_before: HashSet<Cid>,
    /// Stored tombstones that the round's adds match, plus those the round stores.
    known: HashSet<(Cid, Vec<u8>)>,
}

impl Tombstones {
    pub(super) fn load(
        context: &Context,
        state: &TopicState,
        order: &[Block],
        deltas: &[Result<Delta, DeltaError>],
        rows: &RoundRows,
        round_blocks: &HashSet<Cid>,
    ) -> Result<Tombstones, StorageError> {
        let topic = state.shared.id;
        // Removes that do not find their element in the row: was its block applied?
        let mut unmatched: Vec<Cid> = deltas
            .iter()
            .flatten()
            .flat_map(|delta| delta.removes.iter())
            .filter(|(key, id)| !round_blocks.contains(id) && !rows[key].0.contains(id))
            .map(|(_, id)| *id)
            .collect();
        unmatched.sort_unstable();
        unmatched.dedup();
        let metas = context.blocks.metas(topic, &unmatched)?;
        let applied_before = unmatched.into_iter().zip(metas).filter(|(_, m)| m.is_some()).map(|(id, _)| id).collect();
        let mut known = HashSet::new();
        if state.tombstones > 0 {
            let adds: Vec<(Cid, &Vec<u8>)> = order
                .iter()
                .zip(deltas)
                .filter_map(|(block, delta)| Some((block.cid(), delta.as_ref().ok()?)))
                .flat_map(|(cid, delta)| delta.adds.iter().map(move |(key, _)| (cid, key)))
                .collect();
            let keys: Vec<Vec<u8>> = adds.iter().map(|(cid, key)| tombstone_key(topic, cid, key)).collect();
            let found = context.db.batched_multi_get_cf(context.cf(CF_TOMBSTONES), &keys, false);
            for ((cid, key), value) in adds.into_iter().zip(found) {
                if value?.is_some() {
                    known.insert((cid, key.clone()));
                }
            }
        }
        Ok(Tombstones { applied_before, known })
    }

    /// Stores a tombstone for `(key, id)`, within the topic's bound.
    pub(super) fn store(
        &mut self,
        context: &Context,
        state: &mut TopicState,
        batch: &mut WriteBatch,
        key: &[u8],
        id: Cid,
    ) {
        if self.known.contains(&(id, key.to_vec())) {
            return;
        }
        if state.tombstones >= context.tombstones_max {
            tracing::warn!(topic = %state.shared.name, "tombstone bound reached; a remove of a missing element is not kept");
            return;
        }
        batch.put_cf(context.cf(CF_TOMBSTONES), tombstone_key(state.shared.id, &id, key), []);
        state.tombstones += 1;
        self.known.insert((id, key.to_vec()));
    }

    /// Whether the add of `key` by block `id` was removed before it arrived; the tombstone is
    /// consumed, since no later block can add the same element again.
    pub(super) fn take(
        &mut self,
        context: &Context,
        state: &mut TopicState,
        batch: &mut WriteBatch,
        key: &[u8],
        id: Cid,
    ) -> bool {
        if !self.known.remove(&(id, key.to_vec())) {
            return false;
        }
        batch.delete_cf(context.cf(CF_TOMBSTONES), tombstone_key(state.shared.id, &id, key));
        state.tombstones = state.tombstones.saturating_sub(1);
        true
    }
}
