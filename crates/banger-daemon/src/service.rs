//! The daemon's state and its RPC methods.

use std::sync::Arc;
use std::time::Instant;

use banger_host::{Config, Paths};
use banger_proto::api::method;
use banger_proto::{
    BatchItem, BatchResult, CreateVmParams, DaemonStatus, ErrorKind, Image, ImageRef, KillParams,
    RpcError, SetVmParams, Vm, VmRef, VmRefs, VmSummary, validate,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::watch;

use crate::lifecycle::{self, Lifecycle, LifecycleError};
use crate::store::{StoreError, VmRecord};

/// File names inside a VM's directory.
pub mod vm_files {
    pub const OVERLAY: &str = "overlay.ext4";
    pub const WORK_DISK: &str = "work.ext4";
    pub const VMM_LOG: &str = "firecracker.log";
    pub const VSOCK: &str = "vsock.sock";
    /// The guest's configuration for the current boot; exists while it runs.
    pub const CONFIG_DRIVE: &str = "config.tar";
}

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
    #[error("no image named {0:?}: see `banger image list`")]
    ImageNotFound(String),
    #[error("the daemon's worker for {0} stopped unexpectedly")]
    Worker(&'static str),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownMethod(_) => ErrorKind::MethodNotFound,
            Self::Params { .. } => ErrorKind::InvalidParams,
            Self::NotImplemented(_) => ErrorKind::NotImplemented,
            Self::ImageNotFound(_) => ErrorKind::NotFound,
            Self::Worker(_) | Self::Store(_) => ErrorKind::Internal,
            Self::Lifecycle(e) => e.kind(),
        }
    }
}

impl From<ApiError> for RpcError {
    fn from(err: ApiError) -> Self {
        RpcError::from_chain(err.kind(), &err)
    }
}

impl From<LifecycleError> for RpcError {
    fn from(err: LifecycleError) -> Self {
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
    pub lifecycle: Arc<Lifecycle>,
    /// Why the DNS listener could not be opened, if it could not.
    pub dns_error: Option<String>,
    /// The default VMM backend, and why it was chosen.
    pub vmm: String,
    pub vmm_reason: String,
    /// Why `config.guest_ip_pool` is not the configured pool, when it is not.
    pub pool_reason: Option<String>,
    started: Instant,
    shutdown: watch::Sender<bool>,
    /// `vm.list`'s answer, serialized, tagged with the store's generation.
    vm_list: std::sync::Mutex<Option<(u64, Box<RawValue>)>>,
}

impl Daemon {
    pub fn new(
        paths: Paths,
        config: Config,
        lifecycle: Arc<Lifecycle>,
        dns_error: Option<String>,
        vmm: String,
        vmm_reason: String,
        pool_reason: Option<String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            paths,
            config,
            lifecycle,
            dns_error,
            vmm,
            vmm_reason,
            pool_reason,
            started: Instant::now(),
            shutdown: watch::channel(false).0,
            vm_list: std::sync::Mutex::new(None),
        })
    }

    pub fn shutdown_receiver(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub async fn dispatch(
        self: &Arc<Self>,
        name: &str,
        params: Value,
    ) -> Result<Box<RawValue>, RpcError> {
        let started = Instant::now();
        let result = self.route(name, params).await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &result {
            Ok(_) => tracing::debug!(method = name, elapsed_ms, "request done"),
            Err(e) => tracing::info!(method = name, elapsed_ms, error = %e, "request failed"),
        }
        result
    }

    async fn route(self: &Arc<Self>, name: &str, params: Value) -> Result<Box<RawValue>, RpcError> {
        let store = self.lifecycle.store();
        match name {
            method::DAEMON_STATUS => reply(self.status()?),
            method::DAEMON_STOP => {
                tracing::info!("shutdown requested over RPC");
                self.request_shutdown();
                reply(serde_json::json!({ "stopping": true }))
            }
            method::VM_LIST => self.vm_list(),
            method::VM_SHOW => {
                let VmRef { vm } = parse(name, params)?;
                reply(self.vm_view(&self.lifecycle.resolve(&vm)?))
            }
            method::VM_STATS => {
                let VmRef { vm } = parse(name, params)?;
                let stats = self
                    .blocking("vm.stats", move |lc| {
                        let record = lc.resolve(&vm)?;
                        lc.stats(&record.id)
                    })
                    .await?;
                reply(stats)
            }
            method::VM_CREATE => {
                let params: CreateVmParams = parse(name, params)?;
                let record = self
                    .blocking("vm.create", move |lc| lc.create(&params))
                    .await?;
                reply(self.vm_view(&record))
            }
            method::VM_START => {
                self.batch(parse::<VmRefs>(name, params)?.vms, |lc, id| lc.start(id))
                    .await
            }
            method::VM_STOP => {
                self.batch(parse::<VmRefs>(name, params)?.vms, |lc, id| lc.stop(id))
                    .await
            }
            method::VM_RESTART => {
                self.batch(parse::<VmRefs>(name, params)?.vms, |lc, id| lc.restart(id))
                    .await
            }
            method::VM_DELETE => {
                self.batch(parse::<VmRefs>(name, params)?.vms, |lc, id| lc.delete(id))
                    .await
            }
            method::VM_KILL => {
                let KillParams { vms, signal } = parse(name, params)?;
                let signal = validate::signal(&signal).map_err(LifecycleError::from)?;
                self.batch(vms, move |lc, id| lc.kill(id, signal)).await
            }
            method::VM_SET => {
                let params: SetVmParams = parse(name, params)?;
                let refs = params.vms.clone();
                let params = Arc::new(params);
                self.batch(refs, move |lc, id| lc.set(id, &params)).await
            }
            method::IMAGE_LIST => reply(store.list_images().map_err(ApiError::from)?),
            method::IMAGE_SHOW => {
                let ImageRef { image } = parse(name, params)?;
                reply(self.image(&image)?)
            }
            method::VM_PING => {
                let VmRef { vm } = parse(name, params)?;
                let result = self
                    .blocking("vm.ping", move |lc| {
                        let record = lc.resolve(&vm)?;
                        lc.ping(&record.id)
                    })
                    .await?;
                reply(result)
            }
            method::DOCTOR => {
                let config = self.config.clone();
                let tag = self.paths.instance_tag();
                // This daemon serves DNS on its configured address unless it could not bind.
                let own_dns = self.dns_error.is_none().then_some(config.dns_listen);
                let checks = tokio::task::spawn_blocking(move || {
                    let probe = banger_host::probe::Probe::host();
                    let exe = std::env::current_exe().unwrap_or_default();
                    banger_host::doctor::doctor(&banger_host::doctor::DoctorInput {
                        probe: &probe,
                        config: &config,
                        exe: &exe,
                        daemon_dns: own_dns,
                        instance_tag: &tag,
                        ip: &banger_host::doctor::IpOutput,
                    })
                })
                .await
                .map_err(|_| ApiError::Worker("doctor"))?;
                reply(checks)
            }
            method::IMAGE_BUILD | method::IMAGE_DELETE => {
                let known = KNOWN_METHODS
                    .iter()
                    .find(|m| **m == name)
                    .expect("listed above");
                Err(ApiError::NotImplemented(known).into())
            }
            other => Err(ApiError::UnknownMethod(other.to_owned()).into()),
        }
    }

    /// Runs a lifecycle action on the blocking pool.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce(&Arc<Lifecycle>) -> lifecycle::Result<T> + Send + 'static,
    ) -> Result<T, RpcError> {
        let lifecycle = self.lifecycle.clone();
        match tokio::task::spawn_blocking(move || f(&lifecycle)).await {
            Ok(result) => result.map_err(RpcError::from),
            Err(_) => Err(ApiError::Worker(what).into()),
        }
    }

    /// Runs `action` on every ref concurrently; one item per ref, in order.
    async fn batch<F>(
        self: &Arc<Self>,
        refs: Vec<String>,
        action: F,
    ) -> Result<Box<RawValue>, RpcError>
    where
        F: Fn(&Arc<Lifecycle>, &str) -> lifecycle::Result<VmRecord> + Send + Sync + 'static,
    {
        let action = Arc::new(action);
        let tasks: Vec<_> = refs
            .into_iter()
            .map(|vm_ref| {
                let lifecycle = self.lifecycle.clone();
                let action = action.clone();
                let target = vm_ref.clone();
                let task = tokio::task::spawn_blocking(move || {
                    let record = lifecycle.resolve(&target)?;
                    action(&lifecycle, &record.id)
                });
                (vm_ref, task)
            })
            .collect();
        let mut items = Vec::with_capacity(tasks.len());
        for (vm_ref, task) in tasks {
            let item = match task.await {
                Ok(Ok(record)) => BatchItem {
                    vm_ref,
                    vm: Some(self.vm_view(&record)),
                    error: None,
                },
                Ok(Err(e)) => BatchItem {
                    vm_ref,
                    vm: None,
                    error: Some(e.into()),
                },
                Err(_) => BatchItem {
                    vm_ref,
                    vm: None,
                    error: Some(ApiError::Worker("a VM action").into()),
                },
            };
            items.push(item);
        }
        reply(BatchResult { items })
    }

    fn status(&self) -> Result<DaemonStatus, ApiError> {
        Ok(DaemonStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            socket: self.paths.socket.clone(),
            log_path: self.paths.log_file.clone(),
            dns_listen: self.config.dns_listen.to_string(),
            dns_error: self.dns_error.clone(),
            vmm: self.vmm.clone(),
            vmm_reason: self.vmm_reason.clone(),
            guest_ip_pool: self.config.guest_ip_pool.clone(),
            guest_ip_pool_reason: self.pool_reason.clone(),
            state_dir: self.paths.state_dir.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            vm_count: self.lifecycle.store().vm_count()?,
        })
    }

    fn image(&self, name: &str) -> Result<Image, ApiError> {
        self.lifecycle
            .store()
            .get_image(name)?
            .ok_or_else(|| ApiError::ImageNotFound(name.to_owned()))
    }

    /// Served from the last answer while no VM row changed: listing is what
    /// scripts and the TUI poll, and it stays cheap with a thousand VMs.
    fn vm_list(&self) -> Result<Box<RawValue>, RpcError> {
        let store = self.lifecycle.store();
        let generation = store.vms_generation();
        let mut cached = self.vm_list.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((tag, answer)) = cached.as_ref()
            && *tag == generation
        {
            return Ok(answer.clone());
        }
        let vms: Vec<VmSummary> = store
            .list_vms()
            .map_err(ApiError::from)?
            .iter()
            .map(vm_summary)
            .collect();
        let answer = reply(vms)?;
        *cached = Some((generation, answer.clone()));
        Ok(answer)
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

fn parse<T: DeserializeOwned>(method: &str, params: Value) -> Result<T, ApiError> {
    serde_json::from_value(params).map_err(|source| ApiError::Params {
        method: method.to_owned(),
        source,
    })
}

fn vm_summary(record: &VmRecord) -> VmSummary {
    VmSummary {
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
        pid: record.pid,
        created_at: record.created_at,
        started_at: record.started_at,
    }
}

fn reply<T: Serialize>(value: T) -> Result<Box<RawValue>, RpcError> {
    serde_json::value::to_raw_value(&value)
        .map_err(|e| RpcError::new(ErrorKind::Internal, format!("encoding the result: {e}")))
}
