//! Operations on canopy's data: what `canopy-ops` does, as a library.
//!
//! Every operation works on a [`Target`]: a data directory (offline; read-only operations open
//! the database read-only, so they also work beside a running node) or a running node's HTTP
//! API (online, through its `/v1/admin` endpoints). Results are plain values that serialize to
//! the JSON the tool prints with `--json`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use canopy_crdt::inspect::{BlockView, DagStats, FamilyStats, Inspector, TopicStats, Verification};
use canopy_crdt::{Store, StoreOptions};
use canopy_node::wire::{self, ErrorBody};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where an operation runs.
#[derive(Clone, Debug)]
pub enum Target {
    /// A node's data directory (or the `db` directory inside it).
    Offline(PathBuf),
    /// A running node's HTTP API.
    Online(Remote),
}

/// A running node's HTTP API and the API token to call it with.
#[derive(Clone, Debug)]
pub struct Remote {
    /// Its base URL, e.g. `http://127.0.0.1:7700`.
    pub url: String,
    /// The API token sent as `Authorization: Bearer`, for a node with tokens (admin role).
    pub token: Option<String>,
    /// A certificate authority (PEM file) to trust for an https:// API.
    pub cacert: Option<PathBuf>,
}

impl Remote {
    /// The API at `url`, called with no token.
    pub fn open(url: impl Into<String>) -> Remote {
        Remote { url: url.into(), token: None, cacert: None }
    }
}

impl Target {
    /// How the target is named in reports.
    pub fn label(&self) -> String {
        match self {
            Target::Offline(path) => path.display().to_string(),
            Target::Online(remote) => remote.url.clone(),
        }
    }
}

/// The database directory of a data directory: `DIR/db`, unless `DIR` itself holds the
/// database (given directly).
fn database(dir: &Path) -> PathBuf {
    if dir.join("CURRENT").exists() { dir.to_path_buf() } else { dir.join("db") }
}

fn inspector(dir: &Path) -> anyhow::Result<Inspector> {
    Inspector::open(database(dir)).with_context(|| format!("cannot open {} read-only", dir.display()))
}

/// A blocking client of a node's API.
struct Api {
    base: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn new(remote: &Remote) -> anyhow::Result<Api> {
        let base = &remote.url;
        let base = if base.contains("://") { base.to_string() } else { format!("http://{base}") };
        let http = canopy_node::tls::blocking_client(remote.token.as_deref(), remote.cacert.as_deref())?;
        Ok(Api { base: base.trim_end_matches('/').to_string(), http })
    }

    /// Sends `request` and reads the reply as a `T` of [`canopy_node::wire`].
    fn call<T: DeserializeOwned>(&self, request: reqwest::blocking::RequestBuilder) -> anyhow::Result<T> {
        let response = request.send().with_context(|| format!("cannot reach the node at {}", self.base))?;
        let status = response.status();
        let body = response.bytes().with_context(|| format!("{} broke off its answer", self.base))?;
        if !status.is_success() {
            bail!("{} answered {status}: {}", self.base, refusal(&body));
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("{} answered something that is not the JSON expected", self.base))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(self.http.get(format!("{}{path}", self.base)))
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> anyhow::Result<T> {
        self.call(self.http.post(format!("{}{path}", self.base)).json(body))
    }
}

/// The message of a node's refusal.
fn refusal(body: &[u8]) -> String {
    ErrorBody::message_in(body).unwrap_or_else(|| "no message".to_string())
}

/// A topic name as one path segment of a URL.
fn segment(name: &str) -> String {
    // Topic names are `A-Z a-z 0-9 . _ : -`; only `:` needs care in a path.
    name.replace(':', "%3A")
}

/// A node's storage at a glance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// Where it was read.
    pub target: String,
    /// Every topic's figures.
    pub topics: Vec<TopicStats>,
    /// RocksDB's figures per column family.
    pub families: Vec<FamilyStats>,
}

/// Topics, keys, blocks, snapshots and RocksDB's own figures.
pub fn status(target: &Target) -> anyhow::Result<Status> {
    let label = target.label();
    match target {
        Target::Offline(dir) => {
            let inspector = inspector(dir)?;
            Ok(Status { target: label, topics: inspector.topics()?, families: inspector.families()? })
        }
        Target::Online(remote) => {
            let reply: wire::AdminStatus = Api::new(remote)?.get("/v1/admin/status")?;
            Ok(Status { target: label, topics: reply.topics, families: reply.families })
        }
    }
}

/// One row per topic.
pub fn topics(target: &Target) -> anyhow::Result<Vec<TopicStats>> {
    match target {
        Target::Offline(dir) => Ok(inspector(dir)?.topics()?),
        Target::Online(remote) => Ok(Api::new(remote)?.get::<wire::AdminTopics>("/v1/admin/topics")?.topics),
    }
}

/// A head as reports show it: its CID in text and its height, as the node's API shows it.
pub type HeadEntry = wire::BlockRef;

/// The heads of `topic` on one target; `None` when it has no such topic.
pub fn heads(target: &Target, topic: &str) -> anyhow::Result<Option<Vec<HeadEntry>>> {
    match target {
        Target::Offline(dir) => Ok(inspector(dir)?.heads(topic)?.map(wire::heads)),
        Target::Online(remote) => {
            let api = Api::new(remote)?;
            let url = format!("{}/v1/admin/topics/{}/heads", api.base, segment(topic));
            let response =
                api.http.get(url).send().with_context(|| format!("cannot reach the node at {}", api.base))?;
            match response.status() {
                reqwest::StatusCode::NOT_FOUND => Ok(None),
                status if status.is_success() => Ok(Some(response.json::<wire::TopicHeads>()?.heads)),
                status => bail!("{} answered {status}", api.base),
            }
        }
    }
}

/// The heads of one topic on several targets side by side.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeadsReport {
    /// The topic.
    pub topic: String,
    /// Per target: its label, its heads (`None`: the topic is not there, or the target could
    /// not be read, see `error`), and how it stands against the others.
    pub nodes: Vec<NodeHeads>,
    /// True when every target has the same heads.
    pub agree: bool,
}

/// One target's heads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeHeads {
    /// The target.
    pub target: String,
    /// Its heads, sorted by CID.
    pub heads: Option<Vec<HeadEntry>>,
    /// Heads other targets have that this one does not.
    pub lacks: Vec<String>,
    /// How far its greatest head is below the greatest head anywhere.
    pub behind_by: u64,
    /// Why the target could not be read.
    pub error: Option<String>,
}

/// Compares the heads of `topic` on every target. Targets that cannot be read count as
/// disagreeing.
pub fn compare_heads(targets: &[Target], topic: &str) -> HeadsReport {
    let mut nodes: Vec<NodeHeads> = targets
        .iter()
        .map(|target| {
            let (heads, error) = match heads(target, topic) {
                Ok(Some(mut heads)) => {
                    heads.sort();
                    (Some(heads), None)
                }
                Ok(None) => (None, Some(format!("no topic {topic}"))),
                Err(error) => (None, Some(canopy_node::error_text(error.as_ref()))),
            };
            NodeHeads { target: target.label(), heads, lacks: Vec::new(), behind_by: 0, error }
        })
        .collect();
    let all: std::collections::BTreeSet<HeadEntry> =
        nodes.iter().flat_map(|n| n.heads.iter().flatten().cloned()).collect();
    let top = all.iter().map(|h| h.height).max().unwrap_or(0);
    for (node, target) in nodes.iter_mut().zip(targets) {
        let Some(mine) = node.heads.clone() else {
            node.lacks = all.iter().map(|h| h.cid.to_string()).collect();
            node.behind_by = top;
            continue;
        };
        // Another node's head below this node's heads is not lacking: only blocks it has not
        // applied are.
        node.lacks = all
            .iter()
            .filter(|h| !mine.contains(h) && !has_block(target, topic, &h.cid.to_string()).unwrap_or(false))
            .map(|h| h.cid.to_string())
            .collect();
        node.behind_by = top - mine.iter().map(|h| h.height).max().unwrap_or(0);
    }
    let agree = nodes.iter().all(|n| n.heads.is_some() && n.heads == nodes[0].heads);
    HeadsReport { topic: topic.to_string(), nodes, agree }
}

/// Whether `topic` on `target` has applied the block `cid` (its payload may be pruned).
fn has_block(target: &Target, topic: &str, cid: &str) -> anyhow::Result<bool> {
    match target {
        Target::Offline(dir) => Ok(inspector(dir)?.block(topic, &cid.parse()?)?.is_some()),
        Target::Online(remote) => {
            let api = Api::new(remote)?;
            let url = format!("{}/v1/admin/topics/{}/blocks/{cid}", api.base, segment(topic));
            let response = api.http.get(url).send()?;
            match response.status() {
                reqwest::StatusCode::NOT_FOUND => Ok(false),
                status if status.is_success() => Ok(true),
                status => bail!("{} answered {status}", api.base),
            }
        }
    }
}

/// Verifies the named topics (all when empty) and the database's checksums.
pub fn verify(target: &Target, topics: &[String], progress: &dyn Progress) -> anyhow::Result<Verification> {
    let report = match target {
        Target::Offline(dir) => inspector(dir)?.verify_with(topics, &mut |done, total, item| {
            if done == 0 {
                progress.start("verifying", total);
            } else {
                progress.advance(1, item);
            }
        })?,
        Target::Online(remote) => {
            progress.start("verifying", 0);
            Api::new(remote)?.post("/v1/admin/verify", &wire::Verify { topics: topics.to_vec() })?
        }
    };
    progress.finish();
    Ok(report)
}

/// The shape of a topic's DAG.
pub fn dag_stat(target: &Target, topic: &str) -> anyhow::Result<DagStats> {
    match target {
        Target::Offline(dir) => inspector(dir)?.dag_stats(topic)?.with_context(|| format!("no topic {topic}")),
        Target::Online(remote) => Api::new(remote)?.get(&format!("/v1/admin/topics/{}/dag", segment(topic))),
    }
}

/// One block, decoded.
pub fn dag_show(target: &Target, topic: &str, cid: &str) -> anyhow::Result<BlockView> {
    match target {
        Target::Offline(dir) => {
            let parsed = cid.parse().with_context(|| format!("{cid:?} is not a CID"))?;
            inspector(dir)?.block(topic, &parsed)?.with_context(|| format!("topic {topic} has no block {cid}"))
        }
        Target::Online(remote) => Api::new(remote)?.get(&format!("/v1/admin/topics/{}/blocks/{cid}", segment(topic))),
    }
}

/// The DAG below `from` (the heads by default) as Graphviz DOT, `depth` levels down.
pub fn dag_dot(target: &Target, topic: &str, from: Option<&str>, depth: usize) -> anyhow::Result<String> {
    match target {
        Target::Offline(dir) => {
            let from = from.map(|text| text.parse().with_context(|| format!("{text:?} is not a CID"))).transpose()?;
            inspector(dir)?.dot(topic, from, depth, 5000)?.with_context(|| format!("no topic {topic}"))
        }
        Target::Online(remote) => {
            let api = Api::new(remote)?;
            let mut request = api
                .http
                .get(format!("{}/v1/admin/topics/{}/dot", api.base, segment(topic)))
                .query(&[("depth", depth.to_string())]);
            if let Some(from) = from {
                request = request.query(&[("from", from)]);
            }
            let response = request.send().with_context(|| format!("cannot reach the node at {}", api.base))?;
            let status = response.status();
            let text = response.text()?;
            if !status.is_success() {
                bail!("{} answered {status}: {text}", api.base);
            }
            Ok(text)
        }
    }
}

/// A consistent copy of a node's data in `out`: `out/db` (a RocksDB checkpoint) and its
/// subscriptions. A node started with `--data-dir out` serves the same state under a new
/// identity (the identity key is not copied: two nodes must not share one). A running node
/// writes its backups only under its own backup directory: there `out` is the backup's name,
/// and the answer is the directory it went to.
pub fn backup(target: &Target, out: &Path) -> anyhow::Result<PathBuf> {
    match target {
        Target::Offline(dir) => {
            anyhow::ensure!(!out.join("db").exists(), "{} already holds a database", out.display());
            let store = open_store(dir)?;
            std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
            store.inspector()?.checkpoint(&out.join("db"))?;
            let subscriptions = dir.join("subscriptions");
            if subscriptions.exists() {
                std::fs::copy(&subscriptions, out.join("subscriptions"))?;
            }
            Ok(out.to_path_buf())
        }
        Target::Online(remote) => {
            let name = out.to_str().context("a backup's name is UTF-8")?;
            let reply: wire::BackedUp =
                Api::new(remote)?.post("/v1/admin/backup", &wire::Backup { name: name.into() })?;
            Ok(PathBuf::from(reply.out))
        }
    }
}

/// Opens a stopped node's store for writing; a running node's is refused with a hint.
fn open_store(dir: &Path) -> anyhow::Result<Store> {
    Store::open(database(dir), StoreOptions::default()).map_err(|error| match error {
        canopy_crdt::OpenError::InUse(lock) => {
            anyhow::anyhow!("{} is in use by a running node ({lock}); go through it with --api URL", dir.display())
        }
        other => anyhow::anyhow!("cannot open {}: {other}", dir.display()),
    })
}

/// Rebuilds a stopped node's topic: blocks that fail their check go (with what is above them,
/// so sync fetches them again), then rows, key count, pending removes and heads are rebuilt from
/// the blocks and the cover snapshot.
pub fn repair(target: &Target, topic: &str) -> anyhow::Result<canopy_crdt::repair::Repair> {
    match target {
        Target::Offline(dir) => canopy_crdt::repair::repair(database(dir), topic).map_err(|error| match error {
            canopy_crdt::repair::RepairError::Open(canopy_crdt::OpenError::InUse(lock)) => {
                anyhow::anyhow!("{} is in use by a running node ({lock}): stop it, then repair", dir.display())
            }
            other => anyhow::anyhow!("cannot repair {topic} in {}: {other}", dir.display()),
        }),
        Target::Online(remote) => {
            bail!(
                "repair rewrites a topic's state, so the node must be stopped: stop {} and give its --data-dir",
                remote.url
            )
        }
    }
}

pub use canopy_node::car::{Exported, Imported};

/// Writes `topic` as a CARv1 file at `out` (see [`canopy_node::car`]): read from the data
/// directory (read-only, so beside a running node too) or fetched from the node's API, streamed
/// to the file either way.
pub fn export(target: &Target, topic: &str, out: &Path, progress: &dyn Progress) -> anyhow::Result<Exported> {
    let create = || std::fs::File::create(out).with_context(|| format!("cannot write {}", out.display()));
    let report = match target {
        Target::Offline(dir) => {
            let inspector = inspector(dir)?;
            anyhow::ensure!(inspector.heads(topic)?.is_some(), "no topic {topic} in {}", dir.display());
            progress.start("exporting", 0);
            let mut last = 0;
            let file = std::io::BufWriter::new(create()?);
            let exported = canopy_node::car::export(&inspector, topic, file, &mut |done| {
                progress.advance(done - last, topic);
                last = done;
            })?;
            exported.with_context(|| format!("no topic {topic} in {}", dir.display()))?
        }
        Target::Online(remote) => {
            progress.start("downloading", 0);
            let api = Api::new(remote)?;
            let mut response = api
                .http
                .get(format!("{}/v1/admin/topics/{}/export", api.base, segment(topic)))
                .send()
                .with_context(|| format!("cannot reach the node at {}", api.base))?;
            let status = response.status();
            if !status.is_success() {
                let body = response.bytes().unwrap_or_default();
                bail!("{} answered {status}: {}", api.base, refusal(&body));
            }
            let mut file = std::io::BufWriter::new(create()?);
            let bytes = response.copy_to(&mut file).context("the export was cut short")?;
            std::io::Write::flush(&mut file)?;
            // The file is read back once: it is whole, and its items are counted.
            let mut car = canopy_node::car::CarReader::open(std::io::BufReader::new(std::fs::File::open(out)?))?;
            let roots = car.roots().iter().map(ToString::to_string).collect();
            let mut blocks = 0;
            while car.next_item()?.is_some() {
                blocks += 1;
            }
            Exported { topic: topic.to_string(), roots, blocks, bytes }
        }
    };
    progress.finish();
    Ok(report)
}

/// Reads a CARv1 file into a topic (named by `topic`, or by the snapshots in the file): into a
/// stopped node's data directory, or through a running node's API, which then announces it.
/// The file is streamed either way. Importing twice changes nothing the second time.
pub fn import(target: &Target, file: &Path, topic: Option<&str>, progress: &dyn Progress) -> anyhow::Result<Imported> {
    let open = || -> anyhow::Result<canopy_node::car::CarReader<std::io::BufReader<std::fs::File>>> {
        let input = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        canopy_node::car::CarReader::open(std::io::BufReader::new(input))
            .with_context(|| format!("cannot import {}", file.display()))
    };
    let name = match topic {
        Some(name) => name.to_string(),
        None => open()?.snapshot_topic()?.context("the file names no topic: give --topic NAME")?,
    };
    match target {
        Target::Offline(dir) => {
            let store = open_store(dir)?;
            let handle = store.topic(&name)?;
            progress.start("importing", 0);
            let mut last = 0;
            let importer = canopy_node::car::Importer::Operator;
            let report = canopy_node::car::import(&handle, open()?, importer, &mut |done| {
                progress.advance(done - last, &name);
                last = done;
            })?;
            progress.finish();
            Ok(report)
        }
        Target::Online(remote) => {
            progress.start("uploading", 0);
            let api = Api::new(remote)?;
            let input = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
            let length = input.metadata()?.len();
            let request = api
                .http
                .post(format!("{}/v1/admin/topics/{}/import", api.base, segment(&name)))
                .header("content-type", "application/vnd.ipld.car")
                .body(reqwest::blocking::Body::sized(input, length));
            let report = api.call(request)?;
            progress.finish();
            Ok(report)
        }
    }
}

/// What compacting one topic did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Compacted {
    /// The topic.
    pub topic: String,
    /// The snapshot's manifest, when the DAG was compacted and the topic had history.
    pub snapshot: Option<String>,
    /// Live keys in the snapshot.
    pub keys: u64,
    /// Blocks pruned now.
    pub pruned_blocks: u64,
    /// Approximate bytes of the topic before.
    pub bytes_before: u64,
    /// The same after.
    pub bytes_after: u64,
}

/// What `compact` does: the DAG (snapshot and prune), the RocksDB ranges, or both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactWhat {
    /// Snapshot each topic at its heads and prune the covered history.
    pub dag: bool,
    /// Compact each topic's RocksDB ranges to the last level.
    pub db: bool,
}

/// Compacts the named topics (all when empty): a snapshot at their heads and the covered
/// history pruned (`what.dag`), their RocksDB ranges compacted (`what.db`). Offline, the data
/// directory must not be in use. `progress` hears of each topic done.
pub fn compact(
    target: &Target,
    topics: &[String],
    what: CompactWhat,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<Compacted>> {
    let mut out = Vec::new();
    match target {
        Target::Offline(dir) => {
            let store = open_store(dir)?;
            let names = if topics.is_empty() { store.topic_names() } else { topics.to_vec() };
            progress.start("compacting", names.len() as u64);
            for name in names {
                let topic =
                    store.existing_topic(&name).with_context(|| format!("no topic {name} in {}", dir.display()))?;
                let mut done = Compacted { topic: name, ..Compacted::default() };
                // RocksDB first: it flushes the memtables, so the bytes before are all counted;
                // the DAG compaction then compacts the ranges it prunes.
                let mut before = None;
                if what.db {
                    let db = topic.compact_storage()?;
                    before = Some(db.bytes_before);
                    done.bytes_after = db.bytes_after;
                }
                if what.dag {
                    let dag = topic.compact()?;
                    done.snapshot = dag.snapshot.map(|cid| cid.to_string());
                    done.keys = dag.keys;
                    done.pruned_blocks = dag.pruned_blocks;
                    before.get_or_insert(dag.bytes_before);
                    done.bytes_after = dag.bytes_after;
                }
                done.bytes_before = before.unwrap_or(0);
                progress.advance(1, &done.topic);
                out.push(done);
            }
        }
        Target::Online(remote) => {
            let api = Api::new(remote)?;
            let names = if topics.is_empty() {
                let listed: wire::AdminTopics = api.get("/v1/admin/topics")?;
                listed.topics.into_iter().map(|t| t.name).collect()
            } else {
                topics.to_vec()
            };
            progress.start("compacting", names.len() as u64);
            for name in names {
                let path = format!("/v1/topics/{}/compact", segment(&name));
                let reply: wire::Compaction = api.post(&path, &wire::Compact { dag: what.dag, db: what.db })?;
                progress.advance(1, &name);
                out.push(Compacted {
                    topic: name,
                    snapshot: reply.snapshot,
                    keys: reply.keys.unwrap_or(0),
                    pruned_blocks: reply.pruned_blocks,
                    bytes_before: reply.bytes_before,
                    bytes_after: reply.bytes_after,
                });
            }
        }
    }
    progress.finish();
    Ok(out)
}

/// Hears how a long operation advances: the tool draws a progress bar on a terminal and prints
/// plain lines otherwise.
pub trait Progress {
    /// The work begins: `total` steps of `what`.
    fn start(&self, what: &str, total: u64);
    /// `steps` more are done; `item` names the last.
    fn advance(&self, steps: u64, item: &str);
    /// The work is over.
    fn finish(&self);
}

/// Progress nobody watches.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64, _: &str) {}
    fn finish(&self) {}
}
