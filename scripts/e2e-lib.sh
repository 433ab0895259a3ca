# Shared by the end-to-end scripts (sourced): a check counter that prints
# one line per check, and runs the caller's `diagnose` on a failure.
passed=0
failed=0

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

summary() {
    say ""
    say "$1: $passed passed, $failed failed"
    [ "$failed" = 0 ]
}
