use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use canopy_dag::{BlockStore, CF_BLOCKS, CF_INDEX, Cid, Height, TOPIC_ID_BYTES, TopicId};
use crossbeam_channel::{Sender, bounded};
use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options, SliceTransform};

use crate::compactor;
use crate::delta::Limits;
use crate::error::{OpenError, StorageError, TopicError};
use crate::topic::{Change, Head, Topic};
use crate::writer::{self, Command, TopicState};

/// Received blocks waiting for their parents: `topic ++ cid` → block bytes.
pub(crate) const CF_PENDING: &str = "pending";
/// Current heads: `topic ++ cid` → height (8 bytes, big-endian).
pub(crate) const CF_HEADS: &str = "heads";
/// Live elements per key: `topic ++ key` → encoded row.
pub(crate) const CF_KV: &str = "kv";
/// Topic registry and counters; keys are not topic-prefixed.
pub(crate) const CF_META: &str = "meta";
/// Removes of elements whose block was not applied when the remove arrived:
/// `topic ++ element id ++ key` → nothing. Consumed when the element's block is applied.
pub(crate) const CF_TOMBSTONES: &str = "tombstones";

/// Snapshot parts, manifests and chunks alike: `topic ++ cid` → bytes. Parts are content
/// addressed, so writing one twice is harmless.
pub(crate) const CF_SNAPSHOTS: &str = "snapshots";

const META_NEXT_TOPIC_ID: &[u8] = b"next_topic_id";
/// `s ++ topic` → the manifests of the snapshots that cover the topic's pruned blocks.
pub(crate) const META_COVER: u8 = b's';
/// `k ++ topic` → the manifests this replica made or merged, newest last.
pub(crate) const META_KNOWN: u8 = b'k';
/// `g ++ topic` → the snapshot merge in progress, resumed when the topic loads.
pub(crate) const META_MERGE: u8 = b'g';
const META_TOPIC: u8 = b't';
const META_KEY_COUNT: u8 = b'c';

/// Longest topic name.
pub const TOPIC_NAME_BYTES_MAX: usize = 128;

/// Settings of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Sync the write-ahead log on every commit, so acknowledged writes survive a power loss
    /// (without it they survive a process crash).
    pub sync_writes: bool,
    /// Threads that write to RocksDB; topics are spread over them by id.
    pub writer_threads: usize,
    /// Requests each writer thread queues before callers wait.
    pub queue_depth: usize,
    /// Most operations grouped into one commit.
    pub group_ops_max: usize,
    /// Most bytes of keys and values grouped into one round of commits.
    pub group_bytes_max: usize,
    /// Most received blocks applied in one RocksDB write.
    pub apply_blocks_max: usize,
    /// Most received blocks kept in memory waiting for their parents, per topic. Catch-up is
    /// served bottom-up and does not need them; the oldest are evicted first.
    pub pending_blocks_max: usize,
    /// Most bytes of received blocks kept waiting for their parents, per topic.
    pub pending_bytes_max: usize,
    /// Most tombstones kept per topic for elements whose block has not arrived.
    pub tombstones_max: u64,
    /// Changes each watcher may fall behind before it is disconnected.
    pub watch_queue_depth: usize,
    /// Most entries one query returns.
    pub query_limit_max: usize,
    /// Shared RocksDB block cache, in bytes.
    pub cache_bytes: usize,
    /// Key, value and batch limits of local writes; at most the protocol's limits
    /// ([`Limits::PROTOCOL`]), which received blocks are always checked against.
    pub limits: Limits,
    /// A topic is compacted automatically once this many blocks were added since its last
    /// compaction (0: never by count).
    pub compact_after_blocks: u64,
    /// A topic is compacted automatically once this many bytes of blocks were added since its
    /// last compaction, and at least half the size of its last snapshot, so compaction work
    /// stays proportional to writes (0: never by size).
    pub compact_after_bytes: u64,
    /// Snapshot parts nobody fetched for this long are released (`None`: kept until the next
    /// compaction replaces them). A peer that needs a released snapshot gets a new one.
    pub snapshot_retain_ms: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync_writes: false,
            writer_threads: 2,
            queue_depth: 4096,
            group_ops_max: 4096,
            group_bytes_max: 32 << 20,
            apply_blocks_max: 4096,
            pending_blocks_max: 4096,
            pending_bytes_max: 64 << 20,
            tombstones_max: 1 << 20,
            watch_queue_depth: 4096,
            query_limit_max: 10_000,
            cache_bytes: 64 << 20,
            limits: Limits::default(),
            compact_after_blocks: 10_000,
            compact_after_bytes: 256 << 20,
            snapshot_retain_ms: Some(10 * 60 * 1000),
        }
    }
}

/// A node's database: many topics in one RocksDB, written by dedicated threads.
///
/// Cloning is cheap; the database closes when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
    _compactor: Arc<Compactor>,
}

/// The compaction thread of a store, stopped and joined when the last [`Store`] handle goes,
/// before the database closes.
struct Compactor {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub(crate) struct StoreInner {
    pub db: Arc<DB>,
    pub blocks: BlockStore,
    pub options: StoreOptions,
    topics: RwLock<BTreeMap<String, Arc<TopicShared>>>,
    registry: Mutex<()>,
    writers: Mutex<Vec<Sender<Command>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pub poisoned: Arc<AtomicBool>,
    /// Requests for the compaction thread, by topic name.
    pub compactions: Sender<String>,
}

/// Where a topic's changes go: called on the writer thread for each change, it must not block;
/// it returns false once it wants no more changes, and is then dropped.
pub type Sink = Box<dyn FnMut(&Change) -> bool + Send>;

/// What the writer thread and topic handles share about one topic.
pub(crate) struct TopicShared {
    pub id: TopicId,
    pub name: String,
    pub heads: RwLock<Vec<Head>>,
    pub key_count: AtomicU64,
    pub pending_count: AtomicU64,
    pub watchers: Mutex<Vec<Sink>>,
    pub dropped: AtomicBool,
    pub snapshots: RwLock<Snapshots>,
    /// Held while the topic compacts: one compaction at a time.
    pub compacting: Mutex<()>,
    /// Whether the parts of the snapshots in `cover` are stored.
    pub parts_held: AtomicBool,
    /// When the held parts were made or last served, in wall-clock milliseconds.
    pub parts_used_ms: AtomicU64,
}

/// The snapshots a topic knows, as its writer thread last published them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshots {
    /// Manifests of the snapshots that cover every pruned block; a peer lacking pruned blocks
    /// is sent these.
    pub cover: Vec<Cid>,
    /// Manifests this replica made or merged, newest last (at most [`KNOWN_SNAPSHOTS_MAX`]); a
    /// request names them so the peer knows what this replica holds.
    pub known: Vec<Cid>,
}

/// Most snapshot manifests a topic remembers as made or merged.
pub const KNOWN_SNAPSHOTS_MAX: usize = 16;

impl TopicShared {
    pub fn max_height(&self) -> Height {
        self.heads.read().expect("heads lock").iter().map(|h| h.height).max().unwrap_or(0)
    }
}

/// Log bytes past which the families holding the oldest log are flushed.
const WAL_BYTES_MAX: u64 = 256 << 20;

/// Blocks at least this large are kept in blob files.
const BLOB_BYTES_MIN: u64 = 4096;

fn table_options(cache: &Cache) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table
}

fn topic_cf_options(cache: &Cache) -> Options {
    let mut options = Options::default();
    options.set_prefix_extractor(SliceTransform::create_fixed_prefix(TOPIC_ID_BYTES));
    // A bloom filter over whole keys in the memtable: a local write looks up every key it
    // writes, and for new keys the lookup ends here instead of searching the skiplist.
    options.set_memtable_prefix_bloom_ratio(0.1);
    options.set_memtable_whole_key_filtering(true);
    options.set_block_based_table_factory(&table_options(cache));
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    options.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    options
}

/// Options for writing an SST file of `kv` rows outside the database, to ingest: the family's
/// table format and filters, so the file serves reads like one RocksDB wrote.
pub(crate) fn kv_file_options() -> Options {
    topic_cf_options(&Cache::new_lru_cache(1 << 20))
}

impl Store {
    /// Opens (creating if needed) the database in `path`.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store, OpenError> {
        if options.writer_threads == 0 || options.queue_depth == 0 || options.group_ops_max == 0 {
            return Err(OpenError::InvalidOptions(
                "writer_threads, queue_depth and group_ops_max must be at least 1".into(),
            ));
        }
        if !options.limits.within_protocol() {
            return Err(OpenError::InvalidOptions(format!(
                "key, value and batch limits {:?} exceed the protocol's {:?}: peers would refuse such blocks",
                options.limits,
                Limits::PROTOCOL
            )));
        }
        let cache = Cache::new_lru_cache(options.cache_bytes);
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.increase_parallelism(2);
        db_options.set_max_background_jobs(4);
        db_options.set_bytes_per_sync(1 << 20);
        // Column families with small writes (heads, meta) rarely fill a memtable, and a log
        // file is kept until every family's part of it is flushed: without a bound, logs pile
        // up to many times the data and a restart replays all of them.
        db_options.set_max_total_wal_size(WAL_BYTES_MAX);
        let cfs = [CF_BLOCKS, CF_INDEX, CF_PENDING, CF_HEADS, CF_KV, CF_TOMBSTONES, CF_SNAPSHOTS]
            .into_iter()
            .map(|name| {
                let mut options = topic_cf_options(&cache);
                if name == CF_BLOCKS || name == CF_SNAPSHOTS {
                    // Blocks are written once and read rarely: their bytes go to blob files at
                    // flush, so compaction moves only small references, not every block again.
                    options.set_enable_blob_files(true);
                    options.set_min_blob_size(BLOB_BYTES_MIN);
                    options.set_enable_blob_gc(true);
                }
                if name == CF_SNAPSHOTS {
                    // Released chunks leave blob files mostly garbage, with a manifest or a
                    // later snapshot's chunk keeping each alive: every blob file is collected.
                    options.set_blob_gc_age_cutoff(1.0);
                }
                ColumnFamilyDescriptor::new(name, options)
            })
            .chain(std::iter::once(ColumnFamilyDescriptor::new(CF_META, Options::default())));
        let db = Arc::new(DB::open_cf_descriptors(&db_options, &path, cfs)?);
        // Row files of snapshot merges a crash interrupted before they were ingested.
        if let Ok(entries) = std::fs::read_dir(path.as_ref()) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("merge-") && name.ends_with(".sst") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let blocks = BlockStore::new(db.clone()).map_err(StorageError::from)?;
        let (compactions, compaction_requests) = bounded(1024);
        let inner = Arc::new(StoreInner {
            db,
            blocks,
            options,
            topics: RwLock::new(BTreeMap::new()),
            registry: Mutex::new(()),
            writers: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            poisoned: Arc::new(AtomicBool::new(false)),
            compactions,
        });
        for index in 0..inner.options.writer_threads {
            let (tx, rx) = bounded(inner.options.queue_depth);
            let context = writer::Context::new(&inner);
            let handle = std::thread::Builder::new()
                .name(format!("canopy-writer-{index}"))
                .spawn(move || writer::run(context, rx))
                .map_err(OpenError::Thread)?;
            inner.writers.lock().expect("writers lock").push(tx);
            inner.threads.lock().expect("threads lock").push(handle);
        }
        let (stop, stopped) = bounded(0);
        let policy = inner.clone();
        let thread = std::thread::Builder::new()
            .name("canopy-compactor".into())
            .spawn(move || compactor::run(policy, compaction_requests, stopped))
            .map_err(OpenError::Thread)?;
        let store = Store { inner, _compactor: Arc::new(Compactor { stop: Some(stop), thread: Some(thread) }) };
        for name in store.stored_topic_names()? {
            store.topic(&name).map_err(|e| match e {
                TopicError::Storage(s) => OpenError::Storage(s),
                other => OpenError::Storage(StorageError::Corrupt(other.to_string())),
            })?;
        }
        Ok(store)
    }

    /// Opens a topic, creating it on first use. Topic names are 1 to 128 characters from
    /// `A-Z a-z 0-9 . _ : -`.
    pub fn topic(&self, name: &str) -> Result<Topic, TopicError> {
        validate_topic_name(name)?;
        if let Some(shared) = self.inner.topics.read().expect("topics lock").get(name) {
            return Ok(Topic::new(self.inner.clone(), shared.clone()));
        }
        let _registry = self.inner.registry.lock().expect("registry lock");
        if let Some(shared) = self.inner.topics.read().expect("topics lock").get(name) {
            return Ok(Topic::new(self.inner.clone(), shared.clone()));
        }
        let id = self.topic_id(name)?;
        let state = TopicState::load(&self.inner, id, name)?;
        let shared = state.shared.clone();
        let (reply, registered) = bounded(1);
        self.inner.send(id, Command::Register(Box::new(state), reply)).map_err(|_| TopicError::Closed)?;
        // Registration finishes a snapshot merge a crash interrupted, so the topic is never
        // seen half merged.
        registered.recv().map_err(|_| TopicError::Closed)?;
        self.inner.topics.write().expect("topics lock").insert(name.to_string(), shared.clone());
        Ok(Topic::new(self.inner.clone(), shared))
    }

    /// The topic named `name`, if it exists, without creating it.
    pub fn existing_topic(&self, name: &str) -> Option<Topic> {
        let shared = self.inner.topics.read().expect("topics lock").get(name)?.clone();
        Some(Topic::new(self.inner.clone(), shared))
    }

    /// Names of all topics in the store, sorted.
    pub fn topic_names(&self) -> Vec<String> {
        self.inner.topics.read().expect("topics lock").keys().cloned().collect()
    }

    /// Deletes a topic and all its data. Handles to it fail from then on.
    pub fn drop_topic(&self, name: &str) -> Result<bool, TopicError> {
        let _registry = self.inner.registry.lock().expect("registry lock");
        let Some(shared) = self.inner.topics.write().expect("topics lock").remove(name) else {
            return Ok(false);
        };
        let (tx, rx) = bounded(1);
        self.inner.send(shared.id, Command::Drop { topic: shared.id, reply: tx }).map_err(|_| TopicError::Closed)?;
        rx.recv().map_err(|_| TopicError::Closed)??;
        Ok(true)
    }

    /// True once a storage failure has stopped writes.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::SeqCst)
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// The block store, for DAG walks and exports.
    pub fn blocks(&self) -> &BlockStore {
        &self.inner.blocks
    }

    fn stored_topic_names(&self) -> Result<Vec<String>, StorageError> {
        let meta = self.inner.cf(CF_META);
        let mut names = Vec::new();
        for item in self.inner.db.prefix_iterator_cf(meta, [META_TOPIC]) {
            let (key, _) = item?;
            if key.first() != Some(&META_TOPIC) {
                break;
            }
            let name =
                std::str::from_utf8(&key[1..]).map_err(|_| StorageError::Corrupt("topic name is not UTF-8".into()))?;
            names.push(name.to_string());
        }
        Ok(names)
    }

    fn topic_id(&self, name: &str) -> Result<TopicId, StorageError> {
        let db = &self.inner.db;
        let meta = self.inner.cf(CF_META);
        let mut key = vec![META_TOPIC];
        key.extend_from_slice(name.as_bytes());
        if let Some(bytes) = db.get_cf(meta, &key)? {
            return decode_u32(&bytes).map(TopicId);
        }
        let next = match db.get_cf(meta, META_NEXT_TOPIC_ID)? {
            Some(bytes) => decode_u32(&bytes)?,
            None => 0,
        };
        let following = next.checked_add(1).ok_or_else(|| StorageError::Corrupt("topic ids exhausted".into()))?;
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(meta, &key, next.to_be_bytes());
        batch.put_cf(meta, META_NEXT_TOPIC_ID, following.to_be_bytes());
        db.write(batch)?;
        Ok(TopicId(next))
    }
}

impl StoreInner {
    /// Handles of every open topic.
    pub fn topic_handles(self: &Arc<Self>) -> Vec<Topic> {
        let topics = self.topics.read().expect("topics lock");
        topics.values().map(|shared| Topic::new(self.clone(), shared.clone())).collect()
    }

    /// Asks the compaction thread to compact `name` soon; a full queue drops the request (the
    /// topic asks again as it grows).
    pub fn request_compaction(&self, name: &str) {
        let _ = self.compactions.try_send(name.to_string());
    }

    pub fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("every canopy column family is opened with the database")
    }

    /// Queues a command for the writer thread that owns `topic`; fails once the store is
    /// closing.
    pub fn send(&self, topic: TopicId, command: Command) -> Result<(), Closed> {
        let writers = self.writers.lock().expect("writers lock");
        if writers.is_empty() {
            return Err(Closed);
        }
        let sender = writers[topic.0 as usize % writers.len()].clone();
        drop(writers);
        sender.send(command).map_err(|_| Closed)
    }
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        self.writers.lock().expect("writers lock").clear();
        for handle in self.threads.lock().expect("threads lock").drain(..) {
            let _ = handle.join();
        }
    }
}

/// The writer threads are gone: the store is closing.
#[derive(Debug)]
pub(crate) struct Closed;

/// The key under which a topic's live-key count is kept in the meta column family.
pub(crate) fn key_count_key(topic: TopicId) -> Vec<u8> {
    let mut key = vec![META_KEY_COUNT];
    key.extend_from_slice(&topic.prefix());
    key
}

/// A per-topic key of the meta column family: `kind ++ topic`.
pub(crate) fn meta_key(kind: u8, topic: TopicId) -> Vec<u8> {
    let mut key = vec![kind];
    key.extend_from_slice(&topic.prefix());
    key
}

/// A list of CIDs as stored in meta: their bytes, one after the other.
pub(crate) fn encode_cids(cids: &[Cid]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cids.len() * 36);
    for cid in cids {
        cid.write_bytes(&mut out).expect("writing to a Vec cannot fail");
    }
    out
}

pub(crate) fn decode_cids(mut bytes: &[u8]) -> Result<Vec<Cid>, StorageError> {
    let mut cids = Vec::new();
    while !bytes.is_empty() {
        cids.push(Cid::read_bytes(&mut bytes).map_err(|e| StorageError::Corrupt(format!("cid list: {e}")))?);
    }
    Ok(cids)
}

/// The key of the tombstone of the element `id` added to `key`.
pub(crate) fn tombstone_key(topic: TopicId, id: &Cid, key: &[u8]) -> Vec<u8> {
    let mut out = topic.key(&id.to_bytes());
    out.extend_from_slice(key);
    out
}

/// The key under which a topic name is registered.
pub(crate) fn topic_name_key(name: &str) -> Vec<u8> {
    let mut key = vec![META_TOPIC];
    key.extend_from_slice(name.as_bytes());
    key
}

fn decode_u32(bytes: &[u8]) -> Result<u32, StorageError> {
    let array: [u8; 4] = bytes.try_into().map_err(|_| StorageError::Corrupt("bad u32 record in meta".into()))?;
    Ok(u32::from_be_bytes(array))
}

/// Checks a topic name: 1 to 128 characters from `A-Z a-z 0-9 . _ : -`.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let valid = !name.is_empty()
        && name.len() <= TOPIC_NAME_BYTES_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if valid { Ok(()) } else { Err(TopicError::InvalidName(name.to_string())) }
}
