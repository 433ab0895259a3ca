//! Everything `image build` downloads that is not a Debian package, held in
//! this one place: each source's version, its upstream address and the
//! SHA-256 it must have. `image_sources` in config.toml points a source at
//! a mirror URL or a local file instead; the pin still applies unless the
//! entry gives its own (`{ place = "...", sha256 = "..." }`, for a mirror
//! that holds another version).
//!
//! A pin is the SHA-256 of the source's tar stream: of the file when it is
//! a plain tar, of its content when gzip-compressed. Compressors differ in
//! their bytes (GitHub's archive tarballs are made on demand), the tar
//! inside does not, so a mirror may recompress and still match.
//!
//! The tmux plugin pins were computed from `git archive --prefix=NAME-VERSION/
//! TAG` of the tagged commits (GitHub's archives are that command's output);
//! the npm pins from the registry's tarballs.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::process::{Cmd, ProcessError, Runner};

/// One pinned download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The `image_sources` key.
    pub key: &'static str,
    pub version: &'static str,
    pub url: &'static str,
    pub tar_sha256: &'static str,
}

pub const MISE: Source = Source {
    key: "mise",
    version: "2026.9.15",
    // mise's own npm package for linux-x64: its binary at package/bin/mise.
    url: "https://registry.npmjs.org/@jdxcode/mise-linux-x64/-/mise-linux-x64-2026.9.15.tgz",
    tar_sha256: "1fe763f1a817fc7fc04de200333ce25905d8133375cf57119a8aaf4249e5f231",
};

pub const OPENCODE: Source = Source {
    key: "opencode",
    version: "1.18.34",
    // opencode's npm package for linux-x64: its binary at package/bin/opencode.
    url: "https://registry.npmjs.org/opencode-linux-x64/-/opencode-linux-x64-1.18.34.tgz",
    tar_sha256: "6721513fe41016ab9cbc6d4bdf742cba059d97d7efa10a45dad0c5d6f00fdd1e",
};

pub const TMUX_RESURRECT: Source = Source {
    key: "tmux_resurrect",
    version: "4.0.0",
    url: "https://github.com/tmux-plugins/tmux-resurrect/archive/refs/tags/v4.0.0.tar.gz",
    tar_sha256: "b8cd5612b5ab0208ede089efffc02ac0282decd147fdfd051e1d862f212a0c18",
};

pub const TMUX_CONTINUUM: Source = Source {
    key: "tmux_continuum",
    version: "3.1.0",
    url: "https://github.com/tmux-plugins/tmux-continuum/archive/refs/tags/v3.1.0.tar.gz",
    tar_sha256: "358bf8c3b281669e90c5a40f9750aac5a9dc721eebd6713ae3ea7831e6c929d7",
};

pub const ALL: [Source; 4] = [MISE, OPENCODE, TMUX_RESURRECT, TMUX_CONTINUUM];

#[derive(Debug, Error)]
pub enum SourceError {
    #[error(
        "{key} {version} is downloaded from {url}, which this host cannot reach ({detail}): set image_sources.{key} in config.toml to a mirror URL or a local file"
    )]
    Unreachable {
        key: &'static str,
        version: &'static str,
        url: String,
        detail: String,
    },
    #[error("downloading {key} {version} from {url}")]
    Download {
        key: &'static str,
        version: &'static str,
        url: String,
        #[source]
        source: Box<ProcessError>,
    },
    #[error("reading {key} {version} from {path}")]
    Read {
        key: &'static str,
        version: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checksum mismatch for {key} {version} from {place}: expected sha256 {expected}, found {found}; the file is not used"
    )]
    Mismatch {
        key: &'static str,
        version: &'static str,
        place: String,
        expected: String,
        found: String,
    },
}

/// The SHA-256 of the tar stream in `path`, gunzipped when it is gzip.
pub fn tar_sha256(path: &Path) -> std::io::Result<String> {
    unpack(path, &mut std::io::sink())
}

/// Copies the tar stream in `path` (gunzipped when it is gzip) to `to`,
/// returning its SHA-256.
fn unpack(path: &Path, to: &mut dyn std::io::Write) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let gzip = file.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Brings `source` into `cache` (from `place`, its upstream when `None`)
/// and checks it against `pin` (the source's own when `None`); a verified
/// copy already there is used as it is. Returns the verified plain tar.
pub fn fetch(
    source: &Source,
    place: Option<&str>,
    pin: Option<&str>,
    cache: &Path,
    runner: &dyn Runner,
) -> Result<PathBuf, SourceError> {
    let pin = pin.unwrap_or(source.tar_sha256);
    let read_error = |path: &Path, e| SourceError::Read {
        key: source.key,
        version: source.version,
        path: path.to_owned(),
        source: e,
    };
    std::fs::create_dir_all(cache).map_err(|e| read_error(cache, e))?;
    let verified = cache.join(format!("{}-{pin}.tar", source.key));
    if tar_sha256(&verified).is_ok_and(|sum| sum == pin) {
        return Ok(verified);
    }
    let place = place.unwrap_or(source.url);
    let partial = cache.join(format!(".{}-{}.partial", source.key, std::process::id()));
    let _ = std::fs::remove_file(&partial);
    let fetched = if place.contains("://") && !place.starts_with("file://") {
        download(source, place, &partial, runner)
    } else {
        let path = Path::new(place.strip_prefix("file://").unwrap_or(place));
        std::fs::copy(path, &partial)
            .map(drop)
            .map_err(|e| read_error(path, e))
    };
    let plain = partial.with_extension("tar");
    let checked = fetched.and_then(|()| {
        let found = std::fs::File::create(&plain)
            .and_then(|mut out| unpack(&partial, &mut out))
            .map_err(|e| read_error(&partial, e))?;
        if found == pin {
            Ok(())
        } else {
            Err(SourceError::Mismatch {
                key: source.key,
                version: source.version,
                place: place.to_owned(),
                expected: pin.to_owned(),
                found,
            })
        }
    });
    let kept = checked
        .and_then(|()| std::fs::rename(&plain, &verified).map_err(|e| read_error(&verified, e)));
    let _ = std::fs::remove_file(&partial);
    if kept.is_err() {
        let _ = std::fs::remove_file(&plain);
    }
    kept.map(|()| verified)
}

fn download(source: &Source, url: &str, to: &Path, runner: &dyn Runner) -> Result<(), SourceError> {
    let cmd = Cmd::new("curl")
        .args(["--fail", "--silent", "--show-error", "--location"])
        .args(["--connect-timeout", "20", "--retry", "2", "--output"])
        .arg(to.to_string_lossy())
        .arg(url);
    let out = runner.output(&cmd).map_err(|e| SourceError::Download {
        key: source.key,
        version: source.version,
        url: url.to_owned(),
        source: Box::new(e),
    })?;
    match out.code {
        Some(0) => Ok(()),
        // curl: 5/6 cannot resolve, 7 cannot connect, 28 timed out, 35 TLS
        // handshake failed (a proxy or firewall in the way).
        Some(5 | 6 | 7 | 28 | 35) => Err(SourceError::Unreachable {
            key: source.key,
            version: source.version,
            url: url.to_owned(),
            detail: out.stderr.trim().trim_start_matches("curl: ").to_owned(),
        }),
        _ => Err(SourceError::Download {
            key: source.key,
            version: source.version,
            url: url.to_owned(),
            source: Box::new(ProcessError::failed(&cmd, out)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::HostRunner;

    /// A tar holding one file, and the same gzipped, made by the system's tools.
    fn tarballs(dir: &Path) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir.join("pkg/bin")).unwrap();
        std::fs::write(dir.join("pkg/bin/tool"), "#!/bin/sh\necho tool 1.0\n").unwrap();
        let tar = dir.join("tool.tar");
        let status = std::process::Command::new("tar")
            .args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(dir)
            .arg("pkg")
            .status()
            .unwrap();
        assert!(status.success());
        let gz = dir.join("tool.tar.gz");
        let out = std::process::Command::new("gzip")
            .args(["-9", "-c"])
            .arg(&tar)
            .output()
            .unwrap();
        std::fs::write(&gz, out.stdout).unwrap();
        (tar, gz)
    }

    fn pinned(sum: &str) -> Source {
        Source {
            key: "tool",
            version: "1.0",
            url: "https://unreachable.invalid/tool.tgz",
            tar_sha256: Box::leak(sum.to_owned().into_boxed_str()),
        }
    }

    #[test]
    fn a_pin_holds_for_the_tar_compressed_or_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (tar, gz) = tarballs(tmp.path());
        let sum = tar_sha256(&tar).unwrap();
        assert_eq!(tar_sha256(&gz).unwrap(), sum);
        let source = pinned(&sum);
        let cache = tmp.path().join("cache");
        let got = fetch(
            &source,
            Some(gz.to_str().unwrap()),
            None,
            &cache,
            &HostRunner,
        )
        .unwrap();
        assert_eq!(tar_sha256(&got).unwrap(), sum);
        // Cached: the source's place is not read again.
        std::fs::remove_file(&gz).unwrap();
        assert_eq!(
            fetch(
                &source,
                Some(gz.to_str().unwrap()),
                None,
                &cache,
                &HostRunner
            )
            .unwrap(),
            got
        );
    }

    #[test]
    fn a_mismatch_names_the_file_and_both_hashes_and_keeps_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (_, gz) = tarballs(tmp.path());
        let found = tar_sha256(&gz).unwrap();
        let source = pinned(&"0".repeat(64));
        let cache = tmp.path().join("cache");
        let err = fetch(
            &source,
            Some(gz.to_str().unwrap()),
            None,
            &cache,
            &HostRunner,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!(
                "checksum mismatch for tool 1.0 from {}",
                gz.display()
            )) && err.contains(&format!("expected sha256 {}", "0".repeat(64)))
                && err.contains(&format!("found {found}")),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(&cache).unwrap().count(),
            0,
            "no file kept"
        );
    }

    #[test]
    fn an_unreachable_upstream_says_so_and_how_to_point_elsewhere() {
        let tmp = tempfile::tempdir().unwrap();
        let source = pinned(&"0".repeat(64));
        let err = fetch(&source, None, None, tmp.path(), &HostRunner)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("https://unreachable.invalid/tool.tgz, which this host cannot reach")
                && err.contains("set image_sources.tool in config.toml"),
            "{err}"
        );
    }

    #[test]
    fn every_pin_is_a_sha256_and_every_key_distinct() {
        let mut keys = std::collections::HashSet::new();
        for source in ALL {
            assert!(keys.insert(source.key));
            assert_eq!(source.tar_sha256.len(), 64);
            assert!(source.tar_sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(source.url.starts_with("https://") && source.url.contains(source.version));
        }
    }
}
