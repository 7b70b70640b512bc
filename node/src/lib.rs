//! The canopy node: the embeddable API, the daemon's HTTP API and the sync actor that wires the
//! crdt engine to the network.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let node = canopy_node::Node::start(canopy_node::NodeConfig::default()).await?;
//! let users = node.subscribe("users")?;
//! users.put("alice", "admin")?;
//! assert_eq!(users.get(b"alice")?.as_deref(), Some(&b"admin"[..]));
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod car;
pub mod causal;
mod config;
mod files;
pub mod http;
mod metrics;
mod node;
pub mod tables;
pub mod tls;
pub mod wire;

pub use canopy_crdt::{
    Access, AuthorId, Batch, Change, Commit, Head, IndexDef, IndexKind, IndexStatus, Mode, Page, Signer, Version,
};
pub use config::{ConfigError, NodeConfig, Overrides};
pub use node::filter::{Condition, Filter};
pub use node::{
    AckWait, DocBatchOp, Document, DocumentPage, FindError, FoundPage, HeadInfo, MessageListener, Node, NodeError,
    NodeTopic, Order, Published, SORT_DOCS_MAX, Status, TopicInfo, TopicMessage, find_documents, merge_patch,
};
pub use tables::{DrainStatus, Member, Table, TableDef, TableError};

/// `error` and its causes as one line, each said once: a cause whose text the line already
/// holds (a message that names its cause, as most of canopy's errors do) is not repeated.
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot open the store: {0}")]
        Naming(#[source] std::io::Error),
        #[error("cannot bind")]
        Silent(#[source] std::io::Error),
    }

    #[test]
    fn error_text_says_each_cause_once() {
        let cause = || std::io::Error::other("address in use");
        assert_eq!(super::error_text(&Outer::Naming(cause())), "cannot open the store: address in use");
        assert_eq!(super::error_text(&Outer::Silent(cause())), "cannot bind: address in use");
    }
}
