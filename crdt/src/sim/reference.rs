//! The semantics computed from scratch from a set of blocks, independent of the engine: what
//! the simulator checks every replica against.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use canopy_dag::{AuthorId, Block, Cid};

use crate::delta::{Delta, Limits};

/// The blocks of a topic with a writer list that its rule refuses, computed from scratch: each
/// block is judged by the list changes in its whole causal past (its ancestors, found through
/// the links), folded as an add-wins set. Independent of the engine's clocks. Blocks whose
/// parents are not all in `blocks` are judged by the part of their past that is.
pub fn reference_refused(owner: AuthorId, blocks: &BTreeMap<Cid, Block>) -> BTreeSet<Cid> {
    let limits = Limits::PROTOCOL;
    let mut order: Vec<&Block> = blocks.values().collect();
    order.sort_by_key(|block| (block.height(), block.cid()));
    // For every block, the list changes at or below it.
    let mut below: HashMap<Cid, BTreeSet<Cid>> = HashMap::new();
    let mut deltas: HashMap<Cid, Delta> = HashMap::new();
    let mut refused = BTreeSet::new();
    for block in order {
        let delta = Delta::decode(block.payload(), &limits).unwrap_or_default();
        let mut past: BTreeSet<Cid> = BTreeSet::new();
        for parent in block.links() {
            past.extend(below.get(parent).into_iter().flatten().copied());
        }
        let mut granted: BTreeSet<(AuthorId, Cid)> = BTreeSet::new();
        let mut revoked: BTreeSet<(AuthorId, Cid)> = BTreeSet::new();
        for change in &past {
            let change_delta = &deltas[change];
            granted.extend(change_delta.grants.iter().map(|writer| (*writer, *change)));
            revoked.extend(change_delta.revokes.iter().copied());
        }
        let author = block.author();
        let on_list = granted.iter().any(|grant| grant.0 == author && !revoked.contains(grant));
        let admitted = author == owner || (!delta.changes_writers() && on_list);
        let refused_parent = block.links().iter().any(|parent| refused.contains(parent));
        if !admitted || refused_parent {
            refused.insert(block.cid());
            continue;
        }
        if delta.changes_writers() {
            past.insert(block.cid());
            deltas.insert(block.cid(), delta);
        }
        below.insert(block.cid(), past);
    }
    refused
}

/// An element as `(height, value, element id)`: tuple order is the winner order.
type RankedElement = (u64, Vec<u8>, Cid);

/// The visible state that DESIGN's semantics give for a set of blocks, computed from scratch:
/// every element any block adds, minus every element any block tombstones; per key the live
/// element greatest by `(height, value, element id)` wins. Independent of the engine's storage.
/// Counter entries are left out: [`reference_counters`] sums them. Nothing has expired yet.
pub fn reference_state(blocks: &BTreeMap<Cid, Block>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    reference_state_at(blocks, 0)
}

/// [`reference_state`] at wall-clock time `now_ms`: an element whose expiry is at or before it
/// counts as removed.
pub fn reference_state_at(blocks: &BTreeMap<Cid, Block>, now_ms: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut state = reference_entries(blocks, now_ms);
    state.retain(|key, _| !crate::counter::is_reserved(key));
    state
}

/// The counters a set of blocks gives: per counter, the sum of its contributors' visible
/// totals under the same rules as [`reference_state`].
pub fn reference_counters(blocks: &BTreeMap<Cid, Block>) -> BTreeMap<Vec<u8>, i128> {
    let mut counters: BTreeMap<Vec<u8>, i128> = BTreeMap::new();
    for (entry, value) in reference_entries(blocks, 0) {
        if let (Some((key, _)), Some(total)) =
            (crate::counter::parse_entry(&entry), crate::counter::decode_total(&value))
        {
            *counters.entry(key).or_default() += i128::from(total);
        }
    }
    counters
}

/// The documents a set of blocks gives, under DESIGN's document rule: per document, each field
/// whose entry has a live element under the rules of [`reference_state`], with the winner's
/// JSON text; a document without such a field does not exist.
pub fn reference_docs(blocks: &BTreeMap<Cid, Block>) -> BTreeMap<Vec<u8>, BTreeMap<String, Vec<u8>>> {
    let mut docs: BTreeMap<Vec<u8>, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for (entry, value) in reference_entries(blocks, 0) {
        if let Some((key, field)) = crate::doc::parse_entry(&entry) {
            docs.entry(key).or_default().insert(field, value);
        }
    }
    docs
}

fn reference_entries(blocks: &BTreeMap<Cid, Block>, now_ms: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut added: BTreeMap<Vec<u8>, Vec<RankedElement>> = BTreeMap::new();
    let mut removed: BTreeSet<(Vec<u8>, Cid)> = BTreeSet::new();
    let limits = Limits::PROTOCOL;
    for (cid, block) in blocks {
        let Ok(delta) = Delta::decode(block.payload(), &limits) else {
            continue;
        };
        for (key, _) in delta.expiries.iter().filter(|(_, at)| *at <= now_ms) {
            removed.insert((key.clone(), *cid));
        }
        for (key, value) in delta.adds {
            added.entry(key).or_default().push((block.height(), value, *cid));
        }
        removed.extend(delta.removes);
    }
    added
        .into_iter()
        .filter_map(|(key, elements)| {
            let winner = elements.into_iter().filter(|(_, _, id)| !removed.contains(&(key.clone(), *id))).max()?;
            Some((key, winner.1))
        })
        .collect()
}
