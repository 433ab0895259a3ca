//! Where the runtime bundle lives: set explicitly (config or
//! `BANGER_RUNTIME_DIR`), else `../lib/banger` beside an installed binary,
//! else `./runtime` beside a source-built `./banger`.

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeDirError {
    #[error("runtime bundle directory {0} does not exist: fix runtime_dir or BANGER_RUNTIME_DIR")]
    ExplicitMissing(PathBuf),
    #[error(
        "no runtime bundle found (looked in {}): run `make runtime` in a source checkout, `make install`, or set runtime_dir / BANGER_RUNTIME_DIR",
        .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound(Vec<PathBuf>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeDirSource {
    /// `runtime_dir` in the config file or `BANGER_RUNTIME_DIR`.
    Explicit,
    /// `<prefix>/bin/banger` with the bundle in `<prefix>/lib/banger`.
    Installed,
    /// A source checkout: `./banger` with `./runtime` beside it (or cargo's
    /// `target/<profile>/banger`, two levels below the checkout).
    SourceCheckout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDir {
    pub path: PathBuf,
    pub source: RuntimeDirSource,
}

/// The candidates tried, in order, for a binary at `exe`.
pub fn candidates(exe: &Path) -> Vec<(PathBuf, RuntimeDirSource)> {
    let Some(bin_dir) = exe.parent() else {
        return Vec::new();
    };
    let mut list = vec![
        (bin_dir.join("../lib/banger"), RuntimeDirSource::Installed),
        (bin_dir.join("runtime"), RuntimeDirSource::SourceCheckout),
    ];
    if bin_dir
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == "target")
    {
        list.push((
            bin_dir.join("../../runtime"),
            RuntimeDirSource::SourceCheckout,
        ));
    }
    list
}

pub fn resolve(explicit: Option<&Path>, exe: &Path) -> Result<RuntimeDir, RuntimeDirError> {
    if let Some(path) = explicit {
        return if path.is_dir() {
            Ok(RuntimeDir {
                path: path.to_path_buf(),
                source: RuntimeDirSource::Explicit,
            })
        } else {
            Err(RuntimeDirError::ExplicitMissing(path.to_path_buf()))
        };
    }
    let list = candidates(exe);
    for (path, source) in &list {
        if path.is_dir() {
            let path = path.canonicalize().unwrap_or_else(|_| path.clone());
            return Ok(RuntimeDir {
                path,
                source: *source,
            });
        }
    }
    Err(RuntimeDirError::NotFound(
        list.into_iter().map(|(p, _)| p).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_layout() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("bin")).unwrap();
        std::fs::create_dir_all(tmp.path().join("lib/banger")).unwrap();
        let found = resolve(None, &tmp.path().join("bin/banger")).unwrap();
        assert_eq!(found.source, RuntimeDirSource::Installed);
        assert_eq!(
            found.path,
            tmp.path().join("lib/banger").canonicalize().unwrap()
        );
    }

    #[test]
    fn source_checkout_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("runtime")).unwrap();
        std::fs::create_dir_all(tmp.path().join("target/debug")).unwrap();
        let found = resolve(None, &tmp.path().join("banger")).unwrap();
        assert_eq!(found.source, RuntimeDirSource::SourceCheckout);
        assert_eq!(
            found.path,
            tmp.path().join("runtime").canonicalize().unwrap()
        );
        let found = resolve(None, &tmp.path().join("target/debug/banger")).unwrap();
        assert_eq!(
            found.path,
            tmp.path().join("runtime").canonicalize().unwrap()
        );
    }

    #[test]
    fn explicit_wins_and_must_exist() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("runtime")).unwrap();
        let exe = tmp.path().join("banger");
        let found = resolve(Some(tmp.path()), &exe).unwrap();
        assert_eq!(
            found,
            RuntimeDir {
                path: tmp.path().into(),
                source: RuntimeDirSource::Explicit
            }
        );
        let err = resolve(Some(&tmp.path().join("nope")), &exe).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn nothing_found_lists_where_it_looked() {
        let tmp = tempfile::tempdir().unwrap();
        let msg = resolve(None, &tmp.path().join("bin/banger"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("lib/banger") && msg.contains("runtime") && msg.contains("make runtime"),
            "{msg}"
        );
    }
}
