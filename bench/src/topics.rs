//! `canopy-bench topics`: many topics on one node (embedded, real RocksDB and sockets).
//!
//! A node subscribes `topics` topics (timed, and its RSS before and after gives the memory of an
//! idle topic), writes `keys_per_topic` keys into each (one batch per topic), and restarts
//! (timed until every topic is subscribed again and readable). With `nodes` 2 a second node
//! joins, subscribes every topic, and the time until every topic has the first node's heads
//! there is measured, with the peers and topics each node sees.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use canopy_node::{Batch, Node, NodeConfig};
use serde::Serialize;

use crate::scale::rss;

/// What to run.
#[derive(Clone, Debug)]
pub struct TopicsConfig {
    /// Topics on the node.
    pub topics: usize,
    /// Keys written into each.
    pub keys_per_topic: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// 1: one node; 2: a second node replicates every topic.
    pub nodes: usize,
    /// Longest wait for the second node to converge.
    pub timeout: Duration,
}

/// Figures of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TopicsReport {
    /// Topics.
    pub topics: usize,
    /// Keys per topic.
    pub keys_per_topic: usize,
    /// Seconds to subscribe (create) every topic.
    pub create_s: f64,
    /// RSS growth from subscribing the topics, per topic.
    pub rss_bytes_per_topic: f64,
    /// Keys per second writing into every topic.
    pub ingest_keys_per_s: f64,
    /// RSS after the writes, per topic.
    pub rss_bytes_per_topic_after_writes: f64,
    /// Seconds from starting the node again until every topic is subscribed and readable.
    pub restart_s: f64,
    /// RSS growth of the restarted node (idle, every topic subscribed), per topic.
    pub rss_bytes_per_topic_restarted: f64,
    /// With two nodes: seconds until the second node held every topic at the first's heads.
    pub converge_s: Option<f64>,
    /// With two nodes: topics converged per second.
    pub converge_topics_per_s: Option<f64>,
    /// With two nodes: connected peers each node sees.
    pub peers: Vec<usize>,
    /// With two nodes: subscribed topics each node has.
    pub subscribed: Vec<usize>,
}

fn config(dir: &Path, name: &str, peers: Vec<String>) -> NodeConfig {
    NodeConfig {
        data_dir: dir.join(name),
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
        blocks: "127.0.0.1:0".parse().expect("a valid socket address"),
        peers,
        rebroadcast_interval_s: 1,
        ..NodeConfig::default()
    }
}

fn topic_name(index: usize) -> String {
    format!("tenant-{index:06}")
}

/// Runs the measurement in a temporary directory.
pub fn run(settings: &TopicsConfig) -> anyhow::Result<TopicsReport> {
    anyhow::ensure!(settings.topics > 0, "topics must be positive");
    anyhow::ensure!((1..=2).contains(&settings.nodes), "nodes is 1 or 2");
    let dir = tempfile::tempdir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(measure(dir.path(), settings))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work).await.context("a blocking task failed")?
}

async fn measure(dir: &Path, settings: &TopicsConfig) -> anyhow::Result<TopicsReport> {
    let names: Vec<String> = (0..settings.topics).map(topic_name).collect();
    let per_topic = |before: u64, after: u64| after.saturating_sub(before) as f64 / settings.topics as f64;
    let mut report =
        TopicsReport { topics: settings.topics, keys_per_topic: settings.keys_per_topic, ..TopicsReport::default() };

    let before = rss().0;
    let node = Node::start(config(dir, "a", vec![])).await?;
    let started = Instant::now();
    let subscribing = node.clone();
    let all = names.clone();
    blocking(move || {
        subscribing.subscribe_all(&all)?;
        Ok(())
    })
    .await?;
    report.create_s = started.elapsed().as_secs_f64();
    // The node's own fixed cost is measured apart: the RSS of a node with no topic.
    report.rss_bytes_per_topic = per_topic(before, rss().0);

    let writer = node.clone();
    let (keys, value_bytes, all) = (settings.keys_per_topic, settings.value_bytes, names.clone());
    let started = Instant::now();
    blocking(move || {
        for name in &all {
            let topic = writer.topic(name).with_context(|| format!("{name} is not subscribed"))?;
            let mut batch = Batch::new();
            for i in 0..keys {
                batch.put(format!("key-{i:06}"), vec![b'v'; value_bytes]);
            }
            topic.batch(batch)?;
        }
        Ok(())
    })
    .await?;
    report.ingest_keys_per_s = (settings.topics * settings.keys_per_topic) as f64 / started.elapsed().as_secs_f64();
    report.rss_bytes_per_topic_after_writes = per_topic(before, rss().0);
    node.shutdown().await;

    let before = rss().0;
    let started = Instant::now();
    let node = Node::start(config(dir, "a", vec![])).await?;
    let reader = node.clone();
    let all = names.clone();
    blocking(move || {
        for name in &all {
            let topic = reader.topic(name).with_context(|| format!("{name} is not subscribed after the restart"))?;
            anyhow::ensure!(topic.key_count() as usize == keys, "{name} lost keys in the restart");
        }
        Ok(())
    })
    .await?;
    report.restart_s = started.elapsed().as_secs_f64();
    report.rss_bytes_per_topic_restarted = per_topic(before, rss().0);

    if settings.nodes == 2 {
        let status = node.status();
        let address = format!("{}/p2p/{}", status.listen.first().context("no listen address")?, status.peer_id);
        let started = Instant::now();
        let second = Node::start(config(dir, "b", vec![address])).await?;
        let subscribing = second.clone();
        let all = names.clone();
        blocking(move || {
            subscribing.subscribe_all(&all)?;
            Ok(())
        })
        .await?;
        let mut pending: Vec<String> = names.clone();
        while !pending.is_empty() {
            if started.elapsed() > settings.timeout {
                bail!("{} topics had not converged after {:?}", pending.len(), settings.timeout);
            }
            pending.retain(|name| match (node.topic(name), second.topic(name)) {
                (Some(a), Some(b)) => a.heads() != b.heads(),
                _ => true,
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        report.converge_s = Some(seconds);
        report.converge_topics_per_s = Some(settings.topics as f64 / seconds);
        report.peers = vec![node.status().peers, second.status().peers];
        report.subscribed = vec![node.status().topics, second.status().topics];
        second.shutdown().await;
    }
    node.shutdown().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More topics than gossipsub lets a peer subscribe by default (100).
    #[test]
    fn two_nodes_converge_on_every_topic() {
        let report = run(&TopicsConfig {
            topics: 150,
            keys_per_topic: 10,
            value_bytes: 10,
            nodes: 2,
            timeout: Duration::from_secs(120),
        })
        .unwrap();
        assert_eq!(report.topics, 150);
        assert!(report.restart_s > 0.0 && report.create_s > 0.0);
        assert!(report.converge_s.is_some());
        assert_eq!(report.subscribed, vec![150, 150]);
        assert_eq!(report.peers, vec![1, 1]);
    }
}
