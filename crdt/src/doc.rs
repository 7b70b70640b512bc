//! Documents: JSON objects whose top-level fields merge on their own.
//!
//! A document is kept in the topic's key-value state, in a reserved namespace as counters are:
//! each top-level field is one entry, `0x00 'd' ++ escaped key ++ 0x00 0x01 ++ field name`,
//! whose value is the field's JSON text. Each entry is an ordinary element, so a field's value
//! is chosen by the value rule, a removed field is tombstoned as a deleted key is (add-wins),
//! and snapshots, compaction, expiry and history need nothing of their own. A document exists
//! while one of its fields does: deleting it tombstones every field this replica holds, so a
//! field written concurrently elsewhere survives and the document comes back holding only
//! the fields written concurrently with the delete.
//!
//! Received blocks are checked: an entry in the namespace must be well formed, name its field in
//! UTF-8 and hold JSON text.

use crate::counter::{RESERVED, escape_key, escaped_len, unescape_key};
use crate::delta::DeltaError;

/// The namespace document entries live in.
const NAMESPACE: [u8; 2] = [RESERVED, b'd'];

/// Longest field name, in bytes.
pub const FIELD_BYTES_MAX: usize = 256;

/// The prefix every field entry of the document `key` starts with.
pub fn entries_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 4);
    out.extend_from_slice(&NAMESPACE);
    escape_key(&mut out, key);
    out
}

/// The prefix of every document entry of a topic.
pub fn namespace() -> &'static [u8] {
    &NAMESPACE
}

/// The entry of `field` of the document `key`.
pub fn entry_key(key: &[u8], field: &str) -> Vec<u8> {
    let mut out = entries_prefix(key);
    out.extend_from_slice(field.as_bytes());
    out
}

/// The prefix [`entries_prefix`] makes for the document `entry` is a field of, when `entry`
/// is an entry of the documents' namespace.
pub(crate) fn document_prefix(entry: &[u8]) -> Option<&[u8]> {
    let rest = entry.strip_prefix(&NAMESPACE[..])?;
    let used = escaped_len(rest)?;
    Some(&entry[..NAMESPACE.len() + used])
}

/// Whether `entry` lies in the documents' namespace.
pub fn is_entry(entry: &[u8]) -> bool {
    entry.starts_with(&NAMESPACE)
}

/// A document entry's parts: the document's key and the field's name.
pub fn parse_entry(entry: &[u8]) -> Option<(Vec<u8>, String)> {
    let rest = entry.strip_prefix(&NAMESPACE[..])?;
    let (key, used) = unescape_key(rest)?;
    let field = std::str::from_utf8(&rest[used..]).ok()?;
    if field.len() > FIELD_BYTES_MAX {
        return None;
    }
    Some((key, field.to_string()))
}

/// Why `value`, a field's value, is refused: it must be JSON text.
pub fn check_value(value: &[u8]) -> Result<(), String> {
    // Most fields are short strings and integers, which need no parser.
    if is_plain_string(value) || is_plain_integer(value) {
        return Ok(());
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(value).map(|_| ()).map_err(|e| format!("not JSON: {e}"))
}

/// The text of the JSON string `json` when it holds only printable ASCII and no escape: its
/// bytes between the quotes are then the string itself.
pub(crate) fn plain_string(json: &[u8]) -> Option<&str> {
    is_plain_string(json).then(|| std::str::from_utf8(&json[1..json.len() - 1]).ok()).flatten()
}

/// Whether `json` is a JSON string of printable ASCII with no escape (see [`plain_string`]).
fn is_plain_string(json: &[u8]) -> bool {
    let Some(inner) = json.strip_prefix(b"\"").and_then(|rest| rest.strip_suffix(b"\"")) else { return false };
    inner.iter().all(|&byte| (b' '..=b'~').contains(&byte) && byte != b'"' && byte != b'\\')
}

/// The value of `json` when it is a JSON integer with no sign that fits 64 bits.
pub(crate) fn plain_unsigned(json: &[u8]) -> Option<u64> {
    if !is_plain_integer(json) || json.first() == Some(&b'-') {
        return None;
    }
    std::str::from_utf8(json).ok()?.parse().ok()
}

/// Whether `json` is a JSON integer: an optional minus, then `0` or digits not starting with
/// `0`.
fn is_plain_integer(json: &[u8]) -> bool {
    let digits = json.strip_prefix(b"-").unwrap_or(json);
    match digits {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// Checks a document entry a received delta adds (with its value) or removes.
pub(crate) fn check_entry(entry: &[u8], value: Option<&[u8]>) -> Result<(), DeltaError> {
    if parse_entry(entry).is_none() {
        return Err(DeltaError::Invalid("a malformed document entry".into()));
    }
    if let Some(value) = value {
        check_value(value).map_err(|e| DeltaError::Invalid(format!("a document field {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_need_no_parser_are_judged_as_the_parser_judges_them() {
        let texts: [&[u8]; 22] = [
            b"\"plain\"",
            b"\"\"",
            b"\"with space ~\"",
            b"\"esc\\\"aped\"",
            b"\"caf\xc3\xa9\"",
            b"\"tab\there\"",
            b"\"open",
            b"\"",
            b"0",
            b"-0",
            b"42",
            b"-17",
            b"007",
            b"-",
            b"1.5",
            b"1e3",
            b"true",
            b"null",
            b"{\"a\":1}",
            b"\"a\" ",
            b"",
            b"\"bad\xff\"",
        ];
        for text in texts {
            let parsed = serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(check_value(text).is_ok(), parsed, "{:?}", String::from_utf8_lossy(text));
            if let Some(plain) = plain_string(text) {
                assert_eq!(serde_json::from_slice::<String>(text).unwrap(), plain);
            }
            if is_plain_integer(text) {
                assert!(serde_json::from_slice::<serde_json::Number>(text).is_ok());
            }
        }
        assert_eq!(plain_string(b"\"esc\\\"aped\""), None, "escapes go to the parser");
    }

    #[test]
    fn entries_round_trip_and_stay_under_their_documents_prefix() {
        for (key, field) in [(&b"svc-1"[..], "env"), (b"a\0b", ""), (b"\0", "caf\u{e9}")] {
            let entry = entry_key(key, field);
            assert!(is_entry(&entry) && crate::counter::is_reserved(&entry));
            assert!(entry.starts_with(&entries_prefix(key)));
            assert_eq!(parse_entry(&entry), Some((key.to_vec(), field.to_string())));
            assert_eq!(document_prefix(&entry), Some(&entries_prefix(key)[..]));
        }
        // No document's fields fall under another document's prefix.
        assert!(!entry_key(b"ab", "x").starts_with(&entries_prefix(b"a")));
        assert!(!entry_key(b"a\0", "x").starts_with(&entries_prefix(b"a")));
        assert!(!is_entry(&crate::counter::entries_prefix(b"a")));
    }

    #[test]
    fn a_received_entry_must_be_well_formed_and_hold_json() {
        assert!(check_entry(&entry_key(b"k", "f"), Some(b"{\"a\":[1,2]}")).is_ok());
        assert!(check_entry(&entry_key(b"k", "f"), None).is_ok());
        assert!(check_entry(&entry_key(b"k", "f"), Some(b"{nope")).is_err());
        let mut bad_utf8 = entries_prefix(b"k");
        bad_utf8.push(0xff);
        assert!(check_entry(&bad_utf8, None).is_err());
        assert!(check_entry(&[0x00, b'd', b'k'], None).is_err(), "no terminator");
        assert!(check_entry(&entry_key(b"k", &"x".repeat(FIELD_BYTES_MAX + 1)), None).is_err());
    }
}
