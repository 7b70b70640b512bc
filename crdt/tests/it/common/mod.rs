//! Helpers shared by the sync tests: replicas talk through messages passed by hand.

#![allow(dead_code)]

use canopy_crdt::sync::{Effect, Message, Replicator};

/// Plays the requests among `effects` (made by `client`) against `server`, which `client`
/// knows as peer `server_peer`, until `client` asks for nothing more; then settles `client`.
pub fn serve(server: &mut Replicator<u32>, client: &mut Replicator<u32>, server_peer: u32, effects: Vec<Effect<u32>>) {
    let mut pending: Vec<Message> = sends(effects);
    while let Some(request) = pending.pop() {
        for answer in sends(server.handle(0, 99, request).unwrap()) {
            pending.extend(sends(client.handle(0, server_peer, answer).unwrap()));
        }
    }
    client.settle().unwrap();
}

/// The messages `effects` send to single peers.
pub fn sends(effects: Vec<Effect<u32>>) -> Vec<Message> {
    effects
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Send { message, .. } => Some(message),
            _ => None,
        })
        .collect()
}

/// Store settings under which topics compact only when a test asks.
pub fn manual_compaction() -> canopy_crdt::StoreOptions {
    canopy_crdt::StoreOptions {
        cache_bytes: 1 << 20,
        compact_after_blocks: 0,
        compact_after_bytes: 0,
        snapshot_retain_ms: None,
        ..canopy_crdt::StoreOptions::default()
    }
}
