#!/usr/bin/env bash
# ./verify.sh [--nat]: the Go original's smoke test of the whole workflow,
# against your own banger and daemon. It creates a VM, SSHes in, checks the
# post-SSH reminder and the VM's .vm name, and with --nat a reach to the
# outside; then deletes the VM. One line per step; non-zero exit on any
# failure. The steps are the end-to-end suite's (scripts/e2e-lib.sh).
set -uo pipefail

repo=$(cd "$(dirname "$0")" && pwd)
. "$repo/scripts/e2e-lib.sh"

nat=()
case "${1:-}" in
    "") ;;
    --nat) nat=(--nat) ;;
    -h | --help)
        say "usage: ./verify.sh [--nat]   (BANGER=path picks the banger binary)"
        exit 0 ;;
    *)
        say "verify.sh: unknown argument ${1}: use ./verify.sh or ./verify.sh --nat" >&2
        exit 2 ;;
esac
banger=${BANGER:-$(command -v banger || echo "$repo/banger")}
if [ ! -x "$banger" ]; then
    say "verify.sh: no banger binary: run make build, or set BANGER=/path/to/banger" >&2
    exit 2
fi
boot_timeout=${BANGER_VERIFY_BOOT_TIMEOUT:-300}
name="verify-$$"

diagnose() {
    say "      see: $banger vm show $name; $banger doctor"
}

cleanup() { "$banger" vm delete "$name" >/dev/null 2>&1; }
trap cleanup EXIT

failures=$("$banger" doctor --json 2>/dev/null | python3 -c 'import json,sys; print("; ".join(c["name"] + ": " + c.get("detail", "") for c in json.load(sys.stdin) if c["status"] == "fail"))')
check "banger doctor reports no failed check${failures:+ ($failures)}" test -z "$failures"
check "vm create $name ${nat[*]} --wait" create_booted "$banger" "$name" "${nat[@]}" --wait --wait-timeout "$boot_timeout"
check "vm ssh runs a command in $name" test "$(in_vm "$name" hostname)" = "$name"
reminder=$("$banger" vm ssh "$name" -- true 2>&1 >/dev/null | tail -n1)
check "the reminder says $name is still running" grep -q "^$name is still running (up " <<<"$reminder"
dns=$("$banger" daemon status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dns_listen"])')
ip=$(vm_field "$name" guest_ip)
check "$name.vm resolves to $ip through bangerd's DNS ($dns)" test "$(dns_a "$name.vm")" = "$ip"
if [ ${#nat[@]} -gt 0 ]; then
    mirror=$(apt_mirror "$name")
    answer=$(mirror_answer "$name" "$mirror")
    check "$name reaches ${mirror:-its apt mirror} through NAT (${answer:-no answer})" grep -q '^HTTP/1' <<<"$answer"
fi
check "vm delete $name" "$banger" vm delete "$name"
check "$name is gone" sh -c "! '$banger' vm show '$name' >/dev/null 2>&1"
summary "verify"
