//! Repairing a stopped node's topic: what `canopy-ops repair` does.
//!
//! Blocks that fail their check (hash, encoding, index record) are removed together with every
//! block above them, so what is applied stays closed under "parent" and the heads are the
//! maximal blocks left: sync then fetches the removed blocks again from peers. Rows, the key
//! count, pending removes and heads are then rebuilt from what is left: the blocks, and the
//! cover snapshot for compacted history. Running it twice changes nothing the second time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use canopy_dag::{Block, BlockLimits, BlockMeta, BlockStore, CF_BLOCKS, CF_INDEX, Cid, Height, TopicId};
use rocksdb::{Cache, DB, Options, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::delta::{Delta, Limits};
use crate::error::{OpenError, StorageError};
use crate::row::{Element, Row};
use crate::row_change::{Notice, RowChanges};
use crate::schema::prefix_scan;
use crate::schema::{
    CF_DOC_INDEX, CF_EXPIRIES, CF_HEADS, CF_KV, CF_META, CF_SNAPSHOTS, CF_TOMBSTONES, META_COVER, META_TOPIC,
    column_families, decode_cids, key_count_key, meta_key, tombstone_key,
};
use crate::snapshot::{Chunk, Manifest};

/// What a repair changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    /// The topic.
    pub topic: String,
    /// Blocks that failed their check, removed with what is above them, to be fetched again.
    pub removed_blocks: Vec<String>,
    /// Keys whose stored row differed from the rebuilt one.
    pub rows_fixed: Vec<String>,
    /// The key count before and after, when it changed.
    pub key_count: Option<(u64, u64)>,
    /// Whether the heads changed.
    pub heads_changed: bool,
    /// Why the rows could not be rebuilt, if they could not.
    pub rows_not_rebuilt: Option<String>,
}

/// Repairs `topic` in the database at `path`, which no node may hold open.
pub fn repair(path: impl AsRef<Path>, topic: &str) -> Result<Repair, RepairError> {
    let cache = Cache::new_lru_cache(8 << 20);
    // Families added since an older canopy wrote the directory are made empty.
    let mut options = Options::default();
    options.create_missing_column_families(true);
    let db =
        DB::open_cf_descriptors(&options, path.as_ref(), column_families(&cache, crate::options::ROW_MEMTABLE_BYTES))
            .map_err(|e| RepairError::Open(OpenError::from(e)))?;
    // A directory of an older format is rewritten first, as a node opening it would.
    crate::schema::check_format(&db).map_err(RepairError::Open)?;
    let blocks = BlockStore::new(std::sync::Arc::new(db)).map_err(StorageError::from)?;
    let db = blocks.db();
    let cf = |name: &str| db.cf_handle(name).expect("every canopy column family is opened");
    let id = {
        let mut key = vec![META_TOPIC];
        key.extend_from_slice(topic.as_bytes());
        let bytes = db.get_cf(cf(CF_META), key)?.ok_or_else(|| RepairError::NoTopic(topic.to_string()))?;
        let id: [u8; 4] = bytes.as_slice().try_into().map_err(|_| StorageError::Corrupt("topic id".into()))?;
        TopicId(u32::from_be_bytes(id))
    };
    let access = crate::access::Access::of(topic).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let mut report = Repair { topic: topic.to_string(), ..Repair::default() };

    // What is applied, and which blocks fail their check.
    let mut index: BTreeMap<Cid, BlockMeta> = BTreeMap::new();
    for item in prefix_scan(db, cf(CF_INDEX), id) {
        let (key, value) = item?;
        let cid = Cid::try_from(key.as_slice()).map_err(|e| StorageError::Corrupt(format!("index key: {e}")))?;
        let meta = BlockMeta::decode(&value).map_err(|e| StorageError::Corrupt(format!("index of {cid}: {e}")))?;
        index.insert(cid, meta);
    }
    let mut good: BTreeMap<Cid, Block> = BTreeMap::new();
    let mut bad: BTreeSet<Cid> = BTreeSet::new();
    for (cid, meta) in &index {
        if meta.pruned {
            continue;
        }
        let block = blocks
            .get(id, cid)
            .map_err(StorageError::from)?
            .and_then(|bytes| Block::decode(topic, *cid, &bytes, &BlockLimits::PROTOCOL).ok())
            // A block its author may not write is as bad as one that does not decode.
            .filter(|block| access.admits_block(block).is_ok());
        match block {
            Some(block) if block.height() == meta.height && block.links() == meta.links => {
                good.insert(*cid, block);
            }
            _ => {
                bad.insert(*cid);
            }
        }
    }
    // Everything above a bad block goes with it.
    let mut children: BTreeMap<Cid, Vec<Cid>> = BTreeMap::new();
    for (cid, meta) in &index {
        for parent in &meta.links {
            children.entry(*parent).or_default().push(*cid);
        }
    }
    let mut removed: BTreeSet<Cid> = BTreeSet::new();
    let mut stack: Vec<Cid> = bad.iter().copied().collect();
    while let Some(cid) = stack.pop() {
        if removed.insert(cid) {
            stack.extend(children.get(&cid).into_iter().flatten().copied());
        }
    }
    let mut batch = WriteBatch::default();
    for cid in &removed {
        let key = id.key(&cid.to_bytes());
        batch.delete_cf(cf(CF_BLOCKS), &key);
        batch.delete_cf(cf(CF_INDEX), &key);
        index.remove(cid);
        good.remove(cid);
        report.removed_blocks.push(cid.to_string());
    }

    // Heads: the applied blocks no applied block links to.
    let linked: BTreeSet<Cid> = index.values().flat_map(|meta| meta.links.iter().copied()).collect();
    let heads: BTreeMap<Cid, Height> =
        index.iter().filter(|(cid, _)| !linked.contains(cid)).map(|(cid, meta)| (*cid, meta.height)).collect();
    let mut old_heads: BTreeMap<Cid, Height> = BTreeMap::new();
    for item in prefix_scan(db, cf(CF_HEADS), id) {
        let (key, value) = item?;
        if let (Ok(cid), Ok(height)) = (Cid::try_from(key.as_slice()), <[u8; 8]>::try_from(value.as_slice())) {
            old_heads.insert(cid, u64::from_be_bytes(height));
        }
    }
    if old_heads != heads {
        report.heads_changed = true;
        delete_range(&mut batch, cf(CF_HEADS), id);
        for (cid, height) in &heads {
            batch.put_cf(cf(CF_HEADS), id.key(&cid.to_bytes()), height.to_be_bytes());
        }
    }

    match expected_state(db, id, &index, &good, crate::types::wall_ms()) {
        Ok((added, removes)) => rebuild_rows(db, id, &index, added, removes, &mut batch, &mut report)?,
        Err(reason) => report.rows_not_rebuilt = Some(reason),
    }
    db.write(batch)?;
    Ok(report)
}

/// Every element the state of a topic holds, by key, and every remove: the cover snapshot for
/// pruned history, then each of `blocks` it does not cover. An error says why the state cannot
/// be known here (a pruned history whose snapshot parts are not held). Elements expired at `now`
/// are left out, as collection leaves them out of rows.
pub(crate) fn expected_state(
    db: &DB,
    id: TopicId,
    index: &BTreeMap<Cid, BlockMeta>,
    blocks: &BTreeMap<Cid, Block>,
    now: u64,
) -> Result<State, String> {
    let mut added: BTreeMap<Vec<u8>, Vec<Element>> = BTreeMap::new();
    let mut removes: BTreeSet<(Vec<u8>, Cid)> = BTreeSet::new();
    let mut covered: BTreeSet<Cid> = BTreeSet::new();
    if index.values().any(|meta| meta.pruned) {
        let cf = db.cf_handle(CF_META).expect("every canopy column family is opened");
        let cover = match db.get_cf(cf, meta_key(META_COVER, id)).map_err(|e| e.to_string())? {
            Some(bytes) => decode_cids(&bytes).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        load_snapshots(db, id, &cover, &mut added, &mut removes, &mut covered)?;
    }
    for (cid, block) in blocks.iter().filter(|(cid, _)| !covered.contains(cid)) {
        let Ok(mut delta) = Delta::decode(block.payload(), &Limits::PROTOCOL) else { continue };
        let expiries = std::mem::take(&mut delta.expiries);
        for (key, value) in delta.adds {
            let expires = expiries.binary_search_by(|(k, _)| k.cmp(&key)).ok().map(|at| expiries[at].1);
            added.entry(key).or_default().push(Element { height: block.height(), id: *cid, value, expires });
        }
        removes.extend(delta.removes);
    }
    for elements in added.values_mut() {
        elements.retain(|element| !element.expired(now));
    }
    Ok((added, removes))
}

/// Elements by key, and removes as (key, element id).
pub(crate) type State = (BTreeMap<Vec<u8>, Vec<Element>>, BTreeSet<(Vec<u8>, Cid)>);

/// Reads the elements, removes and covered blocks of the cover snapshots.
fn load_snapshots(
    db: &DB,
    id: TopicId,
    cover: &[Cid],
    added: &mut BTreeMap<Vec<u8>, Vec<Element>>,
    removes: &mut BTreeSet<(Vec<u8>, Cid)>,
    covered: &mut BTreeSet<Cid>,
) -> Result<(), String> {
    let cf = db.cf_handle(CF_SNAPSHOTS).expect("every canopy column family is opened");
    let read = |cid: &Cid| -> Result<Vec<u8>, String> {
        db.get_cf(cf, id.key(&cid.to_bytes())).map_err(|e| e.to_string())?.ok_or_else(|| {
            format!("snapshot part {cid} is not held (released, or never fetched); a peer can serve the topic")
        })
    };
    if cover.is_empty() {
        return Err("history is pruned but no snapshot covers it".into());
    }
    for manifest_cid in cover {
        let manifest = Manifest::decode(manifest_cid, &read(manifest_cid)?).map_err(|e| e.to_string())?;
        for chunk_cid in &manifest.chunks {
            let chunk = Chunk::decode(chunk_cid, &read(chunk_cid)?).map_err(|e| e.to_string())?;
            for element in chunk.elements {
                let entry = added.entry(element.key).or_default();
                if !entry.iter().any(|e| e.id == element.id) {
                    let expires = element.expires;
                    entry.push(Element { height: element.height, id: element.id, value: element.value, expires });
                }
            }
            removes.extend(chunk.removes.into_iter().map(|(id, key)| (key, id)));
            covered.extend(chunk.blocks.into_iter().map(|(cid, _)| cid));
        }
    }
    Ok(())
}

/// Writes the rows, key count and pending removes the state gives, and reports the rows that
/// differed.
fn rebuild_rows(
    db: &DB,
    id: TopicId,
    index: &BTreeMap<Cid, BlockMeta>,
    added: BTreeMap<Vec<u8>, Vec<Element>>,
    removes: BTreeSet<(Vec<u8>, Cid)>,
    batch: &mut WriteBatch,
    report: &mut Repair,
) -> Result<(), StorageError> {
    let cf = |name: &str| db.cf_handle(name).expect("every canopy column family is opened");
    let mut rows: BTreeMap<Vec<u8>, Row> = BTreeMap::new();
    for (key, elements) in added {
        let mut row = Row::default();
        for element in elements {
            if !removes.contains(&(key.clone(), element.id)) {
                row.insert(element);
            }
        }
        if !row.is_empty() {
            rows.insert(key, row);
        }
    }
    let mut stored: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for item in prefix_scan(db, cf(CF_KV), id) {
        let (key, value) = item?;
        // A document's record holds its fields' rows; one that does not decode is replaced.
        match crate::doc_row::expand(key.clone(), &value) {
            Ok(found) if crate::doc_row::split(&key).is_some() => {
                stored.extend(found.into_iter().map(|(key, row)| (key, row.encode())));
            }
            _ => {
                stored.insert(key, value);
            }
        }
    }
    let now = crate::types::wall_ms();
    let keys: BTreeSet<&Vec<u8>> = rows.keys().chain(stored.keys()).collect();
    for key in keys {
        let rebuilt = rows.get(key).map(Row::encode);
        // A stored row that differs only by elements expired since is right, and not reported.
        let unexpired = stored.get(key).and_then(|bytes| Row::decode(bytes).ok()).map(|mut row| {
            row.remove_expired(now);
            row
        });
        let unexpired = unexpired.filter(|row| !row.is_empty()).map(|row| row.encode());
        if rebuilt.as_ref() != stored.get(key) && rebuilt != unexpired {
            report.rows_fixed.push(String::from_utf8_lossy(key).into_owned());
        }
    }
    // Every row is written again from nothing, with what follows from it: the key count and the
    // expiry index (every element that expires is indexed again, so collection finds it).
    let before = db.get_cf(cf(CF_META), key_count_key(id))?.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok());
    let before = before.map(u64::from_be_bytes).unwrap_or(0);
    delete_range(batch, cf(CF_KV), id);
    delete_range(batch, cf(CF_EXPIRIES), id);
    // The documents' indexes are built again from the rebuilt rows when the topic next loads.
    delete_range(batch, cf(CF_DOC_INDEX), id);
    for (key, _) in crate::index::load_states(db, id)? {
        batch.delete_cf(cf(CF_META), key);
    }
    let mut rows_changed = RowChanges::new(db, id, 0, now, false, false);
    let empty = Row::default();
    for (key, row) in &rows {
        rows_changed.write(batch, key, &empty, row, Notice::ValueChanged(0));
    }
    let count = rows_changed.seal(batch).key_count;
    if before != count {
        report.key_count = Some((before, count));
    }
    // Removes of elements whose block is not applied wait as tombstones, as on apply.
    delete_range(batch, cf(CF_TOMBSTONES), id);
    for (key, element) in &removes {
        if !index.contains_key(element) {
            batch.put_cf(cf(CF_TOMBSTONES), tombstone_key(id, element, key), []);
        }
    }
    Ok(())
}

fn delete_range(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, id: TopicId) {
    let end = id.range_end().map_or_else(|| vec![0xff; 64], |end| end.to_vec());
    batch.delete_range_cf(cf, &id.prefix()[..], &end[..]);
}

/// Why a repair could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepairError {
    /// The database could not be opened (a running node holds it, or it is not a canopy
    /// database).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// There is no such topic.
    #[error("no topic {0} in this database")]
    NoTopic(String),
    /// Reading or writing failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<rocksdb::Error> for RepairError {
    fn from(error: rocksdb::Error) -> Self {
        RepairError::Storage(StorageError::Rocks(error))
    }
}
