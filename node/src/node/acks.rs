//! Acknowledgement of topic writes by peers: a write asking for `n` copies is acknowledged once
//! `n - 1` peers have announced (signed) heads that include it. A write's announcement says
//! whether a write waits (a waiting write registers before it is made, so its commit's
//! announcement sees it); a replica that such an announcement's blocks change announces its
//! heads at once (at most every [`canopy_crdt::sync::ECHO_INTERVAL_MS`]), so a writer hears
//! within a round trip. When no write waits, peers announce at their next re-announcement.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canopy_crdt::{BlockLimits, Cid, Commit, Topic};
use canopy_transport::PeerId;
use tokio::sync::broadcast;

use super::{Heard, Listener, Node, NodeTopic};

/// Announcements kept for a waiting write that has not looked at them yet; a write that falls
/// further behind misses some and waits for the next ones.
const HEARD_QUEUE: usize = 1024;
/// Most blocks looked at to decide whether a peer's heads include a write.
const ANCESTRY_VISITS_MAX: usize = 4096;

/// A peer's first-hand announcement of a topic's heads.
type Announcement = (PeerId, Vec<Cid>);

/// The topics writes are waiting on, with what their peers announce of them.
#[derive(Default)]
pub(crate) struct PeerAcks {
    waiting: Mutex<HashMap<String, (usize, broadcast::Sender<Announcement>)>>,
}

impl PeerAcks {
    /// The listener passing peers' first-hand announcements of waited-on topics to the writes.
    pub(crate) fn listener(self: &Arc<PeerAcks>) -> Listener {
        let acks = Arc::clone(self);
        Arc::new(move |heard| {
            // A relayed announcement is its signer's statement too, and one made before the
            // write cannot include it: the signer counts whichever way it came.
            if let Heard::Heads { topic, signer: Some(signer), heads, .. } = heard
                && let Some((_, sender)) = acks.waiting.lock().expect("acks lock").get(topic)
            {
                let _ = sender.send((signer, heads.to_vec()));
            }
        })
    }

    /// Whether a write waits for peers' copies of its commit to `topic`: its announcement then
    /// asks the peers it changes to announce their heads at once.
    pub(crate) fn awaited(&self, topic: &str) -> bool {
        self.waiting.lock().expect("acks lock").contains_key(topic)
    }

    fn watch(&self, topic: &str) -> broadcast::Receiver<Announcement> {
        let mut waiting = self.waiting.lock().expect("acks lock");
        let (count, sender) =
            waiting.entry(topic.to_string()).or_insert_with(|| (0, broadcast::channel(HEARD_QUEUE).0));
        *count += 1;
        sender.subscribe()
    }

    fn unwatch(&self, topic: &str) {
        let mut waiting = self.waiting.lock().expect("acks lock");
        if let Some((count, _)) = waiting.get_mut(topic) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(topic);
            }
        }
    }
}

/// Whether `heads`, a peer's, include the block `cid` at `height`: one of them is it, or has it
/// below, as far as this replica's blocks show (a head it does not hold does not count).
fn covers(topic: &Topic, heads: &[Cid], cid: Cid, height: u64) -> bool {
    let mut stack: Vec<Cid> = heads.to_vec();
    let mut seen: HashSet<Cid> = HashSet::new();
    while let Some(next) = stack.pop() {
        if next == cid {
            return true;
        }
        if !seen.insert(next) || seen.len() > ANCESTRY_VISITS_MAX {
            continue;
        }
        let Ok(Some(bytes)) = topic.block(&next) else { continue };
        let Ok(block) = canopy_crdt::Block::decode(topic.name(), next, &bytes, &BlockLimits::PROTOCOL) else {
            continue;
        };
        if block.height() > height {
            stack.extend_from_slice(block.links());
        }
    }
    false
}

/// A write's wait for peers' copies, begun before the write so that no announcement of a peer
/// that applied it quickly is missed; ends when dropped.
pub struct AckWait {
    node: Node,
    topic: NodeTopic,
    heard: broadcast::Receiver<Announcement>,
}

impl Drop for AckWait {
    fn drop(&mut self) {
        self.node.inner.peer_acks.unwatch(self.topic.name());
    }
}

impl AckWait {
    /// Waits until `copies` replicas hold `commit` (this node and peers whose own announced
    /// heads include it), at most the node's `ack_timeout_ms`: `Ok` with the count, or `Err`
    /// with how many held it by then.
    pub async fn wait(mut self, commit: Commit, copies: u32) -> Result<u32, u32> {
        let timeout = Duration::from_millis(self.node.inner.config.ack_timeout_ms);
        let mut holders: HashSet<PeerId> = HashSet::new();
        let crdt = self.topic.crdt().clone();
        let heard = &mut self.heard;
        let waited = tokio::time::timeout(timeout, async {
            while holders.len() + 1 < copies as usize {
                let (peer, heads) = match heard.recv().await {
                    Ok(announcement) => announcement,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if holders.contains(&peer) {
                    continue;
                }
                let topic = crdt.clone();
                let held = tokio::task::spawn_blocking(move || covers(&topic, &heads, commit.cid, commit.height))
                    .await
                    .unwrap_or(false);
                if held {
                    holders.insert(peer);
                }
            }
        })
        .await;
        let acknowledged = holders.len() as u32 + 1;
        let counters = &self.node.inner.counters;
        if waited.is_ok() && acknowledged >= copies {
            counters.acks_met.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(acknowledged)
        } else {
            counters.acks_missed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(acknowledged)
        }
    }
}

impl Node {
    /// Begins waiting for peers' copies of a write to `topic` about to be made: call before the
    /// write, then [`AckWait::wait`] with its commit.
    pub fn await_acks(&self, topic: &NodeTopic) -> AckWait {
        let heard = self.inner.peer_acks.watch(topic.name());
        AckWait { node: self.clone(), topic: topic.clone(), heard }
    }
}
