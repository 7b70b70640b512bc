//! The HTTP API, JSON under `/v1`, plus `/metrics`, `/livez` and `/readyz`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use canopy_crdt::{Access, AuthorId, CompactError, Mode, ReadError, TopicError, WriteError};
use futures::StreamExt as _;

use crate::metrics;
use crate::wire::{self, BlockRef, ErrorBody};

mod admin;
mod docs;
pub mod guard;
mod kv;
mod messages;
mod table_docs;
mod tables;
use crate::node::{Node, NodeError, NodeTopic};

/// Most entries one listing returns when the caller gives no `limit`.
const LIST_LIMIT_DEFAULT: usize = 1000;

/// An API error: a status and a message, sent as an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// A write applied but not acknowledged as asked: how many copies hold it, and its token.
    unacknowledged: Option<(u32, String)>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        // Messages from other crates sometimes end in a period; API errors never do.
        let message: String = message.into();
        ApiError { status, message: message.trim_end_matches('.').to_string(), unacknowledged: None }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (acknowledged, causal_token) = match self.unacknowledged {
            Some((acknowledged, token)) => (Some(acknowledged), Some(token)),
            None => (None, None),
        };
        (self.status, Json(ErrorBody { acknowledged, causal_token, error: self.message })).into_response()
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> ApiError {
        let status = match &error {
            WriteError::InvalidKey(_) | WriteError::TooManyOps { .. } => StatusCode::BAD_REQUEST,
            WriteError::InvalidValue(_) | WriteError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WriteError::TopicDropped => StatusCode::NOT_FOUND,
            WriteError::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl From<CompactError> for ApiError {
    fn from(error: CompactError) -> ApiError {
        let status = match &error {
            CompactError::Topic(TopicError::Closed) => StatusCode::NOT_FOUND,
            CompactError::NotListOwner { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> ApiError {
        ApiError::from_node(&error)
    }
}

impl ApiError {
    fn from_node(error: &NodeError) -> ApiError {
        let status = match error {
            NodeError::Topic(TopicError::InvalidName { .. }) => StatusCode::BAD_REQUEST,
            NodeError::NotSubscribed(_) => StatusCode::NOT_FOUND,
            NodeError::MessageTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            NodeError::MessageRate { .. } => StatusCode::TOO_MANY_REQUESTS,
            NodeError::MessageForbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request(format!("bad path: {}", rejection.body_text()))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking node work off the async runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> ApiResult<T> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "request handler failed"))?
}

/// The API's routes over `node`.
pub fn router(node: Node) -> Router {
    let body_limit = node.inner().config.body_bytes_max;
    Router::new()
        .route("/v1/topics", get(list_topics).post(create_topic))
        .route("/v1/topics/{topic}/access", get(access))
        .route("/v1/topics/{topic}/writers", post(grant))
        .route("/v1/topics/{topic}/writers/{writer}", delete(revoke))
        .route("/v1/topics/{topic}", put(subscribe).delete(unsubscribe))
        .route("/v1/topics/{topic}/kv", get(kv::list_keys))
        .route("/v1/topics/{topic}/kv/{*key}", put(kv::put_key).get(kv::get_key).delete(kv::delete_key))
        .route("/v1/topics/{topic}/counters/{*key}", post(kv::increment).get(kv::get_counter))
        .route("/v1/topics/{topic}/history/{*key}", get(kv::key_history))
        .route("/v1/topics/{topic}/batch", post(kv::batch))
        .route("/v1/topics/{topic}/docs", get(docs::list_docs).post(docs::batch_docs))
        .route("/v1/topics/{topic}/indexes", get(docs::list_indexes))
        .route("/v1/topics/{topic}/indexes/{name}", put(docs::put_index).delete(docs::delete_index))
        .route("/v1/topics/{topic}/messages", post(messages::publish).get(messages::stream))
        .route(
            "/v1/topics/{topic}/docs/{*key}",
            put(docs::put_doc).patch(docs::patch_doc).get(docs::get_doc).delete(docs::delete_doc),
        )
        .route("/v1/topics/{topic}/heads", get(heads))
        .route("/v1/topics/{topic}/compact", post(compact))
        .route("/v1/topics/{topic}/snapshots", get(snapshots))
        .route("/v1/topics/{topic}/watch", get(watch))
        .route("/v1/members", get(tables::members))
        .route("/v1/tables", get(tables::list_tables).post(tables::create_table))
        .route("/v1/tables/{table}", get(tables::show_table))
        .route("/v1/tables/{table}/kv", get(tables::list_keys))
        .route("/v1/tables/{table}/kv/{*key}", put(tables::put_key).get(tables::get_key).delete(tables::delete_key))
        .route("/v1/tables/{table}/batch", post(tables::batch))
        .route("/v1/tables/{table}/docs", get(table_docs::find_docs).post(table_docs::batch_docs))
        .route("/v1/tables/{table}/indexes", get(table_docs::list_indexes))
        .route("/v1/tables/{table}/indexes/{name}", put(table_docs::put_index).delete(table_docs::delete_index))
        .route(
            "/v1/tables/{table}/docs/{*key}",
            put(table_docs::put_doc)
                .patch(table_docs::patch_doc)
                .get(table_docs::get_doc)
                .delete(table_docs::delete_doc),
        )
        .route("/v1/tables/{table}/holds", get(tables::holds))
        .route("/v1/status", get(status))
        .route("/v1/admin/status", get(admin::admin_status))
        .route("/v1/admin/topics", get(admin::admin_topics))
        .route("/v1/admin/topics/{topic}/heads", get(admin::admin_heads))
        .route("/v1/admin/verify", post(admin::admin_verify))
        .route("/v1/admin/topics/{topic}/dag", get(admin::admin_dag))
        .route("/v1/admin/topics/{topic}/blocks/{cid}", get(admin::admin_block))
        .route("/v1/admin/topics/{topic}/dot", get(admin::admin_dot))
        .route("/v1/admin/backup", post(admin::admin_backup))
        .route("/v1/admin/drain", post(tables::start_drain).get(tables::drain_status))
        .route("/v1/admin/topics/{topic}/export", get(admin::admin_export))
        .route("/v1/admin/topics/{topic}/import", post(admin::admin_import))
        .route("/v1/peers", get(peers))
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .fallback(|| async { ApiError::not_found("no such endpoint; the API lives under /v1") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(node.clone(), guard::authorize))
        .with_state(node)
}

/// How long requests in flight get to finish once the API's shutdown begins; change and message
/// streams end at once (`Node::end_streams`).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves the API on `listener` until `shutdown` resolves; requests in flight then get
/// [`SHUTDOWN_GRACE`] to finish, and change and message streams end at once.
pub async fn serve(
    node: Node,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (begun, began) = tokio::sync::oneshot::channel();
    let streams = node.clone();
    let shutdown = async move {
        shutdown.await;
        streams.end_streams();
        let _ = begun.send(());
    };
    let server = axum::serve(listener, router(node)).with_graceful_shutdown(shutdown).into_future();
    let grace = async move {
        match began.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        served = server => served,
        () = grace => {
            tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "requests still in flight when the API's shutdown grace ran out");
            Ok(())
        }
    }
}

/// Serves the API over HTTPS with `tls` on `listener` until `shutdown` resolves; requests in
/// flight then get [`SHUTDOWN_GRACE`] to finish.
pub async fn serve_tls(
    node: Node,
    listener: tokio::net::TcpListener,
    tls: axum_server::tls_rustls::RustlsConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let (stopping, streams) = (handle.clone(), node.clone());
    tokio::spawn(async move {
        shutdown.await;
        streams.end_streams();
        stopping.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    axum_server::from_tcp_rustls(listener.into_std()?, tls)?
        .handle(handle)
        .serve(router(node).into_make_service())
        .await
}

/// Binds the API address.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

/// A subscribed topic. Reads and writes never subscribe on their own: a mistyped topic name
/// gets a 404 instead of a new replicated topic.
fn subscribed(node: &Node, topic: &str) -> ApiResult<NodeTopic> {
    canopy_crdt::validate_topic_name(topic).map_err(|e| ApiError::bad_request(e.to_string()))?;
    node.topic(topic).ok_or_else(|| {
        ApiError::not_found(format!(
            "topic {topic} is not subscribed: subscribe it first (PUT /v1/topics/{topic}, or canopy subscribe {topic})"
        ))
    })
}

/// A key given in a query either as text (`name`) or as base64 bytes (`name_base64`).
fn query_key(query: &HashMap<String, String>, name: &str) -> ApiResult<Option<Vec<u8>>> {
    let encoded = format!("{name}_base64");
    match (query.get(name), query.get(&encoded)) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!("give {name} or {encoded}, not both"))),
        (Some(text), None) => Ok(Some(text.clone().into_bytes())),
        (None, Some(encoded_value)) => BASE64
            .decode(encoded_value.as_bytes())
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("{encoded} is not base64: {e}"))),
        (None, None) => Ok(None),
    }
}

async fn list_topics(State(node): State<Node>) -> ApiResult<Json<Vec<wire::TopicSummary>>> {
    Ok(Json(node.topics().into_iter().map(topic_summary).collect()))
}

fn topic_summary(info: crate::TopicInfo) -> wire::TopicSummary {
    let crate::TopicInfo { topic, heads, max_height, keys, mode } = info;
    let heads = heads
        .into_iter()
        .filter_map(|head| Some(BlockRef { cid: head.cid.parse().ok()?, height: head.height }))
        .collect();
    wire::TopicSummary { heads, keys, max_height, mode: mode.to_string(), topic }
}

async fn subscribe(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<wire::Subscription>> {
    let Path(topic) = path?;
    blocking(move || {
        node.subscribe(&topic)?;
        Ok(Json(wire::Subscription { purged: None, subscribed: true, topic }))
    })
    .await
}

async fn create_topic(State(node): State<Node>, body: Bytes) -> ApiResult<Json<wire::TopicAccess>> {
    let body: wire::CreateTopic = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "malformed topic JSON (want {{\"name\": …, \"mode\": \"open\"|\"owned\"|\"writers\"|\"keyed\"}}): {e}"
        ))
    })?;
    let mode: Mode = body.mode.parse().map_err(ApiError::bad_request)?;
    blocking(move || {
        let topic = node.create_topic(&body.name, mode)?;
        Ok(Json(topic_access(&topic)?))
    })
    .await
}

async fn access(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<wire::TopicAccess>> {
    let Path(topic) = path?;
    let handle = subscribed(&node, &topic)?;
    blocking(move || Ok(Json(topic_access(&handle)?))).await
}

/// `POST /v1/topics/{t}/writers` with `{"writer": "<peer id>"}`: the owner grants a writer.
async fn grant(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult<Json<wire::WritersChange>> {
    let Path(topic) = path?;
    let body: wire::Grant = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("malformed grant JSON (want {{\"writer\": \"<peer id>\"}}): {e}"))
    })?;
    let writer: AuthorId = body.writer.parse().map_err(|e| ApiError::bad_request(format!("writer: {e}")))?;
    blocking(move || {
        let handle = subscribed(&node, &topic)?;
        let commit = handle.grant(writer)?;
        Ok(Json(writers_change(&handle, writer, commit)?))
    })
    .await
}

/// `DELETE /v1/topics/{t}/writers/{writer}`: the owner revokes a writer.
async fn revoke(
    State(node): State<Node>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<wire::WritersChange>> {
    let Path((topic, writer)) = path?;
    let writer: AuthorId = writer.parse().map_err(|e| ApiError::bad_request(format!("writer: {e}")))?;
    blocking(move || {
        let handle = subscribed(&node, &topic)?;
        let commit = handle.revoke(writer)?;
        Ok(Json(writers_change(&handle, writer, commit)?))
    })
    .await
}

/// What a grant or revocation did: the block it made (`None`: the list already said so) and
/// the topic's rule after it.
fn writers_change(
    handle: &NodeTopic,
    writer: AuthorId,
    commit: Option<canopy_crdt::Commit>,
) -> ApiResult<wire::WritersChange> {
    Ok(wire::WritersChange::new(topic_access(handle)?, writer.to_string(), commit.map(BlockRef::from)))
}

fn topic_access(handle: &NodeTopic) -> ApiResult<wire::TopicAccess> {
    let writers = handle.writers().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(access_reply(handle.name(), handle.access(), writers))
}

/// A topic's rule as the API shows it: its mode, owner, and who writes it (`None`: anyone).
fn access_reply(topic: &str, access: Access, writers: Option<Vec<AuthorId>>) -> wire::TopicAccess {
    wire::TopicAccess {
        mode: access.mode().as_str().to_string(),
        owner: access.owner().map(|owner| owner.to_string()),
        topic: topic.to_string(),
        writers: writers.map(|writers| writers.iter().map(ToString::to_string).collect()),
    }
}

async fn unsubscribe(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<wire::Subscription>> {
    let Path(topic) = path?;
    let query = parse_query(query.as_deref())?;
    let purge = match query.get("purge").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::bad_request(format!("purge must be true or false, not {other:?}"))),
    };
    canopy_crdt::validate_topic_name(&topic).map_err(|e| ApiError::bad_request(e.to_string()))?;
    blocking(move || {
        let removed = node.unsubscribe(&topic, purge)?;
        if !removed {
            return Err(ApiError::not_found(format!("topic {topic} is not subscribed")));
        }
        Ok(Json(wire::Subscription { purged: Some(purge), subscribed: false, topic }))
    })
    .await
}

/// The `limit` of a listing: a positive integer, [`LIST_LIMIT_DEFAULT`] when absent.
/// What a listing asks for: keys with `prefix` strictly after `after`, at most `limit`.
struct ListQuery {
    prefix: Vec<u8>,
    after: Option<Vec<u8>>,
    limit: usize,
}

impl ListQuery {
    fn parse(query: &HashMap<String, String>) -> ApiResult<ListQuery> {
        Ok(ListQuery {
            prefix: query_key(query, "prefix")?.unwrap_or_default(),
            after: query_key(query, "after")?,
            limit: positive_limit(query)?,
        })
    }
}

fn positive_limit(query: &HashMap<String, String>) -> ApiResult<usize> {
    match query.get("limit") {
        None => Ok(LIST_LIMIT_DEFAULT),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ApiError::bad_request(format!("limit must be a positive integer, not {text:?}"))),
    }
}

fn parse_query(query: Option<&str>) -> ApiResult<HashMap<String, String>> {
    let Some(query) = query else { return Ok(HashMap::new()) };
    serde_urlencoded::from_str(query).map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))
}

async fn heads(State(node): State<Node>, path: Result<Path<String>, PathRejection>) -> ApiResult<Json<wire::Heads>> {
    let Path(topic) = path?;
    let handle = subscribed(&node, &topic)?;
    Ok(Json(wire::Heads { heads: wire::heads(handle.heads()) }))
}

/// Compacts a topic: its DAG (snapshot and prune), its RocksDB ranges, or both (the default).
async fn compact(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult<Json<wire::Compaction>> {
    let Path(topic) = path?;
    let body: wire::Compact = if body.is_empty() {
        wire::Compact { dag: true, db: true }
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("malformed compact JSON: {e}")))?
    };
    blocking(move || {
        let handle = subscribed(&node, &topic)?;
        let mut reply = wire::Compaction::default();
        // RocksDB first: it flushes the memtables, so the bytes before are all counted; the DAG
        // compaction then compacts the ranges it prunes.
        let mut bytes = (None, 0);
        if body.db {
            let done = handle.crdt().compact_storage().map_err(storage_error)?;
            bytes = (Some(done.bytes_before), done.bytes_after);
        }
        if body.dag {
            let done = handle.compact()?;
            reply.snapshot = done.snapshot.map(|cid| cid.to_string());
            reply.heads = wire::heads(done.heads);
            reply.keys = Some(done.keys);
            reply.blocks = Some(done.blocks);
            reply.pruned_blocks = done.pruned_blocks;
            bytes = (Some(bytes.0.unwrap_or(done.bytes_before)), done.bytes_after);
        }
        reply.bytes_before = bytes.0.unwrap_or(0);
        reply.bytes_after = bytes.1;
        Ok(Json(reply))
    })
    .await
}

async fn snapshots(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<wire::Snapshots>> {
    let Path(topic) = path?;
    let handle = subscribed(&node, &topic)?;
    let snapshots = handle.crdt().snapshots();
    let text = |cids: Vec<canopy_crdt::Cid>| cids.iter().map(ToString::to_string).collect::<Vec<_>>();
    Ok(Json(wire::Snapshots {
        cover: text(snapshots.cover),
        frontier: text(snapshots.frontier),
        known: text(snapshots.known),
    }))
}

/// `GET /v1/topics/{t}/watch`: every change of the topic's keys, counters and documents; with
/// conditions (`where`, repeated, as a documents' query takes them) only documents' changes:
/// a document meeting them after its change, and `value: null` once one that met them no
/// longer does (or is deleted).
async fn watch(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>> {
    let Path(topic) = path?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    let conditions: Vec<&str> = pairs.iter().filter(|(name, _)| name == "where").map(|(_, v)| v.as_str()).collect();
    let filter = (!conditions.is_empty())
        .then(|| crate::node::filter::Filter::parse(conditions).map_err(ApiError::bad_request))
        .transpose()?;
    let handle = subscribed(&node, &topic)?;
    let watchers = Watchers::enter(&node)?;
    // The writer thread pushes each change straight into this channel without blocking; a
    // client that falls WATCH_QUEUE_DEPTH changes behind loses its stream and must watch again.
    // No thread waits on a watcher.
    // A counter's change carries one contributor's total; the stream reports the counter's sum,
    // read when the event goes out (never on the writer thread).
    // A document's change is one field's: the stream reports the whole document, read when the
    // event goes out.
    let (tx, rx) = tokio::sync::mpsc::channel::<Watched>(WATCH_QUEUE_DEPTH);
    handle.watch_with(Box::new(move |change| {
        if let Some(counter) = change.counter() {
            return tx.try_send(Watched::Counter(counter, change.height)).is_ok();
        }
        if let Some((doc, _)) = change.doc() {
            return tx.try_send(Watched::Doc(doc, change.height)).is_ok();
        }
        let data = wire::KeyChange::new(&change.key, change.value.as_deref(), change.height, change.expired);
        tx.try_send(Watched::Ready(event_text(&data))).is_ok()
    }));
    // The documents meeting the conditions now, read once the watcher is in place, so one that
    // stops meeting them is reported.
    let mut meeting = std::collections::HashSet::new();
    if let Some(filter) = &filter {
        let (handle, filter) = (handle.clone(), filter.clone());
        let found = blocking(move || {
            handle.find(&filter, None, None, usize::MAX).map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .await?;
        meeting.extend(found.docs.into_iter().map(|(key, _)| key));
    }
    let state = (rx, watchers, handle, filter, meeting);
    let stream = futures::stream::unfold(state, |(mut rx, watchers, handle, filter, mut meeting)| async move {
        let data = loop {
            match rx.recv().await? {
                Watched::Ready(_) | Watched::Counter(..) if filter.is_some() => continue,
                Watched::Ready(data) => break data,
                Watched::Counter(counter, height) => {
                    let value = handle.counter(&counter).ok()?;
                    break event_text(&wire::CounterChange::new(&counter, value, height));
                }
                Watched::Doc(doc, height) => {
                    let value = handle.doc(&doc).ok()?;
                    if let Some(filter) = &filter {
                        let meets = value.as_ref().is_some_and(|value| filter.matches(value));
                        let met = if meets { !meeting.insert(doc.clone()) } else { meeting.remove(&doc) };
                        if !meets && !met {
                            continue;
                        }
                        let value = if meets { value } else { None };
                        break event_text(&wire::DocChange::new(&doc, value, height));
                    }
                    break event_text(&wire::DocChange::new(&doc, value, height));
                }
            }
        };
        Some((Ok(Event::default().data(data)), (rx, watchers, handle, filter, meeting)))
    });
    Ok(Sse::new(stream.take_until(node.streams_ended())).keep_alive(KeepAlive::default()))
}

/// A change on its way to a watch stream.
enum Watched {
    /// A key's change, its event's text ready.
    Ready(String),
    /// A counter's change at a height: the event reads the counter's sum.
    Counter(Vec<u8>, u64),
    /// A document's change at a height: the event reads the document.
    Doc(Vec<u8>, u64),
}

/// A watch event as the text of its `data:` field.
fn event_text(event: &impl serde::Serialize) -> String {
    serde_json::to_string(event).expect("a watch event serializes: its fields are strings and numbers")
}

/// Changes one watcher may fall behind before its stream ends.
const WATCH_QUEUE_DEPTH: usize = 1024;

/// One open watcher, counted against `watchers_max` until its stream ends.
struct Watchers {
    node: Node,
}

impl Watchers {
    fn enter(node: &Node) -> ApiResult<Watchers> {
        let counter = &node.inner().counters.watchers;
        let max = node.inner().config.watchers_max as u64;
        if counter.fetch_add(1, Ordering::SeqCst) >= max {
            counter.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{max} watchers are open already (watchers_max): close one or raise the setting"),
            ));
        }
        Ok(Watchers { node: node.clone() })
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.node.inner().counters.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

pub use admin::CAR_IMPORT_BYTES_MAX;

fn storage_error(error: canopy_crdt::StorageError) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

async fn status(State(node): State<Node>) -> Json<wire::Status> {
    let crate::Status { version, listen, peers, topics, .. } = node.status();
    let author = wire::WirePeerId(node.author().peer_id());
    let peer_id = wire::WirePeerId(node.inner().transport.peer_id());
    Json(wire::Status { author, listen, peer_id, peers, topics, version })
}

async fn peers(State(node): State<Node>) -> Json<Vec<wire::Peer>> {
    Json(node.peers().into_iter().map(wire::Peer::from).collect())
}

async fn metrics_text(State(node): State<Node>) -> Response {
    // Rendering reads the store (key counts, copies' missing heads): off the async runtime.
    let rendered = tokio::task::spawn_blocking(move || metrics::render(&node)).await.unwrap_or(Err(std::fmt::Error));
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            .into_response(),
        Err(error) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn ready(State(node): State<Node>) -> ApiResult<&'static str> {
    if node.store().is_poisoned() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage failed; restart the node"));
    }
    Ok("ready")
}
