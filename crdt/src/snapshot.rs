//! The snapshot format: a topic's state at a set of heads as content-addressed parts.
//!
//! A snapshot of a topic at heads H is the state of closure(H), the blocks H and everything
//! below them: every live element `(key, height, element id, value)`, every remove of an element
//! outside closure(H) that a block of closure(H) made, and every block of closure(H) with its
//! height (so a receiver knows which blocks the snapshot stands for and can check the heights of
//! later blocks that link to them). These three lists, in that order and each sorted, are cut
//! into *chunks* of about [`CHUNK_BYTES_TARGET`] bytes; one *manifest* names the topic, H, the
//! counts and the chunks. Every part is DAG-CBOR named by a CIDv1 with a BLAKE3-256 multihash,
//! like blocks, and its content and cut points depend only on closure(H): two replicas that
//! snapshot the same heads produce the same CIDs.

use canopy_dag::{BLOCK_BYTES_MAX, BlockError, Cid, Height, check_cid, cid_of};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::access::validate_topic_name;
use crate::delta::{Limits, check_key, check_value};
use crate::types::Head;

/// The format name every manifest carries.
pub const SNAPSHOT_FORMAT: &str = "canopy-snapshot/1";
/// A chunk is closed before the item that would take it past this size; one item is at most a
/// key, a value and a CID, so a chunk always fits [`BLOCK_BYTES_MAX`].
pub const CHUNK_BYTES_TARGET: usize = 1 << 20;

pub use crate::error::SnapshotError;

/// Sort key of a snapshot element: key ascending, then rank descending.
type ElementOrder<'a> = (&'a [u8], std::cmp::Reverse<(Height, &'a [u8], &'a Cid)>);

/// A live element as a snapshot carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotElement {
    /// The key.
    pub key: Vec<u8>,
    /// Its priority: the height of the block that added it.
    pub height: Height,
    /// Its element id: the CID of the block that added it.
    pub id: Cid,
    /// The value.
    pub value: Vec<u8>,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires: Option<u64>,
}

impl SnapshotElement {
    /// The order of elements in a snapshot: by key, then best first within a key (the order of
    /// a row).
    fn order(&self) -> ElementOrder<'_> {
        (&self.key, std::cmp::Reverse((self.height, &self.value, &self.id)))
    }
}

/// One part of a snapshot's three sorted lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Live elements, by key then best first.
    pub elements: Vec<SnapshotElement>,
    /// Removes of elements outside the snapshot, as `(element id, key)`, sorted.
    pub removes: Vec<(Cid, Vec<u8>)>,
    /// Blocks the snapshot covers with their heights, in the byte order of their CIDs.
    pub blocks: Vec<(Cid, Height)>,
    /// In a topic with a writer list, its records (clocks and list changes) as
    /// `(kind ++ cid, record)`, sorted: a fourth list, absent from other topics' snapshots.
    pub writers: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireChunk {
    elements: Vec<(ByteBuf, Height, Cid, ByteBuf)>,
    removes: Vec<(Cid, ByteBuf)>,
    blocks: Vec<(Cid, Height)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    writers: Vec<(ByteBuf, ByteBuf)>,
    /// Expiry times of elements, as `(index in elements, milliseconds since the Unix epoch)`,
    /// by index; absent when no element of the chunk expires.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    expiries: Vec<(u32, u64)>,
}

impl Chunk {
    /// The canonical encoding and its CID.
    pub fn encode(&self) -> (Cid, Vec<u8>) {
        let wire = WireChunk {
            elements: self
                .elements
                .iter()
                .map(|e| (ByteBuf::from(e.key.clone()), e.height, e.id, ByteBuf::from(e.value.clone())))
                .collect(),
            removes: self.removes.iter().map(|(id, key)| (*id, ByteBuf::from(key.clone()))).collect(),
            blocks: self.blocks.clone(),
            writers: self.writers.iter().map(|(k, v)| (ByteBuf::from(k.clone()), ByteBuf::from(v.clone()))).collect(),
            expiries: self
                .elements
                .iter()
                .enumerate()
                .filter_map(|(at, e)| Some((u32::try_from(at).ok()?, e.expires?)))
                .collect(),
        };
        let bytes = serde_ipld_dagcbor::to_vec(&wire).expect("encoding a chunk into memory cannot fail");
        (cid_of(&bytes), bytes)
    }

    /// Decodes and checks a chunk received under `cid`: hash, canonical encoding, limits and
    /// the order within each list.
    pub fn decode(cid: &Cid, bytes: &[u8]) -> Result<Chunk, SnapshotError> {
        let wire: WireChunk = decode_part(cid, bytes)?;
        let limits = Limits::PROTOCOL;
        if wire.expiries.windows(2).any(|pair| pair[0].0 >= pair[1].0)
            || wire.expiries.last().is_some_and(|(at, _)| *at as usize >= wire.elements.len())
        {
            return Err(SnapshotError::Invalid("expiries are not sorted or name no element".into()));
        }
        let mut expiries = wire.expiries.into_iter().peekable();
        let chunk = Chunk {
            elements: wire
                .elements
                .into_iter()
                .enumerate()
                .map(|(at, (key, height, id, value))| SnapshotElement {
                    key: key.into_vec(),
                    height,
                    id,
                    value: value.into_vec(),
                    expires: expiries.next_if(|(index, _)| *index as usize == at).map(|(_, expires)| expires),
                })
                .collect(),
            removes: wire.removes.into_iter().map(|(id, key)| (id, key.into_vec())).collect(),
            blocks: wire.blocks,
            writers: wire.writers.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())).collect(),
        };
        for (key, value) in &chunk.writers {
            let (&kind, mut cid) =
                key.split_first().ok_or_else(|| SnapshotError::Invalid("an empty record key".into()))?;
            let id = Cid::read_bytes(&mut cid).map_err(|e| SnapshotError::Invalid(format!("a record key: {e}")))?;
            check_cid(&id)?;
            if !cid.is_empty() {
                return Err(SnapshotError::Invalid("a record key longer than its CID".into()));
            }
            crate::writer_list::check_record(kind, value).map_err(SnapshotError::Invalid)?;
        }
        for element in &chunk.elements {
            check_key(&element.key, &limits).map_err(SnapshotError::Invalid)?;
            check_value(&element.value, &limits).map_err(SnapshotError::Invalid)?;
            check_cid(&element.id)?;
            if element.height == 0 {
                return Err(SnapshotError::Invalid("an element at height 0".into()));
            }
        }
        // A remove may name any CID, as in a delta: one naming no block canopy could make is
        // harmless (it never matches an element), and refusing it here would refuse a snapshot
        // of a state every replica accepted.
        for (_, key) in &chunk.removes {
            check_key(key, &limits).map_err(SnapshotError::Invalid)?;
        }
        for (id, height) in &chunk.blocks {
            check_cid(id)?;
            if *height == 0 {
                return Err(SnapshotError::Invalid("a block at height 0".into()));
            }
        }
        if chunk.elements.windows(2).any(|pair| pair[0].order() >= pair[1].order()) {
            return Err(SnapshotError::Invalid("elements are not sorted".into()));
        }
        if chunk.removes.windows(2).any(|pair| remove_order(&pair[0]) >= remove_order(&pair[1])) {
            return Err(SnapshotError::Invalid("removes are not sorted".into()));
        }
        if chunk.blocks.windows(2).any(|pair| pair[0].0.to_bytes() >= pair[1].0.to_bytes()) {
            return Err(SnapshotError::Invalid("blocks are not sorted".into()));
        }
        if chunk.writers.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return Err(SnapshotError::Invalid("writer-list records are not sorted".into()));
        }
        Ok(chunk)
    }

    /// True when `next` may follow this chunk: every list continues in order across the cut.
    pub fn precedes(&self, next: &Chunk) -> bool {
        let elements = match (self.elements.last(), next.elements.first()) {
            (Some(a), Some(b)) => a.order() < b.order(),
            // A later list has started: the earlier one may not continue.
            (_, Some(_)) => self.removes.is_empty() && self.blocks.is_empty() && self.writers.is_empty(),
            _ => true,
        };
        let removes = match (self.removes.last(), next.removes.first()) {
            (Some(a), Some(b)) => remove_order(a) < remove_order(b),
            (_, Some(_)) => self.blocks.is_empty() && self.writers.is_empty(),
            _ => true,
        };
        let blocks = match (self.blocks.last(), next.blocks.first()) {
            (Some(a), Some(b)) => a.0.to_bytes() < b.0.to_bytes(),
            (_, Some(_)) => self.writers.is_empty(),
            _ => true,
        };
        let writers = match (self.writers.last(), next.writers.first()) {
            (Some(a), Some(b)) => a.0 < b.0,
            _ => true,
        };
        elements && removes && blocks && writers
    }
}

fn remove_order((id, key): &(Cid, Vec<u8>)) -> (Vec<u8>, &[u8]) {
    (id.to_bytes(), key)
}

/// The root of a snapshot: what it covers and where its chunks are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The topic's name.
    pub topic: String,
    /// The heads the snapshot was taken at, sorted by CID.
    pub heads: Vec<Head>,
    /// Keys with a live element.
    pub keys: u64,
    /// Live elements.
    pub elements: u64,
    /// Removes of elements outside the snapshot.
    pub removes: u64,
    /// Blocks covered.
    pub blocks: u64,
    /// The chunks, in order.
    pub chunks: Vec<Cid>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireManifest {
    format: String,
    topic: String,
    heads: Vec<(Cid, Height)>,
    keys: u64,
    elements: u64,
    removes: u64,
    blocks: u64,
    chunks: Vec<Cid>,
}

impl Manifest {
    /// The canonical encoding and its CID.
    pub fn encode(&self) -> (Cid, Vec<u8>) {
        let wire = WireManifest {
            format: SNAPSHOT_FORMAT.to_string(),
            topic: self.topic.clone(),
            heads: self.heads.iter().map(|h| (h.cid, h.height)).collect(),
            keys: self.keys,
            elements: self.elements,
            removes: self.removes,
            blocks: self.blocks,
            chunks: self.chunks.clone(),
        };
        let bytes = serde_ipld_dagcbor::to_vec(&wire).expect("encoding a manifest into memory cannot fail");
        (cid_of(&bytes), bytes)
    }

    /// Decodes and checks a manifest received under `cid`.
    pub fn decode(cid: &Cid, bytes: &[u8]) -> Result<Manifest, SnapshotError> {
        let wire: WireManifest = decode_part(cid, bytes)?;
        if wire.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::Invalid(format!("format {:?} is not {SNAPSHOT_FORMAT}", wire.format)));
        }
        validate_topic_name(&wire.topic).map_err(|e| SnapshotError::Invalid(e.to_string()))?;
        if wire.heads.is_empty() {
            return Err(SnapshotError::Invalid("a snapshot names no heads".into()));
        }
        if wire.heads.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return Err(SnapshotError::Invalid("heads are not sorted".into()));
        }
        if wire.blocks < wire.heads.len() as u64 || wire.keys > wire.elements {
            return Err(SnapshotError::Invalid("counts do not add up".into()));
        }
        for cid in wire.heads.iter().map(|(cid, _)| cid).chain(&wire.chunks) {
            check_cid(cid)?;
        }
        Ok(Manifest {
            topic: wire.topic,
            heads: wire.heads.into_iter().map(|(cid, height)| Head { cid, height }).collect(),
            keys: wire.keys,
            elements: wire.elements,
            removes: wire.removes,
            blocks: wire.blocks,
            chunks: wire.chunks,
        })
    }
}

/// Hash-checks a part and decodes it, refusing any encoding but the canonical one.
fn decode_part<T: Serialize + for<'de> Deserialize<'de>>(cid: &Cid, bytes: &[u8]) -> Result<T, SnapshotError> {
    if bytes.len() > BLOCK_BYTES_MAX {
        return Err(SnapshotError::Cid(BlockError::TooLarge { bytes: bytes.len(), max: BLOCK_BYTES_MAX }));
    }
    check_cid(cid)?;
    if cid_of(bytes) != *cid {
        return Err(SnapshotError::Cid(BlockError::HashMismatch(*cid)));
    }
    let wire: T = serde_ipld_dagcbor::from_slice(bytes).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    let canonical = serde_ipld_dagcbor::to_vec(&wire).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    if canonical != bytes {
        return Err(SnapshotError::Malformed("not canonically encoded".into()));
    }
    Ok(wire)
}

/// Hash-checks received parts in parallel on the rayon pool, in input order: each must be
/// named by its CID and within the block size bound. Their content is checked when merged.
pub fn validate_parts(parts: Vec<(Cid, Vec<u8>)>) -> Vec<Result<(Cid, Vec<u8>), SnapshotError>> {
    use rayon::prelude::*;
    parts
        .into_par_iter()
        .map(|(cid, bytes)| {
            if bytes.len() > BLOCK_BYTES_MAX {
                return Err(SnapshotError::Cid(BlockError::TooLarge { bytes: bytes.len(), max: BLOCK_BYTES_MAX }));
            }
            check_cid(&cid)?;
            if cid_of(&bytes) != cid {
                return Err(SnapshotError::Cid(BlockError::HashMismatch(cid)));
            }
            Ok((cid, bytes))
        })
        .collect()
}

/// Cuts a snapshot's lists into chunks as they are fed, in order: elements, then removes, then
/// blocks. Each finished chunk is handed to the caller's sink, so a snapshot of any size is
/// built in the memory of one chunk.
pub struct ChunkWriter<F: FnMut(Cid, Vec<u8>)> {
    current: Chunk,
    bytes: usize,
    sink: F,
    /// Chunks written so far, in order.
    pub chunks: Vec<Cid>,
    /// Distinct keys among the elements fed.
    pub keys: u64,
    /// Elements fed.
    pub elements: u64,
    /// Removes fed.
    pub removes: u64,
    /// Blocks fed.
    pub blocks: u64,
    last_key: Option<Vec<u8>>,
}

/// Estimated encoded size of one item: its bytes plus room for CBOR headers and a CID.
fn item_bytes(key: usize, value: usize) -> usize {
    key + value + 64
}

impl<F: FnMut(Cid, Vec<u8>)> ChunkWriter<F> {
    /// A writer handing each finished chunk, as `(cid, bytes)`, to `sink`.
    pub fn new(sink: F) -> Self {
        ChunkWriter {
            current: Chunk::default(),
            bytes: 0,
            sink,
            chunks: Vec::new(),
            keys: 0,
            elements: 0,
            removes: 0,
            blocks: 0,
            last_key: None,
        }
    }

    fn room(&mut self, bytes: usize) {
        if self.bytes > 0 && self.bytes + bytes > CHUNK_BYTES_TARGET {
            self.flush();
        }
        self.bytes += bytes;
    }

    fn flush(&mut self) {
        let chunk = std::mem::take(&mut self.current);
        self.bytes = 0;
        let (cid, bytes) = chunk.encode();
        self.chunks.push(cid);
        (self.sink)(cid, bytes);
    }

    /// Adds a live element; elements come by key, best first within a key.
    pub fn element(&mut self, element: SnapshotElement) {
        let expiry_bytes = if element.expires.is_some() { 16 } else { 0 };
        self.room(item_bytes(element.key.len(), element.value.len()) + expiry_bytes);
        if self.last_key.as_deref() != Some(element.key.as_slice()) {
            self.keys += 1;
            self.last_key = Some(element.key.clone());
        }
        self.elements += 1;
        self.current.elements.push(element);
    }

    /// Adds a remove of an element outside the snapshot, in `(id bytes, key)` order.
    pub fn remove(&mut self, id: Cid, key: Vec<u8>) {
        self.room(item_bytes(key.len(), 0));
        self.removes += 1;
        self.current.removes.push((id, key));
    }

    /// Adds a covered block, in CID byte order.
    pub fn block(&mut self, cid: Cid, height: Height) {
        self.room(item_bytes(0, 0));
        self.blocks += 1;
        self.current.blocks.push((cid, height));
    }

    /// Adds a writer-list record, in key order; they come last.
    pub fn writer_record(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.room(item_bytes(key.len(), value.len()));
        self.current.writers.push((key, value));
    }

    /// Writes the last chunk and returns the manifest for `topic` at `heads`.
    pub fn finish(mut self, topic: &str, mut heads: Vec<Head>) -> Manifest {
        if self.bytes > 0 {
            self.flush();
        }
        heads.sort_unstable_by_key(|h| h.cid);
        Manifest {
            topic: topic.to_string(),
            heads,
            keys: self.keys,
            elements: self.elements,
            removes: self.removes,
            blocks: self.blocks,
            chunks: self.chunks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_dag::Block;

    fn id(n: u32) -> Cid {
        Block::build("t", vec![], 1, n.to_be_bytes().to_vec(), &canopy_dag::Signer::from_secret([1; 32])).unwrap().cid()
    }

    fn write(n: u32, value_bytes: usize) -> (Manifest, Vec<(Cid, Vec<u8>)>) {
        let mut parts = Vec::new();
        let mut writer = ChunkWriter::new(|cid, bytes| parts.push((cid, bytes)));
        for i in 0..n {
            let key = format!("key-{i:06}").into_bytes();
            let expires = (i % 3 == 0).then_some(u64::from(i));
            writer.element(SnapshotElement { key, height: 2, id: id(i), value: vec![7; value_bytes], expires });
        }
        writer.remove(id(n), b"gone".to_vec());
        let mut blocks: Vec<Cid> = (0..n).map(id).collect();
        blocks.sort_by_key(|cid| cid.to_bytes());
        for cid in blocks {
            writer.block(cid, 1);
        }
        let manifest = writer.finish("t", vec![Head { cid: id(0), height: 1 }]);
        (manifest, parts)
    }

    #[test]
    fn equal_content_gives_equal_parts_cut_within_the_target() {
        let (a, parts_a) = write(5000, 500);
        let (b, parts_b) = write(5000, 500);
        assert_eq!(a.encode().0, b.encode().0);
        assert_eq!(parts_a, parts_b);
        assert!(parts_a.len() > 2, "{} chunks", parts_a.len());
        let mut previous: Option<Chunk> = None;
        for (cid, bytes) in &parts_a {
            assert!(bytes.len() <= CHUNK_BYTES_TARGET + 1024);
            let chunk = Chunk::decode(cid, bytes).unwrap();
            if let Some(previous) = &previous {
                assert!(previous.precedes(&chunk));
            }
            previous = Some(chunk);
        }
        let (cid, bytes) = a.encode();
        assert_eq!(Manifest::decode(&cid, &bytes).unwrap(), a);
        assert_eq!((a.keys, a.elements, a.removes, a.blocks), (5000, 5000, 1, 5000));
    }

    #[test]
    fn tampered_or_unordered_parts_are_refused() {
        let (manifest, parts) = write(10, 1);
        let (cid, mut bytes) = parts[0].clone();
        *bytes.last_mut().unwrap() ^= 1;
        assert!(matches!(Chunk::decode(&cid, &bytes), Err(SnapshotError::Cid(_))));
        let mut chunk = Chunk::decode(&parts[0].0, &parts[0].1).unwrap();
        chunk.elements.swap(0, 1);
        let (cid, bytes) = chunk.encode();
        assert!(matches!(Chunk::decode(&cid, &bytes), Err(SnapshotError::Invalid(_))));
        let (cid, bytes) = manifest.encode();
        assert!(Manifest::decode(&cid, &bytes[..bytes.len() - 1]).is_err());
        let later = Chunk { blocks: vec![(id(1), 1)], ..Chunk::default() };
        let earlier = Chunk { elements: chunk.elements.clone(), ..Chunk::default() };
        assert!(earlier.precedes(&later));
        assert!(!later.precedes(&earlier), "elements may not follow blocks");
    }
}
