//! A tiny documents run: the code path of `canopy-bench docs` cannot rot.

use canopy_bench::docs::{self, DocsConfig};

#[test]
fn a_tiny_documents_run_writes_both_kinds_and_finds_a_group() {
    let report = docs::run(&DocsConfig { docs: 300, fields: 6, batch: 50, queries: 3, seed: 4 }).unwrap();
    assert!(report.doc_keys_per_s > 0.0 && report.value_keys_per_s > 0.0, "{report:?}");
    assert_eq!(report.query_hits, 100, "each group is 100 documents: {report:?}");
    assert_eq!(report.unindexed_query_scanned, 300, "no index: every document is read");
    assert!(report.doc_bytes > 30, "{report:?}");
    assert!(docs::run(&DocsConfig { docs: 10, fields: 1, batch: 5, queries: 1, seed: 1 }).is_err());
}
