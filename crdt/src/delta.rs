//! A block's payload: the delta (adds, removes, expiries, writer-list changes), its codec and limits.

use canopy_dag::cbor::Encoder;
use canopy_dag::{AuthorId, Cid};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Longest key any replica accepts in a received delta. Protocol constants like this one are
/// the same on every node: a node's own settings may only be tighter, so it never makes a block
/// that a peer refuses.
pub const KEY_BYTES_MAX: usize = 64 << 10;
/// Largest value any replica accepts in a received delta; with a key and a full set of links it
/// still fits one block.
pub const VALUE_BYTES_MAX: usize = 8 << 20;
/// Most operations (adds plus removes) in one received delta.
pub const DELTA_OPS_MAX: usize = 1 << 20;

/// Bounds on keys, values and operations.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest key accepted, in bytes.
    pub key_bytes_max: usize,
    /// Largest value accepted, in bytes.
    pub value_bytes_max: usize,
    /// Most operations (adds plus removes) in one delta.
    pub delta_ops_max: usize,
}

impl Limits {
    /// The limits every replica applies to received deltas.
    pub const PROTOCOL: Limits =
        Limits { key_bytes_max: KEY_BYTES_MAX, value_bytes_max: VALUE_BYTES_MAX, delta_ops_max: DELTA_OPS_MAX };

    /// Whether local writes under these limits can only make deltas that every peer accepts.
    pub fn within_protocol(&self) -> bool {
        self.key_bytes_max <= KEY_BYTES_MAX
            && self.value_bytes_max <= VALUE_BYTES_MAX
            && self.delta_ops_max <= DELTA_OPS_MAX
    }
}

/// The defaults for local writes: 4 KiB keys and 1 MiB values, within the protocol's limits.
impl Default for Limits {
    fn default() -> Self {
        Limits { key_bytes_max: 4096, value_bytes_max: 1 << 20, delta_ops_max: DELTA_OPS_MAX }
    }
}

/// Why a delta was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeltaError {
    /// The payload is not a DAG-CBOR delta.
    #[error("malformed delta: {0}")]
    Malformed(String),
    /// The delta breaks a limit or an ordering rule.
    #[error("invalid delta: {0}")]
    Invalid(String),
}

/// One block's change to a topic: elements added and elements removed.
///
/// Adds are `(key, value)`; their element id is the CID of the block that carries the delta
/// and their priority is its height. Removes name `(key, element id)`. Both lists are sorted
/// and unique, so equal deltas encode to equal bytes.
///
/// In a topic with a writer list, the owner's blocks may also change the list: `grants` adds
/// writers (the grant's id is the block's CID, as for an element) and `revokes` removes grants
/// by `(writer, grant id)`. Both are absent from the encoding when empty, so the deltas of
/// other topics encode as they always did.
///
/// An add may expire: `expiries` names, by key, the wall-clock time (milliseconds since the
/// Unix epoch) after which the element it adds is hidden everywhere, as if deleted. It too is
/// absent when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Added elements, sorted by key, at most one per key.
    pub adds: Vec<(Vec<u8>, Vec<u8>)>,
    /// Tombstones, sorted by key then element id.
    pub removes: Vec<(Vec<u8>, Cid)>,
    /// Writers granted, sorted and unique.
    pub grants: Vec<AuthorId>,
    /// Grants revoked as `(writer, grant id)`, sorted and unique.
    pub revokes: Vec<(AuthorId, Cid)>,
    /// Expiry times of adds as `(key, milliseconds since the Unix epoch)`, sorted by key, each
    /// key one of `adds`.
    pub expiries: Vec<(Vec<u8>, u64)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDelta {
    adds: Vec<(ByteBuf, ByteBuf)>,
    removes: Vec<(ByteBuf, Cid)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    grants: Vec<ByteBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    revokes: Vec<(ByteBuf, Cid)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    expiries: Vec<(ByteBuf, u64)>,
}

/// Writes a delta's DAG-CBOR from borrowed parts, each already in canonical order: the map
/// [`WireDelta`] serializes to (its keys shorter first, then bytewise; the last three only
/// when not empty), with each key and value copied once, into a buffer sized beforehand.
fn write<'a>(
    adds: &[(&'a [u8], &'a [u8])],
    grants: &[&'a [u8]],
    removes: &[(&'a [u8], Cid)],
    revokes: &[(&'a [u8], Cid)],
    expiries: &[(&'a [u8], u64)],
) -> Vec<u8> {
    // A byte string's header takes at most 9 bytes; a CID is under 48 with its tag.
    let capacity = adds.iter().map(|(key, value)| key.len() + value.len() + 19).sum::<usize>()
        + grants.iter().map(|author| author.len() + 9).sum::<usize>()
        + removes.iter().chain(revokes).map(|(key, _)| key.len() + 58).sum::<usize>()
        + expiries.iter().map(|(key, _)| key.len() + 19).sum::<usize>()
        + 64;
    let mut out = Encoder::new(Vec::with_capacity(capacity));
    let optional = [grants.len(), revokes.len(), expiries.len()].iter().filter(|len| **len > 0).count();
    out.map(2 + optional).text("adds").array(adds.len());
    for (key, value) in adds {
        out.array(2).bytes(key).bytes(value);
    }
    if !grants.is_empty() {
        out.text("grants").array(grants.len());
        for author in grants {
            out.bytes(author);
        }
    }
    let by_id = |out: &mut Encoder<Vec<u8>>, list: &[(&[u8], Cid)]| {
        out.array(list.len());
        for (key, id) in list {
            out.array(2).bytes(key).cid(id);
        }
    };
    by_id(out.text("removes"), removes);
    if !revokes.is_empty() {
        by_id(out.text("revokes"), revokes);
    }
    if !expiries.is_empty() {
        out.text("expiries").array(expiries.len());
        for (key, at) in expiries {
            out.array(2).bytes(key).u64(*at);
        }
    }
    out.into_inner()
}

/// Encodes a delta from borrowed parts, which must already be normalized: adds sorted with one
/// per key, removes sorted and unique, expiries sorted by key and each the key of an add.
pub(crate) fn encode(adds: &[(&[u8], &[u8])], removes: &[(&[u8], Cid)], expiries: &[(&[u8], u64)]) -> Vec<u8> {
    write(adds, &[], removes, &[], expiries)
}

/// Encodes a delta that only changes a writer list; both lists must be sorted and unique.
pub(crate) fn encode_list_change(grants: &[AuthorId], revokes: &[(AuthorId, Cid)]) -> Vec<u8> {
    let grants: Vec<&[u8]> = grants.iter().map(|author| author.as_bytes().as_slice()).collect();
    let revokes: Vec<(&[u8], Cid)> = revokes.iter().map(|(author, id)| (author.as_bytes().as_slice(), *id)).collect();
    write(&[], &grants, &[], &revokes, &[])
}

impl Delta {
    /// True when the delta changes nothing.
    pub fn is_empty(&self) -> bool {
        self.adds.is_empty() && self.removes.is_empty() && !self.changes_writers()
    }

    /// True when the delta changes a writer list.
    pub fn changes_writers(&self) -> bool {
        !self.grants.is_empty() || !self.revokes.is_empty()
    }

    /// Puts every list in canonical order; an expiry of a key that is not added is dropped.
    pub fn normalize(&mut self) {
        self.adds.sort_by(|a, b| a.0.cmp(&b.0));
        self.adds.dedup_by(|a, b| a.0 == b.0);
        self.expiries.sort_by(|a, b| a.0.cmp(&b.0));
        self.expiries.dedup_by(|a, b| a.0 == b.0);
        let adds = &self.adds;
        self.expiries.retain(|(key, _)| adds.binary_search_by(|add| add.0.as_slice().cmp(key)).is_ok());
        self.removes.sort();
        self.removes.dedup();
        self.grants.sort();
        self.grants.dedup();
        self.revokes.sort();
        self.revokes.dedup();
    }

    /// The DAG-CBOR encoding of the delta.
    pub fn encode(&self) -> Vec<u8> {
        let adds: Vec<(&[u8], &[u8])> = self.adds.iter().map(|(key, value)| (&key[..], &value[..])).collect();
        let grants: Vec<&[u8]> = self.grants.iter().map(|author| author.as_bytes().as_slice()).collect();
        let removes: Vec<(&[u8], Cid)> = self.removes.iter().map(|(key, id)| (&key[..], *id)).collect();
        let revokes: Vec<(&[u8], Cid)> =
            self.revokes.iter().map(|(author, id)| (author.as_bytes().as_slice(), *id)).collect();
        let expiries: Vec<(&[u8], u64)> = self.expiries.iter().map(|(key, at)| (&key[..], *at)).collect();
        write(&adds, &grants, &removes, &revokes, &expiries)
    }

    /// When the element this delta adds to `key` expires, if it does.
    pub fn expiry(&self, key: &[u8]) -> Option<u64> {
        let at = self.expiries.binary_search_by(|(k, _)| k.as_slice().cmp(key)).ok()?;
        Some(self.expiries[at].1)
    }

    /// Decodes and checks a delta: limits, canonical order, one add per key.
    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Delta, DeltaError> {
        let wire: WireDelta =
            serde_ipld_dagcbor::from_slice(bytes).map_err(|e| DeltaError::Malformed(e.to_string()))?;
        let ops = wire.adds.len() + wire.removes.len() + wire.grants.len() + wire.revokes.len();
        if ops > limits.delta_ops_max {
            return Err(DeltaError::Invalid(format!("{ops} operations exceed delta_ops_max {}", limits.delta_ops_max)));
        }
        let author = |bytes: ByteBuf| -> Result<AuthorId, DeltaError> {
            let bytes: [u8; 32] =
                bytes.as_slice().try_into().map_err(|_| DeltaError::Invalid("a writer is not a 32-byte key".into()))?;
            AuthorId::from_bytes(bytes).map_err(|e| DeltaError::Invalid(format!("a writer: {e}")))
        };
        let delta = Delta {
            adds: wire.adds.into_iter().map(|(k, v)| (k.into_vec(), v.into_vec())).collect(),
            removes: wire.removes.into_iter().map(|(k, id)| (k.into_vec(), id)).collect(),
            grants: wire.grants.into_iter().map(author).collect::<Result<_, _>>()?,
            revokes: wire
                .revokes
                .into_iter()
                .map(|(writer, id)| Ok((author(writer)?, id)))
                .collect::<Result<_, DeltaError>>()?,
            expiries: wire.expiries.into_iter().map(|(k, at)| (k.into_vec(), at)).collect(),
        };
        for (key, value) in &delta.adds {
            check_key(key, limits).map_err(DeltaError::Invalid)?;
            check_value(value, limits).map_err(DeltaError::Invalid)?;
        }
        for (key, _) in &delta.removes {
            check_key(key, limits).map_err(DeltaError::Invalid)?;
        }
        if delta.adds.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return Err(DeltaError::Invalid("adds are not sorted with one per key".into()));
        }
        if delta.removes.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(DeltaError::Invalid("removes are not sorted and unique".into()));
        }
        if delta.expiries.windows(2).any(|pair| pair[0].0 >= pair[1].0) {
            return Err(DeltaError::Invalid("expiries are not sorted with one per key".into()));
        }
        let adds = &delta.adds;
        if let Some((key, _)) =
            delta.expiries.iter().find(|(key, _)| adds.binary_search_by(|add| add.0.as_slice().cmp(key)).is_err())
        {
            return Err(DeltaError::Invalid(format!("an expiry of key {key:?}, which the delta does not add")));
        }
        if delta.grants.windows(2).any(|pair| pair[0] >= pair[1])
            || delta.revokes.windows(2).any(|pair| pair[0] >= pair[1])
        {
            return Err(DeltaError::Invalid("grants or revokes are not sorted and unique".into()));
        }
        Ok(delta)
    }
}

/// Checks a key against the limits; the error says what is wrong.
pub(crate) fn check_key(key: &[u8], limits: &Limits) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".into());
    }
    if key.len() > limits.key_bytes_max {
        return Err(format!("key of {} bytes exceeds key_bytes_max {}", key.len(), limits.key_bytes_max));
    }
    Ok(())
}

/// Checks a value against the limits; the error says what is wrong.
pub(crate) fn check_value(value: &[u8], limits: &Limits) -> Result<(), String> {
    if value.len() > limits.value_bytes_max {
        return Err(format!("value of {} bytes exceeds value_bytes_max {}", value.len(), limits.value_bytes_max));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use canopy_dag::Block;

    #[test]
    fn borrowed_encoding_equals_the_owned_wire_form() {
        let id = Block::build("t", vec![], 1, vec![], &canopy_dag::Signer::from_secret([1; 32])).unwrap().cid();
        let owned = WireDelta {
            adds: vec![
                (ByteBuf::from(b"a".to_vec()), ByteBuf::from(vec![0, 1, 2])),
                (ByteBuf::from(b"b".to_vec()), ByteBuf::new()),
            ],
            removes: vec![(ByteBuf::from(b"a".to_vec()), id)],
            grants: vec![],
            revokes: vec![],
            expiries: vec![(ByteBuf::from(b"b".to_vec()), 1_700_000_000_000)],
        };
        let borrowed = encode(&[(b"a", &[0, 1, 2]), (b"b", &[])], &[(b"a", id)], &[(b"b", 1_700_000_000_000)]);
        assert_eq!(borrowed, serde_ipld_dagcbor::to_vec(&owned).unwrap());
    }

    #[test]
    fn every_delta_is_encoded_as_serde_encodes_its_wire_form() {
        let signer = |n: u8| canopy_dag::Signer::from_secret([n; 32]);
        let ids: Vec<Cid> =
            (1..4u8).map(|n| Block::build("t", vec![], 1, vec![n], &signer(n)).unwrap().cid()).collect();
        let authors: Vec<AuthorId> = (1..4u8).map(|n| signer(n).author()).collect();
        for size in [0usize, 1, 23, 24, 300] {
            let key = |n: usize| format!("{n:0>width$}", width = size.max(3)).into_bytes();
            let delta = Delta {
                adds: (0..size).map(|n| (key(n), vec![n as u8; size])).collect(),
                removes: (0..size.min(40)).map(|n| (key(n), ids[n % ids.len()])).collect(),
                grants: authors[..size.min(authors.len())].to_vec(),
                revokes: (0..size.min(2)).map(|n| (authors[n], ids[n])).collect(),
                expiries: (0..size).step_by(2).map(|n| (key(n), (n as u64) << 40)).collect(),
            };
            let wire = WireDelta {
                adds: delta.adds.iter().map(|(k, v)| (ByteBuf::from(k.clone()), ByteBuf::from(v.clone()))).collect(),
                removes: delta.removes.iter().map(|(k, id)| (ByteBuf::from(k.clone()), *id)).collect(),
                grants: delta.grants.iter().map(|author| ByteBuf::from(author.as_bytes().to_vec())).collect(),
                revokes: delta.revokes.iter().map(|(a, id)| (ByteBuf::from(a.as_bytes().to_vec()), *id)).collect(),
                expiries: delta.expiries.iter().map(|(k, at)| (ByteBuf::from(k.clone()), *at)).collect(),
            };
            assert_eq!(delta.encode(), serde_ipld_dagcbor::to_vec(&wire).unwrap(), "{size} of each");
        }
    }

    #[test]
    fn round_trips_and_rejects_unsorted() {
        let id = Block::build("t", vec![], 1, vec![], &canopy_dag::Signer::from_secret([1; 32])).unwrap().cid();
        let mut delta = Delta {
            adds: vec![(b"b".to_vec(), b"2".to_vec()), (b"a".to_vec(), b"1".to_vec())],
            removes: vec![(b"a".to_vec(), id)],
            ..Default::default()
        };
        delta.normalize();
        let decoded = Delta::decode(&delta.encode(), &Limits::default()).unwrap();
        assert_eq!(decoded, delta);

        let unsorted = Delta {
            adds: vec![(b"b".to_vec(), vec![]), (b"a".to_vec(), vec![])],
            removes: vec![],
            ..Default::default()
        };
        assert!(matches!(Delta::decode(&unsorted.encode(), &Limits::default()), Err(DeltaError::Invalid(_))));
    }

    #[test]
    fn limits_apply_on_decode() {
        let delta = Delta { adds: vec![(b"k".to_vec(), vec![0; 10])], removes: vec![], ..Default::default() };
        let tight = Limits { value_bytes_max: 5, ..Limits::default() };
        assert!(matches!(Delta::decode(&delta.encode(), &tight), Err(DeltaError::Invalid(_))));
        let empty_key = Delta { adds: vec![(vec![], vec![])], removes: vec![], ..Default::default() };
        assert!(Delta::decode(&empty_key.encode(), &Limits::default()).is_err());
    }

    #[test]
    fn an_expiry_names_an_added_key_and_old_deltas_encode_as_before() {
        let mut delta = Delta {
            adds: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())],
            expiries: vec![(b"b".to_vec(), 42), (b"zz".to_vec(), 7)],
            ..Default::default()
        };
        delta.normalize();
        assert_eq!(delta.expiries, [(b"b".to_vec(), 42)], "an expiry of no add is dropped");
        let decoded = Delta::decode(&delta.encode(), &Limits::default()).unwrap();
        assert_eq!((decoded.expiry(b"a"), decoded.expiry(b"b")), (None, Some(42)));
        let stray = Delta { expiries: vec![(b"zz".to_vec(), 7)], ..delta.clone() };
        assert!(matches!(Delta::decode(&stray.encode(), &Limits::default()), Err(DeltaError::Invalid(_))));
        let plain = Delta { expiries: vec![], ..delta };
        assert_eq!(plain.encode(), encode(&[(b"a", b"1"), (b"b", b"2")], &[], &[]));
    }
}
