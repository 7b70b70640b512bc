//! The node crate's integration tests, one binary: each module is one former test file.

mod access;
mod api;
mod architecture;
mod cluster;
mod common;
mod counters;
mod docs;
mod embedded;
mod expiry;
mod history;
mod messages;
mod security;
mod shell;
mod storage;
mod table_docs;
mod tables;
mod wire;
