//! The stored state of one key: its live elements, best first.

use canopy_dag::{Cid, Height};

/// A live element of a key: added by block `id` at priority `height`, hidden from `expires`
/// (milliseconds since the Unix epoch) on when it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Element {
    pub height: Height,
    pub id: Cid,
    pub value: Vec<u8>,
    pub expires: Option<u64>,
}

/// The flag, in the CID-length byte of an encoded element, that an expiry time follows the CID.
const EXPIRES_FLAG: u8 = 0x80;

impl Element {
    /// Whether the element is expired at `now` (milliseconds since the Unix epoch).
    pub fn expired(&self, now: u64) -> bool {
        self.expires.is_some_and(|at| at <= now)
    }

    /// The order that picks the visible value: greatest `(height, value bytes, element id)`.
    fn rank(&self) -> (Height, &[u8], &Cid) {
        (self.height, &self.value, &self.id)
    }
}

/// Live elements of one key, kept sorted best first so the visible value is the first one.
///
/// Elements superseded by a later local write are tombstoned by that write, so a row holds
/// more than one element only while writes to the key are concurrent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Row {
    elements: Vec<Element>,
}

impl Row {
    pub fn single(element: Element) -> Row {
        Row { elements: vec![element] }
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// Number of live elements.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    pub fn contains(&self, id: &Cid) -> bool {
        self.elements.iter().any(|e| &e.id == id)
    }

    /// The best element, expired or not: the visible value of a key whose elements never expire.
    pub fn winner(&self) -> Option<&Element> {
        self.elements.first()
    }

    /// The visible value at `now`: the best element not expired.
    pub fn visible(&self, now: u64) -> Option<&Element> {
        self.elements.iter().find(|e| !e.expired(now))
    }

    /// The live elements, best first.
    pub fn elements(&self) -> &[Element] {
        &self.elements
    }

    pub fn ids(&self) -> impl Iterator<Item = Cid> + '_ {
        self.elements.iter().map(|e| e.id)
    }

    pub fn insert(&mut self, element: Element) {
        if self.elements.iter().any(|e| e.id == element.id) {
            return;
        }
        let at = self.elements.partition_point(|e| e.rank() > element.rank());
        self.elements.insert(at, element);
    }

    /// Removes the element added by `id`; false when the row holds none.
    pub fn remove(&mut self, id: &Cid) -> bool {
        let before = self.elements.len();
        self.elements.retain(|e| &e.id != id);
        self.elements.len() < before
    }

    /// Removes the elements expired at `now` and returns them.
    pub fn remove_expired(&mut self, now: u64) -> Vec<Element> {
        let (expired, live) = std::mem::take(&mut self.elements).into_iter().partition(|e| e.expired(now));
        self.elements = live;
        expired
    }

    /// Encoding: per element, height (8 bytes BE), CID length (1 byte, with [`EXPIRES_FLAG`]
    /// set when an expiry follows), CID, the expiry (8 bytes BE) if any, value length (4 bytes
    /// BE), value.
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.elements.iter().map(|e| 8 + 1 + e.id.encoded_len() + 8 + 4 + e.value.len()).sum();
        let mut out = Vec::with_capacity(size);
        for element in &self.elements {
            write_header(&mut out, element.height, &element.id, element.expires);
            out.extend_from_slice(&(element.value.len() as u32).to_be_bytes());
            out.extend_from_slice(&element.value);
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Result<Row, String> {
        let mut elements = Vec::new();
        while !bytes.is_empty() {
            let (height, id, expires) = read_header(&mut bytes)?;
            let value_len = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().expect("took 4 bytes")) as usize;
            let value = take(&mut bytes, value_len)?.to_vec();
            elements.push(Element { height, id, value, expires });
        }
        if elements.windows(2).any(|pair| pair[0].rank() <= pair[1].rank()) {
            return Err("elements are not in rank order".into());
        }
        Ok(Row { elements })
    }
}

/// Writes an element's height (8 bytes BE), CID length (1 byte, with [`EXPIRES_FLAG`] set when
/// an expiry follows), CID and expiry (8 bytes BE) if any: how a row, and a document's record
/// (`doc_row.rs`), begin each element.
pub(crate) fn write_header(out: &mut Vec<u8>, height: Height, id: &Cid, expires: Option<u64>) {
    out.extend_from_slice(&height.to_be_bytes());
    // A CID is far shorter than 128 bytes, so the length leaves the top bit for the flag.
    out.push(id.encoded_len() as u8 | if expires.is_some() { EXPIRES_FLAG } else { 0 });
    id.write_bytes(&mut *out).expect("writing to a Vec cannot fail");
    if let Some(at) = expires {
        out.extend_from_slice(&at.to_be_bytes());
    }
}

/// Reads what [`write_header`] wrote.
pub(crate) fn read_header(bytes: &mut &[u8]) -> Result<(Height, Cid, Option<u64>), String> {
    let height = u64::from_be_bytes(take(bytes, 8)?.try_into().expect("took 8 bytes"));
    let id_len = take(bytes, 1)?[0];
    let id =
        Cid::try_from(take(bytes, usize::from(id_len & !EXPIRES_FLAG))?).map_err(|e| format!("element id: {e}"))?;
    let expires = match id_len & EXPIRES_FLAG {
        0 => None,
        _ => Some(u64::from_be_bytes(take(bytes, 8)?.try_into().expect("took 8 bytes"))),
    };
    Ok((height, id, expires))
}

/// The next `n` bytes of `bytes`, taken off it.
pub(crate) fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if bytes.len() < n {
        return Err(format!("record truncated: wanted {n} bytes, {} left", bytes.len()));
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_dag::Block;

    fn id(n: u8) -> Cid {
        Block::build("t", vec![], 1, vec![n], &canopy_dag::Signer::from_secret([1; 32])).unwrap().cid()
    }

    #[test]
    fn winner_is_greatest_height_then_value_then_id() {
        let mut row = Row::default();
        row.insert(Element { height: 2, id: id(1), value: b"zzz".to_vec(), expires: None });
        row.insert(Element { height: 3, id: id(2), value: b"a".to_vec(), expires: Some(50) });
        row.insert(Element { height: 3, id: id(3), value: b"b".to_vec(), expires: None });
        assert_eq!(row.winner().unwrap().value, b"b");
        row.remove(&id(3));
        assert_eq!(row.winner().unwrap().value, b"a");
        assert_eq!(row.visible(49).unwrap().value, b"a");
        assert_eq!(row.visible(50).unwrap().value, b"zzz", "an expired element is passed over");
        let decoded = Row::decode(&row.encode()).unwrap();
        assert_eq!(decoded, row);
        assert!(Row::decode(&row.encode()[..5]).is_err());
    }
}
