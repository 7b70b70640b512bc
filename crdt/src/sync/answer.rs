//! Answering peers' requests: the lowest blocks they lack, or the snapshots that stand for
//! blocks this replica pruned, or snapshot parts.

use std::collections::HashSet;

use canopy_dag::Cid;
use serde_bytes::ByteBuf;

use super::{Message, PARTS_PER_REQUEST_MAX, SyncConfig, WireBlock};
use crate::error::ReadError;
use crate::topic::Topic;
use crate::types::{KNOWN_SNAPSHOTS_MAX, Snapshots};

/// Answers a request (`Want` or `WantParts`) for a topic this replica serves (`None`: one it
/// does not, which gets an empty answer). The node's block server and the simulator both
/// answer with this; other messages get no answer.
pub fn answer(topic: Option<&Topic>, request: Message, config: &SyncConfig) -> Result<Option<Message>, ReadError> {
    let answer = match (request, topic) {
        (Message::Want { topic: name, id, want, have }, Some(topic)) => {
            // The requester holds every pruned block when it holds the heads of every snapshot
            // that covers them and of every pruning since: what it has applied is closed under
            // "parent".
            let Snapshots { cover, frontier, .. } = topic.snapshots();
            let had: HashSet<&Cid> = have.iter().collect();
            let mut pruned_had = frontier.iter().all(|cid| had.contains(cid));
            for manifest in &cover {
                match topic.snapshot_manifest(manifest)? {
                    Some(manifest) => pruned_had &= manifest.heads.iter().all(|h| had.contains(&h.cid)),
                    None => pruned_had = false,
                }
            }
            let walk = topic.walk(&want, &have, &config.walk, pruned_had)?;
            let blocks =
                walk.blocks.into_iter().map(|(cid, bytes)| WireBlock { cid, bytes: ByteBuf::from(bytes) }).collect();
            // The peer lacks pruned blocks: it gets the snapshot this replica serves when that
            // covers them all; else one is made (pruned since, let go when idle, or never made
            // since the topic loaded) and the peer asks again shortly.
            let serves = walk.pruned
                && (topic.snapshot_parts_held() || {
                    topic.request_snapshot();
                    topic.snapshot_parts_held()
                });
            let snapshots = if serves {
                topic.snapshots().cover.into_iter().take(KNOWN_SNAPSHOTS_MAX).collect()
            } else {
                Vec::new()
            };
            let snapshot_pending = walk.pruned && !serves;
            Message::Blocks {
                topic: name,
                id,
                blocks,
                more: walk.more,
                frontier: walk.frontier,
                snapshots,
                snapshot_pending,
            }
        }
        (Message::Want { topic, id, .. }, None) => {
            let (blocks, frontier, snapshots) = (Vec::new(), Vec::new(), Vec::new());
            Message::Blocks { topic, id, blocks, more: false, frontier, snapshots, snapshot_pending: false }
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
