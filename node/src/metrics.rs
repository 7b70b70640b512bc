//! `/metrics` in the OpenMetrics text format, built with `prometheus-client`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::node::Node;

/// The node's metrics as text.
pub fn render(node: &Node) -> Result<String, std::fmt::Error> {
    let inner = node.inner();
    let counters = &inner.counters;
    let mut registry = Registry::with_prefix("canopy");
    counters.register(&mut registry);
    let held = node
        .store()
        .topic_names()
        .iter()
        .filter_map(|name| node.store().existing_topic(name))
        .filter(|t| t.snapshot_parts_held())
        .count();
    registry.register(
        "snapshot_parts_held",
        "Topics serving a snapshot that covers every block they pruned, ready for peers that lack them",
        ConstGauge::new(held as i64),
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
    if let Some(tables) = node.part::<crate::tables::Tables>() {
        let missing = Family::<Vec<(String, String)>, Gauge>::default();
        for topic in node.topics().iter().filter(|t| crate::tables::PartitionTopic::is_partition_topic(&t.topic)) {
            if let Some(copy) = node.topic(&topic.topic) {
                let labels = vec![("topic".to_string(), topic.topic.clone())];
                missing.get_or_create(&labels).set(tables.missing_heads(&copy) as i64);
            }
        }
        registry.register(
            "table_partition_missing_heads",
            "Heads the other holders of a table partition announced that this node's copy lacks (0: caught up)",
            missing,
        );
    }
    registry.register("topic_keys", "Keys with a visible value, per topic", keys);
    registry.register("topic_heads", "Heads, per topic", heads);
    registry.register("topic_max_height", "Largest head height, per topic", height);
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}
