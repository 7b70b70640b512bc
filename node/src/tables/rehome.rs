//! Keys written under a shape the catalog did not keep. Two members cut off from each other may
//! both create a table, with different partition counts, and both take writes; once they meet,
//! every node takes the same shape ([`super::catalog`]), and a key written under the other one
//! lies in a partition the shape does not look in for it. The holders of such a partition move
//! those keys to where the shape looks: a key is written there unless it already has a value
//! there (a write made under the kept shape wins), then deleted where it was. A partition beyond
//! the kept shape's, once empty, is dropped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{PartitionTopic, TableError, Tables, partition_of};
use crate::Node;

/// Most keys of a partition looked at in one round.
const SCAN_KEYS_PER_ROUND: usize = 10_000;
/// Most keys moved in one round.
const MOVES_PER_ROUND: usize = 1_000;
/// How long a partition found clean waits before it is looked through again (a member that had
/// not heard of the kept shape yet may still have written under the other).
const CLEAN_RESCAN: Duration = Duration::from_secs(60);

/// Where the look through each held partition of a table with a superseded shape stands.
#[derive(Default)]
pub(crate) struct Rehoming {
    /// Per partition topic: the key to continue after, and whether the pass so far moved
    /// nothing.
    cursors: HashMap<String, (Option<Vec<u8>>, bool)>,
    /// Per partition topic: when a whole pass last found nothing to move.
    clean: HashMap<String, Instant>,
}

impl Tables {
    /// One round of moving keys written under superseded shapes, over the partitions this node
    /// holds: at most [`SCAN_KEYS_PER_ROUND`] keys looked at and [`MOVES_PER_ROUND`] moved per
    /// partition. Returns the keys moved.
    pub(crate) async fn rehome(&self, node: &Node) -> Result<usize, TableError> {
        let superseded = self.superseded()?;
        if superseded.is_empty() {
            return Ok(0);
        }
        let held: Vec<String> = node
            .inner()
            .subscribed
            .lock()
            .expect("subscribed lock")
            .iter()
            .filter(|topic| PartitionTopic::parse(topic).is_some_and(|p| superseded.contains_key(&p.table)))
            .cloned()
            .collect();
        let mut moved = 0;
        for topic in held {
            let Some(PartitionTopic { table, partition }) = PartitionTopic::parse(&topic) else { continue };
            let recently_clean = self
                .rehoming
                .lock()
                .expect("rehoming lock")
                .clean
                .get(&topic)
                .is_some_and(|at| at.elapsed() < CLEAN_RESCAN);
            if recently_clean {
                continue;
            }
            moved += self.rehome_partition(node, &topic, &table, partition).await?;
        }
        Ok(moved)
    }

    /// One round over the partition `topic` (`partition` of `table`).
    async fn rehome_partition(
        &self,
        node: &Node,
        topic: &str,
        table: &str,
        partition: u32,
    ) -> Result<usize, TableError> {
        let Some(copy) = node.topic(topic) else { return Ok(0) };
        let kept = node.table(table)?;
        let partitions = kept.def().partitions;
        let after =
            self.rehoming.lock().expect("rehoming lock").cursors.get(topic).and_then(|(after, _)| after.clone());
        let page = {
            let (copy, after) = (copy.clone(), after.clone());
            tokio::task::spawn_blocking(move || copy.query(b"", after.as_deref(), SCAN_KEYS_PER_ROUND))
                .await
                .map_err(|_| TableError::Node(crate::NodeError::Closed))??
        };
        let mut moved = 0;
        let mut next = page.next.clone();
        let mut done = after;
        for (key, value) in &page.entries {
            if partition_of(key, partitions) == partition {
                done = Some(key.clone());
                continue;
            }
            if moved == MOVES_PER_ROUND {
                // The rest waits for the next round, after the last key handled.
                next = done.or_else(|| Some(Vec::new()));
                break;
            }
            // Keys are text on a table's routes; another key stays where it is.
            let Ok(text) = std::str::from_utf8(key) else { continue };
            if kept.get(text).await?.is_none() {
                kept.put(text, value.clone()).await?;
            }
            let (copy, doomed) = (copy.clone(), key.clone());
            tokio::task::spawn_blocking(move || copy.delete(doomed))
                .await
                .map_err(|_| TableError::Node(crate::NodeError::Closed))??;
            moved += 1;
            done = Some(key.clone());
        }
        let mut rehoming = self.rehoming.lock().expect("rehoming lock");
        let untouched = rehoming.cursors.get(topic).is_none_or(|(_, clean)| *clean) && moved == 0;
        match next {
            Some(next) => {
                rehoming.cursors.insert(topic.to_string(), (Some(next), untouched));
            }
            None => {
                rehoming.cursors.remove(topic);
                if untouched {
                    rehoming.clean.insert(topic.to_string(), Instant::now());
                    drop(rehoming);
                    if partition >= partitions && copy.key_count() == 0 {
                        tracing::info!(%topic, "dropping an emptied partition of a superseded table shape");
                        node.unsubscribe(topic, true)?;
                    }
                }
            }
        }
        if moved > 0 {
            tracing::info!(%topic, moved, "moved keys written under a superseded table shape");
        }
        Ok(moved)
    }
}
