//! Writes to a table beyond one key: a batch split by partition and sent to each partition's
//! owners, and the acknowledgement a write waits for (the other owners asked whether they hold
//! its block).

use std::collections::{BTreeMap, BTreeSet};

use reqwest::StatusCode;

use super::route::{CAUSAL_HOP_WAIT, Hop, Served, blocking};
use super::{FORWARDED_HEADER, Member, Table, TableError, Written, owners, partition_of};
use crate::causal::{CausalToken, Scope};
use crate::node::NodeTopic;
use crate::wire::{self, ErrorBody, PartitionBatched, WireCid};
use crate::{Batch, Commit};

/// Most partitions (or members, for the parts sent to one member together) of one batch
/// written at once.
const BATCH_FANOUT_MAX: usize = 16;

/// A batch's operations by partition.
type Parts = BTreeMap<u32, Vec<canopy_crdt::Op>>;

/// What a write to one partition left: the copies holding it and its causal token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    /// The block it made, `None` when it changed nothing.
    pub commit: Option<Commit>,
    /// The partition's owners holding it.
    pub acknowledged: u32,
    /// The heads that include it.
    pub token: CausalToken,
}

impl Table {
    /// Applies `batch`: its operations split by partition, each partition's part written on
    /// its owners (several partitions at once) and acknowledged as [`Table::put`] is. One
    /// outcome per partition the batch touches, in partition order; one failing leaves the
    /// others applied.
    ///
    /// The parts whose first holder is another member go to it in one request; a part it
    /// cannot serve (it holds no caught-up copy, or failed) goes on alone through the
    /// partition's other holders, as does every part when the request fails.
    pub async fn batch(&self, batch: Batch) -> Vec<PartitionBatched> {
        use futures::FutureExt as _;
        use futures::StreamExt as _;
        let mut parts: BTreeMap<u32, Vec<canopy_crdt::Op>> = BTreeMap::new();
        for op in batch.into_ops() {
            parts.entry(partition_of(op.key(), self.def.partitions)).or_default().push(op);
        }
        let mut at_member: BTreeMap<String, (Member, Parts)> = BTreeMap::new();
        let mut alone = Vec::new();
        for (partition, part) in parts {
            match self.first_holder(partition) {
                Some(member) => {
                    let entry = at_member.entry(member.api.clone()).or_insert_with(|| (member, BTreeMap::new()));
                    entry.1.insert(partition, part);
                }
                None => alone.push((partition, part)),
            }
        }
        let mut writes: Vec<futures::future::BoxFuture<'_, Vec<PartitionBatched>>> = Vec::new();
        for (member, parts) in at_member.into_values() {
            writes.push(self.batch_at(member, parts).boxed());
        }
        for (partition, part) in alone {
            writes.push(async move { vec![self.batch_partition(partition, Batch::from(part)).await] }.boxed());
        }
        let mut outcomes: Vec<PartitionBatched> = futures::stream::iter(writes)
            .buffer_unordered(BATCH_FANOUT_MAX)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        outcomes.sort_by_key(|outcome| outcome.partition);
        outcomes
    }

    /// The other member that serves `partition` first, as this node routes it from memory, when
    /// the write waits for no causal token.
    fn first_holder(&self, partition: u32) -> Option<Member> {
        if !self.wanted(partition).is_empty() {
            return None;
        }
        match self.hops_with(partition, false).ok()??.into_iter().next()? {
            Hop::There(member) => Some(member),
            Hop::Here(_) | Hop::Via(_) => None,
        }
    }

    /// The parts of [`Table::batch`] whose first holder is `member`, sent to it in one request.
    async fn batch_at(&self, member: Member, parts: Parts) -> Vec<PartitionBatched> {
        use futures::StreamExt as _;
        let asked: Vec<u32> = parts.keys().copied().collect();
        let named: Vec<String> = asked.iter().map(u32::to_string).collect();
        let ops: Vec<canopy_crdt::Op> = parts.into_values().flatten().collect();
        let batch = Batch::from(ops);
        let answered = match self.tables() {
            Ok(tables) => {
                let mut query = self.write_query();
                query.push(("partitions", named.join(",")));
                let builder = tables
                    .http
                    .post(format!("{}/v1/tables/{}/batch", member.api, self.def.name))
                    .query(&query)
                    .header(reqwest::header::CONTENT_TYPE, wire::CBOR_BATCH)
                    .header(FORWARDED_HEADER, "1")
                    .body(wire::CborBatch::of(&batch).encode());
                match self.proven(builder) {
                    Ok(request) => tables.http.execute(request).await.ok(),
                    Err(_) => None,
                }
            }
            Err(_) => None,
        };
        let mut outcomes = match answered {
            Some(response) if matches!(response.status(), StatusCode::OK | StatusCode::MULTI_STATUS) => {
                response.json::<wire::TableBatched>().await.map(|batched| batched.partitions).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        // What the member did not apply goes on alone through the other holders.
        outcomes.retain(|outcome| !passes_on(outcome.status));
        let applied: BTreeSet<u32> = outcomes.iter().map(|outcome| outcome.partition).collect();
        let mut rest: BTreeMap<u32, Vec<canopy_crdt::Op>> = BTreeMap::new();
        if !asked.iter().all(|partition| applied.contains(partition)) {
            for op in batch.into_ops() {
                let partition = partition_of(op.key(), self.def.partitions);
                if !applied.contains(&partition) {
                    rest.entry(partition).or_default().push(op);
                }
            }
        }
        let retried: Vec<PartitionBatched> = futures::stream::iter(rest)
            .map(|(partition, part)| self.batch_partition(partition, Batch::from(part)))
            .buffer_unordered(BATCH_FANOUT_MAX)
            .collect()
            .await;
        outcomes.extend(retried);
        outcomes
    }

    /// One partition's part of [`Table::batch`].
    async fn batch_partition(&self, partition: u32, part: Batch) -> PartitionBatched {
        let ops = part.len();
        let body = wire::CborBatch::of(&part).encode();
        let mut query = self.write_query();
        query.push(("partition", partition.to_string()));
        let url = |api: &str| format!("{api}/v1/tables/{}/batch", self.def.name);
        let request = |http: &reqwest::Client, api: &str| {
            http.post(url(api)).query(&query).header(reqwest::header::CONTENT_TYPE, wire::CBOR_BATCH).body(body.clone())
        };
        match self.serve(partition, request).await {
            Ok(Served::Here(topic)) => {
                let copy = topic.clone();
                let acked = match blocking(move || Ok(copy.batch(part)?)).await {
                    Ok(commit) => self.acknowledge(partition, &topic, commit).await,
                    Err(error) => Err(error),
                };
                batch_outcome(partition, ops, acked)
            }
            Ok(Served::There(response)) => part_answered(partition, ops, response).await,
            Err(error) => batch_outcome(partition, ops, Err(error)),
        }
    }

    /// A write this node applied to its copy `topic` of `partition`, once acknowledged.
    pub(crate) async fn written_here(
        &self,
        partition: u32,
        topic: &NodeTopic,
        commit: Commit,
    ) -> Result<Written, TableError> {
        let acked = self.acknowledge(partition, topic, Some(commit)).await?;
        Ok(Written {
            acknowledged: acked.acknowledged,
            causal_token: acked.token.to_string(),
            cid: WireCid(commit.cid),
            height: commit.height,
            node: self.me(),
            partition,
        })
    }

    /// Waits until as many of `partition`'s owners as the ack level asks hold `commit` (this
    /// node counting as one when it is an owner), asking the others whether they hold it; a
    /// [`TableError::NotAcknowledged`] when they do not within the node's `ack_timeout_ms`.
    pub(crate) async fn acknowledge(
        &self,
        partition: u32,
        topic: &NodeTopic,
        commit: Option<Commit>,
    ) -> Result<Acked, TableError> {
        use futures::StreamExt as _;
        // The heads are in memory: read after the write, they include it.
        let token = CausalToken::held_by(Scope::Partition(partition), topic.crdt());
        let Some(block) = commit else { return Ok(Acked { commit, acknowledged: 0, token }) };
        let tables = self.tables()?;
        let owners = match tables.members_cached() {
            Some(members) => owners(&self.def.name, partition, self.def.replicas, &members),
            None => {
                let table = self.clone();
                blocking(move || table.placement_of(partition)).await?
            }
        };
        let asked = self.ack().copies(owners.len());
        let mut acknowledged = usize::from(owners.iter().any(|owner| owner.peer_id == tables.me.peer_id));
        if acknowledged >= asked {
            return Ok(Acked { commit, acknowledged: acknowledged as u32, token });
        }
        let timeout = std::time::Duration::from_millis(self.node.inner().config.ack_timeout_ms);
        let question = CausalToken::of(Scope::Partition(partition), [block.cid]);
        let others = owners.into_iter().filter(|owner| owner.peer_id != tables.me.peer_id);
        let mut answers: futures::stream::FuturesUnordered<_> =
            others.map(|owner| self.ask_holds(owner, &question, timeout)).collect();
        let waited = tokio::time::timeout(timeout + CAUSAL_HOP_WAIT, async {
            while let Some(holds) = answers.next().await {
                acknowledged += usize::from(holds);
                if acknowledged >= asked {
                    return;
                }
            }
        })
        .await;
        if waited.is_ok() && acknowledged >= asked {
            self.node.inner().counters.acks_met.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(Acked { commit, acknowledged: acknowledged as u32, token });
        }
        self.node.inner().counters.acks_missed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(TableError::NotAcknowledged {
            table: self.def.name.clone(),
            partition,
            acknowledged: acknowledged as u32,
            asked: asked as u32,
            causal_token: token.to_string(),
        })
    }

    /// Whether `owner` holds what `question` names, waiting there at most `wait`.
    async fn ask_holds(&self, owner: Member, question: &CausalToken, wait: std::time::Duration) -> bool {
        let Ok(tables) = self.tables() else { return false };
        let query = [("causal", question.to_string()), ("wait_ms", wait.as_millis().to_string())];
        let url = format!("{}/v1/tables/{}/holds", owner.api, self.def.name);
        let builder = tables.http.get(url).query(&query).timeout(wait + std::time::Duration::from_secs(1));
        let Ok(request) = self.proven(builder) else { return false };
        match tables.http.execute(request).await {
            Ok(response) if response.status().is_success() => {
                response.json::<wire::Holds>().await.is_ok_and(|answer| answer.holds)
            }
            _ => false,
        }
    }

    /// The owners of `partition` as this node places it now.
    fn placement_of(&self, partition: u32) -> Result<Vec<Member>, TableError> {
        let members = self.tables()?.members()?;
        Ok(owners(&self.def.name, partition, self.def.replicas, &members))
    }
}

/// Whether a part answered with `status` goes on to the partition's next holder, as a request
/// for one partition does: the holder had no caught-up copy or failed before applying it.
fn passes_on(status: u16) -> bool {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    status == StatusCode::MISDIRECTED_REQUEST || (status.is_server_error() && status != StatusCode::GATEWAY_TIMEOUT)
}

/// The outcome of `ops` operations of a batch written to `partition`.
pub(crate) fn batch_outcome(partition: u32, ops: usize, acked: Result<Acked, TableError>) -> PartitionBatched {
    let outcome = PartitionBatched {
        acknowledged: None,
        causal_token: None,
        cid: None,
        error: None,
        ops,
        partition,
        status: StatusCode::OK.as_u16(),
    };
    match acked {
        Ok(acked) => PartitionBatched {
            acknowledged: Some(acked.acknowledged),
            causal_token: Some(acked.token.to_string()),
            cid: acked.commit.map(|commit| WireCid(commit.cid)),
            ..outcome
        },
        Err(TableError::NotAcknowledged { acknowledged, causal_token, .. }) => PartitionBatched {
            acknowledged: Some(acknowledged),
            causal_token: Some(causal_token.clone()),
            error: Some(format!(
                "applied, but only {acknowledged} copies held it in time: read it back with causal={causal_token}"
            )),
            status: StatusCode::GATEWAY_TIMEOUT.as_u16(),
            ..outcome
        },
        Err(error) => PartitionBatched { error: Some(error.to_string()), status: error.status(), ..outcome },
    }
}

/// The outcome of `partition`'s part of a batch (of `ops` operations) that another member
/// answered: a holder answers with its partition's outcome; a member this node handed the
/// request to (just after joining) routes it and answers with the whole batch's.
pub(crate) async fn part_answered(partition: u32, ops: usize, response: reqwest::Response) -> PartitionBatched {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    let routed = serde_json::from_slice::<wire::TableBatched>(&bytes)
        .ok()
        .and_then(|batched| batched.partitions.into_iter().find(|outcome| outcome.partition == partition));
    match serde_json::from_slice::<PartitionBatched>(&bytes).ok().or(routed) {
        Some(outcome) => PartitionBatched { partition, ops, ..outcome },
        None => {
            let error = ErrorBody::message_in(&bytes).unwrap_or_else(|| format!("status {status}"));
            batch_outcome(partition, ops, Err(TableError::Refused { status, message: error }))
        }
    }
}
