use cid::Cid;
use multihash::Multihash;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Multicodec code of DAG-CBOR, the encoding of every block.
pub const CODEC_DAG_CBOR: u64 = 0x71;
/// Multihash code of BLAKE3-256, the hash that names every block.
pub const MULTIHASH_BLAKE3: u64 = 0x1e;
const DIGEST_BYTES: usize = 32;

/// Height of a block: 1 for a block without parents, else 1 + the largest parent height.
pub type Height = u64;

/// Largest encoded block any replica accepts, in bytes. A protocol constant: a node that made
/// a larger block would fork its topic, since no peer could apply it.
pub const BLOCK_BYTES_MAX: usize = 16 << 20;
/// Most parent links one block may carry; a protocol constant like [`BLOCK_BYTES_MAX`].
pub const LINKS_MAX: usize = 1024;

/// Bounds on what a decoded block may contain. Received blocks are always decoded under
/// [`BlockLimits::PROTOCOL`]; tighter limits exist for tests of the decoder.
#[derive(Clone, Debug)]
pub struct BlockLimits {
    /// Largest encoded block accepted, in bytes.
    pub block_bytes_max: usize,
    /// Most parent links one block may carry.
    pub links_max: usize,
}

impl BlockLimits {
    /// The limits every replica applies: [`BLOCK_BYTES_MAX`] and [`LINKS_MAX`].
    pub const PROTOCOL: BlockLimits = BlockLimits { block_bytes_max: BLOCK_BYTES_MAX, links_max: LINKS_MAX };
}

impl Default for BlockLimits {
    fn default() -> Self {
        BlockLimits::PROTOCOL
    }
}

/// Why a block was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockError {
    /// The encoded block is larger than the limit.
    #[error("block of {bytes} bytes exceeds block_bytes_max {max}")]
    TooLarge {
        /// Size of the encoded block.
        bytes: usize,
        /// The limit in force.
        max: usize,
    },
    /// The CID is not a CIDv1 of DAG-CBOR with a BLAKE3-256 multihash.
    #[error("unsupported cid {0}: blocks are CIDv1, DAG-CBOR, BLAKE3-256")]
    UnsupportedCid(String),
    /// The bytes do not hash to the CID they were sent under.
    #[error("block bytes do not hash to {0}")]
    HashMismatch(Cid),
    /// The bytes are not a DAG-CBOR block of the expected shape.
    #[error("malformed block: {0}")]
    Malformed(String),
    /// The bytes decode but are not the canonical encoding of what they contain.
    #[error("block is not canonically encoded")]
    NotCanonical,
    /// Links are not sorted and unique, or there are too many of them.
    #[error("invalid links: {0}")]
    InvalidLinks(String),
    /// The height does not fit the links (for example a block without parents above height 1).
    #[error("invalid height {height}: {reason}")]
    InvalidHeight {
        /// The height the block claims.
        height: Height,
        /// What is wrong with it.
        reason: String,
    },
}

/// The DAG-CBOR shape of a block. Field names are in canonical DAG-CBOR order (shorter first),
/// and the encoder sorts map keys anyway.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBlock {
    links: Vec<Cid>,
    height: u64,
    payload: ByteBuf,
}

/// An immutable, validated DAG node: sorted unique links, a height and an opaque payload.
///
/// A `Block` exists only when its bytes are the canonical encoding of its content and hash to
/// its CID: [`Block::build`] makes one from content, [`Block::decode`] checks received bytes.
/// Whether the height matches the parents' heights is checked where the parents are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    cid: Cid,
    height: Height,
    links: Vec<Cid>,
    payload: Vec<u8>,
    bytes: Vec<u8>,
}

impl Block {
    /// Builds a block from its parents, height and payload; links are sorted and deduplicated
    /// so that equal content always gives an equal CID. A block that every peer would refuse
    /// (more than [`LINKS_MAX`] links, more than [`BLOCK_BYTES_MAX`] bytes) is never built.
    pub fn build(mut links: Vec<Cid>, height: Height, payload: Vec<u8>) -> Result<Block, BlockError> {
        links.sort_unstable();
        links.dedup();
        check_height(height, links.len())?;
        if links.len() > LINKS_MAX {
            return Err(BlockError::InvalidLinks(format!("{} links exceed links_max {LINKS_MAX}", links.len())));
        }
        let wire = WireBlock { links, height, payload: ByteBuf::from(payload) };
        let bytes = serde_ipld_dagcbor::to_vec(&wire).map_err(|e| BlockError::Malformed(e.to_string()))?;
        if bytes.len() > BLOCK_BYTES_MAX {
            return Err(BlockError::TooLarge { bytes: bytes.len(), max: BLOCK_BYTES_MAX });
        }
        let cid = cid_of(&bytes);
        Ok(Block { cid, height, links: wire.links, payload: wire.payload.into_vec(), bytes })
    }

    /// Decodes and validates received bytes named by `cid`.
    ///
    /// Checks, in order: size, CID format, hash, DAG-CBOR shape, canonical encoding, link
    /// format, order and count, and that the height fits the number of links.
    pub fn decode(cid: Cid, bytes: &[u8], limits: &BlockLimits) -> Result<Block, BlockError> {
        if bytes.len() > limits.block_bytes_max {
            return Err(BlockError::TooLarge { bytes: bytes.len(), max: limits.block_bytes_max });
        }
        check_cid(&cid)?;
        if cid_of(bytes) != cid {
            return Err(BlockError::HashMismatch(cid));
        }
        let wire: WireBlock =
            serde_ipld_dagcbor::from_slice(bytes).map_err(|e| BlockError::Malformed(e.to_string()))?;
        let reencoded = serde_ipld_dagcbor::to_vec(&wire).map_err(|e| BlockError::Malformed(e.to_string()))?;
        if reencoded != bytes {
            return Err(BlockError::NotCanonical);
        }
        if wire.links.len() > limits.links_max {
            return Err(BlockError::InvalidLinks(format!(
                "{} links exceed links_max {}",
                wire.links.len(),
                limits.links_max
            )));
        }
        for link in &wire.links {
            check_cid(link).map_err(|e| BlockError::InvalidLinks(e.to_string()))?;
        }
        if wire.links.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(BlockError::InvalidLinks("links are not sorted and unique".into()));
        }
        if wire.links.contains(&cid) {
            return Err(BlockError::InvalidLinks("block links to itself".into()));
        }
        check_height(wire.height, wire.links.len())?;
        Ok(Block {
            cid,
            height: wire.height,
            links: wire.links,
            payload: wire.payload.into_vec(),
            bytes: bytes.to_vec(),
        })
    }

    /// The block's CID.
    pub fn cid(&self) -> Cid {
        self.cid
    }

    /// The height the block claims.
    pub fn height(&self) -> Height {
        self.height
    }

    /// Parent CIDs, sorted and unique.
    pub fn links(&self) -> &[Cid] {
        &self.links
    }

    /// The opaque payload (for canopy, an encoded delta).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The canonical encoded bytes the CID names.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Gives up the encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// The CID of encoded block bytes: CIDv1, DAG-CBOR, BLAKE3-256.
/// The CID naming `bytes`: CIDv1, DAG-CBOR, BLAKE3-256, as for every block. Snapshot parts
/// and other content-addressed records are named the same way.
pub fn cid_of(bytes: &[u8]) -> Cid {
    let digest = blake3::hash(bytes);
    let hash = Multihash::<64>::wrap(MULTIHASH_BLAKE3, digest.as_bytes())
        .expect("a 32-byte digest always fits a 64-byte multihash");
    Cid::new_v1(CODEC_DAG_CBOR, hash)
}

/// Checks that `cid` has the one format canopy names content with (CIDv1, DAG-CBOR,
/// BLAKE3-256).
pub fn check_cid(cid: &Cid) -> Result<(), BlockError> {
    let supported = cid.version() == cid::Version::V1
        && cid.codec() == CODEC_DAG_CBOR
        && cid.hash().code() == MULTIHASH_BLAKE3
        && cid.hash().size() as usize == DIGEST_BYTES;
    if supported { Ok(()) } else { Err(BlockError::UnsupportedCid(cid.to_string())) }
}

fn check_height(height: Height, links: usize) -> Result<(), BlockError> {
    match (links, height) {
        (0, 1) => Ok(()),
        (0, _) => Err(BlockError::InvalidHeight { height, reason: "a block without parents has height 1".into() }),
        (_, 0..=1) => {
            Err(BlockError::InvalidHeight { height, reason: "a block with parents is above height 1".into() })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BlockLimits {
        BlockLimits::default()
    }

    #[test]
    fn built_block_decodes_to_itself() {
        let root = Block::build(vec![], 1, b"root".to_vec()).unwrap();
        let child = Block::build(vec![root.cid()], 2, b"child".to_vec()).unwrap();
        let decoded = Block::decode(child.cid(), child.bytes(), &limits()).unwrap();
        assert_eq!(decoded, child);
        assert_eq!(decoded.links(), &[root.cid()]);
    }

    #[test]
    fn equal_content_gives_equal_cid_whatever_the_link_order() {
        let a = Block::build(vec![], 1, b"a".to_vec()).unwrap();
        let b = Block::build(vec![], 1, b"b".to_vec()).unwrap();
        let x = Block::build(vec![a.cid(), b.cid()], 2, vec![]).unwrap();
        let y = Block::build(vec![b.cid(), a.cid(), b.cid()], 2, vec![]).unwrap();
        assert_eq!(x.cid(), y.cid());
        assert_eq!(x.links().len(), 2);
    }

    #[test]
    fn cid_is_v1_dag_cbor_blake3() {
        let block = Block::build(vec![], 1, vec![]).unwrap();
        let cid = block.cid();
        assert_eq!(cid.version(), cid::Version::V1);
        assert_eq!(cid.codec(), 0x71);
        assert_eq!(cid.hash().code(), 0x1e);
        assert_eq!(cid.hash().digest(), blake3::hash(block.bytes()).as_bytes());
        assert!(cid.to_string().starts_with('b'), "CIDv1 prints in base32: {cid}");
    }

    #[test]
    fn tampered_bytes_are_rejected() {
        let block = Block::build(vec![], 1, b"payload".to_vec()).unwrap();
        let mut bytes = block.bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(Block::decode(block.cid(), &bytes, &limits()), Err(BlockError::HashMismatch(block.cid())));
    }

    #[test]
    fn wrong_heights_are_rejected() {
        assert!(matches!(Block::build(vec![], 2, vec![]), Err(BlockError::InvalidHeight { .. })));
        let root = Block::build(vec![], 1, vec![]).unwrap();
        assert!(matches!(Block::build(vec![root.cid()], 1, vec![]), Err(BlockError::InvalidHeight { .. })));
    }

    #[test]
    fn blocks_no_peer_would_accept_are_never_built() {
        let parents: Vec<Cid> =
            (0..=LINKS_MAX as u32).map(|i| Block::build(vec![], 1, i.to_be_bytes().to_vec()).unwrap().cid()).collect();
        assert!(matches!(Block::build(parents.clone(), 2, vec![]), Err(BlockError::InvalidLinks(_))));
        assert!(Block::build(parents[..LINKS_MAX].to_vec(), 2, vec![]).is_ok());
        assert!(matches!(Block::build(vec![], 1, vec![0; BLOCK_BYTES_MAX]), Err(BlockError::TooLarge { .. })));
    }

    #[test]
    fn oversized_blocks_are_rejected_before_hashing() {
        let block = Block::build(vec![], 1, vec![7; 100]).unwrap();
        let small = BlockLimits { block_bytes_max: 50, ..limits() };
        assert!(matches!(Block::decode(block.cid(), block.bytes(), &small), Err(BlockError::TooLarge { .. })));
    }

    #[test]
    fn unsorted_links_are_rejected_even_with_a_matching_hash() {
        let a = Block::build(vec![], 1, b"a".to_vec()).unwrap();
        let b = Block::build(vec![], 1, b"b".to_vec()).unwrap();
        let mut links = vec![a.cid(), b.cid()];
        links.sort();
        links.reverse();
        let wire = WireBlock { links, height: 2, payload: ByteBuf::new() };
        let bytes = serde_ipld_dagcbor::to_vec(&wire).unwrap();
        let result = Block::decode(cid_of(&bytes), &bytes, &limits());
        assert!(matches!(result, Err(BlockError::InvalidLinks(_))), "{result:?}");
    }

    #[test]
    fn foreign_cids_are_rejected() {
        let block = Block::build(vec![], 1, vec![]).unwrap();
        let sha = Multihash::<64>::wrap(0x12, &[0; 32]).unwrap();
        let foreign = Cid::new_v1(CODEC_DAG_CBOR, sha);
        assert!(matches!(Block::decode(foreign, block.bytes(), &limits()), Err(BlockError::UnsupportedCid(_))));
    }
}
