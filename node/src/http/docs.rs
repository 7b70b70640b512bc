//! The documents' routes: `/v1/topics/{t}/docs/{key}` (put, patch, get, delete) and the
//! listing `/v1/topics/{t}/docs`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};

use super::kv::{hold_causal, parse_ttl, topic_copies, topic_token, with_token, write_acked};
use super::{ApiError, ApiResult, ListQuery, blocking, parse_query, subscribed};
use crate::IndexDef;
use crate::node::filter::Filter;
use crate::node::{DocBatchOp, Document, FindError, Node, NodeTopic, Order};
use crate::wire;

/// The path of a document: its topic and key.
type DocPath = Result<Path<(String, String)>, PathRejection>;

/// The order `text` names: a field's path, descending when it starts with `-`.
pub(super) fn parse_order(text: &str) -> ApiResult<Order> {
    crate::tables::parse_order(text).map_err(ApiError::bad_request)
}

/// The body of a put or a patch: a JSON object.
pub(super) fn object(body: &[u8], what: &str) -> ApiResult<Document> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(doc)) => Ok(doc),
        Ok(other) => Err(ApiError::bad_request(format!("{what} is a JSON object, not {}", kind(&other)))),
        Err(e) => Err(ApiError::bad_request(format!("{what} is not JSON: {e}"))),
    }
}

/// The name of `value`'s JSON type.
fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// What a document write does to its document.
enum Change {
    Put(Document),
    Patch(Document),
    Delete,
}

/// Applies `change` to the document `path` names, acknowledged as the query's `ack` asks,
/// its fields expiring after the query's `ttl`.
async fn write(node: Node, path: DocPath, query: Option<String>, change: Change) -> ApiResult<Json<wire::DocWritten>> {
    let Path((topic, key)) = path?;
    let query = parse_query(query.as_deref())?;
    let expires = query.get("ttl").map(|text| parse_ttl(text)).transpose()?.map(|ttl| node.expiry_of(ttl));
    if expires.is_some() && matches!(change, Change::Delete) {
        return Err(ApiError::bad_request("a delete takes no ttl"));
    }
    let copies = topic_copies(&node, &query)?;
    let name = topic.clone();
    let written = write_acked(node, topic, copies, move |handle: &NodeTopic| {
        let commit = match &change {
            Change::Put(doc) => handle.doc_put(key.as_bytes(), doc, expires)?,
            Change::Patch(patch) => handle.doc_patch(key.as_bytes(), patch, expires)?,
            Change::Delete => {
                let commit = handle.doc_delete(key.as_bytes())?;
                Some(commit.ok_or_else(|| ApiError::not_found(format!("document {key:?} not found in topic {name}")))?)
            }
        };
        Ok((commit, commit))
    })
    .await?;
    Ok(Json(doc_written(written, expires)))
}

/// `PUT /v1/topics/{t}/docs/{key}`: the body becomes the document.
pub(super) async fn put_doc(
    State(node): State<Node>,
    path: DocPath,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<wire::DocWritten>> {
    let doc = object(&body, "a document")?;
    write(node, path, query, Change::Put(doc)).await
}

/// `PATCH /v1/topics/{t}/docs/{key}`: the body, a JSON Merge Patch, is applied to the document.
pub(super) async fn patch_doc(
    State(node): State<Node>,
    path: DocPath,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<wire::DocWritten>> {
    let patch = object(&body, "a merge patch")?;
    write(node, path, query, Change::Patch(patch)).await
}

/// `DELETE /v1/topics/{t}/docs/{key}`.
pub(super) async fn delete_doc(
    State(node): State<Node>,
    path: DocPath,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<wire::DocWritten>> {
    write(node, path, query, Change::Delete).await
}

/// `GET /v1/topics/{t}/docs/{key}`: the document as a JSON object.
pub(super) async fn get_doc(State(node): State<Node>, path: DocPath, RawQuery(query): RawQuery) -> ApiResult<Response> {
    let Path((topic, key)) = path?;
    let query = parse_query(query.as_deref())?;
    hold_causal(&node, &topic, &query).await?;
    blocking(move || {
        let handle = subscribed(&node, &topic)?;
        Ok(match handle.doc(key.as_bytes())? {
            Some(doc) => with_token(&handle, Json(doc)),
            None => with_token(
                &handle,
                ApiError::not_found(format!("document {key:?} not found in topic {topic}")).into_response(),
            ),
        })
    })
    .await
}

/// `GET /v1/topics/{t}/docs`: documents in key order, a page at a time (`after`, `limit`); with
/// conditions (`where`, repeated) and an order (`order=PATH` or `order=-PATH`), those meeting
/// every condition.
pub(super) async fn list_docs(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<wire::DocPage>> {
    let Path(topic) = path?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let conditions: Vec<&str> = pairs.iter().filter(|(name, _)| name == "where").map(|(_, v)| v.as_str()).collect();
    let order = pairs.iter().find(|(name, _)| name == "order").map(|(_, v)| parse_order(v)).transpose()?;
    if !conditions.is_empty() || order.is_some() {
        let filter = Filter::parse(conditions).map_err(ApiError::bad_request)?;
        let query = parse_query(raw.as_deref())?;
        let limit = super::positive_limit(&query)?;
        hold_causal(&node, &topic, &query).await?;
        return blocking(move || {
            let handle = subscribed(&node, &topic)?;
            let found = handle.find(&filter, order.as_ref(), query.get("after").map(String::as_str), limit).map_err(
                |error| match error {
                    FindError::Read(error) => ApiError::from(error),
                    other => ApiError::bad_request(other.to_string()),
                },
            )?;
            let mut page = wire::DocPage::new(found.docs, None, topic_token(&handle).to_string());
            page.next = found.next;
            page.scanned = Some(found.scanned);
            page.index = found.index;
            Ok(Json(page))
        })
        .await;
    }
    let query = parse_query(raw.as_deref())?;
    let list = ListQuery::parse(&query)?;
    if !list.prefix.is_empty() {
        return Err(ApiError::bad_request("documents are listed whole: prefix applies to keys (/kv) only"));
    }
    hold_causal(&node, &topic, &query).await?;
    blocking(move || {
        let handle = subscribed(&node, &topic)?;
        let page = handle.docs(list.after.as_deref(), list.limit)?;
        Ok(Json(wire::DocPage::new(page.docs, page.next, topic_token(&handle).to_string())))
    })
    .await
}

/// `GET /v1/topics/{t}/indexes`: the documents' indexes this node holds, with their progress.
pub(super) async fn list_indexes(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<wire::IndexEntry>>> {
    let Path(topic) = path?;
    blocking(move || {
        let handle = subscribed(&node, &topic)?;
        Ok(Json(handle.indexes().into_iter().map(wire::IndexEntry::from).collect()))
    })
    .await
}

/// `PUT /v1/topics/{t}/indexes/{name}`: declares the index on every node of the topic; the
/// body is `{"path": "a.b", "type": "string" | "number" | "bool"}`.
pub(super) async fn put_index(
    State(node): State<Node>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Bytes,
) -> ApiResult<Json<wire::IndexChanged>> {
    let Path((topic, name)) = path?;
    let def = index_def(&name, &body)?;
    blocking(move || {
        let handle = subscribed(&node, &topic)?;
        let commit = handle.declare_index(&name, &def)?;
        Ok(Json(index_changed(&handle, commit)))
    })
    .await
}

/// `DELETE /v1/topics/{t}/indexes/{name}`: drops the index on every node.
pub(super) async fn delete_index(
    State(node): State<Node>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<wire::IndexChanged>> {
    let Path((topic, name)) = path?;
    blocking(move || {
        let handle = subscribed(&node, &topic)?;
        match handle.drop_index(&name)? {
            Some(commit) => Ok(Json(index_changed(&handle, Some(commit)))),
            None => Err(ApiError::not_found(format!("no index {name:?} is declared on topic {topic}"))),
        }
    })
    .await
}

fn index_changed(handle: &NodeTopic, commit: Option<crate::Commit>) -> wire::IndexChanged {
    wire::IndexChanged {
        causal_token: topic_token(handle).to_string(),
        cid: commit.map(|commit| commit.cid.to_string()),
        height: commit.map(|commit| commit.height),
    }
}

/// The index an index route's body declares, its name checked.
pub(super) fn index_def(name: &str, body: &[u8]) -> ApiResult<IndexDef> {
    canopy_crdt::index::check_name(name).map_err(ApiError::bad_request)?;
    let body: wire::IndexBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(r#"an index is {{"path": "a.b", "type": "string" | "number" | "bool"}}: {e}"#))
    })?;
    IndexDef::new(&body.path, body.kind).map_err(ApiError::bad_request)
}

/// One change of `POST /v1/topics/{t}/docs`: the document `key` put, patched or deleted.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchChange {
    key: String,
    #[serde(default)]
    put: Option<serde_json::Value>,
    #[serde(default)]
    patch: Option<serde_json::Value>,
    #[serde(default)]
    delete: Option<bool>,
}

/// `POST /v1/topics/{t}/docs`: a JSON array of changes, `{"key": K, "put": {...}}`,
/// `{"key": K, "patch": {...}}` or `{"key": K, "delete": true}`, applied as one block, in
/// order (a change sees its document as the earlier ones left it); acknowledged (`ack`) and
/// expiring (`ttl`) as a single write.
pub(super) async fn batch_docs(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<wire::DocWritten>> {
    let Path(topic) = path?;
    let query = parse_query(query.as_deref())?;
    let expires = query.get("ttl").map(|text| parse_ttl(text)).transpose()?.map(|ttl| node.expiry_of(ttl));
    let ops = parse_doc_batch(&node, &body)?;
    let copies = topic_copies(&node, &query)?;
    let written = write_acked(node, topic, copies, move |handle: &NodeTopic| {
        let commit = handle.doc_batch(&ops, expires)?;
        Ok((commit, commit))
    })
    .await?;
    Ok(Json(doc_written(written, expires)))
}

/// The changes of a document batch's body, checked: a JSON array of `{"key": K, "put": {...}}`,
/// `{"key": K, "patch": {...}}` or `{"key": K, "delete": true}`, at most `batch_ops_max`.
pub(super) fn parse_doc_batch(node: &Node, body: &[u8]) -> ApiResult<Vec<(Vec<u8>, DocBatchOp)>> {
    let changes: Vec<BatchChange> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            r#"a document batch is a JSON array of {{"key": K, "put": {{...}}}}, {{"key": K, "patch": {{...}}}} or {{"key": K, "delete": true}}: {e}"#
        ))
    })?;
    let ops_max = node.inner().config.batch_ops_max;
    if changes.len() > ops_max {
        return Err(ApiError::bad_request(format!("{} changes exceed batch_ops_max {ops_max}", changes.len())));
    }
    let mut ops = Vec::with_capacity(changes.len());
    for (index, change) in changes.into_iter().enumerate() {
        let op = match (change.put, change.patch, change.delete) {
            (Some(doc), None, None) => DocBatchOp::Put(as_object(doc, index, "put")?),
            (None, Some(patch), None) => DocBatchOp::Patch(as_object(patch, index, "patch")?),
            (None, None, Some(true)) => DocBatchOp::Delete,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "change {index} ({:?}): give exactly one of put, patch or \"delete\": true",
                    change.key
                )));
            }
        };
        ops.push((change.key.into_bytes(), op));
    }
    Ok(ops)
}

/// The object a batch change `index` gives as its `what`.
fn as_object(value: serde_json::Value, index: usize, what: &str) -> ApiResult<Document> {
    match value {
        serde_json::Value::Object(doc) => Ok(doc),
        other => Err(ApiError::bad_request(format!("change {index}: {what} is a JSON object, not {}", kind(&other)))),
    }
}

/// The reply to a document write on a topic: the copies holding it, its causal token, and the
/// block it made (none when it changed nothing).
fn doc_written(written: super::kv::TopicWritten<Option<crate::Commit>>, expires: Option<u64>) -> wire::DocWritten {
    wire::DocWritten {
        acknowledged: written.acknowledged,
        causal_token: written.token,
        cid: written.result.map(|commit| commit.cid.to_string()),
        expires_ms: expires,
        height: written.result.map(|commit| commit.height),
    }
}
