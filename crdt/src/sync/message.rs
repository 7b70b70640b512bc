//! The sync protocol's messages and their strict decoding.

use canopy_dag::Cid;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::SyncConfig;
use crate::access::validate_topic_name;
use crate::types::{Head, KNOWN_SNAPSHOTS_MAX};

/// Most parts asked for, or sent, in one `WantParts` / `Parts`.
pub const PARTS_PER_REQUEST_MAX: usize = 16;

/// Most blocks carried inside one `Heads` announcement.
pub const INLINE_BLOCKS_MAX: usize = 64;

/// A block as carried in a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBlock {
    /// The CID the bytes must hash to.
    pub cid: Cid,
    /// The encoded block.
    pub bytes: ByteBuf,
}

/// A sync protocol message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// "These are my heads of `topic`."
    Heads {
        /// Topic name.
        topic: String,
        /// The sender's heads.
        heads: Vec<Head>,
        /// The blocks of the sender's latest local commits, lowest first, when they are small
        /// enough to travel with the announcement: a receiver that holds their parents applies
        /// them without asking. Empty in re-announcements.
        #[serde(default)]
        blocks: Vec<WireBlock>,
        /// No writer waits for copies of `blocks`: a receiver they change need not announce its
        /// own heads at once, only at its next re-announcement. Absent (false) in announcements
        /// of earlier versions, whose receivers answer every announcement that changes them.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        unawaited: bool,
    },
    /// "Send me the lowest blocks below `want` that are not below `have`."
    Want {
        /// Topic name.
        topic: String,
        /// The request's number, echoed by the answer.
        id: u64,
        /// Blocks the sender lacks.
        want: Vec<Cid>,
        /// Blocks the sender has: its heads, sampled ancestors, and blocks it learnt it has
        /// (among them the heads of the peer's snapshots it holds).
        have: Vec<Cid>,
    },
    /// The answer to a `Want`.
    Blocks {
        /// Topic name.
        topic: String,
        /// The number of the request this answers.
        id: u64,
        /// The lowest missing blocks, parents before children.
        blocks: Vec<WireBlock>,
        /// True when more missing blocks remain above these.
        more: bool,
        /// When the gap was too deep for one walk: the wanted blocks where the walk stopped,
        /// to fetch below first. `blocks` is empty then.
        frontier: Vec<Cid>,
        /// When the requester lacks blocks the peer pruned: the manifests of the snapshots
        /// that cover them, to fetch and merge first. `blocks` is empty then.
        #[serde(default)]
        snapshots: Vec<Cid>,
        /// The requester lacks blocks the peer pruned, and the peer is making the snapshot
        /// that covers them: ask again shortly. `snapshots` is empty then.
        #[serde(default)]
        snapshot_pending: bool,
    },
    /// "Send me these snapshot parts (manifests or chunks)."
    WantParts {
        /// Topic name.
        topic: String,
        /// The request's number, echoed by the answer.
        id: u64,
        /// The parts wanted.
        cids: Vec<Cid>,
    },
    /// The answer to a `WantParts`: the parts the peer has, in the order asked, as many as
    /// fit one message.
    Parts {
        /// Topic name.
        topic: String,
        /// The number of the request this answers.
        id: u64,
        /// The parts.
        parts: Vec<WireBlock>,
    },
}

/// Why a message was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageError {
    /// Larger than `message_bytes_max`.
    #[error("message of {bytes} bytes exceeds message_bytes_max {max}")]
    TooLarge {
        /// Size of the message.
        bytes: usize,
        /// The limit in force.
        max: usize,
    },
    /// Not a DAG-CBOR sync message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Well-formed but outside the protocol's bounds.
    #[error("invalid message: {0}")]
    Invalid(String),
}

impl Message {
    /// The topic the message is about.
    pub fn topic(&self) -> &str {
        match self {
            Message::Heads { topic, .. }
            | Message::Want { topic, .. }
            | Message::Blocks { topic, .. }
            | Message::WantParts { topic, .. }
            | Message::Parts { topic, .. } => topic,
        }
    }

    /// The number of a request or of the request an answer is for.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            Message::Want { id, .. }
            | Message::Blocks { id, .. }
            | Message::WantParts { id, .. }
            | Message::Parts { id, .. } => Some(*id),
            Message::Heads { .. } => None,
        }
    }

    /// The DAG-CBOR encoding.
    pub fn encode(&self) -> Vec<u8> {
        serde_ipld_dagcbor::to_vec(self).expect("encoding a message into memory cannot fail")
    }

    /// Decodes a message and checks it against `config`'s bounds.
    pub fn decode(bytes: &[u8], config: &SyncConfig) -> Result<Message, MessageError> {
        if bytes.len() > config.message_bytes_max {
            return Err(MessageError::TooLarge { bytes: bytes.len(), max: config.message_bytes_max });
        }
        let message: Message =
            serde_ipld_dagcbor::from_slice(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
        validate_topic_name(message.topic()).map_err(|e| MessageError::Invalid(e.to_string()))?;
        let over = |what: &str, n: usize, max: usize| {
            if n > max { Err(MessageError::Invalid(format!("{n} {what} exceed the bound {max}"))) } else { Ok(()) }
        };
        match &message {
            Message::Heads { heads, blocks, .. } => {
                over("heads", heads.len(), config.heads_max)?;
                over("inline blocks", blocks.len(), INLINE_BLOCKS_MAX)?;
            }
            Message::Want { want, have, .. } => {
                over("wanted blocks", want.len(), config.want_max)?;
                over("had blocks", have.len(), config.have_max)?;
            }
            Message::Blocks { blocks, frontier, snapshots, .. } => {
                over("blocks", blocks.len(), config.walk.blocks_max)?;
                over("frontier blocks", frontier.len(), config.want_max)?;
                over("snapshots", snapshots.len(), KNOWN_SNAPSHOTS_MAX)?;
            }
            Message::WantParts { cids, .. } => over("parts", cids.len(), PARTS_PER_REQUEST_MAX)?,
            Message::Parts { parts, .. } => over("parts", parts.len(), PARTS_PER_REQUEST_MAX)?,
        }
        Ok(message)
    }
}
