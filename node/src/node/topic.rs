//! A subscribed topic as the node hands it out: the crdt topic, plus the announcement of every
//! local commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use canopy_crdt::{
    Access, AuthorId, Batch, Change, Commit, CompactError, Compaction, Head, Page, ReadError, Topic, TopicError,
    Version, WriteError,
};
use crossbeam_channel::{Receiver, TrySendError};

use super::{NodeInner, SyncEvent};

/// A subscribed topic of a running node: the crdt topic, plus announcing every local commit.
/// Calls block on the topic's writer thread; from async code, use a blocking task.
#[derive(Clone)]
pub struct NodeTopic {
    pub(super) topic: Topic,
    pub(super) node: Arc<NodeInner>,
}

impl NodeTopic {
    pub(super) fn committed(&self, commit: Option<Commit>) -> Option<Commit> {
        if let Some(commit) = commit {
            self.node.counters.writes.fetch_add(1, Ordering::Relaxed);
            let event = SyncEvent::LocalCommit {
                topic: self.topic.name().to_string(),
                cid: Some(commit.cid),
                at: Instant::now(),
            };
            match self.node.sync_events.try_send(event) {
                Ok(()) => {}
                // The periodic re-announcement carries the new heads if the queue is full.
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.node.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        commit
    }

    /// Announces the topic's heads to peers, as after a local commit (used after an import).
    pub fn announce(&self) {
        let event = SyncEvent::LocalCommit { topic: self.topic.name().to_string(), cid: None, at: Instant::now() };
        if self.node.sync_events.try_send(event).is_err() {
            self.node.counters.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Who may write the topic.
    pub fn access(&self) -> Access {
        self.topic.access()
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        self.topic.name()
    }

    /// Grants `writer` the right to write a topic created with mode `writers`; only its owner
    /// may. `None` when `writer` is on the list already.
    pub fn grant(&self, writer: AuthorId) -> Result<Option<Commit>, WriteError> {
        let commit = self.topic.grant(writer)?;
        Ok(self.committed(commit))
    }

    /// Takes `writer` off the topic's writer list; `None` when it is not on it.
    pub fn revoke(&self, writer: AuthorId) -> Result<Option<Commit>, WriteError> {
        let commit = self.topic.revoke(writer)?;
        Ok(self.committed(commit))
    }

    /// Who may write the topic now besides anyone the rule admits: the owner and the writer
    /// list at this replica's heads for a topic with one, the owner for an owned topic, `None`
    /// for an open or keyed topic (anyone; in a keyed topic each only its own keys).
    pub fn writers(&self) -> Result<Option<Vec<AuthorId>>, TopicError> {
        Ok(match self.topic.access() {
            Access::Open | Access::Keyed => None,
            Access::Owned { owner } => Some(vec![owner]),
            Access::Writers { owner } => {
                let mut writers = vec![owner];
                writers.extend(self.topic.writers()?.into_iter().filter(|writer| *writer != owner));
                Some(writers)
            }
        })
    }

    /// Sets `key` to `value`.
    pub fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<Commit, WriteError> {
        let commit = self.topic.put(key, value)?;
        Ok(self.committed(Some(commit)).expect("a put commits"))
    }

    /// Sets `key` to `value` until `expires_ms` (wall-clock milliseconds since the Unix epoch):
    /// from then on every node hides it, as if deleted, and collects it. Nodes agree on the
    /// moment up to their clocks' skew.
    pub fn put_until(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        expires_ms: u64,
    ) -> Result<Commit, WriteError> {
        let mut batch = Batch::new();
        batch.put_until(key, value, expires_ms);
        let commit = self.topic.batch(batch)?;
        Ok(self.committed(commit).expect("a put always commits"))
    }

    /// Sets `key` to `value` for `ttl` from now (see [`NodeTopic::put_until`]).
    pub fn put_for(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        ttl: Duration,
    ) -> Result<Commit, WriteError> {
        self.put_until(key, value, self.node.expiry_of(ttl))
    }

    /// Deletes `key`; `None` when it had no live value.
    pub fn delete(&self, key: impl Into<Vec<u8>>) -> Result<Option<Commit>, WriteError> {
        let commit = self.topic.delete(key)?;
        Ok(self.committed(commit))
    }

    /// Applies a batch as one atomic delta.
    pub fn batch(&self, batch: Batch) -> Result<Option<Commit>, WriteError> {
        let commit = self.topic.batch(batch)?;
        Ok(self.committed(commit))
    }

    /// Adds `n` (negative to subtract) to the counter `key`. Counters live apart from plain
    /// keys: a key may be both.
    pub fn increment(&self, key: impl Into<Vec<u8>>, n: i64) -> Result<Commit, WriteError> {
        let commit = self.topic.increment(key, n)?;
        Ok(self.committed(Some(commit)).expect("an increment commits"))
    }

    /// The value of the counter `key`: the sum of every increment applied here.
    pub fn counter(&self, key: &[u8]) -> Result<i128, ReadError> {
        self.topic.counter(key)
    }

    /// The visible value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        self.topic.get(key)
    }

    /// The versions of `key` this node holds, newest first, at most `limit`: every put and
    /// delete since the last compaction, and the values still live. A compaction drops the
    /// versions it covers that were no longer live.
    pub fn history(&self, key: &[u8], limit: usize) -> Result<Vec<Version>, ReadError> {
        self.topic.history(key, limit)
    }

    /// Keys with `prefix`, after `after`, at most `limit`.
    pub fn query(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Page, ReadError> {
        self.topic.query(prefix, after, limit)
    }

    /// Current heads.
    pub fn heads(&self) -> Vec<Head> {
        self.topic.heads()
    }

    /// Keys with a visible value (an expired value counts until its collection, moments after
    /// it expires).
    pub fn key_count(&self) -> u64 {
        self.topic.key_count()
    }

    /// Changes to visible values, local and replicated. A change of a counter names one
    /// contributor's entry (`Change::counter` gives the counter's key).
    pub fn watch(&self) -> Receiver<Change> {
        self.topic.watch()
    }

    /// Sends changes to `sink` on the writer thread until it returns false; it must not block
    /// (an async channel's `try_send` fits), so watchers hold no thread.
    pub fn watch_with(&self, sink: canopy_crdt::Sink) {
        self.topic.watch_with(sink);
    }

    /// Writes a snapshot of the topic at its current heads and prunes the history it covers;
    /// peers that lack pruned blocks fetch the snapshot instead. Blocks the calling thread for
    /// the duration; writes go on meanwhile.
    pub fn compact(&self) -> Result<Compaction, CompactError> {
        self.topic.compact()
    }

    /// The crdt topic underneath.
    pub fn crdt(&self) -> &Topic {
        &self.topic
    }
}
