//! `make runtime-package` and `make runtime-bundle` (scripts/runtime/
//! package.sh and bootstrap.sh): package then bootstrap gives the same
//! tree from every URL form; a bad checksum or a broken archive changes
//! nothing.

// An integration test crate is compiled only for tests; there is no module to wrap.
#![allow(clippy::tests_outside_test_module)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/runtime")
        .join(name)
}

fn tools_present() -> bool {
    let missing = banger_testkit::missing_tool(&["tar", "python3", "curl", "sha256sum"]);
    banger_testkit::require(
        missing.is_none(),
        "bundle script tests",
        &format!(
            "{} is missing (make deps installs tar, python3, curl and sha256sum)",
            missing.unwrap_or_default()
        ),
    )
}

/// A small bundle: a manifest, a file, a nested file and a sparse image.
fn fake_bundle(dir: &Path) {
    std::fs::create_dir_all(dir.join("modules/6.1.0")).unwrap();
    std::fs::write(dir.join("bundle.json"), "{\"schema\": 1}\n").unwrap();
    std::fs::write(dir.join("vmlinux"), vec![7u8; 100_000]).unwrap();
    std::fs::write(dir.join("modules/6.1.0/modules.dep"), "kernel/x.ko:\n").unwrap();
    let image = std::fs::File::create(dir.join("rootfs.ext4")).unwrap();
    image.set_len(64 << 20).unwrap();
}

/// Relative path to contents and length, for comparing trees.
fn tree(dir: &Path) -> BTreeMap<String, (u64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            if path.is_dir() {
                pending.push(path);
                out.insert(rel, (0, Vec::new()));
            } else {
                let len = std::fs::metadata(&path).unwrap().len();
                let mut head = Vec::new();
                std::fs::File::open(&path)
                    .unwrap()
                    .take(4096)
                    .read_to_end(&mut head)
                    .unwrap();
                out.insert(rel, (len, head));
            }
        }
    }
    out
}

/// Runs a script that must succeed; its stderr is the failure message.
fn succeed(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn package(runtime: &Path, archive: &Path) -> String {
    let out = succeed(Command::new(script("package.sh")).arg(runtime).arg(archive));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn bootstrap(manifest: &Path, out_dir: &Path) -> Output {
    Command::new(script("bootstrap.sh"))
        .arg(manifest)
        .arg(out_dir)
        .output()
        .unwrap()
}

fn manifest(dir: &Path, url: &str, sha256: &str) -> PathBuf {
    let path = dir.join("runtime-bundle.local.toml");
    std::fs::write(
        &path,
        format!("url = \"{url}\"\nsha256 = \"{sha256}\"\n\n[bundle_metadata]\nschema = 1\n"),
    )
    .unwrap();
    path
}

/// Serves `body` once over HTTP on a free loopback port.
fn serve_once(body: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/banger-runtime.tar.gz",
        listener.local_addr().unwrap()
    );
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request).unwrap();
        write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(&body).unwrap();
    });
    (url, server)
}

#[test]
fn package_then_bootstrap_gives_the_same_tree_from_every_url_form() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tmp.path().join("runtime");
    fake_bundle(&runtime);
    let archive = tmp.path().join("dist/banger-runtime.tar.gz");
    let sha = package(&runtime, &archive);
    assert_eq!(sha.len(), 64);
    let (http_url, server) = serve_once(std::fs::read(&archive).unwrap());
    for (form, url) in [
        ("relative", "./dist/banger-runtime.tar.gz".to_owned()),
        ("absolute", archive.display().to_string()),
        ("file URL", format!("file://{}", archive.display())),
        ("HTTP URL", http_url),
    ] {
        let target = tmp
            .path()
            .join(format!("checkout-{}", form.replace(' ', "-")));
        let out = bootstrap(&manifest(tmp.path(), &url, &sha), &target);
        assert!(
            out.status.success(),
            "{form}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(tree(&target), tree(&runtime), "{form}: identical tree");
        let image = std::fs::metadata(target.join("rootfs.ext4")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(
            image.blocks() * 512 < 1 << 20,
            "{form}: the image stays sparse"
        );
    }
    server.join().unwrap();
}

/// A packaged bundle and an older one already installed at `existing`.
struct Installed {
    tmp: tempfile::TempDir,
    runtime: PathBuf,
    archive: PathBuf,
    sha: String,
    existing: PathBuf,
}

impl Installed {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let runtime = tmp.path().join("runtime");
        fake_bundle(&runtime);
        let archive = tmp.path().join("banger-runtime.tar.gz");
        let sha = package(&runtime, &archive);
        let existing = tmp.path().join("existing");
        std::fs::create_dir_all(&existing).unwrap();
        std::fs::write(existing.join("bundle.json"), "old").unwrap();
        Self {
            tmp,
            runtime,
            archive,
            sha,
            existing,
        }
    }
}

#[test]
fn a_bad_checksum_or_archive_changes_nothing() {
    if !tools_present() {
        return;
    }
    let Installed {
        tmp,
        runtime: _,
        archive,
        sha,
        existing,
    } = Installed::new();
    let before = tree(&existing);

    let wrong = "0".repeat(64);
    let out = bootstrap(
        &manifest(tmp.path(), &archive.display().to_string(), &wrong),
        &existing,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("checksum mismatch")
            && err.contains(&sha)
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(tree(&existing), before);

    // A truncated archive (its own checksum, so only extraction can fail).
    let bytes = std::fs::read(&archive).unwrap();
    let truncated = tmp.path().join("truncated.tar.gz");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let truncated_sha = package_sha(&truncated);
    let out = bootstrap(
        &manifest(tmp.path(), &truncated.display().to_string(), &truncated_sha),
        &existing,
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a complete tar.gz"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tree(&existing),
        before,
        "an interrupted extraction leaves the old bundle"
    );
    let leftovers = names_starting_with(tmp.path(), "existing.new");
    assert!(
        leftovers.is_empty(),
        "no half-extracted tree is left: {leftovers:?}"
    );
}

/// Bootstrapping over an existing bundle swaps the trees in one exchange:
/// a reader polling the bundle's manifest never finds it missing.
#[test]
fn a_new_bundle_replaces_the_old_with_no_gap() {
    if !tools_present() {
        return;
    }
    let Installed {
        tmp,
        runtime,
        archive,
        sha,
        existing,
    } = Installed::new();
    std::fs::write(existing.join("stale-file"), "old").unwrap();

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (done, manifest) = (done.clone(), existing.join("bundle.json"));
        std::thread::spawn(move || {
            let (mut looks, mut missing) = (0u64, 0u64);
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                looks += 1;
                if !manifest.exists() {
                    missing += 1;
                }
            }
            (looks, missing)
        })
    };
    let out = bootstrap(
        &manifest(tmp.path(), &archive.display().to_string(), &sha),
        &existing,
    );
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (looks, missing) = watcher.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tree(&existing),
        tree(&runtime),
        "the old tree is gone whole"
    );
    assert!(looks > 0);
    assert_eq!(
        missing, 0,
        "the bundle was missing in {missing} of {looks} looks"
    );
    let leftovers = names_starting_with(tmp.path(), "existing.");
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `make build` refreshes the guest helper's manifest entry, so the
/// bundle still verifies (doctor's checksum check) after a rebuild.
#[test]
fn refreshing_one_entry_keeps_the_bundle_verified() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("modules/6.1.0")).unwrap();
    for (file, body) in [
        ("vmlinux", "kernel"),
        ("initrd.img", "initrd"),
        ("rootfs.ext4", "rootfs"),
        ("id_ed25519", "key"),
        ("banger-vsock-pingd", "helper v1"),
    ] {
        std::fs::write(dir.join(file), body).unwrap();
    }
    succeed(
        Command::new(script("write-manifest.sh"))
            .arg(dir)
            .arg("6.1.0"),
    );
    let verify = || banger_host::bundle::Bundle::load(dir).and_then(|b| b.verify());
    verify().unwrap();
    std::fs::write(dir.join("banger-vsock-pingd"), "helper v2").unwrap();
    let err = verify().unwrap_err().to_string();
    assert!(err.contains("banger-vsock-pingd"), "{err}");
    succeed(
        Command::new(script("write-manifest.sh"))
            .arg("--refresh")
            .arg(dir)
            .args(["vsock_ping_helper", "banger-vsock-pingd"]),
    );
    verify().unwrap();
}

/// The names in `dir` that start with `prefix`: what a bootstrap left.
fn names_starting_with(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

fn package_sha(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn the_template_says_what_to_fill_in() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runtime-bundle.toml");
    let out = bootstrap(&template, &tmp.path().join("runtime"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("empty url") && err.contains("runtime-package"),
        "{err}"
    );
    let out = bootstrap(
        &tmp.path().join("missing.toml"),
        &tmp.path().join("runtime"),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("runtime-bundle.local.toml"));
    assert!(!tmp.path().join("runtime").exists());
}
