//! Catch-up: fetches from peers, their requests, the answers they take in (applied while the
//! next request travels) and the snapshots they fetch instead of pruned blocks.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use canopy_dag::{Block, Cid};

use super::{Effect, Message, Replicator, SyncError, WireBlock, count_ingest, validate};
use crate::error::{IngestError, MergeError};
use crate::snapshot::{Manifest, validate_parts};
use crate::types::{Head, IngestOutcome};

/// Chunks (about 1 MiB each) asked for in one request.
const CHUNKS_PER_REQUEST: usize = 8;
/// Requests for snapshot parts one fetch keeps in flight.
const PARTS_IN_FLIGHT_MAX: usize = 4;

/// Most CIDs of a request's `have` that come from sampling ancestors (heads included).
const HAVE_SAMPLES_MAX: usize = 64;

/// Most peers standing by per topic.
const STANDBY_MAX: usize = 8;

/// Answers in a row that apply nothing before a fetch is given up.
const FETCH_IDLE_MAX: u32 = 3;
/// Pause before asking again a peer that is making a snapshot.
const SNAPSHOT_RETRY_MS: u64 = 500;
/// Tries before a fetch stops waiting for a peer's snapshot.
const SNAPSHOT_WAITS_MAX: u32 = 120;

/// One catch-up from one peer.
/// An answer to a `Want`, as `Message::Blocks` carries it.
pub(super) struct Answer {
    pub blocks: Vec<WireBlock>,
    pub more: bool,
    pub frontier: Vec<Cid>,
    pub snapshots: Vec<Cid>,
    pub snapshot_pending: bool,
}

pub(super) struct Fetch {
    /// Tells this fetch from earlier and later ones from the same peer.
    pub(super) serial: u64,
    /// The request in flight.
    id: u64,
    pub(super) sent_ms: u64,
    /// Wants still to fetch, outermost first; the last one is being fetched. A frontier pushes
    /// a deeper level; a level is popped once nothing of it is missing.
    pub(super) levels: Vec<Vec<Cid>>,
    /// Blocks this replica turned out to have although the peer's walk took them as missing,
    /// oldest first; the newest are named as had in the next requests.
    pub(super) extra_have: Vec<Cid>,
    /// Set once an answer brought blocks: the fetch climbs, and asks for levels ahead.
    pub(super) climbing: bool,
    /// The level asked ahead whose answer the climb waits for, by request id.
    pub(super) waiting: Option<u64>,
    /// The top blocks of the last answer taken in, named as had by the next request while that
    /// answer is being applied.
    pub(super) last_tops: Vec<Cid>,
    /// Answers in a row that applied nothing.
    idle: u32,
    /// Set while the fetch gets snapshots the peer sent instead of pruned blocks.
    snapshot: Option<SnapshotFetch>,
    /// Set while the fetch waits for the peer to make a snapshot it no longer held: the time
    /// of the next try.
    pub(super) retry_ms: Option<u64>,
    /// Tries made while waiting for a peer's snapshot.
    snapshot_waits: u32,
}

/// Fetching snapshots: each manifest, then its chunks, several requests at once, then the
/// merge; then the fetch goes back to its wants.
struct SnapshotFetch {
    /// Manifests to fetch and merge, the current one first.
    manifests: Vec<Cid>,
    /// The current manifest, once received.
    manifest: Option<Manifest>,
    /// Chunks not asked for yet.
    todo: Vec<Cid>,
    /// Requests in flight and the parts each asked for.
    in_flight: BTreeMap<u64, Vec<Cid>>,
}

impl Fetch {
    /// Whether `id` is a request of this fetch still waiting for its answer.
    pub(super) fn asked(&self, id: u64) -> bool {
        self.id == id || self.snapshot.as_ref().is_some_and(|s| s.in_flight.contains_key(&id))
    }

    /// Whether the fetch is getting snapshots instead of blocks.
    pub(super) fn snapshot_pending(&self) -> bool {
        self.snapshot.is_some()
    }

    fn cids(&self) -> usize {
        self.levels.iter().map(Vec::len).sum::<usize>() + self.extra_have.len()
    }

    /// Remembers blocks this replica has that the peer took as missing, newest last, keeping
    /// at most `max`. Returns whether any was new.
    fn learn_had(&mut self, had: Vec<Cid>, max: usize) -> bool {
        let before = self.extra_have.len();
        let mut known: HashSet<Cid> = self.extra_have.iter().copied().collect();
        for cid in had {
            if known.insert(cid) {
                self.extra_have.push(cid);
            }
        }
        let learnt = self.extra_have.len() > before;
        if self.extra_have.len() > max {
            let excess = self.extra_have.len() - max;
            self.extra_have.drain(..excess);
        }
        learnt
    }
}

impl<P: Clone + Ord> Replicator<P> {
    /// Waits until every answer whose blocks are being applied is taken in, and acts on the
    /// outcomes: counters, blocks learnt as had, fetches that stopped making progress, new heads
    /// announced. [`Replicator::handle`] and [`Replicator::tick`] do this first; a caller that reads topics
    /// right after handling an answer calls it to see the answer applied.
    pub fn settle(&mut self) -> Result<Vec<Effect<P>>, SyncError> {
        let mut effects = Vec::new();
        for (topic, peer, server, ingesting) in std::mem::take(&mut self.applying) {
            let outcome = ingesting.wait()?;
            if count_ingest(&mut self.stats, &outcome) {
                effects.extend(self.served_refused(&topic, peer, server, &outcome));
                continue;
            }
            let have_max = self.config.have_max;
            if let Some(fetch) = self.topics.get_mut(&topic).and_then(|sync| sync.fetches.get_mut(&peer)) {
                let progressed = outcome.applied > 0 || fetch.learn_had(outcome.duplicates, have_max);
                fetch.idle = if progressed { 0 } else { fetch.idle + 1 };
                if fetch.idle >= FETCH_IDLE_MAX {
                    self.abandon(&topic, &peer);
                }
            }
            if outcome.heads_changed {
                effects.extend(self.announce(&topic));
            }
        }
        Ok(effects)
    }

    pub(super) fn on_heads(
        &mut self,
        now_ms: u64,
        from: P,
        topic: &str,
        heads: Vec<Head>,
        (blocks, unawaited): (Vec<WireBlock>, bool),
    ) -> Result<Vec<Effect<P>>, SyncError> {
        let Some(sync) = self.topics.get_mut(topic) else {
            return Ok(Vec::new());
        };
        let mut echo = Vec::new();
        if !blocks.is_empty() {
            // Blocks that came with the announcement are taken like fetched ones: validated, then
            // applied once their parents are. Whatever they leave unknown is fetched below. An
            // announcement carrying blocks that fail, or that its author may not write, is
            // dropped and its sender penalised.
            let (valid, invalid) = validate(topic, blocks, &mut self.stats);
            let outcome = sync.topic.ingest(valid)?;
            let refused = count_ingest(&mut self.stats, &outcome);
            self.stats.blocks_inline += outcome.applied as u64;
            if invalid > 0 || refused {
                let reason = format!("announced {invalid} invalid and {} refused blocks", outcome.refused);
                return Ok(vec![Effect::Penalize { peer: from, reason }]);
            }
            if outcome.heads_changed {
                // The announcement reaches the other peers through gossip. This replica's own
                // heads go out now, so that a writer waiting for copies of its write learns
                // that this one holds it, at most once per `ECHO_INTERVAL_MS`; between two,
                // and when no writer waits, at the next (now short) re-announcement.
                if !unawaited && sync.echoed_ms.is_none_or(|at| now_ms >= at + super::ECHO_INTERVAL_MS) {
                    sync.echoed_ms = Some(now_ms);
                    echo = self.announce(topic);
                } else {
                    self.reschedule(topic, true);
                }
            }
        }
        let mut effects = self.heads_heard(now_ms, from, topic, heads)?;
        effects.splice(0..0, echo);
        Ok(effects)
    }

    /// What an announcement of `heads` by `from` makes this replica do: fetch the heads it
    /// lacks, or tell the peer its own heads soon when the peer lacks some.
    fn heads_heard(
        &mut self,
        now_ms: u64,
        from: P,
        topic: &str,
        heads: Vec<Head>,
    ) -> Result<Vec<Effect<P>>, SyncError> {
        let (want_max, fetches_max) = (self.config.want_max, self.config.fetches_per_topic_max);
        let sync = self.topics.get_mut(topic).expect("checked by the caller");
        let unknown = sync.topic.unknown(heads.iter().map(|h| h.cid).collect(), want_max)?;
        if unknown.is_empty() {
            // The peer is behind or equal. If it lacks some of our heads, tell it soon (once per
            // interval at most, whatever the number of such announcements).
            let ours = sync.topic.heads();
            if ours.iter().any(|head| !heads.contains(head)) && sync.quiet > 0 {
                self.reschedule(topic, true);
            }
            return Ok(Vec::new());
        }
        if sync.fetches.get(&from).is_some_and(|fetch| fetch.levels.is_empty()) {
            // A fetch with no level left has nothing more to get (its last answer is still being
            // applied): these heads start a fetch of their own.
            sync.fetches.remove(&from);
        }
        if let Some(fetch) = sync.fetches.get_mut(&from) {
            // Asked for once the fetch climbs back to its outermost level.
            let outer = &mut fetch.levels[0];
            outer.extend(unknown);
            outer.sort_unstable();
            outer.dedup();
            outer.truncate(want_max);
            return Ok(Vec::new());
        }
        if covered(&sync.fetches, &unknown) {
            // Another peer is fetching these heads already: this one stands by.
            if sync.standby.len() < STANDBY_MAX || sync.standby.contains_key(&from) {
                sync.standby.insert(from, unknown);
            }
            return Ok(Vec::new());
        }
        if sync.fetches.len() >= fetches_max {
            return Ok(Vec::new());
        }
        self.start_fetch(now_ms, from, topic, unknown)
    }

    fn start_fetch(&mut self, now_ms: u64, from: P, topic: &str, wants: Vec<Cid>) -> Result<Vec<Effect<P>>, SyncError> {
        let fetch = Fetch {
            serial: self.next_id(),
            id: 0,
            sent_ms: now_ms,
            levels: vec![wants],
            extra_have: Vec::new(),
            climbing: false,
            waiting: None,
            last_tops: Vec::new(),
            idle: 0,
            snapshot: None,
            retry_ms: None,
            snapshot_waits: 0,
        };
        self.topics.get_mut(topic).expect("fetches belong to subscribed topics").fetches.insert(from.clone(), fetch);
        self.next_request(now_ms, from, topic)
    }

    /// Peers standing by take over the heads no fetch is getting any more (the fetch that was
    /// ended: given up, failed, timed out); heads that arrived meanwhile are forgotten.
    pub(super) fn take_over(&mut self, now_ms: u64) -> Result<Vec<Effect<P>>, SyncError> {
        let (want_max, fetches_max) = (self.config.want_max, self.config.fetches_per_topic_max);
        let waiting: Vec<String> =
            self.topics.iter().filter(|(_, sync)| !sync.standby.is_empty()).map(|(name, _)| name.clone()).collect();
        let mut effects = Vec::new();
        for topic in waiting {
            let standby = std::mem::take(&mut self.topics.get_mut(&topic).expect("listed above").standby);
            for (peer, heads) in standby {
                let sync = self.topics.get_mut(&topic).expect("listed above");
                let unknown = sync.topic.unknown(heads, want_max)?;
                if unknown.is_empty() || sync.fetches.contains_key(&peer) {
                    continue;
                }
                if covered(&sync.fetches, &unknown) {
                    sync.standby.insert(peer, unknown);
                } else if sync.fetches.len() < fetches_max {
                    effects.extend(self.start_fetch(now_ms, peer, &topic, unknown)?);
                }
            }
        }
        Ok(effects)
    }

    /// The next request of the fetch from `peer`: the innermost level's blocks still missing.
    /// Levels with nothing missing are popped; a fetch with no level left is done. A level asked
    /// ahead is taken from its answer (or waited for) instead.
    pub(super) fn next_request(&mut self, now_ms: u64, peer: P, topic: &str) -> Result<Vec<Effect<P>>, SyncError> {
        let id = self.next_id();
        let (want_max, have_max) = (self.config.want_max, self.config.have_max);
        let sync = self.topics.get_mut(topic).expect("fetches belong to subscribed topics");
        let Some(fetch) = sync.fetches.get_mut(&peer) else { return Ok(Vec::new()) };
        while let Some(level) = fetch.levels.last() {
            let want = sync.topic.unknown(level.clone(), want_max)?;
            let (serial, index) = (fetch.serial, fetch.levels.len() - 1);
            if want.is_empty() {
                fetch.levels.pop();
                let freed = super::ahead::forget_level(&mut sync.ahead, &peer, serial, index);
                self.ahead_bytes = self.ahead_bytes.saturating_sub(freed);
                continue;
            }
            if super::ahead::asked_for(&sync.ahead, &peer, serial, index).is_some() {
                return self.climb(now_ms, peer, topic);
            }
            *fetch.levels.last_mut().expect("a level") = want.clone();
            // Heads first (everything applied lies below them), then blocks earlier answers took
            // as missing, then sampled ancestors.
            let mut heads = sync.topic.heads();
            heads.sort_unstable_by(|a, b| b.height.cmp(&a.height).then(a.cid.cmp(&b.cid)));
            let mut have: Vec<Cid> = heads.into_iter().map(|head| head.cid).collect();
            have.extend(fetch.extra_have.iter().rev().copied());
            // Samples only help a replica with few heads, and each costs a walk down first
            // parents: a few are enough.
            if have.len() < have_max {
                have.extend(sync.topic.have_sample(HAVE_SAMPLES_MAX.min(have_max - have.len()))?);
            }
            fetch.id = id;
            fetch.sent_ms = now_ms;
            let message = Message::Want { topic: topic.to_string(), id, want, have: first_unique(have, have_max) };
            return Ok(vec![Effect::Send { to: peer, message }]);
        }
        sync.fetches.remove(&peer);
        Ok(Vec::new())
    }

    /// The request that follows an answer, made before the answer is applied: the wants of the
    /// fetch's current level, with the answer's top blocks named as had besides the heads.
    /// `None` when the fetch has no level left.
    pub(super) fn pipelined_request(&mut self, now_ms: u64, peer: P, topic: &str) -> Option<Effect<P>> {
        let id = self.next_id();
        let (want_max, have_max) = (self.config.want_max, self.config.have_max);
        let sync = self.topics.get_mut(topic)?;
        let fetch = sync.fetches.get_mut(&peer)?;
        let mut want = fetch.levels.last()?.clone();
        want.truncate(want_max);
        let mut have = fetch.last_tops.clone();
        have.extend(sync.topic.heads().into_iter().map(|head| head.cid));
        have.extend(fetch.extra_have.iter().rev().copied());
        fetch.id = id;
        fetch.sent_ms = now_ms;
        let message = Message::Want { topic: topic.to_string(), id, want, have: first_unique(have, have_max) };
        Some(Effect::Send { to: peer, message })
    }

    pub(super) fn on_blocks(
        &mut self,
        now_ms: u64,
        from: P,
        topic: &str,
        id: u64,
        answer: Answer,
    ) -> Result<Vec<Effect<P>>, SyncError> {
        let Answer { blocks, more, frontier, snapshots, snapshot_pending } = answer;
        // Blocks the peer could not give: pruned ones, standing for by snapshots (sent, or
        // being made).
        let pruned = !snapshots.is_empty() || snapshot_pending;
        let (want_max, have_max, cids_max) = (self.config.want_max, self.config.have_max, self.config.fetch_cids_max);
        let snapshots_trusted = self.trusts_snapshots(topic, &from);
        let Some(sync) = self.topics.get_mut(topic) else {
            return Ok(Vec::new());
        };
        if sync.ahead.get(&id).is_some_and(|entry| entry.server == from) {
            // An answer naming a frontier or snapshots holds no blocks of the level.
            let blocks = if frontier.is_empty() && !pruned { blocks } else { Vec::new() };
            return self.on_ahead(now_ms, from, topic, id, blocks, more);
        }
        if sync.fetches.get(&from).is_none_or(|fetch| fetch.id != id) {
            self.stats.answers_unrequested += 1;
            return Ok(Vec::new());
        }
        let blocks_were_empty = blocks.is_empty();
        let (valid, invalid) = validate(topic, blocks, &mut self.stats);
        if invalid > 0 {
            // Blocks travel intact over QUIC: one that fails its hash or signature was sent so.
            self.abandon(topic, &from);
            return Ok(vec![Effect::Penalize { peer: from, reason: format!("served {invalid} invalid blocks") }]);
        }
        let fetch = sync.fetches.get_mut(&from).expect("checked above");
        // The answer holds every block below the wants of the fetch's current level: once
        // applied, the level is done.
        let level_done = !more && {
            let got: HashSet<Cid> = valid.iter().map(Block::cid).collect();
            fetch.levels.last().is_some_and(|level| level.iter().all(|cid| got.contains(cid)))
        };
        let pipelined = (more || level_done) && frontier.is_empty() && !pruned;
        if !valid.is_empty() && pipelined && fetch.snapshot.is_none() {
            // Ask for what comes next now (more above these blocks, or the next level), naming
            // the tops of these blocks as had, and let the writer thread apply them while the
            // request travels and the peer walks. The outcome is settled before the next
            // message is handled.
            let last_tops = tops(&valid);
            // Handed to the writer before the level is let go, so a store that refuses it
            // (stopped, out of disk) leaves the fetch as it was rather than without a level.
            let ingesting = sync.topic.ingest_submit(valid)?;
            if level_done {
                fetch.levels.pop();
            }
            fetch.climbing = true;
            fetch.last_tops = last_tops;
            self.applying.push((topic.to_string(), from.clone(), from.clone(), ingesting));
            return self.climb(now_ms, from, topic);
        }
        let outcome = sync.topic.ingest(valid)?;
        if count_ingest(&mut self.stats, &outcome) {
            return Ok(self.served_refused(topic, from.clone(), from, &outcome));
        }

        let fetch = sync.fetches.get_mut(&from).expect("checked above");
        if blocks_were_empty && pruned {
            // The peer reached a pruned block it cannot tell whether this replica has. Holding
            // it, this replica names it as had and asks again: no snapshot is needed (and from a
            // peer that may not speak for the topic, none could be had).
            let lacked = sync.topic.unknown(frontier.clone(), want_max)?;
            let had: Vec<Cid> = frontier.iter().filter(|cid| !lacked.contains(cid)).copied().collect();
            if !had.is_empty() && fetch.learn_had(had, have_max) {
                fetch.idle = 0;
                return self.next_request(now_ms, from, topic);
            }
            if !snapshots_trusted {
                // Snapshots are not signed: only a party the topic's rule lets speak for it is
                // believed (the owner, or in a topic with none a snapshot speaker). The heads are
                // fetched from a peer that still holds the blocks, or from one that may speak.
                self.stats.snapshots_refused += 1;
                return Ok(self.abandon(topic, &from));
            }
            if snapshot_pending {
                // The peer is making the snapshot: ask again shortly.
                fetch.snapshot_waits += 1;
                if fetch.snapshot_waits > SNAPSHOT_WAITS_MAX {
                    return Ok(self.abandon(topic, &from));
                }
                fetch.retry_ms = Some(now_ms + SNAPSHOT_RETRY_MS);
                return Ok(Vec::new());
            }
            // The peer pruned blocks this replica lacks: get the snapshots that cover them (or,
            // for those whose heads this replica holds, learn those heads to name as had).
            let manifests = snapshots;
            {
                fetch.snapshot =
                    Some(SnapshotFetch { manifests, manifest: None, todo: Vec::new(), in_flight: BTreeMap::new() });
                fetch.idle = 0;
                return self.request_parts(now_ms, from, topic);
            }
        }
        // The peer's walk knows what this replica has only through the heads and samples it was
        // told; blocks it took as missing but this replica has (served again, or named in a
        // frontier) are named as had from now on. Learning them is progress: the next walk gets
        // further.
        let mut progressed = outcome.applied > 0 || fetch.learn_had(outcome.duplicates, have_max);
        if !frontier.is_empty() {
            let deeper = sync.topic.unknown(frontier.clone(), want_max)?;
            let had: Vec<Cid> = frontier.iter().filter(|cid| !deeper.contains(cid)).copied().collect();
            progressed |= fetch.learn_had(had, have_max);
            // The frontier is a step down when it names blocks below the wants, or fewer of the
            // wants (the walk got past some and ran out of visits before the others, which are
            // then asked for alone). One that repeats the wants is no step.
            let current: BTreeSet<Cid> = fetch.levels.last().into_iter().flatten().copied().collect();
            if !deeper.is_empty() && deeper.iter().copied().collect::<BTreeSet<Cid>>() != current {
                fetch.levels.push(deeper);
                progressed = true;
            }
        }
        fetch.idle = if progressed { 0 } else { fetch.idle + 1 };
        let mut effects = Vec::new();
        // A stack of wants past its bound means a gap deeper than any real history, or a peer
        // inventing frontiers: either way this fetch ends, and only this one.
        if fetch.idle >= FETCH_IDLE_MAX || fetch.cids() > cids_max {
            sync.fetches.remove(&from);
            self.stats.fetches_abandoned += 1;
        } else {
            effects.extend(self.next_request(now_ms, from, topic)?);
        }
        if outcome.heads_changed {
            effects.extend(self.announce(topic));
        }
        Ok(effects)
    }

    pub(super) fn on_parts(
        &mut self,
        now_ms: u64,
        from: P,
        topic: &str,
        id: u64,
        parts: Vec<WireBlock>,
    ) -> Result<Vec<Effect<P>>, SyncError> {
        let have_max = self.config.have_max;
        let Some(sync) = self.topics.get_mut(topic) else {
            return Ok(Vec::new());
        };
        let Some(fetch) = sync.fetches.get_mut(&from).filter(|fetch| fetch.asked(id) && fetch.id != id) else {
            self.stats.answers_unrequested += 1;
            return Ok(Vec::new());
        };
        let snapshot = fetch.snapshot.as_mut().expect("parts are asked only while fetching snapshots");
        let asked = snapshot.in_flight.remove(&id).expect("checked by asked()");
        let items: Vec<(Cid, Vec<u8>)> =
            parts.into_iter().filter(|p| asked.contains(&p.cid)).map(|p| (p.cid, p.bytes.into_vec())).collect();
        let mut valid = Vec::new();
        let mut bad = false;
        for result in validate_parts(items) {
            match result {
                Ok(part) => valid.push(part),
                Err(_) => bad = true,
            }
        }
        if bad {
            self.stats.parts_rejected += 1;
            return Ok(self.abandon(topic, &from));
        }
        if valid.is_empty() {
            // The peer no longer holds the snapshot: it released the parts (and makes a new
            // snapshot now) or replaced it. Ask again shortly; the next answer names the new one.
            fetch.snapshot = None;
            fetch.snapshot_waits += 1;
            if fetch.snapshot_waits > SNAPSHOT_WAITS_MAX {
                return Ok(self.abandon(topic, &from));
            }
            fetch.retry_ms = Some(now_ms + SNAPSHOT_RETRY_MS);
            return Ok(Vec::new());
        }
        fetch.sent_ms = now_ms;
        match &snapshot.manifest {
            None => {
                let wanted = snapshot.manifests[0];
                let Some((cid, bytes)) = valid.into_iter().find(|(cid, _)| *cid == wanted) else {
                    return Ok(self.abandon(topic, &from));
                };
                let manifest = match Manifest::decode(&cid, &bytes) {
                    Ok(manifest) if manifest.topic == topic => manifest,
                    _ => {
                        self.stats.parts_rejected += 1;
                        return Ok(self.abandon(topic, &from));
                    }
                };
                let heads: Vec<Cid> = manifest.heads.iter().map(|h| h.cid).collect();
                if sync.topic.unknown(heads.clone(), heads.len())?.is_empty() {
                    // Everything it covers is here: nothing to merge, only its heads to name as
                    // had, so the peer counts its pruned blocks as held.
                    snapshot.manifests.remove(0);
                    fetch.learn_had(heads, have_max);
                } else {
                    sync.topic.stage_snapshot_parts(&[(cid, bytes)])?;
                    snapshot.todo = sync.topic.missing_snapshot_parts(&manifest.chunks)?;
                    snapshot.manifest = Some(manifest);
                }
            }
            Some(_) => {
                let got: HashSet<Cid> = valid.iter().map(|(cid, _)| *cid).collect();
                sync.topic.stage_snapshot_parts(&valid)?;
                snapshot.todo.extend(asked.into_iter().filter(|cid| !got.contains(cid)));
            }
        }
        self.request_parts(now_ms, from, topic)
    }

    /// Moves a snapshot fetch on: asks for more parts, or merges a complete snapshot and goes
    /// on to the next one, or back to the fetch's wants.
    fn request_parts(&mut self, now_ms: u64, peer: P, topic: &str) -> Result<Vec<Effect<P>>, SyncError> {
        let mut effects = Vec::new();
        loop {
            let sync = self.topics.get_mut(topic).expect("fetches belong to subscribed topics");
            let Some(fetch) = sync.fetches.get_mut(&peer) else { return Ok(effects) };
            let Some(snapshot) = fetch.snapshot.as_mut() else {
                effects.extend(self.next_request(now_ms, peer, topic)?);
                return Ok(effects);
            };
            if snapshot.manifests.is_empty() {
                fetch.snapshot = None;
                continue;
            }
            if snapshot.manifest.is_none() {
                if snapshot.in_flight.is_empty() {
                    let id = self.next_request_id;
                    self.next_request_id += 1;
                    let cids = vec![snapshot.manifests[0]];
                    snapshot.in_flight.insert(id, cids.clone());
                    fetch.sent_ms = now_ms;
                    let message = Message::WantParts { topic: topic.to_string(), id, cids };
                    effects.push(Effect::Send { to: peer.clone(), message });
                }
                return Ok(effects);
            }
            if snapshot.todo.is_empty() && snapshot.in_flight.is_empty() {
                let manifest = snapshot.manifests.remove(0);
                let heads: Vec<Cid> =
                    snapshot.manifest.take().map(|m| m.heads.iter().map(|h| h.cid).collect()).unwrap_or_default();
                match sync.topic.merge_snapshot(manifest) {
                    Ok(outcome) => {
                        fetch.learn_had(heads, self.config.have_max);
                        if !outcome.already_had {
                            self.stats.snapshots_merged += 1;
                            effects.extend(self.announce(topic));
                        }
                    }
                    Err(MergeError::Missing(_)) | Err(MergeError::Invalid(_)) => {
                        self.stats.parts_rejected += 1;
                        effects.extend(self.abandon(topic, &peer));
                        return Ok(effects);
                    }
                    Err(MergeError::Storage(error)) => return Err(IngestError::Storage(error).into()),
                    Err(MergeError::Topic(_)) => return Err(IngestError::Closed.into()),
                }
                continue;
            }
            while snapshot.in_flight.len() < PARTS_IN_FLIGHT_MAX && !snapshot.todo.is_empty() {
                let take = snapshot.todo.len().min(CHUNKS_PER_REQUEST);
                let cids: Vec<Cid> = snapshot.todo.drain(..take).collect();
                let id = self.next_request_id;
                self.next_request_id += 1;
                snapshot.in_flight.insert(id, cids.clone());
                fetch.sent_ms = now_ms;
                effects.push(Effect::Send {
                    to: peer.clone(),
                    message: Message::WantParts { topic: topic.to_string(), id, cids },
                });
            }
            return Ok(effects);
        }
    }

    /// `server` served blocks the topic's rule refuses, which no honest replica serves: the fetch
    /// from `peer` they were for ends and `server` is penalised. Blocks of the answer that did
    /// apply are announced.
    fn served_refused(&mut self, topic: &str, peer: P, server: P, outcome: &IngestOutcome) -> Vec<Effect<P>> {
        self.abandon(topic, &peer);
        let reason = format!("served {} refused blocks", outcome.refused);
        let mut effects = vec![Effect::Penalize { peer: server, reason }];
        if outcome.heads_changed {
            effects.extend(self.announce(topic));
        }
        effects
    }

    /// Gives up the fetch from `peer`; the next announcement starts a new one.
    fn abandon(&mut self, topic: &str, peer: &P) -> Vec<Effect<P>> {
        if let Some(sync) = self.topics.get_mut(topic)
            && sync.fetches.remove(peer).is_some()
        {
            self.stats.fetches_abandoned += 1;
        }
        Vec::new()
    }
}

/// Whether one of `fetches` has every CID of `heads` among its outermost wants.
fn covered<P>(fetches: &BTreeMap<P, Fetch>, heads: &[Cid]) -> bool {
    fetches.values().any(|fetch| fetch.levels.first().is_some_and(|outer| heads.iter().all(|cid| outer.contains(cid))))
}

/// The first `max` distinct CIDs of `have`, sorted.
pub(super) fn first_unique(mut have: Vec<Cid>, max: usize) -> Vec<Cid> {
    let mut seen = HashSet::new();
    have.retain(|cid| seen.insert(*cid));
    have.truncate(max);
    have.sort_unstable();
    have
}

/// The blocks of `blocks` that are no parent of another one of them: whoever holds them holds
/// every block of `blocks`.
pub(super) fn tops(blocks: &[Block]) -> Vec<Cid> {
    let parents: HashSet<&Cid> = blocks.iter().flat_map(Block::links).collect();
    blocks.iter().map(Block::cid).filter(|cid| !parents.contains(cid)).collect()
}
