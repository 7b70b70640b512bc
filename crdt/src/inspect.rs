//! Looking into a store without changing it: what the operations tool shows and checks.
//!
//! An [`Inspector`] reads a data directory opened read-only (it works beside a running node,
//! seeing the state as of when it opened) or a running store's own database. It lists topics
//! with their figures, reads heads, reports RocksDB's own figures per column family, and
//! verifies: every stored block against its CID and its index record, heights and links, that
//! every applied block's parents are applied (no hole under a head), that rows decode and the
//! key count matches them, that the rows equal the state recomputed from the blocks and the
//! cover snapshot (when its parts are held), and every table and blob checksum.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use canopy_dag::{Block, BlockLimits, BlockMeta, BlockStore, CF_BLOCKS, CF_INDEX, Cid, Height, TopicId};
use rocksdb::{Cache, DB, IteratorMode, Options, ReadOptions};
use serde::{Deserialize, Serialize};

use crate::delta::{Delta, Limits};
use crate::error::{OpenError, StorageError};
use crate::row::Row;
use crate::schema::{
    CF_HEADS, CF_KV, CF_META, CF_SNAPSHOTS, CF_TOMBSTONES, FAMILIES, FORMAT_READ_AS_IS, META_COVER, META_KNOWN,
    META_MERGE, META_TOPIC, column_families, decode_cids, key_count_key, meta_key,
};
use crate::serving::{Serving, Source};
use crate::types::Head;

/// Figures of one topic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStats {
    /// The topic's name.
    pub name: String,
    /// Its id inside this database.
    pub id: u32,
    /// Live keys, as counted when written.
    pub keys: u64,
    /// Current heads.
    pub heads: usize,
    /// Greatest head height.
    pub max_height: Height,
    /// Applied blocks whose payload is stored.
    pub blocks_kept: u64,
    /// Applied blocks pruned by compaction (a snapshot covers them).
    pub blocks_pruned: u64,
    /// Bytes of the topic's records, as RocksDB estimates them from its table files.
    pub bytes: u64,
    /// Manifests of the snapshots that cover the pruned blocks.
    pub snapshots: Vec<String>,
    /// Removes kept for elements whose block is not applied.
    pub tombstones: u64,
    /// Whether a snapshot merge is unfinished (it finishes when the node opens the topic).
    pub merging: bool,
}

/// RocksDB's figures for one column family.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyStats {
    /// The column family.
    pub name: String,
    /// Bytes of live table files.
    pub live_sst_bytes: u64,
    /// Bytes of blob files.
    pub blob_bytes: u64,
    /// Bytes of blob files that no live record refers to any more, awaiting collection.
    #[serde(default)]
    pub blob_garbage_bytes: u64,
    /// Bytes in memtables.
    pub memtable_bytes: u64,
    /// Keys, as RocksDB estimates them.
    pub estimated_keys: u64,
    /// Bytes compaction still has to rewrite.
    pub pending_compaction_bytes: u64,
    /// Whether writes are stopped or slowed down now.
    pub write_stall: bool,
}

/// One problem `verify` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The topic, or `-` for the database as a whole.
    pub topic: String,
    /// What the problem is about: a CID, a key, a column family.
    pub subject: String,
    /// What is wrong.
    pub what: String,
}

/// What `verify` looked at and found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Topics checked.
    pub topics: usize,
    /// Blocks re-hashed.
    pub blocks: u64,
    /// Rows read.
    pub rows: u64,
    /// Records read by the checksum scan.
    pub records: u64,
    /// Topics whose rows were compared with the state recomputed from their blocks (and the
    /// stored parts of their cover snapshots). A topic with pruned history is not: its rows
    /// are the only copy of what that history held (a snapshot is made from them), checked by
    /// the checksum scan.
    pub recomputed: usize,
    /// What is wrong, one entry per problem.
    pub problems: Vec<Problem>,
}

/// The shape of a topic's DAG.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DagStats {
    /// The topic.
    pub topic: String,
    /// Applied blocks with their payload.
    pub blocks_kept: u64,
    /// Applied blocks pruned by compaction.
    pub blocks_pruned: u64,
    /// Current heads.
    pub heads: usize,
    /// Lowest and greatest height among applied blocks.
    pub min_height: Height,
    /// Greatest height.
    pub max_height: Height,
    /// Bytes of the stored blocks.
    pub block_bytes: u64,
    /// Largest stored block, in bytes.
    pub largest_block_bytes: u64,
    /// Links of the kept blocks, in all.
    pub links: u64,
    /// Most links of one block.
    pub max_links: usize,
    /// Blocks with no parent (the roots of the history that is kept).
    pub roots: u64,
}

/// One block, decoded for a reader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockView {
    /// The block's CID.
    pub cid: String,
    /// Its height.
    pub height: Height,
    /// Its parents (empty for a pruned block, whose links are not kept).
    pub links: Vec<String>,
    /// True when its payload was pruned by compaction.
    pub pruned: bool,
    /// Encoded size, when stored.
    pub bytes: Option<usize>,
    /// Who signed it (a peer id), when its payload is stored and decodes.
    pub author: Option<String>,
    /// Elements it added: key (text, or `0x…` when not UTF-8) and value size.
    pub adds: Vec<(String, usize)>,
    /// Elements it removed: key and element id.
    pub removes: Vec<(String, String)>,
    /// Why the payload does not decode, if it does not.
    pub error: Option<String>,
}

/// What [`Inspector::export`] hands on, in order: the roots once, then parts and blocks.
#[derive(Debug)]
pub enum Exported {
    /// The export's roots: a snapshot's manifest when the history is pruned, then the heads.
    Roots(Vec<Cid>),
    /// A snapshot part or a block, with its CID.
    Part(Cid, Vec<u8>),
}

/// Read-only access to a canopy database.
pub struct Inspector {
    db: Arc<DB>,
    blocks: BlockStore,
}

impl Inspector {
    /// Opens the database at `path` read-only. It may be in use by a running node.
    pub fn open(path: impl AsRef<Path>) -> Result<Inspector, OpenError> {
        let path = path.as_ref();
        if !path.join("CURRENT").exists() {
            return Err(OpenError::InvalidOptions(format!("{} holds no canopy database", path.display())));
        }
        let cache = Cache::new_lru_cache(8 << 20);
        // A directory an older canopy wrote may lack families added since; read-only, they
        // cannot be made here.
        let present = DB::list_cf(&Options::default(), path)?;
        let families = column_families(&cache, crate::options::ROW_MEMTABLE_BYTES);
        let missing: Vec<&str> =
            families.iter().map(|family| family.name()).filter(|name| !present.iter().any(|p| p == name)).collect();
        if !missing.is_empty() {
            return Err(OpenError::InvalidOptions(format!(
                "{} was written by an older canopy and lacks the column families {}: start the node on it once \
                 (or run repair, which adds them), then inspect it",
                path.display(),
                missing.join(", ")
            )));
        }
        let db = DB::open_cf_descriptors_read_only(&Options::default(), path, families, false)?;
        // Read-only, the rewrite a node makes at open (documents' records) cannot be made.
        if let Some(found) = crate::schema::stored_format(&db)?.filter(|found| *found < FORMAT_READ_AS_IS) {
            let why = format!("was written by an older canopy (data directory format {found})");
            let what = "start the node on it once (or run repair, which rewrites it), then inspect it";
            return Err(OpenError::InvalidOptions(format!("{} {why}: {what}", path.display())));
        }
        Inspector::over(Arc::new(db))
    }

    /// An inspector over a database that is already open (a running store's).
    pub(crate) fn over(db: Arc<DB>) -> Result<Inspector, OpenError> {
        let blocks = BlockStore::new(db.clone()).map_err(StorageError::from)?;
        Ok(Inspector { db, blocks })
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("every canopy column family is opened with the database")
    }

    /// Names and ids of every topic, sorted by name.
    pub fn topic_ids(&self) -> Result<Vec<(String, TopicId)>, StorageError> {
        let mut topics = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_META), [META_TOPIC]) {
            let (key, value) = item?;
            if key.first() != Some(&META_TOPIC) {
                break;
            }
            let name = String::from_utf8_lossy(&key[1..]).into_owned();
            let id: [u8; 4] = value.as_ref().try_into().map_err(|_| StorageError::Corrupt(format!("id of {name}")))?;
            topics.push((name, TopicId(u32::from_be_bytes(id))));
        }
        Ok(topics)
    }

    fn id_of(&self, name: &str) -> Result<Option<TopicId>, StorageError> {
        Ok(self.topic_ids()?.into_iter().find(|(n, _)| n == name).map(|(_, id)| id))
    }

    /// The heads of a topic; `None` when there is no such topic.
    pub fn heads(&self, name: &str) -> Result<Option<Vec<Head>>, StorageError> {
        let Some(id) = self.id_of(name)? else { return Ok(None) };
        self.heads_of(id).map(Some)
    }

    fn heads_of(&self, id: TopicId) -> Result<Vec<Head>, StorageError> {
        let mut heads = Vec::new();
        for item in scan(&self.db, self.cf(CF_HEADS), id) {
            let (key, value) = item?;
            let cid = Cid::try_from(key.as_slice()).map_err(|e| StorageError::Corrupt(format!("head key: {e}")))?;
            let height: [u8; 8] =
                value.as_slice().try_into().map_err(|_| StorageError::Corrupt(format!("height of head {cid}")))?;
            heads.push(Head { cid, height: u64::from_be_bytes(height) });
        }
        Ok(heads)
    }

    /// Figures of every topic.
    pub fn topics(&self) -> Result<Vec<TopicStats>, StorageError> {
        self.topic_ids()?.into_iter().map(|(name, id)| self.stats(name, id)).collect()
    }

    /// Figures of one topic; `None` when there is no such topic.
    pub fn topic(&self, name: &str) -> Result<Option<TopicStats>, StorageError> {
        match self.id_of(name)? {
            Some(id) => self.stats(name.to_string(), id).map(Some),
            None => Ok(None),
        }
    }

    fn stats(&self, name: String, id: TopicId) -> Result<TopicStats, StorageError> {
        let heads = self.heads_of(id)?;
        let mut stats = TopicStats {
            name,
            id: id.0,
            heads: heads.len(),
            max_height: heads.iter().map(|h| h.height).max().unwrap_or(0),
            ..TopicStats::default()
        };
        if let Some(bytes) = self.db.get_cf(self.cf(CF_META), key_count_key(id))? {
            let count: [u8; 8] = bytes.as_slice().try_into().map_err(|_| StorageError::Corrupt("key count".into()))?;
            stats.keys = u64::from_be_bytes(count);
        }
        for item in self.blocks.iter_index(id) {
            let (_, meta) = item?;
            if meta.pruned {
                stats.blocks_pruned += 1;
            } else {
                stats.blocks_kept += 1;
            }
        }
        for item in scan(&self.db, self.cf(CF_TOMBSTONES), id) {
            item?;
            stats.tombstones += 1;
        }
        if let Some(bytes) = self.db.get_cf(self.cf(CF_META), meta_key(META_COVER, id))? {
            stats.snapshots = decode_cids(&bytes)?.iter().map(ToString::to_string).collect();
        }
        stats.merging = self.db.get_cf(self.cf(CF_META), meta_key(META_MERGE, id))?.is_some();
        let end = id.range_end().map_or_else(|| vec![0xff; 64], |end| end.to_vec());
        let start = id.prefix();
        for family in [CF_BLOCKS, CF_INDEX, CF_KV, CF_HEADS, CF_TOMBSTONES, CF_SNAPSHOTS] {
            let range = rocksdb::Range::new(&start[..], &end[..]);
            stats.bytes += self.db.get_approximate_sizes_cf(self.cf(family), &[range]).first().copied().unwrap_or(0);
        }
        Ok(stats)
    }

    /// The snapshots a topic made or merged, newest last.
    pub fn known_snapshots(&self, name: &str) -> Result<Vec<Cid>, StorageError> {
        let Some(id) = self.id_of(name)? else { return Ok(Vec::new()) };
        match self.db.get_cf(self.cf(CF_META), meta_key(META_KNOWN, id))? {
            Some(bytes) => decode_cids(&bytes),
            None => Ok(Vec::new()),
        }
    }

    /// RocksDB's figures per column family.
    pub fn families(&self) -> Result<Vec<FamilyStats>, StorageError> {
        let mut out = Vec::new();
        for name in FAMILIES {
            let cf = self.cf(name);
            let int = |property: &str| -> Result<u64, StorageError> {
                Ok(self.db.property_int_value_cf(cf, property)?.unwrap_or(0))
            };
            out.push(FamilyStats {
                name: name.to_string(),
                live_sst_bytes: int("rocksdb.live-sst-files-size")?,
                blob_bytes: int("rocksdb.total-blob-file-size")?,
                blob_garbage_bytes: int("rocksdb.live-blob-file-garbage-size")?,
                memtable_bytes: int("rocksdb.cur-size-all-mem-tables")?,
                estimated_keys: int("rocksdb.estimate-num-keys")?,
                pending_compaction_bytes: int("rocksdb.estimate-pending-compaction-bytes")?,
                write_stall: int("rocksdb.is-write-stopped")? > 0 || int("rocksdb.actual-delayed-write-rate")? > 0,
            });
        }
        Ok(out)
    }

    /// The shape of a topic's DAG; `None` when there is no such topic.
    pub fn dag_stats(&self, name: &str) -> Result<Option<DagStats>, StorageError> {
        let Some(id) = self.id_of(name)? else { return Ok(None) };
        let mut stats = DagStats { topic: name.to_string(), heads: self.heads_of(id)?.len(), ..DagStats::default() };
        stats.min_height = Height::MAX;
        for item in self.blocks.iter_index(id) {
            let (_, meta) = item?;
            stats.min_height = stats.min_height.min(meta.height);
            stats.max_height = stats.max_height.max(meta.height);
            if meta.pruned {
                stats.blocks_pruned += 1;
                continue;
            }
            stats.blocks_kept += 1;
            stats.links += meta.links.len() as u64;
            stats.max_links = stats.max_links.max(meta.links.len());
            stats.roots += u64::from(meta.links.is_empty());
        }
        if stats.min_height == Height::MAX {
            stats.min_height = 0;
        }
        for item in scan(&self.db, self.cf(CF_BLOCKS), id) {
            let (_, bytes) = item?;
            stats.block_bytes += bytes.len() as u64;
            stats.largest_block_bytes = stats.largest_block_bytes.max(bytes.len() as u64);
        }
        Ok(Some(stats))
    }

    /// One block of a topic, decoded; `None` when the topic has no such block.
    pub fn block(&self, name: &str, cid: &Cid) -> Result<Option<BlockView>, StorageError> {
        let Some(id) = self.id_of(name)? else { return Ok(None) };
        let Some(meta) = self.blocks.meta(id, cid)? else { return Ok(None) };
        let mut view = BlockView {
            cid: cid.to_string(),
            height: meta.height,
            links: meta.links.iter().map(ToString::to_string).collect(),
            pruned: meta.pruned,
            bytes: None,
            author: None,
            adds: Vec::new(),
            removes: Vec::new(),
            error: None,
        };
        if let Some(bytes) = self.blocks.get(id, cid)? {
            view.bytes = Some(bytes.len());
            match Block::decode(name, *cid, &bytes, &BlockLimits::PROTOCOL).map_err(|e| e.to_string()).and_then(
                |block| {
                    view.author = Some(block.author().to_string());
                    Delta::decode(block.payload(), &Limits::PROTOCOL).map_err(|e| e.to_string())
                },
            ) {
                Ok(delta) => {
                    view.adds = delta.adds.iter().map(|(key, value)| (plain_key(key), value.len())).collect();
                    view.removes = delta.removes.iter().map(|(key, id)| (plain_key(key), id.to_string())).collect();
                }
                Err(error) => view.error = Some(error),
            }
        }
        Ok(Some(view))
    }

    /// The DAG below `from` (the heads when `None`) as Graphviz DOT, `depth` levels down and at
    /// most `nodes_max` blocks; heads are drawn filled, pruned blocks dashed. `None` when there
    /// is no such topic.
    pub fn dot(
        &self,
        name: &str,
        from: Option<Cid>,
        depth: usize,
        nodes_max: usize,
    ) -> Result<Option<String>, StorageError> {
        let Some(id) = self.id_of(name)? else { return Ok(None) };
        let heads: BTreeSet<Cid> = self.heads_of(id)?.into_iter().map(|h| h.cid).collect();
        let mut level: Vec<Cid> = match from {
            Some(cid) => vec![cid],
            None => heads.iter().copied().collect(),
        };
        let mut seen: BTreeSet<Cid> = level.iter().copied().collect();
        let mut out = format!("digraph \"{name}\" {{\n  rankdir=BT;\n  node [shape=box, fontname=monospace];\n");
        for _ in 0..=depth {
            if level.is_empty() {
                break;
            }
            let metas = self.blocks.metas(id, &level)?;
            let mut next = Vec::new();
            for (cid, meta) in level.iter().zip(metas) {
                let text = cid.to_string();
                let label = format!("{}…{}", &text[..12.min(text.len())], &text[text.len().saturating_sub(6)..]);
                let Some(meta) = meta else {
                    out.push_str(&format!("  \"{text}\" [label=\"{label}\\nnot applied\", style=dotted];\n"));
                    continue;
                };
                let style = match (heads.contains(cid), meta.pruned) {
                    (true, _) => ", style=filled, fillcolor=lightblue",
                    (false, true) => ", style=dashed",
                    _ => "",
                };
                out.push_str(&format!("  \"{text}\" [label=\"{label}\\nheight {}\"{style}];\n", meta.height));
                for parent in &meta.links {
                    out.push_str(&format!("  \"{text}\" -> \"{parent}\";\n"));
                    if seen.len() < nodes_max && seen.insert(*parent) {
                        next.push(*parent);
                    }
                }
            }
            level = next;
        }
        out.push_str("}\n");
        Ok(Some(out))
    }

    /// Hands `name`'s data to `sink` in an order that imports (`None` when there is no such
    /// topic): first the roots, then, when its history is pruned, the parts of a snapshot of
    /// the topic made now (manifest first; the snapshot's manifest is the first root), then
    /// every stored block, parents before children. The other roots are the heads.
    pub fn export(
        &self,
        name: &str,
        sink: &mut dyn FnMut(Exported) -> Result<(), StorageError>,
    ) -> Result<Option<()>, StorageError> {
        let Some(id) = self.id_of(name)? else { return Ok(None) };
        let mut order: Vec<(Height, Cid)> = Vec::new();
        let mut pruned = false;
        for item in self.blocks.iter_index(id) {
            let (cid, meta) = item?;
            if meta.pruned {
                pruned = true;
            } else {
                order.push((meta.height, cid));
            }
        }
        order.sort_unstable();
        let snapshot = if pruned {
            let writers =
                crate::access::Access::of(name).is_ok_and(|access| access.mode() == crate::access::Mode::Writers);
            let source = Source { topic: id, name: name.to_string(), now: crate::types::wall_ms(), writers };
            Some(Serving::start(self.db.clone(), source, || {})?)
        } else {
            None
        };
        // The heads as the snapshot's view holds them when there is one, else as stored.
        let heads = match &snapshot {
            Some(snapshot) => snapshot.manifest.heads.clone(),
            None => self.heads_of(id)?,
        };
        let mut roots: Vec<Cid> = snapshot.iter().map(|snapshot| snapshot.manifest_cid).collect();
        roots.extend(heads.iter().map(|head| head.cid));
        sink(Exported::Roots(roots))?;
        if let Some(snapshot) = &snapshot {
            sink(Exported::Part(snapshot.manifest_cid, snapshot.manifest_bytes.clone()))?;
            for chunk in &snapshot.manifest.chunks {
                let bytes = snapshot
                    .chunk(chunk)?
                    .ok_or_else(|| StorageError::Corrupt(format!("chunk {chunk} of the export's snapshot")))?;
                sink(Exported::Part(*chunk, bytes))?;
            }
        }
        for (_, cid) in order {
            let bytes = self
                .blocks
                .get(id, &cid)?
                .ok_or_else(|| StorageError::Corrupt(format!("block {cid} has no payload")))?;
            sink(Exported::Part(cid, bytes))?;
        }
        Ok(Some(()))
    }

    /// Writes a consistent copy of the database to `out` (a RocksDB checkpoint: table files
    /// are hard-linked when `out` is on the same file system).
    pub fn checkpoint(&self, out: &Path) -> Result<(), StorageError> {
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        checkpoint.create_checkpoint(out)?;
        Ok(())
    }

    /// Checks the named topics (every topic when `names` is empty) and the checksums of every
    /// table and blob file. Problems are reported, not returned as errors; an error means the
    /// check itself could not run.
    pub fn verify(&self, names: &[String]) -> Result<Verification, StorageError> {
        self.verify_with(names, &mut |_, _, _| {})
    }

    /// [`Inspector::verify`], telling `progress` of each step done (a topic checked, a column
    /// family scanned) with the steps done so far, their total and what the step was.
    pub fn verify_with(
        &self,
        names: &[String],
        progress: &mut dyn FnMut(u64, u64, &str),
    ) -> Result<Verification, StorageError> {
        let mut report = Verification::default();
        let all = self.topic_ids()?;
        let chosen: Vec<(String, TopicId)> = if names.is_empty() {
            all
        } else {
            let mut chosen = Vec::new();
            for name in names {
                match all.iter().find(|(n, _)| n == name) {
                    Some(found) => chosen.push(found.clone()),
                    None => report.problems.push(problem(name, "-", "no such topic")),
                }
            }
            chosen
        };
        let total = (chosen.len() + FAMILIES.len()) as u64;
        let mut done = 0;
        progress(done, total, "");
        for (name, id) in &chosen {
            // A record that cannot be read (a damaged file) is a finding, not the end of the check.
            if let Err(error) = self.verify_topic(name, *id, &mut report) {
                report.problems.push(problem(name, "-", &format!("cannot be read to the end: {error}")));
            }
            report.topics += 1;
            done += 1;
            progress(done, total, name);
        }
        for family in FAMILIES {
            self.verify_checksums(family, &mut report);
            done += 1;
            progress(done, total, family);
        }
        Ok(report)
    }

    fn verify_topic(&self, name: &str, id: TopicId, report: &mut Verification) -> Result<(), StorageError> {
        let access = match crate::access::Access::of(name) {
            Ok(access) => Some(access),
            Err(error) => {
                report.problems.push(problem(name, "-", &error.to_string()));
                None
            }
        };
        // Index records, and the blocks they stand for.
        let mut index: BTreeMap<Cid, BlockMeta> = BTreeMap::new();
        for item in scan(&self.db, self.cf(CF_INDEX), id) {
            let (key, value) = item?;
            match (Cid::try_from(key.as_slice()), BlockMeta::decode(&value)) {
                (Ok(cid), Ok(meta)) => {
                    index.insert(cid, meta);
                }
                (Err(e), _) => report.problems.push(problem(name, &hex(&key), &format!("index key is not a CID: {e}"))),
                (Ok(cid), Err(e)) => {
                    report.problems.push(problem(name, &cid.to_string(), &format!("index record: {e}")))
                }
            }
        }
        let mut blocks: BTreeMap<Cid, Block> = BTreeMap::new();
        for item in scan(&self.db, self.cf(CF_BLOCKS), id) {
            let (key, bytes) = match item {
                Ok(record) => record,
                Err(error) => {
                    report.problems.push(problem(name, CF_BLOCKS, &format!("unreadable: {error}")));
                    continue;
                }
            };
            report.blocks += 1;
            let Ok(cid) = Cid::try_from(key.as_slice()) else {
                report.problems.push(problem(name, &hex(&key), "block key is not a CID"));
                continue;
            };
            match Block::decode(name, cid, &bytes, &BlockLimits::PROTOCOL) {
                Err(error) => report.problems.push(problem(name, &cid.to_string(), &format!("stored block: {error}"))),
                Ok(block) => {
                    if let Err(refusal) = access.as_ref().map(|access| access.admits_block(&block)).unwrap_or(Ok(())) {
                        report.problems.push(problem(name, &cid.to_string(), &format!("stored block: {refusal}")));
                    }
                    match index.get(&cid) {
                        None => report.problems.push(problem(name, &cid.to_string(), "block without index record")),
                        Some(meta) if meta.pruned => {
                            report.problems.push(problem(name, &cid.to_string(), "pruned block still has its payload"))
                        }
                        Some(meta) if meta.height != block.height() || meta.links != block.links() => report
                            .problems
                            .push(problem(name, &cid.to_string(), "index record disagrees with the block")),
                        Some(_) => {}
                    }
                    blocks.insert(cid, block);
                }
            }
        }
        for (cid, meta) in &index {
            if !meta.pruned
                && !blocks.contains_key(cid)
                && !report.problems.iter().any(|p| p.subject == cid.to_string())
            {
                report.problems.push(problem(name, &cid.to_string(), "applied block has no payload"));
            }
            let mut top = 0;
            for parent in &meta.links {
                match index.get(parent) {
                    Some(parent_meta) => top = top.max(parent_meta.height),
                    None => report.problems.push(problem(
                        name,
                        &cid.to_string(),
                        &format!("parent {parent} is not applied: the past of this block has a hole"),
                    )),
                }
            }
            if !meta.pruned && meta.height != top + 1 {
                report.problems.push(problem(
                    name,
                    &cid.to_string(),
                    &format!("height {} is not 1 + largest parent height {top}", meta.height),
                ));
            }
        }
        for head in self.heads_of(id)? {
            match index.get(&head.cid) {
                None => report.problems.push(problem(name, &head.cid.to_string(), "head is not applied")),
                Some(meta) if meta.height != head.height => {
                    report.problems.push(problem(name, &head.cid.to_string(), "head height disagrees with the index"))
                }
                Some(_) => {}
            }
        }
        // Rows and the key count.
        let mut rows: BTreeMap<Vec<u8>, Row> = BTreeMap::new();
        for item in scan(&self.db, self.cf(CF_KV), id) {
            let (key, value) = item?;
            // A document's record holds the rows of its fields (see `doc_row.rs`).
            match crate::doc_row::expand(key.clone(), &value) {
                Ok(found) => {
                    for (key, row) in found {
                        report.rows += 1;
                        if row.is_empty() {
                            report.problems.push(problem(name, &key_text(&key), "empty row stored"));
                        } else {
                            rows.insert(key, row);
                        }
                    }
                }
                Err(error) => {
                    report.rows += 1;
                    report.problems.push(problem(name, &key_text(&key), &format!("row does not decode: {error}")))
                }
            }
        }
        let counted = self.db.get_cf(self.cf(CF_META), key_count_key(id))?.and_then(|b| b.as_slice().try_into().ok());
        let counted = counted.map(u64::from_be_bytes).unwrap_or(0);
        // Counter entries are not keys of their own.
        let keys = rows.keys().filter(|key| !crate::counter::is_reserved(key)).count();
        if counted != keys as u64 {
            report.problems.push(problem(name, "key count", &format!("{counted} counted, {keys} keys")));
        }
        self.verify_indexes(name, id, &rows, report)?;
        // The state the blocks (and the cover snapshots' stored parts) give. Blocks that fail
        // their check are left out, and the mismatches they cause say so. A topic with pruned
        // history and no stored parts cannot be recomputed here; `recomputed` does not count it.
        let now = crate::types::wall_ms();
        let Ok((added, removes)) = crate::repair::expected_state(&self.db, id, &index, &blocks, now) else {
            return Ok(());
        };
        report.recomputed += 1;
        let damaged = index.iter().filter(|(cid, meta)| !meta.pruned && !blocks.contains_key(cid)).count();
        let note = if damaged > 0 { format!("; {damaged} damaged blocks left out") } else { String::new() };
        let expected = live_elements(added, &removes);
        let keys: BTreeSet<&Vec<u8>> = expected.keys().chain(rows.keys()).collect();
        for key in keys {
            // Elements expired by now may wait for collection in their rows; both sides leave
            // them out.
            let stored: BTreeSet<Cid> = rows
                .get(key)
                .map(|row| row.elements().iter().filter(|e| !e.expired(now)).map(|e| e.id).collect())
                .unwrap_or_default();
            let computed = expected.get(key).cloned().unwrap_or_default();
            if stored != computed {
                report.problems.push(problem(
                    name,
                    &key_text(key),
                    &format!(
                        "row holds {} live elements, the blocks and snapshot give {} ({} in common{note})",
                        stored.len(),
                        computed.len(),
                        stored.intersection(&computed).count()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks each built index of the topic against its rows: a record for every value a
    /// document's field holds, and no other.
    fn verify_indexes(
        &self,
        name: &str,
        id: TopicId,
        rows: &BTreeMap<Vec<u8>, Row>,
        report: &mut Verification,
    ) -> Result<(), StorageError> {
        for (_, index) in crate::index::load_states(&self.db, id)? {
            if index.cursor.is_some() {
                continue;
            }
            let entries =
                rows.range(crate::doc::namespace().to_vec()..).take_while(|(key, _)| crate::doc::is_entry(key));
            if let Some(difference) = crate::index::compare(&self.db, id, &index, entries)? {
                report.problems.push(problem(name, &format!("index {}", index.name), &difference));
            }
        }
        Ok(())
    }

    /// Reads every record of one column family with checksums verified: a damaged table or
    /// blob file shows up as an error here.
    fn verify_checksums(&self, name: &str, report: &mut Verification) {
        let mut options = ReadOptions::default();
        options.set_verify_checksums(true);
        options.fill_cache(false);
        for item in self.db.iterator_cf_opt(self.cf(name), options, IteratorMode::Start) {
            match item {
                Ok(_) => report.records += 1,
                Err(error) => {
                    report.problems.push(problem("-", name, &format!("checksum scan failed: {error}")));
                    break;
                }
            }
        }
    }
}

/// Live element ids per key: added, not removed.
fn live_elements(
    added: BTreeMap<Vec<u8>, Vec<crate::row::Element>>,
    removes: &BTreeSet<(Vec<u8>, Cid)>,
) -> BTreeMap<Vec<u8>, BTreeSet<Cid>> {
    added
        .into_iter()
        .map(|(key, elements)| {
            let live: BTreeSet<Cid> =
                elements.into_iter().map(|e| e.id).filter(|id| !removes.contains(&(key.clone(), *id))).collect();
            (key, live)
        })
        .filter(|(_, live)| !live.is_empty())
        .collect()
}

fn problem(topic: &str, subject: &str, what: &str) -> Problem {
    Problem { topic: topic.to_string(), subject: subject.to_string(), what: what.to_string() }
}

/// A key for a reader: its text, or `0x…` when it is not UTF-8.
fn plain_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => text.to_string(),
        Err(_) => format!("0x{}", hex(key)),
    }
}

fn key_text(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) => format!("key {text:?}"),
        Err(_) => format!("key 0x{}", hex(key)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type Records<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a>;

/// A topic's records in one column family, keys without the topic prefix.
fn scan<'a>(db: &'a DB, cf: &rocksdb::ColumnFamily, topic: TopicId) -> Records<'a> {
    crate::schema::prefix_scan(db, cf, topic)
}
