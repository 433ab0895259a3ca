//! The whole command tree of `banger`, readable in one place.

use banger_proto::{Backend, PortMapping, validate};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "banger",
    version,
    about = "Persistent Firecracker (or QEMU) development VMs on your workstation",
    long_about = "Persistent development VMs on your workstation, on Firecracker where KVM can \
        boot guests and on QEMU's software emulation everywhere else (vmm in config.toml, or \
        vm create --vmm).\n\n\
        Each VM boots a shared read-only base image with its own copy-on-write overlay and a \
        persistent /root work disk. The vm and image commands start the bangerd daemon when \
        needed.\n\n\
        Exit codes: 0 success, 1 failure, 2 bad input (nothing was changed), 3 no daemon \
        running (daemon status)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, reach and manage VMs
    #[command(subcommand)]
    Vm(VmCommand),
    /// List, build, show and delete images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Inspect or stop the bangerd daemon
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Check host and runtime bundle readiness
    Doctor(JsonFlag),
    /// Launch the terminal UI
    Tui,
    /// Print a shell completion script
    Completions {
        /// Shell to generate completions for
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, Args)]
pub struct JsonFlag {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create and boot a VM
    Create(CreateArgs),
    /// List VMs
    #[command(alias = "ls")]
    List(JsonFlag),
    /// Show every detail of a VM
    Show(VmTarget),
    /// Show a VM's CPU, memory and disk usage
    Stats(VmTarget),
    /// SSH into a running VM as root
    Ssh(SshArgs),
    /// Run a command in a running VM through its guest agent (no SSH or network needed)
    Exec(ExecArgs),
    /// Copy files or directories into or out of a running VM (one side NAME:/path)
    Cp(CpArgs),
    /// Forward a host TCP port to a port in a running VM, over vsock, until Ctrl-C
    PortForward(PortForwardArgs),
    /// Stop VMs gracefully (their disks are kept)
    Stop(StopArgs),
    /// Start stopped VMs, or resume suspended ones
    Start(StartArgs),
    /// Stop, then start VMs
    Restart(VmTargets),
    /// Send a signal to VMs' VMM processes
    Kill(KillArgs),
    /// Freeze running VMs' vCPUs in place (memory stays; nothing is written)
    Pause(VmTargets),
    /// Thaw paused VMs
    Unpause(VmTargets),
    /// Save running VMs' whole state (memory included) to disk and end their VMMs; `vm start` or `vm resume` goes on where they were
    Suspend(VmTargets),
    /// Resume suspended VMs where they were (clock stepped to now)
    Resume(VmTargets),
    /// Delete VMs and every file they own
    #[command(alias = "rm")]
    Delete(VmTargets),
    /// Change settings of VMs (memory, vCPU, disk size need the VM stopped)
    Set(SetArgs),
    /// Rename a VM (its ID, disks and IP stay; the guest's hostname follows at its next boot)
    Rename(RenameArgs),
    /// Save and restore points of a VM: its disks, and its memory when it runs
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Make a new VM from another's disks (/root included), with its own name, IP and identity
    Branch(BranchArgs),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a VM: its disks, and its memory when it runs or is suspended (the guest pauses for the copy)
    Create(SnapshotCreateArgs),
    /// List a VM's snapshots
    List(VmTarget),
    /// Put a VM back to a snapshot; a running VM runs on from it
    Restore(SnapshotRestoreArgs),
    /// Delete a snapshot
    Delete(SnapshotArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotCreateArgs {
    /// VM name or unique ID prefix
    pub vm: String,
    /// A name for the snapshot (default: snapshot1, snapshot2, ...)
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// VM name or unique ID prefix
    pub vm: String,
    /// The snapshot's name (see `banger vm snapshot list VM`)
    pub snapshot: String,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct SnapshotRestoreArgs {
    #[command(flatten)]
    pub target: SnapshotArgs,
    /// Restore even though the VM's memory or disk changes since the snapshot are lost
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct BranchArgs {
    /// The VM to branch from (name or unique ID prefix); it keeps running
    pub source: String,
    /// The new VM's name
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// Cold-boot the branch from the copied disks instead of resuming it from the source's memory
    #[arg(long)]
    pub no_memory: bool,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct RenameArgs {
    /// VM name or unique ID prefix
    pub vm: String,
    /// The new name (a-z, 0-9, '-')
    #[arg(value_parser = parse_name)]
    pub new_name: String,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VM name (a-z, 0-9, '-'); generated like calm-otter when omitted
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
    /// Image to boot (see `banger image list`); the default image when omitted
    #[arg(long)]
    pub image: Option<String>,
    /// Virtual CPUs, 1 to 32
    #[arg(long, value_parser = parse_vcpu)]
    pub vcpu: Option<u32>,
    /// Memory in MiB, at least 128
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Size of the persistent /root work disk, like 16G
    #[arg(long, value_parser = parse_size)]
    pub disk_size: Option<String>,
    /// Give the VM outbound network access through NAT
    #[arg(long)]
    pub nat: bool,
    /// VMM backend: firecracker or qemu (default: chosen by the daemon, see `banger daemon status`)
    #[arg(long, value_parser = parse_backend)]
    pub vmm: Option<Backend>,
    /// Forward a host port to a guest port over vsock while the VM runs, kept by the daemon: [HOST_ADDR:]HOST_PORT:GUEST_PORT, like 8080:80 (repeatable; HOST_ADDR defaults to 127.0.0.1)
    #[arg(long, value_name = "[HOST_ADDR:]HOST_PORT:GUEST_PORT", value_parser = parse_forward)]
    pub publish: Vec<PortMapping>,
    #[command(flatten)]
    pub wait: WaitFlags,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct WaitFlags {
    /// Wait until the guest answers SSH
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds
    #[arg(long, default_value_t = 300, requires = "wait")]
    pub wait_timeout: u64,
}

#[derive(Debug, Args)]
pub struct VmTarget {
    /// VM name or unique ID prefix
    pub vm: String,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Clone, Args)]
pub struct VmTargets {
    /// VM names or unique ID prefixes; several run concurrently
    #[arg(required = true, num_args = 1..)]
    pub vms: Vec<String>,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub targets: VmTargets,
    /// Stop suspended VMs too, discarding their saved memory (their disks stay)
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    #[command(flatten)]
    pub targets: VmTargets,
    #[command(flatten)]
    pub wait: WaitFlags,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// VM name or unique ID prefix
    pub vm: String,
    /// Command to run instead of a login shell (after `--`)
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// VM name or unique ID prefix
    pub vm: String,
    /// [HOST_ADDR:]HOST_PORT:GUEST_PORT, like 8080:80 or 0.0.0.0:8080:80 (HOST_ADDR defaults to 127.0.0.1)
    #[arg(value_parser = parse_forward)]
    pub forward: PortMapping,
}

/// `[HOST_ADDR:]HOST_PORT`: which published port to remove.
pub(crate) fn parse_unpublish(text: &str) -> Result<std::net::SocketAddr, String> {
    banger_proto::port::host_addr(text).map_err(|e| e.to_string())
}

/// `[HOST_ADDR:]HOST_PORT:GUEST_PORT`, checked as the daemon checks it.
pub(crate) fn parse_forward(text: &str) -> Result<PortMapping, String> {
    text.parse()
        .map_err(|e: banger_proto::validate::ValidationError| e.to_string())
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// What to copy: a local path, or NAME:/path in a VM
    pub src: String,
    /// Where to: NAME:/path in a VM, or a local path (an existing directory receives it inside)
    pub dst: String,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// VM name or unique ID prefix
    pub vm: String,
    /// Give the command a terminal (shells, editors, anything interactive)
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable in the guest, KEY=VALUE (repeatable)
    #[arg(short = 'e', long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory in the guest (default /root)
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// The command and its arguments (after `--`)
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal name (TERM, KILL, INT, ...) or number
    #[arg(long, short = 's', default_value = "KILL", value_parser = parse_signal)]
    pub signal: String,
    #[command(flatten)]
    pub targets: VmTargets,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// Memory in MiB, at least 128 (VM must be stopped)
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Virtual CPUs, 1 to 32 (VM must be stopped)
    #[arg(long, value_parser = parse_vcpu)]
    pub vcpu: Option<u32>,
    /// Grow the /root work disk, like 32G (VM must be stopped; shrinking is refused)
    #[arg(long, value_parser = parse_size)]
    pub disk_size: Option<String>,
    /// Enable NAT (works on running VMs)
    #[arg(long, conflicts_with = "no_nat")]
    pub nat: bool,
    /// Disable NAT (works on running VMs)
    #[arg(long)]
    pub no_nat: bool,
    /// Add a published port, [HOST_ADDR:]HOST_PORT:GUEST_PORT like 8080:80 (repeatable; works on running VMs)
    #[arg(long, value_name = "[HOST_ADDR:]HOST_PORT:GUEST_PORT", value_parser = parse_forward)]
    pub publish: Vec<PortMapping>,
    /// Remove the published port on [HOST_ADDR:]HOST_PORT, like 8080 (repeatable)
    #[arg(long, value_name = "[HOST_ADDR:]HOST_PORT", value_parser = parse_unpublish)]
    pub unpublish: Vec<std::net::SocketAddr>,
    /// Remove every published port
    #[arg(long)]
    pub no_publish: bool,
    #[command(flatten)]
    pub targets: VmTargets,
}

impl SetArgs {
    pub fn nat_change(&self) -> Option<bool> {
        match (self.nat, self.no_nat) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }

    pub fn changes_anything(&self) -> bool {
        self.memory.is_some()
            || self.vcpu.is_some()
            || self.disk_size.is_some()
            || self.nat_change().is_some()
            || !self.publish.is_empty()
            || !self.unpublish.is_empty()
            || self.no_publish
    }
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images
    #[command(alias = "ls")]
    List(JsonFlag),
    /// Build a managed image from the bundle's base rootfs
    Build(BuildArgs),
    /// Show an image
    Show(ImageTarget),
    /// Delete a managed image
    #[command(alias = "rm")]
    Delete(ImageTarget),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name of the new image (a-z, 0-9, '-')
    #[arg(long, value_parser = parse_name)]
    pub name: String,
    /// What to build on: an image name or an ext4 file (default: default_base_rootfs, else the bundle's rootfs.ext4, else rootfs-docker.ext4)
    #[arg(long, value_name = "IMAGE|PATH")]
    pub base: Option<String>,
    /// The same as --base PATH, as the seed's make-rootfs.sh spells it
    #[arg(long, value_name = "PATH", conflicts_with = "base")]
    pub base_rootfs: Option<std::path::PathBuf>,
    /// Install Docker (docker.io) too
    #[arg(long)]
    pub docker: bool,
    /// apt packages, one per line with # comments (default: default_packages_file, else the bundle's packages.apt)
    #[arg(long, value_name = "FILE")]
    pub packages: Option<std::path::PathBuf>,
    /// Room for the build, like 8G (default: the base plus 2G, at least 4G); the image is shrunk to its content afterwards
    #[arg(long, value_parser = parse_size)]
    pub size: Option<String>,
    /// After the scripted steps, open a shell in the image: what you change is sealed into it when you exit 0; a non-zero exit discards the build
    #[arg(long)]
    pub interactive: bool,
    /// Cancel the running build of --name (as Ctrl-C in its terminal does)
    #[arg(long, conflicts_with_all = ["base", "base_rootfs", "docker", "packages", "size", "interactive"])]
    pub abort: bool,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ImageTarget {
    /// Image name
    pub image: String,
    #[command(flatten)]
    pub output: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Print the daemon's PID, socket, log path, DNS listener and VMM backend (exits 3 when none runs)
    Status(JsonFlag),
    /// Print the daemon's socket path
    Socket,
    /// Stop the daemon gracefully (running VMs keep running)
    Stop,
}

pub(crate) fn parse_name(text: &str) -> Result<String, String> {
    validate::vm_name(text)
        .map(|()| text.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_backend(text: &str) -> Result<Backend, String> {
    Backend::parse(text).map_err(|e| e.to_string())
}

pub(crate) fn parse_size(text: &str) -> Result<String, String> {
    validate::disk_size(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

pub(crate) fn parse_vcpu(text: &str) -> Result<u32, String> {
    let count: u32 = text
        .parse()
        .map_err(|_| format!("invalid vCPU count {text:?}: use a whole number from 1 to 32"))?;
    validate::vcpu(count)
        .map(|()| count)
        .map_err(|e| e.to_string())
}

pub(crate) fn parse_memory(text: &str) -> Result<u64, String> {
    let mib: u64 = text
        .parse()
        .map_err(|_| format!("invalid memory {text:?}: give MiB as a whole number, like 2048"))?;
    validate::memory_mib(mib)
        .map(|()| mib)
        .map_err(|e| e.to_string())
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value))
            if !key.is_empty()
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !key.starts_with(|c: char| c.is_ascii_digit()) =>
        {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!(
            "invalid environment setting {text:?}: use KEY=VALUE, KEY made of letters, digits and _"
        )),
    }
}

fn parse_signal(text: &str) -> Result<String, String> {
    validate::signal(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("banger").chain(args.iter().copied()))
    }

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Each seed command line parses into the command and values it names:
    /// the parsed tree's debug form holds every expected `field: value`.
    #[test]
    fn every_seed_command_parses_to_its_values() {
        let accepted: &[(&[&str], &[&str])] = &[
            (
                &["vm", "create", "--name", "calm-otter", "--disk-size", "16G"],
                &[
                    "Create(",
                    "name: Some(\"calm-otter\")",
                    "disk_size: Some(\"16G\")",
                    "nat: false",
                    "wait: false",
                ],
            ),
            (
                &["vm", "create", "--name", "web", "--nat"],
                &["name: Some(\"web\")", "nat: true"],
            ),
            (
                &["vm", "create"],
                &[
                    "Create(",
                    "name: None",
                    "image: None",
                    "vcpu: None",
                    "memory: None",
                ],
            ),
            (
                &[
                    "vm",
                    "create",
                    "--image",
                    "docker-dev",
                    "--vcpu",
                    "4",
                    "--memory",
                    "2048",
                    "--json",
                ],
                &[
                    "image: Some(\"docker-dev\")",
                    "vcpu: Some(4)",
                    "memory: Some(2048)",
                    "json: true",
                ],
            ),
            (&["vm", "create", "--vmm", "qemu"], &["vmm: Some(Qemu)"]),
            (&["vm", "list"], &["List(JsonFlag { json: false })"]),
            (&["vm", "ls", "--json"], &["List(JsonFlag { json: true })"]),
            (
                &["vm", "show", "calm-otter"],
                &["Show(", "vm: \"calm-otter\"", "json: false"],
            ),
            (
                &["vm", "show", "calm-otter", "--json"],
                &["Show(", "json: true"],
            ),
            (
                &["vm", "stats", "calm-otter"],
                &["Stats(", "vm: \"calm-otter\""],
            ),
            (
                &["vm", "ssh", "calm-otter"],
                &["Ssh(", "vm: \"calm-otter\"", "command: []"],
            ),
            (
                &["vm", "ssh", "calm-otter", "--", "uname", "-a"],
                &["command: [\"uname\", \"-a\"]"],
            ),
            (
                &["vm", "stop", "calm-otter"],
                &["Stop(", "vms: [\"calm-otter\"]", "force: false"],
            ),
            (&["vm", "stop", "--force", "calm-otter"], &["force: true"]),
            (
                &["vm", "suspend", "calm-otter", "web"],
                &["Suspend(", "vms: [\"calm-otter\", \"web\"]"],
            ),
            (&["vm", "resume", "calm-otter"], &["Resume("]),
            (
                &["vm", "snapshot", "create", "calm-otter"],
                &["Snapshot(Create(", "snapshot: None"],
            ),
            (
                &[
                    "vm",
                    "snapshot",
                    "restore",
                    "calm-otter",
                    "before",
                    "--force",
                ],
                &["Restore(", "snapshot: \"before\"", "force: true"],
            ),
            (
                &["vm", "branch", "calm-otter", "calm-fork", "--no-memory"],
                &["Branch(", "name: \"calm-fork\"", "no_memory: true"],
            ),
            (
                &["vm", "start", "calm-otter"],
                &["Start(", "wait: false", "wait_timeout: 300"],
            ),
            (
                &[
                    "vm",
                    "start",
                    "calm-otter",
                    "--wait",
                    "--wait-timeout",
                    "60",
                ],
                &["Start(", "wait: true", "wait_timeout: 60"],
            ),
            (
                &["vm", "create", "--name", "calm-otter", "--wait"],
                &["wait: true", "wait_timeout: 300"],
            ),
            (
                &["vm", "restart", "calm-otter"],
                &["Restart(", "vms: [\"calm-otter\"]"],
            ),
            (
                &["vm", "kill", "--signal", "TERM", "calm-otter"],
                &["Kill(", "signal: \"TERM\""],
            ),
            (
                &["vm", "kill", "calm-otter"],
                &["Kill(", "signal: \"KILL\""],
            ),
            (
                &["vm", "delete", "calm-otter"],
                &["Delete(", "vms: [\"calm-otter\"]"],
            ),
            (&["vm", "rm", "a", "b"], &["Delete(", "vms: [\"a\", \"b\"]"]),
            (
                &[
                    "vm",
                    "set",
                    "calm-otter",
                    "--memory",
                    "2048",
                    "--vcpu",
                    "4",
                    "--disk-size",
                    "32G",
                ],
                &[
                    "Set(",
                    "memory: Some(2048)",
                    "vcpu: Some(4)",
                    "disk_size: Some(\"32G\")",
                    "nat: false",
                    "no_nat: false",
                ],
            ),
            (
                &["vm", "stop", "calm-otter", "buildbox", "api-1"],
                &["vms: [\"calm-otter\", \"buildbox\", \"api-1\"]"],
            ),
            (
                &["vm", "kill", "--signal", "KILL", "aa12bb34", "cc56dd78"],
                &["signal: \"KILL\"", "vms: [\"aa12bb34\", \"cc56dd78\"]"],
            ),
            (
                &["vm", "set", "--nat", "web-1", "web-2", "web-3"],
                &["nat: true", "vms: [\"web-1\", \"web-2\", \"web-3\"]"],
            ),
            (
                &["vm", "set", "web", "--nat"],
                &["nat: true", "no_nat: false"],
            ),
            (
                &["vm", "set", "web", "--no-nat"],
                &["nat: false", "no_nat: true"],
            ),
            (
                &["vm", "rename", "calm-otter", "web-2"],
                &["Rename(", "vm: \"calm-otter\"", "new_name: \"web-2\""],
            ),
            (
                &[
                    "vm", "exec", "-t", "-e", "A=1", "-w", "/tmp", "web", "--", "ls", "-l",
                ],
                &[
                    "Exec(",
                    "tty: true",
                    "(\"A\", \"1\")",
                    "workdir: Some(\"/tmp\")",
                    "command: [\"ls\", \"-l\"]",
                ],
            ),
            (
                &["vm", "port-forward", "web", "0.0.0.0:8080:80"],
                &["PortForward(", "host: 0.0.0.0:8080", "guest_port: 80"],
            ),
            (
                &["vm", "port-forward", "web", "8080:80"],
                &["host: 127.0.0.1:8080", "guest_port: 80"],
            ),
            (&["tui"], &["Tui"]),
            (
                &["daemon", "status"],
                &["Daemon(Status(JsonFlag { json: false }))"],
            ),
            (
                &["daemon", "status", "--json"],
                &["Daemon(Status(JsonFlag { json: true }))"],
            ),
            (&["daemon", "socket"], &["Daemon(Socket)"]),
            (&["daemon", "stop"], &["Daemon(Stop)"]),
            (&["doctor"], &["Doctor(JsonFlag { json: false })"]),
            (&["doctor", "--json"], &["Doctor(JsonFlag { json: true })"]),
            (
                &["image", "list"],
                &["Image(List(JsonFlag { json: false }))"],
            ),
            (
                &["image", "list", "--json"],
                &["Image(List(JsonFlag { json: true }))"],
            ),
            (
                &["image", "build", "--name", "docker-dev", "--docker"],
                &["Build(", "name: \"docker-dev\"", "docker: true"],
            ),
            (
                &["image", "show", "docker-dev"],
                &["Image(Show(", "image: \"docker-dev\""],
            ),
            (
                &["image", "delete", "docker-dev"],
                &["Image(Delete(", "image: \"docker-dev\""],
            ),
            (&["completions", "bash"], &["Completions { shell: Bash }"]),
            (&["completions", "zsh"], &["Completions { shell: Zsh }"]),
        ];
        for (args, expected) in accepted {
            let parsed = match parse(args) {
                Ok(cli) => format!("{:?}", cli.command),
                Err(e) => panic!("{args:?} should parse: {e}"),
            };
            for needle in *expected {
                assert!(
                    parsed.contains(needle),
                    "{args:?} parsed as {parsed}, missing {needle}"
                );
            }
        }
    }

    #[test]
    fn parsed_values_reach_the_command() {
        let Cli {
            command: Command::Vm(VmCommand::Set(set)),
        } = parse(&["vm", "set", "--no-nat", "a", "b", "--memory", "4096"]).unwrap()
        else {
            panic!("not vm set")
        };
        assert_eq!(set.targets.vms, ["a", "b"]);
        assert_eq!(set.memory, Some(4096));
        assert_eq!(set.nat_change(), Some(false));
        let Cli {
            command: Command::Vm(VmCommand::Kill(kill)),
        } = parse(&["vm", "kill", "x"]).unwrap()
        else {
            panic!("not vm kill")
        };
        assert_eq!(kill.signal, "KILL");
        let Cli {
            command: Command::Vm(VmCommand::Ssh(ssh)),
        } = parse(&["vm", "ssh", "x", "--", "ls", "-la"]).unwrap()
        else {
            panic!("not vm ssh")
        };
        assert_eq!(ssh.command, ["ls", "-la"]);
    }

    #[test]
    fn bad_values_are_refused_with_the_value_and_the_form() {
        let cases: &[(&[&str], &str)] = &[
            (&["vm", "create", "--name", "Bad_Name"], "Bad_Name"),
            (
                &["vm", "exec", "-e", "NO_EQUALS", "web", "--", "ls"],
                "NO_EQUALS",
            ),
            (&["vm", "exec", "-e", "1X=2", "web", "--", "ls"], "1X=2"),
            (&["vm", "rename", "web", "Bad_Name"], "Bad_Name"),
            (&["vm", "port-forward", "web", "80"], "no guest port"),
            (&["vm", "port-forward", "web", "70000:80"], "70000"),
            (
                &["vm", "port-forward", "web", "localhost:8080:80"],
                "localhost",
            ),
            (&["vm", "create", "--disk-size", "0G"], "16G"),
            (&["vm", "create", "--disk-size", "lots"], "lots"),
            (&["vm", "create", "--disk-size", "1K"], "at least 256M"),
            (&["vm", "set", "x", "--disk-size", "255M"], "at least 256M"),
            (&["vm", "create", "--name", "web-"], "ending with '-'"),
            (&["vm", "create", "--vcpu", "0"], "1 to 32"),
            (&["vm", "create", "--vcpu", "64"], "1 to 32"),
            (&["vm", "create", "--memory", "64"], "at least 128"),
            (&["vm", "create", "--memory", "-5"], "-5"),
            (&["vm", "kill", "--signal", "NOPE", "x"], "NOPE"),
            (&["vm", "set", "x", "--nat", "--no-nat"], "--no-nat"),
            (&["vm", "stop"], "<VMS>"),
        ];
        for (args, needle) in cases {
            let msg = parse(args).unwrap_err().to_string();
            assert!(msg.contains(needle), "{args:?}: {msg}");
        }
    }
}
