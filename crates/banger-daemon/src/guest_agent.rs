//! The daemon's way into a running guest: a command through the guest's
//! agent over vsock. A trait, so that lifecycle tests record what a guest
//! would be asked instead of running it on the host.

use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
#[cfg(test)]
use std::sync::Mutex;
use std::time::Duration;

use banger_host::agent::AgentError;
use banger_proto::agent::ExitStatus;

pub trait GuestAgent: Send + Sync + std::fmt::Debug {
    /// Runs `argv` in the guest behind `vsock` to completion: its stdout
    /// and its status.
    fn run(
        &self,
        vsock: &Path,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<(Vec<u8>, ExitStatus), AgentError>;
}

/// The command `argv` makes, through `agent`, retried while the agent
/// cannot be reached yet (after a restore it listens again once the vsock
/// device is back), each try allowed `per_try`, until `wait` has passed.
/// `argv` is made again for each try, so a time in it is the try's.
pub fn run_when_up(
    agent: &dyn GuestAgent,
    vsock: &Path,
    argv: impl Fn() -> Vec<String>,
    per_try: Duration,
    wait: Duration,
) -> Result<(Vec<u8>, ExitStatus), AgentError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let args = argv();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match agent.run(vsock, &args, per_try) {
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(error = %banger_proto::rpc::error_text(&e), "agent not up yet");
                std::thread::sleep(Duration::from_millis(200));
            }
            answer => return answer,
        }
    }
}

/// The host's clock as `date -s` takes it: `@<seconds>.<millis>`.
pub fn host_clock_arg() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("@{}.{:03}", now.as_secs(), now.subsec_millis())
}

/// The real agent, over the VM's vsock socket.
#[derive(Debug, Default)]
pub struct VsockAgent;

impl GuestAgent for VsockAgent {
    fn run(
        &self,
        vsock: &Path,
        argv: &[&str],
        timeout: Duration,
    ) -> Result<(Vec<u8>, ExitStatus), AgentError> {
        banger_host::agent::run(vsock, argv, timeout)
    }
}

#[cfg(test)]
/// What a [`RecordingAgent`] answers a command sent to a vsock socket:
/// its stdout and exit code.
pub type Responder = Box<dyn Fn(&Path, &[String]) -> (Vec<u8>, i32) + Send + Sync>;

#[cfg(test)]
/// Records every command and answers as told (by default: no output,
/// exit 0), running nothing.
#[derive(Default)]
pub struct RecordingAgent {
    calls: Mutex<Vec<(PathBuf, Vec<String>)>>,
    responder: Mutex<Option<Responder>>,
}

#[cfg(test)]
impl std::fmt::Debug for RecordingAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingAgent")
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl RecordingAgent {
    /// Every command from now on is answered by `responder`.
    pub fn answer_with(&self, responder: Responder) {
        *self.responder.lock().unwrap_or_else(|p| p.into_inner()) = Some(responder);
    }

    /// Every command asked, with the vsock socket it went to.
    pub fn calls(&self) -> Vec<(PathBuf, Vec<String>)> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
impl GuestAgent for RecordingAgent {
    fn run(
        &self,
        vsock: &Path,
        argv: &[&str],
        _timeout: Duration,
    ) -> Result<(Vec<u8>, ExitStatus), AgentError> {
        let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
        let (stdout, code) = match &*self.responder.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(respond) => respond(vsock, &argv),
            None => (Vec::new(), 0),
        };
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((vsock.to_path_buf(), argv));
        Ok((
            stdout,
            ExitStatus {
                code: Some(code),
                signal: None,
            },
        ))
    }
}
