//! The HTTP API's bodies: every JSON request and reply under `/v1`, as the server writes them
//! and as `canopy`, `canopy-ops` and table forwarding read them.
//!
//! The fields of each struct are declared in alphabetical order: the replies were built as
//! `serde_json::Value`s before, whose maps serialize their keys sorted, and keeping that order
//! keeps the bytes on the wire as they were. Keys travel as text (`key`, `null` when not UTF-8)
//! beside their exact bytes in base64 (`key_base64`); values travel in base64. CIDs and peer ids
//! travel as their canonical text and are typed on both sides ([`WireCid`], [`WirePeerId`]): a
//! reply naming a malformed one does not parse.
//!
//! The module names no other module of the crate (the table routing reads it, the HTTP server
//! builds it): where the node has a type of the same shape (`tables::Member`, `Status`), the
//! server converts it into the one here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

mod batch;
mod docs;
mod messages;
mod tables;
pub use batch::*;
pub use docs::*;
pub use messages::*;
pub use tables::*;

pub use canopy_crdt::inspect::{BlockView, DagStats, FamilyStats, TopicStats, Verification};

/// Declares a typed id that travels as its canonical text.
macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<$name, String> {
                text.parse().map($name).map_err(|e| format!("{text:?}: {e}"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

text_id! {
    /// A CID as the API carries it: its canonical text (CIDv1, base32).
    WireCid(canopy_crdt::Cid)
}

text_id! {
    /// A libp2p peer id as the API carries it: its base58 text.
    WirePeerId(canopy_transport::PeerId)
}

/// The body of every error reply, with a 4xx or 5xx status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// On a write that was applied but not acknowledged by as many copies as asked (504): how
    /// many hold it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<u32>,
    /// On a write that was applied but not acknowledged as asked (504): its causal token, to
    /// check with a causal read rather than retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causal_token: Option<String>,
    /// What failed and what to do, without a trailing period.
    pub error: String,
}

impl ErrorBody {
    /// The body of a refusal saying `error`.
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody { acknowledged: None, causal_token: None, error: error.into() }
    }

    /// The message of an error reply's body; `None` when the body is not an [`ErrorBody`] (a
    /// proxy's page, a cut-off body). Every client reads refusals through this.
    pub fn message_in(body: &[u8]) -> Option<String> {
        serde_json::from_slice::<ErrorBody>(body).ok().map(|body| body.error)
    }
}

/// A block the API names: a head, or the block a write made.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockRef {
    /// Its CID.
    pub cid: WireCid,
    /// Its height.
    pub height: u64,
}

impl From<canopy_crdt::Head> for BlockRef {
    fn from(head: canopy_crdt::Head) -> BlockRef {
        BlockRef { cid: WireCid(head.cid), height: head.height }
    }
}

impl From<canopy_crdt::Commit> for BlockRef {
    fn from(commit: canopy_crdt::Commit) -> BlockRef {
        BlockRef { cid: WireCid(commit.cid), height: commit.height }
    }
}

/// A topic's heads as every reply that lists them shows them.
pub fn heads(heads: impl IntoIterator<Item = canopy_crdt::Head>) -> Vec<BlockRef> {
    heads.into_iter().map(BlockRef::from).collect()
}

/// `GET /v1/topics/{t}/heads`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heads {
    /// The topic's current heads.
    pub heads: Vec<BlockRef>,
}

/// `GET /v1/admin/topics/{t}/heads`: the heads of any topic in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicHeads {
    /// The topic's current heads.
    pub heads: Vec<BlockRef>,
    /// The topic.
    pub topic: String,
}

/// `GET /v1/status`: the node's identity and addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The author the node signs its blocks as (a peer id).
    pub author: WirePeerId,
    /// libp2p listen addresses and the block endpoint.
    pub listen: Vec<String>,
    /// The node's libp2p peer id.
    pub peer_id: WirePeerId,
    /// Connected peers.
    pub peers: usize,
    /// Subscribed topics.
    pub topics: usize,
    /// canopy's version.
    pub version: String,
}

/// One entry of `GET /v1/peers`: a connected peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// Address of the connection.
    pub address: String,
    /// Its agent string, once identify told it.
    pub agent: Option<String>,
    /// Its block endpoint, once identify told it.
    pub blocks: Option<String>,
    /// Its gossipsub score.
    pub gossip_score: Option<f64>,
    /// Its peer id.
    pub peer_id: String,
}

impl From<canopy_transport::PeerInfo> for Peer {
    fn from(peer: canopy_transport::PeerInfo) -> Peer {
        let canopy_transport::PeerInfo { peer_id, address, blocks, agent, gossip_score } = peer;
        Peer { address, agent, blocks, gossip_score, peer_id }
    }
}

/// One entry of `GET /v1/topics`: a subscribed topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSummary {
    /// Its current heads.
    pub heads: Vec<BlockRef>,
    /// Keys with a visible value.
    pub keys: u64,
    /// Its greatest head height.
    pub max_height: u64,
    /// Who may write it: `open`, `owned`, `writers` or `keyed`.
    pub mode: String,
    /// Its name.
    pub topic: String,
}

/// `PUT /v1/topics/{t}` and `DELETE /v1/topics/{t}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Whether the topic's data was deleted too (unsubscribing only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<bool>,
    /// Whether the topic is subscribed now.
    pub subscribed: bool,
    /// The topic.
    pub topic: String,
}

/// `POST /v1/topics`: the topic to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTopic {
    /// `open`, `owned`, `writers` or `keyed`; `open` when absent.
    #[serde(default = "open_mode")]
    pub mode: String,
    /// The topic's name (for an owned topic, without the owner: the node's author is).
    pub name: String,
}

fn open_mode() -> String {
    "open".into()
}

/// `POST /v1/topics` and `GET /v1/topics/{t}/access`: who may write a topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicAccess {
    /// `open`, `owned`, `writers` or `keyed`.
    pub mode: String,
    /// The owner's peer id, for an owned topic or one with a writer list.
    pub owner: Option<String>,
    /// The topic's full name.
    pub topic: String,
    /// The peer ids that may write it; `None`: anyone may.
    pub writers: Option<Vec<String>>,
}

/// `POST /v1/topics/{t}/writers`: the writer to grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The writer's peer id.
    pub writer: String,
}

/// What a grant (`POST /v1/topics/{t}/writers`) or revocation (`DELETE
/// /v1/topics/{t}/writers/{w}`) did, and the topic's rule after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WritersChange {
    /// The block it made; `None`: the list already said so.
    pub commit: Option<BlockRef>,
    /// The topic's mode.
    pub mode: String,
    /// The topic's owner.
    pub owner: Option<String>,
    /// The topic.
    pub topic: String,
    /// The writer granted or revoked.
    pub writer: String,
    /// The writers after the change.
    pub writers: Option<Vec<String>>,
}

impl WritersChange {
    /// The change of `writer` in the topic whose rule is now `access`.
    pub fn new(access: TopicAccess, writer: String, commit: Option<BlockRef>) -> WritersChange {
        let TopicAccess { mode, owner, topic, writers } = access;
        WritersChange { commit, mode, owner, topic, writer, writers }
    }
}

/// `PUT /v1/topics/{t}/kv/{key}`: the block the put made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    /// The copies holding the write when it was acknowledged (this node's among them).
    pub acknowledged: u32,
    /// The heads that include the write: pass it as `causal` to read it back anywhere.
    pub causal_token: String,
    /// The block's CID.
    pub cid: WireCid,
    /// When the value expires (ms since the Unix epoch), when it was given a `ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// The block's height.
    pub height: u64,
}

/// `POST /v1/topics/{t}/batch`: the block the batch made, both `None` when it changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batched {
    /// The copies holding the batch when it was acknowledged (this node's among them).
    pub acknowledged: u32,
    /// The heads that include the batch (the topic's heads when it changed nothing).
    pub causal_token: String,
    /// The block's CID.
    pub cid: Option<String>,
    /// The block's height.
    pub height: Option<u64>,
}

impl Batched {
    /// The block the batch made, if it made one.
    pub fn commit(&self) -> Option<BlockRef> {
        Some(BlockRef { cid: self.cid.as_deref()?.parse().ok()?, height: self.height? })
    }
}

/// `POST /v1/topics/{t}/batch`: operations applied as one delta.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The operations, in order.
    pub ops: Vec<BatchOp>,
}

impl Batch {
    /// The request body of `batch`: keys and values in base64, lifetimes as expiry times.
    pub fn of(batch: &canopy_crdt::Batch) -> Batch {
        let key = |key: &[u8]| Some(BASE64.encode(key));
        let ops = batch
            .ops()
            .iter()
            .map(|op| match op {
                canopy_crdt::Op::Put(k, value) => BatchOp::Put {
                    expires_ms: None,
                    key: None,
                    key_base64: key(k),
                    ttl: None,
                    value: BASE64.encode(value),
                },
                canopy_crdt::Op::PutUntil(k, value, expires_ms) => BatchOp::Put {
                    expires_ms: Some(*expires_ms),
                    key: None,
                    key_base64: key(k),
                    ttl: None,
                    value: BASE64.encode(value),
                },
                canopy_crdt::Op::Delete(k) => BatchOp::Delete { key: None, key_base64: key(k) },
                canopy_crdt::Op::Add(k, add) => BatchOp::Add { add: *add, key: None, key_base64: key(k) },
            })
            .collect();
        Batch { ops }
    }
}

/// One batch operation. The key is text (`key`) or any bytes in base64 (`key_base64`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum BatchOp {
    /// Set the key to `value` (base64).
    Put {
        /// When the value expires, in milliseconds since the Unix epoch (instead of `ttl`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_ms: Option<u64>,
        /// The key as text.
        key: Option<String>,
        /// The key's bytes in base64.
        key_base64: Option<String>,
        /// The value's bytes in base64.
        value: String,
        /// A lifetime such as `30s`: the value expires then.
        ttl: Option<String>,
    },
    /// Delete the key.
    Delete {
        /// The key as text.
        key: Option<String>,
        /// The key's bytes in base64.
        key_base64: Option<String>,
    },
    /// Add `add` to the counter named by the key.
    Add {
        /// The key as text.
        key: Option<String>,
        /// The key's bytes in base64.
        key_base64: Option<String>,
        /// What to add (negative to subtract).
        add: i64,
    },
}

/// `POST /v1/topics/{t}/counters/{key}`: what to add; an empty body adds 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Increment {
    /// What to add (negative to subtract).
    pub add: i64,
}

/// `POST /v1/topics/{t}/counters/{key}`: the block the increment made and the counter's sum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incremented {
    /// The copies holding the increment when it was acknowledged (this node's among them).
    pub acknowledged: u32,
    /// The heads that include the increment.
    pub causal_token: String,
    /// The block's CID.
    pub cid: String,
    /// The block's height.
    pub height: u64,
    /// The counter's sum after it, as this node sees it.
    pub value: i128,
}

/// `GET /v1/topics/{t}/counters/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// The counter's key.
    pub key: String,
    /// Its sum (0 when never incremented).
    pub value: i128,
}

/// `GET /v1/topics/{t}/history/{key}`: a key's versions, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The key.
    pub key: String,
    /// Its versions this node holds.
    pub versions: Vec<KeyVersion>,
}

/// One version of a key: a put or a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    /// The block that wrote it.
    pub cid: WireCid,
    /// Whether it is a delete.
    pub deleted: bool,
    /// When the value expires (ms since the Unix epoch), if it does.
    pub expires_ms: Option<u64>,
    /// The block's height.
    pub height: u64,
    /// The value in base64; `None` for a delete.
    pub value: Option<String>,
}

impl From<canopy_crdt::Version> for KeyVersion {
    fn from(version: canopy_crdt::Version) -> KeyVersion {
        KeyVersion {
            cid: WireCid(version.cid),
            deleted: version.deleted(),
            expires_ms: version.expires,
            height: version.height,
            value: version.value.as_ref().map(|value| BASE64.encode(value)),
        }
    }
}

/// A page of a listing (`GET /v1/topics/{t}/kv`, `GET /v1/tables/{t}/kv`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The heads the listing read at, to pass as `causal` to the next read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causal_token: Option<String>,
    /// The entries, in key order.
    pub entries: Vec<Entry>,
    /// A table's partitions no copy of which answered: the listing holds none of their keys
    /// (status 206).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedPartition>,
    /// The key to list after for the next page as text (`None` when not UTF-8 or last page).
    pub next: Option<String>,
    /// The same key's bytes in base64; `None` on the last page.
    pub next_base64: Option<String>,
}

impl Page {
    /// The page of `entries` (key, value) whose next page starts after `next`.
    pub fn new(entries: impl Iterator<Item = (Vec<u8>, Vec<u8>)>, next: Option<Vec<u8>>) -> Page {
        let entries = entries.map(|(key, value)| Entry::new(&key, &value)).collect();
        let (next, next_base64) = match next {
            Some(next) => (key_text(&next), Some(BASE64.encode(&next))),
            None => (None, None),
        };
        Page { causal_token: None, entries, failed: Vec::new(), next, next_base64 }
    }

    /// The bytes of the key to list after for the next page.
    pub fn next_bytes(&self) -> Result<Option<Vec<u8>>, base64::DecodeError> {
        self.next_base64.as_deref().map(|next| BASE64.decode(next)).transpose()
    }
}

/// One entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key as text; `None` when not UTF-8.
    pub key: Option<String>,
    /// The key's bytes in base64.
    pub key_base64: String,
    /// The value's bytes in base64.
    pub value: String,
}

impl Entry {
    /// The entry of `key` holding `value`.
    pub fn new(key: &[u8], value: &[u8]) -> Entry {
        Entry { key: key_text(key), key_base64: BASE64.encode(key), value: BASE64.encode(value) }
    }

    /// The key's bytes.
    pub fn key_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        BASE64.decode(&self.key_base64)
    }

    /// The value's bytes.
    pub fn value_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        BASE64.decode(&self.value)
    }
}

/// A key as text, when it is UTF-8.
fn key_text(key: &[u8]) -> Option<String> {
    std::str::from_utf8(key).ok().map(str::to_string)
}

/// `POST /v1/topics/{t}/compact`: what to compact; an empty body compacts both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compact {
    /// Snapshot the topic and prune its covered history.
    #[serde(default = "yes")]
    pub dag: bool,
    /// Compact the topic's RocksDB ranges to the last level.
    #[serde(default = "yes")]
    pub db: bool,
}

fn yes() -> bool {
    true
}

/// `POST /v1/topics/{t}/compact`: what the compaction did. The DAG's figures are `None` (and
/// `heads` empty) when only RocksDB was compacted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    /// Blocks the topic holds after it.
    pub blocks: Option<u64>,
    /// Approximate bytes of the topic after.
    pub bytes_after: u64,
    /// Approximate bytes of the topic before.
    pub bytes_before: u64,
    /// The heads the snapshot was taken at.
    pub heads: Vec<BlockRef>,
    /// Live keys in the snapshot.
    pub keys: Option<u64>,
    /// Blocks pruned now.
    pub pruned_blocks: u64,
    /// The snapshot's manifest; `None` when the topic has no history or the DAG was left alone.
    pub snapshot: Option<String>,
}

/// `GET /v1/topics/{t}/snapshots`: the topic's snapshots, by manifest CID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshots {
    /// The snapshots that cover its pruned blocks.
    pub cover: Vec<String>,
    /// The heads of prunings no snapshot covers yet: with the cover's heads, every pruned block
    /// is below them.
    #[serde(default)]
    pub frontier: Vec<String>,
    /// Snapshots it knows of.
    pub known: Vec<String>,
}

/// One event of `GET /v1/topics/{t}/watch` (server-sent events, one JSON object per `data:`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum WatchEvent {
    /// A counter changed.
    Counter(CounterChange),
    /// A document changed.
    Doc(DocChange),
    /// A key changed.
    Key(KeyChange),
}

impl WatchEvent {
    /// The event a `data:` field holds: a counter's when it has a `counter` field. (Not an
    /// untagged `Deserialize`: that buffers numbers, and a counter's sum is an `i128`, which
    /// serde's buffer does not hold.)
    pub fn parse(data: &str) -> serde_json::Result<WatchEvent> {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default, deserialize_with = "present")]
            counter: bool,
            #[serde(default, deserialize_with = "present")]
            doc: bool,
        }
        fn present<'de, D: serde::Deserializer<'de>>(field: D) -> Result<bool, D::Error> {
            serde::de::IgnoredAny::deserialize(field).map(|_| true)
        }
        let probe = serde_json::from_str::<Probe>(data)?;
        if probe.counter {
            serde_json::from_str(data).map(WatchEvent::Counter)
        } else if probe.doc {
            serde_json::from_str(data).map(WatchEvent::Doc)
        } else {
            serde_json::from_str(data).map(WatchEvent::Key)
        }
    }
}

/// A key's change in a watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChange {
    /// True when the value ran out (present only then).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
    /// The block that made the change.
    pub height: u64,
    /// The key as text; `None` when not UTF-8.
    pub key: Option<String>,
    /// The key's bytes in base64.
    pub key_base64: String,
    /// The visible value in base64 after the change; `None`: the key has none.
    pub value: Option<String>,
}

/// A counter's change in a watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterChange {
    /// The counter's key as text; `None` when not UTF-8. Always present: it tells this event
    /// from a key's.
    pub counter: Option<String>,
    /// The block that made the change.
    pub height: u64,
    /// The key's bytes in base64.
    pub key_base64: String,
    /// The counter's sum when the event went out.
    pub value: i128,
}

impl KeyChange {
    /// The change of `key` to `value` made at `height`.
    pub fn new(key: &[u8], value: Option<&[u8]>, height: u64, expired: bool) -> KeyChange {
        let value = value.map(|value| BASE64.encode(value));
        KeyChange { expired, height, key: key_text(key), key_base64: BASE64.encode(key), value }
    }
}

impl CounterChange {
    /// The counter `key` reading `value` after the change at `height`.
    pub fn new(key: &[u8], value: i128, height: u64) -> CounterChange {
        CounterChange { counter: key_text(key), height, key_base64: BASE64.encode(key), value }
    }
}

/// `GET /v1/admin/status`: the store's figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminStatus {
    /// RocksDB's figures per column family.
    pub families: Vec<FamilyStats>,
    /// The node's peer id.
    pub peer_id: String,
    /// Every topic's figures.
    pub topics: Vec<TopicStats>,
}

/// `GET /v1/admin/topics`: every topic of the store, subscribed or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminTopics {
    /// Every topic's figures.
    pub topics: Vec<TopicStats>,
}

/// `POST /v1/admin/verify`: the topics to verify (all when empty or absent). The reply is a
/// [`Verification`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// The topics.
    #[serde(default)]
    pub topics: Vec<String>,
}

/// `POST /v1/admin/backup`: the backup to make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// The backup's name: a directory under the node's backup directory.
    pub name: String,
}

/// `POST /v1/admin/backup`: the backup made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackedUp {
    /// The backup's name.
    pub name: String,
    /// The directory it went to.
    pub out: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_events_tell_counters_from_keys() {
        let key = KeyChange::new(b"k", Some(b"v"), 3, false);
        let counter = CounterChange::new(b"c", i128::from(i64::MIN) - 2, 4);
        let text = serde_json::to_string(&WatchEvent::Key(key.clone())).unwrap();
        assert_eq!(text, r#"{"height":3,"key":"k","key_base64":"aw==","value":"dg=="}"#);
        assert_eq!(WatchEvent::parse(&text).unwrap(), WatchEvent::Key(key));
        let text = serde_json::to_string(&WatchEvent::Counter(counter.clone())).unwrap();
        assert_eq!(text, r#"{"counter":"c","height":4,"key_base64":"Yw==","value":-9223372036854775810}"#);
        assert_eq!(WatchEvent::parse(&text).unwrap(), WatchEvent::Counter(counter));
        let deleted = KeyChange::new(&[0xff], None, 5, true);
        let text = serde_json::to_string(&deleted).unwrap();
        assert_eq!(text, r#"{"expired":true,"height":5,"key":null,"key_base64":"/w==","value":null}"#);
        assert_eq!(WatchEvent::parse(&text).unwrap(), WatchEvent::Key(deleted));
    }

    #[test]
    fn error_bodies_are_read_in_one_place() {
        let body = serde_json::to_vec(&ErrorBody::new("no such key")).unwrap();
        assert_eq!(body, br#"{"error":"no such key"}"#);
        assert_eq!(ErrorBody::message_in(&body).as_deref(), Some("no such key"));
        assert_eq!(ErrorBody::message_in(b"<html>bad gateway</html>"), None);
    }

    #[test]
    fn pages_carry_keys_as_text_and_bytes() {
        let page = Page::new([(b"a".to_vec(), b"1".to_vec()), (vec![0xff], vec![])].into_iter(), Some(vec![0xff]));
        let text = serde_json::to_string(&page).unwrap();
        assert_eq!(
            text,
            r#"{"entries":[{"key":"a","key_base64":"YQ==","value":"MQ=="},{"key":null,"key_base64":"/w==","value":""}],"next":null,"next_base64":"/w=="}"#
        );
        let read: Page = serde_json::from_str(&text).unwrap();
        assert_eq!(read.next_bytes().unwrap(), Some(vec![0xff]));
        assert_eq!(read.entries[1].key_bytes().unwrap(), vec![0xff]);
        assert_eq!(read.entries[0].value_bytes().unwrap(), b"1");
    }
}
