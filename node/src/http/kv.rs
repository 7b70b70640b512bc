//! The key-value routes: a key's value, counter and history, listings and batches.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use canopy_crdt::Batch;

use super::{ApiError, ApiResult, ListQuery, blocking, parse_query, positive_limit, subscribed};
use crate::node::{Node, NodeTopic};
use crate::wire::{self, BatchOp, BlockRef};

/// The path of a key: its topic and the key.
type KeyPath = Result<Path<(String, String)>, PathRejection>;

/// Runs `work` on the blocking pool with the subscribed topic and the key `path` names.
async fn on_key<T: Send + 'static>(
    node: Node,
    path: KeyPath,
    work: impl FnOnce(NodeTopic, String, String) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let Path((topic, key)) = path?;
    blocking(move || work(subscribed(&node, &topic)?, topic, key)).await
}

pub(super) async fn put_key(
    State(node): State<Node>,
    path: KeyPath,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<wire::Put>> {
    let query = parse_query(query.as_deref())?;
    let expires = query.get("ttl").map(|text| parse_ttl(text)).transpose()?.map(|ttl| node.expiry_of(ttl));
    on_key(node, path, move |handle, _, key| {
        let commit = match expires {
            None => handle.put(key.into_bytes(), body.to_vec())?,
            Some(expires) => handle.put_until(key.into_bytes(), body.to_vec(), expires)?,
        };
        Ok(Json(wire::Put { cid: wire::WireCid(commit.cid), expires_ms: expires, height: commit.height }))
    })
    .await
}

/// Longest lifetime a value may be given: a hundred years.
const TTL_MAX: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// A lifetime as people write it (`30s`, `500ms`, `5m`, `1h 30m`; a bare number is seconds),
/// positive and at most [`TTL_MAX`].
fn parse_ttl(text: &str) -> ApiResult<std::time::Duration> {
    let parsed = match text.trim().parse::<u64>() {
        Ok(seconds) => Ok(std::time::Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text.trim()),
    };
    match parsed {
        Ok(ttl) if !ttl.is_zero() && ttl <= TTL_MAX => Ok(ttl),
        Ok(_) => Err(ApiError::bad_request(format!("ttl {text:?} is not between 1ms and 100 years"))),
        Err(e) => Err(ApiError::bad_request(format!("ttl {text:?} is not a duration such as 30s, 500ms or 5m: {e}"))),
    }
}

pub(super) async fn get_key(State(node): State<Node>, path: KeyPath) -> ApiResult<Response> {
    on_key(node, path, |handle, topic, key| match handle.get(key.as_bytes())? {
        Some(value) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response()),
        None => Err(ApiError::not_found(format!("key {key:?} not found in topic {topic}"))),
    })
    .await
}

pub(super) async fn delete_key(State(node): State<Node>, path: KeyPath) -> ApiResult<Json<BlockRef>> {
    on_key(node, path, |handle, topic, key| match handle.delete(key.clone().into_bytes())? {
        Some(commit) => Ok(Json(commit.into())),
        None => Err(ApiError::not_found(format!("key {key:?} has no value in topic {topic}"))),
    })
    .await
}

/// Adds to a counter what the body says (`{"add": n}`), or 1 when the body is empty.
pub(super) async fn increment(
    State(node): State<Node>,
    path: KeyPath,
    body: Bytes,
) -> ApiResult<Json<wire::Incremented>> {
    let add = if body.iter().all(u8::is_ascii_whitespace) {
        1
    } else {
        serde_json::from_slice::<wire::Increment>(&body)
            .map_err(|e| ApiError::bad_request(format!("an increment is {{\"add\": <integer>}}: {e}")))?
            .add
    };
    on_key(node, path, move |handle, _, key| {
        let commit = handle.increment(key.as_bytes().to_vec(), add)?;
        let value = handle.counter(key.as_bytes())?;
        Ok(Json(wire::Incremented { cid: commit.cid.to_string(), height: commit.height, value }))
    })
    .await
}

pub(super) async fn get_counter(State(node): State<Node>, path: KeyPath) -> ApiResult<Json<wire::Counter>> {
    on_key(node, path, |handle, _, key| {
        let value = handle.counter(key.as_bytes())?;
        Ok(Json(wire::Counter { key, value }))
    })
    .await
}

pub(super) async fn key_history(
    State(node): State<Node>,
    path: KeyPath,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<wire::History>> {
    let query = parse_query(query.as_deref())?;
    let limit = positive_limit(&query)?;
    on_key(node, path, move |handle, _, key| {
        let versions = handle.history(key.as_bytes(), limit)?.into_iter().map(wire::KeyVersion::from).collect();
        Ok(Json(wire::History { key, versions }))
    })
    .await
}

pub(super) async fn list_keys(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<wire::Page>> {
    let Path(topic) = path?;
    let list = ListQuery::parse(&parse_query(query.as_deref())?)?;
    blocking(move || {
        let handle = subscribed(&node, &topic)?;
        let page = handle.query(&list.prefix, list.after.as_deref(), list.limit)?;
        Ok(Json(wire::Page::new(page.entries.into_iter(), page.next)))
    })
    .await
}

fn batch_key(index: usize, key: Option<String>, key_base64: Option<String>) -> ApiResult<Vec<u8>> {
    match (key, key_base64) {
        (Some(key), None) => Ok(key.into_bytes()),
        (None, Some(encoded)) => BASE64
            .decode(encoded.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("op {index}: key_base64 is not base64: {e}"))),
        _ => Err(ApiError::bad_request(format!("op {index}: give key or key_base64, exactly one"))),
    }
}

pub(super) async fn batch(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult<Json<wire::Batched>> {
    let Path(topic) = path?;
    let body: wire::Batch =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("malformed batch JSON: {e}")))?;
    let ops_max = node.inner().config.batch_ops_max;
    if body.ops.len() > ops_max {
        return Err(ApiError::bad_request(format!("{} ops exceed batch_ops_max {ops_max}", body.ops.len())));
    }
    let mut batch = Batch::new();
    for (index, op) in body.ops.into_iter().enumerate() {
        match op {
            BatchOp::Put { key, key_base64, value, ttl } => {
                let key = batch_key(index, key, key_base64)?;
                let value = BASE64
                    .decode(value.as_bytes())
                    .map_err(|e| ApiError::bad_request(format!("op {index}: value is not base64: {e}")))?;
                match ttl {
                    None => batch.put(key, value),
                    Some(ttl) => {
                        let ttl =
                            parse_ttl(&ttl).map_err(|e| ApiError::bad_request(format!("op {index}: {}", e.message)))?;
                        batch.put_until(key, value, node.expiry_of(ttl))
                    }
                };
            }
            BatchOp::Delete { key, key_base64 } => {
                batch.delete(batch_key(index, key, key_base64)?);
            }
            BatchOp::Add { key, key_base64, add } => {
                batch.add(batch_key(index, key, key_base64)?, add);
            }
        }
    }
    blocking(move || {
        let handle = subscribed(&node, &topic)?;
        let commit = handle.batch(batch)?;
        Ok(Json(wire::Batched {
            cid: commit.map(|commit| commit.cid.to_string()),
            height: commit.map(|commit| commit.height),
        }))
    })
    .await
}
