//! Ephemeral messages on a topic: published over gossipsub to the nodes listening to the
//! topic's messages, delivered to their listeners, never stored nor replayed. A node joins a
//! topic's messages while something on it listens, and leaves when the last listener goes.
//! Each publisher is held to [`RATE_PER_S`] messages a second (a burst of [`BURST`]) by every
//! node that receives them; beyond that its messages are dropped and counted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use canopy_transport::{MESSAGE_BYTES_MAX, PeerId};
use tokio::sync::broadcast;

use super::{Node, NodeError, NodeInner};

/// Messages a publisher may have delivered per second on one node, all topics together.
pub const RATE_PER_S: f64 = 100.0;

/// Messages a publisher may have delivered at once before the rate applies.
pub const BURST: f64 = 200.0;

/// Messages one listener may fall behind before it misses some.
const LISTENER_QUEUE: usize = 1024;

/// One message as a listener receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMessage {
    /// The node that published it.
    pub from: PeerId,
    /// What it says.
    pub data: Vec<u8>,
    /// When this node received it, in milliseconds since the Unix epoch.
    pub received_ms: u64,
}

/// What publishing a message did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Whether some other node listening to the topic's messages was sent it.
    pub sent: bool,
    /// Listeners on this node it was delivered to.
    pub local_listeners: usize,
}

/// A listener to a topic's messages: messages published from its creation on, on any node.
/// The node leaves a topic's messages once its last listener is dropped.
pub struct MessageListener {
    receiver: Option<broadcast::Receiver<TopicMessage>>,
    node: Node,
}

impl MessageListener {
    /// The next message; `Err(Lagged(n))` when `n` were missed because the listener fell behind,
    /// `Err(Closed)` when the node shut down.
    pub async fn recv(&mut self) -> Result<TopicMessage, broadcast::error::RecvError> {
        match &mut self.receiver {
            Some(receiver) => receiver.recv().await,
            None => Err(broadcast::error::RecvError::Closed),
        }
    }
}

impl Drop for MessageListener {
    fn drop(&mut self) {
        drop(self.receiver.take());
        leave_unheard(self.node.inner());
    }
}

/// The node's topics with listeners, and each publisher's allowance.
#[derive(Default)]
pub(crate) struct Messages {
    topics: Mutex<HashMap<String, broadcast::Sender<TopicMessage>>>,
    buckets: Mutex<HashMap<PeerId, (f64, Instant)>>,
}

impl Messages {
    /// Delivers a received message of `topic` from `signer` to the listeners here, unless the
    /// signer is over its rate; `false` when dropped for that.
    pub(crate) fn deliver(&self, topic: &str, signer: PeerId, data: Vec<u8>) -> bool {
        if !self.allow(signer) {
            return false;
        }
        let topics = self.topics.lock().expect("messages lock");
        if let Some(sender) = topics.get(topic) {
            let _ = sender.send(TopicMessage { from: signer, data, received_ms: crate::auth::now_ms() });
        }
        true
    }

    /// Whether `peer` may have one more message delivered now (a token bucket per peer).
    fn allow(&self, peer: PeerId) -> bool {
        self.allow_at(peer, Instant::now())
    }

    /// Whether `peer` may have one more message delivered at `now`.
    fn allow_at(&self, peer: PeerId, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().expect("messages lock");
        if buckets.len() > 10_000 {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * RATE_PER_S < BURST
            });
        }
        let (tokens, at) = buckets.entry(peer).or_insert((BURST, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * RATE_PER_S).min(BURST);
        *at = (*at).max(now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Node {
    /// Publishes `data` on the messages of `topic` (subscribed here): every listener on any node,
    /// this one's included, receives it once; nothing is stored. At most
    /// [`MESSAGE_BYTES_MAX`] bytes, and this node's own rate is held as others' are.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<Published, NodeError> {
        self.topic(topic).ok_or_else(|| NodeError::NotSubscribed(topic.to_string()))?;
        if data.len() > MESSAGE_BYTES_MAX {
            return Err(NodeError::MessageTooLarge { bytes: data.len(), max: MESSAGE_BYTES_MAX });
        }
        let inner = self.inner();
        let me = inner.transport.peer_id();
        if !super::replicator::may_publish(inner, topic, me) {
            return Err(NodeError::MessageForbidden(topic.to_string()));
        }
        if !inner.messages.allow(me) {
            return Err(NodeError::MessageRate { per_s: RATE_PER_S });
        }
        let local_listeners = {
            let topics = inner.messages.topics.lock().expect("messages lock");
            let message = TopicMessage { from: me, data: data.clone(), received_ms: crate::auth::now_ms() };
            topics.get(topic).and_then(|sender| sender.send(message).ok()).unwrap_or(0)
        };
        let sent = inner.transport.publish_message(topic, data).await;
        Ok(Published { sent, local_listeners })
    }

    /// Listens to the messages of `topic` (subscribed here) published from now on.
    pub fn messages(&self, topic: &str) -> Result<MessageListener, NodeError> {
        self.topic(topic).ok_or_else(|| NodeError::NotSubscribed(topic.to_string()))?;
        let inner = self.inner();
        let mut topics = inner.messages.topics.lock().expect("messages lock");
        let sender = topics.entry(topic.to_string()).or_insert_with(|| {
            inner.transport.subscribe_messages(topic);
            broadcast::channel(LISTENER_QUEUE).0
        });
        Ok(MessageListener { receiver: Some(sender.subscribe()), node: self.clone() })
    }
}

/// Leaves the messages of topics nothing listens to any more.
fn leave_unheard(inner: &NodeInner) {
    let mut topics = inner.messages.topics.lock().expect("messages lock");
    topics.retain(|topic, sender| {
        let heard = sender.receiver_count() > 0;
        if !heard {
            inner.transport.unsubscribe_messages(topic);
        }
        heard
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_gets_its_burst_then_its_rate() {
        let messages = Messages::default();
        let (peer, start) = (PeerId::random(), Instant::now());
        let allowed = (0..(BURST as usize + 50)).filter(|_| messages.allow_at(peer, start)).count();
        assert_eq!(allowed, BURST as usize);
        assert!(messages.allow_at(PeerId::random(), start), "another publisher has its own allowance");
        let later = start + std::time::Duration::from_millis(100);
        let refilled = (0..50).filter(|_| messages.allow_at(peer, later)).count();
        assert_eq!(refilled, (RATE_PER_S / 10.0) as usize, "a tenth of a second at {RATE_PER_S}/s");
    }
}
