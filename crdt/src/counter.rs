//! Counters: keys whose value is the sum of every increment made on any replica.
//!
//! A counter is kept in the topic's own key-value state, in a namespace user keys cannot reach
//! (keys that start with the byte 0x00 are reserved). Each *contributor* (an author and the
//! store it writes from, its *origin*) owns one entry per counter, `0x00 'c' ++ escaped key ++
//! 0x00 0x01 ++ author ++ origin`, whose value is the contributor's running total as eight
//! big-endian bytes. An increment is a put of the new total that supersedes the contributor's
//! previous one. One store writes each topic's blocks in a chain, so a contributor's blocks are
//! causally ordered and its latest total wins everywhere under the add-wins rules; the
//! counter's value is the sum of the contributors' totals. Everything else comes with the
//! key-value semantics: a block applied twice counts once, snapshots carry the totals as
//! ordinary elements and a merge keeps the later total of each contributor, so nothing is
//! counted twice.
//!
//! Received blocks are checked: an entry in the namespace must be a well-formed counter entry
//! whose author is the block's author, so nobody can write or remove another's total.

use canopy_dag::AuthorId;

/// The first byte of every reserved key.
pub const RESERVED: u8 = 0x00;
/// The namespace counter entries live in.
const NAMESPACE: [u8; 2] = [RESERVED, b'c'];
/// Ends an escaped key: a 0x00 inside the key is written 0x00 0xff, so this never occurs in it
/// and the encoding keeps the keys' order.
const TERMINATOR: [u8; 2] = [0x00, 0x01];
/// Bytes of a contributor: an author key and an origin.
const CONTRIBUTOR_BYTES: usize = 32 + ORIGIN_BYTES;
/// Bytes of an origin, the random id of the store a contributor writes from.
pub const ORIGIN_BYTES: usize = 8;

/// Whether `key` lies in the reserved namespaces, which user writes and listings never reach.
pub fn is_reserved(key: &[u8]) -> bool {
    key.first() == Some(&RESERVED)
}

/// The prefix every entry of the counter `key` starts with.
pub fn entries_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 4);
    out.extend_from_slice(&NAMESPACE);
    escape_key(&mut out, key);
    out
}

/// Appends `key` escaped and terminated, so that no key's encoding is a prefix of another's and
/// the order of keys is kept: a 0x00 is written 0x00 0xff, and 0x00 0x01 ends the key.
pub(crate) fn escape_key(out: &mut Vec<u8>, key: &[u8]) {
    out.reserve(key.len() + TERMINATOR.len());
    if key.contains(&0x00) {
        for &byte in key {
            out.push(byte);
            if byte == 0x00 {
                out.push(0xff);
            }
        }
    } else {
        // Nothing to escape: most keys.
        out.extend_from_slice(key);
    }
    out.extend_from_slice(&TERMINATOR);
}

/// The entry of `key` kept by the contributor `(author, origin)`.
pub fn entry_key(key: &[u8], author: &AuthorId, origin: &[u8; ORIGIN_BYTES]) -> Vec<u8> {
    let mut out = entries_prefix(key);
    out.extend_from_slice(author.as_bytes());
    out.extend_from_slice(origin);
    out
}

/// The bytes the key [`escape_key`] wrote at the start of `bytes` takes, its terminator
/// included; `None` when `bytes` does not start with one.
pub(crate) fn escaped_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        match (bytes.get(at)?, bytes.get(at + 1)) {
            (0x00, Some(0xff)) => at += 2,
            (0x00, Some(0x01)) => return Some(at + TERMINATOR.len()),
            (0x00, _) => return None,
            _ => at += 1,
        }
    }
}

/// The key [`escape_key`] wrote at the start of `bytes`, and the bytes its encoding took.
pub(crate) fn unescape_key(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let used = escaped_len(bytes)?;
    let body = &bytes[..used - TERMINATOR.len()];
    if !body.contains(&0x00) {
        // Nothing escaped: most keys.
        return Some((body.to_vec(), used));
    }
    let mut escaped = body.iter();
    let mut key = Vec::with_capacity(used - TERMINATOR.len());
    while let Some(&byte) = escaped.next() {
        key.push(byte);
        if byte == 0x00 {
            // The 0xff that follows an escaped zero.
            escaped.next();
        }
    }
    Some((key, used))
}

/// A counter entry's parts: the counter's key and the contributor's author.
pub fn parse_entry(entry: &[u8]) -> Option<(Vec<u8>, AuthorId)> {
    let rest = entry.strip_prefix(&NAMESPACE[..])?;
    let (key, at) = unescape_key(rest)?;
    let contributor = &rest[at..];
    if contributor.len() != CONTRIBUTOR_BYTES {
        return None;
    }
    let author: [u8; 32] = contributor[..32].try_into().ok()?;
    Some((key, AuthorId::from_bytes(author).ok()?))
}

/// The total an entry's value holds.
pub fn decode_total(value: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(value.try_into().ok()?))
}

/// The value of an entry holding `total`.
pub fn encode_total(total: i64) -> [u8; 8] {
    total.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use canopy_dag::Signer;

    use super::*;

    #[test]
    fn entries_round_trip_and_keep_key_order() {
        let author = Signer::from_secret([7; 32]).author();
        let origin = [1; ORIGIN_BYTES];
        for key in [&b"likes"[..], b"a\0b", b"\0", b"\0\xff\x01"] {
            let entry = entry_key(key, &author, &origin);
            assert!(is_reserved(&entry));
            assert!(entry.starts_with(&entries_prefix(key)));
            assert_eq!(parse_entry(&entry), Some((key.to_vec(), author)));
        }
        // No counter's entries fall under another counter's prefix, and order follows the keys.
        let (a, a0, ab) = (entries_prefix(b"a"), entries_prefix(b"a\0"), entries_prefix(b"ab"));
        assert!(!a0.starts_with(&a) && !ab.starts_with(&a));
        assert!(a < a0 && a0 < ab);
        assert_eq!(parse_entry(&[0x00, b'c', b'x']), None);
        assert_eq!(parse_entry(&[0x00, b'x']), None);
    }
}
