//! Text and JSON rendering of what the daemon returns.

use std::io::Write;

use banger_proto::validate::format_size;
use banger_proto::{BatchResult, Image, Vm, VmStats, VmSummary};
use serde::Serialize;

/// Pretty for a terminal, one compact line for pipes (as `gh` does).
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let mut out = std::io::stdout().lock();
    if out.is_terminal() {
        serde_json::to_writer_pretty(&mut out, value)?;
    } else {
        serde_json::to_writer(&mut out, value)?;
    }
    writeln!(out)?;
    Ok(())
}

/// The daemon's JSON as it came, or pretty-printed for a terminal.
pub fn print_raw_json(raw: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        return print_json(&serde_json::from_str::<serde_json::Value>(raw)?);
    }
    let mut out = std::io::stdout().lock();
    out.write_all(raw.as_bytes())?;
    writeln!(out)?;
    Ok(())
}

/// A method's result as the daemon wrote it, streamed to a pipe, or
/// pretty-printed for a terminal.
pub fn print_raw_json_of<M: banger_proto::Method>(
    client: &mut crate::client::Client,
    params: M::Params,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        return print_raw_json(&client.call_raw::<M>(params)?);
    }
    let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
    client.call_raw_to::<M>(params, &mut out)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Left-aligned columns separated by two spaces, like `docker ps`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut parts = Vec::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                parts.push(cell.to_string());
            } else {
                parts.push(format!("{cell:<width$}", width = widths[i]));
            }
        }
        text.push_str(parts.join("  ").trim_end());
        text.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    text
}

/// `45s`, `12m`, `3h`, `4d`: how long ago `unix_secs` was.
/// A size as people read it, rounded: `329M`, `1.4G`, `512K`.
pub fn approx_size(bytes: u64) -> String {
    let units = [(40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in units {
        let scale = (1u64 << shift) as f64;
        let value = bytes as f64 / scale;
        if value >= 1.0 {
            return if value < 10.0 {
                format!("{value:.1}{unit}")
            } else {
                format!("{value:.0}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

pub fn age(unix_secs: i64, now: i64) -> String {
    let secs = (now - unix_secs).max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

/// `2026-11-28 10:25:31 UTC`, from Unix seconds.
pub fn timestamp(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A timestamp with how long ago it was.
pub fn when(unix_secs: i64, now: i64) -> String {
    format!("{} ({} ago)", timestamp(unix_secs), age(unix_secs, now))
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub fn vm_table(vms: &[VmSummary], now: i64) -> String {
    if vms.is_empty() {
        return "No VMs. Create one with `banger vm create`.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            vec![
                vm.name.to_string(),
                vm.id.short().to_owned(),
                vm.state.to_string(),
                vm.image.clone(),
                vm.vcpu.to_string(),
                vm.memory_mib.to_string(),
                vm.guest_ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
                if vm.nat { "yes" } else { "no" }.to_owned(),
                age(vm.created_at, now),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "ID", "STATE", "IMAGE", "VCPU", "MEMORY", "IP", "NAT", "AGE",
        ],
        &rows,
    )
}

pub fn vm_details(vm: &Vm, now: i64) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let path = |p: &std::path::Path| p.display().to_string();
    let fields: Vec<(&str, String)> = vec![
        ("name", vm.name.to_string()),
        ("id", vm.id.to_string()),
        ("state", vm.state.to_string()),
        ("image", vm.image.clone()),
        ("vmm", vm.vmm.to_string()),
        ("vcpu", vm.vcpu.to_string()),
        ("memory", format!("{} MiB", vm.memory_mib.0)),
        ("disk size", vm.disk_size_bytes.to_string()),
        ("nat", vm.nat.to_string()),
        ("publish", published(&vm.publish)),
        ("guest ip", opt(vm.guest_ip.map(|ip| ip.to_string()))),
        ("tap", opt(vm.tap.clone())),
        ("vsock cid", opt(vm.vsock_cid.map(|c| c.to_string()))),
        ("vsock path", opt(vm.vsock_path.as_deref().map(path))),
        ("pid", opt(vm.pid.map(|p| p.to_string()))),
        ("created", when(vm.created_at, now)),
        ("started", opt(vm.started_at.map(|t| when(t, now)))),
        ("stopped", opt(vm.stopped_at.map(|t| when(t, now)))),
        ("exit reason", opt(vm.exit_reason.clone())),
        ("last error", opt(vm.last_error.clone())),
        ("dir", path(&vm.dir)),
        ("overlay", path(&vm.overlay_path)),
        ("work disk", path(&vm.work_disk_path)),
        ("vmm log", path(&vm.vmm_log_path)),
    ];
    fields
        .iter()
        .map(|(k, v)| format!("{:<12} {v}\n", format!("{k}:")))
        .collect()
}

/// Published ports as `vm show` and the TUI print them:
/// `127.0.0.1:8080 -> 80, 0.0.0.0:2222 -> 22`, or `-`.
pub fn published(ports: &[banger_proto::PortMapping]) -> String {
    if ports.is_empty() {
        return "-".into();
    }
    ports
        .iter()
        .map(|p| format!("{} -> {}", p.host, p.guest_port))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn image_table(images: &[Image]) -> String {
    if images.is_empty() {
        return "No images. Run `make runtime` or `banger image build`.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                if i.docker { "yes" } else { "no" }.to_owned(),
                if i.managed { "built" } else { "bundle" }.to_owned(),
                i.rootfs.display().to_string(),
            ]
        })
        .collect();
    table(&["NAME", "DOCKER", "SOURCE", "ROOTFS"], &rows)
}

pub fn vm_stats(stats: &VmStats) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let disk = |d: &banger_proto::DiskUsage| {
        format!(
            "{} allocated of {}",
            format_size(d.allocated_bytes),
            format_size(d.apparent_bytes)
        )
    };
    let fields: Vec<(&str, String)> = vec![
        ("vm", format!("{} ({})", stats.vm, stats.id.short())),
        ("state", stats.state.to_string()),
        ("pid", opt(stats.pid.map(|p| p.to_string()))),
        ("cpu", opt(stats.cpu_seconds.map(|c| format!("{c:.2}s")))),
        ("rss", opt(stats.rss_bytes.map(format_size))),
        ("uptime", opt(stats.uptime_secs.map(duration))),
        ("overlay", disk(&stats.overlay)),
        ("work disk", disk(&stats.work_disk)),
    ];
    fields
        .iter()
        .map(|(k, v)| format!("{:<10} {v}\n", format!("{k}:")))
        .collect()
}

/// `pass  name  detail`, with the fix under each warn and fail, then a count.
pub fn checks(checks: &[banger_proto::check::Check]) -> String {
    use banger_proto::check::CheckStatus;
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut text = String::new();
    for check in checks {
        text.push_str(&format!(
            "{}  {:<width$}  {}\n",
            check.status.as_str(),
            check.name,
            check.detail
        ));
        if let Some(fix) = check
            .fix
            .as_ref()
            .filter(|_| check.status != CheckStatus::Pass)
        {
            text.push_str(&format!("      {:<width$}  fix: {fix}\n", ""));
        }
    }
    let count = |s: CheckStatus| checks.iter().filter(|c| c.status == s).count();
    text.push_str(&format!(
        "{} passed, {} warnings, {} failed\n",
        count(CheckStatus::Pass),
        count(CheckStatus::Warn),
        count(CheckStatus::Fail)
    ));
    text
}

/// One line per VM; returns whether every item succeeded.
pub fn batch_lines(result: &BatchResult, verb: &str) -> (String, bool) {
    let mut text = String::new();
    let mut all_ok = true;
    for item in &result.items {
        match (&item.vm, &item.error) {
            (_, Some(error)) => {
                all_ok = false;
                let message = error.to_string().replace('\n', "\n    ");
                text.push_str(&format!("{}: error: {message}\n", item.vm_ref));
            }
            (Some(vm), None) if verb == "deleted" => {
                text.push_str(&format!("{}: deleted\n", vm.name))
            }
            (Some(vm), None) => {
                let reason = match (&vm.state, &vm.exit_reason) {
                    (banger_proto::VmState::Stopped, Some(reason)) => format!(", {reason}"),
                    _ => String::new(),
                };
                text.push_str(&format!("{}: {verb}, now {}{reason}\n", vm.name, vm.state));
            }
            (None, None) => text.push_str(&format!("{}: {verb}\n", item.vm_ref)),
        }
    }
    (text, all_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let text = table(&["A", "LONGER"], &[vec!["wide-cell".into(), "x".into()]]);
        assert_eq!(text, "A          LONGER\nwide-cell  x\n");
    }

    #[test]
    fn approximate_sizes_round_to_a_readable_unit() {
        assert_eq!(approx_size(345_243_648), "329M");
        assert_eq!(approx_size(3 << 30), "3.0G");
        assert_eq!(approx_size(1500), "1.5K");
        assert_eq!(approx_size(12), "12B");
    }

    #[test]
    fn ages_and_durations() {
        assert_eq!(age(100, 145), "45s");
        assert_eq!(age(0, 7200), "2h");
        assert_eq!(age(0, 86_400 * 3), "3d");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(125), "2m05s");
        assert_eq!(duration(3 * 3600 + 60), "3h01m");
    }

    #[test]
    fn timestamps_are_utc_calendar_times() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(1_795_861_531), "2026-11-28 10:25:31 UTC");
        assert_eq!(timestamp(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(when(100, 160), "1970-01-01 00:01:40 UTC (1m ago)");
    }
}
