//! `canopy-bench tables` and `canopy-bench docs`: their arguments, runs and printed tables.

use std::path::PathBuf;
use std::process::ExitCode;

use canopy_bench::tables::{self, TablesConfig, TablesReport};

#[derive(clap::Args)]
pub(crate) struct DocsArgs {
    /// Documents written, and plain values.
    #[arg(long, default_value_t = 1_000_000)]
    docs: usize,
    /// Fields of each document (`group`, `n`, and strings).
    #[arg(long, default_value_t = 10)]
    fields: usize,
    /// Documents (and values) per block.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Queries timed through the index on `group`.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Queries timed before that index exists (each reads every document).
    #[arg(long, default_value_t = 3)]
    unindexed_queries: usize,
    /// Seed of the documents' contents.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Indexes kept while the documents are written: 0, 1 (on `n`, a number) or 2 (and on
    /// `f2`, a string whose values arrive in no order).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=2))]
    kept_indexes: u64,
    /// Threads submitting batches at once, for the documents and the values alike.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    writers: u64,
    /// Print one JSON line with every figure after the table.
    #[arg(long)]
    json: bool,
}

/// The body of a table batch request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BatchBody {
    /// DAG-CBOR (`Content-Type: application/cbor`).
    Cbor,
    /// JSON.
    Json,
}

#[derive(clap::Args)]
pub(crate) struct TablesArgs {
    /// Members started before the table is created.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=tables::MEMBERS_MAX as u64))]
    members: u64,
    /// Copies of each partition.
    #[arg(long, default_value_t = 2)]
    replicas: u32,
    /// Partitions of the table.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// Keys of the routed batch ingest (32-byte keys, 100-byte values).
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Keys per batch request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// The batch requests' body: DAG-CBOR (keys and values as bytes), or JSON (values in
    /// base64), both of which the batch route takes.
    #[arg(long, value_enum, default_value_t = BatchBody::Cbor)]
    body: BatchBody,
    /// Concurrent client threads of the batch ingest and of the concurrent single puts. Three
    /// gave the best batch rate with three members on 2 cores: two leave the members idle
    /// between batches, four only lengthen the queues.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Single puts, from one sequential client and again from --clients.
    #[arg(long, default_value_t = 2000)]
    singles: usize,
    /// Samples of each latency: forwarded gets, and puts acknowledged by two copies.
    #[arg(long, default_value_t = 2000)]
    gets: usize,
    /// Keys of the table when one more member joins [default: --keys, the ingested table
    /// itself; another count runs the join on a cluster of its own; 0: no join].
    #[arg(long)]
    join_keys: Option<usize>,
    /// Keys read back at the end, each through a random member.
    #[arg(long, default_value_t = 1000)]
    read_back: usize,
    /// Seconds a member stays one without renewing its entry (`canopy serve --member-ttl-s`).
    #[arg(long, default_value_t = 20)]
    member_ttl_s: u64,
    /// Seconds to wait for the cluster to be ready, and for the table to be balanced after the join.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// The `canopy` binary the members run [default: the one beside canopy-bench].
    #[arg(long)]
    canopy: Option<PathBuf>,
    /// Print one JSON line with every figure after the table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run_docs(args: DocsArgs) -> anyhow::Result<ExitCode> {
    let config = canopy_bench::docs::DocsConfig {
        docs: args.docs,
        fields: args.fields,
        batch: args.batch,
        queries: args.queries,
        unindexed_queries: args.unindexed_queries,
        seed: args.seed,
        kept_indexes: args.kept_indexes as usize,
        writers: args.writers as usize,
    };
    let report = canopy_bench::docs::run(&config)?;
    println!("docs={} fields={} batch={} doc_bytes={}", report.docs, report.fields, report.batch, report.doc_bytes);
    println!(
        "documents       {:>10.0} docs/s   plain values of the same size {:>10.0} keys/s   ratio {:.3}",
        report.doc_keys_per_s, report.value_keys_per_s, report.ratio
    );
    println!("  ({} indexes kept while writing, {} submitting threads)", report.indexes_during_ingest, report.writers);
    for (what, cpu) in [("document", report.doc_cpu), ("value", report.value_cpu)] {
        if let Some(cpu) = cpu {
            let [writer, journal, rocksdb, other] = cpu.per_item_us(report.docs);
            println!(
                "  CPU per {what:<8}: writer {writer:.2} us, index journal {journal:.2} us, RocksDB background {rocksdb:.2} us, other threads {other:.2} us"
            );
        }
    }
    println!(
        "query (no index)     p50 {:>9} us  p99 {:>9} us: {} found, {} documents read",
        report.unindexed_query_p50_us, report.unindexed_query_p99_us, report.query_hits, report.unindexed_query_scanned
    );
    println!("index built on the existing documents in {:.2} s", report.index_build_s);
    println!(
        "query (index)        p50 {:>9} us  p99 {:>9} us: {} found, {} documents read",
        report.indexed_query_p50_us, report.indexed_query_p99_us, report.query_hits, report.indexed_query_scanned
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run_tables(args: TablesArgs) -> anyhow::Result<ExitCode> {
    let config = TablesConfig {
        canopy: args.canopy.unwrap_or_else(canopy_bench::replication::default_canopy),
        members: args.members as usize,
        replicas: args.replicas,
        partitions: args.partitions,
        keys: args.keys,
        batch: args.batch,
        cbor: args.body == BatchBody::Cbor,
        clients: args.clients,
        singles: args.singles,
        gets: args.gets,
        join_keys: args.join_keys.unwrap_or(args.keys),
        read_back: args.read_back,
        member_ttl_s: args.member_ttl_s,
        timeout: std::time::Duration::from_secs(args.timeout_s),
    };
    let report = tables::run(&config)?;
    print_tables(&report);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(if report.failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints a tables report as a short table.
fn print_tables(report: &TablesReport) {
    println!(
        "members={} replicas={} partitions={} keys={} batch={} clients={}",
        report.members, report.replicas, report.partitions, report.keys, report.batch, report.clients
    );
    println!(
        "routed batches        {:>10.0} keys/s   (batch p50 {} us, p99 {} us)",
        report.batch_keys_per_s, report.batch_p50_us, report.batch_p99_us
    );
    let runs: Vec<String> = report.ingest_runs_keys_per_s.iter().map(|run| format!("{run:.0}")).collect();
    println!(
        "embedded ingest       {:>10.0} keys/s   ratio routed/embedded {:.3}   (median of {})",
        report.ingest_keys_per_s,
        report.ratio,
        runs.join(", ")
    );
    println!(
        "single puts           {:>10.0} puts/s   (p50 {} us, p99 {} us; {} clients: {:.0} puts/s)",
        report.singles_per_s,
        report.singles_p50_us,
        report.singles_p99_us,
        report.clients,
        report.singles_concurrent_per_s
    );
    match (report.get_p50_us, report.get_p99_us) {
        (Some(p50), Some(p99)) => println!("forwarded get         p50 {p50:>7} us   p99 {p99:>7} us"),
        _ => println!("forwarded get         not measured: every member holds every partition"),
    }
    match (report.ack2_p50_us, report.ack2_p99_us) {
        (Some(p50), Some(p99)) => println!("put ack=2             p50 {p50:>7} us   p99 {p99:>7} us"),
        _ => println!("put ack=2             not measured: fewer than two replicas or members"),
    }
    match (report.join_s, &report.join_pending) {
        (Some(seconds), _) => {
            println!("join                  balanced after {seconds:.2} s ({} keys)", report.join_keys)
        }
        (None, Some(pending)) => {
            println!("join                  not balanced within the timeout ({} keys): {pending}", report.join_keys)
        }
        (None, None) => println!("join                  not measured"),
    }
    println!(
        "failures              {} of {} keys written, {} read back",
        report.failures, report.written_keys, report.read_back
    );
    for example in &report.failure_examples {
        println!("  {example}");
    }
    if report.failures > 0 {
        println!("members in the order they started: {}", report.member_ids.join(", "));
    }
}
