//! A topic's documents' indexes (see [`crate::index`]): declared and dropped as entries of the
//! topic, read as ordered records.

use std::ops::Bound;

use rocksdb::{Direction, IteratorMode};

use crate::doc::namespace as documents_namespace;
use crate::error::{ReadError, StorageError, WriteError};
use crate::index::{self, IndexDef, IndexStatus};
use crate::row::Row;
use crate::schema::{CF_DOC_INDEX, CF_KV, db_scan_from, topic_read_options};
use crate::topic::Topic;
use crate::types::{Commit, Op};

/// Which records of an index a scan reads, by their encoded values
/// ([`IndexDef::encode_value`]), in ascending order.
#[derive(Clone, Debug)]
pub struct IndexScan<'a> {
    /// The least value read.
    pub lower: Bound<&'a [u8]>,
    /// The greatest value read.
    pub upper: Bound<&'a [u8]>,
    /// Start strictly after this record (its encoded value and document key): the last one a
    /// previous scan returned.
    pub after: Option<(&'a [u8], &'a [u8])>,
}

/// One record of an index: a document holds `value` (encoded) in the indexed field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    /// The value, encoded so that records order by it.
    pub value: Vec<u8>,
    /// The document's key.
    pub doc: Vec<u8>,
}

impl Topic {
    /// The documents' indexes this replica maintains, by name, with their build's progress.
    pub fn indexes(&self) -> Vec<IndexStatus> {
        let mut indexes = self.shared.indexes.read().expect("indexes lock").to_vec();
        indexes.sort_by(|a, b| a.name.cmp(&b.name));
        indexes
    }

    /// Declares the index `name` on every replica of the topic (replacing what an index of that
    /// name held). Each replica builds it from its rows, then keeps it with every write. `None`
    /// when it was declared so already.
    pub fn declare_index(&self, name: &str, def: &IndexDef) -> Result<Option<Commit>, WriteError> {
        index::check_name(name).map_err(WriteError::InvalidKey)?;
        let key = index::declaration_key(name);
        let held =
            self.store.db.get_pinned_cf(self.store.cf(CF_KV), self.shared.id.key(&key)).map_err(StorageError::from)?;
        if let Some(row) = held {
            let row = Row::decode(&row).map_err(|e| StorageError::Corrupt(format!("an index declaration: {e}")))?;
            if row.len() == 1
                && row.winner().is_some_and(|element| IndexDef::decode(&element.value).as_ref() == Ok(def))
            {
                return Ok(None);
            }
        }
        Ok(self.submit(vec![Op::Put(key, def.encode())])?.commit)
    }

    /// Drops the index `name` on every replica. `None` when no such index was declared here.
    pub fn drop_index(&self, name: &str) -> Result<Option<Commit>, WriteError> {
        index::check_name(name).map_err(WriteError::InvalidKey)?;
        let committed = self.submit(vec![Op::Delete(index::declaration_key(name))])?;
        Ok(committed.commit.filter(|_| committed.deleted))
    }

    /// Checks every built index against the documents' rows: for each index whose records
    /// differ from those the rows give, its name and how. A scan of every document entry, for
    /// checks and tests.
    pub fn check_indexes(&self) -> Result<Vec<(String, String)>, ReadError> {
        let mut rows = Vec::new();
        let records = db_scan_from(&self.store.db, self.store.cf(CF_KV), self.shared.id, documents_namespace());
        for item in crate::doc_row::rows(records, documents_namespace()) {
            let (key, row) = item?;
            if !crate::doc::is_entry(&key) {
                break;
            }
            rows.push((key, row));
        }
        let mut found = Vec::new();
        for (_, index) in index::load_states(&self.store.db, self.shared.id)? {
            if index.cursor.is_some() {
                continue;
            }
            let entries = rows.iter().map(|(key, row)| (key, row));
            if let Some(difference) = index::compare(&self.store.db, self.shared.id, &index, entries)? {
                found.push((index.name, difference));
            }
        }
        Ok(found)
    }

    /// The records of the index `name` that `scan` selects, in order, at most `limit`; `None`
    /// when this replica holds no built index of that name.
    pub fn index_records(
        &self,
        name: &str,
        scan: &IndexScan<'_>,
        limit: usize,
    ) -> Result<Option<Vec<IndexRecord>>, ReadError> {
        let Some(status) = self.indexes().into_iter().find(|index| index.name == name && index.ready) else {
            return Ok(None);
        };
        // The records then hold every change of the rows written before this read.
        self.shared.journal.settle();
        let prefix = index::records_prefix(self.shared.id, name);
        let mut start = prefix.clone();
        match (scan.after, scan.lower) {
            (Some((value, doc)), _) => {
                start.extend_from_slice(value);
                start.extend_from_slice(doc);
            }
            (None, Bound::Included(value) | Bound::Excluded(value)) => start.extend_from_slice(value),
            (None, Bound::Unbounded) => {}
        }
        let iter = self.store.db.iterator_cf_opt(
            self.store.cf(CF_DOC_INDEX),
            topic_read_options(self.shared.id),
            IteratorMode::From(&start, Direction::Forward),
        );
        let mut records = Vec::new();
        for item in iter {
            let (key, _) = item?;
            let Some(rest) = key.strip_prefix(&prefix[..]) else { break };
            let (value, doc) = index::split_record(&status.def, rest)
                .ok_or_else(|| StorageError::Corrupt(format!("a record of index {name:?}")))?;
            if scan.after.is_some_and(|after| after == (value, doc)) {
                continue;
            }
            if matches!(scan.lower, Bound::Excluded(lower) if value == lower) {
                continue;
            }
            let past = match scan.upper {
                Bound::Included(upper) => value > upper,
                Bound::Excluded(upper) => value >= upper,
                Bound::Unbounded => false,
            };
            if past {
                break;
            }
            records.push(IndexRecord { value: value.to_vec(), doc: doc.to_vec() });
            if records.len() >= limit {
                break;
            }
        }
        Ok(Some(records))
    }
}
