//! What the TUI asks of the world, as typed calls: the daemon's RPC, the
//! console log beside a VM, and SSH. The screen's logic sees only
//! [`Daemon`], so tests drive it with a recording fake.

use std::path::PathBuf;

use banger_proto::api::method;
use banger_proto::check::Check;
use banger_proto::{
    BatchResult, CreateVmParams, DaemonStatus, Image, ImageDetail, ImageRef, KillParams,
    RenameVmParams, SetVmParams, Vm, VmName, VmRef, VmRefs, VmStats, VmSummary,
};

use super::super::commands::Context;

/// One request, named after the RPC method it becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    List,
    Show(String),
    Stats(String),
    Create(CreateVmParams),
    Start(Vec<String>),
    Stop(Vec<String>),
    Pause(Vec<String>),
    Unpause(Vec<String>),
    Suspend(Vec<String>),
    Restart(Vec<String>),
    Delete(Vec<String>),
    Kill(KillParams),
    Set(SetVmParams),
    Rename(RenameVmParams),
    SuggestName,
    Images,
    ImageShow(String),
    ImageDelete(String),
    Doctor,
    Status,
    /// The last lines of a VM's console log, read on this host.
    Console {
        vm: String,
        dir: PathBuf,
    },
}

impl Call {
    /// The polls the screen repeats on its own; their failures are shown
    /// once, not stacked.
    pub fn is_poll(&self) -> bool {
        matches!(
            self,
            Call::List | Call::Show(_) | Call::Stats(_) | Call::Console { .. }
        )
    }
}

/// A call's answer.
#[derive(Debug, Clone)]
pub enum Reply {
    Vms(Vec<VmSummary>),
    Vm(Box<Vm>),
    Stats(VmStats),
    Batch(BatchResult),
    Name(VmName),
    Images(Vec<Image>),
    Image(Box<ImageDetail>),
    Checks(Vec<Check>),
    Status(Box<DaemonStatus>),
    Console(Vec<String>),
}

/// A failed call: the message and its causes, outermost first, as the
/// daemon or the client gave them.
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    pub message: String,
    pub causes: Vec<String>,
}

impl CallError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            causes: Vec::new(),
        }
    }

    /// Every cause of an error chain, RPC errors' remote causes included.
    pub fn from_chain(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut causes = Vec::new();
        let mut source = err.source();
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        let message = match find_rpc(err) {
            Some(rpc) => {
                causes.extend(rpc.data.iter().flat_map(|d| d.causes.iter().cloned()));
                rpc.message.clone()
            }
            None => err.to_string(),
        };
        Self { message, causes }
    }

    /// `message: cause: cause`, on one line for the status bar.
    pub fn one_line(&self) -> String {
        std::iter::once(&self.message)
            .chain(&self.causes)
            .map(|s| s.replace('\n', " "))
            .collect::<Vec<_>>()
            .join(": ")
    }
}

fn find_rpc<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a banger_proto::RpcError> {
    if let Some(rpc) = err.downcast_ref::<banger_proto::RpcError>() {
        return Some(rpc);
    }
    match err.downcast_ref::<crate::client::ClientError>() {
        Some(crate::client::ClientError::Rpc(rpc)) => Some(rpc),
        _ => None,
    }
}

/// The TUI's whole view of the world.
pub trait Daemon: Send + Sync + 'static {
    fn call(&self, call: &Call) -> Result<Reply, CallError>;
    /// Runs `banger vm ssh` on the terminal (the TUI has given it up) and
    /// returns the reminder line printed after it.
    fn ssh(&self, vm: &str) -> Result<String, CallError>;
}

/// The real world: bangerd over its socket, started on demand.
#[derive(Debug)]
pub struct CliDaemon {
    pub ctx: Context,
}

impl CliDaemon {
    fn rpc(&self, call: &Call) -> anyhow::Result<Reply> {
        let mut client = self.ctx.client()?;
        let refs = |vms: &Vec<String>| VmRefs { vms: vms.clone() };
        Ok(match call {
            Call::List => Reply::Vms(client.call::<method::VmList>(())?),
            Call::Show(vm) => Reply::Vm(Box::new(
                client.call::<method::VmShow>(VmRef { vm: vm.clone() })?,
            )),
            Call::Stats(vm) => {
                Reply::Stats(client.call::<method::VmStats>(VmRef { vm: vm.clone() })?)
            }
            Call::Create(params) => {
                Reply::Vm(Box::new(client.call::<method::VmCreate>(params.clone())?))
            }
            Call::Start(vms) => Reply::Batch(client.call::<method::VmStart>(refs(vms))?),
            Call::Stop(vms) => {
                Reply::Batch(client.call::<method::VmStop>(banger_proto::StopParams {
                    vms: vms.clone(),
                    force: false,
                })?)
            }
            Call::Restart(vms) => Reply::Batch(client.call::<method::VmRestart>(refs(vms))?),
            Call::Pause(vms) => Reply::Batch(client.call::<method::VmPause>(refs(vms))?),
            Call::Unpause(vms) => Reply::Batch(client.call::<method::VmUnpause>(refs(vms))?),
            Call::Suspend(vms) => Reply::Batch(client.call::<method::VmSuspend>(refs(vms))?),
            Call::Delete(vms) => Reply::Batch(client.call::<method::VmDelete>(refs(vms))?),
            Call::Kill(params) => Reply::Batch(client.call::<method::VmKill>(params.clone())?),
            Call::Set(params) => Reply::Batch(client.call::<method::VmSet>(params.clone())?),
            Call::Rename(params) => {
                Reply::Vm(Box::new(client.call::<method::VmRename>(params.clone())?))
            }
            Call::SuggestName => Reply::Name(client.call::<method::VmSuggestName>(())?),
            Call::Images => Reply::Images(client.call::<method::ImageList>(())?),
            Call::ImageShow(image) => {
                Reply::Image(Box::new(client.call::<method::ImageShow>(ImageRef {
                    image: image.clone(),
                })?))
            }
            Call::ImageDelete(image) => {
                client.call::<method::ImageDelete>(ImageRef {
                    image: image.clone(),
                })?;
                Reply::Images(client.call::<method::ImageList>(())?)
            }
            Call::Doctor => Reply::Checks(client.call::<method::Doctor>(())?),
            Call::Status => Reply::Status(Box::new(client.call::<method::DaemonStatus>(())?)),
            Call::Console { dir, .. } => {
                Reply::Console(console_tail(&banger_host::VmDir::new(dir).console_log()))
            }
        })
    }
}

/// Console lines kept for the detail pane.
pub const CONSOLE_LINES: usize = 200;

/// A console line without its terminal escapes and control characters,
/// which would move the TUI's cursor.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters, then a final byte in @..~.
                if chars.clone().next() == Some('[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push_str("    "),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// The last lines of a console log, reading only its last 64 KiB: the
/// pane polls it every second and a long-lived guest's log grows large.
fn console_tail(path: &std::path::Path) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 64 << 10;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    if file
        .seek(SeekFrom::Start(len.saturating_sub(WINDOW)))
        .is_err()
        || file.take(WINDOW).read_to_end(&mut bytes).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text
        .lines()
        .skip(usize::from(len > WINDOW))
        .map(printable)
        .collect();
    let keep = lines.len().saturating_sub(CONSOLE_LINES);
    lines.drain(..keep);
    lines
}

impl Daemon for CliDaemon {
    fn call(&self, call: &Call) -> Result<Reply, CallError> {
        self.rpc(call)
            .map_err(|e| CallError::from_chain(e.as_ref() as &(dyn std::error::Error + 'static)))
    }

    fn ssh(&self, vm: &str) -> Result<String, CallError> {
        let args = crate::args::SshArgs {
            vm: vm.to_owned(),
            command: Vec::new(),
        };
        crate::commands::ssh::session(args, &self.ctx)
            .map(|(_, reminder)| reminder)
            .map_err(|e| CallError::from_chain(e.as_ref() as &(dyn std::error::Error + 'static)))
    }
}
