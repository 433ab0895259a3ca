//! The black-box tests live in `tests/`: each runs the real `banger` and
//! `bangerd` binaries of this workspace (built by `cargo build --bins`,
//! which `make unit` runs first) in a private HOME. This crate keeps them
//! out of the CLI, which depends on neither the daemon nor the VMMs.
