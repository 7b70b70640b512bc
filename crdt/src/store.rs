//! `Store`, a node's database: many topics in one RocksDB, their registry and writer threads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use canopy_dag::{AuthorId, BlockStore, Cid, Signer, TopicId};
use crossbeam_channel::{Receiver, Sender, bounded};
use rocksdb::{Cache, DB, Options};

use crate::access::validate_topic_name;
use crate::compactor;
use crate::counter::ORIGIN_BYTES;
use crate::delta::Limits;
use crate::error::{OpenError, StorageError, TopicError};
use crate::inner::StoreInner;
use crate::inspect::Inspector;
use crate::options::StoreOptions;
use crate::schema::{CF_META, META_AUTHOR_SECRET, META_NEXT_TOPIC_ID, META_ORIGIN, META_TOPIC, column_families};
use crate::topic::Topic;
use crate::writer::{self, Command, TopicState};

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

/// Index journal entries written and not yet taken by the journal thread, at most: a writer
/// thread that gets this far ahead waits for it.
const JOURNAL_ENTRIES_QUEUED: usize = 256;

/// Log bytes past which the families holding the oldest log are flushed.
const WAL_BYTES_MAX: u64 = 256 << 20;

impl Store {
    /// A receiver that is disconnected once the database is closed: every store and topic
    /// handle dropped, the writer threads stopped. A program that reopens the same directory
    /// waits on it (`recv` returns an error then).
    pub fn closed(&self) -> Receiver<()> {
        self.inner.closed_rx.clone()
    }

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
        // One background job per core (at least one flush and one compaction): on a bulk load
        // the writer threads and compactions then share the cores rather than compactions
        // taking most of them. With 3 compactions beside one writer on 2 cores, compactions
        // took 58% of the CPU at 24M keys and set the write rate; with one, the rate rose by
        // a third and RocksDB's own limits (pending bytes, level-0 files) still bound the
        // compaction debt a long load builds. A compaction splits into one subcompaction per
        // core, so a large level-0 compaction (and a manual one) takes a core the writers leave
        // idle: at 20M keys in 64 topics, 325k keys/s against 281k with no stalls, and the
        // compaction at the end in 43 s against 64 s.
        let cores = std::thread::available_parallelism().map_or(2, usize::from).max(2);
        let cores = i32::try_from(cores).unwrap_or(i32::MAX);
        db_options.increase_parallelism(cores);
        db_options.set_max_background_jobs(cores);
        db_options.set_max_subcompactions(u32::try_from(cores).unwrap_or(2));
        db_options.set_bytes_per_sync(1 << 20);
        // Column families with small writes (heads, meta) rarely fill a memtable, and a log
        // file is kept until every family's part of it is flushed: without a bound, logs pile
        // up to many times the data and a restart replays all of them.
        db_options.set_max_total_wal_size(WAL_BYTES_MAX);
        let cfs = column_families(&cache, options.row_memtable_bytes);
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
        crate::schema::check_format(&db)?;
        // Index records a crash left in the journal are put in place before anything reads them.
        let recovered = crate::index_journal::recover(&db)?;
        if recovered > 0 {
            tracing::info!(entries = recovered, "applied the documents' index journal a crash left");
        }
        let signer = match &options.author {
            Some(signer) => signer.clone(),
            None => stored_signer(&db)?,
        };
        let origin = match options.origin {
            Some(origin) => origin,
            None => stored_origin(&db)?,
        };
        let blocks = BlockStore::new(db.clone()).map_err(StorageError::from)?;
        let (compactions, compaction_requests) = bounded(1024);
        let (closed_tx, closed_rx) = bounded(0);
        let inner = Arc::new(StoreInner {
            db,
            blocks,
            options,
            signer,
            origin,
            topics: RwLock::new(BTreeMap::new()),
            registry: Mutex::new(()),
            writers: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            poisoned: Arc::new(AtomicBool::new(false)),
            compactions,
            closed_rx,
            _closed_tx: closed_tx,
        });
        // Shared by the writer threads: the store-wide count of block bytes not yet pruned.
        let unpruned_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (journal, journal_entries) = bounded(JOURNAL_ENTRIES_QUEUED);
        for index in 0..inner.options.writer_threads {
            let (tx, rx) = bounded(inner.options.queue_depth);
            let context = writer::Context::new(
                inner.db.clone(),
                &inner.options,
                inner.signer.clone(),
                inner.compactions.clone(),
                inner.poisoned.clone(),
                unpruned_bytes.clone(),
                journal.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("canopy-writer-{index}"))
                .spawn(move || writer::run(context, rx))
                .map_err(OpenError::Thread)?;
            inner.writers.lock().expect("writers lock").push(tx);
            inner.threads.lock().expect("threads lock").push(handle);
        }
        // The journal thread stops once every writer thread is gone (with the last sender), so
        // it is joined after them.
        drop(journal);
        let (db, poisoned) = (inner.db.clone(), inner.poisoned.clone());
        let handle = std::thread::Builder::new()
            .name("canopy-indexes".into())
            .spawn(move || crate::index_journal::run(db, journal_entries, poisoned))
            .map_err(OpenError::Thread)?;
        inner.threads.lock().expect("threads lock").push(handle);
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
        let state = TopicState::load(&self.inner.db, id, name)?;
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
        let drop = Command::Drop { topic: shared.id, only_at: None, reply: tx };
        self.inner.send(shared.id, drop).map_err(|_| TopicError::Closed)?;
        rx.recv().map_err(|_| TopicError::Closed)??;
        Ok(true)
    }

    /// Drops topic `name` with its data only if its heads are exactly `heads`, judged on its
    /// writer thread, so atomically with respect to writes: a write acknowledged before the drop
    /// changed the heads, and the topic stays; one submitted after it fails with
    /// `TopicDropped`. Returns whether it was dropped.
    pub fn drop_topic_at(&self, name: &str, heads: &[Cid]) -> Result<bool, TopicError> {
        let _registry = self.inner.registry.lock().expect("registry lock");
        let Some(shared) = self.inner.topics.read().expect("topics lock").get(name).cloned() else {
            return Ok(false);
        };
        let mut only_at = heads.to_vec();
        only_at.sort_unstable();
        let (tx, rx) = bounded(1);
        let drop = Command::Drop { topic: shared.id, only_at: Some(only_at), reply: tx };
        self.inner.send(shared.id, drop).map_err(|_| TopicError::Closed)?;
        let dropped = rx.recv().map_err(|_| TopicError::Closed)??;
        if dropped {
            self.inner.topics.write().expect("topics lock").remove(name);
        }
        Ok(dropped)
    }

    /// True once a storage failure has stopped writes.
    pub fn is_poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::SeqCst)
    }

    /// The author this store signs its blocks as.
    pub fn author(&self) -> AuthorId {
        self.inner.signer.author()
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// Read-only access to this store's database, for operations tooling.
    pub fn inspector(&self) -> Result<Inspector, OpenError> {
        Inspector::over(self.inner.db.clone())
    }

    /// RocksDB's flushes and compactions running now (all families): a load measured after
    /// the store is idle waits for this to be 0 as well as for no compaction to be owed.
    pub fn background_jobs(&self) -> Result<u64, StorageError> {
        let mut jobs = 0;
        for property in ["rocksdb.num-running-flushes", "rocksdb.num-running-compactions"] {
            jobs += self.inner.db.property_int_value(property)?.unwrap_or(0);
        }
        Ok(jobs)
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

/// The store's own signing key, made and kept in the database the first time.
fn stored_signer(db: &DB) -> Result<Signer, OpenError> {
    let meta = db.cf_handle(CF_META).expect("every canopy column family is opened with the database");
    if let Some(bytes) = db.get_cf(meta, META_AUTHOR_SECRET)? {
        let secret: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| StorageError::Corrupt("the stored author key is not 32 bytes".into()))?;
        return Ok(Signer::from_secret(secret));
    }
    let signer = Signer::generate();
    let mut write = rocksdb::WriteOptions::default();
    write.set_sync(true);
    db.put_cf_opt(meta, META_AUTHOR_SECRET, signer.secret(), &write)?;
    Ok(signer)
}

/// The store's origin, made at random and kept in the database the first time.
fn stored_origin(db: &DB) -> Result<[u8; ORIGIN_BYTES], OpenError> {
    let meta = db.cf_handle(CF_META).expect("every canopy column family is opened with the database");
    if let Some(bytes) = db.get_cf(meta, META_ORIGIN)? {
        return Ok(bytes
            .as_slice()
            .try_into()
            .map_err(|_| StorageError::Corrupt(format!("the stored origin is not {ORIGIN_BYTES} bytes")))?);
    }
    let origin: [u8; ORIGIN_BYTES] = rand::random();
    let mut write = rocksdb::WriteOptions::default();
    write.set_sync(true);
    db.put_cf_opt(meta, META_ORIGIN, origin, &write)?;
    Ok(origin)
}

fn decode_u32(bytes: &[u8]) -> Result<u32, StorageError> {
    let array: [u8; 4] = bytes.try_into().map_err(|_| StorageError::Corrupt("bad u32 record in meta".into()))?;
    Ok(u32::from_be_bytes(array))
}
