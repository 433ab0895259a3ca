//! The daemon's state and its RPC methods.

use std::sync::Arc;
use std::time::Instant;

use banger_host::{Config, Paths};
use banger_proto::api::method;
use banger_proto::{DaemonStatus, ErrorKind, Image, ImageRef, RpcError, Vm, VmRef};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::watch;

use crate::store::{Store, StoreError, VmRecord};

/// File names inside a VM's directory.
pub mod vm_files {
    pub const OVERLAY: &str = "overlay.ext4";
    pub const WORK_DISK: &str = "work.ext4";
    pub const VMM_LOG: &str = "firecracker.log";
    pub const VSOCK: &str = "vsock.sock";
    pub const API_SOCKET: &str = "firecracker.sock";
}

/// Shortest ID prefix shown to users; refs may use any unique prefix.
pub const SHORT_ID_LEN: usize = 8;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("unknown method {0:?}: this bangerd speaks {known}", known = KNOWN_METHODS.join(", "))]
    UnknownMethod(String),
    #[error("invalid parameters for {method}")]
    Params {
        method: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0} is not implemented yet in this version of banger")]
    NotImplemented(&'static str),
    #[error("no VM named {0:?} and no VM ID starts with it: see `banger vm list`")]
    VmNotFound(String),
    #[error("{vm_ref:?} matches several VMs ({}): use the name or more of the ID", .candidates.join(", "))]
    AmbiguousRef {
        vm_ref: String,
        candidates: Vec<String>,
    },
    #[error("no image named {0:?}: see `banger image list`")]
    ImageNotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownMethod(_) => ErrorKind::MethodNotFound,
            Self::Params { .. } => ErrorKind::InvalidParams,
            Self::NotImplemented(_) => ErrorKind::NotImplemented,
            Self::VmNotFound(_) | Self::ImageNotFound(_) => ErrorKind::NotFound,
            Self::AmbiguousRef { .. } => ErrorKind::InvalidInput,
            Self::Store(_) => ErrorKind::Internal,
        }
    }
}

impl From<ApiError> for RpcError {
    fn from(err: ApiError) -> Self {
        RpcError::from_chain(err.kind(), &err)
    }
}

const KNOWN_METHODS: &[&str] = &[
    method::DAEMON_STATUS,
    method::DAEMON_STOP,
    method::VM_CREATE,
    method::VM_LIST,
    method::VM_SHOW,
    method::VM_STATS,
    method::VM_START,
    method::VM_STOP,
    method::VM_RESTART,
    method::VM_KILL,
    method::VM_DELETE,
    method::VM_SET,
    method::VM_PING,
    method::IMAGE_LIST,
    method::IMAGE_SHOW,
    method::IMAGE_BUILD,
    method::IMAGE_DELETE,
    method::DOCTOR,
];

#[derive(Debug)]
pub struct Daemon {
    pub paths: Paths,
    pub config: Config,
    pub store: Store,
    started: Instant,
    shutdown: watch::Sender<bool>,
}

impl Daemon {
    pub fn new(paths: Paths, config: Config, store: Store) -> Arc<Self> {
        Arc::new(Self {
            paths,
            config,
            store,
            started: Instant::now(),
            shutdown: watch::channel(false).0,
        })
    }

    pub fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub async fn dispatch(self: &Arc<Self>, name: &str, params: Value) -> Result<Value, RpcError> {
        let started = Instant::now();
        let result = self.route(name, params).await;
        match &result {
            Ok(_) => tracing::debug!(
                method = name,
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "request done"
            ),
            Err(e) => tracing::info!(method = name, error = %e, "request failed"),
        }
        result
    }

    async fn route(self: &Arc<Self>, name: &str, params: Value) -> Result<Value, RpcError> {
        match name {
            method::DAEMON_STATUS => reply(self.status()?),
            method::DAEMON_STOP => {
                tracing::info!("shutdown requested over RPC");
                self.request_shutdown();
                reply(serde_json::json!({ "stopping": true }))
            }
            method::VM_LIST => reply(self.list_vms()?),
            method::VM_SHOW => {
                let VmRef { vm } = parse(name, params)?;
                reply(self.vm_view(&self.resolve_vm(&vm)?))
            }
            method::IMAGE_LIST => reply(self.store.list_images().map_err(ApiError::from)?),
            method::IMAGE_SHOW => {
                let ImageRef { image } = parse(name, params)?;
                reply(self.image(&image)?)
            }
            method::VM_CREATE
            | method::VM_STATS
            | method::VM_START
            | method::VM_STOP
            | method::VM_RESTART
            | method::VM_KILL
            | method::VM_DELETE
            | method::VM_SET
            | method::VM_PING
            | method::IMAGE_BUILD
            | method::IMAGE_DELETE
            | method::DOCTOR => {
                let known = KNOWN_METHODS
                    .iter()
                    .find(|m| **m == name)
                    .expect("listed above");
                Err(ApiError::NotImplemented(known).into())
            }
            other => Err(ApiError::UnknownMethod(other.to_owned()).into()),
        }
    }

    fn status(&self) -> Result<DaemonStatus, ApiError> {
        Ok(DaemonStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            socket: self.paths.socket.clone(),
            log_path: self.paths.log_file.clone(),
            dns_listen: self.config.dns_listen.to_string(),
            state_dir: self.paths.state_dir.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            vm_count: self.store.vm_count()?,
        })
    }

    fn list_vms(&self) -> Result<Vec<Vm>, ApiError> {
        Ok(self
            .store
            .list_vms()?
            .iter()
            .map(|r| self.vm_view(r))
            .collect())
    }

    fn image(&self, name: &str) -> Result<Image, ApiError> {
        self.store
            .get_image(name)?
            .ok_or_else(|| ApiError::ImageNotFound(name.to_owned()))
    }

    /// Finds a VM by exact name, else by unique ID prefix.
    pub fn resolve_vm(&self, vm_ref: &str) -> Result<VmRecord, ApiError> {
        let vms = self.store.list_vms()?;
        resolve_ref(vms, vm_ref)
    }

    pub fn vm_view(&self, record: &VmRecord) -> Vm {
        let dir = self.paths.vm_dir(&record.id);
        Vm {
            id: record.id.clone(),
            name: record.name.clone(),
            state: record.state,
            image: record.image.clone(),
            vmm: record.vmm.clone(),
            vcpu: record.vcpu,
            memory_mib: record.memory_mib,
            disk_size_bytes: record.disk_size_bytes,
            nat: record.nat,
            guest_ip: record.guest_ip.clone(),
            tap: record.tap.clone(),
            vsock_cid: record.vsock_cid,
            vsock_path: record.vsock_path.clone(),
            pid: record.pid,
            created_at: record.created_at,
            started_at: record.started_at,
            stopped_at: record.stopped_at,
            exit_reason: record.exit_reason.clone(),
            last_error: record.last_error.clone(),
            overlay_path: dir.join(vm_files::OVERLAY),
            work_disk_path: dir.join(vm_files::WORK_DISK),
            vmm_log_path: dir.join(vm_files::VMM_LOG),
            dir,
        }
    }
}

pub fn resolve_ref(vms: Vec<VmRecord>, vm_ref: &str) -> Result<VmRecord, ApiError> {
    if vm_ref.is_empty() {
        return Err(ApiError::VmNotFound(String::new()));
    }
    let mut by_prefix = Vec::new();
    for vm in vms {
        if vm.name == vm_ref {
            return Ok(vm);
        }
        if vm.id.starts_with(vm_ref) {
            by_prefix.push(vm);
        }
    }
    match by_prefix.len() {
        0 => Err(ApiError::VmNotFound(vm_ref.to_owned())),
        1 => Ok(by_prefix.remove(0)),
        _ => Err(ApiError::AmbiguousRef {
            vm_ref: vm_ref.to_owned(),
            candidates: by_prefix
                .iter()
                .map(|vm| format!("{} ({})", vm.name, &vm.id[..SHORT_ID_LEN.min(vm.id.len())]))
                .collect(),
        }),
    }
}

fn parse<T: DeserializeOwned>(method: &str, params: Value) -> Result<T, ApiError> {
    serde_json::from_value(params).map_err(|source| ApiError::Params {
        method: method.to_owned(),
        source,
    })
}

fn reply<T: Serialize>(value: T) -> Result<Value, RpcError> {
    serde_json::to_value(value)
        .map_err(|e| RpcError::new(ErrorKind::Internal, format!("encoding the result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sample_vm;

    #[test]
    fn refs_resolve_by_name_then_unique_prefix() {
        let vms = vec![
            sample_vm("aa12bb34cc", "calm-otter"),
            sample_vm("aa12ff00dd", "buildbox"),
            sample_vm("cc56dd78ee", "api-1"),
        ];
        assert_eq!(
            resolve_ref(vms.clone(), "calm-otter").unwrap().id,
            "aa12bb34cc"
        );
        assert_eq!(resolve_ref(vms.clone(), "cc5").unwrap().name, "api-1");
        assert_eq!(
            resolve_ref(vms.clone(), "aa12b").unwrap().name,
            "calm-otter"
        );
        let msg = resolve_ref(vms.clone(), "aa12").unwrap_err().to_string();
        assert!(
            msg.contains("calm-otter (aa12bb34)") && msg.contains("buildbox (aa12ff00)"),
            "{msg}"
        );
        let msg = resolve_ref(vms, "zz").unwrap_err().to_string();
        assert!(
            msg.contains("\"zz\"") && msg.contains("banger vm list"),
            "{msg}"
        );
    }
}
