//! banger's host boundary: where files live, what the user configured, and
//! (as later modules) every command and device banger touches on the host.

pub mod config;
pub mod paths;
pub mod runtime_dir;

pub use config::{Config, ConfigError, LogLevel, VmmChoice};
pub use paths::{Paths, PathsError};
pub use runtime_dir::{RuntimeDir, RuntimeDirError, RuntimeDirSource};
