//! The table routes: members, the catalog, and keys routed to their partition's holders.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiResult, ListQuery, blocking, parse_query};
use crate::Node;
use crate::tables::route::local_written;
use crate::tables::{
    FORWARDED_HEADER, FORWARDED_LAST, PROXIED_HEADER, Table, TableDef, TableError, Written, partition_topic,
};
use crate::wire::{self, Page};

impl From<TableError> for ApiError {
    fn from(error: TableError) -> ApiError {
        let status = match &error {
            TableError::NotEnabled => StatusCode::NOT_IMPLEMENTED,
            TableError::Invalid(_) => StatusCode::BAD_REQUEST,
            TableError::Conflict(_) => StatusCode::CONFLICT,
            TableError::NoSuchTable(_) => StatusCode::NOT_FOUND,
            TableError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            TableError::Refused { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            TableError::Read(_) => StatusCode::INTERNAL_SERVER_ERROR,
            TableError::Node(error) => return ApiError::from_node(error),
        };
        ApiError::new(status, error.to_string())
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
    let placement = blocking(move || Ok(shown.placement()?)).await?;
    let placement = placement
        .into_iter()
        .enumerate()
        .map(|(partition, owners)| {
            let partition = partition as u32;
            wire::Placement {
                held_here: table.held(partition).is_some(),
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
type KeyPath = Result<Path<(String, String)>, PathRejection>;

/// Whether another node sent this request on a caller's behalf.
fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
}

/// The partition topic a forwarded request is served from, or a 421 when this node has no copy
/// of it (and it is not placed here), or a copy still catching up, while the sender has other
/// holders to try: the sender then tries the partition's next holder. As the sender's last
/// resort the node serves whatever it placed (taking the partition on if need be), once its
/// copy caught up or after a bounded wait.
async fn held_or_misdirected(table: &Table, partition: u32, headers: &HeaderMap) -> ApiResult<crate::NodeTopic> {
    let last = headers.get(FORWARDED_HEADER).is_some_and(|value| value == FORWARDED_LAST);
    let (copy, name) = (table.clone(), table.def().name.clone());
    let topic =
        blocking(move || Ok(copy.local_copy(partition, last)?.filter(|topic| last || copy.caught_up(topic)))).await?;
    let topic = topic.ok_or_else(|| {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this node holds no caught-up copy of partition {partition} of table {name}"),
        )
    })?;
    if last {
        table.wait_caught_up(&topic).await;
    }
    Ok(topic)
}

pub(super) async fn put_key(
    State(node): State<Node>,
    headers: HeaderMap,
    path: KeyPath,
    body: Bytes,
) -> ApiResult<Json<Written>> {
    let Path((name, key)) = path?;
    let table = routed_table(node, name, &headers).await?;
    let me = table.me();
    if !forwarded(&headers) {
        return Ok(Json(table.put(&key, body.to_vec()).await?));
    }
    let partition = table.partition_of(&key);
    let topic = held_or_misdirected(&table, partition, &headers).await?;
    let commit = blocking(move || Ok(topic.put(key.into_bytes(), body.to_vec())?)).await?;
    Ok(Json(local_written(partition, me, commit)))
}

pub(super) async fn get_key(State(node): State<Node>, headers: HeaderMap, path: KeyPath) -> ApiResult<Response> {
    let Path((name, key)) = path?;
    let table = routed_table(node, name, &headers).await?;
    let value = if forwarded(&headers) {
        let topic = held_or_misdirected(&table, table.partition_of(&key), &headers).await?;
        let bytes = key.clone().into_bytes();
        blocking(move || Ok(topic.get(&bytes)?)).await?
    } else {
        table.get(&key).await?
    };
    match value {
        Some(value) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response()),
        None => Err(ApiError::not_found(format!("key {key:?} not found in table {}", table.def().name))),
    }
}

pub(super) async fn delete_key(
    State(node): State<Node>,
    headers: HeaderMap,
    path: KeyPath,
) -> ApiResult<Json<Written>> {
    let Path((name, key)) = path?;
    let table = routed_table(node, name, &headers).await?;
    let me = table.me();
    let written = if forwarded(&headers) {
        let partition = table.partition_of(&key);
        let topic = held_or_misdirected(&table, partition, &headers).await?;
        let bytes = key.clone().into_bytes();
        let commit = blocking(move || Ok(topic.delete(bytes)?)).await?;
        commit.map(|commit| local_written(partition, me, commit))
    } else {
        table.delete(&key).await?
    };
    match written {
        Some(written) => Ok(Json(written)),
        None => Err(ApiError::not_found(format!("key {key:?} has no value in table {}", table.def().name))),
    }
}

pub(super) async fn list_keys(
    State(node): State<Node>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Page>> {
    let Path(name) = path?;
    let query = parse_query(query.as_deref())?;
    let ListQuery { prefix, after, limit } = ListQuery::parse(&query)?;
    let partition = match query.get("partition") {
        None => None,
        Some(text) => Some(
            text.parse::<u32>()
                .map_err(|_| ApiError::bad_request(format!("partition must be a partition number, not {text:?}")))?,
        ),
    };
    let table = routed_table(node, name, &headers).await?;
    if let Some(partition) = partition
        && partition >= table.def().partitions
    {
        return Err(ApiError::bad_request(format!(
            "table {} has partitions 0 to {}",
            table.def().name,
            table.def().partitions - 1
        )));
    }
    let listing = match (forwarded(&headers), partition) {
        (true, None) => return Err(ApiError::bad_request("a forwarded listing names its partition")),
        (true, Some(partition)) => {
            let topic = held_or_misdirected(&table, partition, &headers).await?;
            let page = blocking(move || Ok(topic.query(&prefix, after.as_deref(), limit)?)).await?;
            return Ok(Json(Page::new(page.entries.into_iter(), page.next)));
        }
        (false, Some(partition)) => table.list_partition(partition, &prefix, after.as_deref(), limit).await?,
        (false, None) => table.list(&prefix, after.as_deref(), limit).await?,
    };
    Ok(Json(Page::new(listing.entries.into_iter().map(|entry| (entry.key, entry.value)), listing.next)))
}
