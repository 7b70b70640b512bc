//! The stored state of one key: its live elements, best first.

use canopy_dag::{Cid, Height};

/// A live element of a key: added by block `id` at priority `height`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Element {
    pub height: Height,
    pub id: Cid,
    pub value: Vec<u8>,
}

impl Element {
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

    /// The visible value, if any element is live.
    pub fn winner(&self) -> Option<&Element> {
        self.elements.first()
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

    /// Encoding: per element, height (8 bytes BE), CID length (1 byte), CID, value length
    /// (4 bytes BE), value.
    pub fn encode(&self) -> Vec<u8> {
        let size: usize = self.elements.iter().map(|e| 8 + 1 + 40 + 4 + e.value.len()).sum();
        let mut out = Vec::with_capacity(size);
        for element in &self.elements {
            out.extend_from_slice(&element.height.to_be_bytes());
            let id = element.id.to_bytes();
            out.push(id.len() as u8);
            out.extend_from_slice(&id);
            out.extend_from_slice(&(element.value.len() as u32).to_be_bytes());
            out.extend_from_slice(&element.value);
        }
        out
    }

    /// The encoding of a row holding one element, from borrowed parts (`id` as CID bytes).
    pub fn encode_single(height: Height, id: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 1 + id.len() + 4 + value.len());
        out.extend_from_slice(&height.to_be_bytes());
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Result<Row, String> {
        let mut elements = Vec::new();
        while !bytes.is_empty() {
            let height = u64::from_be_bytes(take(&mut bytes, 8)?.try_into().expect("took 8 bytes"));
            let id_len = take(&mut bytes, 1)?[0] as usize;
            let id = Cid::try_from(take(&mut bytes, id_len)?).map_err(|e| format!("element id: {e}"))?;
            let value_len = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().expect("took 4 bytes")) as usize;
            let value = take(&mut bytes, value_len)?.to_vec();
            elements.push(Element { height, id, value });
        }
        if elements.windows(2).any(|pair| pair[0].rank() <= pair[1].rank()) {
            return Err("elements are not in rank order".into());
        }
        Ok(Row { elements })
    }
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if bytes.len() < n {
        return Err(format!("row truncated: wanted {n} bytes, {} left", bytes.len()));
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
        row.insert(Element { height: 2, id: id(1), value: b"zzz".to_vec() });
        row.insert(Element { height: 3, id: id(2), value: b"a".to_vec() });
        row.insert(Element { height: 3, id: id(3), value: b"b".to_vec() });
        assert_eq!(row.winner().unwrap().value, b"b");
        row.remove(&id(3));
        assert_eq!(row.winner().unwrap().value, b"a");
        let decoded = Row::decode(&row.encode()).unwrap();
        let one = Element { height: 4, id: id(4), value: b"v".to_vec() };
        assert_eq!(Row::encode_single(4, &id(4).to_bytes(), b"v"), Row::single(one).encode());
        assert_eq!(decoded, row);
        assert!(Row::decode(&row.encode()[..5]).is_err());
    }
}
