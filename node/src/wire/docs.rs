//! The documents' routes (`/v1/topics/{t}/docs`): what a write answers and a listing's page.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::key_text;

/// `PUT`, `PATCH` or `DELETE /v1/topics/{t}/docs/{key}`: the block the write made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocWritten {
    /// The copies holding the write when it was acknowledged (this node's among them).
    pub acknowledged: u32,
    /// The heads that include the write.
    pub causal_token: String,
    /// The block's CID; `None` when the write changed nothing.
    pub cid: Option<String>,
    /// When the fields written expire (ms since the Unix epoch), if they do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// The block's height; `None` when the write changed nothing.
    pub height: Option<u64>,
}

/// `GET /v1/topics/{t}/docs`: a page of documents, in key order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocPage {
    /// The heads the listing read at, to pass as `causal` to the next read.
    pub causal_token: String,
    /// The documents.
    pub docs: Vec<DocEntry>,
    /// A table's partitions no copy of which answered: none of their documents are in the
    /// page (status 206).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<super::FailedPartition>,
    /// For a query (`where`, `order`): documents read to answer it (those an index named, or
    /// every document up to the page's end when no index served it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanned: Option<u64>,
    /// For a query: the index that served it; absent when it scanned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// The key to list after for the next page as text (`None` when not UTF-8 or last page).
    pub next: Option<String>,
    /// The same key's bytes in base64; `None` on the last page.
    pub next_base64: Option<String>,
}

/// One document of a listing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocEntry {
    /// The key as text; `None` when not UTF-8.
    pub key: Option<String>,
    /// The key's bytes in base64.
    pub key_base64: String,
    /// The document.
    pub doc: serde_json::Map<String, serde_json::Value>,
}

impl DocPage {
    /// The page of `docs` whose next page starts after `next`, read at `causal_token`.
    pub fn new(
        docs: Vec<(Vec<u8>, serde_json::Map<String, serde_json::Value>)>,
        next: Option<Vec<u8>>,
        causal_token: String,
    ) -> DocPage {
        let docs = docs
            .into_iter()
            .map(|(key, doc)| DocEntry { key: key_text(&key), key_base64: BASE64.encode(&key), doc })
            .collect();
        let (next, next_base64) = match next {
            Some(next) => (key_text(&next), Some(BASE64.encode(&next))),
            None => (None, None),
        };
        DocPage { causal_token, docs, failed: Vec::new(), scanned: None, index: None, next, next_base64 }
    }
}

/// A document's change in a watch stream: the document as it stands when the event goes out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocChange {
    /// The document's key as text; `None` when not UTF-8. Always present: it tells this event
    /// from a key's or a counter's.
    pub doc: Option<String>,
    /// The block that made the change.
    pub height: u64,
    /// The key's bytes in base64.
    pub key_base64: String,
    /// The document when the event went out; `None` once it has no field.
    pub value: Option<serde_json::Map<String, serde_json::Value>>,
}

impl DocChange {
    /// The document `key` reading `value` after the change at `height`.
    pub fn new(key: &[u8], value: Option<serde_json::Map<String, serde_json::Value>>, height: u64) -> DocChange {
        DocChange { doc: key_text(key), height, key_base64: BASE64.encode(key), value }
    }
}

/// `PUT /v1/topics/{t}/indexes/{name}`: what the index holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexBody {
    /// The field's path, a dot between parts (`meta.region`).
    pub path: String,
    /// The type of the values indexed: `string`, `number` or `bool`.
    #[serde(rename = "type")]
    pub kind: canopy_crdt::IndexKind,
}

/// `GET /v1/topics/{t}/indexes`: one index as this node holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The index's name.
    pub name: String,
    /// The field's path.
    pub path: String,
    /// The type of the values indexed.
    #[serde(rename = "type")]
    pub kind: canopy_crdt::IndexKind,
    /// Whether it is built (it serves queries only then).
    pub ready: bool,
    /// Document field entries its build has read so far.
    pub scanned: u64,
}

impl From<canopy_crdt::IndexStatus> for IndexEntry {
    fn from(status: canopy_crdt::IndexStatus) -> IndexEntry {
        IndexEntry {
            name: status.name,
            path: status.def.path_text(),
            kind: status.def.kind,
            ready: status.ready,
            scanned: status.scanned,
        }
    }
}

/// `PUT` or `DELETE /v1/topics/{t}/indexes/{name}`: the block that declared or dropped it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexChanged {
    /// The heads that include the change.
    pub causal_token: String,
    /// The block's CID; `None` when the index was declared so already.
    pub cid: Option<String>,
    /// The block's height; `None` when nothing changed.
    pub height: Option<u64>,
}

/// `GET /v1/tables/{t}/indexes`: the indexes the table's partitions hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableIndexes {
    /// Each index a partition holds, with how many partitions hold it built.
    pub indexes: Vec<TableIndex>,
    /// Partitions of the table.
    pub partitions: u32,
    /// Partitions no holder of which answered (status 206).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<super::FailedPartition>,
}

/// One index of a table (or, forwarded for one partition, of that partition's copy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableIndex {
    /// The index as one partition holds it (`scanned` summed over the partitions).
    #[serde(flatten)]
    pub entry: IndexEntry,
    /// Partitions whose copy holds it.
    pub held_by: u32,
    /// Partitions whose copy holds it built.
    pub built_by: u32,
}

/// `PUT` or `DELETE /v1/tables/{t}/indexes/{name}`: what the change did on each partition
/// (status 207 when some partition did not take it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableIndexChanged {
    /// Partitions whose topic took the change.
    pub changed: Vec<u32>,
    /// Partitions whose topic was so already.
    pub unchanged: Vec<u32>,
    /// Partitions no holder of which took it: send the change again to reach them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<super::FailedPartition>,
}
