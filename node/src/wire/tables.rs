//! The bodies of the table, member and drain routes (`/v1/members`, `/v1/tables/...`,
//! `/v1/admin/drain`), under the rules of [`super`].

use serde::{Deserialize, Serialize};

use super::{WireCid, WirePeerId};

/// A partition of a table that a listing or a batch could not reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedPartition {
    /// What went wrong.
    pub error: String,
    /// The partition.
    pub partition: u32,
}

/// `POST /v1/tables/{t}/batch`: each partition's outcome, in partition order (status 200 when
/// every partition applied its operations, 207 when some did not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableBatched {
    /// One outcome per partition the batch wrote to.
    pub partitions: Vec<PartitionBatched>,
}

/// One partition's part of a table batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionBatched {
    /// The owners holding it when acknowledged (also on a 504, where fewer than asked do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<u32>,
    /// The heads that include it, when it was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causal_token: Option<String>,
    /// The block it made, when it was applied and changed something.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<WireCid>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The operations of the batch that fell in this partition.
    pub ops: usize,
    /// The partition.
    pub partition: u32,
    /// The HTTP status this partition's part would have had alone.
    pub status: u16,
}

/// `GET /v1/tables/{t}/holds`: whether this node's copies hold every head a causal token names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    /// They do.
    pub holds: bool,
}

/// A table write: `PUT` and `DELETE /v1/tables/{t}/kv/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The partition's owners holding the write when it was acknowledged.
    pub acknowledged: u32,
    /// The heads that include the write: pass it as `causal` to read it back through any member.
    pub causal_token: String,
    /// The block the write made.
    pub cid: WireCid,
    /// Its height.
    pub height: u64,
    /// The peer id of the node that applied it.
    pub node: WirePeerId,
    /// The key's partition.
    pub partition: u32,
}

/// `POST` and `GET /v1/admin/drain`: how far this member's drain has come.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// Copies handed off whose deletion is still to come.
    pub awaiting_deletion: usize,
    /// It holds no partition: stopping it now loses nothing.
    pub done: bool,
    /// It is draining.
    pub draining: bool,
    /// Partition copies it still holds.
    pub partitions_held: usize,
}

/// A member of the cluster (nodes started with `--tables`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its libp2p listen addresses.
    pub addresses: Vec<String>,
    /// The base URL of its HTTP API.
    pub api: String,
    /// When it joined, in milliseconds since the Unix epoch by its clock.
    pub joined_ms: u64,
    /// Its peer id.
    pub peer_id: WirePeerId,
}

/// A table's name and shape: an entry of `GET /v1/tables`, and the reply to `POST /v1/tables`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    /// The table's name.
    pub name: String,
    /// Partitions the keyspace is split into.
    pub partitions: u32,
    /// Members holding each partition (fewer while the cluster has fewer members).
    pub replicas: u32,
}

/// `GET /v1/members`: the cluster's live members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// The members.
    pub members: Vec<Member>,
}

/// `GET /v1/tables`: the cluster's tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tables {
    /// The tables.
    pub tables: Vec<TableDef>,
}

/// `POST /v1/tables`: the table to create. The reply is its [`TableDef`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTable {
    /// The table's name.
    pub name: String,
    /// Partitions the keyspace is split into (1 to 4096).
    pub partitions: u32,
    /// Members holding each partition (1 to 16).
    pub replicas: u32,
}

/// `GET /v1/tables/{t}`: a table's shape and where its partitions are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableShown {
    /// The table's name.
    pub name: String,
    /// Partitions the keyspace is split into.
    pub partitions: u32,
    /// Each partition's holders.
    pub placement: Vec<Placement>,
    /// Members holding each partition.
    pub replicas: u32,
}

/// Where one partition of a table is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Whether the node that answered holds a copy.
    pub held_here: bool,
    /// Whether that copy has caught up with the other holders, so it serves requests: a copy
    /// still catching up passes them on to the next owner.
    #[serde(default)]
    pub caught_up_here: bool,
    /// The peer ids of its owners, best first.
    pub owners: Vec<WirePeerId>,
    /// The partition's number.
    pub partition: u32,
    /// The partition's topic.
    pub topic: String,
}
