//! The writer threads: every RocksDB write of the engine happens here.
//!
//! Each thread owns the in-memory state of the topics assigned to it, so a topic's writes are
//! serialised without locks. A thread takes one command, then drains whatever else is queued
//! (up to `group_ops_max` operations and `group_bytes_max` bytes): consecutive local writes to
//! a topic become as few deltas as the protocol's block limits allow (group commit), and all
//! topics' deltas of a round go to RocksDB in one `WriteBatch`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use canopy_dag::{Block, BlockStore, Cid, Height, TopicId};
use crossbeam_channel::{Receiver, Sender};
use rayon::prelude::*;
use rocksdb::{DB, WriteBatch, WriteOptions};

use crate::delta::{Delta, DeltaError, Limits};
use crate::error::{IngestError, StorageError, TopicError, WriteError};
use crate::row::{Element, Row};
use crate::store::{
    CF_HEADS, CF_KV, CF_META, CF_PENDING, CF_TOMBSTONES, StoreInner, TopicShared, key_count_key, topic_name_key,
};
use crate::topic::{Change, Commit, Head, IngestOutcome, Op};

mod local;
mod tombstones;

use local::commit_local;
use tombstones::Tombstones;

/// Most CIDs remembered as rejected per topic, so bad blocks are not fetched again and again.
const REJECTED_REMEMBERED_MAX: usize = 65_536;

pub(crate) enum Command {
    Register(Box<TopicState>),
    Write(WriteRequest),
    Ingest { topic: TopicId, blocks: Vec<Block>, reply: Sender<Result<IngestOutcome, IngestError>> },
    Unknown { topic: TopicId, cids: Vec<Cid>, max: usize, reply: Sender<Result<Vec<Cid>, IngestError>> },
    Drop { topic: TopicId, reply: Sender<Result<(), TopicError>> },
}

impl Command {
    fn ops(&self) -> usize {
        match self {
            Command::Write(request) => request.ops.len(),
            Command::Ingest { blocks, .. } => blocks.len(),
            _ => 1,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Command::Write(request) => {
                request.ops.iter().map(|op| op.key().len() + op.value().map_or(0, <[u8]>::len)).sum()
            }
            Command::Ingest { blocks, .. } => blocks.iter().map(|b| b.bytes().len()).sum(),
            _ => 0,
        }
    }
}

pub(crate) struct WriteRequest {
    pub topic: TopicId,
    pub ops: Vec<Op>,
    pub reply: Sender<Result<Committed, WriteError>>,
}

/// Reply to one write request.
pub(crate) struct Committed {
    /// The block that carried the request, if the request changed anything.
    pub commit: Option<Commit>,
    /// Whether a delete of this request removed a live value.
    pub deleted: bool,
}

/// A topic's state as its writer thread holds it.
pub(crate) struct TopicState {
    pub shared: Arc<TopicShared>,
    heads: BTreeMap<Cid, Height>,
    key_count: u64,
    /// Received blocks whose parents are not all applied yet. Replicas serve catch-up bottom-up,
    /// so these are only blocks that overtook their parents; they live in memory, bounded by
    /// count and bytes, and the oldest are evicted first (an evicted block is fetched again).
    pending: HashMap<Cid, Block>,
    pending_order: VecDeque<Cid>,
    pending_bytes: usize,
    /// For each parent not yet applied, the pending blocks waiting for it.
    waiting: HashMap<Cid, Vec<Cid>>,
    /// For each pending block, how many of its parents are not yet applied.
    unresolved: HashMap<Cid, usize>,
    rejected: HashSet<Cid>,
    /// Tombstones stored for elements whose block is not applied yet.
    tombstones: u64,
    /// Blocks an earlier version left in the `pending` column family, to remove.
    legacy_pending: bool,
}

impl TopicState {
    /// Reads a topic's heads and counters from disk.
    pub fn load(store: &StoreInner, id: TopicId, name: &str) -> Result<TopicState, StorageError> {
        let db = &store.db;
        let mut heads = BTreeMap::new();
        let prefix = id.prefix();
        for item in db.prefix_iterator_cf(store.cf(CF_HEADS), prefix) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let cid =
                Cid::try_from(&key[prefix.len()..]).map_err(|e| StorageError::Corrupt(format!("head key: {e}")))?;
            let height: [u8; 8] = value.as_ref().try_into().map_err(|_| StorageError::Corrupt("head height".into()))?;
            heads.insert(cid, u64::from_be_bytes(height));
        }
        let key_count = match db.get_cf(store.cf(CF_META), key_count_key(id))? {
            Some(bytes) => {
                u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| StorageError::Corrupt("key count".into()))?)
            }
            None => 0,
        };
        let mut tombstones = 0;
        for item in db.prefix_iterator_cf(store.cf(CF_TOMBSTONES), prefix) {
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            tombstones += 1;
        }
        // Earlier versions kept out-of-order blocks on disk; they are fetched again instead, and
        // the writer thread removes them when it takes the topic.
        let legacy_pending = match db.prefix_iterator_cf(store.cf(CF_PENDING), prefix).next() {
            Some(item) => item?.0.starts_with(&prefix),
            None => false,
        };
        let shared = Arc::new(TopicShared {
            id,
            name: name.to_string(),
            heads: RwLock::new(heads.iter().map(|(cid, height)| Head { cid: *cid, height: *height }).collect()),
            key_count: AtomicU64::new(key_count),
            pending_count: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            dropped: AtomicBool::new(false),
        });
        Ok(TopicState {
            shared,
            heads,
            key_count,
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            pending_bytes: 0,
            waiting: HashMap::new(),
            unresolved: HashMap::new(),
            rejected: HashSet::new(),
            tombstones,
            legacy_pending,
        })
    }

    /// Records a received block as pending and links it to the parents it waits for.
    /// Returns true when all its parents are already applied.
    fn add_pending(&mut self, blocks: &BlockStore, block: Block) -> Result<bool, StorageError> {
        let cid = block.cid();
        let metas = blocks.metas(self.shared.id, block.links())?;
        let mut unresolved = 0;
        for (parent, meta) in block.links().iter().zip(metas) {
            if meta.is_none() {
                unresolved += 1;
                self.waiting.entry(*parent).or_default().push(cid);
            }
        }
        self.unresolved.insert(cid, unresolved);
        self.pending_bytes += block.bytes().len();
        self.pending_order.push_back(cid);
        self.pending.insert(cid, block);
        Ok(unresolved == 0)
    }

    fn remove_pending(&mut self, cid: &Cid) -> Option<Block> {
        self.unresolved.remove(cid);
        let block = self.pending.remove(cid)?;
        self.pending_bytes -= block.bytes().len();
        Some(block)
    }

    /// Evicts the oldest pending blocks until `bytes` more fit the bounds.
    fn make_room(&mut self, context: &Context, bytes: usize) {
        if self.pending_order.len() > 2 * self.pending.len() + 1024 {
            let pending = &self.pending;
            self.pending_order.retain(|cid| pending.contains_key(cid));
        }
        while !self.pending.is_empty()
            && (self.pending.len() > context.pending_blocks_max
                || self.pending_bytes + bytes > context.pending_bytes_max)
        {
            let Some(oldest) = self.pending_order.pop_front() else { break };
            let Some(block) = self.remove_pending(&oldest) else { continue };
            for parent in block.links() {
                if let Some(children) = self.waiting.get_mut(parent) {
                    children.retain(|child| *child != oldest);
                    if children.is_empty() {
                        self.waiting.remove(parent);
                    }
                }
            }
        }
        if self.pending.is_empty() {
            self.pending_order.clear();
        }
    }

    /// Pending blocks that become ready now that `parent` is applied.
    fn release_children(&mut self, parent: &Cid) -> Vec<Cid> {
        let mut ready = Vec::new();
        for child in self.waiting.remove(parent).unwrap_or_default() {
            if let Some(n) = self.unresolved.get_mut(&child) {
                *n -= 1;
                if *n == 0 {
                    ready.push(child);
                }
            }
        }
        ready
    }

    fn remember_rejected(&mut self, cid: Cid) {
        if self.rejected.len() >= REJECTED_REMEMBERED_MAX {
            self.rejected.clear();
        }
        self.rejected.insert(cid);
    }

    fn publish(&self) {
        *self.shared.heads.write().expect("heads lock") =
            self.heads.iter().map(|(cid, height)| Head { cid: *cid, height: *height }).collect();
        self.shared.key_count.store(self.key_count, Ordering::SeqCst);
        self.shared.pending_count.store(self.pending.len() as u64, Ordering::SeqCst);
    }

    fn has_watchers(&self) -> bool {
        !self.shared.watchers.lock().expect("watchers lock").is_empty()
    }

    fn notify(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut watchers = self.shared.watchers.lock().expect("watchers lock");
        // A sink that refuses a change (gone, or too far behind) is dropped rather than slowing
        // every writer.
        watchers.retain_mut(|sink| changes.iter().all(&mut *sink));
    }
}

/// What a writer thread needs of the store, without keeping the store alive.
pub(crate) struct Context {
    db: Arc<DB>,
    blocks: BlockStore,
    sync_writes: bool,
    group_ops_max: usize,
    group_bytes_max: usize,
    apply_blocks_max: usize,
    pending_blocks_max: usize,
    pending_bytes_max: usize,
    tombstones_max: u64,
    poisoned: Arc<AtomicBool>,
}

impl Context {
    pub fn new(store: &StoreInner) -> Context {
        let options = &store.options;
        Context {
            db: store.db.clone(),
            blocks: store.blocks.clone(),
            sync_writes: options.sync_writes,
            group_ops_max: options.group_ops_max,
            group_bytes_max: options.group_bytes_max,
            apply_blocks_max: options.apply_blocks_max,
            pending_blocks_max: options.pending_blocks_max,
            pending_bytes_max: options.pending_bytes_max,
            tombstones_max: options.tombstones_max,
            poisoned: store.poisoned.clone(),
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("every canopy column family is opened with the database")
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(self.sync_writes);
        self.db.write_opt(batch, &options).map_err(|error| {
            // After a failed write the WAL and memtable may disagree with what callers were
            // told; refuse further writes until the store is reopened.
            self.poisoned.store(true, Ordering::SeqCst);
            StorageError::Rocks(error)
        })
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }
}

fn delete_topic_range(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, id: TopicId) {
    match id.range_end() {
        Some(end) => batch.delete_range_cf(cf, id.prefix(), end),
        None => batch.delete_range_cf(cf, &id.prefix()[..], &[0xff; 64][..]),
    }
}

/// The writer thread's loop; ends when every sender is gone.
pub(crate) fn run(context: Context, commands: Receiver<Command>) {
    let mut topics: HashMap<TopicId, TopicState> = HashMap::new();
    while let Ok(first) = commands.recv() {
        let mut ops = first.ops();
        let mut bytes = first.bytes();
        let mut round = vec![first];
        while ops < context.group_ops_max && bytes < context.group_bytes_max {
            match commands.try_recv() {
                Ok(command) => {
                    ops += command.ops();
                    bytes += command.bytes();
                    round.push(command);
                }
                Err(_) => break,
            }
        }
        let mut group = Vec::new();
        for command in round {
            match command {
                Command::Write(request) => group.push(request),
                other => {
                    commit_local(&context, &mut topics, std::mem::take(&mut group));
                    handle(&context, &mut topics, other);
                }
            }
        }
        commit_local(&context, &mut topics, group);
    }
}

fn handle(context: &Context, topics: &mut HashMap<TopicId, TopicState>, command: Command) {
    match command {
        Command::Register(state) => {
            let id = state.shared.id;
            if state.legacy_pending {
                let mut batch = WriteBatch::default();
                delete_topic_range(&mut batch, context.cf(CF_PENDING), id);
                // A failure poisons the store; the records are harmless and removed next time.
                let _ = context.write(batch);
            }
            topics.insert(id, *state);
        }
        Command::Write(_) => unreachable!("writes are grouped by the caller"),
        Command::Ingest { topic, blocks, reply } => {
            let result = match topics.get_mut(&topic) {
                None => Err(IngestError::TopicDropped),
                Some(_) if context.is_poisoned() => Err(IngestError::Poisoned),
                Some(state) => ingest(context, state, blocks),
            };
            let _ = reply.send(result);
        }
        Command::Unknown { topic, cids, max, reply } => {
            let result = match topics.get(&topic) {
                None => Err(IngestError::TopicDropped),
                Some(state) => unknown(context, state, cids, max),
            };
            let _ = reply.send(result);
        }
        Command::Drop { topic, reply } => {
            let result = match topics.remove(&topic) {
                None => Ok(()),
                Some(state) => drop_topic(context, &state),
            };
            let _ = reply.send(result);
        }
    }
}

fn unknown(context: &Context, state: &TopicState, cids: Vec<Cid>, max: usize) -> Result<Vec<Cid>, IngestError> {
    // A block waiting for its parents counts as unknown: asking for it again is how its missing
    // ancestry is fetched (the answer brings the parents first).
    let candidates: BTreeSet<Cid> = cids.into_iter().filter(|cid| !state.rejected.contains(cid)).collect();
    let candidates: Vec<Cid> = candidates.into_iter().collect();
    let metas = context.blocks.metas(state.shared.id, &candidates).map_err(StorageError::from)?;
    Ok(candidates.into_iter().zip(metas).filter(|(_, meta)| meta.is_none()).map(|(cid, _)| cid).take(max).collect())
}

fn drop_topic(context: &Context, state: &TopicState) -> Result<(), TopicError> {
    state.shared.dropped.store(true, Ordering::SeqCst);
    let id = state.shared.id;
    let mut batch = WriteBatch::default();
    context.blocks.delete_topic(&mut batch, id);
    for cf in [CF_PENDING, CF_HEADS, CF_KV, CF_TOMBSTONES] {
        delete_topic_range(&mut batch, context.cf(cf), id);
    }
    batch.delete_cf(context.cf(CF_META), key_count_key(id));
    batch.delete_cf(context.cf(CF_META), topic_name_key(&state.shared.name));
    context.write(batch)?;
    state.shared.watchers.lock().expect("watchers lock").clear();
    Ok(())
}

/// Reads the rows of `keys` (topic-prefixed) in one batched lookup.
fn read_rows(context: &Context, keys: &[Vec<u8>]) -> Result<Vec<Row>, StorageError> {
    let values = context.db.batched_multi_get_cf(context.cf(CF_KV), keys, true);
    values
        .into_iter()
        .map(|value| match value? {
            None => Ok(Row::default()),
            Some(bytes) => Row::decode(&bytes).map_err(|e| StorageError::Corrupt(format!("row: {e}"))),
        })
        .collect()
}

/// Takes in received blocks and applies everything whose ancestry is complete.
fn ingest(context: &Context, state: &mut TopicState, blocks: Vec<Block>) -> Result<IngestOutcome, IngestError> {
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
struct Applied {
    applied: usize,
    rejected: Vec<(Cid, String)>,
}

/// Applies pending blocks whose parents are all applied, in causal order, in rounds of at most
/// `apply_blocks_max` blocks per RocksDB write. `ready` seeds the rounds; blocks they unblock
/// follow.
fn apply_ready(context: &Context, state: &mut TopicState, ready: Vec<Cid>) -> Result<Applied, IngestError> {
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
        total.rejected.extend(round.rejected);
    }
    if state.pending.is_empty() {
        state.pending_order.clear();
    }
    Ok(total)
}

/// Rows of the keys a round touches, each with its visible value before the round.
type RoundRows = BTreeMap<Vec<u8>, (Row, Option<Vec<u8>>)>;

fn apply_round(context: &Context, state: &mut TopicState, order: Vec<Block>) -> Result<Applied, IngestError> {
    let topic = state.shared.id;
    // Deltas are decoded in parallel under the protocol's limits (never this node's settings,
    // so every replica decides alike); the fold below stays sequential and causal.
    let deltas: Vec<Result<Delta, DeltaError>> =
        order.par_iter().map(|block| Delta::decode(block.payload(), &Limits::PROTOCOL)).collect();
    let mut rows = read_round_rows(context, topic, &deltas)?;
    let round_blocks: HashSet<Cid> = order.iter().map(Block::cid).collect();
    let mut tombs = Tombstones::load(context, state, &order, &deltas, &rows, &round_blocks)?;

    let mut batch = WriteBatch::default();
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
        let delta = match delta {
            Ok(delta) => delta,
            Err(error) => {
                reject(state, &mut bad, &mut result, cid, error.to_string());
                continue;
            }
        };
        let height = block.height();
        for (key, id) in &delta.removes {
            let row = &mut rows.get_mut(key).expect("every key of the round was read").0;
            if !row.remove(id) && !heights.contains_key(id) && !tombs.applied_before.contains(id) {
                // The element's block is not applied yet: the tombstone waits for it, so the
                // result does not depend on which of the two arrives first.
                tombs.store(context, state, &mut batch, key, *id);
            }
            changed_at.insert(key.clone(), height);
        }
        for (key, value) in delta.adds {
            if tombs.take(context, state, &mut batch, &key, cid) {
                continue;
            }
            rows.get_mut(&key).expect("every key of the round was read").0.insert(Element { height, id: cid, value });
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

    let kv = context.cf(CF_KV);
    let mut key_count = state.key_count as i64;
    let mut changes = Vec::new();
    for (key, height) in changed_at {
        let (row, before) = &rows[&key];
        let after = row.winner().map(|e| e.value.clone());
        key_count += i64::from(after.is_some()) - i64::from(before.is_some());
        if row.is_empty() {
            batch.delete_cf(kv, topic.key(&key));
        } else {
            batch.put_cf(kv, topic.key(&key), row.encode());
        }
        if &after != before {
            changes.push(Change { key, value: after, height });
        }
    }
    let heads_cf = context.cf(CF_HEADS);
    for (cid, _) in old_heads.iter().filter(|(cid, _)| !state.heads.contains_key(cid)) {
        batch.delete_cf(heads_cf, topic.key(&cid.to_bytes()));
    }
    for (cid, height) in state.heads.iter().filter(|(cid, _)| !old_heads.contains_key(cid)) {
        batch.put_cf(heads_cf, topic.key(&cid.to_bytes()), height.to_be_bytes());
    }
    let key_count = key_count.max(0) as u64;
    batch.put_cf(context.cf(CF_META), key_count_key(topic), key_count.to_be_bytes());
    if let Err(error) = context.write(batch) {
        state.heads = old_heads;
        state.tombstones = old_tombstones;
        return Err(IngestError::Storage(error));
    }
    state.key_count = key_count;
    state.publish();
    state.notify(changes);
    Ok(result)
}

/// Reads every row a round's deltas touch, in one batched lookup.
fn read_round_rows(
    context: &Context,
    topic: TopicId,
    deltas: &[Result<Delta, DeltaError>],
) -> Result<RoundRows, StorageError> {
    let mut keys: Vec<Vec<u8>> = deltas
        .iter()
        .flatten()
        .flat_map(|delta| delta.adds.iter().map(|(k, _)| k).chain(delta.removes.iter().map(|(k, _)| k)))
        .map(|key| topic.key(key))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let loaded = read_rows(context, &keys)?;
    let prefix_len = canopy_dag::TOPIC_ID_BYTES;
    Ok(keys
        .into_iter()
        .zip(loaded)
        .map(|(key, row)| {
            let before = row.winner().map(|e| e.value.clone());
            (key[prefix_len..].to_vec(), (row, before))
        })
        .collect())
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
