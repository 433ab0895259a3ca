//! One supervisor for every VMM process and helper, instead of a thread
//! per process: a single thread runs a small tokio runtime with one task
//! per process, each awaiting its pidfd. A child is reaped for its exit
//! status; an adopted process (not our child, after a daemon restart) ends
//! with [`ExitReason::Unknown`], the same way, through the same callback.

use std::process::Child;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use banger_host::procfs;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use crate::process::{ExitReason, pidfd_open};

/// What to call with a process's exit. It may block (it takes the VM's
/// lock and writes the store), so it runs on the supervisor's blocking
/// pool, never on its event loop.
pub type OnExit = Box<dyn FnOnce(ExitReason) + Send>;

struct Watch {
    pid: u32,
    /// Tells a recycled PID from the process when no pidfd can be had.
    start_time: Option<u64>,
    child: Option<Child>,
    on_exit: OnExit,
}

#[derive(Debug, Clone)]
pub struct Supervisor {
    watches: mpsc::UnboundedSender<Watch>,
}

impl Supervisor {
    /// Starts the supervisor's thread. Most callers want [`Supervisor::shared`].
    pub fn start() -> std::io::Result<Self> {
        let (watches, mut incoming) = mpsc::unbounded_channel::<Watch>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name("vmm-exit")
            .build()?;
        std::thread::Builder::new()
            .name("vmm-supervisor".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some(watch) = incoming.recv().await {
                        tokio::spawn(watch.until_exit());
                    }
                });
            })?;
        Ok(Self { watches })
    }

    /// The process-wide supervisor, started on first use.
    pub fn shared() -> Arc<Self> {
        static SHARED: OnceLock<Arc<Supervisor>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(Self::start().expect("starting the VMM supervisor thread")))
            .clone()
    }

    /// Calls `on_exit` once `pid` exits. With its `Child`, the exit status
    /// is read (and the zombie reaped); without, it is unknown.
    pub fn watch(
        &self,
        pid: u32,
        start_time: Option<u64>,
        child: Option<Child>,
        on_exit: impl FnOnce(ExitReason) + Send + 'static,
    ) {
        let watch = Watch {
            pid,
            start_time,
            child,
            on_exit: Box::new(on_exit),
        };
        if let Err(mpsc::error::SendError(watch)) = self.watches.send(watch) {
            // The supervisor thread is gone (it never exits on its own):
            // wait on a thread of this watch's own rather than lose the exit.
            tracing::error!(
                pid,
                "VMM supervisor stopped; watching on a thread of its own"
            );
            std::thread::spawn(move || {
                let reason = wait_blocking(watch.pid, watch.start_time, watch.child);
                (watch.on_exit)(reason);
            });
        }
    }

    /// Reaps `child` when it exits (a helper process nobody waits for).
    pub fn reap(&self, child: Child) {
        let pid = child.id();
        self.watch(pid, None, Some(child), |_| {});
    }
}

impl Watch {
    async fn until_exit(self) {
        let Watch {
            pid,
            start_time,
            child,
            on_exit,
        } = self;
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open, and refers
        // to the same pidfd, until the AsyncFd drops.
        let pidfd = pidfd_open(pid)
            .and_then(|fd| unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok());
        match pidfd {
            // A pidfd turns readable when its process exits.
            Some(fd) => {
                let _ = fd.readable().await;
            }
            None => {
                while procfs::is_running(pid, start_time) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        let _ = tokio::task::spawn_blocking(move || on_exit(reap(child))).await;
    }
}

/// The exit status of a child that has exited; unknown for others.
fn reap(child: Option<Child>) -> ExitReason {
    match child {
        Some(mut child) => child
            .wait()
            .map_or(ExitReason::Unknown, ExitReason::from_status),
        None => ExitReason::Unknown,
    }
}

/// The fallback when the supervisor is gone: block this thread.
fn wait_blocking(pid: u32, start_time: Option<u64>, child: Option<Child>) -> ExitReason {
    match child {
        Some(child) => crate::process::wait_child(child),
        None => crate::process::wait_foreign(pid, start_time),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::mpsc as std_mpsc;

    use super::*;

    fn exits_of(supervisor: &Supervisor, commands: &[&str]) -> Vec<(u32, ExitReason)> {
        let (tx, rx) = std_mpsc::channel();
        let mut pids = Vec::new();
        for script in commands {
            let child = Command::new("sh").args(["-c", script]).spawn().unwrap();
            let pid = child.id();
            pids.push(pid);
            let tx = tx.clone();
            supervisor.watch(pid, None, Some(child), move |reason| {
                tx.send((pid, reason)).unwrap();
            });
        }
        let mut exits: Vec<(u32, ExitReason)> = (0..commands.len())
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        exits.sort_by_key(|(pid, _)| pids.iter().position(|p| p == pid));
        exits
    }

    #[test]
    fn one_thread_reports_every_child_s_exit_with_its_status() {
        let supervisor = Supervisor::start().unwrap();
        let exits = exits_of(
            &supervisor,
            &["exit 0", "exit 3", "kill -TERM $$", "sleep 0.3; exit 0"],
        );
        let reasons: Vec<_> = exits.into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            reasons,
            [
                ExitReason::Clean,
                ExitReason::Code(3),
                ExitReason::Signal(libc::SIGTERM),
                ExitReason::Clean
            ]
        );
    }

    #[test]
    fn a_process_that_is_not_our_child_ends_with_an_unknown_status() {
        let supervisor = Supervisor::start().unwrap();
        // Not passing the Child makes it "foreign" to the supervisor; this
        // test keeps the Child to reap it after.
        let mut child = Command::new("sleep").arg("0.2").spawn().unwrap();
        let (tx, rx) = std_mpsc::channel();
        supervisor.watch(child.id(), None, None, move |reason| {
            tx.send(reason).unwrap();
        });
        // A pidfd turns readable at exit even before the zombie is reaped.
        let reason = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(reason, ExitReason::Unknown);
        child.wait().unwrap();
    }

    #[test]
    fn an_exit_callback_that_blocks_does_not_hold_up_the_others() {
        let supervisor = Supervisor::start().unwrap();
        let (tx, rx) = std_mpsc::channel();
        let slow = Command::new("true").spawn().unwrap();
        let slow_tx = tx.clone();
        supervisor.watch(slow.id(), None, Some(slow), move |_| {
            std::thread::sleep(Duration::from_secs(3));
            slow_tx.send("slow").unwrap();
        });
        std::thread::sleep(Duration::from_millis(100));
        let quick = Command::new("true").spawn().unwrap();
        supervisor.watch(quick.id(), None, Some(quick), move |_| {
            tx.send("quick").unwrap();
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(2)).unwrap(), "quick");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "slow");
    }
}
