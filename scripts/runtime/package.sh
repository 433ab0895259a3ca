#!/usr/bin/env bash
# make runtime-package: RUNTIME_DIR into a tar.gz (sparse files stay
# sparse), then print the archive's SHA-256 for a manifest's sha256.
set -euo pipefail
runtime=${1:?usage: package.sh RUNTIME_DIR ARCHIVE}
archive=${2:?usage: package.sh RUNTIME_DIR ARCHIVE}
[ -f "$runtime/bundle.json" ] || { echo "runtime-package: no bundle in $runtime: run make runtime first" >&2; exit 1; }
mkdir -p "$(dirname "$archive")"
tar -C "$runtime" --sparse -czf "$archive.tmp" .
mv "$archive.tmp" "$archive"
sha256sum "$archive" | cut -d' ' -f1
