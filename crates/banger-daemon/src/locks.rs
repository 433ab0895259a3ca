//! One lock per VM: two actions on the same VM never interleave, and actions
//! on different VMs never wait for each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct VmLocks {
    map: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl VmLocks {
    /// Runs `f` holding the lock of VM `id`.
    pub fn with<R>(&self, id: &str, f: impl FnOnce() -> R) -> R {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id.to_owned()).or_default().clone()
        };
        // A panic inside an action leaves nothing half-held: the store
        // transaction rolled back, so the poison carries no meaning.
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        f()
    }

    /// Drops the lock of a deleted VM.
    pub fn forget(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn same_vm_serializes_and_different_vms_do_not_wait() {
        let locks = Arc::new(VmLocks::default());
        let started = Instant::now();
        let slow = |locks: Arc<VmLocks>, id: &'static str| {
            std::thread::spawn(move || {
                locks.with(id, || std::thread::sleep(Duration::from_millis(200)))
            })
        };
        let a = slow(locks.clone(), "a");
        let b = slow(locks.clone(), "b");
        a.join().unwrap();
        b.join().unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(380),
            "different VMs ran in parallel"
        );
        let started = Instant::now();
        let a1 = slow(locks.clone(), "a");
        let a2 = slow(locks.clone(), "a");
        a1.join().unwrap();
        a2.join().unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "the same VM ran one at a time"
        );
    }
}
