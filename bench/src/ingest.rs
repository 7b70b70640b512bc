//! `canopy-bench ingest`: local write throughput of the engine against bare RocksDB.
//!
//! The same keys and values are written twice in one run: through canopy's topic API into a
//! fresh store, then as plain `WriteBatch`es into a bare RocksDB with the same write options
//! (WAL on, no sync) and table options. The bare rate is the physical baseline of this machine.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use canopy_crdt::{Batch, Store, StoreOptions, Topic};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// What to write.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Number of keys.
    pub keys: usize,
    /// Bytes per key.
    pub key_bytes: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Keys per batch (1 means single puts).
    pub batch: usize,
    /// Topics the batches are spread over, round-robin.
    pub topics: usize,
    /// Threads submitting batches concurrently.
    pub writers: usize,
    /// canopy writer threads.
    pub store_writer_threads: usize,
    /// Seed of the generated keys and values.
    pub seed: u64,
    /// Where to put both databases; a temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Times every key is written (each round overwrites every key with a new value).
    pub rounds: usize,
    /// Compact at the end (canopy: every topic's DAG, then its RocksDB ranges; bare: a full
    /// RocksDB compaction) and measure the disk again.
    pub compact: bool,
    /// Compact the first topic over and over while canopy's writes run, to see what a
    /// compaction costs the writes beside it.
    pub compact_during: bool,
    /// Record key history (`StoreOptions::key_history`).
    pub key_history: bool,
}

/// Figures of one side of the run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Keys written per second.
    pub keys_per_s: f64,
    /// Wall time of the writes.
    pub seconds: f64,
    /// Bytes on disk after closing (WAL and tables), per live key.
    pub disk_bytes_per_key: f64,
    /// Median batch latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile batch latency, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile batch latency, microseconds.
    pub p999_us: u64,
}

/// Figures of a whole run.
#[derive(Clone, Debug, Serialize)]
pub struct IngestReport {
    /// Keys written.
    pub keys: usize,
    /// Bytes per key.
    pub key_bytes: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Keys per batch.
    pub batch: usize,
    /// Topics.
    pub topics: usize,
    /// Concurrent submitting threads.
    pub writers: usize,
    /// canopy through its topic API.
    pub canopy: RunReport,
    /// Bare RocksDB `WriteBatch`es.
    pub bare: RunReport,
    /// canopy's rate over the bare rate.
    pub ratio: f64,
    /// Times every key was written.
    pub rounds: usize,
    /// canopy's bytes on disk per live key after the writes.
    pub disk_bytes_per_key: f64,
    /// canopy's bytes on disk per live key after compaction, at rest: once the snapshot
    /// parts are released (`snapshot_retain_ms` after nobody fetches them), with `--compact`.
    pub compacted_disk_bytes_per_key: Option<f64>,
    /// The same while the snapshot parts are still held (ready for a peer to fetch).
    pub compacted_with_parts_disk_bytes_per_key: Option<f64>,
    /// Bare RocksDB's bytes on disk per key (after a full compaction with `--compact`).
    pub bare_disk_bytes_per_key: f64,
    /// Seconds canopy's compaction of every topic took, with `--compact`.
    pub compact_seconds: Option<f64>,
    /// Compactions that ran during canopy's writes, with `--compact-during`.
    pub compactions_during: Option<u64>,
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn generate(config: &IngestConfig) -> Pairs {
    let mut rng = StdRng::seed_from_u64(config.seed);
    (0..config.keys)
        .map(|_| {
            let key = (0..config.key_bytes).map(|_| rng.random_range(b'!'..=b'~')).collect();
            let value = (0..config.value_bytes).map(|_| rng.random()).collect();
            (key, value)
        })
        .collect()
}

/// Runs `write(batch_index)` for every batch on `writers` threads; returns seconds and latencies.
fn drive(batches: usize, writers: usize, write: impl Fn(usize) + Sync) -> (f64, Histogram<u64>) {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let histograms: Vec<Histogram<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut histogram = crate::latency_histogram();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= batches {
                            return histogram;
                        }
                        let began = Instant::now();
                        write(index);
                        histogram.saturating_record(began.elapsed().as_micros() as u64);
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("writer thread")).collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let mut all = crate::latency_histogram();
    for histogram in histograms {
        all.add(histogram).expect("histograms of equal bounds add");
    }
    (seconds, all)
}

/// Every file below `path`.
fn files(path: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(_) => files.push(entry.path()),
                Err(_) => {}
            }
        }
    }
    files
}

pub(crate) fn dir_bytes(path: &Path) -> u64 {
    files(path).iter().filter_map(|file| std::fs::metadata(file).ok()).map(|meta| meta.len()).sum()
}

/// Waits until what one side wrote is on disk, so the kernel's write-back of it does not run
/// during (and slow down) the other side's measurement.
pub(crate) fn settle(path: &Path) -> anyhow::Result<()> {
    for file in files(path) {
        std::fs::File::open(&file)?.sync_all()?;
    }
    Ok(())
}

/// Figures of one side: `writes` keys written in all, `live` of them distinct.
fn report(writes: usize, seconds: f64, histogram: &Histogram<u64>, disk_bytes: u64, live: usize) -> RunReport {
    RunReport {
        keys_per_s: writes as f64 / seconds,
        seconds,
        disk_bytes_per_key: disk_bytes as f64 / live as f64,
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
    }
}

/// Runs both sides and reports.
pub fn run(config: &IngestConfig) -> anyhow::Result<IngestReport> {
    anyhow::ensure!(
        config.keys > 0 && config.batch > 0 && config.topics > 0,
        "keys, batch and topics must be positive"
    );
    anyhow::ensure!(config.key_bytes > 0, "key-bytes must be positive");
    let temp = tempfile::tempdir()?;
    let root = config.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    let pairs = Arc::new(generate(config));
    anyhow::ensure!(config.rounds > 0, "rounds must be positive");
    let per_round = config.keys.div_ceil(config.batch);
    let batches = per_round * config.rounds;
    let writes = config.keys * config.rounds;
    let chunk = |index: usize| {
        let index = index % per_round;
        &pairs[index * config.batch..((index + 1) * config.batch).min(pairs.len())]
    };
    // Every round writes new values: its number in the first bytes.
    let value_of = |index: usize, value: &[u8]| {
        let mut value = value.to_vec();
        for (byte, round) in value.iter_mut().zip(((index / per_round) as u32).to_be_bytes()) {
            *byte ^= round;
        }
        value
    };

    let canopy_dir = root.join("canopy");
    // With --compact-during the compactions are the benchmark's own, not the policy's.
    let store_options = StoreOptions {
        writer_threads: config.store_writer_threads,
        compact_after_blocks: if config.compact_during { 0 } else { StoreOptions::default().compact_after_blocks },
        compact_after_bytes: if config.compact_during { 0 } else { StoreOptions::default().compact_after_bytes },
        key_history: config.key_history,
        ..StoreOptions::default()
    };
    let store = Store::open(&canopy_dir, store_options)?;
    let topics: Vec<Topic> =
        (0..config.topics).map(|t| store.topic(&format!("bench-{t}"))).collect::<Result<_, _>>()?;
    let writing = std::sync::atomic::AtomicBool::new(true);
    let compactions = AtomicUsize::new(0);
    let (seconds, histogram) = std::thread::scope(|scope| {
        if config.compact_during {
            let topic = topics[0].clone();
            let (writing, compactions) = (&writing, &compactions);
            scope.spawn(move || {
                while writing.load(Ordering::Relaxed) {
                    topic.compact().expect("compaction during writes");
                    compactions.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let result = drive(batches, config.writers, |index| {
            let topic = &topics[(index % per_round) % topics.len()];
            let ops = chunk(index);
            if let [(key, value)] = ops {
                topic.put(key.clone(), value_of(index, value)).expect("canopy put");
            } else {
                let mut batch = Batch::new();
                for (key, value) in ops {
                    batch.put(key.clone(), value_of(index, value));
                }
                topic.batch(batch).expect("canopy batch");
            }
        });
        writing.store(false, Ordering::Relaxed);
        result
    });
    let written: u64 = topics.iter().map(Topic::key_count).sum();
    drop(topics);
    drop(store);
    settle(&canopy_dir)?;
    let canopy = report(writes, seconds, &histogram, dir_bytes(&canopy_dir), config.keys);
    anyhow::ensure!(written as usize <= config.keys, "canopy holds more keys than were written");
    let per_key = |bytes: u64| Some(bytes as f64 / config.keys as f64);
    let (compacted_with_parts_disk_bytes_per_key, compacted_disk_bytes_per_key, compact_seconds) = if config.compact {
        let options = StoreOptions { snapshot_retain_ms: None, ..StoreOptions::default() };
        let store = Store::open(&canopy_dir, options.clone())?;
        let started = Instant::now();
        for name in store.topic_names() {
            store.topic(&name)?.compact()?;
        }
        let seconds = started.elapsed().as_secs_f64();
        drop(store);
        settle(&canopy_dir)?;
        let with_parts = dir_bytes(&canopy_dir);
        let store = Store::open(&canopy_dir, options)?;
        for name in store.topic_names() {
            store.topic(&name)?.release_snapshot_parts()?;
        }
        compact_ranges(&store);
        drop(store);
        settle(&canopy_dir)?;
        (per_key(with_parts), per_key(dir_bytes(&canopy_dir)), Some(seconds))
    } else {
        (None, None, None)
    };

    let bare_dir = root.join("bare");
    let bare = bare_db(&bare_dir)?;
    let mut write_options = rocksdb::WriteOptions::default();
    write_options.set_sync(false);
    let (seconds, histogram) = drive(batches, config.writers, |index| {
        let prefix = (((index % per_round) % config.topics) as u32).to_be_bytes();
        let mut batch = rocksdb::WriteBatch::default();
        for (key, value) in chunk(index) {
            let mut full = Vec::with_capacity(4 + key.len());
            full.extend_from_slice(&prefix);
            full.extend_from_slice(key);
            batch.put(full, value_of(index, value));
        }
        bare.write_opt(batch, &write_options).expect("bare rocksdb write");
    });
    if config.compact {
        bare.compact_range(None::<&[u8]>, None::<&[u8]>);
    }
    drop(bare);
    let bare = report(writes, seconds, &histogram, dir_bytes(&bare_dir), config.keys);
    Ok(IngestReport {
        keys: config.keys,
        key_bytes: config.key_bytes,
        value_bytes: config.value_bytes,
        batch: config.batch,
        topics: config.topics,
        writers: config.writers,
        ratio: canopy.keys_per_s / bare.keys_per_s,
        rounds: config.rounds,
        disk_bytes_per_key: canopy.disk_bytes_per_key,
        compacted_disk_bytes_per_key,
        compacted_with_parts_disk_bytes_per_key,
        bare_disk_bytes_per_key: bare.disk_bytes_per_key,
        compact_seconds,
        compactions_during: config.compact_during.then(|| compactions.load(Ordering::Relaxed) as u64),
        canopy,
        bare,
    })
}

/// Compacts every column family of the store, as parts released leave their space behind.
pub(crate) fn compact_ranges(store: &Store) {
    let db = store.blocks().db();
    // Files already at the last level are compacted too: records deleted while a snapshot was
    // served stayed in them.
    let mut options = rocksdb::CompactOptions::default();
    options.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
    for name in ["blocks", "index", "kv", "heads", "tombstones", "snapshots", "history", "meta"] {
        if let Some(cf) = db.cf_handle(name) {
            db.compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &options);
        }
    }
}

/// A bare RocksDB with the table and compression options canopy uses for its key-value column.
pub(crate) fn bare_db(path: &Path) -> anyhow::Result<rocksdb::DB> {
    let cache = rocksdb::Cache::new_lru_cache(64 << 20);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.increase_parallelism(2);
    options.set_max_background_jobs(4);
    options.set_bytes_per_sync(1 << 20);
    options.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(4));
    options.set_block_based_table_factory(&table);
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    options.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    Ok(rocksdb::DB::open(&options, path)?)
}
