//! A topic's documents (see [`crate::doc`]): read whole, written field by field.

use rocksdb::ReadOptions;

use crate::delta::{check_key, check_value};
use crate::doc::{self, FIELD_BYTES_MAX};
use crate::doc_row::DocRow;
use crate::error::{ReadError, StorageError, WriteError};
use crate::schema::CF_KV;
use crate::topic::Topic;
use crate::types::Commit;
use crate::writer::DocChange;

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
        let fields = self.doc_fields(key)?;
        Ok((!fields.is_empty()).then_some(fields))
    }

    /// The visible fields of each document of `keys`, in their order (`None` for one with no
    /// field): a read of each document's record, but for those the key filter says the topic
    /// never held.
    pub fn docs_of(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Fields>>, ReadError> {
        keys.iter()
            .map(|key| {
                let fields = self.doc_fields(key)?;
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

    /// Applies every write of `writes`, in order, as one block (atomically, as a batch is): a
    /// write of a document the batch wrote before sees it as that write left it. `None` when
    /// they change nothing.
    pub fn doc_batch(
        &self,
        writes: Vec<(Vec<u8>, DocWrite)>,
        expires_ms: Option<u64>,
    ) -> Result<Option<Commit>, WriteError> {
        let max = self.store.options.limits.delta_ops_max;
        let mut changes = Vec::with_capacity(writes.len());
        let mut ops = 0;
        for (key, write) in writes {
            let change = self.doc_change(&key, write, expires_ms)?;
            ops += change.fields();
            if ops > max {
                return Err(WriteError::TooManyOps { ops, max });
            }
            changes.push(change);
        }
        Ok(self.submit_request(Vec::new(), changes)?.commit)
    }

    /// The change `write` makes to the document `key`, checked. Which fields a put or a delete
    /// removes is decided by the writer, from the fields the document holds when it commits.
    fn doc_change(&self, key: &[u8], write: DocWrite, expires_ms: Option<u64>) -> Result<DocChange, WriteError> {
        let limits = &self.store.options.limits;
        check_key(key, limits).map_err(WriteError::InvalidKey)?;
        let prefix = doc::entries_prefix(key);
        let (replace, set, remove) = match write {
            DocWrite::Put(set) => (true, set, Vec::new()),
            DocWrite::Patch { set, remove } => (false, set, remove),
            DocWrite::Delete => (true, Vec::new(), Vec::new()),
        };
        let mut set = set
            .into_iter()
            .map(|(field, value)| {
                check_field(&prefix, &field, limits)?;
                check_value(&value, limits).map_err(WriteError::InvalidValue)?;
                doc::check_value(&value).map_err(|e| WriteError::InvalidValue(format!("field {field:?}: {e}")))?;
                Ok((field.into_bytes(), value))
            })
            .collect::<Result<Vec<_>, WriteError>>()?;
        // In name order, a field named twice taking its last value: what the writer folds
        // without sorting (on its thread, which every caller's writes wait for).
        set.sort_by(|a, b| a.0.cmp(&b.0));
        set.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            same
        });
        let remove = remove
            .into_iter()
            .map(|field| check_field(&prefix, &field, limits).map(|()| field.into_bytes()))
            .collect::<Result<_, WriteError>>()?;
        Ok(DocChange { prefix, replace, set, remove, expires: expires_ms })
    }

    /// The visible fields of the document `key`, in name order; none, without a read, when the
    /// topic's key filter (once built) says it never held the document.
    fn doc_fields(&self, key: &[u8]) -> Result<Fields, ReadError> {
        // A field row is in the filter before it is written, so a document put racing this
        // read is no worse off than one arriving just after it.
        let entries = doc::entries_prefix(key);
        let held = self.shared.keys.may_hold_if_ready([&entries[..]]);
        if held.is_some_and(|held| !held[0]) {
            return Ok(Vec::new());
        }
        let record = self.shared.id.key(&entries);
        let Some(value) = self.store.db.get_pinned_cf(self.store.cf(CF_KV), record)? else {
            return Ok(Vec::new());
        };
        let now = self.store.options.clock.now();
        visible_fields(&value, now)
            .map_err(|what| StorageError::Corrupt(format!("document record of {key:?}: {what}")).into())
    }

    /// The documents whose records start with `prefix`, from the record `from` on (leaving out
    /// the document `from` is), at most `limit` with visible fields.
    fn scan_docs(&self, prefix: &[u8], from: Option<&[u8]>, limit: usize) -> Result<DocPage, ReadError> {
        let topic = self.shared.id;
        let mut options = ReadOptions::default();
        options.set_prefix_same_as_start(true);
        if let Some(end) = topic.range_end() {
            options.set_iterate_upper_bound(end.to_vec());
        }
        let mut iter = self.store.db.raw_iterator_cf_opt(self.store.cf(CF_KV), options);
        iter.seek(topic.key(from.unwrap_or(prefix)));
        let now = self.store.options.clock.now();
        let mut page = DocPage::default();
        while iter.valid() {
            let (Some(record), Some(value)) = (iter.key(), iter.value()) else { break };
            let record = &record[canopy_dag::TOPIC_ID_BYTES..];
            if !record.starts_with(prefix) {
                break;
            }
            if from == Some(record) {
                iter.next();
                continue;
            }
            let corrupt = |what: String| StorageError::Corrupt(format!("document record {record:?}: {what}"));
            let (key, _) = doc::parse_entry(record).ok_or_else(|| corrupt("malformed".into()))?;
            let fields = visible_fields(value, now).map_err(corrupt)?;
            if !fields.is_empty() {
                if page.docs.len() == limit {
                    page.next = page.docs.last().map(|(key, _)| key.clone());
                    return Ok(page);
                }
                page.docs.push((key, fields));
            }
            iter.next();
        }
        iter.status()?;
        Ok(page)
    }
}

/// Checks `field`, a field of the document whose entries start with `prefix`: its name's
/// length and its entry's.
fn check_field(prefix: &[u8], field: &str, limits: &crate::delta::Limits) -> Result<(), WriteError> {
    if field.len() > FIELD_BYTES_MAX {
        return Err(WriteError::InvalidKey(format!("field names are at most {FIELD_BYTES_MAX} bytes")));
    }
    let entry = prefix.len() + field.len();
    if entry > limits.key_bytes_max {
        let max = limits.key_bytes_max;
        return Err(WriteError::InvalidKey(format!(
            "field {field:?} of the document: its entry of {entry} bytes exceeds key_bytes_max {max}"
        )));
    }
    Ok(())
}

/// The visible fields, in name order, of the document record `value`.
fn visible_fields(value: &[u8], now: u64) -> Result<Fields, String> {
    let mut fields = Vec::new();
    for (field, row) in DocRow::decode(value)?.into_fields() {
        if let Some(visible) = row.visible(now) {
            let field = String::from_utf8(field).map_err(|e| format!("a field name: {e}"))?;
            fields.push((field, visible.value.clone()));
        }
    }
    Ok(fields)
}
