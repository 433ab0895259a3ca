//! `make bench`: banger's figures, each printed next to a baseline measured
//! in the same run, because these machines are shared and noisy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use banger_daemon::lifecycle::{Lifecycle, StopTimeouts};
use banger_daemon::store::{Store, VmRecord};
use banger_host::Paths;
use banger_host::disk::{Disks, Ext4Disks};
use banger_host::process::HostRunner;
use banger_proto::{CreateVmParams, Image, VmState};
use banger_vmm::firecracker::Firecracker;

const RUNS: usize = 40;
const CREATE_RUNS: usize = 31;
/// Each boot to SSH takes 15 to 30 s under emulation.
const BOOT_RUNS: usize = 3;

#[derive(Debug)]
struct Row {
    what: String,
    value: String,
    baseline: String,
    ratio: String,
}

impl Row {
    /// Medians of two sample sets, each value with its 10th to 90th
    /// percentile spread.
    fn spread(
        what: impl Into<String>,
        ours: &[Duration],
        baseline_name: &str,
        baseline: &[Duration],
    ) -> Self {
        let (value, base) = (middle(ours.to_vec()), middle(baseline.to_vec()));
        Self {
            what: what.into(),
            value: format!("{} [{}]", ms(value), percentiles(ours)),
            baseline: format!("{} [{}] ({baseline_name})", ms(base), percentiles(baseline)),
            ratio: format!("{:.2}x", value.as_secs_f64() / base.as_secs_f64()),
        }
    }

    fn timed(
        what: impl Into<String>,
        value: Duration,
        baseline_name: &str,
        baseline: Duration,
    ) -> Self {
        Self {
            what: what.into(),
            value: ms(value),
            baseline: format!("{} ({baseline_name})", ms(baseline)),
            ratio: format!("{:.2}x", value.as_secs_f64() / baseline.as_secs_f64()),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("locating the bench binary's directory")?;
    let banger = bin_dir.join("banger");
    if !banger.is_file() {
        bail!(
            "{} not found: run `make bench` (it builds the release binaries first)",
            banger.display()
        );
    }
    // `make bench` runs every group; `banger-bench create list` only those.
    let groups = [
        "list", "dns", "disks", "create", "boot", "load", "nested", "agent", "image", "suspend",
    ];
    let chosen: Vec<String> = std::env::args().skip(1).collect();
    if let Some(unknown) = chosen.iter().find(|g| !groups.contains(&g.as_str())) {
        bail!(
            "unknown benchmark group {unknown:?}: choose from {}",
            groups.join(", ")
        );
    }
    let wanted = |group: &str| chosen.is_empty() || chosen.iter().any(|g| g == group);
    let mut rows = Vec::new();
    if wanted("list") {
        daemon_rows(&banger, &mut rows)?;
    }
    if wanted("dns") {
        dns_rows(&banger, &mut rows)?;
    }
    if wanted("disks") {
        storage_rows(&mut rows)?;
    }
    if wanted("create") {
        firecracker_rows(&mut rows)?;
    }
    if wanted("boot") {
        qemu_boot_rows(&banger, &mut rows)?;
    }
    if wanted("load") {
        load_rows(&banger, &mut rows)?;
    }
    if wanted("nested") {
        nested_rows(&banger, &mut rows)?;
    }
    if wanted("agent") {
        agent_rows(&banger, &mut rows)?;
    }
    if wanted("image") {
        image_rows(&banger, &mut rows)?;
    }
    if wanted("suspend") {
        suspend_rows(&banger, &mut rows)?;
        reflink_branch_rows(&banger, &mut rows)?;
    }
    print_table(&rows);
    Ok(())
}

/// `vm list --json` with 0 and 1,000 VMs, and the daemon's idle memory.
fn daemon_rows(banger: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let empty = World::new(banger.to_path_buf())?;
    empty.run(&["vm", "list", "--json"])?; // starts the daemon
    let full = World::new(banger.to_path_buf())?;
    full.seed_vms(1000)?;
    let listed = full.run(&["vm", "list", "--json"])?;
    let count = serde_json::from_str::<serde_json::Value>(&listed)?
        .as_array()
        .map_or(0, Vec::len);
    if count != 1000 {
        bail!("expected 1000 VMs in the list, got {count}");
    }
    rows.push(envelope_row(&listed)?);
    // The daemon answers the list from its last answer until a VM changes.
    // A cold list is the first after a change (a `vm set`, untimed), which
    // pays the query and serialization; the cached one is the next. All
    // four alternate, so a busy moment slows each alike.
    let (mut spawn_true, mut list_empty) = (Vec::new(), Vec::new());
    let (mut list_cold, mut list_cached) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        full.run(&[
            "vm",
            "set",
            "bench-vm-0",
            "--vcpu",
            &(1 + run % 2).to_string(),
        ])?;
        list_cold.push(time_command(full.command(&["vm", "list", "--json"]))?);
        list_cached.push(time_command(full.command(&["vm", "list", "--json"]))?);
        spawn_true.push(time_command(Command::new("true"))?);
        list_empty.push(time_command(empty.command(&["vm", "list", "--json"]))?);
    }
    rows.push(Row::spread(
        "vm list --json, 0 VMs",
        &list_empty,
        "spawn `true`",
        &spawn_true,
    ));
    rows.push(Row::spread(
        "vm list --json, 1,000 VMs, cached (target <= 1.5x)",
        &list_cached,
        "0 VMs",
        &list_empty,
    ));
    rows.push(Row::spread(
        "vm list --json, 1,000 VMs, cold (first after a change)",
        &list_cold,
        "0 VMs",
        &list_empty,
    ));

    std::thread::sleep(Duration::from_millis(300));
    let rss = empty.daemon_rss_kib()?;
    rows.push(Row {
        what: "bangerd idle RSS".into(),
        value: format!("{:.1} MiB", rss as f64 / 1024.0),
        baseline: "-".into(),
        ratio: "-".into(),
    });
    Ok(())
}

/// Why the CLI slices a success line's result out instead of parsing the
/// envelope (`Response::success_result`): both ways on a real 1,000-VM
/// `vm.list` answer, in-process, so only the two approaches differ.
fn envelope_row(result: &str) -> anyhow::Result<Row> {
    use banger_proto::Response;
    use std::hint::black_box;
    const BATCH: u32 = 50;
    let raw = serde_json::value::RawValue::from_string(result.trim_end().to_owned())?;
    let mut line = serde_json::to_vec(&Response::success(serde_json::json!(7), raw))?;
    line.push(b'\n');
    let (mut sliced, mut parsed) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let start = Instant::now();
        for _ in 0..BATCH {
            let result = Response::success_result(black_box(&line), 7)
                .context("the answer line has the success shape")?;
            black_box(String::from_utf8(result.to_vec())?);
        }
        sliced.push(start.elapsed() / BATCH);
        let start = Instant::now();
        for _ in 0..BATCH {
            let response: Response = serde_json::from_slice(black_box(&line))?;
            black_box(response.result.map(|r| r.get().to_owned()));
        }
        parsed.push(start.elapsed() / BATCH);
    }
    Ok(Row::spread(
        format!(
            "CLI: the result of a 1,000-VM answer ({} KB), sliced out",
            line.len() / 1000
        ),
        &sliced,
        "parsed as a Response",
        &parsed,
    ))
}

/// 50 CLI clients running `vm list --json` back to back for 30 s against a
/// daemon holding 1,000 VMs: every call must succeed; the p99 is reported
/// next to one client's alone.
fn load_rows(banger: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    const CLIENTS: usize = 50;
    const SECONDS: u64 = 30;
    let world = World::new(banger.to_path_buf())?;
    world.seed_vms(1000)?;
    world.run(&["vm", "list", "--json"])?;
    let alone: Vec<Duration> = (0..RUNS)
        .map(|_| time_command(world.command(&["vm", "list", "--json"])))
        .collect::<anyhow::Result<_>>()?;
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let world = Arc::new(world);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let world = world.clone();
            std::thread::spawn(move || {
                let (mut times, mut errors) = (Vec::new(), Vec::new());
                while Instant::now() < deadline {
                    match time_command(world.command(&["vm", "list", "--json"])) {
                        Ok(took) => times.push(took),
                        Err(e) => errors.push(format!("{e:#}")),
                    }
                }
                (times, errors)
            })
        })
        .collect();
    let (mut times, mut errors) = (Vec::new(), Vec::new());
    for client in clients {
        let (t, e) = client
            .join()
            .map_err(|_| anyhow::anyhow!("a load client panicked"))?;
        times.extend(t);
        errors.extend(e);
    }
    if let Some(first) = errors.first() {
        bail!(
            "{} of {} calls under load failed; the first: {first}",
            errors.len(),
            errors.len() + times.len()
        );
    }
    times.sort();
    let p99 = times[(times.len() - 1) * 99 / 100];
    rows.push(Row::timed(
        format!(
            "vm list --json p99, {CLIENTS} clients for {SECONDS}s, 1,000 VMs ({} calls, 0 errors)",
            times.len()
        ),
        p99,
        "one client alone, median",
        middle(alone),
    ));
    Ok(())
}

/// A VM's overlay and seeded work disk, against making the same two disks
/// by hand: `mkfs.ext4` of a 64G sparse overlay with `upper/` and `work/`,
/// and of a 16G work disk seeded with the base's `/root` (extracted once,
/// outside the clock, which favours the baseline).
fn storage_rows(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        rows.push(skipped(
            "VM disk creation",
            "mkfs.ext4 missing (apt-get install e2fsprogs)",
        ));
        return Ok(());
    }
    let tmp = tempfile::Builder::new()
        .prefix("banger-bench-disk-")
        .tempdir()?;
    let disks = Ext4Disks::new(Arc::new(HostRunner), tmp.path().join("cache"));
    for (label, size) in [("1 GiB", 1u64 << 30), ("16 GiB", 16 << 30)] {
        let base = make_base_image(tmp.path(), size)?;
        let root_tree = tmp.path().join(format!("root-of-{size}"));
        std::fs::create_dir_all(root_tree.join("root"))?;
        let status = Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump /root {}", root_tree.display()))
            .arg(&base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("debugfs rdump of the bench base image failed");
        }
        let overlay_tree = tmp.path().join("overlay-tree");
        std::fs::create_dir_all(overlay_tree.join("upper"))?;
        std::fs::create_dir_all(overlay_tree.join("work"))?;
        let mut n = 0;
        let ours = median(9, || {
            n += 1;
            let dir = tmp.path().join(format!("vm-{size}-{n}"));
            std::fs::create_dir(&dir)?;
            let start = Instant::now();
            disks.create_overlay(&banger_host::VmDir::new(&dir).overlay(), 64 << 30)?;
            disks.create_work_disk(
                &banger_host::VmDir::new(&dir).work_disk(),
                16 << 30,
                Some(&base),
            )?;
            let elapsed = start.elapsed();
            std::fs::remove_dir_all(&dir)?;
            Ok(elapsed)
        })?;
        let by_hand = median(9, || {
            let dir = tmp.path().join("by-hand");
            std::fs::create_dir_all(&dir)?;
            let start = Instant::now();
            for (disk, disk_size, label, tree) in [
                ("overlay.ext4", 64u64 << 30, "banger-overlay", &overlay_tree),
                ("work.ext4", 16 << 30, "banger-work", &root_tree),
            ] {
                let path = dir.join(disk);
                std::fs::File::create(&path)?.set_len(disk_size)?;
                let mut mkfs = Command::new("mkfs.ext4");
                mkfs.args(["-F", "-q", "-L", label, "-d"])
                    .arg(tree)
                    .arg(&path);
                time_command(mkfs)?;
            }
            let elapsed = start.elapsed();
            std::fs::remove_dir_all(&dir)?;
            Ok(elapsed)
        })?;
        rows.push(Row::timed(
            format!("overlay + work disk, {label} base, template warm"),
            ours,
            "mkfs.ext4 of both by hand",
            by_hand,
        ));
    }
    Ok(())
}

/// A base image of `size` bytes with a small /root, as the bundle's are.
fn make_base_image(dir: &Path, size: u64) -> anyhow::Result<PathBuf> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("root/.ssh"))?;
    std::fs::create_dir_all(tree.join("usr/bin"))?;
    std::fs::write(tree.join("root/.bashrc"), "export PS1='$ '\n")?;
    std::fs::write(tree.join("usr/bin/blob"), vec![7u8; 32 << 20])?;
    let image = dir.join(format!("base-{size}.ext4"));
    std::fs::File::create(&image)?.set_len(size)?;
    let status = Command::new("mkfs.ext4")
        .args(["-F", "-q", "-d"])
        .arg(&tree)
        .arg(&image)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("mkfs.ext4 of the bench base image failed");
    }
    Ok(image)
}

/// Host-side `vm create` up to the VMM's start, against Firecracker started
/// by hand with `--config-file` on the same VM, both with a guest that only spins.
fn firecracker_rows(rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let Some(binary) = std::env::var_os("BANGER_TEST_FIRECRACKER").map(PathBuf::from) else {
        rows.push(skipped(
            "vm create vs firecracker --config-file",
            "BANGER_TEST_FIRECRACKER is not set",
        ));
        return Ok(());
    };
    let tmp = tempfile::Builder::new()
        .prefix("banger-bench-fc-")
        .tempdir()?;
    let home = tmp.path().to_path_buf();
    let paths = Paths::under(&home)?;
    paths.ensure_daemon_dirs()?;
    let kernel = tmp.path().join("vmlinux");
    std::fs::write(&kernel, banger_vmm::testkit::spin_kernel())?;
    let rootfs = make_base_image(tmp.path(), 256 << 20)?;
    let lifecycle = firecracker_lifecycle(&binary, &paths, &kernel, &rootfs)?;
    let create = |n: usize| -> anyhow::Result<Duration> {
        let start = Instant::now();
        let vm = lifecycle.create(&CreateVmParams {
            name: Some(format!("bench-{n}")),
            vcpu: Some(1),
            memory_mib: Some(128),
            disk_size: Some("1G".into()),
            ..Default::default()
        })?;
        let elapsed = start.elapsed();
        lifecycle.delete(&vm.id)?;
        Ok(elapsed)
    };
    create(0)?; // builds the disk templates, once per image as for users
    // Alternating runs, so a noisy neighbour slows both sides alike.
    let (mut ours, mut by_hand) = (Vec::new(), Vec::new());
    for n in 1..=CREATE_RUNS {
        ours.push(create(n)?);
        by_hand.push(firecracker_by_hand(&binary, tmp.path(), &kernel, &rootfs)?);
    }
    // Creating a KVM VM on this PVM host sometimes costs one or two extra
    // 3.2 ms scheduler ticks, on both sides at random; a median can
    // land a tick apart. The best run is each side's own cost (noise only
    // adds), so the target compares those; the medians are shown too.
    let (best_ours, best_by_hand) = (
        ours.iter().copied().min().unwrap_or_default(),
        by_hand.iter().copied().min().unwrap_or_default(),
    );
    // banger's clock: validation and preflight, the IP and CID, the overlay
    // and work disk copied from warm templates, the config drive (no SSH
    // key), the store's records, Firecracker's start and its API
    // configuration up to InstanceStart. The TAP is a name only (Firecracker
    // opens it, as on the by-hand side). The by-hand clock: Firecracker's
    // start with the same configuration as a file, up to Running; its disk
    // files and config file are made before its clock starts.
    rows.push(Row::timed(
        "vm create up to VMM start, best of 31 (target <= 1.2x)",
        best_ours,
        "firecracker --config-file",
        best_by_hand,
    ));
    rows.push(Row::spread(
        "vm create up to VMM start, 31 runs",
        &ours,
        "firecracker --config-file",
        &by_hand,
    ));
    Ok(())
}

/// The lifecycle the create bench drives: real Firecracker, real ext4
/// disks, a fake network (the TAP is a name Firecracker opens itself).
fn firecracker_lifecycle(
    binary: &Path,
    paths: &Paths,
    kernel: &Path,
    rootfs: &Path,
) -> anyhow::Result<Arc<Lifecycle>> {
    let store = Arc::new(Store::open(&paths.db_file)?);
    store.put_image(&Image {
        name: "default".into(),
        rootfs: rootfs.to_path_buf(),
        kernel: Some(kernel.to_path_buf()),
        initrd: None,
        modules_dir: None,
        docker: false,
        managed: false,
        created_at: 0,
        ..Default::default()
    })?;
    // The NIC is a TAP name only: Firecracker creates the TAP when it opens
    // it (as root), on both sides alike.
    let deps = banger_daemon::Deps {
        backends: vec![Arc::new(Firecracker::new(binary.to_path_buf()))],
        disks: Arc::new(Ext4Disks::new(
            Arc::new(HostRunner),
            paths.cache_dir.clone(),
        )),
        network: Arc::new(banger_host::net::FakeNetwork::new()),
        public_keys: Vec::new(),
        ports: std::sync::Arc::new(banger_host::publish::TcpPublisher::default()),
        vmm_reason: "benchmark".into(),
        stop_timeouts: StopTimeouts {
            graceful: Duration::from_millis(200),
            term: Duration::from_secs(2),
        },
    };
    let capabilities = banger_daemon::pipeline(
        paths,
        &banger_host::Config::default(),
        &deps,
        Default::default(),
    )?;
    Ok(Lifecycle::new(
        paths.clone(),
        store,
        deps.backends.clone(),
        deps.disks.clone(),
        capabilities,
        None,
    )
    .with_stop_timeouts(deps.stop_timeouts))
}

/// Starts Firecracker with an equivalent config file and waits until its
/// API reports the instance running.
fn firecracker_by_hand(
    binary: &Path,
    dir: &Path,
    kernel: &Path,
    rootfs: &Path,
) -> anyhow::Result<Duration> {
    let run_dir = dir.join("by-hand");
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)?;
    for disk in ["overlay.ext4", "work.ext4"] {
        std::fs::File::create(run_dir.join(disk))?.set_len(1 << 30)?;
    }
    std::fs::File::create(banger_host::VmDir::new(&run_dir).config_drive())?.set_len(4096)?;
    // What banger sends over the API, as one file: logger, machine, boot
    // source, the four drives, a NIC (Firecracker opens the TAP, creating
    // it as root, on both sides) and vsock.
    let config = serde_json::json!({
        "logger": { "level": "Info", "show_level": true },
        "boot-source": { "kernel_image_path": kernel, "boot_args": banger_daemon::lifecycle::BOOT_ARGS },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
        "drives": [
            { "drive_id": "base", "path_on_host": rootfs, "is_root_device": false, "is_read_only": true },
            { "drive_id": "overlay", "path_on_host": banger_host::VmDir::new(&run_dir).overlay(), "is_root_device": false, "is_read_only": false },
            { "drive_id": "work", "path_on_host": banger_host::VmDir::new(&run_dir).work_disk(), "is_root_device": false, "is_read_only": false },
            { "drive_id": "config", "path_on_host": banger_host::VmDir::new(&run_dir).config_drive(), "is_root_device": false, "is_read_only": true },
        ],
        "network-interfaces": [
            { "iface_id": "eth0", "host_dev_name": "bg-byhand", "guest_mac": "06:00:0a:00:00:02" },
        ],
        "vsock": { "guest_cid": 3, "uds_path": banger_host::VmDir::new(&run_dir).vsock() },
    });
    let config_path = run_dir.join("config.json");
    std::fs::write(&config_path, config.to_string())?;
    let socket = run_dir.join("api.sock");
    let start = Instant::now();
    let mut child = Command::new(binary)
        .arg("--api-sock")
        .arg(&socket)
        .arg("--config-file")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = start + Duration::from_secs(10);
    let elapsed = loop {
        let running =
            banger_vmm::firecracker::api::send(&socket, "GET", "/", None, Duration::from_secs(1))
                .is_ok_and(|r| r.status == 200 && r.body.contains("Running"));
        if running {
            break start.elapsed();
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("firecracker --config-file did not report Running");
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(elapsed)
}

/// Queries per second for known `.vm` names: banger's DNS server against
/// dnsmasq answering the same records from a hosts file.
fn dns_rows(banger: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    const VMS: u32 = 200;
    let world = World::new(banger.to_path_buf())?;
    world.write_config("dns_listen = \"127.0.0.1:0\"\n")?;
    world.seed_vms(VMS)?;
    world.run(&["vm", "list", "--json"])?; // starts the daemon
    let status: serde_json::Value =
        serde_json::from_str(&world.run(&["daemon", "status", "--json"])?)?;
    let ours: std::net::SocketAddr = status["dns_listen"]
        .as_str()
        .context("no DNS address")?
        .parse()?;
    let names: Vec<String> = (0..VMS).map(|i| format!("bench-vm-{i}.vm.")).collect();
    let expected: Vec<std::net::Ipv4Addr> = (0..VMS).map(World::seed_ip).collect();
    let banger_qps = queries_per_second(ours, &names, &expected)?;

    let Ok(dnsmasq) = which("dnsmasq") else {
        rows.push(skipped(
            "DNS queries/s, known names",
            "dnsmasq missing (apt-get install dnsmasq-base)",
        ));
        return Ok(());
    };
    let hosts = world.tmp.path().join("bench.hosts");
    let text: String = (0..VMS)
        .map(|i| format!("{} bench-vm-{i}.vm\n", World::seed_ip(i)))
        .collect();
    std::fs::write(&hosts, text)?;
    let port = free_udp_port()?;
    let mut child = Command::new(dnsmasq)
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ])
        .args([
            "--listen-address=127.0.0.1",
            "--user=root",
            "--cache-size=1000",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let theirs = queries_per_second(format!("127.0.0.1:{port}").parse()?, &names, &expected);
    let _ = child.kill();
    let _ = child.wait();
    let theirs = theirs?;
    rows.push(Row {
        what: format!("DNS correct answers/s, {VMS} known names"),
        value: format!(
            "{:.0}/s of {:.0} replies/s",
            banger_qps.correct, banger_qps.replies
        ),
        baseline: format!(
            "{:.0}/s of {:.0} replies/s (dnsmasq)",
            theirs.correct, theirs.replies
        ),
        ratio: format!("{:.2}x", banger_qps.correct / theirs.correct),
    });
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Rates {
    /// Replies of any kind per second.
    replies: f64,
    /// Replies whose answer is the name's expected A record, per second.
    correct: f64,
}

/// Keeps 32 queries in flight on one socket for two seconds. Query `i`
/// asks for `names[i]` with ID `i`, whose right answer is `expected[i]`.
fn queries_per_second(
    server: std::net::SocketAddr,
    names: &[String],
    expected: &[std::net::Ipv4Addr],
) -> anyhow::Result<Rates> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;
    let packets: Vec<Vec<u8>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut m = Message::new();
            m.set_id(u16::try_from(i % 65_536).unwrap_or(0))
                .set_recursion_desired(true);
            m.add_query(Query::query(
                Name::from_str(name).expect("a valid name"),
                RecordType::A,
            ));
            m.to_vec().expect("a query encodes")
        })
        .collect();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 1500];
    // Warm up and check the server answers at all.
    socket.send(&packets[0])?;
    socket
        .recv(&mut buf)
        .context("the DNS server did not answer")?;
    let mut sent = 0usize;
    for _ in 0..32 {
        socket.send(&packets[sent % packets.len()])?;
        sent += 1;
    }
    let start = Instant::now();
    let (mut answered, mut correct) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(2) {
        match socket.recv(&mut buf) {
            Ok(len) => {
                answered += 1;
                if answers_with(&buf[..len], expected) {
                    correct += 1;
                }
                socket.send(&packets[sent % packets.len()])?;
                sent += 1;
            }
            Err(_) => {
                // A lost datagram: put another in flight.
                socket.send(&packets[sent % packets.len()])?;
                sent += 1;
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Rates {
        replies: answered as f64 / seconds,
        correct: correct as f64 / seconds,
    })
}

/// Whether a reply is NOERROR with the A record its query ID expects.
fn answers_with(reply: &[u8], expected: &[std::net::Ipv4Addr]) -> bool {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RData;
    let Ok(message) = Message::from_vec(reply) else {
        return false;
    };
    let Some(want) = expected.get(usize::from(message.id())) else {
        return false;
    };
    message.response_code() == ResponseCode::NoError
        && message
            .answers()
            .iter()
            .any(|record| matches!(record.data(), RData::A(a) if a.0 == *want))
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not found"))
}

/// Boot to SSH-ready through `banger vm create --wait` against the same
/// QEMU command line started by hand on the same disks, TAP and bundle.
fn qemu_boot_rows(banger: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    // Both sides boot a guest that has booted once (host keys made, caches
    // warm): the first boot is not measured.
    let guest = match QemuGuest::create(banger, "bench-boot")? {
        Ok(guest) => guest,
        Err(why) => {
            rows.push(skipped("boot to SSH on qemu", why));
            return Ok(());
        }
    };
    let (world, bundle, vm) = (&guest.world, &guest.bundle, &guest.vm);
    let dir = PathBuf::from(vm["dir"].as_str().context("no VM dir")?);
    // The config drive exists while the VM runs; the by-hand boot gets a copy.
    std::fs::copy(
        banger_host::VmDir::new(&dir).config_drive(),
        dir.join("by-hand-config.tar"),
    )?;
    world.run(&["vm", "stop", "bench-boot"])?;
    // The same VM by hand: its disks, a TAP of the same name and MAC, the same command line.
    let ip: std::net::Ipv4Addr = vm["guest_ip"].as_str().context("no guest IP")?.parse()?;
    let tap = vm["tap"].as_str().context("no TAP")?.to_owned();
    let spec = by_hand_spec(vm, bundle, &dir, ip, &tap);
    let helper = which("vhost-device-vsock").or_else(|_| {
        Ok::<_, anyhow::Error>(
            PathBuf::from(std::env::var("HOME")?).join(".cargo/bin/vhost-device-vsock"),
        )
    })?;
    let addr = std::net::SocketAddr::from((ip, 22));
    let measured = alternate_boots(world, bundle, &spec, &tap, &helper, addr);
    guest.delete()?;
    let (through_banger, by_hand) = measured?;
    rows.push(Row::spread(
        format!("boot to SSH on qemu (vm start --wait), {BOOT_RUNS} runs"),
        &through_banger,
        "same qemu by hand",
        &by_hand,
    ));
    Ok(())
}

/// `image build` of one package from the bundle's base, against the cold
/// boot of a VM to SSH on the same host (the build boots one builder).
/// mise and opencode come from their pinned upstream (kept between runs in
/// ~/.cache/banger-e2e/image-sources, shared with the e2e suite); the tmux
/// plugins are stand-ins made here and pinned in the bench's config.
fn image_rows(banger: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    const WHAT: &str = "image build (1 package) from the bundle's base";
    let bundle = match QemuGuest::bundle(banger) {
        Ok(bundle) => bundle,
        Err(why) => {
            rows.push(skipped(WHAT, why));
            return Ok(());
        }
    };
    let world = World::new(banger.to_path_buf())?;
    let home = world.tmp.path();
    let shared = PathBuf::from(std::env::var("HOME")?).join(".cache/banger-e2e/image-sources");
    let cache = home.join(".cache/banger/image-sources");
    std::fs::create_dir_all(&cache)?;
    for entry in std::fs::read_dir(&shared).into_iter().flatten().flatten() {
        std::fs::copy(entry.path(), cache.join(entry.file_name()))?;
    }
    let mut config = format!("{}[image_sources]\n", qemu_config());
    for (key, dir) in [
        ("tmux_resurrect", "tmux-resurrect-4.0.0"),
        ("tmux_continuum", "tmux-continuum-3.1.0"),
    ] {
        std::fs::create_dir_all(home.join("plugins").join(dir))?;
        std::fs::write(
            home.join("plugins").join(dir).join("plugin.tmux"),
            "#!/bin/sh\n",
        )?;
        let tar = home.join(format!("plugins/{key}.tar"));
        let made = Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(home.join("plugins"))
            .arg(dir)
            .status()?;
        if !made.success() {
            bail!("tar could not pack the {key} stand-in");
        }
        let sum = banger_host::image_sources::tar_sha256(&tar)?;
        config.push_str(&format!(
            "{key} = {{ place = \"{}\", sha256 = \"{sum}\" }}\n",
            tar.display()
        ));
    }
    world.write_config(&config)?;
    std::fs::write(home.join("packages.apt"), "tree\n")?;
    let timed = |args: &[&str]| -> anyhow::Result<Duration> {
        let started = Instant::now();
        let out = world
            .command(args)
            .env("BANGER_RUNTIME_DIR", &bundle)
            .output()?;
        if !out.status.success() {
            bail!(
                "banger {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(started.elapsed())
    };
    let measured = (|| -> anyhow::Result<(Duration, Duration)> {
        let boot = timed(&["vm", "create", "--name", "bench-cold", "--wait"])?;
        timed(&["vm", "delete", "bench-cold"])?;
        let packages = home.join("packages.apt");
        let build = timed(&[
            "image",
            "build",
            "--name",
            "bench-img",
            "--packages",
            packages.to_str().context("path")?,
        ])?;
        timed(&["image", "delete", "bench-img"])?;
        Ok((build, boot))
    })();
    let _ = world.command(&["daemon", "stop"]).output();
    remove_bridge(&bench_bridge());
    let (build, boot) = measured?;
    rows.push(Row::timed(
        WHAT,
        build,
        "vm create --wait, cold, to SSH",
        boot,
    ));
    Ok(())
}

/// On one QEMU guest: resume to SSH against a cold boot to SSH (goal: a
/// tenth), the suspend's time against a graceful stop and its saved
/// state against the guest's RAM, and a branch's time (without memory and
/// with) after 1 GiB more on the source's disks against one of the fresh
/// VM (goal: flat; met only where copies are reflinks, see
/// [`reflink_branch_rows`]).
fn suspend_rows(banger: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    const NAME: &str = "bench-suspend";
    let started = Instant::now();
    let guest = match QemuGuest::create(banger, NAME)? {
        Ok(guest) => guest,
        Err(why) => {
            rows.push(skipped("resume to SSH on qemu", why));
            return Ok(());
        }
    };
    let first_boot = started.elapsed();
    let measured = boot_breakdown(&guest.world, NAME, first_boot)
        .and_then(|row| Ok((row, suspend_figures(&guest, NAME)?)));
    guest.delete()?;
    let (breakdown, figures) = measured?;
    rows.extend(breakdown);
    rows.extend(figures);
    Ok(())
}

/// Where a first boot's time goes: `vm create --wait` to SSH against the
/// kernel's part (with the initrd) as `systemd-analyze` reports it, then
/// the same boot's milestones on the guest's clock (the kernel starting
/// `/init`, systemd starting, its units loaded, the agent and sshd
/// active), the agent's and sshd's against the kernel's part, and the
/// slowest units of the guest's `systemd-analyze blame`.
fn boot_breakdown(world: &World, name: &str, first_boot: Duration) -> anyhow::Result<Vec<Row>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    // systemd-analyze answers once the boot has finished (Docker starts late).
    let summary = loop {
        let out = world
            .command(&["vm", "exec", name, "--", "systemd-analyze"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("(kernel)") {
            break text;
        }
        if Instant::now() > deadline {
            bail!("the guest's boot did not finish within 120 s: {text}");
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    // "Startup finished in 3.790s (kernel) + 1min 2.5s (userspace) = ..."
    let words: Vec<&str> = summary.split_whitespace().collect();
    let seconds_before = |label: &str| -> Option<f64> {
        let at = words.iter().position(|w| *w == label)?;
        let secs: f64 = words
            .get(at.checked_sub(1)?)?
            .strip_suffix('s')?
            .parse()
            .ok()?;
        let minutes = at
            .checked_sub(2)
            .and_then(|i| words[i].strip_suffix("min")?.parse::<f64>().ok())
            .unwrap_or(0.0);
        Some(minutes * 60.0 + secs)
    };
    let kernel = seconds_before("(kernel)").context("no kernel time in systemd-analyze")?;
    let userspace = seconds_before("(userspace)").unwrap_or(0.0);
    let blame = world.run(&["vm", "exec", name, "--", "systemd-analyze", "blame"])?;
    let slowest: Vec<String> = blame
        .lines()
        .take(3)
        .map(|line| line.split_whitespace().rev().collect::<Vec<_>>().join(" "))
        .collect();
    let milestones = GuestMilestones::read(world, name)?;
    Ok(vec![
        Row {
            what: format!(
                "first boot to SSH (vm create --wait); in the guest: {milestones}; \
                 userspace done at +{userspace:.1} s; slowest: {}",
                slowest.join(", ")
            ),
            value: ms(first_boot),
            baseline: format!(
                "{:.0} ms (kernel and initrd, systemd-analyze)",
                kernel * 1000.0
            ),
            ratio: format!("{:.2}x", first_boot.as_secs_f64() / kernel),
        },
        Row {
            what: "the same boot on the guest's clock: agent, then sshd, active".into(),
            value: format!(
                "{:.0} ms, {:.0} ms",
                milestones.agent * 1000.0,
                milestones.sshd * 1000.0
            ),
            baseline: format!("{:.0} ms (kernel and initrd)", kernel * 1000.0),
            ratio: format!(
                "{:.2}x, {:.2}x",
                milestones.agent / kernel,
                milestones.sshd / kernel
            ),
        },
    ])
}

/// A boot's milestones in seconds on the guest's monotonic clock.
struct GuestMilestones {
    init: f64,
    systemd: f64,
    units_loaded: f64,
    agent: f64,
    sshd: f64,
}

impl GuestMilestones {
    fn read(world: &World, name: &str) -> anyhow::Result<Self> {
        let microseconds = |args: &[&str], property: &str| -> anyhow::Result<f64> {
            let mut argv = vec![
                "vm",
                "exec",
                name,
                "--",
                "systemctl",
                "show",
                "-p",
                property,
            ];
            argv.extend_from_slice(args);
            let text = world.run(&argv)?;
            let value: u64 = text
                .trim()
                .strip_prefix(&format!("{property}="))
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("systemctl show -p {property}: {text:?}"))?;
            Ok(value as f64 / 1e6)
        };
        // "[    1.231653] Run /init as init process"
        let dmesg = world.run(&["vm", "exec", name, "--", "dmesg"])?;
        let init = dmesg
            .lines()
            .find(|line| line.contains("Run /init as init process"))
            .and_then(|line| line.trim_start_matches('[').split(']').next())
            .and_then(|secs| secs.trim().parse().ok())
            .context("no 'Run /init' line in the guest's dmesg")?;
        Ok(Self {
            init,
            systemd: microseconds(&[], "UserspaceTimestampMonotonic")?,
            units_loaded: microseconds(&[], "UnitsLoadFinishTimestampMonotonic")?,
            agent: microseconds(
                &["banger-vsock-pingd.service"],
                "ActiveEnterTimestampMonotonic",
            )?,
            sshd: microseconds(&["ssh.service"], "ActiveEnterTimestampMonotonic")?,
        })
    }
}

impl std::fmt::Display for GuestMilestones {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "/init at {:.2} s, systemd {:.2} s, units loaded {:.2} s, agent {:.2} s, sshd {:.2} s",
            self.init, self.systemd, self.units_loaded, self.agent, self.sshd
        )
    }
}

fn suspend_figures(guest: &QemuGuest, name: &str) -> anyhow::Result<Vec<Row>> {
    let world = &guest.world;
    let timed = |args: &[&str]| -> anyhow::Result<Duration> {
        let mut command = world.command(args);
        command.env("BANGER_RUNTIME_DIR", &guest.bundle);
        time_command(command)
    };
    let dir = PathBuf::from(guest.vm["dir"].as_str().context("no VM dir")?);
    let memory_mib = guest.vm["memory_mib"].as_u64().context("no memory size")?;
    let state = banger_host::VmDir::new(&dir).saved_state();
    let (mut cold, mut resumed, mut suspends, mut stops, mut sizes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..BOOT_RUNS {
        stops.push(timed(&["vm", "stop", name])?);
        cold.push(timed(&["vm", "start", name, "--wait"])?);
        suspends.push(timed(&["vm", "suspend", name])?);
        sizes.push(dir_allocated(&state));
        resumed.push(timed(&["vm", "start", name, "--wait"])?);
    }
    let size = *sizes.iter().max().unwrap_or(&0);
    let mut rows = vec![
        Row::spread(
            format!("resume to SSH on qemu (vm suspend, then vm start --wait), {BOOT_RUNS} runs"),
            &resumed,
            "cold boot to SSH (vm stop, then vm start --wait)",
            &cold,
        ),
        Row::spread(
            format!("vm suspend ({memory_mib} MiB guest; state saved, VMM ended)"),
            &suspends,
            "vm stop (graceful power-off)",
            &stops,
        ),
        Row {
            what: "saved state on disk (largest of the runs)".into(),
            value: format!("{} MiB", size >> 20),
            baseline: format!("{memory_mib} MiB (guest RAM)"),
            ratio: format!("{:.2}x", size as f64 / (memory_mib << 20) as f64),
        },
    ];
    rows.extend(branch_rows(guest, name, "")?);
    Ok(rows)
}

/// A branch's time, without memory and with, of the VM as created and
/// then after 1 GiB more in /root: flat where copies are reflinks.
/// `on` names the filesystem in the rows.
fn branch_rows(guest: &QemuGuest, name: &str, on: &str) -> anyhow::Result<Vec<Row>> {
    let world = &guest.world;
    let timed = |args: &[&str]| -> anyhow::Result<Duration> {
        let mut command = world.command(args);
        command.env("BANGER_RUNTIME_DIR", &guest.bundle);
        time_command(command)
    };
    let fresh = timed(&["vm", "branch", name, "bench-branch-a", "--no-memory"])?;
    world.run(&["vm", "delete", "bench-branch-a"])?;
    let fresh_memory = timed(&["vm", "branch", name, "bench-branch-c"])?;
    world.run(&["vm", "delete", "bench-branch-c"])?;
    world.run(&[
        "vm",
        "exec",
        name,
        "--",
        "sh",
        "-c",
        "head -c 1073741824 /dev/urandom > /root/bench-1g && sync",
    ])?;
    let grown = timed(&["vm", "branch", name, "bench-branch-b", "--no-memory"])?;
    world.run(&["vm", "delete", "bench-branch-b"])?;
    let grown_memory = timed(&["vm", "branch", name, "bench-branch-d"])?;
    world.run(&["vm", "delete", "bench-branch-d"])?;
    Ok(vec![
        Row::timed(
            format!("vm branch --no-memory after 1 GiB more on the source's disks{on}"),
            grown,
            "vm branch --no-memory of the fresh VM",
            fresh,
        ),
        Row::timed(
            format!(
                "vm branch with memory (resumed, own identity) after 1 GiB more on the source's disks{on}"
            ),
            grown_memory,
            "vm branch with memory of the fresh VM",
            fresh_memory,
        ),
    ])
}

/// The branch rows again with the daemon's state on XFS, whose copies are
/// reflinks (FICLONE): ext4, this host's filesystem, has none, so there a
/// branch copies every allocated block.
fn reflink_branch_rows(banger: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    const WHAT: &str = "vm branch on XFS (reflink copies)";
    let fs = match ReflinkFs::create()? {
        Ok(fs) => fs,
        Err(why) => {
            rows.push(skipped(WHAT, &why));
            return Ok(());
        }
    };
    let guest = match QemuGuest::create_in(banger, "bench-reflink", Some(&fs.mount))? {
        Ok(guest) => guest,
        Err(why) => {
            rows.push(skipped(WHAT, why));
            return Ok(());
        }
    };
    let measured = branch_rows(&guest, "bench-reflink", ", state on XFS (reflink)");
    guest.delete()?;
    drop(fs);
    rows.extend(measured?);
    Ok(())
}

/// A fresh XFS filesystem on a loop device (a sparse 40 GiB image in a
/// temporary directory), unmounted and removed when dropped.
struct ReflinkFs {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl ReflinkFs {
    /// `Err(why)` when this host cannot make one, for the skipped row.
    fn create() -> anyhow::Result<Result<Self, String>> {
        if which("mkfs.xfs").is_err() {
            return Ok(Err("mkfs.xfs missing (apt-get install xfsprogs)".into()));
        }
        let dir = tempfile::Builder::new()
            .prefix("banger-bench-xfs-")
            .tempdir()?;
        let image = dir.path().join("xfs.img");
        std::fs::File::create(&image)?.set_len(40 << 30)?;
        // Each step's failure is a reason to skip, in its own words.
        let failed = |command: &mut Command, what: &str| -> anyhow::Result<Option<String>> {
            let out = command.output()?;
            Ok((!out.status.success()).then(|| {
                format!(
                    "{what} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            }))
        };
        let mut mkfs = Command::new("mkfs.xfs");
        mkfs.args(["-q", "-m", "reflink=1"]).arg(&image);
        if let Some(why) = failed(&mut mkfs, "mkfs.xfs")? {
            return Ok(Err(why));
        }
        let mount = dir.path().join("state");
        std::fs::create_dir(&mount)?;
        let mut loop_mount = Command::new("mount");
        loop_mount.args(["-o", "loop"]).arg(&image).arg(&mount);
        if let Some(why) = failed(
            &mut loop_mount,
            "mount -o loop of an XFS image (root and loop devices needed)",
        )? {
            return Ok(Err(why));
        }
        Ok(Ok(Self { mount, _dir: dir }))
    }
}

impl Drop for ReflinkFs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy still (a process of the world ending): detach it, so the
            // image's directory can go.
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

/// Bytes the files in `dir` take on disk.
fn dir_allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.blocks() * 512)
        .sum()
}

/// Round trips and transfers through the guest agent, against SSH to the
/// same guest: `vm exec -- true` vs `vm ssh -- true`, `vm cp` in and out
/// vs `scp`, and SSH through `vm port-forward` vs SSH to the guest IP.
fn agent_rows(banger: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let guest = match QemuGuest::create(banger, "bench-agent")? {
        Ok(guest) => guest,
        Err(why) => {
            rows.push(skipped("vm exec / cp / port-forward on qemu", why));
            return Ok(());
        }
    };
    let ip = guest.vm["guest_ip"]
        .as_str()
        .context("no guest IP")?
        .to_owned();
    let measured = agent_figures(&guest.world, &guest.bundle, &ip);
    guest.delete()?;
    rows.extend(measured?);
    Ok(())
}

fn agent_figures(world: &World, bundle: &Path, ip: &str) -> anyhow::Result<Vec<Row>> {
    const ROUND_TRIPS: usize = 10;
    const COPY_MIB: u64 = 32;
    let key = bundle.join("id_ed25519");
    let ssh_options = |port: &str| -> Vec<String> {
        [
            "-i",
            key.to_str().unwrap_or_default(),
            "-p",
            port,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let timed = |mut command: Command| -> anyhow::Result<Duration> {
        let started = Instant::now();
        let out = command.stdout(Stdio::null()).output()?;
        if !out.status.success() {
            bail!(
                "{command:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(started.elapsed())
    };
    let (mut exec, mut ssh) = (Vec::new(), Vec::new());
    for _ in 0..ROUND_TRIPS {
        exec.push(timed(world.command(&[
            "vm",
            "exec",
            "bench-agent",
            "--",
            "true",
        ]))?);
        ssh.push(timed(world.command(&[
            "vm",
            "ssh",
            "bench-agent",
            "--",
            "true",
        ]))?);
    }
    let mut rows = vec![Row::spread(
        format!("vm exec -- true, {ROUND_TRIPS} runs"),
        &exec,
        "vm ssh -- true",
        &ssh,
    )];

    let file = world.tmp.path().join("payload.bin");
    let data: Vec<u8> = (0..u32::try_from(COPY_MIB << 18)?)
        .flat_map(u32::to_le_bytes)
        .collect();
    std::fs::write(&file, &data)?;
    let file_arg = file.to_str().context("path")?;
    let cp_in = timed(world.command(&["vm", "cp", file_arg, "bench-agent:/root/cp-in.bin"]))?;
    let mut scp = Command::new("scp");
    scp.args(ssh_options("22").iter().map(|o| {
        if o == "-p" {
            "-P".to_owned()
        } else {
            o.clone()
        }
    }))
    .arg(&file)
    .arg(format!("root@{ip}:/root/scp-in.bin"));
    let scp_in = timed(scp)?;
    rows.push(Row::timed(
        format!("vm cp in, {COPY_MIB} MiB"),
        cp_in,
        "scp in",
        scp_in,
    ));
    let back = world.tmp.path().join("back.bin");
    let cp_out = timed(world.command(&[
        "vm",
        "cp",
        "bench-agent:/root/cp-in.bin",
        back.to_str().context("path")?,
    ]))?;
    let mut scp = Command::new("scp");
    scp.args(ssh_options("22").iter().map(|o| {
        if o == "-p" {
            "-P".to_owned()
        } else {
            o.clone()
        }
    }))
    .arg(format!("root@{ip}:/root/scp-in.bin"))
    .arg(world.tmp.path().join("scp-back.bin"));
    let scp_out = timed(scp)?;
    rows.push(Row::timed(
        format!("vm cp out, {COPY_MIB} MiB"),
        cp_out,
        "scp out",
        scp_out,
    ));

    // The same SSH transfer, through a forwarded port and to the guest IP.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut forwarder = world
        .command(&["vm", "port-forward", "bench-agent", &format!("{port}:22")])
        .stdout(Stdio::null())
        .spawn()?;
    let ready = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < ready {
        std::thread::sleep(Duration::from_millis(50));
    }
    let push_through = |host: &str, port: &str| -> anyhow::Result<Duration> {
        let mut ssh = Command::new("ssh");
        ssh.args(ssh_options(port))
            .arg(format!("root@{host}"))
            .arg("cat > /dev/null")
            .stdin(std::fs::File::open(&file)?);
        timed(ssh)
    };
    let forwarded = push_through("127.0.0.1", &port.to_string());
    let direct = push_through(ip, "22");
    let _ = forwarder.kill();
    let _ = forwarder.wait();
    rows.push(Row::timed(
        format!("ssh of {COPY_MIB} MiB through vm port-forward"),
        forwarded?,
        "ssh to the guest IP",
        direct?,
    ));
    Ok(rows)
}

/// One guest on QEMU made by `vm create --wait` with the checkout's
/// bundle, in a private banger world; `delete` removes it, its daemon,
/// and the bench's bridge.
struct QemuGuest {
    world: World,
    bundle: PathBuf,
    vm: serde_json::Value,
    name: String,
}

/// The bridge of this run's bench worlds, its own: the default `banger0`
/// belongs to the user's daemon when they have VMs, and a bench daemon
/// was refused it (its pool moves off the user's by itself).
fn bench_bridge() -> String {
    format!("bgbench{}", std::process::id())
}

/// The config of a bench world whose guests run on QEMU.
fn qemu_config() -> String {
    format!(
        "vmm = \"qemu\"\ndns_listen = \"127.0.0.1:0\"\nbridge = \"{}\"\n",
        bench_bridge()
    )
}

impl QemuGuest {
    /// The checkout's bundle, or why no guest can boot here.
    fn bundle(banger: &Path) -> Result<PathBuf, &'static str> {
        let bundle = banger
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .map(|r| r.join("runtime"))
            .filter(|b| b.join("bundle.json").is_file())
            .ok_or("no ./runtime bundle (make runtime)")?;
        if which("qemu-system-x86_64").is_err()
            || std::env::var_os("BANGER_BENCH_SKIP_BOOT").is_some()
        {
            return Err("qemu-system-x86_64 missing or BANGER_BENCH_SKIP_BOOT set");
        }
        Ok(bundle)
    }

    /// `Err(why)` when this host cannot boot one, for the skipped row.
    fn create(banger: &Path, name: &str) -> anyhow::Result<Result<Self, &'static str>> {
        Self::create_in(banger, name, None)
    }

    /// [`QemuGuest::create`], with the daemon's state under `state_home`.
    fn create_in(
        banger: &Path,
        name: &str,
        state_home: Option<&Path>,
    ) -> anyhow::Result<Result<Self, &'static str>> {
        let bundle = match Self::bundle(banger) {
            Ok(bundle) => bundle,
            Err(why) => return Ok(Err(why)),
        };
        let mut world = World::new(banger.to_path_buf())?;
        world.state_home = state_home.map(Path::to_path_buf);
        world.write_config(&qemu_config())?;
        let created = world
            .command(&["vm", "create", "--name", name, "--wait", "--json"])
            .env("BANGER_RUNTIME_DIR", &bundle)
            .output()?;
        if !created.status.success() {
            bail!(
                "banger vm create --wait failed: {}",
                String::from_utf8_lossy(&created.stderr)
            );
        }
        let vm = serde_json::from_slice(&created.stdout)?;
        Ok(Ok(Self {
            world,
            bundle,
            vm,
            name: name.to_owned(),
        }))
    }

    fn delete(self) -> anyhow::Result<()> {
        self.world.run(&["vm", "delete", &self.name])?;
        drop(self.world);
        remove_bridge(&bench_bridge());
        Ok(())
    }
}

/// Removes a bridge the bench's daemon made, and the guest-to-guest rule
/// that daemon added for it (tagged `banger-bridge:<daemon>`).
fn remove_bridge(name: &str) {
    let _ = Command::new("ip").args(["link", "del", name]).status();
    let Ok(rules) = Command::new("iptables-save").output() else {
        return;
    };
    for rule in String::from_utf8_lossy(&rules.stdout).lines() {
        let Some(spec) = rule.strip_prefix("-A BANGER-FORWARD ") else {
            continue;
        };
        if spec.contains(&format!("-i {name} -o {name} ")) && spec.contains("banger-bridge:") {
            let mut delete = Command::new("iptables");
            delete.args(["-D", "BANGER-FORWARD"]);
            // The rule's words, its comment unquoted, as iptables takes them.
            for word in spec.split_whitespace() {
                delete.arg(word.trim_matches('"'));
            }
            let _ = delete.status();
        }
    }
}

/// Alternating boots of the same guest, stopped cleanly (ACPI) between
/// them on both sides: through `vm start --wait`, then by hand. Both poll
/// SSH every 200 ms, `--wait`'s interval.
fn alternate_boots(
    world: &World,
    bundle: &Path,
    spec: &banger_vmm::LaunchSpec,
    tap: &str,
    helper: &Path,
    addr: std::net::SocketAddr,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut through_banger, mut by_hand) = (Vec::new(), Vec::new());
    for _ in 0..BOOT_RUNS {
        let start = Instant::now();
        let started = world
            .command(&["vm", "start", "bench-boot", "--wait"])
            .env("BANGER_RUNTIME_DIR", bundle)
            .output()?;
        through_banger.push(start.elapsed());
        if !started.status.success() {
            bail!(
                "banger vm start --wait failed: {}",
                String::from_utf8_lossy(&started.stderr)
            );
        }
        world.run(&["vm", "stop", "bench-boot"])?;
        by_hand.push(boot_by_hand_with_tap(spec, tap, helper, addr)?);
    }
    Ok((through_banger, by_hand))
}

/// The by-hand side's QEMU launch: the same VM's disks, a copy of its
/// config drive, a TAP of the same name and MAC, the same command line.
fn by_hand_spec(
    vm: &serde_json::Value,
    bundle: &Path,
    dir: &Path,
    ip: std::net::Ipv4Addr,
    tap: &str,
) -> banger_vmm::LaunchSpec {
    let dir = dir.to_path_buf();
    let tap = tap.to_owned();
    banger_vmm::LaunchSpec {
        vm_id: vm["id"].as_str().unwrap_or_default().to_owned(),
        vm_dir: dir.clone(),
        vcpu: 2,
        memory_mib: vm["memory_mib"].as_u64().unwrap_or(2048),
        kernel: bundle.join("vmlinux"),
        initrd: Some(bundle.join("initrd.img")),
        boot_args: banger_daemon::lifecycle::BOOT_ARGS.to_owned(),
        drives: vec![
            banger_vmm::Drive {
                id: "base".into(),
                path: bundle.join("rootfs-docker.ext4"),
                read_only: true,
            },
            banger_vmm::Drive {
                id: "overlay".into(),
                path: banger_host::VmDir::new(&dir).overlay(),
                read_only: false,
            },
            banger_vmm::Drive {
                id: "work".into(),
                path: banger_host::VmDir::new(&dir).work_disk(),
                read_only: false,
            },
            banger_vmm::Drive {
                id: "config".into(),
                path: dir.join("by-hand-config.tar"),
                read_only: true,
            },
        ],
        net: Some(banger_vmm::NetSpec {
            tap: tap.clone(),
            mac: banger_host::net::guest_mac(ip),
        }),
        vsock_cid: 3,
        vsock_path: dir.join("bench-vsock.sock"),
        log_path: dir.join("by-hand.log"),
        restore: None,
        restore_as_another_vm: false,
    }
}

/// One by-hand boot with its own TAP and vsock helper, as banger makes them.
fn boot_by_hand_with_tap(
    spec: &banger_vmm::LaunchSpec,
    tap: &str,
    helper: &Path,
    addr: std::net::SocketAddr,
) -> anyhow::Result<Duration> {
    // banger's stop removed the TAP of that name: the by-hand boot
    // makes its own each time, as banger does.
    // So does its vsock helper: banger's stop cleans the VM directory.
    let run = |args: &[&str]| Command::new("ip").args(args).status();
    run(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
    run(&["link", "set", "dev", tap, "master", &bench_bridge()])?;
    run(&["link", "set", "dev", tap, "up"])?;
    let _ = std::fs::remove_file(banger_host::VmDir::new(&spec.vm_dir).vhost_vsock());
    let mut vsock = Command::new(helper)
        .args(["--guest-cid", "3", "--socket"])
        .arg(banger_host::VmDir::new(&spec.vm_dir).vhost_vsock())
        .arg("--uds-path")
        .arg(&spec.vsock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let booted = boot_by_hand(spec, addr);
    let _ = vsock.kill();
    let _ = vsock.wait();
    let _ = run(&["link", "del", "dev", tap]);
    booted
}

/// Boots `spec`'s QEMU command line by hand until `addr` sends an SSH
/// banner, then powers it off through QMP as `vm stop` does.
fn boot_by_hand(
    spec: &banger_vmm::LaunchSpec,
    addr: std::net::SocketAddr,
) -> anyhow::Result<Duration> {
    use banger_vmm::Vmm;
    let (out, err) = banger_vmm::process::log_files(&spec.log_path)?;
    let start = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(banger_vmm::qemu::Qemu::args(spec, None))
        .stdout(out)
        .stderr(err)
        .spawn()?;
    let answered = loop {
        let banner = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .ok()
            .and_then(|mut s| {
                use std::io::Read;
                s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                let mut b = [0u8; 4];
                s.read_exact(&mut b).ok().map(|()| b)
            });
        if banner == Some(*b"SSH-") {
            break Some(start.elapsed());
        }
        if let Some(status) = qemu.try_wait()? {
            bail!(
                "the by-hand QEMU exited ({status}) before answering SSH; its log is {}",
                spec.log_path.display()
            );
        }
        if start.elapsed() > Duration::from_secs(300) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let powered_off =
        banger_vmm::qemu::Qemu::new("qemu-system-x86_64".into(), "vhost-device-vsock".into())
            .request_shutdown(&spec.vm_dir, qemu.id())
            .is_ok()
            && (0..300).any(|_| {
                std::thread::sleep(Duration::from_millis(100));
                qemu.try_wait().ok().flatten().is_some()
            });
    if !powered_off {
        let _ = qemu.kill();
    }
    let _ = qemu.wait();
    answered.context("the by-hand QEMU boot did not answer SSH within 300s")
}

/// Boot to SSH of one guest on Firecracker and on QEMU, both inside the
/// same banger VM that serves as their KVM host (`scripts/e2e-firecracker.sh
/// bench` sets it up and prints `bench: <backend> <seconds>` per boot).
fn nested_rows(banger: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    const WHAT: &str = "boot to SSH inside a banger VM: firecracker (vs qemu there)";
    if std::env::var_os("BANGER_TEST_FIRECRACKER").is_none() {
        rows.push(skipped(WHAT, "BANGER_TEST_FIRECRACKER is not set"));
        return Ok(());
    }
    let script = banger
        .ancestors()
        .nth(3)
        .map(|repo| repo.join("scripts/e2e-firecracker.sh"))
        .filter(|s| s.is_file())
        .context("scripts/e2e-firecracker.sh not found beside target/release")?;
    let output = Command::new(&script)
        .arg("bench")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let boots = |backend: &str| -> Vec<Duration> {
        text.lines()
            .filter_map(|l| {
                l.strip_prefix("bench: ")?
                    .strip_prefix(backend)?
                    .trim()
                    .parse()
                    .ok()
            })
            .map(Duration::from_secs_f64)
            .collect()
    };
    let (firecracker, qemu) = (boots("firecracker"), boots("qemu"));
    if !output.status.success() || firecracker.is_empty() {
        bail!(
            "{} bench failed ({}); its output:\n{text}",
            script.display(),
            output.status
        );
    }
    match boots("qemu-timeout").first() {
        // QEMU under TCG inside the host VM's TCG may not answer at all: its
        // timeout is the bound, and the ratio at most this.
        Some(limit) if qemu.is_empty() => {
            let best = middle(firecracker.clone());
            rows.push(Row {
                what: WHAT.into(),
                value: format!("{} [{}]", ms(best), percentiles(&firecracker)),
                baseline: format!("> {} (qemu did not answer SSH)", ms(*limit)),
                ratio: format!("< {:.3}x", best.as_secs_f64() / limit.as_secs_f64()),
            });
        }
        _ if qemu.is_empty() => bail!(
            "no qemu boot in the output of {}:\n{text}",
            script.display()
        ),
        _ => rows.push(Row::spread(WHAT, &firecracker, "qemu", &qemu)),
    }
    Ok(())
}

fn skipped(what: &str, why: &str) -> Row {
    Row {
        what: what.into(),
        value: "skipped".into(),
        baseline: why.into(),
        ratio: "-".into(),
    }
}

/// Milliseconds, with a third decimal below one.
fn ms(d: Duration) -> String {
    let value = d.as_secs_f64() * 1000.0;
    if value < 1.0 {
        format!("{value:.3} ms")
    } else {
        format!("{value:.2} ms")
    }
}

fn time_command(mut command: Command) -> anyhow::Result<Duration> {
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    let status = command.status().context("running a benchmarked command")?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("benchmarked command {command:?} failed: {status}");
    }
    Ok(elapsed)
}

fn median(
    runs: usize,
    mut f: impl FnMut() -> anyhow::Result<Duration>,
) -> anyhow::Result<Duration> {
    let samples = (0..runs).map(|_| f()).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(middle(samples))
}

/// The 10th and 90th percentiles, as `p10-p90 ms`.
fn percentiles(samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at = |q: usize| sorted[(sorted.len() - 1) * q / 100];
    let digits = if at(90) < Duration::from_millis(1) {
        3
    } else {
        2
    };
    format!(
        "{:.digits$}-{:.digits$}",
        at(10).as_secs_f64() * 1000.0,
        at(90).as_secs_f64() * 1000.0
    )
}

fn middle(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn print_table(rows: &[Row]) {
    let headers = [
        "measure (median unless said)",
        "banger",
        "baseline",
        "ratio",
    ];
    let cells: Vec<[&str; 4]> = rows
        .iter()
        .map(|r| [r.what.as_str(), &r.value, &r.baseline, &r.ratio])
        .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].len())
            .chain([headers[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths = [width(0), width(1), width(2), width(3)];
    let line = |c: [&str; 4]| {
        println!(
            "{:<w0$}  {:>w1$}  {:<w2$}  {:>w3$}",
            c[0],
            c[1],
            c[2],
            c[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    };
    line(headers);
    for c in cells {
        line(c);
    }
}

/// A throwaway HOME with its own daemon, stopped on drop.
#[derive(Debug)]
struct World {
    banger: PathBuf,
    tmp: tempfile::TempDir,
    /// Where the daemon keeps its state, when not under `tmp`.
    state_home: Option<PathBuf>,
}

impl World {
    fn new(banger: PathBuf) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("banger-bench-").tempdir()?;
        std::fs::create_dir_all(tmp.path().join("run"))?;
        Ok(Self {
            banger,
            tmp,
            state_home: None,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.banger);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("XDG_RUNTIME_DIR", self.tmp.path().join("run"));
        if let Some(state_home) = &self.state_home {
            command.env("XDG_STATE_HOME", state_home);
        }
        command
    }

    fn write_config(&self, text: &str) -> anyhow::Result<()> {
        let dir = self.tmp.path().join(".config/banger");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config.toml"), text)?;
        Ok(())
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(args).output()?;
        if !out.status.success() {
            bail!(
                "banger {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stopped VM rows written straight into the store before the daemon starts.
    fn seed_vms(&self, count: u32) -> anyhow::Result<()> {
        let state = self.tmp.path().join(".local/state/banger");
        std::fs::create_dir_all(&state)?;
        let store = Store::open(&state.join("banger.db"))?;
        store.write(|w| {
            for i in 0..count {
                w.insert_vm(&VmRecord {
                    id: banger_proto::VmId::new(format!("{i:08x}{:024x}", u64::from(i) * 7919)),
                    name: banger_proto::VmName::parse(&format!("bench-vm-{i}"))
                        .expect("a valid name"),
                    state: VmState::Stopped,
                    image: "default".into(),
                    vmm: banger_proto::Backend::Firecracker,
                    vcpu: 2,
                    memory_mib: banger_proto::MemoryMib(2048),
                    disk_size_bytes: banger_proto::DiskSize(16 << 30),
                    nat: i % 2 == 0,
                    guest_ip: Some(Self::seed_ip(i)),
                    tap: None,
                    vsock_cid: Some(3 + i),
                    vsock_path: Some(state.join(format!("vms/{i}/vsock.sock"))),
                    pid: None,
                    pid_start_time: None,
                    created_at: 1_700_000_000 + i64::from(i),
                    started_at: None,
                    stopped_at: None,
                    exit_reason: Some("clean shutdown".into()),
                    last_error: None,
                    publish: Vec::new(),
                })?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn seed_ip(i: u32) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(0x0a00_0000 + 2 + i)
    }

    fn daemon_rss_kib(&self) -> anyhow::Result<u64> {
        let status: serde_json::Value =
            serde_json::from_str(&self.run(&["daemon", "status", "--json"])?)?;
        let pid = status["pid"].as_u64().context("daemon status has no pid")?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS in the daemon's /proc status")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.command(&["daemon", "stop"]).output();
    }
}
