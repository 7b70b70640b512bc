//! Dropping a topic: every record of it deleted in one write.

use std::sync::atomic::Ordering;

use canopy_dag::TopicId;
use rocksdb::WriteBatch;

use super::{Context, TopicState, indexing};
use crate::error::TopicError;
use crate::schema::{
    CF_DOC_INDEX, CF_EXPIRIES, CF_HEADS, CF_HISTORY, CF_KV, CF_META, CF_PENDING, CF_SNAPSHOTS, CF_TOMBSTONES,
    CF_WRITERS, META_COVER, META_FRONTIER, META_KNOWN, META_MERGE, key_count_key, meta_key, topic_name_key,
};

/// Deletes every record of `id` in `cf`.
pub(super) fn delete_topic_range(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, id: TopicId) {
    match id.range_end() {
        Some(end) => batch.delete_range_cf(cf, id.prefix(), end),
        None => batch.delete_range_cf(cf, &id.prefix()[..], &[0xff; 64][..]),
    }
}

/// Deletes every record of the topic and forgets its state; the caller has taken it out of
/// the thread's topics.
pub(super) fn drop_topic(context: &Context, state: &TopicState) -> Result<(), TopicError> {
    state.shared.dropped.store(true, Ordering::SeqCst);
    // No journal entry of the topic may put a record back after its range is deleted.
    context.settle(&state.shared);
    context.forget_unpruned(state.grown_bytes);
    let id = state.shared.id;
    let mut batch = WriteBatch::default();
    context.blocks.delete_topic(&mut batch, id);
    for cf in
        [CF_PENDING, CF_HEADS, CF_KV, CF_TOMBSTONES, CF_SNAPSHOTS, CF_WRITERS, CF_HISTORY, CF_EXPIRIES, CF_DOC_INDEX]
    {
        delete_topic_range(&mut batch, context.cf(cf), id);
    }
    indexing::delete_states(context, &mut batch, id)?;
    batch.delete_cf(context.cf(CF_META), key_count_key(id));
    for kind in [META_COVER, META_FRONTIER, META_KNOWN, META_MERGE] {
        batch.delete_cf(context.cf(CF_META), meta_key(kind, id));
    }
    batch.delete_cf(context.cf(CF_META), topic_name_key(&state.shared.name));
    context.write(batch)?;
    state.shared.watchers.lock().expect("watchers lock").clear();
    state.shared.serving.lock().expect("serving lock").take();
    Ok(())
}
