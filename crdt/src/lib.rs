//! The add-wins key-value Merkle-CRDT at the heart of canopy.
//!
//! A [`Store`] holds many topics in one RocksDB. Each [`Topic`] is an independent replicated
//! key-value space: local writes become DAG blocks carrying a [`Delta`]; received blocks are
//! applied in causal order once their ancestry is complete. The [`sync`] module turns events
//! (local commits, announced heads, received blocks) into effects (announcements, requests,
//! responses) without doing any network I/O, so the node and the simulator run the same code.

mod access;
mod compaction;
mod compactor;
pub mod counter;
mod delta;
pub mod doc;
mod doc_row;
mod error;
mod expiry;
mod history;
pub mod index;
mod index_journal;
mod inner;
pub mod inspect;
mod key_filter;
mod options;
pub mod repair;
mod reserved;
mod row;
mod row_change;
mod schema;
mod serving;
mod shared;
pub mod sim;
pub mod snapshot;
mod store;
pub mod sync;
mod topic;
mod topic_docs;
mod topic_index;
mod types;
mod writer;
mod writer_list;

pub use access::{Access, Mode, Refusal};
pub use canopy_dag::{
    AuthorId, BLOCK_BYTES_MAX, Block, BlockLimits, Cid, Height, LINKS_MAX, Signer, TopicId, Walk, WalkLimits,
};
pub use expiry::Clock;
pub use history::Version;
pub use key_filter::KeyFilterState;
pub use writer_list::WriterList;

/// Hash-checks, decodes and verifies the signatures of received blocks of `topic` in parallel
/// under the protocol's limits.
pub fn validate_blocks(topic: &str, items: Vec<(Cid, Vec<u8>)>) -> Vec<Result<Block, canopy_dag::BlockError>> {
    canopy_dag::validate_batch(topic, items, &BlockLimits::PROTOCOL)
}
pub use access::validate_topic_name;
pub use delta::{DELTA_OPS_MAX, Delta, DeltaError, KEY_BYTES_MAX, Limits, VALUE_BYTES_MAX};
pub use error::{CompactError, IngestError, MergeError, OpenError, ReadError, StorageError, TopicError, WriteError};
pub use index::{IndexDef, IndexKind, IndexStatus};
pub use options::StoreOptions;
pub use schema::{FAMILIES, TOPIC_NAME_BYTES_MAX};
pub use store::Store;
pub use topic::{Batch, Ingesting, Page, Topic};
pub use topic_docs::{DocPage, DocWrite, Fields};
pub use topic_index::{IndexRecord, IndexScan};
pub use types::{
    Change, Commit, Compaction, Head, IngestOutcome, KNOWN_SNAPSHOTS_MAX, MergeOutcome, Op, Sink, Snapshots,
    StorageCompaction,
};
