//! What a topic's handles and its writer thread share: its identity and access rule, and the
//! state the writer thread publishes (heads, key count, snapshots) for readers.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};

use canopy_dag::{Height, TopicId};

use crate::serving::Serving;
use crate::types::{Head, Sink, Snapshots};

/// What the writer thread and topic handles share about one topic.
pub(crate) struct TopicShared {
    pub id: TopicId,
    pub name: String,
    /// Who may write the topic, read from its name.
    pub access: crate::access::Access,
    pub heads: RwLock<Vec<Head>>,
    pub key_count: AtomicU64,
    pub pending_count: AtomicU64,
    pub watchers: Mutex<Vec<Sink>>,
    pub dropped: AtomicBool,
    pub snapshots: RwLock<Snapshots>,
    /// Held while the topic compacts: one compaction at a time.
    pub compacting: Mutex<()>,
    /// The snapshot this replica serves, made from a view of its rows, if any.
    pub serving: Mutex<Option<Arc<Serving>>>,
    /// When the served snapshot was made or last served, in wall-clock milliseconds.
    pub parts_used_ms: AtomicU64,
    /// The documents' indexes the writer thread maintains, as it last published them.
    pub indexes: RwLock<Arc<Vec<crate::index::IndexStatus>>>,
    /// Which keys the topic may hold, kept by the writer thread so that writes of new keys
    /// skip reading their rows.
    pub keys: crate::key_filter::KeyFilter,
    /// How far the topic's index journal is written and applied (see `index_journal.rs`).
    pub journal: Arc<crate::index_journal::Marks>,
}

impl TopicShared {
    pub fn max_height(&self) -> Height {
        self.heads.read().expect("heads lock").iter().map(|h| h.height).max().unwrap_or(0)
    }
}
