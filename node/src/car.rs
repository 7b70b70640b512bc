//! A topic as a CARv1 file: what `canopy-ops export` writes and `canopy-ops import` reads, on a
//! data directory or through a running node's admin API.
//!
//! The roots are the topic's cover snapshots' manifests (its compacted history) and its heads.
//! The snapshot parts come first (each manifest, then its chunks), then every stored block,
//! parents before children. Both directions stream: an export hands items to its writer one at
//! a time, and an import reads one item at a time, staging snapshot parts as they come and
//! applying blocks in bounded batches, so memory stays bounded whatever the file's size. Import
//! checks every part and block as if a peer had sent it, merges the snapshots only when the
//! importer may speak for the topic, and applies the blocks; importing the same file twice
//! applies nothing the second time.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context as _;
use canopy_crdt::inspect::Inspector;
use canopy_crdt::snapshot::{Manifest, validate_parts};
use canopy_crdt::{Access, AuthorId, Cid, Topic};
use serde::{Deserialize, Serialize};

/// Most blocks handed to the topic per ingest.
const INGEST_BATCH: usize = 1024;
/// Most bytes of blocks handed to the topic per ingest.
const INGEST_BATCH_BYTES: usize = 16 << 20;

/// What an export wrote.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Exported {
    /// The topic.
    pub topic: String,
    /// Its roots: the cover snapshots' manifests, then the heads.
    pub roots: Vec<String>,
    /// Blocks and snapshot parts written.
    pub blocks: u64,
    /// Bytes of the file.
    pub bytes: u64,
}

/// What an import did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Imported {
    /// The topic written.
    pub topic: String,
    /// Snapshots merged.
    pub snapshots: u64,
    /// Blocks applied.
    pub applied: u64,
    /// Blocks that were applied already.
    pub duplicates: u64,
    /// Blocks refused (bad hash, not a canopy block, height or parents wrong).
    pub rejected: Vec<String>,
    /// Keys of the topic afterwards.
    pub keys: u64,
}

/// A blocking reader or writer seen as an asynchronous one, for the CAR codec, which is
/// asynchronous. Its operations block, so it is polled only on a thread that may block
/// (through `futures::executor::block_on`), never on the async runtime.
struct Blocking<T>(T);

impl<R: Read + Unpin> tokio::io::AsyncRead for Blocking<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let read = self.0.read(buf.initialize_unfilled())?;
        buf.advance(read);
        Poll::Ready(Ok(()))
    }
}

impl<W: Write + Unpin> tokio::io::AsyncWrite for Blocking<W> {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.0.write(buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.0.flush())
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.0.flush())
    }
}

/// Writes `topic` as a CARv1 file to `out`, item by item; `None` when the store has no such
/// topic. A compacted topic's file starts with a snapshot made as it is written. `progress` is
/// called with the items written so far.
pub fn export<W: Write + Unpin + Send>(
    inspector: &Inspector,
    topic: &str,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<Option<Exported>> {
    let mut out = Some(out);
    let mut writer: Option<CarWriter<W>> = None;
    let mut roots = Vec::new();
    let mut written = 0u64;
    let failed = |e: anyhow::Error| canopy_crdt::StorageError::Corrupt(format!("writing the file: {e:#}"));
    let found = inspector.export(topic, &mut |item| {
        match item {
            canopy_crdt::inspect::Exported::Roots(cids) => {
                if cids.is_empty() {
                    return Err(canopy_crdt::StorageError::Corrupt(format!("topic {topic} has no history to export")));
                }
                let out = out.take().expect("the roots come once");
                writer = Some(CarWriter::new(&cids, out));
                roots = cids;
            }
            canopy_crdt::inspect::Exported::Part(cid, bytes) => {
                let writer = writer.as_mut().expect("the roots come first");
                writer.write(cid, bytes).map_err(failed)?;
                written += 1;
                progress(written);
            }
        }
        Ok(())
    })?;
    if found.is_none() {
        return Ok(None);
    }
    let bytes = writer.expect("the roots came").finish()?;
    Ok(Some(Exported {
        topic: topic.to_string(),
        roots: roots.iter().map(ToString::to_string).collect(),
        blocks: written,
        bytes,
    }))
}

/// A CARv1 file being written, one item at a time, to a blocking writer.
pub struct CarWriter<W: Write + Unpin + Send> {
    inner: iroh_car::CarWriter<Blocking<Counted<W>>>,
}

impl<W: Write + Unpin + Send> CarWriter<W> {
    /// A file with `roots`, written to `out`.
    pub fn new(roots: &[Cid], out: W) -> CarWriter<W> {
        let header = iroh_car::CarHeader::new_v1(roots.to_vec());
        CarWriter { inner: iroh_car::CarWriter::new(header, Blocking(Counted { inner: out, bytes: 0 })) }
    }

    /// Writes one item.
    pub fn write(&mut self, cid: Cid, bytes: Vec<u8>) -> anyhow::Result<()> {
        futures::executor::block_on(self.inner.write(cid, bytes))?;
        Ok(())
    }

    /// Ends the file; returns its size in bytes.
    pub fn finish(self) -> anyhow::Result<u64> {
        let written = futures::executor::block_on(self.inner.finish())?;
        Ok(written.0.bytes)
    }
}

/// A writer counting what went through it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A CARv1 file being read, one item at a time, from a blocking reader.
pub struct CarReader<R: Read + Unpin> {
    inner: iroh_car::CarReader<Blocking<R>>,
}

impl<R: Read + Unpin> CarReader<R> {
    /// Reads the file's header; a file that is not CARv1 is an error.
    pub fn open(input: R) -> anyhow::Result<CarReader<R>> {
        let inner =
            futures::executor::block_on(iroh_car::CarReader::new(Blocking(input))).context("not a CARv1 file")?;
        Ok(CarReader { inner })
    }

    /// The file's roots.
    pub fn roots(&self) -> &[Cid] {
        self.inner.header().roots()
    }

    /// The next item, `None` at the end; a damaged or truncated file is an error.
    pub fn next_item(&mut self) -> anyhow::Result<Option<(Cid, Vec<u8>)>> {
        futures::executor::block_on(self.inner.next_block()).context("the CAR file is damaged or cut short")
    }

    /// The topic the file's snapshots name: its first item, when that is a snapshot manifest
    /// among the roots (as an export writes it). Reads that item.
    pub fn snapshot_topic(mut self) -> anyhow::Result<Option<String>> {
        let roots: HashSet<Cid> = self.roots().iter().copied().collect();
        Ok(match self.next_item()? {
            Some((cid, bytes)) if roots.contains(&cid) => Manifest::decode(&cid, &bytes).ok().map(|m| m.topic),
            _ => None,
        })
    }
}

/// Who imports a file, which decides whether the snapshots in it may be merged: a snapshot
/// speaks for a topic's history, and only a party the topic's rule lets speak for it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Importer {
    /// Whoever holds a stopped node's data directory: they could rewrite it anyway.
    Operator,
    /// A running node, which speaks as its author: for any open topic, and for an owned topic
    /// or one with a writer list only when it is the owner.
    Node(AuthorId),
}

impl Importer {
    /// Whether this importer may merge snapshots of a topic under `access`.
    pub fn speaks_for(&self, access: Access) -> bool {
        match (self, access.owner()) {
            (Importer::Operator, _) | (Importer::Node(_), None) => true,
            (Importer::Node(author), Some(owner)) => *author == owner,
        }
    }
}

/// An import refused because the file holds snapshots of a topic the importer may not speak
/// for. Nothing was merged.
#[derive(Debug, thiserror::Error)]
#[error(
    "the file holds snapshots of {topic}, which only its owner {owner} may speak for: a snapshot from anyone \
     else could leave out writes the blocks hold. Import it on the owner's node, or let this node catch up \
     from the owner"
)]
pub struct NotSpeaker {
    /// The topic.
    pub topic: String,
    /// Its owner.
    pub owner: String,
}

/// Imports `car` into `topic`: snapshot parts are checked and staged as they come, the
/// snapshots merged once the first block arrives (or the file ends), then every block is
/// checked as a received one and applied, in batches. A file holding snapshots of a topic the
/// importer may not speak for is refused ([`NotSpeaker`]) before anything is merged.
/// `progress` is called with the items handled so far.
pub fn import<R: Read + Unpin>(
    topic: &Topic,
    mut car: CarReader<R>,
    importer: Importer,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<Imported> {
    let name = topic.name().to_string();
    let roots: HashSet<Cid> = car.roots().iter().copied().collect();
    let mut report = Imported { topic: name.clone(), ..Imported::default() };
    let mut manifests: Vec<Cid> = Vec::new();
    let mut chunks_awaited: HashSet<Cid> = HashSet::new();
    let mut blocks: Vec<(Cid, Vec<u8>)> = Vec::new();
    let mut blocks_bytes = 0;
    let mut merged = false;
    let mut pending = 0;
    let mut done = 0u64;
    while let Some((cid, bytes)) = car.next_item()? {
        done += 1;
        let manifest = (!merged && roots.contains(&cid)).then(|| Manifest::decode(&cid, &bytes).ok()).flatten();
        if let Some(manifest) = manifest {
            anyhow::ensure!(
                manifest.topic == name,
                "the file holds a snapshot of topic {}, not {name}",
                manifest.topic
            );
            if !importer.speaks_for(topic.access()) {
                let owner = topic.access().owner().map(|owner| owner.to_string()).unwrap_or_default();
                return Err(NotSpeaker { topic: name, owner }.into());
            }
            chunks_awaited.extend(manifest.chunks.iter().copied());
            manifests.push(cid);
            stage_part(topic, cid, bytes)?;
        } else if chunks_awaited.remove(&cid) {
            anyhow::ensure!(!merged, "snapshot chunk {cid} comes after blocks: the parts must come first");
            stage_part(topic, cid, bytes)?;
        } else {
            if !merged {
                merge(topic, &manifests, &chunks_awaited, &mut report)?;
                merged = true;
            }
            blocks_bytes += bytes.len();
            blocks.push((cid, bytes));
            if blocks.len() >= INGEST_BATCH || blocks_bytes >= INGEST_BATCH_BYTES {
                pending = ingest(topic, std::mem::take(&mut blocks), &mut report)?;
                blocks_bytes = 0;
            }
        }
        progress(done);
    }
    if !merged {
        merge(topic, &manifests, &chunks_awaited, &mut report)?;
    }
    if !blocks.is_empty() {
        pending = ingest(topic, blocks, &mut report)?;
    }
    if pending > 0 {
        report.rejected.push(format!("{pending} blocks wait for parents the file does not hold"));
    }
    report.keys = topic.key_count();
    Ok(report)
}

/// Checks one snapshot part against its CID and stages it for the merge.
fn stage_part(topic: &Topic, cid: Cid, bytes: Vec<u8>) -> anyhow::Result<()> {
    let checked: Vec<(Cid, Vec<u8>)> = validate_parts(vec![(cid, bytes)]).into_iter().collect::<Result<_, _>>()?;
    topic.stage_snapshot_parts(&checked)?;
    Ok(())
}

/// Merges the staged snapshots, once every chunk they name has come.
fn merge(topic: &Topic, manifests: &[Cid], missing: &HashSet<Cid>, report: &mut Imported) -> anyhow::Result<()> {
    if let Some(chunk) = missing.iter().next() {
        anyhow::bail!("snapshot chunk {chunk} is not in the file");
    }
    for manifest in manifests {
        if !topic.merge_snapshot(*manifest)?.already_had {
            report.snapshots += 1;
        }
    }
    Ok(())
}

/// Checks and applies one batch of blocks; returns how many wait for parents.
fn ingest(topic: &Topic, batch: Vec<(Cid, Vec<u8>)>, report: &mut Imported) -> anyhow::Result<usize> {
    let cids: Vec<Cid> = batch.iter().map(|(cid, _)| *cid).collect();
    let mut valid = Vec::new();
    for (cid, result) in cids.iter().zip(canopy_crdt::validate_blocks(topic.name(), batch)) {
        match result {
            Ok(block) => valid.push(block),
            Err(error) => report.rejected.push(format!("{cid}: {error}")),
        }
    }
    let outcome = topic.ingest(valid)?;
    report.applied += outcome.applied as u64;
    report.duplicates += outcome.duplicates.len() as u64;
    report.rejected.extend(outcome.rejected.iter().map(|(cid, why)| format!("{cid}: {why}")));
    Ok(outcome.pending)
}
