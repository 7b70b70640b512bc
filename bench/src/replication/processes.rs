//! `canopy-bench replication --processes`: the replication measurements with real `canopy serve`
//! processes on loopback, driven as a user drives them, through the HTTP API. A write is a `PUT`
//! on one process; it is visible when the other process's watch stream reports it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::{ReplicationConfig, ReplicationReport, catch_up_entry, report};

/// Operations per batch request when filling the catch-up topic over HTTP.
const HTTP_BATCH_MAX: usize = 10_000;

/// How the processes are secured with `--secure`: an API token every call carries, and each
/// process admitting only the others.
pub(crate) struct Secured {
    /// The tokens file every process reads.
    tokens: PathBuf,
    /// The admin token the measurements call with.
    token: String,
    /// The peer ids of processes `a`, `b` and `c`, whose identity keys are written beforehand.
    peers: Vec<String>,
}

impl Secured {
    /// Writes a tokens file and the three processes' identity keys under `dir`.
    fn prepare(canopy: &Path, dir: &Path) -> anyhow::Result<Secured> {
        let tokens = dir.join("tokens.toml");
        let output = Command::new(canopy)
            .args(["token", "create", "--name", "bench", "--role", "admin", "--file"])
            .arg(&tokens)
            .output()?;
        if !output.status.success() {
            bail!("canopy token create failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let token = String::from_utf8(output.stdout)?.trim().to_string();
        let mut peers = Vec::new();
        for name in ["a", "b", "c"] {
            std::fs::create_dir_all(dir.join(name))?;
            let keypair = canopy_transport::Keypair::generate_ed25519();
            std::fs::write(dir.join(name).join("identity.key"), keypair.to_protobuf_encoding()?)?;
            peers.push(keypair.public().to_peer_id().to_string());
        }
        Ok(Secured { tokens, token, peers })
    }

    /// The `canopy serve` arguments of every process.
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--tokens".to_string(), self.tokens.display().to_string()];
        for peer in &self.peers {
            args.extend(["--admit".to_string(), peer.clone()]);
        }
        args
    }
}

/// A running `canopy serve`, killed when dropped.
pub(crate) struct Serve {
    child: Child,
    /// The base URL of its HTTP API.
    pub(crate) api: String,
    /// Its libp2p address, `/p2p/<peer id>` included, for others to dial.
    pub(crate) address: String,
    /// Its peer id.
    pub(crate) peer_id: String,
    /// The client calls to it go through.
    pub(crate) http: reqwest::blocking::Client,
    /// The API token calls carry, when the processes are secured.
    token: Option<String>,
}

/// An HTTP client that sends the secured processes' token, if any.
fn client(secured: Option<&Secured>, timeout: Option<Duration>) -> anyhow::Result<reqwest::blocking::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(secured) = secured {
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {}", secured.token).parse()?);
    }
    Ok(reqwest::blocking::Client::builder().timeout(timeout).default_headers(headers).build()?)
}

impl Serve {
    /// Starts `canopy` on loopback with free ports, subscribed to `topics`, dialling `peers`,
    /// with `extra` arguments to `canopy serve` (`--tables`, ...).
    pub(crate) fn start(
        canopy: &Path,
        data_dir: &Path,
        peers: &[String],
        topics: &[&str],
        secured: Option<&Secured>,
        extra: &[String],
    ) -> anyhow::Result<Serve> {
        let mut command = Command::new(canopy);
        command
            .arg("serve")
            .args(secured.map(Secured::args).unwrap_or_default())
            .args(extra)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api", "127.0.0.1:0", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--blocks", "127.0.0.1:0"])
            .args(["--rebroadcast-interval-s", "1", "--compact-after-blocks", "0", "--compact-after-bytes", "0"])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for peer in peers {
            command.arg("--peer").arg(peer);
        }
        for topic in topics {
            command.arg("--topic").arg(topic);
        }
        let mut child = command.spawn().with_context(|| format!("cannot run {}", canopy.display()))?;
        let stdout = child.stdout.take().context("no stdout from canopy serve")?;
        let mut lines = BufReader::new(stdout).lines();
        let banner = lines.next().context("canopy serve printed nothing")??;
        let field = |name: &str| {
            banner
                .split_whitespace()
                .find_map(|part| part.strip_prefix(name))
                .map(str::to_string)
                .with_context(|| format!("canopy serve's banner {banner:?} lacks {name}"))
        };
        let api = field("api=")?;
        let peer_id = field("peer_id=")?;
        let mut listen = None;
        for line in lines.by_ref() {
            match line?.strip_prefix("listen ") {
                Some(address) if address.starts_with("blocks=") => break,
                Some(address) => listen = listen.or(Some(address.to_string())),
                None => break,
            }
        }
        let listen = listen.context("canopy serve printed no listen address")?;
        // Keep reading its stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let http = client(secured, Some(Duration::from_secs(60)))?;
        Ok(Serve {
            child,
            api,
            address: format!("{listen}/p2p/{peer_id}"),
            peer_id,
            http,
            token: secured.map(|s| s.token.clone()),
        })
    }

    /// The URL of `path` on its API.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self.http.get(self.url(path)).send()?;
        if !response.status().is_success() {
            bail!("GET {path}: {}", response.status());
        }
        Ok(response.json()?)
    }

    fn put(&self, topic: &str, key: &str, value: Vec<u8>) -> anyhow::Result<()> {
        let response = self.http.put(self.url(&format!("/v1/topics/{topic}/kv/{key}"))).body(value).send()?;
        if !response.status().is_success() {
            bail!("PUT {key}: {}", response.status());
        }
        Ok(())
    }

    fn batch(&self, topic: &str, entries: impl Iterator<Item = (String, Vec<u8>)>) -> anyhow::Result<()> {
        let ops: Vec<Value> =
            entries.map(|(key, value)| json!({ "op": "put", "key": key, "value": BASE64.encode(value) })).collect();
        let response =
            self.http.post(self.url(&format!("/v1/topics/{topic}/batch"))).json(&json!({ "ops": ops })).send()?;
        if !response.status().is_success() {
            bail!("batch: {}", response.status());
        }
        Ok(())
    }

    fn peers(&self) -> anyhow::Result<u64> {
        self.get_json("/v1/status")?["peers"].as_u64().context("status without peers")
    }

    fn key_count(&self, topic: &str) -> anyhow::Result<u64> {
        let topics = self.get_json("/v1/topics")?;
        let topics = topics.as_array().context("/v1/topics is not a list")?;
        Ok(topics.iter().find(|t| t["topic"] == topic).and_then(|t| t["keys"].as_u64()).unwrap_or(0))
    }

    /// The keys of `topic`'s changes, each with the moment its event was read, on a channel.
    fn watch(&self, topic: &str) -> anyhow::Result<mpsc::Receiver<(String, Instant)>> {
        let mut request = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()?
            .get(self.url(&format!("/v1/topics/{topic}/watch")));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send()?;
        if !response.status().is_success() {
            bail!("watch {topic}: {}", response.status());
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(response).lines() {
                let Ok(line) = line else { return };
                let Some(data) = line.strip_prefix("data:") else { continue };
                let seen = Instant::now();
                let key =
                    serde_json::from_str::<Value>(data.trim()).ok().and_then(|v| v["key"].as_str().map(String::from));
                if let Some(key) = key
                    && tx.send((key, seen)).is_err()
                {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait(what: &str, timeout: Duration, mut condition: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let start = Instant::now();
    while !condition()? {
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// The `canopy` binary beside the running executable, where cargo builds it.
pub fn default_canopy() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name(format!("canopy{}", std::env::consts::EXE_SUFFIX))
}

/// Runs the measurements with processes of `canopy` keeping their data under `dir`.
pub(crate) fn measure(canopy: &Path, dir: &Path, settings: &ReplicationConfig) -> anyhow::Result<ReplicationReport> {
    if !canopy.is_file() {
        bail!(
            "no canopy binary at {}: build it (cargo build --release -p canopy-node) or name it with --canopy",
            canopy.display()
        );
    }
    let secured = if settings.secure { Some(Secured::prepare(canopy, dir)?) } else { None };
    let secured = secured.as_ref();
    let a = Serve::start(canopy, &dir.join("a"), &[], &["latency", "big"], secured, &[])?;
    let b = Serve::start(canopy, &dir.join("b"), std::slice::from_ref(&a.address), &["latency"], secured, &[])?;
    wait("the processes are connected", settings.timeout, || Ok(a.peers()? > 0 && b.peers()? > 0))?;

    let changes = b.watch("latency")?;
    let mut histogram = crate::latency_histogram();
    let value = vec![b'v'; settings.value_bytes];
    for sample in 0..settings.samples {
        let key = format!("sample-{sample}");
        let started = Instant::now();
        a.put("latency", &key, value.clone())?;
        let seen = loop {
            match changes.recv_timeout(settings.timeout) {
                Ok((changed, at)) if changed == key => break at,
                Ok(_) => {}
                Err(error) => bail!("no change seen for {key}: {error}"),
            }
        };
        histogram.saturating_record(seen.duration_since(started).as_micros() as u64);
    }

    let keys = settings.catch_up_keys;
    if settings.deep {
        for i in 0..keys {
            let (key, value) = catch_up_entry(i, settings.value_bytes);
            a.put("big", &key, value)?;
        }
    } else {
        let batch = settings.batch.clamp(1, HTTP_BATCH_MAX);
        for start in (0..keys).step_by(batch) {
            a.batch("big", (start..(start + batch).min(keys)).map(|i| catch_up_entry(i, settings.value_bytes)))?;
        }
    }
    let compact_s = if settings.compact {
        let started = Instant::now();
        let response = a.http.post(a.url("/v1/topics/big/compact")).send()?;
        if !response.status().is_success() {
            bail!("compact: {}", response.status());
        }
        Some(started.elapsed().as_secs_f64())
    } else {
        None
    };

    let started = Instant::now();
    let c = Serve::start(canopy, &dir.join("c"), std::slice::from_ref(&a.address), &["big"], secured, &[])?;
    let mut progress = Vec::new();
    let mut sampled: Option<Instant> = None;
    wait("the empty process caught up", settings.timeout, || {
        let held = c.key_count("big")?;
        if sampled.is_none_or(|at| at.elapsed() >= Duration::from_millis(20)) || held as usize == keys {
            sampled = Some(Instant::now());
            progress.push((started.elapsed().as_secs_f64(), held));
        }
        Ok(held as usize == keys)
    })?;
    let catch_up = started.elapsed().as_secs_f64();
    Ok(report(settings, &histogram, catch_up, progress, compact_s, None))
}
