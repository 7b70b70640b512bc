//! `canopy-bench report`: runs a named set of workloads and writes `report.md` with tables and
//! SVG plots (drawn with `plotters`), and `results.jsonl` with every figure.
//!
//! `quick` finishes in a few minutes on a 2-core machine; `full` includes 100M keys. Every
//! workload line in `results.jsonl` names the command that runs it alone.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use plotters::prelude::*;
use serde_json::json;

use crate::replication::{self, ReplicationConfig, ReplicationReport};
use crate::scale::{self, ScaleConfig, ScaleReport};
use crate::tables::{self, TablesConfig, TablesReport};
use crate::topics::{self, TopicsConfig, TopicsReport};

mod scale_profile;

/// Which set of workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// A few minutes: 2M keys, 1,000 topics, 100k-key catch-up, a 100k-key sharded table.
    Quick,
    /// Hours: 100M keys (1 and 64 topics), 10,000 topics, 1M-key catch-up, a 1M-key sharded
    /// table.
    Full,
    /// About an hour: 100M keys in 1 topic and in 64, each beside bare RocksDB and compacted at
    /// the end, every figure set against its bound.
    Scale,
}

struct Sizes {
    scale_keys: u64,
    reads: usize,
    topics: usize,
    samples: usize,
    catch_up_keys: usize,
    /// Keys of the sharded table.
    table_keys: usize,
    /// Single puts, and samples of each latency, of the sharded table.
    table_requests: usize,
    /// `--member-ttl-s` of the sharded table's members.
    member_ttl_s: u64,
}

impl Profile {
    fn sizes(self) -> Sizes {
        match self {
            // The scale profile runs its own workloads (`scale_profile`).
            Profile::Quick | Profile::Scale => Sizes {
                scale_keys: 2_000_000,
                reads: 200_000,
                topics: 1_000,
                samples: 300,
                catch_up_keys: 100_000,
                table_keys: 100_000,
                table_requests: 1_000,
                member_ttl_s: 20,
            },
            Profile::Full => Sizes {
                scale_keys: 100_000_000,
                reads: 1_000_000,
                topics: 10_000,
                samples: 1_000,
                catch_up_keys: 1_000_000,
                table_keys: 1_000_000,
                table_requests: 2_000,
                member_ttl_s: 20,
            },
        }
    }

    fn name(self) -> &'static str {
        match self {
            Profile::Quick => "quick",
            Profile::Full => "full",
            Profile::Scale => "scale",
        }
    }
}

/// Everything one report holds.
struct Results {
    scale_one: ScaleReport,
    scale_many: ScaleReport,
    topics: TopicsReport,
    from_blocks: ReplicationReport,
    from_snapshot: ReplicationReport,
    tables: TablesReport,
}

/// Runs the profile's workloads, telling `say` what runs, and writes the report into `out`.
/// The sharded tables run the `canopy` binary beside this one.
pub fn run(profile: Profile, out: &Path, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    if profile == Profile::Scale {
        return scale_profile::run(100_000_000, 1_000_000, out, say);
    }
    run_sizes(profile.name(), &profile.sizes(), &replication::default_canopy(), out, say)
}

fn run_sizes(profile: &str, sizes: &Sizes, canopy: &Path, out: &Path, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut lines = Vec::new();
    let scale_config = |topics: usize, baseline: bool| ScaleConfig {
        keys: sizes.scale_keys,
        topics,
        key_bytes: 32,
        value_bytes: 100,
        batch: 1000,
        writers: 2,
        checkpoints: 20,
        reads: sizes.reads,
        absent_reads: sizes.reads / 10,
        scan_keys: 1_000_000.min(sizes.scale_keys as usize),
        dir: None,
        keep: false,
        compact: false,
        baseline,
    };
    let scale_command = |topics: usize, baseline: bool| {
        format!(
            "canopy-bench scale --keys {} --topics {topics} --reads {} --absent-reads {}{}",
            sizes.scale_keys,
            sizes.reads,
            sizes.reads / 10,
            if baseline { " --baseline" } else { "" }
        )
    };

    say(&format!("scale: {} keys, 1 topic, and bare RocksDB", sizes.scale_keys));
    let scale_one = scale::run(&scale_config(1, true), &|_| {})?;
    lines.push(json!({ "workload": "scale-1-topic", "command": scale_command(1, true), "result": scale_one }));
    say(&format!("scale: {} keys over 64 topics", sizes.scale_keys));
    let scale_many = scale::run(&scale_config(64, false), &|_| {})?;
    lines.push(json!({ "workload": "scale-64-topics", "command": scale_command(64, false), "result": scale_many }));

    say(&format!("topics: {} topics on one node, then two", sizes.topics));
    let topics = topics::run(&TopicsConfig {
        topics: sizes.topics,
        keys_per_topic: 100,
        value_bytes: 100,
        nodes: 2,
        timeout: Duration::from_secs(1800),
    })?;
    lines.push(json!({
        "workload": "topics",
        "command": format!("canopy-bench topics --topics {} --keys-per-topic 100 --nodes 2", sizes.topics),
        "result": topics,
    }));

    let replication_config = |compact: bool| ReplicationConfig {
        samples: sizes.samples,
        catch_up_keys: sizes.catch_up_keys,
        batch: 1000,
        value_bytes: 100,
        timeout: Duration::from_secs(1800),
        compact,
        deep: false,
        processes: None,
        secure: false,
    };
    let replication_command = |compact: bool| {
        format!(
            "canopy-bench replication --samples {} --keys {}{}",
            sizes.samples,
            sizes.catch_up_keys,
            if compact { " --compact" } else { "" }
        )
    };
    say("replication: write-to-visible latency, and an empty node catching up from blocks");
    let from_blocks = replication::run(&replication_config(false))?;
    lines.push(json!({ "workload": "replication", "command": replication_command(false), "result": from_blocks }));
    say("replication: an empty node catching up from a snapshot");
    let from_snapshot = replication::run(&replication_config(true))?;
    lines.push(json!({
        "workload": "replication-compacted",
        "command": replication_command(true),
        "result": from_snapshot,
    }));

    say(&format!("tables: {} keys into a sharded table over 3 members, then a fourth joining", sizes.table_keys));
    let tables = tables::run(&table_config(sizes, canopy.to_path_buf()))?;
    lines.push(json!({ "workload": "tables", "command": tables.command, "result": tables }));

    let jsonl: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(out.join("results.jsonl"), jsonl)?;
    let results = Results { scale_one, scale_many, topics, from_blocks, from_snapshot, tables };
    write_report(profile, out, &results)
}

/// The sharded table's workload, `canopy-bench tables`' defaults: 3 members, 16 partitions of 2
/// replicas, batches of 1000 from 3 clients, and the join measured on the ingested table.
fn table_config(sizes: &Sizes, canopy: PathBuf) -> TablesConfig {
    TablesConfig {
        canopy,
        members: 3,
        replicas: 2,
        partitions: 16,
        keys: sizes.table_keys,
        batch: 1000,
        cbor: true,
        clients: 3,
        singles: sizes.table_requests,
        gets: sizes.table_requests,
        join_keys: sizes.table_keys,
        read_back: sizes.table_requests,
        member_ttl_s: sizes.member_ttl_s,
        timeout: Duration::from_secs(1800),
    }
}

/// Writes `report.md` and its plots from `results`.
fn write_report(profile: &str, out: &Path, results: &Results) -> anyhow::Result<()> {
    plot_scale(&out.join("scale-1-topic.svg"), "1 topic", &results.scale_one)?;
    plot_scale(&out.join("scale-64-topics.svg"), "64 topics", &results.scale_many)?;
    plot_get_cdf(&out.join("get-latency-cdf.svg"), &results.scale_one)?;
    plot_latency_histogram(&out.join("write-to-visible.svg"), &results.from_blocks)?;
    plot_catch_up(&out.join("catch-up.svg"), &results.from_blocks, &results.from_snapshot)?;

    let mut md = String::new();
    let one = &results.scale_one;
    writeln!(md, "# canopy benchmark report ({profile} profile)\n")?;
    writeln!(md, "Machine: {}. Produced by `canopy-bench report --profile {profile}`;", machine())?;
    writeln!(md, "every figure is also in `results.jsonl`, with the command that measures it alone.\n")?;

    writeln!(
        md,
        "## Ingest at scale\n\n{} keys of {} B with {} B values, in batches of {}, through the embedded engine \
         (2 submitting threads); bare RocksDB gets the same keys as plain `WriteBatch`es with canopy's table \
         options.\n",
        one.keys, one.key_bytes, one.value_bytes, one.batch
    )?;
    writeln!(md, "| | keys/s | slowest interval keys/s | peak RSS | disk B/key | reopen s | scan keys/s |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|")?;
    let sides = [
        ("canopy, 1 topic", Some(&one.canopy)),
        ("canopy, 64 topics", Some(&results.scale_many.canopy)),
        ("bare RocksDB", one.rocksdb.as_ref()),
    ];
    for (name, side) in sides {
        let Some(side) = side else { continue };
        writeln!(
            md,
            "| {name} | {:.0} | {:.0} | {} MiB | {:.1} | {:.2} | {:.0} |",
            side.keys_per_s,
            side.min_interval_keys_per_s,
            side.peak_rss_bytes >> 20,
            side.disk_bytes_per_key,
            side.reopen_s,
            side.scan_keys_per_s
        )?;
    }
    writeln!(md, "\nKeys/s, RSS and disk over the ingest (1 topic, beside bare RocksDB):\n")?;
    writeln!(md, "![ingest, 1 topic](scale-1-topic.svg)\n")?;
    writeln!(md, "![ingest, 64 topics](scale-64-topics.svg)\n")?;

    writeln!(md, "## Point gets on the finished store\n")?;
    writeln!(md, "| | threads | present p50 µs | p99 µs | p99.9 µs | gets/s | absent p50 µs | absent p99 µs |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for (name, side) in [("canopy", Some(&one.canopy)), ("bare RocksDB", one.rocksdb.as_ref())] {
        let Some(side) = side else { continue };
        for reads in &side.reads {
            writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {:.0} | {} | {} |",
                reads.threads,
                reads.present.p50_us,
                reads.present.p99_us,
                reads.present.p999_us,
                reads.present.reads_per_s,
                reads.absent.p50_us,
                reads.absent.p99_us
            )?;
        }
    }
    writeln!(md, "\n![get latency CDF](get-latency-cdf.svg)\n")?;

    let topics = &results.topics;
    writeln!(
        md,
        "## Many topics\n\n{} topics of {} keys on one node, then a second node.\n",
        topics.topics, topics.keys_per_topic
    )?;
    writeln!(md, "| figure | value |\n|---|---:|")?;
    writeln!(md, "| subscribe every topic | {:.2} s |", topics.create_s)?;
    writeln!(md, "| RSS per idle topic | {:.0} B |", topics.rss_bytes_per_topic)?;
    writeln!(md, "| RSS per topic after writing | {:.0} B |", topics.rss_bytes_per_topic_after_writes)?;
    writeln!(md, "| writes over all topics | {:.0} keys/s |", topics.ingest_keys_per_s)?;
    writeln!(md, "| restart until every topic is readable | {:.2} s |", topics.restart_s)?;
    if let Some(seconds) = topics.converge_s {
        writeln!(md, "| second node converged on every topic | {seconds:.2} s |")?;
    }
    writeln!(md, "| peers seen by each node | {:?} |", topics.peers)?;

    let (blocks, snapshot) = (&results.from_blocks, &results.from_snapshot);
    writeln!(md, "\n## Replication between two nodes on loopback\n")?;
    writeln!(
        md,
        "Write-to-visible latency over {} single puts: p50 {} µs, p99 {} µs, max {} µs.\n",
        blocks.samples, blocks.latency_p50_us, blocks.latency_p99_us, blocks.latency_max_us
    )?;
    writeln!(md, "![write-to-visible latency](write-to-visible.svg)\n")?;
    writeln!(
        md,
        "An empty node catching up {} keys: {:.2} s from blocks ({:.0} keys/s), {:.2} s from a snapshot \
         ({:.0} keys/s; the compaction before it took {:.2} s).\n",
        blocks.catch_up_keys,
        blocks.catch_up_s,
        blocks.catch_up_keys_per_s,
        snapshot.catch_up_s,
        snapshot.catch_up_keys_per_s,
        snapshot.compact_s.unwrap_or(0.0)
    )?;
    writeln!(md, "![catch-up](catch-up.svg)\n")?;
    write_tables(&mut md, &results.tables)?;
    std::fs::write(out.join("report.md"), md)?;
    Ok(())
}

/// The "Sharded tables" section.
fn write_tables(md: &mut String, tables: &TablesReport) -> anyhow::Result<()> {
    let micros = |p50: Option<u64>, p99: Option<u64>| match (p50, p99) {
        (Some(p50), Some(p99)) => format!("{p50} µs / {p99} µs"),
        _ => "not measured".to_string(),
    };
    writeln!(
        md,
        "## Sharded tables\n\n{} `canopy serve --tables` processes on loopback; a table of {} partitions with {} \
         replicas; {} keys of 32 B with 100 B values in batches of {}, each batch sent to a random member by {} \
         client threads. The embedded engine writes as many keys in the same batches into one topic.\n",
        tables.members, tables.partitions, tables.replicas, tables.keys, tables.batch, tables.clients
    )?;
    writeln!(md, "| figure | value |\n|---|---:|")?;
    writeln!(
        md,
        "| routed batches | {:.0} keys/s (batch p50 {} µs, p99 {} µs) |",
        tables.batch_keys_per_s, tables.batch_p50_us, tables.batch_p99_us
    )?;
    writeln!(md, "| embedded engine, one topic | {:.0} keys/s |", tables.ingest_keys_per_s)?;
    writeln!(md, "| routed / embedded | {:.3} |", tables.ratio)?;
    writeln!(
        md,
        "| single puts, 1 client | {:.0} puts/s (p50 {} µs, p99 {} µs) |",
        tables.singles_per_s, tables.singles_p50_us, tables.singles_p99_us
    )?;
    writeln!(md, "| single puts, {} clients | {:.0} puts/s |", tables.clients, tables.singles_concurrent_per_s)?;
    writeln!(
        md,
        "| get through a member without a copy, p50 / p99 | {} |",
        micros(tables.get_p50_us, tables.get_p99_us)
    )?;
    writeln!(md, "| put with `?ack=2`, p50 / p99 | {} |", micros(tables.ack2_p50_us, tables.ack2_p99_us))?;
    let join = match (tables.join_s, &tables.join_pending) {
        (Some(seconds), _) => format!("{seconds:.2} s"),
        (None, Some(pending)) => format!("not within the timeout ({pending})"),
        (None, None) => "not measured".to_string(),
    };
    writeln!(md, "| one more member joins a table of {} keys: balanced after | {join} |", tables.join_keys)?;
    writeln!(md, "| failures among {} keys written | {} |", tables.written_keys, tables.failures)?;
    Ok(())
}

/// The machine in a few words: cores, memory, kernel.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| text.lines().next().and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or_else(|| "? GiB".to_string(), |kib| format!("{} GiB", kib >> 20));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {memory} memory, Linux {}", kernel.trim())
}

const CANOPY: RGBColor = RGBColor(31, 119, 180);
const ROCKSDB: RGBColor = RGBColor(255, 127, 14);
const OTHER: RGBColor = RGBColor(44, 160, 44);

/// Keys/s, RSS and disk against the keys written so far, canopy and (when measured) bare
/// RocksDB, and canopy's disk by column family, which explains its disk curve.
fn plot_scale(path: &Path, title: &str, report: &ScaleReport) -> anyhow::Result<()> {
    let sides: Vec<(&str, RGBColor, &scale::Side)> = std::iter::once(("canopy", CANOPY, &report.canopy))
        .chain(report.rocksdb.as_ref().map(|side| ("bare RocksDB", ROCKSDB, side)))
        .collect();
    let root = SVGBackend::new(path, (900, 1200)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((4, 1));
    let millions = |c: &scale::Checkpoint| c.keys as f64 / 1e6;
    let x_max = sides.iter().flat_map(|(_, _, s)| s.checkpoints.iter().map(millions)).fold(1e-3, f64::max);
    type Figure = fn(&scale::Checkpoint) -> f64;
    let figures: [(&str, Figure); 3] = [
        ("thousand keys/s", |c| c.interval_keys_per_s / 1e3),
        ("RSS MiB", |c| c.rss_bytes as f64 / f64::from(1 << 20)),
        ("disk GiB", |c| c.disk_bytes as f64 / f64::from(1 << 30)),
    ];
    for (panel, (label, figure)) in panels.iter().zip(figures) {
        let y_max = sides.iter().flat_map(|(_, _, s)| s.checkpoints.iter().map(figure)).fold(1e-9, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{label} during the ingest of {} keys, {title}", report.keys), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart.configure_mesh().x_desc("million keys written").y_desc(label).draw()?;
        for (name, color, side) in &sides {
            let points: Vec<(f64, f64)> = side.checkpoints.iter().map(|c| (millions(c), figure(c))).collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], *color));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    }
    plot_families(&panels[3], title, report, x_max)?;
    root.present()?;
    Ok(())
}

/// Most column families drawn apart in the disk-by-family panel; the rest are summed.
const FAMILIES_DRAWN_MAX: usize = 5;

/// canopy's disk by column family (table files and blob files) and its blob garbage, against
/// the keys written so far.
fn plot_families(
    panel: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    report: &ScaleReport,
    x_max: f64,
) -> anyhow::Result<()> {
    let checkpoints = &report.canopy.checkpoints;
    let gib = |bytes: u64| bytes as f64 / f64::from(1 << 30);
    let family_bytes = |c: &scale::Checkpoint, name: &str| {
        c.families.iter().filter(|f| f.name == name).map(|f| f.sst_bytes + f.blob_bytes).sum::<u64>()
    };
    // The largest families at the end are drawn each; the others are drawn as one line.
    let mut names: Vec<String> =
        checkpoints.last().map(|c| c.families.iter().map(|f| f.name.clone()).collect()).unwrap_or_default();
    let last = checkpoints.last();
    names.sort_by_key(|name| std::cmp::Reverse(last.map_or(0, |c| family_bytes(c, name))));
    let (drawn, rest) = names.split_at(names.len().min(FAMILIES_DRAWN_MAX));
    let mut series: Vec<(String, Vec<(f64, f64)>)> = drawn
        .iter()
        .map(|name| {
            let points = checkpoints.iter().map(|c| (c.keys as f64 / 1e6, gib(family_bytes(c, name)))).collect();
            (name.clone(), points)
        })
        .collect();
    if !rest.is_empty() {
        let points = checkpoints
            .iter()
            .map(|c| (c.keys as f64 / 1e6, gib(rest.iter().map(|name| family_bytes(c, name)).sum())))
            .collect();
        series.push(("the others".to_string(), points));
    }
    let garbage = checkpoints
        .iter()
        .map(|c| (c.keys as f64 / 1e6, gib(c.families.iter().map(|f| f.blob_garbage_bytes).sum())))
        .collect();
    series.push(("blob garbage (all)".to_string(), garbage));
    let y_max = series.iter().flat_map(|(_, points)| points.iter().map(|p| p.1)).fold(1e-9, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(panel)
        .caption(format!("canopy's disk by column family, {title}"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart.configure_mesh().x_desc("million keys written").y_desc("GiB").draw()?;
    for (index, (name, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    Ok(())
}

/// Draws the series' labels at `position`.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart.configure_series_labels().position(position).border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    Ok(())
}

/// The CDF of point-get latency of present keys on one thread.
fn plot_get_cdf(path: &Path, report: &ScaleReport) -> anyhow::Result<()> {
    let mut curves: Vec<(String, RGBColor, &scale::Latency)> = Vec::new();
    for (name, color, side) in std::iter::once(("canopy", CANOPY, &report.canopy))
        .chain(report.rocksdb.as_ref().map(|side| ("bare RocksDB", ROCKSDB, side)))
    {
        for reads in &side.reads {
            curves.push((format!("{name}, {} thread(s)", reads.threads), color, &reads.present));
        }
    }
    let x_max = curves.iter().map(|(_, _, l)| l.max_us).max().unwrap_or(1).max(2) as f64;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("point-get latency of present keys, {} keys", report.keys), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..x_max).log_scale(), 0f64..1f64)?;
    chart.configure_mesh().x_desc("microseconds").y_desc("fraction of gets").draw()?;
    for (index, (name, color, latency)) in curves.iter().enumerate() {
        let points: Vec<(f64, f64)> = latency.cdf.iter().map(|&(us, q)| ((us.max(1)) as f64, q)).collect();
        let style = if index % 2 == 0 { color.stroke_width(2) } else { color.mix(0.5).stroke_width(2) };
        chart
            .draw_series(LineSeries::new(points, style))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

/// A histogram of write-to-visible latency, 40 bins up to the 99.9th percentile (the rest in
/// the last bin).
fn plot_latency_histogram(path: &Path, report: &ReplicationReport) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let total: u64 = report.latencies.iter().map(|(_, n)| n).sum();
    let mut seen = 0;
    let mut top = report.latency_max_us.max(1);
    for &(us, n) in &report.latencies {
        seen += n;
        if seen as f64 >= total as f64 * 0.999 {
            top = us.max(1);
            break;
        }
    }
    const BINS: u64 = 40;
    let width = top.div_ceil(BINS).max(1);
    let mut counts = vec![0u64; BINS as usize];
    for &(us, n) in &report.latencies {
        counts[((us / width) as usize).min(BINS as usize - 1)] += n;
    }
    let y_max = counts.iter().copied().max().unwrap_or(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("write-to-visible latency, {} single puts between two nodes", report.samples),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..(width * BINS) as f64, 0f64..y_max)?;
    chart.configure_mesh().x_desc("microseconds").y_desc("writes").draw()?;
    chart.draw_series(counts.iter().enumerate().map(|(bin, &count)| {
        let left = bin as f64 * width as f64;
        Rectangle::new([(left, 0.0), (left + width as f64, count as f64)], CANOPY.mix(0.7).filled())
    }))?;
    root.present()?;
    Ok(())
}

/// Keys an empty node holds against time, catching up from blocks and from a snapshot.
fn plot_catch_up(path: &Path, blocks: &ReplicationReport, snapshot: &ReplicationReport) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let x_max = blocks.catch_up_s.max(snapshot.catch_up_s).max(0.01) * 1.05;
    let y_max = blocks.catch_up_keys.max(1) as f64 * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("an empty node catching up {} keys", blocks.catch_up_keys), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart.configure_mesh().x_desc("seconds").y_desc("keys held").draw()?;
    for (name, color, report) in [("from blocks", CANOPY, blocks), ("from a snapshot", OTHER, snapshot)] {
        let points: Vec<(f64, f64)> = report.catch_up_progress.iter().map(|&(s, keys)| (s, keys as f64)).collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_report_has_its_tables_plots_and_results() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = Sizes {
            scale_keys: 5_000,
            reads: 1_000,
            topics: 20,
            samples: 10,
            catch_up_keys: 2_000,
            table_keys: 1_000,
            table_requests: 20,
            member_ttl_s: 3,
        };
        // The unit tests run from target/<profile>/deps; cargo builds `canopy` one level up.
        let exe = std::env::current_exe().unwrap();
        let canopy = exe.parent().and_then(Path::parent).unwrap().join("canopy");
        assert!(canopy.is_file(), "{} is missing: build it with cargo build -p canopy-node --bins", canopy.display());
        run_sizes("tiny", &sizes, &canopy, dir.path(), &|_| {}).unwrap();
        let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        for plot in
            ["scale-1-topic.svg", "scale-64-topics.svg", "get-latency-cdf.svg", "write-to-visible.svg", "catch-up.svg"]
        {
            assert!(report.contains(plot), "report.md links {plot}");
            let svg = std::fs::read_to_string(dir.path().join(plot)).unwrap();
            assert!(
                svg.starts_with("<svg") && (svg.contains("<polyline") || svg.contains("<rect")),
                "{plot}: {svg:.200}"
            );
        }
        assert!(report.contains("| canopy, 1 topic |") && report.contains("| bare RocksDB |"), "{report}");
        assert!(report.contains("## Sharded tables") && report.contains("| routed batches |"), "{report}");
        let results = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = results.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[5]["workload"], "tables");
        assert_eq!(lines[5]["result"]["failures"], 0, "{}", lines[5]);
        assert_eq!(lines[0]["result"]["keys"], 5_000);
        assert!(lines[0]["command"].as_str().unwrap().starts_with("canopy-bench scale --keys 5000"));
    }
}
