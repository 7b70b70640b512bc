//! One way to change a key's row. Every path that changes rows (a local write, a received
//! block, an expiry collection, a snapshot merge, the row file a fresh replica ingests, a
//! repair) hands [`RowChanges::write`] the row before and the row after, and it writes what
//! follows from the change into the round's `WriteBatch`:
//! - the row itself (or, for a row file, into the file);
//! - the topic's key count (rows that hold any element, counter entries not counted);
//! - key history: each element that left the row is a version;
//! - the expiry index: each element that entered the row with an expiry;
//! - the watchers' change, by the rule of the path ([`Notice`]).
//!
//! Records derived from a row's content (the expiry index, the key count and the records of
//! documents' indexes) are written in one place, [`RowChanges::derive`]; a fresh document's
//! fields, which get no row, have the same records made from their values
//! ([`RowChanges::write_fresh_document`]). Index records are written as an entry of the
//! topic's index journal when the writer thread keeps one (see `index_journal.rs`).

use std::sync::Arc;

use canopy_dag::{Cid, Height, TopicId};
use rocksdb::{ColumnFamily, DB, SstFileWriter, WriteBatch};

use crate::delta::Delta;
use crate::doc_row::{self, DocRow, Documents};
use crate::error::StorageError;
use crate::index::Indexes;
use crate::key_filter::{KeyFilter, hash as key_hash};
use crate::row::{Element, Row};
use crate::schema::{CF_DOC_INDEX, CF_EXPIRIES, CF_HISTORY, CF_KV, CF_META, key_count_key};
use crate::types::Change;

/// When watchers hear of a changed row, and the height their change carries.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Notice {
    /// A local write, which leaves at most its own element: for every put (even of the value
    /// already visible), and for the delete of a live value.
    Written(Height),
    /// A received block: when the visible value differs.
    ValueChanged(Height),
    /// A merged snapshot: when the visible value differs, at the visible element's height (at
    /// the given one, the snapshot's top, when none is left).
    Merged(Height),
    /// An expiry: when the best element ran out, with the value it leaves visible.
    Expired(Height),
}

/// What a sequence of row changes adds up to, once its batch is written.
pub(crate) struct Sealed {
    /// The topic's key count after the changes.
    pub key_count: u64,
    /// The watchers' changes, in the order they were made.
    pub changes: Vec<Change>,
    /// The earliest expiry among the elements that entered rows.
    pub next_expiry: Option<u64>,
}

/// The rows a [`RowChanges`] made that its topic's key filter has not heard of yet.
struct Made {
    filter: KeyFilter,
    hashes: Vec<u64>,
}

/// The changes of one topic's rows over one or more batches, and what they add up to.
pub(crate) struct RowChanges<'a> {
    topic: TopicId,
    now: u64,
    kv: &'a ColumnFamily,
    expiries: &'a ColumnFamily,
    doc_index: &'a ColumnFamily,
    meta: &'a ColumnFamily,
    /// The documents' indexes kept up to date, when the writer thread maintains any.
    indexes: Option<Indexes>,
    /// Set when the node keeps key history.
    history: Option<&'a ColumnFamily>,
    watched: bool,
    /// The topic's key filter and the rows made since it last heard.
    keys: Option<Made>,
    key_count: i64,
    changes: Vec<Change>,
    next_expiry: Option<u64>,
    /// The document whose changed fields are gathered into one operand (see `doc_row.rs`).
    document: Option<(Vec<u8>, DocRow)>,
    /// The document whose fields a row file gathers into one record.
    file_document: Option<(Vec<u8>, DocRow)>,
    /// Documents whose stored fields are known (read by this round): their changes are
    /// written whole, as a put, not as a merge.
    documents: Documents,
    /// Index records put (`true`) or deleted since the last seal, which writes them in key
    /// order: inserted in order, a memtable finds each next one's place from the last's.
    index_records: Vec<(Vec<u8>, bool)>,
    /// Where the index records go as a journal entry, when a journal thread puts them in place.
    journal: Option<(&'a crate::index_journal::Staged, Arc<crate::index_journal::Marks>)>,
    /// The element header of the fresh documents written last, encoded: the documents of one
    /// block share it.
    fresh_header: Option<(Header, Vec<u8>)>,
}

/// An element header: the height and id of the block that wrote the element, and its expiry.
type Header = (Height, Cid, Option<u64>);

impl<'a> RowChanges<'a> {
    /// Changes of `topic`'s rows, whose key count is `key_count` now, judged at `now` (which
    /// elements are visible), recording history when `history`, and collecting watchers'
    /// changes when `watched`.
    pub fn new(db: &'a DB, topic: TopicId, key_count: u64, now: u64, history: bool, watched: bool) -> RowChanges<'a> {
        let cf = |name: &str| db.cf_handle(name).expect("every canopy column family is opened with the database");
        RowChanges {
            topic,
            now,
            kv: cf(CF_KV),
            expiries: cf(CF_EXPIRIES),
            doc_index: cf(CF_DOC_INDEX),
            meta: cf(CF_META),
            indexes: None,
            history: history.then(|| cf(CF_HISTORY)),
            watched,
            keys: None,
            key_count: i64::try_from(key_count).unwrap_or(i64::MAX),
            changes: Vec::new(),
            next_expiry: None,
            document: None,
            file_document: None,
            documents: Documents::new(),
            index_records: Vec::new(),
            journal: None,
            fresh_header: None,
        }
    }

    /// Writes the index records as an entry of the topic's journal (whose marks are `marks`),
    /// staged in `staged` until the batch is written, rather than in place.
    pub fn with_journal(
        mut self,
        staged: &'a crate::index_journal::Staged,
        marks: &Arc<crate::index_journal::Marks>,
    ) -> RowChanges<'a> {
        self.journal = Some((staged, marks.clone()));
        self
    }

    /// Keeps the records of `indexes` up to date too, and tells them when a declaration changes.
    pub fn with_indexes(mut self, indexes: &Indexes) -> RowChanges<'a> {
        self.indexes = Some(indexes.clone());
        self
    }

    /// Adds the key of each row made to `keys`.
    pub fn with_key_filter(mut self, keys: &KeyFilter) -> RowChanges<'a> {
        self.keys = Some(Made { filter: keys.clone(), hashes: Vec::new() });
        self
    }

    /// Writes `after` as `key`'s row in place of `before`, and everything that follows.
    pub fn write(&mut self, batch: &mut WriteBatch, key: &[u8], before: &Row, after: &Row, notice: Notice) {
        if before == after {
            return;
        }
        self.left(batch, key, before, after);
        if let Some((document, field)) = doc_row::split(key) {
            if self.document.as_ref().is_none_or(|(gathered, _)| gathered != document) {
                self.merge_document(batch);
                self.document = Some((document.to_vec(), DocRow::default()));
            }
            self.document.as_mut().expect("set above").1.set(field, after.clone());
        } else if after.is_empty() {
            batch.delete_cf(self.kv, self.topic.key(key));
        } else {
            batch.put_cf(self.kv, self.topic.key(key), after.encode());
        }
        if before.is_empty() && !after.is_empty() {
            self.made(key);
        }
        self.derive(batch, key, before, after);
        self.notice(key, before, after, notice);
    }

    /// Writes the record of the document whose entries start with `document` (`was_empty`:
    /// it held no field before), whole, as `after`; `changed` names the entry of each field
    /// whose row changed with the row it had, and for each is written what
    /// [`RowChanges::write`] writes for a key.
    pub fn write_document(
        &mut self,
        batch: &mut WriteBatch,
        (document, was_empty): (&[u8], bool),
        after: &DocRow,
        changed: &[(&[u8], Option<Row>)],
        notice: Notice,
    ) {
        if changed.is_empty() {
            return;
        }
        self.merge_document(batch);
        let empty = Row::default();
        for (entry, old) in changed {
            let (old, new) = (old.as_ref().unwrap_or(&empty), after.get(&entry[document.len()..]).unwrap_or(&empty));
            self.left(batch, entry, old, new);
            self.derive(batch, entry, old, new);
            self.notice(entry, old, new, notice);
        }
        let key = self.topic.key(document);
        match after.is_empty() {
            true => batch.delete_cf(self.kv, key),
            false => batch.put_cf(self.kv, key, after.encode()),
        }
        if was_empty && !after.is_empty() {
            self.made(document);
        }
        if let Some(known) = self.documents.get_mut(document) {
            known.clone_from(after);
        }
    }

    /// Writes the record of a document this replica holds no field of and that no other
    /// change of the round names, made by block `(height, id)` from `fields` (each its entry,
    /// its name and its value, in name order) expiring at `expires`: what
    /// [`RowChanges::write_document`] writes, with the record and the index records made
    /// straight from the values, and a field's row made only for an expiry or a watcher.
    pub fn write_fresh_document<'f>(
        &mut self,
        batch: &mut WriteBatch,
        document: &[u8],
        fields: impl Iterator<Item = (&'f [u8], &'f [u8], &'f [u8])> + Clone,
        (height, id): (Height, &Cid),
        expires: Option<u64>,
        notice: Notice,
    ) {
        if fields.clone().next().is_none() {
            return;
        }
        self.merge_document(batch);
        let empty = Row::default();
        // The document's key, unescaped once for all its indexed fields.
        let mut doc: Option<Vec<u8>> = None;
        for (entry, name, value) in fields.clone() {
            if expires.is_some() || self.watched || crate::index::is_declaration(entry) {
                let element = Element { height, id: *id, value: value.to_vec(), expires };
                let row = Row::single(element);
                self.derive(batch, entry, &empty, &row);
                self.notice(entry, &empty, &row, notice);
                continue;
            }
            // What `derive` writes for a field that had no row and gets one element.
            if !crate::counter::is_reserved(entry) {
                self.key_count += 1;
            }
            let Some(indexes) = &self.indexes else { continue };
            for index in indexes.maintained.iter().filter(|index| index.def.path[0].as_bytes() == name) {
                let Some(encoded) = index.def.json_value(value) else { continue };
                let doc = match &doc {
                    Some(doc) => doc,
                    None => match crate::doc::parse_entry(document) {
                        Some((parsed, _)) => doc.insert(parsed),
                        None => break,
                    },
                };
                self.index_records.push((crate::index::record_key(self.topic, &index.name, &encoded, doc), true));
            }
        }
        let header = (height, *id, expires);
        let header = match &mut self.fresh_header {
            Some((made, bytes)) if *made == header => bytes,
            slot => {
                let mut bytes = Vec::new();
                crate::row::write_header(&mut bytes, height, id, expires);
                &slot.insert((header, bytes)).1
            }
        };
        let record = doc_row::encode_fresh(fields.map(|(_, name, value)| (name, value)), header);
        if let Some(known) = self.documents.get_mut(document) {
            *known = DocRow::decode(&record).expect("a record just encoded decodes");
        }
        batch.put_cf(self.kv, self.topic.key(document), record);
        self.made(document);
    }

    /// Writes `row`, a key's first row, into a row file rather than the batch (which takes
    /// what follows); keys must come in order.
    pub fn write_to_file(
        &mut self,
        file: &mut SstFileWriter<'_>,
        batch: &mut WriteBatch,
        key: &[u8],
        row: &Row,
        notice: Notice,
    ) -> Result<(), StorageError> {
        match doc_row::split(key) {
            Some((document, field)) => {
                if self.file_document.as_ref().is_none_or(|(gathered, _)| gathered != document) {
                    self.finish_file(file)?;
                    self.file_document = Some((document.to_vec(), DocRow::default()));
                }
                self.file_document.as_mut().expect("set above").1.set(field, row.clone());
            }
            None => {
                self.finish_file(file)?;
                file.put(self.topic.key(key), row.encode())?;
            }
        }
        self.made(key);
        let before = Row::default();
        self.derive(batch, key, &before, row);
        self.notice(key, &before, row, notice);
        Ok(())
    }

    /// Writes the records derived from `key`'s row changing from `before` to `after`, without
    /// the row: the key count, the expiry index and the documents' index records.
    /// Called alone for a row already stored whose derived records are being rebuilt.
    pub fn derive(&mut self, batch: &mut WriteBatch, key: &[u8], before: &Row, after: &Row) {
        if let Some(indexes) = &self.indexes {
            if crate::index::is_declaration(key) {
                indexes.declarations_changed.store(true, std::sync::atomic::Ordering::Relaxed);
            } else if let Some((document, field)) =
                (!indexes.maintained.is_empty()).then(|| doc_row::split(key)).flatten()
            {
                // The document's key is unescaped only for a field some index holds.
                let mut doc: Option<Vec<u8>> = None;
                for index in indexes.maintained.iter().filter(|index| index.def.path[0].as_bytes() == field) {
                    let doc = match &doc {
                        Some(doc) => doc,
                        None => match crate::doc::parse_entry(document) {
                            Some((parsed, _)) => doc.insert(parsed),
                            None => break,
                        },
                    };
                    let old = index.def.row_values(before);
                    let new = index.def.row_values(after);
                    for value in old.difference(&new) {
                        self.index_records.push((crate::index::record_key(self.topic, &index.name, value, doc), false));
                    }
                    for value in new.difference(&old) {
                        self.index_records.push((crate::index::record_key(self.topic, &index.name, value, doc), true));
                    }
                }
            }
        }
        if !crate::counter::is_reserved(key) {
            self.key_count += i64::from(!after.is_empty()) - i64::from(!before.is_empty());
        }
        for element in after.elements().iter().filter(|element| !before.contains(&element.id)) {
            if let Some(at) = element.expires {
                crate::expiry::record(batch, self.expiries, self.topic, key, &element.id, at);
                self.next_expiry = Some(self.next_expiry.map_or(at, |next| next.min(at)));
            }
        }
    }

    /// Records a version of `key` that never reached (or never was) an element of its row: a
    /// delete, or a value removed or expired before it arrived.
    pub fn version(&mut self, batch: &mut WriteBatch, key: &[u8], (height, cid): (Height, &Cid), deleted: bool) {
        if let Some(cf) = self.history {
            crate::history::record(batch, cf, self.topic, key, (height, cid), deleted);
        }
    }

    /// Records the deletes of a received block's delta as versions.
    pub fn deletes(&mut self, batch: &mut WriteBatch, delta: &Delta, at: (Height, &Cid)) {
        if let Some(cf) = self.history {
            crate::history::record_deletes(batch, cf, self.topic, delta, at);
        }
    }

    /// Writes into the row file the document record whose fields it gathers; called once
    /// every row was handed to [`RowChanges::write_to_file`].
    pub fn finish_file(&mut self, file: &mut SstFileWriter<'_>) -> Result<(), StorageError> {
        if let Some((document, fields)) = self.file_document.take() {
            file.put(self.topic.key(&document), fields.encode())?;
        }
        Ok(())
    }

    /// Makes the stored fields of `documents` known: a change of one of them is written whole.
    pub fn know_documents(&mut self, documents: Documents) {
        self.documents.extend(documents);
    }

    /// The stored fields of the documents made known, as the changes left them.
    pub fn take_documents(&mut self) -> Documents {
        std::mem::take(&mut self.documents)
    }

    /// Writes the changed fields of the document gathered so far: the whole record when its
    /// stored fields are known, else a merge of the changes.
    fn merge_document(&mut self, batch: &mut WriteBatch) {
        let Some((document, changes)) = self.document.take() else { return };
        let key = self.topic.key(&document);
        match self.documents.get_mut(&document) {
            Some(stored) => {
                stored.apply(changes);
                match stored.is_empty() {
                    true => batch.delete_cf(self.kv, key),
                    false => batch.put_cf(self.kv, key, stored.encode()),
                }
            }
            None => batch.merge_cf(self.kv, key, changes.encode()),
        }
    }

    /// Writes the key count the changes so far leave, and hands over their watchers' changes
    /// and earliest expiry; further changes go on from there. Every batch rows were written
    /// into is sealed before it is written: it takes the last document's changed fields and
    /// the index records.
    pub fn seal(&mut self, batch: &mut WriteBatch) -> Sealed {
        self.merge_document(batch);
        match &self.journal {
            // In the order they were made: the journal thread sorts the records it writes.
            Some((staged, marks)) if !self.index_records.is_empty() => {
                let records = std::mem::take(&mut self.index_records);
                staged.journal(batch, self.doc_index, self.topic, marks, records);
            }
            _ => {
                // Sorted, so each memtable insertion starts from the one before. A stable
                // sort: of two changes to one record, the later stays last.
                self.index_records.sort_by(|a, b| a.0.cmp(&b.0));
                for (record, put) in self.index_records.drain(..) {
                    match put {
                        true => batch.put_cf(self.doc_index, record, []),
                        false => batch.delete_cf(self.doc_index, record),
                    }
                }
            }
        }
        self.tell_key_filter();
        let key_count = self.key_count.max(0) as u64;
        batch.put_cf(self.meta, key_count_key(self.topic), key_count.to_be_bytes());
        Sealed { key_count, changes: std::mem::take(&mut self.changes), next_expiry: self.next_expiry.take() }
    }

    /// Records that `key` got a row, for the key filter (which holds a document's field as the
    /// document's entries prefix).
    fn made(&mut self, key: &[u8]) {
        if let Some(made) = &mut self.keys {
            // A document's fields come one after another: its entry is added once.
            let entry = key_hash(key);
            if made.hashes.last() != Some(&entry) {
                made.hashes.push(entry);
            }
        }
    }

    /// Adds the keys of the rows made so far to the topic's key filter.
    fn tell_key_filter(&mut self) {
        if let Some(made) = &mut self.keys {
            made.filter.insert(&made.hashes);
            made.hashes.clear();
        }
    }

    /// Each element that left the row is a version of the key.
    fn left(&mut self, batch: &mut WriteBatch, key: &[u8], before: &Row, after: &Row) {
        if let Some(cf) = self.history {
            for element in before.elements().iter().filter(|element| !after.contains(&element.id)) {
                crate::history::record(batch, cf, self.topic, key, (element.height, &element.id), false);
            }
        }
    }

    fn notice(&mut self, key: &[u8], before: &Row, after: &Row, notice: Notice) {
        if !self.watched {
            return;
        }
        let now = self.now;
        let mut visible = after.visible(now);
        let (heard, height, expired) = match notice {
            Notice::Written(height) => {
                visible = after.winner();
                (visible.is_some() || before.visible(now).is_some(), height, false)
            }
            Notice::ValueChanged(height) => {
                (before.visible(now).map(|e| &e.value) != visible.map(|e| &e.value), height, false)
            }
            Notice::Merged(top) => {
                let height = visible.map_or(top, |e| e.height);
                (before.visible(now).map(|e| &e.value) != visible.map(|e| &e.value), height, false)
            }
            Notice::Expired(height) => (before.winner().is_some_and(|best| !after.contains(&best.id)), height, true),
        };
        if heard {
            let value = visible.map(|element| element.value.clone());
            self.changes.push(Change { key: key.to_vec(), value, height, expired });
        }
    }
}

impl Drop for RowChanges<'_> {
    /// A key in the filter that never got its row only costs a read; a row whose key is not in
    /// the filter would be overwritten blind, so changes dropped unsealed still tell it.
    fn drop(&mut self) {
        self.tell_key_filter();
    }
}
