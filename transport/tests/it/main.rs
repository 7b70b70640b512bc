//! The transport crate's integration tests, one binary: each module is one former test file.

mod common;
mod idle;
mod scoring;
mod serving;
