//! Answering peers' requests: the lowest blocks they lack, or the snapshots that stand for
//! blocks this replica pruned, or snapshot parts.

use std::collections::HashSet;

use canopy_dag::Cid;
use serde_bytes::ByteBuf;

use super::{Message, PARTS_PER_REQUEST_MAX, SyncConfig, WireBlock};
use crate::error::ReadError;
use crate::topic::Topic;
use crate::types::KNOWN_SNAPSHOTS_MAX;

/// Answers a request (`Want` or `WantParts`) for a topic this replica serves (`None`: one it
/// does not, which gets an empty answer). The node's block server and the simulator both
/// answer with this; other messages get no answer.
pub fn answer(topic: Option<&Topic>, request: Message, config: &SyncConfig) -> Result<Option<Message>, ReadError> {
    let answer = match (request, topic) {
        (Message::Want { topic: name, id, want, have }, Some(topic)) => {
            // The requester holds every pruned block when it holds the heads of every snapshot
            // that covers them: what it has applied is closed under "parent".
            let cover = topic.snapshots().cover;
            let had: HashSet<&Cid> = have.iter().collect();
            let mut pruned_had = true;
            for manifest in &cover {
                match topic.snapshot_manifest(manifest)? {
                    Some(manifest) => pruned_had &= manifest.heads.iter().all(|h| had.contains(&h.cid)),
                    None => pruned_had = false,
                }
            }
            let walk = topic.walk(&want, &have, &config.walk, pruned_had)?;
            let blocks =
                walk.blocks.into_iter().map(|(cid, bytes)| WireBlock { cid, bytes: ByteBuf::from(bytes) }).collect();
            if walk.pruned && !topic.snapshot_parts_held() {
                // Released after nobody fetched them for a while: make a new snapshot, which
                // the peer's next fetch gets.
                topic.request_compaction();
            }
            let snapshots =
                if walk.pruned { cover.into_iter().take(KNOWN_SNAPSHOTS_MAX).collect() } else { Vec::new() };
            Message::Blocks { topic: name, id, blocks, more: walk.more, frontier: walk.frontier, snapshots }
        }
        (Message::Want { topic, id, .. }, None) => {
            Message::Blocks { topic, id, blocks: Vec::new(), more: false, frontier: Vec::new(), snapshots: Vec::new() }
        }
        (Message::WantParts { topic: name, id, cids }, topic) => {
            let mut parts = Vec::new();
            // Room for the message's own fields besides the parts.
            let budget = config.message_bytes_max.saturating_sub(64 << 10);
            let mut bytes = 0;
            for cid in cids.iter().take(PARTS_PER_REQUEST_MAX) {
                let Some(part) = topic.map(|t| t.snapshot_part(cid)).transpose()?.flatten() else { continue };
                if !parts.is_empty() && bytes + part.len() > budget {
                    break;
                }
                bytes += part.len();
                parts.push(WireBlock { cid: *cid, bytes: ByteBuf::from(part) });
            }
            Message::Parts { topic: name, id, parts }
        }
        _ => return Ok(None),
    };
    Ok(Some(answer))
}
