//! Documents in a table: `PUT|PATCH|GET|DELETE /v1/tables/{t}/docs/{key}`, routed to the key's
//! partition as the table's values are; a member forwarding one names itself, and the holder
//! applies it to its copy.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::docs::object;
use super::tables::{
    KeyPath, batched_reply, forwarded, forwarded_partition, held_or_misdirected, part_reply, partition_param,
    requested_table, with_token,
};
use super::{ApiError, ApiResult, blocking, parse_query, positive_limit};
use crate::IndexDef;
use crate::Node;
use crate::node::filter::Filter;
use crate::tables::DocChange;
use crate::wire::{
    DocPage, DocWritten, FailedPartition, IndexChanged, IndexEntry, TableIndex, TableIndexChanged, TableIndexes,
};

/// Applies `change` to the document the path names, on the key's owners.
async fn write(
    node: Node,
    headers: HeaderMap,
    path: KeyPath,
    query: Option<String>,
    change: DocChange,
) -> ApiResult<Json<DocWritten>> {
    let Path((name, key)) = path?;
    let query = parse_query(query.as_deref())?;
    let table = requested_table(node, name, &headers, &query).await?;
    let written = if forwarded(&headers) {
        let partition = table.partition_of(&key);
        let topic = held_or_misdirected(&table, partition, &headers).await?;
        table.doc_write_here(partition, &topic, &key, change).await?
    } else {
        table.doc_write(&key, change).await?
    };
    let table = table.def().name.clone();
    written.map(Json).ok_or_else(|| ApiError::not_found(format!("document {key:?} not found in table {table}")))
}

/// `PUT /v1/tables/{t}/docs/{key}`: the body becomes the document.
pub(super) async fn put_doc(
    State(node): State<Node>,
    headers: HeaderMap,
    path: KeyPath,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<DocWritten>> {
    let doc = object(&body, "a document")?;
    write(node, headers, path, query, DocChange::Put(doc)).await
}

/// `PATCH /v1/tables/{t}/docs/{key}`: the body, a merge patch, is applied to the document.
pub(super) async fn patch_doc(
    State(node): State<Node>,
    headers: HeaderMap,
    path: KeyPath,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<DocWritten>> {
    let patch = object(&body, "a merge patch")?;
    write(node, headers, path, query, DocChange::Patch(patch)).await
}

/// `DELETE /v1/tables/{t}/docs/{key}`.
pub(super) async fn delete_doc(
    State(node): State<Node>,
    headers: HeaderMap,
    path: KeyPath,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<DocWritten>> {
    write(node, headers, path, query, DocChange::Delete).await
}

/// `GET /v1/tables/{t}/docs/{key}`: the document, from a copy holding the query's `causal` token.
pub(super) async fn get_doc(
    State(node): State<Node>,
    headers: HeaderMap,
    path: KeyPath,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let Path((name, key)) = path?;
    let query = parse_query(query.as_deref())?;
    let table = requested_table(node, name, &headers, &query).await?;
    let (doc, token) = if forwarded(&headers) {
        let partition = table.partition_of(&key);
        let topic = held_or_misdirected(&table, partition, &headers).await?;
        let (bytes, copy) = (key.clone().into_bytes(), topic.clone());
        let doc = blocking(move || Ok(copy.doc(&bytes)?)).await?;
        (doc, table.read_at(partition, &topic))
    } else {
        table.doc_read(&key).await?
    };
    Ok(match doc {
        Some(doc) => with_token(&token, Json(doc)),
        None => with_token(
            &token,
            ApiError::not_found(format!("document {key:?} not found in table {}", table.def().name)).into_response(),
        ),
    })
}

/// `GET /v1/tables/{t}/docs?where=...`: the table's documents meeting every condition, over every
/// partition, in key order or by `order` (`after`, `limit`); a page missing partitions that did
/// not answer is a 206 naming them. A member forwarding one partition's part names it
/// (`partition`).
pub(super) async fn find_docs(
    State(node): State<Node>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let Path(name) = path?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let conditions: Vec<String> = pairs.iter().filter(|(n, _)| n == "where").map(|(_, v)| v.clone()).collect();
    let filter = Filter::parse(conditions.iter().map(String::as_str)).map_err(ApiError::bad_request)?;
    let order_text = pairs.iter().find(|(n, _)| n == "order").map(|(_, v)| v.clone());
    let order = order_text.as_deref().map(super::docs::parse_order).transpose()?;
    let query = parse_query(raw.as_deref())?;
    let limit = positive_limit(&query)?;
    let after = query.get("after").cloned();
    let table = requested_table(node, name, &headers, &query).await?;
    let partition = partition_param(&table, &query)?;
    if forwarded(&headers) {
        let partition = partition.ok_or_else(|| ApiError::bad_request("a forwarded query names its partition"))?;
        let topic = held_or_misdirected(&table, partition, &headers).await?;
        let copy = topic.clone();
        let found = blocking(move || {
            copy.find(&filter, order.as_ref(), after.as_deref(), limit)
                .map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .await?;
        let token = table.read_at(partition, &topic);
        let mut page = DocPage::new(found.docs, None, token.to_string());
        page.next = found.next;
        page.scanned = Some(found.scanned);
        return Ok(with_token(&token, Json(page)));
    }
    let found = match (partition, &order) {
        (None, Some(order)) => table.find_docs_ordered(&conditions, order, after.as_deref(), limit).await?,
        (Some(partition), _) => {
            let (listing, scanned) = table
                .find_docs_in(partition, &conditions, order_text.as_deref(), after.as_deref().map(str::as_bytes), limit)
                .await?;
            let docs = listing
                .entries
                .into_iter()
                .map(|entry| {
                    Ok((
                        entry.key,
                        serde_json::from_slice(&entry.value)
                            .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?,
                    ))
                })
                .collect::<ApiResult<_>>()?;
            crate::tables::FoundDocs { docs, next: listing.next, failed: Vec::new(), token: listing.token, scanned }
        }
        (None, None) => table.find_docs(&conditions, after.as_deref().map(str::as_bytes), limit).await?,
    };
    let status = if found.failed.is_empty() { StatusCode::OK } else { StatusCode::PARTIAL_CONTENT };
    let mut page = DocPage::new(found.docs, None, found.token.to_string());
    page.next = found.next.map(|next| String::from_utf8_lossy(&next).into_owned());
    page.scanned = Some(found.scanned);
    page.failed = found.failed;
    Ok(with_token(&found.token, (status, Json(page))))
}

/// The path of a table's index: the table and the index's name.
type IndexPath = Result<Path<(String, String)>, PathRejection>;

/// `PUT /v1/tables/{t}/indexes/{name}`: declares the index on every partition's topic (body
/// as for a topic's index); 207 names the partitions no holder of which took it.
pub(super) async fn put_index(
    State(node): State<Node>,
    headers: HeaderMap,
    path: IndexPath,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let Path((name, index)) = path?;
    let def = super::docs::index_def(&index, &body)?;
    change_index(node, headers, (name, index), query, Some(def)).await
}

/// `DELETE /v1/tables/{t}/indexes/{name}`: drops the index on every partition's topic.
pub(super) async fn delete_index(
    State(node): State<Node>,
    headers: HeaderMap,
    path: IndexPath,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let Path((name, index)) = path?;
    canopy_crdt::index::check_name(&index).map_err(ApiError::bad_request)?;
    change_index(node, headers, (name, index), query, None).await
}

/// Declares (`Some`) or drops the index on the table's partitions; a member forwarding one
/// partition's part names it, and the holder changes its copy's topic.
async fn change_index(
    node: Node,
    headers: HeaderMap,
    (name, index): (String, String),
    query: Option<String>,
    def: Option<IndexDef>,
) -> ApiResult<Response> {
    let query = parse_query(query.as_deref())?;
    let table = requested_table(node, name, &headers, &query).await?;
    let partition = partition_param(&table, &query)?;
    if forwarded(&headers) {
        let partition =
            partition.ok_or_else(|| ApiError::bad_request("a forwarded index change names its partition"))?;
        let topic = held_or_misdirected(&table, partition, &headers).await?;
        let (copy, dropping) = (topic.clone(), def.is_none());
        let commit = blocking(move || {
            Ok(match &def {
                Some(def) => copy.declare_index(&index, def)?,
                None => copy.drop_index(&index)?,
            })
        })
        .await?;
        if dropping && commit.is_none() {
            return Err(ApiError::not_found("no such index on this partition"));
        }
        let changed = IndexChanged {
            causal_token: table.read_at(partition, &topic).to_string(),
            cid: commit.map(|commit| commit.cid.to_string()),
            height: commit.map(|commit| commit.height),
        };
        return Ok(Json(changed).into_response());
    }
    let fanout = match partition {
        Some(partition) => {
            let mut fanout = crate::tables::IndexFanout::default();
            match table.change_index_in(partition, &index, def.as_ref()).await {
                Ok(true) => fanout.changed.push(partition),
                Ok(false) => fanout.unchanged.push(partition),
                Err(error) => fanout.failed.push(FailedPartition { error: error.to_string(), partition }),
            }
            fanout
        }
        None => table.change_index(&index, def.as_ref()).await,
    };
    if def.is_none() && fanout.changed.is_empty() && fanout.failed.is_empty() {
        return Err(ApiError::not_found(format!("no index {index:?} is declared on table {}", table.def().name)));
    }
    let status = if fanout.failed.is_empty() { StatusCode::OK } else { StatusCode::MULTI_STATUS };
    let reply = TableIndexChanged { changed: fanout.changed, unchanged: fanout.unchanged, failed: fanout.failed };
    Ok((status, Json(reply)).into_response())
}

/// `GET /v1/tables/{t}/indexes`: each index the partitions hold, with how many hold it and how
/// many hold it built; 206 names partitions no holder of which answered.
pub(super) async fn list_indexes(
    State(node): State<Node>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let Path(name) = path?;
    let query = parse_query(query.as_deref())?;
    let table = requested_table(node, name, &headers, &query).await?;
    let partition = partition_param(&table, &query)?;
    let (held, failed) = if forwarded(&headers) {
        let partition = partition.ok_or_else(|| ApiError::bad_request("a forwarded listing names its partition"))?;
        let topic = held_or_misdirected(&table, partition, &headers).await?;
        (vec![(partition, topic.indexes().into_iter().map(IndexEntry::from).collect())], Vec::new())
    } else {
        match partition {
            Some(partition) => match table.indexes_in(partition).await {
                Ok(indexes) => (vec![(partition, indexes)], Vec::new()),
                Err(error) => (Vec::new(), vec![FailedPartition { error: error.to_string(), partition }]),
            },
            None => table.indexes().await,
        }
    };
    let mut indexes: Vec<TableIndex> = Vec::new();
    for (_, entries) in held {
        for entry in entries {
            let built = u32::from(entry.ready);
            match indexes.iter_mut().find(|index| index.entry.name == entry.name) {
                Some(index) => {
                    index.held_by += 1;
                    index.built_by += built;
                    index.entry.scanned += entry.scanned;
                    index.entry.ready &= entry.ready;
                }
                None => indexes.push(TableIndex { entry, held_by: 1, built_by: built }),
            }
        }
    }
    indexes.sort_by(|a, b| a.entry.name.cmp(&b.entry.name));
    let partitions = table.def().partitions;
    let status = if failed.is_empty() { StatusCode::OK } else { StatusCode::PARTIAL_CONTENT };
    Ok((status, Json(TableIndexes { indexes, partitions, failed })).into_response())
}

/// `POST /v1/tables/{t}/docs`: a document batch (as a topic's) split by partition, each part
/// one block on its owners; one outcome per partition (207 when some did not apply). A member
/// forwarding one partition's part names it, and the holder applies it to its copy.
pub(super) async fn batch_docs(
    State(node): State<Node>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Response> {
    let Path(name) = path?;
    let query = parse_query(query.as_deref())?;
    let changes = super::docs::parse_doc_batch(&node, &body)?;
    let table = requested_table(node, name, &headers, &query).await?;
    if !forwarded(&headers) {
        return Ok(batched_reply(table.doc_batch(changes).await));
    }
    let partition = forwarded_partition(&table, &query, changes.iter().map(|(key, _)| key.as_slice()))?;
    let topic = held_or_misdirected(&table, partition, &headers).await?;
    let ops = changes.len();
    let acked = table.doc_batch_here(partition, &topic, changes).await;
    Ok(part_reply(crate::tables::write::batch_outcome(partition, ops, acked)))
}
