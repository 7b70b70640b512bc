//! Documents on a subscribed topic: JSON objects whose top-level fields merge on their own
//! across nodes (see `canopy_crdt::doc`). A patch is a JSON Merge Patch (RFC 7396): a `null`
//! removes a field, an object merges into the field's object as this node holds it, anything
//! else replaces the field.

use canopy_crdt::{DocWrite, Fields, ReadError, Topic, WriteError};
use serde_json::{Map, Value};

use super::NodeTopic;
use crate::Commit;

/// A document: a JSON object.
pub type Document = Map<String, Value>;

/// A page of documents, in key order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DocumentPage {
    /// Each document's key and content.
    pub docs: Vec<(Vec<u8>, Document)>,
    /// The key to pass as `after` for the next page, when more documents remain.
    pub next: Option<Vec<u8>>,
}

/// The document `key` of `topic`; `None` when it has no field.
pub(super) fn doc_of(topic: &Topic, key: &[u8]) -> Result<Option<Document>, ReadError> {
    topic.doc(key)?.map(|fields| document(key, fields)).transpose()
}

/// `topic`'s documents in key order, strictly after `after` when given, at most `limit`.
fn docs_of(topic: &Topic, after: Option<&[u8]>, limit: usize) -> Result<DocumentPage, ReadError> {
    let page = topic.docs(after, limit)?;
    let docs = page
        .docs
        .into_iter()
        .map(|(key, fields)| Ok((key.clone(), document(&key, fields)?)))
        .collect::<Result<_, ReadError>>()?;
    Ok(DocumentPage { docs, next: page.next })
}

impl NodeTopic {
    /// The document `key`; `None` when it has no field.
    pub fn doc(&self, key: &[u8]) -> Result<Option<Document>, ReadError> {
        doc_of(&self.topic, key)
    }

    /// Documents in key order, strictly after `after` when given, at most `limit`.
    pub fn docs(&self, after: Option<&[u8]>, limit: usize) -> Result<DocumentPage, ReadError> {
        docs_of(&self.topic, after, limit)
    }

    /// Makes `doc` the document `key`: its fields set, every other field this node holds
    /// removed (a field another node writes concurrently survives). With `expires_ms`, the
    /// fields expire then. `None` when the document already was `doc`.
    pub fn doc_put(&self, key: &[u8], doc: &Document, expires_ms: Option<u64>) -> Result<Option<Commit>, WriteError> {
        let commit = self.topic.doc_write(key, DocWrite::Put(fields_of(doc)), expires_ms)?;
        Ok(self.committed(commit))
    }

    /// Applies the merge patch `patch` to the document `key` (creating it when it has no
    /// field). Fields the patch does not name are left as they are, on every node.
    pub fn doc_patch(
        &self,
        key: &[u8],
        patch: &Document,
        expires_ms: Option<u64>,
    ) -> Result<Option<Commit>, WriteError> {
        let write = self.patch_write(key, patch)?;
        let commit = self.topic.doc_write(key, write, expires_ms)?;
        Ok(self.committed(commit))
    }

    /// The fields `patch` sets and removes in the document `key` as this node holds it.
    fn patch_write(&self, key: &[u8], patch: &Document) -> Result<DocWrite, WriteError> {
        let current = self.doc(key).map_err(|error| match error {
            ReadError::Storage(error) => WriteError::Storage(error),
            other => WriteError::Storage(canopy_crdt::StorageError::Corrupt(other.to_string())),
        })?;
        let mut set = Vec::new();
        let mut remove = Vec::new();
        for (name, change) in patch {
            match change {
                Value::Null => remove.push(name.clone()),
                Value::Object(_) => {
                    let mut field = current.as_ref().and_then(|doc| doc.get(name)).cloned().unwrap_or(Value::Null);
                    merge_patch(&mut field, change);
                    set.push((name.clone(), encode(&field)));
                }
                value => set.push((name.clone(), encode(value))),
            }
        }
        Ok(DocWrite::Patch { set, remove })
    }

    /// Applies every change of `changes` as one block, atomically: puts, merge patches and
    /// deletes, in order (a change sees its document as the earlier ones left it). With
    /// `expires_ms`, the fields written expire then. `None` when nothing changed.
    pub fn doc_batch(
        &self,
        changes: &[(Vec<u8>, DocBatchOp)],
        expires_ms: Option<u64>,
    ) -> Result<Option<Commit>, WriteError> {
        let writes = changes
            .iter()
            .map(|(key, change)| {
                let write = match change {
                    DocBatchOp::Put(doc) => DocWrite::Put(fields_of(doc)),
                    DocBatchOp::Patch(patch) => self.patch_write(key, patch)?,
                    DocBatchOp::Delete => DocWrite::Delete,
                };
                Ok((key.clone(), write))
            })
            .collect::<Result<Vec<_>, WriteError>>()?;
        let commit = self.topic.doc_batch(writes, expires_ms)?;
        Ok(self.committed(commit))
    }

    /// Deletes the document `key`: every field this node holds is removed (a field another
    /// node writes concurrently survives, and the document with it). `None` when it had none.
    pub fn doc_delete(&self, key: &[u8]) -> Result<Option<Commit>, WriteError> {
        let commit = self.topic.doc_write(key, DocWrite::Delete, None)?;
        Ok(self.committed(commit))
    }
}

/// One change of a document batch ([`NodeTopic::doc_batch`]).
#[derive(Clone, Debug, PartialEq)]
pub enum DocBatchOp {
    /// The document becomes this one.
    Put(Document),
    /// This merge patch is applied to it.
    Patch(Document),
    /// It is deleted.
    Delete,
}

/// A page of the documents a query found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FoundPage {
    /// Each document's key and content, in key order or the query's order.
    pub docs: Vec<(Vec<u8>, Document)>,
    /// What to pass as `after` for the next page, when more may remain.
    pub next: Option<String>,
    /// Documents read to answer: those an index named, or every document up to the page's
    /// end when no index served the query.
    pub scanned: u64,
    /// The index that served the query, if one did.
    pub index: Option<String>,
}

/// How a query orders what it finds: a field's path, descending or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// The field's path, outermost first.
    pub path: Vec<String>,
    /// Largest first.
    pub descending: bool,
}

/// Documents an ordered query without an index may sort in memory.
pub const SORT_DOCS_MAX: usize = 100_000;

/// Documents read per page while scanning.
const SCAN_PAGE: usize = 1_000;

impl NodeTopic {
    /// The documents meeting `filter`, `limit` at most, after `after` (a page's `next`): in key
    /// order, or by `order` (documents without the field last, ties by key). A built index
    /// serves the query when one can (see [`find_documents`]).
    pub fn find(
        &self,
        filter: &super::filter::Filter,
        order: Option<&Order>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<FoundPage, FindError> {
        find_documents(&self.topic, filter, order, after, limit)
    }
}

/// The documents of `topic` meeting `filter`, as [`NodeTopic::find`] finds them: a program that
/// embeds the engine without a node queries its topics with this.
pub fn find_documents(
    topic: &Topic,
    filter: &super::filter::Filter,
    order: Option<&Order>,
    after: Option<&str>,
    limit: usize,
) -> Result<FoundPage, FindError> {
    if let Some(plan) = super::query::plan(&topic.indexes(), filter)
        && let Some(found) = super::query::find_indexed(topic, &plan, filter, order, after, limit)?
    {
        return Ok(found);
    }
    let mut found = FoundPage::default();
    let mut cursor: Option<Vec<u8>> = match (order, after) {
        (None, Some(after)) => Some(after.as_bytes().to_vec()),
        _ => None,
    };
    let mut matched: Vec<(Vec<u8>, Document)> = Vec::new();
    loop {
        let page = docs_of(topic, cursor.as_deref(), SCAN_PAGE)?;
        for (key, doc) in page.docs {
            found.scanned += 1;
            if !filter.matches(&doc) {
                continue;
            }
            if order.is_none() && matched.len() == limit {
                found.next = matched.last().map(|(key, _)| String::from_utf8_lossy(key).into_owned());
                found.docs = matched;
                return Ok(found);
            }
            matched.push((key, doc));
            if order.is_some() && matched.len() > SORT_DOCS_MAX {
                return Err(FindError::TooManyToSort);
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    if let Some(order) = order {
        let page = sorted_page(matched, order, after, limit)?;
        return Ok(FoundPage { docs: page.docs, next: page.next, ..found });
    }
    found.docs = matched;
    Ok(found)
}

/// The page after `after` (an offset, as a previous page's `next`) of `matched` sorted by
/// `order`: documents without the field last, ties by key.
pub(crate) fn sorted_page(
    mut matched: Vec<(Vec<u8>, Document)>,
    order: &Order,
    after: Option<&str>,
    limit: usize,
) -> Result<FoundPage, FindError> {
    let sort_key = |doc: &Document| super::filter::field(doc, &order.path).cloned();
    matched.sort_by(|(a_key, a), (b_key, b)| {
        let by_field = match (sort_key(a), sort_key(b)) {
            (Some(a), Some(b)) => {
                let ordering = super::filter::compare(&a, &b).unwrap_or_else(|| type_rank(&a).cmp(&type_rank(&b)));
                if order.descending { ordering.reverse() } else { ordering }
            }
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_field.then_with(|| a_key.cmp(b_key))
    });
    let start = match after {
        Some(after) => after.parse::<usize>().map_err(|_| FindError::Cursor)?,
        None => 0,
    };
    let end = start.saturating_add(limit).min(matched.len());
    let next = (end < matched.len()).then(|| end.to_string());
    let docs = matched.into_iter().skip(start).take(end.saturating_sub(start)).collect();
    Ok(FoundPage { docs, next, ..FoundPage::default() })
}

/// Why a query found nothing to answer with.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// Reading the documents failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// An ordered query matched more documents than may be sorted without an index.
    #[error("the query matches more than {SORT_DOCS_MAX} documents, too many to order without an index: narrow it")]
    TooManyToSort,
    /// `after` is not a page's `next` of an ordered query.
    #[error("after must be the next of the query's previous page")]
    Cursor,
}

/// The order of JSON types in an ordered query's results: null, booleans, numbers, strings,
/// arrays, objects.
fn type_rank(value: &Value) -> u8 {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

/// The fields of `doc`, each value as JSON text.
fn fields_of(doc: &Document) -> Fields {
    doc.iter().map(|(name, value)| (name.clone(), encode(value))).collect()
}

/// `value` as JSON text.
fn encode(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a JSON value always encodes")
}

/// The document whose fields are `fields`.
pub(super) fn document(key: &[u8], fields: Fields) -> Result<Document, ReadError> {
    fields
        .into_iter()
        .map(|(name, json)| {
            let value = serde_json::from_slice(&json).map_err(|e| {
                ReadError::Storage(canopy_crdt::StorageError::Corrupt(format!(
                    "field {name:?} of document {:?} is not JSON: {e}",
                    String::from_utf8_lossy(key)
                )))
            })?;
            Ok((name, value))
        })
        .collect()
}

/// Applies the merge patch `patch` to `target` as RFC 7396 defines it.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(members) = target else { unreachable!("made an object above") };
    for (name, change) in patch {
        if change.is_null() {
            members.remove(name);
        } else {
            merge_patch(members.entry(name.clone()).or_insert(Value::Null), change);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // Cases from the RFC's appendix.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": {"b": "c"}}), json!({"a": {"b": "d", "c": null}}), json!({"a": {"b": "d"}})),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!({"a": "c"}), json!({"a": "c"})),
            (json!({}), json!({"a": {"bb": {"ccc": null}}}), json!({"a": {"bb": {}}})),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
        ];
        for (mut target, patch, result) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, result, "patch {patch}");
        }
    }
}
