//! The engine's errors: storage, topics, writes, reads, ingest, compaction, merges, refusals.

use canopy_dag::{BlockError, StoreError};

/// A storage failure underneath an operation.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored record does not decode; the data directory is damaged.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A part of the store needed for the request is not running (a snapshot's thread).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for StorageError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Rocks(e) => StorageError::Rocks(e),
            other => StorageError::Corrupt(other.to_string()),
        }
    }
}

/// Failure to open a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The database could not be opened or read.
    #[error("cannot open the data directory: {0}")]
    Storage(#[from] StorageError),
    /// Another process has the data directory open (RocksDB's lock on it is held).
    #[error("the data directory is in use by another process ({0}): stop it first, or use another directory")]
    InUse(String),
    /// An option is out of range.
    #[error("invalid store option: {0}")]
    InvalidOptions(String),
    /// A writer thread could not be started.
    #[error("cannot start writer thread: {0}")]
    Thread(std::io::Error),
    /// The data directory was written in a format this version does not read.
    #[error(
        "the data directory holds format {found}, this canopy reads format {expected} \
         (format 2 signs every block, and unsigned history cannot be carried over): read the \
         keys out with the canopy that wrote it and write them into a new data directory"
    )]
    Format {
        /// The format found.
        found: u32,
        /// The format this version reads and writes.
        expected: u32,
    },
}

impl From<rocksdb::Error> for OpenError {
    fn from(error: rocksdb::Error) -> Self {
        // RocksDB locks a directory it opens for writing; a second opener fails on the lock.
        if error.kind() == rocksdb::ErrorKind::IOError && error.as_ref().contains("lock file") {
            return OpenError::InUse(error.into_string());
        }
        OpenError::Storage(StorageError::Rocks(error))
    }
}

/// Failure to open or drop a topic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The name breaks the topic naming rules.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// The rule it breaks.
        reason: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An earlier storage failure stopped writes.
    #[error("the store stopped accepting writes after a storage failure: restart the node")]
    Poisoned,
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
}

/// Failure of a local write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A key is empty or too long.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A value is too large.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// The batch holds more operations than allowed.
    #[error("batch of {ops} operations exceeds delta_ops_max {max}")]
    TooManyOps {
        /// Operations in the batch.
        ops: usize,
        /// The limit in force.
        max: usize,
    },
    /// The batch would not fit one block that every peer accepts; split it into smaller batches.
    #[error("batch of about {bytes} bytes exceeds the {max} bytes one block carries: split it into smaller batches")]
    TooLarge {
        /// Estimated encoded size of the batch's delta.
        bytes: usize,
        /// The most one block carries.
        max: usize,
    },
    /// This store's author may not write the topic.
    #[error("write refused: {0}")]
    Forbidden(#[from] Refusal),
    /// The block could not be built.
    #[error("cannot build block: {0}")]
    Block(#[from] BlockError),
    /// Storage failed; the store now refuses writes.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An earlier storage failure stopped writes.
    #[error("the store stopped accepting writes after a storage failure: restart the node")]
    Poisoned,
    /// The topic was dropped.
    #[error("topic was dropped")]
    TopicDropped,
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
}

/// Failure of a read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<rocksdb::Error> for ReadError {
    fn from(error: rocksdb::Error) -> Self {
        ReadError::Storage(StorageError::Rocks(error))
    }
}

/// Failure to take in received blocks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Storage failed; the store now refuses writes.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// An earlier storage failure stopped writes.
    #[error("the store stopped accepting writes after a storage failure: restart the node")]
    Poisoned,
    /// The topic was dropped.
    #[error("topic was dropped")]
    TopicDropped,
    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
}

/// Failure to compact a topic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactError {
    /// The topic was dropped, or the store is closed or poisoned.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// RocksDB failed; the topic stays readable and a later compaction starts again.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A topic with a writer list is compacted by its owner's node alone: a snapshot made
    /// elsewhere could prune writes the owner never received, and peers take such a topic's
    /// snapshots from the owner only.
    #[error("only the owner {owner} compacts a topic with a writer list")]
    NotListOwner {
        /// The topic's owner.
        owner: canopy_dag::AuthorId,
    },
}

/// Failure to merge a snapshot into a topic.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// The topic was dropped, or the store is closed or poisoned.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// RocksDB failed; an interrupted merge resumes when the topic loads.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Parts of the snapshot are not staged yet.
    #[error("{0} parts of the snapshot are not staged")]
    Missing(usize),
    /// The snapshot is not valid for this topic; nothing was changed.
    #[error(transparent)]
    Invalid(#[from] SnapshotError),
}

/// Why an author may not write a topic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The topic is owned and the author is not its owner.
    #[error("author {author} may not write this topic: it is owned by {owner}, and only its owner writes it")]
    NotOwner {
        /// Who tried to write.
        author: canopy_dag::AuthorId,
        /// The topic's owner.
        owner: canopy_dag::AuthorId,
    },
    /// The author is not on the topic's writer list where the block was made.
    #[error("author {author} may not write this topic: it is not on the writer list {owner} keeps")]
    NotWriter {
        /// Who tried to write.
        author: canopy_dag::AuthorId,
        /// The topic's owner, who keeps the list.
        owner: canopy_dag::AuthorId,
    },
    /// Someone other than the owner tried to change the writer list.
    #[error("author {author} may not change the writer list of this topic: only its owner {owner} does")]
    NotListOwner {
        /// Who tried to change the list.
        author: canopy_dag::AuthorId,
        /// The topic's owner.
        owner: canopy_dag::AuthorId,
    },
    /// In a keyed topic, an author wrote a key that does not name it.
    #[error(
        "author {author} may not write key {key:?}: in a keyed topic each author writes only keys naming it \
             (its peer id, alone or followed by /)"
    )]
    NotKeyOwner {
        /// Who tried to write.
        author: canopy_dag::AuthorId,
        /// The key.
        key: String,
    },
    /// A topic without a writer list received a change of one.
    #[error("this topic has no writer list: only topics created with mode writers have one")]
    NoWriterList,
}

/// Why snapshot bytes were refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes are not named by the CID they came under, or the CID has the wrong format.
    #[error(transparent)]
    Cid(#[from] canopy_dag::BlockError),
    /// Not a snapshot part of the expected shape.
    #[error("malformed snapshot part: {0}")]
    Malformed(String),
    /// Well-formed but breaks a rule of the format (order, limits, counts).
    #[error("invalid snapshot: {0}")]
    Invalid(String),
}
