//! `canopy-bench docs`: documents beside plain values on the embedded engine. One run writes
//! `docs` documents of `fields` fields into one topic, in batches of `batch` documents a block,
//! and as many plain values of the same size (each document's JSON text) into another, then
//! times queries that find about 100 documents by a field. No index serves queries yet, so a
//! query reads every document: the report says so (`indexed_query_p99_us` is absent).

use std::time::Instant;

use canopy_crdt::{Batch, DocWrite, Store, StoreOptions};
use canopy_node::Filter;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// What a documents run does.
#[derive(Clone, Debug)]
pub struct DocsConfig {
    /// Documents written (and plain values).
    pub docs: usize,
    /// Fields of each document.
    pub fields: usize,
    /// Documents (and values) per block.
    pub batch: usize,
    /// Queries timed.
    pub queries: usize,
    /// Seed of the documents' contents.
    pub seed: u64,
}

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
    /// Documents each timed query found (about).
    pub query_hits: usize,
    /// Queries timed.
    pub queries: usize,
    /// An equality query through no index: median microseconds.
    pub unindexed_query_p50_us: u64,
    /// An equality query through no index: 99th percentile.
    pub unindexed_query_p99_us: u64,
    /// Documents each unindexed query read.
    pub unindexed_query_scanned: u64,
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

/// Runs the documents benchmark in a temporary directory.
pub fn run(config: &DocsConfig) -> anyhow::Result<DocsReport> {
    anyhow::ensure!(
        config.docs > 0 && config.batch > 0 && config.queries > 0,
        "docs, batch and queries must be positive"
    );
    anyhow::ensure!(config.fields >= 2, "a document has at least 2 fields (group and n)");
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), StoreOptions::default())?;
    let (docs_topic, values_topic) = (store.topic("docs")?, store.topic("values")?);
    let groups = groups(config.docs);
    let mut rng = StdRng::seed_from_u64(config.seed);
    let contents: Vec<Vec<(String, Vec<u8>)>> =
        (0..config.docs).map(|index| document(index, config.fields, &mut rng, groups)).collect();
    let doc_bytes = contents.iter().map(|fields| json_text(fields).len()).sum::<usize>() / config.docs;

    let started = Instant::now();
    for (chunk, fields) in contents.chunks(config.batch).enumerate() {
        let mut batch = Batch::new();
        for (offset, fields) in fields.iter().enumerate() {
            batch.put(key(chunk * config.batch + offset), json_text(fields));
        }
        values_topic.batch(batch)?;
    }
    let value_keys_per_s = config.docs as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    for (chunk, fields) in contents.chunks(config.batch).enumerate() {
        let writes = fields
            .iter()
            .enumerate()
            .map(|(offset, fields)| (key(chunk * config.batch + offset), DocWrite::Put(fields.clone())))
            .collect();
        docs_topic.doc_batch(writes, None)?;
    }
    let doc_keys_per_s = config.docs as f64 / started.elapsed().as_secs_f64();
    drop(contents);

    let mut histogram = Histogram::<u64>::new(3)?;
    let (mut hits, mut scanned) = (0, 0);
    for query in 0..config.queries {
        let filter =
            Filter::parse([format!("group=g{}", (query * 7919) % groups).as_str()]).map_err(anyhow::Error::msg)?;
        let started = Instant::now();
        let (found, read) = find(&docs_topic, &filter)?;
        histogram.record(started.elapsed().as_micros() as u64)?;
        hits = found;
        scanned = read;
    }
    Ok(DocsReport {
        command: format!(
            "canopy-bench docs --docs {} --fields {} --batch {} --queries {} --seed {}",
            config.docs, config.fields, config.batch, config.queries, config.seed
        ),
        docs: config.docs,
        fields: config.fields,
        batch: config.batch,
        doc_bytes,
        doc_keys_per_s,
        value_keys_per_s,
        ratio: doc_keys_per_s / value_keys_per_s,
        query_hits: hits,
        queries: config.queries,
        unindexed_query_p50_us: histogram.value_at_quantile(0.5),
        unindexed_query_p99_us: histogram.value_at_quantile(0.99),
        unindexed_query_scanned: scanned,
    })
}

/// Key `index`, the same for a document and its plain twin.
fn key(index: usize) -> Vec<u8> {
    format!("svc/{index:09}").into_bytes()
}

/// The documents of `topic` meeting `filter`, and the documents read, as a query without an
/// index finds them.
fn find(topic: &canopy_crdt::Topic, filter: &Filter) -> anyhow::Result<(usize, u64)> {
    let (mut found, mut read) = (0, 0);
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = topic.docs(after.as_deref(), 1000)?;
        for (_, fields) in &page.docs {
            read += 1;
            let doc: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(name, json)| Ok((name.clone(), serde_json::from_slice(json)?)))
                .collect::<Result<_, serde_json::Error>>()?;
            found += usize::from(filter.matches(&doc));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok((found, read)),
        }
    }
}
