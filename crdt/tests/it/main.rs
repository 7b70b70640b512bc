//! The crdt crate's integration tests, one binary: each module is one former test file.

mod access;
mod ahead;
mod common;
mod counters;
mod decoders;
mod docs;
mod expiry;
mod history;
mod indexes;
mod inline;
mod keys;
mod laws;
mod pipeline;
mod scenarios;
mod snapshots;
mod speakers;
mod standby;
mod store;
mod writers;
