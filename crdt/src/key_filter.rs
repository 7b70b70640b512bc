//! Which keys a topic may hold: a filter kept in memory so that a write of a key the topic has
//! never held does not read its row first.
//!
//! Every write reads the rows it changes (a put replaces the elements it observes). For a key
//! with no row, that read costs a probe of each level's filter in RocksDB, and the levels grow
//! with the store, so a bulk load of new keys slows as the store fills. A topic's key filter
//! answers "never held" for most new keys from memory instead.
//!
//! A document's fields are rows of their own (`doc.rs`); for them the filter holds the
//! document's entries prefix instead of each field, so a put of a new document skips the read
//! of the fields it would replace at the cost of one probe, and a document costs the filter
//! one entry however many fields it has. A field of a document the topic holds is read.
//!
//! What makes a "never held" answer true: the filter holds every key that has a row (for a
//! document's field, the document's prefix).
//! - Every row that [`RowChanges`] creates adds its key, whatever the filter's state (rows
//!   change only on the writer thread, and only through `RowChanges`).
//! - It is idle when the topic loads; the first write (a local write or a received block, or a
//!   document put reading the fields it replaces) starts its build. Reads only consult a built
//!   filter, so a topic only read costs no memory for it.
//! - The rows that existed before are added by a scan of the topic's rows, on the writer
//!   thread between rounds, [`BUILD_STEP_KEYS`] keys per step. A key created behind the scan's
//!   cursor was added by its write; one ahead of it is met by the scan.
//! - Only once the scan reaches the end is the filter consulted. Until then every write reads.
//! - A snapshot merge writes rows apart from the filter, so it leaves the topic's filter idle
//!   again (built anew on the next write).
//!
//! A key that leaves the topic stays in the filter: its later writes read, as before.
//!
//! The filter is a sequence of Bloom filters ([`fastbloom`]): when the newest one holds its
//! capacity, a new one four times larger follows, so a filter needs no resizing and a key is
//! looked for in a handful of them. Each keeps about 1% false positives at capacity
//! ([`BITS_PER_KEY`] bits a key).
//!
//! [`RowChanges`]: crate::row_change::RowChanges

use std::hash::BuildHasher;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use canopy_dag::TopicId;
use fastbloom::BloomFilter;
use rocksdb::DB;

use crate::error::StorageError;
use crate::schema::{CF_KV, topic_read_options};

/// Bits of filter per key of capacity (with [`HASHES`] hashes: about 1% false positives).
const BITS_PER_KEY: usize = 10;
const HASHES: u32 = 7;
/// The capacity of a topic's first filter.
const FIRST_CAPACITY: usize = 16_384;
/// Each further filter holds this many times the previous one's capacity.
const GROWTH: usize = 4;
/// Keys a build step adds from the topic's rows.
pub(crate) const BUILD_STEP_KEYS: usize = 32_768;

/// What a topic's key filter holds, for operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyFilterState {
    /// Writes consult it: keys it does not hold are written without reading their rows.
    pub ready: bool,
    /// It is adding the topic's existing rows (the first write after the topic was opened
    /// started this).
    pub building: bool,
    /// Keys added (a key added twice counts twice).
    pub keys: u64,
    /// Memory it takes.
    pub bytes: u64,
}

/// A topic's key filter; clones share it.
#[derive(Clone, Default)]
pub(crate) struct KeyFilter {
    inner: Arc<RwLock<Filter>>,
}

#[derive(Default)]
struct Filter {
    status: Status,
    stages: Vec<Stage>,
}

#[derive(Default)]
enum Status {
    /// Neither consulted nor built.
    #[default]
    Idle,
    /// Adding the topic's rows, from after `cursor` (a key without the topic prefix).
    Building { cursor: Option<Vec<u8>> },
    /// Holds every key the topic has a row for.
    Ready,
}

struct Stage {
    bloom: BloomFilter,
    capacity: usize,
    count: usize,
}

/// What a key's filter entry derives from: the key, or for a document's field the document's
/// entries prefix, which all its fields share.
pub(crate) fn hash(key: &[u8]) -> u64 {
    let entry = crate::doc::document_prefix(key).unwrap_or(key);
    // A fixed seed, as before with SipHash's fixed keys: a filter lives in memory only, and a
    // key made to collide costs its writer a read, nothing more. foldhash takes about a
    // quarter of SipHash's instructions for a key this short.
    const HASHER: foldhash::quality::FixedState = foldhash::quality::FixedState::with_seed(0x63616e6f7079);
    HASHER.hash_one(entry)
}

impl KeyFilter {
    fn lock(&self) -> RwLockWriteGuard<'_, Filter> {
        self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> RwLockReadGuard<'_, Filter> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds the keys of `hashes` (from [`hash`]).
    pub fn insert(&self, hashes: &[u64]) {
        if hashes.is_empty() {
            return;
        }
        let mut filter = self.lock();
        for hash in hashes {
            filter.insert(*hash);
        }
    }

    /// For each of `keys` (without the topic prefix), whether the topic may hold it; `None`
    /// while the filter is not built, which starts a build sized for `expected` keys.
    pub fn may_hold<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>, expected: u64) -> Option<Vec<bool>> {
        {
            let filter = self.read();
            match filter.status {
                Status::Ready => return Some(keys.into_iter().map(|key| filter.may_hold(hash(key))).collect()),
                Status::Building { .. } => return None,
                Status::Idle => {}
            }
        }
        let mut filter = self.lock();
        if matches!(filter.status, Status::Idle) {
            let expected = usize::try_from(expected).unwrap_or(usize::MAX);
            // The build adds about `expected` keys: room for them in one filter.
            if filter.stages.last().is_none_or(|stage| stage.capacity - stage.count < expected) {
                filter.stages.push(Stage::new(expected.saturating_add(expected / 4).max(FIRST_CAPACITY)));
            }
            filter.status = Status::Building { cursor: None };
        }
        None
    }

    /// [`KeyFilter::may_hold`] for a read, which starts no build: `None` unless the filter is
    /// built.
    pub fn may_hold_if_ready<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Option<Vec<bool>> {
        let filter = self.read();
        matches!(filter.status, Status::Ready).then(|| keys.into_iter().map(|key| filter.may_hold(hash(key))).collect())
    }

    /// Whether a build is under way.
    pub fn is_building(&self) -> bool {
        matches!(self.read().status, Status::Building { .. })
    }

    /// Forgets every key: the filter is idle again, built anew when next consulted.
    pub fn reset(&self) {
        *self.lock() = Filter::default();
    }

    /// What the filter holds now.
    pub fn state(&self) -> KeyFilterState {
        let filter = self.read();
        KeyFilterState {
            ready: matches!(filter.status, Status::Ready),
            building: matches!(filter.status, Status::Building { .. }),
            keys: filter.stages.iter().map(|stage| stage.count as u64).sum(),
            bytes: filter.stages.iter().map(|stage| (stage.bloom.num_bits() / 8) as u64).sum(),
        }
    }

    /// Adds up to [`BUILD_STEP_KEYS`] more of `topic`'s rows; the filter is ready once a step
    /// reaches the end of them. Returns whether the build goes on.
    pub fn build_step(&self, db: &DB, topic: TopicId) -> Result<bool, StorageError> {
        let from = match &self.read().status {
            Status::Building { cursor } => cursor.clone(),
            _ => return Ok(false),
        };
        let cf = db.cf_handle(CF_KV).expect("every canopy column family is opened with the database");
        let mut options = topic_read_options(topic);
        options.fill_cache(false);
        let mut iter = db.raw_iterator_cf_opt(cf, options);
        match &from {
            Some(cursor) => iter.seek(topic.key(cursor)),
            None => iter.seek(topic.prefix()),
        }
        let prefix = topic.prefix();
        let mut hashes = Vec::with_capacity(BUILD_STEP_KEYS);
        let (mut read, mut last) = (0, None);
        while let Some(key) = iter.key() {
            if !key.starts_with(&prefix) {
                break;
            }
            let key = &key[prefix.len()..];
            if from.as_deref() != Some(key) {
                // A document's fields come one after another: its entry is added once.
                let entry = hash(key);
                if hashes.last() != Some(&entry) {
                    hashes.push(entry);
                }
                read += 1;
                if read == BUILD_STEP_KEYS {
                    last = Some(key.to_vec());
                    break;
                }
            }
            iter.next();
        }
        iter.status()?;
        let mut filter = self.lock();
        // The filter was reset meanwhile (not on this thread today, but the check is cheap).
        if !matches!(filter.status, Status::Building { .. }) {
            return Ok(false);
        }
        for hash in hashes {
            filter.insert(hash);
        }
        filter.status = match last {
            Some(cursor) => Status::Building { cursor: Some(cursor) },
            None => Status::Ready,
        };
        Ok(matches!(filter.status, Status::Building { .. }))
    }
}

impl Filter {
    fn insert(&mut self, hash: u64) {
        let full = self.stages.last().is_none_or(|stage| stage.count >= stage.capacity);
        if full {
            let capacity = self.stages.last().map_or(FIRST_CAPACITY, |stage| stage.capacity.saturating_mul(GROWTH));
            self.stages.push(Stage::new(capacity));
        }
        let stage = self.stages.last_mut().expect("a stage was just made");
        stage.bloom.insert_hash(hash);
        stage.count += 1;
    }

    fn may_hold(&self, hash: u64) -> bool {
        self.stages.iter().any(|stage| stage.bloom.contains_hash(hash))
    }
}

impl Stage {
    fn new(capacity: usize) -> Stage {
        let bits = capacity.saturating_mul(BITS_PER_KEY).max(64);
        Stage { bloom: BloomFilter::with_num_bits(bits).hashes(HASHES), capacity, count: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Vec<u8> {
        format!("key-{i:010}").into_bytes()
    }

    #[test]
    fn holds_every_key_inserted_across_stages() {
        let filter = KeyFilter::default();
        assert_eq!(filter.may_hold([&b"a"[..]], 0), None, "an idle filter is not consulted");
        // The build of an empty topic is not run here: mark it ready by hand.
        filter.lock().status = Status::Ready;
        let hashes: Vec<u64> = (0..200_000).map(|i| hash(&key(i))).collect();
        filter.insert(&hashes);
        assert!(filter.read().stages.len() >= 3, "200k keys fill more than one stage");
        let keys: Vec<Vec<u8>> = (0..200_000).map(key).collect();
        let held = filter.may_hold(keys.iter().map(Vec::as_slice), 0).expect("ready");
        assert!(held.iter().all(|held| *held), "no inserted key is ever reported absent");
        let others: Vec<Vec<u8>> = (200_000..300_000).map(key).collect();
        let false_positives =
            filter.may_hold(others.iter().map(Vec::as_slice), 0).expect("ready").iter().filter(|h| **h).count();
        assert!(false_positives < 5_000, "{false_positives} of 100,000 absent keys reported as held");
    }
}
