//! A branch resumed from its source's memory runs as its source: same
//! address, MAC, hostname, machine-id and SSH host keys. It comes up held
//! off the network (`identity.pending` in its directory: its TAP off the
//! bridge, and on QEMU its link down), and this gives it its own identity
//! through the agent, then connects it.
//!
//! A daemon killed before this finishes leaves the file: its next start
//! finishes the job for a branch that still runs (see `reconcile.rs`).

use super::*;

/// How long the agent has to answer after the restore: it listens again
/// once the vsock device is back.
const AGENT_WAIT: Duration = Duration::from_secs(30);
/// How long the guest's network has to take the new address once its link is up.
const ADDRESS_WAIT: Duration = Duration::from_secs(20);

/// The identity script's `$0`, by which tests recognise it.
pub(super) const SCRIPT_NAME: &str = "banger-identity";

/// Run as root in the guest: `name mac time [path text]...`. Files are
/// written whole (rename), and networkd is reloaded while the link is
/// down, so that when the carrier comes it configures the new address and
/// not the one it had loaded. Idempotent: a retry after a crash redoes it.
const SCRIPT: &str = r#"set -e
exec 2>&1
name=$1 mac=$2 now=$3
shift 3
while [ $# -gt 1 ]; do
  mkdir -p "$(dirname "$1")"
  printf '%s' "$2" > "$1.banger-new"
  mv -f "$1.banger-new" "$1"
  shift 2
done
hostname "$name"
date -u -s "$now" > /dev/null
if [ -n "$mac" ] && [ -e /sys/class/net/eth0 ]; then
  ip link set dev eth0 down
  ip link set dev eth0 address "$mac"
  ip -4 addr flush dev eth0
  ip link set dev eth0 up
  if command -v networkctl > /dev/null; then
    networkctl reload
    networkctl reconfigure eth0
  fi
fi
if [ -f /etc/machine-id ] && [ ! -L /etc/machine-id ]; then
  tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id.banger-new
  mv -f /etc/machine-id.banger-new /etc/machine-id
fi
if [ -d /etc/ssh ] && command -v ssh-keygen > /dev/null; then
  rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
  ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
  # A restart, not a reload: systemd waits for the new sshd (Type=notify),
  # where a reload's re-exec left a moment with port 22 closed right after
  # the branch returned. Sessions keep their own processes (KillMode=process).
  systemctl try-restart ssh.service > /dev/null 2>&1 || true
fi
"#;

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("{0} has no vsock agent to give it its identity through")]
    NoAgent(String),
    #[error("the guest agent did not answer")]
    Agent(#[source] banger_host::agent::AgentError),
    #[error("the guest could not take its identity (exit {code}): {output}")]
    Refused { code: i32, output: String },
    #[error("connecting its network link")]
    Link(#[source] banger_vmm::VmmError),
    #[error("the guest did not take its address {address} within {seconds}s of its link coming up")]
    NoAddress {
        address: std::net::Ipv4Addr,
        seconds: u64,
    },
}

impl Lifecycle {
    /// Gives a branch resumed from memory its own identity, then connects
    /// its network; the pending marker goes last.
    pub(super) fn take_own_identity(&self, record: &VmRecord) -> Result<()> {
        let step = |e: IdentityError| {
            LifecycleError::step("branching", &record.name, "giving it its own identity", e)
        };
        let dir = self.vm_dir(&record.id);
        let files = banger_host::VmDir::new(&dir);
        let started = std::time::Instant::now();
        let vsock = record
            .vsock_path
            .clone()
            .ok_or_else(|| step(IdentityError::NoAgent(record.name.to_string())))?;
        let mac = record
            .guest_ip
            .map(banger_host::net::guest_mac)
            .unwrap_or_default();
        let guest_files = self.guest_config(record).identity_files();
        // Made at each try, so that the clock it sets is the try's.
        let argv = || {
            let mut argv = vec![
                "sh".to_owned(),
                "-c".to_owned(),
                SCRIPT.to_owned(),
                SCRIPT_NAME.to_owned(),
                record.name.to_string(),
                mac.clone(),
                crate::guest_agent::host_clock_arg(),
            ];
            for (path, text) in &guest_files {
                argv.extend([path.clone(), text.clone()]);
            }
            argv
        };
        let (output, status) = self.agent_when_up(&vsock, argv).map_err(step)?;
        if status.shell_code() != 0 {
            return Err(step(IdentityError::Refused {
                code: status.shell_code(),
                output: String::from_utf8_lossy(&output).trim().to_owned(),
            }));
        }
        for c in &self.capabilities {
            c.connect(record)
                .map_err(|e| LifecycleError::capability("branching", &record.name, e))?;
        }
        self.backend(record.vmm)?
            .set_link(&dir, true)
            .map_err(|e| step(IdentityError::Link(e)))?;
        if let Some(address) = record.guest_ip {
            self.await_address(&vsock, address).map_err(step)?;
        }
        if let Err(e) = std::fs::remove_file(files.identity_pending())
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(LifecycleError::step(
                "branching",
                &record.name,
                "recording its identity",
                e,
            ));
        }
        tracing::info!(vm = %record.name, secs = started.elapsed().as_secs_f64(), "branch took its own identity");
        Ok(())
    }

    /// After a daemon restart, for a branch adopted while it still held its
    /// source's identity: finished in the background; a branch that cannot
    /// take its identity is deleted, as the branch command would have.
    pub(super) fn finish_identity_later(self: &Arc<Self>, record: &VmRecord) {
        let this = self.clone();
        let id = record.id.to_string();
        std::thread::spawn(move || {
            let taken = this.locks.with(&id, || {
                let record = this.record(&id)?;
                this.take_own_identity(&record)
            });
            if let Err(err) = taken {
                tracing::error!(vm = %id, error = %error_text(&err), "an interrupted branch could not take its own identity; deleting it");
                let _ = this.kill(&id, libc::SIGKILL);
                if let Err(e) = this.delete(&id) {
                    tracing::error!(vm = %id, error = %error_text(&e), "deleting an interrupted branch");
                }
            }
        });
    }

    /// A branch that stopped before it took its identity boots cold from
    /// disks that hold its source's: they forget it first (offline, which
    /// is safe now that no saved memory refers to them).
    pub(super) fn forget_pending_identity(&self, record: &VmRecord) -> Result<()> {
        let files = banger_host::VmDir::new(self.vm_dir(&record.id));
        if !files.identity_pending().exists() {
            return Ok(());
        }
        self.disks.forget_identity(&files.overlay()).map_err(|e| {
            LifecycleError::step("starting", &record.name, "giving it its own identity", e)
        })?;
        std::fs::remove_file(files.identity_pending()).map_err(|e| {
            LifecycleError::step("starting", &record.name, "recording its identity", e)
        })
    }

    /// The command `argv` makes, through the agent once it answers.
    fn agent_when_up(
        &self,
        vsock: &std::path::Path,
        argv: impl Fn() -> Vec<String>,
    ) -> Result<(Vec<u8>, banger_proto::agent::ExitStatus), IdentityError> {
        crate::guest_agent::run_when_up(&*self.agent, vsock, argv, AGENT_WAIT, AGENT_WAIT)
            .map_err(IdentityError::Agent)
    }

    /// Waits until eth0 holds `address` (networkd configures it once the
    /// carrier is back).
    fn await_address(
        &self,
        vsock: &std::path::Path,
        address: std::net::Ipv4Addr,
    ) -> Result<(), IdentityError> {
        let deadline = std::time::Instant::now() + ADDRESS_WAIT;
        let wanted = format!("inet {address}/");
        let argv = || {
            ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]
                .map(str::to_owned)
                .to_vec()
        };
        loop {
            let (output, _) = self.agent_when_up(vsock, argv)?;
            if String::from_utf8_lossy(&output).contains(&wanted) {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(IdentityError::NoAddress {
                    address,
                    seconds: ADDRESS_WAIT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
