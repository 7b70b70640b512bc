//! What the transport tests share: a loopback configuration and the longest wait.

use std::time::Duration;

use canopy_transport::TransportConfig;

/// Longest any wait in these tests may take before the test fails.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// A transport on loopback with free ports, dialling `peers`.
pub fn config(peers: Vec<String>) -> TransportConfig {
    TransportConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
        peers,
        blocks_listen: "127.0.0.1:0".parse().unwrap(),
        ..TransportConfig::default()
    }
}
