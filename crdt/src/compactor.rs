//! The compaction policy: a store's background thread that prunes topics whose history has
//! grown past the thresholds, makes a snapshot when a peer needs one and none is served, and
//! lets go of served snapshots nobody fetched from for a while.
//!
//! A served snapshot holds a view of the rows, which keeps what is overwritten after it on
//! disk, so it is let go once idle: a topic at rest costs its rows and the heights of its
//! pruned blocks. A peer that later needs a snapshot asks, the block server finds none served
//! and requests one, and the peer's next fetch gets it.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, select};

use crate::inner::StoreInner;
use crate::topic::Topic;
use crate::types::{Work, wall_ms};

/// How often the thread looks for parts to release.
const TICK: Duration = Duration::from_secs(1);

/// Runs until `stop` is dropped: does the work asked on `requests`, one at a time, and lets go
/// of served snapshots idle for longer than the store's `snapshot_retain_ms`.
pub(crate) fn run(store: Arc<StoreInner>, requests: Receiver<(String, Work)>, stop: Receiver<()>) {
    loop {
        let request = select! {
            recv(stop) -> _ => return,
            recv(requests) -> request => match request {
                Ok(request) => Some(request),
                Err(_) => return,
            },
            default(TICK) => None,
        };
        if let Some((name, work)) = request
            && let Some(topic) = existing(&store, &name)
        {
            let done = match work {
                Work::Prune => topic.prune().map(|_| ()),
                Work::Snapshot => topic.serve_snapshot(),
            };
            if let Err(error) = done {
                tracing::warn!(topic = %name, %error, ?work, "automatic compaction failed; the next one starts again");
            }
        }
        if let Some(retain) = store.options.snapshot_retain_ms {
            let now = wall_ms();
            for topic in topic_handles(&store) {
                if topic.snapshot_parts_idle_ms(now).is_some_and(|idle| idle >= retain)
                    && let Err(error) = topic.release_snapshot_parts()
                {
                    tracing::warn!(topic = %topic.name(), %error, "letting go of a served snapshot failed");
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
