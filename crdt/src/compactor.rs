//! The compaction policy: a store's background thread that compacts topics whose history has
//! grown past the thresholds, makes a snapshot when a peer needs one and none is held, and
//! releases snapshot parts nobody fetched for a while.
//!
//! Snapshot parts are a second copy of a topic's live state. They are what a peer lacking
//! pruned blocks needs, so they are kept while peers fetch them, then released: a topic at rest
//! costs its rows and the heights of its pruned blocks, not twice its data. A peer that later
//! needs a snapshot asks, the block server finds none held and requests one, and the peer's
//! next fetch gets it.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, select};

use crate::inner::StoreInner;
use crate::topic::Topic;
use crate::types::wall_ms;

/// How often the thread looks for parts to release.
const TICK: Duration = Duration::from_secs(1);

/// Runs until `stop` is dropped: compacts the topics named on `requests`, one at a time, and
/// releases parts older than the store's `snapshot_retain_ms`.
pub(crate) fn run(store: Arc<StoreInner>, requests: Receiver<String>, stop: Receiver<()>) {
    loop {
        let request = select! {
            recv(stop) -> _ => return,
            recv(requests) -> name => match name {
                Ok(name) => Some(name),
                Err(_) => return,
            },
            default(TICK) => None,
        };
        if let Some(name) = request
            && let Some(topic) = existing(&store, &name)
            && let Err(error) = topic.compact()
        {
            tracing::warn!(topic = %name, %error, "automatic compaction failed; the next one starts again");
        }
        if let Some(retain) = store.options.snapshot_retain_ms {
            let now = wall_ms();
            for topic in topic_handles(&store) {
                if topic.snapshot_parts_idle_ms(now).is_some_and(|idle| idle >= retain)
                    && let Err(error) = topic.release_snapshot_parts()
                {
                    tracing::warn!(topic = %topic.name(), %error, "releasing snapshot parts failed");
                }
            }
        }
    }
}

fn existing(store: &Arc<StoreInner>, name: &str) -> Option<Topic> {
    let shared = store.topics.read().expect("topics lock").get(name)?.clone();
    Some(Topic::new(store.clone(), shared))
}

/// Handles of every open topic.
fn topic_handles(store: &Arc<StoreInner>) -> Vec<Topic> {
    let topics = store.topics.read().expect("topics lock");
    topics.values().map(|shared| Topic::new(store.clone(), shared.clone())).collect()
}
