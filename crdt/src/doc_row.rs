//! A document's fields in one `kv` record.
//!
//! Each field of a document is an entry of its own for every rule ([`crate::doc`]): deltas,
//! snapshots, merging, history and indexes see one row per field. Stored, the rows of one
//! document's fields are one record, under the document's entries prefix (which no other key
//! starts with), holding each field's row by name. A record per field cost a document of ten
//! fields ten memtable insertions and ten copies of the topic, namespace and document key.
//!
//! Writes are RocksDB merges: a write hands over the rows of the fields it changed (an empty
//! row removes the field) as an operand, and the `kv` family's merge operator applies the
//! operands in order to the stored fields. A write reads no more of a document than the
//! fields it changes, as with a record per field, and the fields it leaves alone stay as they
//! are even when another write changed them since it read.
//!
//! Encoding of a record and of an operand alike: a version byte (2); the number of headers,
//! each a distinct `(height, element id, expiry)` of the elements, encoded as a row encodes
//! them (height, CID length with the expiry flag, CID, expiry if any); then per field, in name
//! order, the name's length, the name, the number of its elements, and per element, best first,
//! its header's place, its value's length and its value. Counts, lengths and places are
//! unsigned varints (one byte below 128), so a field of a short value costs its name and value
//! and four bytes. The fields one block wrote share one header, so a document of ten fields
//! carries one CID where ten rows carried ten. An operand's field with no element removes the
//! field; a record holds none. Version 1, still read, wrote counts, lengths and places
//! big-endian in 4 bytes (a name's length in 2).

use std::collections::HashMap;

use canopy_dag::{Cid, Height, TOPIC_ID_BYTES};
use rocksdb::{DB, MergeOperands, WriteBatch};

use crate::error::StorageError;

use crate::row::{Element, Row, read_header, take, write_header};

const VERSION: u8 = 2;
/// The first encoding: fixed-width big-endian integers.
const VERSION_FIXED: u8 = 1;

/// Distinct headers an encoding finds by a scan; beyond, by a map.
const HEADERS_SCANNED_MAX: usize = 16;

/// The stored fields of documents, by record key (without the topic prefix); an absent
/// document's are empty. A write that knows them puts a changed document whole.
pub(crate) type Documents = HashMap<Vec<u8>, DocRow>;

/// Rows of a document's fields by name: a stored record, or the changes an operand makes.
/// Held as a vector sorted by name: a document has few fields, mostly written in name order,
/// and one allocation holds them all where a tree took one per node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DocRow {
    fields: Vec<(Vec<u8>, Row)>,
}

impl DocRow {
    /// Where `field` is held, or where it would go.
    fn find(&self, field: &[u8]) -> Result<usize, usize> {
        // Fields are mostly set in name order: the last place is tried first.
        match self.fields.last() {
            Some((last, _)) if last.as_slice() < field => Err(self.fields.len()),
            _ => self.fields.binary_search_by(|(held, _)| held.as_slice().cmp(field)),
        }
    }

    /// The row of `field`: empty when the document has no such field.
    pub fn field(&self, field: &[u8]) -> Row {
        self.get(field).cloned().unwrap_or_default()
    }

    /// Sets the row of `field`; an empty row removes it (and says so, in an operand).
    pub fn set(&mut self, field: &[u8], row: Row) {
        self.replace(field, row);
    }

    /// The row of `field`, when the document has it.
    pub fn get(&self, field: &[u8]) -> Option<&Row> {
        self.find(field).ok().map(|at| &self.fields[at].1)
    }

    /// The names of the fields, in order.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.fields.iter().map(|(name, _)| name.as_slice())
    }

    /// Sets the row of `field` in a stored record (where an empty row has no place); returns
    /// the row it had.
    pub fn replace(&mut self, field: &[u8], row: Row) -> Option<Row> {
        match self.find(field) {
            Ok(at) => Some(std::mem::replace(&mut self.fields[at].1, row)),
            Err(at) => {
                self.fields.insert(at, (field.to_vec(), row));
                None
            }
        }
    }

    /// Removes `field` from a stored record; returns the row it had.
    pub fn remove(&mut self, field: &[u8]) -> Option<Row> {
        self.find(field).ok().map(|at| self.fields.remove(at).1)
    }

    /// Elements of every field.
    pub fn elements(&self) -> usize {
        self.fields.iter().map(|(_, row)| row.len()).sum()
    }

    /// Applies the changes of `operand`.
    pub fn apply(&mut self, operand: DocRow) {
        for (field, row) in operand.fields {
            if row.is_empty() {
                self.remove(&field);
            } else {
                self.replace(&field, row);
            }
        }
    }

    /// Folds the later operand `later` into this one: each field it names takes its row,
    /// removals included.
    pub fn fold(&mut self, later: DocRow) {
        for (field, row) in later.fields {
            self.replace(&field, row);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields with a row, in name order.
    pub fn into_fields(self) -> impl Iterator<Item = (Vec<u8>, Row)> {
        self.fields.into_iter().filter(|(_, row)| !row.is_empty())
    }

    pub fn encode(&self) -> Vec<u8> {
        // The fields a block wrote share its height, id and expiry: each distinct one is
        // written once, and an element names it by its place.
        let mut headers: Vec<(Height, &Cid, Option<u64>)> = Vec::new();
        // Looked up by a scan while they are few (a document is mostly written by one block),
        // by a map once they are many.
        let mut placed: HashMap<(Height, &Cid, Option<u64>), usize> = HashMap::new();
        let mut places: Vec<u32> = Vec::new();
        for element in self.fields.iter().flat_map(|(_, row)| row.elements()) {
            let header = (element.height, &element.id, element.expires);
            let found = match headers.len() > HEADERS_SCANNED_MAX {
                true => placed.get(&header).copied(),
                false => headers.iter().position(|held| *held == header),
            };
            let place = found.unwrap_or_else(|| {
                headers.push(header);
                if headers.len() > HEADERS_SCANNED_MAX {
                    if placed.is_empty() {
                        placed.extend(headers.iter().enumerate().map(|(place, header)| (*header, place)));
                    } else {
                        placed.insert(header, headers.len() - 1);
                    }
                }
                headers.len() - 1
            });
            places.push(place as u32);
        }
        // A header takes at most 64 bytes (height, CID, expiry); a field's and an element's
        // varints at most 10 each besides their bytes.
        let bytes: usize = self
            .fields
            .iter()
            .map(|(field, row)| 20 + field.len() + row.elements().iter().map(|e| 20 + e.value.len()).sum::<usize>())
            .sum();
        let mut out = Vec::with_capacity(11 + 64 * headers.len() + bytes);
        out.push(VERSION);
        put_varint(&mut out, headers.len());
        for (height, id, expires) in &headers {
            write_header(&mut out, *height, id, *expires);
        }
        let mut places = places.into_iter();
        for (field, row) in &self.fields {
            put_varint(&mut out, field.len());
            out.extend_from_slice(field);
            put_varint(&mut out, row.len());
            for element in row.elements() {
                put_varint(&mut out, places.next().expect("a place per element") as usize);
                put_varint(&mut out, element.value.len());
                out.extend_from_slice(&element.value);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<DocRow, String> {
        let (int, mut rest): (IntReader, &[u8]) = match bytes.split_first() {
            Some((&VERSION, rest)) => (|rest, _| take_varint(rest), rest),
            Some((&VERSION_FIXED, rest)) => (take_fixed, rest),
            _ => return Err("a document record of an unknown version".into()),
        };
        let count = int(&mut rest, 4)?;
        // Each header takes at least 9 bytes: a count beyond the bytes left is corrupt.
        let mut headers = Vec::with_capacity(count.min(rest.len() / 9));
        for _ in 0..count {
            headers.push(read_header(&mut rest)?);
        }
        let mut fields: Vec<(Vec<u8>, Row)> = Vec::new();
        while !rest.is_empty() {
            let name_len = int(&mut rest, 2)?;
            let field = take(&mut rest, name_len)?.to_vec();
            let elements = int(&mut rest, 4)?;
            let mut row = Row::default();
            for _ in 0..elements {
                let place = int(&mut rest, 4)?;
                let &(height, id, expires) = headers.get(place).ok_or("an element names no header")?;
                let value_len = int(&mut rest, 4)?;
                let value = take(&mut rest, value_len)?.to_vec();
                if row.contains(&id) {
                    return Err("a field holds one element twice".into());
                }
                row.insert(Element { height, id, value, expires });
            }
            if fields.last().is_some_and(|(last, _)| *last >= field) {
                return Err("document fields out of order".into());
            }
            fields.push((field, row));
        }
        Ok(DocRow { fields })
    }
}

/// The record of a document that holds only `fields` (each a name and a value, in name order,
/// names unique), all of one element header (`header`, as [`write_header`] writes it: the
/// fields one block wrote with one expiry): the bytes [`DocRow::encode`] gives for it, made
/// without a row per field.
pub(crate) fn encode_fresh<'f>(fields: impl Iterator<Item = (&'f [u8], &'f [u8])> + Clone, header: &[u8]) -> Vec<u8> {
    let bytes: usize = fields.clone().map(|(name, value)| 20 + name.len() + value.len()).sum();
    let any = fields.clone().next().is_some();
    let mut out = Vec::with_capacity(3 + header.len() + bytes);
    out.push(VERSION);
    put_varint(&mut out, usize::from(any));
    if any {
        out.extend_from_slice(header);
    }
    for (name, value) in fields {
        put_varint(&mut out, name.len());
        out.extend_from_slice(name);
        // One element, of the one header.
        out.extend_from_slice(&[1, 0]);
        put_varint(&mut out, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// Reads an integer of a record: a varint, or (version 1) big-endian in the given width.
type IntReader = fn(&mut &[u8], usize) -> Result<usize, String>;

/// Appends `n` as an unsigned varint.
fn put_varint(out: &mut Vec<u8>, n: usize) {
    match u8::try_from(n) {
        // One byte, as the encoder would write it, without going through its buffer.
        Ok(small) if small < 0x80 => out.push(small),
        _ => out.extend_from_slice(unsigned_varint::encode::usize(n, &mut unsigned_varint::encode::usize_buffer())),
    }
}

/// Takes an unsigned varint off `bytes`.
fn take_varint(bytes: &mut &[u8]) -> Result<usize, String> {
    let (n, rest) = unsigned_varint::decode::usize(bytes).map_err(|e| format!("a document record's integer: {e}"))?;
    *bytes = rest;
    Ok(n)
}

/// Takes a big-endian integer of `width` bytes (2 or 4) off `bytes`.
fn take_fixed(bytes: &mut &[u8], width: usize) -> Result<usize, String> {
    Ok(take(bytes, width)?.iter().fold(0usize, |n, byte| n << 8 | usize::from(*byte)))
}

/// The `kv` merge operator's full merge: the stored fields (if any) with every operand
/// applied. `None` (RocksDB then reports corruption) when a record or operand is undecodable.
pub(crate) fn full_merge(_key: &[u8], stored: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut doc = match stored {
        Some(bytes) => DocRow::decode(bytes).ok()?,
        None => DocRow::default(),
    };
    for operand in operands {
        doc.apply(DocRow::decode(operand).ok()?);
    }
    Some(doc.encode())
}

/// The partial merge: operands folded into one, removals kept (they apply to fields stored
/// below them).
pub(crate) fn partial_merge(_key: &[u8], _stored: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut doc = DocRow::default();
    for operand in operands {
        doc.fold(DocRow::decode(operand).ok()?);
    }
    Some(doc.encode())
}

/// Where the logical row `key` (without the topic prefix) is stored: the document's record
/// and the field's name for a document entry, `None` for a key stored as its own record.
pub(crate) fn split(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let document = crate::doc::document_prefix(key)?;
    Some((document, &key[document.len()..]))
}

/// The `kv` family's compaction filter: removes a document's record left with no field. The
/// writes that know a document's fields delete its record when they remove the last one, but
/// those that only hand over removals (an expiry's collection, a snapshot's merge, a repair)
/// merge them, and the merge leaves an empty record, which reads as no document. RocksDB puts
/// a deletion where a removed record was, so no older version of it shows again.
pub(crate) fn drop_empty(_level: u32, key: &[u8], value: &[u8]) -> rocksdb::CompactionDecision {
    let record = key.get(TOPIC_ID_BYTES..).and_then(split).is_some_and(|(_, field)| field.is_empty());
    // An empty record is its version and a zero count; any field brings a header of more than
    // 16 bytes, so a record that long is not decoded to be kept.
    match record && value.len() < 16 && DocRow::decode(value).is_ok_and(|doc| doc.is_empty()) {
        true => rocksdb::CompactionDecision::Remove,
        false => rocksdb::CompactionDecision::Keep,
    }
}

/// The record a scan from the logical key `from` starts at: a document entry's document.
pub(crate) fn seek_key(from: &[u8]) -> &[u8] {
    split(from).map_or(from, |(document, _)| document)
}

/// Decodes a record of `kv` (key without the topic prefix) into the logical rows it holds:
/// itself, or a document's fields, each under its entry's key.
pub(crate) fn expand(key: Vec<u8>, value: &[u8]) -> Result<Vec<(Vec<u8>, Row)>, StorageError> {
    if split(&key).is_none() {
        let row = Row::decode(value).map_err(|e| StorageError::Corrupt(format!("row of key {key:?}: {e}")))?;
        return Ok(vec![(key, row)]);
    }
    let doc = DocRow::decode(value).map_err(|e| StorageError::Corrupt(format!("document record {key:?}: {e}")))?;
    Ok(doc.into_fields().map(|(field, row)| ([key.as_slice(), &field].concat(), row)).collect())
}

/// A topic's logical rows, in key order, from the scan `records` of `kv` (started at
/// [`seek_key`] of `from`), leaving out those before `from`.
pub(crate) fn rows<'a>(
    records: impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a,
    from: &[u8],
) -> impl Iterator<Item = Result<(Vec<u8>, Row), StorageError>> + 'a {
    let from = from.to_vec();
    records
        .flat_map(|record| match record.and_then(|(key, value)| expand(key, &value)) {
            Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(error) => vec![Err(error)],
        })
        .filter(move |row| row.as_ref().map_or(true, |(key, _)| *key >= from))
}

/// The logical row `field` of the stored record `value` of a document, or of a key's own.
pub(crate) fn row_of(key: &[u8], value: Option<&[u8]>) -> Result<Row, StorageError> {
    let Some(value) = value else { return Ok(Row::default()) };
    match split(key) {
        Some((document, field)) => DocRow::decode(value)
            .map(|doc| doc.field(field))
            .map_err(|e| StorageError::Corrupt(format!("document record {document:?}: {e}"))),
        None => Row::decode(value).map_err(|e| StorageError::Corrupt(format!("row of key {key:?}: {e}"))),
    }
}

/// Rewrites the documents of a directory of format 2, which kept a record per field, as a
/// record per document; returns how many documents it rewrote. Each document is rewritten in
/// one write (its field records deleted, its record put), so a crash leaves every document
/// whole in one layout or the other, and running it again finishes the rest: a record already
/// rewritten is read as one (its first byte is the version, where a row begins with a height
/// below 2^56).
pub(crate) fn migrate(db: &DB, kv: &rocksdb::ColumnFamily) -> Result<u64, StorageError> {
    let mut iter = db.raw_iterator_cf(kv);
    iter.seek_to_first();
    let mut gathered: Option<(Vec<u8>, DocRow)> = None;
    let mut batch = WriteBatch::default();
    let mut documents = 0;
    let corrupt = |key: &[u8], what: String| StorageError::Corrupt(format!("document entry {key:?}: {what}"));
    while let Some(key) = iter.key() {
        let Some((topic, rest)) = key.split_at_checked(TOPIC_ID_BYTES) else {
            iter.next();
            continue;
        };
        if rest < crate::doc::namespace() {
            iter.seek([topic, crate::doc::namespace()].concat());
            continue;
        }
        let Some((document, field)) = split(rest) else {
            if rest.starts_with(crate::doc::namespace()) {
                // Not a document's entry: `canopy-ops verify` reports it.
                iter.next();
                continue;
            }
            // Past this topic's documents: on to the next topic.
            let id = u32::from_be_bytes(topic.try_into().expect("a topic id"));
            match id.checked_add(1) {
                Some(next) => iter.seek(next.to_be_bytes()),
                None => break,
            }
            continue;
        };
        let record = [topic, document].concat();
        if gathered.as_ref().is_none_or(|(held, _)| *held != record) {
            if let Some((done, fields)) = gathered.take() {
                batch.put_cf(kv, done, fields.encode());
                documents += 1;
                if batch.len() >= MIGRATE_BATCH_RECORDS {
                    db.write(std::mem::take(&mut batch))?;
                }
            }
            gathered = Some((record.clone(), DocRow::default()));
        }
        let value = iter.value().expect("a valid iterator has a value");
        let fields = &mut gathered.as_mut().expect("set above").1;
        if field.is_empty() && matches!(value.first(), Some(&(VERSION | VERSION_FIXED))) {
            fields.fold(DocRow::decode(value).map_err(|e| corrupt(key, e))?);
        } else {
            fields.set(field, Row::decode(value).map_err(|e| corrupt(key, e))?);
            batch.delete_cf(kv, key);
        }
        iter.next();
    }
    iter.status()?;
    if let Some((done, fields)) = gathered.take() {
        batch.put_cf(kv, done, fields.encode());
        documents += 1;
    }
    db.write(batch)?;
    Ok(documents)
}

/// Records a migration's write holds at most before it is written, at a document's end.
const MIGRATE_BATCH_RECORDS: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::Element;
    use canopy_dag::{Block, Cid};

    fn id(n: u8) -> Cid {
        Block::build("t", vec![], 1, vec![n], &canopy_dag::Signer::from_secret([1; 32])).unwrap().cid()
    }

    fn row(n: u8, value: &[u8]) -> Row {
        Row::single(Element { height: u64::from(n), id: id(n), value: value.to_vec(), expires: None })
    }

    #[test]
    fn an_integer_is_written_as_the_varint_encoder_writes_it() {
        for n in [0, 1, 0x7f, 0x80, 0xff, 0x100, 300, 1 << 20, usize::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, n);
            assert_eq!(out, unsigned_varint::encode::usize(n, &mut unsigned_varint::encode::usize_buffer()), "{n}");
            assert_eq!(take_varint(&mut &out[..]), Ok(n));
        }
    }

    #[test]
    fn a_fresh_record_is_the_bytes_its_rows_encode_to() {
        let long = vec![b'x'; 300];
        let fields: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"b", &long), (b"c", b"\"three\"")];
        for expires in [None, Some(1_700_000_000_000)] {
            let mut doc = DocRow::default();
            // Set out of name order: the record does not depend on it.
            for (name, value) in fields.iter().rev() {
                doc.set(name, Row::single(Element { height: 7, id: id(7), value: value.to_vec(), expires }));
            }
            let mut header = Vec::new();
            write_header(&mut header, 7, &id(7), expires);
            assert_eq!(encode_fresh(fields.iter().copied(), &header), doc.encode(), "expires {expires:?}");
            assert_eq!(DocRow::decode(&encode_fresh(fields.iter().copied(), &header)).unwrap(), doc);
        }
        assert_eq!(encode_fresh(std::iter::empty(), &[]), DocRow::default().encode());
    }

    #[test]
    fn fields_set_in_any_order_are_held_in_name_order() {
        let mut doc = DocRow::default();
        for name in [&b"m"[..], b"c", b"x", b"a", b"c"] {
            doc.set(name, row(1, name));
        }
        assert_eq!(doc.names().collect::<Vec<_>>(), [&b"a"[..], b"c", b"m", b"x"]);
        assert_eq!(doc.remove(b"m"), Some(row(1, b"m")));
        assert_eq!(doc.remove(b"m"), None);
        assert_eq!(doc.replace(b"b", row(2, b"b")), None);
        assert_eq!(doc.replace(b"b", row(3, b"b")), Some(row(2, b"b")));
        assert_eq!(doc.names().collect::<Vec<_>>(), [&b"a"[..], b"b", b"c", b"x"]);
        assert_eq!(DocRow::decode(&doc.encode()).unwrap(), doc);
    }

    #[test]
    fn records_round_trip_and_operands_apply_in_order() {
        let mut doc = DocRow::default();
        doc.set(b"a", row(1, b"1"));
        doc.set(b"b", row(2, b"2"));
        assert_eq!(DocRow::decode(&doc.encode()).unwrap(), doc);
        assert!(DocRow::decode(&doc.encode()[..7]).is_err());
        assert!(DocRow::decode(&[3]).is_err(), "an unknown version is refused");
        assert!(DocRow::decode(&[VERSION, 0x80]).is_err(), "a varint cut short is refused");

        let mut change = DocRow::default();
        change.set(b"a", Row::default());
        change.set(b"c", row(3, b"3"));
        let mut later = DocRow::default();
        later.set(b"c", row(4, b"4"));
        doc.apply(change.clone());
        doc.apply(later.clone());
        assert_eq!(doc.field(b"a"), Row::default(), "an empty row removes the field");
        assert_eq!(doc.field(b"b"), row(2, b"2"), "a field no operand names stays");
        assert_eq!(doc.field(b"c"), row(4, b"4"), "the later operand wins");
        assert_eq!(doc.clone().into_fields().count(), 2);

        // Folding the operands first and applying the fold changes nothing.
        let mut folded = DocRow::default();
        folded.fold(change);
        folded.fold(later);
        let mut base = DocRow::default();
        base.set(b"a", row(1, b"1"));
        base.set(b"b", row(2, b"2"));
        base.apply(folded);
        assert_eq!(base, doc);
    }

    /// `doc` as the first encoding wrote it: integers big-endian, a header per element.
    fn encode_fixed(doc: &DocRow) -> Vec<u8> {
        let elements: Vec<&Element> = doc.fields.iter().flat_map(|(_, row)| row.elements()).collect();
        let mut out = vec![VERSION_FIXED];
        out.extend_from_slice(&(elements.len() as u32).to_be_bytes());
        for element in &elements {
            write_header(&mut out, element.height, &element.id, element.expires);
        }
        let mut place = 0u32;
        for (field, row) in &doc.fields {
            out.extend_from_slice(&(field.len() as u16).to_be_bytes());
            out.extend_from_slice(field);
            out.extend_from_slice(&(row.len() as u32).to_be_bytes());
            for element in row.elements() {
                out.extend_from_slice(&place.to_be_bytes());
                out.extend_from_slice(&(element.value.len() as u32).to_be_bytes());
                out.extend_from_slice(&element.value);
                place += 1;
            }
        }
        out
    }

    #[test]
    fn records_of_the_first_encoding_read_the_same_and_are_larger() {
        let mut doc = DocRow::default();
        for field in 0..10u8 {
            doc.set(&[b'f', field], row(7, &[b'v'; 12]));
        }
        let mut two = row(8, &vec![b'x'; 300]);
        two.insert(Element { height: 9, id: id(9), value: b"y".to_vec(), expires: Some(1234) });
        doc.set(&[b'n'; 200], two);
        let fixed = encode_fixed(&doc);
        assert_eq!(DocRow::decode(&fixed).unwrap(), doc);
        let compact = doc.encode();
        assert_eq!(DocRow::decode(&compact).unwrap(), doc);
        assert!(compact.len() + 150 < fixed.len(), "{} against {} bytes", compact.len(), fixed.len());
    }

    #[test]
    fn the_fields_one_block_wrote_carry_its_cid_once() {
        let mut doc = DocRow::default();
        for field in 0..10u8 {
            doc.set(&[b'f', field], row(7, &[field]));
        }
        let mut two = row(8, b"late");
        two.insert(Element { height: 9, id: id(9), value: b"x".to_vec(), expires: Some(1234) });
        doc.set(b"g", two);
        let bytes = doc.encode();
        let cid = id(7).to_bytes();
        assert_eq!(bytes.windows(cid.len()).filter(|window| *window == &cid[..]).count(), 1);
        assert_eq!(DocRow::decode(&bytes).unwrap(), doc);

        // Many distinct headers (past the scanned ones) round-trip as well.
        let mut wide = DocRow::default();
        for field in 0..40u8 {
            wide.set(&[field], row(field, b"v"));
        }
        assert_eq!(DocRow::decode(&wide.encode()).unwrap(), wide);
        let mut bad = wide.encode();
        // The last element: its header's place, its value's length (4 bytes) and its value (1 byte).
        let at = bad.len() - 9;
        bad[at..at + 4].copy_from_slice(&1000u32.to_be_bytes());
        assert!(DocRow::decode(&bad).is_err(), "an element naming no header is refused");
    }

    #[test]
    fn entries_map_to_their_documents_record() {
        let entry = crate::doc::entry_key(b"svc", "env");
        let (document, field) = split(&entry).unwrap();
        assert_eq!(document, crate::doc::entries_prefix(b"svc"));
        assert_eq!(field, b"env");
        assert_eq!(seek_key(&entry), document);
        assert_eq!(split(b"plain"), None);
        assert_eq!(seek_key(b"plain"), b"plain");

        let mut doc = DocRow::default();
        doc.set(b"env", row(1, b"\"prod\""));
        doc.set(b"gone", Row::default());
        let rows = expand(document.to_vec(), &doc.encode()).unwrap();
        assert_eq!(rows, vec![(entry.clone(), row(1, b"\"prod\""))]);
        assert_eq!(row_of(&entry, Some(&doc.encode())).unwrap(), row(1, b"\"prod\""));
        assert!(row_of(&entry, Some(b"junk")).is_err());
    }
}
