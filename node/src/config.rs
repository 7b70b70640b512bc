//! Node settings: defaults that run out of the box, a TOML file, and overrides from `canopy
//! serve`'s flags and `CANOPY_*` environment variables.
//!
//! Each setting is one row of the `settings!` table below, which declares its type, default,
//! flag, environment variable, bounds and documentation. From it come [`NodeConfig`] (whose fields
//! are the TOML keys), its `Default`, the per-setting checks of [`NodeConfig::validate`] and
//! [`Overrides`] (the flags), so nothing about a setting is written twice.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::causal::Ack;

/// Most bytes of blocks an announcement may carry: with the heads, an announcement stays well
/// under the gossip message bound (1 MiB).
pub const INLINE_BYTES_MAX: usize = 512 << 10;
/// Most levels a catch-up may ask for ahead of their turn (`fetch_ahead_max`).
pub const FETCH_AHEAD_MAX: usize = 64;
/// Most watchers and most operations in a batch a node may be set to allow.
const COUNT_MAX: usize = 1 << 20;

/// Declares the settings, one row each:
///
/// ```text
/// /// The setting's documentation, which is also its flag's help.
/// name: Type = default;
///     flag "name" MERGE, env "CANOPY_NAME" [, check RULE] [, each RULE] [, clap(ATTRIBUTES)];
/// ```
///
/// MERGE says how a flag (or its variable) meets the file: `set` replaces the file's value,
/// `set_some` sets an optional setting, `switch_on` turns a setting on (its flag takes no value,
/// so it cannot turn the file's setting off), `replace_list` replaces the file's list with the
/// values given and `extend_list` adds them to it. A `check` rule sees the setting's value and an
/// `each` rule each value of a list or optional setting; both answer the message of
/// `ConfigError::Invalid`. `clap(...)` adds attributes to the flag.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty = $default:expr;
            flag $flag:literal $merge:ident, env $env:literal
            $(, check $check:expr)? $(, each $each:expr)? $(, clap($($clap:tt)*))?;
    )+) => {
        /// Everything a node needs to start. Every field has a default; a TOML file may set any
        /// of them, and the `canopy serve` flags and `CANOPY_*` environment variables
        /// ([`Overrides`]) override the file.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct NodeConfig {
            $($(#[doc = $doc])+ pub $name: $ty,)+
        }

        impl Default for NodeConfig {
            fn default() -> Self {
                NodeConfig { $($name: $default,)+ }
            }
        }

        impl NodeConfig {
            /// Checks each setting against its own rule.
            fn validate_each(&self) -> Result<(), ConfigError> {
                $(
                    $(check(stringify!($name), ($check)(&self.$name))?;)?
                    $(
                        for value in self.$name.iter() {
                            check(stringify!($name), ($each)(value))?;
                        }
                    )?
                )+
                Ok(())
            }
        }

        settings!(@flags [] $([$name, $ty, $merge, $flag, $env, [$($doc)+], [$($($clap)*)?]])+);

        impl Overrides {
            /// Puts the settings given as flags or environment variables over `config`: the
            /// file's settings, or the defaults.
            pub fn apply(self, config: &mut NodeConfig) {
                $(settings!(@apply $merge, config.$name, self.$name);)+
            }
        }
    };

    // Each row's flag: its field's type, a note on how it meets the file, and the attributes
    // that type needs. Rows are turned one at a time, as clap's derive reads the field types
    // as written.
    (@flags [$($done:tt)*] [$name:ident, $ty:ty, set, $($row:tt)*] $($rest:tt)*) => {
        settings!(@flags [$($done)* [$name, Option<$ty>, "", [], $($row)*]] $($rest)*);
    };
    (@flags [$($done:tt)*] [$name:ident, $ty:ty, set_some, $($row:tt)*] $($rest:tt)*) => {
        settings!(@flags [$($done)* [$name, $ty, "", [], $($row)*]] $($rest)*);
    };
    (@flags [$($done:tt)*] [$name:ident, $ty:ty, switch_on, $($row:tt)*] $($rest:tt)*) => {
        settings!(@flags [$($done)* [$name, $ty, "", [], $($row)*]] $($rest)*);
    };
    (@flags [$($done:tt)*] [$name:ident, $ty:ty, replace_list, $($row:tt)*] $($rest:tt)*) => {
        settings!(@flags [$($done)* [
            $name, $ty, "Repeatable or comma-separated; replaces the file's list",
            [value_delimiter = ',',], $($row)*
        ]] $($rest)*);
    };
    (@flags [$($done:tt)*] [$name:ident, $ty:ty, extend_list, $($row:tt)*] $($rest:tt)*) => {
        settings!(@flags [$($done)* [
            $name, $ty, "Repeatable or comma-separated; adds to the file's list",
            [value_delimiter = ',',], $($row)*
        ]] $($rest)*);
    };
    (@flags [$([
        $name:ident, $arg_ty:ty, $note:literal, [$($attr:tt)*],
        $flag:literal, $env:literal, [$($doc:literal)+], [$($clap:tt)*]
    ])+]) => {
        /// The settings `canopy serve` takes as flags or `CANOPY_*` environment variables, each
        /// over the same setting of the TOML file: flatten it into a clap command and
        /// [`apply`](Overrides::apply) it to the file's [`NodeConfig`].
        #[derive(Debug, Default, clap::Args)]
        pub struct Overrides {
            $(
                #[arg(
                    long = $flag,
                    env = $env,
                    help = help_text(&[$($doc),+], $note, &NodeConfig::default().$name),
                    $($attr)*
                    $($clap)*
                )]
                $name: $arg_ty,
            )+
        }
    };

    (@apply set, $setting:expr, $flag:expr) => {
        if let Some(value) = $flag {
            $setting = value;
        }
    };
    (@apply set_some, $setting:expr, $flag:expr) => {
        if $flag.is_some() {
            $setting = $flag;
        }
    };
    (@apply switch_on, $setting:expr, $flag:expr) => {
        $setting |= $flag;
    };
    (@apply replace_list, $setting:expr, $flag:expr) => {
        if !$flag.is_empty() {
            $setting = $flag;
        }
    };
    (@apply extend_list, $setting:expr, $flag:expr) => {
        $setting.extend($flag);
    };
}

settings! {
    /// Where the database and the node's identity key live.
    data_dir: PathBuf = PathBuf::from("./canopy-data");
        flag "data-dir" set, env "CANOPY_DATA_DIR";
    /// Address of the HTTP API.
    api: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7700));
        flag "api" set, env "CANOPY_API";
    /// libp2p listen multiaddrs (QUIC and TCP); port 0 picks a free port.
    listen: Vec<String> = vec!["/ip4/0.0.0.0/udp/0/quic-v1".into(), "/ip4/0.0.0.0/tcp/0".into()];
        flag "listen" replace_list, env "CANOPY_LISTEN";
    /// UDP address of the QUIC block-transfer endpoint; port 0 picks a free port.
    blocks: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 0));
        flag "blocks" set, env "CANOPY_BLOCKS";
    /// Peers to connect to at start, as multiaddrs.
    peers: Vec<String> = Vec::new();
        flag "peer" extend_list, env "CANOPY_PEERS";
    /// Topics to subscribe at start (topics subscribed later are remembered in the data dir).
    topics: Vec<String> = Vec::new();
        flag "topic" extend_list, env "CANOPY_TOPICS", each topic_name;
    /// Discover peers on the local network with mDNS.
    mdns: bool = false;
        flag "mdns" switch_on, env "CANOPY_MDNS";
    /// Seconds between re-announcements of every topic's heads (jittered).
    rebroadcast_interval_s: u64 = 5;
        flag "rebroadcast-interval-s" set, env "CANOPY_REBROADCAST_INTERVAL_S", check at_least(1);
    /// Sync the write-ahead log on every commit so acknowledged writes survive a power loss.
    sync_writes: bool = false;
        flag "sync-writes" switch_on, env "CANOPY_SYNC_WRITES";
    // Above the protocol's limits a node would make blocks its peers refuse.
    /// Largest value accepted, in bytes.
    value_bytes_max: usize = 1 << 20;
        flag "value-bytes-max" set, env "CANOPY_VALUE_BYTES_MAX",
        check between(1, canopy_crdt::VALUE_BYTES_MAX);
    /// Longest key accepted, in bytes.
    key_bytes_max: usize = 4096;
        flag "key-bytes-max" set, env "CANOPY_KEY_BYTES_MAX", check between(1, canopy_crdt::KEY_BYTES_MAX);
    /// Most operations in one batch request.
    batch_ops_max: usize = 10_000;
        flag "batch-ops-max" set, env "CANOPY_BATCH_OPS_MAX", check between(1, COUNT_MAX);
    /// Copies a write waits for before it is acknowledged when the request names no `ack`: a
    /// number, or `all`. On a table they are the partition's owners that hold the write; on a
    /// topic, this node and the peers whose announced heads include it.
    write_ack: Ack = Ack::Copies(1);
        flag "write-ack" set, env "CANOPY_WRITE_ACK";
    /// Longest a write waits for its acknowledgements, in milliseconds: then it is answered 504,
    /// saying how many copies hold it and carrying its causal token.
    ack_timeout_ms: u64 = 5_000;
        flag "ack-timeout-ms" set, env "CANOPY_ACK_TIMEOUT_MS", check between(1, 600_000);
    /// Longest a read given a causal token waits for this node's copy to hold the token's
    /// heads, in milliseconds, before it goes to another copy or is answered 503.
    causal_wait_ms: u64 = 2_000;
        flag "causal-wait-ms" set, env "CANOPY_CAUSAL_WAIT_MS", check at_most(60_000);
    /// Largest HTTP request body accepted, in bytes.
    body_bytes_max: usize = 64 << 20;
        flag "body-bytes-max" set, env "CANOPY_BODY_BYTES_MAX";
    /// Most server-sent-event watchers open at once; more are refused with 503.
    watchers_max: usize = 1024;
        flag "watchers-max" set, env "CANOPY_WATCHERS_MAX", check between(1, COUNT_MAX);
    /// Prune a topic's history automatically after this many new blocks (0: not by count).
    compact_after_blocks: u64 = 10_000;
        flag "compact-after-blocks" set, env "CANOPY_COMPACT_AFTER_BLOCKS";
    /// Prune a topic's history automatically after this many bytes of new blocks (0: not by size).
    compact_after_bytes: u64 = 256 << 20;
        flag "compact-after-bytes" set, env "CANOPY_COMPACT_AFTER_BYTES";
    /// Most bytes of new blocks not yet pruned over all topics; past it, topics that grew are
    /// pruned though each stays below the other thresholds (0: no store-wide budget).
    unpruned_bytes_max: u64 = 512 << 20;
        flag "unpruned-bytes-max" set, env "CANOPY_UNPRUNED_BYTES_MAX";
    /// Let go of a served snapshot (and the view of the rows it holds) nobody fetched from for
    /// this many seconds (0: keep it until a newer one replaces it).
    snapshot_retain_s: u64 = 600;
        flag "snapshot-retain-s" set, env "CANOPY_SNAPSHOT_RETAIN_S";
    /// Most bytes of a local commit's blocks carried inside its announcement, so peers that
    /// hold the parents apply them with no request (0: none; peers then fetch every block).
    inline_bytes_max: usize = 64 << 10;
        flag "inline-bytes-max" set, env "CANOPY_INLINE_BYTES_MAX", check at_most(INLINE_BYTES_MAX);
    /// Most levels of a deep catch-up asked for ahead of their turn, beside the level being
    /// fetched, from the same peer or from others holding the same heads (0: one request at a
    /// time per catch-up).
    fetch_ahead_max: usize = 4;
        flag "fetch-ahead-max" set, env "CANOPY_FETCH_AHEAD_MAX", check at_most(FETCH_AHEAD_MAX);
    /// Keep a record of every put and delete of a key so its versions can be listed (`canopy
    /// history`, `GET /v1/topics/{t}/history/{key}`); off, a key's history is its live value
    /// alone.
    key_history: bool = true;
        flag "key-history" set, env "CANOPY_KEY_HISTORY";
    /// Take part in the cluster's sharded tables (`canopy table ...`): announce this node as a
    /// member, hold the partitions placed on it and route table requests to their holders.
    tables: bool = false;
        flag "tables" switch_on, env "CANOPY_TABLES";
    /// The base URL other members reach this node's HTTP API at (`http://host:port`); by
    /// default the API address itself, which must then not be a wildcard like 0.0.0.0.
    advertise_api: Option<String> = None;
        flag "advertise-api" set_some, env "CANOPY_ADVERTISE_API", each http_url;
    /// Seconds this node stays a member after it stops refreshing its entry (it refreshes
    /// every quarter of this): how soon the others place its partitions elsewhere if it dies.
    member_ttl_s: u64 = 20;
        flag "member-ttl-s" set, env "CANOPY_MEMBER_TTL_S", check member_ttl_s;
    /// The API tokens file (`canopy token create` writes it): every API call then needs a
    /// token of the right role. Read again on SIGHUP.
    tokens: Option<PathBuf> = None;
        flag "tokens" set_some, env "CANOPY_TOKENS";
    /// Serve an API without tokens on an address other than loopback: anyone who reaches it may
    /// read, write and administer the node.
    insecure_open_api: bool = false;
        flag "insecure-open-api" switch_on, env "CANOPY_INSECURE_OPEN_API";
    /// Serve `/metrics` without a token.
    metrics_open: bool = false;
        flag "metrics-open" switch_on, env "CANOPY_METRICS_OPEN";
    /// Where `POST /v1/admin/backup` writes backups, each in a directory named by the request
    /// [default: `<data_dir>/backups`].
    backup_dir: Option<PathBuf> = None;
        flag "backup-dir" set_some, env "CANOPY_BACKUP_DIR";
    /// Peer ids admitted to this node's network: when not empty, only they may connect, gossip
    /// its topics or fetch its blocks (the node itself always is).
    admit: Vec<String> = Vec::new();
        flag "admit" extend_list, env "CANOPY_ADMIT", each peer_id;
    /// The API's TLS certificate chain (PEM); with its key (`tls_key`), the API speaks HTTPS
    /// only.
    tls_cert: Option<PathBuf> = None;
        flag "tls-cert" set_some, env "CANOPY_TLS_CERT", clap(requires = "tls_key");
    /// The private key of `tls_cert` (PEM).
    tls_key: Option<PathBuf> = None;
        flag "tls-key" set_some, env "CANOPY_TLS_KEY", clap(requires = "tls_cert");
    /// The certificate authority (PEM) this node trusts for the other members' APIs, when
    /// they speak HTTPS with certificates a private authority signed.
    tls_ca: Option<PathBuf> = None;
        flag "tls-ca" set_some, env "CANOPY_TLS_CA";
}

/// A flag's help: its setting's documentation as one paragraph, how the flag meets the file,
/// and the default when there is one to show.
fn help_text(doc: &[&str], note: &str, default: &dyn ShownDefault) -> String {
    let doc = doc.iter().map(|line| line.trim()).collect::<Vec<_>>().join(" ");
    // As clap shows a one-paragraph doc comment: without its closing period.
    let mut text = doc.strip_suffix('.').unwrap_or(&doc).to_string();
    if !note.is_empty() {
        text = format!("{text}. {note}");
    }
    if let Some(default) = default.shown() {
        text = format!("{text} [default: {default}]");
    }
    text
}

/// How a setting's default reads in its flag's help, when there is something to say: an
/// optional setting's absence and an empty list go without saying, and a flag that can only
/// turn a setting on is off by default.
trait ShownDefault {
    fn shown(&self) -> Option<String>;
}

macro_rules! shown_as_displayed {
    ($($ty:ty),+) => {
        $(impl ShownDefault for $ty {
            fn shown(&self) -> Option<String> {
                Some(self.to_string())
            }
        })+
    };
}

shown_as_displayed!(u64, usize, SocketAddr, Ack);

impl ShownDefault for bool {
    fn shown(&self) -> Option<String> {
        self.then(|| "true".to_string())
    }
}

impl ShownDefault for PathBuf {
    fn shown(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl<T> ShownDefault for Option<T> {
    fn shown(&self) -> Option<String> {
        None
    }
}

impl ShownDefault for Vec<String> {
    fn shown(&self) -> Option<String> {
        (!self.is_empty()).then(|| self.join(","))
    }
}

/// A setting's value is at least `low`.
fn at_least<T: PartialOrd + Display>(low: T) -> impl Fn(&T) -> Result<(), String> {
    move |value| if *value < low { Err(format!("must be at least {low}")) } else { Ok(()) }
}

/// A setting's value is at most `high`.
fn at_most<T: PartialOrd + Display>(high: T) -> impl Fn(&T) -> Result<(), String> {
    move |value| if *value > high { Err(format!("must be at most {high}")) } else { Ok(()) }
}

/// A setting's value lies in `low..=high`.
fn between<T: PartialOrd + Display>(low: T, high: T) -> impl Fn(&T) -> Result<(), String> {
    move |value| {
        if *value < low || *value > high { Err(format!("must be between {low} and {high}")) } else { Ok(()) }
    }
}

/// The rule of `member_ttl_s`, which `Node::join_tables` applies to its member lifetime too.
pub(crate) fn member_ttl_s(seconds: &u64) -> Result<(), String> {
    between(1, 3600)(seconds)
}

/// The rule of `advertise_api`, which `Node::join_tables` applies to its URL too.
pub(crate) fn http_url(url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{url:?} is not an http:// or https:// URL"))
    }
}

/// The rule of each `admit` entry.
fn peer_id(peer: &str) -> Result<(), String> {
    match peer.parse::<canopy_transport::PeerId>() {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("{peer:?} is not a peer id (as `canopy status` prints it)")),
    }
}

/// The rule of each of `topics`.
fn topic_name(topic: &str) -> Result<(), String> {
    canopy_crdt::validate_topic_name(topic).map_err(|e| e.to_string())
}

/// Names the setting a rule refused.
pub(crate) fn check(name: &'static str, rule: Result<(), String>) -> Result<(), ConfigError> {
    rule.map_err(|message| ConfigError::Invalid { name, message })
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A setting is out of range.
    #[error("invalid setting {name}: {message}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl NodeConfig {
    /// Reads a TOML file; settings it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// The directory backups go under.
    pub fn backup_dir(&self) -> PathBuf {
        self.backup_dir.clone().unwrap_or_else(|| self.data_dir.join("backups"))
    }

    /// Checks ranges that the types do not: each setting's own rule, then the rules that
    /// join settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_each()?;
        let invalid = |name, message: &str| Err(ConfigError::Invalid { name, message: message.to_string() });
        if self.tables && self.advertise_api.is_none() && self.api.ip().is_unspecified() {
            return invalid(
                "advertise_api",
                &format!("the API listens on {}: say which address the other members reach it at", self.api),
            );
        }
        if self.tables
            && advertised_host_is_loopback(self.advertise_api.as_deref(), &self.api)
            && let Some(peer) = self.peers.iter().find(|peer| peer_is_remote(peer))
        {
            return invalid(
                "advertise_api",
                &format!(
                    "the other members would reach this node's API at its loopback address ({}), but its peer {peer} \
                     is on another host: give the address they reach it at (--advertise-api http://host:port)",
                    self.advertise_api.clone().unwrap_or_else(|| format!("http://{}", self.api))
                ),
            );
        }
        if self.tokens.is_none() && !self.api.ip().is_loopback() && !self.insecure_open_api {
            return invalid(
                "tokens",
                &format!(
                    "the API would listen on {} with no API tokens, so anyone who reaches that address could read, \
                     write and administer this node: give a tokens file (--tokens, see `canopy token create`), \
                     listen on 127.0.0.1, or say --insecure-open-api",
                    self.api
                ),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert", "give both tls_cert and tls_key (--tls-cert, --tls-key), or neither");
        }
        Ok(())
    }
}

/// Whether the API address other members are told (`advertise_api`, else the API's own
/// address) is a loopback one.
fn advertised_host_is_loopback(advertise_api: Option<&str>, api: &SocketAddr) -> bool {
    let Some(url) = advertise_api else { return api.ip().is_loopback() };
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(bracketed),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a peer's multiaddr (`/ip4/10.0.0.2/udp/4001/quic-v1`, `/dns4/db2.example/...`) names
/// another host.
fn peer_is_remote(peer: &str) -> bool {
    let mut parts = peer.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("ip4" | "ip6"), Some(ip)) => ip.parse::<std::net::IpAddr>().is_ok_and(|ip| !ip.is_loopback()),
        (Some("dns" | "dns4" | "dns6" | "dnsaddr"), Some(name)) => !name.eq_ignore_ascii_case("localhost"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_file_keeps_defaults_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canopy.toml");
        std::fs::write(&path, "api = \"127.0.0.1:9000\"\ntopics = [\"users\"]\n").unwrap();
        let config = NodeConfig::from_file(&path).unwrap();
        assert_eq!(config.api.port(), 9000);
        assert_eq!(config.topics, vec!["users".to_string()]);
        assert_eq!(config.data_dir, PathBuf::from("./canopy-data"));
        std::fs::write(&path, "apii = 1\n").unwrap();
        let error = NodeConfig::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("apii"), "{error}");
        let bad = NodeConfig { topics: vec!["bad topic".into()], ..NodeConfig::default() };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn each_setting_is_held_to_its_rule() {
        assert!(NodeConfig::default().validate().is_ok());
        let refused = [
            ("member_ttl_s", NodeConfig { member_ttl_s: 3601, ..NodeConfig::default() }),
            ("member_ttl_s", NodeConfig { member_ttl_s: 0, ..NodeConfig::default() }),
            ("fetch_ahead_max", NodeConfig { fetch_ahead_max: FETCH_AHEAD_MAX + 1, ..NodeConfig::default() }),
            ("advertise_api", NodeConfig { advertise_api: Some("db1:7700".into()), ..NodeConfig::default() }),
            ("admit", NodeConfig { admit: vec!["nobody".into()], ..NodeConfig::default() }),
        ];
        for (setting, config) in refused {
            match config.validate() {
                Err(ConfigError::Invalid { name, .. }) => assert_eq!(name, setting),
                other => panic!("{setting}: {other:?}"),
            }
        }
    }

    /// Every setting (every field of `NodeConfig`, so every TOML key) has a flag and a
    /// `CANOPY_*` variable named after it. The flag is the name with dashes, except that the
    /// lists of peers and topics take one of them per flag: `--peer`, `--topic`.
    #[test]
    fn every_setting_has_a_flag_and_a_variable_named_after_it() {
        use clap::Args as _;
        let command = Overrides::augment_args(clap::Command::new("serve"));
        let defaults = serde_json::to_value(NodeConfig::default()).unwrap();
        let defaults = defaults.as_object().unwrap();
        let mut flagged = Vec::new();
        for arg in command.get_arguments() {
            let name = arg.get_id().as_str();
            let flag = match name {
                "peers" => "peer".to_string(),
                "topics" => "topic".to_string(),
                name => name.replace('_', "-"),
            };
            assert_eq!(arg.get_long(), Some(flag.as_str()));
            let variable = arg.get_env().and_then(|variable| variable.to_str());
            assert_eq!(variable, Some(format!("CANOPY_{}", name.to_uppercase()).as_str()));
            assert!(arg.get_help().is_some_and(|help| !help.to_string().is_empty()), "{name}");
            // A flag that can only turn its setting on would be no use over a default of on.
            if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
                assert_eq!(defaults[name], false, "{name}");
            }
            flagged.push(name.to_string());
        }
        let mut settings: Vec<String> = defaults.keys().cloned().collect();
        flagged.sort();
        settings.sort();
        assert_eq!(flagged, settings);
    }

    /// `canopy serve` layers each setting as the file, then the variable, then the flag: clap
    /// takes the flag over the variable, and `Overrides::apply` either over the file.
    #[test]
    fn a_flag_overrides_its_variable_which_overrides_the_file() {
        const VARIABLE: &str = "CANOPY_FETCH_AHEAD_MAX";
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            settings: Overrides,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canopy.toml");
        let file = "fetch_ahead_max = 2\nkey_history = false\npeers = [\"/dns4/a/udp/1/quic-v1\"]\n\
                    listen = [\"/ip4/127.0.0.1/tcp/0\"]\n";
        std::fs::write(&path, file).unwrap();
        let layered = |flags: &[&str]| {
            let mut config = NodeConfig::from_file(&path).unwrap();
            let serve = <Serve as clap::Parser>::try_parse_from(std::iter::once("serve").chain(flags.iter().copied()));
            serve.unwrap().settings.apply(&mut config);
            config
        };
        let Ok(value) = std::env::var(VARIABLE) else {
            let file = layered(&[]);
            assert_eq!((file.fetch_ahead_max, file.key_history, file.mdns), (2, false, false));
            let flags = layered(&[
                "--fetch-ahead-max=5",
                "--key-history=true",
                "--mdns",
                "--peer=/dns4/b/udp/1/quic-v1,/dns4/c/udp/1/quic-v1",
                "--listen=/ip4/127.0.0.1/tcp/7000",
            ]);
            assert_eq!((flags.fetch_ahead_max, flags.key_history, flags.mdns), (5, true, true));
            assert_eq!(flags.peers, ["/dns4/a/udp/1/quic-v1", "/dns4/b/udp/1/quic-v1", "/dns4/c/udp/1/quic-v1"]);
            assert_eq!(flags.listen, ["/ip4/127.0.0.1/tcp/7000"]);
            // clap reads the process's environment, which a test may not change while other
            // tests run: this test runs again in a child process with the variable set.
            let test = format!("{}::a_flag_overrides_its_variable_which_overrides_the_file", module_path!());
            let test = test.split_once("::").expect("a module path names its crate").1;
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", test])
                .env(VARIABLE, "3")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&child.stdout);
            let ran = child.status.success() && stdout.contains("1 passed");
            assert!(ran, "{stdout}{}", String::from_utf8_lossy(&child.stderr));
            return;
        };
        assert_eq!(value, "3");
        assert_eq!(layered(&[]).fetch_ahead_max, 3);
        assert_eq!(layered(&["--fetch-ahead-max", "5"]).fetch_ahead_max, 5);
    }

    #[test]
    fn a_member_advertising_loopback_to_remote_peers_is_refused() {
        let member = |advertise: Option<&str>, peer: &str| NodeConfig {
            tables: true,
            advertise_api: advertise.map(str::to_string),
            peers: vec![peer.to_string()],
            ..NodeConfig::default()
        };
        let remote = "/ip4/10.0.0.2/udp/4001/quic-v1";
        let error = member(None, remote).validate().unwrap_err().to_string();
        assert!(error.contains("advertise-api") && error.contains("127.0.0.1:7700"), "{error}");
        assert!(member(Some("http://localhost:7700"), "/dns4/db2.example/udp/4001/quic-v1").validate().is_err());
        assert!(member(Some("http://[::1]:7700"), remote).validate().is_err());
        // Loopback peers, or an address the peers can reach, are fine.
        assert!(member(None, "/ip4/127.0.0.1/udp/4001/quic-v1").validate().is_ok());
        assert!(member(Some("http://10.0.0.1:7700"), remote).validate().is_ok());
        // Without tables nothing is advertised.
        assert!(NodeConfig { peers: vec![remote.into()], ..NodeConfig::default() }.validate().is_ok());
    }
}
