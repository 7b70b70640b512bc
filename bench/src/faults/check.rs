//! The checker of a fault run: after the heal, asks every member again until every
//! acknowledged write is readable through it with its value, every counter is within its
//! bounds, and the members agree on every shared key and on their membership, or the time to
//! converge runs out; then says what was still wrong.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use canopy_node::wire;
use serde::Serialize;

use super::workload::{COUNTERS, Op, OpKind, Outcome, TABLE, TOPIC};

/// Keys per page of a listing.
const PAGE_KEYS: usize = 1000;

/// Pages of one listing at most, far above what a run writes.
const PAGES_MAX: usize = 1000;

/// Acknowledged table keys also read one by one through each member, beside the listing.
const POINT_READS: usize = 20;

/// How long the checker waits between two rounds of asking.
const ROUND_INTERVAL: Duration = Duration::from_millis(500);

/// Problems described at most, in a report, per kind.
const EXAMPLES_MAX: usize = 10;

/// What one round of checks found wrong; empty when converged.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Findings {
    /// Writes acknowledged at ack 2 that some member cannot read: key, then the members.
    pub lost: BTreeMap<String, Vec<usize>>,
    /// Writes acknowledged at ack 1 that some member cannot read.
    pub lost_ack1: BTreeMap<String, Vec<usize>>,
    /// Keys read with another value than the one written, and where.
    pub wrong_values: Vec<String>,
    /// Keys readable that were never written, or whose write failed definitely (4xx).
    pub phantoms: Vec<String>,
    /// Counters outside `acknowledged..=acknowledged + indeterminate` on some member.
    pub counters_out_of_bounds: Vec<String>,
    /// Shared keys the members do not agree on (two values, or a value and none), and
    /// disagreements on who the members are.
    pub diverged: Vec<String>,
    /// Members that could not be asked, and why.
    pub unreachable: Vec<String>,
}

impl Findings {
    /// Whether nothing is wrong.
    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.lost_ack1.is_empty()
            && self.wrong_values.is_empty()
            && self.phantoms.is_empty()
            && self.counters_out_of_bounds.is_empty()
            && self.diverged.is_empty()
            && self.unreachable.is_empty()
    }
}

/// The writes the checker expects, from the recorded operations.
struct Expected<'a> {
    /// Every written table key's operation.
    table: HashMap<&'a str, &'a Op>,
    /// Every written topic key's operation.
    topic: HashMap<&'a str, &'a Op>,
    /// Per counter: increments acknowledged, and increments indeterminate.
    counters: BTreeMap<String, (i128, i128)>,
    /// Every value written to each shared table key.
    shared_table: HashMap<&'a str, Vec<&'a str>>,
    /// Every value written to each shared topic key.
    shared_topic: HashMap<&'a str, Vec<&'a str>>,
}

impl<'a> Expected<'a> {
    fn new(ops: &'a [Op]) -> Expected<'a> {
        let mut expected = Expected {
            table: HashMap::new(),
            topic: HashMap::new(),
            counters: BTreeMap::new(),
            shared_table: HashMap::new(),
            shared_topic: HashMap::new(),
        };
        for index in 0..COUNTERS {
            expected.counters.insert(format!("c{index}"), (0, 0));
        }
        for op in ops {
            match op.kind {
                OpKind::CounterAck2 => {
                    let bounds = expected.counters.entry(op.key.clone()).or_default();
                    match op.outcome {
                        Outcome::Acknowledged => bounds.0 += 1,
                        Outcome::Indeterminate => bounds.1 += 1,
                        Outcome::Failed => {}
                    }
                }
                kind if kind.shared() => {
                    let shared = if kind.in_table() { &mut expected.shared_table } else { &mut expected.shared_topic };
                    let values = shared.entry(op.key.as_str()).or_default();
                    if !op.value.is_empty() {
                        values.push(op.value.as_str());
                    }
                }
                kind if kind.in_table() => {
                    expected.table.insert(op.key.as_str(), op);
                }
                _ => {
                    expected.topic.insert(op.key.as_str(), op);
                }
            }
        }
        expected
    }
}

/// How the checker asks `canopy-ops heads` whether copies of a topic agree.
pub(crate) struct Heads<'a> {
    /// The `canopy-ops` binary.
    pub(crate) ops: &'a std::path::Path,
    /// The admin token it calls the members with.
    pub(crate) token: &'a str,
}

/// Checks rounds until clean or `timeout`; returns the seconds until clean (`None` if never)
/// and the last round's findings. A round whose reads are clean also asks `canopy-ops heads`
/// whether every member has the topic's heads and each partition's owners have its heads.
pub(crate) fn until_converged(
    ops: &[Op],
    apis: &[String],
    http: &reqwest::blocking::Client,
    heads: &Heads,
    timeout: Duration,
    stop: &dyn Fn() -> bool,
) -> (Option<f64>, Findings) {
    let expected = Expected::new(ops);
    let started = Instant::now();
    loop {
        let mut findings = round(&expected, apis, http);
        if findings.clean() {
            findings.diverged.extend(heads_disagree(heads, apis, http));
        }
        if findings.clean() {
            return (Some(started.elapsed().as_secs_f64()), findings);
        }
        if started.elapsed() >= timeout || stop() {
            return (None, findings);
        }
        std::thread::sleep(ROUND_INTERVAL);
    }
}

/// One round: every member's listings, counters and point reads against `expected`.
fn round(expected: &Expected, apis: &[String], http: &reqwest::blocking::Client) -> Findings {
    let mut findings = Findings::default();
    // Each shared key's value through each member, `None` where it has none.
    let mut shared: BTreeMap<String, Vec<Option<Vec<u8>>>> = BTreeMap::new();
    let mut memberships: Vec<Vec<String>> = Vec::new();
    for (member, api) in apis.iter().enumerate() {
        let table = match listing(http, &format!("{api}/v1/tables/{TABLE}/kv")) {
            Ok(table) => table,
            Err(error) => {
                findings.unreachable.push(format!("member {member}: table listing: {error:#}"));
                continue;
            }
        };
        let mut table = table;
        split_shared(&mut shared, member, "table", &expected.shared_table, &mut table, &mut findings);
        compare(&mut findings, member, "table", &expected.table, &table);
        let topic = match listing(http, &format!("{api}/v1/topics/{TOPIC}/kv")) {
            Ok(topic) => topic,
            Err(error) => {
                findings.unreachable.push(format!("member {member}: topic listing: {error:#}"));
                continue;
            }
        };
        let mut topic = topic;
        split_shared(&mut shared, member, "topic", &expected.shared_topic, &mut topic, &mut findings);
        compare(&mut findings, member, "topic", &expected.topic, &topic);
        match membership(http, api) {
            Ok(members) => memberships.push(members),
            Err(error) => findings.unreachable.push(format!("member {member}: membership: {error:#}")),
        }
        for (counter, (acknowledged, indeterminate)) in &expected.counters {
            match counter_value(http, &format!("{api}/v1/topics/{TOPIC}/counters/{counter}")) {
                Ok(value) if (*acknowledged..=acknowledged + indeterminate).contains(&value) => {}
                Ok(value) => findings.counters_out_of_bounds.push(format!(
                    "member {member}: counter {counter} is {value}, outside {acknowledged}..={}",
                    acknowledged + indeterminate
                )),
                Err(error) => findings.unreachable.push(format!("member {member}: counter {counter}: {error:#}")),
            }
        }
        let mut acknowledged: Vec<&&Op> =
            expected.table.values().filter(|op| op.outcome == Outcome::Acknowledged && op.kind.ack() >= 2).collect();
        acknowledged.sort_by(|a, b| a.key.cmp(&b.key));
        let stride = (acknowledged.len() / POINT_READS).max(1);
        for op in acknowledged.iter().step_by(stride).take(POINT_READS) {
            let url = format!("{api}/v1/tables/{TABLE}/kv/{}", op.key);
            let read = http.get(url).send().map(|r| (r.status().as_u16(), r.text().unwrap_or_default()));
            match read {
                Ok((200, value)) if value == op.value => {}
                Ok((200, value)) => {
                    findings.wrong_values.push(format!("table key {} reads {value:?} through member {member}", op.key))
                }
                Ok(_) | Err(_) => findings.lost.entry(op.key.clone()).or_default().push(member),
            }
        }
        for lost in findings.lost.values_mut().chain(findings.lost_ack1.values_mut()) {
            lost.dedup();
        }
    }
    if findings.unreachable.is_empty() {
        findings.diverged.extend(disagreements(&shared, &memberships));
    }
    findings
}

/// Moves the shared keys out of `listed` (through `member`) into `shared`, noting a value that
/// was never written to its key.
fn split_shared(
    shared: &mut BTreeMap<String, Vec<Option<Vec<u8>>>>,
    member: usize,
    what: &str,
    written: &HashMap<&str, Vec<&str>>,
    listed: &mut HashMap<String, Vec<u8>>,
    findings: &mut Findings,
) {
    for (key, values) in written {
        let value = listed.remove(*key);
        if let Some(value) = &value
            && !values.iter().any(|written| written.as_bytes() == value.as_slice())
        {
            let shown = String::from_utf8_lossy(value);
            findings
                .wrong_values
                .push(format!("{what} key {key} holds {shown:?}, never written, through member {member}"));
        }
        let seen = shared.entry(format!("{what} key {key}")).or_default();
        seen.resize(member, None);
        seen.push(value);
    }
}

/// Where the members disagree: shared keys with different values through different members,
/// and members listing different memberships.
fn disagreements(shared: &BTreeMap<String, Vec<Option<Vec<u8>>>>, memberships: &[Vec<String>]) -> Vec<String> {
    let mut found = Vec::new();
    for (key, values) in shared {
        if values.iter().any(|value| value != &values[0]) {
            let shown: Vec<String> = values
                .iter()
                .map(|v| v.as_deref().map_or("none".into(), |v| String::from_utf8_lossy(v).into_owned()))
                .collect();
            found.push(format!("{key} differs between members: {}", shown.join(" | ")));
        }
    }
    if memberships.iter().any(|members| members != &memberships[0]) {
        found.push(format!("the members list different memberships: {memberships:?}"));
    }
    found
}

/// The topics whose copies `canopy-ops heads` finds differing: the topic across every member,
/// each partition across the owners member 0 places it on.
fn heads_disagree(heads: &Heads, apis: &[String], http: &reqwest::blocking::Client) -> Vec<String> {
    let mut checks: Vec<(String, Vec<String>)> = vec![(TOPIC.to_string(), apis.to_vec())];
    let shown = http
        .get(format!("{}/v1/tables/{TABLE}", apis[0]))
        .send()
        .and_then(|response| response.json::<wire::TableShown>());
    let members = http.get(format!("{}/v1/members", apis[0])).send().and_then(|r| r.json::<wire::Members>());
    let (shown, members) = match (shown, members) {
        (Ok(shown), Ok(members)) => (shown, members),
        (Err(error), _) | (_, Err(error)) => return vec![format!("member 0: the table's placement: {error}")],
    };
    for placement in shown.placement {
        let owners: Vec<String> = placement
            .owners
            .iter()
            .filter_map(|owner| members.members.iter().find(|m| &m.peer_id == owner).map(|m| m.api.clone()))
            .collect();
        checks.push((placement.topic, owners));
    }
    let mut found = Vec::new();
    for (topic, apis) in checks {
        let mut command = std::process::Command::new(heads.ops);
        command.args(["heads", &topic, "--token", heads.token]);
        for api in &apis {
            command.args(["--api", api]);
        }
        match command.output() {
            Ok(output) if output.status.success() => {}
            Ok(output) => found.push(format!(
                "canopy-ops heads {topic} over {apis:?}: {}{}",
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(error) => found.push(format!("cannot run {}: {error}", heads.ops.display())),
        }
    }
    found
}

/// The peer ids of the members `api` lists, in order.
fn membership(http: &reqwest::blocking::Client, api: &str) -> anyhow::Result<Vec<String>> {
    let response = http.get(format!("{api}/v1/members")).send()?;
    let status = response.status();
    if !status.is_success() {
        anyhow::bail!("{status}");
    }
    let members: wire::Members = response.json()?;
    let mut ids: Vec<String> = members.members.into_iter().map(|member| member.peer_id.to_string()).collect();
    ids.sort();
    Ok(ids)
}

/// Adds to `findings` what `listed` (through `member`) lacks or holds wrongly of `expected`.
fn compare(
    findings: &mut Findings,
    member: usize,
    what: &str,
    expected: &HashMap<&str, &Op>,
    listed: &HashMap<String, Vec<u8>>,
) {
    for (key, op) in expected {
        let value = listed.get(*key);
        if let Some(value) = value
            && value.as_slice() != op.value.as_bytes()
        {
            let shown = String::from_utf8_lossy(value);
            findings.wrong_values.push(format!("{what} key {key} holds {shown:?} through member {member}"));
        }
        if value.is_none() && op.outcome == Outcome::Acknowledged {
            let lost = if op.kind.ack() >= 2 { &mut findings.lost } else { &mut findings.lost_ack1 };
            lost.entry(key.to_string()).or_default().push(member);
        }
        if value.is_some() && op.outcome == Outcome::Failed {
            findings
                .phantoms
                .push(format!("{what} key {key}, refused with {}, is readable through member {member}", op.reply));
        }
    }
    for key in listed.keys() {
        if !expected.contains_key(key.as_str()) {
            findings.phantoms.push(format!("{what} key {key}, never written, is readable through member {member}"));
        }
    }
}

/// Every entry of the listing at `url`, following its pages; an error when a page fails or
/// leaves out partitions (206).
fn listing(http: &reqwest::blocking::Client, url: &str) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let mut entries = HashMap::new();
    let mut after: Option<String> = None;
    for _ in 0..PAGES_MAX {
        let mut request = http.get(url).query(&[("limit", PAGE_KEYS.to_string())]);
        if let Some(after) = &after {
            request = request.query(&[("after", after)]);
        }
        let response = request.send()?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            let body = response.text().unwrap_or_default();
            anyhow::bail!("{status} {}", body.chars().take(300).collect::<String>());
        }
        let page: wire::Page = response.json()?;
        for entry in page.entries {
            let key = entry.key.unwrap_or(entry.key_base64);
            entries.insert(key, BASE64.decode(entry.value)?);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(entries),
        }
    }
    anyhow::bail!("more than {PAGES_MAX} pages")
}

/// A counter's value at `url`.
fn counter_value(http: &reqwest::blocking::Client, url: &str) -> anyhow::Result<i128> {
    let response = http.get(url).send()?;
    let status = response.status();
    // A counter no increment reached yet is not there: its value is 0.
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(0);
    }
    if !status.is_success() {
        anyhow::bail!("{status}");
    }
    let counter: wire::Counter = response.json()?;
    Ok(counter.value)
}

/// At most [`EXAMPLES_MAX`] of `items`, with how many were left out.
pub(crate) fn examples(items: impl ExactSizeIterator<Item = String>) -> Vec<String> {
    let total = items.len();
    let mut shown: Vec<String> = items.take(EXAMPLES_MAX).collect();
    if total > EXAMPLES_MAX {
        shown.push(format!("... and {} more", total - EXAMPLES_MAX));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded write of `key` with `outcome`.
    fn op(kind: OpKind, key: &str, outcome: Outcome) -> Op {
        let value = super::super::workload::value_of(key);
        Op { kind, key: key.into(), value, outcome, member: 0, sent_s: 0.0, done_s: 0.0, reply: String::new() }
    }

    #[test]
    fn a_listing_without_an_acknowledged_write_loses_it_and_a_foreign_value_shows() {
        let ops = [
            op(OpKind::TablePutAck2, "p0-1", Outcome::Acknowledged),
            op(OpKind::TablePutAck1, "p0-2", Outcome::Acknowledged),
            op(OpKind::TableBatchAck2, "b0-3-0", Outcome::Indeterminate),
            op(OpKind::TablePutAck2, "p0-4", Outcome::Failed),
            op(OpKind::TablePutAck2, "p0-5", Outcome::Acknowledged),
        ];
        let expected = Expected::new(&ops);
        let mut listed = HashMap::new();
        listed.insert("p0-4".to_string(), b"value-of-p0-4".to_vec());
        listed.insert("p0-5".to_string(), b"value-of-p0-1".to_vec());
        listed.insert("x".to_string(), b"?".to_vec());
        let mut findings = Findings::default();
        compare(&mut findings, 3, "table", &expected.table, &listed);
        assert_eq!(findings.lost.into_iter().collect::<Vec<_>>(), [("p0-1".to_string(), vec![3])]);
        assert_eq!(findings.lost_ack1.into_iter().collect::<Vec<_>>(), [("p0-2".to_string(), vec![3])]);
        assert_eq!(findings.wrong_values.len(), 1, "{:?}", findings.wrong_values);
        assert_eq!(findings.phantoms.len(), 2, "{:?}", findings.phantoms);
    }

    #[test]
    fn counter_bounds_count_acknowledged_and_indeterminate_increments_apart() {
        let ops = [
            op(OpKind::CounterAck2, "c1", Outcome::Acknowledged),
            op(OpKind::CounterAck2, "c1", Outcome::Acknowledged),
            op(OpKind::CounterAck2, "c1", Outcome::Indeterminate),
            op(OpKind::CounterAck2, "c1", Outcome::Failed),
        ];
        let expected = Expected::new(&ops);
        assert_eq!(expected.counters["c1"], (2, 1));
        assert_eq!(expected.counters["c0"], (0, 0));
    }

    #[test]
    fn shared_keys_must_agree_across_members_and_hold_only_written_values() {
        let written: HashMap<&str, Vec<&str>> = HashMap::from([("o1", vec!["o1=0-1", "o1=1-4"]), ("o2", vec![])]);
        let mut shared = BTreeMap::new();
        let mut findings = Findings::default();
        let listings = [
            HashMap::from([("o1".to_string(), b"o1=1-4".to_vec()), ("p0-1".to_string(), b"x".to_vec())]),
            HashMap::from([("o1".to_string(), b"o1=1-4".to_vec())]),
        ];
        for (member, listed) in listings.iter().enumerate() {
            let mut listed = listed.clone();
            split_shared(&mut shared, member, "table", &written, &mut listed, &mut findings);
            assert!(!listed.contains_key("o1"), "a shared key is not compared as a key of its own");
        }
        let memberships = vec![vec!["a".to_string(), "b".to_string()]; 2];
        assert!(disagreements(&shared, &memberships).is_empty());
        assert!(findings.wrong_values.is_empty());

        let mut listed = HashMap::from([("o2".to_string(), b"o1=0-1".to_vec())]);
        split_shared(&mut shared, 2, "table", &written, &mut listed, &mut findings);
        assert_eq!(findings.wrong_values.len(), 1, "o2 holds a value written to o1");
        let found = disagreements(&shared, &[memberships[0].clone(), vec!["a".to_string()]]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found.iter().any(|f| f.starts_with("table key o1 differs")), "{found:?}");
    }
}
