//! Where a table's keys live: a key's partition (a jump consistent hash of its BLAKE3 digest),
//! a partition's owners (rendezvous hashing over the members), and the memberships before recent
//! joins, whose owners still hold copies. Pure functions of the key, the table's shape and the
//! member set, so members that see the same members agree without talking.

use std::collections::BTreeSet;

use super::{Member, TableDef};

/// The topic holding partition `partition` of table `table`.
pub fn partition_topic(table: &str, partition: u32) -> String {
    PartitionTopic { table: table.to_string(), partition }.to_string()
}

/// A partition topic's name taken apart: `table:<table>:<partition>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionTopic {
    /// The table.
    pub table: String,
    /// The partition.
    pub partition: u32,
}

/// The prefix of every partition topic's name.
const PARTITION_TOPIC_PREFIX: &str = "table:";

impl PartitionTopic {
    /// The partition a topic holds, when `topic` names one.
    pub fn parse(topic: &str) -> Option<PartitionTopic> {
        let (table, partition) = topic.strip_prefix(PARTITION_TOPIC_PREFIX)?.rsplit_once(':')?;
        Some(PartitionTopic { table: table.to_string(), partition: partition.parse().ok()? })
    }

    /// Whether `topic` is a partition topic's name.
    pub fn is_partition_topic(topic: &str) -> bool {
        PartitionTopic::parse(topic).is_some()
    }
}

impl std::fmt::Display for PartitionTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PARTITION_TOPIC_PREFIX}{}:{}", self.table, self.partition)
    }
}

/// The partition of `key` in a table of `partitions` partitions: a jump consistent hash of the
/// key's BLAKE3 digest, so growing a table from n to n+1 partitions would move only a 1/(n+1)
/// share of the keys.
pub fn partition_of(key: &[u8], partitions: u32) -> u32 {
    let digest = blake3::hash(key);
    jump(u64::from_le_bytes(digest.as_bytes()[..8].try_into().expect("8 bytes")), partitions)
}

/// Lamping and Veach's jump consistent hash of `key` into `buckets` buckets: follows the bucket
/// the key jumps to as buckets are added, with a 64-bit linear congruential generator seeded by
/// the key.
fn jump(mut key: u64, buckets: u32) -> u32 {
    let (mut bucket, mut next): (i64, i64) = (-1, 0);
    while next < i64::from(buckets.max(1)) {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = (((bucket + 1) as f64) * ((1u64 << 31) as f64 / (((key >> 33) + 1) as f64))) as i64;
    }
    bucket as u32
}

/// The members holding partition `partition` of `table`, best first: the `replicas` members of
/// highest rendezvous score (a BLAKE3 digest of the table, the partition and the peer id).
pub fn owners(table: &str, partition: u32, replicas: u32, members: &[Member]) -> Vec<Member> {
    let mut scored: Vec<(u64, &Member)> = members
        .iter()
        .map(|member| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(table.as_bytes());
            hasher.update(&[0]);
            hasher.update(&partition.to_be_bytes());
            hasher.update(member.peer_id.as_bytes());
            let score = u64::from_le_bytes(hasher.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
            (score, member)
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.peer_id.cmp(&b.1.peer_id)));
    scored.into_iter().take(replicas as usize).map(|(_, member)| member.clone()).collect()
}

/// How long after a member joins the partitions it took over are also looked for on their
/// earlier owners, in member lifetimes: a member that joined takes its partitions on and
/// catches up on them in that time, and the earlier owners keep their copies until it has.
pub(crate) const HANDOFF_WINDOW_LIFETIMES: u32 = 10;

/// Most recent joins looked behind when looking for a partition's earlier owners.
const EARLIER_JOINS_MAX: usize = 8;

/// The memberships before each of the joins since `since_ms`, newest join first: `members`
/// without its newest member, then without its two newest, and so on (at most
/// [`EARLIER_JOINS_MAX`] steps, never empty). Their placements name a partition's earlier
/// owners.
pub(crate) fn before_recent_joins(members: &[Member], since_ms: u64) -> Vec<Vec<Member>> {
    let mut by_age = members.to_vec();
    by_age.sort_by(|a, b| a.joined_ms.cmp(&b.joined_ms).then_with(|| a.peer_id.cmp(&b.peer_id)));
    let mut earlier = Vec::new();
    while by_age.len() > 1 && earlier.len() < EARLIER_JOINS_MAX {
        match by_age.last() {
            Some(newest) if newest.joined_ms >= since_ms => {
                by_age.pop();
                earlier.push(by_age.clone());
            }
            _ => break,
        }
    }
    earlier
}

/// The partition topics of `tables` placed on `peer_id` among `members`.
pub(crate) fn placed_on(peer_id: &str, tables: &[TableDef], members: &[Member]) -> BTreeSet<String> {
    let mut placed = BTreeSet::new();
    for table in tables {
        for partition in 0..table.partitions {
            if owners(&table.name, partition, table.replicas, members).iter().any(|m| m.peer_id == peer_id) {
                placed.insert(partition_topic(&table.name, partition));
            }
        }
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                peer_id: format!("peer-{i:02}"),
                api: format!("http://127.0.0.1:{}", 7700 + i),
                addresses: Vec::new(),
                joined_ms: 0,
            })
            .collect()
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        // The partition function is part of the stored format: these must never change.
        assert_eq!(partition_of(b"alice", 1), 0);
        let fixed: Vec<u32> =
            ["alice", "bob", "carol", "dave"].iter().map(|k| partition_of(k.as_bytes(), 16)).collect();
        assert_eq!(fixed, FIXED_PARTITIONS);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[partition_of(format!("key-{i}").as_bytes(), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "uneven spread {counts:?}");
    }

    /// The partitions of alice, bob, carol and dave among 16.
    const FIXED_PARTITIONS: [u32; 4] = [6, 7, 2, 6];

    #[test]
    fn jump_hash_matches_its_published_values() {
        assert_eq!(jump(10_863_919_174_838_991, 11), 6);
        assert_eq!(jump(2_016_238_256_797_177_309, 11), 3);
        assert_eq!(jump(u64::MAX, 1), 0);
    }

    #[test]
    fn growing_a_table_moves_few_keys() {
        let moved = (0..10_000).filter(|i| {
            let key = format!("key-{i}");
            partition_of(key.as_bytes(), 8) != partition_of(key.as_bytes(), 9)
        });
        // A ninth of the keys move when an eighth partition becomes nine; never more.
        let moved = moved.count();
        assert!((900..1300).contains(&moved), "{moved} keys moved");
    }

    #[test]
    fn owners_are_distinct_deterministic_and_move_little() {
        let three = members(3);
        let four = members(4);
        let mut moved = 0;
        for partition in 0..256 {
            let before = owners("users", partition, 2, &three);
            assert_eq!(before.len(), 2);
            assert_ne!(before[0], before[1]);
            let mut shuffled = three.clone();
            shuffled.reverse();
            assert_eq!(owners("users", partition, 2, &shuffled), before, "order of members matters");
            let after = owners("users", partition, 2, &four);
            // A new member only ever takes a place; the others keep their relative order.
            for member in &after {
                if !before.contains(member) {
                    assert_eq!(member.peer_id, "peer-03");
                    moved += 1;
                }
            }
        }
        // The fourth member takes about half of the partitions' second places and first places.
        assert!((96..160).contains(&moved), "{moved} places moved");
        assert_eq!(owners("users", 0, 5, &three).len(), 3, "fewer members than replicas");
    }

    #[test]
    fn owners_spread_evenly() {
        let three = members(3);
        let mut first = [0u32; 3];
        let mut held = [0u32; 3];
        for partition in 0..3000 {
            let owners = owners("users", partition, 2, &three);
            let index = |m: &Member| three.iter().position(|t| t == m).unwrap();
            first[index(&owners[0])] += 1;
            for owner in &owners {
                held[index(owner)] += 1;
            }
        }
        assert!(first.iter().all(|&n| (850..1150).contains(&n)), "first places {first:?}");
        assert!(held.iter().all(|&n| (1850..2150).contains(&n)), "places {held:?}");
    }

    #[test]
    fn earlier_memberships_drop_the_newest_joins() {
        let mut all = members(4);
        for (i, member) in all.iter_mut().enumerate() {
            member.joined_ms = 1000 * (i as u64 + 1);
        }
        let earlier = before_recent_joins(&all, 2500);
        assert_eq!(earlier, vec![all[..3].to_vec(), all[..2].to_vec()]);
        assert!(before_recent_joins(&all, 9000).is_empty());
        assert_eq!(before_recent_joins(&all, 0).len(), 3, "never down to no member");
    }
}
