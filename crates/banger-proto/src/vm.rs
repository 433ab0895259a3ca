//! The VM model, declared once. The daemon stores a [`VmRecord`]; `vm show`
//! answers a [`Vm`] (the record plus the paths derived from its directory)
//! and `vm list` a [`VmSummary`] taken from it. Fields are typed where text
//! would otherwise be parsed again: the ID, the name (validated where it
//! enters), the backend, the guest IP and the sizes. On the wire each is
//! the plain string or number it always was.

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::validate::{self, ValidationError, format_size};

/// A VM's identifier: hex digits the daemon generated, fixed for life.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VmId(String);

impl VmId {
    /// Digits tables and messages show.
    pub const SHORT_LEN: usize = 8;

    /// Wraps an identifier the daemon generated or stored.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The first [`Self::SHORT_LEN`] digits.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(Self::SHORT_LEN)]
    }
}

/// A VM's name: a hostname, checked by [`VmName::parse`] where it enters
/// (the create request, a stored row, a decoded answer).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

impl VmName {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        validate::vm_name(text)?;
        Ok(Self(text.to_owned()))
    }
}

impl TryFrom<String> for VmName {
    type Error = ValidationError;

    fn try_from(text: String) -> Result<Self, ValidationError> {
        validate::vm_name(&text)?;
        Ok(Self(text))
    }
}

impl From<VmName> for String {
    fn from(name: VmName) -> Self {
        name.0
    }
}

/// `VmId` and `VmName` read as the text they hold.
macro_rules! text_newtype {
    ($($ty:ty),*) => {$(
        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<std::path::Path> for $ty {
            fn as_ref(&self) -> &std::path::Path {
                self.0.as_ref()
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    )*};
}
text_newtype!(VmId, VmName);

/// The VMM that runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Firecracker,
    Qemu,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Firecracker, Backend::Qemu];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
        }
    }

    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == text)
            .ok_or_else(|| ValidationError::Backend(validate::clip(text)))
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Guest memory, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemoryMib(pub u64);

impl MemoryMib {
    pub fn bytes(self) -> u64 {
        self.0 << 20
    }
}

impl fmt::Display for MemoryMib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}M", self.0)
    }
}

/// A disk's size, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DiskSize(pub u64);

impl DiskSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for DiskSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

/// Everything the daemon stores about a VM. Paths derived from its
/// directory are not stored; [`Vm`] adds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: VmId,
    pub name: VmName,
    pub state: crate::VmState,
    pub image: String,
    pub vmm: Backend,
    pub vcpu: u32,
    pub memory_mib: MemoryMib,
    pub disk_size_bytes: DiskSize,
    pub nat: bool,
    pub guest_ip: Option<Ipv4Addr>,
    pub tap: Option<String>,
    pub vsock_cid: Option<u32>,
    pub vsock_path: Option<PathBuf>,
    pub pid: Option<u32>,
    /// The VMM process's start time in clock ticks since boot (from
    /// `/proc/<pid>/stat`), so a recycled PID is never mistaken for it.
    /// The daemon's own business: not part of the API.
    #[serde(skip)]
    pub pid_start_time: Option<u64>,
    /// Unix seconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub stopped_at: Option<i64>,
    /// Why the VMM last exited (clean shutdown, signal, error exit).
    pub exit_reason: Option<String>,
    /// The last failed action's error, cleared by the next success.
    pub last_error: Option<String>,
    /// Host ports the daemon forwards into the guest while it runs.
    #[serde(default)]
    pub publish: Vec<crate::PortMapping>,
}

/// `vm show`'s answer: the record, plus the paths derived from its directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vm {
    #[serde(flatten)]
    pub record: VmRecord,
    pub dir: PathBuf,
    pub overlay_path: PathBuf,
    pub work_disk_path: PathBuf,
    pub vmm_log_path: PathBuf,
}

impl Deref for Vm {
    type Target = VmRecord;

    fn deref(&self) -> &VmRecord {
        &self.record
    }
}

/// One VM in `vm list`: the table's columns and what scripts select on.
/// `vm show` has every field; keeping the list to these keeps `vm list
/// --json` fast with a thousand VMs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    pub id: VmId,
    pub name: VmName,
    pub state: crate::VmState,
    pub image: String,
    pub vmm: Backend,
    pub vcpu: u32,
    pub memory_mib: MemoryMib,
    pub disk_size_bytes: DiskSize,
    pub nat: bool,
    pub guest_ip: Option<Ipv4Addr>,
    pub pid: Option<u32>,
    /// Unix seconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    #[serde(default)]
    pub publish: Vec<crate::PortMapping>,
}

impl From<&VmRecord> for VmSummary {
    fn from(vm: &VmRecord) -> Self {
        Self {
            id: vm.id.clone(),
            name: vm.name.clone(),
            state: vm.state,
            image: vm.image.clone(),
            vmm: vm.vmm,
            vcpu: vm.vcpu,
            memory_mib: vm.memory_mib,
            disk_size_bytes: vm.disk_size_bytes,
            nat: vm.nat,
            guest_ip: vm.guest_ip,
            pid: vm.pid,
            created_at: vm.created_at,
            started_at: vm.started_at,
            publish: vm.publish.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> VmRecord {
        VmRecord {
            id: VmId::new("0123456789abcdef0123456789abcdef"),
            name: VmName::parse("calm-otter").unwrap(),
            state: crate::VmState::Running,
            image: "default".into(),
            vmm: Backend::Qemu,
            vcpu: 2,
            memory_mib: MemoryMib(2048),
            disk_size_bytes: DiskSize(16 << 30),
            nat: true,
            guest_ip: Some(Ipv4Addr::new(10, 219, 0, 2)),
            tap: Some("bg-0123456789".into()),
            vsock_cid: Some(3),
            vsock_path: None,
            pid: Some(42),
            pid_start_time: Some(7),
            created_at: 1,
            started_at: Some(2),
            stopped_at: None,
            exit_reason: None,
            last_error: None,
            publish: Vec::new(),
        }
    }

    #[test]
    fn the_wire_form_is_plain_text_and_numbers() {
        let vm = Vm {
            record: record(),
            dir: "/s/vms/0123".into(),
            overlay_path: "/s/vms/0123/overlay.ext4".into(),
            work_disk_path: "/s/vms/0123/root.ext4".into(),
            vmm_log_path: "/s/vms/0123/firecracker.log".into(),
        };
        let json = serde_json::to_value(&vm).unwrap();
        assert_eq!(json["name"], "calm-otter");
        assert_eq!(json["vmm"], "qemu");
        assert_eq!(json["guest_ip"], "10.219.0.2");
        assert_eq!(json["memory_mib"], 2048);
        assert_eq!(json["disk_size_bytes"], 16u64 << 30);
        assert_eq!(json["dir"], "/s/vms/0123");
        assert!(json.get("pid_start_time").is_none(), "internal: {json}");
        let back: Vm = serde_json::from_value(json).unwrap();
        assert_eq!(back.record.pid_start_time, None);
        assert_eq!(back.guest_ip, vm.guest_ip);
    }

    #[test]
    fn a_bad_name_or_backend_is_refused_where_it_is_read() {
        let mut json = serde_json::to_value(VmSummary::from(&record())).unwrap();
        json["name"] = "Bad_Name".into();
        let err = serde_json::from_value::<VmSummary>(json).unwrap_err();
        assert!(
            err.to_string().contains("invalid VM name \"Bad_Name\""),
            "{err}"
        );
        assert_eq!(
            Backend::parse("xen").unwrap_err().to_string(),
            "unknown backend \"xen\": use firecracker or qemu"
        );
    }

    #[test]
    fn sizes_show_as_a_user_writes_them() {
        assert_eq!(MemoryMib(512).to_string(), "512M");
        assert_eq!(DiskSize(16 << 30).to_string(), "16G");
        assert_eq!(VmId::new("0123456789abcdef").short(), "01234567");
    }
}
