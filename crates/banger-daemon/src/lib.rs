//! bangerd: owns banger's state and every host side effect, and answers the
//! CLI over a Unix socket. The `bangerd` binary only calls [`main_entry`].

pub mod capabilities;
pub mod capability;
pub mod dns;
pub mod exits;
#[cfg(test)]
mod fuzz_tests;
pub mod guest;
pub mod guest_agent;
pub mod image_build;
pub mod images;
pub mod instance;
pub mod lifecycle;
pub mod locks;
pub mod log_file;
pub mod namegen;
pub mod ping;
pub mod server;
pub mod service;
pub mod store;

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use banger_host::bundle::BundleFile;
use banger_host::disk::{Disks, Ext4Disks};
use banger_host::net::{HostNetwork, IpTablesNetwork};
use banger_host::process::HostRunner;
use banger_host::{Config, LogLevel, Paths};
use banger_vmm::Vmm;
use banger_vmm::firecracker::Firecracker;
use tokio::net::UnixListener;

pub use service::Daemon;

/// The host-facing parts the daemon is built from; tests pass fakes.
#[derive(Debug, Clone)]
pub struct Deps {
    /// The first runs new VMs unless `vm create --vmm` names another.
    pub backends: Vec<Arc<dyn Vmm>>,
    /// Why the first backend was chosen.
    pub vmm_reason: String,
    pub disks: Arc<dyn Disks>,
    pub network: Arc<dyn HostNetwork>,
    pub stop_timeouts: lifecycle::StopTimeouts,
    /// Authorized for root in every guest.
    pub public_keys: Vec<String>,
    /// Where published ports listen.
    pub ports: Arc<dyn banger_host::publish::PortPublisher>,
}

impl Deps {
    /// The real host: Firecracker and e2fsprogs.
    pub fn host(
        paths: &Paths,
        config: &Config,
        runtime_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let probe = banger_host::probe::Probe::host();
        let firecracker = banger_host::doctor::firecracker_binary(&probe, config, runtime_dir)
            .unwrap_or_else(|| PathBuf::from("firecracker"));
        let (backends, vmm_reason) = choose_backends(config, firecracker);
        Ok(Self {
            backends,
            vmm_reason,
            disks: Arc::new(Ext4Disks::new(
                Arc::new(HostRunner),
                paths.cache_dir.clone(),
            )),
            network: Arc::new(
                IpTablesNetwork::for_this_user(Arc::new(HostRunner))
                    .with_owner(&paths.instance_tag())
                    .with_bridge(&config.bridge),
            ),
            stop_timeouts: lifecycle::StopTimeouts::default(),
            public_keys: public_keys(config, runtime_dir)?,
            ports: Arc::new(banger_host::publish::TcpPublisher::default()),
        })
    }
}

/// Orders the backends for `vmm` in config: `auto` takes Firecracker only
/// where its binary exists and KVM can boot ordinary guests.
fn choose_backends(config: &Config, firecracker: PathBuf) -> (Vec<Arc<dyn Vmm>>, String) {
    use banger_host::config::VmmChoice;
    let probe = banger_host::probe::Probe::host();
    let qemu_binary = probe
        .find("qemu-system-x86_64")
        .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
    let helper = banger_host::doctor::vsock_helper_binary(&probe)
        .unwrap_or_else(|| PathBuf::from("vhost-device-vsock"));
    let fc: Arc<dyn Vmm> = Arc::new(Firecracker::new(firecracker.clone()));
    let qemu: Arc<dyn Vmm> = Arc::new(banger_vmm::qemu::Qemu::new(qemu_binary, helper));
    let kvm_ok =
        banger_host::doctor::kvm_check(&probe).status == banger_proto::check::CheckStatus::Pass;
    match config.vmm {
        VmmChoice::Firecracker => (vec![fc, qemu], "vmm = \"firecracker\" in config".into()),
        VmmChoice::Qemu => (vec![qemu, fc], "vmm = \"qemu\" in config".into()),
        VmmChoice::Auto if !firecracker.is_file() => (
            vec![qemu, fc],
            format!(
                "no Firecracker binary ({}), so the emulated qemu backend",
                firecracker.display()
            ),
        ),
        VmmChoice::Auto if probe.kvm_is_pvm() => (
            vec![qemu, fc],
            "KVM here is PVM and cannot boot ordinary guests, so the emulated qemu backend".into(),
        ),
        VmmChoice::Auto if !kvm_ok => (
            vec![qemu, fc],
            "/dev/kvm is not usable, so the emulated qemu backend".into(),
        ),
        VmmChoice::Auto => (vec![fc, qemu], "Firecracker with KVM".into()),
    }
}

/// The `.pub` of the key `banger vm ssh` uses, authorized for root in
/// every guest. A key without its `.pub` is an error: guests would boot
/// with no key and `vm ssh` could never log in.
fn public_keys(
    config: &Config,
    runtime_dir: Option<&std::path::Path>,
) -> anyhow::Result<Vec<String>> {
    let (private, setting) = match (&config.ssh_key_path, runtime_dir) {
        (Some(path), _) => (path.clone(), "ssh_key_path in config.toml"),
        (None, Some(dir)) if dir.join(BundleFile::SshKey.file_name()).exists() => (
            dir.join(BundleFile::SshKey.file_name()),
            "the runtime bundle's key",
        ),
        (None, _) => return Ok(Vec::new()),
    };
    let public = PathBuf::from(format!("{}.pub", private.display()));
    let key = std::fs::read_to_string(&public).with_context(|| {
        format!(
            "{} ({setting}) has no readable public key {}: guests would get no key for `vm ssh`; \
             create it with `ssh-keygen -y -f {} > {}`",
            private.display(),
            public.display(),
            private.display(),
            public.display()
        )
    })?;
    Ok(vec![key.trim().to_owned()])
}

/// Parses `bangerd`'s arguments, loads config, logs to `bangerd.log`, and
/// serves until asked to stop. Errors go to stderr (the CLI points that at
/// the log too) with their whole cause chain.
pub fn main_entry() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("--version" | "-V") => {
            println!("bangerd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") => {
            println!(
                "bangerd {}: the banger daemon. The banger CLI starts it on demand;\n\
                 it serves on $XDG_RUNTIME_DIR/banger/bangerd.sock and logs to\n\
                 ~/.local/state/banger/bangerd.log. Stop it with `banger daemon stop`.",
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!(
                "bangerd: unexpected argument {other:?}: bangerd takes no arguments (try --help)"
            );
            return ExitCode::from(2);
        }
    }
    match start() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bangerd: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            tracing::error!(error = format!("{err:#}"), "bangerd failed");
            ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<()> {
    let paths = Paths::from_env().context("working out banger's directories")?;
    let config = Config::load(&paths.config_file, &paths.home, |v| std::env::var_os(v))
        .context("loading configuration")?;
    // Everything bangerd and its VMMs create is its user's alone: guest
    // disks hold SSH host keys, and the store and logs what users typed.
    banger_host::privacy::restrict_umask();
    paths
        .ensure_daemon_dirs()
        .context("preparing banger's directories")?;
    init_logging(&paths, config.log_level)?;
    for dir in [&paths.state_dir, &paths.cache_dir] {
        match banger_host::privacy::make_private(dir) {
            Ok(changed) if !changed.is_empty() => tracing::warn!(
                dir = %dir.display(),
                count = changed.len(),
                first = %changed[0].display(),
                "removed group and other access from files others could read"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "could not make banger's files private")
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("bangerd"));
    let runtime_dir = match banger_host::runtime_dir::resolve(config.runtime_dir.as_deref(), &exe) {
        Ok(found) => Some(found.path),
        Err(e) => {
            tracing::warn!(error = %e, "no runtime bundle; VMs need images registered another way");
            None
        }
    };
    let deps = Deps::host(&paths, &config, runtime_dir.as_deref())?;
    runtime.block_on(run(paths, config, runtime_dir, deps))
}

fn init_logging(paths: &Paths, level: LogLevel) -> anyhow::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log_file)
        .with_context(|| format!("opening daemon log {}", paths.log_file.display()))?;
    let level = match level {
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    };
    tracing_subscriber::fmt()
        .json()
        .with_max_level(level)
        .with_current_span(false)
        .with_writer(log_file::LogFile::new(file))
        // Its internal errors go to stderr, which is this same full disk
        // when it fails, and `eprintln!` would panic there.
        .log_internal_errors(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// Takes the instance lock, opens the store, reconciles VMs with the host,
/// binds the socket and serves until `daemon.stop` or SIGTERM/SIGINT.
/// Running VMs are left running.
pub async fn run(
    paths: Paths,
    config: Config,
    runtime_dir: Option<PathBuf>,
    deps: Deps,
) -> anyhow::Result<()> {
    let _lock = instance::InstanceLock::acquire(&paths.pid_file, &paths.socket)?;
    let image_runtime_dir = runtime_dir.clone();
    let (config, pool_reason) = settle_pool(config, deps.network.as_ref());
    let store = {
        // SQLite only ever runs on the blocking pool, startup included.
        let (db_file, config) = (paths.db_file.clone(), config.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<store::Store>> {
            let store = Arc::new(store::Store::open(&db_file)?);
            if let Some(image) = images::register_default(&store, &config, runtime_dir.as_deref())?
            {
                tracing::info!(rootfs = %image.rootfs.display(), "default image registered");
            }
            Ok(store)
        })
        .await
        .context("opening the state database")??
    };
    let vmm_name = deps.backends[0].kind();
    let image_disks = deps.disks.clone();
    let vmm_reason = deps.vmm_reason.clone();
    let dns = capabilities::DnsTable::default();
    let lifecycle = start_lifecycle(&paths, &config, deps, store, dns.clone()).await?;
    tracing::info!(vmm = %vmm_name, reason = %vmm_reason, "default VMM backend");
    let listener = UnixListener::bind(&paths.socket)
        .with_context(|| format!("binding socket {}", paths.socket.display()))?;
    std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting socket {} to mode 0600", paths.socket.display()))?;
    let socket = paths.socket.clone();
    let dns_socket = tokio::net::UdpSocket::bind(config.dns_listen).await;
    let dns_error = dns_socket
        .as_ref()
        .err()
        .map(|e| format!("cannot listen on {}: {e}", config.dns_listen));
    let mut config = config;
    if let Some(bound) = dns_socket.as_ref().ok().and_then(|s| s.local_addr().ok()) {
        // Port 0 in config means any free port: report the one we got.
        config.dns_listen = bound;
    }
    let image_builds = Arc::new(image_build::ImageBuilds::new(
        lifecycle.clone(),
        image_disks,
        Arc::new(HostRunner),
        paths.clone(),
        config.clone(),
        image_runtime_dir,
    ));
    {
        let builds = image_builds.clone();
        tokio::task::spawn_blocking(move || builds.recover())
            .await
            .context("removing what interrupted image builds left")?;
    }
    let daemon = Daemon::new(
        paths,
        config,
        lifecycle.clone(),
        dns_error,
        (vmm_name, vmm_reason),
        pool_reason,
        image_builds,
    );
    serve_dns(&daemon, dns_socket, dns)?;
    spawn_signal_handler(daemon.clone())?;
    tokio::spawn(watch_running_vms(
        lifecycle.clone(),
        daemon.shutdown_receiver(),
    ));
    tracing::info!(pid = std::process::id(), socket = %socket.display(), "bangerd ready");
    server::serve(listener, daemon).await;
    lifecycle.retire();
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(socket = %socket.display(), error = %e, "removing socket at shutdown");
    }
    tracing::info!("bangerd stopped");
    Ok(())
}

/// The lifecycle over the store and the host, reconciled with what runs.
async fn start_lifecycle(
    paths: &Paths,
    config: &Config,
    deps: Deps,
    store: Arc<store::Store>,
    dns: capabilities::DnsTable,
) -> anyhow::Result<Arc<lifecycle::Lifecycle>> {
    let capabilities = pipeline(paths, config, &deps, dns)?;
    let lifecycle = lifecycle::Lifecycle::new(
        paths.clone(),
        store,
        deps.backends,
        deps.disks,
        capabilities,
        config.namegen_path.clone(),
    )
    .with_stop_timeouts(deps.stop_timeouts);
    let reconciled = {
        let lifecycle = lifecycle.clone();
        tokio::task::spawn_blocking(move || lifecycle.reconcile())
            .await
            .context("reconciling VMs")??
    };
    tracing::info!(adopted = ?reconciled.adopted, stopped = ?reconciled.stopped, removed = ?reconciled.removed, "reconciled VMs with the host");
    Ok(lifecycle)
}

/// `.vm` DNS for the host on `dns_listen`, and for guests on the gateway.
fn serve_dns(
    daemon: &Arc<Daemon>,
    host_socket: std::io::Result<tokio::net::UdpSocket>,
    dns: capabilities::DnsTable,
) -> anyhow::Result<()> {
    match host_socket {
        Ok(socket) => {
            tracing::info!(listen = %daemon.config.dns_listen, "DNS server listening");
            tokio::spawn(dns::serve(socket, dns.clone(), daemon.shutdown_receiver()));
        }
        Err(e) => {
            tracing::warn!(listen = %daemon.config.dns_listen, error = %e, "DNS server not started")
        }
    }
    // Guests ask the gateway. The bridge may not exist yet, hence freebind;
    // port 53 needs root, so ordinary users' guests use upstream DNS only.
    let gateway = daemon.config.guest_ip_pool.gateway();
    match dns::bind_freebind(std::net::SocketAddr::from((gateway, 53))) {
        Ok(socket) => {
            tracing::info!(listen = %gateway, "DNS server listening for guests");
            tokio::spawn(dns::serve(socket, dns, daemon.shutdown_receiver()));
        }
        Err(e) => tracing::info!(listen = %gateway, error = %e, "no DNS for guests on the gateway"),
    }
    Ok(())
}

/// The guest IP pool this daemon runs with (see `net::choose_pool`), and
/// why when the default gave way to a free one. An explicit pool that
/// overlaps a route is kept: starting a VM then says why it cannot.
fn settle_pool(mut config: Config, network: &dyn HostNetwork) -> (Config, Option<String>) {
    let routes = network.host_routes().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading host routes to check the guest IP pool");
        Vec::new()
    });
    match banger_host::net::choose_pool(
        &config.guest_ip_pool,
        config.guest_ip_pool_explicit,
        &routes,
    ) {
        Ok(choice) if choice.moved_from.is_some() => {
            let said = choice.describe();
            tracing::warn!(pool = %said, "the default guest IP pool is taken; using a free one");
            config.guest_ip_pool = choice.pool;
            (config, Some(said))
        }
        Ok(_) => (config, None),
        Err(e) => {
            tracing::warn!(error = %e, "the guest IP pool overlaps a host route; VMs cannot start");
            (config, None)
        }
    }
}

/// How often running guests are checked for a pause on an I/O error, and
/// their console logs for their size.
const WATCH_POLL: std::time::Duration = std::time::Duration::from_secs(5);

async fn watch_running_vms(
    lifecycle: Arc<lifecycle::Lifecycle>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_POLL) => {}
            _ = shutdown.changed() => return,
        }
        let lifecycle = lifecycle.clone();
        let _ = tokio::task::spawn_blocking(move || {
            lifecycle.watch_running_vms(banger_host::vm_dir::ConsoleCap::DEFAULT)
        })
        .await;
    }
}

/// banger's capabilities in the order they prepare a VM.
pub fn pipeline(
    paths: &Paths,
    config: &Config,
    deps: &Deps,
    dns: capabilities::DnsTable,
) -> anyhow::Result<Vec<Arc<dyn capability::Capability>>> {
    let pool = config.guest_ip_pool;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    Ok(vec![
        Arc::new(capabilities::StorageCapability::new(deps.disks.clone())),
        Arc::new(capabilities::VsockCapability::new(paths.vms_dir.clone())),
        Arc::new(capabilities::NetworkCapability::new(
            deps.network.clone(),
            pool,
            uid,
        )),
        Arc::new(capabilities::NatCapability::new(deps.network.clone())),
        Arc::new(capabilities::DnsCapability::new(dns)),
        Arc::new(capabilities::SshCapability::new(deps.public_keys.clone())),
        Arc::new(capabilities::PublishCapability::new(deps.ports.clone())),
    ])
}

fn spawn_signal_handler(daemon: std::sync::Arc<Daemon>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        daemon.request_shutdown();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_host::net::FakeNetwork;

    #[test]
    fn the_default_pool_moves_off_a_host_route_and_an_explicit_one_stays() {
        let network = FakeNetwork::new();
        network.with_state(|s| {
            s.routes = vec!["10.219.0.0/24 dev eth0 proto kernel scope link src 10.219.0.7".into()]
        });
        let (config, reason) = settle_pool(Config::default(), &network);
        assert_eq!(config.guest_ip_pool.to_string(), "10.219.1.0/24");
        let reason = reason.expect("a reason is given");
        assert!(reason.contains("10.219.0.0/24 dev eth0"), "{reason}");
        let chosen = Config {
            guest_ip_pool_explicit: true,
            ..Config::default()
        };
        let (config, reason) = settle_pool(chosen, &network);
        assert_eq!(
            (config.guest_ip_pool.to_string(), reason),
            ("10.219.0.0/24".to_owned(), None)
        );
    }
}
