//! banger's host boundary: where files live, what the user configured, and
//! every command, file and process banger touches on the host, each behind a
//! trait with a real implementation and a fake for tests.

pub mod agent;
pub mod bundle;
pub mod config;
pub mod config_drive;
pub mod disk;
pub mod doctor;
pub mod image_sources;
pub mod net;
pub mod paths;
pub mod privacy;
pub mod probe;
pub mod process;
pub mod procfs;
pub mod publish;
pub mod runtime_dir;
pub mod vm_dir;
pub mod vsock;

pub use config::{Config, ConfigError, LogLevel, VmmChoice};
pub use paths::{Paths, PathsError};
pub use runtime_dir::{RuntimeDir, RuntimeDirError, RuntimeDirSource};
pub use vm_dir::VmDir;
