#!/usr/bin/env bash
# make runtime-bundle: installs ./runtime from the archive a manifest names.
# The archive's SHA-256 is checked before anything is extracted; the new
# tree is swapped with the old one in a single atomic exchange
# (renameat2 RENAME_EXCHANGE), so an interrupted bootstrap leaves the old
# bundle intact and no moment is without one.
#
# Usage: bootstrap.sh MANIFEST OUT_DIR
#   url may be a relative path (to the manifest's directory), an absolute
#   path, a file:/// URL or an HTTP(S) URL.
set -euo pipefail
manifest=${1:?usage: bootstrap.sh MANIFEST OUT_DIR}
out=${2:?usage: bootstrap.sh MANIFEST OUT_DIR}
die() { printf 'runtime-bundle: %s\n' "$*" >&2; exit 1; }
[ -f "$manifest" ] || die "no manifest at $manifest: copy runtime-bundle.toml to runtime-bundle.local.toml and fill in url and sha256"
read -r url sha256 < <(python3 - "$manifest" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    data = tomllib.load(f)
print(data.get("url", "") or "-", data.get("sha256", "") or "-")
PY
)
[ "$url" != "-" ] || die "$manifest has an empty url: point it at a banger-runtime.tar.gz (make runtime-package makes one)"
[ "$sha256" != "-" ] || die "$manifest has an empty sha256: use the value make runtime-package printed"
base=$(cd "$(dirname "$manifest")" && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/banger-bootstrap-XXXXXX")
trap 'rm -rf "$scratch"' EXIT
case "$url" in
    http://*|https://*)
        echo "downloading $url"
        curl -fL --retry 2 -o "$scratch/archive" "$url" || die "downloading $url failed"
        archive="$scratch/archive" ;;
    file://*) archive=${url#file://} ;;
    /*) archive=$url ;;
    *) archive="$base/$url" ;;
esac
[ -f "$archive" ] || die "archive $archive does not exist"
actual=$(sha256sum "$archive" | cut -d' ' -f1)
[ "$actual" = "$sha256" ] || die "checksum mismatch for $archive: expected $sha256, got $actual; nothing was changed"
mkdir -p "$(dirname "$out")"
new="$out.new.$$"
rm -rf "$new" && mkdir -p "$new"
tar -xzf "$archive" -C "$new" --sparse 2>/dev/null || tar -xzf "$archive" -C "$new" || { rm -rf "$new"; die "$archive is not a complete tar.gz archive; nothing was changed"; }
[ -f "$new/bundle.json" ] || { rm -rf "$new"; die "$archive has no bundle.json: not a banger runtime bundle; nothing was changed"; }
if [ -e "$out" ]; then
    # One renameat2(RENAME_EXCHANGE): there is never a moment without a
    # bundle at $out. $new then holds the old tree, which is removed.
    python3 - "$new" "$out" <<'PY' || die "could not swap $new into $out; the old bundle is untouched and the new one is at $new"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD, RENAME_EXCHANGE = -100, 2
new, out = (os.fsencode(p) for p in sys.argv[1:3])
if libc.renameat2(AT_FDCWD, new, AT_FDCWD, out, RENAME_EXCHANGE) != 0:
    sys.exit(f"renameat2: {os.strerror(ctypes.get_errno())}")
PY
    rm -rf "$new"
else
    mv -T "$new" "$out"
fi
echo "runtime bundle installed in $out"
