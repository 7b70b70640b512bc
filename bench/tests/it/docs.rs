//! A tiny documents run: the code path of `canopy-bench docs` cannot rot.

use canopy_bench::docs::{self, DocsConfig};

#[test]
fn a_tiny_documents_run_writes_both_kinds_and_finds_a_group_by_scanning_then_through_an_index() {
    let config = DocsConfig {
        docs: 300,
        fields: 6,
        batch: 50,
        queries: 3,
        unindexed_queries: 2,
        seed: 4,
        kept_indexes: 2,
        writers: 2,
    };
    let report = docs::run(&config).unwrap();
    assert!(report.doc_keys_per_s > 0.0 && report.value_keys_per_s > 0.0, "{report:?}");
    assert_eq!(report.query_hits, 100, "each group is 100 documents: {report:?}");
    assert_eq!(report.unindexed_query_scanned, 300, "no index: every document is read");
    assert_eq!(report.indexed_query_scanned, 100, "the index names only the group's documents");
    assert_eq!(report.indexes_during_ingest, 2);
    assert!(report.doc_bytes > 30, "{report:?}");
    // On Linux each load's CPU time is told, the writer threads' part of it.
    if cfg!(target_os = "linux") {
        let (docs, values) = (report.doc_cpu.unwrap(), report.value_cpu.unwrap());
        assert!(docs.writer_s > 0.0 && values.writer_s > 0.0, "{report:?}");
        assert!(docs.journal_s > 0.0, "two indexes kept: the journal thread worked: {report:?}");
        assert!(values.journal_s < 0.001, "no document, no journal: {report:?}");
    }
    assert!(docs::run(&DocsConfig { fields: 2, ..config }).is_err());
}
