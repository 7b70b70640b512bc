//! The fixed-width id of a topic inside one database, which starts every storage key.

use std::fmt;

/// Width in bytes of the topic id that starts every storage key.
pub const TOPIC_ID_BYTES: usize = 4;

/// Fixed-width id of a topic inside one node's database.
///
/// Every storage key starts with the big-endian id so that one topic is one contiguous key
/// range: prefix bloom filters, range scans and `delete_range` all work per topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicId(pub u32);

impl TopicId {
    /// The id as the key prefix it becomes in storage.
    pub fn prefix(self) -> [u8; TOPIC_ID_BYTES] {
        self.0.to_be_bytes()
    }

    /// A storage key: the topic prefix followed by `suffix`.
    pub fn key(self, suffix: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(TOPIC_ID_BYTES + suffix.len());
        key.extend_from_slice(&self.prefix());
        key.extend_from_slice(suffix);
        key
    }

    /// The first key past this topic's range, for range deletes and iterator bounds.
    ///
    /// Returns `None` for the last possible id, whose range runs to the end of the key space.
    pub fn range_end(self) -> Option<[u8; TOPIC_ID_BYTES]> {
        self.0.checked_add(1).map(u32::to_be_bytes)
    }

    /// Reads the topic id at the front of a storage key.
    pub fn from_key(key: &[u8]) -> Option<TopicId> {
        let prefix: [u8; TOPIC_ID_BYTES] = key.get(..TOPIC_ID_BYTES)?.try_into().ok()?;
        Some(TopicId(u32::from_be_bytes(prefix)))
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
