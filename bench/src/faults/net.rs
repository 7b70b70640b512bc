//! The network of a fault run: one Linux network namespace per member, each joined by a veth
//! pair to a bridge in a namespace of its own, and one more veth pair from the bridge to the
//! root namespace, where the bench's clients run. Every name carries the bench's process id so
//! parallel runs never clash, and everything is deleted when the [`Network`] is dropped.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Address of the clients' end of the bridge, in the root namespace: `10.X.0.254`.
const CLIENT_HOST: u8 = 254;

/// Second octets tried for the run's `10.X.0.0/24`, starting at one taken from the process id.
const SUBNET_OCTETS: std::ops::RangeInclusive<u8> = 100..=199;

/// The nftables table a fault writes its rules in, inside a member's namespace.
const FAULT_TABLE: &str = "canopy_faults";

/// The tools a fault run needs, found on the machine.
#[derive(Clone, Debug)]
pub(crate) struct Tools {
    /// The `nft` binary.
    pub(crate) nft: String,
}

impl Tools {
    /// Finds `ip` and `nft`, or says which is missing and how to install it.
    pub(crate) fn find() -> anyhow::Result<Tools> {
        let runs = |program: &str, arg: &str| {
            Command::new(program)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !runs("ip", "-V") {
            bail!("`ip` is missing: install iproute2 (apt-get install iproute2)");
        }
        let nft = ["nft", "/usr/sbin/nft"].into_iter().find(|nft| runs(nft, "--version"));
        let nft = nft.context("`nft` is missing: install nftables (apt-get install nftables)")?;
        Ok(Tools { nft: nft.to_string() })
    }
}

/// Whether this process runs as root (its effective user id is 0), from `/proc/self/status`.
pub(crate) fn is_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    let effective =
        status.lines().find_map(|line| line.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1));
    effective == Some("0")
}

/// The namespaces, veths and bridge of one run, deleted on drop.
pub(crate) struct Network {
    /// Prefix of every name, with the process id.
    prefix: String,
    /// The second octet of the run's subnet `10.X.0.0/24`.
    octet: u8,
    /// The member namespaces created so far, in member order.
    namespaces: Vec<String>,
    /// The namespace of the bridge, once created.
    switch: Option<String>,
    /// Whether the root namespace's veth to the bridge exists.
    uplink: bool,
    /// The tools found.
    tools: Tools,
}

impl Network {
    /// Creates `members` namespaces joined to a bridge, member `i` at `10.X.0.(i+1)`, and the
    /// clients' address `10.X.0.254` in the root namespace. On an error, what was created is
    /// deleted again.
    pub(crate) fn create(members: usize, tools: Tools) -> anyhow::Result<Network> {
        let pid = std::process::id();
        let octet = free_octet(pid)?;
        let mut network =
            Network { prefix: format!("cnf{pid}"), octet, namespaces: Vec::new(), switch: None, uplink: false, tools };
        let switch = format!("{}-sw", network.prefix);
        ip(&["netns", "add", &switch])?;
        network.switch = Some(switch.clone());
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        let uplink = format!("{}u", network.prefix);
        ip(&["link", "add", &uplink, "type", "veth", "peer", "name", "up0", "netns", &switch])?;
        network.uplink = true;
        ip(&["-n", &switch, "link", "set", "up0", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}/24", network.client_address()), "dev", &uplink])?;
        ip(&["link", "set", &uplink, "up"])?;
        for index in 0..members {
            let namespace = format!("{}-{index}", network.prefix);
            ip(&["netns", "add", &namespace])?;
            network.namespaces.push(namespace.clone());
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            let port = format!("m{index}");
            ip(&["-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &namespace])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &namespace, "addr", "add", &format!("{}/24", network.address(index)), "dev", "eth0"])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        }
        Ok(network)
    }

    /// The namespace of member `index`.
    pub(crate) fn namespace(&self, index: usize) -> &str {
        &self.namespaces[index]
    }

    /// The address of member `index`.
    pub(crate) fn address(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, 0, index as u8 + 1)
    }

    /// The address the clients reach the members from.
    pub(crate) fn client_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octet, 0, CLIENT_HOST)
    }

    /// Installs `rules` (chains of the fault table, in nft syntax) in member `index`'s namespace,
    /// replacing any fault there.
    pub(crate) fn set_rules(&self, index: usize, rules: &str) -> anyhow::Result<()> {
        self.clear_rules(index)?;
        let script = format!("table inet {FAULT_TABLE} {{\n{rules}\n}}\n");
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.namespace(index), &self.tools.nft, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run nft")?;
        child.stdin.take().context("no stdin to nft")?.write_all(script.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!("nft refused the rules {script:?}: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }

    /// Removes every fault rule from member `index`'s namespace.
    pub(crate) fn clear_rules(&self, index: usize) -> anyhow::Result<()> {
        let namespace = self.namespace(index);
        // Deleting a table that is not there fails; `add` first makes the deletion always apply.
        let nft = &self.tools.nft;
        run("ip", &["netns", "exec", namespace, nft, "add", "table", "inet", FAULT_TABLE])?;
        run("ip", &["netns", "exec", namespace, nft, "delete", "table", "inet", FAULT_TABLE])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and so their peers.
        for namespace in self.namespaces.iter().chain(self.switch.iter()) {
            let _ = ip(&["netns", "del", namespace]);
        }
        if self.uplink {
            let _ = ip(&["link", "del", &format!("{}u", self.prefix)]);
        }
    }
}

/// A second octet whose `10.X.0.0/24` no interface of the root namespace uses, starting from
/// one taken from `pid`.
fn free_octet(pid: u32) -> anyhow::Result<u8> {
    let output = Command::new("ip").args(["-o", "-4", "addr", "show"]).output().context("cannot run ip")?;
    let used = String::from_utf8_lossy(&output.stdout).to_string();
    let span = SUBNET_OCTETS.end() - SUBNET_OCTETS.start() + 1;
    (0..span)
        .map(|step| SUBNET_OCTETS.start() + ((pid as usize + step as usize) % span as usize) as u8)
        .find(|octet| !used.contains(&format!(" 10.{octet}.0.")))
        .context("every subnet 10.100.0.0/24 to 10.199.0.0/24 is in use")
}

/// Runs `ip args`, failing with its message when it fails.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

/// Runs `program args`, failing with its standard error when it fails.
pub(crate) fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program).args(args).output().with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
