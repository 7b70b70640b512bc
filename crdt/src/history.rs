//! Key history: the versions of a key this replica still holds, newest first.
//!
//! A key's live elements are versions already (its row holds them). Column family `history`
//! keeps the others: a record `topic ++ escaped key (as counter entries escape theirs) ++
//! !height ++ cid` for each
//! element that left the row (superseded, deleted, expired, or removed before it arrived) and
//! for each block that deleted the key; its one-byte value says which. Writing a new key
//! records nothing. The value itself stays in the block: a version is read back from the block's
//! delta. A compaction prunes the blocks it covers and drops their records with them, so after
//! it a key's history is its live elements (kept in its row, whatever their blocks) plus what
//! was written since.

use canopy_dag::{BlockStore, Cid, Height, TopicId};
use rocksdb::{DB, ReadOptions, WriteBatch};

use crate::delta::{Delta, Limits};
use crate::error::{ReadError, StorageError};
use crate::row::Row;
use crate::schema::{CF_HISTORY, CF_KV};

/// A record of a put.
const PUT: u8 = 0;
/// A record of a delete.
const DELETE: u8 = 1;

/// One version of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The value written; `None` for a deletion.
    pub value: Option<Vec<u8>>,
    /// Height of the block that made it.
    pub height: Height,
    /// The block that made it (the element id of a put).
    pub cid: Cid,
    /// When a put's value expires, in milliseconds since the Unix epoch.
    pub expires: Option<u64>,
}

impl Version {
    /// Whether this version deleted the key.
    pub fn deleted(&self) -> bool {
        self.value.is_none()
    }
}

/// The prefix of every history record of `key`: the key escaped so no key's records fall under
/// another's.
fn key_prefix(topic: TopicId, key: &[u8]) -> Vec<u8> {
    let mut out = topic.key(&[]);
    crate::counter::escape_key(&mut out, key);
    out
}

fn record_key(topic: TopicId, key: &[u8], height: Height, cid: &Cid) -> Vec<u8> {
    let mut out = key_prefix(topic, key);
    out.extend_from_slice(&(!height).to_be_bytes());
    out.extend_from_slice(&cid.to_bytes());
    out
}

/// Records that the block `cid` at `height` put (`deleted` false) or deleted `key`.
pub(crate) fn record(
    batch: &mut WriteBatch,
    cf: &rocksdb::ColumnFamily,
    topic: TopicId,
    key: &[u8],
    (height, cid): (Height, &Cid),
    deleted: bool,
) {
    if crate::counter::is_reserved(key) {
        return;
    }
    batch.put_cf(cf, record_key(topic, key, height, cid), [if deleted { DELETE } else { PUT }]);
}

/// Records the deletes of a received block's delta: the keys it removes elements of and does
/// not add.
pub(crate) fn record_deletes(
    batch: &mut WriteBatch,
    cf: &rocksdb::ColumnFamily,
    topic: TopicId,
    delta: &Delta,
    at: (Height, &Cid),
) {
    let mut previous: Option<&[u8]> = None;
    for (key, _) in &delta.removes {
        if previous == Some(key.as_slice()) {
            continue;
        }
        previous = Some(key);
        if delta.adds.binary_search_by(|(added, _)| added.as_slice().cmp(key)).is_err() {
            record(batch, cf, topic, key, at, true);
        }
    }
}

/// The versions of `key` this replica holds, newest first (by height, then element id), at most
/// `limit`: the blocks still held that put or deleted it, and its live elements.
pub(crate) fn versions(
    db: &DB,
    blocks: &BlockStore,
    (topic, name): (TopicId, &str),
    key: &[u8],
    limit: usize,
) -> Result<Vec<Version>, ReadError> {
    let cf = |name: &str| db.cf_handle(name).expect("every canopy column family is opened with the database");
    let mut versions: Vec<Version> = Vec::new();
    if let Some(row) = db.get_pinned_cf(cf(CF_KV), topic.key(key))? {
        let row = Row::decode(&row).map_err(|e| StorageError::Corrupt(format!("row of key {key:?}: {e}")))?;
        versions.extend(row.elements().iter().map(|element| Version {
            value: Some(element.value.clone()),
            height: element.height,
            cid: element.id,
            expires: element.expires,
        }));
    }
    let prefix = key_prefix(topic, key);
    let mut options = ReadOptions::default();
    options.set_prefix_same_as_start(true);
    let mut iter = db.raw_iterator_cf_opt(cf(CF_HISTORY), options);
    iter.seek(&prefix);
    // Records come newest first; the live elements are at most a few, so once `limit` records
    // beyond them are read nothing older can make the cut.
    let mut read = 0;
    while iter.valid() && read < limit + versions.len() {
        let (Some(record), Some(kind)) = (iter.key(), iter.value()) else { break };
        let Some(rest) = record.strip_prefix(prefix.as_slice()) else { break };
        let corrupt = || StorageError::Corrupt(format!("history record of key {key:?}"));
        let height = !u64::from_be_bytes(rest.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(corrupt)?);
        let cid = Cid::try_from(&rest[8..]).map_err(|_| corrupt())?;
        let kind = kind.first().copied();
        read += 1;
        iter.next();
        if versions.iter().any(|version| version.cid == cid) {
            continue;
        }
        let Some(bytes) = blocks.get(topic, &cid).map_err(StorageError::from)? else {
            // Pruned by a compaction running now: its record goes with it.
            continue;
        };
        let block = canopy_dag::Block::decode(name, cid, &bytes, &canopy_dag::BlockLimits::PROTOCOL)
            .map_err(|e| StorageError::Corrupt(format!("stored block {cid}: {e}")))?;
        let delta = Delta::decode(block.payload(), &Limits::PROTOCOL)
            .map_err(|e| StorageError::Corrupt(format!("delta of stored block {cid}: {e}")))?;
        let value = match delta.adds.binary_search_by(|(added, _)| added.as_slice().cmp(key)) {
            Ok(at) => Some(delta.adds[at].1.clone()),
            Err(_) if kind == Some(DELETE) => None,
            Err(_) => return Err(corrupt().into()),
        };
        let expires = delta.expiry(key);
        versions.push(Version { value, height, cid, expires });
    }
    iter.status().map_err(StorageError::from)?;
    versions.sort_by_key(|version| std::cmp::Reverse((version.height, version.cid)));
    versions.truncate(limit);
    Ok(versions)
}
