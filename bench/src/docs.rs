//! `canopy-bench docs`: documents beside plain values on the embedded engine. One run writes
//! `docs` documents of `fields` fields into one topic, in batches of `batch` documents a block,
//! with two indexes declared (on `n`, a number, and `f2`, a string) and kept as they are
//! written, and as many plain values of the same size (each document's JSON text) into another
//! topic. It then times queries that find about 100 documents by `group` while no index holds
//! that field (each reads every document), declares an index on `group` and times its build
//! from the existing documents, and times the same queries through it.

use std::time::Instant;

use canopy_crdt::{Batch, DocWrite, IndexDef, IndexKind, Store, StoreOptions, Topic};
use canopy_node::{Filter, find_documents};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::threads::ThreadCpu;

/// What a documents run does.
#[derive(Clone, Debug)]
pub struct DocsConfig {
    /// Documents written (and plain values).
    pub docs: usize,
    /// Fields of each document.
    pub fields: usize,
    /// Documents (and values) per block.
    pub batch: usize,
    /// Queries timed through the index.
    pub queries: usize,
    /// Queries timed with no index on the field (each reads every document).
    pub unindexed_queries: usize,
    /// Seed of the documents' contents.
    pub seed: u64,
    /// Indexes kept while the documents are written, of the two [`KEPT`] declares.
    pub kept_indexes: usize,
    /// Threads submitting batches at once, for the documents and the values alike.
    pub writers: usize,
}

/// The indexes a run keeps while it writes: on `n` (a number, whose values arrive in order)
/// and on `f2` (a string, whose values arrive in no order).
const KEPT: [(&str, &str, IndexKind); 2] = [("by_n", "n", IndexKind::Number), ("by_f2", "f2", IndexKind::String)];

/// What a documents run measured.
#[derive(Clone, Debug, Serialize)]
pub struct DocsReport {
    /// The command that reproduces the run.
    pub command: String,
    /// Documents written.
    pub docs: usize,
    /// Fields per document.
    pub fields: usize,
    /// Documents per block.
    pub batch: usize,
    /// Mean bytes of a document's JSON text, which each plain value has too.
    pub doc_bytes: usize,
    /// Documents written per second.
    pub doc_keys_per_s: f64,
    /// Plain values of the same size written per second, in the same run.
    pub value_keys_per_s: f64,
    /// `doc_keys_per_s` over `value_keys_per_s`.
    pub ratio: f64,
    /// Indexes kept while the documents were written.
    pub indexes_during_ingest: usize,
    /// Threads that submitted batches at once.
    pub writers: usize,
    /// Documents each timed query found (about).
    pub query_hits: usize,
    /// Queries timed through the index.
    pub queries: usize,
    /// Seconds to build the index on `group` from the documents already written.
    pub index_build_s: f64,
    /// An equality query through the index on `group`: median microseconds.
    pub indexed_query_p50_us: u64,
    /// An equality query through the index: 99th percentile.
    pub indexed_query_p99_us: u64,
    /// Documents each indexed query read.
    pub indexed_query_scanned: u64,
    /// Queries timed with no index on the field.
    pub unindexed_queries: usize,
    /// The same query through no index: median microseconds.
    pub unindexed_query_p50_us: u64,
    /// The same query through no index: 99th percentile.
    pub unindexed_query_p99_us: u64,
    /// Documents each unindexed query read.
    pub unindexed_query_scanned: u64,
    /// CPU seconds the document load used, by group of threads (on Linux).
    pub doc_cpu: Option<ThreadCpu>,
    /// CPU seconds the plain values' load used, by group of threads (on Linux).
    pub value_cpu: Option<ThreadCpu>,
}

/// Values one query's field takes: about 100 documents share each.
fn groups(docs: usize) -> usize {
    docs.div_ceil(100).max(1)
}

/// Document `index`'s fields: `group` (about 100 documents share a value), `n` (its index),
/// and strings filling the rest.
fn document(index: usize, fields: usize, rng: &mut StdRng, groups: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("group".to_string(), format!("\"g{}\"", index % groups).into_bytes()),
        ("n".to_string(), index.to_string().into_bytes()),
    ];
    for field in 2..fields.max(2) {
        let text: String = (0..rng.random_range(4..16)).map(|_| rng.random_range(b'a'..=b'z') as char).collect();
        out.push((format!("f{field}"), format!("\"{text}\"").into_bytes()));
    }
    out
}

/// A document's JSON text, as its plain value twin is written.
fn json_text(fields: &[(String, Vec<u8>)]) -> Vec<u8> {
    let members: Vec<String> =
        fields.iter().map(|(name, value)| format!("\"{name}\":{}", String::from_utf8_lossy(value))).collect();
    format!("{{{}}}", members.join(",")).into_bytes()
}

/// The plain values of `contents` (each document's JSON text under its key), `batch` a batch.
fn value_batches(contents: &[Vec<(String, Vec<u8>)>], batch: usize) -> Vec<Batch> {
    let mut batches = Vec::with_capacity(contents.len().div_ceil(batch));
    for (chunk, fields) in contents.chunks(batch).enumerate() {
        let mut values = Batch::new();
        for (offset, fields) in fields.iter().enumerate() {
            values.put(key(chunk * batch + offset), json_text(fields));
        }
        batches.push(values);
    }
    batches
}

/// Runs the documents benchmark in a temporary directory.
pub fn run(config: &DocsConfig) -> anyhow::Result<DocsReport> {
    anyhow::ensure!(
        config.docs > 0 && config.batch > 0 && config.queries > 0 && config.unindexed_queries > 0,
        "docs, batch and both query counts must be positive"
    );
    anyhow::ensure!(config.fields >= 3, "a document has at least 3 fields (group, n and f2)");
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), StoreOptions::default())?;
    let (docs_topic, values_topic) = (store.topic("docs")?, store.topic("values")?);
    let groups = groups(config.docs);
    let mut rng = StdRng::seed_from_u64(config.seed);
    let contents: Vec<Vec<(String, Vec<u8>)>> =
        (0..config.docs).map(|index| document(index, config.fields, &mut rng, groups)).collect();
    let doc_bytes = contents.iter().map(|fields| json_text(fields).len()).sum::<usize>() / config.docs;

    // Both loads run on memory the process has used before: the first memtables a process
    // fills are fresh pages, whose first writes fault (a quarter of the writer's time for the
    // values when they came first), while later loads reuse them. An untimed load of the same
    // values into another topic takes that cost for both.
    let warm_up = store.topic("warm-up")?;
    submit(value_batches(&contents, config.batch), 1, |batch| warm_up.batch(batch).map(|_| ()).map_err(Into::into))?;
    warm_up.compact_storage()?;
    wait_idle(&store)?;

    // Both sides' inputs are made before their clocks start: the rates are the engine's.
    let batches = value_batches(&contents, config.batch);
    let before = ThreadCpu::now();
    let seconds = submit(batches, config.writers, |batch| values_topic.batch(batch).map(|_| ()).map_err(Into::into))?;
    let value_keys_per_s = config.docs as f64 / seconds;
    let value_cpu = ThreadCpu::now().zip(before).map(|(after, before)| after.since(before));
    // The documents start, as the values did, with empty memtables and no compaction owed:
    // the flushes and compactions the values' load left (most of its rows are still in the
    // memtable when it ends) would otherwise be paid during the documents'.
    values_topic.compact_storage()?;
    wait_idle(&store)?;

    anyhow::ensure!(config.kept_indexes <= KEPT.len(), "at most {} indexes are kept while writing", KEPT.len());
    let kept = &KEPT[..config.kept_indexes];
    for &(name, path, kind) in kept {
        let def = IndexDef::new(path, kind).map_err(anyhow::Error::msg)?;
        docs_topic.declare_index(name, &def)?;
    }
    wait_built(&docs_topic)?;
    let mut writes: Vec<Vec<(Vec<u8>, DocWrite)>> = Vec::with_capacity(config.docs.div_ceil(config.batch));
    for (index, fields) in contents.into_iter().enumerate() {
        if index % config.batch == 0 {
            writes.push(Vec::with_capacity(config.batch));
        }
        writes.last_mut().expect("pushed above").push((key(index), DocWrite::Put(fields)));
    }
    let before = ThreadCpu::now();
    let seconds =
        submit(writes, config.writers, |writes| docs_topic.doc_batch(writes, None).map(|_| ()).map_err(Into::into))?;
    let doc_keys_per_s = config.docs as f64 / seconds;
    let doc_cpu = ThreadCpu::now().zip(before).map(|(after, before)| after.since(before));

    // Latencies are an idle store's: RocksDB first finishes the compactions the load left.
    wait_idle(&store)?;
    let unindexed = time_queries(&docs_topic, config.unindexed_queries, groups, None)?;
    let started = Instant::now();
    docs_topic.declare_index("by_group", &IndexDef::new("group", IndexKind::String).map_err(anyhow::Error::msg)?)?;
    wait_built(&docs_topic)?;
    let index_build_s = started.elapsed().as_secs_f64();
    wait_idle(&store)?;
    let indexed = time_queries(&docs_topic, config.queries, groups, Some("by_group"))?;
    Ok(DocsReport {
        command: format!(
            "canopy-bench docs --docs {} --fields {} --batch {} --queries {} --unindexed-queries {} --seed {} --kept-indexes {} --writers {}",
            config.docs,
            config.fields,
            config.batch,
            config.queries,
            config.unindexed_queries,
            config.seed,
            config.kept_indexes,
            config.writers
        ),
        docs: config.docs,
        fields: config.fields,
        batch: config.batch,
        doc_bytes,
        doc_keys_per_s,
        value_keys_per_s,
        ratio: doc_keys_per_s / value_keys_per_s,
        indexes_during_ingest: kept.len(),
        writers: config.writers,
        query_hits: indexed.hits,
        queries: config.queries,
        index_build_s,
        indexed_query_p50_us: indexed.latencies.value_at_quantile(0.5),
        indexed_query_p99_us: indexed.latencies.value_at_quantile(0.99),
        indexed_query_scanned: indexed.scanned,
        unindexed_queries: config.unindexed_queries,
        unindexed_query_p50_us: unindexed.latencies.value_at_quantile(0.5),
        unindexed_query_p99_us: unindexed.latencies.value_at_quantile(0.99),
        unindexed_query_scanned: unindexed.scanned,
        doc_cpu,
        value_cpu,
    })
}

/// Submits every one of `batches` with `write`, from `writers` threads taking the next batch
/// in turn; returns the seconds it took.
fn submit<T: Send>(
    batches: Vec<T>,
    writers: usize,
    write: impl Fn(T) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<f64> {
    let queue = std::sync::Mutex::new(batches.into_iter());
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers.max(1))
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let next = queue.lock().expect("batches lock").next();
                        match next {
                            Some(batch) => write(batch)?,
                            None => return Ok::<(), anyhow::Error>(()),
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().try_for_each(|handle| handle.join().expect("a submitting thread"))
    })?;
    Ok(started.elapsed().as_secs_f64())
}

/// Waits (at most ten minutes) until RocksDB owes no compaction and runs no flush or compaction.
fn wait_idle(store: &Store) -> anyhow::Result<()> {
    let inspector = store.inspector()?;
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    while Instant::now() < deadline {
        let pending: u64 = inspector.families()?.iter().map(|family| family.pending_compaction_bytes).sum();
        if pending == 0 && store.background_jobs()? == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// Waits until every index of `topic` is built.
fn wait_built(topic: &Topic) -> anyhow::Result<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(3_600);
    while !topic.indexes().iter().all(|index| index.ready) {
        anyhow::ensure!(Instant::now() < deadline, "the indexes were not built within an hour");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    Ok(())
}

/// What a series of queries measured.
struct Timed {
    latencies: Histogram<u64>,
    /// Documents the last query found, and read.
    hits: usize,
    scanned: u64,
}

/// Times `queries` equality queries on `group`, each answered by `index` (or by a scan when
/// `None`; the run checks which served it).
fn time_queries(topic: &Topic, queries: usize, groups: usize, index: Option<&str>) -> anyhow::Result<Timed> {
    let mut timed = Timed { latencies: Histogram::<u64>::new(3)?, hits: 0, scanned: 0 };
    for query in 0..queries {
        let filter =
            Filter::parse([format!("group=g{}", (query * 7919) % groups).as_str()]).map_err(anyhow::Error::msg)?;
        let started = Instant::now();
        let found = find_documents(topic, &filter, None, None, usize::MAX)?;
        timed.latencies.record(started.elapsed().as_micros() as u64)?;
        anyhow::ensure!(found.index.as_deref() == index, "the query was served by {:?}, not {index:?}", found.index);
        timed.hits = found.docs.len();
        timed.scanned = found.scanned;
    }
    Ok(timed)
}

/// Key `index`, the same for a document and its plain twin.
fn key(index: usize) -> Vec<u8> {
    format!("svc/{index:09}").into_bytes()
}
