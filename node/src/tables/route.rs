//! Reads and writes of a table, served from the partition this node holds or sent to the
//! partition's holders.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use serde::Deserialize;

use super::{FORWARDED_HEADER, Member, TableDef, TableError, Tables, owners, partition_of, partition_topic};
use crate::node::NodeTopic;
use crate::{Commit, Node};

/// A table to read and write through: every call goes to the key's partition, on this node
/// when it holds it, or else to the partition's holders in placement order.
#[derive(Clone)]
pub struct Table {
    node: Node,
    def: TableDef,
}

/// A write applied to a table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Written {
    /// The key's partition.
    pub partition: u32,
    /// The peer id of the node that applied it.
    pub node: String,
    /// The block the write made.
    pub cid: String,
    /// Its height.
    pub height: u64,
}

/// One entry of a table listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableEntry {
    /// The key.
    pub key: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
}

/// One page of a table listing, in key order across all partitions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The entries.
    pub entries: Vec<TableEntry>,
    /// The key to pass as `after` for the next page, when more entries remain.
    pub next: Option<Vec<u8>>,
}

/// One copy of a partition a request may be served from.
enum Hop {
    Here(NodeTopic),
    There(Member),
}

/// Where a request was served.
enum Served {
    /// From this node's copy: the caller does the work.
    Here(NodeTopic),
    /// By a holder, whose answer this is.
    There(reqwest::Response),
}

/// A commit as a holder reports it.
#[derive(Deserialize)]
struct CommitReply {
    cid: String,
    height: u64,
    node: Option<String>,
}

/// A listing as a holder reports it.
#[derive(Deserialize)]
struct ListReply {
    entries: Vec<ListEntry>,
    next_base64: Option<String>,
}

#[derive(Deserialize)]
struct ListEntry {
    key_base64: String,
    value: String,
}

impl Table {
    pub(super) fn new(node: Node, def: TableDef) -> Table {
        Table { node, def }
    }

    /// The table's name and shape.
    pub fn def(&self) -> &TableDef {
        &self.def
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &str) -> u32 {
        partition_of(key.as_bytes(), self.def.partitions)
    }

    /// The members holding each partition, best first, as this node sees the cluster now.
    pub fn placement(&self) -> Result<Vec<Vec<Member>>, TableError> {
        let members = self.tables()?.members()?;
        Ok((0..self.def.partitions).map(|p| owners(&self.def.name, p, self.def.replicas, &members)).collect())
    }

    /// The topic of `partition` when this node holds it.
    pub fn held(&self, partition: u32) -> Option<NodeTopic> {
        self.node.topic(&partition_topic(&self.def.name, partition))
    }

    /// Sets `key` to `value` on the key's partition.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<Written, TableError> {
        let partition = self.partition_of(key);
        let request = |http: &reqwest::Client, api: &str| http.put(self.key_url(api, key)).body(value.clone());
        match self.serve(partition, request).await? {
            Served::Here(topic) => {
                let (key, me) = (key.as_bytes().to_vec(), self.me()?);
                let commit = blocking(move || Ok(topic.put(key, value)?)).await?;
                Ok(local_written(partition, me, commit))
            }
            Served::There(response) => self.written(partition, response).await,
        }
    }

    /// The value of `key`, `None` when it has none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TableError> {
        let partition = self.partition_of(key);
        match self.serve(partition, |http, api| http.get(self.key_url(api, key))).await? {
            Served::Here(topic) => {
                let key = key.as_bytes().to_vec();
                blocking(move || Ok(topic.get(&key)?)).await
            }
            Served::There(response) => match response.status() {
                StatusCode::NOT_FOUND => Ok(None),
                status if status.is_success() => Ok(Some(body(response).await?)),
                _ => Err(refusal(response).await),
            },
        }
    }

    /// Deletes `key`; `None` when it had no value.
    pub async fn delete(&self, key: &str) -> Result<Option<Written>, TableError> {
        let partition = self.partition_of(key);
        match self.serve(partition, |http, api| http.delete(self.key_url(api, key))).await? {
            Served::Here(topic) => {
                let key = key.as_bytes().to_vec();
                let me = self.me()?;
                let commit = blocking(move || Ok(topic.delete(key)?)).await?;
                Ok(commit.map(|commit| local_written(partition, me, commit)))
            }
            Served::There(response) if response.status() == StatusCode::NOT_FOUND => Ok(None),
            Served::There(response) => self.written(partition, response).await.map(Some),
        }
    }

    /// Keys starting with `prefix`, strictly after `after`, at most `limit`, in key order across
    /// every partition: each partition is asked for its first `limit` and the pages merged.
    pub async fn list(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Listing, TableError> {
        let pages = (0..self.def.partitions).map(|p| self.list_partition(p, prefix, after, limit));
        let mut entries = Vec::new();
        let mut more = false;
        for page in futures::future::join_all(pages).await {
            let page = page?;
            more |= page.next.is_some();
            entries.extend(page.entries);
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        more |= entries.len() > limit;
        entries.truncate(limit);
        let next = if more { entries.last().map(|e| e.key.clone()) } else { None };
        Ok(Listing { entries, next })
    }

    /// One partition's part of [`Table::list`].
    pub async fn list_partition(
        &self,
        partition: u32,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Listing, TableError> {
        let mut query = vec![
            ("partition".to_string(), partition.to_string()),
            ("prefix_base64".to_string(), BASE64.encode(prefix)),
            ("limit".to_string(), limit.to_string()),
        ];
        if let Some(after) = after {
            query.push(("after_base64".to_string(), BASE64.encode(after)));
        }
        let url = |api: &str| format!("{api}/v1/tables/{}/kv", self.def.name);
        match self.serve(partition, |http, api| http.get(url(api)).query(&query)).await? {
            Served::Here(topic) => {
                let (prefix, after) = (prefix.to_vec(), after.map(<[u8]>::to_vec));
                let page = blocking(move || Ok(topic.query(&prefix, after.as_deref(), limit)?)).await?;
                let entries = page.entries.into_iter().map(|(key, value)| TableEntry { key, value }).collect();
                Ok(Listing { entries, next: page.next })
            }
            Served::There(response) => {
                if !response.status().is_success() {
                    return Err(refusal(response).await);
                }
                let reply: ListReply = response.json().await.map_err(|e| self.unreadable(partition, e))?;
                let decode = |text: &str| BASE64.decode(text).map_err(|e| self.unreadable(partition, e));
                let mut entries = Vec::with_capacity(reply.entries.len());
                for entry in reply.entries {
                    entries.push(TableEntry { key: decode(&entry.key_base64)?, value: decode(&entry.value)? });
                }
                let next = reply.next_base64.as_deref().map(decode).transpose()?;
                Ok(Listing { entries, next })
            }
        }
    }

    /// This node's peer id.
    pub(crate) fn me(&self) -> Result<String, TableError> {
        Ok(self.tables()?.me.peer_id.clone())
    }

    fn tables(&self) -> Result<&Arc<Tables>, TableError> {
        self.node.inner().tables.get().ok_or(TableError::NotEnabled)
    }

    /// This node's copy of `partition` to serve a request from: the topic when the node holds
    /// it, or when the partition is placed on it (the node takes the partition on at once,
    /// unless it joined too recently to trust its view of the members). Blocks briefly (a read
    /// of the members, perhaps a subscription).
    pub fn local_copy(&self, partition: u32) -> Result<Option<NodeTopic>, TableError> {
        if let Some(topic) = self.held(partition) {
            return Ok(Some(topic));
        }
        let tables = self.tables()?;
        let owners = owners(&self.def.name, partition, self.def.replicas, &tables.members()?);
        if tables.settled() && owners.iter().any(|member| member.peer_id == tables.me.peer_id) {
            return Ok(Some(self.node.subscribe(&partition_topic(&self.def.name, partition))?));
        }
        Ok(None)
    }

    /// The order in which `partition`'s copies are tried: its owners in placement order (this
    /// node among them when it is one), then this node's own copy when it holds one without
    /// being an owner (a partition placed elsewhere since). Every request for a key goes to its
    /// first owner while that one answers, so a client sees its own writes through any node.
    async fn hops(&self, partition: u32) -> Result<Vec<Hop>, TableError> {
        let table = self.clone();
        blocking(move || {
            let tables = table.tables()?;
            let owners = owners(&table.def.name, partition, table.def.replicas, &tables.members()?);
            let mut hops = Vec::with_capacity(owners.len() + 1);
            let mut here = false;
            for owner in owners {
                if owner.peer_id != tables.me.peer_id {
                    hops.push(Hop::There(owner));
                } else if let Some(topic) = table.local_copy(partition)? {
                    hops.push(Hop::Here(topic));
                    here = true;
                }
            }
            if let Some(topic) = table.held(partition).filter(|_| !here) {
                hops.push(Hop::Here(topic));
            }
            Ok(hops)
        })
        .await
    }

    /// Serves a request for `partition` from the first copy that takes it: this node's, or a
    /// holder's over HTTP (`request` builds it for the holder's API URL). A holder that answers
    /// 421 (it does not hold the partition after all), fails with a 5xx or cannot be reached is
    /// passed over.
    async fn serve(
        &self,
        partition: u32,
        request: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Served, TableError> {
        let http = &self.tables()?.http;
        let mut tried = Vec::new();
        for hop in self.hops(partition).await? {
            let owner = match hop {
                Hop::Here(topic) => return Ok(Served::Here(topic)),
                Hop::There(owner) => owner,
            };
            match request(http, &owner.api).header(FORWARDED_HEADER, "1").send().await {
                Ok(response)
                    if response.status() == StatusCode::MISDIRECTED_REQUEST || response.status().is_server_error() =>
                {
                    tried.push(format!("{} answered {}", owner.peer_id, response.status()));
                }
                Ok(response) => return Ok(Served::There(response)),
                Err(error) => tried.push(format!("{} unreachable: {error}", owner.peer_id)),
            }
        }
        let reason = if tried.is_empty() { "no member holds it yet".to_string() } else { tried.join("; ") };
        Err(TableError::Unavailable { table: self.def.name.clone(), partition, reason })
    }

    fn key_url(&self, api: &str, key: &str) -> String {
        format!("{api}/v1/tables/{}/kv/{}", self.def.name, utf8_percent_encode(key, NON_ALPHANUMERIC))
    }

    async fn written(&self, partition: u32, response: reqwest::Response) -> Result<Written, TableError> {
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        let reply: CommitReply = response.json().await.map_err(|e| self.unreadable(partition, e))?;
        Ok(Written { partition, node: reply.node.unwrap_or_default(), cid: reply.cid, height: reply.height })
    }

    fn unreadable(&self, partition: u32, error: impl std::fmt::Display) -> TableError {
        TableError::Unavailable {
            table: self.def.name.clone(),
            partition,
            reason: format!("a holder's answer is unreadable: {error}"),
        }
    }
}

/// A write this node applied.
pub(crate) fn local_written(partition: u32, node: String, commit: Commit) -> Written {
    Written { partition, node, cid: commit.cid.to_string(), height: commit.height }
}

/// The refusal a holder answered with: its status and its error message.
async fn refusal(response: reqwest::Response) -> TableError {
    let status = response.status().as_u16();
    let message = match response.json::<serde_json::Value>().await {
        Ok(body) => body["error"].as_str().unwrap_or("no message").to_string(),
        Err(_) => format!("status {status}"),
    };
    TableError::Refused { status, message }
}

async fn body(response: reqwest::Response) -> Result<Vec<u8>, TableError> {
    response
        .bytes()
        .await
        .map(|bytes| bytes.to_vec())
        .map_err(|e| TableError::Refused { status: 502, message: format!("a holder's answer broke off: {e}") })
}

/// Runs blocking store work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, TableError> + Send + 'static,
) -> Result<T, TableError> {
    tokio::task::spawn_blocking(work).await.map_err(|_| TableError::Node(crate::NodeError::Closed))?
}
