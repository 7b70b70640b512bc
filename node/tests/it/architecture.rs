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

/// The workspace's root directory.
fn root() -> std::path::PathBuf {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    Path::new(&manifest_dir).join("..")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The top-level module a source file of a library belongs to (`tables/route.rs` → `tables`);
/// `None` for the crate root and binaries.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    if first == "bin" || first == "lib.rs" || first == "main.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// Which top-level modules of the library in `src` each one names (`crate::<module>`), with
/// comments left out.
fn module_graph(src: &Path) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let mut graph: std::collections::BTreeMap<String, BTreeSet<String>> = std::collections::BTreeMap::new();
    let files: Vec<(String, String)> = rust_files(src)
        .into_iter()
        .filter_map(|file| Some((top_module(src, &file)?, std::fs::read_to_string(&file).unwrap())))
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(module, _)| module.clone()).collect();
    for (module, text) in files {
        let uses = graph.entry(module.clone()).or_default();
        // Tests may reach across modules; the modules themselves may not form a cycle.
        for line in text.lines().take_while(|line| !line.starts_with("#[cfg(test)]")) {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                if at > 0 && code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
                    continue;
                }
                let rest = &code[at + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name != module && modules.contains(&name) {
                    uses.insert(name);
                }
            }
            // `use crate::{a, b::c}` names several at once.
            if let Some(group) = code.trim_start().strip_prefix("use crate::{") {
                for part in group.split(',') {
                    let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if name != module && modules.contains(&name) {
                        uses.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// A cycle of the graph, if it has one.
fn find_cycle(graph: &std::collections::BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let graph = |edges: &[(&str, &str)]| {
        let mut graph: std::collections::BTreeMap<String, BTreeSet<String>> = std::collections::BTreeMap::new();
        for (from, to) in edges {
            graph.entry(from.to_string()).or_default().insert(to.to_string());
            graph.entry(to.to_string()).or_default();
        }
        graph
    };
    assert_eq!(find_cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap().len(), 4);
    assert!(find_cycle(&graph(&[("a", "b"), ("b", "c"), ("a", "c")])).is_none());
}

#[test]
fn no_library_has_a_module_cycle() {
    for krate in ["dag", "crdt", "transport", "node", "ops", "bench"] {
        let graph = module_graph(&root().join(krate).join("src"));
        if let Some(cycle) = find_cycle(&graph) {
            panic!("the modules of {krate} form a cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn every_module_says_what_it_is() {
    for krate in ["dag", "crdt", "transport", "node", "ops", "bench"] {
        for file in rust_files(&root().join(krate).join("src")) {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.lines().any(|line| line.starts_with("//!")),
                "{} has no `//!` line saying what the module is",
                file.display()
            );
        }
    }
}

/// The names in backquotes of ARCHITECTURE.md that look like constants (`UPPER_CASE`, at least
/// one underscore), each of which must still exist in the code.
#[test]
fn every_bound_architecture_names_exists_in_the_code() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let names: BTreeSet<&str> = text
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| {
            // Environment variables are not bounds.
            !["RUST_", "CARGO_", "CANOPY_"].iter().any(|prefix| name.starts_with(prefix))
                && name.contains('_')
                && name.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect();
    assert!(!names.is_empty(), "ARCHITECTURE.md names no bound");
    let mut code = String::new();
    for krate in ["dag", "crdt", "transport", "node", "ops", "bench"] {
        for file in rust_files(&root().join(krate).join("src")) {
            code.push_str(&std::fs::read_to_string(&file).unwrap());
        }
    }
    for name in names {
        assert!(
            code.contains(&format!("const {name}")) || code.contains(&format!("static {name}")),
            "ARCHITECTURE.md names `{name}`, which no longer exists in the code"
        );
    }
    // Settings and limits named in lower case (`inline_bytes_max`, `serving_per_peer_max`).
    let settings = text.split('`').skip(1).step_by(2).filter(|name| {
        name.ends_with("_max") && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    });
    for name in settings {
        assert!(code.contains(name), "ARCHITECTURE.md names `{name}`, which no longer exists in the code");
    }
}
