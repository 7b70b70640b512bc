//! Documents in a table: `PUT|PATCH|GET|DELETE /v1/tables/{t}/docs/{key}`, routed to the key's
//! partition as the table's values are; a member forwarding one names itself, and the holder
//! applies it to its copy.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::docs::object;
use super::tables::{KeyPath, forwarded, held_or_misdirected, requested_table, with_token};
use super::{ApiError, ApiResult, blocking, parse_query};
use crate::Node;
use crate::tables::DocChange;
use crate::wire::DocWritten;

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
