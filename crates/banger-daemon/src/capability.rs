//! The capability pipeline: every host integration of a VM (storage,
//! network, NAT, DNS, vsock) is a [`Capability`]. The lifecycle calls each
//! phase on every capability in order (and undoes in reverse), so adding a
//! capability touches no lifecycle code.

use std::fmt;
use std::path::PathBuf;

use banger_host::config_drive::GuestFile;
use banger_vmm::LaunchSpec;

use crate::guest::GuestConfig;
use thiserror::Error;

use crate::store::VmRecord;

#[derive(Debug, Error)]
#[error("{capability}: {message}")]
pub struct CapabilityError {
    pub capability: &'static str,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl CapabilityError {
    pub fn new(capability: &'static str, message: impl Into<String>) -> Self {
        Self {
            capability,
            message: message.into(),
            source: None,
        }
    }

    pub fn caused(
        capability: &'static str,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            capability,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

pub type Result<T, E = CapabilityError> = std::result::Result<T, E>;

/// Where a VM's files live, for capabilities that own some.
#[derive(Debug, Clone)]
pub struct VmContext {
    pub dir: PathBuf,
    /// The base image's rootfs (seeds the work disk).
    pub base_rootfs: PathBuf,
}

/// One host integration. Every phase defaults to doing nothing.
pub trait Capability: Send + Sync + fmt::Debug {
    fn name(&self) -> &'static str;

    /// At create, under the allocation lock, before the row is written:
    /// pick identifiers (IP, CID, TAP name) avoiding `others`. No host effects.
    fn reserve(&self, _vm: &mut VmRecord, _others: &[VmRecord]) -> Result<()> {
        Ok(())
    }

    /// At create: make what lives as long as the VM (disk files).
    fn provision(&self, _vm: &VmRecord, _ctx: &VmContext) -> Result<()> {
        Ok(())
    }

    /// At delete, or to undo `provision`. Must tolerate partial state.
    fn deprovision(&self, _vm: &VmRecord, _ctx: &VmContext) -> Result<()> {
        Ok(())
    }

    /// Before each boot: make what the running VM needs (TAP, rules) and
    /// describe it to the VMM.
    fn attach(&self, _vm: &VmRecord, _spec: &mut LaunchSpec) -> Result<()> {
        Ok(())
    }

    /// A VM attached with its network held (`LaunchSpec::restore_as_another_vm`:
    /// a branch resumed from its source's memory) joins it, once the guest
    /// has its own address.
    fn connect(&self, _vm: &VmRecord) -> Result<()> {
        Ok(())
    }

    /// After the VMM exits, or to undo `attach`. Idempotent.
    fn detach(&self, _vm: &VmRecord) -> Result<()> {
        Ok(())
    }

    /// A setting changed (`vm set`). `running` says whether the VM's
    /// attachments are live.
    fn update(
        &self,
        _old: &VmRecord,
        _new: &VmRecord,
        _ctx: &VmContext,
        _running: bool,
    ) -> Result<()> {
        Ok(())
    }

    /// Adds what the guest needs from this capability to its boot config.
    fn guest_config(&self, _vm: &VmRecord, _config: &mut GuestConfig) {}

    /// Puts the rendered guest files where the guest will find them (the
    /// storage capability writes the config drive, before each boot).
    fn write_guest(&self, _vm: &VmRecord, _ctx: &VmContext, _files: &[GuestFile]) -> Result<()> {
        Ok(())
    }

    /// What the host needs for this capability on `vm` (preflight).
    fn checks(&self, _vm: &VmRecord) -> Vec<banger_proto::check::Check> {
        Vec::new()
    }

    /// At daemon start, given every VM and which run: restore what running
    /// VMs need and remove host resources that no VM owns.
    fn reconcile(&self, _vms: &[VmRecord], _running: &[&VmRecord]) -> Result<()> {
        Ok(())
    }
}

/// Runs a phase over capabilities in order; on failure undoes the finished
/// ones in reverse and returns the failing capability's error.
pub fn forward<'a, C: ?Sized + Capability + 'a>(
    capabilities: impl IntoIterator<Item = &'a C> + Clone,
    mut step: impl FnMut(&C) -> Result<()>,
    mut undo: impl FnMut(&C),
) -> Result<()> {
    let mut done: Vec<&C> = Vec::new();
    for capability in capabilities {
        if let Err(e) = step(capability) {
            for finished in done.into_iter().rev() {
                undo(finished);
            }
            return Err(e);
        }
        done.push(capability);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug)]
    struct Recorder {
        name: &'static str,
        fail: bool,
        log: std::sync::Arc<Mutex<Vec<String>>>,
    }

    impl Capability for Recorder {
        fn name(&self) -> &'static str {
            self.name
        }
        fn detach(&self, _vm: &VmRecord) -> Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("detach {}", self.name));
            Ok(())
        }
    }

    #[test]
    fn a_failure_undoes_the_finished_steps_in_reverse_at_each_stage() {
        for failing in 0..3 {
            let log = std::sync::Arc::new(Mutex::new(Vec::new()));
            let caps: Vec<Recorder> = ["storage", "network", "nat"]
                .iter()
                .enumerate()
                .map(|(i, name)| Recorder {
                    name,
                    fail: i == failing,
                    log: log.clone(),
                })
                .collect();
            let result = forward(
                caps.iter(),
                |c| {
                    c.log.lock().unwrap().push(format!("attach {}", c.name));
                    if c.fail {
                        Err(CapabilityError::new(c.name, "injected"))
                    } else {
                        Ok(())
                    }
                },
                |c| {
                    let _ = c.detach(&crate::store::tests::sample_vm("a", "b"));
                },
            );
            let err = result.unwrap_err();
            assert_eq!(err.capability, caps[failing].name);
            let mut expected: Vec<String> = caps[..=failing]
                .iter()
                .map(|c| format!("attach {}", c.name))
                .collect();
            expected.extend(
                caps[..failing]
                    .iter()
                    .rev()
                    .map(|c| format!("detach {}", c.name)),
            );
            assert_eq!(*log.lock().unwrap(), expected, "failing at {failing}");
        }
    }
}
