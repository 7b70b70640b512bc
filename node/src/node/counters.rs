//! The node's counters and stage timings, each declared once with its metric name and help:
//! the node and its actor update them, `/metrics` registers them from the same list.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use canopy_crdt::sync::SyncStats;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Declares [`Counters`]: per counter its field, its metric name and help, and, for those the
/// replicator keeps, the [`SyncStats`] field it is copied from.
macro_rules! counters {
    ($($(#[$doc:meta])* $field:ident: $metric:literal, $help:literal $(, from $stat:ident)?;)*) => {
        /// Counters exported as metrics.
        #[derive(Default)]
        pub(crate) struct Counters {
            $($(#[$doc])* pub $field: Arc<AtomicU64>,)*
            /// Server-sent-event watchers open now (a gauge).
            pub watchers: AtomicU64,
            /// Where replication spends its time.
            pub stages: Stages,
        }

        impl Counters {
            /// Registers every counter and the stage histograms.
            pub fn register(&self, registry: &mut Registry) {
                $(registry.register($metric, $help, ConstCounter::new(self.$field.load(Ordering::Relaxed)));)*
                registry.register(
                    "watchers",
                    "Server-sent-event watchers open now",
                    prometheus_client::metrics::gauge::ConstGauge::new(self.watchers.load(Ordering::Relaxed) as i64),
                );
                self.stages.register(registry);
            }

            /// Copies the replicator's statistics into the counters kept from them.
            pub fn copy_stats(&self, stats: &SyncStats) {
                $($(self.$field.store(stats.$stat, Ordering::SeqCst);)?)*
            }
        }
    };
}

counters! {
    writes: "local_commits", "Local writes committed as blocks";
    // Inline blocks come before applied ones, so they are copied first: a reader that sees a
    // block applied sees how it came.
    blocks_inline: "blocks_inline", "Blocks that came inside announcements and were applied with no request", from blocks_inline;
    /// Levels of catch-ups taken from answers asked for ahead of their turn.
    levels_ahead: "levels_ahead",
        "Levels of catch-ups taken from answers asked for ahead of their turn, from the fetch's peer or another",
        from levels_ahead;
    blocks_applied: "blocks_applied", "Blocks received from peers and applied", from blocks_applied;
    blocks_rejected: "blocks_rejected", "Received blocks refused by validation", from blocks_rejected;
    /// Announcements refused by the gossip validator (malformed, or carrying blocks that fail
    /// their hash or signature or whose author may not write the topic); shared with it.
    announcements_rejected: "announcements_rejected",
        "Announcements refused by validation: malformed, or carrying invalid or refused blocks";
    /// Received blocks refused because their author may not write their topic.
    blocks_refused: "blocks_refused", "Received blocks refused because their author may not write their topic",
        from blocks_refused;
    messages_rejected: "messages_rejected", "Peer messages refused as malformed", from messages_rejected;
    answers_unrequested: "answers_unrequested", "Block answers dropped because no request to their sender awaited them",
        from answers_unrequested;
    fetches_abandoned: "fetches_abandoned",
        "Catch-ups from a peer given up: timed out, failed, or answered with nothing useful", from fetches_abandoned;
    snapshots_merged: "snapshots_merged",
        "Snapshots fetched from peers (which had pruned blocks this node lacked) and merged", from snapshots_merged;
    /// Snapshots offered by peers that may not speak for the topic, not merged.
    snapshots_refused: "snapshots_refused",
        "Snapshots offered by peers that may not speak for the topic (not its owner, not an admitted member), not merged",
        from snapshots_refused;
    parts_rejected: "snapshot_parts_rejected", "Snapshot parts refused: bad hash, bad content, or a snapshot that does not merge",
        from parts_rejected;
    events_dropped: "sync_events_dropped", "Sync events dropped because the queue was full";
    /// Writes acknowledged with more than one copy asked for.
    acks_met: "writes_acknowledged", "Writes that asked for more than one copy and were acknowledged by as many";
    /// Writes answered 504: applied, but fewer copies than asked held them in time.
    acks_missed: "writes_unacknowledged",
        "Writes answered 504: applied, but fewer copies than asked held them within ack_timeout_ms";
    /// Reads given a causal token whose copy did not hold it in time.
    causal_missed: "causal_reads_unserved",
        "Reads given a causal token that no copy holding the token's heads served in time";
    /// Ephemeral messages received and not delivered.
    messages_dropped: "messages_dropped",
        "Ephemeral messages received and dropped: their publisher was over its rate or may not write the topic";
}

/// Where replication spends its time, stage by stage, as histograms in seconds. Clones share
/// their figures.
#[derive(Clone)]
pub(crate) struct Stages {
    /// A local commit returned → its announcement handed to the transport.
    pub commit_to_publish: Histogram,
    /// An event queued for the sync actor → the actor takes it.
    pub queue_wait: Histogram,
    /// Handling an announcement: validating and applying the blocks it carries, deciding what
    /// to fetch.
    pub handle_heads: Histogram,
    /// Handling an answer: validating and applying its blocks, asking for the next ones.
    pub handle_blocks: Histogram,
    /// A request sent to a peer → its answer taken by the actor.
    pub fetch_round_trip: Histogram,
}

impl Default for Stages {
    fn default() -> Self {
        // 20 µs to about 10 s.
        let histogram = || Histogram::new(exponential_buckets(20e-6, 2.0, 20));
        Stages {
            commit_to_publish: histogram(),
            queue_wait: histogram(),
            handle_heads: histogram(),
            handle_blocks: histogram(),
            fetch_round_trip: histogram(),
        }
    }
}

impl Stages {
    fn register(&self, registry: &mut Registry) {
        let stages = [
            (
                "commit_to_publish",
                "A local commit to its announcement handed to the transport",
                &self.commit_to_publish,
            ),
            ("sync_queue_wait", "Time an event waits for the sync actor", &self.queue_wait),
            (
                "handle_heads",
                "Handling an announcement: validating and applying the blocks it carries, choosing what to fetch",
                &self.handle_heads,
            ),
            ("handle_blocks", "Handling a fetch's answer: validating and applying its blocks", &self.handle_blocks),
            ("fetch_round_trip", "A block request sent to a peer until its answer is taken", &self.fetch_round_trip),
        ];
        for (name, help, histogram) in stages {
            registry.register_with_unit(name, help, prometheus_client::registry::Unit::Seconds, histogram.clone());
        }
    }
}
