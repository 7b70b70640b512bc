//! Ephemeral messages: `POST /v1/topics/{t}/messages` publishes one, `GET` streams them
//! (server-sent events) as they arrive. Nothing is stored or replayed.

use std::convert::Infallible;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::StreamExt as _;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiResult, Watchers, event_text, subscribed};
use crate::node::Node;
use crate::wire;

/// `POST /v1/topics/{t}/messages`: the body is the message.
pub(super) async fn publish(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<wire::Published>)> {
    let Path(topic) = path?;
    subscribed(&node, &topic)?;
    let published = node.publish(&topic, body.to_vec()).await?;
    let reply = wire::Published { local_listeners: published.local_listeners, sent: published.sent };
    Ok((StatusCode::ACCEPTED, Json(reply)))
}

/// `GET /v1/topics/{t}/messages`: every message published on the topic from now on, on any node.
pub(super) async fn stream(
    State(node): State<Node>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>> {
    let Path(topic) = path?;
    subscribed(&node, &topic)?;
    let watchers = Watchers::enter(&node)?;
    let listener = node.messages(&topic)?;
    let stream =
        futures::stream::unfold((listener, watchers, 0u64), |(mut listener, watchers, mut missed)| async move {
            loop {
                match listener.recv().await {
                    Ok(message) => {
                        let mut event =
                            wire::MessageEvent::new(message.from.to_string(), &message.data, message.received_ms);
                        event.missed = (missed > 0).then_some(missed);
                        let data = event_text(&event);
                        return Some((Ok(Event::default().data(data)), (listener, watchers, 0)));
                    }
                    Err(RecvError::Lagged(count)) => missed += count,
                    Err(RecvError::Closed) => return None,
                }
            }
        });
    Ok(Sse::new(stream.take_until(node.streams_ended())).keep_alive(KeepAlive::default()))
}
