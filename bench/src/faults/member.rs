//! One member of a fault run: a `canopy serve --tables` process in its own network namespace,
//! which the nemesis may pause, kill and restart (with its clock skewed or not) on the same
//! data directory.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::net::Network;

/// Port of every member's HTTP API, on its namespace's address.
const API_PORT: u16 = 7700;

/// UDP port of every member's QUIC listener.
const QUIC_PORT: u16 = 4001;

/// TCP port of every member's block server.
const BLOCKS_PORT: u16 = 5001;

/// Where libfaketime may be installed.
const FAKETIME_LIBRARIES: [&str; 2] =
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"];

/// Longest wait for a started member to serve its API.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What every member is started with, beside its own addresses.
pub(crate) struct Shared {
    /// The `canopy` binary.
    pub(crate) canopy: PathBuf,
    /// The tokens file every member reads.
    pub(crate) tokens: PathBuf,
    /// Every member's peer id, admitted by every member.
    pub(crate) peers: Vec<String>,
    /// `--member-ttl-s` of every member.
    pub(crate) member_ttl_s: u64,
    /// The topic every member subscribes.
    pub(crate) topic: String,
}

/// A member's process and how to start it again.
pub(crate) struct Member {
    /// Its index, which gives its namespace and address.
    pub(crate) index: usize,
    /// Its data directory, kept across restarts.
    data_dir: PathBuf,
    /// The file its output is appended to.
    log: PathBuf,
    /// Its running process, if any.
    child: Option<Child>,
    /// The `FAKETIME` offset it runs with, if its clock is skewed.
    pub(crate) skew: Option<String>,
    /// Whether it is stopped by `SIGSTOP`.
    pub(crate) paused: bool,
}

impl Member {
    /// A member keeping its data in `data_dir` and its log in `log`, not started yet.
    pub(crate) fn new(index: usize, data_dir: PathBuf, log: PathBuf) -> Member {
        Member { index, data_dir, log, child: None, skew: None, paused: false }
    }

    /// The base URL of member `index`'s API.
    pub(crate) fn api(network: &Network, index: usize) -> String {
        format!("http://{}:{API_PORT}", network.address(index))
    }

    /// Its libp2p address, for the others to dial.
    fn address(network: &Network, index: usize, peer_id: &str) -> String {
        format!("/ip4/{}/udp/{QUIC_PORT}/quic-v1/p2p/{peer_id}", network.address(index))
    }

    /// Starts its process in its namespace, with its wall clock `skew` ahead (as `faketime`
    /// takes it, `+60s`) when given, and waits until its API answers.
    pub(crate) fn start(
        &mut self,
        network: &Network,
        shared: &Shared,
        http: &reqwest::blocking::Client,
        skew: Option<&str>,
    ) -> anyhow::Result<()> {
        let address = network.address(self.index);
        let mut command = Command::new("ip");
        command.args(["netns", "exec", network.namespace(self.index)]).arg(&shared.canopy).arg("serve");
        command
            .args(["--tables", "--member-ttl-s", &shared.member_ttl_s.to_string(), "--topic", &shared.topic])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--tokens")
            .arg(&shared.tokens)
            .args(["--api", &format!("{address}:{API_PORT}")])
            .args(["--advertise-api", &Member::api(network, self.index)])
            .args(["--listen", &format!("/ip4/{address}/udp/{QUIC_PORT}/quic-v1")])
            .args(["--blocks", &format!("{address}:{BLOCKS_PORT}")]);
        for (index, peer) in shared.peers.iter().enumerate() {
            command.args(["--admit", peer]);
            if index != self.index {
                command.args(["--peer", &Member::address(network, index, peer)]);
            }
        }
        if let Some(offset) = skew {
            let library = FAKETIME_LIBRARIES
                .into_iter()
                .find(|path| Path::new(path).exists())
                .context("libfaketime is missing: install faketime (apt-get install faketime)")?;
            command.env("LD_PRELOAD", library).env("FAKETIME", offset).env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let log = OpenOptions::new().create(true).append(true).open(&self.log)?;
        command
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // `ip netns exec` execs canopy in place, so the child's pid is canopy's own.
        let child = command.spawn().with_context(|| format!("cannot start member {}", self.index))?;
        self.child = Some(child);
        self.skew = skew.map(str::to_string);
        self.paused = false;
        let started = Instant::now();
        let status = format!("{}/v1/status", Member::api(network, self.index));
        loop {
            if let Some(exit) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                bail!("member {} exited at start ({exit}): see {}", self.index, self.log.display());
            }
            if http.get(&status).send().is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "member {} did not serve its API within {START_TIMEOUT:?}: see {}",
                    self.index,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills its process with `SIGKILL` (continuing it first if paused, so it dies at once).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// Sends `signal` (`STOP`, `CONT`) to its process.
    pub(crate) fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().with_context(|| format!("member {} is not running", self.index))?;
        super::net::run("kill", &[&format!("-{signal}"), &child.id().to_string()])?;
        self.paused = signal == "STOP";
        Ok(())
    }

    /// Whether its process has exited on its own, and how.
    pub(crate) fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten().map(|status| status.to_string())
    }

    /// Whether it has a process (running or paused).
    pub(crate) fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}
