#!/usr/bin/env bash
# Builds banger-vsock-pingd as a static binary (it runs inside any guest)
# and installs it at $1. Uses its own target dir: the static flags would
# otherwise rebuild the whole workspace.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dest=${1:?usage: build-pingd.sh DEST}
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
    --manifest-path "$repo/Cargo.toml" -p banger-guest --bin banger-vsock-pingd \
    --target x86_64-unknown-linux-gnu --target-dir "$repo/target/static"
built="$repo/target/static/x86_64-unknown-linux-gnu/release/banger-vsock-pingd"
if ldd "$built" 2>&1 | grep -q '=>'; then
    echo "build-pingd: $built is not static" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
install -m 0755 "$built" "$dest"
echo "    banger-vsock-pingd ($(du -h "$dest" | cut -f1), static)"
