//! The writer thread's side of documents' indexes (see [`crate::index`]): loading what it
//! maintains, reconciling that with the topic's declarations, and building new indexes from
//! the existing rows a bounded step at a time between writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use canopy_dag::TopicId;
use rocksdb::{DB, WriteBatch};

use super::{Context, TopicState};
use crate::error::StorageError;
use crate::index::{IndexDef, Indexes, Maintained, state_key};
use crate::row::Row;
use crate::schema::{CF_DOC_INDEX, CF_KV, CF_META, db_scan_from};

/// Document field entries one build step reads.
const BUILD_STEP_ENTRIES: usize = 4_096;

/// The indexes of `topic` this replica maintains, as `meta` records them.
pub(super) fn load(db: &DB, topic: TopicId) -> Result<Indexes, StorageError> {
    let maintained: Vec<Maintained> =
        crate::index::load_states(db, topic)?.into_iter().map(|(_, state)| state).collect();
    let indexes = Indexes { maintained: maintained.into(), ..Indexes::default() };
    // A declaration may have changed without the state following (a crash between the two, a
    // snapshot merged without index upkeep): the thread reconciles once it takes the topic.
    indexes.declarations_changed.store(true, Ordering::Relaxed);
    Ok(indexes)
}

/// The indexes the topic's rows declare, by name.
fn declared(context: &Context, topic: TopicId) -> Result<BTreeMap<String, IndexDef>, StorageError> {
    let mut declared = BTreeMap::new();
    for item in db_scan_from(&context.db, context.cf(CF_KV), topic, crate::index::namespace()) {
        let (key, value) = item?;
        if !crate::index::is_declaration(&key) {
            break;
        }
        let row = Row::decode(&value).map_err(|e| StorageError::Corrupt(format!("row: {e}")))?;
        let (Some(name), Some(element)) = (crate::index::parse_declaration(&key), row.winner()) else { continue };
        // Received declarations are checked; one that does not read is passed over.
        if let Ok(def) = IndexDef::decode(&element.value) {
            declared.insert(name.to_string(), def);
        }
    }
    Ok(declared)
}

/// Makes the maintained indexes those the topic declares: an index no longer declared (or
/// declared otherwise) loses its records and state, and one declared anew starts building.
pub(super) fn reconcile(context: &Context, state: &mut TopicState) -> Result<(), StorageError> {
    state.indexes.declarations_changed.store(false, Ordering::Relaxed);
    // A dropped index's records are deleted here: no journal entry may put one back after.
    context.settle(&state.shared);
    let topic = state.shared.id;
    let declared = declared(context, topic)?;
    let held: HashMap<&str, &Maintained> = state.indexes.maintained.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut batch = WriteBatch::default();
    let mut maintained = Vec::new();
    for index in state.indexes.maintained.iter().filter(|m| declared.get(&m.name) != Some(&m.def)) {
        clear(context, &mut batch, topic, &index.name);
    }
    for (name, def) in &declared {
        match held.get(name.as_str()) {
            Some(index) if index.def == *def => maintained.push((*index).clone()),
            held => {
                if held.is_none() {
                    // Records of an earlier life of the name, left by a crash or a merge.
                    clear(context, &mut batch, topic, name);
                }
                let index = Maintained { name: name.clone(), def: def.clone(), cursor: Some(Vec::new()), scanned: 0 };
                batch.put_cf(context.cf(CF_META), state_key(topic, name), index.encode());
                maintained.push(index);
            }
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    context.write(batch)?;
    set(state, maintained);
    Ok(())
}

/// Deletes the records and state of the index `name`.
fn clear(context: &Context, batch: &mut WriteBatch, topic: TopicId, name: &str) {
    let start = crate::index::records_prefix(topic, name);
    let mut end = start.clone();
    // The prefix ends with the name's terminator `00 01`: `00 02` is past every record.
    *end.last_mut().expect("a terminated name") += 1;
    batch.delete_range_cf(context.cf(CF_DOC_INDEX), start, end);
    batch.delete_cf(context.cf(CF_META), state_key(topic, name));
}

/// Takes `maintained` as the topic's indexes and publishes their status.
fn set(state: &mut TopicState, maintained: Vec<Maintained>) {
    *state.shared.indexes.write().expect("indexes lock") =
        Arc::new(maintained.iter().map(Maintained::status).collect());
    state.indexes.maintained = maintained.into();
}

/// Builds each index still building over up to [`BUILD_STEP_ENTRIES`] more document entries.
pub(super) fn build_step(context: &Context, state: &mut TopicState) -> Result<(), StorageError> {
    // Records are written in place here: the journal's entries go first.
    context.settle(&state.shared);
    let topic = state.shared.id;
    let mut maintained: Vec<Maintained> = state.indexes.maintained.to_vec();
    let mut batch = WriteBatch::default();
    for index in maintained.iter_mut() {
        let Some(cursor) = index.cursor.take() else { continue };
        let from = if cursor.is_empty() { crate::doc::namespace().to_vec() } else { cursor.clone() };
        let mut last = None;
        let mut read = 0;
        let records = db_scan_from(&context.db, context.cf(CF_KV), topic, crate::doc_row::seek_key(&from));
        for item in crate::doc_row::rows(records, &from) {
            let (key, row) = item?;
            if !crate::doc::is_entry(&key) {
                break;
            }
            if key == cursor {
                continue;
            }
            read += 1;
            if let Some((doc, field)) = crate::doc::parse_entry(&key)
                && field == index.def.path[0]
            {
                for encoded in index.def.row_values(&row) {
                    batch.put_cf(
                        context.cf(CF_DOC_INDEX),
                        crate::index::record_key(topic, &index.name, &encoded, &doc),
                        [],
                    );
                }
            }
            last = Some(key);
            if read == BUILD_STEP_ENTRIES {
                break;
            }
        }
        index.scanned += read as u64;
        // A step that read fewer entries than it may reached the namespace's end.
        index.cursor = (read == BUILD_STEP_ENTRIES).then(|| last.unwrap_or_default());
        batch.put_cf(context.cf(CF_META), state_key(topic, &index.name), index.encode());
    }
    context.write(batch)?;
    set(state, maintained);
    Ok(())
}

/// Does the index work the topics have: reconciles those whose declarations changed and takes
/// one build step for each that builds. Returns whether any still builds.
pub(super) fn work(context: &Context, topics: &mut HashMap<TopicId, TopicState>) -> bool {
    let mut building = false;
    if context.is_poisoned() {
        return false;
    }
    for state in topics.values_mut() {
        if !state.indexes.has_work() {
            continue;
        }
        if state.indexes.declarations_changed.load(Ordering::Relaxed)
            && let Err(error) = reconcile(context, state)
        {
            tracing::warn!(topic = %state.shared.name, %error, "reconciling the topic's indexes failed");
            continue;
        }
        if state.indexes.building() {
            if let Err(error) = build_step(context, state) {
                tracing::warn!(topic = %state.shared.name, %error, "building the topic's indexes failed");
                continue;
            }
            building |= state.indexes.building();
        }
    }
    building
}

/// Starts building every index of the topic again from its rows.
pub(super) fn rebuild(context: &Context, state: &mut TopicState) {
    context.settle(&state.shared);
    let topic = state.shared.id;
    let mut batch = WriteBatch::default();
    let mut maintained = Vec::new();
    for index in state.indexes.maintained.iter() {
        clear(context, &mut batch, topic, &index.name);
        let index = Maintained { cursor: Some(Vec::new()), scanned: 0, ..index.clone() };
        batch.put_cf(context.cf(CF_META), state_key(topic, &index.name), index.encode());
        maintained.push(index);
    }
    if maintained.is_empty() {
        state.indexes.declarations_changed.store(true, Ordering::Relaxed);
        return;
    }
    match context.write(batch) {
        Ok(()) => set(state, maintained),
        Err(error) => tracing::warn!(topic = %state.shared.name, %error, "restarting the topic's index builds failed"),
    }
    state.indexes.declarations_changed.store(true, Ordering::Relaxed);
}

/// Deletes the state of every index of `topic` (when it is dropped; its records go with the
/// topic's range).
pub(super) fn delete_states(context: &Context, batch: &mut WriteBatch, topic: TopicId) -> Result<(), StorageError> {
    for (key, _) in crate::index::load_states(&context.db, topic)? {
        batch.delete_cf(context.cf(CF_META), key);
    }
    Ok(())
}
