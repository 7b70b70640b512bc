//! The `scale` profile: 100M keys on one node, in 1 topic and in 64, each beside bare RocksDB
//! at the same size and compacted at the end; the report sets each figure against its bound.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use super::{machine, plot_get_cdf, plot_scale};
use crate::scale::{self, ScaleConfig, ScaleReport, Side};

/// Runs both loads of `keys` keys and writes `report.md`, its plots and `results.jsonl`.
pub(super) fn run(keys: u64, reads: usize, out: &Path, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let config = |topics: usize| ScaleConfig {
        keys,
        topics,
        key_bytes: 32,
        value_bytes: 100,
        batch: 1000,
        writers: 2,
        checkpoints: 50,
        reads,
        absent_reads: reads / 10,
        scan_keys: 1_000_000.min(keys as usize),
        dir: None,
        keep: false,
        compact: true,
        baseline: true,
    };
    let command = |topics: usize| {
        format!(
            "canopy-bench scale --keys {keys} --topics {topics} --baseline --compact --checkpoints 50 --reads {reads} \
             --absent-reads {}",
            reads / 10
        )
    };
    let mut runs = Vec::new();
    let mut lines = String::new();
    for topics in [1, 64] {
        say(&format!("scale: {keys} keys in {topics} topic(s), and bare RocksDB"));
        let report = scale::run(&config(topics), &|_| {})?;
        let workload = format!("scale-{topics}-topic{}", if topics == 1 { "" } else { "s" });
        writeln!(lines, "{}", json!({ "workload": workload, "command": command(topics), "result": report }))?;
        runs.push(report);
    }
    std::fs::write(out.join("results.jsonl"), lines)?;
    plot_scale(&out.join("scale-1-topic.svg"), "1 topic", &runs[0])?;
    plot_scale(&out.join("scale-64-topics.svg"), "64 topics", &runs[1])?;
    plot_get_cdf(&out.join("get-latency-cdf.svg"), &runs[0])?;
    std::fs::write(out.join("report.md"), report(&runs[0], &runs[1])?)?;
    Ok(())
}

/// Keys per second over the last tenth of the load: from the first checkpoint at 90% of the
/// keys or more to the end.
fn last_tenth_keys_per_s(side: &Side, keys: u64) -> f64 {
    let Some(last) = side.checkpoints.last() else { return 0.0 };
    let from = side.checkpoints.iter().rev().find(|point| point.keys <= keys - keys / 10);
    let (keys_from, seconds_from) = from.map_or((0, 0.0), |point| (point.keys, point.elapsed_s));
    (last.keys - keys_from) as f64 / (last.elapsed_s - seconds_from).max(f64::MIN_POSITIVE)
}

/// The bare RocksDB side of `report` (its canopy side when it has none).
fn bare(report: &ScaleReport) -> &Side {
    report.rocksdb.as_ref().unwrap_or(&report.canopy)
}

/// The most bytes the store took on disk at any checkpoint of the load.
fn peak_disk(side: &Side) -> u64 {
    side.checkpoints.iter().map(|point| point.disk_bytes).max().unwrap_or(side.disk_bytes)
}

fn report(one: &ScaleReport, many: &ScaleReport) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(md, "# canopy benchmark report (scale profile)\n")?;
    writeln!(md, "Machine: {}. Produced by `canopy-bench report --profile scale`;", machine())?;
    writeln!(md, "every figure is also in `results.jsonl`, with the command that measures it alone.\n")?;
    writeln!(
        md,
        "{} keys of {} B with {} B values, in batches of {}, through the embedded engine (2 submitting threads), \
         then bare RocksDB with the same keys as plain `WriteBatch`es; each store compacted at the end. A bound \
         is what the engine is held to.\n",
        one.keys, one.key_bytes, one.value_bytes, one.batch
    )?;
    writeln!(md, "| figure | bound | 1 topic | 64 topics |")?;
    writeln!(md, "|---|---|---:|---:|")?;
    let both = |f: &dyn Fn(&ScaleReport) -> String| (f(one), f(many));
    let mut row = |name: &str, bound: &str, (a, b): (String, String)| writeln!(md, "| {name} | {bound} | {a} | {b} |");
    row("canopy keys/s, whole load", "", both(&|r| format!("{:.0}", r.canopy.keys_per_s)))?;
    row("bare keys/s, whole load", "", both(&|r| format!("{:.0}", bare(r).keys_per_s)))?;
    row(
        "canopy / bare, last tenth of the keys",
        "≥ 0.45",
        both(&|r| {
            let (canopy, bare) = (last_tenth_keys_per_s(&r.canopy, r.keys), last_tenth_keys_per_s(bare(r), r.keys));
            format!("{:.2} ({canopy:.0} / {bare:.0} keys/s)", canopy / bare)
        }),
    )?;
    row(
        "peak disk during the load, canopy / bare",
        "≤ 2×",
        both(&|r| {
            let (canopy, bare) = (peak_disk(&r.canopy), peak_disk(bare(r)));
            format!("{:.2}× ({:.1} / {:.1} GB)", canopy as f64 / bare as f64, canopy as f64 / 1e9, bare as f64 / 1e9)
        }),
    )?;
    row(
        "disk after compaction, canopy / bare",
        "≤ 1.4×",
        both(&|r| match (r.canopy.compacted_disk_bytes_per_key, bare(r).compacted_disk_bytes_per_key) {
            (Some(canopy), Some(bare)) => format!("{:.2}× ({canopy:.0} / {bare:.0} B/key)", canopy / bare),
            _ => "not measured".into(),
        }),
    )?;
    row("get p99, 1 thread", "≤ 1 ms", both(&|r| format!("{} µs", r.get_p99_us)))?;
    row("peak RSS", "≤ 4 GiB", both(&|r| format!("{} MiB", r.canopy.peak_rss_bytes >> 20)))?;
    row("reopen to first read", "≤ 5 s", both(&|r| format!("{:.2} s", r.canopy.reopen_s)))?;
    writeln!(md, "\nKeys/s, RSS, disk (by column family) and pending compaction over each load:\n")?;
    writeln!(md, "![ingest, 1 topic](scale-1-topic.svg)\n")?;
    writeln!(md, "![ingest, 64 topics](scale-64-topics.svg)\n")?;
    writeln!(md, "Point gets on the finished 1-topic store:\n")?;
    writeln!(md, "![get latency CDF](get-latency-cdf.svg)")?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tiny_scale_report_sets_each_figure_against_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        super::run(20_000, 1_000, dir.path(), &|_| {}).unwrap();
        let report = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        for needle in
            ["| canopy / bare, last tenth of the keys | ≥ 0.45 |", "| peak RSS | ≤ 4 GiB |", "scale-64-topics.svg"]
        {
            assert!(report.contains(needle), "{needle} missing from {report}");
        }
        for plot in ["scale-1-topic.svg", "scale-64-topics.svg", "get-latency-cdf.svg"] {
            assert!(std::fs::read_to_string(dir.path().join(plot)).unwrap().starts_with("<svg"), "{plot}");
        }
        let results = std::fs::read_to_string(dir.path().join("results.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = results.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["workload"], "scale-64-topics");
        assert_eq!(lines[1]["result"]["topics"], 64);
        assert!(lines[0]["result"]["rocksdb"]["compacted_disk_bytes_per_key"].is_number(), "{}", lines[0]);
    }
}
