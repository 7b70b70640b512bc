//! Sharded tables: one logical keyspace spread over partition topics, each held by a few nodes
//! of the cluster and reachable through any node.
//!
//! Three replicated topics carry the cluster's shared state, so it converges like any data:
//! - [`MEMBERS_TOPIC`]: one entry per live node (key: its peer id, value: its API address), each
//!   written only by that node (a keyed topic: every replica refuses a block writing another
//!   author's entry), each
//!   written with a lifetime and rewritten well before it runs out, so a node that stops or
//!   dies drops out by itself;
//! - [`TABLES_TOPIC`]: the catalog, each table's shape (its partition and replica counts) as the
//!   members that created it wrote it: a keyed topic again, so an entry `<peer id>/<table>` is
//!   only ever written by that peer, and where entries disagree every node picks the same one
//!   (the earliest created, then the smallest peer id), counting only admitted peers' entries
//!   when the node admits only some;
//! - one topic per partition, `table:<name>:<partition>`, an ordinary topic.
//!
//! A key belongs to the partition a jump consistent hash of its BLAKE3 digest picks; a partition
//! is held by the `replicas` members that score highest for it under rendezvous hashing, so every
//! node that sees the same members places every partition the same way, and a member joining or
//! leaving moves only the partitions it enters or leaves. A node subscribes the partitions placed
//! on it (and catches up on them through sync); a request for a key it does not hold goes to the
//! partition's holders in placement order, over their HTTP APIs, marked as forwarded so it is
//! never forwarded twice.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::node::{Heard, NodeInner, NodeTopic};
use crate::{Node, NodeError};

mod catalog;
mod docs;
mod handoff;
mod members;
use members::{MemberEntry, keep_member_entry, meet};
pub(crate) mod placement;
mod rehome;
pub(crate) mod route;
pub(crate) mod write;

pub(crate) use placement::{HANDOFF_WINDOW_LIFETIMES, before_recent_joins, placed_on};
pub use placement::{PartitionTopic, owners, partition_of, partition_topic};

pub(crate) use docs::parse_order;
pub use docs::{DocChange, FoundDocs, IndexFanout, PartitionIndexes};
pub use members::DrainStatus;
pub use route::{Listing, Read, Table, TableEntry, Written};
pub use write::Acked;

/// The topic listing the cluster's live members.
pub const MEMBERS_TOPIC: &str = "keyed/_canopy:members";
/// The members topic of earlier versions, open to any writer. A node still writes its entry
/// there (never reads it), so members not yet upgraded keep routing to it during a rolling
/// upgrade.
pub const LEGACY_MEMBERS_TOPIC: &str = "_canopy:members";
/// The topic holding the table catalog: entry `<peer id>/<table>` is the table's shape as that
/// member created it.
pub const TABLES_TOPIC: &str = "keyed/_canopy:tables";
/// The catalog of earlier versions, open to any writer, keyed by table name. A node adopts its
/// tables into [`TABLES_TOPIC`] when it joins and writes the tables it creates there too (never
/// reading it otherwise), so members not yet upgraded see them during a rolling upgrade.
pub const LEGACY_TABLES_TOPIC: &str = "_canopy:tables";
/// Most partitions a table may have.
pub const PARTITIONS_MAX: u32 = 4096;
/// Most replicas of each partition.
pub const REPLICAS_MAX: u32 = 16;
/// Longest table name, in bytes.
pub const TABLE_NAME_BYTES_MAX: usize = 64;
/// The HTTP header that marks a request one node sends another on a caller's behalf: the
/// receiver serves it from the partition it holds, or answers 421, and never forwards it.
pub const FORWARDED_HEADER: &str = "canopy-forwarded";
/// The HTTP header that marks a request a member that just joined hands to another member to
/// route: the receiver routes it by its own placement, and never hands it on again.
pub const PROXIED_HEADER: &str = "canopy-proxied";
/// The value of [`FORWARDED_HEADER`] on the sender's last try: the receiver serves from its
/// copy even while that copy is still catching up, rather than answer 421.
pub const FORWARDED_LAST: &str = "last";
/// Most members read from the members topic.
const MEMBERS_MAX: usize = 10_000;
/// Most tables read from the catalog.
const TABLES_MAX: usize = 10_000;
/// How often a node checks members and catalog for partitions placed on it.
const PLACEMENT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a copy taken on waits, at least, before announcements can make it count as caught
/// up: the gossip layer replays announcements up to a few of its heartbeats old to a new
/// subscriber, and the holders' fresh announcement (sent as they see the subscription) must be
/// among those heard.
const ANNOUNCE_SETTLE: Duration = Duration::from_secs(2);
/// Most heads remembered as announced for one topic; past it only the latest announcement's.
const SEEN_HEADS_MAX: usize = 4096;
/// How long a copy nobody has announced heads for waits before it counts as caught up: the
/// other holders announce their heads as soon as they see this node join the partition's
/// gossip, so silence this long means they hold nothing.
const CATCH_UP_GRACE: Duration = Duration::from_secs(1);
/// How long a copy handed off stays on disk, unsubscribed, before it is deleted: a request
/// that took its handle before the hand-off has long finished by then, and a write such a
/// request made shows as changed heads, which keeps the copy.
const HANDOFF_QUIET: Duration = Duration::from_secs(15);
/// A copy taken on less than this long ago is not handed off yet.
const HANDOFF_MIN_AGE: Duration = Duration::from_secs(5);

/// A table: its name and shape, fixed at creation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    /// The table's name.
    pub name: String,
    /// Partitions the keyspace is split into.
    pub partitions: u32,
    /// Members holding each partition (fewer while the cluster has fewer members).
    pub replicas: u32,
}

/// A live node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// Its peer id.
    pub peer_id: String,
    /// The base URL of its HTTP API, which other nodes forward requests to.
    pub api: String,
    /// Its libp2p listen addresses: members connect to each other, since a partition's
    /// holders must exchange its announcements directly.
    pub addresses: Vec<String>,
    /// When it joined, in milliseconds since the Unix epoch by its clock.
    pub joined_ms: u64,
}

/// A failed table operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The node does not take part in tables.
    #[error("tables are not enabled on this node: start it with --tables (or call Node::join_tables)")]
    NotEnabled,
    /// A table name or shape breaks the rules.
    #[error("{0}")]
    Invalid(String),
    /// The table exists with another shape.
    #[error("table {} exists with {} partitions and {} replicas", .0.name, .0.partitions, .0.replicas)]
    Conflict(TableDef),
    /// No such table in the catalog.
    #[error("no table {0}: create it first (POST /v1/tables, or canopy table create {0})")]
    NoSuchTable(String),
    /// No holder of the key's partition could be reached.
    #[error("partition {partition} of table {table} is unavailable: {reason}")]
    Unavailable {
        /// The table.
        table: String,
        /// The partition.
        partition: u32,
        /// What was tried.
        reason: String,
    },
    /// No partition of a listing or query over the whole table answered.
    #[error("no partition of table {table} answered: {}", failures_text(.failures))]
    NoneAnswered {
        /// The table.
        table: String,
        /// Each partition asked, with what went wrong.
        failures: Vec<(u32, String)>,
    },
    /// A write was applied but fewer copies than asked held it in time.
    #[error(
        "the write to partition {partition} of table {table} was applied, but {acknowledged} of the {asked} copies \
         asked for held it in time: read it back with causal={causal_token} rather than write it again"
    )]
    NotAcknowledged {
        /// The table.
        table: String,
        /// The partition.
        partition: u32,
        /// The copies that held it.
        acknowledged: u32,
        /// The copies asked for.
        asked: u32,
        /// The write's causal token.
        causal_token: String,
    },
    /// A holder refused the request (bad key or value, too large, ...).
    #[error("{message}")]
    Refused {
        /// The HTTP status the holder answered.
        status: u16,
        /// Its message.
        message: String,
    },
    /// A local read failed.
    #[error(transparent)]
    Read(#[from] canopy_crdt::ReadError),
    /// A local subscription failed.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl TableError {
    /// The HTTP status the API answers this failure with.
    pub fn status(&self) -> u16 {
        match self {
            TableError::NotEnabled => 501,
            TableError::Invalid(_) => 400,
            TableError::Conflict(_) => 409,
            TableError::NoSuchTable(_) => 404,
            TableError::Unavailable { .. } | TableError::NoneAnswered { .. } => 503,
            TableError::NotAcknowledged { .. } => 504,
            TableError::Refused { status, .. } => *status,
            TableError::Read(_) => 500,
            TableError::Node(NodeError::Topic(canopy_crdt::TopicError::InvalidName { .. })) => 400,
            TableError::Node(_) => 503,
        }
    }
}

/// Each partition's failure, in the order asked.
fn failures_text(failures: &[(u32, String)]) -> String {
    let each: Vec<String> =
        failures.iter().map(|(partition, error)| format!("[partition {partition}] {error}")).collect();
    each.join("; ")
}

impl From<canopy_crdt::WriteError> for TableError {
    fn from(error: canopy_crdt::WriteError) -> TableError {
        use canopy_crdt::WriteError;
        // The status the HTTP API gives the same failure of a topic write.
        let status = match &error {
            WriteError::InvalidKey(_) | WriteError::TooManyOps { .. } => 400,
            WriteError::Forbidden(_) => 403,
            WriteError::InvalidValue(_) | WriteError::TooLarge { .. } => 413,
            _ => 503,
        };
        TableError::Refused { status, message: error.to_string() }
    }
}

/// The catalog as read at the catalog topic's heads: its tables, and the partition counts that
/// lost to their shapes.
type CatalogRead = (Vec<canopy_crdt::Cid>, Arc<Vec<TableDef>>, Arc<catalog::Superseded>);

/// A node's part in the cluster's tables.
pub(crate) struct Tables {
    /// This node's member entry.
    pub(crate) me: Member,
    pub(crate) members_topic: NodeTopic,
    /// [`LEGACY_MEMBERS_TOPIC`], written for members not yet upgraded.
    legacy_members_topic: NodeTopic,
    pub(crate) tables_topic: NodeTopic,
    /// [`LEGACY_TABLES_TOPIC`], adopted from at joining and written for members not yet upgraded.
    legacy_tables_topic: NodeTopic,
    /// The peers whose member and catalog entries count, when the node admits only some.
    trusted: Option<std::collections::HashSet<String>>,
    /// The catalog as last read, with the catalog heads it was read at.
    catalog: std::sync::Mutex<CatalogRead>,
    /// Where the move of keys written under superseded shapes stands.
    rehoming: std::sync::Mutex<rehome::Rehoming>,
    /// How long a member entry lives; it is rewritten every quarter of this.
    member_ttl: Duration,
    pub(crate) http: reqwest::Client,
    /// Set once the node stops: the background tasks end at once, their handles released.
    stop: tokio::sync::watch::Sender<bool>,
    /// When this node joined. For half a member lifetime after it, the node may not have heard
    /// from every live member yet (each rewrites its entry every quarter of a lifetime), so the
    /// placement task takes no partition on: a catalog that arrives before the members would
    /// otherwise make a new node take every partition. (A request for a partition the node
    /// believes placed on it takes that one on at once.)
    joined: std::time::Instant,
    /// This node's heartbeat count, written in its member entry.
    beat: std::sync::atomic::AtomicU64,
    /// Per member: the last heartbeat count read in its entry, and when (by this node's clock)
    /// it was first read.
    heartbeats: std::sync::Mutex<std::collections::HashMap<String, (u64, std::time::Instant)>>,
    /// Whether this node is draining: handing off every partition it holds, to stop.
    draining: AtomicBool,
    /// The live members that are draining, as last read.
    draining_members: std::sync::Mutex<Vec<Member>>,
    /// The members topic's entries as last read (peer id, parsed, and record), with the heads
    /// they were read at: read again only when the heads change.
    member_entries: std::sync::Mutex<(Vec<canopy_crdt::Cid>, Arc<Vec<MemberEntry>>)>,
    /// When each peer last spoke to this node itself (an announcement over a live connection, on
    /// any topic): as good a heartbeat as a rewritten entry, and one that a busy members topic
    /// does not delay.
    spoke: std::sync::Mutex<std::collections::HashMap<canopy_transport::PeerId, std::time::Instant>>,
    /// The API URLs found advertised by more than one live member, already reported.
    shared_urls: std::sync::Mutex<BTreeSet<String>>,
    /// When this node took on each partition it took on since it joined.
    taken: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Copies taken on for a request although not placed here: they count as caught up only once
    /// they hold heads another holder announced, never by waiting alone.
    pub(crate) strays: std::sync::Mutex<BTreeSet<String>>,
    /// What peers announced of each subscribed topic.
    announced: std::sync::Mutex<std::collections::HashMap<String, Announced>>,
    /// Copies handed off and not yet deleted: when, and their heads then.
    leaving: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Vec<canopy_crdt::Cid>)>>,
}

/// The heads peers announced of one topic.
#[derive(Default)]
struct Announced {
    /// Every head announced since the copy was taken on (old announcements may arrive after
    /// newer ones): a copy that holds them all has caught up with its peers.
    seen: BTreeSet<canopy_crdt::Cid>,
    /// Each connected peer's latest heads, as it announced them itself: a peer whose heads are
    /// this node's has everything it has.
    by_peer: std::collections::HashMap<canopy_transport::PeerId, Vec<canopy_crdt::Cid>>,
}

impl Tables {
    /// Notes what a peer announced, or forgets a topic no longer replicated.
    fn hear(&self, heard: Heard<'_>) {
        if let Heard::Heads { from, first_hand: true, .. } = heard {
            let mut spoke = self.spoke.lock().expect("spoke lock");
            if spoke.len() < MEMBERS_MAX || spoke.contains_key(&from) {
                spoke.insert(from, std::time::Instant::now());
            }
        }
        let mut announced = self.announced.lock().expect("announced lock");
        match heard {
            Heard::Heads { topic, from, first_hand, heads, .. } => {
                let entry = announced.entry(topic.to_string()).or_default();
                // Only what a peer says of itself, over a live connection, is evidence of what it
                // holds: a relayed announcement may be old.
                if first_hand {
                    entry.by_peer.insert(from, heads.to_vec());
                }
                if entry.seen.len() + heads.len() > SEEN_HEADS_MAX {
                    entry.seen.clear();
                }
                entry.seen.extend(heads.iter().copied());
            }
            Heard::Disconnected(peer) => {
                for entry in announced.values_mut() {
                    entry.by_peer.remove(&peer);
                }
            }
            Heard::Unsubscribed(topic) => {
                announced.remove(topic);
            }
        }
    }

    /// Whether this node has been a member long enough to have heard from every live member.
    pub(crate) fn settled(&self) -> bool {
        self.joined.elapsed() >= self.member_ttl / 2
    }

    /// Subscribes partition topics taken on now, noting when.
    pub(crate) fn take_on(&self, node: &Node, topics: &[&String]) -> Result<(), NodeError> {
        {
            // Only what is announced once a copy is taken on speaks of it: forgotten before the
            // subscription, so that no announcement that follows it is lost.
            let taken = self.taken.lock().expect("taken lock");
            let mut announced = self.announced.lock().expect("announced lock");
            for topic in topics.iter().filter(|topic| !taken.contains_key(**topic)) {
                announced.remove(*topic);
            }
        }
        node.subscribe_all(topics)?;
        let now = std::time::Instant::now();
        let mut taken = self.taken.lock().expect("taken lock");
        let mut leaving = self.leaving.lock().expect("leaving lock");
        let mut was_leaving = false;
        for topic in topics {
            taken.entry((*topic).clone()).or_insert(now);
            was_leaving |= leaving.remove(*topic).is_some();
        }
        drop(leaving);
        if was_leaving {
            self.save_leaving(node);
        }
        Ok(())
    }

    /// Whether this node's copy `topic` has caught up: it was taken on [`ANNOUNCE_SETTLE`] ago
    /// and holds every head announced since, or nobody announced any since the node took it on
    /// (or restarted) and [`CATCH_UP_GRACE`] has passed (not for a stray copy, which waits for
    /// an announcement).
    /// A copy still catching up is asked last.
    pub(crate) fn caught_up(&self, topic: &NodeTopic) -> bool {
        let seen = self.announced.lock().expect("announced lock").get(topic.name()).map(|a| a.seen.clone());
        let taken = self.taken.lock().expect("taken lock").get(topic.name()).copied().unwrap_or(self.joined);
        match seen {
            Some(heads) => {
                if taken.elapsed() < ANNOUNCE_SETTLE {
                    return false;
                }
                if heads.is_empty() {
                    // Every head announced is held already (pruned below): nothing to ask.
                    return true;
                }
                let count = heads.len();
                let Ok(unknown) = topic.crdt().unknown(heads.iter().copied().collect(), count) else { return false };
                // A head the copy holds stays held: it need not be checked again, so what is
                // remembered stays as small as what the copy still lacks.
                let unknown: BTreeSet<canopy_crdt::Cid> = unknown.into_iter().collect();
                if let Some(entry) = self.announced.lock().expect("announced lock").get_mut(topic.name()) {
                    entry.seen.retain(|cid| unknown.contains(cid) || !heads.contains(cid));
                }
                unknown.is_empty()
            }
            None if self.strays.lock().expect("strays lock").contains(topic.name()) => false,
            None => {
                // Silence means something only once the node has met every member (which it
                // has by the time it settled), so the grace runs from then at the earliest.
                let settled_at = self.joined + self.member_ttl / 2;
                self.settled() && taken.max(settled_at).elapsed() >= CATCH_UP_GRACE
            }
        }
    }

    /// How many heads the other holders of `topic` announced that this node's copy lacks (0 once
    /// it has caught up with them).
    pub(crate) fn missing_heads(&self, topic: &NodeTopic) -> usize {
        let seen: Vec<canopy_crdt::Cid> = match self.announced.lock().expect("announced lock").get(topic.name()) {
            Some(announced) => announced.seen.iter().copied().collect(),
            None => return 0,
        };
        let count = seen.len();
        topic.crdt().unknown(seen, count).map_or(0, |unknown| unknown.len())
    }

    /// [`Tables::caught_up`] from what is in memory alone: `None` when the store must be asked
    /// whether the copy holds heads its peers announced.
    pub(crate) fn caught_up_now(&self, topic: &NodeTopic) -> Option<bool> {
        let pending = self.announced.lock().expect("announced lock").get(topic.name()).map(|a| a.seen.is_empty());
        let taken = self.taken.lock().expect("taken lock").get(topic.name()).copied().unwrap_or(self.joined);
        match pending {
            Some(true) => Some(taken.elapsed() >= ANNOUNCE_SETTLE),
            Some(false) => None,
            None => Some(self.caught_up(topic)),
        }
    }
}

/// Checks a table name: 1 to 64 characters from A-Z a-z 0-9 . _ -.
pub fn validate_table_name(name: &str) -> Result<(), TableError> {
    if name.is_empty()
        || name.len() > TABLE_NAME_BYTES_MAX
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(TableError::Invalid(format!(
            "table name {name:?}: use 1 to {TABLE_NAME_BYTES_MAX} characters from A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

impl Node {
    /// Takes part in the cluster's tables: subscribes the members and catalog topics, announces
    /// this node as a member reachable at `advertise_api` (the base URL of its HTTP API, which
    /// other nodes forward requests to), and from then on holds the partitions placed on it.
    /// `member_ttl` is how long the node stays a member after it stops refreshing its entry
    /// (it refreshes every quarter of it), within the bounds of `NodeConfig::member_ttl_s`.
    pub async fn join_tables(&self, advertise_api: &str, member_ttl: Duration) -> Result<(), NodeError> {
        let url = advertise_api.trim_end_matches('/').to_string();
        // The rules of the settings `canopy serve` passes here, so an embedder is held to them too.
        crate::config::check("advertise_api", crate::config::http_url(advertise_api))?;
        crate::config::check("member_ttl_s", crate::config::member_ttl_s(&member_ttl.as_secs()))?;
        let status = self.status();
        if status.author != status.peer_id {
            // The member entry is keyed by the peer id and must be signed by it.
            return Err(NodeError::Config(crate::ConfigError::Invalid {
                name: "tables",
                message: format!(
                    "a table member signs as its own identity, but this node signs as {}: start it without \
                     another author to take part in tables",
                    status.author
                ),
            }));
        }
        let node = self.clone();
        let (members_topic, legacy_members_topic, tables_topic, legacy_tables_topic) =
            tokio::task::spawn_blocking(move || {
                Ok::<_, NodeError>((
                    node.subscribe(MEMBERS_TOPIC)?,
                    node.subscribe(LEGACY_MEMBERS_TOPIC)?,
                    node.subscribe(TABLES_TOPIC)?,
                    node.subscribe(LEGACY_TABLES_TOPIC)?,
                ))
            })
            .await
            .map_err(|_| NodeError::Closed)??;
        let mut http =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(1)).timeout(Duration::from_secs(10));
        if let Some(path) = &self.inner().config.tls_ca {
            let authority = crate::tls::authority(path).map_err(|e| {
                NodeError::Config(crate::ConfigError::Invalid { name: "tls_ca", message: e.to_string() })
            })?;
            http = http.add_root_certificate(authority);
        }
        let http = http
            .build()
            .map_err(|e| NodeError::Config(crate::ConfigError::Invalid { name: "tables", message: e.to_string() }))?;
        let tables = Arc::new(Tables {
            me: Member {
                peer_id: self.status().peer_id,
                api: url,
                addresses: self.inner().transport.listen_addrs().iter().map(ToString::to_string).collect(),
                joined_ms: self.expiry_of(Duration::ZERO),
            },
            members_topic,
            legacy_members_topic,
            tables_topic,
            legacy_tables_topic,
            trusted: crate::node::admitted(&self.inner().config, &self.inner().transport.peer_id())
                .map(|peers| peers.iter().map(ToString::to_string).collect()),
            catalog: std::sync::Mutex::new((Vec::new(), Arc::new(Vec::new()), Arc::default())),
            rehoming: std::sync::Mutex::default(),
            member_ttl,
            http,
            stop: tokio::sync::watch::Sender::new(false),
            joined: std::time::Instant::now(),
            beat: std::sync::atomic::AtomicU64::new(0),
            heartbeats: std::sync::Mutex::default(),
            shared_urls: std::sync::Mutex::default(),
            spoke: std::sync::Mutex::default(),
            member_entries: std::sync::Mutex::default(),
            draining: AtomicBool::new(false),
            draining_members: std::sync::Mutex::default(),
            taken: std::sync::Mutex::new(std::collections::HashMap::new()),
            leaving: std::sync::Mutex::new(std::collections::HashMap::new()),
            announced: std::sync::Mutex::new(std::collections::HashMap::new()),
            strays: std::sync::Mutex::new(BTreeSet::new()),
        });
        if self.attach(tables.clone()).is_err() {
            return Ok(());
        }
        let hearing = Arc::downgrade(&tables);
        self.listen(Arc::new(move |heard| {
            if let Some(tables) = hearing.upgrade() {
                tables.hear(heard);
            }
        }));
        let leaving = Arc::downgrade(&tables);
        self.on_shutdown(Box::new(move || {
            if let Some(tables) = leaving.upgrade() {
                tables.leave();
            }
        }));
        let failed = |e| match e {
            TableError::Node(e) => e,
            other => NodeError::Config(crate::ConfigError::Invalid { name: "tables", message: other.to_string() }),
        };
        tables.refresh().map_err(failed)?;
        tables.adopt_legacy_catalog().map_err(failed)?;
        tables.load_leaving(self);
        tokio::spawn(keep_member_entry(tables.clone()));
        tokio::spawn(keep_placement(Arc::downgrade(self.inner()), tables));
        Ok(())
    }

    fn tables_part(&self) -> Result<Arc<Tables>, TableError> {
        self.part::<Tables>().ok_or(TableError::NotEnabled)
    }

    /// The cluster's live members.
    pub fn members(&self) -> Result<Vec<Member>, TableError> {
        self.tables_part()?.members()
    }

    /// The tables of the catalog.
    pub fn tables(&self) -> Result<Vec<TableDef>, TableError> {
        Ok(self.tables_part()?.tables()?.to_vec())
    }

    /// Creates table `name` with `partitions` partitions of `replicas` replicas each. Creating a
    /// table that exists with the same shape does nothing and returns `false`; with another shape
    /// it fails with [`TableError::Conflict`]. Two nodes creating the same table with different
    /// shapes at once both succeed, and every node then takes the one created first.
    pub fn create_table(&self, name: &str, partitions: u32, replicas: u32) -> Result<(TableDef, bool), TableError> {
        let tables = self.tables_part()?;
        validate_table_name(name)?;
        if !(1..=PARTITIONS_MAX).contains(&partitions) {
            return Err(TableError::Invalid(format!("partitions must be 1 to {PARTITIONS_MAX}, not {partitions}")));
        }
        if !(1..=REPLICAS_MAX).contains(&replicas) {
            return Err(TableError::Invalid(format!("replicas must be 1 to {REPLICAS_MAX}, not {replicas}")));
        }
        let wanted = TableDef { name: name.into(), partitions, replicas };
        match tables.table(name) {
            Ok(existing) if existing == wanted => return Ok((existing, false)),
            Ok(existing) => return Err(TableError::Conflict(existing)),
            Err(TableError::NoSuchTable(_)) => {}
            Err(error) => return Err(error),
        }
        tables.write_catalog_entry(&wanted, self.expiry_of(Duration::ZERO))?;
        Ok((wanted, true))
    }

    /// [`Node::table`] when the catalog is in memory as last read (no store read); `None` when
    /// it must be read again.
    pub(crate) fn table_cached(&self, name: &str) -> Option<Result<Table, TableError>> {
        let tables = self.part::<Tables>()?;
        Some(tables.table_cached(name)?.map(|def| Table::new(self.clone(), def)))
    }

    /// A table of the catalog, to read and write through.
    pub fn table(&self, name: &str) -> Result<Table, TableError> {
        let def = self.tables_part()?.table(name)?;
        Ok(Table::new(self.clone(), def))
    }
}

/// Connects to the members and subscribes the partitions placed on this node, until the node
/// stops.
async fn keep_placement(node: std::sync::Weak<NodeInner>, tables: Arc<Tables>) {
    let meet_every = tables.member_ttl / 4;
    let mut last_meet = tokio::time::Instant::now();
    let mut stopped = tables.stop.subscribe();
    loop {
        if until_stopped(&mut stopped, PLACEMENT_INTERVAL).await {
            return;
        }
        let Some(inner) = node.upgrade() else { return };
        let node = Node::from_inner(inner);
        let meet_now = last_meet.elapsed() >= meet_every || !tables.settled();
        let work = {
            let (tables, node) = (tables.clone(), node.clone());
            move || -> Result<(), TableError> {
                let members = tables.members()?;
                tables.report_shared_urls(&members);
                if meet_now {
                    meet(&node, &members);
                }
                if tables.settled() {
                    tables.place(&node, &members)?;
                }
                Ok(())
            }
        };
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(())) if meet_now => last_meet = tokio::time::Instant::now(),
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "keeping the tables' placement"),
            Err(_) => return,
        }
        if tables.settled()
            && let Err(error) = tables.rehome(&node).await
        {
            tracing::warn!(%error, "moving keys written under a superseded table shape");
        }
    }
}

/// Sleeps `period`; true when the node stopped first (or had stopped).
async fn until_stopped(stopped: &mut tokio::sync::watch::Receiver<bool>, period: Duration) -> bool {
    // `wait_for` fails only once the sender is gone, which stops the node as well.
    let stopped_first = tokio::select! {
        _ = tokio::time::sleep(period) => false,
        _ = stopped.wait_for(|stop| *stop) => true,
    };
    stopped_first || *stopped.borrow()
}

fn sorted_heads(heads: &[canopy_crdt::Head]) -> Vec<canopy_crdt::Cid> {
    let mut cids: Vec<canopy_crdt::Cid> = heads.iter().map(|head| head.cid).collect();
    cids.sort_unstable();
    cids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fan_out_no_partition_answered_names_each_partition() {
        let error = TableError::NoneAnswered {
            table: "users".into(),
            failures: vec![(0, "a unreachable".into()), (3, "b answered 503".into())],
        };
        assert_eq!(error.status(), 503);
        assert_eq!(
            error.to_string(),
            "no partition of table users answered: [partition 0] a unreachable; [partition 3] b answered 503"
        );
    }

    #[test]
    fn table_names_are_checked() {
        assert!(validate_table_name("users-2024.v1_a").is_ok());
        for bad in ["", "a:b", "a/b", "space here", &"x".repeat(65)] {
            assert!(validate_table_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(partition_topic("users", 7), "table:users:7");
        let parsed = PartitionTopic::parse("table:a:b:12").unwrap();
        assert_eq!((parsed.table.as_str(), parsed.partition), ("a:b", 12));
        assert_eq!(parsed.to_string(), "table:a:b:12");
        for not_one in ["users", "table:users", "table:users:x", "tables:users:1"] {
            assert!(PartitionTopic::parse(not_one).is_none(), "{not_one}");
        }
        assert!(canopy_crdt::validate_topic_name(&partition_topic(&"x".repeat(64), PARTITIONS_MAX - 1)).is_ok());
    }
}
