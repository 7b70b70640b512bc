//! Secondary indexes of documents' fields.
//!
//! An index is *declared* in the topic itself, as an entry of the reserved namespace
//! `0x00 'x' ++ name` whose value is the JSON text `{"path":"a.b","type":"string"}`. The
//! declaration is an ordinary element, so it replicates, merges by the value rule and survives
//! snapshots like any key: declaring an index on one replica declares it on every replica, each
//! of which builds its own copy from its rows. Dropping the index deletes the entry.
//!
//! Each replica keeps, in the `doc_index` family, one record per value a document's field
//! holds: `topic ++ escaped index name ++ encoded value ++ document key` → nothing. Values of
//! the declared type only are indexed (a field of another type, or missing, gives no record);
//! every live element of the field's row gives its record, so while concurrent writes of the
//! field are unresolved the document is found under each value, and a query checks every
//! document it reads against its conditions. The encoded values order as the values do
//! (numbers by value, strings by their bytes, `false` before `true`).
//!
//! Records are written by [`crate::row_change::RowChanges::derive`] in the batch that changes
//! the row, for every index the writer thread maintains. A newly declared (or redeclared)
//! index is built by the writer thread from the existing rows, a bounded step at a time between
//! writes, with its progress in `meta` (`x ++ topic ++ name`); it serves queries once built.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use canopy_dag::TopicId;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::counter::{RESERVED, escape_key, escaped_len};
use crate::delta::DeltaError;
use crate::row::Row;

/// The namespace of index declarations.
const NAMESPACE: [u8; 2] = [RESERVED, b'x'];

/// Longest index name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// Most parts of an indexed field's path.
pub const PATH_PARTS_MAX: usize = 8;

/// The type of the values an index holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// JSON strings, ordered by their UTF-8 bytes.
    String,
    /// JSON numbers, ordered by value (as 64-bit floats).
    Number,
    /// `false` and `true`.
    Bool,
}

/// What an index holds: the values of one field path of one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexDef {
    /// The field's path, outermost first (a dot between parts in the declaration).
    pub path: Vec<String>,
    /// The type of the values indexed.
    pub kind: IndexKind,
}

/// The declaration's JSON form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Declared {
    path: String,
    #[serde(rename = "type")]
    kind: IndexKind,
}

impl IndexDef {
    /// The index of the field at `path` (parts separated by dots) holding values of `kind`.
    pub fn new(path: &str, kind: IndexKind) -> Result<IndexDef, String> {
        let parts: Vec<String> = path.split('.').map(str::to_string).collect();
        if parts.iter().any(String::is_empty) {
            return Err(format!("the path {path:?} is empty or has an empty part"));
        }
        if parts.len() > PATH_PARTS_MAX {
            return Err(format!("a path has at most {PATH_PARTS_MAX} parts"));
        }
        if parts[0].len() > crate::doc::FIELD_BYTES_MAX {
            return Err(format!("field names are at most {} bytes", crate::doc::FIELD_BYTES_MAX));
        }
        Ok(IndexDef { path: parts, kind })
    }

    /// The declaration's value: its JSON text.
    pub fn encode(&self) -> Vec<u8> {
        let declared = Declared { path: self.path.join("."), kind: self.kind };
        serde_json::to_vec(&declared).expect("a declaration always encodes")
    }

    /// The declaration a value holds.
    pub fn decode(value: &[u8]) -> Result<IndexDef, String> {
        let declared: Declared = serde_json::from_slice(value).map_err(|e| format!("an index declaration: {e}"))?;
        IndexDef::new(&declared.path, declared.kind)
    }

    /// The path as declared, parts joined by dots.
    pub fn path_text(&self) -> String {
        self.path.join(".")
    }

    /// The ordered encoding of `value` when it is of the index's type.
    pub fn encode_value(&self, value: &Value) -> Option<Vec<u8>> {
        match (self.kind, value) {
            (IndexKind::String, Value::String(text)) => Some(encode_string(text)),
            (IndexKind::Number, Value::Number(number)) => Some(encode_number(number.as_f64()?)),
            (IndexKind::Bool, Value::Bool(flag)) => Some(vec![u8::from(*flag)]),
            _ => None,
        }
    }

    /// The encoding every string starting with `prefix` starts with (string indexes only).
    pub fn encode_prefix(&self, prefix: &str) -> Option<Vec<u8>> {
        let mut out = self.encode_value(&Value::String(prefix.to_string()))?;
        out.truncate(out.len() - 2);
        Some(out)
    }

    /// How many bytes of `bytes` (a record's key after the index's prefix) its value takes.
    fn value_len(&self, bytes: &[u8]) -> Option<usize> {
        match self.kind {
            IndexKind::String => escaped_len(bytes),
            IndexKind::Number => (bytes.len() >= 8).then_some(8),
            IndexKind::Bool => (!bytes.is_empty()).then_some(1),
        }
    }

    /// The encoded values the live elements of a field's row give, each once.
    pub(crate) fn row_values(&self, row: &Row) -> BTreeSet<Vec<u8>> {
        let mut values = BTreeSet::new();
        for element in row.elements() {
            if let Some(encoded) = self.json_value(&element.value) {
                values.insert(encoded);
            }
        }
        values
    }

    /// The encoded value a field's JSON text gives, if the path leads to a value of the
    /// index's type.
    pub(crate) fn json_value(&self, json: &[u8]) -> Option<Vec<u8>> {
        if self.path.len() == 1 {
            // The field's own value, read as the index's type with no tree built: what the
            // tree would give, as a JSON text of another type is refused either way.
            let value = match self.kind {
                IndexKind::String => {
                    if let Some(text) = crate::doc::plain_string(json) {
                        return Some(encode_string(text));
                    }
                    Value::String(serde_json::from_slice::<std::borrow::Cow<str>>(json).ok()?.into())
                }
                IndexKind::Number => {
                    if let Some(n) = crate::doc::plain_unsigned(json) {
                        // What the parser's number gives: an integer, as a float.
                        return Some(encode_number(n as f64));
                    }
                    Value::Number(serde_json::from_slice(json).ok()?)
                }
                IndexKind::Bool => Value::Bool(serde_json::from_slice(json).ok()?),
            };
            return self.encode_value(&value);
        }
        let field = serde_json::from_slice::<Value>(json).ok()?;
        let nested = self.path[1..].iter().try_fold(&field, |value, name| value.as_object()?.get(name))?;
        self.encode_value(nested)
    }
}

/// A number's encoding: eight bytes that order as the numbers do (negative numbers by their
/// inverted bits, the others above them).
fn encode_number(number: f64) -> Vec<u8> {
    let bits = number.to_bits();
    let ordered = if bits >> 63 == 1 { !bits } else { bits | 1 << 63 };
    ordered.to_be_bytes().to_vec()
}

/// A string value's encoding: escaped, so that strings order as their bytes do and none is
/// a prefix of another's encoding.
fn encode_string(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 2);
    escape_key(&mut out, text.as_bytes());
    out
}

/// The entry that declares the index `name`.
pub fn declaration_key(name: &str) -> Vec<u8> {
    let mut out = NAMESPACE.to_vec();
    out.extend_from_slice(name.as_bytes());
    out
}

/// The prefix of every declaration entry.
pub fn namespace() -> &'static [u8] {
    &NAMESPACE
}

/// Whether `key` is an index declaration entry.
pub fn is_declaration(key: &[u8]) -> bool {
    key.starts_with(&NAMESPACE)
}

/// The index name a declaration entry names.
pub fn parse_declaration(key: &[u8]) -> Option<&str> {
    let name = std::str::from_utf8(key.strip_prefix(&NAMESPACE[..])?).ok()?;
    check_name(name).ok()?;
    Some(name)
}

/// Why `name` is no index name: 1 to [`NAME_BYTES_MAX`] letters, digits, `_` or `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return Err(format!("an index name has 1 to {NAME_BYTES_MAX} bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(format!("the index name {name:?} has a character other than a letter, digit, _ or -"));
    }
    Ok(())
}

/// Checks a declaration entry a received delta adds (with its value) or removes.
pub(crate) fn check_entry(key: &[u8], value: Option<&[u8]>) -> Result<(), DeltaError> {
    if parse_declaration(key).is_none() {
        return Err(DeltaError::Invalid("a malformed index declaration entry".into()));
    }
    if let Some(value) = value {
        IndexDef::decode(value).map_err(DeltaError::Invalid)?;
    }
    Ok(())
}

/// The prefix of every record of the index `name` of `topic`.
pub(crate) fn records_prefix(topic: TopicId, name: &str) -> Vec<u8> {
    records_prefix_with_room(topic, name, 0)
}

/// [`records_prefix`] in a vector with room for `more` bytes after it.
fn records_prefix_with_room(topic: TopicId, name: &str, more: usize) -> Vec<u8> {
    // The name's terminator takes two bytes.
    let mut out = Vec::with_capacity(canopy_dag::TOPIC_ID_BYTES + name.len() + 2 + more);
    out.extend_from_slice(&topic.prefix());
    escape_key(&mut out, name.as_bytes());
    out
}

/// The record of `doc` holding the encoded `value` in the index `name` of `topic`.
pub(crate) fn record_key(topic: TopicId, name: &str, value: &[u8], doc: &[u8]) -> Vec<u8> {
    let mut out = records_prefix_with_room(topic, name, value.len() + doc.len());
    out.extend_from_slice(value);
    out.extend_from_slice(doc);
    out
}

/// A record's encoded value and document key, from its key after the index's prefix.
pub(crate) fn split_record<'a>(def: &IndexDef, rest: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
    let at = def.value_len(rest)?;
    Some(rest.split_at(at))
}

/// One index as a replica holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexStatus {
    /// The index's name.
    pub name: String,
    /// What it holds.
    pub def: IndexDef,
    /// Whether it is built: it serves queries only then.
    pub ready: bool,
    /// Document field entries the build has read so far (all of them once built).
    pub scanned: u64,
}

/// An index the writer thread maintains, with its build's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Maintained {
    pub name: String,
    pub def: IndexDef,
    /// The last document entry the build read (empty before the first); `None` once built.
    pub cursor: Option<Vec<u8>>,
    pub scanned: u64,
}

impl Maintained {
    /// The state as `meta` keeps it: scanned (8 bytes BE), 1 when building else 0, the
    /// declaration's length (4 bytes BE) and JSON text, then the cursor when building.
    pub fn encode(&self) -> Vec<u8> {
        let declared = self.def.encode();
        let mut out = Vec::with_capacity(13 + declared.len() + self.cursor.as_ref().map_or(0, Vec::len));
        out.extend_from_slice(&self.scanned.to_be_bytes());
        out.push(u8::from(self.cursor.is_some()));
        out.extend_from_slice(&(declared.len() as u32).to_be_bytes());
        out.extend_from_slice(&declared);
        if let Some(cursor) = &self.cursor {
            out.extend_from_slice(cursor);
        }
        out
    }

    pub fn decode(name: &str, value: &[u8]) -> Result<Maintained, String> {
        let corrupt = || format!("index state {name:?}: truncated");
        let scanned = u64::from_be_bytes(value.get(..8).ok_or_else(corrupt)?.try_into().expect("8 bytes"));
        let building = *value.get(8).ok_or_else(corrupt)? == 1;
        let len = u32::from_be_bytes(value.get(9..13).ok_or_else(corrupt)?.try_into().expect("4 bytes")) as usize;
        let declared = value.get(13..13 + len).ok_or_else(corrupt)?;
        let def = IndexDef::decode(declared)?;
        let cursor = building.then(|| value[13 + len..].to_vec());
        Ok(Maintained { name: name.to_string(), def, cursor, scanned })
    }

    pub fn status(&self) -> IndexStatus {
        IndexStatus {
            name: self.name.clone(),
            def: self.def.clone(),
            ready: self.cursor.is_none(),
            scanned: self.scanned,
        }
    }
}

/// The `meta` key of the state of the index `name` of `topic`.
pub(crate) fn state_key(topic: TopicId, name: &str) -> Vec<u8> {
    let mut key = crate::schema::meta_key(crate::schema::META_INDEX, topic);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The indexes of `topic` this replica maintains, as `meta` records them, with their keys.
pub(crate) fn load_states(
    db: &rocksdb::DB,
    topic: TopicId,
) -> Result<Vec<(Vec<u8>, Maintained)>, crate::error::StorageError> {
    use crate::error::StorageError;
    let meta = db.cf_handle(crate::schema::CF_META).expect("every canopy column family is opened with the database");
    let prefix = crate::schema::meta_key(crate::schema::META_INDEX, topic);
    let mut states = Vec::new();
    for item in db.prefix_iterator_cf(meta, &prefix) {
        let (key, value) = item?;
        let Some(name) = key.strip_prefix(&prefix[..]) else { break };
        let name = std::str::from_utf8(name).map_err(|_| StorageError::Corrupt("an index name".into()))?;
        let state = Maintained::decode(name, &value).map_err(StorageError::Corrupt)?;
        states.push((key.to_vec(), state));
    }
    Ok(states)
}

/// How the records of `index` of `topic` differ from those the document entries `entries`
/// (each field entry with its row, in key order) give; `None` when they are the same.
pub(crate) fn compare<'r>(
    db: &rocksdb::DB,
    topic: TopicId,
    index: &Maintained,
    entries: impl Iterator<Item = (&'r Vec<u8>, &'r Row)>,
) -> Result<Option<String>, crate::error::StorageError> {
    let mut expected: BTreeSet<(Vec<u8>, Vec<u8>)> = BTreeSet::new();
    for (key, row) in entries {
        let Some((doc, field)) = crate::doc::parse_entry(key) else { continue };
        if field == index.def.path[0] {
            expected.extend(index.def.row_values(row).into_iter().map(|value| (value, doc.clone())));
        }
    }
    let full_prefix = records_prefix(topic, &index.name);
    let prefix = &full_prefix[canopy_dag::TOPIC_ID_BYTES..];
    let cf = db.cf_handle(crate::schema::CF_DOC_INDEX).expect("every canopy column family is opened with the database");
    // The journal's entries not applied yet (read first: one applied meanwhile is then read
    // twice, which changes nothing) count as if they were.
    let pending = crate::index_journal::pending(db, topic)?;
    let mut held: BTreeSet<(Vec<u8>, Vec<u8>)> = BTreeSet::new();
    let mut undecodable = 0;
    for item in crate::schema::db_scan_from(db, cf, topic, prefix) {
        let (key, _) = item?;
        let Some(rest) = key.strip_prefix(prefix) else { break };
        match split_record(&index.def, rest) {
            Some((value, doc)) => {
                held.insert((value.to_vec(), doc.to_vec()));
            }
            None => undecodable += 1,
        }
    }
    for (key, put) in pending.iter().flatten() {
        let Some(rest) = key.strip_prefix(&full_prefix[..]) else { continue };
        match split_record(&index.def, rest) {
            Some((value, doc)) if *put => held.insert((value.to_vec(), doc.to_vec())),
            Some((value, doc)) => held.remove(&(value.to_vec(), doc.to_vec())),
            None => {
                undecodable += 1;
                false
            }
        };
    }
    if held == expected && undecodable == 0 {
        return Ok(None);
    }
    Ok(Some(format!(
        "{} records, the documents give {} ({} missing, {} extra, {undecodable} that do not decode)",
        held.len(),
        expected.len(),
        expected.difference(&held).count(),
        held.difference(&expected).count()
    )))
}

/// The indexes of one topic its writer thread maintains, and whether they need its attention.
#[derive(Clone, Debug, Default)]
pub(crate) struct Indexes {
    pub maintained: Arc<[Maintained]>,
    /// Set when a declaration entry changed: the writer thread reconciles the maintained
    /// indexes with the declarations.
    pub declarations_changed: Arc<AtomicBool>,
}

impl Indexes {
    /// Whether an index is still being built.
    pub fn building(&self) -> bool {
        self.maintained.iter().any(|index| index.cursor.is_some())
    }

    /// Whether the writer thread has index work to do for the topic.
    pub fn has_work(&self) -> bool {
        self.building() || self.declarations_changed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn encoded_values_order_as_the_values_do() {
        let numbers = IndexDef::new("n", IndexKind::Number).unwrap();
        let sorted = [-1e300, -2.5, -1.0, -0.0, 0.5, 1.0, 2.0, 1e300];
        let encoded: Vec<Vec<u8>> = sorted.iter().map(|n| numbers.encode_value(&json!(n)).unwrap()).collect();
        assert!(encoded.windows(2).all(|pair| pair[0] <= pair[1]), "{encoded:?}");
        assert_eq!(numbers.encode_value(&json!(80)), numbers.encode_value(&json!(80.0)));
        assert_eq!(numbers.encode_value(&json!("80")), None, "another type gives no record");

        let strings = IndexDef::new("s", IndexKind::String).unwrap();
        let words = ["", "a", "a\0", "a\0b", "ab", "b"];
        let encoded: Vec<Vec<u8>> = words.iter().map(|w| strings.encode_value(&json!(w)).unwrap()).collect();
        assert!(encoded.windows(2).all(|pair| pair[0] < pair[1]), "{encoded:?}");
        let prefix = strings.encode_prefix("a").unwrap();
        assert!(encoded[1..5].iter().all(|e| e.starts_with(&prefix)) && !encoded[5].starts_with(&prefix));

        let flags = IndexDef::new("b", IndexKind::Bool).unwrap();
        assert!(flags.encode_value(&json!(false)) < flags.encode_value(&json!(true)));
    }

    #[test]
    fn a_field_read_without_the_parser_gives_what_the_parser_gives() {
        let numbers = IndexDef::new("n", IndexKind::Number).unwrap();
        let strings = IndexDef::new("s", IndexKind::String).unwrap();
        let texts = [
            "0",
            "7",
            "-0",
            "-12",
            "123456789",
            "9007199254740993",
            "18446744073709551615",
            "18446744073709551616",
            "012",
            "1.5",
            "1e3",
            "\"x\"",
            "\"a b~\"",
            "\"\\u0041\"",
            "\"\"",
            "true",
            "\"",
        ];
        for text in texts {
            let parsed = serde_json::from_str::<Value>(text).ok();
            for def in [&numbers, &strings] {
                let expected = parsed.as_ref().and_then(|value| def.encode_value(value));
                assert_eq!(def.json_value(text.as_bytes()), expected, "{text} as {:?}", def.kind);
            }
        }
    }

    #[test]
    fn records_split_into_value_and_document() {
        for (kind, value) in
            [(IndexKind::String, json!("pr\0d")), (IndexKind::Number, json!(3)), (IndexKind::Bool, json!(true))]
        {
            let def = IndexDef::new("f", kind).unwrap();
            let encoded = def.encode_value(&value).unwrap();
            let key = record_key(TopicId(7), "by_f", &encoded, b"doc\0-1");
            let rest = &key[records_prefix(TopicId(7), "by_f").len()..];
            assert_eq!(split_record(&def, rest), Some((&encoded[..], &b"doc\0-1"[..])));
        }
    }

    #[test]
    fn declarations_are_checked() {
        let def = IndexDef::new("meta.region", IndexKind::String).unwrap();
        assert_eq!(IndexDef::decode(&def.encode()).unwrap(), def);
        assert!(check_entry(&declaration_key("by_region"), Some(&def.encode())).is_ok());
        assert!(check_entry(&declaration_key("by region"), None).is_err());
        assert!(check_entry(&declaration_key("r"), Some(br#"{"path":"a","type":"date"}"#)).is_err());
        assert!(check_entry(&declaration_key("r"), Some(br#"{"path":"a..b","type":"string"}"#)).is_err());
        assert!(IndexDef::new(&["x"; PATH_PARTS_MAX + 1].join("."), IndexKind::Bool).is_err());
        assert_eq!(parse_declaration(&declaration_key("by_region")), Some("by_region"));
    }
}
