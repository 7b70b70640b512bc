//! Local writes: queued requests of a topic become as few blocks as the protocol's limits
//! allow, each linking at most `LINKS_MAX` heads.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use canopy_dag::{AuthorId, BLOCK_BYTES_MAX, Block, Cid, Height, LINKS_MAX, TopicId};
use crossbeam_channel::Sender;
use rocksdb::WriteBatch;

use super::documents::{self, Plan};
use super::{Committed, Context, TopicState, WriteRequest, apply_ready, read_topic_documents, read_topic_rows};
use crate::access::Refusal;
use crate::counter;
use crate::delta::DELTA_OPS_MAX;
use crate::doc_row::Documents;
use crate::error::{StorageError, WriteError};
use crate::row::{Element, Row};
use crate::row_change::{Notice, RowChanges};
use crate::schema::CF_HEADS;
use crate::types::{Change, Commit, Op};
use crate::writer_list::Lists;

/// Upper bounds on the encoded size of one add, one remove, one expiry and one link, and on
/// everything else a block holds. Local deltas are cut by these estimates, so a block built from a cut
/// never exceeds [`BLOCK_BYTES_MAX`].
const ADD_BYTES_OVERHEAD: usize = 12;
const REMOVE_BYTES_OVERHEAD: usize = 50;
/// An expiry names its add's key again, with the time.
const EXPIRY_BYTES_OVERHEAD: usize = 16;
const LINK_BYTES: usize = 42;
const BLOCK_BYTES_OVERHEAD: usize = 96;
/// Most bytes of delta one local block carries: whatever its links, it stays within the block
/// limit every peer applies.
const DELTA_BYTES_MAX: usize = BLOCK_BYTES_MAX - LINKS_MAX * LINK_BYTES - BLOCK_BYTES_OVERHEAD;
/// Most empty blocks one local commit makes to merge heads beyond [`LINKS_MAX`]; heads left
/// over are merged by the next commits.
const MERGE_BLOCKS_PER_COMMIT_MAX: usize = 8;

type Reply = Sender<Result<Committed, WriteError>>;

/// A key, the value a cut leaves it (`None`: deleted) and when that value expires.
type KeyValue<'a> = (&'a [u8], Option<Cow<'a, [u8]>>, Option<u64>);

/// A block's change to a writer list: `(grants, revokes)`.
type ListChange<'a> = (&'a [AuthorId], &'a [(AuthorId, Cid)]);

/// The writer-list change of a block that makes none.
const NO_CHANGE: ListChange<'static> = (&[], &[]);

/// A topic's share of a group commit, ready to publish once the batch is written.
struct TopicCommit {
    topic: TopicId,
    /// The topic's name, which its blocks' signatures bind.
    name: String,
    replies: Vec<(Reply, Committed)>,
    /// Heads after every block of the commit.
    heads: BTreeMap<Cid, Height>,
    key_count: u64,
    changes: Vec<Change>,
    /// Blocks made, in order (merge blocks included).
    made: Vec<Cid>,
    /// The earliest expiry among the elements written.
    expires: Option<u64>,
    /// What the commit no longer needs once its batch is written (the requests, the rows and
    /// documents it read and made): freed after the writers hear back, so a caller waiting on
    /// the reply does not wait for the frees too.
    spent: Vec<Box<dyn std::any::Any>>,
}

/// Commits queued local writes: as few deltas per topic as the block limits allow, one
/// RocksDB write for the round.
pub(super) fn commit_local(context: &Context, topics: &mut HashMap<TopicId, TopicState>, group: Vec<WriteRequest>) {
    if group.is_empty() {
        return;
    }
    let mut by_topic: BTreeMap<TopicId, Vec<WriteRequest>> = BTreeMap::new();
    let mut bytes_by_topic: HashMap<TopicId, u64> = HashMap::new();
    for request in group {
        *bytes_by_topic.entry(request.topic).or_default() += request.bytes() as u64;
        by_topic.entry(request.topic).or_default().push(request);
    }
    let mut batch = WriteBatch::default();
    let mut commits = Vec::new();
    for (topic, requests) in by_topic {
        let Some(state) = topics.get_mut(&topic) else {
            for request in requests {
                let _ = request.reply.send(Err(WriteError::TopicDropped));
            }
            continue;
        };
        if context.is_poisoned() {
            for request in requests {
                let _ = request.reply.send(Err(WriteError::Poisoned));
            }
            continue;
        }
        match prepare_local(context, state, requests, &mut batch) {
            Ok(commit) => commits.push(commit),
            Err((replies, error)) => {
                for reply in replies {
                    let _ = reply.send(Err(WriteError::Storage(error.clone())));
                }
            }
        }
    }
    if commits.iter().any(|c| !c.made.is_empty())
        && let Err(error) = context.write(batch)
    {
        for commit in commits {
            for (reply, _) in commit.replies {
                let _ = reply.send(Err(WriteError::Storage(error.clone())));
            }
        }
        return;
    }
    for commit in commits {
        let state = topics.get_mut(&commit.topic).expect("committed topics are registered");
        state.heads = commit.heads;
        state.key_count = commit.key_count;
        if let Some(at) = commit.expires {
            state.expires_at(at);
        }
        state.grew(context, commit.made.len() as u64, bytes_by_topic.get(&commit.topic).copied().unwrap_or(0));
        state.publish();
        state.notify(commit.changes);
        // A received block may have waited for a block this replica has just made itself (an
        // identical block made by another replica from the same heads and delta). It is applied
        // before the writers hear back, so they see it.
        if !state.waiting.is_empty() {
            let ready: Vec<Cid> = commit.made.iter().flat_map(|cid| state.release_children(cid)).collect();
            if !ready.is_empty() {
                let _ = apply_ready(context, state, ready);
                state.publish();
            }
        }
        // A declared or dropped index shows in the topic's indexes once the writer hears back.
        if state.indexes.declarations_changed.load(std::sync::atomic::Ordering::Relaxed)
            && let Err(error) = super::indexing::reconcile(context, state)
        {
            tracing::warn!(topic = %state.shared.name, %error, "reconciling the topic's indexes failed");
        }
        for (reply, committed) in commit.replies {
            let _ = reply.send(Ok(committed));
        }
    }
    context.send_journal();
}

/// The estimated delta bytes and operations one request adds to a cut, given the rows its keys
/// had when the group started (a row only shrinks to one element within a group), the
/// documents it changes as the group found them (and those more than one change of the group
/// names, `repeated`), and the fields earlier requests of the group set in each of those
/// (`sets`, which the request's own are added to).
fn request_cost<'a>(
    request: &'a WriteRequest,
    rows: &HashMap<&[u8], Row>,
    (documents, repeated): (&Documents, &[&[u8]]),
    sets: &mut HashMap<&'a [u8], usize>,
) -> (usize, usize) {
    let mut bytes = 0;
    let mut ops = 0;
    for change in &request.docs {
        let stored = documents.get(&change.prefix);
        // Only a document more than one change of the group names can have fields set since.
        let set_since = match repeated.binary_search(&change.prefix.as_slice()) {
            Ok(_) => {
                let earlier = sets.entry(change.prefix.as_slice()).or_default();
                std::mem::replace(earlier, *earlier + change.set.len())
            }
            Err(_) => 0,
        };
        let found = documents::removes_bound(change, stored);
        // Tombstones of stored elements name a stored field; those of fields set since, any.
        let longest = stored.and_then(|doc| doc.names().map(<[u8]>::len).max()).unwrap_or(0);
        bytes += found * (change.prefix.len() + longest + REMOVE_BYTES_OVERHEAD);
        bytes += set_since * (change.prefix.len() + crate::doc::FIELD_BYTES_MAX + REMOVE_BYTES_OVERHEAD);
        ops += found + set_since;
        for (name, value) in &change.set {
            bytes += change.prefix.len() + name.len() + value.len() + ADD_BYTES_OVERHEAD;
            bytes +=
                if change.expires.is_some() { change.prefix.len() + name.len() + EXPIRY_BYTES_OVERHEAD } else { 0 };
            ops += 1;
        }
    }
    for op in &request.ops {
        let key = op.key();
        let removes = rows.get(key).map_or(0, Row::len).max(1);
        bytes += removes * (key.len() + REMOVE_BYTES_OVERHEAD);
        ops += removes;
        if let Some(value) = op.value_bytes() {
            bytes += key.len() + value + ADD_BYTES_OVERHEAD;
            if matches!(op, Op::PutUntil(..)) {
                bytes += key.len() + EXPIRY_BYTES_OVERHEAD;
            }
            ops += 1;
        }
    }
    (bytes, ops)
}

/// The heads a new block links: the highest first, at most [`LINKS_MAX`], so its height is
/// still one above everything this replica has seen.
fn select_links(heads: &BTreeMap<Cid, Height>) -> (Vec<Cid>, Height) {
    let mut by_height: Vec<(Height, Cid)> = heads.iter().map(|(cid, height)| (*height, *cid)).collect();
    by_height.sort_unstable_by(|a, b| b.cmp(a));
    by_height.truncate(LINKS_MAX);
    let height = by_height.first().map_or(0, |(height, _)| *height) + 1;
    (by_height.into_iter().map(|(_, cid)| cid).collect(), height)
}

/// Builds a block over `heads`, adds it to `batch` and makes it the head above the heads it
/// links. In a topic with a writer list the block's clock is recorded too; `change` is the
/// list change the block makes, as `(grants, revokes)`.
fn make_block(
    context: &Context,
    (topic, name): (TopicId, &str),
    heads: &mut BTreeMap<Cid, Height>,
    (payload, change): (Vec<u8>, ListChange<'_>),
    lists: Option<&mut Lists>,
    batch: &mut WriteBatch,
) -> Result<Block, StorageError> {
    let (links, height) = select_links(heads);
    let block = Block::build(name, links, height, payload, &context.signer)
        .map_err(|error| StorageError::Corrupt(format!("cannot build a local block: {error}")))?;
    if let Some(lists) = lists {
        let past = lists.past_of(&context.db, block.links())?;
        lists.record_change(batch, &context.db, block.cid(), change, past);
    }
    for parent in block.links() {
        heads.remove(parent);
    }
    heads.insert(block.cid(), height);
    context.blocks.put(batch, topic, &block);
    Ok(block)
}

/// Makes one block that changes a topic's writer list: grants `writer`, or revokes every grant
/// of it standing at the heads. Returns `None`, writing nothing, when the list already says so.
pub(super) fn change_writers(
    context: &Context,
    state: &mut TopicState,
    writer: AuthorId,
    grant: bool,
) -> Result<Option<Commit>, WriteError> {
    if context.is_poisoned() {
        return Err(WriteError::Poisoned);
    }
    let author = context.signer.author();
    let Some(lists) = state.lists.as_mut() else {
        return Err(WriteError::Forbidden(Refusal::NoWriterList));
    };
    if author != lists.owner() {
        return Err(WriteError::Forbidden(Refusal::NotListOwner { author, owner: lists.owner() }));
    }
    let (links, _) = select_links(&state.heads);
    let list = lists.list_at_heads(&context.db, &links)?;
    let (grants, revokes): (Vec<AuthorId>, Vec<(AuthorId, Cid)>) = if grant {
        if list.contains(&writer) {
            return Ok(None);
        }
        (vec![writer], Vec::new())
    } else {
        let revokes: Vec<(AuthorId, Cid)> = list.grants_of(&writer).into_iter().map(|id| (writer, id)).collect();
        if revokes.is_empty() {
            return Ok(None);
        }
        (Vec::new(), revokes)
    };
    let topic = state.shared.id;
    let mut heads = state.heads.clone();
    let mut batch = WriteBatch::default();
    let payload = crate::delta::encode_list_change(&grants, &revokes);
    let bytes = payload.len() as u64;
    let change = (grants.as_slice(), revokes.as_slice());
    let block =
        make_block(context, (topic, &state.shared.name), &mut heads, (payload, change), Some(lists), &mut batch)?;
    write_heads(context, topic, &state.heads, &heads, &mut batch);
    if let Err(error) = context.write(batch) {
        let _ = lists.reload(&context.db);
        return Err(WriteError::Storage(error));
    }
    state.heads = heads;
    state.grew(context, 1, bytes);
    state.publish();
    Ok(Some(Commit { cid: block.cid(), height: block.height() }))
}

/// Adds to `batch` the change of a topic's stored heads from `old` to `new`.
fn write_heads(
    context: &Context,
    topic: TopicId,
    old: &BTreeMap<Cid, Height>,
    new: &BTreeMap<Cid, Height>,
    batch: &mut WriteBatch,
) {
    let heads_cf = context.cf(CF_HEADS);
    for cid in old.keys().filter(|cid| !new.contains_key(*cid)) {
        batch.delete_cf(heads_cf, topic.key(&cid.to_bytes()));
    }
    for (cid, height) in new.iter().filter(|(cid, _)| !old.contains_key(*cid)) {
        batch.put_cf(heads_cf, topic.key(&cid.to_bytes()), height.to_be_bytes());
    }
}

/// Builds one topic's blocks from its queued requests and adds their writes to `batch`.
///
/// Requests are cut, in submission order, into deltas that fit one block each (a request is
/// never split, so a batch stays atomic; a request too large for any block is refused). A local
/// put supersedes every element of its key this replica knows (they are all in the new block's
/// causal past), so the delta tombstones them: rows stay one element long under sequential
/// overwrites on every replica, and deletes stay exact.
fn prepare_local(
    context: &Context,
    state: &mut TopicState,
    requests: Vec<WriteRequest>,
    batch: &mut WriteBatch,
) -> Result<TopicCommit, (Vec<Reply>, StorageError)> {
    let mut lists = state.lists.take();
    let prepared = prepare_cuts(context, state, lists.as_mut(), requests, batch);
    state.lists = lists;
    prepared
}

/// [`prepare_local`] with the topic's writer list, if it has one, taken out of its state.
fn prepare_cuts(
    context: &Context,
    state: &TopicState,
    mut lists: Option<&mut Lists>,
    requests: Vec<WriteRequest>,
    batch: &mut WriteBatch,
) -> Result<TopicCommit, (Vec<Reply>, StorageError)> {
    let topic = state.shared.id;
    let mut commit = TopicCommit {
        topic,
        name: state.shared.name.clone(),
        replies: Vec::new(),
        heads: state.heads.clone(),
        key_count: state.key_count,
        changes: Vec::new(),
        made: Vec::new(),
        expires: None,
        spent: Vec::new(),
    };
    if let Some(lists) = lists.as_deref_mut() {
        // A writer not on the list at the heads it would build on is refused here, as every
        // peer would refuse its block.
        let author = context.signer.author();
        let (links, _) = select_links(&state.heads);
        let list = lists
            .list_at_heads(&context.db, &links)
            .map_err(|error| (requests.iter().map(|r| r.reply.clone()).collect(), error))?;
        if author != lists.owner() && !list.contains(&author) {
            let refusal = Refusal::NotWriter { author, owner: lists.owner() };
            for request in requests {
                let _ = request.reply.send(Err(WriteError::Forbidden(refusal.clone())));
            }
            return Ok(commit);
        }
    }
    let mut keys: Vec<&[u8]> = requests.iter().flat_map(|r| r.ops.iter().map(Op::key)).collect();
    keys.sort_unstable();
    keys.dedup();
    let full_keys: Vec<Vec<u8>> = keys.iter().map(|key| topic.key(key)).collect();
    let (loaded, documents) = match read_topic_rows(context, state, &full_keys) {
        Ok(read) => read,
        Err(error) => return Err((requests.iter().map(|r| r.reply.clone()).collect(), error)),
    };
    let mut rows: HashMap<&[u8], Row> = keys.into_iter().zip(loaded).collect();
    // The documents changed whole, each record read once.
    let mut prefixes: Vec<&[u8]> = requests.iter().flat_map(|r| r.docs.iter().map(|c| c.prefix.as_slice())).collect();
    prefixes.sort_unstable();
    let mut repeated: Vec<&[u8]> = prefixes.windows(2).filter(|pair| pair[0] == pair[1]).map(|pair| pair[0]).collect();
    repeated.dedup();
    prefixes.dedup();
    let mut changed_documents = Documents::new();
    if !prefixes.is_empty() {
        let full_keys: Vec<Vec<u8>> = prefixes.iter().map(|prefix| topic.key(prefix)).collect();
        match read_topic_documents(context, state, &full_keys) {
            Ok(read) => changed_documents = read,
            Err(error) => return Err((requests.iter().map(|r| r.reply.clone()).collect(), error)),
        }
    }
    let mut sets = HashMap::new();

    let mut rows_changed = context.row_changes(state, context.clock.now());
    rows_changed.know_documents(documents);
    let mut cut: Vec<&WriteRequest> = Vec::new();
    let (mut cut_bytes, mut cut_ops) = (0, 0);
    for request in &requests {
        let (bytes, ops) = request_cost(request, &rows, (&changed_documents, &repeated), &mut sets);
        if bytes > DELTA_BYTES_MAX || ops > DELTA_OPS_MAX {
            let _ = request.reply.send(Err(WriteError::TooLarge { bytes, max: DELTA_BYTES_MAX }));
            continue;
        }
        if cut_bytes + bytes > DELTA_BYTES_MAX || cut_ops + ops > DELTA_OPS_MAX {
            let read = (&mut rows, &mut changed_documents, repeated.as_slice());
            commit_cut(context, &mut commit, read, (&cut, lists.as_deref_mut()), &mut rows_changed, batch)
                .map_err(|e| (requests.iter().map(|r| r.reply.clone()).collect(), e))?;
            cut.clear();
            (cut_bytes, cut_ops) = (0, 0);
        }
        cut.push(request);
        cut_bytes += bytes;
        cut_ops += ops;
    }
    let read = (&mut rows, &mut changed_documents, repeated.as_slice());
    commit_cut(context, &mut commit, read, (&cut, lists), &mut rows_changed, batch)
        .map_err(|e| (requests.iter().map(|r| r.reply.clone()).collect(), e))?;

    write_heads(context, topic, &state.heads, &commit.heads, batch);
    let sealed = rows_changed.seal(batch);
    (commit.key_count, commit.changes, commit.expires) = (sealed.key_count, sealed.changes, sealed.next_expiry);
    let rows: Vec<Row> = rows.into_values().collect();
    commit.spent = vec![Box::new(rows), Box::new(changed_documents), Box::new(rows_changed.take_documents())];
    commit.spent.push(Box::new(requests));
    Ok(commit)
}

/// Turns one cut of requests into one block (after merge blocks when there are more heads than
/// one block may link) and records its replies.
fn commit_cut<'a>(
    context: &Context,
    commit: &mut TopicCommit,
    (rows, documents, repeated): (&mut HashMap<&'a [u8], Row>, &mut Documents, &[&[u8]]),
    (cut, mut lists): (&[&'a WriteRequest], Option<&mut Lists>),
    rows_changed: &mut RowChanges,
    batch: &mut WriteBatch,
) -> Result<(), StorageError> {
    if cut.is_empty() {
        return Ok(());
    }
    let topic = commit.topic;
    // The last operation on each key, in key order: a stable sort keeps each key's operations
    // in submission order, and the last of each run wins. Additions to a counter entry (only
    // additions reach one) add up over the entry's current total.
    let mut ops: Vec<&'a Op> = cut.iter().flat_map(|request| request.ops.iter()).collect();
    ops.sort_by(|a, b| a.key().cmp(b.key()));
    let mut last: Vec<KeyValue<'a>> = Vec::with_capacity(ops.len());
    for op in ops {
        let key = op.key();
        let (value, expires) = match op {
            Op::Put(_, value) => (Some(Cow::Borrowed(value.as_slice())), None),
            Op::PutUntil(_, value, at) => (Some(Cow::Borrowed(value.as_slice())), Some(*at)),
            Op::Delete(_) => (None, None),
            Op::Add(_, n) => {
                let base = match last.last() {
                    Some((previous, Some(total), _)) if *previous == key => counter::decode_total(total),
                    _ => rows[key].winner().and_then(|element| counter::decode_total(&element.value)),
                };
                (Some(Cow::Owned(counter::encode_total(base.unwrap_or(0).saturating_add(*n)).to_vec())), None)
            }
        };
        match last.last_mut() {
            Some(previous) if previous.0 == key => (previous.1, previous.2) = (value, expires),
            _ => last.push((key, value, expires)),
        }
    }
    // Elements expired by now are neither tombstoned nor counted as live: they are gone
    // already, whether or not their collection has run, so what a write makes does not depend
    // on when it did.
    let now = context.clock.now();
    let deleted = deleted_flags(cut, rows, now);
    let mut adds: Vec<(&[u8], &[u8])> = Vec::with_capacity(last.len());
    let mut removes: Vec<(&[u8], Cid)> = Vec::new();
    let mut expiries: Vec<(&[u8], u64)> = Vec::new();
    for (key, value, expires) in &last {
        removes.extend(rows[key].elements().iter().filter(|e| !e.expired(now)).map(|e| (*key, e.id)));
        if let Some(value) = value {
            adds.push((key, value.as_ref()));
            if let Some(at) = expires {
                expiries.push((key, *at));
            }
        }
    }
    let plan = Plan::new(cut, documents, now, repeated);
    let (doc_adds, doc_removes, doc_expiries) = plan.delta();
    if !doc_adds.is_empty() || !doc_removes.is_empty() {
        let sort = !adds.is_empty();
        adds.extend(doc_adds);
        removes.extend(doc_removes);
        expiries.extend(doc_expiries);
        if sort {
            adds.sort_by(|a, b| a.0.cmp(b.0));
            expiries.sort_by(|a, b| a.0.cmp(b.0));
        }
    }
    if adds.is_empty() && removes.is_empty() {
        for (request, deleted) in cut.iter().zip(deleted) {
            commit.replies.push((request.reply.clone(), Committed { commit: None, deleted }));
        }
        return Ok(());
    }
    removes.sort_unstable();

    let mut merges = 0;
    while commit.heads.len() > LINKS_MAX && merges < MERGE_BLOCKS_PER_COMMIT_MAX {
        let payload = (crate::delta::encode(&[], &[], &[]), NO_CHANGE);
        let merge =
            make_block(context, (topic, &commit.name), &mut commit.heads, payload, lists.as_deref_mut(), batch)?;
        commit.made.push(merge.cid());
        merges += 1;
    }
    let payload = (crate::delta::encode(&adds, &removes, &expiries), NO_CHANGE);
    let block = make_block(context, (topic, &commit.name), &mut commit.heads, payload, lists, batch)?;
    let height = block.height();
    for (key, value, expires) in last {
        let row = rows.get_mut(key).expect("every key of the group was read");
        let was_live = row.visible(now).is_some();
        let after = match value {
            Some(value) => Row::single(Element { height, id: block.cid(), value: value.into_owned(), expires }),
            None if was_live => {
                rows_changed.version(batch, key, (height, &block.cid()), true);
                Row::default()
            }
            None => continue,
        };
        rows_changed.write(batch, key, row, &after, Notice::Written(height));
        *row = after;
    }
    plan.apply((height, block.cid()), documents, rows_changed, batch, now);
    commit.made.push(block.cid());
    let made = Commit { cid: block.cid(), height };
    for (request, deleted) in cut.iter().zip(deleted) {
        commit.replies.push((request.reply.clone(), Committed { commit: Some(made), deleted }));
    }
    Ok(())
}

/// Whether one of each request's deletes removed a live value, replaying the cut in submission
/// order over the rows as they stand before it.
fn deleted_flags(cut: &[&WriteRequest], rows: &HashMap<&[u8], Row>, now: u64) -> Vec<bool> {
    let any_delete = cut.iter().any(|r| r.ops.iter().any(|op| matches!(op, Op::Delete(_))));
    if !any_delete {
        return vec![false; cut.len()];
    }
    let mut live: HashMap<&[u8], bool> = rows.iter().map(|(key, row)| (*key, row.visible(now).is_some())).collect();
    cut.iter()
        .map(|request| {
            let mut deleted = false;
            for op in &request.ops {
                let was_live = live.insert(op.key(), !matches!(op, Op::Delete(_))).unwrap_or(false);
                deleted |= matches!(op, Op::Delete(_)) && was_live;
            }
            deleted
        })
        .collect()
}
