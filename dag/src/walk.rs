use std::collections::{BinaryHeap, HashMap};

use cid::Cid;

use crate::block::Height;
use crate::store::{BlockStore, StoreError};
use crate::topic::TopicId;

/// Bounds on one DAG walk.
#[derive(Clone, Debug)]
pub struct WalkLimits {
    /// Most blocks returned.
    pub blocks_max: usize,
    /// Most block bytes returned; the walk stops after the block that crosses it.
    pub bytes_max: usize,
    /// Most blocks visited, counting those only walked to prove the requester has them.
    pub visits_max: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        WalkLimits { blocks_max: 4096, bytes_max: 8 << 20, visits_max: 65_536 }
    }
}

/// Result of [`walk_missing`].
#[derive(Debug, Default)]
pub struct Walk {
    /// Blocks the requester lacks, highest first, as `(cid, bytes)`.
    pub blocks: Vec<(Cid, Vec<u8>)>,
    /// True when a limit cut the walk short: more blocks below remain to be asked for.
    pub truncated: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Reached only from the wanted blocks: the requester lacks it.
    Want,
    /// Reached from something the requester has: it has this block too.
    Have,
    /// Already taken from the queue.
    Done,
}

/// Walks down from `wants` and returns the blocks below them that are not below `haves`.
///
/// Blocks are visited in decreasing height. A block's parents are all lower than the block, so
/// when a block is taken from the queue every block above it that links to it has already been
/// seen, and the block knows whether the requester has it. The walk ends as soon as nothing in
/// the queue is wanted, so its cost follows what the requester lacks plus the part of its own
/// history at the same heights, not the depth of the DAG. Unknown CIDs are skipped.
pub fn walk_missing(
    store: &BlockStore,
    topic: TopicId,
    wants: &[Cid],
    haves: &[Cid],
    limits: &WalkLimits,
) -> Result<Walk, StoreError> {
    let mut walker = Walker { store, topic, queue: BinaryHeap::new(), seen: HashMap::new(), wanted_in_queue: 0 };
    walker.enqueue(haves, Side::Have)?;
    walker.enqueue(wants, Side::Want)?;

    let mut walk = Walk::default();
    let mut bytes = 0usize;
    let mut visits = 0usize;
    while walker.wanted_in_queue > 0 {
        let Some((_, cid)) = walker.queue.pop() else {
            break;
        };
        visits += 1;
        if visits > limits.visits_max || walk.blocks.len() >= limits.blocks_max || bytes >= limits.bytes_max {
            walk.truncated = true;
            break;
        }
        let (side, links) = match walker.seen.get_mut(&cid) {
            Some((side, links)) => (std::mem::replace(side, Side::Done), std::mem::take(links)),
            None => continue,
        };
        if side == Side::Want {
            walker.wanted_in_queue -= 1;
            let Some(block) = store.get(topic, &cid)? else {
                continue;
            };
            bytes += block.len();
            walk.blocks.push((cid, block));
        }
        walker.enqueue(&links, side)?;
    }
    Ok(walk)
}

struct Walker<'a> {
    store: &'a BlockStore,
    topic: TopicId,
    queue: BinaryHeap<(Height, Cid)>,
    seen: HashMap<Cid, (Side, Vec<Cid>)>,
    wanted_in_queue: usize,
}

impl Walker<'_> {
    /// Queues `cids` as reached from `side`; a block reached from both sides counts as had.
    fn enqueue(&mut self, cids: &[Cid], side: Side) -> Result<(), StoreError> {
        let mut fresh = Vec::new();
        for cid in cids {
            match self.seen.get_mut(cid) {
                Some((seen_side, _)) => {
                    if side == Side::Have && *seen_side == Side::Want {
                        *seen_side = Side::Have;
                        self.wanted_in_queue -= 1;
                    }
                }
                None => fresh.push(*cid),
            }
        }
        fresh.sort_unstable();
        fresh.dedup();
        for (cid, meta) in fresh.iter().zip(self.store.metas(self.topic, &fresh)?) {
            let Some(meta) = meta else { continue };
            if side == Side::Want {
                self.wanted_in_queue += 1;
            }
            self.seen.insert(*cid, (side, meta.links));
            self.queue.push((meta.height, *cid));
        }
        Ok(())
    }
}

/// How far down [`sample_ancestors`] follows first parents.
const SAMPLE_DEPTH_MAX: u64 = 4096;

/// A few ancestors of `heads` at exponentially growing depths (1, 2, 4, ...), following first
/// parents, so that a peer serving a request can find common history even when it does not
/// know the requester's heads. Returns at most `max` CIDs.
pub fn sample_ancestors(store: &BlockStore, topic: TopicId, heads: &[Cid], max: usize) -> Result<Vec<Cid>, StoreError> {
    let mut sample = Vec::new();
    for head in heads {
        let mut current = *head;
        let mut depth = 0u64;
        let mut next_pick = 1u64;
        while sample.len() < max && depth < SAMPLE_DEPTH_MAX {
            let Some(meta) = store.meta(topic, &current)? else {
                break;
            };
            let Some(parent) = meta.links.first() else {
                break;
            };
            current = *parent;
            depth += 1;
            if depth == next_pick {
                sample.push(current);
                next_pick *= 2;
            }
        }
    }
    sample.sort_unstable();
    sample.dedup();
    Ok(sample)
}
