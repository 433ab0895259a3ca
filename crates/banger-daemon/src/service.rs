//! The daemon's state and its RPC methods.

use std::sync::Arc;
use std::time::Instant;

use banger_host::{Config, Paths};
use banger_proto::api::method;
use banger_proto::{
    BatchItem, BatchResult, BranchVmParams, CreateSnapshotParams, DaemonStatus, ErrorKind, Image,
    ImageDetail, ImageRef, KillParams, Method, RestoreSnapshotParams, RpcError, SnapshotRef,
    StopParams, Stopping, Vm, VmRef, VmRefs, VmSummary, validate,
};
use serde_json::Value;
use serde_json::value::RawValue;
use thiserror::Error;
use tokio::sync::watch;

use crate::lifecycle::{self, Lifecycle, LifecycleError};
use crate::store::{StoreError, VmRecord};

fn known_methods() -> String {
    let names: Vec<&str> = method::Name::ALL.iter().map(|m| m.as_str()).collect();
    names.join(", ")
}

#[derive(Debug, Error)]
pub enum ApiError {
    #[error("unknown method {0:?}: this bangerd speaks {known}", known = known_methods())]
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

#[derive(Debug)]
pub struct Daemon {
    pub paths: Paths,
    pub config: Config,
    pub lifecycle: Arc<Lifecycle>,
    /// Why the DNS listener could not be opened, if it could not.
    pub dns_error: Option<String>,
    /// The default VMM backend, and why it was chosen.
    pub vmm: banger_proto::Backend,
    pub vmm_reason: String,
    /// Why `config.guest_ip_pool` is not the configured pool, when it is not.
    pub pool_reason: Option<String>,
    started: Instant,
    shutdown: watch::Sender<bool>,
    /// `vm.list`'s answer, serialized, tagged with the store's generation.
    vm_list: std::sync::Mutex<Option<(u64, Box<RawValue>)>>,
    pub image_builds: Arc<crate::image_build::ImageBuilds>,
}

impl Daemon {
    pub fn new(
        paths: Paths,
        config: Config,
        lifecycle: Arc<Lifecycle>,
        dns_error: Option<String>,
        (vmm, vmm_reason): (banger_proto::Backend, String),
        pool_reason: Option<String>,
        image_builds: Arc<crate::image_build::ImageBuilds>,
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
            image_builds,
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

    /// Dispatches on [`method::Name`]: a method declared in `banger-proto`
    /// without an arm here does not compile. Each arm decodes the params and
    /// encodes the answer through the method's declared types.
    async fn route(self: &Arc<Self>, name: &str, params: Value) -> Result<Box<RawValue>, RpcError> {
        use method::Name;
        let Some(method) = Name::parse(name) else {
            return Err(ApiError::UnknownMethod(name.to_owned()).into());
        };
        match method {
            Name::DaemonStatus | Name::DaemonStop | Name::Doctor => self.route_daemon(method).await,
            Name::VmList
            | Name::VmShow
            | Name::VmStats
            | Name::VmCreate
            | Name::VmStart
            | Name::VmStop
            | Name::VmRestart
            | Name::VmDelete
            | Name::VmKill
            | Name::VmPause
            | Name::VmUnpause
            | Name::VmSuspend
            | Name::VmResume
            | Name::VmSet
            | Name::VmRename
            | Name::VmPing
            | Name::VmSuggestName => self.route_vm(method, params).await,
            Name::VmSnapshotCreate
            | Name::VmSnapshotList
            | Name::VmSnapshotRestore
            | Name::VmSnapshotDelete
            | Name::VmBranch => self.route_snapshot(method, params).await,
            Name::ImageList
            | Name::ImageShow
            | Name::ImageBuild
            | Name::ImageBuildStatus
            | Name::ImageBuildCancel
            | Name::ImageBuildContinue
            | Name::ImageDelete => self.route_image(method, params).await,
        }
    }

    async fn route_daemon(
        self: &Arc<Self>,
        method: method::Name,
    ) -> Result<Box<RawValue>, RpcError> {
        use method::Name;
        match method {
            Name::DaemonStatus => {
                let status = self.on_store("daemon.status", |d| d.status()).await?;
                answer::<method::DaemonStatus>(status)
            }
            Name::DaemonStop => {
                tracing::info!("shutdown requested over RPC");
                self.request_shutdown();
                answer::<method::DaemonStop>(Stopping { stopping: true })
            }
            Name::Doctor => answer::<method::Doctor>(self.doctor().await?),
            other => unreachable!("{} is not a daemon method", other.as_str()),
        }
    }

    /// Snapshots and branches: each acts on one VM and answers at the end.
    async fn route_snapshot(
        self: &Arc<Self>,
        method: method::Name,
        params: Value,
    ) -> Result<Box<RawValue>, RpcError> {
        use method::Name;
        match method {
            Name::VmSnapshotCreate => {
                let CreateSnapshotParams { vm, snapshot } =
                    params_of::<method::VmSnapshotCreate>(params)?;
                let taken = self
                    .blocking("vm.snapshot_create", move |lc| {
                        lc.snapshot_create(&lc.resolve(&vm)?.id, snapshot.as_deref())
                    })
                    .await?;
                answer::<method::VmSnapshotCreate>(taken)
            }
            Name::VmSnapshotList => {
                let VmRef { vm } = params_of::<method::VmSnapshotList>(params)?;
                let list = self
                    .blocking("vm.snapshot_list", move |lc| {
                        lc.snapshot_list(&lc.resolve(&vm)?.id)
                    })
                    .await?;
                answer::<method::VmSnapshotList>(list)
            }
            Name::VmSnapshotRestore => {
                let RestoreSnapshotParams {
                    vm,
                    snapshot,
                    force,
                } = params_of::<method::VmSnapshotRestore>(params)?;
                let record = self
                    .blocking("vm.snapshot_restore", move |lc| {
                        lc.snapshot_restore(&lc.resolve(&vm)?.id, &snapshot, force)
                    })
                    .await?;
                answer::<method::VmSnapshotRestore>(self.vm_view(&record))
            }
            Name::VmSnapshotDelete => {
                let SnapshotRef { vm, snapshot } = params_of::<method::VmSnapshotDelete>(params)?;
                let deleted = self
                    .blocking("vm.snapshot_delete", move |lc| {
                        lc.snapshot_delete(&lc.resolve(&vm)?.id, &snapshot)
                    })
                    .await?;
                answer::<method::VmSnapshotDelete>(deleted)
            }
            Name::VmBranch => {
                let BranchVmParams {
                    source,
                    name,
                    no_memory,
                } = params_of::<method::VmBranch>(params)?;
                let record = self
                    .blocking("vm.branch", move |lc| {
                        lc.branch(&lc.resolve(&source)?.id, &name, no_memory)
                    })
                    .await?;
                answer::<method::VmBranch>(self.vm_view(&record))
            }
            other => unreachable!("{} is not a snapshot method", other.as_str()),
        }
    }

    async fn route_vm(
        self: &Arc<Self>,
        method: method::Name,
        params: Value,
    ) -> Result<Box<RawValue>, RpcError> {
        use method::Name;
        match method {
            Name::VmList => match self.cached_vm_list() {
                Some(answer) => Ok(answer),
                None => self.on_store("vm.list", |d| d.vm_list()).await,
            },
            Name::VmShow => {
                let VmRef { vm } = params_of::<method::VmShow>(params)?;
                let record = self
                    .on_store("vm.show", move |d| Ok(d.lifecycle.resolve(&vm)?))
                    .await?;
                answer::<method::VmShow>(self.vm_view(&record))
            }
            Name::VmStats => {
                let VmRef { vm } = params_of::<method::VmStats>(params)?;
                let stats = self
                    .blocking("vm.stats", move |lc| lc.stats(&lc.resolve(&vm)?.id))
                    .await?;
                answer::<method::VmStats>(stats)
            }
            Name::VmCreate => {
                let params = params_of::<method::VmCreate>(params)?;
                let record = self
                    .blocking("vm.create", move |lc| lc.create(&params))
                    .await?;
                answer::<method::VmCreate>(self.vm_view(&record))
            }
            Name::VmStart => {
                self.batch::<method::VmStart>(params, |lc, id| lc.start(id))
                    .await
            }
            Name::VmStop => {
                let StopParams { vms, force } = params_of::<method::VmStop>(params)?;
                self.batch_refs::<method::VmStop>(vms, move |lc, id| lc.stop(id, force))
                    .await
            }
            Name::VmSuspend => {
                self.batch::<method::VmSuspend>(params, |lc, id| lc.suspend(id))
                    .await
            }
            Name::VmResume => {
                self.batch::<method::VmResume>(params, |lc, id| lc.resume(id))
                    .await
            }
            Name::VmRestart => {
                self.batch::<method::VmRestart>(params, |lc, id| lc.restart(id))
                    .await
            }
            Name::VmPause => {
                self.batch::<method::VmPause>(params, |lc, id| lc.pause(id))
                    .await
            }
            Name::VmUnpause => {
                self.batch::<method::VmUnpause>(params, |lc, id| lc.unpause(id))
                    .await
            }
            Name::VmDelete => {
                self.batch::<method::VmDelete>(params, |lc, id| lc.delete(id))
                    .await
            }
            Name::VmKill => {
                let KillParams { vms, signal } = params_of::<method::VmKill>(params)?;
                let signal = validate::signal(&signal).map_err(LifecycleError::from)?;
                self.batch_refs::<method::VmKill>(vms, move |lc, id| lc.kill(id, signal))
                    .await
            }
            Name::VmSet => {
                let params = params_of::<method::VmSet>(params)?;
                let refs = params.vms.clone();
                let params = Arc::new(params);
                self.batch_refs::<method::VmSet>(refs, move |lc, id| lc.set(id, &params))
                    .await
            }
            Name::VmPing => {
                let VmRef { vm } = params_of::<method::VmPing>(params)?;
                let pong = self
                    .blocking("vm.ping", move |lc| lc.ping(&lc.resolve(&vm)?.id))
                    .await?;
                answer::<method::VmPing>(pong)
            }
            Name::VmRename => {
                let banger_proto::RenameVmParams { vm, name } =
                    params_of::<method::VmRename>(params)?;
                let record = self
                    .blocking("vm.rename", move |lc| {
                        lc.rename(&lc.resolve(&vm)?.id, &name)
                    })
                    .await?;
                answer::<method::VmRename>(self.vm_view(&record))
            }
            Name::VmSuggestName => {
                let name = self
                    .blocking("vm.suggest_name", |lc| lc.suggest_name())
                    .await?;
                answer::<method::VmSuggestName>(name)
            }
            other => unreachable!("{} is not a VM method", other.as_str()),
        }
    }

    async fn route_image(
        self: &Arc<Self>,
        method: method::Name,
        params: Value,
    ) -> Result<Box<RawValue>, RpcError> {
        use method::Name;
        match method {
            Name::ImageList => {
                let images = self
                    .on_store("image.list", |d| {
                        Ok(d.lifecycle.store().list_images().map_err(ApiError::from)?)
                    })
                    .await?;
                answer::<method::ImageList>(images)
            }
            Name::ImageShow => {
                let ImageRef { image } = params_of::<method::ImageShow>(params)?;
                let detail = self
                    .on_store("image.show", move |d| {
                        let image = d.image(&image)?;
                        let used_by = d.lifecycle.image_users(&image.name)?;
                        Ok(ImageDetail { image, used_by })
                    })
                    .await?;
                answer::<method::ImageShow>(detail)
            }
            Name::ImageDelete => {
                let ImageRef { image } = params_of::<method::ImageDelete>(params)?;
                let deleted = self
                    .blocking("image.delete", move |lc| lc.delete_image(&image))
                    .await?;
                answer::<method::ImageDelete>(deleted)
            }
            Name::ImageBuild => {
                let params = params_of::<method::ImageBuild>(params)?;
                let builds = self.image_builds.clone();
                let started = tokio::task::spawn_blocking(move || builds.start(params))
                    .await
                    .map_err(|_| RpcError::from(ApiError::Worker("image.build")))??;
                answer::<method::ImageBuild>(started)
            }
            Name::ImageBuildStatus => {
                let ImageRef { image } = params_of::<method::ImageBuildStatus>(params)?;
                answer::<method::ImageBuildStatus>(self.image_builds.status(&image)?)
            }
            Name::ImageBuildContinue => {
                let banger_proto::ContinueBuildParams { image, keep } =
                    params_of::<method::ImageBuildContinue>(params)?;
                answer::<method::ImageBuildContinue>(self.image_builds.resume(&image, keep)?)
            }
            Name::ImageBuildCancel => {
                let ImageRef { image } = params_of::<method::ImageBuildCancel>(params)?;
                let builds = self.image_builds.clone();
                let status = tokio::task::spawn_blocking(move || builds.cancel(&image))
                    .await
                    .map_err(|_| RpcError::from(ApiError::Worker("image.build_cancel")))??;
                answer::<method::ImageBuildCancel>(status)
            }
            other => unreachable!("{} is not an image method", other.as_str()),
        }
    }

    /// `banger doctor`'s checks, run here so they see what the daemon sees.
    async fn doctor(&self) -> Result<Vec<banger_proto::check::Check>, ApiError> {
        let config = self.config.clone();
        let tag = self.paths.instance_tag();
        // This daemon serves DNS on its configured address unless it could not bind.
        let own_dns = self.dns_error.is_none().then_some(config.dns_listen);
        tokio::task::spawn_blocking(move || {
            banger_host::doctor::doctor_here(&config, own_dns, &tag)
        })
        .await
        .map_err(|_| ApiError::Worker("doctor"))
    }

    /// Runs `read` on the blocking pool. Every SQLite call goes through
    /// here or through a lifecycle action (`blocking`), so none holds up
    /// the async runtime that serves the other clients.
    async fn on_store<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        read: impl FnOnce(&Arc<Self>) -> Result<T, RpcError> + Send + 'static,
    ) -> Result<T, RpcError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || read(&this))
            .await
            .map_err(|_| RpcError::from(ApiError::Worker(what)))?
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

    /// A batch method whose params are the refs (start, stop, restart, delete).
    async fn batch<M>(
        self: &Arc<Self>,
        params: Value,
        action: impl Fn(&Arc<Lifecycle>, &str) -> lifecycle::Result<VmRecord> + Send + Sync + 'static,
    ) -> Result<Box<RawValue>, RpcError>
    where
        M: Method<Params = VmRefs, Result = BatchResult>,
    {
        let VmRefs { vms } = params_of::<M>(params)?;
        self.batch_refs::<M>(vms, action).await
    }

    /// Runs `action` on every ref concurrently; one item per ref, in order.
    async fn batch_refs<M>(
        self: &Arc<Self>,
        refs: Vec<String>,
        action: impl Fn(&Arc<Lifecycle>, &str) -> lifecycle::Result<VmRecord> + Send + Sync + 'static,
    ) -> Result<Box<RawValue>, RpcError>
    where
        M: Method<Result = BatchResult>,
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
        answer::<M>(BatchResult { items })
    }

    fn status(&self) -> Result<DaemonStatus, RpcError> {
        Ok(DaemonStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            socket: self.paths.socket.clone(),
            log_path: self.paths.log_file.clone(),
            dns_listen: self.config.dns_listen.to_string(),
            dns_error: self.dns_error.clone(),
            vmm: self.vmm,
            vmm_reason: self.vmm_reason.clone(),
            guest_ip_pool: self.config.guest_ip_pool.to_string(),
            guest_ip_pool_reason: self.pool_reason.clone(),
            state_dir: self.paths.state_dir.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            vm_count: self.lifecycle.store().vm_count().map_err(ApiError::from)?,
        })
    }

    fn image(&self, name: &str) -> Result<Image, ApiError> {
        self.lifecycle
            .store()
            .get_image(name)?
            .ok_or_else(|| ApiError::ImageNotFound(name.to_owned()))
    }

    /// The last `vm.list` answer while no VM row changed since: listing is
    /// what scripts and the TUI poll, and it stays cheap with a thousand
    /// VMs. Memory only, so it is answered without the blocking pool.
    fn cached_vm_list(&self) -> Option<Box<RawValue>> {
        let generation = self.lifecycle.store().vms_generation();
        let cached = self.vm_list.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .as_ref()
            .filter(|(tag, _)| *tag == generation)
            .map(|(_, answer)| answer.clone())
    }

    /// Lists the VMs from the store and caches the answer (blocking pool).
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
            .map(VmSummary::from)
            .collect();
        let answer = answer::<method::VmList>(vms)?;
        *cached = Some((generation, answer.clone()));
        Ok(answer)
    }

    pub fn vm_view(&self, record: &VmRecord) -> Vm {
        let dir = self.paths.vm_dir(&record.id);
        let files = banger_host::VmDir::new(&dir);
        Vm {
            record: record.clone(),
            overlay_path: files.overlay(),
            work_disk_path: files.work_disk(),
            vmm_log_path: files.console_log(),
            dir,
        }
    }
}

/// The params of method `M`, decoded as it declares them.
fn params_of<M: Method>(params: Value) -> Result<M::Params, ApiError> {
    serde_json::from_value(params).map_err(|source| ApiError::Params {
        method: M::NAME.to_owned(),
        source,
    })
}

/// Method `M`'s answer, encoded: only the type `M` declares is accepted.
fn answer<M: Method>(value: M::Result) -> Result<Box<RawValue>, RpcError> {
    serde_json::value::to_raw_value(&value)
        .map_err(|e| RpcError::new(ErrorKind::Internal, format!("encoding the result: {e}")))
}
