//! The writer threads: every RocksDB write of the engine happens here.
//!
//! Each thread owns the in-memory state of the topics assigned to it, so a topic's writes are
//! serialised without locks. A thread takes one command, then drains whatever else is queued
//! (up to `group_ops_max` operations and `group_bytes_max` bytes): consecutive local writes to
//! a topic become as few deltas as the protocol's block limits allow (group commit), and all
//! topics' deltas of a round go to RocksDB in one `WriteBatch`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use canopy_dag::{AuthorId, Block, BlockStore, Cid, Height, Signer, TopicId};

use crate::access::Access;
use crossbeam_channel::{Receiver, Sender};
use rocksdb::{DB, WriteBatch, WriteOptions};

use crate::error::{IngestError, MergeError, StorageError, TopicError, WriteError};
use crate::options::StoreOptions;
use crate::schema::{
    CF_HEADS, CF_META, CF_PENDING, CF_TOMBSTONES, META_COVER, META_FRONTIER, META_KNOWN, META_MERGE, decode_cids,
    key_count_key, meta_key,
};
use crate::shared::TopicShared;
use crate::types::{Change, Commit, Head, IngestOutcome, MergeOutcome, Op, Snapshots};
use crate::writer_list::{Lists, WriterList};

pub(crate) mod compact;
mod documents;
mod expire;
mod indexing;
mod local;
mod merge;
mod remote;
mod rows;
mod tombstones;
mod topic_drop;

pub(crate) use documents::DocChange;
use local::commit_local;
use remote::{RoundRows, apply_ready, ingest};
use rows::{build_key_filters, read_rows, read_topic_documents, read_topic_rows};
use topic_drop::{delete_topic_range, drop_topic};

/// Most CIDs remembered as rejected per topic, so bad blocks are not fetched again and again.
const REJECTED_REMEMBERED_MAX: usize = 65_536;

pub(crate) enum Command {
    /// Take over a loaded topic; reply once it is ready.
    Register(Box<TopicState>, Sender<()>),
    Write(WriteRequest),
    Ingest {
        topic: TopicId,
        blocks: Vec<Block>,
        reply: Sender<Result<IngestOutcome, IngestError>>,
    },
    Unknown {
        topic: TopicId,
        cids: Vec<Cid>,
        max: usize,
        reply: Sender<Result<Vec<Cid>, IngestError>>,
    },
    Drop {
        topic: TopicId,
        /// Drop only if the topic's heads are exactly these (sorted); the reply says whether it
        /// was dropped.
        only_at: Option<Vec<Cid>>,
        reply: Sender<Result<bool, TopicError>>,
    },
    /// Hold the thread still while a compaction takes its RocksDB snapshot: reply with the
    /// heads and snapshots, then wait for `resume`.
    Freeze {
        topic: TopicId,
        reply: Sender<Result<(Vec<Head>, Snapshots), TopicError>>,
        resume: Receiver<()>,
    },
    /// A snapshot `manifest` was made, of the heads at a freeze when the cover set was
    /// `frozen_cover`. The reply names the manifests it replaces.
    Covered {
        topic: TopicId,
        manifest: Cid,
        frozen_cover: Vec<Cid>,
        reply: Sender<Result<Vec<Cid>, TopicError>>,
    },
    /// A pruning of everything below `heads` (the heads at a freeze when the cover set was
    /// `frozen_cover`) is about to start. The reply names the manifests it replaces.
    Pruning {
        topic: TopicId,
        heads: Vec<Cid>,
        frozen_cover: Vec<Cid>,
        reply: Sender<Result<Vec<Cid>, TopicError>>,
    },
    /// Merge the staged snapshot `manifest`.
    Merge {
        topic: TopicId,
        manifest: Cid,
        reply: Sender<Result<MergeOutcome, MergeError>>,
    },
    /// Grant `writer` (or revoke it, when `grant` is false) on a topic's writer list.
    ChangeWriters {
        topic: TopicId,
        writer: AuthorId,
        grant: bool,
        reply: Sender<Result<Option<Commit>, WriteError>>,
    },
    /// The writer list at the topic's heads.
    Writers {
        topic: TopicId,
        reply: Sender<Result<Arc<WriterList>, TopicError>>,
    },
    /// Collect the topic's elements expired by now.
    Expire {
        topic: TopicId,
        reply: Sender<Result<(), TopicError>>,
    },
    /// Stop serving the topic's snapshot and delete the stored chunks of the snapshots in its
    /// cover, keeping their manifests.
    Release {
        topic: TopicId,
        reply: Sender<Result<(), TopicError>>,
    },
}

impl Command {
    fn ops(&self) -> usize {
        match self {
            Command::Write(request) => request.ops.len() + request.docs.iter().map(DocChange::fields).sum::<usize>(),
            Command::Ingest { blocks, .. } => blocks.len(),
            _ => 1,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Command::Write(request) => request.bytes(),
            Command::Ingest { blocks, .. } => blocks.iter().map(|b| b.bytes().len()).sum(),
            _ => 0,
        }
    }
}

pub(crate) struct WriteRequest {
    pub topic: TopicId,
    pub ops: Vec<Op>,
    /// Changes to documents, each whole (see `documents.rs`).
    pub docs: Vec<DocChange>,
    pub reply: Sender<Result<Committed, WriteError>>,
}

impl WriteRequest {
    /// Bytes of keys and values the request hands over.
    fn bytes(&self) -> usize {
        let ops: usize = self.ops.iter().map(|op| op.key().len() + op.value().map_or(0, <[u8]>::len)).sum();
        ops + self.docs.iter().map(DocChange::bytes).sum::<usize>()
    }
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
    snapshots: Snapshots,
    /// A snapshot merge was interrupted; the writer thread finishes it before anything else.
    merging: bool,
    /// Blocks and block bytes added since the last compaction (or since the topic loaded).
    grown_blocks: u64,
    grown_bytes: u64,
    /// `grown_blocks` and `grown_bytes` when the running compaction froze the topic: the blocks
    /// it covers.
    grown_at_freeze: (u64, u64),
    /// An automatic compaction was asked for and has not happened yet.
    compaction_requested: bool,
    /// The writer list's changes and clocks, for a topic created with mode `writers`.
    lists: Option<Lists>,
    /// When the earliest stored element of the topic that expires does.
    next_expiry: Option<u64>,
    /// The documents' indexes this replica maintains.
    indexes: crate::index::Indexes,
}

impl TopicState {
    /// Reads a topic's heads and counters from disk.
    pub fn load(db: &DB, id: TopicId, name: &str) -> Result<TopicState, StorageError> {
        let cf = |name: &str| db.cf_handle(name).expect("every canopy column family is opened with the database");
        let mut heads = BTreeMap::new();
        let prefix = id.prefix();
        for item in db.prefix_iterator_cf(cf(CF_HEADS), prefix) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let cid =
                Cid::try_from(&key[prefix.len()..]).map_err(|e| StorageError::Corrupt(format!("head key: {e}")))?;
            let height: [u8; 8] = value.as_ref().try_into().map_err(|_| StorageError::Corrupt("head height".into()))?;
            heads.insert(cid, u64::from_be_bytes(height));
        }
        let key_count = match db.get_cf(cf(CF_META), key_count_key(id))? {
            Some(bytes) => {
                u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| StorageError::Corrupt("key count".into()))?)
            }
            None => 0,
        };
        let mut tombstones = 0;
        for item in db.prefix_iterator_cf(cf(CF_TOMBSTONES), prefix) {
            let (key, _) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            tombstones += 1;
        }
        let snapshots = Snapshots {
            cover: read_cids(db, meta_key(META_COVER, id))?,
            frontier: read_cids(db, meta_key(META_FRONTIER, id))?,
            known: read_cids(db, meta_key(META_KNOWN, id))?,
        };
        let merging = db.get_cf(cf(CF_META), meta_key(META_MERGE, id))?;
        if merging.is_none() {
            compact::remove_orphan_parts(db, id, &snapshots.cover)?;
        }
        // Earlier versions kept out-of-order blocks on disk; they are fetched again instead, and
        // the writer thread removes them when it takes the topic.
        let legacy_pending = match db.prefix_iterator_cf(cf(CF_PENDING), prefix).next() {
            Some(item) => item?.0.starts_with(&prefix),
            None => false,
        };
        let access = Access::of(name).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let lists = match access {
            Access::Writers { owner } => Some(Lists::load(db, id, owner)?),
            _ => None,
        };
        let next_expiry = crate::expiry::first(db, id)?;
        let indexes = indexing::load(db, id)?;
        let shared = Arc::new(TopicShared {
            id,
            name: name.to_string(),
            access,
            heads: RwLock::new(heads.iter().map(|(cid, height)| Head { cid: *cid, height: *height }).collect()),
            key_count: AtomicU64::new(key_count),
            pending_count: AtomicU64::new(0),
            watchers: Mutex::new(Vec::new()),
            dropped: AtomicBool::new(false),
            snapshots: RwLock::new(snapshots.clone()),
            compacting: Mutex::new(()),
            serving: Mutex::new(None),
            parts_used_ms: AtomicU64::new(crate::types::wall_ms()),
            indexes: RwLock::new(Arc::new(indexes.maintained.iter().map(|index| index.status()).collect())),
            keys: crate::key_filter::KeyFilter::default(),
            journal: Arc::default(),
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
            snapshots,
            merging: merging.is_some(),
            grown_blocks: 0,
            grown_bytes: 0,
            grown_at_freeze: (0, 0),
            compaction_requested: false,
            lists,
            next_expiry,
            indexes,
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

    /// After blocks became applied other than by applying them (a merged snapshot): drops
    /// pending blocks that are applied now and recounts what the others wait for. Returns those
    /// ready to apply.
    fn recheck_pending(&mut self, context: &Context) -> Result<Vec<Cid>, StorageError> {
        let cids: Vec<Cid> = self.pending.keys().copied().collect();
        let applied = context.blocks.metas(self.shared.id, &cids)?;
        for (cid, meta) in cids.iter().zip(applied) {
            if meta.is_some() {
                self.remove_pending(cid);
            }
        }
        self.waiting.clear();
        let mut ready = Vec::new();
        let blocks: Vec<Block> = self.pending.values().cloned().collect();
        for block in blocks {
            let metas = context.blocks.metas(self.shared.id, block.links())?;
            let mut unresolved = 0;
            for (parent, meta) in block.links().iter().zip(metas) {
                if meta.is_none() {
                    unresolved += 1;
                    self.waiting.entry(*parent).or_default().push(block.cid());
                }
            }
            self.unresolved.insert(block.cid(), unresolved);
            if unresolved == 0 {
                ready.push(block.cid());
            }
        }
        Ok(ready)
    }

    /// Counts blocks added to the history and asks for a compaction once the policy's
    /// thresholds are passed.
    fn grew(&mut self, context: &Context, blocks: u64, bytes: u64) {
        self.grown_blocks += blocks;
        self.grown_bytes += bytes;
        let unpruned = context.unpruned_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let by_count = context.compact_after_blocks > 0 && self.grown_blocks >= context.compact_after_blocks;
        let by_size = context.compact_after_bytes > 0 && self.grown_bytes >= context.compact_after_bytes;
        // Many topics each below the thresholds: the store's budget prunes those that grew.
        let share = (context.unpruned_bytes_max / 64).max(1 << 20);
        let by_store =
            context.unpruned_bytes_max > 0 && unpruned >= context.unpruned_bytes_max && self.grown_bytes >= share;
        // A topic with a writer list is compacted by its owner alone.
        let compacts = match self.shared.access {
            Access::Writers { owner } => owner == context.signer.author(),
            _ => true,
        };
        if (by_count || by_size || by_store) && compacts && !self.compaction_requested {
            self.compaction_requested = true;
            let _ = context.compactions.try_send((self.shared.name.clone(), crate::types::Work::Prune));
        }
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
        *self.shared.snapshots.write().expect("snapshots lock") = self.snapshots.clone();
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
    compact_after_blocks: u64,
    compact_after_bytes: u64,
    /// Bytes of blocks added and not yet pruned over every topic of the store, shared by its
    /// writer threads, and the budget for them (`StoreOptions::unpruned_bytes_max`).
    unpruned_bytes: Arc<AtomicU64>,
    unpruned_bytes_max: u64,
    /// Whether blocks record the keys they put and delete (`StoreOptions::key_history`).
    key_history: bool,
    /// The wall clock expiring elements are judged by.
    clock: crate::expiry::Clock,
    compactions: Sender<(String, crate::types::Work)>,
    poisoned: Arc<AtomicBool>,
    /// Signs local blocks.
    signer: Signer,
    /// Index journal entries of the batch being made, and the journal thread they go to once
    /// it is written and its callers have heard back.
    staged: crate::index_journal::Staged,
    journal: Sender<crate::index_journal::Entry>,
}

impl Context {
    /// Changes of `state`'s rows judged at `now`, with this store's key history setting and the
    /// topic's watchers.
    fn row_changes(&self, state: &TopicState, now: u64) -> crate::row_change::RowChanges<'_> {
        crate::row_change::RowChanges::new(
            &self.db,
            state.shared.id,
            state.key_count,
            now,
            self.key_history,
            state.has_watchers(),
        )
        .with_indexes(&state.indexes)
        .with_key_filter(&state.shared.keys)
        .with_journal(&self.staged, &state.shared.journal)
    }

    pub fn new(
        db: Arc<DB>,
        options: &StoreOptions,
        signer: Signer,
        compactions: Sender<(String, crate::types::Work)>,
        poisoned: Arc<AtomicBool>,
        unpruned_bytes: Arc<AtomicU64>,
        journal: Sender<crate::index_journal::Entry>,
    ) -> Context {
        Context {
            signer,
            blocks: BlockStore::new(db.clone()).expect("the store opened every column family"),
            db,
            sync_writes: options.sync_writes,
            group_ops_max: options.group_ops_max,
            group_bytes_max: options.group_bytes_max,
            apply_blocks_max: options.apply_blocks_max,
            pending_blocks_max: options.pending_blocks_max,
            pending_bytes_max: options.pending_bytes_max,
            tombstones_max: options.tombstones_max,
            compact_after_blocks: options.compact_after_blocks,
            compact_after_bytes: options.compact_after_bytes,
            unpruned_bytes,
            unpruned_bytes_max: options.unpruned_bytes_max,
            key_history: options.key_history,
            clock: options.clock.clone(),
            compactions,
            poisoned,
            staged: crate::index_journal::Staged::default(),
            journal,
        }
    }

    /// Takes `bytes` pruned (or dropped) blocks off the store's count of unpruned bytes.
    fn forget_unpruned(&self, bytes: u64) {
        let _ = self
            .unpruned_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| Some(held.saturating_sub(bytes)));
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("every canopy column family is opened with the database")
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut options = WriteOptions::default();
        options.set_sync(self.sync_writes);
        match self.db.write_opt(batch, &options) {
            Ok(()) => {
                self.staged.release();
                Ok(())
            }
            Err(error) => {
                self.staged.discard();
                // WAL and memtable may disagree with the callers now: no writes until reopened.
                if !self.poisoned.swap(true, Ordering::SeqCst) {
                    tracing::error!(%error, "a write to the store failed; it refuses writes until it is reopened");
                }
                Err(StorageError::Rocks(error))
            }
        }
    }

    /// Hands the index journal entries of the batches written to the journal thread.
    fn send_journal(&self) {
        self.staged.send(&self.journal);
    }

    /// Waits until the topic's index records hold every change written so far, this thread's
    /// included: it writes records itself next.
    fn settle(&self, shared: &TopicShared) {
        self.send_journal();
        shared.journal.settle();
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }
}

fn read_cids(db: &DB, key: Vec<u8>) -> Result<Vec<Cid>, StorageError> {
    let meta = db.cf_handle(CF_META).expect("every canopy column family is opened with the database");
    match db.get_cf(meta, key)? {
        Some(bytes) => decode_cids(&bytes),
        None => Ok(Vec::new()),
    }
}

/// The writer thread's loop; ends when every sender is gone. Between commands it collects
/// the elements that fall due.
pub(crate) fn run(context: Context, commands: Receiver<Command>) {
    let mut topics: HashMap<TopicId, TopicState> = HashMap::new();
    // Whether an index is being built: the thread then builds while no command waits.
    let mut building = false;
    loop {
        // Entries staged for a batch that was never written are not the journal's; those of
        // the batches written go before the thread waits.
        context.staged.discard();
        context.send_journal();
        let first = if building {
            match commands.try_recv() {
                Ok(command) => Some(command),
                Err(crossbeam_channel::TryRecvError::Empty) => None,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            }
        } else {
            match expire::wait(&context, &topics) {
                None => match commands.recv() {
                    Ok(command) => Some(command),
                    Err(_) => return,
                },
                Some(wait) => match commands.recv_timeout(wait) {
                    Ok(command) => Some(command),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                },
            }
        };
        if let Some(first) = first {
            handle_round(&context, &mut topics, &commands, first);
        }
        expire::collect_due(&context, &mut topics);
        building = indexing::work(&context, &mut topics);
        building |= build_key_filters(&context, &topics);
    }
}

/// Handles `first` and the commands queued behind it, up to a group's limits: writes are
/// committed together, the other commands in their order between them.
fn handle_round(
    context: &Context,
    topics: &mut HashMap<TopicId, TopicState>,
    commands: &Receiver<Command>,
    first: Command,
) {
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
                commit_local(context, topics, std::mem::take(&mut group));
                handle(context, topics, other);
            }
        }
    }
    commit_local(context, topics, group);
}

fn handle(context: &Context, topics: &mut HashMap<TopicId, TopicState>, command: Command) {
    match command {
        Command::Register(state, reply) => {
            let id = state.shared.id;
            if state.legacy_pending {
                let mut batch = WriteBatch::default();
                delete_topic_range(&mut batch, context.cf(CF_PENDING), id);
                // A failure poisons the store; the records are harmless and removed next time.
                let _ = context.write(batch);
            }
            let mut state = *state;
            if state.merging {
                // A failure is kept for the next load; the topic stays readable meanwhile.
                if let Err(error) = merge::resume(context, &mut state) {
                    tracing::warn!(topic = %state.shared.name, %error, "resuming a snapshot merge failed");
                }
            }
            topics.insert(id, state);
            let _ = reply.send(());
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
        Command::Freeze { topic, reply, resume } => match topics.get_mut(&topic) {
            None => {
                let _ = reply.send(Err(TopicError::Closed));
            }
            Some(state) => {
                // The history the snapshot will cover: what grows after this counts toward the
                // next compaction.
                state.grown_at_freeze = (state.grown_blocks, state.grown_bytes);
                let heads = state.heads.iter().map(|(cid, height)| Head { cid: *cid, height: *height }).collect();
                if reply.send(Ok((heads, state.snapshots.clone()))).is_ok() {
                    // The caller takes its snapshot at once; a caller that died does not hold
                    // the thread for long.
                    let _ = resume.recv_timeout(std::time::Duration::from_secs(10));
                }
            }
        },
        Command::Covered { topic, manifest, frozen_cover, reply } => {
            let result = match topics.get_mut(&topic) {
                None => Err(TopicError::Closed),
                Some(state) => compact::record(context, state, manifest, &frozen_cover),
            };
            let _ = reply.send(result);
        }
        Command::Pruning { topic, heads, frozen_cover, reply } => {
            let result = match topics.get_mut(&topic) {
                None => Err(TopicError::Closed),
                Some(state) => compact::record_pruning(context, state, heads, &frozen_cover),
            };
            let _ = reply.send(result);
        }
        Command::Merge { topic, manifest, reply } => {
            let result = match topics.get_mut(&topic) {
                None => Err(MergeError::Topic(TopicError::Closed)),
                Some(_) if context.is_poisoned() => Err(MergeError::Topic(TopicError::Poisoned)),
                Some(state) => {
                    let merged = merge::merge(context, state, manifest);
                    // A merge may write rows without index upkeep (a fresh replica's row file):
                    // every index is built again from the merged rows.
                    indexing::rebuild(context, state);
                    merged
                }
            };
            let _ = reply.send(result);
        }
        Command::ChangeWriters { topic, writer, grant, reply } => {
            let result = match topics.get_mut(&topic) {
                None => Err(WriteError::TopicDropped),
                Some(state) => local::change_writers(context, state, writer, grant),
            };
            let _ = reply.send(result);
        }
        Command::Writers { topic, reply } => {
            let result = match topics.get_mut(&topic) {
                None => Err(TopicError::Closed),
                Some(state) => {
                    let heads: Vec<Cid> = state.heads.keys().copied().collect();
                    match state.lists.as_mut() {
                        None => Ok(Arc::new(WriterList::default())),
                        Some(lists) => lists.list_at_heads(&context.db, &heads).map_err(TopicError::from),
                    }
                }
            };
            let _ = reply.send(result);
        }
        Command::Expire { topic, reply } => {
            let result = match topics.get_mut(&topic) {
                None => Err(TopicError::Closed),
                Some(_) if context.is_poisoned() => Err(TopicError::Poisoned),
                Some(state) => expire::collect(context, state).map_err(TopicError::from),
            };
            let _ = reply.send(result);
        }
        Command::Release { topic, reply } => {
            let result = match topics.get_mut(&topic) {
                None => Err(TopicError::Closed),
                Some(state) => compact::release(context, state),
            };
            let _ = reply.send(result);
        }
        Command::Drop { topic, only_at, reply } => {
            let at_heads = |state: &TopicState| {
                let mut heads: Vec<Cid> = state.heads.keys().copied().collect();
                heads.sort_unstable();
                only_at.as_ref().is_none_or(|only_at| *only_at == heads)
            };
            let result = match topics.get(&topic) {
                None => Ok(true),
                // A write acknowledged before this command changed the heads: the topic stays.
                Some(state) if !at_heads(state) => Ok(false),
                Some(_) => {
                    let state = topics.remove(&topic).expect("the topic is there");
                    drop_topic(context, &state).map(|()| true)
                }
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
