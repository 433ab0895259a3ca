#!/usr/bin/env bash
# Writes $1/bundle.json: schema version, kernel version, and for each file
# its path (relative to the bundle) and SHA-256. Absent optional files are
# left out; banger validates the manifest when it loads the bundle.
#
# write-manifest.sh --refresh BUNDLE_DIR KEY FILE rewrites one entry only
# (make build refreshes the guest helper without re-hashing the images).
set -euo pipefail
if [ "${1:-}" = "--refresh" ]; then
    dir=${2:?usage: write-manifest.sh --refresh BUNDLE_DIR KEY FILE}
    key=${3:?usage: write-manifest.sh --refresh BUNDLE_DIR KEY FILE}
    file=${4:?usage: write-manifest.sh --refresh BUNDLE_DIR KEY FILE}
    sum=$(sha256sum "$dir/$file" | cut -d' ' -f1)
    python3 - "$dir/bundle.json" "$key" "$file" "$sum" <<'PY'
import json, os, sys
path, key, file, sha = sys.argv[1:5]
with open(path) as f:
    manifest = json.load(f)
manifest["files"][key] = {"path": file, "sha256": sha}
with open(path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
PY
    exit 0
fi
out=${1:?usage: write-manifest.sh BUNDLE_DIR KERNEL_VERSION}
kver=${2:?usage: write-manifest.sh BUNDLE_DIR KERNEL_VERSION}
cd "$out"
entry() {
    local key=$1 file=$2
    [ -e "$file" ] || return 0
    printf '    "%s": {"path": "%s", "sha256": "%s"},\n' "$key" "$file" "$(sha256sum "$file" | cut -d' ' -f1)"
}
{
    printf '{\n  "schema": 1,\n  "kernel_version": "%s",\n  "modules_dir": "modules/%s",\n  "files": {\n' "$kver" "$kver"
    {
        entry kernel vmlinux
        entry kernel_bzimage bzImage
        entry initrd initrd.img
        entry rootfs rootfs.ext4
        entry rootfs_docker rootfs-docker.ext4
        entry ssh_key id_ed25519
        entry ssh_public_key id_ed25519.pub
        entry vsock_ping_helper banger-vsock-pingd
        entry firecracker firecracker
        entry packages packages.apt
    } | sed '$ s/,$//'
    printf '  }\n}\n'
} > bundle.json.tmp
mv bundle.json.tmp bundle.json
