//! The table catalog: each member's entries for the tables it created, the shape every node
//! takes from them, and the adoption of the earlier open catalog's tables.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    PARTITIONS_MAX, REPLICAS_MAX, TABLES_MAX, TableDef, TableError, Tables, sorted_heads, validate_table_name,
};

/// The legacy catalog entry of a table: its shape, without the name (the entry's key).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Shape {
    partitions: u32,
    replicas: u32,
}

/// A catalog entry: a table's shape as one member created it, and when (milliseconds since the
/// Unix epoch by its clock; 0 for a table adopted from the legacy catalog).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogEntry {
    partitions: u32,
    replicas: u32,
    created_ms: u64,
}

impl Tables {
    /// Every table of the catalog, by name.
    pub(crate) fn tables(&self) -> Result<Arc<Vec<TableDef>>, TableError> {
        let heads = sorted_heads(&self.tables_topic.heads());
        Ok(self.catalog_at(heads)?.1)
    }

    /// For each table whose catalog entries disagree on its partitions, the partition counts
    /// that lost: keys written under them lie in partitions the table's shape does not read.
    pub(crate) fn superseded(&self) -> Result<Arc<Superseded>, TableError> {
        Ok(self.catalog_at(sorted_heads(&self.tables_topic.heads()))?.2)
    }

    /// The catalog as the catalog topic's `heads` give it, read again only when they changed.
    fn catalog_at(&self, heads: Vec<canopy_crdt::Cid>) -> Result<super::CatalogRead, TableError> {
        {
            let catalog = self.catalog.lock().expect("catalog lock");
            if catalog.0 == heads {
                return Ok(catalog.clone());
            }
        }
        let page = self.tables_topic.query(b"", None, TABLES_MAX)?;
        let entries = page.entries.iter().filter_map(|(key, value)| {
            let (author, name) = std::str::from_utf8(key).ok()?.split_once('/')?;
            let entry: CatalogEntry = serde_json::from_slice(value).ok()?;
            (self.trusts(author) && validate_table_name(name).is_ok()).then_some((author, name, entry))
        });
        let (tables, superseded) = decide_catalog(entries);
        let read = (heads, Arc::new(tables), Arc::new(superseded));
        *self.catalog.lock().expect("catalog lock") = read.clone();
        Ok(read)
    }

    /// [`Tables::table`] when the catalog has not changed since it was last read, with no store
    /// read; `None` when it must be read again.
    pub(crate) fn table_cached(&self, name: &str) -> Option<Result<TableDef, TableError>> {
        let heads = sorted_heads(&self.tables_topic.heads());
        let tables = {
            let catalog = self.catalog.lock().expect("catalog lock");
            if catalog.0 != heads || heads.is_empty() {
                return None;
            }
            catalog.1.clone()
        };
        let found = tables.binary_search_by(|def| def.name.as_str().cmp(name)).ok();
        Some(found.map(|at| tables[at].clone()).ok_or_else(|| TableError::NoSuchTable(name.into())))
    }

    pub(crate) fn table(&self, name: &str) -> Result<TableDef, TableError> {
        validate_table_name(name)?;
        let tables = self.tables()?;
        let found = tables.binary_search_by(|def| def.name.as_str().cmp(name)).ok();
        found.map(|at| tables[at].clone()).ok_or_else(|| TableError::NoSuchTable(name.into()))
    }

    /// Writes this node's catalog entry for `def`, and the legacy entry for members not yet
    /// upgraded.
    pub(super) fn write_catalog_entry(&self, def: &TableDef, created_ms: u64) -> Result<(), TableError> {
        self.put_own_entry(&def.name, CatalogEntry { partitions: def.partitions, replicas: def.replicas, created_ms })?;
        let shape = Shape { partitions: def.partitions, replicas: def.replicas };
        self.legacy_tables_topic.put(def.name.as_str(), serde_json::to_vec(&shape).expect("a shape serialises"))?;
        Ok(())
    }

    /// Adopts the tables of the legacy catalog that the catalog lacks, as created at time 0 (so
    /// they keep their shape however many members adopt them). Called once, when the node joins.
    pub(super) fn adopt_legacy_catalog(&self) -> Result<(), TableError> {
        let known = self.tables()?;
        let page = self.legacy_tables_topic.query(b"", None, TABLES_MAX)?;
        for (key, value) in page.entries {
            let Ok(name) = String::from_utf8(key) else { continue };
            let Ok(shape) = serde_json::from_slice::<Shape>(&value) else { continue };
            if validate_table_name(&name).is_err()
                || !in_bounds(shape.partitions, shape.replicas)
                || known.iter().any(|def| def.name == name)
            {
                continue;
            }
            tracing::info!(table = %name, "adopting a table of the legacy catalog");
            self.put_own_entry(
                &name,
                CatalogEntry { partitions: shape.partitions, replicas: shape.replicas, created_ms: 0 },
            )?;
        }
        Ok(())
    }

    /// Writes this node's entry `<peer id>/<name>` of the catalog.
    fn put_own_entry(&self, name: &str, entry: CatalogEntry) -> Result<(), TableError> {
        let key = format!("{}/{name}", self.me.peer_id);
        self.tables_topic.put(key, serde_json::to_vec(&entry).expect("an entry serialises"))?;
        Ok(())
    }
}

/// Per table, the partition counts of catalog entries that lost to the table's shape.
pub(crate) type Superseded = BTreeMap<String, BTreeSet<u32>>;

/// The catalog the entries `(author, table, entry)` give, by name: for each table the shape of
/// the earliest created entry (the smallest author breaking ties), so every node that holds the
/// same entries decides the same way, whatever order they arrived in; and the partition counts
/// the other entries gave that differ from it. Entries whose shape breaks the bounds are
/// ignored.
fn decide_catalog<'a>(entries: impl Iterator<Item = (&'a str, &'a str, CatalogEntry)>) -> (Vec<TableDef>, Superseded) {
    let mut chosen: BTreeMap<&str, (u64, &str, TableDef)> = BTreeMap::new();
    let mut counts: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    for (author, name, entry) in entries {
        if !in_bounds(entry.partitions, entry.replicas) {
            continue;
        }
        counts.entry(name).or_default().insert(entry.partitions);
        let candidate = (
            entry.created_ms,
            author,
            TableDef { name: name.into(), partitions: entry.partitions, replicas: entry.replicas },
        );
        match chosen.get(name) {
            Some((created_ms, first, _)) if (*created_ms, *first) <= (candidate.0, candidate.1) => {}
            _ => {
                chosen.insert(name, candidate);
            }
        }
    }
    let mut superseded = Superseded::new();
    for (name, counts) in counts {
        let kept = chosen[name].2.partitions;
        let lost: BTreeSet<u32> = counts.into_iter().filter(|count| *count != kept).collect();
        if !lost.is_empty() {
            superseded.insert(name.to_string(), lost);
        }
    }
    (chosen.into_values().map(|(_, _, def)| def).collect(), superseded)
}

/// Whether a shape is within the bounds a table's shape must keep.
fn in_bounds(partitions: u32, replicas: u32) -> bool {
    (1..=PARTITIONS_MAX).contains(&partitions) && (1..=REPLICAS_MAX).contains(&replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_takes_the_earliest_entry_of_each_table_in_any_order() {
        let entry = |partitions, created_ms| CatalogEntry { partitions, replicas: 2, created_ms };
        let shapes = |entries: Vec<(&'static str, &'static str, CatalogEntry)>| {
            decide_catalog(entries.into_iter()).0.into_iter().map(|def| (def.name, def.partitions)).collect::<Vec<_>>()
        };
        let entries = || {
            vec![
                ("peer-b", "users", entry(8, 20)),
                ("peer-a", "users", entry(4, 30)),
                ("peer-c", "orders", entry(2, 5)),
                ("peer-a", "orders", entry(3, 5)),
                ("peer-a", "broken", entry(0, 1)),
                ("peer-a", "broken", entry(PARTITIONS_MAX + 1, 0)),
            ]
        };
        let expected = vec![("orders".to_string(), 3), ("users".to_string(), 8)];
        assert_eq!(shapes(entries()), expected);
        let mut reversed = entries();
        reversed.reverse();
        assert_eq!(shapes(reversed), expected);
        let (_, superseded) = decide_catalog(entries().into_iter());
        let lost = [("orders".to_string(), BTreeSet::from([2])), ("users".to_string(), BTreeSet::from([4]))];
        assert_eq!(superseded, Superseded::from(lost));
    }
}
