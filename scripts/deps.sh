#!/usr/bin/env bash
# make deps: what banger, its runtime build and its tests need on Debian
# bookworm. Run as root. .ci/run uses this too.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
export PATH="$HOME/.cargo/bin:$PATH"
# banger needs Rust 1.95+ (edition 2024); Debian's cargo package is older.
need_rust="1.95"
if ! command -v cargo >/dev/null; then
    echo "deps: cargo is not installed: install Rust $need_rust or newer with rustup," >&2
    echo "      the Rust project's installer, then run make deps again" >&2
    exit 1
fi
have_rust=$(cargo --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$need_rust" "$have_rust" | sort -V | head -n1)" != "$need_rust" ]; then
    echo "deps: cargo $have_rust is too old: banger needs Rust $need_rust or newer (rustup update)" >&2
    exit 1
fi
apt-get update -qq
# e2fsprogs: ext4 images; iproute2, iptables, procps: TAPs, NAT, sysctl;
# mmdebstrap, busybox-static, lz4, cpio, kmod: the runtime bundle build;
# qemu-system-x86: the emulated backend; openssh-client: vm ssh;
# python3: the e2e suite's JSON and DNS probes; tmux: banger tui's
# real-terminal tests.
apt-get install -y -qq --no-install-recommends \
    e2fsprogs iproute2 iptables procps ca-certificates make curl \
    mmdebstrap busybox-static lz4 cpio kmod xz-utils zstd \
    qemu-system-x86 openssh-client python3 file tmux >/dev/null
if ! command -v vhost-device-vsock >/dev/null; then
    echo "cargo install vhost-device-vsock (the qemu backend's vsock)"
    cargo install --locked --quiet vhost-device-vsock
fi
echo "dependencies installed"
