//! Handing copies off: a copy placed elsewhere is unsubscribed once its owners hold what it
//! holds, and deleted once quiet; the copies awaiting deletion are kept in a file so a restart
//! takes them up again.

use std::collections::BTreeSet;

use super::{
    HANDOFF_MIN_AGE, HANDOFF_QUIET, Member, PartitionTopic, TableError, Tables, owners, placed_on, sorted_heads,
};
use crate::Node;

/// The file, in the data directory, listing the copies handed off and not yet deleted, with
/// their heads then: a node that restarts deletes them in turn, rather than keep them for good.
const HANDOFFS_FILE: &str = "handoffs.json";

impl Tables {
    /// Writes the copies handed off and not deleted yet to [`HANDOFFS_FILE`].
    pub(super) fn save_leaving(&self, node: &Node) {
        let leaving: std::collections::BTreeMap<String, Vec<String>> = self
            .leaving
            .lock()
            .expect("leaving lock")
            .iter()
            .map(|(topic, (_, heads))| (topic.clone(), heads.iter().map(ToString::to_string).collect()))
            .collect();
        let bytes = serde_json::to_vec(&leaving).expect("a map of strings serialises");
        let path = node.inner().config.data_dir.join(HANDOFFS_FILE);
        if let Err(error) = crate::files::write_atomically(&path, &bytes, false) {
            tracing::warn!(%error, path = %path.display(), "saving the copies handed off");
        }
    }

    /// Forgets a copy handed off once it is deleted.
    fn forget_leaving(&self, node: &Node, topic: &str) {
        self.leaving.lock().expect("leaving lock").remove(topic);
        self.save_leaving(node);
    }

    /// Takes up the copies handed off before the node restarted: each is deleted once quiet, as
    /// before, if it is still unsubscribed with the same heads. An unreadable file is set aside
    /// with a warning (the copies then stay on disk, unsubscribed).
    pub(super) fn load_leaving(&self, node: &Node) {
        let path = node.inner().config.data_dir.join(HANDOFFS_FILE);
        let Ok(bytes) = std::fs::read(&path) else { return };
        let listed: std::collections::BTreeMap<String, Vec<String>> = match serde_json::from_slice(&bytes) {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(%error, path = %path.display(), "the list of copies handed off is unreadable");
                return;
            }
        };
        let mut leaving = self.leaving.lock().expect("leaving lock");
        for (topic, heads) in listed {
            let heads: Option<Vec<canopy_crdt::Cid>> = heads.iter().map(|cid| cid.parse().ok()).collect();
            if let Some(heads) = heads
                && PartitionTopic::is_partition_topic(&topic)
                && node.topic(&topic).is_none()
            {
                leaving.insert(topic, (std::time::Instant::now(), heads));
            }
        }
    }
}

impl Tables {
    /// Takes on the partitions placed on this node that it does not hold, and hands off those
    /// it holds that are placed elsewhere now: a copy is dropped once every owner of its
    /// partition has announced exactly this copy's heads, so nothing written to it is lost.
    pub(super) fn place(&self, node: &Node, members: &[Member]) -> Result<(), TableError> {
        let tables = self.tables()?;
        let placed = placed_on(&self.me.peer_id, &tables, members);
        let held: BTreeSet<String> = node
            .inner()
            .subscribed
            .lock()
            .expect("subscribed lock")
            .iter()
            .filter(|t| PartitionTopic::is_partition_topic(t))
            .cloned()
            .collect();
        let missing: Vec<&String> = placed.difference(&held).collect();
        if !missing.is_empty() {
            tracing::info!(partitions = missing.len(), "holding partitions placed on this node");
            self.take_on(node, &missing)?;
        }
        self.strays.lock().expect("strays lock").retain(|topic| !placed.contains(topic));
        // Evidence counts only from owners connected now (what a peer said before it went away
        // is forgotten as it goes, and this also covers a disconnection not heard of).
        let connected: BTreeSet<String> = node.peers().into_iter().map(|peer| peer.peer_id).collect();
        for topic in held.difference(&placed) {
            let Some(PartitionTopic { table, partition }) = PartitionTopic::parse(topic) else { continue };
            let Some(def) = tables.iter().find(|def| def.name == table) else { continue };
            let young =
                self.taken.lock().expect("taken lock").get(topic).is_some_and(|t| t.elapsed() < HANDOFF_MIN_AGE);
            if partition >= def.partitions || young {
                continue;
            }
            let owners = owners(&table, partition, def.replicas, members);
            if let Some(heads) = self.handed_off(node, topic, &owners, &connected) {
                // Unsubscribed now, so no new request reaches the copy; deleted once quiet.
                tracing::info!(%topic, "handing a partition off to its owners");
                node.unsubscribe(topic, false)?;
                self.leaving.lock().expect("leaving lock").insert(topic.clone(), (std::time::Instant::now(), heads));
                self.save_leaving(node);
            }
        }
        let quiet: Vec<(String, Vec<canopy_crdt::Cid>)> = self
            .leaving
            .lock()
            .expect("leaving lock")
            .iter()
            .filter(|(_, (since, _))| since.elapsed() >= HANDOFF_QUIET)
            .map(|(topic, (_, heads))| (topic.clone(), heads.clone()))
            .collect();
        for (topic, heads) in quiet {
            if node.purge_at(&topic, &heads)? || node.store().existing_topic(&topic).is_none() {
                self.forget_leaving(node, &topic);
                self.taken.lock().expect("taken lock").remove(&topic);
                self.strays.lock().expect("strays lock").remove(&topic);
                tracing::info!(%topic, "deleted a partition handed off");
            } else if node.topic(&topic).is_none() {
                // A request that held the copy wrote to it after the hand-off: replicate it
                // again, and hand it off later.
                tracing::warn!(%topic, "a partition handed off was written to since; keeping it");
                self.take_on(node, &[&topic])?;
            }
        }
        Ok(())
    }

    /// This node's copy of `topic`'s heads, when every one of `owners`, all `connected`, has
    /// announced exactly those heads itself (an empty copy needs no announcement).
    fn handed_off(
        &self,
        node: &Node,
        topic: &str,
        owners: &[Member],
        connected: &BTreeSet<String>,
    ) -> Option<Vec<canopy_crdt::Cid>> {
        let ours = sorted_heads(&node.topic(topic)?.heads());
        let announced = self.announced.lock().expect("announced lock");
        let by_peer = announced.get(topic).map(|a| &a.by_peer);
        let all = !owners.is_empty()
            && owners.iter().all(|owner| {
                let Ok(peer) = owner.peer_id.parse::<canopy_transport::PeerId>() else { return false };
                if !connected.contains(&owner.peer_id) {
                    return false;
                }
                match by_peer.and_then(|by_peer| by_peer.get(&peer)) {
                    Some(theirs) => {
                        let mut theirs = theirs.clone();
                        theirs.sort_unstable();
                        theirs == ours
                    }
                    None => ours.is_empty(),
                }
            });
        all.then_some(ours)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeConfig;
    use crate::node::Heard;
    use std::time::Duration;

    /// A relayed announcement of a copy's exact heads must not hand the copy off: only what an
    /// owner says of itself over a live connection shows what it holds (a relayed one may be
    /// old, or another peer's words).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_an_owners_own_announcement_hands_a_copy_off() {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig {
            data_dir: dir.path().to_path_buf(),
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
            blocks: "127.0.0.1:0".parse().unwrap(),
            ..NodeConfig::default()
        };
        let node = Node::start(config).await.unwrap();
        node.join_tables("http://127.0.0.1:9", Duration::from_secs(20)).await.unwrap();
        let tables = node.part::<Tables>().unwrap();
        let topic = "table:users:0";
        let copy = node.subscribe(topic).unwrap();
        copy.put("k", "v").unwrap();
        let ours = sorted_heads(&copy.heads());
        let owner_key = canopy_transport::Keypair::generate_ed25519();
        let owner_peer = owner_key.public().to_peer_id();
        let owner = Member {
            peer_id: owner_peer.to_string(),
            api: "http://127.0.0.1:10".into(),
            addresses: vec![],
            joined_ms: 0,
        };
        let connected: BTreeSet<String> = [owner.peer_id.clone()].into();

        let relayed =
            Heard::Heads { topic, from: owner_peer, first_hand: false, signer: Some(owner_peer), heads: &ours };
        tables.hear(relayed);
        assert_eq!(tables.handed_off(&node, topic, std::slice::from_ref(&owner), &connected), None);

        let own = Heard::Heads { topic, from: owner_peer, first_hand: true, signer: Some(owner_peer), heads: &ours };
        tables.hear(own);
        assert_eq!(tables.handed_off(&node, topic, std::slice::from_ref(&owner), &connected), Some(ours.clone()));
        // Once the owner is gone, what it said is forgotten.
        tables.hear(Heard::Disconnected(owner_peer));
        assert_eq!(tables.handed_off(&node, topic, std::slice::from_ref(&owner), &connected), None);
        node.shutdown().await;
    }
}
