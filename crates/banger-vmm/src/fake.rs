//! A VMM for tests whose "VM" is a real, harmless process: a shell that
//! sleeps until told to stop. Exit detection, signals, adoption after a
//! daemon restart and leak checks all work on it exactly as on Firecracker.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::process::{detach, send_signal};
use crate::{LaunchSpec, Launched, Prepared, Result, Vmm, VmmError};

/// On SIGTERM (our stand-in for Ctrl-Alt-Del) the "guest" powers off
/// cleanly. It touches `$1` once the trap is set, as Firecracker opens its
/// API socket once it can be configured. Short sleeps: a shell ended by
/// SIGKILL (a suspend, a rollback) runs no trap, and a long sleep of its
/// would outlive it for good (test runs left hundreds behind).
const GUEST_SCRIPT: &str = "trap 'kill $sleeper 2>/dev/null; exit 0' TERM; : > \"$1\"; \
    while :; do sleep 1 & sleeper=$!; wait $sleeper; done";

/// A VMM process that ignores SIGTERM, as a wedged one would: only SIGKILL
/// ends it. Short sleeps, so nothing outlives the killed shell for long.
const STUBBORN_SCRIPT: &str = "trap '' TERM; : > \"$1\"; while :; do sleep 1; done";

pub const READY_FILE: &str = "fake-vmm.ready";

/// Marks a fake VMM's process so `responds` can tell it from a recycled PID.
const MARKER: &str = "banger-fake-vmm";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeOp {
    Prepare,
    Launch,
    Shutdown,
    Pause,
    /// `save_state` fails after writing part of the state.
    Save,
}

/// The fake's saved state: one file, holding the VMM's PID.
pub const STATE_FILE: &str = "fake-state";

#[derive(Debug, Default)]
pub struct FakeVmm {
    fail: Mutex<HashSet<FakeOp>>,
    ignore_shutdown: AtomicBool,
    ignore_sigterm: AtomicBool,
    io_error: AtomicBool,
    /// Refuses restoring a state as another VM, as Firecracker does.
    restores_in_place_only: AtomicBool,
    /// Every `set_paused`: the VM directory and the state asked for.
    pauses: Mutex<Vec<(PathBuf, bool)>>,
    /// Every VM directory whose guest `resume_after_save` let run on.
    resumed_after_save: Mutex<Vec<PathBuf>>,
    launches: Mutex<Vec<LaunchSpec>>,
    /// Every `set_link`: the VM directory and whether the link went up.
    links: Mutex<Vec<(PathBuf, bool)>>,
    prepared: Mutex<Vec<u32>>,
    checks: Mutex<Vec<banger_proto::check::Check>>,
    /// The backend it poses as; Firecracker unless set.
    kind: Option<banger_proto::Backend>,
}

impl FakeVmm {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fake that poses as `kind`, for a daemon with two backends.
    pub fn posing_as(kind: banger_proto::Backend) -> Self {
        Self {
            kind: Some(kind),
            ..Self::default()
        }
    }

    pub fn fail_on(&self, op: FakeOp) {
        self.fail.lock().expect("fail lock").insert(op);
    }

    pub fn clear_failures(&self) {
        self.fail.lock().expect("fail lock").clear();
    }

    /// The guest ignores shutdown requests, as a hung guest would.
    pub fn ignore_shutdown(&self, ignore: bool) {
        self.ignore_shutdown.store(ignore, Ordering::SeqCst);
    }

    /// Every guest reports itself paused on an I/O error, as QEMU's does
    /// when the host disk is full.
    pub fn pause_on_io_error(&self, paused: bool) {
        self.io_error.store(paused, Ordering::SeqCst);
    }

    /// A state restores only as the VM that saved it, as Firecracker's.
    pub fn restore_in_place_only(&self) {
        self.restores_in_place_only.store(true, Ordering::SeqCst);
    }

    /// VMM processes started from now on ignore SIGTERM.
    pub fn ignore_sigterm(&self, ignore: bool) {
        self.ignore_sigterm.store(ignore, Ordering::SeqCst);
    }

    /// What `checks` reports, for preflight tests.
    pub fn set_checks(&self, checks: Vec<banger_proto::check::Check>) {
        *self.checks.lock().expect("checks lock") = checks;
    }

    /// The PID of every process `prepare` started, launched or not.
    pub fn prepared(&self) -> Vec<u32> {
        self.prepared.lock().expect("prepared lock").clone()
    }

    /// Every pause (`true`) and resume asked of this VMM, in order.
    pub fn pauses(&self) -> Vec<(PathBuf, bool)> {
        self.pauses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The VM directories whose guests ran on after a save, in order.
    pub fn resumed_after_save(&self) -> Vec<PathBuf> {
        self.resumed_after_save
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every network link switched, in order.
    pub fn links(&self) -> Vec<(PathBuf, bool)> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn launches(&self) -> Vec<LaunchSpec> {
        self.launches.lock().expect("launches lock").clone()
    }

    fn check(&self, op: FakeOp) -> Result<()> {
        if self.fail.lock().expect("fail lock").contains(&op) {
            Err(VmmError::Injected(format!("{op:?}")))
        } else {
            Ok(())
        }
    }
}

impl Vmm for FakeVmm {
    fn kind(&self) -> banger_proto::Backend {
        self.kind.unwrap_or(banger_proto::Backend::Firecracker)
    }

    /// Starts the "guest" early, as Firecracker's process is.
    fn prepare(&self, vm_dir: &Path, vm_id: &str, _log_path: &Path) -> Result<Prepared> {
        self.check(FakeOp::Prepare)?;
        let ready = vm_dir.join(READY_FILE);
        let _ = std::fs::remove_file(&ready);
        let script = if self.ignore_sigterm.load(Ordering::SeqCst) {
            STUBBORN_SCRIPT
        } else {
            GUEST_SCRIPT
        };
        let mut command = Command::new("sh");
        command
            .args(["-c", script, MARKER])
            .arg(&ready)
            .arg(vm_id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        detach(&mut command);
        let child = crate::process::spawn_recorded(
            &mut command,
            &banger_host::VmDir::new(vm_dir).vmm_pid(),
        )
        .map_err(|e| VmmError::Spawn("sh".into(), e))?;
        self.prepared
            .lock()
            .expect("prepared lock")
            .push(child.id());
        Ok(Prepared::started(child, vec![ready]))
    }

    fn launch_prepared(&self, spec: &LaunchSpec, prepared: Prepared) -> Result<Launched> {
        self.check(FakeOp::Launch)?;
        let mut child =
            prepared.into_child_or(|| self.prepare(&spec.vm_dir, &spec.vm_id, &spec.log_path))?;
        if let Some(state) = &spec.restore {
            // Consumed before the "guest" runs, as the real backends do.
            if !state.join(STATE_FILE).is_file() {
                crate::process::kill_child(&mut child);
                return Err(VmmError::StateMissing(state.clone(), STATE_FILE));
            }
            if let Err(e) = std::fs::remove_dir_all(state) {
                crate::process::kill_child(&mut child);
                return Err(VmmError::StateWrite(state.clone(), e));
            }
        }
        let ready = spec.vm_dir.join(READY_FILE);
        let ready_wait = std::time::Duration::from_secs(5);
        if let Err(err) = crate::process::await_ready(
            &mut child,
            &ready,
            Path::new("sh"),
            &spec.log_path,
            ready_wait,
        ) {
            crate::process::kill_child(&mut child);
            return Err(err);
        }
        self.launches
            .lock()
            .expect("launches lock")
            .push(spec.clone());
        Ok(crate::process::launched(child))
    }

    fn checks(&self) -> Vec<banger_proto::check::Check> {
        self.checks.lock().expect("checks lock").clone()
    }

    fn request_shutdown(&self, _vm_dir: &Path, pid: u32) -> Result<()> {
        self.check(FakeOp::Shutdown)?;
        if !self.ignore_shutdown.load(Ordering::SeqCst) {
            let _ = send_signal(pid, libc::SIGTERM);
        }
        Ok(())
    }

    fn set_paused(&self, vm_dir: &Path, paused: bool) -> Result<()> {
        self.check(FakeOp::Pause)?;
        self.pauses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((vm_dir.to_path_buf(), paused));
        Ok(())
    }

    fn save_state(&self, vm_dir: &Path, state_dir: &Path) -> Result<()> {
        let file = state_dir.join(STATE_FILE);
        let write = |content: &str| {
            std::fs::write(&file, content).map_err(|e| VmmError::StateWrite(state_dir.into(), e))
        };
        write("partial")?;
        self.check(FakeOp::Save)?;
        write(&vm_dir.display().to_string())
    }

    fn resume_after_save(&self, vm_dir: &Path) -> Result<()> {
        self.resumed_after_save
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(vm_dir.to_path_buf());
        Ok(())
    }

    fn restores_as_another_vm(&self) -> bool {
        !self.restores_in_place_only.load(Ordering::SeqCst)
    }

    fn set_link(&self, vm_dir: &Path, up: bool) -> Result<()> {
        self.links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((vm_dir.to_path_buf(), up));
        Ok(())
    }

    fn io_error_pause(&self, _vm_dir: &Path) -> Option<bool> {
        Some(self.io_error.load(Ordering::SeqCst))
    }

    fn responds(&self, _vm_dir: &Path, pid: u32) -> bool {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == MARKER.as_bytes())
        })
    }
}
