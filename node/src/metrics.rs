//! `/metrics` in the OpenMetrics text format, built with `prometheus-client`.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::node::Node;

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

fn counter(registry: &mut Registry, name: &str, help: &str, value: &AtomicU64) {
    registry.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
}

/// The node's metrics as text.
pub fn render(node: &Node) -> Result<String, std::fmt::Error> {
    let inner = node.inner();
    let counters = &inner.counters;
    let mut registry = Registry::with_prefix("canopy");
    counter(&mut registry, "local_commits", "Local writes committed as blocks", &counters.writes);
    counter(&mut registry, "blocks_applied", "Blocks received from peers and applied", &counters.blocks_applied);
    counter(&mut registry, "blocks_rejected", "Received blocks refused by validation", &counters.blocks_rejected);
    counter(
        &mut registry,
        "announcements_rejected",
        "Announcements refused by validation: malformed, or carrying invalid or refused blocks",
        &counters.announcements_rejected,
    );
    counter(
        &mut registry,
        "blocks_refused",
        "Received blocks refused because their author may not write their topic",
        &counters.blocks_refused,
    );
    counter(&mut registry, "messages_rejected", "Peer messages refused as malformed", &counters.messages_rejected);
    counter(
        &mut registry,
        "answers_unrequested",
        "Block answers dropped because no request to their sender awaited them",
        &counters.answers_unrequested,
    );
    counter(
        &mut registry,
        "fetches_abandoned",
        "Catch-ups from a peer given up: timed out, failed, or answered with nothing useful",
        &counters.fetches_abandoned,
    );
    counter(
        &mut registry,
        "blocks_inline",
        "Blocks that came inside announcements and were applied with no request",
        &counters.blocks_inline,
    );
    counter(
        &mut registry,
        "levels_ahead",
        "Levels of catch-ups taken from answers asked for ahead of their turn, from the fetch's peer or another",
        &counters.levels_ahead,
    );
    counters.stages.register(&mut registry);
    counter(
        &mut registry,
        "snapshots_merged",
        "Snapshots fetched from peers (which had pruned blocks this node lacked) and merged",
        &counters.snapshots_merged,
    );
    counter(
        &mut registry,
        "snapshots_refused",
        "Snapshots offered by peers that may not speak for the topic (not its owner, not an admitted member), not merged",
        &counters.snapshots_refused,
    );
    counter(
        &mut registry,
        "snapshot_parts_rejected",
        "Snapshot parts refused: bad hash, bad content, or a snapshot that does not merge",
        &counters.parts_rejected,
    );
    let held = node
        .store()
        .topic_names()
        .iter()
        .filter_map(|name| node.store().existing_topic(name))
        .filter(|t| t.snapshot_parts_held())
        .count();
    registry.register(
        "snapshot_parts_held",
        "Topics whose snapshot parts are stored, ready for peers that lack pruned blocks",
        ConstGauge::new(held as i64),
    );
    registry.register(
        "watchers",
        "Server-sent-event watchers open now",
        ConstGauge::new(counters.watchers.load(Ordering::Relaxed) as i64),
    );
    counter(
        &mut registry,
        "sync_events_dropped",
        "Sync events dropped because the queue was full",
        &counters.events_dropped,
    );
    registry.register("peers", "Connected peers", ConstGauge::new(node.peers().len() as i64));
    registry.register(
        "uptime_seconds",
        "Seconds since the node started",
        ConstGauge::new(inner.started.elapsed().as_secs() as i64),
    );
    let keys = Family::<Vec<(String, String)>, Gauge>::default();
    let heads = Family::<Vec<(String, String)>, Gauge>::default();
    let height = Family::<Vec<(String, String)>, Gauge>::default();
    for topic in node.topics() {
        let labels = vec![("topic".to_string(), topic.topic.clone())];
        keys.get_or_create(&labels).set(topic.keys as i64);
        heads.get_or_create(&labels).set(topic.heads.len() as i64);
        height.get_or_create(&labels).set(topic.max_height as i64);
    }
    registry.register("topic_keys", "Keys with a visible value, per topic", keys);
    registry.register("topic_heads", "Heads, per topic", heads);
    registry.register("topic_max_height", "Largest head height, per topic", height);
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}
