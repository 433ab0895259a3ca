#!/usr/bin/env bash
# Rebuilds ./runtime/rootfs-docker.ext4 (base plus Docker and packages.apt).
#   ./make-rootfs.sh                      the same as `make rootfs`: from Debian
#                                         packages, when packages.apt changed
#   ./make-rootfs.sh --base-rootfs PATH   on top of an existing Debian image
#                                         (its contents plus the packages)
# Needs root and a bootstrapped ./runtime (make runtime or make runtime-bundle).
set -euo pipefail
cd "$(dirname "$0")"
[ -d runtime ] || { echo "make-rootfs.sh: no ./runtime: run make runtime or make runtime-bundle first" >&2; exit 1; }
case "${1:-}" in
    "") exec make rootfs ;;
    --base-rootfs)
        [ -n "${2:-}" ] || { echo "make-rootfs.sh: --base-rootfs needs a path to an ext4 image" >&2; exit 2; }
        exec scripts/runtime/build.sh --only rootfs-docker --base-rootfs "$2" runtime ;;
    *) echo "make-rootfs.sh: unexpected argument $1: use --base-rootfs PATH or nothing" >&2; exit 2 ;;
esac
