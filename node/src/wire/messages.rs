//! The messages' routes (`/v1/topics/{t}/messages`): what publishing answers and what a
//! listener's stream carries.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

/// `POST /v1/topics/{t}/messages`: where the message went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Listeners on the node that published it which received it.
    pub local_listeners: usize,
    /// Whether some other node listening to the topic's messages was sent it.
    pub sent: bool,
}

/// One event of `GET /v1/topics/{t}/messages` (server-sent events, one JSON object per `data:`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEvent {
    /// The message as text; `None` when not UTF-8.
    pub data: Option<String>,
    /// The message's bytes in base64.
    pub data_base64: String,
    /// The peer id of the node that published it.
    pub from: String,
    /// Messages this listener missed just before this one, because it fell behind (present
    /// only then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
    /// When the node serving the stream received it, in milliseconds since the Unix epoch.
    pub received_ms: u64,
}

impl MessageEvent {
    /// The event of `data` from `from`, received at `received_ms`.
    pub fn new(from: String, data: &[u8], received_ms: u64) -> MessageEvent {
        let text = std::str::from_utf8(data).ok().map(str::to_string);
        MessageEvent { data: text, data_base64: BASE64.encode(data), from, missed: None, received_ms }
    }
}
