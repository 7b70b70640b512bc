//! Documents in a table: each key's document lives in its partition, written on the
//! partition's owners and read from a copy holding the read's causal token, as values are.

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;

use super::partition_of;
use super::route::{LIST_FANOUT_MAX, Served, blocking, merge_pages, refusal};
use super::write::{Acked, batch_outcome, part_answered};
use super::{Listing, Table, TableEntry, TableError};
use crate::IndexDef;
use crate::causal::CausalToken;
use crate::node::filter::Filter;
use crate::node::{DocBatchOp, Document, NodeTopic, Order, SORT_DOCS_MAX, sorted_page};
use crate::wire::{DocPage, DocWritten, FailedPartition, IndexBody, IndexChanged, IndexEntry, PartitionBatched};

/// One partition's documents a query found (as JSON text), and the documents it read.
pub type PartitionFound = (Listing, u64);

/// What a query over a table's documents found: the documents in key order, where the next
/// page starts, the partitions that did not answer, and the documents read.
#[derive(Clone, Debug, Default)]
pub struct FoundDocs {
    /// Each document's key and content, in key order.
    pub docs: Vec<(Vec<u8>, Document)>,
    /// The key to pass as `after` for the next page, when more may remain.
    pub next: Option<Vec<u8>>,
    /// Partitions no copy of which answered: none of their documents are in the page.
    pub failed: Vec<FailedPartition>,
    /// The causal token the page was read at.
    pub token: CausalToken,
    /// Documents read to answer, over every partition.
    pub scanned: u64,
}

/// What a document write does to its document.
#[derive(Clone, Debug, PartialEq)]
pub enum DocChange {
    /// The document becomes this one.
    Put(Document),
    /// This merge patch is applied to it.
    Patch(Document),
    /// It is deleted.
    Delete,
}

impl Table {
    /// Applies `change` to the document `key` on its partition's owners, acknowledged as the
    /// table's writes are; `None` for a delete of a document that has no field.
    pub async fn doc_write(&self, key: &str, change: DocChange) -> Result<Option<DocWritten>, TableError> {
        let partition = self.partition_of(key);
        let query = self.write_query();
        let (method, body) = match &change {
            DocChange::Put(doc) => (reqwest::Method::PUT, serde_json::to_vec(doc).unwrap_or_default()),
            DocChange::Patch(patch) => (reqwest::Method::PATCH, serde_json::to_vec(patch).unwrap_or_default()),
            DocChange::Delete => (reqwest::Method::DELETE, Vec::new()),
        };
        let request = |http: &reqwest::Client, api: &str| {
            http.request(method.clone(), self.doc_url(api, key))
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        };
        match self.serve(partition, request).await? {
            Served::Here(topic) => self.doc_write_here(partition, &topic, key, change).await,
            Served::There(response) if response.status() == StatusCode::NOT_FOUND => Ok(None),
            Served::There(response) => self.write_reply(partition, response).await.map(Some),
        }
    }

    /// Applies `change` to this node's copy `topic` of `partition` and waits for its
    /// acknowledgement.
    pub(crate) async fn doc_write_here(
        &self,
        partition: u32,
        topic: &NodeTopic,
        key: &str,
        change: DocChange,
    ) -> Result<Option<DocWritten>, TableError> {
        let (copy, key) = (topic.clone(), key.as_bytes().to_vec());
        let deleting = change == DocChange::Delete;
        let commit = blocking(move || {
            Ok(match &change {
                DocChange::Put(doc) => copy.doc_put(&key, doc, None)?,
                DocChange::Patch(patch) => copy.doc_patch(&key, patch, None)?,
                DocChange::Delete => copy.doc_delete(&key)?,
            })
        })
        .await?;
        if commit.is_none() && deleting {
            return Ok(None);
        }
        let acked = self.acknowledge(partition, topic, commit).await?;
        Ok(Some(DocWritten {
            acknowledged: acked.acknowledged.max(1),
            causal_token: acked.token.to_string(),
            cid: commit.map(|commit| commit.cid.to_string()),
            expires_ms: None,
            height: commit.map(|commit| commit.height),
        }))
    }

    /// The document `key` and the causal token it was read at, from a copy holding what
    /// [`Table::after`] names.
    pub async fn doc_read(&self, key: &str) -> Result<(Option<Document>, CausalToken), TableError> {
        let partition = self.partition_of(key);
        let query = self.query(partition);
        match self.serve(partition, |http, api| http.get(self.doc_url(api, key)).query(&query)).await? {
            Served::Here(topic) => {
                let (copy, key) = (topic.clone(), key.as_bytes().to_vec());
                let doc = blocking(move || Ok(copy.doc(&key)?)).await?;
                Ok((doc, self.read_at(partition, &topic)))
            }
            Served::There(response) => {
                let token = self.token_from(partition, &response);
                match response.status() {
                    StatusCode::NOT_FOUND => Ok((None, token)),
                    status if status.is_success() => {
                        let doc = response.json().await.map_err(|e| TableError::Unavailable {
                            table: self.def.name.clone(),
                            partition,
                            reason: format!("a holder's document is unreadable: {e}"),
                        })?;
                        Ok((Some(doc), token))
                    }
                    _ => Err(refusal(response).await),
                }
            }
        }
    }

    /// The documents meeting `conditions` (each as [`Filter`] reads it) over every partition,
    /// in key order, after `after`, at most `limit`: each partition is asked (a few at once)
    /// and the pages merged.
    pub async fn find_docs(
        &self,
        conditions: &[String],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<FoundDocs, TableError> {
        use futures::StreamExt as _;
        let pages: Vec<(u32, Result<PartitionFound, TableError>)> = futures::stream::iter(0..self.def.partitions)
            .map(|p| async move { (p, self.find_docs_in(p, conditions, None, after, limit).await) })
            .buffered(LIST_FANOUT_MAX)
            .collect()
            .await;
        let mut scanned = 0;
        let pages = pages
            .into_iter()
            .map(|(partition, page)| {
                let page = page.map(|(page, read)| {
                    scanned += read;
                    page
                });
                (partition, page)
            })
            .collect();
        let (answered, failed, token) = self.gather(pages)?;
        let merged = merge_pages(answered, limit);
        let docs = merged
            .entries
            .into_iter()
            .map(|entry| Ok((entry.key, serde_json::from_slice(&entry.value).map_err(|e| self.unreadable_doc(e))?)))
            .collect::<Result<_, TableError>>()?;
        Ok(FoundDocs { docs, next: merged.next, failed, token, scanned })
    }

    /// The documents meeting `conditions` over every partition, ordered by `order` (as a
    /// topic's ordered query orders them), the page after `after` (a previous page's `next`, an
    /// offset), at most `limit`: each partition answers its first `after + limit` in that
    /// order, a few partitions at once, and the merge keeps the page's part.
    pub async fn find_docs_ordered(
        &self,
        conditions: &[String],
        order: &Order,
        after: Option<&str>,
        limit: usize,
    ) -> Result<FoundDocs, TableError> {
        use futures::StreamExt as _;
        let refused = |message: String| TableError::Refused { status: 400, message };
        let start = match after {
            Some(after) => after
                .parse::<usize>()
                .map_err(|_| refused("after must be the next of the query's previous page".into()))?,
            None => 0,
        };
        let wanted = start.saturating_add(limit);
        if wanted > SORT_DOCS_MAX {
            return Err(refused(format!(
                "an ordered query over a table pages through its first {SORT_DOCS_MAX} documents"
            )));
        }
        let order_text = format!("{}{}", if order.descending { "-" } else { "" }, order.path.join("."));
        let pages: Vec<(u32, Result<PartitionFound, TableError>)> = futures::stream::iter(0..self.def.partitions)
            .map(|p| {
                let order_text = order_text.as_str();
                async move { (p, self.find_docs_in(p, conditions, Some(order_text), None, wanted).await) }
            })
            .buffered(LIST_FANOUT_MAX)
            .collect()
            .await;
        let mut scanned = 0;
        let pages = pages
            .into_iter()
            .map(|(partition, page)| {
                (
                    partition,
                    page.map(|(page, read)| {
                        scanned += read;
                        page
                    }),
                )
            })
            .collect();
        let (answered, failed, token) = self.gather(pages)?;
        let mut docs = Vec::new();
        for entry in answered.into_iter().flat_map(|page| page.entries) {
            let doc: Document = serde_json::from_slice(&entry.value).map_err(|e| self.unreadable_doc(e))?;
            docs.push((entry.key, doc));
        }
        let page = sorted_page(docs, order, after, limit).map_err(|e| refused(e.to_string()))?;
        Ok(FoundDocs { docs: page.docs, next: page.next.map(String::into_bytes), failed, token, scanned })
    }

    /// One partition's part of [`Table::find_docs`] (or, with `order`, of
    /// [`Table::find_docs_ordered`]): its page (documents as JSON text) and the documents read.
    pub async fn find_docs_in(
        &self,
        partition: u32,
        conditions: &[String],
        order: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<PartitionFound, TableError> {
        let mut query: Vec<(&str, String)> = conditions.iter().map(|c| ("where", c.clone())).collect();
        query.extend(order.map(|order| ("order", order.to_string())));
        query.push(("partition", partition.to_string()));
        query.push(("limit", limit.to_string()));
        query.extend(after.map(|after| ("after", String::from_utf8_lossy(after).into_owned())));
        query.extend(self.query(partition));
        let url = |api: &str| format!("{api}/v1/tables/{}/docs", self.def.name);
        match self.serve(partition, |http, api| http.get(url(api)).query(&query)).await? {
            Served::Here(topic) => {
                let filter = Filter::parse(conditions.iter().map(String::as_str))
                    .map_err(|message| TableError::Refused { status: 400, message })?;
                let after = after.map(|after| String::from_utf8_lossy(after).into_owned());
                let order = order
                    .map(parse_order)
                    .transpose()
                    .map_err(|message| TableError::Refused { status: 400, message })?;
                let copy = topic.clone();
                let found = blocking(move || {
                    copy.find(&filter, order.as_ref(), after.as_deref(), limit)
                        .map_err(|e| TableError::Refused { status: 400, message: e.to_string() })
                })
                .await?;
                let entries = found
                    .docs
                    .into_iter()
                    .map(|(key, doc)| TableEntry { key, value: serde_json::to_vec(&doc).unwrap_or_default() })
                    .collect();
                let next = found.next.map(String::into_bytes);
                let listing = Listing { entries, next, failed: Vec::new(), token: self.read_at(partition, &topic) };
                Ok((listing, found.scanned))
            }
            Served::There(response) => {
                if !response.status().is_success() {
                    return Err(refusal(response).await);
                }
                let token = self.token_from(partition, &response);
                let page: DocPage = response.json().await.map_err(|e| self.unreadable_doc(e))?;
                let entries = page
                    .docs
                    .into_iter()
                    .map(|entry| TableEntry {
                        key: entry.key.unwrap_or_default().into_bytes(),
                        value: serde_json::to_vec(&entry.doc).unwrap_or_default(),
                    })
                    .collect();
                let next = page.next.map(String::into_bytes);
                Ok((Listing { entries, next, failed: Vec::new(), token }, page.scanned.unwrap_or_default()))
            }
        }
    }

    fn unreadable_doc(&self, error: impl std::fmt::Display) -> TableError {
        TableError::Unavailable {
            table: self.def.name.clone(),
            partition: 0,
            reason: format!("a holder's documents are unreadable: {error}"),
        }
    }

    fn doc_url(&self, api: &str, key: &str) -> String {
        format!("{api}/v1/tables/{}/docs/{}", self.def.name, utf8_percent_encode(key, NON_ALPHANUMERIC))
    }
}

/// What declaring or dropping an index on a whole table did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFanout {
    /// Partitions whose topic the change was written to.
    pub changed: Vec<u32>,
    /// Partitions whose topic was so already (declared alike, or holding no such index).
    pub unchanged: Vec<u32>,
    /// Partitions no holder of which took the change: declare or drop again to reach them.
    pub failed: Vec<FailedPartition>,
}

/// Each index one partition's copy holds.
pub type PartitionIndexes = Vec<IndexEntry>;

impl Table {
    /// Declares the index `name` (`Some`) or drops it (`None`) on the topic of every
    /// partition, through one of its holders each (a few partitions at once). Each partition's
    /// holders then build it from their copies, so queries over the table read it.
    pub async fn change_index(&self, name: &str, def: Option<&IndexDef>) -> IndexFanout {
        use futures::StreamExt as _;
        let outcomes: Vec<(u32, Result<bool, TableError>)> = futures::stream::iter(0..self.def.partitions)
            .map(|p| async move { (p, self.change_index_in(p, name, def).await) })
            .buffered(LIST_FANOUT_MAX)
            .collect()
            .await;
        let mut fanout = IndexFanout::default();
        for (partition, outcome) in outcomes {
            match outcome {
                Ok(true) => fanout.changed.push(partition),
                Ok(false) => fanout.unchanged.push(partition),
                Err(error) => fanout.failed.push(FailedPartition { error: error.to_string(), partition }),
            }
        }
        fanout
    }

    /// [`Table::change_index`] on one partition: whether its topic changed.
    pub async fn change_index_in(
        &self,
        partition: u32,
        name: &str,
        def: Option<&IndexDef>,
    ) -> Result<bool, TableError> {
        let url = |api: &str| {
            format!("{api}/v1/tables/{}/indexes/{}", self.def.name, utf8_percent_encode(name, NON_ALPHANUMERIC))
        };
        let body = def.map(|def| IndexBody { path: def.path_text(), kind: def.kind });
        let request = |http: &reqwest::Client, api: &str| {
            let query = [("partition", partition.to_string())];
            match &body {
                Some(body) => http.put(url(api)).query(&query).json(body),
                None => http.delete(url(api)).query(&query),
            }
        };
        match self.serve(partition, request).await? {
            Served::Here(topic) => {
                let (name, def) = (name.to_string(), def.cloned());
                blocking(move || {
                    let commit = match &def {
                        Some(def) => topic.declare_index(&name, def)?,
                        None => topic.drop_index(&name)?,
                    };
                    Ok(commit.is_some())
                })
                .await
            }
            Served::There(response) if response.status() == StatusCode::NOT_FOUND && def.is_none() => Ok(false),
            Served::There(response) if response.status().is_success() => {
                let changed: IndexChanged = response.json().await.map_err(|e| self.unreadable_doc(e))?;
                Ok(changed.cid.is_some())
            }
            Served::There(response) => Err(refusal(response).await),
        }
    }

    /// The indexes each partition's copy holds (a few partitions at once), and the partitions
    /// no holder of which answered.
    pub async fn indexes(&self) -> (Vec<(u32, PartitionIndexes)>, Vec<FailedPartition>) {
        use futures::StreamExt as _;
        let outcomes: Vec<(u32, Result<PartitionIndexes, TableError>)> = futures::stream::iter(0..self.def.partitions)
            .map(|p| async move { (p, self.indexes_in(p).await) })
            .buffered(LIST_FANOUT_MAX)
            .collect()
            .await;
        let (mut held, mut failed) = (Vec::new(), Vec::new());
        for (partition, outcome) in outcomes {
            match outcome {
                Ok(indexes) => held.push((partition, indexes)),
                Err(error) => failed.push(FailedPartition { error: error.to_string(), partition }),
            }
        }
        (held, failed)
    }

    /// The indexes a copy of `partition` holds.
    pub async fn indexes_in(&self, partition: u32) -> Result<PartitionIndexes, TableError> {
        let url = |api: &str| format!("{api}/v1/tables/{}/indexes", self.def.name);
        let query = [("partition", partition.to_string())];
        match self.serve(partition, |http, api| http.get(url(api)).query(&query)).await? {
            Served::Here(topic) => Ok(topic.indexes().into_iter().map(IndexEntry::from).collect()),
            Served::There(response) if response.status().is_success() => {
                let listed: crate::wire::TableIndexes = response.json().await.map_err(|e| self.unreadable_doc(e))?;
                Ok(listed.indexes.into_iter().map(|index| index.entry).collect())
            }
            Served::There(response) => Err(refusal(response).await),
        }
    }
}

/// The order `text` names: a field's path, descending when it starts with `-`.
pub(crate) fn parse_order(text: &str) -> Result<Order, String> {
    let (descending, path) = match text.strip_prefix('-') {
        Some(path) => (true, path),
        None => (false, text),
    };
    let path: Vec<String> = path.split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("order {text:?} names no field: write order=PATH or order=-PATH"));
    }
    Ok(Order { path, descending })
}

/// The body of a document batch holding `changes` (keys as UTF-8 text).
fn doc_batch_body(changes: &[(Vec<u8>, DocBatchOp)]) -> serde_json::Value {
    let entries = changes
        .iter()
        .map(|(key, change)| {
            let key = String::from_utf8_lossy(key);
            match change {
                DocBatchOp::Put(doc) => serde_json::json!({ "key": key, "put": doc }),
                DocBatchOp::Patch(patch) => serde_json::json!({ "key": key, "patch": patch }),
                DocBatchOp::Delete => serde_json::json!({ "key": key, "delete": true }),
            }
        })
        .collect();
    serde_json::Value::Array(entries)
}

impl Table {
    /// Applies `changes` (document puts, merge patches and deletes): split by partition, each
    /// partition's part written on its owners as one block (several partitions at once) and
    /// acknowledged as [`Table::put`] is. One outcome per partition the batch touches, in
    /// partition order; one failing leaves the others applied.
    pub async fn doc_batch(&self, changes: Vec<(Vec<u8>, DocBatchOp)>) -> Vec<PartitionBatched> {
        use futures::StreamExt as _;
        let mut parts: std::collections::BTreeMap<u32, Vec<(Vec<u8>, DocBatchOp)>> = std::collections::BTreeMap::new();
        for (key, change) in changes {
            parts.entry(partition_of(&key, self.def.partitions)).or_default().push((key, change));
        }
        let mut outcomes: Vec<PartitionBatched> = futures::stream::iter(parts)
            .map(|(partition, part)| self.doc_batch_partition(partition, part))
            .buffer_unordered(LIST_FANOUT_MAX)
            .collect()
            .await;
        outcomes.sort_by_key(|outcome| outcome.partition);
        outcomes
    }

    /// One partition's part of [`Table::doc_batch`].
    async fn doc_batch_partition(&self, partition: u32, part: Vec<(Vec<u8>, DocBatchOp)>) -> PartitionBatched {
        let ops = part.len();
        let body = doc_batch_body(&part);
        let mut query = self.write_query();
        query.push(("partition", partition.to_string()));
        let url = |api: &str| format!("{api}/v1/tables/{}/docs", self.def.name);
        let request = |http: &reqwest::Client, api: &str| http.post(url(api)).query(&query).json(&body);
        match self.serve(partition, request).await {
            Ok(Served::Here(topic)) => {
                let acked = self.doc_batch_here(partition, &topic, part).await;
                batch_outcome(partition, ops, acked)
            }
            Ok(Served::There(response)) => part_answered(partition, ops, response).await,
            Err(error) => batch_outcome(partition, ops, Err(error)),
        }
    }

    /// Applies `part` to this node's copy `topic` of `partition` and waits for its
    /// acknowledgement.
    pub(crate) async fn doc_batch_here(
        &self,
        partition: u32,
        topic: &NodeTopic,
        part: Vec<(Vec<u8>, DocBatchOp)>,
    ) -> Result<Acked, TableError> {
        let copy = topic.clone();
        let commit = blocking(move || Ok(copy.doc_batch(&part, None)?)).await?;
        self.acknowledge(partition, topic, commit).await
    }
}
