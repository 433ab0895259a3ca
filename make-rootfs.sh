#!/usr/bin/env bash
# Rebuilds ./runtime/rootfs-docker.ext4 (base plus Docker and packages.apt).
# The same as `make rootfs`; kept for the Go original's users.
#   ./make-rootfs.sh                      rebuild from Debian packages when packages.apt changed
#   ./make-rootfs.sh --base-rootfs PATH   (not implemented yet)
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--base-rootfs" ]; then
    echo "make-rootfs.sh: --base-rootfs is not implemented yet in this version of banger;" >&2
    echo "  run it without arguments to rebuild rootfs-docker.ext4 from Debian packages." >&2
    exit 2
fi
[ $# -eq 0 ] || { echo "make-rootfs.sh: unexpected argument ${1}: see the comment at the top" >&2; exit 2; }
exec make rootfs
