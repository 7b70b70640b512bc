//! canopy's workloads, simulator driver and reports, behind the `canopy-bench` binary.

pub mod ingest;
pub mod replication;
pub mod sim;
