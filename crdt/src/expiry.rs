//! Expiring entries: an element added with an expiry time is hidden from that time on, on every
//! replica, as if deleted, and then collected from storage.
//!
//! Column family `expiries` indexes every stored element that expires:
//! `topic ++ expiry (8 B BE) ++ cid length (1 B) ++ cid ++ key` → nothing. A topic's due
//! elements are therefore one range from the start of its prefix; its writer thread collects
//! them (`writer/expire.rs`) when the earliest is due. Reads do not wait for that: they pass over
//! expired elements by the clock.

use std::fmt;
use std::sync::Arc;

use canopy_dag::{Cid, TopicId};
use rocksdb::{DB, ReadOptions, WriteBatch};

use crate::error::StorageError;
use crate::schema::CF_EXPIRIES;

/// Wall-clock time in milliseconds since the Unix epoch, as a store reads it. Expiring entries
/// are judged by it; tests and the simulator pass a clock of their own.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock(Arc::new(crate::types::wall_ms))
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> u64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// One index record: an element of `key` expires at `at`.
#[derive(Debug)]
pub(crate) struct Due {
    pub at: u64,
    pub key: Vec<u8>,
    /// The record's own key, to delete it.
    pub record: Vec<u8>,
}

fn record_key(topic: TopicId, at: u64, id: &Cid, key: &[u8]) -> Vec<u8> {
    let id = id.to_bytes();
    let mut out = topic.key(&at.to_be_bytes());
    out.reserve(1 + id.len() + key.len());
    out.push(id.len() as u8);
    out.extend_from_slice(&id);
    out.extend_from_slice(key);
    out
}

/// Indexes the element `id` of `key`, which expires at `at`.
pub(crate) fn record(
    batch: &mut WriteBatch,
    cf: &rocksdb::ColumnFamily,
    topic: TopicId,
    key: &[u8],
    id: &Cid,
    at: u64,
) {
    batch.put_cf(cf, record_key(topic, at, id, key), []);
}

fn parse(topic: TopicId, record: &[u8]) -> Result<Due, StorageError> {
    let corrupt = || StorageError::Corrupt(format!("expiry record {record:?}"));
    let rest = record.strip_prefix(topic.prefix().as_slice()).ok_or_else(corrupt)?;
    let at = u64::from_be_bytes(rest.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?);
    let id_len = usize::from(*rest.get(8).ok_or_else(corrupt)?);
    let id = rest.get(9..9 + id_len).ok_or_else(corrupt)?;
    Cid::try_from(id).map_err(|_| corrupt())?;
    Ok(Due { at, key: rest[9 + id_len..].to_vec(), record: record.to_vec() })
}

/// The topic's index records due at `now` (expiry at or before it), earliest first, at most
/// `max`, and the expiry of the first record not taken, if any.
pub(crate) fn due(db: &DB, topic: TopicId, now: u64, max: usize) -> Result<(Vec<Due>, Option<u64>), StorageError> {
    let cf = db.cf_handle(CF_EXPIRIES).expect("every canopy column family is opened with the database");
    let mut options = ReadOptions::default();
    options.set_prefix_same_as_start(true);
    let mut iter = db.raw_iterator_cf_opt(cf, options);
    iter.seek(topic.prefix());
    let mut taken = Vec::new();
    let mut next = None;
    while iter.valid() {
        let Some(record) = iter.key() else { break };
        if !record.starts_with(&topic.prefix()) {
            break;
        }
        let due = parse(topic, record)?;
        if due.at > now || taken.len() == max {
            next = Some(due.at);
            break;
        }
        taken.push(due);
        iter.next();
    }
    iter.status()?;
    Ok((taken, next))
}

/// The earliest expiry indexed for the topic.
pub(crate) fn first(db: &DB, topic: TopicId) -> Result<Option<u64>, StorageError> {
    Ok(due(db, topic, 0, 0)?.1)
}
