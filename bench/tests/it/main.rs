//! The bench crate's integration tests, one binary: each module is one former test file.

mod docs;
mod faults;
mod ingest;
mod replication;
mod sim;
mod tables;
