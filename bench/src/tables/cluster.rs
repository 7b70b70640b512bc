//! A cluster of `canopy serve --tables` processes on loopback, each with its own data directory
//! and free ports, and the checks that say when a table is placed and held as placed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use canopy_node::wire::{self, ErrorBody};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::replication::processes::Serve;

/// How often a wait asks the members again. Slower than a client would poll, so the asking
/// does not slow down what it waits for on a small machine.
const POLL_INTERVAL_MS: u64 = 50;

/// Running members, killed (then their data directories deleted) when dropped.
pub(crate) struct Cluster {
    /// The members in the order they started; declared first so they stop before `dir` goes.
    members: Vec<Serve>,
    /// The `canopy` binary.
    canopy: PathBuf,
    /// `--member-ttl-s` of every member.
    member_ttl_s: u64,
    /// Longest wait for the members to list each other, and for a new table to be balanced.
    timeout: Duration,
    /// Where the members keep their data.
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `count` members, each dialling the first (they find the others through the
    /// members topic), and waits until each lists all of them.
    pub(crate) fn start(canopy: &Path, count: usize, member_ttl_s: u64, timeout: Duration) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster {
            members: Vec::new(),
            canopy: canopy.to_path_buf(),
            member_ttl_s,
            timeout,
            dir: tempfile::tempdir()?,
        };
        for _ in 0..count {
            cluster.add_member()?;
        }
        let started = Instant::now();
        let listed = poll(cluster.timeout, || cluster.members.iter().find_map(|member| cluster.unlisted(member)));
        if let Err(pending) = listed {
            bail!("the members did not all list each other within {:?}: {pending}", started.elapsed());
        }
        Ok(cluster)
    }

    /// The running members, in the order they started.
    pub(crate) fn members(&self) -> &[Serve] {
        &self.members
    }

    /// Starts one more member, dialling the first. Returns once it serves its API.
    pub(crate) fn add_member(&mut self) -> anyhow::Result<()> {
        let data_dir = self.dir.path().join(format!("member-{}", self.members.len()));
        let peers: Vec<String> = self.members.first().map(|first| first.address.clone()).into_iter().collect();
        let extra = ["--tables".to_string(), "--member-ttl-s".to_string(), self.member_ttl_s.to_string()];
        let member = Serve::start(&self.canopy, &data_dir, &peers, &[], None, &extra)
            .with_context(|| format!("cannot start member {}", self.members.len()))?;
        self.members.push(member);
        Ok(())
    }

    /// Creates `table` through the first member and waits until it is balanced.
    pub(crate) fn create_table(&self, table: &str, partitions: u32, replicas: u32) -> anyhow::Result<()> {
        let first = self.members.first().context("a cluster without members has no table")?;
        let body = wire::CreateTable { name: table.to_string(), partitions, replicas };
        let response = first.http.post(first.url("/v1/tables")).json(&body).send()?;
        let status = response.status();
        if !status.is_success() {
            let message = ErrorBody::message_in(&response.bytes()?).unwrap_or_default();
            bail!("creating table {table} failed: {status} {message}");
        }
        let started = Instant::now();
        if let Err(pending) = self.wait_balanced(table, self.timeout) {
            bail!("table {table} was not placed and held within {:?}: {pending}", started.elapsed());
        }
        Ok(())
    }

    /// Waits, at most `timeout`, until [`Cluster::unbalanced`] finds nothing; on a timeout,
    /// says what was still unbalanced.
    pub(crate) fn wait_balanced(&self, table: &str, timeout: Duration) -> Result<(), String> {
        poll(timeout, || self.unbalanced(table))
    }

    /// Waits, at most `timeout`, until no member's RocksDB has compaction work pending (after a
    /// bulk load the members compact for a while, and a latency measured meanwhile is not an
    /// idle cluster's); on a timeout, says which member still had some.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> Result<(), String> {
        poll(timeout, || {
            self.members.iter().find_map(|member| {
                let status = get::<wire::AdminStatus>(member, "/v1/admin/status");
                let pending: u64 = match status {
                    Ok(Some(status)) => status.families.iter().map(|family| family.pending_compaction_bytes).sum(),
                    Ok(None) => return Some(format!("{} has no admin status", member.api)),
                    Err(error) => return Some(format!("{}: {error:#}", member.api)),
                };
                (pending > 0).then(|| format!("{} has {pending} bytes to compact", member.api))
            })
        })
    }

    /// What keeps `table` from being balanced, or `None` when it is: every member lists every
    /// running member, places the partitions alike, and holds exactly those placed on it.
    pub(crate) fn unbalanced(&self, table: &str) -> Option<String> {
        let mut agreed: Option<Vec<Vec<String>>> = None;
        for (index, member) in self.members.iter().enumerate() {
            if let Some(pending) = self.unlisted(member) {
                return Some(pending);
            }
            let shown: wire::TableShown = match get(member, &format!("/v1/tables/{table}")) {
                Ok(Some(shown)) => shown,
                Ok(None) => return Some(format!("member {index} does not know table {table} yet")),
                Err(error) => return Some(format!("member {index}: {error:#}")),
            };
            let owners = owners(&shown);
            match &agreed {
                Some(agreed) if *agreed != owners => {
                    return Some(format!("member {index} places table {table} differently from member 0"));
                }
                Some(_) => {}
                None => agreed = Some(owners),
            }
            for placement in &shown.placement {
                let owner = placement.owners.iter().any(|owner| owner.to_string() == member.peer_id);
                match (owner, placement.held_here) {
                    (true, false) => {
                        return Some(format!("member {index} does not hold partition {} yet", placement.partition));
                    }
                    (false, true) => {
                        return Some(format!("member {index} still holds partition {}", placement.partition));
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// What `member` lacks in its list of members, or `None` when it lists exactly the running
    /// ones.
    fn unlisted(&self, member: &Serve) -> Option<String> {
        let listed: wire::Members = match get(member, "/v1/members") {
            Ok(Some(listed)) => listed,
            Ok(None) => return Some(format!("{} serves no /v1/members: it was not started with --tables", member.api)),
            Err(error) => return Some(format!("{}: {error:#}", member.api)),
        };
        let listed: BTreeSet<String> = listed.members.iter().map(|m| m.peer_id.to_string()).collect();
        let running: BTreeSet<String> = self.members.iter().map(|m| m.peer_id.clone()).collect();
        (listed != running).then(|| format!("{} lists {} of the {} members", member.api, listed.len(), running.len()))
    }
}

/// Each partition's owners, by peer id, in partition order.
pub(crate) fn owners(shown: &wire::TableShown) -> Vec<Vec<String>> {
    let mut placement: Vec<&wire::Placement> = shown.placement.iter().collect();
    placement.sort_by_key(|p| p.partition);
    placement.iter().map(|p| p.owners.iter().map(ToString::to_string).collect()).collect()
}

/// `GET path` on `member` as `T`; `None` on a 404.
pub(crate) fn get<T: DeserializeOwned>(member: &Serve, path: &str) -> anyhow::Result<Option<T>> {
    let response = member.http.get(member.url(path)).send()?;
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = response.bytes()?;
    if !status.is_success() {
        bail!("GET {path}: {status} {}", ErrorBody::message_in(&body).unwrap_or_default());
    }
    let value = serde_json::from_slice(&body).with_context(|| format!("GET {path}: an unexpected body"))?;
    Ok(Some(value))
}

/// Asks `pending` every [`POLL_INTERVAL_MS`] until it has nothing left to say, at most
/// `timeout`; on a timeout, returns its last answer.
fn poll(timeout: Duration, mut pending: impl FnMut() -> Option<String>) -> Result<(), String> {
    let started = Instant::now();
    loop {
        match pending() {
            None => return Ok(()),
            Some(what) if started.elapsed() >= timeout => return Err(what),
            Some(_) => std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS)),
        }
    }
}
