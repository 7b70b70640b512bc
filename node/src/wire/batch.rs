//! A batch's body in DAG-CBOR (`Content-Type: application/cbor`), beside the JSON form of
//! [`Batch`](super::Batch): keys and values travel as bytes, neither base64-encoded nor
//! escaped. Members forward each partition's part of a table batch in it, and any client may
//! send it.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// The media type of a batch in DAG-CBOR.
pub const CBOR_BATCH: &str = "application/cbor";

/// `POST /v1/topics/{t}/batch` or `/v1/tables/{t}/batch` in DAG-CBOR: the operations, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CborBatch {
    /// The operations, in order.
    pub ops: Vec<CborOp>,
}

/// One operation of a [`CborBatch`]: a map with `op` and `key`, and `value` (with `expires_ms`
/// when it expires) for a put or `add` for a counter increment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CborOp {
    /// What the operation does.
    pub op: CborOpKind,
    /// The key's bytes.
    pub key: ByteBuf,
    /// A put's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ByteBuf>,
    /// When a put's value expires, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// What an increment adds (negative to subtract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add: Option<i64>,
}

/// The kind of a [`CborOp`], written as its lowercase name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CborOpKind {
    /// Set the key to `value`.
    Put,
    /// Delete the key.
    Delete,
    /// Add `add` to the counter named by the key.
    Add,
}

impl CborBatch {
    /// The body of `batch`.
    pub fn of(batch: &canopy_crdt::Batch) -> CborBatch {
        let op = |op, key: &[u8]| CborOp { op, key: ByteBuf::from(key), value: None, expires_ms: None, add: None };
        let ops = batch
            .ops()
            .iter()
            .map(|each| match each {
                canopy_crdt::Op::Put(key, value) => {
                    CborOp { value: Some(ByteBuf::from(value.as_slice())), ..op(CborOpKind::Put, key) }
                }
                canopy_crdt::Op::PutUntil(key, value, expires_ms) => CborOp {
                    value: Some(ByteBuf::from(value.as_slice())),
                    expires_ms: Some(*expires_ms),
                    ..op(CborOpKind::Put, key)
                },
                canopy_crdt::Op::Delete(key) => op(CborOpKind::Delete, key),
                canopy_crdt::Op::Add(key, add) => CborOp { add: Some(*add), ..op(CborOpKind::Add, key) },
            })
            .collect();
        CborBatch { ops }
    }

    /// The encoded body.
    pub fn encode(&self) -> Vec<u8> {
        serde_ipld_dagcbor::to_vec(self).expect("a batch of bytes and integers always encodes")
    }

    /// The batch `bytes` encode, or why they do not.
    pub fn decode(bytes: &[u8]) -> Result<CborBatch, String> {
        serde_ipld_dagcbor::from_slice(bytes).map_err(|error| error.to_string())
    }

    /// The operations as a batch to apply, or the first that is not well formed.
    pub fn into_batch(self) -> Result<canopy_crdt::Batch, String> {
        let mut batch = canopy_crdt::Batch::new();
        for (index, op) in self.ops.into_iter().enumerate() {
            let key = op.key.into_vec();
            match (op.op, op.value, op.expires_ms, op.add) {
                (CborOpKind::Put, Some(value), None, None) => batch.put(key, value.into_vec()),
                (CborOpKind::Put, Some(value), Some(expires_ms), None) => {
                    batch.put_until(key, value.into_vec(), expires_ms)
                }
                (CborOpKind::Delete, None, None, None) => batch.delete(key),
                (CborOpKind::Add, None, None, Some(add)) => batch.add(key, add),
                (kind, ..) => {
                    return Err(format!(
                        "op {index}: a {kind:?} takes {}",
                        match kind {
                            CborOpKind::Put => "value, and expires_ms when it expires",
                            CborOpKind::Delete => "the key alone",
                            CborOpKind::Add => "add",
                        }
                    ));
                }
            };
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_comes_back_from_its_cbor_whole() {
        let mut batch = canopy_crdt::Batch::new();
        batch.put(b"a".to_vec(), vec![0, 255, 1]);
        batch.put_until(b"b".to_vec(), b"x".to_vec(), 1_700_000_000_000);
        batch.delete(vec![0xff, 0]);
        batch.add(b"hits".to_vec(), -3);
        let bytes = CborBatch::of(&batch).encode();
        let back = CborBatch::decode(&bytes).unwrap().into_batch().unwrap();
        assert_eq!(back.ops(), batch.ops());
    }

    #[test]
    fn an_op_with_fields_of_another_kind_is_refused_by_its_index() {
        let mut body = CborBatch::of(&{
            let mut batch = canopy_crdt::Batch::new();
            batch.put(b"a".to_vec(), b"1".to_vec());
            batch.delete(b"b".to_vec());
            batch
        });
        body.ops[1].add = Some(1);
        let error = body.clone().into_batch().unwrap_err();
        assert!(error.starts_with("op 1:"), "{error}");
        body.ops[1].add = None;
        body.ops[0].value = None;
        assert!(body.into_batch().unwrap_err().starts_with("op 0:"));
        assert!(CborBatch::decode(b"\xa1\x63ops\x01").is_err());
    }
}
