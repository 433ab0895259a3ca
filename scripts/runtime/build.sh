#!/usr/bin/env bash
# Builds banger's runtime bundle from Debian packages:
#   vmlinux + bzImage   the Debian cloud kernel (vmlinux is the ELF Firecracker needs)
#   modules/<version>   its modules, with depmod
#   initrd.img          busybox initrd that assembles the overlay root
#   rootfs.ext4         base image (systemd, sshd, iproute2, ...)
#   rootfs-docker.ext4  base plus docker.io and packages.apt
#   id_ed25519          the SSH key authorized for root in the images
#   banger-vsock-pingd  the static guest helper
#   firecracker         copied from $FIRECRACKER or PATH when present
#   bundle.json         what is where, with SHA-256s
# Each artifact records a stamp of its inputs; a second run reuses what is
# current. Needs root (mmdebstrap in root mode), apt, mmdebstrap, lz4,
# busybox-static, e2fsprogs, kmod, cpio, ssh-keygen.
#
# Usage: scripts/runtime/build.sh [--only rootfs|rootfs-docker] [--base-rootfs IMAGE] OUT_DIR
#   --base-rootfs builds rootfs-docker.ext4 on top of an existing base image
#   instead of a fresh mmdebstrap tree.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
only=""
base_rootfs=""
while [ $# -gt 1 ]; do
    case "$1" in
        --only) only=$2; shift 2 ;;
        --base-rootfs) base_rootfs=$(realpath "$2"); shift 2 ;;
        *) break ;;
    esac
done
if [ -n "$base_rootfs" ] && [ ! -f "$base_rootfs" ]; then
    echo "build-runtime: --base-rootfs $base_rootfs does not exist" >&2
    exit 1
fi
out=$(mkdir -p "${1:-$repo/runtime}" && cd "${1:-$repo/runtime}" && pwd)
work=${BANGER_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/banger/runtime-build}
mirror=${BANGER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${BANGER_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}
suite=bookworm
# Bump when a recipe below changes in a way that must rebuild its artifact.
recipe=4
mkdir -p "$work"

step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'build-runtime: %s\n' "$*" >&2; exit 1; }

for tool in apt-get dpkg-deb mmdebstrap lz4 mkfs.ext4 depmod cpio ssh-keygen sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing: apt-get install mmdebstrap lz4 e2fsprogs kmod cpio openssh-client"
done
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap builds the images in root mode)"

# What each output directory's artifacts were built from, kept in the
# cache (not in the bundle): the cache is shared by every checkout, so
# its stamp alone cannot say that this directory's copy is current.
out_stamps="$work/outputs/$(printf '%s' "$out" | sha256sum | cut -c1-16)"
mkdir -p "$out_stamps"

# current NAME INPUTS...: true when this directory's NAME was built from
# these inputs. A fresh checkout (CI's), or one whose copy is older than
# the cache's, gets it from the build cache.
current() {
    local name=$1; shift
    local want; want=$(printf '%s\n' "$@" | sha256sum | cut -d' ' -f1)
    if [ -e "$out/$name" ] && [ "$(cat "$out_stamps/$name" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    [ "$(cat "$work/$name.stamp" 2>/dev/null)" = "$want" ] || return 1
    [ -e "$work/artifacts/$name" ] || return 1
    rm -rf "$out/$name"
    cp -a --sparse=always "$work/artifacts/$name" "$out/$name"
    printf '%s\n' "$want" > "$out_stamps/$name"
    note "$name restored from the build cache"
}
# record NAME INPUTS...: NAME is built; keep a copy for later checkouts.
record() {
    local name=$1; shift
    mkdir -p "$work/artifacts"
    rm -rf "$work/artifacts/$name"
    cp -a --sparse=always "$out/$name" "$work/artifacts/$name"
    printf '%s\n' "$@" | sha256sum | cut -d' ' -f1 > "$work/$name.stamp"
    cp "$work/$name.stamp" "$out_stamps/$name"
}

# --- kernel and modules -----------------------------------------------------
step "kernel: Debian's cloud kernel"
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64: run apt-get update"
kver_pkg=$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')
note "$kpkg $kver_pkg"
kroot="$work/kernel-$kpkg-$kver_pkg"
if [ ! -d "$kroot" ]; then
    (cd "$work" && rm -f "${kpkg}"_*.deb && apt-get download -q "$kpkg" >/dev/null)
    mkdir -p "$kroot.tmp" && dpkg-deb -x "$work/${kpkg}"_*.deb "$kroot.tmp" && mv "$kroot.tmp" "$kroot"
fi
kver=$(ls "$kroot/lib/modules")
kernel_inputs=("$kpkg" "$kver_pkg" "$recipe")
if current vmlinux "${kernel_inputs[@]}" && current bzImage "${kernel_inputs[@]}" && current modules "${kernel_inputs[@]}"; then
    note "vmlinux, bzImage and modules are current"
else
    bz="$kroot/boot/vmlinuz-$kver"
    # The bzImage's payload is LZ4 (legacy frame); unpack it to the ELF.
    offset=$(LC_ALL=C grep -aboP '\x02\x21\x4c\x18' "$bz" | head -n1 | cut -d: -f1)
    [ -n "$offset" ] || die "no LZ4 payload found in $bz"
    tail -c +"$((offset + 1))" "$bz" | lz4 -dc > "$out/vmlinux.tmp" 2>/dev/null || true
    head -c 4 "$out/vmlinux.tmp" | grep -q 'ELF' || die "unpacking $bz did not give an ELF vmlinux"
    mv "$out/vmlinux.tmp" "$out/vmlinux"
    cp "$bz" "$out/bzImage"
    depmod -b "$kroot" "$kver"
    rm -rf "$out/modules" && mkdir -p "$out/modules" && cp -a "$kroot/lib/modules/$kver" "$out/modules/"
    record vmlinux "${kernel_inputs[@]}"
    record bzImage "${kernel_inputs[@]}"
    record modules "${kernel_inputs[@]}"
    note "vmlinux ($(du -h "$out/vmlinux" | cut -f1)), bzImage, modules/$kver"
fi

# --- initrd -------------------------------------------------------------------
step "initrd: busybox and the virtio, block, overlay, net and vsock modules"
# virtio_net and the vsock transport too: loaded here, eth0 and /dev/vsock exist
# before systemd starts, so neither the address nor the agent waits for udev.
modules_wanted="virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk overlay ext4 jbd2 mbcache crc16 crc32c_generic failover net_failover virtio_net vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport"
busybox_pkg_version=$(apt-cache policy busybox-static | awk '/Candidate:/ {print $2}')
initrd_inputs=("$kver" "$busybox_pkg_version" "$modules_wanted" "$recipe" "$(sha256sum "$here/init" | cut -d' ' -f1)")
if current initrd.img "${initrd_inputs[@]}"; then
    note "initrd.img is current"
else
    bb="$work/busybox-$busybox_pkg_version"
    if [ ! -e "$bb/bin/busybox" ]; then
        (cd "$work" && rm -f busybox-static_*.deb && apt-get download -q busybox-static >/dev/null)
        mkdir -p "$bb" && dpkg-deb -x "$work"/busybox-static_*.deb "$bb"
    fi
    tree="$work/initrd-tree"
    rm -rf "$tree" && mkdir -p "$tree"/{bin,dev,proc,sys,run,etc,newroot,lib/modules/"$kver"}
    cp "$bb/bin/busybox" "$tree/bin/busybox"
    cp "$here/init" "$tree/init" && chmod 0755 "$tree/init"
    mdir="$kroot/lib/modules/$kver"
    : > "$tree/etc/banger-modules"
    for module in $modules_wanted; do
        line=$(grep -E "/${module}\.ko(\.[a-z]+)?:" "$mdir/modules.dep" || true)
        [ -n "$line" ] || continue # built into the kernel
        for file in ${line//:/}; do
            mkdir -p "$tree/lib/modules/$kver/$(dirname "$file")"
            cp "$mdir/$file" "$tree/lib/modules/$kver/$file"
        done
        echo "$module" >> "$tree/etc/banger-modules"
    done
    cp "$mdir"/modules.{dep,builtin,order} "$tree/lib/modules/$kver/" 2>/dev/null || true
    depmod -b "$tree" "$kver"
    (cd "$tree" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initrd.img"
    record initrd.img "${initrd_inputs[@]}"
    note "initrd.img ($(du -h "$out/initrd.img" | cut -f1)) loads: $(tr '\n' ' ' < "$tree/etc/banger-modules")"
fi

# --- SSH key and guest helper ---------------------------------------------------
step "ssh key"
if [ -e "$out/id_ed25519" ]; then
    note "id_ed25519 exists (kept)"
elif [ -e "$work/artifacts/id_ed25519" ]; then
    # The images authorize this key: a rebuilt checkout keeps using it.
    cp -a "$work/artifacts/id_ed25519" "$work/artifacts/id_ed25519.pub" "$out/"
    note "id_ed25519 restored from the build cache"
else
    ssh-keygen -q -t ed25519 -N '' -C banger -f "$out/id_ed25519"
    mkdir -p "$work/artifacts" && cp -a "$out/id_ed25519" "$out/id_ed25519.pub" "$work/artifacts/"
    note "generated id_ed25519"
fi
chmod 0600 "$out/id_ed25519"

step "guest helper: static banger-vsock-pingd"
"$repo/scripts/runtime/build-pingd.sh" "$out/banger-vsock-pingd"

step "firecracker"
fc=${FIRECRACKER:-$(command -v firecracker || true)}
if [ -n "$fc" ] && [ -x "$fc" ]; then
    cp "$fc" "$out/firecracker"
    note "copied $fc"
else
    rm -f "$out/firecracker"
    note "no Firecracker (set FIRECRACKER=/path or put it on PATH); the bundle serves the qemu backend"
fi

# --- images -------------------------------------------------------------------
base_packages="systemd,systemd-sysv,udev,dbus,openssh-server,iproute2,iputils-ping,ca-certificates,kmod,procps,less,netbase"

# from_base TREE IMAGE EXTRA_PACKAGES: TREE becomes IMAGE's contents plus
# EXTRA_PACKAGES installed in a chroot. The image itself is never mounted;
# only the chroot gets /proc, /sys and /dev for apt.
from_base() {
    local tree=$1 image=$2 extra=$3
    mkdir -p "$tree"
    debugfs -R "rdump / $tree" "$image" >/dev/null 2>&1 || die "cannot unpack $image with debugfs"
    rm -rf "$tree/lost+found"
    [ -x "$tree/usr/bin/apt-get" ] || die "$image has no apt-get: not a Debian root filesystem"
    local fs mounted=()
    for fs in proc sys dev; do
        mount --bind "/$fs" "$tree/$fs" && mounted+=("$tree/$fs")
    done
    # Services must not start inside the chroot while packages install.
    printf '#!/bin/sh\nexit 101\n' > "$tree/usr/sbin/policy-rc.d" && chmod 0755 "$tree/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$tree/etc/resolv.conf"
    local status=0
    chroot "$tree" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${extra//,/ }" >/dev/null || status=$?
    for fs in "${mounted[@]}"; do umount "$fs"; done
    rm -f "$tree/usr/sbin/policy-rc.d"
    [ "$status" = 0 ] || die "installing $extra on top of $image failed"
}

# trim_boot TREE: what a VM's boot does not need on its way to SSH and the
# agent (measured under QEMU's TCG; see the bench's boot row). Nothing a
# user's units or Docker rely on is removed.
trim_boot() {
    local tree=$1 unit
    local systemd_dir=$tree/etc/systemd/system
    # SSH starts as soon as its host key exists, beside sysinit rather than
    # after basic.target and network.target (networkd's start): sshd listens
    # on every address, the initrd has set eth0's and mounted /root, and
    # nothing it serves root needs more. `sshd -t` before each start is gone
    # too: sshd -D refuses a bad config the same way, and a reload still
    # tests first. A unit in /etc replaces the package's whole, so it is
    # made from the package's own, and the build stops if that changed.
    sed -e 's|^After=network.target auditd.service$|After=auditd.service root.mount\nDefaultDependencies=no\nConflicts=shutdown.target\nBefore=shutdown.target|' \
        -e '\|^ExecStartPre=/usr/sbin/sshd -t$|d' \
        -e '1i # banger: Debian'"'"'s ssh.service, started early (scripts/runtime/build.sh, trim_boot)' \
        "$tree/lib/systemd/system/ssh.service" > "$systemd_dir/ssh.service"
    if ! grep -q '^DefaultDependencies=no' "$systemd_dir/ssh.service" \
        || grep -q -e '^ExecStartPre=' -e 'network.target' "$systemd_dir/ssh.service"; then
        die "Debian's ssh.service changed: update trim_boot in scripts/runtime/build.sh"
    fi
    # During the boot, sshd gets ten times an ordinary unit's share of the
    # CPU, which twenty units starting at once contend for (2 vCPUs, TCG).
    # Sessions are not in ssh.service's cgroup, and the weight ends with
    # the boot (StartupCPUWeight).
    mkdir -p "$systemd_dir/ssh.service.d"
    printf '# banger: see scripts/runtime/build.sh, trim_boot\n[Service]\nStartupCPUWeight=1000\n' \
        > "$systemd_dir/ssh.service.d/banger-boot.conf"
    # No display: multi-user.target, not graphical.target, is the goal.
    ln -sf /lib/systemd/system/multi-user.target "$systemd_dir/default.target"
    # Units for hardware and setups a VM lacks (LVM snapshots, EFI, GPUs),
    # and eager loads of loop and dm_mod, which the kernel loads when
    # /dev/loop-control or /dev/mapper/control is first opened (the static
    # nodes kmod-static-nodes makes). configfs and fuse stay: mounts
    # require them.
    for unit in e2scrub_reap.service modprobe@efi_pstore.service modprobe@drm.service \
        modprobe@loop.service modprobe@dm_mod.service; do
        ln -sf /dev/null "$systemd_dir/$unit"
    done
    # Generators for encrypted, verity, integrity, GPT-discovered and
    # hibernated disks: banger's initrd assembles the root, and none exist.
    mkdir -p "$tree/etc/systemd/system-generators"
    # Each costs about 0.1 s under TCG. Also those for kernel command-line
    # switches banger never passes (systemd.debug_shell, systemd.run) and
    # offline system updates.
    for unit in systemd-cryptsetup-generator systemd-integritysetup-generator \
        systemd-veritysetup-generator systemd-gpt-auto-generator systemd-hibernate-resume-generator \
        systemd-debug-generator systemd-run-generator systemd-system-update-generator; do
        ln -sf /dev/null "$tree/etc/systemd/system-generators/$unit"
    done
    # The image is current: what ConditionNeedsUpdate runs at a first boot
    # (sysusers, ldconfig, hwdb and catalog updates) was done when the
    # packages installed. The stamps carry /usr's time, as
    # systemd-update-done writes them.
    local usr_time; usr_time=$(stat -c '%.9Y' "$tree/usr" | tr -d .)
    for stamp in "$tree/etc/.updated" "$tree/var/.updated"; do
        printf '# This file was created by systemd-update-done. Its only\n# purpose is to hold a timestamp of the time this directory\n# was updated. See man:systemd-update-done.service(8).\nTIMESTAMP_NSEC=%s\n' "$usr_time" > "$stamp"
        touch -r "$tree/usr" "$stamp"
    done
}

# build_image NAME EXTRA_PACKAGES: an mmdebstrap tree (or, for the Docker
# image with --base-rootfs, the given base), customized, made into ext4
# with mkfs.ext4 -d.
build_image() {
    local name=$1 extra=$2
    local base_id=""
    if [ -n "$base_rootfs" ] && [ "$name" = rootfs-docker.ext4 ]; then
        base_id="$base_rootfs:$(stat -c '%s:%Y' "$base_rootfs")"
    fi
    local inputs=("$suite" "$base_packages" "$extra" "$kver" "$recipe" "$base_id" "$(sha256sum "$out/banger-vsock-pingd" "$out/id_ed25519.pub" "$here"/*.service | cut -d' ' -f1 | tr '\n' ' ')")
    if current "$name" "${inputs[@]}"; then
        note "$name is current"
        return
    fi
    local tree="$work/$name-tree"
    rm -rf "$tree"
    if [ -n "$base_id" ]; then
        note "on top of $base_rootfs: $extra"
        from_base "$tree" "$base_rootfs" "$extra"
    else
        local include=$base_packages
        [ -n "$extra" ] && include="$include,$extra"
        note "mmdebstrap $suite: $include"
        mmdebstrap --quiet --mode=root --variant=minbase --include="$include" \
            --customize-hook='chroot "$1" passwd -l root >/dev/null' \
            "$suite" "$tree" \
            "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main"
    fi
    # The kernel's modules, so udev loads virtio_net and the vsock transport.
    mkdir -p "$tree/lib/modules" && cp -a "$out/modules/$kver" "$tree/lib/modules/"
    install -m 0755 "$out/banger-vsock-pingd" "$tree/usr/local/bin/banger-vsock-pingd"
    for unit in banger-vsock-pingd.service banger-ssh-hostkeys.service; do
        install -m 0644 "$here/$unit" "$tree/etc/systemd/system/$unit"
        ln -sf "/etc/systemd/system/$unit" "$tree/etc/systemd/system/multi-user.target.wants/$unit"
    done
    ln -sf /lib/systemd/system/systemd-networkd.service "$tree/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    trim_boot "$tree"
    # Every VM makes its own host keys at first boot.
    rm -f "$tree"/etc/ssh/ssh_host_*
    install -d -m 0700 "$tree/root/.ssh"
    install -m 0600 "$out/id_ed25519.pub" "$tree/root/.ssh/authorized_keys"
    : > "$tree/etc/machine-id"
    printf '# banger: the root is assembled by the initrd\n' > "$tree/etc/fstab"
    rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
    local size_mib; size_mib=$(( $(du -sm "$tree" | cut -f1) * 13 / 10 + 512 ))
    rm -f "$out/$name.tmp" && truncate -s "${size_mib}M" "$out/$name.tmp"
    mkfs.ext4 -q -F -L banger-base -d "$tree" "$out/$name.tmp"
    mv "$out/$name.tmp" "$out/$name"
    record "$name" "${inputs[@]}"
    note "$name (${size_mib} MiB, $(du -h "$out/$name" | cut -f1) allocated)"
}

step "rootfs.ext4: the base image"
if [ -z "$only" ] || [ "$only" = rootfs ]; then build_image rootfs.ext4 ""; fi
step "rootfs-docker.ext4: base plus Docker and packages.apt"
if [ -z "$only" ] || [ "$only" = rootfs-docker ]; then
    extra=$(grep -vE '^\s*(#|$)' "$repo/packages.apt" | tr '\n' ',' | sed 's/,$//')
    build_image rootfs-docker.ext4 "$extra"
    sha256sum "$repo/packages.apt" | cut -d' ' -f1 > "$out/rootfs-docker.ext4.packages.sha256"
fi
cp "$repo/packages.apt" "$out/packages.apt"

step "bundle.json"
"$repo/scripts/runtime/write-manifest.sh" "$out" "$kver"
note "done: $out"
