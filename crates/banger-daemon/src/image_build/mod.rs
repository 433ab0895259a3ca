//! `banger image build`: a new image from a base, built natively. The base
//! is copied (reflinked where the filesystem can) into a builder VM's
//! directory and attached to it read-write; the builder boots from the
//! default image with NAT and, through the guest agent, provisions the
//! image in a chroot, step by step: apt packages, Docker when asked, mise,
//! opencode through mise, the tmux plugins and their config, and the
//! banger-vsock-pingd service. Then the image is unmounted, the builder
//! powers off and goes, and the image is checked, shrunk to its content
//! and registered.
//!
//! A build runs on a thread of the daemon; `image.build_status` follows it
//! and `image.build_cancel` stops it. A failed or cancelled build leaves no
//! image, no builder VM and no temporary file; a daemon killed mid-build
//! leaves a builder VM (found by the image in its directory) and a staging
//! directory, which the next daemon start removes ([`ImageBuilds::recover`]).
//!
//! The image is kept at its minimal size: it is the read-only base under
//! every VM's overlay, so free space in it serves no VM, and a smaller file
//! is faster to copy into the next build. `--size` is the room the build
//! itself has.

pub mod steps;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use banger_host::bundle::BundleFile;
use banger_host::disk::Disks;
use banger_host::image_sources::{self, Source};
use banger_host::process::Runner;
use banger_host::{Config, Paths};
use banger_proto::agent::ExecRequest;
use banger_proto::validate::{self, ValidationError, clip, format_size};
use banger_proto::{
    BuildImageParams, BuildState, BuildStep, CreateVmParams, ErrorKind, Image, ImageBuild,
    RpcError, StepState,
};
use thiserror::Error;

use crate::lifecycle::{DEFAULT_IMAGE, Lifecycle, LifecycleError, error_text, now};
use steps::Step;

/// The pingd unit, as the runtime bundle's images have it.
const PINGD_UNIT_TEXT: &str =
    include_str!("../../../../scripts/runtime/banger-vsock-pingd.service");

/// The builder's room when `--size` is not given: the base plus this, and
/// at least [`MIN_DEFAULT_SIZE`].
const DEFAULT_HEADROOM: u64 = 2 << 30;
const MIN_DEFAULT_SIZE: u64 = 4 << 30;
/// How long an `--interactive` build waits without hearing from its client.
const CLIENT_SILENCE: Duration = Duration::from_secs(90);
/// Image names become the builder's VM name after `build-`.
const MAX_IMAGE_NAME: usize = validate::MAX_NAME_LEN - "build-".len();

#[derive(Debug, Error)]
pub enum ImageBuildError {
    #[error(
        "invalid image name {0:?}: use 1 to 57 characters from a-z, 0-9 and '-', not starting or ending with '-' (like docker-dev)"
    )]
    Name(String),
    #[error(
        "the default image is registered from the runtime bundle and cannot be built: pick another --name (like dev)"
    )]
    Default,
    #[error(
        "a build of image {0} is already running: wait for it, or stop it with Ctrl-C where it was started"
    )]
    Running(String),
    #[error(
        "no base to build from: give --base IMAGE|PATH, set default_base_rootfs in config.toml, or run `make runtime` for the bundle's rootfs.ext4"
    )]
    NoBase,
    #[error("base {0:?} is neither an image (see `banger image list`) nor an existing file")]
    BaseNotFound(String),
    #[error("no default image to boot the builder from: run `make runtime`")]
    NoBuilderImage,
    #[error(
        "no banger-vsock-pingd to bake in: the runtime bundle lacks it (run `make runtime`) or vsock_ping_helper_path names a missing file"
    )]
    NoPingd,
    #[error(
        "invalid package name {0:?} in the package list: use Debian package names, one per line (like git or tmux=3.3a-3)"
    )]
    Package(String),
    #[error("reading the package list {0}")]
    Packages(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Size(#[from] ValidationError),
    #[error("--size {size} is smaller than the base ({base}): use at least {base}")]
    SizeTooSmall { size: String, base: String },
    #[error(
        "unknown image_sources key {0:?} in config.toml: use one of mise, opencode, tmux_resurrect, tmux_continuum"
    )]
    UnknownSource(String),
    #[error("no build of image {0} since the daemon started: see `banger image list`")]
    NotFound(String),
    #[error("the build of image {0} is not waiting for a shell")]
    NoShell(String),
    #[error("reading {0}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
}

impl From<ImageBuildError> for RpcError {
    fn from(err: ImageBuildError) -> Self {
        let kind = match &err {
            ImageBuildError::Running(_) | ImageBuildError::NoShell(_) => ErrorKind::Conflict,
            ImageBuildError::NotFound(_) | ImageBuildError::BaseNotFound(_) => ErrorKind::NotFound,
            ImageBuildError::NoBuilderImage | ImageBuildError::NoPingd => ErrorKind::Unavailable,
            ImageBuildError::Io(..) => ErrorKind::HostFailure,
            ImageBuildError::Lifecycle(e) => return RpcError::from_chain(e.kind(), &err),
            _ => ErrorKind::InvalidInput,
        };
        RpcError::from_chain(kind, &err)
    }
}

/// Why a step stopped the build.
#[derive(Debug, Error)]
enum StepError {
    #[error(
        "{step} needs the internet, which the builder cannot reach: check NAT with `banger doctor`, or point image_sources at local files"
    )]
    Offline { step: &'static str },
    #[error("{step} failed (exit status {status})")]
    Exit { step: &'static str, status: String },
    #[error("{step}: {detail}")]
    Host { step: &'static str, detail: String },
    #[error("cancelled during {0}")]
    Cancelled(&'static str),
    #[error("discarded: {0}; nothing was sealed into an image")]
    Discarded(String),
}

impl StepError {
    fn host(step: Step, detail: impl Into<String>) -> Self {
        StepError::Host {
            step: step.name(),
            detail: detail.into(),
        }
    }
}

/// What a validated build request will do.
#[derive(Debug, Clone)]
struct Plan {
    name: String,
    base: PathBuf,
    /// As the user named it (an image name or a path).
    base_label: String,
    builder_image: Image,
    docker: bool,
    packages: Vec<String>,
    size: u64,
    pingd: PathBuf,
    log: PathBuf,
    interactive: bool,
}

/// One build, as its thread and the status calls share it.
#[derive(Debug)]
struct Run {
    status: Mutex<ImageBuild>,
    cancelled: AtomicBool,
    /// The builder VM's ID, once it exists.
    builder: Mutex<Option<String>>,
    /// The `--interactive` shell's outcome: keep (seal) or discard.
    decision: Mutex<Option<bool>>,
    /// When a client last asked about this build: an interactive build
    /// whose client is gone is discarded rather than waiting for ever.
    last_seen: Mutex<Instant>,
}

impl Run {
    fn status(&self) -> ImageBuild {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, change: impl FnOnce(&mut ImageBuild)) {
        change(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn mark(&self, step: Step, state: StepState, elapsed: Option<Duration>) {
        self.update(|s| {
            let entry = &mut s.steps[step.index()];
            entry.state = state;
            if let Some(elapsed) = elapsed {
                entry.elapsed_ms = Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            }
        });
    }

    fn check_cancelled(&self, step: Step) -> Result<(), StepError> {
        if self.cancelled.load(Ordering::SeqCst) {
            Err(StepError::Cancelled(step.name()))
        } else {
            Ok(())
        }
    }
}

/// The daemon's image builds, by image name.
#[derive(Debug)]
pub struct ImageBuilds {
    lifecycle: Arc<Lifecycle>,
    disks: Arc<dyn Disks>,
    runner: Arc<dyn Runner>,
    paths: Paths,
    config: Config,
    runtime_dir: Option<PathBuf>,
    runs: Mutex<HashMap<String, Arc<Run>>>,
    /// How long the builder has to answer through its agent.
    pub boot_timeout: Duration,
}

impl ImageBuilds {
    pub fn new(
        lifecycle: Arc<Lifecycle>,
        disks: Arc<dyn Disks>,
        runner: Arc<dyn Runner>,
        paths: Paths,
        config: Config,
        runtime_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            lifecycle,
            disks,
            runner,
            paths,
            config,
            runtime_dir,
            runs: Mutex::new(HashMap::new()),
            boot_timeout: Duration::from_secs(600),
        }
    }

    fn log_dir(&self) -> PathBuf {
        self.paths.state_dir.join("image-build")
    }

    fn staging(&self, name: &str) -> PathBuf {
        self.paths.images_dir.join(format!(".build-{name}"))
    }

    /// Checks the request and starts the build on a thread of its own.
    pub fn start(
        self: &Arc<Self>,
        params: BuildImageParams,
    ) -> Result<ImageBuild, ImageBuildError> {
        let plan = self.plan(params)?;
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if runs
            .get(&plan.name)
            .is_some_and(|r| r.status().state == BuildState::Running)
        {
            return Err(ImageBuildError::Running(plan.name));
        }
        let status = ImageBuild {
            name: plan.name.clone(),
            state: BuildState::Running,
            steps: Step::ALL
                .iter()
                .map(|s| BuildStep {
                    name: s.name().to_owned(),
                    state: StepState::Pending,
                    elapsed_ms: None,
                })
                .collect(),
            log_path: plan.log.clone(),
            started_at: now(),
            error: None,
            log_tail: Vec::new(),
            image: None,
            shell: None,
        };
        let run = Arc::new(Run {
            status: Mutex::new(status.clone()),
            cancelled: AtomicBool::new(false),
            builder: Mutex::new(None),
            decision: Mutex::new(None),
            last_seen: Mutex::new(Instant::now()),
        });
        runs.insert(plan.name.clone(), run.clone());
        drop(runs);
        let this = self.clone();
        std::thread::Builder::new()
            .name(format!("image build {}", plan.name))
            .spawn(move || this.build(&plan, &run))
            .map_err(|e| ImageBuildError::Io(self.log_dir(), e))?;
        Ok(status)
    }

    fn run(&self, name: &str) -> Result<Arc<Run>, ImageBuildError> {
        let run = self
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| ImageBuildError::NotFound(name.to_owned()))?;
        *run.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Ok(run)
    }

    pub fn status(&self, name: &str) -> Result<ImageBuild, ImageBuildError> {
        Ok(self.run(name)?.status())
    }

    /// Ends the `--interactive` shell step: seal (`keep`) or discard.
    pub fn resume(&self, name: &str, keep: bool) -> Result<ImageBuild, ImageBuildError> {
        let run = self.run(name)?;
        if run.status().shell.is_none() {
            return Err(ImageBuildError::NoShell(name.to_owned()));
        }
        *run.decision.lock().unwrap_or_else(|p| p.into_inner()) = Some(keep);
        Ok(run.status())
    }

    /// Stops a running build: its builder is killed, and the build's own
    /// thread removes what it made.
    pub fn cancel(&self, name: &str) -> Result<ImageBuild, ImageBuildError> {
        let run = self.run(name)?;
        if run.status().state == BuildState::Running {
            run.cancelled.store(true, Ordering::SeqCst);
            let builder = run
                .builder
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(id) = builder {
                // The step under way then fails at once.
                let _ = self.lifecycle.kill(&id, libc::SIGKILL);
            }
        }
        Ok(run.status())
    }

    /// At daemon start: what builds a killed daemon left goes. A builder is
    /// a VM whose directory holds an image under construction.
    pub fn recover(&self) {
        let vms = match self.lifecycle.store().list_vms() {
            Ok(vms) => vms,
            Err(e) => {
                tracing::error!(error = %e, "listing VMs to find interrupted image builds");
                return;
            }
        };
        for vm in vms {
            let target = banger_host::VmDir::new(self.paths.vm_dir(&vm.id)).build_target();
            if target.exists() {
                match self.lifecycle.delete(&vm.id) {
                    Ok(_) => {
                        tracing::warn!(vm = %vm.name, "removed the builder VM of an image build the daemon's exit interrupted")
                    }
                    Err(e) => {
                        tracing::error!(vm = %vm.name, error = %error_text(&e), "could not remove an interrupted image build's builder VM")
                    }
                }
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.paths.images_dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".build-") {
                let _ = std::fs::remove_dir_all(entry.path());
                tracing::warn!(dir = %entry.path().display(), "removed the staging directory of an interrupted image build");
            }
        }
    }

    /// The request checked and resolved, or why it cannot run. Changes nothing.
    fn plan(&self, params: BuildImageParams) -> Result<Plan, ImageBuildError> {
        let name = params.name.trim().to_owned();
        if validate::vm_name(&name).is_err() || name.len() > MAX_IMAGE_NAME {
            return Err(ImageBuildError::Name(clip(&name)));
        }
        if name == DEFAULT_IMAGE {
            return Err(ImageBuildError::Default);
        }
        if let Some(key) = self
            .config
            .image_sources
            .keys()
            .find(|k| !image_sources::ALL.iter().any(|s| s.key == k.as_str()))
        {
            return Err(ImageBuildError::UnknownSource(key.clone()));
        }
        let store = self.lifecycle.store();
        let (base, base_label) = match params.base.as_deref().map(str::trim) {
            Some(given) => match store.get_image(given).map_err(LifecycleError::from)? {
                Some(image) => (image.rootfs, given.to_owned()),
                None if Path::new(given).is_file() => (PathBuf::from(given), given.to_owned()),
                None => return Err(ImageBuildError::BaseNotFound(clip(given))),
            },
            None => {
                let path = self.default_base().ok_or(ImageBuildError::NoBase)?;
                let label = path.display().to_string();
                (path, label)
            }
        };
        let builder_image = store
            .get_image(DEFAULT_IMAGE)
            .map_err(LifecycleError::from)?
            .ok_or(ImageBuildError::NoBuilderImage)?;
        let base_len = std::fs::metadata(&base)
            .map_err(|e| ImageBuildError::Io(base.clone(), e))?
            .len();
        let size = match params.size.as_deref() {
            Some(text) => {
                let size = validate::size_bytes(text)?;
                if size < base_len {
                    return Err(ImageBuildError::SizeTooSmall {
                        size: clip(text),
                        base: format_size(base_len.div_ceil(1 << 20) << 20),
                    });
                }
                size
            }
            None => (base_len + DEFAULT_HEADROOM).max(MIN_DEFAULT_SIZE),
        };
        let packages = match params.packages {
            Some(list) => list,
            None => self.default_packages()?,
        };
        if let Some(bad) = packages.iter().find(|p| !valid_package(p)) {
            return Err(ImageBuildError::Package(clip(bad)));
        }
        let pingd = self
            .config
            .vsock_ping_helper_path
            .clone()
            .or_else(|| self.bundle_file(BundleFile::VsockPingHelper))
            .filter(|p| p.is_file())
            .ok_or(ImageBuildError::NoPingd)?;
        let log = self.log_dir().join(format!("{name}-{}.log", now()));
        Ok(Plan {
            name,
            base,
            base_label,
            builder_image,
            docker: params.docker,
            packages,
            size,
            pingd,
            log,
            interactive: params.interactive,
        })
    }

    fn bundle_file(&self, file: BundleFile) -> Option<PathBuf> {
        let dir = self.runtime_dir.as_deref()?;
        file.locate(dir, crate::images::bundle_manifest(dir).as_ref())
    }

    /// `default_base_rootfs`, else the bundle's rootfs.ext4, else (as the
    /// seed does when the bundle has no separate base) rootfs-docker.ext4.
    fn default_base(&self) -> Option<PathBuf> {
        self.config
            .default_base_rootfs
            .clone()
            .or_else(|| self.bundle_file(BundleFile::Rootfs).filter(|p| p.is_file()))
            .or_else(|| {
                self.bundle_file(BundleFile::RootfsDocker)
                    .filter(|p| p.is_file())
            })
    }

    /// `default_packages_file`, else the bundle's packages.apt, else none.
    fn default_packages(&self) -> Result<Vec<String>, ImageBuildError> {
        let file = self.config.default_packages_file.clone().or_else(|| {
            self.runtime_dir
                .as_ref()
                .map(|d| d.join("packages.apt"))
                .filter(|p| p.is_file())
        });
        match file {
            Some(path) => std::fs::read_to_string(&path)
                .map(|text| validate::package_list(&text))
                .map_err(|e| ImageBuildError::Packages(path, e)),
            None => Ok(Vec::new()),
        }
    }

    /// The build's thread: runs the steps, then cleans up or registers.
    fn build(&self, plan: &Plan, run: &Run) {
        let started = Instant::now();
        let outcome = std::fs::create_dir_all(self.log_dir())
            .and_then(|()| File::create(&plan.log))
            .map_err(|e| {
                StepError::host(
                    Step::Prepare,
                    format!("creating the build log {}: {e}", plan.log.display()),
                )
            })
            .and_then(|mut log| {
                let result = self.steps(plan, run, &mut log, started);
                if let Err(e) = &result {
                    let _ = writeln!(log, "\n== build failed: {e}");
                }
                result
            });
        if outcome.is_err() {
            self.clean_up(plan, run);
        }
        let tail = banger_host::procfs::log_tail(&plan.log, 20);
        run.update(|s| match outcome {
            Ok(image) => {
                s.state = BuildState::Succeeded;
                s.image = Some(image);
            }
            Err(e) => {
                for step in s
                    .steps
                    .iter_mut()
                    .filter(|st| st.state == StepState::Running)
                {
                    step.state = StepState::Failed;
                }
                s.shell = None;
                s.state = if matches!(e, StepError::Cancelled(_) | StepError::Discarded(_)) {
                    BuildState::Cancelled
                } else {
                    BuildState::Failed
                };
                s.error = Some(e.to_string());
                s.log_tail = tail;
            }
        });
        tracing::info!(image = %plan.name, state = ?run.status().state, secs = started.elapsed().as_secs(), "image build ended");
    }

    /// Removes the builder VM and the staging directory.
    fn clean_up(&self, plan: &Plan, run: &Run) {
        let builder = run.builder.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(id) = builder {
            // Nothing in a failed builder is worth a clean shutdown.
            let _ = self.lifecycle.kill(&id, libc::SIGKILL);
            if let Err(e) = self.lifecycle.delete(&id) {
                tracing::error!(image = %plan.name, error = %error_text(&e), "removing a failed build's builder VM");
            }
        }
        let staging = self.staging(&plan.name);
        if staging.exists()
            && let Err(e) = std::fs::remove_dir_all(&staging)
        {
            tracing::error!(dir = %staging.display(), error = %e, "removing a failed build's staging directory");
        }
    }

    fn steps(
        &self,
        plan: &Plan,
        run: &Run,
        log: &mut File,
        started: Instant,
    ) -> Result<Image, StepError> {
        let _ = writeln!(
            log,
            "banger image build {}: base {}, size {}, packages [{}], docker {}",
            plan.name,
            plan.base_label,
            format_size(plan.size),
            plan.packages.join(" "),
            plan.docker
        );
        let mut sources: HashMap<&'static str, PathBuf> = HashMap::new();
        self.step(run, log, Step::Prepare, |log| {
            for source in &image_sources::ALL {
                let setting = self.config.image_sources.get(source.key);
                let place = setting.map(|s| s.place.as_str());
                let pin = setting.and_then(|s| s.sha256.as_deref());
                let _ = writeln!(
                    log,
                    "{} {}: upstream {} pinned to tar sha256 {}; taken from {}{}",
                    source.key,
                    source.version,
                    source.url,
                    source.tar_sha256,
                    place.unwrap_or(source.url),
                    pin.map(|p| format!(" pinned by config.toml to {p}"))
                        .unwrap_or_default()
                );
                let cache = self.paths.cache_dir.join("image-sources");
                let path = image_sources::fetch(source, place, pin, &cache, self.runner.as_ref())
                    .map_err(|e| StepError::host(Step::Prepare, error_text(&e)))?;
                sources.insert(source.key, path);
                run.check_cancelled(Step::Prepare)?;
            }
            Ok(())
        })?;
        let vsock = self.step(run, log, Step::Boot, |log| {
            self.boot_builder(plan, run, log)
        })?;
        self.step(run, log, Step::Mount, |log| {
            guest(
                run,
                &vsock,
                Step::Mount,
                steps::MOUNT_SCRIPT,
                &[],
                None,
                log,
            )
        })?;
        if plan.packages.is_empty() {
            run.mark(Step::Apt, StepState::Skipped, None);
        } else {
            let list = plan.packages.join(" ");
            self.step(run, log, Step::Apt, |log| {
                guest(
                    run,
                    &vsock,
                    Step::Apt,
                    &format!("{}{}", steps::WAIT_FOR_MIRROR, steps::APT_SCRIPT),
                    &[("BANGER_PACKAGES", &list)],
                    None,
                    log,
                )
            })?;
        }
        if plan.docker {
            self.step(run, log, Step::Docker, |log| {
                guest(
                    run,
                    &vsock,
                    Step::Docker,
                    &format!("{}{}", steps::WAIT_FOR_MIRROR, steps::DOCKER_SCRIPT),
                    &[],
                    None,
                    log,
                )
            })?;
        } else {
            run.mark(Step::Docker, StepState::Skipped, None);
        }
        let source = |s: &Source| sources[s.key].clone();
        self.step(run, log, Step::Mise, |log| {
            let tar = source(&image_sources::MISE);
            guest(
                run,
                &vsock,
                Step::Mise,
                steps::MISE_SCRIPT,
                &[],
                Some(&tar),
                log,
            )
        })?;
        self.step(run, log, Step::Opencode, |log| {
            let tar = source(&image_sources::OPENCODE);
            let version = [("BANGER_VERSION", image_sources::OPENCODE.version)];
            guest(
                run,
                &vsock,
                Step::Opencode,
                steps::OPENCODE_SCRIPT,
                &version,
                Some(&tar),
                log,
            )
        })?;
        self.step(run, log, Step::Tmux, |log| {
            for (plugin, source_of) in [
                ("tmux-resurrect", image_sources::TMUX_RESURRECT),
                ("tmux-continuum", image_sources::TMUX_CONTINUUM),
            ] {
                let tar = source(&source_of);
                let env = [("BANGER_PLUGIN", plugin)];
                guest(
                    run,
                    &vsock,
                    Step::Tmux,
                    steps::TMUX_PLUGIN_SCRIPT,
                    &env,
                    Some(&tar),
                    log,
                )?;
            }
            guest(
                run,
                &vsock,
                Step::Tmux,
                &format!(
                    "wait_for_mirror() {{\n{}\n}}\n{}",
                    steps::WAIT_FOR_MIRROR,
                    steps::TMUX_CONFIG_SCRIPT
                ),
                &[],
                None,
                log,
            )
        })?;
        self.step(run, log, Step::Pingd, |log| {
            let unit = [("BANGER_UNIT", PINGD_UNIT_TEXT.trim_end())];
            guest(
                run,
                &vsock,
                Step::Pingd,
                steps::PINGD_SCRIPT,
                &unit,
                Some(&plan.pingd),
                log,
            )
        })?;
        if plan.interactive {
            self.step(run, log, Step::Interactive, |log| {
                self.wait_for_shell(run, log)
            })?;
        } else {
            run.mark(Step::Interactive, StepState::Skipped, None);
        }
        let rootfs = self.step(run, log, Step::Seal, |log| {
            self.seal(plan, run, &vsock, log)
        })?;
        self.step(run, log, Step::Register, |log| {
            let image = Image {
                name: plan.name.clone(),
                rootfs: rootfs.clone(),
                kernel: plan.builder_image.kernel.clone(),
                initrd: plan.builder_image.initrd.clone(),
                modules_dir: plan.builder_image.modules_dir.clone(),
                docker: plan.docker,
                managed: true,
                created_at: now(),
                packages: plan.packages.clone(),
                packages_sha256: Some(packages_sha256(&plan.packages)),
                base: Some(plan.base_label.clone()),
                build_log: Some(plan.log.clone()),
                build_secs: Some(started.elapsed().as_secs()),
            };
            let staged = rootfs.parent().expect("the staged rootfs has a directory");
            let image = self
                .lifecycle
                .register_built_image(image, staged)
                .map_err(|e| StepError::host(Step::Register, error_text(&e)))?;
            let _ = writeln!(
                log,
                "registered image {} at {}",
                image.name,
                image.rootfs.display()
            );
            Ok(image)
        })
    }

    /// Runs one step, marking it and logging its time.
    fn step<T>(
        &self,
        run: &Run,
        log: &mut File,
        step: Step,
        body: impl FnOnce(&mut File) -> Result<T, StepError>,
    ) -> Result<T, StepError> {
        run.check_cancelled(step)?;
        run.mark(step, StepState::Running, None);
        let _ = writeln!(log, "\n== {}", step.name());
        let started = Instant::now();
        let result = body(log);
        let state = if result.is_ok() {
            StepState::Done
        } else {
            StepState::Failed
        };
        run.mark(step, state, Some(started.elapsed()));
        let _ = writeln!(
            log,
            "== {} {} in {:.1}s",
            step.name(),
            if result.is_ok() { "done" } else { "failed" },
            started.elapsed().as_secs_f64()
        );
        // A kill by `cancel` shows up as a failed step: report the cancel.
        if result.is_err() && run.cancelled.load(Ordering::SeqCst) {
            return Err(StepError::Cancelled(step.name()));
        }
        result
    }

    /// Creates the builder VM with a copy of the base as its build disk and
    /// waits for its agent. Returns the builder's vsock socket.
    fn boot_builder(&self, plan: &Plan, run: &Run, log: &mut File) -> Result<PathBuf, StepError> {
        let host = |detail: String| StepError::host(Step::Boot, detail);
        let params = CreateVmParams {
            name: Some(format!("build-{}", plan.name)),
            image: Some(DEFAULT_IMAGE.to_owned()),
            vcpu: Some(2),
            memory_mib: Some(2048),
            disk_size: Some("1G".into()),
            nat: true,
            vmm: None,
            publish: Vec::new(),
        };
        let disks = self.disks.clone();
        let (base, size) = (plan.base.clone(), plan.size);
        let _ = writeln!(
            log,
            "copying {} into the builder's build disk ({})",
            base.display(),
            format_size(size)
        );
        let vm = self
            .lifecycle
            .create_with(&params, move |dir| {
                let target = banger_host::VmDir::new(dir).build_target();
                let disk_step = |e: banger_host::disk::DiskError| {
                    LifecycleError::step("building", "the image", "preparing the build disk", e)
                };
                disks.copy_image(&base, &target).map_err(disk_step)?;
                let len = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
                if size > len {
                    disks.grow(&target, size).map_err(disk_step)?;
                }
                // The builder's own base is found by label banger-base.
                disks.set_label(&target, "banger-build").map_err(disk_step)
            })
            .map_err(|e| host(error_text(&e)))?;
        *run.builder.lock().unwrap_or_else(|p| p.into_inner()) = Some(vm.id.to_string());
        let _ = writeln!(
            log,
            "builder VM {} ({}) is booting on {}",
            vm.name,
            vm.id.short(),
            vm.vmm
        );
        let vsock = vm
            .vsock_path
            .clone()
            .ok_or_else(|| host(format!("{} has no vsock device", vm.name)))?;
        let deadline = Instant::now() + self.boot_timeout;
        loop {
            run.check_cancelled(Step::Boot)?;
            match banger_host::agent::run(&vsock, &["true"], Duration::from_secs(5)) {
                Ok((_, status)) if status.code == Some(0) => break,
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Ok(_) | Err(_) => {
                    return Err(host(format!(
                        "the builder's agent did not answer within {}s: see its console log with `banger vm show {}`",
                        self.boot_timeout.as_secs(),
                        vm.name
                    )));
                }
            }
        }
        let _ = writeln!(log, "builder agent answers");
        // The agent starts early in the boot (the trimmed boot): the build
        // waits for the rest, so that no unit starts or mounts under it.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        let state =
            banger_host::agent::run(&vsock, &["systemctl", "is-system-running", "--wait"], left)
                .map(|(out, _)| String::from_utf8_lossy(&out).trim().to_owned())
                .unwrap_or_else(|e| format!("unknown ({e})"));
        let _ = writeln!(log, "builder boot finished: {state}");
        Ok(vsock)
    }

    /// Offers the client a shell in the mounted image and waits for its
    /// verdict: seal, discard, a cancel, or a client silent too long.
    fn wait_for_shell(&self, run: &Run, log: &mut File) -> Result<(), StepError> {
        let id = run
            .builder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        let vm = self
            .lifecycle
            .store()
            .get_vm(&id)
            .ok()
            .flatten()
            .map(|vm| vm.name.to_string())
            .unwrap_or(id);
        *run.last_seen.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        run.update(|s| {
            s.shell = Some(banger_proto::BuildShell {
                vm,
                argv: steps::SHELL_ARGV.iter().map(|a| (*a).to_owned()).collect(),
            });
        });
        let _ = writeln!(log, "waiting for the interactive shell to end");
        let verdict = loop {
            run.check_cancelled(Step::Interactive)?;
            if let Some(keep) = *run.decision.lock().unwrap_or_else(|p| p.into_inner()) {
                break Ok(keep);
            }
            let silent = run
                .last_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed();
            if silent > CLIENT_SILENCE {
                break Err(silent);
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        run.update(|s| s.shell = None);
        match verdict {
            Ok(true) => {
                let _ = writeln!(
                    log,
                    "the shell ended with status 0: sealing what it changed"
                );
                Ok(())
            }
            Ok(false) => Err(StepError::Discarded(
                "the interactive shell exited non-zero".into(),
            )),
            Err(silent) => Err(StepError::Discarded(format!(
                "no word from the build's terminal for {}s",
                silent.as_secs()
            ))),
        }
    }

    /// Unmounts the image in the builder, powers it off, takes the image
    /// out of its directory, removes it, then checks and shrinks the image
    /// and names it banger-base again. Returns the staged rootfs.
    fn seal(
        &self,
        plan: &Plan,
        run: &Run,
        vsock: &Path,
        log: &mut File,
    ) -> Result<PathBuf, StepError> {
        let host = |detail: String| StepError::host(Step::Seal, detail);
        guest(run, vsock, Step::Seal, steps::SEAL_SCRIPT, &[], None, log)?;
        let id = run
            .builder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| host("the builder VM is gone".into()))?;
        self.lifecycle
            .stop(&id, false)
            .map_err(|e| host(error_text(&e)))?;
        let staging = self.staging(&plan.name);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)
            .map_err(|e| host(format!("creating {}: {e}", staging.display())))?;
        let rootfs = staging.join("rootfs.ext4");
        let target = banger_host::VmDir::new(self.paths.vm_dir(&id)).build_target();
        std::fs::rename(&target, &rootfs).map_err(|e| {
            host(format!(
                "moving {} out of the builder: {e}",
                target.display()
            ))
        })?;
        self.lifecycle
            .delete(&id)
            .map_err(|e| host(error_text(&e)))?;
        run.builder.lock().unwrap_or_else(|p| p.into_inner()).take();
        let _ = writeln!(
            log,
            "builder removed; checking and shrinking {}",
            rootfs.display()
        );
        let bytes = self
            .disks
            .shrink_to_fit(&rootfs)
            .map_err(|e| host(error_text(&e)))?;
        self.disks
            .set_label(&rootfs, "banger-base")
            .map_err(|e| host(error_text(&e)))?;
        let _ = writeln!(
            log,
            "image is {} after shrinking",
            format_size(bytes.div_ceil(1 << 20) << 20)
        );
        Ok(rootfs)
    }
}

/// Runs `script` under `bash -euo pipefail` in the builder through its
/// agent, with `stdin` fed from a file, its output into the log.
fn guest(
    run: &Run,
    vsock: &Path,
    step: Step,
    script: &str,
    env: &[(&str, &str)],
    stdin: Option<&Path>,
    log: &mut File,
) -> Result<(), StepError> {
    run.check_cancelled(step)?;
    let host = |detail: String| StepError::host(step, detail);
    let request = ExecRequest {
        argv: ["bash", "-euo", "pipefail", "-c", script]
            .iter()
            .map(|a| (*a).to_owned())
            .collect(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        workdir: Some("/".into()),
        tty: None,
    };
    let session =
        banger_host::agent::AgentSession::start(vsock, &request, Duration::from_secs(10), None)
            .map_err(|e| host(error_text(&e)))?;
    match stdin {
        Some(path) => {
            let file =
                File::open(path).map_err(|e| host(format!("reading {}: {e}", path.display())))?;
            session.feed(file);
        }
        None => session.feed(std::io::empty()),
    }
    let mut errors = log
        .try_clone()
        .map_err(|e| host(format!("the build log: {e}")))?;
    let status = session
        .relay(log, &mut errors, &mut |_| {})
        .map_err(|e| host(error_text(&e)))?;
    match status.code {
        Some(0) => Ok(()),
        Some(steps::EXIT_OFFLINE) if matches!(step, Step::Apt | Step::Docker | Step::Tmux) => {
            Err(StepError::Offline { step: step.name() })
        }
        Some(code) => Err(StepError::Exit {
            step: step.name(),
            status: code.to_string(),
        }),
        None => Err(StepError::Exit {
            step: step.name(),
            status: format!("signal {}", status.signal.unwrap_or(0)),
        }),
    }
}

/// A Debian package name, optionally `=version`.
fn valid_package(text: &str) -> bool {
    let (name, version) = match text.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (text, None),
    };
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    let version_ok = version.is_none_or(|v| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+:~-".contains(c))
    });
    name_ok && version_ok
}

/// The SHA-256 of the package list as built, one name per line.
fn packages_sha256(packages: &[String]) -> String {
    use sha2::Digest;
    let mut text = packages.join("\n");
    text.push('\n');
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
mod tests;
