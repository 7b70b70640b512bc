//! The rows a write reads before it changes them: in one batched lookup, but for the keys the
//! topic's key filter says it never held; and the filter's build steps between rounds.

use std::collections::HashMap;

use canopy_dag::TopicId;

use super::{Context, TopicState};
use crate::doc_row::{self, DocRow, Documents};
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
/// lookup, but for keys its key filter says the topic never held, which have no row; and the
/// documents whose fields it read.
pub(super) fn read_topic_rows(
    context: &Context,
    state: &TopicState,
    keys: &[Vec<u8>],
) -> Result<(Vec<Row>, Documents), StorageError> {
    let prefix = canopy_dag::TOPIC_ID_BYTES;
    let Some(held) = state.shared.keys.may_hold(keys.iter().map(|key| &key[prefix..]), state.key_count) else {
        return read_rows_and_documents(context, keys);
    };
    let asked: Vec<&Vec<u8>> = keys.iter().zip(&held).filter(|(_, held)| **held).map(|(key, _)| key).collect();
    let (found, mut documents) = read_rows_and_documents(context, &asked)?;
    let mut found = found.into_iter();
    let rows = keys
        .iter()
        .zip(held)
        .map(|(key, held)| match held {
            true => found.next().unwrap_or_default(),
            false => {
                // The filter holds a document as its record: one it never held has none.
                if let Some((document, _)) = doc_row::split(&key[prefix..])
                    && !documents.contains_key(document)
                {
                    documents.insert(document.to_vec(), DocRow::default());
                }
                Row::default()
            }
        })
        .collect();
    Ok((rows, documents))
}

/// The stored documents of `prefixes` (topic-prefixed entries prefixes, in order) of `state`'s
/// topic, read in one batched lookup but for those its key filter says the topic never held;
/// a document missing from the result holds no field.
pub(super) fn read_topic_documents(
    context: &Context,
    state: &TopicState,
    prefixes: &[Vec<u8>],
) -> Result<Documents, StorageError> {
    let prefix = canopy_dag::TOPIC_ID_BYTES;
    let Some(held) = state.shared.keys.may_hold(prefixes.iter().map(|key| &key[prefix..]), state.key_count) else {
        return Ok(read_rows_and_documents(context, prefixes)?.1);
    };
    let asked: Vec<&Vec<u8>> = prefixes.iter().zip(&held).filter(|(_, held)| **held).map(|(key, _)| key).collect();
    Ok(read_rows_and_documents(context, &asked)?.1)
}

/// Reads the rows of `keys` (topic-prefixed, in order) in one batched lookup; the fields of
/// one document, which come one after another, in one read of its record.
pub(super) fn read_rows<K: AsRef<[u8]>>(context: &Context, keys: &[K]) -> Result<Vec<Row>, StorageError> {
    Ok(read_rows_and_documents(context, keys)?.0)
}

/// [`read_rows`], and the documents whose fields it read.
fn read_rows_and_documents<K: AsRef<[u8]>>(
    context: &Context,
    keys: &[K],
) -> Result<(Vec<Row>, Documents), StorageError> {
    let prefix = canopy_dag::TOPIC_ID_BYTES;
    let mut records: Vec<&[u8]> = Vec::with_capacity(keys.len());
    // The record each key reads, as an index into `records`, and for a document's field where
    // the field's name starts.
    let mut read: Vec<(usize, Option<usize>)> = Vec::with_capacity(keys.len());
    for key in keys {
        let key = key.as_ref();
        let (record, field) = match doc_row::split(&key[prefix..]) {
            Some((document, _)) => (&key[..prefix + document.len()], Some(prefix + document.len())),
            None => (key, None),
        };
        if records.last() != Some(&record) {
            records.push(record);
        }
        read.push((records.len() - 1, field));
    }
    let values = context.db.batched_multi_get_cf(context.cf(CF_KV), &records, true);
    let values = values.into_iter().collect::<Result<Vec<_>, _>>()?;
    // Each document's record decoded once, by the first of its fields read.
    let mut stored: Vec<Option<DocRow>> = vec![None; records.len()];
    let mut rows = Vec::with_capacity(keys.len());
    for (key, (at, field)) in keys.iter().zip(read) {
        let key = key.as_ref();
        let Some(field) = field else {
            rows.push(doc_row::row_of(&key[prefix..], values[at].as_deref())?);
            continue;
        };
        let document = match &mut stored[at] {
            Some(document) => document,
            slot => slot.insert(match &values[at] {
                Some(value) => DocRow::decode(value)
                    .map_err(|e| StorageError::Corrupt(format!("document record {:?}: {e}", &records[at][prefix..])))?,
                None => DocRow::default(),
            }),
        };
        rows.push(document.field(&key[field..]));
    }
    let documents: Documents = records
        .iter()
        .zip(stored)
        .filter_map(|(record, document)| Some((record[prefix..].to_vec(), document?)))
        .collect();
    Ok((rows, documents))
}
