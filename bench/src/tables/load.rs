//! The requests of a tables run: routed batches, single puts, forwarded gets and read-backs,
//! each sent by client threads to members chosen at random, timed and checked.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use canopy_node::tables::partition_of;
use canopy_node::wire::{self, ErrorBody};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::cluster;
use super::{FAILURE_EXAMPLES_MAX, key_of, value_of};
use crate::replication::processes::Serve;

/// Seed of the clients' choices (members, keys); client thread `n` uses `SEED + n`.
const SEED: u64 = 0x7461_626c;

/// What one request failed: how many keys, and why.
pub(crate) struct Failed {
    /// Keys the request did not write or read.
    keys: u64,
    /// What went wrong, naming the request and the member.
    why: String,
}

impl Failed {
    /// `keys` keys failed for `why`.
    fn new(keys: u64, why: impl Into<String>) -> Failed {
        Failed { keys, why: why.into() }
    }
}

/// What a phase of requests measured.
pub(crate) struct Phase {
    /// Requests sent.
    pub(crate) requests: u64,
    /// Wall time from the first request to the last answer.
    pub(crate) seconds: f64,
    /// Each request's latency, microseconds.
    pub(crate) latencies: Histogram<u64>,
    /// Keys that failed.
    pub(crate) failures: u64,
    /// The first failures' messages.
    pub(crate) examples: Vec<String>,
}

impl Phase {
    /// Requests per second.
    pub(crate) fn per_s(&self) -> f64 {
        if self.seconds > 0.0 { self.requests as f64 / self.seconds } else { 0.0 }
    }
}

/// Sends `requests` requests from `clients` threads, request `n` being `request(n, rng)` with
/// the thread's random choices, and times each.
fn drive(
    requests: u64,
    clients: usize,
    request: impl Fn(u64, &mut StdRng) -> Result<(), Failed> + Sync,
) -> anyhow::Result<Phase> {
    let next = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    let examples = Mutex::new(Vec::new());
    let started = Instant::now();
    let histograms: Vec<std::thread::Result<Histogram<u64>>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients.max(1) as u64)
            .map(|client| {
                let (next, failures, examples, request) = (&next, &failures, &examples, &request);
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(SEED + client);
                    let mut latencies = crate::latency_histogram();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= requests {
                            return latencies;
                        }
                        let began = Instant::now();
                        let outcome = request(n, &mut rng);
                        latencies.saturating_record(began.elapsed().as_micros() as u64);
                        if let Err(failed) = outcome {
                            failures.fetch_add(failed.keys, Ordering::Relaxed);
                            let mut examples = examples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                            if examples.len() < FAILURE_EXAMPLES_MAX {
                                examples.push(failed.why);
                            }
                        }
                    }
                })
            })
            .collect();
        threads.into_iter().map(|thread| thread.join()).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = crate::latency_histogram();
    for histogram in histograms {
        let histogram = histogram.map_err(|_| anyhow!("a client thread panicked"))?;
        latencies.add(histogram).context("histograms of equal bounds add")?;
    }
    let examples = examples.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(Phase { requests, seconds, latencies, failures: failures.into_inner(), examples })
}

/// A member chosen at random.
fn any_member<'a>(members: &'a [Serve], rng: &mut StdRng) -> &'a Serve {
    &members[rng.random_range(0..members.len())]
}

/// The URL path of `key` in `table`.
fn key_path(table: &str, key: &str) -> String {
    format!("/v1/tables/{table}/kv/{key}")
}

/// A refusal's status and message, for a failure's explanation.
fn refusal(response: reqwest::blocking::Response) -> String {
    let status = response.status();
    let message = response.bytes().ok().and_then(|body| ErrorBody::message_in(&body)).unwrap_or_default();
    format!("{status} {message}")
}

/// The body of a table batch, as a topic batch's (`wire::Batch`) with puts alone: written
/// here rather than built from `wire::BatchOp`, so the optional fields a put may carry (none
/// of which the benchmark sets) do not lengthen every operation.
#[derive(Serialize)]
struct Batch {
    /// The puts, in order.
    ops: Vec<BatchPut>,
}

/// One put of a table batch.
#[derive(Serialize)]
struct BatchPut {
    /// Always `put`.
    op: &'static str,
    /// The key as text.
    key: String,
    /// The value's bytes in base64.
    value: String,
}

/// Whether a partition applied its part of a table batch.
fn applied(outcome: &wire::PartitionBatched) -> bool {
    outcome.error.is_none() && (200..300).contains(&outcome.status)
}

/// Writes keys `keys` into `table` in batches of `batch` (`POST /v1/tables/{t}/batch`, in
/// DAG-CBOR when `cbor`, else JSON), each to a random member, from `clients` threads. A key
/// fails when its partition did not apply it.
pub(crate) fn batch_ingest(
    members: &[Serve],
    table: &str,
    partitions: u32,
    keys: Range<u64>,
    (batch, cbor): (usize, bool),
    clients: usize,
) -> anyhow::Result<Phase> {
    let batch = batch.max(1) as u64;
    let batches = (keys.end - keys.start).div_ceil(batch);
    let path = format!("/v1/tables/{table}/batch");
    drive(batches, clients, |n, rng| {
        let first = keys.start + n * batch;
        let indexes = first..(first + batch).min(keys.end);
        let mut per_partition: BTreeMap<u32, u64> = BTreeMap::new();
        let mut binary = canopy_node::Batch::new();
        let mut ops = Vec::new();
        for index in indexes {
            let key = key_of(index);
            *per_partition.entry(partition_of(key.as_bytes(), partitions)).or_default() += 1;
            if cbor {
                binary.put(key.into_bytes(), value_of(index));
            } else {
                ops.push(BatchPut { op: "put", key, value: BASE64.encode(value_of(index)) });
            }
        }
        let sent = per_partition.values().sum();
        let member = any_member(members, rng);
        let request = member.http.post(member.url(&path));
        let request = if cbor {
            request.header(reqwest::header::CONTENT_TYPE, wire::CBOR_BATCH).body(wire::CborBatch::of(&binary).encode())
        } else {
            request.json(&Batch { ops })
        };
        let response =
            request.send().map_err(|error| Failed::new(sent, format!("batch {n} through {}: {error}", member.api)))?;
        let status = response.status().as_u16();
        if status != 200 && status != 207 {
            return Err(Failed::new(sent, format!("batch {n} through {}: {}", member.api, refusal(response))));
        }
        let reply: wire::TableBatched = response.json().map_err(|error| {
            Failed::new(sent, format!("batch {n} through {}: an unexpected reply: {error}", member.api))
        })?;
        let mut why = None;
        for outcome in &reply.partitions {
            if applied(outcome) {
                per_partition.remove(&outcome.partition);
            } else if why.is_none() {
                why = Some(format!("partition {}: {}", outcome.partition, outcome.error.as_deref().unwrap_or("")));
            }
        }
        let failed: u64 = per_partition.values().sum();
        if failed == 0 {
            return Ok(());
        }
        let why = why.unwrap_or_else(|| "the reply names not every partition written".to_string());
        Err(Failed::new(failed, format!("batch {n} through {} ({status}): {failed} keys failed, {why}", member.api)))
    })
}

/// Puts keys `keys` one request each (`PUT /v1/tables/{t}/kv/{key}`, with `?ack=N` when `ack`
/// is given) through random members, from `clients` threads.
pub(crate) fn puts(
    members: &[Serve],
    table: &str,
    keys: Range<u64>,
    clients: usize,
    ack: Option<u32>,
) -> anyhow::Result<Phase> {
    let query = ack.map(|ack| format!("?ack={ack}")).unwrap_or_default();
    drive(keys.end - keys.start, clients, |n, rng| {
        let index = keys.start + n;
        let key = key_of(index);
        let member = any_member(members, rng);
        let url = member.url(&format!("{}{query}", key_path(table, &key)));
        let failed = |why: String| Failed::new(1, format!("PUT {key}{query} through {}: {why}", member.api));
        let response = member.http.put(url).body(value_of(index)).send().map_err(|e| failed(e.to_string()))?;
        if !response.status().is_success() {
            return Err(failed(refusal(response)));
        }
        let written: wire::Written = response.json().map_err(|e| failed(format!("an unexpected reply: {e}")))?;
        match ack {
            Some(ack) if written.acknowledged < ack => {
                Err(failed(format!("acknowledged by {} copies, not {ack}", written.acknowledged)))
            }
            _ => Ok(()),
        }
    })
}

/// Each partition's owners as the first member places them.
pub(crate) struct Placement {
    /// Partitions of the table.
    partitions: u32,
    /// The owners' peer ids, by partition.
    owners: Vec<Vec<String>>,
}

impl Placement {
    /// The placement of `table` of `partitions` partitions, as the first member sees it.
    pub(crate) fn of(members: &[Serve], table: &str, partitions: u32) -> anyhow::Result<Placement> {
        let first = members.first().context("no members to ask where the partitions are")?;
        let shown: wire::TableShown = cluster::get(first, &format!("/v1/tables/{table}"))?
            .with_context(|| format!("{} does not know table {table}", first.api))?;
        let owners = cluster::owners(&shown);
        anyhow::ensure!(
            owners.len() == partitions as usize,
            "{} places {} partitions of table {table}, not {partitions}",
            first.api,
            owners.len()
        );
        Ok(Placement { partitions, owners })
    }

    /// The members holding no copy of `key`.
    fn strangers<'a>(&self, members: &'a [Serve], key: &str) -> Vec<&'a Serve> {
        let owners = &self.owners[partition_of(key.as_bytes(), self.partitions) as usize];
        members.iter().filter(|member| !owners.contains(&member.peer_id)).collect()
    }
}

/// The first key index of the keys warm-up asks for: far above any key a run writes.
const WARM_UP_FIRST: u64 = 1 << 62;

/// Most key indexes tried while looking for an absent key of each partition.
const WARM_UP_TRIES_MAX: u64 = 1 << 20;

/// Asks every member for an absent key of every partition of `table`, so each copy has had
/// its turn to catch up (a copy taken on moments ago makes its first requests wait up to
/// `ANNOUNCE_SETTLE`) before anything is timed.
pub(crate) fn warm_up(members: &[Serve], table: &str, partitions: u32) -> anyhow::Result<()> {
    let mut absent: BTreeMap<u32, String> = BTreeMap::new();
    for index in WARM_UP_FIRST..WARM_UP_FIRST + WARM_UP_TRIES_MAX {
        if absent.len() == partitions as usize {
            break;
        }
        let key = key_of(index);
        absent.entry(partition_of(key.as_bytes(), partitions)).or_insert(key);
    }
    for member in members {
        for key in absent.values() {
            let response = member.http.get(member.url(&key_path(table, key))).send()?;
            let status = response.status();
            anyhow::ensure!(
                status == reqwest::StatusCode::NOT_FOUND,
                "warming up: GET {key} through {} gave {}, not 404",
                member.api,
                refusal(response)
            );
        }
    }
    Ok(())
}

/// Gets `samples` random keys below `keys` one at a time, each through a member that holds no
/// copy of it, so every get is forwarded; `None` when every member holds every partition.
pub(crate) fn forwarded_gets(
    members: &[Serve],
    table: &str,
    placement: &Placement,
    keys: u64,
    samples: usize,
) -> anyhow::Result<Option<Phase>> {
    if placement.owners.iter().all(|owners| owners.len() >= members.len()) {
        return Ok(None);
    }
    let phase = drive(samples as u64, 1, |_, rng| {
        let index = rng.random_range(0..keys.max(1));
        let key = key_of(index);
        let strangers = placement.strangers(members, &key);
        if strangers.is_empty() {
            return Err(Failed::new(1, format!("every member holds a copy of {key}")));
        }
        let member = strangers[rng.random_range(0..strangers.len())];
        read(member, table, index)
    })?;
    Ok(Some(phase))
}

/// Reads `samples` random keys below `written` back, each through a random member, checking
/// each value.
pub(crate) fn read_back(members: &[Serve], table: &str, written: u64, samples: usize) -> anyhow::Result<Phase> {
    let samples = if written == 0 { 0 } else { samples as u64 };
    drive(samples, 1, |_, rng| {
        let index = rng.random_range(0..written);
        read(any_member(members, rng), table, index)
    })
}

/// Gets key `index` through `member` and checks that it holds the key's value.
fn read(member: &Serve, table: &str, index: u64) -> Result<(), Failed> {
    let key = key_of(index);
    let failed = |why: String| Failed::new(1, format!("GET {key} through {}: {why}", member.api));
    let response = member.http.get(member.url(&key_path(table, &key))).send().map_err(|e| failed(e.to_string()))?;
    if !response.status().is_success() {
        return Err(failed(refusal(response)));
    }
    let value = response.bytes().map_err(|e| failed(e.to_string()))?;
    if value.as_ref() != value_of(index).as_slice() {
        return Err(failed(format!("another value ({} bytes)", value.len())));
    }
    Ok(())
}
