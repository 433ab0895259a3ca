//! `make bench`: banger's figures, each printed next to a baseline measured
//! in the same run, because these machines are shared and noisy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const RUNS: usize = 40;

#[derive(Debug)]
struct Row {
    what: String,
    value: String,
    baseline: String,
    ratio: String,
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
    let world = World::new(banger)?;
    let mut rows = Vec::new();

    // Process start to exit of `vm list --json`, against starting `true`.
    world.run(&["vm", "list", "--json"])?; // starts the daemon
    let baseline = median(RUNS, || time_command(Command::new("true")))?;
    let list = median(RUNS, || {
        time_command(world.command(&["vm", "list", "--json"]))
    })?;
    rows.push(Row {
        what: "vm list --json, 0 VMs (median of 40)".into(),
        value: ms(list),
        baseline: format!("{} (spawn `true`)", ms(baseline)),
        ratio: format!("{:.1}x", list.as_secs_f64() / baseline.as_secs_f64()),
    });

    // The daemon's resident memory after the requests above, idle.
    std::thread::sleep(Duration::from_millis(300));
    let rss = world.daemon_rss_kib()?;
    rows.push(Row {
        what: "bangerd idle RSS".into(),
        value: format!("{:.1} MiB", rss as f64 / 1024.0),
        baseline: "-".into(),
        ratio: "-".into(),
    });

    print_table(&rows);
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
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
    let mut samples = (0..runs).map(|_| f()).collect::<anyhow::Result<Vec<_>>>()?;
    samples.sort();
    Ok(samples[samples.len() / 2])
}

fn print_table(rows: &[Row]) {
    let headers = ["measure", "banger", "baseline", "ratio"];
    let cells: Vec<[&str; 4]> = rows
        .iter()
        .map(|r| [r.what.as_str(), &r.value, &r.baseline, &r.ratio])
        .collect();
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |c: [&str; 4]| {
        println!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}",
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
}

impl World {
    fn new(banger: PathBuf) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix("banger-bench-").tempdir()?;
        std::fs::create_dir_all(tmp.path().join("run"))?;
        Ok(Self { banger, tmp })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.banger);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.tmp.path())
            .env("XDG_RUNTIME_DIR", self.tmp.path().join("run"));
        command
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
