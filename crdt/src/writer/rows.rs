//! The rows a write reads before it changes them: in one batched lookup, but for the keys the
//! topic's key filter says it never held; and the filter's build steps between rounds.

use std::collections::HashMap;

use canopy_dag::TopicId;

use super::{Context, TopicState};
use crate::error::StorageError;
use crate::row::Row;
use crate::schema::CF_KV;

/// Takes a step of each key filter being built. Returns whether any still builds.
pub(super) fn build_key_filters(context: &Context, topics: &HashMap<TopicId, TopicState>) -> bool {
    let mut building = false;
    for state in topics.values().filter(|state| state.shared.keys.is_building()) {
        match state.shared.keys.build_step(&context.db, state.shared.id) {
            Ok(more) => building |= more,
            // The filter stays unbuilt, so writes read every row; the next write tries again.
            Err(error) => {
                tracing::warn!(topic = %state.shared.name, %error, "building the key filter failed");
            }
        }
    }
    building
}

/// Reads the rows of `keys` (topic-prefixed, in order) of `state`'s topic in one batched
/// lookup, but for keys its key filter says the topic never held, which have no row.
pub(super) fn read_topic_rows(
    context: &Context,
    state: &TopicState,
    keys: &[Vec<u8>],
) -> Result<Vec<Row>, StorageError> {
    let prefix = canopy_dag::TOPIC_ID_BYTES;
    let Some(held) = state.shared.keys.may_hold(keys.iter().map(|key| &key[prefix..]), state.key_count) else {
        return read_rows(context, keys);
    };
    let asked: Vec<&Vec<u8>> = keys.iter().zip(&held).filter(|(_, held)| **held).map(|(key, _)| key).collect();
    let mut found = read_rows(context, &asked)?.into_iter();
    Ok(held.into_iter().map(|held| if held { found.next().unwrap_or_default() } else { Row::default() }).collect())
}

/// Reads the rows of `keys` (topic-prefixed, in order) in one batched lookup.
pub(super) fn read_rows<K: AsRef<[u8]>>(context: &Context, keys: &[K]) -> Result<Vec<Row>, StorageError> {
    let values = context.db.batched_multi_get_cf(context.cf(CF_KV), keys, true);
    values
        .into_iter()
        .map(|value| match value? {
            None => Ok(Row::default()),
            Some(bytes) => Row::decode(&bytes).map_err(|e| StorageError::Corrupt(format!("row: {e}"))),
        })
        .collect()
}
