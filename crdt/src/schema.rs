//! Where things are stored: column families, meta keys, and the storage keys built from topic
//! ids, element ids and names.

use canopy_dag::{CF_BLOCKS, CF_INDEX};
use canopy_dag::{Cid, TOPIC_ID_BYTES, TopicId};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions,
    SliceTransform, SnapshotWithThreadMode,
};

use crate::error::{OpenError, StorageError};

/// Unused: blocks waiting for their parents are held in memory. Opened (and emptied when a
/// topic loads) so that data directories that still hold records there open.
pub(crate) const CF_PENDING: &str = "pending";
/// Current heads: `topic ++ cid` → height (8 bytes, big-endian).
pub(crate) const CF_HEADS: &str = "heads";
/// Live elements per key: `topic ++ key` → encoded row.
pub(crate) const CF_KV: &str = "kv";
/// Topic registry and counters; keys are not topic-prefixed.
pub(crate) const CF_META: &str = "meta";
/// Removes of elements whose block was not applied when the remove arrived:
/// `topic ++ element id ++ key` → nothing. Consumed when the element's block is applied.
pub(crate) const CF_TOMBSTONES: &str = "tombstones";

/// Snapshot parts, manifests and chunks alike: `topic ++ cid` → bytes. Parts are content
/// addressed, so writing one twice is harmless.
pub(crate) const CF_SNAPSHOTS: &str = "snapshots";

/// Writer lists of topics created with mode `writers`: `topic ++ 'c' ++ cid` → the block's
/// clock, `topic ++ 'l' ++ cid` → a list change (see `writer_list.rs`). Never pruned.
pub(crate) const CF_WRITERS: &str = "writers";
/// Which blocks put or deleted each key, newest first (see `history.rs`).
pub(crate) const CF_HISTORY: &str = "history";
/// Stored elements that expire, by expiry time (see `expiry.rs`).
pub(crate) const CF_EXPIRIES: &str = "expiries";
/// Records of documents' indexed field values (see `index.rs`).
pub(crate) const CF_DOC_INDEX: &str = "doc_index";

pub(crate) const META_NEXT_TOPIC_ID: &[u8] = b"next_topic_id";
/// The format of the data directory, a big-endian u32 ([`FORMAT`]); absent before format 2.
pub(crate) const META_FORMAT: &[u8] = b"format";
/// The secret key of the store's own author, when the embedding program supplies none.
pub(crate) const META_AUTHOR_SECRET: &[u8] = b"author_secret";
/// Meta key of the store's origin, the id counters know its increments by.
pub(crate) const META_ORIGIN: &[u8] = b"origin";
/// The data directory format this version reads and writes: 2 since blocks are signed, 3
/// since a document's fields are one record (a directory of format 2 is rewritten at open),
/// 4 since rows are written in their compact encoding (`row.rs`; rows of format 3 are read as
/// they are, so such a directory is only marked, and an older canopy refuses the new rows
/// rather than misreading them).
pub(crate) const FORMAT: u32 = 4;
/// The oldest format this version opens without rewriting anything.
pub(crate) const FORMAT_READ_AS_IS: u32 = 3;
/// `s ++ topic` → the manifests of the snapshots that cover the topic's pruned blocks.
pub(crate) const META_COVER: u8 = b's';
/// `k ++ topic` → the manifests this replica made or merged, newest last.
pub(crate) const META_KNOWN: u8 = b'k';
/// `g ++ topic` → the snapshot merge in progress, resumed when the topic loads.
pub(crate) const META_MERGE: u8 = b'g';
/// `p ++ topic` → the heads of prunings no snapshot covers yet ([`crate::Snapshots::frontier`]).
pub(crate) const META_FRONTIER: u8 = b'p';
/// `x ++ topic ++ index name` → the state of an index this replica maintains (see `index.rs`).
pub(crate) const META_INDEX: u8 = b'x';
pub(crate) const META_TOPIC: u8 = b't';
const META_KEY_COUNT: u8 = b'c';

/// Longest topic name.
pub const TOPIC_NAME_BYTES_MAX: usize = 128;

/// The key under which a topic's live-key count is kept in the meta column family.
pub(crate) fn key_count_key(topic: TopicId) -> Vec<u8> {
    let mut key = vec![META_KEY_COUNT];
    key.extend_from_slice(&topic.prefix());
    key
}

/// A per-topic key of the meta column family: `kind ++ topic`.
pub(crate) fn meta_key(kind: u8, topic: TopicId) -> Vec<u8> {
    let mut key = vec![kind];
    key.extend_from_slice(&topic.prefix());
    key
}

/// A list of CIDs as stored in meta: their bytes, one after the other.
pub(crate) fn encode_cids(cids: &[Cid]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cids.len() * 36);
    for cid in cids {
        cid.write_bytes(&mut out).expect("writing to a Vec cannot fail");
    }
    out
}

pub(crate) fn decode_cids(mut bytes: &[u8]) -> Result<Vec<Cid>, StorageError> {
    let mut cids = Vec::new();
    while !bytes.is_empty() {
        cids.push(Cid::read_bytes(&mut bytes).map_err(|e| StorageError::Corrupt(format!("cid list: {e}")))?);
    }
    Ok(cids)
}

/// The key of the tombstone of the element `id` added to `key`.
pub(crate) fn tombstone_key(topic: TopicId, id: &Cid, key: &[u8]) -> Vec<u8> {
    let mut out = topic.key(&id.to_bytes());
    out.extend_from_slice(key);
    out
}

/// The key under which a topic name is registered.
pub(crate) fn topic_name_key(name: &str) -> Vec<u8> {
    let mut key = vec![META_TOPIC];
    key.extend_from_slice(name.as_bytes());
    key
}

fn table_options(cache: &Cache, reads: Reads) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    // A family only ever seeked holds the topics' prefixes in its filters, not every key.
    table.set_whole_key_filtering(reads != Reads::Seeks);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Index and filter blocks are cut into partitions of a few KiB under a small top level kept
    // in the cache: a lookup or seek then brings in one partition of each, not a whole file's
    // index (up to a megabyte, decompressed and checksummed again each time data blocks have
    // pushed it out of the cache).
    table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table
}

/// How a column family's records are looked up, which decides the filters it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reads {
    /// Point lookups of a few records a block (`blocks`, `index`, `heads` ...): filters over
    /// whole keys in the tables and in the memtable.
    Points,
    /// Point lookups of records written one or more per key (`kv`): filters over whole keys in
    /// the tables only. A memtable filter costs every insert a cache miss (7.9% of a document
    /// load's samples, as much as the skiplist insertion itself), and a write's lookups no
    /// longer need it: the key filter skips the lookup of a new key.
    Rows,
    /// Only seeks and scans (`history`, `expiries`, `doc_index`): filters over topics only.
    Seeks,
}

fn reads_of(family: &str) -> Reads {
    match family {
        CF_KV => Reads::Rows,
        CF_HISTORY | CF_EXPIRIES | CF_DOC_INDEX => Reads::Seeks,
        _ => Reads::Points,
    }
}

/// The options of the per-topic column family `family`.
fn topic_cf_options(cache: &Cache, family: &str) -> Options {
    let reads = reads_of(family);
    let mut options = Options::default();
    options.set_prefix_extractor(SliceTransform::create_fixed_prefix(TOPIC_ID_BYTES));
    if reads == Reads::Points {
        options.set_memtable_prefix_bloom_ratio(0.1);
        options.set_memtable_whole_key_filtering(true);
    }
    if family == CF_KV {
        // A document's fields are one record, changed by merges (see `doc_row.rs`).
        options.set_merge_operator("canopy.document.v1", crate::doc_row::full_merge, crate::doc_row::partial_merge);
        options.set_compaction_filter("canopy.empty-documents", crate::doc_row::drop_empty);
    }
    options.set_block_based_table_factory(&table_options(cache, reads));
    // Level 0 and the level it is compacted into are rewritten soon after they are written, so
    // they are not compressed: compressing them took 8% of a bulk load's CPU (flushes and
    // compactions of 30M keys in 64 topics), CPU the writes and the compactions of the deeper
    // levels, which hold nearly all the data, then share. The bottom level gets the strongest.
    // (The single type stays set for whatever reads it rather than the levels' list.)
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    {
        use rocksdb::DBCompressionType::{Lz4, None as Plain};
        options.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
    }
    options.set_bottommost_compression_type(rocksdb::DBCompressionType::Zstd);
    options
}

/// Options for writing an SST file of `kv` rows outside the database, to ingest: the family's
/// table format and filters, so the file serves reads like one RocksDB wrote.
pub(crate) fn kv_file_options() -> Options {
    topic_cf_options(&Cache::new_lru_cache(1 << 20), CF_KV)
}

/// The column families that hold topics' records under each topic's prefix.
pub(crate) const TOPIC_FAMILIES: [&str; 11] = [
    CF_BLOCKS,
    CF_INDEX,
    CF_PENDING,
    CF_HEADS,
    CF_KV,
    CF_TOMBSTONES,
    CF_SNAPSHOTS,
    CF_WRITERS,
    CF_HISTORY,
    CF_EXPIRIES,
    CF_DOC_INDEX,
];

/// Every column family canopy opens (besides RocksDB's `default`, which it leaves empty): the
/// topics' families and the meta family. Whatever lists, checks or measures families goes
/// through this list, so none is left out.
pub const FAMILIES: [&str; TOPIC_FAMILIES.len() + 1] = {
    let mut all = [CF_META; TOPIC_FAMILIES.len() + 1];
    let mut at = 0;
    while at < TOPIC_FAMILIES.len() {
        all[at] = TOPIC_FAMILIES[at];
        at += 1;
    }
    all
};

/// Blocks at least this large are kept in blob files.
const BLOB_BYTES_MIN: u64 = 4096;

/// Every column family canopy opens, with its options.
pub(crate) fn column_families(cache: &Cache, row_memtable_bytes: usize) -> Vec<ColumnFamilyDescriptor> {
    TOPIC_FAMILIES
        .into_iter()
        .map(|name| {
            let mut options = topic_cf_options(cache, name);
            if name == CF_KV {
                // Rows are most of what a load writes, in random key order: each level-0 file
                // of them is merged with the whole of the next level, so larger memtables make
                // fewer, larger level-0 files and each merge carries more of them (see
                // `StoreOptions::row_memtable_bytes`).
                options.set_write_buffer_size(row_memtable_bytes.max(1 << 20));
            }
            if name == CF_BLOCKS || name == CF_SNAPSHOTS {
                // Blocks are written once and read rarely: their bytes go to blob files at
                // flush, so compaction moves only small references, not every block again.
                options.set_enable_blob_files(true);
                options.set_min_blob_size(BLOB_BYTES_MIN);
                options.set_enable_blob_gc(true);
            }
            if name == CF_SNAPSHOTS {
                // Released chunks leave blob files mostly garbage, with a manifest or a
                // later snapshot's chunk keeping each alive: every blob file is collected.
                options.set_blob_gc_age_cutoff(1.0);
            }
            ColumnFamilyDescriptor::new(name, options)
        })
        .chain(std::iter::once(ColumnFamilyDescriptor::new(CF_META, Options::default())))
        .collect()
}

/// Compacts one topic's range of a column family, beside RocksDB's own compactions rather than
/// holding them off (an exclusive manual compaction would let flushed files pile up and slow
/// the writes going on meanwhile).
pub(crate) fn compact_topic_range(db: &DB, cf: &rocksdb::ColumnFamily, topic: TopicId) {
    let end = topic.range_end().map_or_else(|| vec![0xff; 64], |end| end.to_vec());
    let mut options = rocksdb::CompactOptions::default();
    options.set_exclusive_manual_compaction(false);
    db.compact_range_cf_opt(cf, Some(&topic.prefix()[..]), Some(&end[..]), &options);
}

/// Reads options bounded to one topic's range.
pub(crate) fn topic_read_options(topic: TopicId) -> ReadOptions {
    let mut options = ReadOptions::default();
    options.set_prefix_same_as_start(true);
    if let Some(end) = topic.range_end() {
        options.set_iterate_upper_bound(end.to_vec());
    }
    options
}

pub(crate) type Records<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a>;

/// A topic's records in one column family, keys without the topic prefix.
pub(crate) fn prefix_scan<'a>(db: &'a DB, cf: &rocksdb::ColumnFamily, topic: TopicId) -> Records<'a> {
    let prefix = topic.prefix();
    let iter = db.iterator_cf_opt(cf, topic_read_options(topic), IteratorMode::From(&prefix, Direction::Forward));
    Box::new(strip(iter, prefix))
}

/// A topic's records in one column family of the database, from the key `from` (without the
/// topic prefix) on, keys without the topic prefix.
pub(crate) fn db_scan_from<'a>(db: &'a DB, cf: &rocksdb::ColumnFamily, topic: TopicId, from: &[u8]) -> Records<'a> {
    let start = topic.key(from);
    let iter = db.iterator_cf_opt(cf, topic_read_options(topic), IteratorMode::From(&start, Direction::Forward));
    Box::new(strip(iter, topic.prefix()))
}

pub(crate) fn strip<'a>(
    iter: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + 'a,
    prefix: [u8; TOPIC_ID_BYTES],
) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StorageError>> + 'a {
    iter.take_while(move |item| item.as_ref().map_or(true, |(key, _)| key.starts_with(&prefix))).map(|item| {
        let (key, value) = item?;
        Ok((key[TOPIC_ID_BYTES..].to_vec(), value.into_vec()))
    })
}

/// A topic's records in one column family as `view` holds them, from `from` on (a key without
/// the topic prefix), keys without the prefix.
pub(crate) fn scan_from<'a>(
    view: &'a SnapshotWithThreadMode<'a, DB>,
    cf: &rocksdb::ColumnFamily,
    topic: TopicId,
    from: &[u8],
) -> Records<'a> {
    let start = topic.key(from);
    // A long scan of one topic's range: bounded above, so no prefix filter is consulted, and
    // its data blocks stay out of the block cache, where they would push out the index and
    // filter blocks every write and read needs.
    let mut options = ReadOptions::default();
    options.set_total_order_seek(true);
    options.fill_cache(false);
    if let Some(end) = topic.range_end() {
        options.set_iterate_upper_bound(end.to_vec());
    }
    let iter = view.iterator_cf_opt(cf, options, IteratorMode::From(&start, Direction::Forward));
    Box::new(strip(iter, topic.prefix()))
}

/// Refuses a data directory of another format, rewrites one of the format before this one;
/// marks a new one with this version's.
pub(crate) fn check_format(db: &DB) -> Result<(), OpenError> {
    let meta = db.cf_handle(CF_META).expect("every canopy column family is opened with the database");
    match stored_format(db)? {
        Some(found) => {
            if (FORMAT_READ_AS_IS..FORMAT).contains(&found) {
                db.put_cf(meta, META_FORMAT, FORMAT.to_be_bytes())?;
            } else if found == FORMAT_READ_AS_IS - 1 {
                // Format 2 kept a record per document field (see `doc_row.rs`).
                let documents = crate::doc_row::migrate(
                    db,
                    db.cf_handle(CF_KV).expect("every canopy column family is opened with the database"),
                )
                .map_err(OpenError::Storage)?;
                tracing::info!(documents, "rewrote each document as one record (data directory format {FORMAT})");
                db.put_cf(meta, META_FORMAT, FORMAT.to_be_bytes())?;
            } else if found != FORMAT {
                return Err(OpenError::Format { found, expected: FORMAT });
            }
        }
        None => {
            // A directory without a format record is new, or was written before blocks were
            // signed (format 1): it then holds applied blocks, whose index records say so.
            let index = db.cf_handle(CF_INDEX).expect("every canopy column family is opened with the database");
            if db.iterator_cf(index, rocksdb::IteratorMode::Start).next().transpose()?.is_some() {
                return Err(OpenError::Format { found: 1, expected: FORMAT });
            }
            db.put_cf(meta, META_FORMAT, FORMAT.to_be_bytes())?;
        }
    }
    Ok(())
}

/// The data directory format recorded in `db`, if any.
pub(crate) fn stored_format(db: &DB) -> Result<Option<u32>, StorageError> {
    let meta = db.cf_handle(CF_META).expect("every canopy column family is opened with the database");
    let Some(bytes) = db.get_cf(meta, META_FORMAT)? else { return Ok(None) };
    let bytes = bytes.as_slice().try_into().map_err(|_| StorageError::Corrupt("bad format record in meta".into()))?;
    Ok(Some(u32::from_be_bytes(bytes)))
}
