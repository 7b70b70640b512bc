//! `canopy-bench`: workloads, the deterministic simulator and reports.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use canopy_bench::ingest::{self, IngestConfig};
use canopy_bench::replication::{self, ReplicationConfig};
use canopy_bench::sim::{self, SimConfig};
use canopy_crdt::sim::Faults;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "canopy-bench", version, about = "canopy's workloads, simulator and reports")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulate a cluster in one process under a seeded workload and network faults, then check
    /// that every replica converged to the state the semantics give and nothing was lost.
    Sim(SimArgs),
    /// Measure local write throughput against bare RocksDB on the same machine.
    Ingest(IngestArgs),
    /// Measure replication between real nodes on loopback: write-to-visible latency between two
    /// nodes and the time an empty node takes to catch up a topic.
    Replication(ReplicationArgs),
}

#[derive(clap::Args)]
struct ReplicationArgs {
    /// Writes whose write-to-visible latency is sampled.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Keys of the topic an empty node catches up.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Keys per batch when filling that topic.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Seconds to wait for any one step before failing.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// Print the report as JSON.
    #[arg(long)]
    /// Compact the catch-up topic first: the empty node bootstraps from a snapshot.
    #[arg(long)]
    compact: bool,
    json: bool,
}

#[derive(clap::Args)]
struct SimArgs {
    /// Replicas in the cluster.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=64))]
    replicas: u64,
    /// Topics every replica subscribes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    topics: u64,
    /// Workload operations.
    #[arg(long, default_value_t = 1000)]
    ops: usize,
    /// Seed; the same seed gives the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Last seed of a sweep: runs every seed from --seed to --seeds-to.
    #[arg(long)]
    seeds_to: Option<u64>,
    /// Probability that a message is dropped.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    drop: f64,
    /// Probability that a message is duplicated.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    dup: f64,
    /// Probability that a message is delayed past later ones.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    reorder: f64,
    /// Probability that a message is corrupted.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    corrupt: f64,
    /// Split replicas into random groups now and then, and heal them.
    #[arg(long)]
    partitions: bool,
    /// Crash replicas now and then and reopen them from disk.
    #[arg(long)]
    crashes: bool,
    /// Hostile participants that attack the replicas during the workload.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=16))]
    adversaries: u64,
    /// Before the workload, replica 0 writes a chain of this many blocks alone; the others
    /// catch it up from nothing.
    #[arg(long, default_value_t = 0)]
    deep: usize,
    /// Probability, per workload operation, that a random replica compacts a random topic
    /// (also just before some crashes). With it, every replica compacts every topic once the
    /// cluster is quiet, and a replica that starts empty joins and must catch up.
    #[arg(long, default_value_t = 0.0, value_parser = probability)]
    compact: f64,
}

#[derive(clap::Args)]
struct IngestArgs {
    /// Keys to write.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Bytes per key.
    #[arg(long, default_value_t = 32)]
    key_bytes: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Keys per batch; 1 writes every key as its own put.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Topics the batches are spread over.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Concurrent submitting threads [default: 64 with --batch 1, else 1].
    #[arg(long)]
    writers: Option<usize>,
    /// canopy writer threads.
    #[arg(long, default_value_t = 2)]
    store_writers: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for both databases [default: a temporary directory].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write every key this many times, each round with new values (overwrites).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    rounds: u64,
    /// Compact at the end (canopy: every topic's history, then its RocksDB ranges; bare: a full
    /// RocksDB compaction) and print disk per key after it.
    #[arg(long)]
    compact: bool,
    /// Compact the first topic over and over while canopy writes, to measure what compaction
    /// costs the writes beside it (compare the batch latencies with a run without it).
    #[arg(long)]
    compact_during: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn probability(text: &str) -> Result<f64, String> {
    let p: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&p) { Ok(p) } else { Err(format!("{p} is not a probability between 0 and 1")) }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("canopy-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sim(args) => run_sim(args),
        Command::Ingest(args) => run_ingest(args),
        Command::Replication(args) => run_replication(args),
    }
}

fn run_sim(args: SimArgs) -> anyhow::Result<ExitCode> {
    let last = args.seeds_to.unwrap_or(args.seed);
    anyhow::ensure!(last >= args.seed, "--seeds-to must not be below --seed");
    let mut failed = 0u64;
    for seed in args.seed..=last {
        let config = SimConfig {
            replicas: args.replicas as usize,
            topics: args.topics as usize,
            ops: args.ops,
            seed,
            faults: Faults { drop: args.drop, dup: args.dup, reorder: args.reorder, corrupt: args.corrupt },
            partitions: args.partitions,
            crashes: args.crashes,
            adversaries: args.adversaries as usize,
            deep: args.deep,
            compact: args.compact,
            ..SimConfig::default()
        };
        let report = sim::run(&config).with_context(|| format!("simulation of seed {seed} failed"))?;
        println!("{report}");
        if args.deep > 0 {
            // Memory is the point of a deep run; the figures go to stderr so runs of one seed
            // still print identical lines. The second includes the check, which loads every block.
            eprintln!(
                "peak_rss_mb_until_quiet={} peak_rss_mb_with_check={}",
                report.quiet_peak_rss_bytes.unwrap_or(0) >> 20,
                sim::peak_rss_bytes().unwrap_or(0) >> 20
            );
        }
        if !report.passed() {
            failed += 1;
        }
    }
    if last > args.seed {
        println!("seeds={} failed={failed}", last - args.seed + 1);
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run_ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let writers = args.writers.unwrap_or(if args.batch == 1 { 64 } else { 1 });
    let config = IngestConfig {
        keys: args.keys,
        key_bytes: args.key_bytes,
        value_bytes: args.value_bytes,
        batch: args.batch,
        topics: args.topics,
        writers,
        store_writer_threads: args.store_writers,
        seed: args.seed,
        dir: args.dir,
        rounds: args.rounds as usize,
        compact: args.compact,
        compact_during: args.compact_during,
    };
    let report = ingest::run(&config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "keys={} key_bytes={} value_bytes={} batch={} topics={} writers={}",
            report.keys, report.key_bytes, report.value_bytes, report.batch, report.topics, report.writers
        );
        if let Some(compactions) = report.compactions_during {
            println!("compactions of the first topic during canopy's writes: {compactions}");
        }
        if report.rounds > 1 {
            println!("rounds={} (every key written {} times; keys/s counts every write)", report.rounds, report.rounds);
        }
        for (name, side) in [("canopy", &report.canopy), ("bare", &report.bare)] {
            println!(
                "{name:<7} {:>10.0} keys/s  {:>7.2} s  {:>6.1} disk B/key  batch p50={}us p99={}us p999={}us",
                side.keys_per_s, side.seconds, side.disk_bytes_per_key, side.p50_us, side.p99_us, side.p999_us
            );
        }
        println!("ratio canopy/bare = {:.2}", report.ratio);
        if let (Some(compacted), Some(with_parts), Some(seconds)) = (
            report.compacted_disk_bytes_per_key,
            report.compacted_with_parts_disk_bytes_per_key,
            report.compact_seconds,
        ) {
            println!(
                "disk B/key: canopy {:.1}; compacted {with_parts:.1} while the snapshot parts are held, {compacted:.1} \
                 at rest (compaction {seconds:.2} s); bare {:.1} after a full RocksDB compaction",
                report.disk_bytes_per_key, report.bare_disk_bytes_per_key
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_replication(args: ReplicationArgs) -> anyhow::Result<ExitCode> {
    let config = ReplicationConfig {
        samples: args.samples,
        catch_up_keys: args.keys,
        batch: args.batch,
        value_bytes: args.value_bytes,
        timeout: std::time::Duration::from_secs(args.timeout_s),
        compact: args.compact,
    };
    let report = replication::run(&config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "write-to-visible latency over {} writes: p50={}us p99={}us max={}us",
            report.samples, report.latency_p50_us, report.latency_p99_us, report.latency_max_us
        );
        let from = match report.compact_s {
            Some(seconds) => format!(" from a snapshot (compaction took {seconds:.2} s)"),
            None => String::new(),
        };
        println!(
            "catch-up of {} keys by an empty node{from}: {:.2} s ({:.0} keys/s)",
            report.catch_up_keys, report.catch_up_s, report.catch_up_keys_per_s
        );
    }
    Ok(ExitCode::SUCCESS)
}
