//! Reads and writes of a table, served from the partition this node holds or sent to the
//! partition's holders.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;

use super::{
    FORWARDED_HEADER, FORWARDED_LAST, Member, PROXIED_HEADER, TableDef, TableError, Tables, owners, partition_of,
    partition_topic,
};
use crate::Node;
use crate::auth::{MEMBER_PROOF_HEADER, ProvenRequest};
use crate::causal::{Ack, CAUSAL_HEADER, CausalToken, Scope, wait_holds};
use crate::node::NodeTopic;
use crate::wire::{ErrorBody, FailedPartition, Page, WirePeerId};

/// A write applied to a table: the reply a holder sends, so its type is the API's.
pub use crate::wire::Written;

/// A table to read and write through: every call goes to the key's partition, on this node
/// when it holds it, or else to the partition's holders in placement order.
#[derive(Clone)]
pub struct Table {
    pub(super) node: Node,
    pub(super) def: TableDef,
    /// Routes by this node's own placement even just after it joined (a request another
    /// member handed over): a request is handed over at most once.
    direct: bool,
    /// The copies a write waits for; `None`: the node's `write_ack`, at most the replicas.
    ack: Option<Ack>,
    /// What a read's copy must hold: the causal token the caller read or wrote at.
    pub(super) after: CausalToken,
}

/// A value read from a table, with the causal token it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The key's value, `None` when it has none.
    pub value: Option<Vec<u8>>,
    /// The token to pass to the next read ([`Table::after`]) so it sees at least this.
    pub token: CausalToken,
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
    /// Partitions no copy of which answered: none of their keys are in the page.
    pub failed: Vec<FailedPartition>,
    /// The causal token the page was read at.
    pub token: CausalToken,
}

/// Most partitions a listing asks at once.
pub(super) const LIST_FANOUT_MAX: usize = 16;

/// Longest a request waits for a copy still catching up when no other copy is left to ask.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Longest a copy that is not a read's last resort waits to hold the read's causal token before
/// the read moves to the next copy.
pub(crate) const CAUSAL_HOP_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
/// One copy of a partition a request may be served from.
pub(super) enum Hop {
    /// This node's copy.
    Here(NodeTopic),
    /// A holder's copy.
    There(Member),
    /// Another member, which routes the request itself.
    Via(Member),
}

/// Where a request was served.
pub(super) enum Served {
    /// From this node's copy: the caller does the work.
    Here(NodeTopic),
    /// By a holder, whose answer this is.
    There(reqwest::Response),
}

impl Table {
    pub(super) fn new(node: Node, def: TableDef) -> Table {
        Table { node, def, direct: false, ack: None, after: CausalToken::default() }
    }

    /// This table, its writes waiting for `ack` copies: a 400 ([`TableError::Invalid`]) when
    /// that is more than the table's replicas.
    pub fn with_ack(self, ack: Ack) -> Result<Table, TableError> {
        if let Ack::Copies(copies) = ack
            && copies > self.def.replicas
        {
            return Err(TableError::Invalid(format!(
                "ack {copies} is more than the {} replicas of table {}",
                self.def.replicas, self.def.name
            )));
        }
        Ok(Table { ack: Some(ack), ..self })
    }

    /// This table, its reads served only by copies that hold what `token` names (a write's or
    /// an earlier read's token): read-your-writes and monotonic reads through any member.
    pub fn after(self, token: CausalToken) -> Table {
        Table { after: token, ..self }
    }

    /// The copies a write waits for.
    pub(super) fn ack(&self) -> Ack {
        self.ack.unwrap_or(match self.node.inner().config.write_ack {
            Ack::Copies(copies) => Ack::Copies(copies.min(self.def.replicas)),
            Ack::All => Ack::All,
        })
    }

    /// The heads a read of `partition` waits for.
    pub(crate) fn wanted(&self, partition: u32) -> Vec<canopy_crdt::Cid> {
        self.after.heads(Scope::Partition(partition))
    }

    /// The query a read of `partition` carries to a holder: what the read waits for.
    pub(super) fn query(&self, partition: u32) -> Vec<(&'static str, String)> {
        let wanted = self.wanted(partition);
        if wanted.is_empty() {
            return Vec::new();
        }
        vec![("causal", CausalToken::of(Scope::Partition(partition), wanted).to_string())]
    }

    /// The query a write carries to a holder: its ack level.
    pub(super) fn write_query(&self) -> Vec<(&'static str, String)> {
        vec![("ack", self.ack().to_string())]
    }

    /// This table, routing by this node's own placement even while it has just joined: for a
    /// request another member handed over, so that it is handed over at most once.
    pub(crate) fn direct(self) -> Table {
        Table { direct: true, ..self }
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

    /// Sets `key` to `value` on the key's partition, once as many owners as the ack level asks
    /// hold it.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<Written, TableError> {
        let partition = self.partition_of(key);
        let query = self.write_query();
        let request =
            |http: &reqwest::Client, api: &str| http.put(self.key_url(api, key)).query(&query).body(value.clone());
        match self.serve(partition, request).await? {
            Served::Here(topic) => {
                let key = key.as_bytes().to_vec();
                let copy = topic.clone();
                let commit = blocking(move || Ok(copy.put(key, value)?)).await?;
                self.written_here(partition, &topic, commit).await
            }
            Served::There(response) => self.written(partition, response).await,
        }
    }

    /// The value of `key`, `None` when it has none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, TableError> {
        Ok(self.read(key).await?.value)
    }

    /// The value of `key` and the causal token it was read at, from a copy that holds what
    /// [`Table::after`] names.
    pub async fn read(&self, key: &str) -> Result<Read, TableError> {
        let partition = self.partition_of(key);
        let query = self.query(partition);
        match self.serve(partition, |http, api| http.get(self.key_url(api, key)).query(&query)).await? {
            Served::Here(topic) => {
                let key = key.as_bytes().to_vec();
                let copy = topic.clone();
                let value = blocking(move || Ok(copy.get(&key)?)).await?;
                Ok(Read { value, token: self.read_at(partition, &topic) })
            }
            Served::There(response) => {
                let token = self.token_from(partition, &response);
                match response.status() {
                    StatusCode::NOT_FOUND => Ok(Read { value: None, token }),
                    status if status.is_success() => Ok(Read { value: Some(body(response).await?), token }),
                    _ => Err(refusal(response).await),
                }
            }
        }
    }

    /// Deletes `key`; `None` when it had no value.
    pub async fn delete(&self, key: &str) -> Result<Option<Written>, TableError> {
        let partition = self.partition_of(key);
        let query = self.write_query();
        match self.serve(partition, |http, api| http.delete(self.key_url(api, key)).query(&query)).await? {
            Served::Here(topic) => {
                let key = key.as_bytes().to_vec();
                let copy = topic.clone();
                match blocking(move || Ok(copy.delete(key)?)).await? {
                    Some(commit) => self.written_here(partition, &topic, commit).await.map(Some),
                    None => Ok(None),
                }
            }
            Served::There(response) if response.status() == StatusCode::NOT_FOUND => Ok(None),
            Served::There(response) => self.written(partition, response).await.map(Some),
        }
    }

    /// The token a read of `partition` from this node's copy `topic` gives: the caller's, with
    /// what the copy holds now (at least what the read saw) in the partition's place.
    pub(crate) fn read_at(&self, partition: u32, topic: &NodeTopic) -> CausalToken {
        let heads = topic.heads().into_iter().map(|head| head.cid);
        self.after.clone().with(Scope::Partition(partition), heads)
    }

    /// The token a holder's answer for `partition` carries, merged into the caller's.
    pub(super) fn token_from(&self, partition: u32, response: &reqwest::Response) -> CausalToken {
        let holder: Option<CausalToken> =
            response.headers().get(CAUSAL_HEADER).and_then(|value| value.to_str().ok()?.parse().ok());
        match holder {
            Some(holder) => {
                self.after.clone().with(Scope::Partition(partition), holder.heads(Scope::Partition(partition)))
            }
            None => self.after.clone(),
        }
    }

    /// Keys starting with `prefix`, strictly after `after`, at most `limit`, in key order across
    /// every partition: each partition is asked for its first `limit` and the pages merged.
    /// A partition no copy of which answers is named in the listing's `failed` rather than
    /// failing it, unless every partition fails.
    pub async fn list(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Listing, TableError> {
        use futures::StreamExt as _;
        let pages: Vec<(u32, Result<Listing, TableError>)> = futures::stream::iter(0..self.def.partitions)
            .map(|p| async move { (p, self.list_partition(p, prefix, after, limit).await) })
            .buffered(LIST_FANOUT_MAX)
            .collect()
            .await;
        let (answered, failed, token) = self.gather(pages)?;
        Ok(Listing { failed, token, ..merge_pages(answered, limit) })
    }

    /// Sorts the answers of a fan-out over partitions: the pages that came, the partitions
    /// that failed (each with its error), and the token the pages read at merged into the
    /// caller's. When no partition answered: its error if only one was asked, else every
    /// partition's.
    pub(super) fn gather(
        &self,
        pages: Vec<(u32, Result<Listing, TableError>)>,
    ) -> Result<(Vec<Listing>, Vec<FailedPartition>, CausalToken), TableError> {
        let (mut answered, mut failed, mut first_error) = (Vec::new(), Vec::new(), None);
        let mut token = self.after.clone();
        for (partition, page) in pages {
            match page {
                Ok(page) => {
                    token = token.with(Scope::Partition(partition), page.token.heads(Scope::Partition(partition)));
                    answered.push(page);
                }
                Err(error) => {
                    failed.push(FailedPartition { error: error.to_string(), partition });
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) if answered.is_empty() && failed.len() == 1 => Err(error),
            Some(_) if answered.is_empty() => Err(TableError::NoneAnswered {
                table: self.def.name.clone(),
                failures: failed.into_iter().map(|failure| (failure.partition, failure.error)).collect(),
            }),
            _ => Ok((answered, failed, token)),
        }
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
        query.extend(self.query(partition).into_iter().map(|(name, value)| (name.to_string(), value)));
        let url = |api: &str| format!("{api}/v1/tables/{}/kv", self.def.name);
        match self.serve(partition, |http, api| http.get(url(api)).query(&query)).await? {
            Served::Here(topic) => {
                let (prefix, after) = (prefix.to_vec(), after.map(<[u8]>::to_vec));
                let copy = topic.clone();
                let page = blocking(move || Ok(copy.query(&prefix, after.as_deref(), limit)?)).await?;
                let entries = page.entries.into_iter().map(|(key, value)| TableEntry { key, value }).collect();
                Ok(Listing { entries, next: page.next, failed: Vec::new(), token: self.read_at(partition, &topic) })
            }
            Served::There(response) => {
                if !response.status().is_success() {
                    return Err(refusal(response).await);
                }
                let token = self.token_from(partition, &response);
                let page: Page = response.json().await.map_err(|e| self.unreadable(partition, e))?;
                let unreadable = |e| self.unreadable(partition, e);
                let mut entries = Vec::with_capacity(page.entries.len());
                for entry in &page.entries {
                    entries.push(TableEntry {
                        key: entry.key_bytes().map_err(unreadable)?,
                        value: entry.value_bytes().map_err(unreadable)?,
                    });
                }
                Ok(Listing { entries, next: page.next_bytes().map_err(unreadable)?, failed: Vec::new(), token })
            }
        }
    }

    /// This node's peer id.
    pub(crate) fn me(&self) -> WirePeerId {
        WirePeerId(self.node.inner().transport.peer_id())
    }

    pub(super) fn tables(&self) -> Result<Arc<Tables>, TableError> {
        self.node.part::<Tables>().ok_or(TableError::NotEnabled)
    }

    /// This node's copy of `partition` to serve a request from: the topic when the node holds
    /// it, or when the partition is placed on it or the request is a sender's last resort
    /// (`anyway`): the node then takes the partition on at once. A copy taken on this way
    /// catches up before it serves ([`Table::caught_up`]), and one taken on without being
    /// placed here is handed off again once its owners hold what it holds. Blocks briefly (a
    /// read of the members, perhaps a subscription).
    pub fn local_copy(&self, partition: u32, anyway: bool) -> Result<Option<NodeTopic>, TableError> {
        if let Some(topic) = self.held(partition) {
            return Ok(Some(topic));
        }
        let tables = self.tables()?;
        let placed_here = || -> Result<bool, TableError> {
            let owners = owners(&self.def.name, partition, self.def.replicas, &tables.members()?);
            Ok(owners.iter().any(|member| member.peer_id == tables.me.peer_id))
        };
        let placed = placed_here()?;
        if anyway || placed {
            let topic = partition_topic(&self.def.name, partition);
            if !placed {
                tables.strays.lock().expect("strays lock").insert(topic.clone());
            }
            tables.take_on(&self.node, &[&topic])?;
            return Ok(self.held(partition));
        }
        Ok(None)
    }

    /// Waits until this node's copy `topic` has caught up, at most [`CATCH_UP_WAIT`]: a copy
    /// taken on a moment ago is usually a few round trips from complete, and the partition's
    /// earlier holder, which still has everything, may no longer be among its owners.
    pub async fn wait_caught_up(&self, topic: &NodeTopic) {
        if self.tables().is_ok_and(|tables| tables.caught_up_now(topic) == Some(true)) {
            return;
        }
        let started = tokio::time::Instant::now();
        while started.elapsed() < CATCH_UP_WAIT {
            let (table, copy) = (self.clone(), topic.clone());
            if blocking(move || Ok(table.caught_up(&copy))).await.unwrap_or(true) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Whether this node's copy `topic` of a partition has caught up with the other holders.
    pub fn caught_up(&self, topic: &NodeTopic) -> bool {
        self.tables().is_ok_and(|tables| tables.caught_up(topic))
    }

    /// [`Table::caught_up`] from what is in memory alone: `None` when the store must be asked.
    pub(crate) fn caught_up_now(&self, topic: &NodeTopic) -> Option<bool> {
        self.tables().ok()?.caught_up_now(topic)
    }

    /// The order in which `partition`'s copies are tried: its owners in placement order (this
    /// node among them when it is one), then this node's copy when it is still catching up or
    /// when the node holds one without being an owner (a partition placed elsewhere since).
    /// Every request for a key goes to its first owner while that one answers, so a client sees
    /// its own writes through any node.
    async fn hops(&self, partition: u32) -> Result<Vec<Hop>, TableError> {
        // Most requests need no store read to be routed: the members and copies as last read.
        if let Some(hops) = self.hops_with(partition, false)? {
            return Ok(hops);
        }
        let table = self.clone();
        blocking(move || Ok(table.hops_with(partition, true)?.unwrap_or_default())).await
    }

    /// [`Table::hops`], working from what is in memory alone unless `may_block`: `None` when
    /// that is not enough (the members topic changed since last read, a copy placed here must
    /// be taken on, or whether this node's copy caught up needs the store).
    pub(super) fn hops_with(&self, partition: u32, may_block: bool) -> Result<Option<Vec<Hop>>, TableError> {
        let tables = self.tables()?;
        let members = if may_block {
            tables.members()?
        } else {
            match tables.members_cached() {
                Some(members) => members,
                None => return Ok(None),
            }
        };
        if !tables.settled() && !self.direct {
            // A node that joined a moment ago may not know every member yet, so it cannot
            // trust its own placement: it hands the request to the other members it knows
            // (each routes it by its own placement), and serves it itself only when it knows
            // no other.
            let others: Vec<Hop> = members
                .iter()
                .filter(|member| member.peer_id != tables.me.peer_id)
                .map(|member| Hop::Via(member.clone()))
                .collect();
            if !others.is_empty() {
                return Ok(Some(others));
            }
        }
        let mut owners = owners(&self.def.name, partition, self.def.replicas, &members);
        // After a member joins, the partition's earlier owners still hold caught-up copies while
        // the new owner catches up: they are asked after the owners, and the first owner once
        // more at the end, as the last resort.
        let primary = owners.first().cloned();
        let mut earlier_added = false;
        for earlier in tables.earlier_memberships(&self.node, &members) {
            for owner in super::owners(&self.def.name, partition, self.def.replicas, &earlier) {
                if !owners.contains(&owner) {
                    owners.push(owner);
                    earlier_added = true;
                }
            }
        }
        if let Some(primary) = primary.filter(|p| earlier_added && p.peer_id != tables.me.peer_id) {
            owners.push(primary);
        }
        let mut hops = Vec::with_capacity(owners.len() + 1);
        let mut behind = None;
        for owner in owners {
            if owner.peer_id != tables.me.peer_id {
                hops.push(Hop::There(owner));
                continue;
            }
            let copy = match (self.held(partition), may_block) {
                (Some(topic), _) => Some(topic),
                (None, true) => self.local_copy(partition, false)?,
                // Placed here but not held: taking it on subscribes, which blocks.
                (None, false) if owners_include_me(&tables, &self.def, partition, &members) => return Ok(None),
                (None, false) => None,
            };
            let Some(topic) = copy else { continue };
            let caught_up = if may_block { Some(tables.caught_up(&topic)) } else { tables.caught_up_now(&topic) };
            match caught_up {
                Some(true) => hops.push(Hop::Here(topic)),
                Some(false) => behind = Some(topic),
                None => return Ok(None),
            }
        }
        let here = hops.iter().any(|hop| matches!(hop, Hop::Here(_)));
        if let Some(topic) = behind.or_else(|| self.held(partition).filter(|_| !here)) {
            hops.push(Hop::Here(topic));
        }
        Ok(Some(hops))
    }

    /// Serves a request for `partition` from the first copy that takes it: this node's, or a
    /// holder's over HTTP (`request` builds it for the holder's API URL). A holder that answers
    /// 421 (it holds no copy, or one still catching up), fails with a 5xx or cannot be reached
    /// is passed over.
    pub(super) async fn serve(
        &self,
        partition: u32,
        request: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<Served, TableError> {
        let tables = self.tables()?;
        let http = &tables.http;
        let mut tried = Vec::new();
        let hops = self.hops(partition).await?;
        let count = hops.len();
        let wanted = self.wanted(partition);
        for (index, hop) in hops.into_iter().enumerate() {
            let last = index + 1 == count;
            let (owner, header) = match hop {
                Hop::Here(topic) => {
                    self.wait_caught_up(&topic).await;
                    let wait = if last { self.causal_wait() } else { CAUSAL_HOP_WAIT };
                    if wanted.is_empty() || wait_holds(topic.crdt(), &wanted, wait).await {
                        return Ok(Served::Here(topic));
                    }
                    if last {
                        self.count_causal_missed();
                    }
                    tried.push("this node's copy does not hold the causal token's heads yet".to_string());
                    continue;
                }
                // The last holder asked serves from its copy even while that copy catches up.
                Hop::There(owner) if last => (owner, (FORWARDED_HEADER, FORWARDED_LAST)),
                Hop::There(owner) => (owner, (FORWARDED_HEADER, "1")),
                Hop::Via(member) => (member, (PROXIED_HEADER, "1")),
            };
            let sent = match self.proven(request(http, &owner.api).header(header.0, header.1)) {
                Ok(request) => http.execute(request).await,
                Err(error) => Err(error),
            };
            match sent {
                // A write the holder applied but could not get acknowledged as asked: trying
                // the next holder would write it twice.
                Ok(response) if response.status() == StatusCode::GATEWAY_TIMEOUT => {
                    return Ok(Served::There(response));
                }
                Ok(response)
                    if response.status() == StatusCode::MISDIRECTED_REQUEST || response.status().is_server_error() =>
                {
                    let status = response.status();
                    let body = response.bytes().await.unwrap_or_default();
                    match ErrorBody::message_in(&body) {
                        Some(message) => tried.push(format!("{} answered {status}: {message}", owner.peer_id)),
                        None => tried.push(format!("{} answered {status}", owner.peer_id)),
                    }
                }
                Ok(response) => return Ok(Served::There(response)),
                Err(error) => tried.push(format!("{} unreachable: {error}", owner.peer_id)),
            }
        }
        let reason = if tried.is_empty() { "no member holds it yet".to_string() } else { tried.join("; ") };
        Err(TableError::Unavailable { table: self.def.name.clone(), partition, reason })
    }

    /// The request with this member's proof: the receiver takes its forwarding headers, and
    /// serves it without an API token, only because the proof shows a member sent it.
    pub(super) fn proven(&self, builder: reqwest::RequestBuilder) -> Result<reqwest::Request, reqwest::Error> {
        let mut request = builder.build()?;
        let url = request.url();
        let path_and_query = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_string(),
        };
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
        let proven = ProvenRequest {
            method: request.method().as_str(),
            path_and_query: &path_and_query,
            forwarding: [header(FORWARDED_HEADER), header(PROXIED_HEADER)],
            body: request.body().and_then(reqwest::Body::as_bytes).unwrap_or_default(),
        };
        let proof = self.node.inner().guard.prove(&proven, crate::auth::now_ms());
        let value = reqwest::header::HeaderValue::from_str(&proof).expect("a proof is plain ASCII");
        request.headers_mut().insert(MEMBER_PROOF_HEADER, value);
        Ok(request)
    }

    fn key_url(&self, api: &str, key: &str) -> String {
        format!("{api}/v1/tables/{}/kv/{}", self.def.name, utf8_percent_encode(key, NON_ALPHANUMERIC))
    }

    /// Counts a read whose last copy did not hold its causal token in time.
    pub(crate) fn count_causal_missed(&self) {
        self.node.inner().counters.causal_missed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Longest a read's last resort waits to hold the read's causal token.
    pub(crate) fn causal_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.node.inner().config.causal_wait_ms)
    }

    async fn written(&self, partition: u32, response: reqwest::Response) -> Result<Written, TableError> {
        let written: Written = self.write_reply(partition, response).await?;
        // The partition is the key's, as this node places it.
        Ok(Written { partition, ..written })
    }

    /// A holder's reply to a write of `partition` it applied: a 504 as the write it was
    /// (applied, under-acknowledged), another refusal as what it says.
    pub(super) async fn write_reply<T: serde::de::DeserializeOwned>(
        &self,
        partition: u32,
        response: reqwest::Response,
    ) -> Result<T, TableError> {
        if response.status() == StatusCode::GATEWAY_TIMEOUT {
            let bytes = response.bytes().await.unwrap_or_default();
            if let Ok(ErrorBody { acknowledged: Some(acknowledged), causal_token: Some(causal_token), .. }) =
                serde_json::from_slice::<ErrorBody>(&bytes)
            {
                return Err(TableError::NotAcknowledged {
                    table: self.def.name.clone(),
                    partition,
                    acknowledged,
                    asked: self.ack().copies(self.def.replicas as usize) as u32,
                    causal_token,
                });
            }
            let message = ErrorBody::message_in(&bytes).unwrap_or_else(|| "status 504".to_string());
            return Err(TableError::Refused { status: 504, message });
        }
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        response.json().await.map_err(|e| self.unreadable(partition, e))
    }

    fn unreadable(&self, partition: u32, error: impl std::fmt::Display) -> TableError {
        TableError::Unavailable {
            table: self.def.name.clone(),
            partition,
            reason: format!("a holder's answer is unreadable: {error}"),
        }
    }
}

/// The page of a listing that partitions' pages (each in key order, from the same `after`) make,
/// at most `limit` entries. A partition's page that stops short (it has a `next`) bounds what
/// the listing may say: keys after its last one may be missing from it, so the listing ends
/// there, and its `next` continues from there; no key is skipped however the pages were cut.
pub(super) fn merge_pages(pages: Vec<Listing>, limit: usize) -> Listing {
    let horizon: Option<Vec<u8>> = pages.iter().filter_map(|page| page.next.clone()).min();
    let mut entries: Vec<TableEntry> = pages
        .into_iter()
        .flat_map(|page| page.entries)
        .filter(|entry| horizon.as_ref().is_none_or(|horizon| entry.key <= *horizon))
        .collect();
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let more = horizon.is_some() || entries.len() > limit;
    entries.truncate(limit);
    let next = if more { entries.last().map(|entry| entry.key.clone()).or(horizon) } else { None };
    Listing { entries, next, ..Listing::default() }
}

/// Whether `partition` of `def` is placed on this node among `members`.
fn owners_include_me(tables: &Tables, def: &TableDef, partition: u32, members: &[Member]) -> bool {
    owners(&def.name, partition, def.replicas, members).iter().any(|owner| owner.peer_id == tables.me.peer_id)
}

/// The refusal a holder answered with: its status and its error message.
pub(super) async fn refusal(response: reqwest::Response) -> TableError {
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    let message = ErrorBody::message_in(&body).unwrap_or_else(|| format!("status {status}"));
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
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, TableError> + Send + 'static,
) -> Result<T, TableError> {
    tokio::task::spawn_blocking(work).await.map_err(|_| TableError::Node(crate::NodeError::Closed))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str], next: bool) -> Listing {
        let entries: Vec<TableEntry> =
            keys.iter().map(|key| TableEntry { key: key.as_bytes().to_vec(), value: b"v".to_vec() }).collect();
        let next = if next { entries.last().map(|entry| entry.key.clone()) } else { None };
        Listing { entries, next, ..Listing::default() }
    }

    fn keys(listing: &Listing) -> Vec<String> {
        listing.entries.iter().map(|entry| String::from_utf8(entry.key.clone()).unwrap()).collect()
    }

    /// Pages a listing through `partitions` (each a sorted key list, cut at `cap` per page) with
    /// `limit`, as a client following `next` does.
    fn list_all(partitions: &[Vec<String>], cap: usize, limit: usize) -> Vec<String> {
        let mut after: Option<String> = None;
        let mut seen = Vec::new();
        loop {
            let pages = partitions
                .iter()
                .map(|keys| {
                    let rest: Vec<&str> = keys
                        .iter()
                        .filter(|key| after.as_ref().is_none_or(|after| key.as_str() > after.as_str()))
                        .map(String::as_str)
                        .collect();
                    let take = rest.len().min(cap).min(limit);
                    page(&rest[..take], rest.len() > take)
                })
                .collect();
            let listing = merge_pages(pages, limit);
            seen.extend(keys(&listing));
            match listing.next {
                Some(next) => after = Some(String::from_utf8(next).unwrap()),
                None => return seen,
            }
        }
    }

    #[test]
    fn a_listing_skips_no_key_whatever_the_limit_and_the_partitions_caps() {
        // 600 keys over three partitions as tables place them; each partition answers at most
        // 100 keys a page (as `query_limit_max` caps them), and callers ask for fewer and more.
        let all: Vec<String> = (0..600).map(|i| format!("k{i:04}")).collect();
        let partitions: Vec<Vec<String>> = (0..3)
            .map(|p| all.iter().filter(|key| super::super::partition_of(key.as_bytes(), 3) == p).cloned().collect())
            .collect();
        for limit in [1, 7, 100, 150, 1000] {
            assert_eq!(list_all(&partitions, 100, limit), all, "limit {limit}");
        }
    }

    #[test]
    fn a_page_that_stops_short_bounds_the_listing() {
        let listing = merge_pages(vec![page(&["a", "c", "e"], true), page(&["b", "d", "f", "g"], false)], 10);
        assert_eq!(keys(&listing), ["a", "b", "c", "d", "e"]);
        assert_eq!(listing.next, Some(b"e".to_vec()));
        let whole = merge_pages(vec![page(&["a", "c"], false), page(&["b"], false)], 10);
        assert_eq!((keys(&whole), whole.next), (vec!["a".to_string(), "b".into(), "c".into()], None));
        let cut = merge_pages(vec![page(&["a", "c"], false), page(&["b"], false)], 2);
        assert_eq!((keys(&cut), cut.next), (vec!["a".to_string(), "b".into()], Some(b"b".to_vec())));
    }
}
