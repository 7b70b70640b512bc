//! A topic's documents (see [`crate::doc`]): read whole, written field by field.

use rocksdb::ReadOptions;

use crate::delta::{check_key, check_value};
use crate::doc::{self, FIELD_BYTES_MAX};
use crate::error::{ReadError, StorageError, WriteError};
use crate::row::Row;
use crate::schema::CF_KV;
use crate::topic::Topic;
use crate::types::{Commit, Op};

/// A document's fields: each name with its value's JSON text, in name order.
pub type Fields = Vec<(String, Vec<u8>)>;

/// A change to one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocWrite {
    /// The document becomes `fields`: each is set, and every other field this replica holds is
    /// removed.
    Put(Fields),
    /// The fields of `set` set and those of `remove` removed; the others are left as they are.
    Patch {
        /// Fields set, with their JSON text.
        set: Fields,
        /// Fields removed.
        remove: Vec<String>,
    },
    /// Every field this replica holds removed.
    Delete,
}

/// A page of documents, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocPage {
    /// Each document's key and fields.
    pub docs: Vec<(Vec<u8>, Fields)>,
    /// The key to pass as `after` for the next page, when more documents remain.
    pub next: Option<Vec<u8>>,
}

impl Topic {
    /// The document `key`'s visible fields; `None` when it has none.
    pub fn doc(&self, key: &[u8]) -> Result<Option<Fields>, ReadError> {
        let mut page = self.scan_docs(&doc::entries_prefix(key), None, 1)?;
        Ok(page.docs.pop().map(|(_, fields)| fields))
    }

    /// The visible fields of each document of `keys`, in their order (`None` for one with no
    /// field), read through one iterator: cheaper than [`Topic::doc`] for each, above all when
    /// the keys come in order.
    pub fn docs_of(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Fields>>, ReadError> {
        let mut held = Held::new(self, false);
        keys.iter()
            .map(|key| {
                let fields = held.fields(key)?;
                Ok((!fields.is_empty()).then_some(fields))
            })
            .collect()
    }

    /// Documents in key order, strictly after `after` when given, at most `limit` of them
    /// (capped by `query_limit_max`).
    pub fn docs(&self, after: Option<&[u8]>, limit: usize) -> Result<DocPage, ReadError> {
        let limit = limit.min(self.store.options.query_limit_max);
        match after {
            Some(after) => self.scan_docs(doc::namespace(), Some(&doc::entries_prefix(after)), limit),
            None => self.scan_docs(doc::namespace(), None, limit),
        }
    }

    /// Applies `write` to the document `key` as one block, its fields expiring at `expires_ms`
    /// (milliseconds since the Unix epoch) when given. `None` when it changes nothing.
    pub fn doc_write(
        &self,
        key: &[u8],
        write: DocWrite,
        expires_ms: Option<u64>,
    ) -> Result<Option<Commit>, WriteError> {
        self.doc_batch(vec![(key.to_vec(), write)], expires_ms)
    }

    /// Applies every write of `writes`, in order, as one block (atomically, as a batch is); each
    /// write sees its document as it stood before the batch.
    /// `None` when they change nothing.
    pub fn doc_batch(
        &self,
        writes: Vec<(Vec<u8>, DocWrite)>,
        expires_ms: Option<u64>,
    ) -> Result<Option<Commit>, WriteError> {
        let limits = &self.store.options.limits;
        let mut ops = Vec::new();
        // One iterator reads the fields every put and delete of the batch removes: making one
        // per document costs more than the reads themselves.
        let mut fields = Held::new(self, true);
        for (key, write) in writes {
            self.doc_ops(&key, write, expires_ms, &mut fields, &mut ops)?;
            if ops.len() > limits.delta_ops_max {
                return Err(WriteError::TooManyOps { ops: ops.len(), max: limits.delta_ops_max });
            }
        }
        Ok(self.submit(ops)?.commit)
    }

    /// Adds to `ops` the operations on the entries of the document `key` that `write` makes.
    fn doc_ops(
        &self,
        key: &[u8],
        write: DocWrite,
        expires_ms: Option<u64>,
        fields: &mut Held<'_>,
        ops: &mut Vec<Op>,
    ) -> Result<(), WriteError> {
        let limits = &self.store.options.limits;
        check_key(key, limits).map_err(WriteError::InvalidKey)?;
        let (set, remove) = match write {
            DocWrite::Put(set) => {
                let held = fields.of(key)?;
                let remove = held.into_iter().filter(|name| !set.iter().any(|(field, _)| field == name)).collect();
                (set, remove)
            }
            DocWrite::Patch { set, remove } => (set, remove),
            DocWrite::Delete => (Vec::new(), fields.of(key)?),
        };
        for (field, value) in set {
            let entry = entry(key, &field, limits)?;
            check_value(&value, limits).map_err(WriteError::InvalidValue)?;
            doc::check_value(&value).map_err(|e| WriteError::InvalidValue(format!("field {field:?}: {e}")))?;
            ops.push(match expires_ms {
                Some(expires_ms) => Op::PutUntil(entry, value, expires_ms),
                None => Op::Put(entry, value),
            });
        }
        for field in remove {
            ops.push(Op::Delete(entry(key, &field, limits)?));
        }
        Ok(())
    }

    /// The documents whose entries start with `prefix`, from the entry `from` on (leaving out
    /// the document `from` begins), at most `limit` with visible fields.
    fn scan_docs(&self, prefix: &[u8], from: Option<&[u8]>, limit: usize) -> Result<DocPage, ReadError> {
        let topic = self.shared.id;
        let mut options = ReadOptions::default();
        options.set_prefix_same_as_start(true);
        if let Some(end) = topic.range_end() {
            options.set_iterate_upper_bound(end.to_vec());
        }
        let mut iter = self.store.db.raw_iterator_cf_opt(self.store.cf(CF_KV), options);
        iter.seek(topic.key(from.unwrap_or(prefix)));
        let skipped = from.map(|from| doc::parse_entry(from).map(|(key, _)| key).unwrap_or_default());
        let now = self.store.options.clock.now();
        let mut page = DocPage::default();
        let mut current: Option<(Vec<u8>, Fields)> = None;
        while iter.valid() {
            let (Some(entry), Some(value)) = (iter.key(), iter.value()) else { break };
            let entry = &entry[canopy_dag::TOPIC_ID_BYTES..];
            if !entry.starts_with(prefix) {
                break;
            }
            let corrupt = |what: String| StorageError::Corrupt(format!("document entry {entry:?}: {what}"));
            let (key, field) = doc::parse_entry(entry).ok_or_else(|| corrupt("malformed".into()))?;
            if skipped.as_ref() == Some(&key) {
                iter.next();
                continue;
            }
            if current.as_ref().is_some_and(|(current, _)| *current != key) {
                let (done, fields) = current.take().expect("a current document");
                if page.docs.len() == limit {
                    page.next = page.docs.last().map(|(key, _)| key.clone());
                    return Ok(page);
                }
                if !fields.is_empty() {
                    page.docs.push((done, fields));
                }
            }
            let row = Row::decode(value).map_err(|e| corrupt(e.to_string()))?;
            let fields = &mut current.get_or_insert_with(|| (key, Vec::new())).1;
            if let Some(visible) = row.visible(now) {
                fields.push((field, visible.value.clone()));
            }
            iter.next();
        }
        iter.status()?;
        if let Some((key, fields)) = current
            && !fields.is_empty()
        {
            if page.docs.len() == limit {
                page.next = page.docs.last().map(|(key, _)| key.clone());
            } else {
                page.docs.push((key, fields));
            }
        }
        Ok(page)
    }
}

/// The entry of `field` of the document `key`, checked.
fn entry(key: &[u8], field: &str, limits: &crate::delta::Limits) -> Result<Vec<u8>, WriteError> {
    if field.len() > FIELD_BYTES_MAX {
        return Err(WriteError::InvalidKey(format!("field names are at most {FIELD_BYTES_MAX} bytes")));
    }
    let entry = doc::entry_key(key, field);
    check_key(&entry, limits).map_err(|e| WriteError::InvalidKey(format!("field {field:?} of the document: {e}")))?;
    Ok(entry)
}

/// Reads documents' visible fields through one iterator, made when first needed.
struct Held<'t> {
    topic: &'t Topic,
    iter: Option<rocksdb::DBRawIteratorWithThreadMode<'t, rocksdb::DB>>,
    /// Reading for a write, which starts the topic's key filter's build if it is idle (a
    /// read only consults a built one).
    writing: bool,
}

impl<'t> Held<'t> {
    fn new(topic: &'t Topic, writing: bool) -> Held<'t> {
        Held { topic, iter: None, writing }
    }

    /// The names of the visible fields of the document `key`.
    fn of(&mut self, key: &[u8]) -> Result<Vec<String>, WriteError> {
        let fields = self.fields(key).map_err(|ReadError::Storage(error)| WriteError::Storage(error))?;
        Ok(fields.into_iter().map(|(name, _)| name).collect())
    }

    /// The visible fields of the document `key`, in name order.
    fn fields(&mut self, key: &[u8]) -> Result<Fields, ReadError> {
        let topic = self.topic;
        // A document the topic never held has no field to read. A field row is in the filter
        // before it is written, so a document put racing this read is no worse off than one
        // arriving just after it.
        let entries = doc::entries_prefix(key);
        let held = match self.writing {
            true => {
                let expected = topic.shared.key_count.load(std::sync::atomic::Ordering::Relaxed);
                topic.shared.keys.may_hold([&entries[..]], expected)
            }
            false => topic.shared.keys.may_hold_if_ready([&entries[..]]),
        };
        if held.is_some_and(|held| !held[0]) {
            return Ok(Vec::new());
        }
        let iter = self.iter.get_or_insert_with(|| {
            let mut options = ReadOptions::default();
            options.set_prefix_same_as_start(true);
            if let Some(end) = topic.shared.id.range_end() {
                options.set_iterate_upper_bound(end.to_vec());
            }
            topic.store.db.raw_iterator_cf_opt(topic.store.cf(CF_KV), options)
        });
        let prefix = topic.shared.id.key(&entries);
        let now = topic.store.options.clock.now();
        let mut fields = Vec::new();
        iter.seek(&prefix);
        while iter.valid() {
            let (Some(entry), Some(value)) = (iter.key(), iter.value()) else { break };
            if !entry.starts_with(&prefix) {
                break;
            }
            let corrupt = |what: String| StorageError::Corrupt(format!("document entry {entry:?}: {what}"));
            let field = std::str::from_utf8(&entry[prefix.len()..]).map_err(|e| corrupt(e.to_string()))?;
            if let Some(visible) = Row::decode(value).map_err(corrupt)?.visible(now) {
                fields.push((field.to_string(), visible.value.clone()));
            }
            iter.next();
        }
        iter.status().map_err(StorageError::from)?;
        Ok(fields)
    }
}
