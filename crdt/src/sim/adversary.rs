//! The simulator's hostile participants: they announce heads that do not exist, stall and
//! garble answers, offer well-made snapshots that lie about the blocks they cover, and (the
//! byzantine ones) forge and replay other authors' blocks.

use std::collections::BTreeMap;

use canopy_dag::{Block, BlockLimits, Cid, Signer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::delta::{Delta, Limits};
use crate::snapshot::{ChunkWriter, SnapshotElement};
use crate::sync::{Message, WireBlock};
use crate::types::Head;

/// The wire shape of a block, as a hostile participant crafts it by hand.
#[derive(serde::Serialize, serde::Deserialize)]
struct RawBlock {
    links: Vec<Cid>,
    author: serde_bytes::ByteBuf,
    height: u64,
    payload: serde_bytes::ByteBuf,
    signature: serde_bytes::ByteBuf,
}

/// A snapshot a hostile participant made up about a real block it overheard: every part is well
/// encoded and hashes to its CID, the manifest names the block as its head and covered at its
/// true height, but the chunks leave out the block's writes or give them another height. Only
/// who offers it tells it from an honest one.
struct Lie {
    topic: String,
    /// The overheard block, as the manifest names it.
    head: Head,
    manifest: Cid,
    /// The manifest's and the chunks' CIDs, whose bytes are in [`Adversary::parts`].
    parts: Vec<Cid>,
}

/// A hostile participant. It is never a replica: it announces heads that do not exist and real
/// heads it cannot serve, stalls requests, answers them with orphans above invented parents,
/// with valid blocks nobody asked for (some tombstoning elements outside their causal past),
/// with invented frontiers, garbage, tampered blocks and answers to requests never made, and
/// offers lying snapshots of real blocks (announcing those blocks, answering requests for them
/// with the snapshots, and serving their parts).
pub(super) struct Adversary {
    rng: StdRng,
    /// The adversary's own key: its blocks are well signed, by an author of its own.
    signer: Signer,
    topics: Vec<String>,
    pub(super) replicas: usize,
    /// Real CIDs heard in announcements, to name as heads and as element ids.
    learned: Vec<Cid>,
    /// Real blocks overheard inside announcements, with their topic (byzantine participants
    /// replay and forge them).
    overheard: Vec<(String, Block)>,
    /// The highest block overheard in each topic: writes of its own go above it, so they have
    /// the topic's recent writer list in their past.
    newest: std::collections::BTreeMap<String, Block>,
    /// Whether it also forges and replays other authors' blocks.
    byzantine: bool,
    pub(super) silent: bool,
    /// Snapshots made up about overheard blocks, oldest first.
    lies: Vec<Lie>,
    /// The bytes of the lies' parts, by CID.
    parts: BTreeMap<Cid, Vec<u8>>,
}

/// Real CIDs an adversary remembers.
const ADVERSARY_LEARNED_MAX: usize = 256;
/// Lying snapshots an adversary keeps: the newest, about blocks some replica may still lack.
const LIES_MAX: usize = 8;

impl Adversary {
    pub(super) fn new(seed: u64, topics: &[String], replicas: usize, byzantine: bool) -> Adversary {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut secret = [0u8; 32];
        rng.fill(&mut secret);
        Adversary {
            signer: Signer::from_secret(secret),
            rng,
            topics: topics.to_vec(),
            replicas,
            learned: Vec::new(),
            overheard: Vec::new(),
            newest: std::collections::BTreeMap::new(),
            byzantine,
            silent: false,
            lies: Vec::new(),
            parts: BTreeMap::new(),
        }
    }

    /// The author this participant signs its own blocks as.
    pub(super) fn author(&self) -> canopy_dag::AuthorId {
        self.signer.author()
    }

    fn fake_cid(&mut self) -> Cid {
        let seed: u64 = self.rng.random();
        Block::build("fake", vec![], 1, seed.to_be_bytes().to_vec(), &self.signer).expect("a small block builds").cid()
    }

    fn topic(&mut self) -> String {
        self.topics[self.rng.random_range(0..self.topics.len())].clone()
    }

    /// A valid block: parentless, or above invented parents (an orphan that can never apply).
    fn block(&mut self, topic: &str, orphan: bool) -> Block {
        let mut delta = Delta::default();
        for _ in 0..self.rng.random_range(1..4) {
            let key = format!("hot/{}", self.rng.random_range(0..4)).into_bytes();
            if self.rng.random_bool(0.5) || self.learned.is_empty() {
                delta.adds.push((key, vec![self.rng.random(); 8]));
            } else {
                let id = self.learned[self.rng.random_range(0..self.learned.len())];
                delta.removes.push((key, id));
            }
        }
        delta.normalize();
        if orphan {
            let parents: Vec<Cid> = (0..self.rng.random_range(1..4)).map(|_| self.fake_cid()).collect();
            let height = self.rng.random_range(2..100);
            Block::build(topic, parents, height, delta.encode(), &self.signer).expect("a small block builds")
        } else {
            Block::build(topic, vec![], 1, delta.encode(), &self.signer).expect("a small block builds")
        }
    }

    /// Makes up a snapshot of `topic` at `block`, an overheard one: its manifest names `block`
    /// as its head and only covered block, at its true height, and its chunk leaves out the
    /// block's writes or, half the time, carries them (adds and removes) with the adds at
    /// another height. Kept among the newest [`LIES_MAX`].
    fn make_lie(&mut self, topic: &str, block: &Block) {
        let Ok(delta) = Delta::decode(block.payload(), &Limits::PROTOCOL) else { return };
        let (cid, height) = (block.cid(), block.height());
        let other_height = match self.rng.random_range(1..=height + 16) {
            same if same == height => height + 17,
            other => other,
        };
        let carried = !delta.adds.is_empty() && self.rng.random_bool(0.5);
        let mut parts = Vec::new();
        let mut writer = ChunkWriter::new(|cid, bytes| parts.push((cid, bytes)));
        if carried {
            let expiries: BTreeMap<Vec<u8>, u64> = delta.expiries.iter().cloned().collect();
            for (key, value) in delta.adds {
                let expires = expiries.get(&key).copied();
                writer.element(SnapshotElement { key, height: other_height, id: cid, value, expires });
            }
            let mut removes = delta.removes;
            removes.sort_by(|a, b| (a.1.to_bytes(), &a.0).cmp(&(b.1.to_bytes(), &b.0)));
            for (key, id) in removes {
                writer.remove(id, key);
            }
        }
        writer.block(cid, height);
        let head = Head { cid, height };
        let manifest = writer.finish(topic, vec![head]);
        let (manifest_cid, manifest_bytes) = manifest.encode();
        parts.push((manifest_cid, manifest_bytes));
        let lie =
            Lie { topic: topic.to_string(), head, manifest: manifest_cid, parts: parts.iter().map(|p| p.0).collect() };
        self.parts.extend(parts);
        self.lies.push(lie);
        if self.lies.len() > LIES_MAX {
            let old = self.lies.remove(0);
            for part in old.parts {
                // Two lies about one block may share parts.
                if !self.lies.iter().any(|lie| lie.parts.contains(&part)) {
                    self.parts.remove(&part);
                }
            }
        }
    }

    /// The lie to offer for a request of `topic` wanting `want`: one about a wanted block, else
    /// the newest about the topic.
    fn lie_for(&self, topic: &str, want: &[Cid]) -> Option<Cid> {
        let mine = || self.lies.iter().rev().filter(move |lie| lie.topic == topic);
        mine().find(|lie| want.contains(&lie.head.cid)).or_else(|| mine().next()).map(|lie| lie.manifest)
    }

    fn wire(block: &Block) -> WireBlock {
        WireBlock { cid: block.cid(), bytes: serde_bytes::ByteBuf::from(block.bytes().to_vec()) }
    }

    /// A block for `topic` made from an overheard one: its content re-signed under this
    /// participant's key (valid in an open topic, refused in an owned one), or sent with its
    /// signature flipped, stripped or re-attributed, or replayed into another topic; or a write
    /// of its own above it (in a topic with a writer list: accepted while this participant is on
    /// the list there, refused once its revocation is below), or a grant of itself.
    fn forgery(&mut self, topic: &str) -> Option<WireBlock> {
        let (source, block) = self.overheard[self.rng.random_range(0..self.overheard.len())].clone();
        let mut raw: RawBlock = serde_ipld_dagcbor::from_slice(block.bytes()).ok()?;
        match self.rng.random_range(0..7) {
            5 | 6 if self.newest.contains_key(topic) => {
                let block = self.newest[topic].clone();
                let mut delta = Delta::default();
                if self.rng.random_bool(0.8) {
                    let key = format!("hot/{}", self.rng.random_range(0..4)).into_bytes();
                    delta.adds.push((key, vec![self.rng.random(); 8]));
                } else {
                    delta.grants.push(self.signer.author());
                }
                let above =
                    Block::build(topic, vec![block.cid()], block.height() + 1, delta.encode(), &self.signer).ok()?;
                return Some(Adversary::wire(&above));
            }
            5 | 6 => return Some(Adversary::wire(&block)),
            0 => {
                let replay =
                    Block::build(topic, block.links().to_vec(), block.height(), block.payload().to_vec(), &self.signer)
                        .ok()?;
                return Some(Adversary::wire(&replay));
            }
            1 => raw.signature[0] ^= 1,
            2 => raw.signature = serde_bytes::ByteBuf::new(),
            3 => raw.author = serde_bytes::ByteBuf::from(self.signer.author().as_bytes().to_vec()),
            // The genuine block, offered to a topic it was not signed for (or, when it is the
            // same topic, as it is: a duplicate).
            _ if source != topic => return Some(Adversary::wire(&block)),
            _ => raw.payload = serde_bytes::ByteBuf::from(Vec::new()),
        }
        let bytes = serde_ipld_dagcbor::to_vec(&raw).ok()?;
        Some(WireBlock { cid: canopy_dag::cid_of(&bytes), bytes: serde_bytes::ByteBuf::from(bytes) })
    }

    pub(super) fn receive(&mut self, from: usize, bytes: &[u8]) -> Vec<(usize, Vec<u8>)> {
        if self.silent {
            return Vec::new();
        }
        let Ok(message) = serde_ipld_dagcbor::from_slice::<Message>(bytes) else {
            return Vec::new();
        };
        let (topic, id) = match message {
            Message::Heads { topic, heads, blocks, .. } => {
                for head in heads {
                    if self.learned.len() < ADVERSARY_LEARNED_MAX {
                        self.learned.push(head.cid);
                    }
                }
                for wire in blocks {
                    if let Ok(block) = Block::decode(&topic, wire.cid, &wire.bytes, &BlockLimits::PROTOCOL) {
                        if self.rng.random_bool(0.25) {
                            self.make_lie(&topic, &block);
                        }
                        let newest = self.newest.entry(topic.clone()).or_insert_with(|| block.clone());
                        if block.height() > newest.height() {
                            *newest = block.clone();
                        }
                        // Recent blocks replace old ones at random, so forgeries build on
                        // recent history too.
                        if self.overheard.len() < ADVERSARY_LEARNED_MAX {
                            self.overheard.push((topic.clone(), block));
                        } else {
                            let slot = self.rng.random_range(0..self.overheard.len());
                            self.overheard[slot] = (topic.clone(), block);
                        }
                    }
                }
                return Vec::new();
            }
            Message::Want { topic, id, want, .. } => {
                // A lie that covers what was asked for, in place of blocks: it stands for blocks
                // this participant pretends to have pruned.
                if let Some(manifest) = self.lie_for(&topic, &want).filter(|_| self.rng.random_bool(0.5)) {
                    let answer = Message::Blocks {
                        topic,
                        id,
                        blocks: Vec::new(),
                        more: false,
                        frontier: Vec::new(),
                        snapshots: vec![manifest],
                        snapshot_pending: false,
                    };
                    return vec![(from, answer.encode())];
                }
                (topic, id)
            }
            Message::WantParts { topic, id, cids } if cids.iter().all(|cid| self.parts.contains_key(cid)) => {
                // The parts of a lie, exactly as asked: they pass every check a part can get.
                let parts = cids
                    .iter()
                    .map(|cid| WireBlock { cid: *cid, bytes: serde_bytes::ByteBuf::from(self.parts[cid].clone()) })
                    .collect();
                return vec![(from, Message::Parts { topic, id, parts }.encode())];
            }
            Message::WantParts { topic, id, cids } => {
                // Parts that do not hash to what was asked, or a made-up manifest.
                let parts = cids
                    .iter()
                    .map(|cid| {
                        let mut wire = Adversary::wire(&self.block(&topic, false));
                        wire.cid = *cid;
                        wire
                    })
                    .collect();
                return vec![(from, Message::Parts { topic, id, parts }.encode())];
            }
            _ => return Vec::new(),
        };
        let answer = |blocks: Vec<WireBlock>, frontier: Vec<Cid>, id: u64| Message::Blocks {
            topic: topic.clone(),
            id,
            blocks,
            more: false,
            frontier,
            snapshots: Vec::new(),
            snapshot_pending: false,
        };
        if self.byzantine && !self.overheard.is_empty() && self.rng.random_bool(0.5) {
            let blocks = (0..self.rng.random_range(1..4)).filter_map(|_| self.forgery(&topic)).collect();
            return vec![(from, answer(blocks, Vec::new(), id).encode())];
        }
        let message = match self.rng.random_range(0..8) {
            7 => Message::Blocks {
                topic: topic.clone(),
                id,
                blocks: Vec::new(),
                more: false,
                frontier: Vec::new(),
                snapshots: (0..2).map(|_| self.fake_cid()).collect(),
                // A snapshot said to be on its way that never comes.
                snapshot_pending: self.rng.random_bool(0.5),
            },
            0 => return Vec::new(),
            1 => {
                let blocks =
                    (0..self.rng.random_range(1..20)).map(|_| Adversary::wire(&self.block(&topic, true))).collect();
                answer(blocks, Vec::new(), id)
            }
            2 => {
                let blocks =
                    (0..self.rng.random_range(1..4)).map(|_| Adversary::wire(&self.block(&topic, false))).collect();
                answer(blocks, Vec::new(), id)
            }
            3 => answer(Vec::new(), (0..16).map(|_| self.fake_cid()).collect(), id),
            4 => return vec![(from, (0..64).map(|_| self.rng.random()).collect())],
            5 => {
                let mut wire = Adversary::wire(&self.block(&topic, false));
                let last = wire.bytes.len() - 1;
                wire.bytes[last] ^= 0x55;
                answer(vec![wire], Vec::new(), id)
            }
            _ => answer(vec![Adversary::wire(&self.block(&topic, false))], Vec::new(), id.wrapping_add(1)),
        };
        vec![(from, message.encode())]
    }

    /// What the adversary sends on its own: `None` as recipient publishes to everyone.
    pub(super) fn tick(&mut self) -> Vec<(Option<usize>, Vec<u8>)> {
        if self.silent || !self.rng.random_bool(0.3) {
            return Vec::new();
        }
        if !self.lies.is_empty() && self.rng.random_bool(0.3) {
            // A real block a lie is about, announced so replicas that lack it ask for it here.
            let lie = &self.lies[self.rng.random_range(0..self.lies.len())];
            let message = Message::Heads {
                topic: lie.topic.clone(),
                heads: vec![lie.head],
                blocks: Vec::new(),
                unawaited: false,
            };
            return vec![(None, message.encode())];
        }
        let topic = self.topic();
        let mut heads: Vec<Head> = (0..self.rng.random_range(1..8))
            .map(|_| Head { cid: self.fake_cid(), height: self.rng.random_range(1..1000) })
            .collect();
        if !self.learned.is_empty() && self.rng.random_bool(0.5) {
            let cid = self.learned[self.rng.random_range(0..self.learned.len())];
            heads.push(Head { cid, height: 1 });
        }
        // Announcements carry blocks of their own now and then: orphans above invented parents,
        // valid junk, or tampered bytes.
        let mut blocks = Vec::new();
        if self.rng.random_bool(0.5) {
            for _ in 0..self.rng.random_range(1..4) {
                let orphan = self.rng.random_bool(0.5);
                let mut wire = Adversary::wire(&self.block(&topic, orphan));
                if self.rng.random_bool(0.3) {
                    let last = wire.bytes.len() - 1;
                    wire.bytes[last] ^= 0x55;
                }
                blocks.push(wire);
            }
        }
        if self.byzantine && !self.overheard.is_empty() {
            for _ in 0..self.rng.random_range(1..4) {
                if let Some(wire) = self.forgery(&topic) {
                    heads.push(Head { cid: wire.cid, height: self.rng.random_range(1..1000) });
                    blocks.push(wire);
                }
            }
        }
        let mut out = vec![(None, Message::Heads { topic: topic.clone(), heads, blocks, unawaited: false }.encode())];
        if self.rng.random_bool(0.3) {
            let to = self.rng.random_range(0..self.replicas);
            let orphan = self.rng.random_bool(0.5);
            let blocks = vec![Adversary::wire(&self.block(&topic, orphan))];
            let unasked = Message::Blocks {
                topic,
                id: self.rng.random(),
                blocks,
                more: false,
                frontier: Vec::new(),
                snapshots: Vec::new(),
                snapshot_pending: false,
            };
            out.push((Some(to), unasked.encode()));
        }
        out
    }
}
