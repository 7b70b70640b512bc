//! `canopy-bench replication`: real nodes on loopback (in one process, each with its own store,
//! libp2p swarm and QUIC endpoint, or with `processes` real `canopy serve` processes driven
//! over HTTP): write-to-visible latency between two nodes, and how long an empty node takes to
//! catch up a topic.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use canopy_node::{Batch, Node, NodeConfig};
use serde::Serialize;

pub(crate) mod processes;

pub use processes::default_canopy;

/// What to measure.
#[derive(Clone, Debug)]
pub struct ReplicationConfig {
    /// Writes whose latency is sampled, one at a time.
    pub samples: usize,
    /// Keys the catch-up topic holds.
    pub catch_up_keys: usize,
    /// Keys per batch when filling the catch-up topic.
    pub batch: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Longest wait for one write or for the catch-up.
    pub timeout: Duration,
    /// Compact the catch-up topic before the empty node starts, so it bootstraps from a
    /// snapshot instead of the blocks.
    pub compact: bool,
    /// Fill the catch-up topic with single puts, one block per key (a DAG as deep as the
    /// topic has keys), instead of batches.
    pub deep: bool,
    /// Run `canopy serve` processes from this binary and measure through their HTTP API
    /// instead of embedded nodes.
    pub processes: Option<PathBuf>,
    /// With `processes`: every call carries an API token and each process admits only the
    /// others (`--tokens`, `--admit`).
    pub secure: bool,
}

/// Figures of a run.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicationReport {
    /// Writes sampled.
    pub samples: usize,
    /// Median write-to-visible latency, microseconds.
    pub latency_p50_us: u64,
    /// 99th percentile, microseconds.
    pub latency_p99_us: u64,
    /// Largest, microseconds.
    pub latency_max_us: u64,
    /// Keys caught up.
    pub catch_up_keys: usize,
    /// Seconds from starting the empty node until it held every key.
    pub catch_up_s: f64,
    /// Keys per second of the catch-up.
    pub catch_up_keys_per_s: f64,
    /// Whether the empty node bootstrapped from a compacted peer.
    pub compacted: bool,
    /// Whether the catch-up topic was written as single puts, one block per key.
    pub deep: bool,
    /// `embedded` (nodes in this process, through the library) or `processes` (`canopy serve`
    /// processes, through HTTP).
    pub mode: &'static str,
    /// Seconds the compaction took, when there was one.
    pub compact_s: Option<f64>,
    /// Every sampled write-to-visible latency as (microseconds, writes), for histograms.
    pub latencies: Vec<(u64, u64)>,
    /// The empty node's progress: (seconds since it started, keys it held).
    pub catch_up_progress: Vec<(f64, u64)>,
    /// Bytes of the serving node's data directory when the empty node started (embedded runs).
    pub source_disk_bytes_before: Option<u64>,
    /// The most they reached while the empty node caught up, sampled every 200 ms.
    pub source_disk_bytes_peak: Option<u64>,
}

fn config(dir: &Path, name: &str, peers: Vec<String>, topics: &[&str]) -> NodeConfig {
    NodeConfig {
        data_dir: dir.join(name),
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
        blocks: "127.0.0.1:0".parse().expect("a valid socket address"),
        peers,
        topics: topics.iter().map(|t| t.to_string()).collect(),
        rebroadcast_interval_s: 1,
        // The catch-up is measured from blocks unless a compaction is asked for.
        compact_after_blocks: 0,
        compact_after_bytes: 0,
        ..NodeConfig::default()
    }
}

fn address(node: &Node) -> anyhow::Result<String> {
    let status = node.status();
    let listen = status.listen.first().context("node has no listen address")?;
    Ok(format!("{listen}/p2p/{}", status.peer_id))
}

async fn wait(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(start.elapsed())
}

/// Runs the measurement in a temporary directory.
pub fn run(settings: &ReplicationConfig) -> anyhow::Result<ReplicationReport> {
    let dir = tempfile::tempdir()?;
    if let Some(canopy) = &settings.processes {
        return processes::measure(canopy, dir.path(), settings);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(measure(dir.path(), settings))
}

/// The figures of a run from what it measured.
pub(crate) fn report(
    settings: &ReplicationConfig,
    histogram: &hdrhistogram::Histogram<u64>,
    catch_up_s: f64,
    catch_up_progress: Vec<(f64, u64)>,
    compact_s: Option<f64>,
    source_disk: Option<(u64, u64)>,
) -> ReplicationReport {
    ReplicationReport {
        samples: settings.samples,
        latency_p50_us: histogram.value_at_quantile(0.5),
        latency_p99_us: histogram.value_at_quantile(0.99),
        latency_max_us: histogram.max(),
        catch_up_keys: settings.catch_up_keys,
        catch_up_s,
        catch_up_keys_per_s: settings.catch_up_keys as f64 / catch_up_s,
        compacted: settings.compact,
        deep: settings.deep,
        mode: if settings.processes.is_some() { "processes" } else { "embedded" },
        compact_s,
        latencies: histogram.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect(),
        catch_up_progress,
        source_disk_bytes_before: source_disk.map(|(before, _)| before),
        source_disk_bytes_peak: source_disk.map(|(_, peak)| peak),
    }
}

/// The key and value of the catch-up topic's key `i`.
pub(crate) fn catch_up_entry(i: usize, value_bytes: usize) -> (String, Vec<u8>) {
    (format!("key-{i:09}"), vec![b'x'; value_bytes])
}

async fn measure(dir: &Path, settings: &ReplicationConfig) -> anyhow::Result<ReplicationReport> {
    let a = Node::start(config(dir, "a", vec![], &["latency", "big"])).await?;
    let b = Node::start(config(dir, "b", vec![address(&a)?], &["latency"])).await?;
    wait("the nodes are connected", settings.timeout, || !a.peers().is_empty() && !b.peers().is_empty()).await?;

    let writer = a.subscribe("latency")?;
    let reader = b.subscribe("latency")?;
    let changes = reader.watch();
    let mut histogram = crate::latency_histogram();
    let value = vec![b'v'; settings.value_bytes];
    for sample in 0..settings.samples {
        let key = format!("sample-{sample}");
        let started = Instant::now();
        let writer = writer.clone();
        let (put_key, put_value) = (key.clone(), value.clone());
        tokio::task::spawn_blocking(move || writer.put(put_key, put_value)).await??;
        let seen = tokio::task::spawn_blocking({
            let changes = changes.clone();
            let timeout = settings.timeout;
            move || loop {
                match changes.recv_timeout(timeout) {
                    Ok(change) if change.key == key.as_bytes() => return Ok(started.elapsed()),
                    Ok(_) => {}
                    Err(error) => return Err(anyhow::anyhow!("no change seen for {key}: {error}")),
                }
            }
        })
        .await??;
        histogram.saturating_record(seen.as_micros() as u64);
    }

    let big = a.subscribe("big")?;
    let (keys, value_bytes) = (settings.catch_up_keys, settings.value_bytes);
    // One put at a time makes one block per key.
    let batch_size = if settings.deep { 1 } else { settings.batch.max(1) };
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for start in (0..keys).step_by(batch_size) {
            let mut batch = Batch::new();
            for i in start..(start + batch_size).min(keys) {
                let (key, value) = catch_up_entry(i, value_bytes);
                batch.put(key, value);
            }
            big.batch(batch)?;
        }
        Ok(())
    })
    .await??;
    let compact_s = if settings.compact {
        let big = a.subscribe("big")?;
        let started = Instant::now();
        tokio::task::spawn_blocking(move || big.compact()).await??;
        Some(started.elapsed().as_secs_f64())
    } else {
        None
    };
    let source_dir = dir.join("a");
    let source_before = crate::ingest::dir_bytes(&source_dir);
    let mut source_peak = source_before;
    let started = Instant::now();
    let c = Node::start(config(dir, "c", vec![address(&a)?], &["big"])).await?;
    let target = c.subscribe("big")?;
    let mut catch_up_progress = vec![(started.elapsed().as_secs_f64(), target.key_count())];
    let mut sampled = Instant::now();
    let mut disk_sampled = Instant::now();
    wait("the empty node caught up", settings.timeout, || {
        let held = target.key_count();
        if sampled.elapsed() >= Duration::from_millis(20) || held as usize == keys {
            sampled = Instant::now();
            catch_up_progress.push((started.elapsed().as_secs_f64(), held));
        }
        if disk_sampled.elapsed() >= Duration::from_millis(200) {
            disk_sampled = Instant::now();
            source_peak = source_peak.max(crate::ingest::dir_bytes(&source_dir));
        }
        held as usize == keys
    })
    .await?;
    let catch_up = started.elapsed().as_secs_f64();

    for node in [a, b, c] {
        node.shutdown().await;
    }
    Ok(report(settings, &histogram, catch_up, catch_up_progress, compact_s, Some((source_before, source_peak))))
}
