//! The table routes: members, the catalog, and keys routed to their partition's holders.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use std::collections::HashMap;

use super::{ApiError, ApiResult, ListQuery, blocking, parse_query};
use crate::Node;
use crate::causal::{CAUSAL_HEADER, CausalToken, Scope, wait_holds};
use crate::tables::route::{CAUSAL_HOP_WAIT, Read};
use crate::tables::write::batch_outcome;
use crate::tables::{
    FORWARDED_HEADER, FORWARDED_LAST, PROXIED_HEADER, Table, TableDef, TableError, Written, partition_of,
    partition_topic,
};
use crate::wire::{self, Page};

impl From<TableError> for ApiError {
    fn from(error: TableError) -> ApiError {
        let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut refusal = ApiError::new(status, error.to_string());
        if let TableError::NotAcknowledged { acknowledged, causal_token, .. } = error {
            refusal.unacknowledged = Some((acknowledged, causal_token));
        }
        refusal
    }
}

pub(super) async fn members(State(node): State<Node>) -> ApiResult<Json<wire::Members>> {
    let members = blocking(move || Ok(node.members()?)).await?;
    let members = members
        .into_iter()
        .filter_map(|crate::Member { peer_id, api, addresses, joined_ms }| {
            Some(wire::Member { addresses, api, joined_ms, peer_id: peer_id.parse().ok()? })
        })
        .collect();
    Ok(Json(wire::Members { members }))
}

/// `POST /v1/admin/drain`: starts draining this member.
pub(super) async fn start_drain(State(node): State<Node>) -> ApiResult<Json<wire::Drain>> {
    let status = blocking(move || Ok(node.drain()?)).await?;
    Ok(Json(drain_reply(status)))
}

/// `GET /v1/admin/drain`: how far this member's drain has come.
pub(super) async fn drain_status(State(node): State<Node>) -> ApiResult<Json<wire::Drain>> {
    let status = blocking(move || Ok(node.drain_status()?)).await?;
    Ok(Json(drain_reply(status)))
}

fn drain_reply(status: crate::tables::DrainStatus) -> wire::Drain {
    wire::Drain {
        awaiting_deletion: status.awaiting_deletion,
        done: status.done(),
        draining: status.draining,
        partitions_held: status.partitions_held,
    }
}

pub(super) async fn list_tables(State(node): State<Node>) -> ApiResult<Json<wire::Tables>> {
    let tables = blocking(move || Ok(node.tables()?)).await?;
    Ok(Json(wire::Tables { tables: tables.into_iter().map(table_def).collect() }))
}

pub(super) async fn create_table(State(node): State<Node>, body: Bytes) -> ApiResult<Response> {
    let body: wire::CreateTable = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "a table is {{\"name\": \"...\", \"partitions\": <1-4096>, \"replicas\": <1-16>}}: {e}"
        ))
    })?;
    let (def, created) = blocking(move || Ok(node.create_table(&body.name, body.partitions, body.replicas)?)).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(table_def(def))).into_response())
}

fn table_def(def: TableDef) -> wire::TableDef {
    wire::TableDef { name: def.name, partitions: def.partitions, replicas: def.replicas }
}

async fn open_table(node: Node, name: String) -> ApiResult<Table> {
    if let Some(table) = node.table_cached(&name) {
        return Ok(table?);
    }
    blocking(move || Ok(node.table(&name)?)).await
}

/// The table a request addresses, routing by this node's own placement when another member
/// handed the request over.
async fn routed_table(node: Node, name: String, headers: &HeaderMap) -> ApiResult<Table> {
    let handed_over = headers.contains_key(PROXIED_HEADER) || forwarded(headers);
    match open_table(node, name).await {
        Ok(table) if headers.contains_key(PROXIED_HEADER) => Ok(table.direct()),
        Ok(table) => Ok(table),
        // The sender knows the table; this node has not heard of it yet. A 404 would read as
        // "no such key": a 421 sends the sender to another member.
        Err(error) if handed_over && error.status == StatusCode::NOT_FOUND => {
            Err(ApiError::new(StatusCode::MISDIRECTED_REQUEST, error.message))
        }
        Err(error) => Err(error),
    }
}

pub(super) async fn show_table(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<wire::TableShown>> {
    let Path(name) = path?;
    let table = open_table(node, name).await?;
    let shown = table.clone();
    // Each partition's owners, and whether a copy is held here and has caught up (which may
    // read the store).
    let (placement, copies) = blocking(move || {
        let placement = shown.placement()?;
        let copies: Vec<(bool, bool)> = (0..placement.len() as u32)
            .map(|partition| match shown.held(partition) {
                Some(topic) => (true, shown.caught_up(&topic)),
                None => (false, false),
            })
            .collect();
        Ok((placement, copies))
    })
    .await?;
    let placement = placement
        .into_iter()
        .zip(copies)
        .enumerate()
        .map(|(partition, (owners, (held_here, caught_up_here)))| {
            let partition = partition as u32;
            wire::Placement {
                held_here,
                caught_up_here,
                owners: owners.into_iter().filter_map(|m| m.peer_id.parse().ok()).collect(),
                partition,
                topic: partition_topic(&table.def().name, partition),
            }
        })
        .collect();
    let def = table.def().clone();
    Ok(Json(wire::TableShown { name: def.name, partitions: def.partitions, placement, replicas: def.replicas }))
}

/// The path of a table key.
pub(super) type KeyPath = Result<Path<(String, String)>, PathRejection>;

/// Whether another node sent this request on a caller's behalf.
pub(super) fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
}

/// The table `headers` and `query` address: routed by this node's own placement when another
/// member handed the request over, writing at the query's `ack` level and reading at its
/// `causal` token.
pub(super) async fn requested_table(
    node: Node,
    name: String,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> ApiResult<Table> {
    let mut table = routed_table(node, name, headers).await?;
    if let Some(text) = query.get("ack") {
        table = table.with_ack(text.parse().map_err(ApiError::bad_request)?)?;
    }
    if let Some(text) = query.get("causal") {
        table = table.after(text.parse::<CausalToken>().map_err(ApiError::bad_request)?);
    }
    Ok(table)
}

/// The partition topic a forwarded request is served from, or a 421 when this node has no copy
/// of it (and it is not placed here), or a copy still catching up or not yet holding the
/// request's causal token, while the sender has other holders to try: the sender then tries
/// the partition's next holder. As the sender's last resort the node serves whatever it placed
/// (taking the partition on if need be), once its copy caught up or after a bounded wait, and
/// answers 503 when its copy does not hold the causal token by then.
pub(super) async fn held_or_misdirected(
    table: &Table,
    partition: u32,
    headers: &HeaderMap,
) -> ApiResult<crate::NodeTopic> {
    let last = headers.get(FORWARDED_HEADER).is_some_and(|value| value == FORWARDED_LAST);
    let (copy, name) = (table.clone(), table.def().name.clone());
    // Most requests find a copy held and caught up with no store read.
    let ready = table.held(partition).filter(|topic| last || table.caught_up_now(topic) == Some(true));
    let topic = match ready {
        Some(topic) => Some(topic),
        None => {
            blocking(move || Ok(copy.local_copy(partition, last)?.filter(|topic| last || copy.caught_up(topic))))
                .await?
        }
    };
    let topic = topic.ok_or_else(|| {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this node holds no caught-up copy of partition {partition} of table {name}"),
        )
    })?;
    if last {
        table.wait_caught_up(&topic).await;
    }
    let wanted = table.wanted(partition);
    let wait = if last { table.causal_wait() } else { CAUSAL_HOP_WAIT };
    if !wanted.is_empty() && !wait_holds(topic.crdt(), &wanted, wait).await {
        if last {
            table.count_causal_missed();
        }
        let status = if last { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::MISDIRECTED_REQUEST };
        return Err(ApiError::new(
            status,
            format!(
                "this node's copy of partition {partition} of table {name} does not hold the causal token's heads yet"
            ),
        ));
    }
    Ok(topic)
}

/// `reply` carrying `token` in its causal-token header.
pub(super) fn with_token(token: &CausalToken, reply: impl IntoResponse) -> Response {
    let mut response = reply.into_response();
    if let Ok(value) = header::HeaderValue::from_str(&token.to_string()) {
        response.headers_mut().insert(CAUSAL_HEADER, value);
    }
    response
}

pub(super) async fn put_key(
    State(node): State<Node>,
    headers: HeaderMap,
    path: KeyPath,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<Written>> {
    let Path((name, key)) = path?;
    let query = parse_query(query.as_deref())?;
    let table = requested_table(node, name, &headers, &query).await?;
    if !forwarded(&headers) {
        return Ok(Json(table.put(&key, body.to_vec()).await?));
    }
    let partition = table.partition_of(&key);
    let topic = held_or_misdirected(&table, partition, &headers).await?;
    let copy = topic.clone();
    let commit = blocking(move || Ok(copy.put(key.into_bytes(), body.to_vec())?)).await?;
    Ok(Json(table.written_here(partition, &topic, commit).await?))
}

pub(super) async fn get_key(
    State(node): State<Node>,
    headers: HeaderMap,
    path: KeyPath,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let Path((name, key)) = path?;
    let query = parse_query(query.as_deref())?;
    let table = requested_table(node, name, &headers, &query).await?;
    let read = if forwarded(&headers) {
        let partition = table.partition_of(&key);
        let topic = held_or_misdirected(&table, partition, &headers).await?;
        let (bytes, copy) = (key.clone().into_bytes(), topic.clone());
        let value = blocking(move || Ok(copy.get(&bytes)?)).await?;
        Read { value, token: table.read_at(partition, &topic) }
    } else {
        table.read(&key).await?
    };
    match read.value {
        Some(value) => Ok(with_token(&read.token, ([(header::CONTENT_TYPE, "application/octet-stream")], value))),
        None => Ok(with_token(
            &read.token,
            ApiError::not_found(format!("key {key:?} not found in table {}", table.def().name)),
        )),
    }
}

pub(super) async fn delete_key(
    State(node): State<Node>,
    headers: HeaderMap,
    path: KeyPath,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Written>> {
    let Path((name, key)) = path?;
    let query = parse_query(query.as_deref())?;
    let table = requested_table(node, name, &headers, &query).await?;
    let written = if forwarded(&headers) {
        let partition = table.partition_of(&key);
        let topic = held_or_misdirected(&table, partition, &headers).await?;
        let (bytes, copy) = (key.clone().into_bytes(), topic.clone());
        match blocking(move || Ok(copy.delete(bytes)?)).await? {
            Some(commit) => Some(table.written_here(partition, &topic, commit).await?),
            None => None,
        }
    } else {
        table.delete(&key).await?
    };
    match written {
        Some(written) => Ok(Json(written)),
        None => Err(ApiError::not_found(format!("key {key:?} has no value in table {}", table.def().name))),
    }
}

/// `POST /v1/tables/{t}/batch`: the operations split by partition and written on each
/// partition's owners; 200 when every partition applied its part, 207 when some did not. A
/// member forwarding one partition's part names it (`partition`) and gets that part's outcome;
/// one forwarding the parts of several that this node serves first names them all
/// (`partitions`, comma-separated) and gets an outcome for each.
pub(super) async fn batch(
    State(node): State<Node>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let Path(name) = path?;
    let query = parse_query(query.as_deref())?;
    let batch = super::kv::parse_batch(&node, &headers, &body)?;
    let table = requested_table(node, name, &headers, &query).await?;
    if !forwarded(&headers) {
        return Ok(batched_reply(table.batch(batch).await));
    }
    if let Some(named) = query.get("partitions") {
        return Ok(batched_reply(forwarded_parts(&table, named, batch, &headers).await?));
    }
    let partition = forwarded_partition(&table, &query, batch.ops().iter().map(|op| op.key()))?;
    Ok(part_reply(write_part(&table, partition, batch, &headers).await))
}

/// The parts of a forwarded batch, each of one of the partitions `named`, written at once.
async fn forwarded_parts(
    table: &Table,
    named: &str,
    batch: canopy_crdt::Batch,
    headers: &HeaderMap,
) -> ApiResult<Vec<wire::PartitionBatched>> {
    let partitions = table.def().partitions;
    let mut parts: std::collections::BTreeMap<u32, Vec<canopy_crdt::Op>> = std::collections::BTreeMap::new();
    for text in named.split(',') {
        let partition: u32 =
            text.parse().map_err(|_| ApiError::bad_request(format!("partitions: {text:?} is not a partition")))?;
        if partition >= partitions {
            return Err(ApiError::bad_request(format!("table has {partitions} partitions, not {}", partition + 1)));
        }
        parts.insert(partition, Vec::new());
    }
    for op in batch.into_ops() {
        let partition = partition_of(op.key(), partitions);
        let Some(part) = parts.get_mut(&partition) else {
            return Err(ApiError::bad_request(format!(
                "a forwarded batch for partitions {named} has a key of partition {partition}"
            )));
        };
        part.push(op);
    }
    let written = parts
        .into_iter()
        .filter(|(_, ops)| !ops.is_empty())
        .map(|(partition, ops)| write_part(table, partition, canopy_crdt::Batch::from(ops), headers));
    Ok(futures::future::join_all(written).await)
}

/// One partition's part of a forwarded batch, written on this node's copy and acknowledged;
/// a 421 when this node holds no copy that may serve it.
async fn write_part(
    table: &Table,
    partition: u32,
    batch: canopy_crdt::Batch,
    headers: &HeaderMap,
) -> wire::PartitionBatched {
    let ops = batch.len();
    let topic = match held_or_misdirected(table, partition, headers).await {
        Ok(topic) => topic,
        Err(error) => {
            let refused = TableError::Refused { status: error.status.as_u16(), message: error.message };
            return batch_outcome(partition, ops, Err(refused));
        }
    };
    let copy = topic.clone();
    let applied = tokio::task::spawn_blocking(move || copy.batch(batch))
        .await
        .map_err(|_| TableError::Node(crate::NodeError::Closed))
        .and_then(|applied| applied.map_err(TableError::from));
    let acked = match applied {
        Ok(commit) => table.acknowledge(partition, &topic, commit).await,
        Err(error) => Err(error),
    };
    batch_outcome(partition, ops, acked)
}

/// The reply to a client's table batch: 200 when every partition applied its part, 207 when
/// some did not.
pub(super) fn batched_reply(partitions: Vec<wire::PartitionBatched>) -> Response {
    let status = match partitions.iter().all(|outcome| outcome.status == StatusCode::OK.as_u16()) {
        true => StatusCode::OK,
        false => StatusCode::MULTI_STATUS,
    };
    (status, Json(wire::TableBatched { partitions })).into_response()
}

/// The partition a member's forwarded batch part names, checked to hold every key of the part.
pub(super) fn forwarded_partition<'k>(
    table: &Table,
    query: &HashMap<String, String>,
    mut keys: impl Iterator<Item = &'k [u8]>,
) -> ApiResult<u32> {
    let partition =
        partition_param(table, query)?.ok_or_else(|| ApiError::bad_request("a forwarded batch names its partition"))?;
    if keys.any(|key| partition_of(key, table.def().partitions) != partition) {
        return Err(ApiError::bad_request(format!("a forwarded batch for partition {partition} has keys of another")));
    }
    Ok(partition)
}

/// The reply to a forwarded batch part: its outcome, with the status it would have had alone.
pub(super) fn part_reply(outcome: wire::PartitionBatched) -> Response {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(outcome)).into_response()
}

/// Longest a member may ask this node to wait for a causal token's heads, in milliseconds.
const HOLDS_WAIT_MAX_MS: u64 = 60_000;

/// `GET /v1/tables/{t}/holds?causal=<token>&wait_ms=<ms>`: whether this node's copies hold every
/// partition's heads the token names, waiting at most `wait_ms` for them (a member asks this
/// of the other owners to acknowledge a write).
pub(super) async fn holds(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<wire::Holds>> {
    let Path(name) = path?;
    let query = parse_query(query.as_deref())?;
    let token: CausalToken = query
        .get("causal")
        .ok_or_else(|| ApiError::bad_request("give the causal token to check: causal=<token>"))?
        .parse()
        .map_err(ApiError::bad_request)?;
    let wait_ms = match query.get("wait_ms") {
        None => 0,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("wait_ms must be milliseconds, not {text:?}")))?
            .min(HOLDS_WAIT_MAX_MS),
    };
    let table = open_table(node, name).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    for scope in token.scopes() {
        let Scope::Partition(partition) = scope else { continue };
        let Some(topic) = table.held(partition) else { return Ok(Json(wire::Holds { holds: false })) };
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !wait_holds(topic.crdt(), &token.heads(scope), wait).await {
            return Ok(Json(wire::Holds { holds: false }));
        }
    }
    Ok(Json(wire::Holds { holds: true }))
}

/// The `partition` a query names, checked against the table's.
pub(super) fn partition_param(table: &Table, query: &HashMap<String, String>) -> ApiResult<Option<u32>> {
    let Some(text) = query.get("partition") else { return Ok(None) };
    let partition = text
        .parse::<u32>()
        .map_err(|_| ApiError::bad_request(format!("partition must be a partition number, not {text:?}")))?;
    if partition >= table.def().partitions {
        return Err(ApiError::bad_request(format!(
            "table {} has partitions 0 to {}",
            table.def().name,
            table.def().partitions - 1
        )));
    }
    Ok(Some(partition))
}

pub(super) async fn list_keys(
    State(node): State<Node>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let Path(name) = path?;
    let query = parse_query(query.as_deref())?;
    let ListQuery { prefix, after, limit } = ListQuery::parse(&query)?;
    let table = requested_table(node, name, &headers, &query).await?;
    let partition = partition_param(&table, &query)?;
    let listing = match (forwarded(&headers), partition) {
        (true, None) => return Err(ApiError::bad_request("a forwarded listing names its partition")),
        (true, Some(partition)) => {
            let topic = held_or_misdirected(&table, partition, &headers).await?;
            let copy = topic.clone();
            let page = blocking(move || Ok(copy.query(&prefix, after.as_deref(), limit)?)).await?;
            let token = table.read_at(partition, &topic);
            let page = Page::new(page.entries.into_iter(), page.next);
            return Ok(with_token(&token, Json(Page { causal_token: Some(token.to_string()), ..page })));
        }
        (false, Some(partition)) => table.list_partition(partition, &prefix, after.as_deref(), limit).await?,
        (false, None) => table.list(&prefix, after.as_deref(), limit).await?,
    };
    let status = if listing.failed.is_empty() { StatusCode::OK } else { StatusCode::PARTIAL_CONTENT };
    let page = Page::new(listing.entries.into_iter().map(|entry| (entry.key, entry.value)), listing.next);
    let page = Page { causal_token: Some(listing.token.to_string()), failed: listing.failed, ..page };
    Ok(with_token(&listing.token, (status, Json(page))))
}
