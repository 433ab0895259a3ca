//! Where VMM exits are announced. Each running VMM has a watcher thread that
//! posts its exit here (then records it on the VM); a stop waiting for the
//! guest to power off, or a kill waiting for the record, waits here.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use banger_vmm::process::ExitReason;

#[derive(Debug, Clone)]
struct Entry {
    reason: Option<ExitReason>,
    handled: bool,
}

#[derive(Debug, Default)]
pub struct ExitBoard {
    entries: Mutex<HashMap<u32, Entry>>,
    changed: Condvar,
}

impl ExitBoard {
    /// A new VMM process: forget anything an earlier process with this PID left.
    pub fn register(&self, pid: u32) {
        self.lock().insert(
            pid,
            Entry {
                reason: None,
                handled: false,
            },
        );
    }

    pub fn post(&self, pid: u32, reason: ExitReason) {
        self.lock()
            .entry(pid)
            .or_insert(Entry {
                reason: None,
                handled: false,
            })
            .reason = Some(reason);
        self.changed.notify_all();
    }

    /// The exit has been recorded on the VM (or found already recorded).
    pub fn mark_handled(&self, pid: u32) {
        if let Some(entry) = self.lock().get_mut(&pid) {
            entry.handled = true;
        }
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for `pid` to exit.
    pub fn wait_exit(&self, pid: u32, timeout: Duration) -> Option<ExitReason> {
        self.wait_for(pid, timeout, |e| e.reason.clone())
    }

    /// Waits up to `timeout` until `pid`'s exit has been recorded on its VM.
    pub fn wait_handled(&self, pid: u32, timeout: Duration) -> bool {
        self.wait_for(pid, timeout, |e| e.handled.then_some(()))
            .is_some()
    }

    fn wait_for<T>(
        &self,
        pid: u32,
        timeout: Duration,
        ready: impl Fn(&Entry) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut entries = self.lock();
        loop {
            if let Some(value) = entries.get(&pid).and_then(&ready) {
                return Some(value);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            entries = self
                .changed
                .wait_timeout(entries, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn waiters_wake_on_post_and_time_out_otherwise() {
        let board = Arc::new(ExitBoard::default());
        board.register(42);
        assert_eq!(board.wait_exit(42, Duration::from_millis(20)), None);
        let poster = {
            let board = board.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                board.post(42, ExitReason::Clean);
                board.mark_handled(42);
            })
        };
        assert_eq!(
            board.wait_exit(42, Duration::from_secs(5)),
            Some(ExitReason::Clean)
        );
        assert!(board.wait_handled(42, Duration::from_secs(5)));
        poster.join().unwrap();
        board.register(42);
        assert!(
            !board.wait_handled(42, Duration::from_millis(10)),
            "a new process starts fresh"
        );
    }
}
