//! `canopy-bench`: workloads, the deterministic simulator and reports.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use canopy_bench::ingest::{self, IngestConfig};
use canopy_bench::replication::{self, ReplicationConfig};
use canopy_bench::scale::{self, Event, ScaleConfig};
use canopy_bench::sim::{self, SimConfig};
use canopy_bench::topics::{self, TopicsConfig};
use canopy_crdt::sim::Faults;
use clap::{Parser, Subcommand};

mod table_runs;

use table_runs::{DocsArgs, TablesArgs};

/// canopy's binaries allocate with mimalloc: the writer thread frees what callers allocated,
/// which glibc's allocator made a quarter of its time (see ARCHITECTURE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// One node's engine at scale: ingest with checkpoints (rate, RSS, disk, RocksDB pending
    /// compaction and stalls), then point gets, a prefix scan, reopening, and compaction.
    Scale(ScaleArgs),
    /// Many topics on one node: creating them, memory per topic, writing to all, restarting;
    /// with `--nodes 2`, the time until a second node has converged on every topic.
    Topics(TopicsArgs),
    /// Sharded tables over `canopy serve --tables` processes on loopback: routed batch ingest
    /// beside the embedded engine's, single puts, forwarded gets, puts acknowledged by two
    /// copies, and the time until the table is balanced again after one more member joins.
    Tables(TablesArgs),
    /// Documents beside plain values of the same size on the embedded engine: ingest rates in
    /// one run, and queries finding about 100 documents by a field.
    Docs(DocsArgs),
    /// A fault test of `canopy serve --tables` processes in network namespaces (root only): a
    /// seeded nemesis partitions, drops, pauses, kills and skews members while clients write,
    /// then every acknowledged write must be readable through every member within 120 s.
    Faults(FaultsArgs),
    /// Run a named set of workloads and write DIR/report.md (tables, SVG plots) and
    /// DIR/results.jsonl (every figure, with the command that measures it alone).
    Report(ReportArgs),
}

#[derive(clap::Args)]
struct FaultsArgs {
    /// Seed of the nemesis's schedule and of the workload's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Members, each a `canopy serve --tables` in a network namespace of its own.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=canopy_bench::faults::MEMBERS_MAX as u64))]
    members: u64,
    /// Seconds of workload under the nemesis.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration_s: u64,
    /// The `canopy` binary the members run [default: the one beside canopy-bench].
    #[arg(long)]
    canopy: Option<PathBuf>,
    /// Directory for every process's log (and the operations of a failing run) [default: a
    /// temporary directory, kept only when a check fails].
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Print one JSON line with the report after the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// quick: a few minutes on a 2-core machine; full: 100M keys and 10,000 topics (hours);
    /// scale: 100M keys in 1 and in 64 topics beside bare RocksDB, against their bounds.
    #[arg(long, value_enum, default_value_t = canopy_bench::report::Profile::Quick)]
    profile: canopy_bench::report::Profile,
    /// Directory for report.md, its plots and results.jsonl.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct TopicsArgs {
    /// Topics on the node.
    #[arg(long, default_value_t = 10_000)]
    topics: usize,
    /// Keys written into each topic.
    #[arg(long, default_value_t = 100)]
    keys_per_topic: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// 1, or 2 for a second node that replicates every topic.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=2))]
    nodes: u64,
    /// Seconds the second node may take to converge.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Print the report as one JSON line.
    #[arg(long)]
    json: bool,
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
    /// Compact the catch-up topic first: the empty node bootstraps from a snapshot.
    #[arg(long)]
    compact: bool,
    /// Write the catch-up topic as single puts, one block per key, instead of batches.
    #[arg(long)]
    deep: bool,
    /// Run `canopy serve` processes and measure through their HTTP API: a PUT on one, the
    /// value seen on another's watch stream; an empty third process catching up.
    #[arg(long)]
    processes: bool,
    /// The `canopy` binary for `--processes` [default: the one beside canopy-bench].
    #[arg(long)]
    canopy: Option<std::path::PathBuf>,
    /// With --processes: every call carries an API token and each process admits only the
    /// others (`canopy serve --tokens --admit`).
    #[arg(long, requires = "processes")]
    secure: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What every written key looks like, and how keys are grouped.
#[derive(clap::Args)]
struct Shape {
    /// Bytes per key.
    #[arg(long, default_value_t = 32)]
    key_bytes: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Keys per batch (ingest: 1 writes every key as its own put).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Topics the batches go to, round-robin.
    #[arg(long, default_value_t = 1)]
    topics: usize,
}

#[derive(clap::Args)]
struct ScaleArgs {
    /// Keys to write.
    #[arg(long, default_value_t = 10_000_000)]
    keys: u64,
    #[command(flatten)]
    shape: Shape,
    /// Threads submitting batches.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Checkpoints printed over the ingest.
    #[arg(long, default_value_t = 20)]
    checkpoints: u64,
    /// Point gets of present keys (per reader-thread setting).
    #[arg(long, default_value_t = 1_000_000)]
    reads: usize,
    /// Point gets of absent keys (per reader-thread setting).
    #[arg(long, default_value_t = 100_000)]
    absent_reads: usize,
    /// Keys the prefix scan reads at most.
    #[arg(long, default_value_t = 1_000_000)]
    scan_keys: usize,
    /// Directory for the stores [default: a temporary directory].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the stores afterwards.
    #[arg(long)]
    keep: bool,
    /// Compact every topic at the end and measure the disk again.
    #[arg(long)]
    compact: bool,
    /// Run the same workload against bare RocksDB too.
    #[arg(long)]
    baseline: bool,
    /// One JSON object per line: every checkpoint, then the result.
    #[arg(long)]
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
    /// Byzantine replicas: they also forge, strip and re-attribute signatures and replay
    /// other authors' blocks under their own key. With them the cluster gets a topic owned by
    /// replica 0, which the others try to write and must be refused.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=16))]
    byzantine: u64,
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
    #[command(flatten)]
    shape: Shape,
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
    /// Write without key history (`StoreOptions::key_history` off), to see what recording it
    /// costs.
    #[arg(long)]
    no_key_history: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn probability(text: &str) -> Result<f64, String> {
    let p: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&p) { Ok(p) } else { Err(format!("{p} is not a probability between 0 and 1")) }
}

fn main() -> ExitCode {
    // The nodes the workloads embed log through `tracing`; RUST_LOG turns it on.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("canopy-bench: {}", canopy_node::error_text(error.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sim(args) => run_sim(args),
        Command::Ingest(args) => run_ingest(args),
        Command::Replication(args) => run_replication(args),
        Command::Scale(args) => run_scale(args),
        Command::Topics(args) => run_topics(args),
        Command::Tables(args) => table_runs::run_tables(args),
        Command::Docs(args) => table_runs::run_docs(args),
        Command::Faults(args) => run_faults(args),
        Command::Report(args) => {
            canopy_bench::report::run(args.profile, &args.out, &|phase| eprintln!("{phase}"))?;
            println!("wrote {}", args.out.join("report.md").display());
            Ok(ExitCode::SUCCESS)
        }
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
            byzantine: args.byzantine as usize,
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

fn run_faults(args: FaultsArgs) -> anyhow::Result<ExitCode> {
    use canopy_bench::faults::{self, FaultsConfig};
    faults::stop_on_signals()?;
    let config = FaultsConfig {
        seed: args.seed,
        members: args.members as usize,
        duration_s: args.duration_s,
        canopy: args.canopy.unwrap_or_else(canopy_bench::replication::default_canopy),
        keep_logs: args.keep_logs,
    };
    let report = faults::run(&config)?;
    println!("seed={} members={} duration_s={}", report.seed, report.members, report.duration_s);
    println!("{:<18} {:>12} {:>8} {:>13}", "writes", "acknowledged", "failed", "indeterminate");
    for (kind, outcomes) in &report.ops {
        let kind = serde_json::to_value(kind)?.as_str().unwrap_or_default().to_string();
        println!("{kind:<18} {:>12} {:>8} {:>13}", outcomes.acknowledged, outcomes.failed, outcomes.indeterminate);
    }
    for (reply, count) in &report.unacknowledged_replies {
        println!("  {count:>6} unacknowledged: {reply}");
    }
    let faults: Vec<String> = report.faults.iter().map(|(kind, count)| format!("{kind}={count}")).collect();
    println!("faults: {}", faults.join(" "));
    match report.converge_s {
        Some(seconds) => println!("converged {seconds:.1} s after the heal"),
        None => println!("NOT converged within {:?} of the heal", faults::CONVERGE_TIMEOUT),
    }
    println!("lost (acknowledged at ack 2): {}  lost at ack 1: {}", report.lost, report.lost_ack1);
    let reads: Vec<String> = report
        .causal_reads
        .iter()
        .map(|(result, count)| {
            let result = serde_json::to_value(result).ok().and_then(|v| v.as_str().map(str::to_string));
            format!("{}={count}", result.unwrap_or_default())
        })
        .collect();
    println!("reads with a causal token: {}", reads.join(" "));
    for line in report.crashed.iter().chain(&report.problems) {
        println!("  {line}");
    }
    if let Some(logs) = &report.logs {
        println!("logs: {}", logs.display());
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run_ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let writers = args.writers.unwrap_or(if args.shape.batch == 1 { 64 } else { 1 });
    let config = IngestConfig {
        keys: args.keys,
        key_bytes: args.shape.key_bytes,
        value_bytes: args.shape.value_bytes,
        batch: args.shape.batch,
        topics: args.shape.topics,
        writers,
        store_writer_threads: args.store_writers,
        seed: args.seed,
        dir: args.dir,
        rounds: args.rounds as usize,
        compact: args.compact,
        compact_during: args.compact_during,
        key_history: !args.no_key_history,
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
        deep: args.deep,
        processes: args.processes.then(|| args.canopy.unwrap_or_else(canopy_bench::replication::default_canopy)),
        secure: args.secure,
    };
    let report = replication::run(&config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let how = if report.mode == "processes" { " (canopy serve processes, PUT to watch event)" } else { "" };
        let written = if report.deep { " written one block per key" } else { "" };
        println!(
            "write-to-visible latency over {} writes{how}: p50={}us p99={}us max={}us",
            report.samples, report.latency_p50_us, report.latency_p99_us, report.latency_max_us
        );
        let from = match report.compact_s {
            Some(seconds) => format!(" from a snapshot (compaction took {seconds:.2} s)"),
            None => String::new(),
        };
        println!(
            "catch-up of {} keys{written} by an empty node{from}: {:.2} s ({:.0} keys/s)",
            report.catch_up_keys, report.catch_up_s, report.catch_up_keys_per_s
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_scale(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    let config = ScaleConfig {
        keys: args.keys,
        topics: args.shape.topics,
        key_bytes: args.shape.key_bytes,
        value_bytes: args.shape.value_bytes,
        batch: args.shape.batch,
        writers: args.writers,
        checkpoints: args.checkpoints,
        reads: args.reads,
        absent_reads: args.absent_reads,
        scan_keys: args.scan_keys,
        dir: args.data_dir,
        keep: args.keep,
        compact: args.compact,
        baseline: args.baseline,
    };
    let bar = progress_bar(config.keys);
    let json = args.json;
    let report = scale::run(&config, &|event| match event {
        Event::Progress(side, keys) => {
            if let Some(bar) = &bar {
                if bar.length() != Some(config.keys) || !bar.message().starts_with(side) {
                    bar.reset();
                    bar.set_length(config.keys);
                    bar.set_message(side.to_string());
                }
                bar.set_position(keys);
            }
        }
        Event::Checkpoint(checkpoint) => {
            let line = if json {
                let mut value = serde_json::to_value(checkpoint).unwrap_or_default();
                value["kind"] = "checkpoint".into();
                value.to_string()
            } else {
                format!(
                    "{:<7} {:>11} keys {:>8.1} s {:>9.0} keys/s  rss {:>5} MiB (peak {:>5})  disk {:>6} MiB  \
                     pending compaction {:>5} MiB  stalled {:.1} s",
                    checkpoint.side,
                    checkpoint.keys,
                    checkpoint.elapsed_s,
                    checkpoint.interval_keys_per_s,
                    checkpoint.rss_bytes >> 20,
                    checkpoint.peak_rss_bytes >> 20,
                    checkpoint.disk_bytes >> 20,
                    checkpoint.pending_compaction_bytes >> 20,
                    checkpoint.stall_s
                )
            };
            match &bar {
                Some(bar) => bar.println(line),
                None => println!("{line}"),
            }
        }
        Event::Phase(phase) => match &bar {
            Some(bar) => bar.set_message(phase.to_string()),
            None if !json => eprintln!("{phase}"),
            None => {}
        },
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["kind"] = "result".into();
        for side in ["canopy", "rocksdb"] {
            if let Some(side) = value.get_mut(side).and_then(|s| s.as_object_mut()) {
                side.remove("checkpoints");
            }
        }
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "keys={} topics={} key_bytes={} value_bytes={} batch={}",
        report.keys, report.topics, report.key_bytes, report.value_bytes, report.batch
    );
    let sides = std::iter::once(("canopy", &report.canopy)).chain(report.rocksdb.as_ref().map(|s| ("rocksdb", s)));
    for (name, side) in sides {
        println!(
            "{name:<7} ingest {:>9.0} keys/s ({:.1} s, slowest interval {:.0} keys/s)  peak rss {} MiB  disk {:.1} B/key",
            side.keys_per_s,
            side.ingest_s,
            side.min_interval_keys_per_s,
            side.peak_rss_bytes >> 20,
            side.disk_bytes_per_key
        );
        for reads in &side.reads {
            println!(
                "{name:<7} get, {} thread(s): present p50={}us p99={}us p999={}us ({:.0}/s); absent p50={}us p99={}us \
                 ({:.0}/s)",
                reads.threads,
                reads.present.p50_us,
                reads.present.p99_us,
                reads.present.p999_us,
                reads.present.reads_per_s,
                reads.absent.p50_us,
                reads.absent.p99_us,
                reads.absent.reads_per_s
            );
        }
        println!(
            "{name:<7} prefix scan {:.0} keys/s; reopen and first read {:.3} s",
            side.scan_keys_per_s, side.reopen_s
        );
        if let (Some(seconds), Some(per_key)) = (side.compact_s, side.compacted_disk_bytes_per_key) {
            println!("{name:<7} compaction {seconds:.1} s, then disk {per_key:.1} B/key");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr when it is a terminal.
fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:24} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

fn run_topics(args: TopicsArgs) -> anyhow::Result<ExitCode> {
    let report = topics::run(&TopicsConfig {
        topics: args.topics,
        keys_per_topic: args.keys_per_topic,
        value_bytes: args.value_bytes,
        nodes: args.nodes as usize,
        timeout: std::time::Duration::from_secs(args.timeout_s),
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("topics={} keys_per_topic={}", report.topics, report.keys_per_topic);
    println!(
        "subscribe all: {:.2} s; rss per idle topic {:.0} B; after writing {:.0} B; restarted {:.0} B",
        report.create_s,
        report.rss_bytes_per_topic,
        report.rss_bytes_per_topic_after_writes,
        report.rss_bytes_per_topic_restarted
    );
    println!(
        "ingest over all topics: {:.0} keys/s; restart until every topic is readable: {:.2} s",
        report.ingest_keys_per_s, report.restart_s
    );
    if let (Some(seconds), Some(rate)) = (report.converge_s, report.converge_topics_per_s) {
        println!(
            "second node converged on every topic in {seconds:.2} s ({rate:.0} topics/s); peers {:?}, subscribed {:?}",
            report.peers, report.subscribed
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
