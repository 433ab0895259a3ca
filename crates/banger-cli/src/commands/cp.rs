//! `banger vm cp SRC DST`: files and directory trees into and out of a VM,
//! one side written `NAME:/path` as with `docker cp`. A tar stream through
//! the guest agent: GNU tar at both ends keeps modes, times, ownership (as
//! root) and symlinks as links, and `--sparse` keeps holes. Nothing shows
//! at the destination name until the whole tree has arrived: it is
//! unpacked beside it and renamed into place, so an interrupted copy
//! leaves no partial file there.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context as _;
use banger_proto::agent::ExecRequest;
use indicatif::{ProgressBar, ProgressStyle};

use super::Context;
use super::exec::open as open_agent;
use crate::args::CpArgs;

/// Unpacks the stream beside the destination, then renames it into place.
/// `$1` is the copied entry's name, `$2` the destination.
const UNPACK_IN_GUEST: &str = r#"
name=$1 dst=$2
if [ -d "$dst" ] && [ ! -L "$dst" ]; then target=$dst/$name; else target=$dst; fi
parent=$(dirname -- "$target")
[ -d "$parent" ] || { echo "banger: $parent: no such directory in the guest" >&2; exit 2; }
if [ -d "$target" ] && [ ! -L "$target" ] && [ -n "$(ls -A -- "$target")" ]; then
    echo "banger: $target is a directory that is not empty: copy into it (give $target as the destination)" >&2
    exit 2
fi
tmp=$(mktemp -d -- "$parent/.banger-cp.XXXXXX") || exit 1
trap 'rm -rf -- "$tmp"' EXIT
trap 'exit 1' HUP INT TERM
tar -x --sparse --same-owner -p -C "$tmp" -f - || exit 1
[ -e "$tmp/$name" ] || [ -L "$tmp/$name" ] || { echo "banger: the copy arrived incomplete" >&2; exit 1; }
mv -T -- "$tmp/$name" "$target"
"#;

/// Sends `$1` as a tar stream on stdout.
const PACK_IN_GUEST: &str = r#"
src=$1
[ -e "$src" ] || [ -L "$src" ] || { echo "banger: $src: no such file or directory in the guest" >&2; exit 2; }
exec tar -c --sparse -C "$(dirname -- "$src")" -f - -- "$(basename -- "$src")"
"#;

/// One side of a copy.
#[derive(Debug, PartialEq)]
enum Side {
    Local(PathBuf),
    Vm { vm: String, path: String },
}

/// `NAME:PATH` names a VM's path when NAME could be a VM name or ID
/// prefix; anything else (`./a:b`, `/x`) is a local path.
fn side(text: &str) -> Side {
    match text.split_once(':') {
        Some((vm, path))
            if !vm.is_empty()
                && !path.is_empty()
                && vm
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
        {
            Side::Vm {
                vm: vm.to_owned(),
                path: path.to_owned(),
            }
        }
        _ => Side::Local(PathBuf::from(text)),
    }
}

pub fn run(args: CpArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    match (side(&args.src), side(&args.dst)) {
        (Side::Local(src), Side::Vm { vm, path }) => push(ctx, &src, &vm, &path)?,
        (Side::Vm { vm, path }, Side::Local(dst)) => pull(ctx, &vm, &path, &dst)?,
        (Side::Vm { .. }, Side::Vm { .. }) => anyhow::bail!(
            "both {} and {} name a VM: copy from one to the host, then to the other",
            args.src,
            args.dst
        ),
        (Side::Local(_), Side::Local(_)) => anyhow::bail!(
            "neither {} nor {} names a VM: write the VM's side as NAME:/path",
            args.src,
            args.dst
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn shell(script: &str, args: &[&str]) -> ExecRequest {
    let mut argv = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        "banger-cp".to_owned(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    ExecRequest {
        argv,
        ..ExecRequest::default()
    }
}

/// The entry name a copy of `path` gets.
fn entry_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| {
            format!(
                "{}: name a file or directory, not a root or `..`",
                path.display()
            )
        })
}

fn progress(total: u64, what: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_message(what.to_owned());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} {bytes}/{total_bytes} {bytes_per_sec} {elapsed_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Host to guest.
fn push(ctx: &Context, src: &Path, vm: &str, dst: &str) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(src)
        .with_context(|| format!("{}: cannot copy it", src.display()))?;
    let name = entry_name(src)?;
    let parent = src
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let total = if meta.is_dir() {
        tree_size(src)
    } else {
        meta.len()
    };
    let mut tar = Command::new("tar")
        .args(["-c", "--sparse", "-f", "-", "-C"])
        .arg(parent)
        .arg("--")
        .arg(&name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("running tar (install GNU tar)")?;
    let stream = tar.stdout.take().context("tar's output")?;
    let session = open_agent(ctx, vm, &shell(UNPACK_IN_GUEST, &[&name, dst]))?;
    let bar = progress(total, &format!("{} → {vm}:{dst}", src.display()));
    session.feed(Counted {
        inner: stream,
        bar: bar.clone(),
    });
    let status = session.relay(&mut std::io::sink(), &mut std::io::stderr(), &mut |_| {});
    let local = tar.wait();
    bar.finish_and_clear();
    let status = status?;
    anyhow::ensure!(
        local.is_ok_and(|s| s.success()),
        "tar could not read all of {} (see above); nothing was changed in {vm}",
        src.display()
    );
    anyhow::ensure!(
        status.shell_code() == 0,
        "copying {} to {vm}:{dst} failed (see above); nothing was changed there",
        src.display()
    );
    Ok(())
}

/// Guest to host.
fn pull(ctx: &Context, vm: &str, src: &str, dst: &Path) -> anyhow::Result<()> {
    let name = entry_name(Path::new(src))?;
    let target = if dst.is_dir() && !dst.is_symlink() {
        dst.join(&name)
    } else {
        dst.to_path_buf()
    };
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    anyhow::ensure!(
        parent.is_dir(),
        "{}: no such directory here",
        parent.display()
    );
    anyhow::ensure!(
        !(target.is_dir() && !target.is_symlink() && std::fs::read_dir(&target)?.next().is_some()),
        "{} is a directory that is not empty: copy into it (give {} as the destination)",
        target.display(),
        target.display()
    );
    let total = guest_size(ctx, vm, src).unwrap_or(0);
    let staging = Staging::create(&parent)?;
    let mut tar = Command::new("tar")
        .args(["-x", "--sparse", "-p", "-f", "-", "-C"])
        .arg(&staging.dir)
        .stdin(Stdio::piped())
        .spawn()
        .context("running tar (install GNU tar)")?;
    let mut input = tar.stdin.take().context("tar's input")?;
    let session = open_agent(ctx, vm, &shell(PACK_IN_GUEST, &[src]))?;
    session.feed(std::io::empty());
    let bar = progress(total, &format!("{vm}:{src} → {}", target.display()));
    let status = session.relay(&mut input, &mut std::io::stderr(), &mut |n| bar.inc(n));
    drop(input);
    let local = tar.wait();
    bar.finish_and_clear();
    let status = status?;
    anyhow::ensure!(
        status.shell_code() == 0,
        "copying {vm}:{src} failed (see above); nothing was changed here"
    );
    anyhow::ensure!(
        local.is_ok_and(|s| s.success()),
        "tar could not write the copy under {} (see above; is the disk full?); nothing was changed there",
        parent.display()
    );
    let arrived = staging.dir.join(&name);
    std::fs::rename(&arrived, &target)
        .with_context(|| format!("moving the copy into place at {}", target.display()))?;
    Ok(())
}

/// The apparent size of a guest path, for the progress bar.
fn guest_size(ctx: &Context, vm: &str, path: &str) -> Option<u64> {
    let session = open_agent(
        ctx,
        vm,
        &ExecRequest {
            argv: vec![
                "du".into(),
                "-s".into(),
                "-b".into(),
                "--".into(),
                path.into(),
            ],
            ..ExecRequest::default()
        },
    )
    .ok()?;
    session.feed(std::io::empty());
    let mut out = Vec::new();
    session
        .relay(&mut out, &mut std::io::sink(), &mut |_| {})
        .ok()?;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Apparent bytes of every file under `path`.
fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// A directory beside the destination that the copy is unpacked into;
/// removed on drop and on Ctrl-C, so no half copy stays behind.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(parent: &Path) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = parent.join(format!(".banger-cp.{}.{nanos}", std::process::id()));
        std::fs::create_dir(&dir)
            .with_context(|| format!("making a staging directory in {}", parent.display()))?;
        let for_signals = dir.clone();
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            std::thread::spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    let _ = std::fs::remove_dir_all(&for_signals);
                    std::process::exit(128 + signal);
                }
            });
        }
        Ok(Self { dir })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A reader that advances a progress bar.
struct Counted<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_sides_are_name_colon_path() {
        assert_eq!(
            side("calm-otter:/root/x"),
            Side::Vm {
                vm: "calm-otter".into(),
                path: "/root/x".into()
            }
        );
        assert_eq!(side("./a:b"), Side::Local("./a:b".into()));
        assert_eq!(side("/tmp/x"), Side::Local("/tmp/x".into()));
        assert_eq!(side("Web:/x"), Side::Local("Web:/x".into()));
        assert_eq!(side("web:"), Side::Local("web:".into()));
    }

    #[test]
    fn tree_size_counts_files_below() {
        let tmp = std::env::temp_dir().join(format!("banger-cp-test-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("a/b")).unwrap();
        std::fs::write(tmp.join("a/one"), [0u8; 100]).unwrap();
        std::fs::write(tmp.join("a/b/two"), [0u8; 23]).unwrap();
        assert_eq!(tree_size(&tmp.join("a")), 123);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
