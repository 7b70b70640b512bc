//! Two canopy nodes embedded in one program, replicating a topic over loopback.
//!
//! `cargo run -p canopy-node --example embed`

use std::time::Duration;

use canopy_node::{Batch, Node, NodeConfig};

fn loopback(data_dir: std::path::PathBuf, peers: Vec<String>) -> NodeConfig {
    NodeConfig {
        data_dir,
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
        blocks: "127.0.0.1:0".parse().expect("a socket address"),
        peers,
        topics: vec!["users".into()],
        ..NodeConfig::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let a = Node::start(loopback(dir.path().join("a"), vec![])).await?;
    let a_address = format!("{}/p2p/{}", a.status().listen[0], a.status().peer_id);
    let b = Node::start(loopback(dir.path().join("b"), vec![a_address])).await?;

    // Topic handles block briefly on writes; async code calls them on blocking threads.
    let (on_a, on_b) = (a.subscribe("users")?, b.subscribe("users")?);
    let changes = on_b.watch();
    tokio::task::spawn_blocking(move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        on_a.put("alice", "admin")?;
        let mut batch = Batch::new();
        batch.put("bob", "reader").delete("alice");
        on_a.batch(batch)?; // one atomic delta
        Ok(())
    })
    .await?
    .map_err(|e| e.to_string())?;

    // Node b sees a's writes arrive as changes of visible values.
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        while let Ok(change) = changes.recv_timeout(Duration::from_secs(30)) {
            let value = change.value.map(|v| String::from_utf8_lossy(&v).into_owned());
            seen.push((String::from_utf8_lossy(&change.key).into_owned(), value));
            if seen.iter().any(|(key, _)| key == "bob") {
                break;
            }
        }
        seen
    })
    .await?;
    for (key, value) in &seen {
        println!("b saw {key} = {value:?}");
    }
    let page = b.subscribe("users")?.query(b"", None, 100)?;
    for (key, value) in &page.entries {
        println!("b holds {} = {}", String::from_utf8_lossy(key), String::from_utf8_lossy(value));
    }

    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
