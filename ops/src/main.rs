//! `canopy-ops`: inspect, verify and compact canopy data, offline on a data directory or online
//! against running nodes. Exit status: 0 all is well, 1 a problem was found or nodes disagree,
//! 2 usage or I/O error.

use std::cell::{Cell, RefCell};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use canopy_ops::{
    CompactWhat, Progress, Remote, Target, backup, compact, compare_heads, dag_dot, dag_show, dag_stat, export, import,
    repair, status, topics, verify,
};
use clap::{Args, Parser, Subcommand};
use comfy_table::Table;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// canopy's binaries allocate with mimalloc: the writer thread frees what callers allocated,
/// which glibc's allocator made a quarter of its time (see ARCHITECTURE.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "canopy-ops", version, about = "Operations tooling for canopy: inspect, verify and compact its data")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Where {
    /// A node's data directory (works beside a running node for read-only commands).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A running node's API, e.g. http://127.0.0.1:7700 (`heads` takes several).
    #[arg(long)]
    api: Vec<String>,
    /// The API token for --api (role admin), for nodes started with --tokens.
    #[arg(long, env = "CANOPY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A certificate authority (PEM) to trust for an https:// API.
    #[arg(long, env = "CANOPY_CACERT")]
    cacert: Option<PathBuf>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

impl Where {
    fn targets(&self) -> anyhow::Result<Vec<Target>> {
        let remote = |url: &String| {
            Target::Online(Remote { url: url.clone(), token: self.token.clone(), cacert: self.cacert.clone() })
        };
        let mut targets: Vec<Target> = self.api.iter().map(remote).collect();
        if let Some(dir) = &self.data_dir {
            targets.push(Target::Offline(dir.clone()));
        }
        anyhow::ensure!(!targets.is_empty(), "say where: --data-dir DIR or --api URL");
        Ok(targets)
    }

    fn target(&self) -> anyhow::Result<Target> {
        let mut targets = self.targets()?;
        anyhow::ensure!(targets.len() == 1, "this command works on one node: give one --api or --data-dir");
        Ok(targets.remove(0))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Topics, keys, blocks, snapshots and RocksDB's own figures per column family.
    Status(Where),
    /// One row per topic: keys, heads, height, blocks kept and pruned, bytes, snapshot.
    Topics(Where),
    /// The heads of TOPIC on one node or several side by side; exit 1 unless all agree.
    Heads {
        topic: String,
        #[command(flatten)]
        at: Where,
    },
    /// Re-hash every block, check index, heights, links, rows and key counts against the
    /// blocks, and every RocksDB checksum; exit 1 if anything is wrong.
    Verify {
        /// Topics to check [default: all].
        topics: Vec<String>,
        #[command(flatten)]
        at: Where,
    },
    /// Rebuild a stopped node's topic: remove blocks that fail their hash (and what is above
    /// them: peers send them again), rebuild rows, key count and heads. Prints what changed.
    Repair {
        topic: String,
        #[command(flatten)]
        at: Where,
    },
    /// Write TOPIC as a CARv1 file (roots: its snapshot manifests and heads).
    Export {
        topic: String,
        /// The CAR file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        at: Where,
    },
    /// Read a CARv1 file into a topic (of a stopped node's data directory, or of a running
    /// node, which then announces it): snapshots merged, blocks checked and applied.
    Import {
        /// The CARv1 file, as `export` writes it.
        file: PathBuf,
        /// The topic to import into [default: the topic its snapshot names]. Blocks are signed
        /// for the topic they were written in: imported into a topic of another name, they
        /// are refused.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        at: Where,
    },
    /// Look at a topic's DAG.
    Dag {
        #[command(subcommand)]
        command: DagCommand,
    },
    /// A consistent copy of the node's data (database checkpoint and subscriptions) in OUT; a
    /// node started with `--data-dir OUT` serves the same state.
    Backup {
        /// Where the copy goes; must not hold a database yet. With --api, the backup's name: the
        /// node writes it under its --backup-dir.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        at: Where,
    },
    /// Compact topics [default: all]: their DAG (a snapshot at the heads, the covered history
    /// pruned) and their RocksDB ranges [default: both].
    Compact {
        /// Topics to compact [default: all].
        topics: Vec<String>,
        /// Only the DAG: snapshot and prune.
        #[arg(long)]
        dag: bool,
        /// Only RocksDB: compact the topics' ranges to the last level.
        #[arg(long)]
        db: bool,
        #[command(flatten)]
        at: Where,
    },
}

#[derive(Subcommand)]
enum DagCommand {
    /// Blocks kept and pruned, heights, links, bytes.
    Stat {
        topic: String,
        #[command(flatten)]
        at: Where,
    },
    /// One block decoded: height, links, the keys it adds (with value sizes) and removes.
    Show {
        topic: String,
        cid: String,
        #[command(flatten)]
        at: Where,
    },
    /// The DAG below the heads (or --from CID) as Graphviz DOT, heads filled, pruned dashed.
    Dot {
        topic: String,
        /// Start here instead of at the heads.
        #[arg(long)]
        from: Option<String>,
        /// Levels to draw below the start.
        #[arg(long, default_value_t = 16)]
        depth: usize,
        #[command(flatten)]
        at: Where,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("canopy-ops: {}", canopy_node::error_text(error.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn short(cid: &str) -> String {
    if cid.len() > 16 { format!("{}…{}", &cid[..8], &cid[cid.len() - 6..]) } else { cid.to_string() }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn topics_table(topics: &[canopy_crdt::inspect::TopicStats]) -> Table {
    let mut table = Table::new();
    table.set_header(["topic", "keys", "heads", "height", "blocks kept", "pruned", "bytes", "snapshot", "tombstones"]);
    for t in topics {
        let snapshot = match (t.snapshots.first(), t.merging) {
            (_, true) => "merging".to_string(),
            (Some(cid), _) => short(cid),
            (None, _) => "-".to_string(),
        };
        table.add_row([
            t.name.clone(),
            t.keys.to_string(),
            t.heads.to_string(),
            t.max_height.to_string(),
            t.blocks_kept.to_string(),
            t.blocks_pruned.to_string(),
            bytes(t.bytes),
            snapshot,
            t.tombstones.to_string(),
        ]);
    }
    table
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Status(at) => {
            let report = status(&at.target()?)?;
            if at.json {
                return print_json(&report).map(|()| ExitCode::SUCCESS);
            }
            let keys: u64 = report.topics.iter().map(|t| t.keys).sum();
            let kept: u64 = report.topics.iter().map(|t| t.blocks_kept).sum();
            let pruned: u64 = report.topics.iter().map(|t| t.blocks_pruned).sum();
            println!(
                "{}: {} topics, {keys} keys, {kept} blocks kept, {pruned} pruned, {} snapshots",
                report.target,
                report.topics.len(),
                report.topics.iter().map(|t| t.snapshots.len()).sum::<usize>()
            );
            let mut table = Table::new();
            table.set_header([
                "family",
                "live SST",
                "blobs",
                "blob garbage",
                "memtables",
                "keys (est.)",
                "pending compaction",
                "stall",
            ]);
            for f in &report.families {
                table.add_row([
                    f.name.clone(),
                    bytes(f.live_sst_bytes),
                    bytes(f.blob_bytes),
                    bytes(f.blob_garbage_bytes),
                    bytes(f.memtable_bytes),
                    f.estimated_keys.to_string(),
                    bytes(f.pending_compaction_bytes),
                    if f.write_stall { "yes" } else { "no" }.to_string(),
                ]);
            }
            println!("{table}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Topics(at) => {
            let rows = topics(&at.target()?)?;
            if at.json {
                print_json(&rows)?;
            } else {
                println!("{}", topics_table(&rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Heads { topic, at } => {
            let report = compare_heads(&at.targets()?, &topic);
            if at.json {
                print_json(&report)?;
            } else {
                let mut table = Table::new();
                table.set_header(["node", "heads", "behind by", "lacks"]);
                for node in &report.nodes {
                    let heads = match (&node.heads, &node.error) {
                        (Some(heads), _) => heads
                            .iter()
                            .map(|h| format!("{} @{}", short(&h.cid.to_string()), h.height))
                            .collect::<Vec<_>>()
                            .join("\n"),
                        (None, Some(error)) => format!("unreadable: {error}"),
                        (None, None) => "-".to_string(),
                    };
                    let lacks = node.lacks.iter().map(|c| short(c)).collect::<Vec<_>>().join("\n");
                    table.add_row([node.target.clone(), heads, node.behind_by.to_string(), lacks]);
                }
                println!("{table}");
                println!("{}", if report.agree { "all agree" } else { "nodes disagree" });
            }
            Ok(if report.agree { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Verify { topics, at } => {
            let report = verify(&at.target()?, &topics, &Bar::new(at.json))?;
            if at.json {
                print_json(&report)?;
            } else {
                for problem in &report.problems {
                    println!("{}\t{}\t{}", problem.topic, problem.subject, problem.what);
                }
                println!(
                    "{} topics, {} blocks re-hashed, {} rows, {} records checksummed, {} topics' rows recomputed: {} problems",
                    report.topics,
                    report.blocks,
                    report.rows,
                    report.records,
                    report.recomputed,
                    report.problems.len()
                );
            }
            Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Dag { command } => match command {
            DagCommand::Stat { topic, at } => {
                let stats = dag_stat(&at.target()?, &topic)?;
                if at.json {
                    print_json(&stats)?;
                } else {
                    let mut table = Table::new();
                    table.set_header(["figure", "value"]);
                    for (name, value) in [
                        ("blocks kept", stats.blocks_kept.to_string()),
                        ("blocks pruned", stats.blocks_pruned.to_string()),
                        ("heads", stats.heads.to_string()),
                        ("heights", format!("{} to {}", stats.min_height, stats.max_height)),
                        ("stored bytes", bytes(stats.block_bytes)),
                        ("largest block", bytes(stats.largest_block_bytes)),
                        ("links", stats.links.to_string()),
                        ("most links of a block", stats.max_links.to_string()),
                        ("roots kept", stats.roots.to_string()),
                    ] {
                        table.add_row([name.to_string(), value]);
                    }
                    println!("{table}");
                }
                Ok(ExitCode::SUCCESS)
            }
            DagCommand::Show { topic, cid, at } => {
                let view = dag_show(&at.target()?, &topic, &cid)?;
                if at.json {
                    print_json(&view)?;
                } else {
                    println!("block {}", view.cid);
                    println!(
                        "height {}{}",
                        view.height,
                        if view.pruned { " (pruned: a snapshot covers it)" } else { "" }
                    );
                    if let Some(size) = view.bytes {
                        println!("bytes {size}");
                    }
                    if let Some(author) = &view.author {
                        println!("author {author}");
                    }
                    for link in &view.links {
                        println!("link {link}");
                    }
                    for (key, size) in &view.adds {
                        println!("add {key} ({size} bytes)");
                    }
                    for (key, id) in &view.removes {
                        println!("remove {key} element {id}");
                    }
                    if let Some(error) = &view.error {
                        println!("payload does not decode: {error}");
                    }
                }
                Ok(if view.error.is_some() { ExitCode::from(1) } else { ExitCode::SUCCESS })
            }
            DagCommand::Dot { topic, from, depth, at } => {
                print!("{}", dag_dot(&at.target()?, &topic, from.as_deref(), depth)?);
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Repair { topic, at } => {
            let done = repair(&at.target()?, &topic)?;
            if at.json {
                print_json(&done)?;
            } else {
                for cid in &done.removed_blocks {
                    println!("removed block {cid} (failed its check, or above one that did): peers send it again");
                }
                for key in &done.rows_fixed {
                    println!("rebuilt row {key:?}");
                }
                if let Some((before, after)) = done.key_count {
                    println!("key count {before} -> {after}");
                }
                if done.heads_changed {
                    println!("heads rebuilt");
                }
                if let Some(reason) = &done.rows_not_rebuilt {
                    println!("rows not rebuilt: {reason}");
                }
                let changes = done.removed_blocks.len() + done.rows_fixed.len();
                println!("{}: {changes} changes", done.topic);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { topic, out, at } => {
            let done = export(&at.target()?, &topic, &out, &Bar::new(at.json))?;
            if at.json {
                let mut report = serde_json::to_value(&done)?;
                report["out"] = out.display().to_string().into();
                print_json(&report)?;
            } else {
                println!(
                    "wrote {} blocks and parts ({}) of {} to {}",
                    done.blocks,
                    bytes(done.bytes),
                    done.topic,
                    out.display()
                );
                for root in &done.roots {
                    println!("root {root}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { file, topic, at } => {
            let done = import(&at.target()?, &file, topic.as_deref(), &Bar::new(at.json))?;
            if at.json {
                print_json(&done)?;
            } else {
                for rejected in &done.rejected {
                    println!("rejected {rejected}");
                }
                println!(
                    "{}: {} snapshots merged, {} blocks applied, {} already there, {} rejected; {} keys",
                    done.topic,
                    done.snapshots,
                    done.applied,
                    done.duplicates,
                    done.rejected.len(),
                    done.keys
                );
            }
            Ok(if done.rejected.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Backup { out, at } => {
            let target = at.target()?;
            let out = backup(&target, &out)?;
            if at.json {
                print_json(&serde_json::json!({ "out": out.display().to_string() }))?;
            } else {
                println!("backed up {} to {}", target.label(), out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Compact { topics, dag, db, at } => {
            let what = if dag || db { CompactWhat { dag, db } } else { CompactWhat { dag: true, db: true } };
            let done = compact(&at.target()?, &topics, what, &Bar::new(at.json))?;
            if at.json {
                print_json(&done)?;
            } else {
                let mut table = Table::new();
                table.set_header(["topic", "snapshot", "keys", "pruned blocks", "bytes before", "bytes after"]);
                for c in &done {
                    table.add_row([
                        c.topic.clone(),
                        c.snapshot.as_deref().map_or_else(|| "-".to_string(), short),
                        c.keys.to_string(),
                        c.pruned_blocks.to_string(),
                        bytes(c.bytes_before),
                        bytes(c.bytes_after),
                    ]);
                }
                println!("{table}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Progress of a long job on stderr: a bar on a terminal, a plain line per tenth otherwise.
struct Bar {
    terminal: bool,
    quiet: bool,
    bar: RefCell<Option<ProgressBar>>,
    /// Steps done, their total, and the tenths printed, for plain lines.
    plain: Cell<(u64, u64, u64)>,
}

impl Bar {
    /// Silent when the output is JSON for a program and stderr is not a terminal.
    fn new(json: bool) -> Bar {
        let terminal = std::io::stderr().is_terminal();
        Bar { terminal, quiet: json && !terminal, bar: RefCell::new(None), plain: Cell::new((0, 0, 0)) }
    }
}

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        if self.quiet {
            return;
        }
        if !self.terminal {
            if total == 0 {
                eprintln!("{what}…");
            } else {
                eprintln!("{what}: {total} steps");
            }
            self.plain.set((0, total, 0));
            return;
        }
        let (bar, template) = if total == 0 {
            (ProgressBar::new_spinner(), "{spinner} {msg} {elapsed}")
        } else {
            (ProgressBar::new(total), "{msg:20} [{bar:40}] {pos}/{len} eta {eta}")
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Some(previous) = self.bar.replace(Some(bar)) {
            previous.finish_and_clear();
        }
    }

    fn advance(&self, steps: u64, item: &str) {
        if self.quiet {
            return;
        }
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.inc(steps);
            if !item.is_empty() {
                bar.set_message(item.to_string());
            }
            return;
        }
        let (done, total, printed) = self.plain.get();
        let done = done + steps;
        let tenths = (done * 10).checked_div(total).unwrap_or(0);
        if tenths > printed {
            eprintln!("{done}/{total} done ({item})");
        }
        self.plain.set((done, total, tenths.max(printed)));
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
