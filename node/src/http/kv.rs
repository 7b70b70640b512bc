//! The key-value routes: a key's value, counter and history, listings and batches.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use std::collections::HashMap;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use canopy_crdt::Batch;

use super::{ApiError, ApiResult, ListQuery, blocking, parse_query, positive_limit, subscribed};
use crate::Commit;
use crate::causal::{Ack, CAUSAL_HEADER, CausalToken, Scope};
use crate::node::{Node, NodeTopic};
use crate::wire::{self, BatchOp};

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

/// The copies a topic write asks for: the query's `ack`, else the node's `write_ack` (`all`,
/// which names a table's owners, counts as one on a topic). A topic has no fixed set of
/// copies, so `ack=all` is refused.
pub(super) fn topic_copies(node: &Node, query: &HashMap<String, String>) -> ApiResult<u32> {
    match query.get("ack").map(|text| text.parse::<Ack>()).transpose().map_err(ApiError::bad_request)? {
        Some(Ack::Copies(copies)) => Ok(copies),
        Some(Ack::All) => Err(ApiError::bad_request(
            "a topic has no fixed set of copies to ask for all of: give ack a number of copies",
        )),
        None => match node.inner().config.write_ack {
            Ack::Copies(copies) => Ok(copies),
            Ack::All => Ok(1),
        },
    }
}

/// What an acknowledged topic write left: the write's own result, the copies holding it and its
/// causal token.
pub(super) struct TopicWritten<T> {
    pub(super) result: T,
    pub(super) acknowledged: u32,
    pub(super) token: String,
}

/// Applies `write` to `topic` (on the blocking pool), then waits until `copies` replicas hold
/// its block: a 504 carrying how many did and the write's causal token when they do not in time.
pub(super) async fn write_acked<T: Send + 'static>(
    node: Node,
    topic: String,
    copies: u32,
    write: impl FnOnce(&NodeTopic) -> ApiResult<(Option<Commit>, T)> + Send + 'static,
) -> ApiResult<TopicWritten<T>> {
    let handle = {
        let node = node.clone();
        blocking(move || subscribed(&node, &topic)).await?
    };
    let wait = (copies > 1).then(|| node.await_acks(&handle));
    let written = handle.clone();
    let (commit, result) = blocking(move || write(&written)).await?;
    let token = topic_token(&handle).to_string();
    let acknowledged = match (wait, commit) {
        (Some(wait), Some(commit)) => wait.wait(commit, copies).await.map_err(|acknowledged| {
            let mut refusal = ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the write to topic {} was applied, but {acknowledged} of the {copies} copies asked for held it in \
                     time: read it back with causal={token} rather than write it again",
                    handle.name()
                ),
            );
            refusal.unacknowledged = Some((acknowledged, token.clone()));
            refusal
        })?,
        _ => 1,
    };
    Ok(TopicWritten { result, acknowledged, token })
}

/// The reply to a put or delete of one key that made `written`.
fn put_reply(written: TopicWritten<Commit>, expires_ms: Option<u64>) -> wire::Put {
    wire::Put {
        acknowledged: written.acknowledged,
        causal_token: written.token,
        cid: wire::WireCid(written.result.cid),
        expires_ms,
        height: written.result.height,
    }
}

pub(super) async fn put_key(
    State(node): State<Node>,
    path: KeyPath,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<wire::Put>> {
    let Path((topic, key)) = path?;
    let query = parse_query(query.as_deref())?;
    let expires = query.get("ttl").map(|text| parse_ttl(text)).transpose()?.map(|ttl| node.expiry_of(ttl));
    let copies = topic_copies(&node, &query)?;
    let written = write_acked(node, topic, copies, move |handle| {
        let commit = match expires {
            None => handle.put(key.into_bytes(), body.to_vec())?,
            Some(expires) => handle.put_until(key.into_bytes(), body.to_vec(), expires)?,
        };
        Ok((Some(commit), commit))
    })
    .await?;
    Ok(Json(put_reply(written, expires)))
}

/// Longest lifetime a value may be given: a hundred years.
const TTL_MAX: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// A lifetime as people write it (`30s`, `500ms`, `5m`, `1h 30m`; a bare number is seconds),
/// positive and at most [`TTL_MAX`].
pub(super) fn parse_ttl(text: &str) -> ApiResult<std::time::Duration> {
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

/// The causal token of what `topic` holds now.
pub(super) fn topic_token(topic: &NodeTopic) -> CausalToken {
    CausalToken::held_by(Scope::Topic, topic.crdt())
}

/// Waits until the topic `path` names holds what the query's `causal` token names in it, at
/// most the node's `causal_wait_ms`: a 503 when it does not by then.
pub(super) async fn hold_causal(node: &Node, topic: &str, query: &HashMap<String, String>) -> ApiResult<()> {
    let Some(text) = query.get("causal") else { return Ok(()) };
    let token: CausalToken = text.parse().map_err(ApiError::bad_request)?;
    let heads = token.heads(Scope::Topic);
    if heads.is_empty() {
        return Ok(());
    }
    let handle = {
        let (node, topic) = (node.clone(), topic.to_string());
        blocking(move || subscribed(&node, &topic)).await?
    };
    let wait = std::time::Duration::from_millis(node.inner().config.causal_wait_ms);
    if crate::causal::wait_holds(handle.crdt(), &heads, wait).await {
        Ok(())
    } else {
        node.inner().counters.causal_missed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("this node's copy of topic {topic} does not hold the writes the causal token names yet: try again"),
        ))
    }
}

/// `reply` with the causal token of what `topic` holds now, read after the reply was made.
pub(super) fn with_token(topic: &NodeTopic, reply: impl IntoResponse) -> Response {
    let token = topic_token(topic).to_string();
    let mut response = reply.into_response();
    if let Ok(value) = header::HeaderValue::from_str(&token) {
        response.headers_mut().insert(CAUSAL_HEADER, value);
    }
    response
}

pub(super) async fn get_key(State(node): State<Node>, path: KeyPath, RawQuery(query): RawQuery) -> ApiResult<Response> {
    let query = parse_query(query.as_deref())?;
    if let Ok(Path((topic, _))) = &path {
        hold_causal(&node, topic, &query).await?;
    }
    on_key(node, path, |handle, topic, key| match handle.get(key.as_bytes())? {
        Some(value) => Ok(with_token(&handle, ([(header::CONTENT_TYPE, "application/octet-stream")], value))),
        None => Ok(with_token(
            &handle,
            ApiError::not_found(format!("key {key:?} not found in topic {topic}")).into_response(),
        )),
    })
    .await
}

pub(super) async fn delete_key(
    State(node): State<Node>,
    path: KeyPath,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<wire::Put>> {
    let Path((topic, key)) = path?;
    let copies = topic_copies(&node, &parse_query(query.as_deref())?)?;
    let name = topic.clone();
    let written = write_acked(node, topic, copies, move |handle| {
        let commit = handle.delete(key.clone().into_bytes())?;
        let commit = commit.ok_or_else(|| ApiError::not_found(format!("key {key:?} has no value in topic {name}")))?;
        Ok((Some(commit), commit))
    })
    .await?;
    Ok(Json(put_reply(written, None)))
}

/// Adds to a counter what the body says (`{"add": n}`), or 1 when the body is empty.
pub(super) async fn increment(
    State(node): State<Node>,
    path: KeyPath,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<wire::Incremented>> {
    let copies = topic_copies(&node, &parse_query(query.as_deref())?)?;
    let add = if body.iter().all(u8::is_ascii_whitespace) {
        1
    } else {
        serde_json::from_slice::<wire::Increment>(&body)
            .map_err(|e| ApiError::bad_request(format!("an increment is {{\"add\": <integer>}}: {e}")))?
            .add
    };
    let Path((topic, key)) = path?;
    let written = write_acked(node, topic, copies, move |handle| {
        let commit = handle.increment(key.as_bytes().to_vec(), add)?;
        let value = handle.counter(key.as_bytes())?;
        Ok((Some(commit), (commit, value)))
    })
    .await?;
    let (commit, value) = written.result;
    Ok(Json(wire::Incremented {
        acknowledged: written.acknowledged,
        causal_token: written.token,
        cid: commit.cid.to_string(),
        height: commit.height,
        value,
    }))
}

pub(super) async fn get_counter(
    State(node): State<Node>,
    path: KeyPath,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let query = parse_query(query.as_deref())?;
    if let Ok(Path((topic, _))) = &path {
        hold_causal(&node, topic, &query).await?;
    }
    on_key(node, path, |handle, _, key| {
        let value = handle.counter(key.as_bytes())?;
        Ok(with_token(&handle, Json(wire::Counter { key, value })))
    })
    .await
}

pub(super) async fn key_history(
    State(node): State<Node>,
    path: KeyPath,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let query = parse_query(query.as_deref())?;
    let limit = positive_limit(&query)?;
    if let Ok(Path((topic, _))) = &path {
        hold_causal(&node, topic, &query).await?;
    }
    on_key(node, path, move |handle, _, key| {
        let versions = handle.history(key.as_bytes(), limit)?.into_iter().map(wire::KeyVersion::from).collect();
        Ok(with_token(&handle, Json(wire::History { key, versions })))
    })
    .await
}

pub(super) async fn list_keys(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<wire::Page>> {
    let Path(topic) = path?;
    let query = parse_query(query.as_deref())?;
    let list = ListQuery::parse(&query)?;
    hold_causal(&node, &topic, &query).await?;
    blocking(move || {
        let handle = subscribed(&node, &topic)?;
        let page = handle.query(&list.prefix, list.after.as_deref(), list.limit)?;
        let token = topic_token(&handle).to_string();
        Ok(Json(wire::Page { causal_token: Some(token), ..wire::Page::new(page.entries.into_iter(), page.next) }))
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

/// The operations of a batch request body, refused with a 400 naming the first bad one.
pub(super) fn parse_batch(node: &Node, headers: &HeaderMap, body: &[u8]) -> ApiResult<Batch> {
    let ops_max = node.inner().config.batch_ops_max;
    let too_many = |ops: usize| ApiError::bad_request(format!("{ops} ops exceed batch_ops_max {ops_max}"));
    let media = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default();
    if media.split(';').next().is_some_and(|media| media.trim().eq_ignore_ascii_case(wire::CBOR_BATCH)) {
        let body =
            wire::CborBatch::decode(body).map_err(|e| ApiError::bad_request(format!("malformed batch CBOR: {e}")))?;
        if body.ops.len() > ops_max {
            return Err(too_many(body.ops.len()));
        }
        return body.into_batch().map_err(ApiError::bad_request);
    }
    let body: wire::Batch =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed batch JSON: {e}")))?;
    if body.ops.len() > ops_max {
        return Err(too_many(body.ops.len()));
    }
    let mut batch = Batch::new();
    for (index, op) in body.ops.into_iter().enumerate() {
        match op {
            BatchOp::Put { expires_ms, key, key_base64, value, ttl } => {
                let key = batch_key(index, key, key_base64)?;
                let value = BASE64
                    .decode(value.as_bytes())
                    .map_err(|e| ApiError::bad_request(format!("op {index}: value is not base64: {e}")))?;
                match (ttl, expires_ms) {
                    (None, None) => batch.put(key, value),
                    (Some(ttl), None) => {
                        let ttl =
                            parse_ttl(&ttl).map_err(|e| ApiError::bad_request(format!("op {index}: {}", e.message)))?;
                        batch.put_until(key, value, node.expiry_of(ttl))
                    }
                    (None, Some(expires_ms)) => batch.put_until(key, value, expires_ms),
                    (Some(_), Some(_)) => {
                        return Err(ApiError::bad_request(format!("op {index}: give ttl or expires_ms, not both")));
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
    Ok(batch)
}

pub(super) async fn batch(
    State(node): State<Node>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<wire::Batched>> {
    let Path(topic) = path?;
    let copies = topic_copies(&node, &parse_query(query.as_deref())?)?;
    let batch = parse_batch(&node, &headers, &body)?;
    let written = write_acked(node, topic, copies, move |handle| {
        let commit = handle.batch(batch)?;
        Ok((commit, commit))
    })
    .await?;
    Ok(Json(wire::Batched {
        acknowledged: written.acknowledged,
        causal_token: written.token,
        cid: written.result.map(|commit| commit.cid.to_string()),
        height: written.result.map(|commit| commit.height),
    }))
}
