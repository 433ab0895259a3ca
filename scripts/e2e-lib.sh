# Shared by the end-to-end scripts (sourced): a check counter that prints
# one line per check, and runs the caller's `diagnose` on a failure.
passed=0
failed=0
retried=0

say() { printf '%s\n' "$*"; }

check() {
    local what=$1; shift
    if "$@"; then
        say "ok    $what"
        passed=$((passed + 1))
    else
        say "FAIL  $what"
        failed=$((failed + 1))
        diagnose
    fi
}

# A check that cannot run in this setting says so, and why.
skip() { say "SKIPPED: $1: $2"; }

# The JSON field $2 of `banger vm show $1 --json` (the caller's $banger).
vm_field() {
    "$banger" vm show "$1" --json 2>/dev/null | python3 -c 'import json,sys; v=json.load(sys.stdin).get(sys.argv[1]); print("" if v is None else v)' "$2"
}

# Removes a bridge the suite made, and the guest-to-guest rule banger adds
# for it where br_netfilter is loaded.
drop_bridge() {
    ip link del "$1" 2>/dev/null
    iptables -w -S BANGER-FORWARD 2>/dev/null | grep -- "-i $1 -o $1 " | sed 's/^-A /-D /' \
        | while read -r rule; do eval "iptables -w $rule"; done
}

# Under QEMU's TCG a guest kernel now and then spins in a soft lockup
# during boot (about one boot in 300 here; QEMU's doing, not banger's).
# The suite then boots that guest once more: printed as RETRY and counted
# in the summary, never silent. CLI is the banger command or a function
# wrapping it; a lockup repeats every half minute, so the console's tail
# shows a live one.
locked_up() {
    local cli=$1 name=$2 console
    console=$("$cli" vm show "$name" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("vmm_log_path", ""))')
    lockup=$(tail -n 60 "$console" 2>/dev/null | grep -m1 "soft lockup") || return 1
    say "RETRY: $name's guest kernel locked up during boot ($lockup); booting it once more"
    retried=$((retried + 1))
}

# `CLI vm create --name NAME ARGS...` (with --wait), retried once as above.
create_booted() {
    local cli=$1 name=$2; shift 2
    "$cli" vm create --name "$name" "$@" && return 0
    locked_up "$cli" "$name" || return 1
    "$cli" vm delete "$name" >/dev/null || return 1
    "$cli" vm create --name "$name" "$@"
}

summary() {
    say ""
    [ "$retried" = 0 ] || say "$1: $retried boot(s) retried after a guest soft lockup (see RETRY above)"
    say "$1: $passed passed, $failed failed"
    [ "$failed" = 0 ]
}
