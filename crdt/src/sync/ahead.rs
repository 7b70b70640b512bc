//! Levels asked for ahead of their turn. Once a fetch climbs back up its stack of wants (its
//! answers bring blocks), the levels just above the one it is getting are asked for at once:
//! from the fetch's peer and from peers standing by with the same heads, so several requests
//! are in flight and several peers serve one catch-up. Each answer is validated when it
//! arrives and held until the climb reaches its level, then applied with no further request.
//!
//! A level's blocks are those below its wants and not below the level beneath it (the
//! frontier its walk stopped at), so the request for it names the level beneath as had. An
//! answer that does not hold blocks (the walk found a frontier or pruned blocks, or the peer
//! has none) is dropped and the climb asks for that level itself when it gets there. Held
//! answers are bounded per fetch (`fetch_ahead_max` levels) and over every topic
//! (`ahead_bytes_max`, an unanswered request counting as the largest answer).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use canopy_dag::{Block, Cid};

use super::fetch::{first_unique, tops};
use super::{Effect, Message, Replicator, SyncError, TopicSync, WireBlock, validate};

/// A level of a fetch asked for ahead of its turn.
pub(super) struct Ahead<P> {
    /// The peer whose fetch the level belongs to.
    pub(super) fetch: P,
    /// That fetch's serial number: a later fetch from the same peer has another.
    pub(super) serial: u64,
    /// The level's index in the fetch's stack of wants.
    pub(super) level: usize,
    /// The peer asked.
    pub(super) server: P,
    pub(super) sent_ms: u64,
    /// The level's wants when it was asked for.
    wants: Vec<Cid>,
    /// The validated answer once here, and whether it holds every block of the level.
    answer: Option<(Vec<Block>, bool)>,
    /// Bytes counted against `ahead_bytes_max`.
    pub(super) bytes: usize,
}

impl<P: Clone + Ord> Ahead<P> {
    /// Whether the entry belongs to a fetch the topic still runs, and to one of its levels.
    pub(super) fn live(&self, sync: &TopicSync<P>) -> bool {
        sync.fetches
            .get(&self.fetch)
            .is_some_and(|fetch| fetch.serial == self.serial && self.level < fetch.levels.len())
    }

    /// Whether the entry can still come to be used at `now_ms`: its fetch runs, and it has its
    /// answer or may still get it.
    pub(super) fn keep(&self, sync: &TopicSync<P>, now_ms: u64, timeout_ms: u64) -> bool {
        self.live(sync) && (self.answer.is_some() || now_ms.saturating_sub(self.sent_ms) < timeout_ms)
    }
}

/// The request id of what was asked ahead for level `level` of the fetch (`peer`, `serial`).
pub(super) fn asked_for<P: PartialEq>(
    ahead: &BTreeMap<u64, Ahead<P>>,
    peer: &P,
    serial: u64,
    level: usize,
) -> Option<u64> {
    ahead
        .iter()
        .find(|(_, entry)| entry.fetch == *peer && entry.serial == serial && entry.level == level)
        .map(|(id, _)| *id)
}

/// Drops what was asked ahead for level `level` of the fetch from `peer`, popped without it
/// (its blocks arrived otherwise). Returns the bytes the entry counted.
pub(super) fn forget_level<P: PartialEq>(
    ahead: &mut BTreeMap<u64, Ahead<P>>,
    peer: &P,
    serial: u64,
    level: usize,
) -> usize {
    let Some(id) = asked_for(ahead, peer, serial, level) else { return 0 };
    ahead.remove(&id).map_or(0, |entry| entry.bytes)
}

impl<P: Clone + Ord> Replicator<P> {
    /// Asks for the levels just above the one the fetch from `peer` is getting, nearest first,
    /// as far as the bounds allow. The nearest goes to a peer standing by when there is one.
    pub(super) fn ask_ahead(&mut self, now_ms: u64, peer: &P, topic: &str) -> Vec<Effect<P>> {
        let (ahead_max, want_max, have_max) = (self.config.fetch_ahead_max, self.config.want_max, self.config.have_max);
        let reserve = self.config.walk.bytes_max;
        let Some(sync) = self.topics.get(topic) else { return Vec::new() };
        let Some(fetch) = sync.fetches.get(peer) else { return Vec::new() };
        if !fetch.climbing || fetch.snapshot_pending() || fetch.levels.len() < 2 {
            return Vec::new();
        }
        let current = fetch.levels.len() - 1;
        let asked: BTreeSet<usize> = sync
            .ahead
            .values()
            .filter(|entry| entry.fetch == *peer && entry.serial == fetch.serial)
            .map(|entry| entry.level)
            .collect();
        if asked.len() >= ahead_max {
            return Vec::new();
        }
        // Peers standing by announced heads this fetch is getting: they hold the same blocks.
        let outer = &fetch.levels[0];
        let mut servers = vec![peer.clone()];
        servers.extend(
            sync.standby
                .iter()
                .filter(|(_, heads)| heads.iter().all(|cid| outer.contains(cid)))
                .map(|(standby, _)| standby.clone()),
        );
        let heads: Vec<Cid> = sync.topic.heads().into_iter().map(|head| head.cid).collect();
        let mut plans = Vec::new();
        let mut bytes = self.ahead_bytes;
        for level in (current.saturating_sub(ahead_max)..current).rev() {
            if asked.len() + plans.len() >= ahead_max || bytes + reserve > self.config.ahead_bytes_max {
                break;
            }
            if asked.contains(&level) {
                continue;
            }
            let mut want = fetch.levels[level].clone();
            want.truncate(want_max);
            let mut have = fetch.levels[level + 1].clone();
            have.extend(heads.iter().copied());
            have.extend(fetch.extra_have.iter().rev().copied());
            let server = servers[(current - level) % servers.len()].clone();
            plans.push((level, want, first_unique(have, have_max), server));
            bytes += reserve;
        }
        let serial = fetch.serial;
        let mut effects = Vec::new();
        for (level, want, have, server) in plans {
            let id = self.next_id();
            let entry = Ahead {
                fetch: peer.clone(),
                serial,
                level,
                server: server.clone(),
                sent_ms: now_ms,
                wants: want.clone(),
                answer: None,
                bytes: reserve,
            };
            self.ahead_bytes += reserve;
            self.topics.get_mut(topic).expect("checked above").ahead.insert(id, entry);
            let message = Message::Want { topic: topic.to_string(), id, want, have };
            effects.push(Effect::Send { to: server, message });
        }
        effects
    }

    /// Takes the answer to a level asked ahead (with no blocks when it names a frontier or
    /// snapshots instead): validated and held, or dropped. A climb waiting for it goes on.
    pub(super) fn on_ahead(
        &mut self,
        now_ms: u64,
        from: P,
        topic: &str,
        id: u64,
        blocks: Vec<WireBlock>,
        more: bool,
    ) -> Result<Vec<Effect<P>>, SyncError> {
        let sync = self.topics.get(topic).expect("checked by the caller");
        let entry = sync.ahead.get(&id).expect("checked by the caller");
        if !entry.live(sync) || blocks.is_empty() {
            return self.drop_ahead(now_ms, topic, id);
        }
        let (valid, invalid) = validate(topic, blocks, &mut self.stats);
        if invalid > 0 {
            // Blocks travel intact over QUIC: one that fails its hash or signature was sent so.
            let mut effects = self.drop_ahead(now_ms, topic, id)?;
            effects.push(Effect::Penalize { peer: from, reason: format!("served {invalid} invalid blocks") });
            return Ok(effects);
        }
        let sync = self.topics.get_mut(topic).expect("checked above");
        let entry = sync.ahead.get_mut(&id).expect("checked above");
        let got: HashSet<Cid> = valid.iter().map(Block::cid).collect();
        let complete = !more && entry.wants.iter().all(|cid| got.contains(cid));
        let bytes: usize = valid.iter().map(|block| block.bytes().len()).sum();
        self.ahead_bytes = self.ahead_bytes.saturating_sub(entry.bytes) + bytes;
        entry.bytes = bytes;
        entry.answer = Some((valid, complete));
        let peer = entry.fetch.clone();
        let fetch = sync.fetches.get_mut(&peer).expect("live");
        if fetch.waiting == Some(id) {
            fetch.waiting = None;
            return self.climb(now_ms, peer, topic);
        }
        Ok(Vec::new())
    }

    /// Forgets a level asked ahead; a climb that was waiting for it asks for the level itself.
    fn drop_ahead(&mut self, now_ms: u64, topic: &str, id: u64) -> Result<Vec<Effect<P>>, SyncError> {
        let sync = self.topics.get_mut(topic).expect("checked by the caller");
        let Some(entry) = sync.ahead.remove(&id) else { return Ok(Vec::new()) };
        self.ahead_bytes = self.ahead_bytes.saturating_sub(entry.bytes);
        match sync.fetches.get_mut(&entry.fetch) {
            Some(fetch) if fetch.waiting == Some(id) => {
                fetch.waiting = None;
                self.climb(now_ms, entry.fetch, topic)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Moves the fetch from `peer` up its stack: the levels whose answers are held are applied
    /// (each popped when its answer held all of it); at a level asked ahead whose answer is
    /// still on its way, the fetch waits for it; otherwise the level is asked for, naming the
    /// tops of what was last taken in as had, and the levels above it are asked ahead.
    pub(super) fn climb(&mut self, now_ms: u64, peer: P, topic: &str) -> Result<Vec<Effect<P>>, SyncError> {
        loop {
            let Some(sync) = self.topics.get_mut(topic) else { return Ok(Vec::new()) };
            let Some(fetch) = sync.fetches.get_mut(&peer) else { return Ok(Vec::new()) };
            let Some(level) = fetch.levels.len().checked_sub(1) else {
                sync.fetches.remove(&peer);
                return Ok(Vec::new());
            };
            let held =
                asked_for(&sync.ahead, &peer, fetch.serial, level).map(|id| (id, sync.ahead[&id].answer.is_some()));
            match held {
                None => break,
                Some((id, false)) => {
                    fetch.waiting = Some(id);
                    fetch.sent_ms = now_ms;
                    return Ok(Vec::new());
                }
                Some((id, true)) => {
                    let entry = sync.ahead.remove(&id).expect("found above");
                    self.ahead_bytes = self.ahead_bytes.saturating_sub(entry.bytes);
                    let (blocks, complete) = entry.answer.expect("answered");
                    let last_tops = tops(&blocks);
                    // Handed to the writer before the level is let go (see `on_blocks`).
                    let ingesting = sync.topic.ingest_submit(blocks)?;
                    fetch.last_tops = last_tops;
                    if complete {
                        fetch.levels.pop();
                    }
                    self.stats.levels_ahead += 1;
                    self.applying.push((topic.to_string(), peer.clone(), entry.server, ingesting));
                    if !complete {
                        break;
                    }
                }
            }
        }
        let Some(request) = self.pipelined_request(now_ms, peer.clone(), topic) else {
            if let Some(sync) = self.topics.get_mut(topic) {
                sync.fetches.remove(&peer);
            }
            return Ok(Vec::new());
        };
        let mut effects = vec![request];
        effects.extend(self.ask_ahead(now_ms, &peer, topic));
        Ok(effects)
    }
}
