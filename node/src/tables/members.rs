//! The cluster's members: each member's entry (written by it alone, with a heartbeat count),
//! liveness judged by each node on its own clock, draining, and the members' meeting.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    HANDOFF_WINDOW_LIFETIMES, MEMBERS_MAX, Member, PartitionTopic, TableError, Tables, before_recent_joins,
    sorted_heads,
};
use crate::Node;

/// The member entry's value.
#[derive(Clone, Serialize, Deserialize)]
struct MemberRecord {
    api: String,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    joined_ms: u64,
    /// Counts the entry's rewrites: each is a heartbeat, which every node times by its own
    /// clock.
    #[serde(default)]
    beat: u64,
    /// The member is handing off every partition it holds, to stop: nothing is placed on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    draining: bool,
}

/// A member entry as read from the members topic.
pub(super) struct MemberEntry {
    peer_id: String,
    peer: canopy_transport::PeerId,
    record: MemberRecord,
}

/// How long a member entry lives once its member stops rewriting it. Liveness is judged from
/// heartbeats, each node on its own clock; this lifetime only clears the entries of members
/// long gone, so writers' clocks may disagree by up to a day.
const MEMBER_ENTRY_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How far a member's drain has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainStatus {
    /// The member is draining.
    pub draining: bool,
    /// Partition copies it still holds (subscribed).
    pub partitions_held: usize,
    /// Copies handed off whose deletion is still to come.
    pub awaiting_deletion: usize,
}

impl DrainStatus {
    /// The member holds no partition any more: stopping it loses nothing.
    pub fn done(&self) -> bool {
        self.draining && self.partitions_held == 0
    }
}

impl Tables {
    /// Live members, by peer id: those whose heartbeat this node saw change, or that spoke to
    /// it themselves, within a member lifetime, by its own clock (a member first seen counts as
    /// live for a lifetime from then). Draining members are left out: nothing is placed on them.
    /// Reads no more than the in-memory heads while the members topic is unchanged, so it is
    /// cheap on every request.
    pub(crate) fn members(&self) -> Result<Vec<Member>, TableError> {
        let entries = self.member_entries()?;
        Ok(self.live_members(&entries))
    }

    /// [`Tables::members`] when the members topic has not changed since it was last read, with
    /// no store read; `None` when it must be read again.
    pub(crate) fn members_cached(&self) -> Option<Vec<Member>> {
        let heads = sorted_heads(&self.members_topic.heads());
        let entries = {
            let cached = self.member_entries.lock().expect("member entries lock");
            if cached.0 != heads || heads.is_empty() {
                return None;
            }
            cached.1.clone()
        };
        Some(self.live_members(&entries))
    }

    /// The live members among `entries`, as [`Tables::members`] says.
    pub(super) fn live_members(&self, entries: &[MemberEntry]) -> Vec<Member> {
        let spoke = self.spoke.lock().expect("spoke lock");
        let heartbeats = self.heartbeats.lock().expect("heartbeats lock");
        let mut draining = Vec::new();
        let mut members: Vec<Member> = Vec::with_capacity(entries.len());
        for MemberEntry { peer_id, peer, record } in entries {
            let beat_lately = heartbeats.get(peer_id).is_some_and(|(_, at)| at.elapsed() < self.member_ttl);
            let spoke_lately = spoke.get(peer).is_some_and(|at| at.elapsed() < self.member_ttl);
            if !(*peer_id == self.me.peer_id || beat_lately || spoke_lately) {
                continue;
            }
            let member = Member {
                peer_id: peer_id.clone(),
                api: record.api.clone(),
                addresses: record.addresses.clone(),
                joined_ms: record.joined_ms,
            };
            if record.draining || (*peer_id == self.me.peer_id && self.is_draining()) {
                draining.push(member);
            } else {
                members.push(member);
            }
        }
        drop((spoke, heartbeats));
        *self.draining_members.lock().expect("draining lock") = draining;
        if !self.is_draining() && !members.iter().any(|m| m.peer_id == self.me.peer_id) {
            // Before this node's own entry is written (or while it is being rewritten) it still
            // counts itself.
            members.push(self.me.clone());
        }
        members.sort();
        members
    }

    /// The members topic's entries (trusted authors' only), read again when its heads changed;
    /// each entry's heartbeat count is noted then, with the time it was first read.
    pub(super) fn member_entries(&self) -> Result<Arc<Vec<MemberEntry>>, TableError> {
        let heads = sorted_heads(&self.members_topic.heads());
        {
            let cached = self.member_entries.lock().expect("member entries lock");
            if cached.0 == heads && !heads.is_empty() {
                return Ok(cached.1.clone());
            }
        }
        let page = self.members_topic.query(b"", None, MEMBERS_MAX)?;
        let entries: Vec<MemberEntry> = page
            .entries
            .into_iter()
            .filter_map(|(key, value)| {
                let peer_id = String::from_utf8(key).ok()?;
                // A keyed entry `<peer id>/...` is its author's, but no member entry.
                let peer = peer_id.parse::<canopy_transport::PeerId>().ok()?;
                if !self.trusts(&peer_id) {
                    return None;
                }
                let record: MemberRecord = serde_json::from_slice(&value).ok()?;
                Some(MemberEntry { peer_id, peer, record })
            })
            .collect();
        let mut heartbeats = self.heartbeats.lock().expect("heartbeats lock");
        for entry in &entries {
            let heard =
                heartbeats.entry(entry.peer_id.clone()).or_insert((entry.record.beat, std::time::Instant::now()));
            if heard.0 != entry.record.beat {
                *heard = (entry.record.beat, std::time::Instant::now());
            }
        }
        drop(heartbeats);
        let entries = Arc::new(entries);
        *self.member_entries.lock().expect("member entries lock") = (heads, entries.clone());
        Ok(entries)
    }

    /// The memberships whose owners may still hold copies the current owners lack: `members`
    /// with the draining members (which hold their copies until the owners have them), then the
    /// memberships before each join of the last [`HANDOFF_WINDOW_LIFETIMES`] lifetimes.
    pub(crate) fn earlier_memberships(&self, node: &Node, members: &[Member]) -> Vec<Vec<Member>> {
        let window_ms = u64::try_from((self.member_ttl * HANDOFF_WINDOW_LIFETIMES).as_millis()).unwrap_or(u64::MAX);
        let mut earlier = Vec::new();
        let draining = self.draining_members.lock().expect("draining lock").clone();
        if !draining.is_empty() {
            let mut with_draining = members.to_vec();
            with_draining.extend(draining);
            with_draining.sort();
            earlier.push(with_draining);
        }
        earlier.extend(before_recent_joins(members, node.expiry_of(Duration::ZERO).saturating_sub(window_ms)));
        earlier
    }

    /// Whether this node is draining.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining this node: its entry says so, and every member places its partitions
    /// elsewhere, so it hands each off once the new owners hold what it holds.
    pub(crate) fn drain(&self) -> Result<(), TableError> {
        self.draining.store(true, Ordering::Relaxed);
        self.refresh()
    }

    /// The partition copies this node still holds, and those handed off awaiting deletion.
    pub(crate) fn drain_progress(&self, node: &Node) -> (usize, usize) {
        let held = node
            .inner()
            .subscribed
            .lock()
            .expect("subscribed lock")
            .iter()
            .filter(|topic| PartitionTopic::is_partition_topic(topic))
            .count();
        (held, self.leaving.lock().expect("leaving lock").len())
    }

    /// Whether the entries written by `peer_id` count: every peer's do when the node admits any
    /// peer, only admitted peers' (this node among them) otherwise. Judged on the entry's key,
    /// which the keyed topic guarantees names its author.
    pub(super) fn trusts(&self, peer_id: &str) -> bool {
        self.trusted.as_ref().is_none_or(|trusted| trusted.contains(peer_id))
    }

    /// Reports, once each, API URLs that more than one live member advertises: requests
    /// forwarded to one of those members reach another.
    pub(super) fn report_shared_urls(&self, members: &[Member]) {
        let mut by_url: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
        for member in members {
            by_url.entry(member.api.as_str()).or_default().push(member.peer_id.as_str());
        }
        let mut reported = self.shared_urls.lock().expect("shared urls lock");
        for (url, peers) in by_url {
            if peers.len() > 1 && reported.insert(url.to_string()) {
                tracing::error!(
                    %url,
                    peers = %peers.join(", "),
                    "members advertise the same API URL: give each its own --advertise-api, or requests meant for \
                     one reach another"
                );
            }
        }
    }

    /// Writes this node's member entry with its next heartbeat (the earlier members topic's
    /// with a member lifetime, as members not yet upgraded judge liveness by it).
    pub(super) fn refresh(&self) -> Result<(), TableError> {
        let record = MemberRecord {
            api: self.me.api.clone(),
            addresses: self.me.addresses.clone(),
            joined_ms: self.me.joined_ms,
            beat: self.beat.fetch_add(1, Ordering::Relaxed) + 1,
            draining: self.is_draining(),
        };
        let value = serde_json::to_vec(&record).expect("a record serialises");
        let key = self.me.peer_id.clone().into_bytes();
        self.members_topic.put_for(key.clone(), value.clone(), MEMBER_ENTRY_LIFETIME)?;
        self.legacy_members_topic.put_for(key, value, self.member_ttl)?;
        Ok(())
    }
}

impl Node {
    /// Drains this member: it stops being placed any partition, so every member places its
    /// partitions elsewhere, and it hands each off once the new owners hold all it holds. The
    /// node keeps serving meanwhile; [`Node::drain_status`] says when it holds nothing and may
    /// be stopped without losing a write.
    pub fn drain(&self) -> Result<DrainStatus, TableError> {
        let tables = self.tables_part()?;
        tables.drain()?;
        self.drain_status()
    }

    /// How far the drain of this member has come.
    pub fn drain_status(&self) -> Result<DrainStatus, TableError> {
        let tables = self.tables_part()?;
        let (held, leaving) = tables.drain_progress(self);
        Ok(DrainStatus { draining: tables.is_draining(), partitions_held: held, awaiting_deletion: leaving })
    }

    /// Whether `peer` is a live member, when the members are in memory as last read; `None`
    /// when they must be read again (or this node takes no part in tables).
    pub(crate) fn is_member_cached(&self, peer: &str) -> Option<bool> {
        let members = self.part::<Tables>()?.members_cached()?;
        Some(members.iter().any(|member| member.peer_id == peer))
    }
}

impl Tables {
    /// Leaves the cluster's tables: the member entry is deleted, so the others place this node's
    /// partitions elsewhere at once rather than when the entry runs out.
    pub(super) fn leave(&self) {
        self.stop.send_replace(true);
        let _ = self.members_topic.delete(self.me.peer_id.clone().into_bytes());
        let _ = self.legacy_members_topic.delete(self.me.peer_id.clone().into_bytes());
    }
}

/// Rewrites this node's member entry every quarter of its lifetime, until the node stops. It
/// runs apart from placement, so that slow placement work never lets the entry run out.
pub(super) async fn keep_member_entry(tables: Arc<Tables>) {
    let mut stopped = tables.stop.subscribe();
    loop {
        if super::until_stopped(&mut stopped, tables.member_ttl / 4).await {
            return;
        }
        let refreshing = tables.clone();
        match tokio::task::spawn_blocking(move || refreshing.refresh()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "rewriting this node's member entry"),
            Err(_) => return,
        }
    }
}

/// Connects to the members this node is not connected to.
pub(super) fn meet(node: &Node, members: &[Member]) {
    let connected: BTreeSet<String> = node.peers().into_iter().map(|peer| peer.peer_id).collect();
    let me = node.inner().transport.peer_id();
    for member in members {
        let Ok(peer) = member.peer_id.parse::<canopy_transport::PeerId>() else { continue };
        if peer == me || connected.contains(&member.peer_id) {
            continue;
        }
        let addresses = member.addresses.iter().filter_map(|a| a.parse().ok()).collect();
        node.inner().transport.connect(peer, addresses);
    }
}
