//! The values the store, topic handles and writer threads pass around: heads, commits,
//! operations, changes, outcomes, and the state a topic's handles share with its writer thread.

use std::time::{SystemTime, UNIX_EPOCH};

use canopy_dag::{Cid, Height};
use serde::{Deserialize, Serialize};

/// A head of a topic: a block no other known block links to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Head {
    /// The head block.
    pub cid: Cid,
    /// Its height.
    pub height: Height,
}

/// The block a local write produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    /// CID of the new block.
    pub cid: Cid,
    /// Its height, the priority of every element it added.
    pub height: Height,
}

/// One operation of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set `key` to `value`.
    Put(Vec<u8>, Vec<u8>),
    /// Set `key` to `value` until the wall-clock time given in milliseconds since the Unix
    /// epoch: from then on every replica hides the value, as if deleted.
    PutUntil(Vec<u8>, Vec<u8>, u64),
    /// Remove every live element of `key` this replica knows.
    Delete(Vec<u8>),
    /// Add `n` (which may be negative) to the counter `key`. Counters live apart from plain
    /// keys: a key may be both. On its way to the writer thread the key becomes this store's
    /// entry of the counter.
    Add(Vec<u8>, i64),
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put(key, _) | Op::PutUntil(key, ..) | Op::Delete(key) | Op::Add(key, _) => key,
        }
    }

    /// The value a put writes; `None` for a delete or an addition.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            Op::Put(_, value) | Op::PutUntil(_, value, _) => Some(value),
            Op::Delete(_) | Op::Add(..) => None,
        }
    }

    /// Bytes of the value the operation leaves in its key's entry: a counter entry holds eight.
    pub fn value_bytes(&self) -> Option<usize> {
        match self {
            Op::Put(_, value) => Some(value.len()),
            Op::PutUntil(_, value, _) => Some(value.len() + 9),
            Op::Delete(_) => None,
            Op::Add(..) => Some(8),
        }
    }
}

/// A change of a key's visible value, as seen by watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// The new visible value; `None` when the key no longer exists.
    pub value: Option<Vec<u8>>,
    /// Height of the block that caused the change (for an expiry, of the element that
    /// expired).
    pub height: Height,
    /// The change is an expiry: the visible value's time ran out.
    pub expired: bool,
}

impl Change {
    /// The counter this change is about, when it is a change of a counter (its value is then
    /// one contributor's new total, not the counter's: read the counter for its sum).
    pub fn counter(&self) -> Option<Vec<u8>> {
        crate::counter::parse_entry(&self.key).map(|(key, _)| key)
    }

    /// The document this change is about, with the field, when it is a change of a document's
    /// field (its value is then the field's JSON text: read the document for all of it).
    pub fn doc(&self) -> Option<(Vec<u8>, String)> {
        crate::doc::parse_entry(&self.key)
    }
}

/// What happened to a batch of received blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// Blocks applied, including earlier ones that were waiting for these.
    pub applied: usize,
    /// Blocks refused, with the reason.
    pub rejected: Vec<(Cid, String)>,
    /// Blocks now waiting for their parents.
    pub pending: usize,
    /// Blocks of the batch that were applied already.
    pub duplicates: Vec<Cid>,
    /// Blocks refused because their author may not write the topic (they are also among
    /// `rejected`, with the reason).
    pub refused: usize,
    /// True when the heads changed.
    pub heads_changed: bool,
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compaction {
    /// The manifest of the snapshot written; `None` for a topic with no history yet.
    pub snapshot: Option<Cid>,
    /// The heads the snapshot was taken at.
    pub heads: Vec<Head>,
    /// Keys with a live value in the snapshot.
    pub keys: u64,
    /// Blocks the snapshot covers.
    pub blocks: u64,
    /// Blocks whose payload this compaction dropped.
    pub pruned_blocks: u64,
    /// Approximate bytes of the topic's records before, as RocksDB estimates them.
    pub bytes_before: u64,
    /// The same after the compaction and a compaction of the topic's RocksDB ranges.
    pub bytes_after: u64,
}

/// What a compaction of a topic's RocksDB ranges did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageCompaction {
    /// Approximate bytes of the topic's records before, memtables flushed.
    pub bytes_before: u64,
    /// The same after.
    pub bytes_after: u64,
}

/// What merging a snapshot did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeOutcome {
    /// The snapshot's manifest.
    pub snapshot: Cid,
    /// Live keys of the topic after the merge.
    pub keys: u64,
    /// Blocks the snapshot covers.
    pub blocks: u64,
    /// True when every block it covers was applied here already, so nothing changed.
    pub already_had: bool,
}

/// Where a topic's changes go: called on the writer thread for each change, it must not block;
/// it returns false once it wants no more changes, and is then dropped.
pub type Sink = Box<dyn FnMut(&Change) -> bool + Send>;

/// The snapshots a topic knows, as its writer thread last published them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshots {
    /// Manifests of the snapshots that cover every pruned block; a peer lacking pruned blocks
    /// is sent these.
    pub cover: Vec<Cid>,
    /// Heads of prunings not yet covered by a snapshot: every pruned block is below these or
    /// the cover's heads. A peer naming all of them as had holds every pruned block; one that
    /// lacks some waits while this replica makes a snapshot.
    pub frontier: Vec<Cid>,
    /// Manifests this replica made or merged, newest last (at most [`KNOWN_SNAPSHOTS_MAX`]), for
    /// operators; sync learns what a peer holds from the heads it names as had.
    pub known: Vec<Cid>,
}

/// Most snapshot manifests a topic remembers as made or merged.
pub const KNOWN_SNAPSHOTS_MAX: usize = 16;

/// Milliseconds since the Unix epoch, for the age of snapshot parts.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What the compaction thread is asked to do for a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Work {
    /// Its history grew past the policy's thresholds: prune it.
    Prune,
    /// A peer lacks blocks it pruned: make a snapshot to serve, unless one served covers them.
    Snapshot,
}
