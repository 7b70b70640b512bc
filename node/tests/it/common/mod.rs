//! Real `canopy serve` processes on loopback, and bounded waits.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest any wait in these tests may take before the test fails.
pub const WAIT_MAX: Duration = Duration::from_secs(120);

pub fn canopy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_canopy"))
}

/// A running `canopy serve`, killed when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub api: String,
    pub peer_id: String,
    pub listen: Vec<String>,
    pub data_dir: PathBuf,
    pub http: reqwest::blocking::Client,
}

impl NodeProcess {
    /// Starts a node on loopback with random ports, subscribed to `topics`, dialling `peers`.
    pub fn start(data_dir: &Path, peers: &[String], topics: &[&str]) -> NodeProcess {
        NodeProcess::start_with(data_dir, peers, topics, &[])
    }

    /// Like [`NodeProcess::start`], with more `canopy serve` arguments.
    pub fn start_with(data_dir: &Path, peers: &[String], topics: &[&str], extra: &[&str]) -> NodeProcess {
        NodeProcess::start_in(canopy(), data_dir, peers, topics, extra, Stdio::inherit())
    }

    /// Like [`NodeProcess::start_with`], its log (at `info`) written to `log`.
    pub fn start_logged(data_dir: &Path, topics: &[&str], extra: &[&str], log: &Path) -> NodeProcess {
        let mut command = canopy();
        command.env("RUST_LOG", "info");
        let file = std::fs::File::create(log).expect("a log file");
        NodeProcess::start_in(command, data_dir, &[], topics, extra, Stdio::from(file))
    }

    /// Like [`NodeProcess::start_with`], its wall clock `offset` (as `faketime` takes it, e.g.
    /// `+1h`) away from the machine's, its monotonic clock left as it is.
    pub fn start_skewed(data_dir: &Path, peers: &[String], extra: &[&str], offset: &str) -> NodeProcess {
        let library = ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect("libfaketime installed (apt-get install faketime)");
        let mut command = canopy();
        command.env("LD_PRELOAD", library).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        NodeProcess::start_in(command, data_dir, peers, &[], extra, Stdio::inherit())
    }

    fn start_in(
        mut command: Command,
        data_dir: &Path,
        peers: &[String],
        topics: &[&str],
        extra: &[&str],
        stderr: Stdio,
    ) -> NodeProcess {
        command.arg("serve").args(extra);
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--blocks", "127.0.0.1:0"])
            .args(["--rebroadcast-interval-s", "1"])
            .stdout(Stdio::piped())
            .stderr(stderr);
        if command.get_envs().all(|(name, _)| name != "RUST_LOG") {
            command.env("RUST_LOG", "warn");
        }
        for peer in peers {
            command.arg("--peer").arg(peer);
        }
        for topic in topics {
            command.arg("--topic").arg(topic);
        }
        let mut child = command.spawn().expect("canopy serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let banner = lines.next().expect("a banner line").expect("readable stdout");
        let field = |name: &str| {
            banner
                .split_whitespace()
                .find_map(|part| part.strip_prefix(name))
                .unwrap_or_else(|| panic!("banner {banner:?} lacks {name}"))
                .to_string()
        };
        let api = field("api=");
        let peer_id = field("peer_id=");
        let mut listen = Vec::new();
        for line in lines.by_ref() {
            let line = line.expect("readable stdout");
            match line.strip_prefix("listen ") {
                Some(address) if address.starts_with("blocks=") => break,
                Some(address) => listen.push(address.to_string()),
                None => break,
            }
        }
        // Keep draining stdout so the node never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        NodeProcess {
            child,
            api,
            peer_id,
            listen,
            data_dir: data_dir.to_path_buf(),
            http: reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        }
    }

    /// This node's client from now on is `http`.
    pub fn with_client(mut self, http: reqwest::blocking::Client) -> NodeProcess {
        self.http = http;
        self
    }

    /// This node's client from now on sends `token` as `Authorization: Bearer`.
    pub fn with_token(mut self, token: &str) -> NodeProcess {
        self.http = client_with_token(Some(token));
        self
    }

    /// The multiaddr other nodes dial to reach this one.
    pub fn address(&self) -> String {
        format!("{}/p2p/{}", self.listen[0], self.peer_id)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// Creates topic `name` with `mode` and returns the node's answer (its full name, mode, owner).
    pub fn create_topic(&self, name: &str, mode: &str) -> Value {
        let body = serde_json::json!({ "name": name, "mode": mode });
        let response = self.http.post(self.url("/v1/topics")).json(&body).send().unwrap();
        assert!(response.status().is_success(), "create {name}: {}", response.status());
        response.json().unwrap()
    }

    /// Subscribes `topic`.
    pub fn subscribe(&self, topic: &str) {
        let response = self.http.put(self.url(&format!("/v1/topics/{topic}"))).send().unwrap();
        assert!(response.status().is_success(), "subscribe {topic}: {}", response.status());
    }

    pub fn put(&self, topic: &str, key: &str, value: &str) -> Value {
        let response =
            self.http.put(self.url(&format!("/v1/topics/{topic}/kv/{key}"))).body(value.to_string()).send().unwrap();
        assert!(response.status().is_success(), "put {key}: {}", response.status());
        response.json().unwrap()
    }

    pub fn get(&self, topic: &str, key: &str) -> Option<String> {
        let response = self.http.get(self.url(&format!("/v1/topics/{topic}/kv/{key}"))).send().ok()?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(response.status().is_success(), "get {key}: {}", response.status());
        Some(response.text().unwrap())
    }

    pub fn json(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().unwrap();
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().unwrap()
    }

    /// Keys with a visible value in `topic`.
    pub fn key_count(&self, topic: &str) -> u64 {
        let topics = self.json("/v1/topics");
        topics.as_array().unwrap().iter().find(|t| t["topic"] == topic).map_or(0, |t| t["keys"].as_u64().unwrap())
    }

    pub fn heads(&self, topic: &str) -> Value {
        self.json(&format!("/v1/topics/{topic}/heads"))
    }

    /// Stops the process as an operator does (SIGTERM) and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM sent to {pid}");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("the process's status") {
                return status;
            }
            assert!(started.elapsed() < WAIT_MAX, "canopy serve still running {WAIT_MAX:?} after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process at once (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client that sends `token` (when given) as `Authorization: Bearer`.
pub fn client_with_token(token: Option<&str>) -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    }
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).default_headers(headers).build().unwrap()
}

/// Creates a token in the tokens file `file` with `canopy token create` and returns its secret.
pub fn create_token(file: &Path, name: &str, role: &str, prefixes: &[&str]) -> String {
    let mut command = canopy();
    command.args(["token", "create", "--name", name, "--role", role]).arg("--file").arg(file);
    for prefix in prefixes {
        command.args(["--prefix", prefix]);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "token create: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The value of the metric `name` on `node`.
pub fn metric(node: &NodeProcess, name: &str) -> u64 {
    let text = node.http.get(node.url("/metrics")).send().unwrap().text().unwrap();
    let line = text.lines().find(|line| line.split(' ').next() == Some(name));
    line.unwrap_or_else(|| panic!("no {name} in /metrics")).rsplit(' ').next().unwrap().parse().unwrap()
}

/// Polls `condition` until it holds; panics with `what` after [`WAIT_MAX`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < WAIT_MAX, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Starts `n` nodes on one topic, each dialling every node started before it.
pub fn cluster(dir: &Path, n: usize, topic: &str) -> Vec<NodeProcess> {
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for i in 0..n {
        let peers: Vec<String> = nodes.iter().map(NodeProcess::address).collect();
        nodes.push(NodeProcess::start(&dir.join(format!("node-{i}")), &peers, &[topic]));
    }
    for node in &nodes {
        wait_until("every node sees its peers", || node.json("/v1/status")["peers"].as_u64() == Some(n as u64 - 1));
    }
    nodes
}

/// A libp2p peer on loopback outside any node, dialling `target`: it accepts every gossip
/// message and answers block requests with `server`. Tests make it misbehave.
pub async fn outside_peer(target: String, server: canopy_transport::RequestServer) -> canopy_transport::Transport {
    outside_peer_as(canopy_transport::Keypair::generate_ed25519(), target, server).await
}

/// [`outside_peer`] with the identity `keypair`.
pub async fn outside_peer_as(
    keypair: canopy_transport::Keypair,
    target: String,
    server: canopy_transport::RequestServer,
) -> canopy_transport::Transport {
    let config = canopy_transport::TransportConfig {
        keypair,
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".into()],
        peers: vec![target],
        blocks_listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let accept_all: canopy_transport::GossipValidator = std::sync::Arc::new(|_, _| true);
    canopy_transport::start(config, server, accept_all).await.unwrap()
}
