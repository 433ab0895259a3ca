//! Crash injection, for the tests that kill the daemon at each step.

use super::*;

impl Lifecycle {
    /// Crashes at `step` (tests; see [`Crash`]).
    pub fn with_crash(mut self: Arc<Self>, crash: Crash) -> Arc<Self> {
        Arc::get_mut(&mut self)
            .expect("configured before use")
            .crash = Some(crash);
        self
    }

    pub(super) fn crash_point(&self, step: &str) {
        match &self.crash {
            Some(Crash::Kill(at)) if at == step => {
                tracing::warn!(step, "{CRASH_AT_VAR}: killing bangerd here");
                let _ = send_signal(std::process::id(), libc::SIGKILL);
                std::thread::sleep(Duration::from_secs(60));
            }
            Some(Crash::Park(at, parked)) if at == step => {
                parked.store(true, std::sync::atomic::Ordering::SeqCst);
                loop {
                    std::thread::park();
                }
            }
            _ => {}
        }
    }
}

/// Crash injection for the tests: with `BANGER_TEST_CRASH_AT=<step>`,
/// bangerd SIGKILLs itself when it reaches that step, as a `kill -9` or a
/// power cut there would. Steps: `create:reserved` (record written),
/// `create:provisioned` (disks made), `boot:launched` (VMM running, its PID
/// not yet stored; create and start), `stop:stopping` (state written, the
/// guest not yet asked), `set:applied` (the change made, not yet stored), `rename:applied`
/// (the DNS table answers for the new name, the store has the old),
/// `delete:moved` (directory moved aside, row still there),
/// `delete:forgotten` (row gone, files still there), `suspend:saving`
/// (state `suspending`, nothing saved yet), `suspend:saved` (the state whole,
/// the VMM not yet ended), `snapshot:saved` (the guest stopped for the
/// disk copies), `branch:saved` (a running source stopped for a branch
/// with memory, its state saved), `branch:copied` (the source's disks
/// staged, no VM yet), `branch:resumed` (the branch runs from the source's
/// memory, its own identity not yet given).
pub const CRASH_AT_VAR: &str = "BANGER_TEST_CRASH_AT";

/// What reaching the crash step does.
#[derive(Debug, Clone)]
pub enum Crash {
    /// SIGKILL this process (the daemon, from `BANGER_TEST_CRASH_AT`).
    Kill(String),
    /// Park the calling thread for good and raise the flag: in-process
    /// tests then start another lifecycle, as a restarted daemon would.
    Park(String, Arc<std::sync::atomic::AtomicBool>),
}
