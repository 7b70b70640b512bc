//! Every decoder of bytes from outside (block, delta, sync message) is fed random and mutated
//! bytes: it returns an error or a valid value, and never panics.

use canopy_crdt::sync::{Message, SyncConfig, WireBlock};
use canopy_crdt::{Block, BlockLimits, Delta, Head, Limits};
use proptest::prelude::*;
use serde_bytes::ByteBuf;

/// The author these tests sign their hand-made blocks as.
fn signer() -> canopy_crdt::Signer {
    canopy_crdt::Signer::from_secret([3; 32])
}

fn sample_block() -> Block {
    let root = Block::build("t", vec![], 1, b"root".to_vec(), &signer()).unwrap();
    let delta = Delta {
        adds: vec![(b"key".to_vec(), b"value".to_vec())],
        removes: vec![(b"old".to_vec(), root.cid())],
        ..Default::default()
    };
    Block::build("t", vec![root.cid()], 2, delta.encode(), &signer()).unwrap()
}

fn sample_messages() -> Vec<Vec<u8>> {
    let block = sample_block();
    vec![
        Message::Heads {
            topic: "t".into(),
            heads: vec![Head { cid: block.cid(), height: 2 }],
            blocks: Vec::new(),
            unawaited: false,
        }
        .encode(),
        Message::Want { topic: "t".into(), id: 7, want: vec![block.cid()], have: vec![block.links()[0]] }.encode(),
        Message::Blocks {
            topic: "t".into(),
            id: 7,
            blocks: vec![WireBlock { cid: block.cid(), bytes: ByteBuf::from(block.bytes().to_vec()) }],
            more: false,
            frontier: vec![block.links()[0]],
            snapshots: vec![block.cid()],
            snapshot_pending: true,
        }
        .encode(),
        Message::WantParts { topic: "t".into(), id: 8, cids: vec![block.cid()] }.encode(),
        Message::Parts {
            topic: "t".into(),
            id: 8,
            parts: vec![WireBlock { cid: block.cid(), bytes: ByteBuf::from(block.bytes().to_vec()) }],
        }
        .encode(),
    ]
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for (at, kind, value) in edits {
        if bytes.is_empty() {
            bytes.push(*value);
            continue;
        }
        let at = at % bytes.len();
        match kind % 4 {
            0 => bytes[at] ^= value | 1,
            1 => bytes.insert(at, *value),
            2 => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

fn decode_all(bytes: &[u8]) {
    let block = sample_block();
    let _ = Block::decode("t", block.cid(), bytes, &BlockLimits::default());
    if let Ok(delta) = Delta::decode(bytes, &Limits::default()) {
        assert_eq!(Delta::decode(&delta.encode(), &Limits::default()).unwrap(), delta);
    }
    if let Ok(message) = Message::decode(bytes, &SyncConfig::default()) {
        assert_eq!(Message::decode(&message.encode(), &SyncConfig::default()).unwrap(), message);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_valid_encodings_never_panic(
        which in 0..5usize,
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let block = sample_block();
        let mut originals = sample_messages();
        originals.push(block.bytes().to_vec());
        originals.push(block.payload().to_vec());
        let original = originals[which].clone();
        let mutated = mutate(original.clone(), &edits);
        decode_all(&mutated);
        if mutated != original && which == 3 {
            prop_assert!(Block::decode("t", block.cid(), &mutated, &BlockLimits::default()).is_err(), "a changed block must not pass its CID");
        }
    }
}

#[test]
fn huge_declared_lengths_are_refused_without_allocating() {
    // A CBOR array header declaring 2^63 elements, then nothing.
    let bytes = [0x9b, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    decode_all(&bytes);
    // A byte string declaring 2^32 bytes inside a delta-shaped map.
    let mut bytes = vec![0xa2, 0x64, b'a', b'd', b'd', b's', 0x81, 0x82, 0x5a, 0xff, 0xff, 0xff, 0xff];
    bytes.extend_from_slice(&[0; 8]);
    decode_all(&bytes);
}

#[test]
fn messages_over_the_bounds_are_refused() {
    let config = SyncConfig { heads_max: 1, ..SyncConfig::default() };
    let block = sample_block();
    let head = Head { cid: block.cid(), height: 2 };
    let message =
        Message::Heads { topic: "t".into(), heads: vec![head, head], blocks: Vec::new(), unawaited: false }.encode();
    assert!(Message::decode(&message, &config).is_err());
    let bad_topic =
        Message::Heads { topic: "no spaces".into(), heads: vec![], blocks: Vec::new(), unawaited: false }.encode();
    assert!(Message::decode(&bad_topic, &SyncConfig::default()).is_err());
    let narrow = SyncConfig { want_max: 0, ..SyncConfig::default() };
    assert!(Message::decode(&sample_messages()[2], &narrow).is_err(), "a frontier is bounded like a want");
    let small = SyncConfig { message_bytes_max: 4, ..SyncConfig::default() };
    assert!(Message::decode(&sample_messages()[0], &small).is_err());
}
