//! Host networking for VMs: one bridge holding the guests' gateway address,
//! one TAP per VM attached to it, and NAT rules in banger's own iptables
//! chains. Every command goes through a [`Runner`], as root directly and
//! through `sudo -n` otherwise.
//!
//! Why a bridge rather than routed TAPs: guests then reach each other on one
//! L2 segment without IP forwarding, proxy ARP or a route per VM, and the
//! host needs one address. Forwarding is only enabled for NAT.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::process::{Cmd, ProcessError, Runner};

/// The bridge a daemon uses unless `bridge` in config.toml names another.
pub const BRIDGE: &str = "banger0";
/// A bridge's owner, in its interface alias: `banger:<daemon's instance tag>`.
pub const BRIDGE_ALIAS_PREFIX: &str = "banger:";
/// Every TAP banger makes is named `bg-<first 10 hex digits of the VM ID>`.
pub const TAP_PREFIX: &str = "bg-";
pub const NAT_CHAIN: &str = "BANGER-POSTROUTING";
pub const FORWARD_CHAIN: &str = "BANGER-FORWARD";
/// Marks the rules of one VM: `banger:<owner>:<vm id>`, where the owner
/// tag tells one daemon's rules from another's on the same host.
pub const COMMENT_PREFIX: &str = "banger:";

#[derive(Debug, Error)]
pub enum NetError {
    #[error("{0}")]
    Command(#[from] ProcessError),
    #[error(
        "`sudo -n` needs a password to run {program}: allow it without one (a sudoers rule for ip, iptables and sysctl), or run bangerd as root"
    )]
    SudoPassword { program: String },
    #[error("invalid guest_ip_pool {pool:?}: {reason} (use an IPv4 CIDR like 172.30.0.0/24)")]
    Pool { pool: String, reason: String },
    #[error(
        "guest IP pool {pool} is exhausted ({used} addresses in use): use a larger guest_ip_pool or delete VMs"
    )]
    Exhausted { pool: String, used: usize },
    #[error(
        "guest IP pool {pool} overlaps the host route {route}: pick another guest_ip_pool in config.toml"
    )]
    Conflict { pool: String, route: String },
    #[error(
        "bridge {bridge} belongs to another banger daemon ({owner}): give this one its own `bridge` and `guest_ip_pool` in config.toml (like bridge = \"banger1\", guest_ip_pool = \"10.220.0.0/24\")"
    )]
    BridgeTaken { bridge: String, owner: String },
}

pub type Result<T, E = NetError> = std::result::Result<T, E>;

/// An IPv4 network: the bridge takes the first host address, guests the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Pool {
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason: &str| NetError::Pool {
            pool: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(|| bad("no /prefix"))?;
        let network: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("prefix is not a number"))?;
        if !(8..=29).contains(&prefix) {
            return Err(bad("prefix must be 8 to 29"));
        }
        let pool = Self { network, prefix };
        if u32::from(network) & !pool.mask() != 0 {
            return Err(bad("host bits are set"));
        }
        Ok(pool)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// Guest addresses in order: after the gateway, before broadcast.
    pub fn guests(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | !self.mask();
        (first..broadcast).map(Ipv4Addr::from)
    }

    /// The lowest free guest address.
    pub fn allocate(&self, used: &[Ipv4Addr]) -> Result<Ipv4Addr> {
        self.guests()
            .find(|ip| !used.contains(ip))
            .ok_or(NetError::Exhausted {
                pool: self.to_string(),
                used: used.len(),
            })
    }

    pub fn overlaps(&self, other: &Pool) -> bool {
        let prefix = self.prefix.min(other.prefix);
        let mask = u32::MAX << (32 - prefix);
        u32::from(self.network) & mask == u32::from(other.network) & mask
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A deterministic, locally administered MAC from the guest IP.
pub fn guest_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("06:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

pub fn tap_name(vm_id: &str) -> String {
    format!("{TAP_PREFIX}{}", &vm_id[..vm_id.len().min(10)])
}

/// What NAT needs to know of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatRule {
    pub vm_id: String,
    pub guest_ip: Ipv4Addr,
}

pub trait HostNetwork: Send + Sync + fmt::Debug {
    /// The bridge exists, is up and holds the gateway address.
    fn ensure_bridge(&self, pool: &Pool) -> Result<()>;
    /// A TAP owned by `uid`, attached to the bridge and up. Idempotent.
    fn create_tap(&self, name: &str, uid: u32) -> Result<()>;
    /// A TAP owned by `uid`, down and on no bridge: a guest on it reaches
    /// nothing until [`HostNetwork::create_tap`] connects it. Idempotent.
    fn hold_tap(&self, name: &str, uid: u32) -> Result<()>;
    /// Removes a TAP; a missing one is fine.
    fn delete_tap(&self, name: &str) -> Result<()>;
    /// Every TAP with banger's prefix.
    fn list_taps(&self) -> Result<Vec<String>>;
    /// banger's chains exist and are jumped to; forwarding is on.
    fn ensure_nat_chains(&self) -> Result<()>;
    fn add_nat(&self, rule: &NatRule) -> Result<()>;
    fn remove_nat(&self, vm_id: &str) -> Result<()>;
    /// The VM IDs that have rules in banger's chains.
    fn nat_vms(&self) -> Result<Vec<String>>;
    /// Routes on the host that are not banger's bridge (`ip route` lines).
    fn host_routes(&self) -> Result<Vec<String>>;

    /// What the host needs for TAPs (preflight and doctor).
    fn checks(&self) -> Vec<banger_proto::check::Check> {
        Vec::new()
    }

    /// What the host needs for NAT.
    fn nat_checks(&self) -> Vec<banger_proto::check::Check> {
        Vec::new()
    }
}

/// The real host, through `ip`, `iptables` and `sysctl`.
#[derive(Debug)]
pub struct IpTablesNetwork {
    runner: Arc<dyn Runner>,
    sudo: bool,
    /// This daemon's tag in rule comments and on its bridge: it prunes
    /// only its own rules and uses only its own bridge.
    owner: String,
    bridge: String,
    /// `net.bridge.bridge-nf-call-iptables`: when it reads 1 (br_netfilter
    /// is loaded, as Docker does), frames between two guests on the bridge
    /// go through the FORWARD chain, and Docker's DROP policy stops them.
    bridge_netfilter: PathBuf,
}

/// Where the kernel says whether bridged frames pass iptables.
pub const BRIDGE_NETFILTER: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

impl IpTablesNetwork {
    /// `sudo` prefixes every command with `sudo -n` (when not root).
    pub fn new(runner: Arc<dyn Runner>, sudo: bool) -> Self {
        Self {
            runner,
            sudo,
            owner: "default".into(),
            bridge: BRIDGE.into(),
            bridge_netfilter: PathBuf::from(BRIDGE_NETFILTER),
        }
    }

    /// Reads the bridge-netfilter switch from `path` instead (tests).
    pub fn with_bridge_netfilter(mut self, path: &Path) -> Self {
        self.bridge_netfilter = path.to_owned();
        self
    }

    /// Lets guests on the bridge reach each other when bridged frames pass
    /// iptables. The rule is the bridge's, not a VM's: its comment
    /// (`banger-bridge:<owner>`) is outside the per-VM `banger:` marker, so
    /// NAT pruning never touches it.
    fn allow_guest_to_guest(&self) -> Result<()> {
        let on =
            std::fs::read_to_string(&self.bridge_netfilter).is_ok_and(|value| value.trim() == "1");
        if !on {
            return Ok(());
        }
        self.ensure_chain("filter", FORWARD_CHAIN, "FORWARD")?;
        let comment = format!("banger-bridge:{}", self.owner);
        let rule: Vec<String> = [
            "-i",
            &self.bridge,
            "-o",
            &self.bridge,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "ACCEPT",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        self.ensure_rule("filter", FORWARD_CHAIN, &rule)
    }

    /// Puts this daemon's TAPs on `bridge` instead of `banger0`.
    pub fn with_bridge(mut self, bridge: &str) -> Self {
        self.bridge = bridge.to_owned();
        self
    }

    /// Who owns the bridge, from its alias: `None` for a bridge with no
    /// banger alias (made by an older banger: the first daemon claims it).
    fn bridge_owner(&self) -> Result<Option<String>> {
        let shown = self.run("ip", &["-o", "-d", "link", "show", "dev", &self.bridge])?;
        Ok(bridge_owner_in(&shown).map(str::to_owned))
    }

    /// Tags this daemon's rules (see [`crate::Paths::instance_tag`]).
    pub fn with_owner(mut self, owner: &str) -> Self {
        self.owner = owner.to_owned();
        self
    }

    /// The interfaces attached to the bridge (`ip -o link show master`).
    fn bridge_ports(&self) -> Result<Vec<String>> {
        let shown = self.run("ip", &["-o", "link", "show", "master", &self.bridge])?;
        Ok(link_names(&shown))
    }

    fn claim_bridge(&self) -> Result<()> {
        let alias = format!("{BRIDGE_ALIAS_PREFIX}{}", self.owner);
        self.run("ip", &["link", "set", "dev", &self.bridge, "alias", &alias])?;
        Ok(())
    }

    fn marker(&self) -> String {
        format!("{COMMENT_PREFIX}{}:", self.owner)
    }

    pub fn for_this_user(runner: Arc<dyn Runner>) -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        Self::new(runner, !root)
    }

    fn cmd(&self, program: &str, args: &[&str]) -> Cmd {
        if self.sudo {
            Cmd::new("sudo")
                .arg("-n")
                .arg(program)
                .args(args.iter().copied())
        } else {
            Cmd::new(program).args(args.iter().copied())
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let cmd = self.cmd(program, args);
        let out = self.runner.output(&cmd)?;
        if out.code == Some(0) {
            return Ok(out.stdout);
        }
        if self.sudo && out.stderr.contains("a password is required") {
            return Err(NetError::SudoPassword {
                program: program.to_owned(),
            });
        }
        Err(ProcessError::failed(&cmd, out).into())
    }

    /// Runs a check-style command: exit 0 is yes, 1 is no, anything else an error.
    fn check(&self, program: &str, args: &[&str]) -> Result<bool> {
        let cmd = self.cmd(program, args);
        let out = self.runner.output(&cmd)?;
        match out.code {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ if self.sudo && out.stderr.contains("a password is required") => {
                Err(NetError::SudoPassword {
                    program: program.to_owned(),
                })
            }
            _ => Err(ProcessError::Failed {
                cmd: cmd.to_string(),
                status: format!("{:?}", out.code),
                stderr: out.stderr,
            }
            .into()),
        }
    }

    /// A TAP named `name` owned by `uid`, made unless it exists.
    fn ensure_tap(&self, name: &str, uid: u32) -> Result<()> {
        if !self.link_exists(name)? {
            let uid = uid.to_string();
            self.run(
                "ip",
                &["tuntap", "add", "dev", name, "mode", "tap", "user", &uid],
            )?;
        }
        Ok(())
    }

    fn link_exists(&self, name: &str) -> Result<bool> {
        let out = self
            .runner
            .output(&Cmd::new("ip").args(["-o", "link", "show", "dev", name]))?;
        Ok(out.code == Some(0))
    }

    fn nat_rule_args(&self, rule: &NatRule) -> (Vec<String>, Vec<String>, Vec<String>) {
        let comment = format!("{}{}", self.marker(), rule.vm_id);
        let ip = format!("{}/32", rule.guest_ip);
        let masquerade = vec![
            "-s".into(),
            ip.clone(),
            "!".into(),
            "-o".into(),
            self.bridge.clone(),
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            comment.clone(),
            "-j".into(),
            "MASQUERADE".into(),
        ];
        let outbound = vec![
            "-i".into(),
            self.bridge.clone(),
            "-s".into(),
            ip.clone(),
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            comment.clone(),
            "-j".into(),
            "ACCEPT".into(),
        ];
        let inbound = vec![
            "-o".into(),
            self.bridge.clone(),
            "-d".into(),
            ip,
            "-m".into(),
            "conntrack".into(),
            "--ctstate".into(),
            "RELATED,ESTABLISHED".into(),
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            comment,
            "-j".into(),
            "ACCEPT".into(),
        ];
        (masquerade, outbound, inbound)
    }

    fn ensure_rule(&self, table: &str, chain: &str, rule: &[String]) -> Result<()> {
        let mut check = vec!["-w", "-t", table, "-C", chain];
        check.extend(rule.iter().map(String::as_str));
        if !self.check("iptables", &check)? {
            let mut add = vec!["-w", "-t", table, "-A", chain];
            add.extend(rule.iter().map(String::as_str));
            self.run("iptables", &add)?;
        }
        Ok(())
    }

    fn ensure_chain(&self, table: &str, chain: &str, parent: &str) -> Result<()> {
        if !self.check("iptables", &["-w", "-t", table, "-n", "-L", chain])? {
            self.run("iptables", &["-w", "-t", table, "-N", chain])?;
        }
        if !self.check("iptables", &["-w", "-t", table, "-C", parent, "-j", chain])? {
            self.run(
                "iptables",
                &["-w", "-t", table, "-I", parent, "1", "-j", chain],
            )?;
        }
        Ok(())
    }

    /// `iptables -S` lines of one of banger's chains.
    fn chain_rules(&self, table: &str, chain: &str) -> Result<Vec<String>> {
        if !self.check("iptables", &["-w", "-t", table, "-n", "-L", chain])? {
            return Ok(Vec::new());
        }
        let text = self.run("iptables", &["-w", "-t", table, "-S", chain])?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_owned)
            .collect())
    }
}

impl HostNetwork for IpTablesNetwork {
    fn checks(&self) -> Vec<banger_proto::check::Check> {
        crate::probe::network_checks(&crate::probe::Probe::host())
    }

    fn nat_checks(&self) -> Vec<banger_proto::check::Check> {
        crate::probe::nat_checks(&crate::probe::Probe::host())
    }

    fn ensure_bridge(&self, pool: &Pool) -> Result<()> {
        let bridge = self.bridge.as_str();
        if self.link_exists(bridge)? {
            match self.bridge_owner()? {
                Some(owner) if owner == self.owner => {}
                // Another daemon's bridge with no TAP on it serves no guest
                // (that daemon is gone, or all its VMs are stopped, and it
                // will be told at its next start): it can change hands.
                Some(_) if self.bridge_ports()?.is_empty() => self.claim_bridge()?,
                Some(owner) => {
                    return Err(NetError::BridgeTaken {
                        bridge: bridge.to_owned(),
                        owner,
                    });
                }
                None => self.claim_bridge()?,
            }
        } else {
            self.run("ip", &["link", "add", "name", bridge, "type", "bridge"])?;
            self.claim_bridge()?;
        }
        let address = format!("{}/{}", pool.gateway(), pool.prefix);
        let shown = self.run("ip", &["-o", "-4", "addr", "show", "dev", bridge])?;
        if !shown.split_whitespace().any(|w| w == address) {
            self.run("ip", &["addr", "replace", &address, "dev", bridge])?;
        }
        self.run("ip", &["link", "set", "dev", bridge, "up"])?;
        self.allow_guest_to_guest()
    }

    fn create_tap(&self, name: &str, uid: u32) -> Result<()> {
        self.ensure_tap(name, uid)?;
        self.run("ip", &["link", "set", "dev", name, "master", &self.bridge])?;
        self.run("ip", &["link", "set", "dev", name, "up"])?;
        Ok(())
    }

    fn hold_tap(&self, name: &str, uid: u32) -> Result<()> {
        self.ensure_tap(name, uid)?;
        self.run("ip", &["link", "set", "dev", name, "down"])?;
        self.run("ip", &["link", "set", "dev", name, "nomaster"])?;
        Ok(())
    }

    fn delete_tap(&self, name: &str) -> Result<()> {
        if self.link_exists(name)? {
            self.run("ip", &["link", "del", "dev", name])?;
        }
        Ok(())
    }

    fn list_taps(&self) -> Result<Vec<String>> {
        let text = self.run("ip", &["-o", "link", "show"])?;
        Ok(text
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|name| name.trim().split('@').next().unwrap_or("").to_owned())
            .filter(|name| name.starts_with(TAP_PREFIX))
            .collect())
    }

    fn ensure_nat_chains(&self) -> Result<()> {
        self.ensure_chain("nat", NAT_CHAIN, "POSTROUTING")?;
        self.ensure_chain("filter", FORWARD_CHAIN, "FORWARD")?;
        let forwarding =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
        if forwarding.trim() != "1" {
            self.run("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        }
        Ok(())
    }

    fn add_nat(&self, rule: &NatRule) -> Result<()> {
        self.ensure_nat_chains()?;
        let (masquerade, outbound, inbound) = self.nat_rule_args(rule);
        self.ensure_rule("nat", NAT_CHAIN, &masquerade)?;
        self.ensure_rule("filter", FORWARD_CHAIN, &outbound)?;
        self.ensure_rule("filter", FORWARD_CHAIN, &inbound)?;
        Ok(())
    }

    fn remove_nat(&self, vm_id: &str) -> Result<()> {
        let marker = format!("{}{vm_id}", self.marker());
        for (table, chain) in [("nat", NAT_CHAIN), ("filter", FORWARD_CHAIN)] {
            for line in self.chain_rules(table, chain)? {
                if line.contains(&marker) {
                    // `-A CHAIN args...` becomes `-D CHAIN args...`; the
                    // comment is quoted by iptables -S only when it must be.
                    let args: Vec<String> = shell_words(&line.replacen("-A ", "-D ", 1));
                    let mut full = vec!["-w".to_owned(), "-t".to_owned(), table.to_owned()];
                    full.extend(args);
                    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
                    self.run("iptables", &refs)?;
                }
            }
        }
        Ok(())
    }

    fn nat_vms(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for (table, chain) in [("nat", NAT_CHAIN), ("filter", FORWARD_CHAIN)] {
            for line in self.chain_rules(table, chain)? {
                if let Some(id) = line
                    .split_whitespace()
                    .map(|w| w.trim_matches('"'))
                    .find_map(|w| w.strip_prefix(self.marker().as_str()))
                    && !ids.iter().any(|i| i == id)
                {
                    ids.push(id.to_owned());
                }
            }
        }
        Ok(ids)
    }

    fn host_routes(&self) -> Result<Vec<String>> {
        let text = self.run("ip", &["-4", "route", "show"])?;
        Ok(routes_off_bridge(&text, &self.bridge))
    }
}

/// The daemon tag in `ip -o -d link show` output of a bridge that banger
/// marked (`alias banger:<tag>`); `None` for an unmarked link.
pub fn bridge_owner_in(shown: &str) -> Option<&str> {
    shown
        .split("alias ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|alias| alias.strip_prefix(BRIDGE_ALIAS_PREFIX))
}

/// The interface names in `ip -o link show` output (`bg-x@if3` is `bg-x`).
pub fn link_names(shown: &str) -> Vec<String> {
    shown
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// The `ip -4 route show` lines that are not through `bridge`.
pub fn routes_off_bridge(text: &str, bridge: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            !l.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w == ["dev", bridge])
        })
        .map(str::to_owned)
        .collect()
}

#[cfg(any(test, feature = "testing"))]
pub use fakes::*;

/// Host networking as state in memory, failing on demand: compiled for tests and the `testing` feature only.
#[cfg(any(test, feature = "testing"))]
mod fakes {
    use super::*;

    /// Which operation a [`FakeNetwork`] should fail.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum NetOp {
        Bridge,
        CreateTap,
        AddNat,
    }

    /// Host networking as state in memory, for tests; fails on demand.
    #[derive(Debug, Default)]
    pub struct FakeNetwork {
        state: std::sync::Mutex<FakeNetState>,
    }

    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    pub struct FakeNetState {
        pub bridge: Option<String>,
        pub taps: std::collections::BTreeMap<String, u32>,
        /// TAPs that exist but are held off the bridge.
        pub held: std::collections::BTreeSet<String>,
        pub nat: std::collections::BTreeMap<String, Ipv4Addr>,
        pub routes: Vec<String>,
        pub fail: std::collections::HashSet<NetOp>,
    }

    impl FakeNetwork {
        pub fn new() -> Self {
            Self::default()
        }

        pub fn state(&self) -> FakeNetState {
            self.lock().clone()
        }

        pub fn fail_on(&self, op: NetOp) {
            self.lock().fail.insert(op);
        }

        pub fn clear_failures(&self) {
            self.lock().fail.clear();
        }

        /// A TAP or rule appearing or vanishing behind banger's back.
        pub fn with_state(&self, f: impl FnOnce(&mut FakeNetState)) {
            f(&mut self.lock());
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, FakeNetState> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }

        fn check(state: &FakeNetState, op: NetOp) -> Result<()> {
            if state.fail.contains(&op) {
                Err(ProcessError::Reported {
                    cmd: format!("{op:?}"),
                    message: "injected failure".into(),
                }
                .into())
            } else {
                Ok(())
            }
        }
    }

    impl HostNetwork for FakeNetwork {
        fn ensure_bridge(&self, pool: &Pool) -> Result<()> {
            let mut state = self.lock();
            Self::check(&state, NetOp::Bridge)?;
            state.bridge = Some(format!("{}/{}", pool.gateway(), pool.prefix));
            Ok(())
        }

        fn create_tap(&self, name: &str, uid: u32) -> Result<()> {
            let mut state = self.lock();
            Self::check(&state, NetOp::CreateTap)?;
            state.taps.insert(name.to_owned(), uid);
            state.held.remove(name);
            Ok(())
        }

        fn hold_tap(&self, name: &str, uid: u32) -> Result<()> {
            let mut state = self.lock();
            Self::check(&state, NetOp::CreateTap)?;
            state.taps.insert(name.to_owned(), uid);
            state.held.insert(name.to_owned());
            Ok(())
        }

        fn delete_tap(&self, name: &str) -> Result<()> {
            let mut state = self.lock();
            state.taps.remove(name);
            state.held.remove(name);
            Ok(())
        }

        fn list_taps(&self) -> Result<Vec<String>> {
            Ok(self.lock().taps.keys().cloned().collect())
        }

        fn ensure_nat_chains(&self) -> Result<()> {
            Ok(())
        }

        fn add_nat(&self, rule: &NatRule) -> Result<()> {
            let mut state = self.lock();
            Self::check(&state, NetOp::AddNat)?;
            state.nat.insert(rule.vm_id.clone(), rule.guest_ip);
            Ok(())
        }

        fn remove_nat(&self, vm_id: &str) -> Result<()> {
            self.lock().nat.remove(vm_id);
            Ok(())
        }

        fn nat_vms(&self) -> Result<Vec<String>> {
            Ok(self.lock().nat.keys().cloned().collect())
        }

        fn host_routes(&self) -> Result<Vec<String>> {
            Ok(self.lock().routes.clone())
        }
    }
}

/// Splits an `iptables -S` line into words, honouring double quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    words.push(std::mem::take(&mut current));
                    started = false;
                }
            }
            c => {
                current.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(current);
    }
    words
}

/// Checks that `pool` overlaps none of the host's routes.
pub fn check_pool_against_routes(pool: &Pool, routes: &[String]) -> Result<()> {
    for route in routes {
        let Some(destination) = route.split_whitespace().next() else {
            continue;
        };
        if destination == "default" {
            continue;
        }
        let cidr = if destination.contains('/') {
            destination.to_owned()
        } else {
            format!("{destination}/32")
        };
        if let Ok(other) = Pool::parse_loose(&cidr)
            && pool.overlaps(&other)
        {
            return Err(NetError::Conflict {
                pool: pool.to_string(),
                route: route.trim().to_owned(),
            });
        }
    }
    Ok(())
}

/// The pool a daemon uses, and why when it is not the configured one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolChoice {
    pub pool: Pool,
    /// Set when the default pool was taken: the default, and the route
    /// that took it.
    pub moved_from: Option<(Pool, String)>,
}

impl PoolChoice {
    /// One line for logs, `daemon status` and doctor.
    pub fn describe(&self) -> String {
        match &self.moved_from {
            None => format!("{}", self.pool),
            Some((default, route)) => format!(
                "{} (the default {default} overlaps the host route {route}; set guest_ip_pool in config.toml to choose)",
                self.pool
            ),
        }
    }
}

/// The pool for this daemon. An explicit `guest_ip_pool` is kept as it is
/// and refused when it overlaps a route. The default gives way: when a
/// route covers it (banger inside a banger VM, whose own eth0 is in the
/// default pool) the next /24 clear of every route is used. `routes` are
/// the host's routes except those of this daemon's bridge, so a restart
/// picks the same pool.
pub fn choose_pool(configured: &Pool, explicit: bool, routes: &[String]) -> Result<PoolChoice> {
    let conflict = match check_pool_against_routes(configured, routes) {
        Ok(()) => {
            return Ok(PoolChoice {
                pool: *configured,
                moved_from: None,
            });
        }
        Err(e) if explicit => return Err(e),
        Err(NetError::Conflict { route, .. }) => route,
        Err(e) => return Err(e),
    };
    let step = 1u32 << (32 - configured.prefix);
    let candidates = (1..256u32).map_while(|n| {
        let network = u32::from(configured.network).checked_add(n * step)?;
        // Stay in the same private /16 (10.219.x.0/24 for the default).
        (network >> 16 == u32::from(configured.network) >> 16).then(|| Pool {
            network: Ipv4Addr::from(network),
            prefix: configured.prefix,
        })
    });
    for pool in candidates {
        if check_pool_against_routes(&pool, routes).is_ok() {
            return Ok(PoolChoice {
                pool,
                moved_from: Some((*configured, conflict)),
            });
        }
    }
    Err(NetError::Conflict {
        pool: configured.to_string(),
        route: conflict,
    })
}

impl Pool {
    /// Like [`Pool::parse`], for routes: any prefix, host bits allowed.
    fn parse_loose(text: &str) -> Result<Self> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, "32"));
        let network: Ipv4Addr = addr.parse().map_err(|_| NetError::Pool {
            pool: text.into(),
            reason: "route".into(),
        })?;
        let prefix: u8 = prefix.parse().map_err(|_| NetError::Pool {
            pool: text.into(),
            reason: "route".into(),
        })?;
        Ok(Self {
            network,
            prefix: prefix.clamp(1, 32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::RecordingRunner;

    #[test]
    fn pools_parse_and_allocate_in_order() {
        let pool = Pool::parse("172.30.0.0/24").unwrap();
        assert_eq!(pool.gateway(), Ipv4Addr::new(172, 30, 0, 1));
        assert_eq!(pool.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(pool.allocate(&[]).unwrap(), Ipv4Addr::new(172, 30, 0, 2));
        let used = [Ipv4Addr::new(172, 30, 0, 2), Ipv4Addr::new(172, 30, 0, 4)];
        assert_eq!(pool.allocate(&used).unwrap(), Ipv4Addr::new(172, 30, 0, 3));
        assert_eq!(pool.guests().count(), 253);
        let tiny = Pool::parse("10.9.9.0/29").unwrap();
        let all: Vec<Ipv4Addr> = tiny.guests().collect();
        let err = tiny.allocate(&all).unwrap_err().to_string();
        assert!(
            err.contains("10.9.9.0/29") && err.contains("exhausted"),
            "{err}"
        );
    }

    #[test]
    fn bad_pools_are_named() {
        for bad in [
            "172.30.0.0",
            "172.30.0.1/24",
            "300.1.1.0/24",
            "10.0.0.0/31",
            "10.0.0.0/x",
        ] {
            let err = Pool::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("CIDR"), "{err}");
        }
    }

    #[test]
    fn conflicting_host_routes_are_refused() {
        let pool = Pool::parse("172.30.0.0/24").unwrap();
        let routes = vec![
            "default via 10.0.0.1 dev eth0".to_owned(),
            "10.0.0.0/24 dev eth0 proto kernel scope link src 10.0.0.5".to_owned(),
        ];
        check_pool_against_routes(&pool, &routes).unwrap();
        let routes = vec!["172.30.0.0/16 dev docker0 proto kernel".to_owned()];
        let err = check_pool_against_routes(&pool, &routes)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("172.30.0.0/24") && err.contains("docker0"),
            "{err}"
        );
    }

    #[test]
    fn the_default_pool_gives_way_and_an_explicit_one_is_refused() {
        let default = Pool::parse("10.219.0.0/24").unwrap();
        let clear = ["10.0.0.0/24 dev eth0".to_owned()];
        let choice = choose_pool(&default, false, &clear).unwrap();
        assert_eq!((choice.pool, choice.moved_from), (default, None));
        // banger inside a banger VM: eth0 is in the default pool, and the
        // next /24 is taken too.
        let taken = [
            "default via 10.219.0.1 dev eth0".to_owned(),
            "10.219.0.0/24 dev eth0 proto kernel scope link src 10.219.0.2".to_owned(),
            "10.219.1.0/24 dev docker0".to_owned(),
        ];
        let choice = choose_pool(&default, false, &taken).unwrap();
        assert_eq!(choice.pool, Pool::parse("10.219.2.0/24").unwrap());
        let said = choice.describe();
        assert!(
            said.starts_with("10.219.2.0/24 (the default 10.219.0.0/24 overlaps the host route 10.219.0.0/24 dev eth0"),
            "{said}"
        );
        let err = choose_pool(&default, true, &taken).unwrap_err().to_string();
        assert!(
            err.contains("10.219.0.0/24 overlaps the host route") && err.contains("guest_ip_pool"),
            "{err}"
        );
        // Nothing free in the /16: the default's conflict is reported.
        let all = ["10.219.0.0/16 dev eth0".to_owned()];
        let err = choose_pool(&default, false, &all).unwrap_err().to_string();
        assert!(err.contains("10.219.0.0/16 dev eth0"), "{err}");
    }

    #[test]
    fn ip_output_is_read_one_way() {
        let link = "5: banger0: <BROADCAST> mtu 1500\\    link/ether 1e:1e brd ff\\    alias banger:t1 bridge";
        assert_eq!(bridge_owner_in(link), Some("t1"));
        assert_eq!(bridge_owner_in("5: banger0: <BROADCAST> mtu 1500"), None);
        assert_eq!(bridge_owner_in("5: x: alias other-tool"), None);
        let ports = "7: bg-aa12bb34cc: <UP> mtu 1500 master banger0\n8: veth1@if3: <UP> mtu 1500\n";
        assert_eq!(link_names(ports), ["bg-aa12bb34cc", "veth1"]);
        let routes = "default via 10.0.0.1 dev eth0\n10.219.0.0/24 dev banger0 proto kernel\n10.220.0.0/24 dev banger01\n10.221.0.0/24 dev banger0";
        assert_eq!(
            routes_off_bridge(routes, "banger0"),
            [
                "default via 10.0.0.1 dev eth0",
                "10.220.0.0/24 dev banger01"
            ]
        );
    }

    #[test]
    fn macs_and_taps_are_derived() {
        assert_eq!(guest_mac(Ipv4Addr::new(172, 30, 0, 2)), "06:00:ac:1e:00:02");
        assert_eq!(tap_name("aa12bb34cc56dd78"), "bg-aa12bb34cc");
        assert!(tap_name("aa12bb34cc56dd78").len() <= 15, "fits IFNAMSIZ");
    }

    #[test]
    fn commands_go_through_sudo_when_not_root() {
        let runner = Arc::new(RecordingRunner::new());
        runner.answer(
            "sudo",
            Some("link"),
            1,
            "",
            "sudo: a password is required\n",
        );
        let net = IpTablesNetwork::new(runner.clone(), true);
        let err = net.create_tap("bg-x", 1000).unwrap_err().to_string();
        assert!(err.contains("sudo -n") && err.contains("sudoers"), "{err}");
        assert!(
            runner
                .lines()
                .iter()
                .all(|l| l.starts_with("sudo -n ") || l.starts_with("ip -o link show")),
            "{:?}",
            runner.lines()
        );
    }

    #[test]
    fn nat_rules_are_added_only_when_missing() {
        let runner = Arc::new(RecordingRunner::new());
        // Chains exist; the rule checks (-C) say "missing" (exit 1).
        runner.answer("iptables", Some("-C"), 1, "", "");
        let net = IpTablesNetwork::new(runner.clone(), false);
        net.add_nat(&NatRule {
            vm_id: "abc".into(),
            guest_ip: Ipv4Addr::new(172, 30, 0, 2),
        })
        .unwrap();
        let lines = runner.lines();
        assert!(lines.iter().any(|l| l == "iptables -w -t nat -A BANGER-POSTROUTING -s 172.30.0.2/32 ! -o banger0 -m comment --comment banger:default:abc -j MASQUERADE"), "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("-A BANGER-FORWARD -i banger0 -s 172.30.0.2/32")),
            "{lines:#?}"
        );
        let appended = lines.iter().filter(|l| l.contains(" -A ")).count();
        assert_eq!(
            appended, 3,
            "one MASQUERADE and two FORWARD rules: {lines:#?}"
        );
    }

    #[test]
    fn nat_rules_already_present_are_not_added_again() {
        let runner = Arc::new(RecordingRunner::new());
        // Every check (-L, -C) answers 0: chains, jumps and rules exist.
        let net = IpTablesNetwork::new(runner.clone(), false);
        let rule = NatRule {
            vm_id: "abc".into(),
            guest_ip: Ipv4Addr::new(172, 30, 0, 2),
        };
        net.add_nat(&rule).unwrap();
        net.add_nat(&rule).unwrap();
        let lines = runner.lines();
        let checks = lines.iter().filter(|l| l.contains(" -C ")).count();
        assert_eq!(
            checks,
            2 * (2 + 3),
            "two jump and three rule checks per call: {lines:#?}"
        );
        assert!(
            lines.iter().all(|l| l.starts_with("sysctl")
                || !(l.contains(" -A ") || l.contains(" -I ") || l.contains(" -N "))),
            "nothing is added: {lines:#?}"
        );
    }

    #[test]
    fn guests_reach_each_other_when_bridged_frames_pass_iptables() {
        let tmp = tempfile::tempdir().unwrap();
        let switch = tmp.path().join("bridge-nf-call-iptables");
        let pool = Pool::parse("172.30.0.0/24").unwrap();
        let rule = "iptables -w -t filter -A BANGER-FORWARD -i banger0 -o banger0 -m comment --comment banger-bridge:t1 -j ACCEPT";
        for (value, added) in [(None, false), (Some("0\n"), false), (Some("1\n"), true)] {
            if let Some(value) = value {
                std::fs::write(&switch, value).unwrap();
            }
            let runner = Arc::new(RecordingRunner::new());
            // The rule check (-C) says "missing".
            runner.answer("iptables", Some("-C"), 1, "", "");
            let net = IpTablesNetwork::new(runner.clone(), false)
                .with_owner("t1")
                .with_bridge_netfilter(&switch);
            net.ensure_bridge(&pool).unwrap();
            let lines = runner.lines();
            assert_eq!(
                lines.iter().any(|l| l == rule),
                added,
                "{value:?}: {lines:#?}"
            );
            assert_eq!(
                lines.iter().any(|l| l.starts_with("iptables")),
                added,
                "iptables is not needed without br_netfilter: {lines:#?}"
            );
        }
    }

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(
            shell_words(r#"-D X -m comment --comment "banger:a b" -j ACCEPT"#),
            [
                "-D",
                "X",
                "-m",
                "comment",
                "--comment",
                "banger:a b",
                "-j",
                "ACCEPT"
            ]
        );
    }
}
