//! Node settings: defaults that run out of the box, a TOML file, and overrides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes of blocks an announcement carries by default.
pub const INLINE_BYTES_DEFAULT: usize = 64 << 10;
/// Most bytes of blocks an announcement may carry: with the heads, an announcement stays well
/// under the gossip message bound (1 MiB).
pub const INLINE_BYTES_MAX: usize = 512 << 10;
/// Most levels a catch-up may ask for ahead of their turn (`fetch_ahead_max`).
pub const FETCH_AHEAD_MAX: usize = 64;

/// Everything a node needs to start. Every field has a default; a TOML file may set any of
/// them, and the `canopy serve` flags and `CANOPY_*` environment variables override the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the database and the node's identity key live.
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    pub api: SocketAddr,
    /// libp2p listen addresses (QUIC and TCP); port 0 picks a free port.
    pub listen: Vec<String>,
    /// UDP address of the QUIC block-transfer endpoint; port 0 picks a free port.
    pub blocks: SocketAddr,
    /// Peers to connect to at start, as multiaddrs.
    pub peers: Vec<String>,
    /// Topics to subscribe at start (topics subscribed later are remembered in the data dir).
    pub topics: Vec<String>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Interval between re-announcements of every topic's heads (jittered).
    pub rebroadcast_interval_s: u64,
    /// Sync the write-ahead log on every commit so acknowledged writes survive a power loss.
    pub sync_writes: bool,
    /// Largest value accepted, in bytes.
    pub value_bytes_max: usize,
    /// Longest key accepted, in bytes.
    pub key_bytes_max: usize,
    /// Most operations in one batch request.
    pub batch_ops_max: usize,
    /// Largest HTTP request body accepted, in bytes.
    pub body_bytes_max: usize,
    /// Most server-sent-event watchers open at once; more are refused with 503.
    pub watchers_max: usize,
    /// Compact a topic automatically after this many new blocks (0: not by count).
    pub compact_after_blocks: u64,
    /// Compact a topic automatically after this many bytes of new blocks (0: not by size).
    pub compact_after_bytes: u64,
    /// Release snapshot parts nobody fetched for this many seconds (0: keep them).
    pub snapshot_retain_s: u64,
    /// Most bytes of a local commit's blocks carried inside its announcement, so peers that
    /// hold the parents apply them with no request (0: none).
    pub inline_bytes_max: usize,
    /// Most levels of a deep catch-up asked for ahead of their turn, beside the level being
    /// fetched, from the same peer or from others holding the same heads (0: one request at a
    /// time per catch-up).
    pub fetch_ahead_max: usize,
    /// Keep a record of every put and delete of a key so its versions can be listed
    /// (`GET /v1/topics/{t}/history/{key}`); off, a key's history is its live value alone.
    pub key_history: bool,
    /// Take part in the cluster's sharded tables: announce this node as a member, hold the
    /// partitions placed on it and route table requests to their holders.
    pub tables: bool,
    /// The base URL other members reach this node's HTTP API at (`http://host:port`); by
    /// default the API address itself, which must then not be a wildcard like 0.0.0.0.
    pub advertise_api: Option<String>,
    /// How long this node stays a member after it stops refreshing its entry (it refreshes
    /// every quarter of this): how soon the others place its partitions elsewhere if it dies.
    pub member_ttl_s: u64,
    /// The API tokens file (see `canopy token create`): every API call then needs a token of
    /// the right role. Read again on SIGHUP.
    pub tokens: Option<PathBuf>,
    /// Serve an API without tokens on an address other than loopback: anyone who reaches it may
    /// read, write and administer the node.
    pub insecure_open_api: bool,
    /// Serve `/metrics` without a token.
    pub metrics_open: bool,
    /// Where `POST /v1/admin/backup` writes backups, each in a directory named by the request
    /// [default: `<data_dir>/backups`].
    pub backup_dir: Option<PathBuf>,
    /// Peer ids admitted to this node's network: when not empty, only they may connect, gossip
    /// its topics or fetch its blocks (the node itself always is).
    pub admit: Vec<String>,
    /// The API's TLS certificate chain (PEM); with `tls_key`, the API speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// The certificate authority (PEM) this node trusts for the other members' APIs, when
    /// they speak HTTPS with certificates a private authority signed.
    pub tls_ca: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("./canopy-data"),
            api: SocketAddr::from(([127, 0, 0, 1], 7700)),
            listen: vec!["/ip4/0.0.0.0/udp/0/quic-v1".into(), "/ip4/0.0.0.0/tcp/0".into()],
            blocks: SocketAddr::from(([0, 0, 0, 0], 0)),
            peers: Vec::new(),
            topics: Vec::new(),
            mdns: false,
            rebroadcast_interval_s: 5,
            sync_writes: false,
            value_bytes_max: 1 << 20,
            key_bytes_max: 4096,
            batch_ops_max: 10_000,
            body_bytes_max: 64 << 20,
            watchers_max: 1024,
            compact_after_blocks: 10_000,
            compact_after_bytes: 256 << 20,
            snapshot_retain_s: 600,
            inline_bytes_max: INLINE_BYTES_DEFAULT,
            fetch_ahead_max: 4,
            key_history: true,
            tables: false,
            advertise_api: None,
            member_ttl_s: 20,
            tokens: None,
            insecure_open_api: false,
            metrics_open: false,
            backup_dir: None,
            admit: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
        }
    }
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

    /// Checks ranges that the types do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, message: &str| Err(ConfigError::Invalid { name, message: message.to_string() });
        if self.rebroadcast_interval_s == 0 {
            return invalid("rebroadcast_interval_s", "must be at least 1");
        }
        // Above the protocol's limits a node would make blocks its peers refuse.
        if self.value_bytes_max == 0 || self.value_bytes_max > canopy_crdt::VALUE_BYTES_MAX {
            return invalid("value_bytes_max", &format!("must be between 1 and {}", canopy_crdt::VALUE_BYTES_MAX));
        }
        if self.key_bytes_max == 0 || self.key_bytes_max > canopy_crdt::KEY_BYTES_MAX {
            return invalid("key_bytes_max", &format!("must be between 1 and {}", canopy_crdt::KEY_BYTES_MAX));
        }
        if self.watchers_max == 0 || self.watchers_max > 1 << 20 {
            return invalid("watchers_max", "must be between 1 and 1048576");
        }
        if self.batch_ops_max == 0 || self.batch_ops_max > 1 << 20 {
            return invalid("batch_ops_max", "must be between 1 and 1048576");
        }
        if self.inline_bytes_max > INLINE_BYTES_MAX {
            return invalid("inline_bytes_max", &format!("must be at most {INLINE_BYTES_MAX}"));
        }
        if self.fetch_ahead_max > FETCH_AHEAD_MAX {
            return invalid("fetch_ahead_max", &format!("must be at most {FETCH_AHEAD_MAX}"));
        }
        if self.member_ttl_s == 0 || self.member_ttl_s > 3600 {
            return invalid("member_ttl_s", "must be between 1 and 3600");
        }
        if let Some(url) = &self.advertise_api
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return invalid("advertise_api", &format!("{url:?} is not an http:// or https:// URL"));
        }
        if self.tables && self.advertise_api.is_none() && self.api.ip().is_unspecified() {
            return invalid(
                "advertise_api",
                &format!("the API listens on {}: say which address the other members reach it at", self.api),
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
        for peer in &self.admit {
            if peer.parse::<canopy_transport::PeerId>().is_err() {
                return invalid("admit", &format!("{peer:?} is not a peer id (as `canopy status` prints it)"));
            }
        }
        for topic in &self.topics {
            canopy_crdt::validate_topic_name(topic)
                .map_err(|e| ConfigError::Invalid { name: "topics", message: e.to_string() })?;
        }
        Ok(())
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
}
