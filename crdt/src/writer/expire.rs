//! Collecting expired elements. When a topic's earliest expiry falls due, its writer thread
//! removes the expired elements from their rows and their index records, takes the keys left
//! with no element out of the key count, and tells watchers of each visible value that ran out.

use std::collections::HashMap;
use std::time::Duration;

use canopy_dag::TopicId;
use rocksdb::WriteBatch;

use super::{Context, TopicState, read_rows};
use crate::error::StorageError;
use crate::expiry;
use crate::row_change::Notice;
use crate::schema::CF_EXPIRIES;

/// Most index records one collection takes; the rest are taken in the rounds that follow.
const COLLECT_RECORDS_MAX: usize = 4096;
/// Longest the writer thread sleeps while elements wait to expire, so a clock that jumps
/// forward is noticed within this.
const WAIT_MAX: Duration = Duration::from_secs(1);
/// After a failed collection, how long the topic waits before the next try.
const RETRY_MS: u64 = 1000;

/// How long the writer thread may wait for a command before an element falls due; `None` when
/// none of its topics has an element that expires.
pub(super) fn wait(context: &Context, topics: &HashMap<TopicId, TopicState>) -> Option<Duration> {
    let next = topics.values().filter_map(|state| state.next_expiry).min()?;
    Some(Duration::from_millis(next.saturating_sub(context.clock.now())).min(WAIT_MAX))
}

/// Collects, in every topic whose earliest expiry is due, the elements expired by now.
pub(super) fn collect_due(context: &Context, topics: &mut HashMap<TopicId, TopicState>) {
    let now = context.clock.now();
    for state in topics.values_mut() {
        if state.next_expiry.is_none_or(|at| at > now) {
            continue;
        }
        if context.is_poisoned() {
            // Nothing can be written until the store is opened again, which reloads the time.
            state.next_expiry = None;
            continue;
        }
        if let Err(error) = collect(context, state) {
            tracing::warn!(topic = %state.shared.name, %error, "collecting expired entries failed");
            state.next_expiry = Some(now + RETRY_MS);
        }
    }
}

/// Collects the topic's elements expired by now, a bounded number of index records at a time.
pub(super) fn collect(context: &Context, state: &mut TopicState) -> Result<(), StorageError> {
    let now = context.clock.now();
    let topic = state.shared.id;
    let (due, next) = expiry::due(&context.db, topic, now, COLLECT_RECORDS_MAX)?;
    if !due.is_empty() {
        let mut keys: Vec<&[u8]> = due.iter().map(|record| record.key.as_slice()).collect();
        keys.sort_unstable();
        keys.dedup();
        let full_keys: Vec<Vec<u8>> = keys.iter().map(|key| topic.key(key)).collect();
        let rows = read_rows(context, &full_keys)?;
        let mut rows_changed = context.row_changes(state, now);
        let mut batch = WriteBatch::default();
        for (key, row) in keys.iter().zip(rows) {
            let Some(best_height) = row.winner().map(|element| element.height) else { continue };
            let mut after = row.clone();
            if after.remove_expired(now).is_empty() {
                continue;
            }
            rows_changed.write(&mut batch, key, &row, &after, Notice::Expired(best_height));
        }
        let index = context.cf(CF_EXPIRIES);
        for record in &due {
            batch.delete_cf(index, &record.record);
        }
        let sealed = rows_changed.seal(&mut batch);
        context.write(batch)?;
        state.key_count = sealed.key_count;
        state.publish();
        state.notify(sealed.changes);
    }
    state.next_expiry = next;
    Ok(())
}

impl TopicState {
    /// Notes that an element expiring at `at` was stored.
    pub(super) fn expires_at(&mut self, at: u64) {
        self.next_expiry = Some(self.next_expiry.map_or(at, |next| next.min(at)));
    }
}
