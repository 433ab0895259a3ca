//! The named steps of an image build and the shell each runs in the builder
//! VM (through the guest agent). The image under construction is mounted
//! at /mnt/image and every change is made there through `chroot`, so the
//! builder's own identity (hostname, addresses, keys) never enters it.

/// A step's exit status saying the internet is out of reach.
pub const EXIT_OFFLINE: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Prepare,
    Boot,
    Mount,
    Apt,
    Docker,
    Mise,
    Opencode,
    Tmux,
    Pingd,
    Interactive,
    Seal,
    Register,
}

impl Step {
    pub const ALL: [Step; 12] = [
        Step::Prepare,
        Step::Boot,
        Step::Mount,
        Step::Apt,
        Step::Docker,
        Step::Mise,
        Step::Opencode,
        Step::Tmux,
        Step::Pingd,
        Step::Interactive,
        Step::Seal,
        Step::Register,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Prepare => "fetch the pinned sources",
            Step::Boot => "copy the base and boot the builder VM",
            Step::Mount => "mount the image in the builder",
            Step::Apt => "apt packages",
            Step::Docker => "docker",
            Step::Mise => "mise",
            Step::Opencode => "opencode through mise",
            Step::Tmux => "tmux plugins and config",
            Step::Pingd => "banger-vsock-pingd service",
            Step::Interactive => "your shell in the image (--interactive)",
            Step::Seal => "seal: unmount, power off, check and shrink",
            Step::Register => "register the image",
        }
    }

    pub fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|s| *s == self)
            .expect("every step is listed")
    }
}

pub const MOUNT_SCRIPT: &str = r#"
target=$(findfs LABEL=banger-build)
mkdir -p /mnt/image
mount "$target" /mnt/image
mount -t proc proc /mnt/image/proc
# Private binds: a mount the builder's systemd makes under /sys or /dev later
# would otherwise propagate into the chroot and make the seal's umount busy.
mount --bind --make-private /sys /mnt/image/sys
mount --bind --make-private /dev /mnt/image/dev
mount --bind --make-private /dev/pts /mnt/image/dev/pts
mount -t tmpfs tmpfs /mnt/image/run
# apt in the chroot resolves with the builder's resolvers; the image's own
# resolv.conf goes back at the seal.
if [ -e /mnt/image/etc/resolv.conf ] || [ -L /mnt/image/etc/resolv.conf ]; then
    mv /mnt/image/etc/resolv.conf /mnt/image/etc/resolv.conf.banger-build
fi
cp -L /etc/resolv.conf /mnt/image/etc/resolv.conf
# No service starts inside the chroot while packages install.
printf '#!/bin/sh\nexit 101\n' > /mnt/image/usr/sbin/policy-rc.d
chmod 755 /mnt/image/usr/sbin/policy-rc.d
echo "mounted $target at /mnt/image"
"#;

/// Waits up to a minute for the image's first apt mirror to resolve (the
/// agent answers before the guest's network is up), then exits 3 saying the
/// step needs the internet. Prefixed to every script that runs apt.
pub const WAIT_FOR_MIRROR: &str = r#"
# The first mirror host the image's apt sources name (one-line or deb822).
mirror=$(cat /mnt/image/etc/apt/sources.list /mnt/image/etc/apt/sources.list.d/* 2>/dev/null \
    | grep -oE 'https?://[^/ ]+' | head -n1 | sed 's#^https\{0,1\}://##' || true)
mirror=${mirror:-deb.debian.org}
for _ in $(seq 1 60); do
    getent hosts "$mirror" >/dev/null && break
    sleep 1
done
if ! getent hosts "$mirror" >/dev/null; then
    echo "banger: the builder cannot resolve $mirror after 60s: installing apt packages needs the internet (the builder has NAT; see banger doctor)" >&2
    exit 3
fi
"#;

/// Needs `BANGER_PACKAGES` (space-separated); after [`WAIT_FOR_MIRROR`].
pub const APT_SCRIPT: &str = r#"
export DEBIAN_FRONTEND=noninteractive
chroot /mnt/image apt-get update
# shellcheck disable=SC2086
chroot /mnt/image apt-get install -y --no-install-recommends $BANGER_PACKAGES
"#;

pub const DOCKER_SCRIPT: &str = r#"
export DEBIAN_FRONTEND=noninteractive
chroot /mnt/image apt-get install -y --no-install-recommends docker.io
chroot /mnt/image systemctl enable docker.service
"#;

/// stdin: the mise package's tar.
pub const MISE_SCRIPT: &str = r#"
install -d /mnt/image/usr/local/bin /mnt/image/etc/profile.d
tar -x -O -f - package/bin/mise > /mnt/image/usr/local/bin/mise.new
chmod 755 /mnt/image/usr/local/bin/mise.new
mv /mnt/image/usr/local/bin/mise.new /mnt/image/usr/local/bin/mise
# Login shells read /etc/profile.d; interactive ones /etc/bash.bashrc.
# mise activate sets MISE_SHELL, so a shell that reads both activates once.
cat > /mnt/image/etc/profile.d/mise.sh <<'BANGER_END'
# banger image build: mise for bash login shells
if [ -n "${BASH_VERSION:-}" ] && [ -z "${MISE_SHELL:-}" ] && [ -x /usr/local/bin/mise ]; then
    eval "$(/usr/local/bin/mise activate bash)"
fi
BANGER_END
if ! grep -q 'banger image build: mise' /mnt/image/etc/bash.bashrc 2>/dev/null; then
    cat >> /mnt/image/etc/bash.bashrc <<'BANGER_END'
# banger image build: mise for interactive bash shells
if [ -z "${MISE_SHELL:-}" ] && [ -x /usr/local/bin/mise ]; then
    eval "$(/usr/local/bin/mise activate bash)"
fi
BANGER_END
fi
chroot /mnt/image /usr/local/bin/mise --version
"#;

/// stdin: the opencode package's tar; needs `BANGER_VERSION`. mise takes
/// the binary as an installed version (`mise link`), so nothing is
/// downloaded from GitHub, and root's global mise config selects it.
pub const OPENCODE_SCRIPT: &str = r#"
dir=/usr/local/share/banger/opencode/$BANGER_VERSION
install -d "/mnt/image$dir/bin" /mnt/image/root/.config/mise
tar -x -O -f - package/bin/opencode > "/mnt/image$dir/bin/opencode"
chmod 755 "/mnt/image$dir/bin/opencode"
chroot /mnt/image env HOME=/root /usr/local/bin/mise link --force "opencode@$BANGER_VERSION" "$dir"
config=/mnt/image/root/.config/mise/config.toml
if ! grep -q '^opencode *=' "$config" 2>/dev/null; then
    grep -q '^\[tools\]' "$config" 2>/dev/null || printf '[tools]\n' >> "$config"
    sed -i "/^\[tools\]/a opencode = \"$BANGER_VERSION\"" "$config"
fi
chroot /mnt/image env HOME=/root /usr/local/bin/mise which opencode
"#;

/// stdin: a plugin's tar; needs `BANGER_PLUGIN`.
pub const TMUX_PLUGIN_SCRIPT: &str = r#"
dest=/mnt/image/root/.tmux/plugins/$BANGER_PLUGIN
rm -rf "$dest"
install -d "$dest"
tar -x -f - -C "$dest" --strip-components=1 --no-same-owner
ls "$dest"
"#;

/// Defines `wait_for_mirror` ([`WAIT_FOR_MIRROR`]) before it.
pub const TMUX_CONFIG_SCRIPT: &str = r#"
conf=/mnt/image/root/.tmux.conf
marker='# banger image build: tmux-resurrect and tmux-continuum'
if ! grep -qF "$marker" "$conf" 2>/dev/null; then
    cat >> "$conf" <<BANGER_END
$marker
# Sessions are saved every 15 minutes; restore is by hand (prefix + Ctrl-r).
set -g @continuum-save-interval '15'
set -g @continuum-restore 'off'
run-shell /root/.tmux/plugins/tmux-resurrect/resurrect.tmux
run-shell /root/.tmux/plugins/tmux-continuum/continuum.tmux
BANGER_END
fi
if ! chroot /mnt/image sh -c 'command -v tmux' >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    wait_for_mirror
    chroot /mnt/image apt-get update
    chroot /mnt/image apt-get install -y --no-install-recommends tmux
fi
"#;

/// stdin: the helper binary; needs `BANGER_UNIT` (the unit file's text).
pub const PINGD_SCRIPT: &str = r#"
install -d /mnt/image/usr/local/bin /mnt/image/etc/systemd/system
cat > /mnt/image/usr/local/bin/banger-vsock-pingd.new
chmod 755 /mnt/image/usr/local/bin/banger-vsock-pingd.new
mv /mnt/image/usr/local/bin/banger-vsock-pingd.new /mnt/image/usr/local/bin/banger-vsock-pingd
printf '%s\n' "$BANGER_UNIT" > /mnt/image/etc/systemd/system/banger-vsock-pingd.service
chroot /mnt/image systemctl enable banger-vsock-pingd.service
"#;

pub const SEAL_SCRIPT: &str = r#"
chroot /mnt/image apt-get clean || true
rm -f /mnt/image/usr/sbin/policy-rc.d /mnt/image/etc/resolv.conf
if [ -e /mnt/image/etc/resolv.conf.banger-build ] || [ -L /mnt/image/etc/resolv.conf.banger-build ]; then
    mv /mnt/image/etc/resolv.conf.banger-build /mnt/image/etc/resolv.conf
fi
umount /mnt/image/run /mnt/image/dev/pts /mnt/image/dev /mnt/image/sys /mnt/image/proc
umount /mnt/image
sync
echo sealed
"#;

/// The `--interactive` shell: a login shell in the mounted image.
pub const SHELL_ARGV: [&str; 6] = [
    "chroot",
    "/mnt/image",
    "/usr/bin/env",
    "HOME=/root",
    "/bin/bash",
    "-l",
];
