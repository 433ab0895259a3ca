//! Root's authorized keys in the guest: the public half of the key banger
//! logs in with (the bundle's `id_ed25519`, or `ssh_key_path`).

use crate::capability::Capability;
use crate::guest::GuestConfig;
use crate::store::VmRecord;

#[derive(Debug)]
pub struct SshCapability {
    public_keys: Vec<String>,
}

impl SshCapability {
    pub fn new(public_keys: Vec<String>) -> Self {
        Self { public_keys }
    }
}

impl Capability for SshCapability {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn guest_config(&self, _vm: &VmRecord, config: &mut GuestConfig) {
        config
            .authorized_keys
            .extend(self.public_keys.iter().cloned());
    }
}
