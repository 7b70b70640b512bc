//! `Topic`, the handle to one topic of a store: reads, writes, watch, ingest and snapshots.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use canopy_dag::{AuthorId, Block, Cid, Height, TopicId, Walk, WalkLimits, sample_ancestors, walk_missing};
use crossbeam_channel::{Receiver, bounded};
use rocksdb::ReadOptions;

use crate::delta::{check_key, check_value};
use crate::error::{CompactError, IngestError, MergeError, ReadError, StorageError, TopicError, WriteError};
use crate::history::{self, Version};
use crate::inner::StoreInner;
use crate::row::Row;
use crate::schema::{CF_KV, CF_SNAPSHOTS};
use crate::shared::TopicShared;
use crate::types::{Change, Commit, Compaction, Head, IngestOutcome, MergeOutcome, Op};
use crate::types::{Sink, Snapshots, StorageCompaction};
use crate::writer::{Command, Committed, DocChange, WriteRequest};
use crate::{compaction, counter};

/// Operations applied as one atomic delta; the last operation on a key wins (increments of a
/// counter add up).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Batch {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }

    /// Adds a put whose value every replica hides from `expires_ms` (wall-clock milliseconds
    /// since the Unix epoch) on.
    pub fn put_until(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, expires_ms: u64) -> &mut Batch {
        self.ops.push(Op::PutUntil(key.into(), value.into(), expires_ms));
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Batch {
        self.ops.push(Op::Delete(key.into()));
        self
    }

    /// Adds an increment of the counter `key` by `n`; increments of one counter in a batch add
    /// up.
    pub fn add(&mut self, key: impl Into<Vec<u8>>, n: i64) -> &mut Batch {
        self.ops.push(Op::Add(key.into(), n));
        self
    }

    /// The operations, in the order they were added.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The operations, in the order they were added, taken out of the batch.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl From<Vec<Op>> for Batch {
    fn from(ops: Vec<Op>) -> Batch {
        Batch { ops }
    }
}

/// One page of a prefix query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Keys and visible values, in key order.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// The key to pass as `after` for the next page, when more entries remain.
    pub next: Option<Vec<u8>>,
}

/// Handle to one replicated topic. Cheap to clone; all clones see the same topic.
#[derive(Clone)]
pub struct Topic {
    pub(crate) store: Arc<StoreInner>,
    pub(crate) shared: Arc<TopicShared>,
}

impl Topic {
    pub(crate) fn new(store: Arc<StoreInner>, shared: Arc<TopicShared>) -> Topic {
        Topic { store, shared }
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Who may write the topic.
    pub fn access(&self) -> crate::access::Access {
        self.shared.access
    }

    /// The topic's id in this store.
    pub fn id(&self) -> TopicId {
        self.shared.id
    }

    /// Adds `writer` to the topic's writer list: one block, signed by this store's author, which
    /// must be the topic's owner. Returns `None`, writing nothing, when `writer` is on the list
    /// already.
    pub fn grant(&self, writer: AuthorId) -> Result<Option<Commit>, WriteError> {
        self.change_writers(writer, true)
    }

    /// Takes `writer` off the topic's writer list: one block revoking every grant of it this
    /// replica knows. Blocks `writer` makes over this one are refused everywhere; blocks it made
    /// concurrently stand. Returns `None` when `writer` is not on the list.
    pub fn revoke(&self, writer: AuthorId) -> Result<Option<Commit>, WriteError> {
        self.change_writers(writer, false)
    }

    fn change_writers(&self, writer: AuthorId, grant: bool) -> Result<Option<Commit>, WriteError> {
        let (reply, result) = bounded(1);
        let command = Command::ChangeWriters { topic: self.shared.id, writer, grant, reply };
        self.store.send(self.shared.id, command).map_err(|_| WriteError::Closed)?;
        result.recv().map_err(|_| WriteError::Closed)?
    }

    /// The writer list at the topic's heads: who besides the owner may write now. Empty for a
    /// topic created without one.
    pub fn writers(&self) -> Result<Vec<AuthorId>, TopicError> {
        let (reply, result) = bounded(1);
        self.store
            .send(self.shared.id, Command::Writers { topic: self.shared.id, reply })
            .map_err(|_| TopicError::Closed)?;
        Ok(result.recv().map_err(|_| TopicError::Closed)??.writers())
    }

    /// Sets `key` to `value`.
    pub fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<Commit, WriteError> {
        let committed = self.write(vec![Op::Put(key.into(), value.into())])?;
        Ok(committed.commit.expect("a put always produces a block"))
    }

    /// Sets `key` to `value` for `ttl` from now by this store's clock: then every replica hides
    /// it, as if deleted, and collects it. Replicas agree on the moment up to their clocks' skew.
    pub fn put_for(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        ttl: std::time::Duration,
    ) -> Result<Commit, WriteError> {
        let expires = self.store.options.clock.now().saturating_add(ttl.as_millis().try_into().unwrap_or(u64::MAX));
        let committed = self.write(vec![Op::PutUntil(key.into(), value.into(), expires)])?;
        Ok(committed.commit.expect("a put always produces a block"))
    }

    /// Collects the topic's elements expired by now at once (the writer thread does it on its
    /// own when each falls due): their keys leave the key count and watchers hear of them.
    pub fn collect_expired(&self) -> Result<(), TopicError> {
        let (reply, result) = bounded(1);
        self.store
            .send(self.shared.id, Command::Expire { topic: self.shared.id, reply })
            .map_err(|_| TopicError::Closed)?;
        result.recv().map_err(|_| TopicError::Closed)?
    }

    /// Adds `n` (negative to subtract) to the counter `key` and returns the block made.
    /// Counters and plain keys are apart: `get(key)` does not see the counter `key`.
    pub fn increment(&self, key: impl Into<Vec<u8>>, n: i64) -> Result<Commit, WriteError> {
        let committed = self.write(vec![Op::Add(key.into(), n)])?;
        Ok(committed.commit.expect("an addition always produces a block"))
    }

    /// The value of the counter `key`: the sum of every increment this replica has applied
    /// (0 for a counter never incremented).
    pub fn counter(&self, key: &[u8]) -> Result<i128, ReadError> {
        let prefix = self.shared.id.key(&counter::entries_prefix(key));
        let mut options = ReadOptions::default();
        options.set_prefix_same_as_start(true);
        if let Some(end) = self.shared.id.range_end() {
            options.set_iterate_upper_bound(end.to_vec());
        }
        let mut iter = self.store.db.raw_iterator_cf_opt(self.store.cf(CF_KV), options);
        iter.seek(&prefix);
        let mut sum: i128 = 0;
        while iter.valid() {
            let (Some(entry), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            if !entry.starts_with(&prefix) {
                break;
            }
            let corrupt = |what: &str| StorageError::Corrupt(format!("counter {key:?}: {what}"));
            let row = Row::decode(value).map_err(|e| corrupt(&e.to_string()))?;
            if let Some(winner) = row.winner() {
                sum += i128::from(counter::decode_total(&winner.value).ok_or_else(|| corrupt("a total not 8 bytes"))?);
            }
            iter.next();
        }
        iter.status()?;
        Ok(sum)
    }

    /// Deletes `key`. Returns `None`, and writes nothing, when the key has no live value.
    pub fn delete(&self, key: impl Into<Vec<u8>>) -> Result<Option<Commit>, WriteError> {
        let committed = self.write(vec![Op::Delete(key.into())])?;
        Ok(if committed.deleted { committed.commit } else { None })
    }

    /// Applies `batch` as one atomic delta. Returns `None` when the batch changes nothing.
    pub fn batch(&self, batch: Batch) -> Result<Option<Commit>, WriteError> {
        Ok(self.write(batch.ops)?.commit)
    }

    fn write(&self, mut ops: Vec<Op>) -> Result<Committed, WriteError> {
        let limits = &self.store.options.limits;
        if ops.len() > limits.delta_ops_max {
            return Err(WriteError::TooManyOps { ops: ops.len(), max: limits.delta_ops_max });
        }
        let author = self.store.signer.author();
        for op in &mut ops {
            check_key(op.key(), limits).map_err(WriteError::InvalidKey)?;
            if counter::is_reserved(op.key()) {
                return Err(WriteError::InvalidKey("keys starting with the byte 0x00 are reserved".into()));
            }
            match op {
                Op::Put(_, value) | Op::PutUntil(_, value, _) => {
                    check_value(value, limits).map_err(WriteError::InvalidValue)?
                }
                Op::Add(key, _) => {
                    *key = counter::entry_key(key, &author, &self.store.origin);
                    check_key(key, limits).map_err(WriteError::InvalidKey)?;
                }
                Op::Delete(_) => {}
            }
        }
        self.submit(ops)
    }

    /// Writes `ops`, whose keys and values are checked, once the topic's access rule admits
    /// this store's author and every key.
    pub(crate) fn submit(&self, ops: Vec<Op>) -> Result<Committed, WriteError> {
        self.submit_request(ops, Vec::new())
    }

    /// Writes `ops` and the changes to documents `docs`, all checked, once the topic's access
    /// rule admits this store's author and every key.
    pub(crate) fn submit_request(&self, ops: Vec<Op>, docs: Vec<DocChange>) -> Result<Committed, WriteError> {
        let author = self.store.signer.author();
        self.shared.access.admits(&author)?;
        for key in ops.iter().map(Op::key).chain(docs.iter().map(|change| change.prefix.as_slice())) {
            self.shared.access.admits_key(&author, key)?;
        }
        if self.store.poisoned.load(Ordering::SeqCst) {
            return Err(WriteError::Poisoned);
        }
        let (reply, result) = bounded(1);
        let request = WriteRequest { topic: self.shared.id, ops, docs, reply };
        self.store.send(self.shared.id, Command::Write(request)).map_err(|_| WriteError::Closed)?;
        result.recv().map_err(|_| WriteError::Closed)?
    }

    /// The visible value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        if counter::is_reserved(key) {
            return Ok(None);
        }
        let Some(bytes) = self.store.db.get_pinned_cf(self.store.cf(CF_KV), self.shared.id.key(key))? else {
            return Ok(None);
        };
        let row = Row::decode(&bytes).map_err(|e| StorageError::Corrupt(format!("row of key {key:?}: {e}")))?;
        Ok(row.visible(self.store.options.clock.now()).map(|element| element.value.clone()))
    }

    /// The versions of `key` this replica holds, newest first, at most `limit`: every put and
    /// delete whose block is held, and the live elements (which survive compaction). A
    /// compaction prunes the blocks it covers, and with them the versions they made that are
    /// no longer live.
    pub fn history(&self, key: &[u8], limit: usize) -> Result<Vec<Version>, ReadError> {
        if counter::is_reserved(key) {
            return Ok(Vec::new());
        }
        let limit = limit.min(self.store.options.query_limit_max);
        history::versions(&self.store.db, &self.store.blocks, (self.shared.id, &self.shared.name), key, limit)
    }

    /// Whether `key` has a visible value.
    pub fn has(&self, key: &[u8]) -> Result<bool, ReadError> {
        Ok(self.get(key)?.is_some())
    }

    /// Keys starting with `prefix`, in key order, strictly after `after` when given, at most
    /// `limit` of them (capped by `query_limit_max`).
    pub fn query(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Page, ReadError> {
        let limit = limit.min(self.store.options.query_limit_max);
        let topic = self.shared.id;
        if counter::is_reserved(prefix) {
            return Ok(Page::default());
        }
        // Reserved keys (counter entries) sort first; a listing starts after them.
        let first_user_key: &[u8] = &[counter::RESERVED + 1];
        let start = match after {
            Some(after) if after >= prefix && after >= first_user_key => topic.key(after),
            _ if prefix.is_empty() => topic.key(first_user_key),
            _ => topic.key(prefix),
        };
        let mut options = ReadOptions::default();
        options.set_prefix_same_as_start(true);
        if let Some(end) = topic.range_end() {
            options.set_iterate_upper_bound(end.to_vec());
        }
        let mut iter = self.store.db.raw_iterator_cf_opt(self.store.cf(CF_KV), options);
        iter.seek(&start);
        let mut page = Page::default();
        let now = self.store.options.clock.now();
        while iter.valid() {
            let (Some(key), Some(value)) = (iter.key(), iter.value()) else {
                break;
            };
            let key = &key[canopy_dag::TOPIC_ID_BYTES..];
            if !key.starts_with(prefix) {
                break;
            }
            if after.is_some_and(|after| key <= after) {
                iter.next();
                continue;
            }
            if page.entries.len() == limit {
                page.next = page.entries.last().map(|(k, _)| k.clone());
                break;
            }
            let row = Row::decode(value).map_err(|e| StorageError::Corrupt(format!("row of key {key:?}: {e}")))?;
            if let Some(visible) = row.visible(now) {
                page.entries.push((key.to_vec(), visible.value.clone()));
            }
            iter.next();
        }
        iter.status()?;
        Ok(page)
    }

    /// Current heads, sorted by CID.
    pub fn heads(&self) -> Vec<Head> {
        self.shared.heads.read().expect("heads lock").clone()
    }

    /// Largest height among the heads (0 for an empty topic).
    pub fn max_height(&self) -> Height {
        self.shared.max_height()
    }

    /// Number of keys with a visible value. A value that expired counts until the writer thread
    /// collects it, which it does as soon as the value is due.
    pub fn key_count(&self) -> u64 {
        self.shared.key_count.load(Ordering::SeqCst)
    }

    /// The filter of keys the topic may hold, which lets writes of new keys skip reading
    /// their rows.
    pub fn key_filter(&self) -> crate::KeyFilterState {
        self.shared.keys.state()
    }

    /// Received blocks waiting for their parents.
    pub fn pending_count(&self) -> u64 {
        self.shared.pending_count.load(Ordering::SeqCst)
    }

    /// A stream of changes to visible values. A watcher that falls more than
    /// `watch_queue_depth` changes behind is disconnected and must watch again.
    pub fn watch(&self) -> Receiver<Change> {
        let (tx, rx) = bounded(self.store.options.watch_queue_depth);
        self.watch_with(Box::new(move |change: &Change| tx.try_send(change.clone()).is_ok()));
        rx
    }

    /// Sends every change to `sink`, on the writer thread, until it returns false. The sink must
    /// not block (for example a non-blocking send on an async channel).
    pub fn watch_with(&self, sink: Sink) {
        self.shared.watchers.lock().expect("watchers lock").push(sink);
    }

    /// Takes in received, hash-checked blocks: stores those whose parents are missing and
    /// applies, in causal order, every block whose ancestry is complete.
    pub fn ingest(&self, blocks: Vec<Block>) -> Result<IngestOutcome, IngestError> {
        self.ingest_submit(blocks)?.wait()
    }

    /// Like [`Topic::ingest`], without waiting: the blocks are queued for the topic's writer
    /// thread, which takes the topic's commands in order (a later `unknown` or `ingest` sees
    /// them applied), and the outcome is collected with [`Ingesting::wait`].
    pub fn ingest_submit(&self, blocks: Vec<Block>) -> Result<Ingesting, IngestError> {
        if self.store.poisoned.load(Ordering::SeqCst) {
            return Err(IngestError::Poisoned);
        }
        let (reply, result) = bounded(1);
        let command = Command::Ingest { topic: self.shared.id, blocks, reply };
        self.store.send(self.shared.id, command).map_err(|_| IngestError::Closed)?;
        Ok(Ingesting(result))
    }

    /// Those of `cids` that are neither applied nor known to be bad, sorted, at most `max`.
    pub fn unknown(&self, cids: Vec<Cid>, max: usize) -> Result<Vec<Cid>, IngestError> {
        let (reply, result) = bounded(1);
        let command = Command::Unknown { topic: self.shared.id, cids, max, reply };
        self.store.send(self.shared.id, command).map_err(|_| IngestError::Closed)?;
        result.recv().map_err(|_| IngestError::Closed)?
    }

    /// Whether the block `cid` is applied in this topic.
    pub fn contains(&self, cid: &Cid) -> Result<bool, ReadError> {
        Ok(self.store.blocks.contains(self.shared.id, cid).map_err(StorageError::from)?)
    }

    /// Blocks below `wants` that are not below `haves`, lowest first, within `limits` (see
    /// [`canopy_dag::walk_missing`]). `pruned_had` says the requester holds every block this
    /// replica pruned.
    pub fn walk(&self, wants: &[Cid], haves: &[Cid], limits: &WalkLimits, pruned_had: bool) -> Result<Walk, ReadError> {
        Ok(walk_missing(&self.store.blocks, self.shared.id, wants, haves, limits, pruned_had)
            .map_err(StorageError::from)?)
    }

    /// What this replica has, for a request: its heads and a sample of their ancestors.
    pub fn have_sample(&self, max: usize) -> Result<Vec<Cid>, ReadError> {
        let heads: Vec<Cid> = self.heads().iter().map(|h| h.cid).collect();
        let mut have = sample_ancestors(&self.store.blocks, self.shared.id, &heads, max.saturating_sub(heads.len()))
            .map_err(StorageError::from)?;
        have.extend(heads);
        have.sort_unstable();
        have.dedup();
        Ok(have)
    }

    /// The encoded bytes of an applied block.
    pub fn block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, ReadError> {
        Ok(self.store.blocks.get(self.shared.id, cid).map_err(StorageError::from)?)
    }

    /// Writes a snapshot of the topic at its current heads and prunes the blocks it covers.
    /// Runs on the calling thread; writes to the topic go on meanwhile.
    pub fn compact(&self) -> Result<Compaction, CompactError> {
        compaction::compact(&self.store, &self.shared)
    }

    /// Compacts the topic's RocksDB ranges to the last level (memtables flushed first), so
    /// overwritten and deleted records leave the disk. Runs on the calling thread; writes go on
    /// meanwhile. Returns the topic's approximate bytes before and after.
    pub fn compact_storage(&self) -> Result<StorageCompaction, StorageError> {
        let (bytes_before, bytes_after) = compaction::compact_storage(&self.store, self.shared.id)?;
        Ok(StorageCompaction { bytes_before, bytes_after })
    }

    /// The snapshots that cover this replica's pruned blocks and those it made or merged.
    pub fn snapshots(&self) -> Snapshots {
        self.shared.snapshots.read().expect("snapshots lock").clone()
    }

    /// The bytes of a snapshot part (manifest or chunk) of this topic: stored, or made from the
    /// view of the snapshot this replica serves.
    pub fn snapshot_part(&self, cid: &Cid) -> Result<Option<Vec<u8>>, ReadError> {
        let key = self.shared.id.key(&cid.to_bytes());
        if let Some(bytes) = self.store.db.get_cf(self.store.cf(CF_SNAPSHOTS), key).map_err(StorageError::from)? {
            return Ok(Some(bytes));
        }
        let serving = self.shared.serving.lock().expect("serving lock").clone();
        let Some(serving) = serving else { return Ok(None) };
        self.shared.parts_used_ms.store(crate::types::wall_ms(), Ordering::SeqCst);
        if *cid == serving.manifest_cid {
            return Ok(Some(serving.manifest_bytes.clone()));
        }
        Ok(serving.chunk(cid)?)
    }

    /// A stored snapshot manifest of this topic, decoded (serving it is not counted as use of
    /// the parts, see [`Topic::snapshot_parts_idle_ms`]).
    pub fn snapshot_manifest(&self, cid: &Cid) -> Result<Option<crate::snapshot::Manifest>, ReadError> {
        let key = self.shared.id.key(&cid.to_bytes());
        let Some(bytes) = self.store.db.get_cf(self.store.cf(CF_SNAPSHOTS), key).map_err(StorageError::from)? else {
            return Ok(None);
        };
        let manifest = crate::snapshot::Manifest::decode(cid, &bytes)
            .map_err(|e| StorageError::Corrupt(format!("stored manifest {cid}: {e}")))?;
        Ok(Some(manifest))
    }

    /// Whether this replica serves a snapshot that covers every block it pruned; when it does
    /// not, a peer that needs one gets one made (see [`Topic::request_snapshot`]).
    pub fn snapshot_parts_held(&self) -> bool {
        compaction::serves_cover(&self.shared)
    }

    /// Milliseconds since the served snapshot was made or last served, given the wall clock
    /// `now_ms`; `None` when none is served.
    pub fn snapshot_parts_idle_ms(&self, now_ms: u64) -> Option<u64> {
        let serving = self.shared.serving.lock().expect("serving lock").is_some();
        serving.then(|| now_ms.saturating_sub(self.shared.parts_used_ms.load(Ordering::SeqCst)))
    }

    /// Stops serving the topic's snapshot (its view of the rows is let go) and deletes any
    /// stored chunks. The state and the pruning stay; a peer lacking pruned blocks later gets a
    /// new snapshot.
    pub fn release_snapshot_parts(&self) -> Result<(), TopicError> {
        let (reply, result) = bounded(1);
        let command = Command::Release { topic: self.shared.id, reply };
        self.store.send(self.shared.id, command).map_err(|_| TopicError::Closed)?;
        result.recv().map_err(|_| TopicError::Closed)??;
        // The parts' space comes back when their range is compacted; what is left there is
        // small (manifests).
        crate::schema::compact_topic_range(&self.store.db, self.store.cf(CF_SNAPSHOTS), self.shared.id);
        Ok(())
    }

    /// Asks the store's compaction thread for a snapshot of this topic to serve, because a peer
    /// lacks blocks this replica pruned and the snapshot it serves (if any) does not cover them.
    /// Returns at once; with `StoreOptions::snapshots_inline` the snapshot is made before.
    pub fn request_snapshot(&self) {
        if self.store.options.snapshots_inline {
            if let Err(error) = self.serve_snapshot() {
                tracing::warn!(topic = %self.shared.name, %error, "making a snapshot to serve failed");
            }
        } else {
            self.store.request(&self.shared.name, crate::types::Work::Snapshot);
        }
    }

    /// Makes a snapshot of the current heads for peers that lack pruned blocks, unless the one
    /// this replica serves covers them all; prunes nothing. Runs on the calling thread.
    pub fn serve_snapshot(&self) -> Result<(), CompactError> {
        compaction::serve_snapshot(&self.store, &self.shared)
    }

    /// Prunes the payloads of every block below the current heads, making no snapshot (a peer
    /// that needs one later gets one made then): what the policy runs as history grows. Runs on
    /// the calling thread; writes go on meanwhile.
    pub fn prune(&self) -> Result<Compaction, CompactError> {
        compaction::prune(&self.store, &self.shared)
    }

    /// Stores snapshot parts received from a peer, to merge once all are here. Each must
    /// already be hash-checked against its CID (see [`crate::snapshot::validate_parts`]).
    pub fn stage_snapshot_parts(&self, parts: &[(Cid, Vec<u8>)]) -> Result<(), ReadError> {
        let mut batch = rocksdb::WriteBatch::default();
        for (cid, bytes) in parts {
            batch.put_cf(self.store.cf(CF_SNAPSHOTS), self.shared.id.key(&cid.to_bytes()), bytes);
        }
        self.store.db.write(batch).map_err(StorageError::from)?;
        Ok(())
    }

    /// Those of `cids` not staged or stored as snapshot parts of this topic, in order.
    pub fn missing_snapshot_parts(&self, cids: &[Cid]) -> Result<Vec<Cid>, ReadError> {
        let keys: Vec<Vec<u8>> = cids.iter().map(|cid| self.shared.id.key(&cid.to_bytes())).collect();
        let found = self.store.db.batched_multi_get_cf(self.store.cf(CF_SNAPSHOTS), &keys, false);
        let mut missing = Vec::new();
        for (cid, value) in cids.iter().zip(found) {
            if value.map_err(StorageError::from)?.is_none() {
                missing.push(*cid);
            }
        }
        Ok(missing)
    }

    /// Merges the staged snapshot `manifest` into the topic: its state becomes that of the
    /// blocks it had applied together with every block the snapshot covers.
    pub fn merge_snapshot(&self, manifest: Cid) -> Result<MergeOutcome, MergeError> {
        let (reply, result) = bounded(1);
        let command = Command::Merge { topic: self.shared.id, manifest, reply };
        self.store.send(self.shared.id, command).map_err(|_| MergeError::Topic(TopicError::Closed))?;
        result.recv().map_err(|_| MergeError::Topic(TopicError::Closed))?
    }
}

/// Received blocks queued for a topic's writer thread ([`Topic::ingest_submit`]).
#[must_use = "the outcome says what was applied and refused"]
pub struct Ingesting(Receiver<Result<IngestOutcome, IngestError>>);

impl Ingesting {
    /// Waits until the blocks are taken in.
    pub fn wait(self) -> Result<IngestOutcome, IngestError> {
        self.0.recv().map_err(|_| IngestError::Closed)?
    }
}
