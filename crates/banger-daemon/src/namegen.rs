//! Names for VMs created without `--name`: adjective-noun (`calm-otter`),
//! unique among existing VMs. `namegen_path` overrides the built-in lists
//! with an executable (its first output line is the name) or a word list
//! (one candidate name per line).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::seq::IndexedRandom;
use thiserror::Error;

const ADJECTIVES: &[&str] = &[
    "amber", "bold", "brave", "brisk", "calm", "clever", "cosy", "crisp", "dapper", "eager",
    "fancy", "fleet", "gentle", "glad", "grand", "happy", "hardy", "jolly", "keen", "kind",
    "lively", "lucky", "merry", "mellow", "nimble", "noble", "plucky", "polite", "proud", "quick",
    "quiet", "rapid", "shiny", "snug", "spry", "steady", "sunny", "swift", "tidy", "trusty",
    "vivid", "warm", "wise", "witty", "zesty",
];

const NOUNS: &[&str] = &[
    "otter", "badger", "beaver", "bison", "crane", "dingo", "eagle", "falcon", "ferret", "finch",
    "gecko", "heron", "ibis", "jackal", "koala", "lemur", "lynx", "marten", "moose", "newt",
    "ocelot", "osprey", "panda", "puffin", "quail", "raven", "robin", "salmon", "seal", "sparrow",
    "stoat", "swan", "tapir", "tern", "toucan", "trout", "turtle", "viper", "walrus", "wombat",
    "wren", "yak", "zebra",
];

/// Random picks before falling back to a numbered suffix.
const ATTEMPTS: usize = 64;

#[derive(Debug, Error)]
pub enum NamegenError {
    #[error("running namegen_path {0}")]
    Run(PathBuf, #[source] std::io::Error),
    #[error("namegen_path {path} exited with {status}: fix the program or unset namegen_path")]
    Failed {
        path: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("reading namegen_path word list {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("namegen_path {path} produced {name:?}, which is not a valid VM name: {reason}")]
    Invalid {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error("namegen_path {0} gave no unused name: add names to it, or pass --name")]
    Exhausted(PathBuf),
}

/// Picks a name not in `taken` from `namegen_path` or the built-in lists.
pub fn generate(
    namegen_path: Option<&Path>,
    taken: &dyn Fn(&str) -> bool,
) -> Result<String, NamegenError> {
    match namegen_path {
        None => Ok(builtin(taken)),
        Some(path) if is_executable(path) => from_program(path, taken),
        Some(path) => from_word_list(path, taken),
    }
}

fn builtin(taken: &dyn Fn(&str) -> bool) -> String {
    let mut rng = rand::rng();
    let pick = |rng: &mut rand::rngs::ThreadRng| {
        let adjective = ADJECTIVES.choose(rng).expect("lists are not empty");
        let noun = NOUNS.choose(rng).expect("lists are not empty");
        format!("{adjective}-{noun}")
    };
    for _ in 0..ATTEMPTS {
        let name = pick(&mut rng);
        if !taken(&name) {
            return name;
        }
    }
    let base = pick(&mut rng);
    (2u64..)
        .map(|n| format!("{base}-{n}"))
        .find(|n| !taken(n))
        .expect("some suffix is free")
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn checked(path: &Path, name: &str) -> Result<String, NamegenError> {
    banger_proto::validate::vm_name(name).map_err(|e| NamegenError::Invalid {
        path: path.into(),
        name: name.into(),
        reason: e.to_string(),
    })?;
    Ok(name.to_owned())
}

fn from_program(path: &Path, taken: &dyn Fn(&str) -> bool) -> Result<String, NamegenError> {
    for _ in 0..ATTEMPTS {
        let output = Command::new(path)
            .output()
            .map_err(|e| NamegenError::Run(path.into(), e))?;
        if !output.status.success() {
            return Err(NamegenError::Failed {
                path: path.into(),
                status: output.status,
            });
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let name = checked(path, text.lines().next().unwrap_or("").trim())?;
        if !taken(&name) {
            return Ok(name);
        }
    }
    Err(NamegenError::Exhausted(path.into()))
}

fn from_word_list(path: &Path, taken: &dyn Fn(&str) -> bool) -> Result<String, NamegenError> {
    let text = std::fs::read_to_string(path).map_err(|e| NamegenError::Read(path.into(), e))?;
    let names: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut free = Vec::new();
    for name in names {
        let name = checked(path, name)?;
        if !taken(&name) {
            free.push(name);
        }
    }
    free.choose(&mut rand::rng())
        .cloned()
        .ok_or_else(|| NamegenError::Exhausted(path.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_are_adjective_noun_and_avoid_taken_ones() {
        let name = generate(None, &|_| false).unwrap();
        let (adjective, noun) = name.split_once('-').unwrap();
        assert!(
            ADJECTIVES.contains(&adjective) && NOUNS.contains(&noun),
            "{name}"
        );
        // Everything but one combination taken: the suffix fallback still finds a name.
        let name = generate(None, &|n| !n.ends_with("-2")).unwrap();
        assert!(name.ends_with("-2"), "{name}");
    }

    #[test]
    fn word_list_override() {
        let tmp = tempfile::tempdir().unwrap();
        let list = tmp.path().join("names.txt");
        std::fs::write(&list, "# mine\nalpha\nbeta\n").unwrap();
        assert_eq!(generate(Some(&list), &|n| n == "alpha").unwrap(), "beta");
        let msg = generate(Some(&list), &|_| true).unwrap_err().to_string();
        assert!(msg.contains("--name"), "{msg}");
        std::fs::write(&list, "Bad Name\n").unwrap();
        let msg = generate(Some(&list), &|_| false).unwrap_err().to_string();
        assert!(msg.contains("\"Bad Name\""), "{msg}");
    }

    #[test]
    fn executable_override() {
        let tmp = tempfile::tempdir().unwrap();
        let program = tmp.path().join("namegen");
        std::fs::write(&program, "#!/bin/sh\necho build-box\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(generate(Some(&program), &|_| false).unwrap(), "build-box");
        assert!(generate(Some(&program), &|_| true).is_err());
    }
}
