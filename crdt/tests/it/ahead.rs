//! A catch-up of a deep history asks for the levels above the one it is getting ahead of their
//! turn, from its peer and from peers standing by with the same heads, and applies their answers
//! when its climb reaches them; answers that fail or never come leave the level to the climb.
//! Replicas over real RocksDB, messages passed by hand in rounds (all requests of a round are in
//! flight at once).

use std::collections::BTreeMap;

use canopy_crdt::sync::{Effect, Message, Replicator, SyncConfig};
use canopy_crdt::{Store, StoreOptions, Topic, WalkLimits};

const KEYS: usize = 200;

fn config(ahead: usize) -> SyncConfig {
    SyncConfig {
        // Walks of 16 visits: a chain of 200 blocks is a stack of 13 levels.
        walk: WalkLimits { blocks_max: 16, bytes_max: 1 << 20, visits_max: 16, frontier_max: 4 },
        inline_bytes_max: 0,
        fetch_ahead_max: ahead,
        ..SyncConfig::default()
    }
}

fn replica(dir: &tempfile::TempDir, name: &str, ahead: usize) -> (Replicator<u32>, Topic) {
    let options = StoreOptions { cache_bytes: 1 << 20, ..StoreOptions::default() };
    let store = Store::open(dir.path().join(name), options).unwrap();
    let mut sync = Replicator::new(store, config(ahead));
    let topic = sync.subscribe("t").unwrap();
    (sync, topic)
}

/// A reader and the peers it may ask, each holding the same chain of `KEYS` single puts.
struct Net {
    reader: Replicator<u32>,
    copy: Topic,
    servers: BTreeMap<u32, Replicator<u32>>,
    written: Topic,
    penalized: Vec<u32>,
    _dir: tempfile::TempDir,
}

/// Two peers holding the chain, both of which the reader heard announce it (peer 1 first, so
/// peer 2 stands by); returns the requests the reader sent.
fn two_peers() -> (Net, Vec<(u32, Message)>) {
    let mut net = net(2, 4);
    let mut requests = net.hear(1);
    requests.extend(net.hear(2));
    (net, requests)
}

fn net(peers: u32, ahead: usize) -> Net {
    let dir = tempfile::tempdir().unwrap();
    let (mut source, written) = replica(&dir, "source", ahead);
    for i in 0..KEYS {
        written.put(format!("k{i:03}"), format!("v{i}")).unwrap();
    }
    let mut servers = BTreeMap::new();
    for peer in 2..=peers {
        // Every other peer holds the same blocks, copied from the first.
        let (mut other, _) = replica(&dir, &format!("peer{peer}"), ahead);
        copy(&mut source, &mut other, &written);
        servers.insert(peer, other);
    }
    servers.insert(1, source);
    let (reader, copy) = replica(&dir, "reader", ahead);
    Net { reader, copy, servers, written, penalized: Vec::new(), _dir: dir }
}

/// Copies everything `source` holds of `written` into `other`.
fn copy(source: &mut Replicator<u32>, other: &mut Replicator<u32>, written: &Topic) {
    let heads = Message::Heads { topic: "t".into(), heads: written.heads(), blocks: Vec::new(), unawaited: false };
    let mut requests = sends(other.handle(0, 1, heads).unwrap());
    while let Some((_, request)) = requests.pop() {
        for (_, answer) in sends(source.handle(0, 99, request).unwrap()) {
            requests.extend(sends(other.handle(0, 1, answer).unwrap()));
        }
    }
    other.settle().unwrap();
}

impl Net {
    /// The reader hears `peer` announce the heads; returns the requests it sends.
    fn hear(&mut self, peer: u32) -> Vec<(u32, Message)> {
        let heads =
            Message::Heads { topic: "t".into(), heads: self.written.heads(), blocks: Vec::new(), unawaited: false };
        let effects = self.reader.handle(0, peer, heads).unwrap();
        self.take(effects)
    }

    fn take(&mut self, effects: Vec<Effect<u32>>) -> Vec<(u32, Message)> {
        let mut sends = Vec::new();
        for effect in effects {
            match effect {
                Effect::Send { to, message } => sends.push((to, message)),
                Effect::Penalize { peer, .. } => self.penalized.push(peer),
                Effect::Publish { .. } => {}
            }
        }
        sends
    }

    /// Plays rounds until the reader asks for nothing: every request of a round is answered by
    /// the peer it went to, and `tamper` may change an answer (by the peer that gives it) on its
    /// way. Returns the number of rounds and the most requests one round had in flight.
    fn run(&mut self, mut requests: Vec<(u32, Message)>, mut tamper: impl FnMut(u32, &mut Message)) -> (usize, usize) {
        let (mut rounds, mut widest) = (0, 0);
        while !requests.is_empty() {
            rounds += 1;
            assert!(rounds < 200, "the catch-up ends");
            widest = widest.max(requests.len());
            let mut next = Vec::new();
            for (to, request) in std::mem::take(&mut requests) {
                let server = self.servers.get_mut(&to).expect("a known peer");
                for (_, mut answer) in sends(server.handle(0, 99, request).unwrap()) {
                    tamper(to, &mut answer);
                    let effects = self.reader.handle(0, to, answer).unwrap();
                    next.extend(self.take(effects));
                }
            }
            requests = next;
        }
        self.reader.settle().unwrap();
        (rounds, widest)
    }

    /// Peer `to` answers `request`; returns what the reader sends next.
    fn answer(&mut self, now_ms: u64, to: u32, request: Message) -> Vec<(u32, Message)> {
        let server = self.servers.get_mut(&to).expect("a known peer");
        let mut next = Vec::new();
        for (_, answer) in sends(server.handle(0, 99, request).unwrap()) {
            let effects = self.reader.handle(now_ms, to, answer).unwrap();
            next.extend(self.take(effects));
        }
        next
    }

    fn caught_up(&self) -> bool {
        self.copy.heads() == self.written.heads() && self.copy.key_count() == KEYS as u64
    }
}

fn sends(effects: Vec<Effect<u32>>) -> Vec<(u32, Message)> {
    effects
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Send { to, message } => Some((to, message)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_deep_climb_keeps_several_requests_in_flight_and_needs_fewer_round_trips() {
    let mut one_at_a_time = net(1, 0);
    let requests = one_at_a_time.hear(1);
    let (rounds_alone, widest_alone) = one_at_a_time.run(requests, |_, _| {});
    assert!(one_at_a_time.caught_up());
    assert_eq!(widest_alone, 1);
    assert_eq!(one_at_a_time.reader.stats().levels_ahead, 0);

    let mut ahead = net(1, 4);
    let requests = ahead.hear(1);
    let mut served = 0;
    let (rounds, widest) = ahead.run(requests, |_, answer| {
        if let Message::Blocks { blocks, .. } = answer {
            served += blocks.len();
        }
    });
    assert_eq!(served, KEYS, "no block is served twice");
    assert!(ahead.caught_up());
    assert!(widest >= 3, "levels asked ahead travel beside the fetch's request: {widest}");
    let levels = ahead.reader.stats().levels_ahead;
    assert!(levels >= 6, "most of the 12 levels above the bottom come ahead of their turn: {levels}");
    assert!(rounds < rounds_alone, "{rounds} rounds with levels asked ahead, {rounds_alone} without");
    assert_eq!(ahead.reader.stats().blocks_applied, KEYS as u64, "no block is taken in twice");
    assert_eq!(ahead.reader.fetches(), 0);
    let every = |topic: &Topic| topic.query(b"", None, 1000).unwrap();
    assert_eq!(every(&ahead.copy), every(&ahead.written));
}

#[test]
fn a_peer_standing_by_with_the_same_heads_serves_levels_of_the_catch_up() {
    let mut net = net(2, 4);
    let mut requests = net.hear(1);
    // Peer 2 announces the same heads while peer 1's fetch runs: it stands by.
    requests.extend(net.hear(2));
    assert!(requests.iter().all(|(to, _)| *to == 1), "only peer 1 is asked at first");
    let mut served_by_2 = 0;
    let (_, widest) = net.run(requests, |from, answer| {
        if let (2, Message::Blocks { blocks, .. }) = (from, answer) {
            served_by_2 += blocks.len();
        }
    });
    assert!(net.caught_up());
    assert!(widest >= 2);
    assert!(served_by_2 >= 32, "peer 2 served levels of the catch-up: {served_by_2} blocks");
    assert!(net.penalized.is_empty());
}

#[test]
fn a_tampered_answer_asked_ahead_is_dropped_its_sender_penalised_and_the_climb_gets_the_level() {
    let (mut net, requests) = two_peers();
    let mut tampered = 0;
    net.run(requests, |from, answer| {
        if let (2, Message::Blocks { blocks, .. }) = (from, answer)
            && let Some(block) = blocks.last_mut()
        {
            *block.bytes.last_mut().unwrap() ^= 0x55;
            tampered += 1;
        }
    });
    assert!(tampered > 0, "peer 2 was asked");
    assert!(net.penalized.contains(&2) && !net.penalized.contains(&1), "{:?}", net.penalized);
    assert!(net.caught_up(), "peer 1's fetch got the levels peer 2 spoilt");
}

#[test]
fn an_answer_asked_ahead_that_never_comes_leaves_the_level_to_the_climb_after_the_timeout() {
    let (mut net, mut requests) = two_peers();
    // Peer 2 never answers: its requests are lost.
    let mut lost = 0;
    loop {
        let asked_2 = requests.iter().filter(|(to, _)| *to == 2).count();
        lost += asked_2;
        requests.retain(|(to, _)| *to == 1);
        if requests.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for (_, request) in requests {
            next.extend(net.answer(0, 1, request));
        }
        requests = next;
    }
    assert!(lost > 0, "peer 2 was asked");
    assert!(!net.caught_up(), "the climb waits for a level asked of peer 2");
    assert_eq!(net.reader.fetches(), 1);
    // Once the requests to peer 2 time out, the climb asks peer 1 for those levels itself.
    let timeout = net.reader.config().request_timeout_ms;
    let effects = net.reader.tick(timeout + 1);
    let requests = net.take(effects);
    assert!(!requests.is_empty() && requests.iter().all(|(to, _)| *to == 1), "{requests:?}");
    let mut rest = requests;
    while !rest.is_empty() {
        let mut next = Vec::new();
        for (to, request) in rest {
            if to == 1 {
                next.extend(net.answer(timeout + 1, 1, request));
            }
        }
        rest = next;
        if rest.iter().all(|(to, _)| *to == 2) && !net.caught_up() {
            // More levels asked of peer 2, lost too: time passes again.
            let effects = net.reader.tick(3 * timeout);
            rest = net.take(effects);
        }
    }
    net.reader.settle().unwrap();
    assert!(net.caught_up());
}

#[test]
fn a_failed_request_asked_ahead_is_asked_again_by_the_climb_at_the_next_tick() {
    let (mut net, mut requests) = two_peers();
    let mut failed = 0;
    let mut round = 0;
    while !requests.is_empty() {
        round += 1;
        assert!(round < 200);
        let mut next = Vec::new();
        for (to, request) in std::mem::take(&mut requests) {
            if to == 2 {
                // The transport reports peer 2 unreachable.
                let id = request.request_id().unwrap();
                net.reader.request_failed(&2, id);
                failed += 1;
                continue;
            }
            next.extend(net.answer(round, 1, request));
        }
        let effects = net.reader.tick(round);
        next.extend(net.take(effects));
        requests = next;
    }
    net.reader.settle().unwrap();
    assert!(failed > 0, "peer 2 was asked");
    assert!(net.caught_up());
    assert!(net.penalized.is_empty());
}
