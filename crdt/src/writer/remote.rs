//! Remote apply: received blocks wait in memory until their parents are applied, then fold in
//! causal order into one `WriteBatch` per round.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use canopy_dag::{Block, Cid, Height, TopicId};
use rayon::prelude::*;
use rocksdb::WriteBatch;

use super::tombstones::Tombstones;
use super::{Context, TopicState, read_topic_rows};
use crate::access::Refusal;
use crate::delta::{Delta, DeltaError, Limits};
use crate::doc_row::Documents;
use crate::error::{IngestError, StorageError};
use crate::row::{Element, Row};
use crate::row_change::Notice;
use crate::schema::CF_HEADS;
use crate::types::IngestOutcome;

/// Takes in received blocks and applies everything whose ancestry is complete.
pub(super) fn ingest(
    context: &Context,
    state: &mut TopicState,
    blocks: Vec<Block>,
) -> Result<IngestOutcome, IngestError> {
    let mut outcome = IngestOutcome::default();
    let topic = state.shared.id;
    let mut fresh: Vec<Block> = Vec::new();
    let mut seen = HashSet::new();
    for block in blocks {
        let cid = block.cid();
        if state.rejected.contains(&cid) {
            outcome.rejected.push((cid, "rejected earlier".into()));
        } else if !state.pending.contains_key(&cid) && seen.insert(cid) {
            fresh.push(block);
        }
    }
    let cids: Vec<Cid> = fresh.iter().map(Block::cid).collect();
    let applied = context.blocks.metas(topic, &cids).map_err(StorageError::from)?;
    let mut ready = Vec::new();
    for (block, meta) in fresh.into_iter().zip(applied) {
        if meta.is_some() {
            outcome.duplicates.push(block.cid());
            continue;
        }
        if let Err(refusal) = state.shared.access.admits_block(&block) {
            // Decided by the block alone: every replica refuses it, and what builds on it.
            outcome.rejected.push((block.cid(), refusal.to_string()));
            outcome.refused += 1;
            state.remember_rejected(block.cid());
            continue;
        }
        if block.links().iter().any(|parent| state.rejected.contains(parent)) {
            outcome.rejected.push((block.cid(), "a parent was rejected".into()));
            state.remember_rejected(block.cid());
            continue;
        }
        let cid = block.cid();
        if state.add_pending(&context.blocks, block).map_err(IngestError::Storage)? {
            ready.push(cid);
        }
    }
    let applied = apply_ready(context, state, ready)?;
    outcome.applied = applied.applied;
    outcome.refused += applied.refused;
    outcome.heads_changed = applied.applied > 0;
    outcome.rejected.extend(applied.rejected);
    // The bound applies to what is still waiting once the batch has been applied: a batch
    // served bottom-up applies whole, however small the bound.
    state.make_room(context, 0);
    state.publish();
    outcome.pending = state.pending.len();
    Ok(outcome)
}

#[derive(Default)]
pub(super) struct Applied {
    applied: usize,
    rejected: Vec<(Cid, String)>,
    /// Rejected because the author may not write the topic (also among `rejected`).
    refused: usize,
}

/// Applies pending blocks whose parents are all applied, in causal order, in rounds of at most
/// `apply_blocks_max` blocks per RocksDB write. `ready` seeds the rounds; blocks they unblock
/// follow.
pub(super) fn apply_ready(context: &Context, state: &mut TopicState, ready: Vec<Cid>) -> Result<Applied, IngestError> {
    let mut queue: BinaryHeap<Reverse<(Height, Cid)>> = BinaryHeap::new();
    for cid in ready {
        if let Some(block) = state.pending.get(&cid) {
            queue.push(Reverse((block.height(), cid)));
        }
    }
    let mut total = Applied::default();
    while !queue.is_empty() {
        // Order one round causally (lowest height first, children released as parents go).
        let mut order = Vec::new();
        while order.len() < context.apply_blocks_max {
            let Some(Reverse((_, cid))) = queue.pop() else {
                break;
            };
            let Some(block) = state.remove_pending(&cid) else {
                continue;
            };
            for child in state.release_children(&cid) {
                let height = state.pending[&child].height();
                queue.push(Reverse((height, child)));
            }
            order.push(block);
        }
        let round = apply_round(context, state, order)?;
        total.applied += round.applied;
        total.refused += round.refused;
        total.rejected.extend(round.rejected);
    }
    if state.pending.is_empty() {
        state.pending_order.clear();
    }
    Ok(total)
}

/// Rows of the keys a round touches: each as the round changes it, and as it was before.
pub(super) type RoundRows = BTreeMap<Vec<u8>, (Row, Row)>;

/// A received block's delta, decoded under the protocol's limits, whose counter entries are
/// all its author's own.
fn decode_checked(block: &Block) -> Result<Delta, DeltaError> {
    let delta = Delta::decode(block.payload(), &Limits::PROTOCOL)?;
    crate::reserved::check_delta(&delta, &block.author())?;
    Ok(delta)
}

fn apply_round(context: &Context, state: &mut TopicState, order: Vec<Block>) -> Result<Applied, IngestError> {
    let topic = state.shared.id;
    // Deltas are decoded in parallel under the protocol's limits (never this node's settings,
    // so every replica decides alike); the fold below stays sequential and causal.
    let deltas: Vec<Result<Delta, DeltaError>> = order.par_iter().map(decode_checked).collect();
    let now = context.clock.now();
    let (mut rows, documents) = read_round_rows(context, state, &deltas)?;
    if let Some(lists) = &mut state.lists {
        lists.trim();
    }
    let round_blocks: HashSet<Cid> = order.iter().map(Block::cid).collect();
    let mut tombs = Tombstones::load(context, state, &order, &deltas, &rows, &round_blocks)?;

    let mut batch = WriteBatch::default();
    let mut rows_changed = context.row_changes(state, now);
    rows_changed.know_documents(documents);
    let mut result = Applied::default();
    let mut heights: HashMap<Cid, Height> = HashMap::new();
    let mut bad: HashSet<Cid> = HashSet::new();
    let mut changed_at: BTreeMap<Vec<u8>, Height> = BTreeMap::new();
    let old_heads = state.heads.clone();
    let old_tombstones = state.tombstones;
    for (block, delta) in order.iter().zip(deltas) {
        let cid = block.cid();
        if let Some(reason) = check_parents(context, topic, block, &heights, &bad)? {
            reject(state, &mut bad, &mut result, cid, reason);
            continue;
        }
        let mut delta = match delta {
            Ok(delta) => delta,
            Err(error) => {
                reject(state, &mut bad, &mut result, cid, error.to_string());
                continue;
            }
        };
        // Who may write is decided on the block's causal past: in a topic with a writer list,
        // the list its parents' clocks reach; in any other topic, a list change is refused.
        let past = match &mut state.lists {
            Some(lists) => Some(lists.past_of(&context.db, block.links()).map_err(IngestError::Storage)?),
            None => None,
        };
        let refusal = match (&mut state.lists, &past) {
            (Some(lists), Some(past)) => lists.decide(&block.author(), &delta, past).err(),
            _ if delta.changes_writers() => Some(Refusal::NoWriterList),
            _ => None,
        };
        if let Some(refusal) = refusal {
            reject(state, &mut bad, &mut result, cid, refusal.to_string());
            result.refused += 1;
            continue;
        }
        if let (Some(lists), Some(past)) = (&mut state.lists, past) {
            lists.record(&mut batch, &context.db, block, &delta, past);
        }
        let height = block.height();
        rows_changed.deletes(&mut batch, &delta, (height, &cid));
        for (key, id) in &delta.removes {
            let (row, before) = rows.get_mut(key).expect("every key of the round was read");
            if let Some(element) = row.elements().iter().find(|element| element.id == *id)
                && !before.contains(id)
            {
                // An element this round added and removes is a version that never shows in
                // the row written; those of the row before the round are recorded with it.
                rows_changed.version(&mut batch, key, (element.height, id), false);
            }
            if !row.remove(id) && !heights.contains_key(id) && !tombs.applied_before.contains(id) {
                // The element's block is not applied yet: the tombstone waits for it, so the
                // result does not depend on which of the two arrives first.
                tombs.store(context, state, &mut batch, key, *id);
            }
            changed_at.insert(key.clone(), height);
        }
        let expiries = std::mem::take(&mut delta.expiries);
        for (key, value) in delta.adds {
            let expires = expiries.binary_search_by(|(k, _)| k.cmp(&key)).ok().map(|at| expiries[at].1);
            let stored = !tombs.take(context, state, &mut batch, &key, cid) && expires.is_none_or(|at| at > now);
            if !stored {
                // Removed before it arrived, or expired before it arrived (as if collected at
                // once): a version all the same.
                rows_changed.version(&mut batch, &key, (height, &cid), false);
                continue;
            }
            let element = Element { height, id: cid, value, expires };
            rows.get_mut(&key).expect("every key of the round was read").0.insert(element);
            changed_at.insert(key, height);
        }
        for parent in block.links() {
            state.heads.remove(parent);
        }
        state.heads.insert(cid, height);
        heights.insert(cid, height);
        context.blocks.put(&mut batch, topic, block);
        result.applied += 1;
    }

    for (key, height) in changed_at {
        let (row, before) = &rows[&key];
        rows_changed.write(&mut batch, &key, before, row, Notice::ValueChanged(height));
    }
    let heads_cf = context.cf(CF_HEADS);
    for (cid, _) in old_heads.iter().filter(|(cid, _)| !state.heads.contains_key(cid)) {
        batch.delete_cf(heads_cf, topic.key(&cid.to_bytes()));
    }
    for (cid, height) in state.heads.iter().filter(|(cid, _)| !old_heads.contains_key(cid)) {
        batch.put_cf(heads_cf, topic.key(&cid.to_bytes()), height.to_be_bytes());
    }
    let sealed = rows_changed.seal(&mut batch);
    if let Err(error) = context.write(batch) {
        state.heads = old_heads;
        state.tombstones = old_tombstones;
        if let Some(lists) = &mut state.lists {
            // The cache may hold clocks of blocks that were not written.
            let _ = lists.reload(&context.db);
        }
        return Err(IngestError::Storage(error));
    }
    state.key_count = sealed.key_count;
    if let Some(at) = sealed.next_expiry {
        state.expires_at(at);
    }
    let bytes: usize = order.iter().map(|block| block.bytes().len()).sum();
    state.grew(context, result.applied as u64, bytes as u64);
    state.publish();
    state.notify(sealed.changes);
    Ok(result)
}

/// Reads every row a round's deltas touch, in one batched lookup.
fn read_round_rows(
    context: &Context,
    state: &TopicState,
    deltas: &[Result<Delta, DeltaError>],
) -> Result<(RoundRows, Documents), StorageError> {
    let topic = state.shared.id;
    let mut keys: Vec<Vec<u8>> = deltas
        .iter()
        .flatten()
        .flat_map(|delta| delta.adds.iter().map(|(k, _)| k).chain(delta.removes.iter().map(|(k, _)| k)))
        .map(|key| topic.key(key))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let (loaded, documents) = read_topic_rows(context, state, &keys)?;
    let prefix_len = canopy_dag::TOPIC_ID_BYTES;
    let rows =
        keys.into_iter().zip(loaded).map(|(key, row)| (key[prefix_len..].to_vec(), (row.clone(), row))).collect();
    Ok((rows, documents))
}

/// Checks that a block's parents are applied and its height is 1 + their largest height.
/// Returns why the block is refused, if it is.
fn check_parents(
    context: &Context,
    topic: TopicId,
    block: &Block,
    heights: &HashMap<Cid, Height>,
    bad: &HashSet<Cid>,
) -> Result<Option<String>, IngestError> {
    if block.links().iter().any(|parent| bad.contains(parent)) {
        return Ok(Some("a parent was rejected".into()));
    }
    let lookup: Vec<Cid> = block.links().iter().filter(|p| !heights.contains_key(*p)).copied().collect();
    let metas = context.blocks.metas(topic, &lookup).map_err(StorageError::from)?;
    let mut max_parent = 0;
    for parent in block.links() {
        let height = match heights.get(parent) {
            Some(height) => *height,
            None => match metas[lookup.iter().position(|p| p == parent).expect("looked up")] {
                Some(ref meta) => meta.height,
                None => return Ok(Some(format!("parent {parent} is not applied"))),
            },
        };
        max_parent = max_parent.max(height);
    }
    if block.height() != max_parent + 1 {
        return Ok(Some(format!("height {} is not 1 + largest parent height {max_parent}", block.height())));
    }
    Ok(None)
}

fn reject(state: &mut TopicState, bad: &mut HashSet<Cid>, result: &mut Applied, cid: Cid, reason: String) {
    bad.insert(cid);
    state.remember_rejected(cid);
    // Blocks waiting on a rejected block can never apply; they go when they become ready and
    // find their parent rejected, or when they are evicted.
    result.rejected.push((cid, reason));
}
