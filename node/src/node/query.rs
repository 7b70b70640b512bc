//! Queries served by a documents' index: which index a query can use, and reading the
//! documents its records name.
//!
//! A query uses a built index whose path one of its conditions names with `=` (every value of
//! the index's type), `^=` (a string index) or the comparisons (bounds on one path combine),
//! preferring `=`, then `^=`, then ranges. The records give the candidate documents; each is
//! read and checked against every condition, so the answer is the one a scan gives. When the
//! query is ordered by the index's path, the records' order is the answer's; otherwise the
//! candidates are taken in key order. A query in key order by `=` (one value or several) merges
//! the values' records (each value's in key order already) a chunk at a time, only as far as
//! its page needs; any other whose candidates number more than [`SORT_DOCS_MAX`] scans instead.

use std::collections::VecDeque;
use std::ops::Bound;

use canopy_crdt::{IndexDef, IndexKind, IndexScan, IndexStatus, Topic, WriteError};
use serde_json::Value;

use super::NodeTopic;
use super::docs::{Document, FindError, FoundPage, Order, SORT_DOCS_MAX};
use super::filter::{Condition, Filter, Op};

/// A range of an index's encoded values.
type Range = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The ranges of one index a query reads.
#[derive(Debug)]
pub(super) struct Plan {
    name: String,
    def: IndexDef,
    /// Ranges of encoded values, ascending and apart.
    ranges: Vec<Range>,
}

/// The smallest encoding greater than every encoding starting with `prefix`; `None` when
/// there is none (`prefix` is all `ff`).
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// The ranges of `def` that `condition` reads, and how selective it is (higher is better);
/// `None` when the index cannot serve it.
fn ranges_of(def: &IndexDef, condition: &Condition) -> Option<(u8, Vec<Range>)> {
    if condition.path != def.path {
        return None;
    }
    let encode = |value: &Value| def.encode_value(value);
    match condition.op {
        Op::Eq => {
            let mut values = condition.values.iter().map(encode).collect::<Option<Vec<_>>>()?;
            values.sort();
            values.dedup();
            Some((3, values.into_iter().map(|v| (Bound::Included(v.clone()), Bound::Included(v))).collect()))
        }
        Op::Prefix if def.kind == IndexKind::String => {
            let prefix = def.encode_prefix(condition.values[0].as_str()?)?;
            let upper = successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
            Some((2, vec![(Bound::Included(prefix), upper)]))
        }
        Op::Lt => Some((1, vec![(Bound::Unbounded, Bound::Excluded(encode(&condition.values[0])?))])),
        Op::Le => Some((1, vec![(Bound::Unbounded, Bound::Included(encode(&condition.values[0])?))])),
        Op::Gt => Some((1, vec![(Bound::Excluded(encode(&condition.values[0])?), Bound::Unbounded)])),
        Op::Ge => Some((1, vec![(Bound::Included(encode(&condition.values[0])?), Bound::Unbounded)])),
        _ => None,
    }
}

/// The tighter of two lower bounds.
fn max_lower(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if x > y || (x == y && matches!(a, Bound::Excluded(_))) { a } else { b }
        }
    }
}

/// The tighter of two upper bounds.
fn min_upper(a: Bound<Vec<u8>>, b: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if x < y || (x == y && matches!(a, Bound::Excluded(_))) { a } else { b }
        }
    }
}

/// The index plan for `filter` among `indexes`, if a built one serves a condition.
pub(super) fn plan(indexes: &[IndexStatus], filter: &Filter) -> Option<Plan> {
    let mut best: Option<(u8, Plan)> = None;
    for index in indexes.iter().filter(|index| index.ready) {
        let mut score = 0;
        let mut ranges: Option<Vec<Range>> = None;
        let (mut lower, mut upper, mut bounded) = (Bound::Unbounded, Bound::Unbounded, false);
        for condition in &filter.conditions {
            let Some((rank, found)) = ranges_of(&index.def, condition) else { continue };
            if rank == 1 {
                let (l, u) = found.into_iter().next().expect("a comparison gives one range");
                lower = max_lower(lower, l);
                upper = min_upper(upper, u);
                bounded = true;
            } else if rank > score {
                score = rank;
                ranges = Some(found);
            }
        }
        let (score, ranges) = match ranges {
            Some(ranges) => (score, ranges),
            None if bounded => (1, vec![(lower, upper)]),
            None => continue,
        };
        if best.as_ref().is_none_or(|(held, _)| score > *held) {
            best = Some((score, Plan { name: index.name.clone(), def: index.def.clone(), ranges }));
        }
    }
    best.map(|(_, plan)| plan)
}

impl NodeTopic {
    /// The documents' indexes this node maintains for the topic, with their build's progress.
    pub fn indexes(&self) -> Vec<IndexStatus> {
        self.topic.indexes()
    }

    /// Declares the index `name` on the documents' field `path` holding values of `kind`, on
    /// every node of the topic; each builds it from its documents. `None` when it was declared
    /// so already.
    pub fn declare_index(&self, name: &str, def: &IndexDef) -> Result<Option<crate::Commit>, WriteError> {
        let commit = self.topic.declare_index(name, def)?;
        Ok(self.committed(commit))
    }

    /// Drops the index `name` on every node. `None` when no such index is declared here.
    pub fn drop_index(&self, name: &str) -> Result<Option<crate::Commit>, WriteError> {
        let commit = self.topic.drop_index(name)?;
        Ok(self.committed(commit))
    }
}

/// Answers a query of `topic` through `plan`'s index; `None` when it names too many
/// candidates, so the caller scans.
pub(super) fn find_indexed(
    topic: &Topic,
    plan: &Plan,
    filter: &Filter,
    order: Option<&Order>,
    after: Option<&str>,
    limit: usize,
) -> Result<Option<FoundPage>, FindError> {
    let values: Option<Vec<&[u8]>> = plan
        .ranges
        .iter()
        .map(|range| match range {
            (Bound::Included(value), Bound::Included(same)) if value == same => Some(value.as_slice()),
            _ => None,
        })
        .collect();
    if order.is_none()
        && let Some(values) = values
    {
        return find_equal(topic, plan, &values, filter, after, limit);
    }
    let mut candidates: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (lower, upper) in &plan.ranges {
        let scan = IndexScan { lower: as_ref(lower), upper: as_ref(upper), after: None };
        let room = SORT_DOCS_MAX + 1 - candidates.len();
        // The index was dropped since the plan was made: scan instead.
        let Some(records) = topic.index_records(&plan.name, &scan, room)? else { return Ok(None) };
        candidates.extend(records.into_iter().map(|record| (record.value, record.doc)));
        if candidates.len() > SORT_DOCS_MAX {
            return Ok(None);
        }
    }
    let by_index = order.is_some_and(|order| order.path == plan.def.path);
    if let Some(order) = order.filter(|_| !by_index) {
        // Ordered by another field: the matching candidates are sorted as a scan's are.
        let mut keys: Vec<Vec<u8>> = candidates.into_iter().map(|(_, doc)| doc).collect();
        keys.sort();
        keys.dedup();
        let mut matched = Vec::new();
        let mut found = FoundPage { index: Some(plan.name.clone()), ..FoundPage::default() };
        for chunk in keys.chunks(FETCH_DOCS) {
            for (key, doc) in read(topic, chunk, &mut found.scanned)? {
                if filter.matches(&doc) {
                    matched.push((key, doc));
                }
            }
        }
        let page = super::docs::sorted_page(matched, order, after, limit)?;
        return Ok(Some(FoundPage { docs: page.docs, next: page.next, ..found }));
    }
    let start = match (by_index, after) {
        (true, Some(after)) => after.parse::<usize>().map_err(|_| FindError::Cursor)?,
        _ => 0,
    };
    if by_index {
        let descending = order.is_some_and(|order| order.descending);
        candidates.sort_by(|(a_value, a_doc), (b_value, b_doc)| {
            let by_value = if descending { b_value.cmp(a_value) } else { a_value.cmp(b_value) };
            by_value.then_with(|| a_doc.cmp(b_doc))
        });
        let mut seen = std::collections::HashSet::new();
        candidates.retain(|(_, doc)| seen.insert(doc.clone()));
    } else {
        candidates.sort_by(|a, b| a.1.cmp(&b.1));
        candidates.dedup_by(|a, b| a.1 == b.1);
        if let Some(after) = after {
            candidates.retain(|(_, doc)| doc.as_slice() > after.as_bytes());
        }
    }
    let mut found = FoundPage { index: Some(plan.name.clone()), ..FoundPage::default() };
    let mut matches = 0;
    let keys: Vec<Vec<u8>> = candidates.into_iter().map(|(_, key)| key).collect();
    'pages: for chunk in keys.chunks(FETCH_DOCS) {
        for (key, doc) in read(topic, chunk, &mut found.scanned)? {
            if !filter.matches(&doc) {
                continue;
            }
            matches += 1;
            if by_index && matches <= start {
                continue;
            }
            if found.docs.len() == limit {
                found.next = Some(match by_index {
                    true => (start + limit).to_string(),
                    false => String::from_utf8_lossy(&found.docs.last().expect("a full page").0).into_owned(),
                });
                break 'pages;
            }
            found.docs.push((key, doc));
        }
    }
    Ok(Some(found))
}

/// Answers a query in key order through the records of `values`, each value's records in key
/// order themselves: merged a chunk at a time, only as far as the page needs, with no bound on
/// how many documents hold the values. `None` when the index went away meanwhile.
fn find_equal(
    topic: &Topic,
    plan: &Plan,
    values: &[&[u8]],
    filter: &Filter,
    after: Option<&str>,
    limit: usize,
) -> Result<Option<FoundPage>, FindError> {
    let mut found = FoundPage { index: Some(plan.name.clone()), ..FoundPage::default() };
    let resume = after.map(|after| after.as_bytes().to_vec());
    let mut streams: Vec<ValueRecords<'_>> = values
        .iter()
        .map(|value| ValueRecords { value, held: VecDeque::new(), resume: resume.clone(), done: false })
        .collect();
    // A document holding two of the values (a field with concurrent writes) is taken once.
    let mut taken: Option<Vec<u8>> = None;
    // A page's first read is as large as the page (and one more, to know whether another
    // follows); reads grow from there up to `FETCH_DOCS`, as conditions turn documents away.
    let mut chunk = limit.saturating_add(1).min(FETCH_DOCS);
    loop {
        let mut keys = Vec::with_capacity(chunk);
        while keys.len() < chunk {
            for stream in &mut streams {
                if !stream.fill(topic, &plan.name, chunk)? {
                    return Ok(None);
                }
            }
            let least = (0..streams.len())
                .filter(|&at| !streams[at].held.is_empty())
                .min_by(|&a, &b| streams[a].held.front().cmp(&streams[b].held.front()));
            let Some(key) = least.and_then(|at| streams[at].held.pop_front()) else { break };
            if taken.as_ref() != Some(&key) {
                taken = Some(key.clone());
                keys.push(key);
            }
        }
        for (key, doc) in read(topic, &keys, &mut found.scanned)? {
            if !filter.matches(&doc) {
                continue;
            }
            if found.docs.len() == limit {
                let last = &found.docs.last().expect("a full page").0;
                found.next = Some(String::from_utf8_lossy(last).into_owned());
                return Ok(Some(found));
            }
            found.docs.push((key, doc));
        }
        if keys.len() < chunk {
            return Ok(Some(found));
        }
        chunk = (chunk * 2).min(FETCH_DOCS);
    }
}

/// One value's index records, read a chunk at a time after a cursor, in key order.
struct ValueRecords<'v> {
    value: &'v [u8],
    /// Document keys read and not yet taken.
    held: VecDeque<Vec<u8>>,
    /// The last key read (or the query's cursor: a key no record has is a place between two).
    resume: Option<Vec<u8>>,
    /// Whether every record of the value has been read.
    done: bool,
}

impl ValueRecords<'_> {
    /// Reads the next `chunk` records when every key read is taken; false when the index is gone.
    fn fill(&mut self, topic: &Topic, name: &str, chunk: usize) -> Result<bool, FindError> {
        if !self.held.is_empty() || self.done {
            return Ok(true);
        }
        let bound = Bound::Included(self.value);
        let scan = IndexScan { lower: bound, upper: bound, after: self.resume.as_deref().map(|doc| (self.value, doc)) };
        let Some(records) = topic.index_records(name, &scan, chunk)? else { return Ok(false) };
        self.done = records.len() < chunk;
        self.held.extend(records.into_iter().map(|record| record.doc));
        self.resume = self.held.back().cloned();
        Ok(true)
    }
}

/// Candidates read at once: one iterator serves them all.
const FETCH_DOCS: usize = 128;

/// The documents of `keys` that have fields, read through one iterator, counting every key
/// read in `scanned`.
fn read(topic: &Topic, keys: &[Vec<u8>], scanned: &mut u64) -> Result<Vec<(Vec<u8>, Document)>, FindError> {
    *scanned += keys.len() as u64;
    let mut docs = Vec::with_capacity(keys.len());
    for (key, fields) in keys.iter().zip(topic.docs_of(keys)?) {
        if let Some(fields) = fields {
            docs.push((key.clone(), super::docs::document(key, fields)?));
        }
    }
    Ok(docs)
}

fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(value) => Bound::Included(value),
        Bound::Excluded(value) => Bound::Excluded(value),
        Bound::Unbounded => Bound::Unbounded,
    }
}

#[cfg(test)]
mod tests {
    use canopy_crdt::{DocWrite, Store, StoreOptions};

    use super::*;

    fn status(name: &str, path: &str, kind: IndexKind, ready: bool) -> IndexStatus {
        IndexStatus { name: name.into(), def: IndexDef::new(path, kind).unwrap(), ready, scanned: 0 }
    }

    #[test]
    fn a_query_uses_the_most_selective_built_index() {
        let indexes = [
            status("by_env", "env", IndexKind::String, true),
            status("by_n", "n", IndexKind::Number, true),
            status("by_zone", "zone", IndexKind::String, false),
        ];
        let plan_of = |conditions: &[&str]| plan(&indexes, &Filter::parse(conditions.iter().copied()).unwrap());
        assert_eq!(plan_of(&["n>3", "env=prod"]).unwrap().name, "by_env");
        assert_eq!(plan_of(&["n>3", "n<=9"]).unwrap().ranges.len(), 1);
        let range = &plan_of(&["n>3", "n<=9", "n>5"]).unwrap().ranges[0];
        let def = &indexes[1].def;
        assert_eq!(range.0, Bound::Excluded(def.encode_value(&serde_json::json!(5)).unwrap()));
        assert_eq!(range.1, Bound::Included(def.encode_value(&serde_json::json!(9)).unwrap()));
        assert_eq!(plan_of(&["env=prod|dev"]).unwrap().ranges.len(), 2);
        assert!(plan_of(&["zone=a"]).is_none(), "an index still building serves nothing");
        assert!(plan_of(&["env!=prod"]).is_none());
        assert!(plan_of(&["n=\"3\""]).is_none(), "a value of another type");
        assert_eq!(plan_of(&["env^=pr"]).unwrap().name, "by_env");
        assert_eq!(successor(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(successor(&[0xff]), None);
    }

    fn wait_built(topic: &Topic) {
        let started = std::time::Instant::now();
        while !topic.indexes().iter().all(|index| index.ready) {
            assert!(started.elapsed().as_secs() < 60, "the topic's indexes are built");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn a_value_more_documents_hold_than_a_sort_takes_is_still_found_through_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let topic = store.topic("t").unwrap();
        topic.declare_index("by_env", &IndexDef::new("env", IndexKind::String).unwrap()).unwrap();
        wait_built(&topic);
        // Every document holds `prod` but one in a thousand, which holds `dev`.
        let documents = SORT_DOCS_MAX + 2_000;
        for batch in (0..documents).collect::<Vec<_>>().chunks(2_000) {
            let writes = batch
                .iter()
                .map(|i| {
                    let env = if i % 1_000 == 7 { "dev" } else { "prod" };
                    (
                        format!("d{i:06}").into_bytes(),
                        DocWrite::Put(vec![("env".into(), format!("{env:?}").into_bytes())]),
                    )
                })
                .collect();
            topic.doc_batch(writes, None).unwrap();
        }
        let filter = Filter::parse(["env=prod"]).unwrap();
        let first = super::super::find_documents(&topic, &filter, None, None, 3).unwrap();
        assert_eq!(first.index.as_deref(), Some("by_env"), "{first:?}");
        let keys = |page: &FoundPage| {
            page.docs.iter().map(|(key, _)| String::from_utf8_lossy(key).into_owned()).collect::<Vec<_>>()
        };
        assert_eq!(keys(&first), ["d000000", "d000001", "d000002"]);
        // The first read is the page and one more: a page of 3 reads 4 documents.
        assert_eq!(first.scanned, 4);
        // The next page starts after the cursor, across the dev document at d000007.
        let second = super::super::find_documents(&topic, &filter, None, first.next.as_deref(), 5).unwrap();
        assert_eq!(keys(&second), ["d000003", "d000004", "d000005", "d000006", "d000008"]);
        // The last page, from a cursor that is no record of the value (a dev document's key).
        let last = super::super::find_documents(&topic, &filter, None, Some("d101007"), 10).unwrap();
        let expected: Vec<String> = (101_008..102_000).map(|i| format!("d{i:06}")).take(10).collect();
        assert_eq!(keys(&last), expected);
        let tail = super::super::find_documents(&topic, &filter, None, Some("d101990"), 10).unwrap();
        assert_eq!(keys(&tail).len(), 9);
        assert_eq!(tail.next, None);
        let dev =
            super::super::find_documents(&topic, &Filter::parse(["env=dev"]).unwrap(), None, None, 1_000).unwrap();
        assert_eq!(dev.docs.len(), documents / 1_000);
        // Several values: their records merged in key order, a page at a time.
        let either = Filter::parse(["env=dev|prod|none"]).unwrap();
        let mut after: Option<String> = None;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let page = super::super::find_documents(&topic, &either, None, after.as_deref(), 4).unwrap();
            assert_eq!(page.index.as_deref(), Some("by_env"));
            seen.extend(keys(&page));
            after = page.next;
        }
        let expected: Vec<String> = (0..12).map(|i| format!("d{i:06}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_document_holding_two_of_the_values_is_found_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = canopy_crdt::sim::Cluster::new(dir.path(), 2, &["t".to_string()], 5).unwrap();
        let def = IndexDef::new("env", IndexKind::String).unwrap();
        cluster.declare_index(0, "t", "by_env", &def).unwrap();
        cluster.run_until_quiet(100_000).unwrap();
        // Concurrent writes of one field: both values stay live, each with an index record.
        let put = |env: &str| DocWrite::Put(vec![("env".into(), format!("{env:?}").into_bytes())]);
        cluster.doc_write(0, "t", b"k", put("prod")).unwrap();
        cluster.doc_write(1, "t", b"k", put("dev")).unwrap();
        cluster.doc_write(0, "t", b"j", put("prod")).unwrap();
        cluster.run_until_quiet(100_000).unwrap();
        let topic = cluster.topic(0, "t").unwrap();
        wait_built(&topic);
        let records = |value: &str| {
            let encoded = def.encode_value(&Value::String(value.into())).unwrap();
            let bound = Bound::Included(encoded.as_slice());
            let scan = IndexScan { lower: bound, upper: bound, after: None };
            topic.index_records("by_env", &scan, 10).unwrap().unwrap().len()
        };
        assert_eq!((records("prod"), records("dev")), (2, 1), "k holds both values");
        let found = super::super::find_documents(&topic, &Filter::parse(["env=dev|prod"]).unwrap(), None, None, 10);
        let keys: Vec<Vec<u8>> = found.unwrap().docs.into_iter().map(|(key, _)| key).collect();
        assert_eq!(keys, [b"j".to_vec(), b"k".to_vec()]);
    }
}
