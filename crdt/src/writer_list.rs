//! Writer lists: who may write a topic created with mode `writers`.
//!
//! The owner changes the list with blocks of the topic's own DAG whose delta carries `grants`
//! (each grant's id is its block's CID) and `revokes` (each names a writer and one of its grant
//! ids). The list a block is judged by is the list of its causal past: every list change below
//! the block, folded as an add-wins set (a writer is on the list while one of its grants is not
//! revoked), so a revocation removes the grants its owner had seen and a grant concurrent with it
//! stands. Every replica that holds a block holds its whole past, so every replica decides alike.
//!
//! A block's *clock* is the set of maximal list changes in its causal past, the block itself
//! included when it changes the list (then its clock is just itself, since every change below it
//! is in its past). A block's list is the fold over the changes its clock reaches through each
//! change's own past clock. Clocks are kept in the `writers` column family for every block
//! whose clock is not empty (`topic ++ 'c' ++ cid`), and each list change with its past clock
//! (`topic ++ 'l' ++ cid`); neither is pruned by compaction, and a snapshot of a writers topic
//! carries both, so a replica bootstrapped from one judges later blocks like the others.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use canopy_dag::{AuthorId, Block, Cid, TopicId};
use rocksdb::{DB, WriteBatch};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::access::Refusal;
use crate::delta::Delta;
use crate::error::StorageError;
use crate::schema::CF_WRITERS;

/// Record kind of a block's clock.
pub(crate) const CLOCK: u8 = b'c';
/// Record kind of a list change.
pub(crate) const CHANGE: u8 = b'l';
/// Clocks remembered in memory before the cache starts over (it is a cache: the column family
/// has them all).
const CLOCKS_CACHED_MAX: usize = 1 << 16;
/// Writer lists remembered per topic, by clock.
const LISTS_CACHED_MAX: usize = 256;

/// A set of list changes, sorted and unique.
pub(crate) type Clock = Arc<[Cid]>;

/// One list change as stored: the clock below it and what it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListChange {
    past: Vec<Cid>,
    grants: Vec<AuthorId>,
    revokes: Vec<(AuthorId, Cid)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireChange {
    past: Vec<Cid>,
    grants: Vec<ByteBuf>,
    revokes: Vec<(ByteBuf, Cid)>,
}

impl ListChange {
    fn encode(&self) -> Vec<u8> {
        let wire = WireChange {
            past: self.past.clone(),
            grants: self.grants.iter().map(|a| ByteBuf::from(a.as_bytes().to_vec())).collect(),
            revokes: self.revokes.iter().map(|(a, id)| (ByteBuf::from(a.as_bytes().to_vec()), *id)).collect(),
        };
        serde_ipld_dagcbor::to_vec(&wire).expect("encoding into memory cannot fail")
    }

    fn decode(bytes: &[u8]) -> Result<ListChange, String> {
        let wire: WireChange = serde_ipld_dagcbor::from_slice(bytes).map_err(|e| e.to_string())?;
        let author = |bytes: &ByteBuf| -> Result<AuthorId, String> {
            let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| "a writer is not 32 bytes".to_string())?;
            AuthorId::from_bytes(bytes).map_err(|e| e.to_string())
        };
        Ok(ListChange {
            past: wire.past,
            grants: wire.grants.iter().map(author).collect::<Result<_, _>>()?,
            revokes: wire.revokes.iter().map(|(a, id)| Ok((author(a)?, *id))).collect::<Result<_, String>>()?,
        })
    }
}

/// A writer list: each writer with its grants still standing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriterList {
    grants: BTreeMap<AuthorId, BTreeSet<Cid>>,
}

impl WriterList {
    /// Whether `author` is on the list.
    pub fn contains(&self, author: &AuthorId) -> bool {
        self.grants.contains_key(author)
    }

    /// The writers, in key order.
    pub fn writers(&self) -> Vec<AuthorId> {
        self.grants.keys().copied().collect()
    }

    /// The grants of `writer` still standing: what a revocation of it removes.
    pub fn grants_of(&self, writer: &AuthorId) -> Vec<Cid> {
        self.grants.get(writer).map(|ids| ids.iter().copied().collect()).unwrap_or_default()
    }
}

/// Checks a record read from disk or from a snapshot: a clock is a list of CIDs, a change
/// decodes. Returns why it does not.
pub(crate) fn check_record(kind: u8, value: &[u8]) -> Result<(), String> {
    match kind {
        CLOCK => decode_cids(value).map(|_| ()),
        CHANGE => ListChange::decode(value).map(|_| ()),
        other => Err(format!("unknown writer-list record kind {other}")),
    }
}

fn decode_cids(mut bytes: &[u8]) -> Result<Vec<Cid>, String> {
    let mut cids = Vec::new();
    while !bytes.is_empty() {
        cids.push(Cid::read_bytes(&mut bytes).map_err(|e| e.to_string())?);
    }
    Ok(cids)
}

fn encode_cids(cids: &[Cid]) -> Vec<u8> {
    crate::schema::encode_cids(cids)
}

/// The key of a writer-list record.
pub(crate) fn record_key(topic: TopicId, kind: u8, cid: &Cid) -> Vec<u8> {
    let mut key = topic.prefix().to_vec();
    key.push(kind);
    key.extend_from_slice(&cid.to_bytes());
    key
}

/// A writers topic's list changes and clocks, as its writer thread holds them.
pub(crate) struct Lists {
    topic: TopicId,
    owner: AuthorId,
    /// Every list change of the topic: they are few (only the owner makes them).
    changes: HashMap<Cid, ListChange>,
    clocks: HashMap<Cid, Clock>,
    lists: HashMap<Clock, Arc<WriterList>>,
}

impl Lists {
    /// Reads a topic's list changes.
    pub fn load(db: &DB, topic: TopicId, owner: AuthorId) -> Result<Lists, StorageError> {
        let mut lists = Lists { topic, owner, changes: HashMap::new(), clocks: HashMap::new(), lists: HashMap::new() };
        lists.reload(db)?;
        Ok(lists)
    }

    /// Reads the list changes again, after a snapshot merge added some.
    pub fn reload(&mut self, db: &DB) -> Result<(), StorageError> {
        let cf = db.cf_handle(CF_WRITERS).expect("every canopy column family is opened with the database");
        let mut prefix = self.topic.prefix().to_vec();
        prefix.push(CHANGE);
        self.changes.clear();
        self.clocks.clear();
        self.lists.clear();
        for item in db.prefix_iterator_cf(cf, &prefix) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let cid = Cid::try_from(&key[prefix.len()..])
                .map_err(|e| StorageError::Corrupt(format!("writer-list record key: {e}")))?;
            let change =
                ListChange::decode(&value).map_err(|e| StorageError::Corrupt(format!("writer-list change: {e}")))?;
            self.changes.insert(cid, change);
        }
        Ok(())
    }

    /// Forgets cached clocks when there are many; called between rounds, never inside one
    /// (a round's blocks find their parents' clocks in the cache before they are on disk).
    pub fn trim(&mut self) {
        if self.clocks.len() > CLOCKS_CACHED_MAX {
            self.clocks.clear();
        }
        if self.lists.len() > LISTS_CACHED_MAX {
            self.lists.clear();
        }
    }

    /// The clock of an applied block (or one recorded earlier in this round).
    fn clock_of(&mut self, db: &DB, cid: &Cid) -> Result<Clock, StorageError> {
        if let Some(clock) = self.clocks.get(cid) {
            return Ok(clock.clone());
        }
        let cf = db.cf_handle(CF_WRITERS).expect("every canopy column family is opened with the database");
        let clock: Clock = match db.get_pinned_cf(cf, record_key(self.topic, CLOCK, cid))? {
            Some(bytes) => {
                decode_cids(&bytes).map_err(|e| StorageError::Corrupt(format!("writer-list clock: {e}")))?.into()
            }
            None => Arc::from([]),
        };
        self.clocks.insert(*cid, clock.clone());
        Ok(clock)
    }

    /// The clock below a block with these parents: the maximal changes of their clocks.
    pub fn past_of(&mut self, db: &DB, links: &[Cid]) -> Result<Clock, StorageError> {
        let mut union: BTreeSet<Cid> = BTreeSet::new();
        let mut first: Option<Clock> = None;
        for parent in links {
            let clock = self.clock_of(db, parent)?;
            if first.is_none() {
                first = Some(clock.clone());
            }
            union.extend(clock.iter().copied());
        }
        match first {
            Some(clock) if clock.len() == union.len() => Ok(clock),
            _ => Ok(self.maximal(union)),
        }
    }

    /// The changes of `set` that are not below another change of `set`.
    fn maximal(&self, set: BTreeSet<Cid>) -> Clock {
        if set.len() <= 1 {
            return set.into_iter().collect();
        }
        let mut below: HashSet<Cid> = HashSet::new();
        let mut stack: Vec<Cid> =
            set.iter().filter_map(|cid| self.changes.get(cid)).flat_map(|c| c.past.iter().copied()).collect();
        while let Some(cid) = stack.pop() {
            if below.insert(cid)
                && let Some(change) = self.changes.get(&cid)
            {
                stack.extend(change.past.iter().copied());
            }
        }
        set.into_iter().filter(|cid| !below.contains(cid)).collect()
    }

    /// The writer list of a clock: the fold of every change it reaches.
    pub fn list_at(&mut self, clock: &Clock) -> Arc<WriterList> {
        if let Some(list) = self.lists.get(clock) {
            return list.clone();
        }
        let mut seen: HashSet<Cid> = HashSet::new();
        let mut stack: Vec<Cid> = clock.to_vec();
        let mut granted: BTreeMap<AuthorId, BTreeSet<Cid>> = BTreeMap::new();
        let mut revoked: HashSet<(AuthorId, Cid)> = HashSet::new();
        while let Some(cid) = stack.pop() {
            if !seen.insert(cid) {
                continue;
            }
            let Some(change) = self.changes.get(&cid) else { continue };
            for writer in &change.grants {
                granted.entry(*writer).or_default().insert(cid);
            }
            revoked.extend(change.revokes.iter().copied());
            stack.extend(change.past.iter().copied());
        }
        for (writer, ids) in &mut granted {
            ids.retain(|id| !revoked.contains(&(*writer, *id)));
        }
        granted.retain(|_, ids| !ids.is_empty());
        let list = Arc::new(WriterList { grants: granted });
        self.lists.insert(clock.clone(), list.clone());
        list
    }

    /// Whether a block by `author` carrying `delta`, made over `past`, may be applied.
    pub fn decide(&mut self, author: &AuthorId, delta: &Delta, past: &Clock) -> Result<(), Refusal> {
        if *author == self.owner {
            return Ok(());
        }
        if delta.changes_writers() {
            return Err(Refusal::NotListOwner { author: *author, owner: self.owner });
        }
        if self.list_at(past).contains(author) {
            Ok(())
        } else {
            Err(Refusal::NotWriter { author: *author, owner: self.owner })
        }
    }

    /// Records an accepted block made over `past`: its clock, and the change it makes to the
    /// list, if any. The records go into `batch` and the cache at once, so the block's children
    /// in the same round find its clock.
    pub fn record(&mut self, batch: &mut WriteBatch, db: &DB, block: &Block, delta: &Delta, past: Clock) {
        self.record_change(batch, db, block.cid(), (&delta.grants, &delta.revokes), past);
    }

    /// [`Lists::record`] from the block's CID and list change, `(grants, revokes)`.
    pub fn record_change(
        &mut self,
        batch: &mut WriteBatch,
        db: &DB,
        cid: Cid,
        (grants, revokes): (&[AuthorId], &[(AuthorId, Cid)]),
        past: Clock,
    ) {
        let cf = db.cf_handle(CF_WRITERS).expect("every canopy column family is opened with the database");
        let clock: Clock = if !grants.is_empty() || !revokes.is_empty() {
            let change = ListChange { past: past.to_vec(), grants: grants.to_vec(), revokes: revokes.to_vec() };
            batch.put_cf(cf, record_key(self.topic, CHANGE, &cid), change.encode());
            self.changes.insert(cid, change);
            Arc::from([cid])
        } else {
            past
        };
        if !clock.is_empty() {
            batch.put_cf(cf, record_key(self.topic, CLOCK, &cid), encode_cids(&clock));
        }
        self.clocks.insert(cid, clock);
    }

    /// The topic's owner.
    pub fn owner(&self) -> AuthorId {
        self.owner
    }

    /// The writer list at `heads`.
    pub fn list_at_heads(&mut self, db: &DB, heads: &[Cid]) -> Result<Arc<WriterList>, StorageError> {
        let clock = self.past_of(db, heads)?;
        Ok(self.list_at(&clock))
    }
}
