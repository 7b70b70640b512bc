//! Merging a snapshot: the third write path, beside local commits and remote blocks.
//!
//! A replica holding applied blocks B merges a snapshot S of closure(H) so that its state
//! becomes that of closure(H) ∪ B (see ARCHITECTURE.md for why each rule is exact). With A the
//! blocks of closure(H) this replica had applied before the merge:
//! - an element of S is added unless its block is in A (this replica has seen that block, so
//!   its row already says whether B removed the element) or a stored tombstone names it;
//! - an element of this replica whose block is in A but which S does not hold was removed in
//!   closure(H), and goes;
//! - a remove S carries (of an element outside closure(H)) is applied as a remote block's remove;
//! - every block of closure(H) becomes applied (pruned: height only), and the heads become the
//!   maximal blocks of H ∪ heads(B).
//!
//! The merge runs on the topic's writer thread, so nothing interleaves with it, in steps: the
//! whole snapshot is checked first (an invalid one changes nothing), then rows are merged chunk
//! by chunk, then the covered blocks are recorded and the heads change in the last write. A
//! marker in `meta` names the merge and its step; a merge interrupted by a crash is finished
//! when the topic loads. The row step can run twice: none of its writes changes what it reads
//! (the index is untouched and tombstones are only removed in the last step).
//!
//! A replica with nothing yet gets its rows as one ingested file, and the key count and expiry
//! index that go with them in the write after it. RocksDB cannot ingest into `kv` and write
//! `meta` and `expiries` in one atomic step, so that merge's marker names an ingest step: a
//! crash between the two writes is finished by counting and indexing the ingested rows (see
//! `finish_ingest`), as the rerun row step alone would not (its rows change nothing, so it
//! would count no key and leave the expiry index as it found it).

use std::collections::{BTreeMap, HashMap, HashSet};

use canopy_dag::{Cid, Height};
use rayon::prelude::*;
use rocksdb::{IngestExternalFileOptions, SstFileWriter, WriteBatch};

use super::compact::remember;
use super::{Context, TopicState, apply_ready, read_rows};
use crate::doc_row;
use crate::error::{MergeError, StorageError};
use crate::row::{Element, Row};
use crate::row_change::{Notice, RowChanges};
use crate::schema::prefix_scan;
use crate::schema::{
    CF_HEADS, CF_KV, CF_META, CF_SNAPSHOTS, CF_TOMBSTONES, CF_WRITERS, META_COVER, META_KNOWN, META_MERGE, encode_cids,
    kv_file_options, meta_key, tombstone_key,
};
use crate::snapshot::{Chunk, Manifest, SnapshotElement, SnapshotError};
use crate::types::{Head, MergeOutcome};

/// Chunks read and decoded together.
const CHUNKS_PER_READ: usize = 16;

const STEP_ROWS: u8 = 1;
const STEP_BLOCKS: u8 = 2;
/// A fresh replica's row file may be ingested without the key count and expiry index that go
/// with it.
const STEP_INGEST: u8 = 3;

/// Expiry index records rebuilt per write when a crash cut a row file's ingest short.
const REBUILD_RECORDS_MAX: usize = 4096;

/// What the check of a snapshot learnt, for the steps that follow.
struct Checked {
    manifest: Manifest,
    /// Covered blocks this replica had applied before the merge.
    applied: HashSet<Cid>,
    /// Chunks that carry removes, and chunks that carry blocks.
    with_removes: Vec<Cid>,
    with_blocks: Vec<Cid>,
}

/// Merges the staged snapshot `manifest_cid` into the topic.
pub(super) fn merge(context: &Context, state: &mut TopicState, manifest_cid: Cid) -> Result<MergeOutcome, MergeError> {
    let topic = state.shared.id;
    // The merge writes rows apart from the key filter: the next write builds it anew.
    state.shared.keys.reset();
    let Some(bytes) =
        context.db.get_cf(context.cf(CF_SNAPSHOTS), topic.key(&manifest_cid.to_bytes())).map_err(StorageError::from)?
    else {
        return Err(MergeError::Missing(1));
    };
    let manifest = Manifest::decode(&manifest_cid, &bytes)?;
    if manifest.topic != state.shared.name {
        return Err(SnapshotError::Invalid(format!(
            "snapshot of topic {} offered for {}",
            manifest.topic, state.shared.name
        ))
        .into());
    }
    let head_cids: Vec<Cid> = manifest.heads.iter().map(|h| h.cid).collect();
    let metas = context.blocks.metas(topic, &head_cids).map_err(StorageError::from)?;
    if metas.iter().all(Option::is_some) {
        // Everything the snapshot stands for is applied here already.
        finish_known(context, state, manifest_cid)?;
        return Ok(MergeOutcome {
            snapshot: manifest_cid,
            keys: state.key_count,
            blocks: manifest.blocks,
            already_had: true,
        });
    }
    if manifest.removes + state.tombstones > context.tombstones_max {
        return Err(SnapshotError::Invalid(format!(
            "{} removes of elements not applied here exceed tombstones_max {}",
            manifest.removes + state.tombstones,
            context.tombstones_max
        ))
        .into());
    }
    // A replica with nothing yet (bootstrapping) gets its rows as one SST file built while the
    // snapshot is checked, and ingested once the check passed.
    let fresh = state.heads.is_empty()
        && state.key_count == 0
        && state.tombstones == 0
        && prefix_scan(&context.db, context.cf(CF_KV), topic).next().is_none();
    let mut rows = if fresh { Some(RowFile::create(context, state)?) } else { None };
    let checked = check(context, state, manifest, &mut |chunk| match rows.as_mut() {
        Some(file) => file.add(chunk),
        None => Ok(()),
    })?;
    write_marker(context, topic, manifest_cid, if rows.is_some() { STEP_INGEST } else { STEP_ROWS }, &[])?;
    match rows {
        Some(file) => {
            file.ingest(context, state, manifest_cid)?;
            merge_removes(context, state, &checked)?;
        }
        None => merge_rows(context, state, &checked)?,
    }
    let heads = merged_heads(state, &checked);
    write_marker(context, topic, manifest_cid, STEP_BLOCKS, &heads)?;
    record_blocks(context, state, manifest_cid, &checked.with_blocks, heads)?;
    Ok(MergeOutcome {
        snapshot: manifest_cid,
        keys: state.key_count,
        blocks: checked.manifest.blocks,
        already_had: false,
    })
}

/// Stops the writer thread for good at `point` when the environment variable `CANOPY_FAILPOINT`
/// names it, after saying so on stdout: crash tests kill the process there, between two writes.
fn failpoint(point: &str) {
    if std::env::var_os("CANOPY_FAILPOINT").is_some_and(|armed| armed == point) {
        println!("failpoint {point}");
        loop {
            std::thread::park();
        }
    }
}

/// Finishes a merge a crash interrupted.
pub(super) fn resume(context: &Context, state: &mut TopicState) -> Result<(), MergeError> {
    let topic = state.shared.id;
    let Some(marker) =
        context.db.get_cf(context.cf(CF_META), meta_key(META_MERGE, topic)).map_err(StorageError::from)?
    else {
        state.merging = false;
        return Ok(());
    };
    let corrupt = |what: &str| MergeError::Storage(StorageError::Corrupt(format!("merge marker: {what}")));
    let mut rest = marker.as_slice();
    let manifest_cid = Cid::read_bytes(&mut rest).map_err(|_| corrupt("manifest"))?;
    let (&step, mut rest) = rest.split_first().ok_or_else(|| corrupt("step"))?;
    match step {
        STEP_ROWS => {
            merge(context, state, manifest_cid)?;
        }
        STEP_INGEST => {
            finish_ingest(context, state, manifest_cid)?;
            merge(context, state, manifest_cid)?;
        }
        STEP_BLOCKS => {
            let mut heads = Vec::new();
            while !rest.is_empty() {
                let cid = Cid::read_bytes(&mut rest).map_err(|_| corrupt("head"))?;
                let (height, tail) = rest.split_first_chunk::<8>().ok_or_else(|| corrupt("height"))?;
                heads.push(Head { cid, height: u64::from_be_bytes(*height) });
                rest = tail;
            }
            let with_blocks = chunk_list(context, state, manifest_cid)?;
            record_blocks(context, state, manifest_cid, &with_blocks, heads)?;
        }
        _ => return Err(corrupt("unknown step")),
    }
    state.merging = false;
    Ok(())
}

fn chunk_list(context: &Context, state: &TopicState, manifest_cid: Cid) -> Result<Vec<Cid>, MergeError> {
    let key = state.shared.id.key(&manifest_cid.to_bytes());
    let bytes =
        context.db.get_cf(context.cf(CF_SNAPSHOTS), key).map_err(StorageError::from)?.ok_or(MergeError::Missing(1))?;
    Ok(Manifest::decode(&manifest_cid, &bytes)?.chunks)
}

/// After a crash during a fresh replica's merge, between the row file's ingest and the write
/// of what goes with the rows: the key count and the expiry index are rebuilt from the rows,
/// in the write that moves the marker on to the row step (the expiry records before it may be
/// written twice, which changes nothing). Without rows the file was not ingested, and the merge
/// starts again as a fresh one.
fn finish_ingest(context: &Context, state: &mut TopicState, manifest_cid: Cid) -> Result<(), MergeError> {
    let topic = state.shared.id;
    let mut rows_changed = RowChanges::new(&context.db, topic, 0, context.clock.now(), false, false);
    let (mut rows, mut records) = (0u64, 0usize);
    let mut batch = WriteBatch::default();
    let empty = Row::default();
    for item in doc_row::rows(prefix_scan(&context.db, context.cf(CF_KV), topic), &[]) {
        let (key, row) = item?;
        rows += 1;
        // Elements that expired since the file was written are indexed too, to be collected.
        rows_changed.derive(&mut batch, &key, &empty, &row);
        records += row.elements().iter().filter(|element| element.expires.is_some()).count();
        if records >= REBUILD_RECORDS_MAX {
            context.write(std::mem::take(&mut batch))?;
            records = 0;
        }
    }
    if rows == 0 {
        return Ok(());
    }
    let sealed = rows_changed.seal(&mut batch);
    put_marker(context, &mut batch, topic, manifest_cid, STEP_ROWS, &[]);
    context.write(batch)?;
    state.key_count = sealed.key_count;
    if let Some(at) = sealed.next_expiry {
        state.expires_at(at);
    }
    Ok(())
}

fn write_marker(
    context: &Context,
    topic: canopy_dag::TopicId,
    manifest: Cid,
    step: u8,
    heads: &[Head],
) -> Result<(), StorageError> {
    let mut batch = WriteBatch::default();
    put_marker(context, &mut batch, topic, manifest, step, heads);
    context.write(batch)
}

fn put_marker(
    context: &Context,
    batch: &mut WriteBatch,
    topic: canopy_dag::TopicId,
    manifest: Cid,
    step: u8,
    heads: &[Head],
) {
    let mut value = manifest.to_bytes();
    value.push(step);
    for head in heads {
        value.extend_from_slice(&head.cid.to_bytes());
        value.extend_from_slice(&head.height.to_be_bytes());
    }
    batch.put_cf(context.cf(CF_META), meta_key(META_MERGE, topic), value);
}

/// Reads and decodes chunks in parallel, in order.
fn read_chunks(context: &Context, state: &TopicState, cids: &[Cid]) -> Result<Vec<Chunk>, MergeError> {
    let keys: Vec<Vec<u8>> = cids.iter().map(|cid| state.shared.id.key(&cid.to_bytes())).collect();
    let found = context.db.batched_multi_get_cf(context.cf(CF_SNAPSHOTS), &keys, false);
    let mut bytes = Vec::with_capacity(cids.len());
    let mut missing = 0;
    for value in found {
        match value.map_err(StorageError::from)? {
            Some(value) => bytes.push(value.to_vec()),
            None => missing += 1,
        }
    }
    if missing > 0 {
        return Err(MergeError::Missing(missing));
    }
    let chunks: Result<Vec<Chunk>, SnapshotError> =
        cids.par_iter().zip(bytes.par_iter()).map(|(cid, bytes)| Chunk::decode(cid, bytes)).collect();
    Ok(chunks?)
}

/// Checks the whole snapshot before anything is written: every chunk staged, valid and in
/// order, the counts right, the heads among the covered blocks at their heights. Finds the
/// covered blocks already applied here.
fn check(
    context: &Context,
    state: &TopicState,
    manifest: Manifest,
    sink: &mut dyn FnMut(Chunk) -> Result<(), MergeError>,
) -> Result<Checked, MergeError> {
    let topic = state.shared.id;
    let invalid = |what: String| MergeError::Invalid(SnapshotError::Invalid(what));
    let mut checked = Checked { manifest, applied: HashSet::new(), with_removes: Vec::new(), with_blocks: Vec::new() };
    let manifest = &checked.manifest;
    let heads: HashMap<Cid, Height> = manifest.heads.iter().map(|h| (h.cid, h.height)).collect();
    let mut heads_found = 0;
    let (mut keys, mut elements, mut removes, mut blocks) = (0u64, 0u64, 0u64, 0u64);
    let mut last: Option<Chunk> = None;
    let mut last_key: Option<Vec<u8>> = None;
    for group in manifest.chunks.chunks(CHUNKS_PER_READ) {
        let chunks = read_chunks(context, state, group)?;
        for (cid, chunk) in group.iter().zip(chunks) {
            if let Some(previous) = &last
                && !previous.precedes(&chunk)
            {
                return Err(invalid(format!("chunk {cid} is out of order")));
            }
            for element in &chunk.elements {
                if last_key.as_deref() != Some(element.key.as_slice()) {
                    keys += 1;
                    last_key = Some(element.key.clone());
                }
            }
            elements += chunk.elements.len() as u64;
            removes += chunk.removes.len() as u64;
            blocks += chunk.blocks.len() as u64;
            if !chunk.removes.is_empty() {
                checked.with_removes.push(*cid);
            }
            if !chunk.writers.is_empty() && state.lists.is_none() {
                return Err(invalid("writer-list records in a snapshot of a topic without a writer list".into()));
            }
            if !chunk.blocks.is_empty() || !chunk.writers.is_empty() {
                checked.with_blocks.push(*cid);
                let cids: Vec<Cid> = chunk.blocks.iter().map(|(cid, _)| *cid).collect();
                let metas = context.blocks.metas(topic, &cids).map_err(StorageError::from)?;
                for ((cid, height), meta) in chunk.blocks.iter().zip(metas) {
                    if let Some(head_height) = heads.get(cid) {
                        if head_height != height {
                            return Err(invalid(format!("head {cid} listed at two heights")));
                        }
                        heads_found += 1;
                    }
                    if let Some(meta) = meta {
                        if meta.height != *height {
                            return Err(invalid(format!(
                                "block {cid} at height {height}, applied here at {}",
                                meta.height
                            )));
                        }
                        checked.applied.insert(*cid);
                    }
                }
            }
            // Only the boundary matters for the order check across chunks.
            last = Some(Chunk {
                elements: chunk.elements.last().cloned().into_iter().collect(),
                removes: chunk.removes.last().cloned().into_iter().collect(),
                blocks: chunk.blocks.last().copied().into_iter().collect(),
                writers: chunk.writers.last().cloned().into_iter().collect(),
            });
            sink(chunk)?;
        }
    }
    let manifest = &checked.manifest;
    if (keys, elements, removes, blocks) != (manifest.keys, manifest.elements, manifest.removes, manifest.blocks) {
        return Err(invalid("the chunks do not hold what the manifest counts".into()));
    }
    if heads_found != heads.len() {
        return Err(invalid("a head is not among the covered blocks".into()));
    }
    Ok(checked)
}

/// The rows of a topic that has none, written from a snapshot's elements (in key order) into
/// an SST file, ingested in one step; what follows from the rows waits in a batch written
/// with the ingest's end.
struct RowFile<'c> {
    path: std::path::PathBuf,
    writer: SstFileWriter<'static>,
    current: Option<(Vec<u8>, Row)>,
    /// Rows written.
    rows: u64,
    rows_changed: RowChanges<'c>,
    /// What follows from the rows: the key count and the expiry index.
    batch: WriteBatch,
    now: u64,
}

/// The options every row file is written with, the `kv` family's table format.
static ROW_FILE_OPTIONS: std::sync::LazyLock<rocksdb::Options> = std::sync::LazyLock::new(kv_file_options);

impl<'c> RowFile<'c> {
    fn create(context: &'c Context, state: &TopicState) -> Result<RowFile<'c>, StorageError> {
        let topic = state.shared.id;
        let path = context.db.path().join(format!("merge-{}.sst", topic.0));
        let _ = std::fs::remove_file(&path);
        let writer = SstFileWriter::create(&ROW_FILE_OPTIONS);
        writer.open(&path)?;
        let now = context.clock.now();
        // No history: a fresh replica's rows replace no element.
        let rows_changed = RowChanges::new(&context.db, topic, 0, now, false, state.has_watchers());
        Ok(RowFile { path, writer, current: None, rows: 0, rows_changed, batch: WriteBatch::default(), now })
    }

    fn add(&mut self, chunk: Chunk) -> Result<(), MergeError> {
        for SnapshotElement { key, height, id, value, expires } in chunk.elements {
            if expires.is_some_and(|at| at <= self.now) {
                continue;
            }
            let element = Element { height, id, value, expires };
            match &mut self.current {
                Some((at, row)) if *at == key => row.insert(element),
                _ => {
                    let next = (key, Row::single(element));
                    if let Some((done, row)) = self.current.replace(next) {
                        self.put(done, row)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn put(&mut self, key: Vec<u8>, row: Row) -> Result<(), StorageError> {
        let height = row.winner().map_or(0, |winner| winner.height);
        self.rows_changed.write_to_file(&mut self.writer, &mut self.batch, &key, &row, Notice::ValueChanged(height))?;
        self.rows += 1;
        Ok(())
    }

    /// Ingests the file into `kv`, then writes what follows from the rows (the key count and
    /// the expiry index) in the write that moves the marker on from the ingest step to the row
    /// step.
    fn ingest(mut self, context: &Context, state: &mut TopicState, manifest_cid: Cid) -> Result<(), MergeError> {
        if let Some((key, row)) = self.current.take() {
            self.put(key, row)?;
        }
        self.rows_changed.finish_file(&mut self.writer)?;
        if self.rows > 0 {
            self.writer.finish().map_err(StorageError::from)?;
            // The ingest does not go through the log: the marker naming the ingest step must be
            // on disk before the rows are, or a machine crash could keep the rows without it.
            context.db.flush_wal(true).map_err(StorageError::from)?;
            failpoint("merge-before-row-ingest");
            let mut options = IngestExternalFileOptions::default();
            options.set_move_files(true);
            let ingested = context.db.ingest_external_file_cf_opts(context.cf(CF_KV), &options, vec![&self.path]);
            ingested.map_err(StorageError::from)?;
            failpoint("merge-after-row-ingest");
        }
        let _ = std::fs::remove_file(&self.path);
        let mut batch = std::mem::take(&mut self.batch);
        let sealed = self.rows_changed.seal(&mut batch);
        put_marker(context, &mut batch, state.shared.id, manifest_cid, STEP_ROWS, &[]);
        context.write(batch)?;
        state.key_count = sealed.key_count;
        if let Some(at) = sealed.next_expiry {
            state.expires_at(at);
        }
        for part in sealed.changes.chunks(4096) {
            state.notify(part.to_vec());
        }
        Ok(())
    }
}

impl Drop for RowFile<'_> {
    fn drop(&mut self) {
        // A file left by a check that failed; an ingested one was moved already.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Merges the snapshot's elements and removes into the rows.
fn merge_rows(context: &Context, state: &mut TopicState, checked: &Checked) -> Result<(), MergeError> {
    let topic = state.shared.id;
    let applied = &checked.applied;
    let top = checked.manifest.heads.iter().map(|h| h.height).max().unwrap_or(0);
    // Rows of this replica in key order, to find those holding a covered element the snapshot
    // no longer has. Only needed when some covered block was applied here.
    let mut own_rows = (!applied.is_empty())
        .then(|| doc_row::rows(prefix_scan(&context.db, context.cf(CF_KV), topic), &[]).peekable());
    let now = context.clock.now();
    let mut rows_changed = context.row_changes(state, now);
    for group in checked.manifest.chunks.chunks(CHUNKS_PER_READ) {
        for chunk in read_chunks(context, state, group)? {
            if chunk.elements.is_empty() {
                continue;
            }
            let mut by_key: BTreeMap<Vec<u8>, Vec<SnapshotElement>> = BTreeMap::new();
            for element in chunk.elements {
                by_key.entry(element.key.clone()).or_default().push(element);
            }
            let last = by_key.keys().next_back().cloned().expect("a chunk with elements");
            let mut batch = WriteBatch::default();
            if let Some(rows) = own_rows.as_mut() {
                while let Some(item) = rows.next_if(|item| item.as_ref().map_or(true, |(key, _)| *key <= last)) {
                    let (key, row) = item?;
                    if !by_key.contains_key(&key) {
                        let merged = drop_covered(row.clone(), applied, &[]);
                        rows_changed.write(&mut batch, &key, &row, &merged, Notice::Merged(top));
                    }
                }
            }
            let keys: Vec<Vec<u8>> = by_key.keys().map(|key| topic.key(key)).collect();
            let rows = read_rows(context, &keys)?;
            let tombstoned = stored_tombstones(context, state, &by_key, applied)?;
            for ((key, elements), row) in by_key.into_iter().zip(rows) {
                let mut merged = drop_covered(row.clone(), applied, &elements);
                for element in elements {
                    if applied.contains(&element.id) || tombstoned.contains(&(element.id, key.clone())) {
                        continue;
                    }
                    if element.expires.is_some_and(|at| at <= now) {
                        continue;
                    }
                    let SnapshotElement { height, id, value, expires, .. } = element;
                    merged.insert(Element { height, id, value, expires });
                }
                rows_changed.write(&mut batch, &key, &row, &merged, Notice::Merged(top));
            }
            commit_rows(context, state, batch, &mut rows_changed)?;
        }
    }
    if let Some(rows) = own_rows {
        let mut batch = WriteBatch::default();
        for item in rows {
            let (key, row) = item?;
            let merged = drop_covered(row.clone(), applied, &[]);
            rows_changed.write(&mut batch, &key, &row, &merged, Notice::Merged(top));
        }
        commit_rows(context, state, batch, &mut rows_changed)?;
    }
    merge_removes(context, state, checked)
}

/// Applies the snapshot's removes of elements outside closure(H), as a received block's removes
/// are.
fn merge_removes(context: &Context, state: &mut TopicState, checked: &Checked) -> Result<(), MergeError> {
    let topic = state.shared.id;
    let top = checked.manifest.heads.iter().map(|h| h.height).max().unwrap_or(0);
    let mut rows_changed = context.row_changes(state, context.clock.now());
    for group in checked.with_removes.chunks(CHUNKS_PER_READ) {
        for chunk in read_chunks(context, state, group)? {
            let ids: Vec<Cid> = chunk.removes.iter().map(|(id, _)| *id).collect();
            let metas = context.blocks.metas(topic, &ids).map_err(StorageError::from)?;
            let mut batch = WriteBatch::default();
            let mut on_rows: BTreeMap<Vec<u8>, Vec<Cid>> = BTreeMap::new();
            for ((id, key), meta) in chunk.removes.into_iter().zip(metas) {
                if meta.is_some() {
                    on_rows.entry(key).or_default().push(id);
                } else {
                    batch.put_cf(context.cf(CF_TOMBSTONES), tombstone_key(topic, &id, &key), []);
                }
            }
            let keys: Vec<Vec<u8>> = on_rows.keys().map(|key| topic.key(key)).collect();
            for ((key, ids), row) in on_rows.into_iter().zip(read_rows(context, &keys)?) {
                let mut merged = row.clone();
                for id in &ids {
                    merged.remove(id);
                }
                rows_changed.write(&mut batch, &key, &row, &merged, Notice::Merged(top));
            }
            commit_rows(context, state, batch, &mut rows_changed)?;
        }
    }
    Ok(())
}

/// Writes a step's rows with what follows from them, then tells the watchers.
fn commit_rows(
    context: &Context,
    state: &mut TopicState,
    mut batch: WriteBatch,
    rows_changed: &mut RowChanges,
) -> Result<(), StorageError> {
    let sealed = rows_changed.seal(&mut batch);
    context.write(batch)?;
    state.key_count = sealed.key_count;
    if let Some(at) = sealed.next_expiry {
        state.expires_at(at);
    }
    state.notify(sealed.changes);
    Ok(())
}

/// A row without its covered elements that the snapshot does not hold (removed in
/// closure(H)).
fn drop_covered(mut row: Row, applied: &HashSet<Cid>, kept: &[SnapshotElement]) -> Row {
    let gone: Vec<Cid> = row.ids().filter(|id| applied.contains(id) && !kept.iter().any(|e| e.id == *id)).collect();
    for id in gone {
        row.remove(&id);
    }
    row
}

/// Which of the snapshot's elements (not applied here) a stored tombstone names.
fn stored_tombstones(
    context: &Context,
    state: &TopicState,
    by_key: &BTreeMap<Vec<u8>, Vec<SnapshotElement>>,
    applied: &HashSet<Cid>,
) -> Result<HashSet<(Cid, Vec<u8>)>, StorageError> {
    let mut found = HashSet::new();
    if state.tombstones == 0 {
        return Ok(found);
    }
    let asked: Vec<(Cid, &Vec<u8>)> = by_key
        .iter()
        .flat_map(|(key, elements)| elements.iter().map(move |e| (e.id, key)))
        .filter(|(id, _)| !applied.contains(id))
        .collect();
    let keys: Vec<Vec<u8>> = asked.iter().map(|(id, key)| tombstone_key(state.shared.id, id, key)).collect();
    for ((id, key), value) in
        asked.into_iter().zip(context.db.batched_multi_get_cf(context.cf(CF_TOMBSTONES), &keys, false))
    {
        if value?.is_some() {
            found.insert((id, key.clone()));
        }
    }
    Ok(found)
}

/// The heads after the merge: the maximal blocks of H ∪ heads(B). A head of this replica stays
/// unless the snapshot covers it (and it is not in H); a head in H counts unless this replica
/// had applied it below one of its own heads.
fn merged_heads(state: &TopicState, checked: &Checked) -> Vec<Head> {
    let ours = &state.heads;
    let theirs: HashSet<Cid> = checked.manifest.heads.iter().map(|h| h.cid).collect();
    let mut heads: BTreeMap<Cid, Height> = ours
        .iter()
        .filter(|(cid, _)| !checked.applied.contains(cid) || theirs.contains(cid))
        .map(|(cid, height)| (*cid, *height))
        .collect();
    for head in &checked.manifest.heads {
        if !checked.applied.contains(&head.cid) || ours.contains_key(&head.cid) {
            heads.insert(head.cid, head.height);
        }
    }
    heads.into_iter().map(|(cid, height)| Head { cid, height }).collect()
}

/// The last step: every covered block becomes applied (pruned), tombstones of covered
/// elements go, and the heads, cover and known snapshots change in the final write.
fn record_blocks(
    context: &Context,
    state: &mut TopicState,
    manifest_cid: Cid,
    with_blocks: &[Cid],
    heads: Vec<Head>,
) -> Result<(), MergeError> {
    let topic = state.shared.id;
    // Stored tombstones by element id: those naming a covered element are settled.
    let mut tombstones: HashMap<Cid, Vec<Vec<u8>>> = HashMap::new();
    if state.tombstones > 0 {
        for item in prefix_scan(&context.db, context.cf(CF_TOMBSTONES), topic) {
            let (key, _) = item?;
            let mut rest = key.as_slice();
            let id = Cid::read_bytes(&mut rest).map_err(|e| StorageError::Corrupt(format!("tombstone key: {e}")))?;
            tombstones.entry(id).or_default().push(rest.to_vec());
        }
    }
    let mut covered_tombstones = 0u64;
    for group in with_blocks.chunks(CHUNKS_PER_READ) {
        for chunk in read_chunks(context, state, group)? {
            let cids: Vec<Cid> = chunk.blocks.iter().map(|(cid, _)| *cid).collect();
            let metas = context.blocks.metas(topic, &cids).map_err(StorageError::from)?;
            let mut batch = WriteBatch::default();
            for ((cid, height), meta) in chunk.blocks.iter().zip(metas) {
                if meta.is_none() {
                    context.blocks.put_pruned(&mut batch, topic, cid, *height);
                }
                for key in tombstones.remove(cid).unwrap_or_default() {
                    batch.delete_cf(context.cf(CF_TOMBSTONES), tombstone_key(topic, cid, &key));
                    covered_tombstones += 1;
                }
            }
            for (key, value) in &chunk.writers {
                batch.put_cf(context.cf(CF_WRITERS), topic.key(key), value);
            }
            context.write(batch)?;
        }
    }
    let mut batch = WriteBatch::default();
    let heads_cf = context.cf(CF_HEADS);
    let new: BTreeMap<Cid, Height> = heads.iter().map(|h| (h.cid, h.height)).collect();
    for cid in state.heads.keys().filter(|cid| !new.contains_key(cid)) {
        batch.delete_cf(heads_cf, topic.key(&cid.to_bytes()));
    }
    for (cid, height) in &new {
        batch.put_cf(heads_cf, topic.key(&cid.to_bytes()), height.to_be_bytes());
    }
    let mut cover = state.snapshots.cover.clone();
    if !cover.contains(&manifest_cid) {
        cover.push(manifest_cid);
    }
    let mut known = state.snapshots.known.clone();
    remember(&mut known, manifest_cid);
    batch.put_cf(context.cf(CF_META), meta_key(META_COVER, topic), encode_cids(&cover));
    batch.put_cf(context.cf(CF_META), meta_key(META_KNOWN, topic), encode_cids(&known));
    batch.delete_cf(context.cf(CF_META), meta_key(META_MERGE, topic));
    context.write(batch)?;
    state.heads = new;
    if let Some(lists) = &mut state.lists {
        lists.reload(&context.db)?;
    }
    state.snapshots.cover = cover;
    state.snapshots.known = known;
    state.tombstones = state.tombstones.saturating_sub(covered_tombstones);
    state.tombstones = count_tombstones(context, state)?;
    state.merging = false;
    // The merged rows hold the state now: the staged chunks go (this replica serves a snapshot
    // of its own when a peer needs one), the manifest stays as the cover.
    super::compact::delete_chunks(context, topic, &[manifest_cid]).map_err(MergeError::Storage)?;
    // Received blocks that waited for a covered block may apply now; covered ones are done.
    let ready = state.recheck_pending(context)?;
    apply_ready(context, state, ready).map_err(|e| match e {
        crate::error::IngestError::Storage(s) => MergeError::Storage(s),
        other => MergeError::Storage(StorageError::Corrupt(other.to_string())),
    })?;
    state.publish();
    Ok(())
}

fn count_tombstones(context: &Context, state: &TopicState) -> Result<u64, StorageError> {
    let mut count = 0;
    for item in prefix_scan(&context.db, context.cf(CF_TOMBSTONES), state.shared.id) {
        item?;
        count += 1;
    }
    Ok(count)
}

/// Records a snapshot whose blocks are all applied here as known, so peers stop offering it.
fn finish_known(context: &Context, state: &mut TopicState, manifest_cid: Cid) -> Result<(), StorageError> {
    let mut known = state.snapshots.known.clone();
    remember(&mut known, manifest_cid);
    let mut batch = WriteBatch::default();
    batch.put_cf(context.cf(CF_META), meta_key(META_KNOWN, state.shared.id), encode_cids(&known));
    context.write(batch)?;
    state.snapshots.known = known;
    state.publish();
    Ok(())
}
