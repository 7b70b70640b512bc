//! The stored state of one key: its live elements, best first.

use canopy_dag::{Cid, DIGEST_BYTES, Height, check_cid, cid_of_digest};

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

    /// Encoding: [`COMPACT`], then per element a flags byte ([`EXPIRES_FLAG`],
    /// [`OTHER_CID_FLAG`]), the height as an unsigned varint, the id (the 32-byte BLAKE3 digest
    /// of a block's CID, or a length byte and the whole CID of any other form), the expiry as a
    /// varint if any, the value's length as a varint, and the value. An element of a 100-byte
    /// value takes 37 bytes besides it where the first encoding took 49: a row is the record a
    /// bulk load writes most of, and every byte of it is compacted again at each level.
    /// An empty row is no bytes.
    pub fn encode(&self) -> Vec<u8> {
        if self.elements.is_empty() {
            return Vec::new();
        }
        let size: usize = self.elements.iter().map(|e| 1 + 10 + 1 + e.id.encoded_len() + 10 + 10 + e.value.len()).sum();
        let mut out = Vec::with_capacity(1 + size);
        out.push(COMPACT);
        for element in &self.elements {
            let digest = block_digest(&element.id);
            let flags = if element.expires.is_some() { EXPIRES_FLAG } else { 0 }
                | if digest.is_none() { OTHER_CID_FLAG } else { 0 };
            out.push(flags);
            put_varint(&mut out, element.height);
            match digest {
                Some(digest) => out.extend_from_slice(digest),
                None => {
                    out.push(element.id.encoded_len() as u8);
                    element.id.write_bytes(&mut out).expect("writing to a Vec cannot fail");
                }
            }
            if let Some(at) = element.expires {
                put_varint(&mut out, at);
            }
            put_varint(&mut out, element.value.len() as u64);
            out.extend_from_slice(&element.value);
        }
        out
    }

    /// Reads a row of either encoding: the compact one ([`Row::encode`]) or the first one, in
    /// which each element begins with [`write_header`]'s header and a 4-byte value length. The
    /// first byte tells them apart: a row of the first encoding begins with its best height,
    /// 8 bytes big-endian, whose top byte is 0 at any height a DAG reaches.
    pub fn decode(bytes: &[u8]) -> Result<Row, String> {
        let elements = match bytes.split_first() {
            Some((&COMPACT, rest)) => decode_compact(rest)?,
            _ => decode_first(bytes)?,
        };
        if elements.windows(2).any(|pair| pair[0].rank() <= pair[1].rank()) {
            return Err("elements are not in rank order".into());
        }
        Ok(Row { elements })
    }
}

/// The first byte of a row in the compact encoding.
const COMPACT: u8 = 0x80;

/// The flag, in a compact element's flags byte, that the id is not a block's CID and is written
/// whole after its length.
const OTHER_CID_FLAG: u8 = 0x01;

fn decode_compact(mut bytes: &[u8]) -> Result<Vec<Element>, String> {
    if bytes.is_empty() {
        return Err("a row with no element".into());
    }
    let mut elements = Vec::new();
    while !bytes.is_empty() {
        let flags = take(&mut bytes, 1)?[0];
        if flags & !(EXPIRES_FLAG | OTHER_CID_FLAG) != 0 {
            return Err(format!("unknown element flags {flags:#x}"));
        }
        let height = take_varint(&mut bytes)?;
        let id = match flags & OTHER_CID_FLAG {
            0 => block_cid(take(&mut bytes, DIGEST_BYTES)?)?,
            _ => {
                let len = take(&mut bytes, 1)?[0];
                Cid::try_from(take(&mut bytes, usize::from(len))?).map_err(|e| format!("element id: {e}"))?
            }
        };
        let expires = match flags & EXPIRES_FLAG {
            0 => None,
            _ => Some(take_varint(&mut bytes)?),
        };
        let value_len = usize::try_from(take_varint(&mut bytes)?).map_err(|_| "value length overflows".to_string())?;
        let value = take(&mut bytes, value_len)?.to_vec();
        elements.push(Element { height, id, value, expires });
    }
    Ok(elements)
}

fn decode_first(mut bytes: &[u8]) -> Result<Vec<Element>, String> {
    let mut elements = Vec::new();
    while !bytes.is_empty() {
        let (height, id, expires) = read_header(&mut bytes)?;
        let value_len = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().expect("took 4 bytes")) as usize;
        let value = take(&mut bytes, value_len)?.to_vec();
        elements.push(Element { height, id, value, expires });
    }
    Ok(elements)
}

/// The digest of `id` when it has the form every block's CID has.
fn block_digest(id: &Cid) -> Option<&[u8]> {
    check_cid(id).ok().map(|()| id.hash().digest())
}

/// The CID of the block whose digest is `digest`.
fn block_cid(digest: &[u8]) -> Result<Cid, String> {
    Ok(cid_of_digest(digest.try_into().map_err(|_| "element id: a digest of the wrong length".to_string())?))
}

fn put_varint(out: &mut Vec<u8>, n: u64) {
    match u8::try_from(n) {
        // One byte, as the encoder would write it, without going through its buffer.
        Ok(small) if small < 0x80 => out.push(small),
        _ => out.extend_from_slice(unsigned_varint::encode::u64(n, &mut unsigned_varint::encode::u64_buffer())),
    }
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let (n, rest) = unsigned_varint::decode::u64(bytes).map_err(|e| format!("a row's integer: {e}"))?;
    *bytes = rest;
    Ok(n)
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

    /// A row in the first encoding: each element's header, a 4-byte value length, the value.
    fn first_encoding(row: &Row) -> Vec<u8> {
        let mut out = Vec::new();
        for element in row.elements() {
            write_header(&mut out, element.height, &element.id, element.expires);
            out.extend_from_slice(&(element.value.len() as u32).to_be_bytes());
            out.extend_from_slice(&element.value);
        }
        out
    }

    #[test]
    fn rows_of_the_first_encoding_read_the_same_and_are_larger() {
        let mut row = Row::default();
        row.insert(Element { height: 70_000, id: id(1), value: vec![7; 100], expires: None });
        row.insert(Element { height: 3, id: id(2), value: b"b".to_vec(), expires: Some(1_765_000_000_000) });
        let (compact, first) = (row.encode(), first_encoding(&row));
        assert_eq!(Row::decode(&first).unwrap(), row);
        assert_eq!(Row::decode(&compact).unwrap(), row);
        // Saved per element: the id's 4 bytes of CID prefix, the value length's 3 and the
        // height's 5 (a 3-byte varint) and 7 (1 byte); the expiry's 2 (6 bytes); the leading
        // byte costs one.
        assert_eq!(
            first.len() - compact.len(),
            (4 + 3 + 5) + (4 + 3 + 7 + 2) - 1,
            "{} against {}",
            compact.len(),
            first.len()
        );
        assert_eq!(Row::default().encode(), Vec::<u8>::new());
        assert_eq!(Row::decode(&[]).unwrap(), Row::default());
    }

    #[test]
    fn an_element_id_of_another_form_is_kept_whole() {
        let digest = canopy_dag::cid_of(b"x").hash().digest().to_vec();
        let sha = cid::multihash::Multihash::<64>::wrap(0x12, &digest).unwrap();
        let other = Cid::new_v1(0x55, sha);
        let row = Row::single(Element { height: 1, id: other, value: b"v".to_vec(), expires: None });
        assert_eq!(Row::decode(&row.encode()).unwrap(), row);
    }

    proptest::proptest! {
        /// Whatever bytes a damaged disk holds, reading them as a row gives a row or an error.
        #[test]
        fn any_bytes_read_as_a_row_or_an_error(compact: bool, bytes: Vec<u8>) {
            let bytes = match compact {
                true => [vec![COMPACT], bytes].concat(),
                false => bytes,
            };
            if let Ok(row) = Row::decode(&bytes) {
                proptest::prop_assert_eq!(Row::decode(&row.encode()), Ok(row));
            }
        }
    }

    #[test]
    fn damaged_compact_rows_are_refused() {
        let row = Row::single(Element { height: 300, id: id(1), value: b"value".to_vec(), expires: Some(9) });
        let bytes = row.encode();
        for cut in 1..bytes.len() {
            assert!(Row::decode(&bytes[..cut]).is_err(), "cut at {cut} of {}", bytes.len());
        }
        let mut flagged = bytes.clone();
        flagged[1] |= 0x02;
        assert!(Row::decode(&flagged).unwrap_err().contains("flags"));
        let mut long = bytes.clone();
        long.extend_from_slice(&[0x80, 0x80]);
        assert!(Row::decode(&long).is_err(), "trailing bytes that are no element");
    }
}
