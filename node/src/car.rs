//! A topic as a CARv1 file: what `canopy-ops export` writes and `canopy-ops import` reads, on a
//! data directory or through a running node's admin API.
//!
//! The roots are the topic's cover snapshots' manifests (its compacted history) and its heads.
//! The snapshot parts come first, then every stored block, parents before children. Import
//! checks every part and block as if a peer had sent it, merges the snapshots and applies the
//! blocks; importing the same file twice applies nothing the second time.

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;
use canopy_crdt::inspect::Inspector;
use canopy_crdt::snapshot::{Manifest, validate_parts};
use canopy_crdt::{Access, AuthorId, Cid, Topic};
use serde::{Deserialize, Serialize};

/// Blocks handed to the topic per ingest.
const INGEST_BATCH: usize = 1024;

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

/// Writes `topic` as a CARv1 file in memory; `None` when the store has no such topic.
/// `progress` is called with the items written so far (0 first) and their total.
pub fn export(
    inspector: &Inspector,
    topic: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Option<(Vec<u8>, Exported)>> {
    let Some(roots) = inspector.export_roots(topic)? else {
        return Ok(None);
    };
    anyhow::ensure!(!roots.is_empty(), "topic {topic} has no history to export");
    let mut items = Vec::new();
    inspector.export(topic, &mut |cid, bytes| {
        items.push((cid, bytes));
        Ok(())
    })?;
    let total = items.len() as u64;
    let mut writer = iroh_car::CarWriter::new(iroh_car::CarHeader::new_v1(roots.clone()), Vec::new());
    progress(0, total);
    let car = futures::executor::block_on(async {
        for (written, (cid, bytes)) in items.into_iter().enumerate() {
            writer.write(cid, bytes).await?;
            progress(written as u64 + 1, total);
        }
        writer.finish().await
    })?;
    let report = Exported {
        topic: topic.to_string(),
        roots: roots.iter().map(ToString::to_string).collect(),
        blocks: total,
        bytes: car.len() as u64,
    };
    Ok(Some((car, report)))
}

/// A CARv1 file, read and split: its roots, and its items by CID.
pub struct Car {
    roots: Vec<Cid>,
    items: Vec<(Cid, Vec<u8>)>,
}

impl Car {
    /// Reads a whole CARv1 file; a damaged or truncated file is an error.
    pub fn read(bytes: &[u8]) -> anyhow::Result<Car> {
        futures::executor::block_on(async {
            let mut reader = iroh_car::CarReader::new(bytes).await.context("not a CARv1 file")?;
            let roots = reader.header().roots().to_vec();
            let mut items = Vec::new();
            while let Some(item) = reader.next_block().await.context("the CAR file is damaged or cut short")? {
                items.push(item);
            }
            Ok(Car { roots, items })
        })
    }

    /// The snapshot manifests among the roots, decoded.
    fn manifests(&self) -> Vec<(Cid, Manifest)> {
        let by_cid: HashMap<&Cid, &Vec<u8>> = self.items.iter().map(|(cid, bytes)| (cid, bytes)).collect();
        self.roots
            .iter()
            .filter_map(|root| Manifest::decode(root, by_cid.get(root)?).ok().map(|m| (*root, m)))
            .collect()
    }

    /// Its roots.
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// The topic its snapshots name, if it holds any.
    pub fn topic(&self) -> Option<String> {
        self.manifests().first().map(|(_, manifest)| manifest.topic.clone())
    }

    /// Blocks and snapshot parts in the file.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the file holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
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

/// Imports `car` into `topic`: snapshots among the roots are checked and merged, then every
/// other item is checked as a received block and applied, under the same rules as blocks from
/// a peer. A file holding snapshots of a topic the importer may not speak for is refused whole.
/// `progress` is called with the items handled so far and their total.
pub fn import(
    topic: &Topic,
    car: Car,
    importer: Importer,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<Imported> {
    let name = topic.name().to_string();
    let manifests = car.manifests();
    if !manifests.is_empty() && !importer.speaks_for(topic.access()) {
        let owner = topic.access().owner().map(|owner| owner.to_string()).unwrap_or_default();
        anyhow::bail!(
            "the file holds snapshots of {name}, which only its owner {owner} may speak for: a snapshot from \
             anyone else could leave out writes the blocks hold. Import it on the owner's node, or let this \
             node catch up from the owner"
        );
    }
    let total = car.items.len() as u64;
    let mut report = Imported { topic: name.clone(), ..Imported::default() };
    let mut parts: HashMap<Cid, Vec<u8>> = HashMap::new();
    let mut blocks = Vec::new();
    let mut in_snapshots: HashSet<Cid> = HashSet::new();
    for (cid, manifest) in &manifests {
        anyhow::ensure!(manifest.topic == name, "the file holds a snapshot of topic {}, not {name}", manifest.topic);
        in_snapshots.insert(*cid);
        in_snapshots.extend(manifest.chunks.iter().copied());
    }
    for (cid, bytes) in car.items {
        if in_snapshots.contains(&cid) {
            parts.insert(cid, bytes);
        } else {
            blocks.push((cid, bytes));
        }
    }
    let mut done = 0u64;
    for (cid, manifest) in &manifests {
        let mut staged = vec![(*cid, parts[cid].clone())];
        for chunk in &manifest.chunks {
            let bytes = parts.get(chunk).with_context(|| format!("snapshot chunk {chunk} is not in the file"))?;
            staged.push((*chunk, bytes.clone()));
        }
        done += staged.len() as u64;
        let checked: Vec<(Cid, Vec<u8>)> = validate_parts(staged).into_iter().collect::<Result<_, _>>()?;
        topic.stage_snapshot_parts(&checked)?;
        if !topic.merge_snapshot(*cid)?.already_had {
            report.snapshots += 1;
        }
        progress(done, total);
    }
    let mut pending = 0;
    for batch in blocks.chunks(INGEST_BATCH) {
        let cids: Vec<Cid> = batch.iter().map(|(cid, _)| *cid).collect();
        let mut valid = Vec::new();
        for (cid, result) in cids.iter().zip(canopy_crdt::validate_blocks(topic.name(), batch.to_vec())) {
            match result {
                Ok(block) => valid.push(block),
                Err(error) => report.rejected.push(format!("{cid}: {error}")),
            }
        }
        let outcome = topic.ingest(valid)?;
        report.applied += outcome.applied as u64;
        report.duplicates += outcome.duplicates.len() as u64;
        report.rejected.extend(outcome.rejected.iter().map(|(cid, why)| format!("{cid}: {why}")));
        pending = outcome.pending;
        done += batch.len() as u64;
        progress(done, total);
    }
    if pending > 0 {
        report.rejected.push(format!("{pending} blocks wait for parents the file does not hold"));
    }
    report.keys = topic.key_count();
    Ok(report)
}
