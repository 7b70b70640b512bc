//! A block: one signed DAG node, encoded as DAG-CBOR and named by the CIDv1 of its BLAKE3 hash.

use cid::Cid;
use multihash::Multihash;
use serde::{Deserialize, Serialize};
use serde_bytes::{ByteBuf, Bytes};

use crate::author::{AUTHOR_BYTES, AuthorId, SIGNATURE_BYTES, Signer, signing_hasher, verifying_key};
use crate::cbor::{Encoder, Sink};
use crate::verify::{Claim, verify_all};

/// Multicodec code of DAG-CBOR, the encoding of every block.
pub const CODEC_DAG_CBOR: u64 = 0x71;
/// Multihash code of BLAKE3-256, the hash that names every block.
pub const MULTIHASH_BLAKE3: u64 = 0x1e;
/// Bytes of the BLAKE3-256 digest every CID canopy makes carries.
pub const DIGEST_BYTES: usize = 32;

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
    /// The author field is not an ed25519 public key.
    #[error("block {0} names no valid author key")]
    InvalidAuthor(Cid),
    /// The signature is not the author's signature of the block's content for this topic.
    #[error("block {0} is not signed by its author for this topic")]
    BadSignature(Cid),
}

/// The DAG-CBOR shape of a block. Field names are in canonical DAG-CBOR order (shorter first,
/// then bytewise), and the encoder sorts map keys anyway.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBlock {
    links: Vec<Cid>,
    author: ByteBuf,
    height: u64,
    payload: ByteBuf,
    signature: ByteBuf,
}

/// What the author signs: the block without its signature, bound to the topic by
/// [`signing_hasher`].
#[derive(Serialize)]
struct Unsigned<'a> {
    links: &'a [Cid],
    author: &'a Bytes,
    height: u64,
    payload: &'a Bytes,
}

impl Unsigned<'_> {
    /// Encoded straight into the hasher: the payload is not copied again.
    fn digest(&self, topic: &str) -> [u8; 32] {
        let mut encoder = Encoder::new(signing_hasher(topic));
        self.write(&mut encoder, None);
        *encoder.into_inner().finalize().as_bytes()
    }

    /// Writes the block's encoding: what serde gives for [`Unsigned`], or with `signature` for
    /// [`WireBlock`], without copying the payload into a map buffer first.
    fn write<S: Sink>(&self, encoder: &mut Encoder<S>, signature: Option<&[u8]>) {
        encoder.map(4 + usize::from(signature.is_some())).text("links").array(self.links.len());
        for link in self.links {
            encoder.cid(link);
        }
        encoder.text("author").bytes(self.author).text("height").u64(self.height);
        encoder.text("payload").bytes(self.payload);
        if let Some(signature) = signature {
            encoder.text("signature").bytes(signature);
        }
    }
}

/// An immutable, validated DAG node: sorted unique links, a height, an opaque payload, and the
/// author who signed it for its topic.
///
/// A `Block` exists only when its bytes are the canonical encoding of its content, hash to its
/// CID and carry a valid signature of its author for the topic it was built or decoded for:
/// [`Block::build`] makes one from content, [`Block::decode`] checks received bytes. Whether the
/// height matches the parents' heights, and whether the author may write the topic, is checked
/// where the parents and the topic's rule are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    cid: Cid,
    height: Height,
    links: Vec<Cid>,
    payload: Vec<u8>,
    author: AuthorId,
    bytes: Vec<u8>,
}

impl Block {
    /// Builds a block of `topic` from its parents, height and payload, signed by `signer`;
    /// links are sorted and deduplicated so that equal content by the same author always gives
    /// an equal CID (ed25519 signatures are deterministic). A block that every peer would refuse
    /// (more than [`LINKS_MAX`] links, more than [`BLOCK_BYTES_MAX`] bytes) is never built.
    pub fn build(
        topic: &str,
        mut links: Vec<Cid>,
        height: Height,
        payload: Vec<u8>,
        signer: &Signer,
    ) -> Result<Block, BlockError> {
        links.sort_unstable();
        links.dedup();
        check_height(height, links.len())?;
        if links.len() > LINKS_MAX {
            return Err(BlockError::InvalidLinks(format!("{} links exceed links_max {LINKS_MAX}", links.len())));
        }
        let author = signer.author();
        let unsigned =
            Unsigned { links: &links, author: Bytes::new(author.as_bytes()), height, payload: Bytes::new(&payload) };
        let signature = signer.sign(&unsigned.digest(topic));
        // Room for the payload, the links, the author, the signature and the map's keys.
        let capacity = payload.len() + links.len() * 48 + AUTHOR_BYTES + SIGNATURE_BYTES + 64;
        let mut encoder = Encoder::new(Vec::with_capacity(capacity));
        unsigned.write(&mut encoder, Some(&signature));
        let bytes = encoder.into_inner();
        if bytes.len() > BLOCK_BYTES_MAX {
            return Err(BlockError::TooLarge { bytes: bytes.len(), max: BLOCK_BYTES_MAX });
        }
        let cid = cid_of(&bytes);
        Ok(Block { cid, height, links, payload, author, bytes })
    }

    /// Decodes and validates received bytes of `topic` named by `cid`.
    ///
    /// Checks, in order: size, CID format, hash, DAG-CBOR shape, canonical encoding, link
    /// format, order and count, that the height fits the number of links, and last (it costs
    /// the most) the author's signature.
    pub fn decode(topic: &str, cid: Cid, bytes: &[u8], limits: &BlockLimits) -> Result<Block, BlockError> {
        let (block, claim) = Block::decode_unverified(topic, cid, bytes, limits)?;
        if verify_all(&[claim]) == [true] { Ok(block) } else { Err(BlockError::BadSignature(cid)) }
    }

    /// Everything [`Block::decode`] checks but the signature, which is returned to check, alone
    /// or in a batch with others.
    pub(crate) fn decode_unverified(
        topic: &str,
        cid: Cid,
        bytes: &[u8],
        limits: &BlockLimits,
    ) -> Result<(Block, Claim), BlockError> {
        if bytes.len() > limits.block_bytes_max {
            return Err(BlockError::TooLarge { bytes: bytes.len(), max: limits.block_bytes_max });
        }
        check_cid(&cid)?;
        if cid_of(bytes) != cid {
            return Err(BlockError::HashMismatch(cid));
        }
        let wire: WireBlock =
            serde_ipld_dagcbor::from_slice(bytes).map_err(|e| BlockError::Malformed(e.to_string()))?;
        let unsigned = Unsigned {
            links: &wire.links,
            author: Bytes::new(&wire.author),
            height: wire.height,
            payload: Bytes::new(&wire.payload),
        };
        let mut reencoded = Encoder::new(Vec::with_capacity(bytes.len()));
        unsigned.write(&mut reencoded, Some(&wire.signature));
        if reencoded.into_inner() != bytes {
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
        let author_bytes: [u8; AUTHOR_BYTES] =
            wire.author.as_slice().try_into().map_err(|_| BlockError::InvalidAuthor(cid))?;
        let key = verifying_key(&author_bytes).ok_or(BlockError::InvalidAuthor(cid))?;
        let author = AuthorId::from_verified(author_bytes);
        let signature: [u8; SIGNATURE_BYTES] =
            wire.signature.as_slice().try_into().map_err(|_| BlockError::BadSignature(cid))?;
        let claim = Claim { key, digest: unsigned.digest(topic), signature };
        let block = Block {
            cid,
            height: wire.height,
            links: wire.links,
            payload: wire.payload.into_vec(),
            author,
            bytes: bytes.to_vec(),
        };
        Ok((block, claim))
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

    /// The author who signed the block.
    pub fn author(&self) -> AuthorId {
        self.author
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
    cid_of_digest(blake3::hash(bytes).as_bytes())
}

/// The CID canopy names content with whose BLAKE3-256 digest is `digest`: what a record that
/// keeps only the digest of a block's CID reads back.
pub fn cid_of_digest(digest: &[u8; DIGEST_BYTES]) -> Cid {
    let hash =
        Multihash::<64>::wrap(MULTIHASH_BLAKE3, digest).expect("a 32-byte digest always fits a 64-byte multihash");
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

    const TOPIC: &str = "t";

    fn limits() -> BlockLimits {
        BlockLimits::default()
    }

    fn signer() -> Signer {
        Signer::from_secret([7; 32])
    }

    fn build(links: Vec<Cid>, height: Height, payload: Vec<u8>) -> Result<Block, BlockError> {
        Block::build(TOPIC, links, height, payload, &signer())
    }

    fn decode(cid: Cid, bytes: &[u8], limits: &BlockLimits) -> Result<Block, BlockError> {
        Block::decode(TOPIC, cid, bytes, limits)
    }

    fn wire(block: &Block) -> WireBlock {
        serde_ipld_dagcbor::from_slice(block.bytes()).unwrap()
    }

    fn encode(wire: &WireBlock) -> (Cid, Vec<u8>) {
        let bytes = serde_ipld_dagcbor::to_vec(wire).unwrap();
        (cid_of(&bytes), bytes)
    }

    #[test]
    fn the_digest_written_into_the_hasher_is_the_digest_of_the_encoded_bytes() {
        let block = build(vec![], 1, b"post".to_vec()).unwrap();
        let wire = wire(&block);
        let unsigned = Unsigned {
            links: &wire.links,
            author: Bytes::new(&wire.author),
            height: 1,
            payload: Bytes::new(&wire.payload),
        };
        let bytes = serde_ipld_dagcbor::to_vec(&unsigned).unwrap();
        assert_eq!(unsigned.digest(TOPIC), crate::author::signing_digest(TOPIC, &bytes));
    }

    #[test]
    fn a_built_block_is_encoded_as_serde_encodes_its_fields() {
        let parents: Vec<Cid> = (0..3u8).map(|n| cid_of(&[n])).collect();
        for links in [0, 1, 3] {
            for payload in [0, 23, 24, 255, 256, 70_000] {
                let height = if links == 0 { 1 } else { 2 };
                let block = build(parents[..links].to_vec(), height, vec![9; payload]).unwrap();
                let wire = WireBlock {
                    links: block.links().to_vec(),
                    author: ByteBuf::from(block.author().as_bytes().to_vec()),
                    height,
                    payload: ByteBuf::from(block.payload().to_vec()),
                    signature: wire(&block).signature,
                };
                assert_eq!(block.bytes(), encode(&wire).1, "{links} links, {payload} bytes of payload");
            }
        }
    }

    #[test]
    fn blocks_carry_their_author_and_verify_only_for_their_topic() {
        let block = build(vec![], 1, b"post".to_vec()).unwrap();
        assert_eq!(block.author(), signer().author());
        assert_eq!(decode(block.cid(), block.bytes(), &limits()).unwrap().author(), signer().author());
        assert_eq!(
            Block::decode("other", block.cid(), block.bytes(), &limits()),
            Err(BlockError::BadSignature(block.cid()))
        );
        let other = Block::build(TOPIC, vec![], 1, b"post".to_vec(), &Signer::from_secret([8; 32])).unwrap();
        assert_ne!(other.cid(), block.cid(), "the same content by another author is another block");
    }

    #[test]
    fn forged_stripped_and_reattributed_signatures_are_rejected() {
        let block = build(vec![], 1, b"post".to_vec()).unwrap();
        let mut forged = wire(&block);
        forged.signature[0] ^= 1;
        let (cid, bytes) = encode(&forged);
        assert_eq!(decode(cid, &bytes, &limits()), Err(BlockError::BadSignature(cid)));

        let mut stripped = wire(&block);
        stripped.signature = ByteBuf::new();
        let (cid, bytes) = encode(&stripped);
        assert_eq!(decode(cid, &bytes, &limits()), Err(BlockError::BadSignature(cid)));

        let mut reattributed = wire(&block);
        reattributed.author = ByteBuf::from(Signer::from_secret([9; 32]).author().as_bytes().to_vec());
        let (cid, bytes) = encode(&reattributed);
        assert_eq!(decode(cid, &bytes, &limits()), Err(BlockError::BadSignature(cid)));

        let mut no_key = wire(&block);
        no_key.author = ByteBuf::from(vec![1; 31]);
        let (cid, bytes) = encode(&no_key);
        assert_eq!(decode(cid, &bytes, &limits()), Err(BlockError::InvalidAuthor(cid)));

        let mut payload = wire(&block);
        payload.payload = ByteBuf::from(b"edited".to_vec());
        let (cid, bytes) = encode(&payload);
        assert_eq!(decode(cid, &bytes, &limits()), Err(BlockError::BadSignature(cid)));
    }

    #[test]
    fn built_block_decodes_to_itself() {
        let root = build(vec![], 1, b"root".to_vec()).unwrap();
        let child = build(vec![root.cid()], 2, b"child".to_vec()).unwrap();
        let decoded = decode(child.cid(), child.bytes(), &limits()).unwrap();
        assert_eq!(decoded, child);
        assert_eq!(decoded.links(), &[root.cid()]);
    }

    #[test]
    fn equal_content_gives_equal_cid_whatever_the_link_order() {
        let a = build(vec![], 1, b"a".to_vec()).unwrap();
        let b = build(vec![], 1, b"b".to_vec()).unwrap();
        let x = build(vec![a.cid(), b.cid()], 2, vec![]).unwrap();
        let y = build(vec![b.cid(), a.cid(), b.cid()], 2, vec![]).unwrap();
        assert_eq!(x.cid(), y.cid());
        assert_eq!(x.links().len(), 2);
    }

    #[test]
    fn cid_is_v1_dag_cbor_blake3() {
        let block = build(vec![], 1, vec![]).unwrap();
        let cid = block.cid();
        assert_eq!(cid.version(), cid::Version::V1);
        assert_eq!(cid.codec(), 0x71);
        assert_eq!(cid.hash().code(), 0x1e);
        assert_eq!(cid.hash().digest(), blake3::hash(block.bytes()).as_bytes());
        assert!(cid.to_string().starts_with('b'), "CIDv1 prints in base32: {cid}");
    }

    #[test]
    fn tampered_bytes_are_rejected() {
        let block = build(vec![], 1, b"payload".to_vec()).unwrap();
        let mut bytes = block.bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(decode(block.cid(), &bytes, &limits()), Err(BlockError::HashMismatch(block.cid())));
    }

    #[test]
    fn wrong_heights_are_rejected() {
        assert!(matches!(build(vec![], 2, vec![]), Err(BlockError::InvalidHeight { .. })));
        let root = build(vec![], 1, vec![]).unwrap();
        assert!(matches!(build(vec![root.cid()], 1, vec![]), Err(BlockError::InvalidHeight { .. })));
    }

    #[test]
    fn blocks_no_peer_would_accept_are_never_built() {
        let parents: Vec<Cid> =
            (0..=LINKS_MAX as u32).map(|i| build(vec![], 1, i.to_be_bytes().to_vec()).unwrap().cid()).collect();
        assert!(matches!(build(parents.clone(), 2, vec![]), Err(BlockError::InvalidLinks(_))));
        assert!(build(parents[..LINKS_MAX].to_vec(), 2, vec![]).is_ok());
        assert!(matches!(build(vec![], 1, vec![0; BLOCK_BYTES_MAX]), Err(BlockError::TooLarge { .. })));
    }

    #[test]
    fn oversized_blocks_are_rejected_before_hashing() {
        let block = build(vec![], 1, vec![7; 100]).unwrap();
        let small = BlockLimits { block_bytes_max: 50, ..limits() };
        assert!(matches!(decode(block.cid(), block.bytes(), &small), Err(BlockError::TooLarge { .. })));
    }

    #[test]
    fn unsorted_links_are_rejected_even_with_a_matching_hash() {
        let a = build(vec![], 1, b"a".to_vec()).unwrap();
        let b = build(vec![], 1, b"b".to_vec()).unwrap();
        let mut links = vec![a.cid(), b.cid()];
        links.sort();
        links.reverse();
        let mut unsorted = wire(&build(vec![a.cid(), b.cid()], 2, vec![]).unwrap());
        unsorted.links = links;
        let (cid, bytes) = encode(&unsorted);
        let result = decode(cid, &bytes, &limits());
        assert!(matches!(result, Err(BlockError::InvalidLinks(_))), "{result:?}");
    }

    #[test]
    fn foreign_cids_are_rejected() {
        let block = build(vec![], 1, vec![]).unwrap();
        let sha = Multihash::<64>::wrap(0x12, &[0; 32]).unwrap();
        let foreign = Cid::new_v1(CODEC_DAG_CBOR, sha);
        assert!(matches!(decode(foreign, block.bytes(), &limits()), Err(BlockError::UnsupportedCid(_))));
    }
}
