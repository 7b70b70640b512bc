//! Bounded walks of a topic's DAG: what a peer lacks below given heads, and ancestor samples.

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
    /// Most blocks visited (index records only, no payloads), counting those only walked to
    /// prove the requester has them.
    pub visits_max: usize,
    /// Most CIDs returned as a frontier.
    pub frontier_max: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        // As many blocks as visits: a gap of small blocks as deep as one walk is served whole,
        // so no walk goes over blocks an earlier walk of the same gap already visited.
        WalkLimits { blocks_max: 16_384, bytes_max: 8 << 20, visits_max: 16_384, frontier_max: 256 }
    }
}

/// Result of [`walk_missing`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Blocks the requester lacks, lowest first, as `(cid, bytes)`: every parent of each block
    /// is either had by the requester or earlier in the list, so the requester applies them as
    /// they come and never holds a block whose ancestry is incomplete.
    pub blocks: Vec<(Cid, Vec<u8>)>,
    /// True when more blocks the requester lacks remain above these: ask again.
    pub more: bool,
    /// Set when the walk reached `visits_max` before the bottom of what the requester lacks:
    /// the wanted blocks where it stopped (at most `frontier_max`), highest first. The
    /// requester fetches below these first and then asks for its wants again; `blocks` is
    /// empty then.
    pub frontier: Vec<Cid>,
    /// Set when the requester may lack a block whose payload was pruned: only a snapshot can
    /// give it what it lacks. `blocks` is empty then, and `frontier` names the pruned block the
    /// walk reached (a pruned block has no links, so the walk cannot tell whether the requester
    /// has it: a requester that does names it as had and asks again).
    pub pruned: bool,
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

/// Finds the blocks below `wants` that are not below `haves` and returns the lowest of them.
///
/// The walk reads index records only, in decreasing height. A block's parents are all lower
/// than the block, so when a block is taken from the queue every block above it that links to
/// it has already been seen, and the walk knows whether the requester has it. The walk ends as
/// soon as nothing in the queue is wanted, so its cost follows what the requester lacks plus the
/// part of its own history at the same heights, not the depth of the DAG.
///
/// The answer is served bottom-up: the lowest missing blocks, within `blocks_max` and
/// `bytes_max`. A parent is strictly lower than its children, so the lowest blocks of a set that
/// is closed under "parent the requester lacks" are closed too, and the requester can apply them
/// at once. When the missing set is deeper than `visits_max`, the walk returns its frontier
/// instead, and the requester descends first. Unknown CIDs are skipped.
///
/// Pruned blocks (covered by a snapshot, payload gone) cannot be served. When the requester
/// holds every block this store has pruned (`pruned_had`: it merged the snapshots that cover
/// them) they count as had; otherwise reaching one the requester lacks ends the walk with
/// [`Walk::pruned`] set.
pub fn walk_missing(
    store: &BlockStore,
    topic: TopicId,
    wants: &[Cid],
    haves: &[Cid],
    limits: &WalkLimits,
    pruned_had: bool,
) -> Result<Walk, StoreError> {
    let mut walker = Walker { store, topic, queue: BinaryHeap::new(), seen: HashMap::new(), wanted_in_queue: 0 };
    walker.enqueue(wants, Side::Want, Height::MAX)?;
    // A had block above every wanted one would only spend visits before the walk reaches what
    // is wanted; leaving it out can only make the answer name blocks the requester has, which
    // it skips (and then names as had), never leave out one it lacks.
    let wanted_top = walker.queue.peek().map_or(0, |(height, _)| *height);
    walker.enqueue(haves, Side::Have, wanted_top)?;

    let mut missing: Vec<(Height, Cid)> = Vec::new();
    let mut visits = 0usize;
    while walker.wanted_in_queue > 0 {
        if visits >= limits.visits_max {
            return Ok(Walk { frontier: walker.frontier(limits.frontier_max), ..Walk::default() });
        }
        let Some((height, cid)) = walker.queue.pop() else {
            break;
        };
        visits += 1;
        let (side, links, pruned) = match walker.seen.get_mut(&cid) {
            Some((side, links, pruned)) => (std::mem::replace(side, Side::Done), std::mem::take(links), *pruned),
            None => continue,
        };
        if side == Side::Want {
            walker.wanted_in_queue -= 1;
            if pruned {
                if !pruned_had {
                    return Ok(Walk { pruned: true, frontier: vec![cid], ..Walk::default() });
                }
                continue;
            }
            missing.push((height, cid));
        }
        walker.enqueue(&links, side, Height::MAX)?;
    }

    missing.sort_unstable();
    let mut walk = Walk::default();
    let mut bytes = 0usize;
    for chunk in missing.chunks(READ_CHUNK) {
        let cids: Vec<Cid> = chunk.iter().map(|(_, cid)| *cid).collect();
        for (cid, block) in cids.into_iter().zip(store.get_many(topic, chunk.iter().map(|(_, cid)| cid))?) {
            if walk.blocks.len() >= limits.blocks_max || bytes >= limits.bytes_max {
                walk.more = true;
                return Ok(walk);
            }
            // An indexed block without bytes cannot be served; what is above it can wait.
            let Some(block) = block else {
                walk.more = true;
                return Ok(walk);
            };
            bytes += block.len();
            walk.blocks.push((cid, block));
        }
    }
    Ok(walk)
}

/// Blocks read from storage in one batched lookup while serving.
const READ_CHUNK: usize = 256;

struct Walker<'a> {
    store: &'a BlockStore,
    topic: TopicId,
    queue: BinaryHeap<(Height, Cid)>,
    /// Per block reached: the side it was reached from, its links, whether it is pruned.
    seen: HashMap<Cid, (Side, Vec<Cid>, bool)>,
    wanted_in_queue: usize,
}

impl Walker<'_> {
    /// The wanted blocks still queued, highest first, at most `max`.
    fn frontier(&self, max: usize) -> Vec<Cid> {
        let mut queued: Vec<(Height, Cid)> = self
            .queue
            .iter()
            .filter(|(_, cid)| self.seen.get(cid).is_some_and(|(side, _, _)| *side == Side::Want))
            .copied()
            .collect();
        queued.sort_unstable_by(|a, b| b.cmp(a));
        queued.dedup();
        queued.into_iter().take(max).map(|(_, cid)| cid).collect()
    }

    /// Queues `cids` (those no higher than `height_max`) as reached from `side`; a block reached
    /// from both sides counts as had.
    fn enqueue(&mut self, cids: &[Cid], side: Side, height_max: Height) -> Result<(), StoreError> {
        let mut fresh = Vec::new();
        for cid in cids {
            match self.seen.get_mut(cid) {
                Some((seen_side, _, _)) => {
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
            let Some(meta) = meta.filter(|meta| meta.height <= height_max) else { continue };
            if side == Side::Want {
                self.wanted_in_queue += 1;
            }
            self.seen.insert(*cid, (side, meta.links, meta.pruned));
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rocksdb::{DB, Options, WriteBatch};

    use super::*;
    use crate::block::Block;
    use crate::store::{CF_BLOCKS, CF_INDEX};

    fn store(dir: &tempfile::TempDir) -> BlockStore {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = DB::open_cf(&options, dir.path(), [CF_BLOCKS, CF_INDEX]).unwrap();
        BlockStore::new(Arc::new(db)).unwrap()
    }

    /// A chain of `n` blocks in `store`, bottom first.
    fn chain(store: &BlockStore, topic: TopicId, n: u64) -> Vec<Cid> {
        let mut cids: Vec<Cid> = Vec::new();
        let mut batch = WriteBatch::default();
        let signer = crate::Signer::from_secret([1; 32]);
        for height in 1..=n {
            let block = Block::build(
                "t",
                cids.last().copied().into_iter().collect(),
                height,
                height.to_be_bytes().to_vec(),
                &signer,
            )
            .unwrap();
            store.put(&mut batch, topic, &block);
            cids.push(block.cid());
        }
        store.db().write(batch).unwrap();
        cids
    }

    #[test]
    fn a_deep_gap_is_served_bottom_up_after_a_descent() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let topic = TopicId(1);
        let cids = chain(&store, topic, 100);
        let limits = WalkLimits { blocks_max: 8, bytes_max: 1 << 20, visits_max: 30, frontier_max: 4 };
        // The requester has the lowest ten blocks and wants the top.
        let walk = walk_missing(&store, topic, &[cids[99]], &[cids[9]], &limits, false).unwrap();
        assert!(walk.blocks.is_empty());
        assert_eq!(walk.frontier, vec![cids[69]], "the walk stops after 30 visits");
        let walk = walk_missing(&store, topic, &[cids[39]], &[cids[9]], &limits, false).unwrap();
        assert!(walk.frontier.is_empty());
        let served: Vec<Cid> = walk.blocks.iter().map(|(cid, _)| *cid).collect();
        assert_eq!(served, cids[10..18].to_vec(), "lowest missing blocks first");
        assert!(walk.more);
        let walk = walk_missing(&store, topic, &[cids[11]], &[cids[9]], &limits, false).unwrap();
        assert_eq!(walk.blocks.len(), 2);
        assert!(!walk.more && walk.frontier.is_empty());
    }

    #[test]
    fn blocks_are_served_parents_first_within_the_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let topic = TopicId(2);
        let cids = chain(&store, topic, 10);
        let limits = WalkLimits { blocks_max: 100, bytes_max: 1, visits_max: 1000, frontier_max: 4 };
        let walk = walk_missing(&store, topic, &[cids[9]], &[], &limits, false).unwrap();
        assert_eq!(walk.blocks.len(), 1, "the block that crosses the byte bound is the last one");
        assert_eq!(walk.blocks[0].0, cids[0]);
        assert!(walk.more);
    }

    #[test]
    fn a_requester_lacking_pruned_blocks_is_told_so_unless_it_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let topic = TopicId(3);
        let cids = chain(&store, topic, 10);
        let mut batch = WriteBatch::default();
        for (i, cid) in cids[..5].iter().enumerate() {
            store.put_pruned(&mut batch, topic, cid, i as u64 + 1);
        }
        store.db().write(batch).unwrap();
        let limits = WalkLimits::default();
        let walk = walk_missing(&store, topic, &[cids[9]], &[], &limits, false).unwrap();
        assert!(walk.pruned && walk.blocks.is_empty());
        let walk = walk_missing(&store, topic, &[cids[9]], &[], &limits, true).unwrap();
        let served: Vec<Cid> = walk.blocks.iter().map(|(cid, _)| *cid).collect();
        assert_eq!(served, cids[5..].to_vec(), "pruned blocks count as had by a requester holding them");
        let walk = walk_missing(&store, topic, &[cids[9]], &[cids[6]], &limits, false).unwrap();
        assert!(!walk.pruned, "a requester above the pruned blocks needs no snapshot");
        assert_eq!(walk.blocks.len(), 3);
    }
}
