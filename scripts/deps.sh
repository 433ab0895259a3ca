#!/usr/bin/env bash
# make deps: what banger, its runtime build and its tests need on Debian
# bookworm. Run as root. .ci/run uses this too.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
export PATH="$HOME/.cargo/bin:$PATH"
apt-get update -qq
# e2fsprogs: ext4 images; iproute2, iptables, procps: TAPs, NAT, sysctl;
# mmdebstrap, busybox-static, lz4, cpio, kmod: the runtime bundle build;
# qemu-system-x86: the emulated backend; openssh-client: vm ssh;
# python3: the e2e suite's JSON and DNS probes.
apt-get install -y -qq --no-install-recommends \
    e2fsprogs iproute2 iptables procps ca-certificates make curl \
    mmdebstrap busybox-static lz4 cpio kmod xz-utils zstd \
    qemu-system-x86 openssh-client python3 file >/dev/null
if ! command -v vhost-device-vsock >/dev/null; then
    echo "cargo install vhost-device-vsock (the qemu backend's vsock)"
    cargo install --locked --quiet vhost-device-vsock
fi
echo "dependencies installed"
