//! Content-addressed DAG blocks for canopy.
//!
//! A [`Block`] is an immutable DAG node: sorted links to its parents, its height, an opaque
//! payload and its author's ed25519 signature, encoded as DAG-CBOR and named by a CIDv1 whose
//! multihash is BLAKE3-256. This crate
//! encodes, decodes and validates blocks, stores them in a RocksDB column family under
//! topic-prefixed keys, and walks the DAG with explicit queues. It knows nothing of key-value
//! semantics or networking.

mod author;
mod block;
pub mod cbor;
mod store;
mod topic;
mod validate;
mod verify;
mod walk;

pub use author::{AUTHOR_BYTES, AuthorError, AuthorId, SIGNATURE_BYTES, Signer};
pub use block::{
    BLOCK_BYTES_MAX, Block, BlockError, BlockLimits, CODEC_DAG_CBOR, DIGEST_BYTES, Height, LINKS_MAX, MULTIHASH_BLAKE3,
    check_cid, cid_of, cid_of_digest,
};
pub use cid::Cid;
pub use store::{BlockMeta, BlockStore, CF_BLOCKS, CF_INDEX, StoreError};
pub use topic::{TOPIC_ID_BYTES, TopicId};
pub use validate::validate_batch;
pub use walk::{Walk, WalkLimits, sample_ancestors, walk_missing};
