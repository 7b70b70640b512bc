//! Local writes of documents. A document's change reaches the writer whole: the writer reads
//! the document's record once, folds the changes a group makes to it in order, and from the
//! result makes the delta's entries of its fields (adds of the fields set, tombstones of the
//! elements they supersede) and, once the block is made, the record and what follows from it.
//! On the wire and in every replica's rules a field is still an entry of its own
//! ([`crate::doc`]); only the local write stops handling it as a separate key.

use std::borrow::Cow;

use canopy_dag::{Cid, Height};
use rocksdb::WriteBatch;

use super::WriteRequest;
use crate::doc_row::{DocRow, Documents};
use crate::row::{Element, Row};
use crate::row_change::{Notice, RowChanges};

/// A change to one document, as a local write hands it to the writer.
#[derive(Clone, Debug)]
pub(crate) struct DocChange {
    /// The document's entries prefix ([`crate::doc::entries_prefix`]).
    pub prefix: Vec<u8>,
    /// Whether every field the document holds and `set` leaves out is removed (a put, or a
    /// delete when `set` is empty); else only the fields of `remove` are (a patch).
    pub replace: bool,
    /// Fields set, with their JSON text; in name order, each once, as `Topic::doc_write`
    /// hands them over (the writer checks before it relies on it).
    pub set: Vec<(Vec<u8>, Vec<u8>)>,
    /// Fields removed.
    pub remove: Vec<Vec<u8>>,
    /// When the fields set expire (milliseconds since the Unix epoch).
    pub expires: Option<u64>,
}

impl DocChange {
    /// Fields the change names: each is an operation of the delta, or two.
    pub fn fields(&self) -> usize {
        self.set.len() + self.remove.len()
    }

    /// Bytes of keys and values the change hands over.
    pub fn bytes(&self) -> usize {
        let set: usize = self.set.iter().map(|(name, value)| self.prefix.len() + name.len() + value.len()).sum();
        set + self.remove.iter().map(|name| self.prefix.len() + name.len()).sum::<usize>()
    }
}

/// What a field becomes: a value (with its expiry), or removed.
type Outcome<'a> = Option<(&'a [u8], Option<u64>)>;

/// The changes of one cut to one document, folded in submission order.
struct Folded<'a> {
    prefix: &'a [u8],
    /// Whether a put or delete among them removes every field the others leave out.
    replace: bool,
    /// Each field named, in name order, with what the last change naming it made of it.
    fields: FoldedFields<'a>,
}

/// The fields a document's folded changes name.
enum FoldedFields<'a> {
    /// One change setting fields in name order, each once, none removed (what a load writes),
    /// all expiring at the given time: its fields as they came.
    Set(&'a [(Vec<u8>, Vec<u8>)], Option<u64>),
    /// Each field named with its outcome, in name order.
    Named(Vec<(Cow<'a, [u8]>, Outcome<'a>)>),
}

impl<'a> FoldedFields<'a> {
    fn into_named(self) -> Vec<(Cow<'a, [u8]>, Outcome<'a>)> {
        match self {
            FoldedFields::Set(set, expires) => set
                .iter()
                .map(|(name, value)| (Cow::Borrowed(name.as_slice()), Some((value.as_slice(), expires))))
                .collect(),
            FoldedFields::Named(named) => named,
        }
    }
}

/// One field a cut changes: its name, its entry's place in `Plan::entries`, and what it
/// becomes.
struct FieldPlan<'a> {
    name: Cow<'a, [u8]>,
    entry: (usize, usize),
    outcome: Outcome<'a>,
}

/// The changes a cut makes to documents, ready to become a delta's entries and, once its block
/// is made, the documents' records.
pub(super) struct Plan<'a> {
    /// Every entry key the delta names, one after another.
    entries: Vec<u8>,
    /// Each document's entries prefix, its fields' place in `fields`, and whether it is fresh:
    /// the replica holds no field of it and no other change of the round names it, so its
    /// record is written straight from the values set.
    docs: Vec<(&'a [u8], std::ops::Range<usize>, bool)>,
    /// The fields of every document, one document's after another's.
    fields: Vec<FieldPlan<'a>>,
    /// Tombstones, as `(entry, element id)`.
    removes: Vec<((usize, usize), Cid)>,
}

impl<'a> Plan<'a> {
    /// Folds the document changes of `cut` and plans them over the documents as they stand
    /// (`documents`, read by the group), judging at `now` which elements are expired.
    /// `repeated` names, in order, the documents more than one change of the round names.
    pub fn new(cut: &[&'a WriteRequest], documents: &Documents, now: u64, repeated: &[&[u8]]) -> Plan<'a> {
        let changes = || cut.iter().flat_map(|request| &request.docs);
        let named: usize = changes().map(DocChange::fields).sum();
        let entry_bytes: usize = changes()
            .map(|change| {
                let names = change.set.iter().map(|(name, _)| name).chain(&change.remove);
                names.map(|name| change.prefix.len() + name.len()).sum::<usize>()
            })
            .sum();
        let mut plan = Plan {
            entries: Vec::with_capacity(entry_bytes),
            docs: Vec::with_capacity(changes().count()),
            fields: Vec::with_capacity(named),
            removes: Vec::new(),
        };
        let empty = DocRow::default();
        for folded in fold(cut) {
            let stored = documents.get(folded.prefix).unwrap_or(&empty);
            let fresh = stored.is_empty() && repeated.binary_search(&folded.prefix).is_err();
            let first = plan.fields.len();
            if let (FoldedFields::Set(set, expires), true) = (&folded.fields, stored.is_empty()) {
                // Nothing stored to remove or supersede: each field set becomes an add.
                for (name, value) in *set {
                    let entry = plan.entry(folded.prefix, name);
                    let outcome = Some((value.as_slice(), *expires));
                    plan.fields.push(FieldPlan { name: Cow::Borrowed(name.as_slice()), entry, outcome });
                }
                plan.docs.push((folded.prefix, first..plan.fields.len(), fresh));
                continue;
            }
            let mut named = folded.fields.into_named();
            if folded.replace {
                // A put removes the stored fields it leaves out.
                let left_out: Vec<(Cow<'a, [u8]>, Outcome<'a>)> = stored
                    .names()
                    .filter(|name| named.binary_search_by(|(held, _)| (**held).cmp(name)).is_err())
                    .map(|name| (Cow::Owned(name.to_vec()), None))
                    .collect();
                if !left_out.is_empty() {
                    named.extend(left_out);
                    named.sort_by(|a, b| a.0.cmp(&b.0));
                }
            }
            for (name, outcome) in named {
                let entry = plan.entry(folded.prefix, &name);
                if let Some(row) = stored.get(&name) {
                    plan.removes.extend(row.elements().iter().filter(|e| !e.expired(now)).map(|e| (entry, e.id)));
                }
                plan.fields.push(FieldPlan { name, entry, outcome });
            }
            plan.docs.push((folded.prefix, first..plan.fields.len(), fresh));
        }
        plan
    }

    /// Appends the entry key of field `name` of the document `prefix` to `entries`; its place.
    fn entry(&mut self, prefix: &[u8], name: &[u8]) -> (usize, usize) {
        let start = self.entries.len();
        self.entries.extend_from_slice(prefix);
        self.entries.extend_from_slice(name);
        (start, self.entries.len())
    }

    /// The delta's adds, tombstones and expiries of the planned fields, in key order.
    #[allow(clippy::type_complexity)]
    pub fn delta(&self) -> (Vec<(&[u8], &[u8])>, Vec<(&[u8], Cid)>, Vec<(&[u8], u64)>) {
        let entry = |(start, end): (usize, usize)| &self.entries[start..end];
        let mut adds = Vec::new();
        let mut expiries = Vec::new();
        for field in &self.fields {
            if let Some((value, expires)) = field.outcome {
                adds.push((entry(field.entry), value));
                if let Some(at) = expires {
                    expiries.push((entry(field.entry), at));
                }
            }
        }
        let removes = self.removes.iter().map(|(at, id)| (entry(*at), *id)).collect();
        (adds, removes, expiries)
    }

    /// Writes the planned documents as block `(height, id)` leaves them, into `documents` and
    /// through `rows_changed` into `batch`.
    pub fn apply(
        self,
        (height, id): (Height, Cid),
        documents: &mut Documents,
        rows_changed: &mut RowChanges,
        batch: &mut WriteBatch,
        now: u64,
    ) {
        for (prefix, fields, fresh) in self.docs {
            let fields = &self.fields[fields];
            if fresh {
                // Every field set is new and none is removed (there is nothing to remove); one
                // change made them all, so they share its expiry.
                let entries = &self.entries;
                let set = fields.iter().filter_map(|field| {
                    let (value, _) = field.outcome?;
                    Some((&entries[field.entry.0..field.entry.1], &*field.name, value))
                });
                let expires = fields.iter().find_map(|field| field.outcome).and_then(|(_, expires)| expires);
                rows_changed.write_fresh_document(batch, prefix, set, (height, &id), expires, Notice::Written(height));
                continue;
            }
            let doc = match documents.get_mut(prefix) {
                Some(doc) => doc,
                None => documents.entry(prefix.to_vec()).or_default(),
            };
            let was_empty = doc.is_empty();
            // Each changed field's entry with the row it had.
            let mut changed: Vec<(&[u8], Option<Row>)> = Vec::with_capacity(fields.len());
            for field in fields {
                let entry = &self.entries[field.entry.0..field.entry.1];
                match field.outcome {
                    Some((value, expires)) => {
                        let element = Element { height, id, value: value.to_vec(), expires };
                        changed.push((entry, doc.replace(&field.name, Row::single(element))));
                    }
                    // A field with nothing live is left to its expiry's collection, as a key is.
                    None if doc.get(&field.name).is_some_and(|row| row.visible(now).is_some()) => {
                        rows_changed.version(batch, entry, (height, &id), true);
                        changed.push((entry, doc.remove(&field.name)));
                    }
                    None => {}
                }
            }
            rows_changed.write_document(batch, (prefix, was_empty), doc, &changed, Notice::Written(height));
        }
    }
}

/// The document changes of `cut`, folded per document, in key order.
fn fold<'a>(cut: &[&'a WriteRequest]) -> Vec<Folded<'a>> {
    let mut changes: Vec<(usize, &'a DocChange)> = cut.iter().flat_map(|request| &request.docs).enumerate().collect();
    // By document, each one's changes in submission order.
    changes.sort_unstable_by(|a, b| a.1.prefix.cmp(&b.1.prefix).then(a.0.cmp(&b.0)));
    changes
        .chunk_by(|a, b| a.1.prefix == b.1.prefix)
        .map(|changes| {
            let prefix = changes[0].1.prefix.as_slice();
            if let [(_, change)] = changes
                && change.remove.is_empty()
                && change.set.windows(2).all(|pair| pair[0].0 < pair[1].0)
            {
                return Folded {
                    prefix,
                    replace: change.replace,
                    fields: FoldedFields::Set(&change.set, change.expires),
                };
            }
            // Only the changes from the last put or delete on count, and it removes the rest.
            let from = changes.iter().rposition(|(_, change)| change.replace).unwrap_or(0);
            let replace = changes[from].1.replace;
            let mut fields: Vec<(usize, &'a [u8], Outcome<'a>)> = Vec::new();
            for (at, change) in &changes[from..] {
                let set = change
                    .set
                    .iter()
                    .map(|(name, value)| (*at, name.as_slice(), Some((value.as_slice(), change.expires))));
                fields.extend(set);
                fields.extend(change.remove.iter().map(|name| (*at, name.as_slice(), None)));
            }
            // By name, the last change naming a field deciding it.
            fields.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(&b.0)));
            let mut last: Vec<(Cow<'a, [u8]>, Outcome<'a>)> = Vec::with_capacity(fields.len());
            for (_, name, outcome) in fields {
                match last.last_mut() {
                    Some(previous) if *previous.0 == *name => previous.1 = outcome,
                    _ => last.push((Cow::Borrowed(name), outcome)),
                }
            }
            Folded { prefix, replace, fields: FoldedFields::Named(last) }
        })
        .collect()
}

/// An upper bound on the tombstones `change` adds to a delta for the elements stored when the
/// group began: those of the fields it names (all the document's, for a put). A field set by
/// an earlier change of the group holds one element since, which the caller counts.
pub(super) fn removes_bound(change: &DocChange, stored: Option<&DocRow>) -> usize {
    let Some(stored) = stored else { return 0 };
    let held = |name: &[u8]| stored.get(name).map_or(0, Row::len);
    match change.replace {
        true => stored.elements(),
        false => {
            change.set.iter().map(|(name, _)| held(name)).sum::<usize>()
                + change.remove.iter().map(|name| held(name)).sum::<usize>()
        }
    }
}
