//! The block store: applied blocks and their metadata in RocksDB, one key range per topic.

use std::sync::Arc;

use cid::Cid;
use rocksdb::{DB, WriteBatch};

use crate::block::{Block, Height};
use crate::topic::TopicId;

/// Column family of applied blocks: `topic ++ cid` → canonical block bytes.
pub const CF_BLOCKS: &str = "blocks";
/// Column family of block metadata: `topic ++ cid` → height and links. It doubles as the
/// "applied" marker and lets DAG walks run without reading block payloads.
pub const CF_INDEX: &str = "index";

/// Failure of a block store operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A column family the store needs was not opened with the database.
    #[error("column family {0} is missing: open the database with every canopy column family")]
    MissingColumnFamily(&'static str),
    /// Stored bytes do not decode; the data directory is damaged.
    #[error("corrupt record in {cf} for {cid}: {reason}")]
    Corrupt {
        /// Column family holding the record.
        cf: &'static str,
        /// Block the record belongs to, in text form.
        cid: String,
        /// What failed to decode.
        reason: String,
    },
}

/// Height and parent links of an applied block, as kept in the index.
///
/// A *pruned* block is one whose payload was dropped because a snapshot covers it: its record
/// keeps only the height (the block still counts as applied, and children are checked against
/// its height), without links or bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMeta {
    /// The block's height.
    pub height: Height,
    /// The block's parents; empty for a pruned block.
    pub links: Vec<Cid>,
    /// True when the block's payload is gone and a snapshot covers it.
    pub pruned: bool,
}

/// The byte after the height that marks a pruned record. A link always starts with the CID
/// version 1, so the two forms cannot be confused.
const PRUNED_MARK: u8 = 0;

impl BlockMeta {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.links.len() * 36);
        out.extend_from_slice(&self.height.to_be_bytes());
        if self.pruned {
            out.push(PRUNED_MARK);
            return out;
        }
        for link in &self.links {
            link.write_bytes(&mut out).expect("writing to a Vec cannot fail");
        }
        out
    }

    /// Decodes an index record.
    pub fn decode(bytes: &[u8]) -> Result<BlockMeta, String> {
        let (height, mut rest) = bytes.split_first_chunk::<8>().ok_or("index record shorter than a height")?;
        let height = u64::from_be_bytes(*height);
        if rest == [PRUNED_MARK] {
            return Ok(BlockMeta { height, links: Vec::new(), pruned: true });
        }
        let mut links = Vec::new();
        while !rest.is_empty() {
            links.push(Cid::read_bytes(&mut rest).map_err(|e| e.to_string())?);
        }
        Ok(BlockMeta { height, links, pruned: false })
    }
}

/// Applied blocks of every topic, in the `blocks` and `index` column families of a shared
/// RocksDB. Writes go into a caller's `WriteBatch` so that a block lands atomically with the
/// state it changes.
#[derive(Clone)]
pub struct BlockStore {
    db: Arc<DB>,
}

impl BlockStore {
    /// A block store over a database opened with [`CF_BLOCKS`] and [`CF_INDEX`].
    pub fn new(db: Arc<DB>) -> Result<BlockStore, StoreError> {
        for cf in [CF_BLOCKS, CF_INDEX] {
            db.cf_handle(cf).ok_or(StoreError::MissingColumnFamily(cf))?;
        }
        Ok(BlockStore { db })
    }

    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column families are checked in BlockStore::new")
    }

    /// Adds `block` to `batch`, marking it applied in `topic` once the batch is written.
    pub fn put(&self, batch: &mut WriteBatch, topic: TopicId, block: &Block) {
        let key = topic.key(&block.cid().to_bytes());
        let meta = BlockMeta { height: block.height(), links: block.links().to_vec(), pruned: false };
        batch.put_cf(self.cf(CF_BLOCKS), &key, block.bytes());
        batch.put_cf(self.cf(CF_INDEX), &key, meta.encode());
    }

    /// Adds to `batch` the pruning of `cid`: its payload goes, its index record keeps only the
    /// height. Also how a block covered by a merged snapshot is recorded as applied.
    pub fn put_pruned(&self, batch: &mut WriteBatch, topic: TopicId, cid: &Cid, height: Height) {
        let key = topic.key(&cid.to_bytes());
        let meta = BlockMeta { height, links: Vec::new(), pruned: true };
        batch.delete_cf(self.cf(CF_BLOCKS), &key);
        batch.put_cf(self.cf(CF_INDEX), &key, meta.encode());
    }

    /// Every index record of `topic` as `(cid, meta)`, in CID order.
    pub fn iter_index(&self, topic: TopicId) -> impl Iterator<Item = Result<(Cid, BlockMeta), StoreError>> + '_ {
        self.scan(CF_INDEX, topic).map(|item| {
            let (cid, value) = item?;
            let meta = BlockMeta::decode(&value).map_err(|reason| StoreError::Corrupt {
                cf: CF_INDEX,
                cid: cid.to_string(),
                reason,
            })?;
            Ok((cid, meta))
        })
    }

    /// Every record of `topic` in the column family `cf` as `(cid, value)`, in CID order.
    fn scan(&self, cf: &'static str, topic: TopicId) -> impl Iterator<Item = Result<(Cid, Vec<u8>), StoreError>> + '_ {
        let prefix = topic.prefix();
        self.db
            .prefix_iterator_cf(self.cf(cf), prefix)
            .take_while(move |item| item.as_ref().map_or(true, |(key, _)| key.starts_with(&prefix)))
            .map(move |item| {
                let (key, value) = item?;
                let cid = Cid::try_from(&key[prefix.len()..]).map_err(|e| StoreError::Corrupt {
                    cf,
                    cid: String::from("?"),
                    reason: format!("bad key: {e}"),
                })?;
                Ok((cid, value.into_vec()))
            })
    }

    /// The encoded bytes of an applied block.
    pub fn get(&self, topic: TopicId, cid: &Cid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_BLOCKS), topic.key(&cid.to_bytes()))?)
    }

    /// The encoded bytes of many applied blocks in one batched read, in the order asked.
    pub fn get_many<'a>(
        &self,
        topic: TopicId,
        cids: impl Iterator<Item = &'a Cid>,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let keys: Vec<Vec<u8>> = cids.map(|cid| topic.key(&cid.to_bytes())).collect();
        self.db
            .batched_multi_get_cf(self.cf(CF_BLOCKS), &keys, false)
            .into_iter()
            .map(|value| Ok(value?.map(|bytes| bytes.to_vec())))
            .collect()
    }

    /// Whether `cid` is applied in `topic`.
    pub fn contains(&self, topic: TopicId, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self.db.get_pinned_cf(self.cf(CF_INDEX), topic.key(&cid.to_bytes()))?.is_some())
    }

    /// Height and links of an applied block.
    pub fn meta(&self, topic: TopicId, cid: &Cid) -> Result<Option<BlockMeta>, StoreError> {
        Ok(self.metas(topic, std::slice::from_ref(cid))?.pop().flatten())
    }

    /// Height and links of many blocks in one batched read, in the order asked.
    pub fn metas(&self, topic: TopicId, cids: &[Cid]) -> Result<Vec<Option<BlockMeta>>, StoreError> {
        let decode = |cid: &Cid, value: Option<&[u8]>| match value {
            None => Ok(None),
            Some(bytes) => BlockMeta::decode(bytes).map(Some).map_err(|reason| StoreError::Corrupt {
                cf: CF_INDEX,
                cid: cid.to_string(),
                reason,
            }),
        };
        match cids {
            [] => Ok(Vec::new()),
            // A walk down a chain reads one record at a time: a plain read costs less than a
            // batch of one.
            [cid] => {
                let value = self.db.get_pinned_cf(self.cf(CF_INDEX), topic.key(&cid.to_bytes()))?;
                Ok(vec![decode(cid, value.as_deref())?])
            }
            _ => {
                let keys: Vec<Vec<u8>> = cids.iter().map(|cid| topic.key(&cid.to_bytes())).collect();
                let values = self.db.batched_multi_get_cf(self.cf(CF_INDEX), &keys, false);
                cids.iter().zip(values).map(|(cid, value)| decode(cid, value?.as_deref())).collect()
            }
        }
    }

    /// Adds the removal of every block of `topic` to `batch`.
    pub fn delete_topic(&self, batch: &mut WriteBatch, topic: TopicId) {
        let start = topic.prefix();
        for cf in [CF_BLOCKS, CF_INDEX] {
            match topic.range_end() {
                Some(end) => batch.delete_range_cf(self.cf(cf), start, end),
                None => batch.delete_range_cf(self.cf(cf), &start[..], &[0xff; 64][..]),
            }
        }
    }

    /// Every applied block of `topic` as `(cid, bytes)`, in CID order.
    pub fn iter_topic(&self, topic: TopicId) -> impl Iterator<Item = Result<(Cid, Vec<u8>), StoreError>> + '_ {
        self.scan(CF_BLOCKS, topic)
    }

    /// The database the store writes to.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips() {
        let a = Block::build("t", vec![], 1, b"a".to_vec(), &crate::Signer::from_secret([1; 32])).unwrap();
        let b = Block::build("t", vec![], 1, b"b".to_vec(), &crate::Signer::from_secret([1; 32])).unwrap();
        let meta = BlockMeta { height: 7, links: vec![a.cid(), b.cid()], pruned: false };
        assert_eq!(BlockMeta::decode(&meta.encode()).unwrap(), meta);
        let pruned = BlockMeta { height: 7, links: Vec::new(), pruned: true };
        assert_eq!(BlockMeta::decode(&pruned.encode()).unwrap(), pruned);
        let root = BlockMeta { height: 1, links: Vec::new(), pruned: false };
        assert_eq!(BlockMeta::decode(&root.encode()).unwrap(), root);
        assert!(BlockMeta::decode(&[1, 2]).is_err());
    }
}
