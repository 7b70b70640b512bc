//! The index journal: documents' index records written beside the rows they follow from, and
//! put in place by a thread of their own.
//!
//! An index record's key starts with the field's value, so the records of a load arrive in no
//! order, and each costs the writer thread an insertion at a random place of RocksDB's
//! memtable, a walk of cache misses down its skip list: with an index on a string field whose
//! values are random, more than a quarter of the writer's time. So the writer does not insert
//! them. The records a batch of row changes puts and deletes are written, in that batch, as one
//! journal entry of the topic (in `doc_index`, under the topic's prefix and a zero byte no
//! index name starts with, then a sequence number): one insertion at the end of the journal,
//! atomic with the rows like the records were. Once the batch is written the writer hands the
//! entry to the journal thread, which puts and deletes its records and deletes the entry in one
//! write (without the log: a crash loses that write, not the entry, which is applied again).
//!
//! Everything that reads the records waits for the journal thread to have applied every entry
//! of the topic written when it started (a query through an index, [`Marks::settle`]); the
//! writer thread settles a topic the same way before it writes records itself (an index's
//! build, drop or restart, the topic's drop), so the records change in the order the rows did.
//! Entries a crash left are applied when the store opens, before any thread starts
//! ([`recover`]); read-only tools see them through [`pending`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use canopy_dag::{TOPIC_ID_BYTES, TopicId};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use rocksdb::{DB, WriteBatch, WriteOptions};

use crate::error::StorageError;
use crate::schema::CF_DOC_INDEX;

/// The byte after a topic's prefix that starts its journal entries; an index's records start
/// with its escaped name, whose first byte is a letter, a digit, `_` or `-`.
const JOURNAL: u8 = 0x00;

/// Records past which the journal thread writes the entries it holds. A memtable insertion
/// walks the skip list from where the previous one went, so records put in key order cost
/// less the closer together they fall: the more of a load's records one write sorts, the
/// cheaper each.
const RECORDS_PER_WRITE: usize = 65_536;

/// Records one write of the journal thread puts in place: RocksDB applies the store's writes
/// one after another, so a writer thread's write waits for at most these (about a
/// millisecond's inserts).
const RECORDS_PER_CHUNK: usize = 2_048;

/// Entries past which the journal thread writes what it holds: it looks through them for a
/// waiting reader after each entry it takes.
const ENTRIES_PER_WRITE_MAX: usize = 256;

/// Longest the journal thread holds an entry while more keep coming.
const HELD_MAX: Duration = Duration::from_millis(100);

/// A pause in the entries this long ends the group the journal thread holds.
const PAUSE: Duration = Duration::from_millis(20);

/// How often the journal thread, holding entries, looks for a reader waiting for them.
const POLL: Duration = Duration::from_millis(1);

/// Index records a batch puts (`true`) or deletes, in the order they apply.
pub(crate) type Records = Vec<(Vec<u8>, bool)>;

/// How far a topic's journal is written and applied.
#[derive(Debug, Default)]
pub(crate) struct Marks {
    /// The last entry's number handed out.
    next: AtomicU64,
    /// `(written, applied)`: the last entry written with its batch, and the last applied.
    state: Mutex<(u64, u64)>,
    applied: Condvar,
    /// Threads waiting in [`Marks::settle`]: the journal thread writes what it holds of the
    /// topic without waiting for more.
    waiting: AtomicUsize,
}

impl Marks {
    /// The number of the next entry.
    pub fn next_entry(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn written(&self, entry: u64) {
        let mut state = self.state.lock().expect("journal marks lock");
        state.0 = state.0.max(entry);
    }

    fn applied(&self, entry: u64) {
        let mut state = self.state.lock().expect("journal marks lock");
        state.1 = state.1.max(entry);
        self.applied.notify_all();
    }

    /// Waits until every entry written before the call is applied: the topic's index records
    /// are then those of its rows as they stood.
    pub fn settle(&self) {
        let mut state = self.state.lock().expect("journal marks lock");
        let written = state.0;
        if state.1 >= written {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        while state.1 < written {
            state = self.applied.wait(state).expect("journal marks lock");
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn awaited(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }
}

/// One journal entry, for the journal thread.
pub(crate) struct Entry {
    pub marks: Arc<Marks>,
    pub number: u64,
    pub key: Vec<u8>,
    pub records: Records,
}

/// The entries of a writer thread's batch, staged until it is written, then held until the
/// writer sends them.
#[derive(Default)]
pub(crate) struct Staged {
    staged: Mutex<Vec<Entry>>,
    released: Mutex<Vec<Entry>>,
}

impl Staged {
    /// Adds to `batch` the journal entry of `records`, for `topic` whose marks are `marks`, and
    /// stages it.
    pub fn journal(
        &self,
        batch: &mut WriteBatch,
        doc_index: &rocksdb::ColumnFamily,
        topic: TopicId,
        marks: &Arc<Marks>,
        records: Records,
    ) {
        let number = marks.next_entry();
        let key = entry_key(topic, number);
        batch.put_cf(doc_index, &key, encode(&records));
        self.staged.lock().expect("staged lock").push(Entry { marks: marks.clone(), number, key, records });
    }

    /// The staged entries, their batch written: each is marked written, so a read that starts
    /// now waits for it, and held for [`Staged::send`].
    pub fn release(&self) {
        let entries = std::mem::take(&mut *self.staged.lock().expect("staged lock"));
        for entry in &entries {
            entry.marks.written(entry.number);
        }
        self.released.lock().expect("staged lock").extend(entries);
    }

    /// Hands the released entries to the journal thread. The writer thread sends them once its
    /// callers have heard back (the thread it wakes would otherwise take the core a caller's
    /// next batch waits for), and before it waits for anything.
    pub fn send(&self, journal: &crossbeam_channel::Sender<Entry>) {
        let entries = std::mem::take(&mut *self.released.lock().expect("staged lock"));
        for entry in entries {
            if let Err(unsent) = journal.send(entry) {
                // The journal thread is gone only as the store closes: the entry stays in the
                // database and is applied when it opens again. Nothing waits for it then.
                let entry = unsent.into_inner();
                entry.marks.applied(entry.number);
            }
        }
    }

    /// Drops the staged entries: their batch was not written.
    pub fn discard(&self) {
        self.staged.lock().expect("staged lock").clear();
    }
}

fn entry_key(topic: TopicId, number: u64) -> Vec<u8> {
    let mut key = topic.key(&[JOURNAL]);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

/// An entry's value: per record a flag byte (1 put, 0 delete), the key's length as a varint
/// and the key.
fn encode(records: &Records) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|(key, _)| key.len() + 3).sum());
    let mut buffer = unsigned_varint::encode::usize_buffer();
    for (key, put) in records {
        out.push(u8::from(*put));
        out.extend_from_slice(unsigned_varint::encode::usize(key.len(), &mut buffer));
        out.extend_from_slice(key);
    }
    out
}

fn decode(mut bytes: &[u8]) -> Result<Records, String> {
    let mut records = Vec::new();
    while let Some((&flag, rest)) = bytes.split_first() {
        let put = match flag {
            0 => false,
            1 => true,
            _ => return Err(format!("an index journal record's flag is {flag}")),
        };
        let (len, rest) = unsigned_varint::decode::usize(rest).map_err(|e| format!("an index journal record: {e}"))?;
        let key = rest.get(..len).ok_or("an index journal record is cut short")?;
        if key.len() < TOPIC_ID_BYTES {
            return Err("an index journal record's key is shorter than a topic's prefix".into());
        }
        records.push((key.to_vec(), put));
        bytes = &rest[len..];
    }
    Ok(records)
}

/// Adds to `batch` what `records` put and delete, in their order.
fn apply<'r>(batch: &mut WriteBatch, cf: &rocksdb::ColumnFamily, records: impl IntoIterator<Item = (&'r [u8], bool)>) {
    for (key, put) in records {
        match put {
            true => batch.put_cf(cf, key, []),
            false => batch.delete_cf(cf, key),
        }
    }
}

/// The journal thread: applies entries as they come, several to a write (their records in key
/// order, each record's changes in entry order), until every writer thread is gone. While
/// entries keep coming (none [`PAUSE`] apart) it holds them, up to [`RECORDS_PER_WRITE`]
/// records, [`ENTRIES_PER_WRITE_MAX`] entries or [`HELD_MAX`], unless a reader waits for one
/// of their topics. A failed write poisons the store, as a failed write of the writer threads
/// does; the entries stay, to be applied when it opens again.
pub(crate) fn run(db: Arc<DB>, entries: Receiver<Entry>, poisoned: Arc<AtomicBool>) {
    let cf = db.cf_handle(CF_DOC_INDEX).expect("every canopy column family is opened with the database");
    let mut options = WriteOptions::default();
    // The entries are in the log already: a crash that loses this write leaves them in place.
    options.disable_wal(true);
    let mut held = Held::default();
    loop {
        let next = match held.entries.is_empty() {
            true => entries.recv().map_err(|_| RecvTimeoutError::Disconnected),
            false => entries.recv_timeout(POLL),
        };
        let paused = match next {
            Ok(entry) => {
                held.push(entry);
                false
            }
            Err(RecvTimeoutError::Timeout) => held.last.elapsed() >= PAUSE,
            Err(RecvTimeoutError::Disconnected) => {
                held.write(&db, cf, &options, &poisoned);
                return;
            }
        };
        let full = held.records >= RECORDS_PER_WRITE || held.entries.len() >= ENTRIES_PER_WRITE_MAX;
        if paused || full || held.since.elapsed() >= HELD_MAX || held.awaited() {
            held.write(&db, cf, &options, &poisoned);
        }
    }
}

/// The entries the journal thread holds.
struct Held {
    entries: Vec<Entry>,
    records: usize,
    /// When the first of them came, and the last.
    since: Instant,
    last: Instant,
}

impl Default for Held {
    fn default() -> Self {
        let now = Instant::now();
        Held { entries: Vec::new(), records: 0, since: now, last: now }
    }
}

impl Held {
    fn push(&mut self, entry: Entry) {
        self.last = Instant::now();
        if self.entries.is_empty() {
            self.since = self.last;
        }
        self.records += entry.records.len();
        self.entries.push(entry);
    }

    fn awaited(&self) -> bool {
        self.entries.iter().any(|entry| entry.marks.awaited())
    }

    /// Puts the held entries' records in place and deletes the entries, in one write.
    fn write(&mut self, db: &DB, cf: &rocksdb::ColumnFamily, options: &WriteOptions, poisoned: &AtomicBool) {
        let taken = std::mem::take(&mut self.entries);
        self.records = 0;
        if taken.is_empty() {
            return;
        }
        let mut records: Vec<(&[u8], bool)> =
            taken.iter().flat_map(|entry| entry.records.iter().map(|(key, put)| (key.as_slice(), *put))).collect();
        // Stable: of two changes to one record, the later stays last.
        records.sort_by(|a, b| a.0.cmp(b.0));
        // In writes of `RECORDS_PER_CHUNK`, one after another in key order (each insertion
        // still starts from where the last one went), the last deleting the entries: every
        // write of the store waits for the one RocksDB is applying, and one of all the records
        // held kept the writer threads waiting milliseconds. A crash between them leaves the
        // entries, whose records are then applied again, in order, which ends the same.
        let mut chunks = records.chunks(RECORDS_PER_CHUNK).peekable();
        while !poisoned.load(Ordering::SeqCst) {
            let mut batch = WriteBatch::default();
            apply(&mut batch, cf, chunks.next().into_iter().flatten().copied());
            if chunks.peek().is_none() {
                for entry in &taken {
                    batch.delete_cf(cf, &entry.key);
                }
            }
            if let Err(error) = db.write_opt(batch, options) {
                tracing::error!(%error, "writing documents' index records failed; the store refuses writes until reopened");
                poisoned.store(true, Ordering::SeqCst);
            }
            if chunks.peek().is_none() {
                break;
            }
            // A writer thread or its caller woken meanwhile on this core runs first.
            std::thread::yield_now();
        }
        for entry in taken {
            entry.marks.applied(entry.number);
        }
    }
}

/// Applies the journal entries a crash left, topic by topic in order; returns how many.
pub(crate) fn recover(db: &DB) -> Result<u64, StorageError> {
    let cf = db.cf_handle(CF_DOC_INDEX).expect("every canopy column family is opened with the database");
    let mut applied = 0;
    let mut batch = WriteBatch::default();
    let mut iter = db.raw_iterator_cf(cf);
    iter.seek_to_first();
    while let Some(key) = iter.key() {
        let Some(topic) = key.get(..TOPIC_ID_BYTES) else {
            iter.next();
            continue;
        };
        let journal = [topic, &[JOURNAL]].concat();
        if !key.starts_with(&journal) {
            // Past this topic's journal: on to the next topic's.
            let next = u32::from_be_bytes(topic.try_into().expect("a topic prefix")).checked_add(1);
            match next {
                Some(next) => iter.seek(next.to_be_bytes()),
                None => break,
            }
            continue;
        }
        let value = iter.value().expect("a valid iterator has a value");
        let records = decode(value).map_err(|e| StorageError::Corrupt(format!("index journal entry {key:?}: {e}")))?;
        apply(&mut batch, cf, records.iter().map(|(key, put)| (key.as_slice(), *put)));
        batch.delete_cf(cf, key);
        applied += 1;
        iter.next();
    }
    iter.status()?;
    if !batch.is_empty() {
        db.write(batch)?;
    }
    Ok(applied)
}

/// The journal entries of `topic` not applied yet, in order, each with its records.
pub(crate) fn pending(db: &DB, topic: TopicId) -> Result<Vec<Records>, StorageError> {
    let cf = db.cf_handle(CF_DOC_INDEX).expect("every canopy column family is opened with the database");
    let prefix = topic.key(&[JOURNAL]);
    let mut entries = Vec::new();
    for item in db.prefix_iterator_cf(cf, &prefix) {
        let (key, value) = item?;
        if !key.starts_with(&prefix) {
            break;
        }
        entries.push(decode(&value).map_err(|e| StorageError::Corrupt(format!("index journal entry {key:?}: {e}")))?);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_to_their_records_and_damaged_ones_are_refused() {
        let records: Records = vec![(b"\0\0\0\x07a-record".to_vec(), true), (vec![0, 0, 0, 7, 1, 2], false)];
        assert_eq!(decode(&encode(&records)).unwrap(), records);
        assert_eq!(decode(&[]).unwrap(), Records::new());
        let encoded = encode(&records);
        for cut in 1..encoded.len() {
            if decode(&encoded[..cut]).is_ok() {
                // Only a cut at a record's end decodes, to the records before it.
                assert_eq!(decode(&encoded[..cut]).unwrap(), records[..1]);
            }
        }
        assert!(decode(&[2, 4, 0, 0, 0, 0]).is_err(), "an unknown flag");
        assert!(decode(&[1, 2, 0, 0]).is_err(), "a key shorter than a topic's prefix");
    }

    #[test]
    fn held_entries_larger_than_a_write_end_as_applying_them_in_order_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = DB::open_cf(&options, dir.path(), [CF_DOC_INDEX]).unwrap();
        let cf = db.cf_handle(CF_DOC_INDEX).unwrap();
        let topic = TopicId(7);
        let record = |n: u32| topic.key(&[b"i".as_slice(), &n.to_be_bytes()].concat());
        let marks = Arc::new(Marks::default());
        // More records than one write takes, a record changed by several entries.
        let changes: [Vec<(u32, bool)>; 3] = [
            (0..3_000).map(|n| (n, true)).collect(),
            (0..1_500).map(|n| (n, false)).chain((3_000..6_000).map(|n| (n, true))).collect(),
            (0..100).map(|n| (n, true)).collect(),
        ];
        let mut held = Held::default();
        for change in changes {
            let number = marks.next_entry();
            let key = entry_key(topic, number);
            let records: Records = change.into_iter().map(|(n, put)| (record(n), put)).collect();
            db.put_cf(cf, &key, encode(&records)).unwrap();
            marks.written(number);
            held.push(Entry { marks: marks.clone(), number, key, records });
        }
        assert!(held.records > RECORDS_PER_CHUNK * 3);
        held.write(&db, cf, &WriteOptions::default(), &AtomicBool::new(false));
        marks.settle();
        let stored: Vec<Vec<u8>> =
            db.iterator_cf(cf, rocksdb::IteratorMode::Start).map(|item| item.unwrap().0.to_vec()).collect();
        let expected: Vec<Vec<u8>> = (0..100).chain(1_500..6_000).map(record).collect();
        assert_eq!(stored.len(), expected.len(), "every entry deleted, each record as its last change left it");
        assert!(stored == expected);
    }

    #[test]
    fn a_topic_settles_once_every_entry_written_before_is_applied() {
        let marks = Arc::new(Marks::default());
        marks.settle();
        let (first, second) = (marks.next_entry(), marks.next_entry());
        marks.written(first);
        marks.written(second);
        let waiting = {
            let marks = marks.clone();
            std::thread::spawn(move || marks.settle())
        };
        marks.applied(first);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiting.is_finished(), "the second entry is not applied yet");
        marks.applied(second);
        waiting.join().unwrap();
    }
}
