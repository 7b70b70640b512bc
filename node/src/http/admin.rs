//! The operations routes under `/v1/admin`: the store's figures, heads and blocks of any topic,
//! verification, DAG drawings, backups under the backup directory, and CAR export and import,
//! both streamed.

use std::io::{Seek as _, Write};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;

use super::{ApiError, ApiResult, blocking, parse_query, storage_error};
use crate::Node;
use crate::wire::{self, BlockView, DagStats, Verification};

/// The node's storage as the operations tool shows it: RocksDB's figures per column family and
/// every topic's figures.
pub(super) async fn admin_status(State(node): State<Node>) -> ApiResult<Json<wire::AdminStatus>> {
    blocking(move || {
        let inspector = inspector(&node)?;
        let families = inspector.families().map_err(storage_error)?;
        let topics = inspector.topics().map_err(storage_error)?;
        Ok(Json(wire::AdminStatus { families, peer_id: node.status().peer_id, topics }))
    })
    .await
}

pub(super) async fn admin_topics(State(node): State<Node>) -> ApiResult<Json<wire::AdminTopics>> {
    blocking(move || {
        let inspector = inspector(&node)?;
        Ok(Json(wire::AdminTopics { topics: inspector.topics().map_err(storage_error)? }))
    })
    .await
}

/// Heads of any topic in the store, subscribed or not.
pub(super) async fn admin_heads(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<wire::TopicHeads>> {
    let Path(topic) = path?;
    blocking(move || {
        let inspector = inspector(&node)?;
        let heads = inspector
            .heads(&topic)
            .map_err(storage_error)?
            .ok_or_else(|| ApiError::not_found(format!("no topic {topic} in this node's store")))?;
        Ok(Json(wire::TopicHeads { heads: wire::heads(heads), topic }))
    })
    .await
}

/// Verifies the node's store (see `canopy_crdt::inspect`); problems are in the answer, which is
/// a 200 either way.
pub(super) async fn admin_verify(State(node): State<Node>, body: Bytes) -> ApiResult<Json<Verification>> {
    let body: wire::Verify = if body.is_empty() {
        wire::Verify::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("malformed verify JSON: {e}")))?
    };
    blocking(move || {
        let inspector = inspector(&node)?;
        Ok(Json(inspector.verify(&body.topics).map_err(storage_error)?))
    })
    .await
}

fn inspector(node: &Node) -> ApiResult<canopy_crdt::inspect::Inspector> {
    node.store().inspector().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn no_topic(topic: &str) -> ApiError {
    ApiError::not_found(format!("no topic {topic} in this node's store"))
}

pub(super) async fn admin_dag(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<DagStats>> {
    let Path(topic) = path?;
    blocking(move || {
        let stats = inspector(&node)?.dag_stats(&topic).map_err(storage_error)?.ok_or_else(|| no_topic(&topic))?;
        Ok(Json(stats))
    })
    .await
}

pub(super) async fn admin_block(
    State(node): State<Node>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<BlockView>> {
    let Path((topic, cid)) = path?;
    let cid: canopy_crdt::Cid = cid.parse().map_err(|e| ApiError::bad_request(format!("{cid:?} is not a CID: {e}")))?;
    blocking(move || {
        let view = inspector(&node)?
            .block(&topic, &cid)
            .map_err(storage_error)?
            .ok_or_else(|| ApiError::not_found(format!("topic {topic} has no block {cid}")))?;
        Ok(Json(view))
    })
    .await
}

pub(super) async fn admin_dot(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let Path(topic) = path?;
    let query = parse_query(query.as_deref())?;
    let from = match query.get("from") {
        Some(text) => Some(
            text.parse::<canopy_crdt::Cid>()
                .map_err(|e| ApiError::bad_request(format!("from {text:?} is not a CID: {e}")))?,
        ),
        None => None,
    };
    let depth = match query.get("depth") {
        Some(text) => {
            text.parse::<usize>().map_err(|_| ApiError::bad_request(format!("depth {text:?} is not a number")))?
        }
        None => 16,
    };
    blocking(move || {
        let dot = inspector(&node)?
            .dot(&topic, from, depth.min(DOT_DEPTH_MAX), DOT_NODES_MAX)
            .map_err(storage_error)?
            .ok_or_else(|| no_topic(&topic))?;
        Ok(([(axum::http::header::CONTENT_TYPE, "text/vnd.graphviz")], dot).into_response())
    })
    .await
}

/// Deepest and largest graph `/dot` draws.
const DOT_DEPTH_MAX: usize = 1000;
const DOT_NODES_MAX: usize = 5000;

/// Longest backup name.
const BACKUP_NAME_BYTES_MAX: usize = 128;

/// A backup's name, checked: one plain path component, so a backup lands under the backup
/// directory and nowhere else.
fn backup_name(name: &str) -> ApiResult<&str> {
    let plain = !name.is_empty()
        && name.len() <= BACKUP_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !plain {
        return Err(ApiError::bad_request(format!(
            "backup name {name:?} is not a plain name: use 1 to {BACKUP_NAME_BYTES_MAX} characters from \
             A-Z a-z 0-9 . _ - (not . or ..); the backup goes under the node's backup directory"
        )));
    }
    Ok(name)
}

/// A consistent copy of the node's database in `<backup dir>/<name>/db` (a RocksDB checkpoint)
/// with its subscriptions: a node started on that directory serves the same state (under its
/// own new identity).
pub(super) async fn admin_backup(State(node): State<Node>, body: Bytes) -> ApiResult<Json<wire::BackedUp>> {
    let body: wire::Backup = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("malformed backup JSON (want {{\"name\": \"<backup name>\"}}): {e}"))
    })?;
    let out = node.inner().config.backup_dir().join(backup_name(&body.name)?);
    blocking(move || {
        if out.join("db").exists() {
            return Err(ApiError::new(StatusCode::CONFLICT, format!("backup {} exists already", body.name)));
        }
        std::fs::create_dir_all(&out).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot create {}: {e}", out.display()))
        })?;
        inspector(&node)?.checkpoint(&out.join("db")).map_err(storage_error)?;
        let subscriptions = node.inner().config.data_dir.join("subscriptions");
        if subscriptions.exists() {
            std::fs::copy(&subscriptions, out.join("subscriptions"))
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("copying subscriptions: {e}")))?;
        }
        Ok(Json(wire::BackedUp { name: body.name, out: out.display().to_string() }))
    })
    .await
}

/// Largest CAR file `/import` takes; it is written to a temporary file as it arrives.
pub const CAR_IMPORT_BYTES_MAX: u64 = 1 << 30;
/// Bytes of an export gathered before they go out as one piece of the answer.
const EXPORT_PIECE_BYTES: usize = 64 << 10;
/// Pieces of an export waiting to go out: the store is read no further ahead than this.
const EXPORT_PIECES_QUEUED: usize = 16;

/// A writer that hands what it is given to an answer's body, piece by piece, blocking while
/// the body is [`EXPORT_PIECES_QUEUED`] pieces behind.
struct BodyWriter {
    pieces: tokio::sync::mpsc::Sender<Result<Bytes, ApiError>>,
    piece: Vec<u8>,
}

impl Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.piece.extend_from_slice(buf);
        if self.piece.len() >= EXPORT_PIECE_BYTES {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.piece.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::take(&mut self.piece));
        self.pieces
            .blocking_send(Ok(piece))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

/// A topic of the store as a CARv1 file (see [`crate::car`]), streamed: the store is read on a
/// blocking thread as the client takes the answer.
pub(super) async fn admin_export(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(topic) = path?;
    let (pieces, mut queued) = tokio::sync::mpsc::channel(EXPORT_PIECES_QUEUED);
    let inspector = inspector(&node)?;
    let name = topic.clone();
    tokio::task::spawn_blocking(move || {
        let failed = pieces.clone();
        let writer = BodyWriter { pieces, piece: Vec::new() };
        let outcome = match crate::car::export(&inspector, &name, writer, &mut |_| {}) {
            Ok(Some(_)) => return,
            Ok(None) => ApiError::not_found(format!("no topic {name} in this node's store")),
            Err(error) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}")),
        };
        let _ = failed.blocking_send(Err(outcome));
    });
    // The first piece decides the status: a topic that is missing or cannot be exported fails
    // before anything was written, so its error is the whole answer.
    let first = match queued.recv().await {
        Some(Ok(piece)) => piece,
        Some(Err(error)) => return Err(error),
        None => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the export stopped")),
    };
    // A failure once the answer has begun can only cut it short: the client sees a damaged file.
    let rest = futures::stream::unfold(queued, |mut queued| async move {
        let piece = queued.recv().await?.map_err(|error| std::io::Error::other(error.message));
        Some((piece, queued))
    });
    let body = Body::from_stream(futures::stream::once(async move { Ok(first) }).chain(rest));
    Ok(([(header::CONTENT_TYPE, "application/vnd.ipld.car; version=1")], body).into_response())
}

/// Imports a CARv1 file into a topic, subscribing it first if needed, and announces the heads.
/// The file is written to a temporary file beside the database as it arrives (at most
/// [`CAR_IMPORT_BYTES_MAX`]), then read item by item on a blocking thread. Snapshots in it are
/// merged only when this node may speak for the topic (403 otherwise, nothing merged).
pub(super) async fn admin_import(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Json<crate::car::Imported>> {
    let Path(topic) = path?;
    canopy_crdt::validate_topic_name(&topic).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let file = spool(&node, body).await?;
    blocking(move || {
        let car = crate::car::CarReader::open(std::io::BufReader::new(file))
            .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        let handle = match node.topic(&topic) {
            Some(handle) => handle,
            None => node.subscribe(&topic)?,
        };
        let importer = crate::car::Importer::Node(node.store().author());
        let report = crate::car::import(handle.crdt(), car, importer, &mut |_| {}).map_err(|e| {
            let status = if e.is::<crate::car::NotSpeaker>() { StatusCode::FORBIDDEN } else { StatusCode::BAD_REQUEST };
            ApiError::new(status, format!("{e:#}"))
        })?;
        handle.announce();
        Ok(Json(report))
    })
    .await
}

/// Writes a request body to an unnamed temporary file in the data directory (gone when
/// closed), refusing one longer than [`CAR_IMPORT_BYTES_MAX`]; returns it rewound.
async fn spool(node: &Node, body: Body) -> ApiResult<std::fs::File> {
    use tokio::io::AsyncWriteExt as _;
    let internal =
        |e: std::io::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("spooling the file: {e}"));
    let file = tempfile::tempfile_in(&node.inner().config.data_dir).map_err(internal)?;
    let mut file = tokio::io::BufWriter::new(tokio::fs::File::from_std(file));
    let mut stream = body.into_data_stream();
    let mut received = 0u64;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| ApiError::bad_request(format!("the upload broke off: {e}")))?;
        received += piece.len() as u64;
        if received > CAR_IMPORT_BYTES_MAX {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a CAR file to import is at most {CAR_IMPORT_BYTES_MAX} bytes: import it offline with canopy-ops"
                ),
            ));
        }
        file.write_all(&piece).await.map_err(internal)?;
    }
    file.flush().await.map_err(internal)?;
    let mut file = file.into_inner().into_std().await;
    file.rewind().map_err(internal)?;
    Ok(file)
}
