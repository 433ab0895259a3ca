//! The guest-config builder: a typed description of what the guest needs at
//! boot (hostname, hosts, eth0, resolver, root's authorized keys, the
//! `/root` mount, enabled units), rendered to whole files. Nothing edits an
//! existing file of the image: the initrd extracts these files from the
//! config drive into the overlay's upper layer, where they shadow the
//! image's. Rendering is deterministic.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use banger_host::config_drive::{GuestContent, GuestFile};

pub const AUTHORIZED_KEYS: &str = "/etc/banger/authorized_keys";
/// eth0's address, for systemd-networkd.
pub const NETWORK_FILE: &str = "/etc/systemd/network/10-banger-eth0.network";
/// The files that say who the guest is on the network: what a branch
/// resumed from its source's memory rewrites live.
const IDENTITY_FILES: [&str; 3] = ["/etc/hostname", "/etc/hosts", NETWORK_FILE];
pub const PINGD_UNIT: &str = "banger-vsock-pingd.service";

/// A first boot's host keys: the images' `banger-ssh-hostkeys.service`
/// runs `ssh-keygen -A`, whose RSA key took 15 to 19 s of a first boot
/// under QEMU's TCG (`systemd-analyze blame`); ed25519 alone takes 1.0 s,
/// and `vm create --wait` answered SSH after 14.5 to 15.9 s instead of
/// 19.0 to 31.3 s. banger's clients use ed25519; sshd serves the keys that exist.
const HOSTKEYS_DROP_IN: &str =
    "/etc/systemd/system/banger-ssh-hostkeys.service.d/ed25519-only.conf";
const HOSTKEYS_ED25519_ONLY: &str = "# Written by banger: only the key banger's clients use (RSA takes seconds to make).\n[Service]\nExecStart=\nExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N \"\" -f /etc/ssh/ssh_host_ed25519_key\n";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetwork {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    /// `LABEL=banger-work`
    pub what: String,
    pub at: String,
    pub fs_type: String,
}

/// A unit to enable: `unit` linked into `target.wants`, from `path`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnabledUnit {
    pub unit: String,
    pub target: String,
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestConfig {
    pub hostname: String,
    pub network: Option<GuestNetwork>,
    /// In order of preference.
    pub nameservers: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    pub authorized_keys: Vec<String>,
    pub mounts: Vec<GuestMount>,
    pub units: BTreeSet<EnabledUnit>,
}

fn file(path: &str, mode: u32, data: String) -> GuestFile {
    GuestFile {
        path: path.to_owned(),
        content: GuestContent::File { data, mode },
    }
}

fn link(path: String, target: &str) -> GuestFile {
    GuestFile {
        path,
        content: GuestContent::Symlink(target.to_owned()),
    }
}

impl GuestConfig {
    pub fn enable(&mut self, unit: &str, target: &str, path: &str) {
        self.units.insert(EnabledUnit {
            unit: unit.into(),
            target: target.into(),
            path: path.into(),
        });
    }

    /// The rendered files that carry the guest's identity (hostname and
    /// address), as path and text.
    pub fn identity_files(&self) -> Vec<(String, String)> {
        self.render()
            .into_iter()
            .filter(|f| IDENTITY_FILES.contains(&f.path.as_str()))
            .filter_map(|f| match f.content {
                GuestContent::File { data, .. } => Some((f.path, data)),
                GuestContent::Symlink(_) => None,
            })
            .collect()
    }

    /// Every file, in a stable order.
    pub fn render(&self) -> Vec<GuestFile> {
        let mut files = vec![
            file("/etc/hostname", 0o644, format!("{}\n", self.hostname)),
            file(
                "/etc/hosts",
                0o644,
                format!(
                    "127.0.0.1\tlocalhost\n127.0.1.1\t{0}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                    self.hostname
                ),
            ),
        ];
        if let Some(net) = &self.network {
            let mut text = format!(
                "[Match]\nName=eth0\n\n[Network]\nAddress={}/{}\nGateway={}\nKeepConfiguration=static\n",
                net.address, net.prefix, net.gateway
            );
            for ns in &self.nameservers {
                text.push_str(&format!("DNS={ns}\n"));
            }
            files.push(file(NETWORK_FILE, 0o644, text));
        }
        let mut resolv = String::from("# Written by banger at each boot.\n");
        if !self.search.is_empty() {
            resolv.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        for ns in &self.nameservers {
            resolv.push_str(&format!("nameserver {ns}\n"));
        }
        resolv.push_str("options timeout:2 attempts:2\n");
        files.push(file("/etc/resolv.conf", 0o644, resolv));
        if !self.authorized_keys.is_empty() {
            let keys: String = self
                .authorized_keys
                .iter()
                .map(|k| format!("{}\n", k.trim()))
                .collect();
            files.push(file(AUTHORIZED_KEYS, 0o600, keys));
            files.push(file(
                "/etc/ssh/sshd_config.d/banger.conf",
                0o644,
                format!("# Written by banger: root's key lives outside the /root work disk.\nAuthorizedKeysFile .ssh/authorized_keys {AUTHORIZED_KEYS}\n"),
            ));
            files.push(file(HOSTKEYS_DROP_IN, 0o644, HOSTKEYS_ED25519_ONLY.into()));
        }
        for mount in &self.mounts {
            let unit = mount_unit_name(&mount.at);
            files.push(file(
                &format!("/etc/systemd/system/{unit}"),
                0o644,
                format!(
                    "[Unit]\nDescription=banger {at}\nBefore=local-fs.target\n\n[Mount]\nWhat={what}\nWhere={at}\nType={fs}\nOptions=defaults\n\n[Install]\nWantedBy=local-fs.target\n",
                    at = mount.at,
                    what = mount.what,
                    fs = mount.fs_type
                ),
            ));
            files.push(link(
                format!("/etc/systemd/system/local-fs.target.wants/{unit}"),
                &format!("/etc/systemd/system/{unit}"),
            ));
        }
        for unit in &self.units {
            files.push(link(
                format!("/etc/systemd/system/{}.wants/{}", unit.target, unit.unit),
                &unit.path,
            ));
        }
        files
    }
}

/// systemd's name for the mount unit of `path` (`/root` -> `root.mount`).
pub fn mount_unit_name(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        "-.mount".into()
    } else {
        format!("{}.mount", trimmed.replace('/', "-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_text(config: &GuestConfig) -> String {
        config
            .render()
            .iter()
            .map(|f| match &f.content {
                GuestContent::File { data, mode } => format!("== {} ({mode:o})\n{data}", f.path),
                GuestContent::Symlink(target) => format!("== {} -> {target}\n", f.path),
            })
            .collect()
    }

    fn base() -> GuestConfig {
        let mut config = GuestConfig {
            hostname: "calm-otter".into(),
            network: Some(GuestNetwork {
                address: "10.219.0.2".parse().unwrap(),
                prefix: 24,
                gateway: "10.219.0.1".parse().unwrap(),
            }),
            nameservers: vec!["10.219.0.1".parse().unwrap()],
            authorized_keys: vec!["ssh-ed25519 AAAAC3Nza banger".into()],
            mounts: vec![GuestMount {
                what: "LABEL=banger-work".into(),
                at: "/root".into(),
                fs_type: "ext4".into(),
            }],
            ..Default::default()
        };
        config.enable(
            PINGD_UNIT,
            "multi-user.target",
            "/etc/systemd/system/banger-vsock-pingd.service",
        );
        config.enable(
            "systemd-networkd.service",
            "multi-user.target",
            "/lib/systemd/system/systemd-networkd.service",
        );
        config
    }

    #[test]
    fn golden_with_nat_and_work_disk() {
        let mut config = base();
        config.nameservers.push("192.0.2.53".parse().unwrap());
        assert_eq!(
            render_text(&config),
            include_str!("../testdata/guest-nat-workdisk.txt")
        );
    }

    #[test]
    fn golden_without_nat_or_work_disk() {
        let mut config = base();
        config.mounts.clear();
        assert_eq!(
            render_text(&config),
            include_str!("../testdata/guest-plain.txt")
        );
    }

    #[test]
    fn rendering_is_deterministic() {
        let mut a = base();
        a.enable("b.service", "multi-user.target", "/b");
        a.enable("a.service", "multi-user.target", "/a");
        let mut b = base();
        b.enable("a.service", "multi-user.target", "/a");
        b.enable("b.service", "multi-user.target", "/b");
        assert_eq!(a.render(), b.render());
        assert_eq!(mount_unit_name("/root"), "root.mount");
        assert_eq!(mount_unit_name("/var/lib/docker"), "var-lib-docker.mount");
    }

    /// The initrd sets eth0's address from this file, and mounts the
    /// drive's mount units by their What=LABEL=, Where= and Type= lines.
    #[test]
    fn the_initrd_reads_the_files_this_renders() {
        let init = include_str!("../../../scripts/runtime/init");
        assert!(init.contains(&format!("network=/newroot{NETWORK_FILE}\n")));
        let files = render_text(&base());
        for key in ["What=LABEL=", "Where=", "Type=", "Address=", "Gateway="] {
            assert!(files.contains(&format!("\n{key}")), "{key} is not rendered");
            let name = key.trim_end_matches('=');
            assert!(
                init.contains(&format!("unit_value {name} ")),
                "the initrd reads no {name}"
            );
        }
    }
}
