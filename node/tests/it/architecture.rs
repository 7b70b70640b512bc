//! The dependency direction of ARCHITECTURE.md, checked against every crate's manifest.

use std::collections::BTreeSet;
use std::path::Path;

fn dependencies(krate: &str) -> BTreeSet<String> {
    // Read at run time: a test binary reused after the checkout moved keeps its compile-time path.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let path = Path::new(&manifest_dir).join("..").join(krate).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let manifest: toml::Table = text.parse().unwrap();
    let mut names = BTreeSet::new();
    for section in ["dependencies", "build-dependencies"] {
        if let Some(table) = manifest.get(section).and_then(|v| v.as_table()) {
            names.extend(table.keys().cloned());
        }
    }
    names
}

fn assert_none_of(krate: &str, forbidden: &[&str], why: &str) {
    let deps = dependencies(krate);
    for name in forbidden {
        assert!(!deps.contains(*name), "{krate} must not depend on {name}: {why}");
    }
}

const RUNTIMES_AND_NETWORK: &[&str] = &["tokio", "libp2p", "quinn", "axum", "hyper", "reqwest"];

#[test]
fn dag_knows_neither_key_value_semantics_nor_networking() {
    let mut forbidden = vec!["canopy-crdt", "canopy-transport", "canopy-node", "canopy-ops", "canopy-bench"];
    forbidden.extend(RUNTIMES_AND_NETWORK);
    assert_none_of("dag", &forbidden, "dag is blocks, CIDs, block store and traversal only");
}

#[test]
fn crdt_does_no_network_io_and_knows_no_runtime() {
    let mut forbidden = vec!["canopy-transport", "canopy-node", "canopy-ops", "canopy-bench"];
    forbidden.extend(RUNTIMES_AND_NETWORK);
    assert_none_of("crdt", &forbidden, "crdt is sans-IO so the simulator runs the node's logic");
}

#[test]
fn transport_has_no_storage() {
    assert_none_of(
        "transport",
        &["rocksdb", "canopy-crdt", "canopy-node", "canopy-ops", "canopy-bench"],
        "transport moves bytes; storage and replication logic live elsewhere",
    );
}

#[test]
fn only_tools_sit_above_the_node() {
    for krate in ["dag", "crdt", "transport", "node"] {
        assert_none_of(krate, &["canopy-ops", "canopy-bench"], "tools use the libraries, not the reverse");
    }
    assert!(dependencies("bench").contains("canopy-crdt"), "the simulator drives the real crdt crate");
}
