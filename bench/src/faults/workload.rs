//! The workload of a fault run: client threads writing through random members, every reply
//! recorded as acknowledged, failed or indeterminate. Most writes are on a key of their own, so
//! each can be found again; overwrites and deletes share a few keys, on which the members must
//! end up agreeing.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use canopy_node::tables::partition_of;
use canopy_node::wire;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

/// The table every write of a table goes to.
pub(crate) const TABLE: &str = "t";

/// Partitions of [`TABLE`].
pub(crate) const PARTITIONS: u32 = 16;

/// Copies of each partition of [`TABLE`].
pub(crate) const REPLICAS: u32 = 2;

/// The topic every member subscribes, for topic puts and counters.
pub(crate) const TOPIC: &str = "f";

/// Counters incremented, `c0` to `c3`.
pub(crate) const COUNTERS: usize = 4;

/// Keys shared by overwrites and deletes, in the table (`o0`...) and in the topic (`s0`...).
pub(crate) const SHARED_KEYS: usize = 8;

/// Puts per table batch.
const BATCH_KEYS: usize = 10;

/// Percent of the acknowledged single puts read back at once, with their causal token, through
/// another random member.
const CAUSAL_READ_PERCENT: u32 = 30;

/// Longest a client waits for a reply: above the members' 5 s acknowledgement timeout, so a
/// write that is merely under-acknowledged answers 504 rather than timing out.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `PUT /v1/tables/t/kv/{key}?ack=2`.
    TablePutAck2,
    /// `PUT /v1/tables/t/kv/{key}?ack=1`.
    TablePutAck1,
    /// One key of `POST /v1/tables/t/batch?ack=2`.
    TableBatchAck2,
    /// `PUT /v1/topics/f/kv/{key}?ack=2`.
    TopicPutAck2,
    /// `POST /v1/topics/f/counters/{counter}?ack=2` adding 1.
    CounterAck2,
    /// `PUT /v1/tables/t/kv/o{n}?ack=2`, a key other writes share.
    TableOverwrite,
    /// `DELETE /v1/tables/t/kv/o{n}?ack=2`.
    TableDelete,
    /// `PUT /v1/topics/f/kv/s{n}?ack=2`, a key other writes share.
    TopicOverwrite,
    /// `DELETE /v1/topics/f/kv/s{n}?ack=2`.
    TopicDelete,
}

impl OpKind {
    /// The acknowledgement level it asks for.
    pub(crate) fn ack(self) -> u32 {
        if self == OpKind::TablePutAck1 { 1 } else { 2 }
    }

    /// Whether its key is in the table (else in the topic).
    pub(crate) fn in_table(self) -> bool {
        matches!(
            self,
            OpKind::TablePutAck2
                | OpKind::TablePutAck1
                | OpKind::TableBatchAck2
                | OpKind::TableOverwrite
                | OpKind::TableDelete
        )
    }

    /// Whether its key is one other writes share (else the key is its own).
    pub(crate) fn shared(self) -> bool {
        matches!(self, OpKind::TableOverwrite | OpKind::TableDelete | OpKind::TopicOverwrite | OpKind::TopicDelete)
    }
}

/// How a write ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx: acknowledged at its level.
    Acknowledged,
    /// A 4xx other than 408: not applied.
    Failed,
    /// A timeout, a connection error, a 5xx (a 504 is applied but under-acknowledged): maybe
    /// applied.
    Indeterminate,
}

/// One recorded write.
#[derive(Clone, Debug, Serialize)]
pub struct Op {
    /// What it is.
    pub kind: OpKind,
    /// Its key (the counter's, for an increment).
    pub key: String,
    /// Its value (empty for an increment).
    pub value: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The member it was sent to.
    pub member: usize,
    /// Seconds into the workload it was sent.
    pub sent_s: f64,
    /// Seconds into the workload its reply (or error) came.
    pub done_s: f64,
    /// The reply's status, or the error.
    pub reply: String,
}

/// How a read with a causal token ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadResult {
    /// The value written.
    Served,
    /// No value: a 503 (no copy got the token's heads in time), another refusal, or no reply.
    Unavailable,
    /// Another value, or none (404), at a token that includes the write: the read went back
    /// in time.
    Violation,
}

/// One read of an acknowledged put with the token its reply carried.
#[derive(Clone, Debug, Serialize)]
pub struct CausalRead {
    /// The key read.
    pub key: String,
    /// The member the put went to.
    pub written_through: usize,
    /// The member the read went to.
    pub member: usize,
    /// Seconds into the workload it was sent.
    pub sent_s: f64,
    /// How it ended.
    pub result: ReadResult,
    /// The reply's status and body, or the error.
    pub reply: String,
}

/// The outcome of a reply's status.
fn outcome_of(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Acknowledged,
        408 => Outcome::Indeterminate,
        400..=499 => Outcome::Failed,
        _ => Outcome::Indeterminate,
    }
}

/// One client thread: writes through random `apis` until `deadline` or `stop`, its RNG and
/// its keys taken from `seed` and `client`.
pub(crate) fn client(
    apis: &[String],
    http: &reqwest::blocking::Client,
    seed: u64,
    client: usize,
    started: Instant,
    deadline: Instant,
    stop: &dyn Fn() -> bool,
) -> (Vec<Op>, Vec<CausalRead>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut ops = Vec::new();
    let mut reads = Vec::new();
    let mut sequence = 0u64;
    while Instant::now() < deadline && !stop() {
        sequence += 1;
        let member = rng.random_range(0..apis.len());
        let api = &apis[member];
        let draw = rng.random_range(0..100);
        let kind = match draw {
            0..25 => OpKind::TablePutAck2,
            25..33 => OpKind::TablePutAck1,
            33..45 => OpKind::TableBatchAck2,
            45..65 => OpKind::TopicPutAck2,
            65..80 => OpKind::CounterAck2,
            80..88 => OpKind::TableOverwrite,
            88..92 => OpKind::TableDelete,
            92..97 => OpKind::TopicOverwrite,
            _ => OpKind::TopicDelete,
        };
        let sent_s = started.elapsed().as_secs_f64();
        let key = format!("{client}-{sequence}");
        let record = |kind, key: String, value: String, outcome, reply: String| Op {
            kind,
            key,
            value,
            outcome,
            member,
            sent_s,
            done_s: started.elapsed().as_secs_f64(),
            reply,
        };
        match kind {
            OpKind::TableBatchAck2 => {
                let keys: Vec<String> = (0..BATCH_KEYS).map(|j| format!("b{key}-{j}")).collect();
                let ops_json: Vec<_> = keys
                    .iter()
                    .map(|k| json!({ "op": "put", "key": k, "value": BASE64.encode(value_of(k)) }))
                    .collect();
                let url = format!("{api}/v1/tables/{TABLE}/batch?ack=2");
                let reply = http.post(url).json(&json!({ "ops": ops_json })).send();
                for (k, outcome, reply) in batch_outcomes(&keys, reply) {
                    let value = value_of(&k);
                    ops.push(record(kind, k, value, outcome, reply));
                }
            }
            OpKind::CounterAck2 => {
                let counter = format!("c{}", rng.random_range(0..COUNTERS));
                let url = format!("{api}/v1/topics/{TOPIC}/counters/{counter}?ack=2");
                let (outcome, reply, _) = single(http.post(url).json(&json!({ "add": 1 })).send());
                ops.push(record(kind, counter, String::new(), outcome, reply));
            }
            OpKind::TableOverwrite | OpKind::TableDelete | OpKind::TopicOverwrite | OpKind::TopicDelete => {
                let n = rng.random_range(0..SHARED_KEYS);
                let (path, shared) =
                    if kind.in_table() { (format!("tables/{TABLE}"), "o") } else { (format!("topics/{TOPIC}"), "s") };
                let key = format!("{shared}{n}");
                let url = format!("{api}/v1/{path}/kv/{key}?ack=2");
                let (value, reply) = match kind {
                    OpKind::TableOverwrite | OpKind::TopicOverwrite => {
                        let value = format!("{key}={client}-{sequence}");
                        (value.clone(), http.put(url).body(value).send())
                    }
                    _ => (String::new(), http.delete(url).send()),
                };
                let (outcome, reply, _) = single(reply);
                ops.push(record(kind, key, value, outcome, reply));
            }
            OpKind::TablePutAck2 | OpKind::TablePutAck1 | OpKind::TopicPutAck2 => {
                let key = if kind.in_table() { format!("p{key}") } else { format!("k{key}") };
                let value = value_of(&key);
                let url = if kind.in_table() {
                    format!("{api}/v1/tables/{TABLE}/kv/{key}?ack={}", kind.ack())
                } else {
                    format!("{api}/v1/topics/{TOPIC}/kv/{key}?ack=2")
                };
                let (outcome, reply, token) = single(http.put(url).body(value.clone()).send());
                if let Some(token) = token
                    && rng.random_range(0..100) < CAUSAL_READ_PERCENT
                {
                    let reader = rng.random_range(0..apis.len());
                    let read = causal_read(http, &apis[reader], kind, &key, &value, &token);
                    let (result, read_reply) = read;
                    let sent_s = started.elapsed().as_secs_f64();
                    let key = key.clone();
                    reads.push(CausalRead {
                        key,
                        written_through: member,
                        member: reader,
                        sent_s,
                        result,
                        reply: read_reply,
                    });
                }
                ops.push(record(kind, key, value, outcome, reply));
            }
        }
    }
    (ops, reads)
}

/// Reads `key` through `api` at `token`, the token of its acknowledged put of `value`.
fn causal_read(
    http: &reqwest::blocking::Client,
    api: &str,
    kind: OpKind,
    key: &str,
    value: &str,
    token: &str,
) -> (ReadResult, String) {
    let url = if kind.in_table() {
        format!("{api}/v1/tables/{TABLE}/kv/{key}")
    } else {
        format!("{api}/v1/topics/{TOPIC}/kv/{key}")
    };
    match http.get(url).query(&[("causal", token)]).send() {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.bytes().unwrap_or_default();
            match status {
                200 if body.as_ref() == value.as_bytes() => (ReadResult::Served, "200".into()),
                200 => (ReadResult::Violation, format!("200 {}", truncated(&String::from_utf8_lossy(&body)))),
                404 => (ReadResult::Violation, described(status, &body)),
                _ => (ReadResult::Unavailable, described(status, &body)),
            }
        }
        Err(error) => (ReadResult::Unavailable, failure(&error)),
    }
}

/// The value written under `key`: unique to it, so a value under the wrong key shows.
pub(crate) fn value_of(key: &str) -> String {
    format!("value-of-{key}")
}

/// The outcome of a single write's reply, how a report shows the reply, and the causal token
/// of an acknowledged write.
fn single(reply: reqwest::Result<reqwest::blocking::Response>) -> (Outcome, String, Option<String>) {
    match reply {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.bytes().unwrap_or_default();
            let token = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .filter(|_| (200..300).contains(&status))
                .and_then(|reply| reply["causal_token"].as_str().map(str::to_string));
            (outcome_of(status), described(status, &body), token)
        }
        Err(error) => (Outcome::Indeterminate, failure(&error), None),
    }
}

/// A reply as a report shows it: its status, with the error's message, or for a 504 the
/// copies that held the write.
fn described(status: u16, body: &[u8]) -> String {
    if (200..300).contains(&status) {
        return status.to_string();
    }
    match serde_json::from_slice::<wire::ErrorBody>(body) {
        Ok(error) if status == 504 => format!("504 acknowledged by {}", error.acknowledged.unwrap_or(0)),
        Ok(error) => format!("{status} {}", truncated(&error.error)),
        Err(_) => format!("{status} {}", truncated(&String::from_utf8_lossy(body))),
    }
}

/// A request that got no reply, as a report shows it.
fn failure(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "no reply: timeout".into()
    } else if error.is_connect() {
        "no reply: cannot connect".into()
    } else {
        "no reply: connection failed".into()
    }
}

/// Each key's outcome in a table batch's reply: the outcome of its partition's status when the
/// reply lists partitions, else of the reply's own status.
fn batch_outcomes(
    keys: &[String],
    reply: reqwest::Result<reqwest::blocking::Response>,
) -> Vec<(String, Outcome, String)> {
    let (status, body) = match reply {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.bytes().unwrap_or_default())
        }
        Err(error) => {
            return keys.iter().map(|k| (k.clone(), Outcome::Indeterminate, failure(&error))).collect();
        }
    };
    let batched: Option<wire::TableBatched> = serde_json::from_slice(&body).ok();
    keys.iter()
        .map(|key| {
            let partition = partition_of(key.as_bytes(), PARTITIONS);
            let outcome = batched.as_ref().and_then(|b| b.partitions.iter().find(|p| p.partition == partition));
            match outcome {
                Some(p) => {
                    let shown = match (&p.error, p.acknowledged) {
                        (_, Some(copies)) if p.status == 504 => format!("504 acknowledged by {copies}"),
                        (Some(error), _) => format!("{} {}", p.status, truncated(error)),
                        (None, _) => p.status.to_string(),
                    };
                    (key.clone(), outcome_of(p.status), format!("{status}, partition {partition}: {shown}"))
                }
                // A 2xx that does not list the key's partition acknowledged nothing for it.
                None if (200..300).contains(&status) => {
                    (key.clone(), Outcome::Indeterminate, format!("{status} without partition {partition}"))
                }
                None => (key.clone(), outcome_of(status), described(status, &body)),
            }
        })
        .collect()
}

/// At most the first 100 characters of `text`.
fn truncated(text: &str) -> String {
    text.chars().take(100).collect()
}
