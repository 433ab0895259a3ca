//! Validation of user input shared by the CLI (early, friendly) and the daemon
//! (authoritative). Each error names the bad value and the allowed form.

use thiserror::Error;

pub const MIN_VCPU: u32 = 1;
pub const MAX_VCPU: u32 = 32;
pub const MIN_MEMORY_MIB: u64 = 128;
/// 1 TiB of guest memory is far beyond any workstation; larger is a typo.
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
pub const MAX_NAME_LEN: usize = 63;
/// The smallest work disk: an ext4 with a journal, root's files and room to
/// work. Smaller sizes would only fail later, inside mkfs.
pub const MIN_DISK_BYTES: u64 = 256 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValidationError {
    #[error(
        "invalid VM name {0:?}: use 1 to 63 characters from a-z, 0-9 and '-', not starting or ending with '-' (a hostname, like calm-otter)"
    )]
    Name(String),
    #[error(
        "invalid snapshot name {0:?}: use 1 to 63 characters from a-z, 0-9 and '-', not starting or ending with '-' (like before-upgrade)"
    )]
    SnapshotName(String),
    #[error(
        "invalid size {0:?}: use a positive whole number with a unit K, M, G or T (like 512M, 16G, 1T)"
    )]
    Size(String),
    #[error("disk size {0:?} is too small: use at least 256M (like 16G)")]
    DiskTooSmall(String),
    #[error("invalid vCPU count {0}: use {MIN_VCPU} to {MAX_VCPU}")]
    Vcpu(u32),
    #[error(
        "invalid memory {0} MiB: use at least {MIN_MEMORY_MIB} MiB and at most {MAX_MEMORY_MIB} MiB (like 2048)"
    )]
    Memory(u64),
    #[error(
        "invalid signal {0:?}: use a name like TERM, KILL, INT, HUP (SIG prefix optional) or a number 1 to 64"
    )]
    Signal(String),
    #[error("unknown backend {0:?}: use firecracker or qemu")]
    Backend(String),
    #[error(
        "invalid port mapping {text:?}: {why}; use [HOST_ADDR:]HOST_PORT:GUEST_PORT, like 8080:80"
    )]
    PortMapping { text: String, why: String },
    #[error(
        "invalid host port {text:?}: {why}; use [HOST_ADDR:]HOST_PORT, like 8080 or 0.0.0.0:8080"
    )]
    HostPort { text: String, why: String },
}

/// Longest user input echoed whole in an error (and so in the log).
pub const ECHO_LIMIT: usize = 80;

/// `text` as errors and logs echo it: whole up to [`ECHO_LIMIT`] bytes,
/// else its start and its length, so a 900 KB argument is not repeated.
pub fn clip(text: &str) -> String {
    if text.len() <= ECHO_LIMIT {
        return text.to_owned();
    }
    let mut end = 64;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

pub fn vm_name(name: &str) -> Result<(), ValidationError> {
    if is_hostname_like(name) {
        Ok(())
    } else {
        Err(ValidationError::Name(clip(name)))
    }
}

/// Snapshot names follow VM names' rules: they name directories.
pub fn snapshot_name(name: &str) -> Result<(), ValidationError> {
    if is_hostname_like(name) {
        Ok(())
    } else {
        Err(ValidationError::SnapshotName(clip(name)))
    }
}

fn is_hostname_like(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses `512M`, `16G`, `1T` (binary units; a trailing `B` or `iB` is allowed)
/// into bytes. Bare numbers are refused: a disk of 16 bytes is never meant.
pub fn size_bytes(text: &str) -> Result<u64, ValidationError> {
    let bad = || ValidationError::Size(clip(text));
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    let without_b = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    // The unit is the last character, whatever its width in bytes.
    let mut chars = without_b.chars();
    let shift = match chars.next_back() {
        Some('K') => 10,
        Some('M') => 20,
        Some('G') => 30,
        Some('T') => 40,
        _ => return Err(bad()),
    };
    let digits = chars.as_str();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let value: u64 = digits.parse().map_err(|_| bad())?;
    if value == 0 {
        return Err(bad());
    }
    value.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// A work disk's size: [`size_bytes`], at least [`MIN_DISK_BYTES`].
pub fn disk_size(text: &str) -> Result<u64, ValidationError> {
    let bytes = size_bytes(text)?;
    if bytes < MIN_DISK_BYTES {
        return Err(ValidationError::DiskTooSmall(clip(text)));
    }
    Ok(bytes)
}

/// Formats bytes the way a user would write them back (`16G`, `1536M`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        let scale = 1u64 << shift;
        if bytes >= scale && bytes.is_multiple_of(scale) {
            return format!("{}{unit}", bytes / scale);
        }
    }
    if bytes >= 1 << 30 {
        return format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64);
    }
    if bytes >= 1 << 20 {
        return format!("{:.1}M", bytes as f64 / (1u64 << 20) as f64);
    }
    format!("{bytes}B")
}

pub fn vcpu(count: u32) -> Result<(), ValidationError> {
    if (MIN_VCPU..=MAX_VCPU).contains(&count) {
        Ok(())
    } else {
        Err(ValidationError::Vcpu(count))
    }
}

pub fn memory_mib(mib: u64) -> Result<(), ValidationError> {
    if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        Ok(())
    } else {
        Err(ValidationError::Memory(mib))
    }
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("WINCH", 28),
];

/// Parses a signal name (`TERM`, `sigterm`) or number (`15`) into its number.
pub fn signal(text: &str) -> Result<i32, ValidationError> {
    let bad = || ValidationError::Signal(clip(text));
    let upper = text.trim().to_ascii_uppercase();
    if let Ok(number) = upper.parse::<i32>() {
        return if (1..=64).contains(&number) {
            Ok(number)
        } else {
            Err(bad())
        };
    }
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, num)| *num)
        .ok_or_else(bad)
}

/// The conventional name of a signal number, for messages (`SIGTERM`).
pub fn signal_name(number: i32) -> String {
    SIGNALS
        .iter()
        .find(|(_, num)| *num == number)
        .map(|(name, _)| format!("SIG{name}"))
        .unwrap_or_else(|| format!("signal {number}"))
}

/// Package names from a packages.apt text: one per line, `#` comments.
pub fn package_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_form() {
        for good in ["calm-otter", "a", "api-1", "0abc", &"x".repeat(63)] {
            assert_eq!(vm_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "-lead",
            "trail-",
            "Calm",
            "under_score",
            "dot.name",
            "sp ace",
            &"x".repeat(64),
        ] {
            assert_eq!(
                vm_name(bad),
                Err(ValidationError::Name(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn sizes_parse_binary_units() {
        assert_eq!(size_bytes("512M"), Ok(512 << 20));
        assert_eq!(size_bytes("16G"), Ok(16 << 30));
        assert_eq!(size_bytes("1T"), Ok(1 << 40));
        assert_eq!(size_bytes("16g"), Ok(16 << 30));
        assert_eq!(size_bytes("16GiB"), Ok(16 << 30));
        assert_eq!(size_bytes("2GB"), Ok(2 << 30));
        assert_eq!(size_bytes("64K"), Ok(64 << 10));
    }

    #[test]
    fn sizes_refuse_zero_negative_junk_and_overflow() {
        for bad in [
            "0G",
            "-1G",
            "16",
            "G",
            "abc",
            "1.5G",
            "16X",
            "",
            "99999999999T",
            "1 G",
            "4🕴",
            "🕴",
        ] {
            assert_eq!(
                size_bytes(bad),
                Err(ValidationError::Size(bad.to_owned())),
                "{bad}"
            );
        }
        let msg = size_bytes("junk").unwrap_err().to_string();
        assert!(msg.contains("\"junk\"") && msg.contains("16G"), "{msg}");
    }

    #[test]
    fn long_input_is_echoed_clipped() {
        assert_eq!(clip("calm-otter"), "calm-otter");
        let huge = "é".repeat(450_000);
        let clipped = clip(&huge);
        assert!(clipped.len() < 100, "{clipped}");
        assert!(clipped.ends_with("… (900000 bytes)"), "{clipped}");
        let err = vm_name(&huge).unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
        assert!(
            size_bytes(&"9".repeat(10_000))
                .unwrap_err()
                .to_string()
                .len()
                < 300
        );
    }

    #[test]
    fn disks_have_a_minimum_size() {
        assert_eq!(disk_size("256M"), Ok(MIN_DISK_BYTES));
        assert_eq!(disk_size("16G"), Ok(16 << 30));
        for small in ["1K", "255M", "64K"] {
            assert_eq!(
                disk_size(small),
                Err(ValidationError::DiskTooSmall(small.to_owned()))
            );
        }
        assert_eq!(
            disk_size("1K").unwrap_err().to_string(),
            "disk size \"1K\" is too small: use at least 256M (like 16G)"
        );
        assert_eq!(disk_size("x"), Err(ValidationError::Size("x".into())));
    }

    #[test]
    fn sizes_format_back() {
        assert_eq!(format_size(16 << 30), "16G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1 << 40), "1T");
        assert_eq!(format_size(100), "100B");
    }

    #[test]
    fn vcpu_and_memory_bounds() {
        assert!(vcpu(1).is_ok() && vcpu(32).is_ok());
        assert_eq!(vcpu(0), Err(ValidationError::Vcpu(0)));
        assert_eq!(vcpu(33), Err(ValidationError::Vcpu(33)));
        assert!(memory_mib(128).is_ok() && memory_mib(2048).is_ok());
        assert_eq!(memory_mib(127), Err(ValidationError::Memory(127)));
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(signal("TERM"), Ok(15));
        assert_eq!(signal("sigkill"), Ok(9));
        assert_eq!(signal("KILL"), Ok(9));
        assert_eq!(signal("9"), Ok(9));
        assert!(signal("0").is_err());
        assert!(signal("NOPE").is_err());
        assert_eq!(signal_name(15), "SIGTERM");
    }
}
