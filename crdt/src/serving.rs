//! Serving snapshots: a snapshot whose chunks are made from a pinned view of the database when
//! a peer asks for them, never stored.
//!
//! A snapshot at heads H is the state of closure(H), and the rows at the instant the writer
//! thread stood at H are exactly that state. So a node keeps no second copy of its data to offer
//! a snapshot: a thread of its own takes a RocksDB snapshot of the database at that instant,
//! reads it once to cut the canonical chunks (hashing them, keeping only where each chunk
//! starts), and then, for as long as the snapshot is served, rebuilds a chunk from its start
//! when asked. The chunk is checked against its CID before it leaves. Dropping the [`Serving`]
//! ends the thread and releases the view.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use canopy_dag::{BlockMeta, CF_INDEX, Cid, Height, TopicId};
use crossbeam_channel::{Sender, bounded};
use rocksdb::{DB, SnapshotWithThreadMode};

use crate::error::StorageError;
use crate::schema::{CF_HEADS, CF_KV, CF_TOMBSTONES, CF_WRITERS, scan_from};
use crate::snapshot::{ChunkWriter, Manifest, SnapshotElement};
use crate::types::Head;

/// Chunk requests that may wait for a serving thread.
const REQUESTS_QUEUED_MAX: usize = 64;
/// Most threads making one served snapshot's chunks.
const WORKERS_MAX: usize = 4;

/// What a snapshot is taken of: a topic, at the heads the view holds.
#[derive(Clone, Debug)]
pub(crate) struct Source {
    pub topic: TopicId,
    pub name: String,
    /// Elements expired at this instant (wall-clock milliseconds) are left out, as if collected.
    pub now: u64,
    /// Whether the topic has a writer list, whose records the snapshot carries.
    pub writers: bool,
}

/// A snapshot being served: its manifest, and a thread holding the view its chunks are made
/// from.
pub(crate) struct Serving {
    pub manifest_cid: Cid,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    chunks: HashMap<Cid, usize>,
    requests: Option<Sender<ChunkRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Serving {
    /// Ends the thread and waits for it, so the view, and the database handle it holds, are let
    /// go before the store reports itself closed.
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type ChunkRequest = (usize, Sender<Result<(Cid, Vec<u8>), StorageError>>);

impl Serving {
    /// Starts a thread that takes a view of `db`, calls `taken` once the view is taken (so the
    /// caller lets the topic's writes go on), and cuts the snapshot of `source` from it.
    /// Returns once the manifest is known; the thread then serves chunks until the returned
    /// value is dropped.
    pub(crate) fn start(db: Arc<DB>, source: Source, taken: impl FnOnce()) -> Result<Serving, StorageError> {
        let (view_tx, view_rx) = bounded::<()>(1);
        let (built_tx, built_rx) = bounded(1);
        let (requests, requests_rx) = bounded::<ChunkRequest>(REQUESTS_QUEUED_MAX);
        let spawned = std::thread::Builder::new().name("canopy-snapshot".into()).spawn(move || {
            let view = db.snapshot();
            drop(view_tx);
            let starts = match cut(&db, &view, &source) {
                Ok((manifest, starts)) => {
                    let _ = built_tx.send(Ok(manifest));
                    starts
                }
                Err(error) => {
                    let _ = built_tx.send(Err(error));
                    return;
                }
            };
            // Chunks are made on a few threads sharing the view, so one fetch's requests in
            // flight are made at once.
            let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, WORKERS_MAX));
            std::thread::scope(|scope| {
                for _ in 0..workers {
                    let requests = requests_rx.clone();
                    let (db, view, source, starts) = (&db, &view, &source, &starts);
                    let worker =
                        std::thread::Builder::new().name("canopy-snapshot".into()).spawn_scoped(scope, move || {
                            for (index, reply) in requests {
                                let _ = reply.send(rebuild(db, view, source, &starts[index]));
                            }
                        });
                    if worker.is_err() {
                        // Fewer workers serve as well, only slower; none at all ends the
                        // snapshot, and a peer asking is told it is not held.
                        tracing::warn!("a thread making snapshot chunks could not start");
                    }
                }
            });
        });
        let spawned = spawned.map_err(|e| StorageError::Unavailable(format!("snapshot thread: {e}")));
        // The view is taken (or the thread failed) once the sender is gone.
        let _ = view_rx.recv();
        taken();
        let thread = spawned?;
        let manifest: Manifest = match built_rx.recv() {
            Ok(built) => built?,
            Err(_) => return Err(StorageError::Unavailable("the snapshot thread stopped".into())),
        };
        let (manifest_cid, manifest_bytes) = manifest.encode();
        let chunks = manifest.chunks.iter().enumerate().map(|(index, cid)| (*cid, index)).collect();
        Ok(Serving { manifest_cid, manifest, manifest_bytes, chunks, requests: Some(requests), thread: Some(thread) })
    }

    /// The bytes of one of the snapshot's chunks (`None`: not a chunk of it), made again from
    /// the view and checked against `cid`.
    pub(crate) fn chunk(&self, cid: &Cid) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(&index) = self.chunks.get(cid) else {
            return Ok(None);
        };
        let (reply, answer) = bounded(1);
        let Some(requests) = &self.requests else { return Ok(None) };
        if requests.send((index, reply)).is_err() {
            return Ok(None);
        }
        let (made, bytes) =
            answer.recv().map_err(|_| StorageError::Unavailable("the snapshot thread stopped".into()))??;
        if made != *cid {
            return Err(StorageError::Corrupt(format!("chunk {cid} of a served snapshot was made again as {made}")));
        }
        Ok(Some(bytes))
    }
}

/// Where a chunk starts: a list of the snapshot, the record key (without the topic prefix) and,
/// for elements, how many of the row's elements come before.
#[derive(Clone, Debug)]
struct Position {
    list: List,
    key: Vec<u8>,
    skip: usize,
}

/// The snapshot's lists, in the order they are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum List {
    Elements,
    Removes,
    Blocks,
    Writers,
}

/// Takes an item with the list, key and element index it stands at; false to stop.
type ItemSink<'a> = dyn FnMut(List, &[u8], usize, Item) -> bool + 'a;

enum Item {
    Element(SnapshotElement),
    Remove(Cid, Vec<u8>),
    Block(Cid, Height),
    Writer(Vec<u8>, Vec<u8>),
}

fn add<F: FnMut(Cid, Vec<u8>)>(writer: &mut ChunkWriter<F>, item: Item) {
    match item {
        Item::Element(element) => writer.element(element),
        Item::Remove(id, key) => writer.remove(id, key),
        Item::Block(cid, height) => writer.block(cid, height),
        Item::Writer(key, value) => writer.writer_record(key, value),
    }
}

/// Reads the whole snapshot once: its manifest and where each chunk starts.
fn cut(
    db: &DB,
    view: &SnapshotWithThreadMode<'_, DB>,
    source: &Source,
) -> Result<(Manifest, Vec<Position>), StorageError> {
    let mut starts = Vec::new();
    let mut writer = ChunkWriter::new(|_, _| {});
    let start = Position { list: List::Elements, key: Vec::new(), skip: 0 };
    feed(db, view, source, &start, &mut |list, key, skip, item| {
        let before = writer.chunks.len();
        add(&mut writer, item);
        // The item opened a chunk: the first one, or the one after a chunk it did not fit in.
        if starts.is_empty() || writer.chunks.len() > before {
            starts.push(Position { list, key: key.to_vec(), skip });
        }
        true
    })?;
    let mut heads = Vec::new();
    for record in
        scan_from(view, db.cf_handle(CF_HEADS).expect("every canopy column family is opened"), source.topic, &[])
    {
        let (key, value) = record?;
        let cid = Cid::try_from(key.as_slice()).map_err(|e| StorageError::Corrupt(format!("head key: {e}")))?;
        let height: [u8; 8] =
            value.as_slice().try_into().map_err(|_| StorageError::Corrupt(format!("height of head {cid}")))?;
        heads.push(Head { cid, height: u64::from_be_bytes(height) });
    }
    Ok((writer.finish(&source.name, heads), starts))
}

/// Makes the chunk that starts at `start` again: its CID and bytes.
fn rebuild(
    db: &DB,
    view: &SnapshotWithThreadMode<'_, DB>,
    source: &Source,
    start: &Position,
) -> Result<(Cid, Vec<u8>), StorageError> {
    let made = RefCell::new(None);
    let mut writer = ChunkWriter::new(|cid, bytes| {
        made.borrow_mut().get_or_insert((cid, bytes));
    });
    feed(db, view, source, start, &mut |_, _, _, item| {
        add(&mut writer, item);
        writer.chunks.is_empty()
    })?;
    if writer.chunks.is_empty() {
        // The last chunk: it ends with the lists.
        let _ = writer.finish(&source.name, Vec::new());
    } else {
        drop(writer);
    }
    made.into_inner().ok_or_else(|| StorageError::Corrupt("a served snapshot has no chunk there".into()))
}

/// Hands the snapshot's items from `from` on to `item` (with the list, key and element index
/// each stands at) until it returns false or the lists end.
fn feed(
    db: &DB,
    view: &SnapshotWithThreadMode<'_, DB>,
    source: &Source,
    from: &Position,
    item: &mut ItemSink<'_>,
) -> Result<(), StorageError> {
    let cf = |name: &str| db.cf_handle(name).expect("every canopy column family is opened with the database");
    let topic = source.topic;
    let start = |list: List| if list == from.list { from.key.as_slice() } else { &[] };
    if from.list <= List::Elements {
        let from_key = start(List::Elements);
        let records = scan_from(view, cf(CF_KV), topic, crate::doc_row::seek_key(from_key));
        for record in crate::doc_row::rows(records, from_key) {
            let (key, row) = record?;
            let skip = if from.list == List::Elements && key == from.key { from.skip } else { 0 };
            let live = row.elements().iter().filter(|element| !element.expired(source.now));
            for (index, element) in live.enumerate().skip(skip) {
                let element = SnapshotElement {
                    key: key.clone(),
                    height: element.height,
                    id: element.id,
                    value: element.value.clone(),
                    expires: element.expires,
                };
                if !item(List::Elements, &key, index, Item::Element(element)) {
                    return Ok(());
                }
            }
        }
    }
    if from.list <= List::Removes {
        for record in scan_from(view, cf(CF_TOMBSTONES), topic, start(List::Removes)) {
            let (key, _) = record?;
            let mut rest = key.as_slice();
            let id = Cid::read_bytes(&mut rest).map_err(|e| StorageError::Corrupt(format!("tombstone key: {e}")))?;
            if !item(List::Removes, &key, 0, Item::Remove(id, rest.to_vec())) {
                return Ok(());
            }
        }
    }
    if from.list <= List::Blocks {
        for record in scan_from(view, cf(CF_INDEX), topic, start(List::Blocks)) {
            let (key, value) = record?;
            let cid = Cid::try_from(key.as_slice()).map_err(|e| StorageError::Corrupt(format!("index key: {e}")))?;
            let meta = BlockMeta::decode(&value).map_err(|e| StorageError::Corrupt(format!("index record: {e}")))?;
            if !item(List::Blocks, &key, 0, Item::Block(cid, meta.height)) {
                return Ok(());
            }
        }
    }
    if source.writers {
        // The clocks and list changes of every covered block: a replica bootstrapped from the
        // snapshot judges later blocks by the same writer lists.
        for record in scan_from(view, cf(CF_WRITERS), topic, start(List::Writers)) {
            let (key, value) = record?;
            if !item(List::Writers, &key.clone(), 0, Item::Writer(key, value)) {
                return Ok(());
            }
        }
    }
    Ok(())
}
