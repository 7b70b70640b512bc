//! `canopy-bench scale`: one node's engine at scale (up to 100M keys and more).
//!
//! Keys and values are not held in memory: key `i` and its value are computed from `i` (a
//! splitmix64 stream), so a read can name any written key again, and keys from `N` on are absent.
//! The ingest runs batches on writer threads while a monitor samples the process's RSS, the
//! disk, RocksDB's pending compaction bytes and stall time, and reports a checkpoint every
//! `N / checkpoints` keys. Then, on the finished store: point gets of present and absent keys on
//! 1 and 2 threads, a prefix scan, the time to reopen and serve a first read, and with
//! `--compact` a compaction of every topic. `--baseline` runs the same workload against a bare
//! RocksDB with canopy's table options.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use canopy_crdt::{Batch, Store, StoreOptions, Topic};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::ingest::{bare_db, compact_ranges, dir_bytes, settle};

/// What to run.
#[derive(Clone, Debug)]
pub struct ScaleConfig {
    /// Keys to write.
    pub keys: u64,
    /// Topics the batches go to, round-robin.
    pub topics: usize,
    /// Bytes per key.
    pub key_bytes: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Keys per batch.
    pub batch: usize,
    /// Threads submitting batches.
    pub writers: usize,
    /// Checkpoints reported over the ingest.
    pub checkpoints: u64,
    /// Point gets of present keys per reader-thread setting.
    pub reads: usize,
    /// Point gets of absent keys per reader-thread setting.
    pub absent_reads: usize,
    /// Keys a prefix scan reads at most.
    pub scan_keys: usize,
    /// Where the stores go; a temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Leave the stores on disk afterwards.
    pub keep: bool,
    /// Compact every topic at the end and measure the disk again.
    pub compact: bool,
    /// Run the same workload against bare RocksDB too.
    pub baseline: bool,
}

/// A point in the ingest.
#[derive(Clone, Debug, Serialize)]
pub struct Checkpoint {
    /// `canopy` or `rocksdb`.
    pub side: &'static str,
    /// Keys written so far.
    pub keys: u64,
    /// Seconds since the ingest began.
    pub elapsed_s: f64,
    /// Keys per second since the previous checkpoint.
    pub interval_keys_per_s: f64,
    /// Resident memory of the process now.
    pub rss_bytes: u64,
    /// Largest resident memory of the process since this side began.
    pub peak_rss_bytes: u64,
    /// Bytes of the store's directory.
    pub disk_bytes: u64,
    /// RocksDB's estimate of bytes compaction still has to rewrite.
    pub pending_compaction_bytes: u64,
    /// Seconds RocksDB has stalled writes so far.
    pub stall_s: f64,
    /// Disk by column family, so the disk curve can be explained.
    pub families: Vec<FamilyDisk>,
}

/// One column family's bytes on disk at a checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct FamilyDisk {
    /// The column family.
    pub name: String,
    /// Bytes of its live table files.
    pub sst_bytes: u64,
    /// Bytes of its blob files, garbage included.
    pub blob_bytes: u64,
    /// Bytes of its blob files no live record refers to any more.
    pub blob_garbage_bytes: u64,
}

/// What RocksDB says of a store at a checkpoint.
struct RocksFigures {
    /// Bytes compaction still has to rewrite.
    pending_compaction_bytes: u64,
    /// Seconds writes stalled so far.
    stall_s: f64,
    /// Disk by column family.
    families: Vec<FamilyDisk>,
}

/// Latencies of one kind of read.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Reads done.
    pub reads: u64,
    /// Reads per second over all threads.
    pub reads_per_s: f64,
    /// Median, microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile, microseconds.
    pub p999_us: u64,
    /// Largest, microseconds.
    pub max_us: u64,
    /// The latency CDF: (microseconds, fraction of reads at most that long).
    pub cdf: Vec<(u64, f64)>,
}

/// Point gets with a number of reader threads.
#[derive(Clone, Debug, Serialize)]
pub struct Reads {
    /// Reader threads.
    pub threads: usize,
    /// Gets of written keys.
    pub present: Latency,
    /// Gets of keys never written.
    pub absent: Latency,
}

/// Figures of one side (canopy, or bare RocksDB).
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    /// Keys per second over the whole ingest.
    pub keys_per_s: f64,
    /// Seconds of the ingest.
    pub ingest_s: f64,
    /// The slowest checkpoint interval, keys per second.
    pub min_interval_keys_per_s: f64,
    /// Largest resident memory during the ingest and the reads.
    pub peak_rss_bytes: u64,
    /// Bytes on disk after the ingest, the store closed.
    pub disk_bytes: u64,
    /// The same per key.
    pub disk_bytes_per_key: f64,
    /// Point gets on 1 and 2 threads.
    pub reads: Vec<Reads>,
    /// Keys per second of a prefix scan.
    pub scan_keys_per_s: f64,
    /// Seconds to reopen the store and serve a first read.
    pub reopen_s: f64,
    /// Seconds a compaction of everything took, with `--compact`.
    pub compact_s: Option<f64>,
    /// Bytes on disk per key after it, at rest.
    pub compacted_disk_bytes_per_key: Option<f64>,
    /// Every checkpoint of the ingest.
    pub checkpoints: Vec<Checkpoint>,
}

/// Figures of a run. The first fields are canopy's, for scripts.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    /// Keys written.
    pub keys: u64,
    /// Topics.
    pub topics: usize,
    /// canopy's keys per second.
    pub keys_per_s: f64,
    /// canopy's peak RSS.
    pub peak_rss_bytes: u64,
    /// canopy's bytes on disk per key.
    pub disk_bytes_per_key: f64,
    /// canopy's median get of a present key on one thread, microseconds.
    pub get_p50_us: u64,
    /// canopy's 99th percentile of the same.
    pub get_p99_us: u64,
    /// Bytes per key.
    pub key_bytes: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Keys per batch.
    pub batch: usize,
    /// canopy.
    pub canopy: Side,
    /// Bare RocksDB, with `--baseline`.
    pub rocksdb: Option<Side>,
}

/// What the run tells its caller as it goes.
pub enum Event<'a> {
    /// Keys written so far by the side running now.
    Progress(&'static str, u64),
    /// A checkpoint.
    Checkpoint(&'a Checkpoint),
    /// A phase after the ingest begins.
    Phase(&'static str),
}

/// 64 pseudo-random bits, the `n`th of the stream seeded by `seed` (splitmix64).
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Key `index`: printable bytes, spread evenly over the key space.
pub fn key_of(index: u64, bytes: usize) -> Vec<u8> {
    let seed = mix(0x6b65_7973, index);
    (0..bytes as u64).map(|n| b'!' + (mix(seed, n) % 94) as u8).collect()
}

/// The value of key `index`.
pub fn value_of(index: u64, bytes: usize) -> Vec<u8> {
    let seed = mix(0x7661_6c75, index);
    let mut value = Vec::with_capacity(bytes + 8);
    let mut n = 0;
    while value.len() < bytes {
        value.extend_from_slice(&mix(seed, n).to_le_bytes());
        n += 1;
    }
    value.truncate(bytes);
    value
}

/// Resident and peak resident memory of this process, from `/proc/self/status`.
pub fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Starts counting the peak RSS again from now (Linux: writing 5 to `clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// RocksDB's pending compaction bytes over every column family, and its cumulative stall.
fn rocks_figures(db: &rocksdb::DB, families: &[&str]) -> RocksFigures {
    let property = |name: &str, property: &str| -> u64 {
        let value = match name {
            "default" => db.property_int_value(property),
            _ => match db.cf_handle(name) {
                Some(cf) => db.property_int_value_cf(cf, property),
                None => Ok(None),
            },
        };
        value.ok().flatten().unwrap_or(0)
    };
    let pending_compaction_bytes =
        families.iter().map(|name| property(name, "rocksdb.estimate-pending-compaction-bytes")).sum();
    let families = families
        .iter()
        .map(|name| FamilyDisk {
            name: name.to_string(),
            sst_bytes: property(name, "rocksdb.total-sst-files-size"),
            blob_bytes: property(name, "rocksdb.total-blob-file-size"),
            blob_garbage_bytes: property(name, "rocksdb.live-blob-file-garbage-size"),
        })
        .collect();
    let stats = db.property_value("rocksdb.dbstats").ok().flatten().unwrap_or_default();
    RocksFigures { pending_compaction_bytes, stall_s: cumulative_stall(&stats), families }
}

/// The seconds of "Cumulative stall: HH:MM:SS.sss H:M:S" in RocksDB's `dbstats`.
fn cumulative_stall(stats: &str) -> f64 {
    let Some(line) = stats.lines().find(|line| line.starts_with("Cumulative stall:")) else { return 0.0 };
    let Some(clock) = line.trim_start_matches("Cumulative stall:").split_whitespace().next() else { return 0.0 };
    clock.split(':').fold(0.0, |total, part| total * 60.0 + part.parse::<f64>().unwrap_or(0.0))
}

fn topic_name(index: usize) -> String {
    format!("scale-{index:05}")
}

/// Which topic key `index` went to.
fn topic_of(index: u64, config: &ScaleConfig) -> usize {
    ((index / config.batch as u64) % config.topics as u64) as usize
}

/// Runs the ingest: `write(batch)` for every batch on the writer threads, while the monitor
/// reports progress and checkpoints.
fn ingest(
    side: &'static str,
    config: &ScaleConfig,
    dir: &Path,
    figures: &(dyn Fn() -> RocksFigures + Sync),
    write: &(dyn Fn(u64) + Sync),
    events: &(dyn Fn(Event) + Sync),
) -> (f64, Vec<Checkpoint>) {
    let batches = config.keys.div_ceil(config.batch as u64);
    let next = AtomicU64::new(0);
    let written = AtomicU64::new(0);
    let started = Instant::now();
    let every = (config.keys / config.checkpoints.max(1)).max(1);
    // A writer whose batch crosses a checkpoint tells the monitor when it did, so intervals are
    // timed exactly; the monitor then samples memory, disk and RocksDB.
    let (crossed, crossings) = std::sync::mpsc::channel::<(u64, f64)>();
    let checkpoints = std::thread::scope(|scope| {
        let written = &written;
        let monitor = scope.spawn(move || {
            let mut checkpoints: Vec<Checkpoint> = Vec::new();
            loop {
                match crossings.recv_timeout(Duration::from_millis(100)) {
                    Ok((keys, elapsed_s)) => {
                        let (rss_bytes, peak_rss_bytes) = rss();
                        let RocksFigures { pending_compaction_bytes, stall_s, families } = figures();
                        // Two writers crossing checkpoints at nearly the same time may report
                        // out of order: an interval runs from the checkpoint with the most keys
                        // below this one.
                        let (last_keys, last_s) = checkpoints
                            .iter()
                            .filter(|c| c.keys < keys)
                            .max_by_key(|c| c.keys)
                            .map_or((0, 0.0), |c| (c.keys, c.elapsed_s));
                        let checkpoint = Checkpoint {
                            side,
                            keys,
                            elapsed_s,
                            interval_keys_per_s: (keys - last_keys) as f64 / (elapsed_s - last_s).max(1e-3),
                            rss_bytes,
                            peak_rss_bytes,
                            disk_bytes: dir_bytes(dir),
                            pending_compaction_bytes,
                            stall_s,
                            families,
                        };
                        events(Event::Checkpoint(&checkpoint));
                        checkpoints.push(checkpoint);
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        events(Event::Progress(side, written.load(Ordering::SeqCst)));
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        checkpoints.sort_by_key(|c| c.keys);
                        return checkpoints;
                    }
                }
            }
        });
        let writers: Vec<_> = (0..config.writers.max(1))
            .map(|_| {
                let crossed = crossed.clone();
                let (next, started) = (&next, &started);
                scope.spawn(move || {
                    loop {
                        let batch = next.fetch_add(1, Ordering::Relaxed);
                        if batch >= batches {
                            return;
                        }
                        write(batch);
                        let first = batch * config.batch as u64;
                        let keys = (first + config.batch as u64).min(config.keys) - first;
                        let before = written.fetch_add(keys, Ordering::SeqCst);
                        let after = before + keys;
                        if after / every > before / every || after == config.keys {
                            let _ = crossed.send((after, started.elapsed().as_secs_f64()));
                        }
                    }
                })
            })
            .collect();
        drop(crossed);
        for writer in writers {
            writer.join().expect("writer thread");
        }
        monitor.join().expect("monitor thread")
    });
    (started.elapsed().as_secs_f64(), checkpoints)
}

/// Gets on `threads` threads, `count` in all, of keys `pick(rng)`; `get(index)` says whether
/// the key was found, which must equal `present`.
fn read(
    threads: usize,
    count: usize,
    present: bool,
    config: &ScaleConfig,
    get: &(dyn Fn(u64) -> anyhow::Result<bool> + Sync),
) -> anyhow::Result<Latency> {
    let started = Instant::now();
    let histograms: Vec<anyhow::Result<Histogram<u64>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(thread as u64 + if present { 0 } else { 1000 });
                    let mut histogram = crate::latency_histogram();
                    for _ in 0..count / threads {
                        let index = if present {
                            rng.random_range(0..config.keys)
                        } else {
                            config.keys + rng.random_range(0..u64::MAX / 2)
                        };
                        let began = Instant::now();
                        let found = get(index)?;
                        histogram.saturating_record(began.elapsed().as_nanos().div_ceil(1000) as u64);
                        anyhow::ensure!(found == present, "key {index}: found {found}, expected {present}");
                    }
                    Ok(histogram)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("reader thread")).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut all = crate::latency_histogram();
    for histogram in histograms {
        all.add(histogram?).expect("histograms of equal bounds add");
    }
    let cdf =
        all.iter_quantiles(1).map(|step| (step.value_iterated_to(), step.quantile_iterated_to())).collect::<Vec<_>>();
    Ok(Latency {
        reads: all.len(),
        reads_per_s: all.len() as f64 / seconds,
        p50_us: all.value_at_quantile(0.5),
        p99_us: all.value_at_quantile(0.99),
        p999_us: all.value_at_quantile(0.999),
        max_us: all.max(),
        cdf: thin(cdf, 200),
    })
}

/// At most `points` points of a curve, evenly picked, the last kept.
fn thin(curve: Vec<(u64, f64)>, points: usize) -> Vec<(u64, f64)> {
    if curve.len() <= points {
        return curve;
    }
    let step = curve.len().div_ceil(points);
    let last = curve.last().copied();
    let mut thinned: Vec<_> = curve.into_iter().step_by(step).collect();
    if let Some(last) = last
        && thinned.last() != Some(&last)
    {
        thinned.push(last);
    }
    thinned
}

fn reads(config: &ScaleConfig, get: &(dyn Fn(u64) -> anyhow::Result<bool> + Sync)) -> anyhow::Result<Vec<Reads>> {
    [1, 2]
        .into_iter()
        .map(|threads| {
            Ok(Reads {
                threads,
                present: read(threads, config.reads, true, config, get)?,
                absent: read(threads, config.absent_reads, false, config, get)?,
            })
        })
        .collect()
}

fn side(
    config: &ScaleConfig,
    (ingest_s, checkpoints): (f64, Vec<Checkpoint>),
    disk_bytes: u64,
    reads: Vec<Reads>,
    scan_keys_per_s: f64,
) -> Side {
    Side {
        keys_per_s: config.keys as f64 / ingest_s,
        ingest_s,
        min_interval_keys_per_s: checkpoints.iter().map(|c| c.interval_keys_per_s).fold(f64::INFINITY, f64::min),
        peak_rss_bytes: rss().1,
        disk_bytes,
        disk_bytes_per_key: disk_bytes as f64 / config.keys as f64,
        reads,
        scan_keys_per_s,
        reopen_s: 0.0,
        compact_s: None,
        compacted_disk_bytes_per_key: None,
        checkpoints,
    }
}

/// Runs canopy's side, then bare RocksDB's with `baseline`.
pub fn run(config: &ScaleConfig, events: &(dyn Fn(Event) + Sync)) -> anyhow::Result<ScaleReport> {
    anyhow::ensure!(
        config.keys > 0 && config.batch > 0 && config.topics > 0,
        "keys, batch and topics must be positive"
    );
    anyhow::ensure!(config.key_bytes >= 8, "key-bytes must be at least 8 (keys must not collide)");
    anyhow::ensure!(config.reads >= 2 && config.absent_reads >= 2, "reads must be at least 2");
    let temp = tempfile::tempdir()?;
    let root = config.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    // Without --keep each store goes as soon as it is measured: at 100M keys two would not fit.
    let canopy = run_canopy(config, &root.join("canopy"), events)?;
    if !config.keep {
        let _ = std::fs::remove_dir_all(root.join("canopy"));
    }
    let rocksdb = if config.baseline { Some(run_bare(config, &root.join("rocksdb"), events)?) } else { None };
    if !config.keep {
        let _ = std::fs::remove_dir_all(root.join("rocksdb"));
    }
    let one_thread = &canopy.reads[0].present;
    Ok(ScaleReport {
        keys: config.keys,
        topics: config.topics,
        keys_per_s: canopy.keys_per_s,
        peak_rss_bytes: canopy.peak_rss_bytes,
        disk_bytes_per_key: canopy.disk_bytes_per_key,
        get_p50_us: one_thread.p50_us,
        get_p99_us: one_thread.p99_us,
        key_bytes: config.key_bytes,
        value_bytes: config.value_bytes,
        batch: config.batch,
        canopy,
        rocksdb,
    })
}

fn run_canopy(config: &ScaleConfig, dir: &Path, events: &(dyn Fn(Event) + Sync)) -> anyhow::Result<Side> {
    anyhow::ensure!(!dir.exists(), "{} exists already: give an empty --data-dir", dir.display());
    reset_peak_rss();
    let store = Store::open(dir, StoreOptions::default())?;
    let topics: Vec<Topic> = (0..config.topics).map(|t| store.topic(&topic_name(t))).collect::<Result<_, _>>()?;
    let (ingested, read_figures, scan_keys_per_s) = {
        let db = store.blocks().db();
        let figures = || rocks_figures(db, &canopy_crdt::FAMILIES);
        let write = |batch: u64| {
            let first = batch * config.batch as u64;
            let mut ops = Batch::new();
            for index in first..(first + config.batch as u64).min(config.keys) {
                ops.put(key_of(index, config.key_bytes), value_of(index, config.value_bytes));
            }
            topics[(batch % config.topics as u64) as usize].batch(ops).expect("canopy batch");
        };
        let ingested = ingest("canopy", config, dir, &figures, &write, events);
        let written: u64 = topics.iter().map(Topic::key_count).sum();
        anyhow::ensure!(written == config.keys, "canopy holds {written} keys, {} were written", config.keys);

        events(Event::Phase("canopy: point gets"));
        let get = |index: u64| -> anyhow::Result<bool> {
            let topic = &topics[topic_of(index.min(config.keys - 1), config)];
            Ok(topic.get(&key_of(index, config.key_bytes))?.is_some())
        };
        let read_figures = reads(config, &get)?;
        events(Event::Phase("canopy: prefix scan"));
        let scan_keys_per_s = scan(
            |after| {
                let page = topics[0].query(b"", after.as_deref(), 1000)?;
                Ok((page.entries.len(), page.next))
            },
            config.scan_keys,
        )?;
        (ingested, read_figures, scan_keys_per_s)
    };
    drop(topics);
    drop(store);
    settle(dir)?;
    let mut side = side(config, ingested, dir_bytes(dir), read_figures, scan_keys_per_s);

    events(Event::Phase("canopy: reopen"));
    let started = Instant::now();
    let store = Store::open(dir, StoreOptions::default())?;
    let topic = store.topic(&topic_name(0))?;
    anyhow::ensure!(topic.get(&key_of(0, config.key_bytes))?.is_some(), "key 0 is missing after reopening");
    side.reopen_s = started.elapsed().as_secs_f64();
    drop((topic, store));

    if config.compact {
        events(Event::Phase("canopy: compaction"));
        let options = StoreOptions { snapshot_retain_ms: None, ..StoreOptions::default() };
        let store = Store::open(dir, options)?;
        let started = Instant::now();
        for name in store.topic_names() {
            let topic = store.topic(&name)?;
            topic.compact()?;
            topic.release_snapshot_parts()?;
        }
        compact_ranges(&store);
        side.compact_s = Some(started.elapsed().as_secs_f64());
        drop(store);
        settle(dir)?;
        side.compacted_disk_bytes_per_key = Some(dir_bytes(dir) as f64 / config.keys as f64);
    }
    Ok(side)
}

/// Pages through a scan: `page(after)` gives the entries read and the next `after`.
fn scan(
    mut page: impl FnMut(Option<Vec<u8>>) -> anyhow::Result<(usize, Option<Vec<u8>>)>,
    limit: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (mut read, mut after) = (0, None);
    loop {
        let (entries, next) = page(after)?;
        read += entries;
        match next {
            Some(next) if read < limit => after = Some(next),
            _ => break,
        }
    }
    Ok(read as f64 / started.elapsed().as_secs_f64())
}

fn bare_key(index: u64, config: &ScaleConfig) -> Vec<u8> {
    let mut key = (topic_of(index.min(config.keys - 1), config) as u32).to_be_bytes().to_vec();
    key.extend_from_slice(&key_of(index, config.key_bytes));
    key
}

fn run_bare(config: &ScaleConfig, dir: &Path, events: &(dyn Fn(Event) + Sync)) -> anyhow::Result<Side> {
    anyhow::ensure!(!dir.exists(), "{} exists already: give an empty --data-dir", dir.display());
    reset_peak_rss();
    let db = bare_db(dir)?;
    let figures = || rocks_figures(&db, &["default"]);
    let mut write_options = rocksdb::WriteOptions::default();
    write_options.set_sync(false);
    let write = |batch: u64| {
        let first = batch * config.batch as u64;
        let mut ops = rocksdb::WriteBatch::default();
        for index in first..(first + config.batch as u64).min(config.keys) {
            ops.put(bare_key(index, config), value_of(index, config.value_bytes));
        }
        db.write_opt(ops, &write_options).expect("bare rocksdb write");
    };
    let ingested = ingest("rocksdb", config, dir, &figures, &write, events);
    events(Event::Phase("rocksdb: point gets"));
    let get = |index: u64| -> anyhow::Result<bool> { Ok(db.get_pinned(bare_key(index, config))?.is_some()) };
    let read_figures = reads(config, &get)?;
    events(Event::Phase("rocksdb: prefix scan"));
    let started = Instant::now();
    let mut read = 0usize;
    for item in db.prefix_iterator(0u32.to_be_bytes()) {
        item?;
        read += 1;
        if read >= config.scan_keys {
            break;
        }
    }
    let scan_keys_per_s = read as f64 / started.elapsed().as_secs_f64();
    drop(db);
    settle(dir)?;
    let mut side = side(config, ingested, dir_bytes(dir), read_figures, scan_keys_per_s);
    let started = Instant::now();
    let db = bare_db(dir)?;
    anyhow::ensure!(db.get(bare_key(0, config))?.is_some(), "key 0 is missing after reopening");
    side.reopen_s = started.elapsed().as_secs_f64();
    if config.compact {
        let started = Instant::now();
        db.compact_range(None::<&[u8]>, None::<&[u8]>);
        side.compact_s = Some(started.elapsed().as_secs_f64());
        drop(db);
        settle(dir)?;
        side.compacted_disk_bytes_per_key = Some(dir_bytes(dir) as f64 / config.keys as f64);
    }
    Ok(side)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_by_their_index_and_distinct() {
        assert_eq!(key_of(7, 32), key_of(7, 32));
        let keys: std::collections::HashSet<Vec<u8>> = (0..10_000).map(|i| key_of(i, 8)).collect();
        assert_eq!(keys.len(), 10_000);
        assert!(key_of(3, 32).iter().all(|b| (b'!'..=b'~').contains(b)));
        assert_eq!(value_of(3, 100).len(), 100);
        assert_ne!(value_of(3, 100), value_of(4, 100));
    }

    #[test]
    fn stall_time_is_read_from_dbstats() {
        let stats = "** DB Stats **\nUptime(secs): 10.0 total\nCumulative stall: 00:01:2.500 H:M:S, 1.0 percent\n";
        assert_eq!(cumulative_stall(stats), 62.5);
        assert_eq!(cumulative_stall("nothing"), 0.0);
    }

    #[test]
    fn a_small_run_reports_every_figure() {
        let config = ScaleConfig {
            keys: 20_000,
            topics: 3,
            key_bytes: 16,
            value_bytes: 20,
            batch: 500,
            writers: 2,
            checkpoints: 4,
            reads: 2_000,
            absent_reads: 200,
            scan_keys: 5_000,
            dir: None,
            keep: false,
            compact: true,
            baseline: true,
        };
        let seen = std::sync::Mutex::new(Vec::new());
        let report = run(&config, &|event| {
            if let Event::Checkpoint(checkpoint) = event {
                seen.lock().unwrap().push((checkpoint.side, checkpoint.keys));
            }
        })
        .unwrap();
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.iter().rfind(|(side, _)| *side == "canopy").map(|c| c.1), Some(20_000));
        assert!(seen.iter().filter(|(side, _)| *side == "canopy").count() >= 4, "{seen:?}");
        assert_eq!(report.keys, 20_000);
        assert_eq!(report.canopy.reads.len(), 2);
        assert_eq!(report.canopy.reads[1].present.reads, 2_000);
        assert!(report.disk_bytes_per_key > 0.0 && report.peak_rss_bytes > 0);
        assert!(report.canopy.compacted_disk_bytes_per_key.is_some());
        let bare = report.rocksdb.unwrap();
        assert_eq!(bare.reads[0].absent.reads, 200);
        assert!(bare.scan_keys_per_s > 0.0);
    }
}
