//! The settings of a store.

use canopy_dag::Signer;

use crate::delta::Limits;

/// The default size of the memtable of rows ([`StoreOptions::row_memtable_bytes`]), which the
/// offline tools open a store with too.
pub(crate) const ROW_MEMTABLE_BYTES: usize = 256 << 20;

/// Settings of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Sync the write-ahead log on every commit, so acknowledged writes survive a power loss
    /// (without it they survive a process crash).
    pub sync_writes: bool,
    /// Threads that write to RocksDB; topics are spread over them by id.
    pub writer_threads: usize,
    /// Requests each writer thread queues before callers wait.
    pub queue_depth: usize,
    /// Most operations grouped into one commit.
    pub group_ops_max: usize,
    /// Most bytes of keys and values grouped into one round of commits.
    pub group_bytes_max: usize,
    /// Most received blocks applied in one RocksDB write.
    pub apply_blocks_max: usize,
    /// Most received blocks kept in memory waiting for their parents, per topic. Catch-up is
    /// served bottom-up and does not need them; the oldest are evicted first.
    pub pending_blocks_max: usize,
    /// Most bytes of received blocks kept waiting for their parents, per topic.
    pub pending_bytes_max: usize,
    /// Most tombstones kept per topic for elements whose block has not arrived.
    pub tombstones_max: u64,
    /// Changes each watcher may fall behind before it is disconnected.
    pub watch_queue_depth: usize,
    /// Most entries one query returns.
    pub query_limit_max: usize,
    /// Shared RocksDB block cache, in bytes.
    pub cache_bytes: usize,
    /// Size of the memtable of rows (RocksDB's `write_buffer_size` of `kv`), in bytes; two can
    /// be held while one is flushed. Larger, a bulk load is flushed into fewer level-0 files
    /// and compacts each row fewer times: 100M keys in 64 topics loaded in 306 s with 256 MiB
    /// against 345 s with 64 MiB, and stalled 4 s against 106 s.
    pub row_memtable_bytes: usize,
    /// Key, value and batch limits of local writes; at most the protocol's limits
    /// ([`Limits::PROTOCOL`]), which received blocks are always checked against.
    pub limits: Limits,
    /// A topic's history is pruned automatically once this many blocks were added since its
    /// last pruning (0: never by count). Pruning makes no snapshot: its work is the history
    /// it prunes, so the unpruned history stays within this budget at any size.
    pub compact_after_blocks: u64,
    /// A topic's history is pruned automatically once this many bytes of blocks were added
    /// since its last pruning (0: never by size).
    pub compact_after_bytes: u64,
    /// Most bytes of blocks added and not yet pruned over all the store's topics: past it, a
    /// topic that grows is pruned once it added at least a 64th of this (and 1 MiB), so many
    /// topics that each stay below `compact_after_bytes` are still pruned (0: no store-wide
    /// budget).
    pub unpruned_bytes_max: u64,
    /// A served snapshot nobody fetched from for this long is let go, with the view of the rows
    /// it holds (`None`: kept until a newer one replaces it). A peer that needs one later gets
    /// a new one.
    pub snapshot_retain_ms: Option<u64>,
    /// Make a snapshot a peer needs on the thread that answers it, rather than on the store's
    /// compaction thread: the simulator's replicas do, so a run is the same every time.
    pub snapshots_inline: bool,
    /// The key this store signs its blocks with. `None`: a key kept in the database, made when
    /// the database is created (a node passes its identity key).
    pub author: Option<Signer>,
    /// The id counters know this store's increments by, apart from other stores writing with
    /// the same key. `None`: random, made when the database is created and kept in it.
    pub origin: Option<[u8; crate::counter::ORIGIN_BYTES]>,
    /// Keep, for every key, which held blocks put and deleted it, so `Topic::history` lists
    /// its versions. Off, a key's history is its live elements alone; writes save one small
    /// record per key.
    pub key_history: bool,
    /// The wall clock expiring entries are judged by.
    pub clock: crate::expiry::Clock,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync_writes: false,
            writer_threads: 2,
            queue_depth: 4096,
            group_ops_max: 4096,
            group_bytes_max: 32 << 20,
            apply_blocks_max: 4096,
            pending_blocks_max: 4096,
            pending_bytes_max: 64 << 20,
            tombstones_max: 1 << 20,
            watch_queue_depth: 4096,
            query_limit_max: 10_000,
            cache_bytes: 64 << 20,
            row_memtable_bytes: ROW_MEMTABLE_BYTES,
            limits: Limits::default(),
            compact_after_blocks: 10_000,
            compact_after_bytes: 256 << 20,
            unpruned_bytes_max: 512 << 20,
            snapshot_retain_ms: Some(10 * 60 * 1000),
            snapshots_inline: false,
            author: None,
            origin: None,
            key_history: true,
            clock: crate::expiry::Clock::system(),
        }
    }
}
