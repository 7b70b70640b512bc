//! The writer threads: every RocksDB write of the engine happens here.
//!
//! Each thread owns the in-memory state of the topics assigned to it, so a topic's writes are
//! serialised without locks. A thread takes one command, then drains whatever else is queued
//! (up to `group_ops_max` operations): consecutive local writes to a topic become one delta
//! (group commit) and all topics' deltas of a round go to RocksDB in one `WriteBatch`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use canopy_dag::{Block, BlockStore, Cid, Height, TopicId};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use rayon::prelude::*;
use rocksdb::{DB, WriteBatch, WriteOptions};

use crate::delta::{Delta, DeltaError, Limits};
use crate::error::{IngestError, StorageError, TopicError, WriteError};
use crate::row::{Element, Row};
use crate::store::{
    CF_HEADS, CF_KV, CF_META, CF_PENDING, StoreInner, TopicShared, decode_pending, key_count_key, topic_name_key,
};
use crate::topic::{Change, Commit, Head, IngestOutcome, Op};

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
}

pub(crate) struct WriteRequest {
    pub topic: TopicId,
    pub ops: Vec<Op>,
    pub reply: Sender<Result<Committed, WriteError>>,
}

/// Reply to one write request.
pub(crate) struct Committed {
    /// The block of the group commit that carried the request, if the group changed anything.
    pub commit: Option<Commit>,
    /// Whether a delete of this request removed a live value.
    pub deleted: bool,
}

/// A topic's state as its writer thread holds it.
pub(crate) struct TopicState {
    pub shared: Arc<TopicShared>,
    heads: BTreeMap<Cid, Height>,
    key_count: u64,
    /// Received blocks whose ancestry is not yet applied.
    pending: HashMap<Cid, Block>,
    /// For each parent not yet applied, the pending blocks waiting for it.
    waiting: HashMap<Cid, Vec<Cid>>,
    /// For each pending block, how many of its parents are not yet applied.
    unresolved: HashMap<Cid, usize>,
    rejected: HashSet<Cid>,
}

impl TopicState {
    /// Reads a topic's heads, counters and pending blocks from disk.
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
        let shared = Arc::new(TopicShared {
            id,
            name: name.to_string(),
            heads: RwLock::new(heads.iter().map(|(cid, height)| Head { cid: *cid, height: *height }).collect()),
            key_count: AtomicU64::new(key_count),
            pending_count: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            dropped: AtomicBool::new(false),
        });
        let mut state = TopicState {
            shared,
            heads,
            key_count,
            pending: HashMap::new(),
            waiting: HashMap::new(),
            unresolved: HashMap::new(),
            rejected: HashSet::new(),
        };
        let mut stored = Vec::new();
        for item in db.prefix_iterator_cf(store.cf(CF_PENDING), prefix) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            // A pending record that no longer decodes is skipped: the block is fetched again.
            if let Some(block) = decode_pending(&key, &value, &store.options.block_limits) {
                stored.push(block);
            }
        }
        for block in stored {
            state.add_pending(&store.blocks, block)?;
        }
        state.publish();
        Ok(state)
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
        self.pending.insert(cid, block);
        Ok(unresolved == 0)
    }

    fn remove_pending(&mut self, cid: &Cid) -> Option<Block> {
        self.unresolved.remove(cid);
        self.pending.remove(cid)
    }

    fn remember_rejected(&mut self, cid: Cid) {
        if self.rejected.len() >= REJECTED_REMEMBERED_MAX {
            self.rejected.clear();
        }
        self.rejected.insert(cid);
    }

    fn max_height(&self) -> Height {
        self.heads.values().copied().max().unwrap_or(0)
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
        watchers.retain(|watcher| {
            changes.iter().all(|change| match watcher.try_send(change.clone()) {
                Ok(()) => true,
                // A watcher that cannot keep up is dropped rather than slowing every writer.
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            })
        });
    }

    /// Parents of pending blocks that are neither applied nor pending, sorted, at most `max`.
    fn missing(&self, max: usize) -> Vec<Cid> {
        let mut missing: Vec<Cid> = self
            .waiting
            .keys()
            .filter(|cid| !self.pending.contains_key(*cid) && !self.rejected.contains(*cid))
            .copied()
            .collect();
        missing.sort_unstable();
        missing.truncate(max);
        missing
    }
}

/// What a writer thread needs of the store, without keeping the store alive.
pub(crate) struct Context {
    db: Arc<DB>,
    blocks: BlockStore,
    limits: Limits,
    sync_writes: bool,
    group_ops_max: usize,
    apply_blocks_max: usize,
    pending_blocks_max: usize,
    poisoned: Arc<AtomicBool>,
}

impl Context {
    pub fn new(store: &StoreInner) -> Context {
        Context {
            db: store.db.clone(),
            blocks: store.blocks.clone(),
            limits: store.options.limits.clone(),
            sync_writes: store.options.sync_writes,
            group_ops_max: store.options.group_ops_max,
            apply_blocks_max: store.options.apply_blocks_max,
            pending_blocks_max: store.options.pending_blocks_max,
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

/// The writer thread's loop; ends when every sender is gone.
pub(crate) fn run(context: Context, commands: Receiver<Command>) {
    let mut topics: HashMap<TopicId, TopicState> = HashMap::new();
    while let Ok(first) = commands.recv() {
        let mut ops = first.ops();
        let mut round = vec![first];
        while ops < context.group_ops_max {
            match commands.try_recv() {
                Ok(command) => {
                    ops += command.ops();
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
            let mut state = *state;
            // Blocks left pending by a crash may have become applicable; a failure leaves them
            // pending and they are retried with the next ingest.
            let _ = apply_ready(context, &mut state, Vec::new());
            topics.insert(id, state);
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
    let candidates: Vec<Cid> =
        cids.into_iter().filter(|cid| !state.pending.contains_key(cid) && !state.rejected.contains(cid)).collect();
    let metas = context.blocks.metas(state.shared.id, &candidates).map_err(StorageError::from)?;
    let mut unknown: BTreeSet<Cid> =
        candidates.into_iter().zip(metas).filter(|(_, meta)| meta.is_none()).map(|(cid, _)| cid).collect();
    unknown.extend(state.missing(max));
    Ok(unknown.into_iter().take(max).collect())
}

fn drop_topic(context: &Context, state: &TopicState) -> Result<(), TopicError> {
    state.shared.dropped.store(true, Ordering::SeqCst);
    let id = state.shared.id;
    let mut batch = WriteBatch::default();
    context.blocks.delete_topic(&mut batch, id);
    for cf in [CF_PENDING, CF_HEADS, CF_KV] {
        match id.range_end() {
            Some(end) => batch.delete_range_cf(context.cf(cf), id.prefix(), end),
            None => batch.delete_range_cf(context.cf(cf), &id.prefix()[..], &[0xff; 64][..]),
        }
    }
    batch.delete_cf(context.cf(CF_META), key_count_key(id));
    batch.delete_cf(context.cf(CF_META), topic_name_key(&state.shared.name));
    context.write(batch)?;
    state.shared.watchers.lock().expect("watchers lock").clear();
    Ok(())
}

/// A topic's share of a group commit, ready to publish once the batch is written.
struct LocalCommit {
    topic: TopicId,
    requests: Vec<(Sender<Result<Committed, WriteError>>, bool)>,
    commit: Option<Commit>,
    key_count: u64,
    changes: Vec<Change>,
}

/// Commits queued local writes: one delta per topic, one RocksDB write for the round.
fn commit_local(context: &Context, topics: &mut HashMap<TopicId, TopicState>, group: Vec<WriteRequest>) {
    if group.is_empty() {
        return;
    }
    let mut by_topic: BTreeMap<TopicId, Vec<WriteRequest>> = BTreeMap::new();
    for request in group {
        by_topic.entry(request.topic).or_default().push(request);
    }
    let mut batch = WriteBatch::default();
    let mut commits = Vec::new();
    for (topic, requests) in by_topic {
        let Some(state) = topics.get(&topic) else {
            for request in requests {
                let _ = request.reply.send(Err(WriteError::TopicDropped));
            }
            continue;
        };
        if context.is_poisoned() {
            for request in requests {
                let _ = request.reply.send(Err(WriteError::Poisoned));
            }
            continue;
        }
        match prepare_local(context, state, requests, &mut batch) {
            Ok(commit) => commits.push(commit),
            Err((requests, error)) => {
                let message = error.to_string();
                for reply in requests {
                    let _ = reply.send(Err(WriteError::Storage(StorageError::Corrupt(message.clone()))));
                }
            }
        }
    }
    if commits.iter().all(|c| c.commit.is_none()) {
        for commit in commits {
            for (reply, deleted) in commit.requests {
                let _ = reply.send(Ok(Committed { commit: None, deleted }));
            }
        }
        return;
    }
    if let Err(error) = context.write(batch) {
        let message = error.to_string();
        for commit in commits {
            for (reply, _) in commit.requests {
                let _ = reply.send(Err(WriteError::Storage(StorageError::Corrupt(message.clone()))));
            }
        }
        return;
    }
    for commit in commits {
        let state = topics.get_mut(&commit.topic).expect("committed topics are registered");
        if let Some(block) = commit.commit {
            state.heads.clear();
            state.heads.insert(block.cid, block.height);
        }
        state.key_count = commit.key_count;
        state.publish();
        state.notify(commit.changes);
        for (reply, deleted) in commit.requests {
            let _ = reply.send(Ok(Committed { commit: commit.commit, deleted }));
        }
    }
}

type Replies = Vec<Sender<Result<Committed, WriteError>>>;

/// Builds one topic's delta and block from its queued requests and adds its writes to `batch`.
///
/// A local put supersedes every element of its key this replica knows (they are all in the
/// new block's causal past), so the delta tombstones them: rows stay one element long under
/// sequential overwrites on every replica, and deletes stay exact.
fn prepare_local(
    context: &Context,
    state: &TopicState,
    requests: Vec<WriteRequest>,
    batch: &mut WriteBatch,
) -> Result<LocalCommit, (Replies, StorageError)> {
    let topic = state.shared.id;
    // The last operation on each key, in key order, borrowed from the requests: a stable sort
    // keeps each key's operations in submission order, and the last of each run wins.
    let mut ops: Vec<(&[u8], Option<&[u8]>)> =
        requests.iter().flat_map(|request| request.ops.iter().map(|op| (op.key(), op.value()))).collect();
    ops.sort_by(|a, b| a.0.cmp(b.0));
    let mut last: Vec<(&[u8], Option<&[u8]>)> = Vec::with_capacity(ops.len());
    for op in ops {
        match last.last_mut() {
            Some(previous) if previous.0 == op.0 => *previous = op,
            _ => last.push(op),
        }
    }
    let keys: Vec<Vec<u8>> = last.iter().map(|(key, _)| topic.key(key)).collect();
    let rows = match read_rows(context, &keys) {
        Ok(rows) => rows,
        Err(error) => return Err((requests.into_iter().map(|r| r.reply).collect(), error)),
    };
    let replies = deleted_flags(&requests, &last, &rows);

    let mut adds: Vec<(&[u8], &[u8])> = Vec::with_capacity(last.len());
    let mut removes: Vec<(&[u8], Cid)> = Vec::new();
    for ((key, value), row) in last.iter().zip(&rows) {
        removes.extend(row.ids().map(|id| (*key, id)));
        if let Some(value) = value {
            adds.push((key, value));
        }
    }
    removes.sort_unstable();
    let mut commit =
        LocalCommit { topic, requests: replies, commit: None, key_count: state.key_count, changes: Vec::new() };
    if adds.is_empty() && removes.is_empty() {
        return Ok(commit);
    }
    let height = state.max_height() + 1;
    let block = match Block::build(state.heads.keys().copied().collect(), height, crate::delta::encode(&adds, &removes))
    {
        Ok(block) => block,
        Err(error) => {
            let replies = commit.requests.into_iter().map(|(reply, _)| reply).collect();
            return Err((replies, StorageError::Corrupt(format!("cannot build block: {error}"))));
        }
    };
    let id = block.cid().to_bytes();
    let watched = state.has_watchers();
    let kv = context.cf(CF_KV);
    let mut key_count = state.key_count as i64;
    for (((key, value), row), full_key) in last.iter().zip(&rows).zip(keys) {
        let was_live = !row.is_empty();
        match value {
            Some(value) => {
                key_count += i64::from(!was_live);
                batch.put_cf(kv, full_key, Row::encode_single(height, &id, value));
                if watched {
                    commit.changes.push(Change { key: key.to_vec(), value: Some(value.to_vec()), height });
                }
            }
            None if was_live => {
                key_count -= 1;
                batch.delete_cf(kv, full_key);
                if watched {
                    commit.changes.push(Change { key: key.to_vec(), value: None, height });
                }
            }
            None => {}
        }
    }
    let heads = context.cf(CF_HEADS);
    for old in state.heads.keys() {
        batch.delete_cf(heads, topic.key(&old.to_bytes()));
    }
    batch.put_cf(heads, topic.key(&id), height.to_be_bytes());
    commit.key_count = key_count.max(0) as u64;
    batch.put_cf(context.cf(CF_META), key_count_key(topic), commit.key_count.to_be_bytes());
    context.blocks.put(batch, topic, &block);
    commit.commit = Some(Commit { cid: block.cid(), height });
    Ok(commit)
}

/// Pairs each request's reply with whether one of its deletes removed a live value, replaying
/// the group in submission order. `last` and `rows` are the group's keys and their stored rows.
fn deleted_flags(
    requests: &[WriteRequest],
    last: &[(&[u8], Option<&[u8]>)],
    rows: &[Row],
) -> Vec<(Sender<Result<Committed, WriteError>>, bool)> {
    let any_delete = requests.iter().any(|r| r.ops.iter().any(|op| matches!(op, Op::Delete(_))));
    if !any_delete {
        return requests.iter().map(|r| (r.reply.clone(), false)).collect();
    }
    let mut live: HashMap<&[u8], bool> = last.iter().zip(rows).map(|((key, _), row)| (*key, !row.is_empty())).collect();
    requests
        .iter()
        .map(|request| {
            let mut deleted = false;
            for op in &request.ops {
                let was_live = live.insert(op.key(), matches!(op, Op::Put(..))).expect("every key was read");
                deleted |= matches!(op, Op::Delete(_)) && was_live;
            }
            (request.reply.clone(), deleted)
        })
        .collect()
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
    let mut new_pending = Vec::new();
    for (block, meta) in fresh.into_iter().zip(applied) {
        if meta.is_some() {
            continue;
        }
        if state.pending.len() >= context.pending_blocks_max {
            // Over the bound the block is dropped; it is requested again once the backlog drains.
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
        new_pending.push(cid);
    }
    let applied = apply_ready(context, state, ready)?;
    outcome.applied = applied.applied;
    outcome.heads_changed = applied.applied > 0;
    outcome.rejected.extend(applied.rejected);

    // Blocks still waiting are persisted so that a crash resumes the catch-up.
    let still_pending: Vec<&Block> = new_pending.iter().filter_map(|cid| state.pending.get(cid)).collect();
    if !still_pending.is_empty() {
        let mut batch = WriteBatch::default();
        for block in still_pending {
            batch.put_cf(context.cf(CF_PENDING), topic.key(&block.cid().to_bytes()), block.bytes());
        }
        context.write(batch)?;
    }
    state.publish();
    outcome.pending = state.pending.len();
    outcome.missing = state.missing(1024);
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
    let mut seeds = ready;
    if seeds.is_empty() {
        seeds = state.unresolved.iter().filter(|(_, n)| **n == 0).map(|(cid, _)| *cid).collect();
    }
    for cid in seeds {
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
            for child in state.waiting.remove(&cid).unwrap_or_default() {
                if let Some(n) = state.unresolved.get_mut(&child) {
                    *n -= 1;
                    if *n == 0 {
                        let height = state.pending[&child].height();
                        queue.push(Reverse((height, child)));
                    }
                }
            }
            order.push(block);
        }
        let round = apply_round(context, state, order)?;
        total.applied += round.applied;
        total.rejected.extend(round.rejected);
    }
    Ok(total)
}

fn apply_round(context: &Context, state: &mut TopicState, order: Vec<Block>) -> Result<Applied, IngestError> {
    let topic = state.shared.id;
    let limits = &context.limits;
    // Deltas are decoded in parallel; the fold below stays sequential and causal.
    let deltas: Vec<Result<Delta, DeltaError>> =
        order.par_iter().map(|block| Delta::decode(block.payload(), limits)).collect();

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
    let mut rows: BTreeMap<Vec<u8>, (Row, Option<Vec<u8>>)> = keys
        .into_iter()
        .zip(loaded)
        .map(|(key, row)| {
            let before = row.winner().map(|e| e.value.clone());
            (key[prefix_len..].to_vec(), (row, before))
        })
        .collect();

    let mut batch = WriteBatch::default();
    let mut result = Applied::default();
    let mut heights: HashMap<Cid, Height> = HashMap::new();
    let mut bad: HashSet<Cid> = HashSet::new();
    let mut changed_at: BTreeMap<Vec<u8>, Height> = BTreeMap::new();
    let old_heads = state.heads.clone();
    for (block, delta) in order.iter().zip(deltas) {
        let cid = block.cid();
        batch.delete_cf(context.cf(CF_PENDING), topic.key(&cid.to_bytes()));
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
            rows.get_mut(key).expect("every key of the round was read").0.remove(id);
            changed_at.insert(key.clone(), height);
        }
        for (key, value) in delta.adds {
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
        return Err(IngestError::Storage(error));
    }
    state.key_count = key_count;
    state.publish();
    state.notify(changes);
    Ok(result)
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
    // find their parent rejected.
    result.rejected.push((cid, reason));
}
