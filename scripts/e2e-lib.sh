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

# A home of the suite's own, /tmp/$1-XXXXXX: sets $world and $real_home
# (the caller's HOME, for cargo and caches) and points HOME,
# XDG_RUNTIME_DIR and BANGER_RUNTIME_DIR (the caller's $bundle) there.
enter_world() {
    world=$(mktemp -d "${TMPDIR:-/tmp}/$1-XXXXXX")
    real_home=$HOME
    export HOME="$world" XDG_RUNTIME_DIR="$world/run" BANGER_RUNTIME_DIR="$bundle"
    unset XDG_CONFIG_HOME XDG_STATE_HOME XDG_CACHE_HOME
    mkdir -p "$XDG_RUNTIME_DIR" "$HOME/.config/banger"
}

# The steps both suites and ./verify.sh run against a VM. They use the
# caller's $banger, $boot_timeout and (for dns_a) $dns.

in_vm() { local vm=$1; shift; "$banger" vm ssh "$vm" -- "$@" 2>/dev/null; }

wait_ssh() {
    local vm=$1 attempt start
    for attempt in 1 2; do
        start=$SECONDS
        while [ $((SECONDS - start)) -lt "$boot_timeout" ]; do
            if in_vm "$vm" true; then
                say "      $vm answers SSH after $((SECONDS - start))s"
                return 0
            fi
            sleep 2
        done
        say "      $vm did not answer SSH within ${boot_timeout}s"
        [ "$attempt" = 1 ] && locked_up "$banger" "$vm" && "$banger" vm restart "$vm" >/dev/null || return 1
    done
    return 1
}

# The A record bangerd's DNS ($dns, HOST:PORT) answers for $1.
dns_a() {
    python3 - "$dns" "$1" <<'EOF'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[2].split(".")) + b"\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(q, (host, int(port)))
r = s.recv(512)
if r[3] & 0x0f == 0 and int.from_bytes(r[6:8], "big") > 0:
    print(".".join(map(str, r[-4:])))
EOF
}

# The host of VM $1's first apt source.
apt_mirror() {
    in_vm "$1" "grep -rhoE '^deb +https?://[^/ ]+' /etc/apt/sources.list | head -n1 | sed -E 's|.*://||'"
}

# Inside VM $1, from the moment it answers SSH until networkd has configured
# eth0 and 200 samples after: how often the default route was missing.
# Prints "samples=N gaps=G settled=yes|no". Reads /proc/net/route and
# networkd's link state with bash builtins, so a sample takes no fork.
route_watch() {
    in_vm "$1" 'state=/run/systemd/netif/links/$(cat /sys/class/net/eth0/ifindex)
samples=0 gaps=0 after=0 settled=no end=$((SECONDS + 120))
while [ $SECONDS -lt $end ] && [ $after -lt 200 ]; do
    found=no
    while read -r dev dst _; do [ "$dev $dst" = "eth0 00000000" ] && found=yes; done < /proc/net/route
    samples=$((samples + 1))
    [ $found = yes ] || gaps=$((gaps + 1))
    if [ $settled = no ] && [ -r "$state" ]; then
        while read -r line; do [ "$line" = ADMIN_STATE=configured ] && settled=yes; done < "$state"
    fi
    [ $settled = no ] || after=$((after + 1))
done
echo "samples=$samples gaps=$gaps settled=$settled"'
}

# The first bytes of an HTTP answer from host $2, fetched inside VM $1:
# HTTP/1.x when the guest reaches the outside (through NAT); "no address for
# $2" when the guest's resolvers gave none.
mirror_answer() {
    local probe="getent hosts $2 >/dev/null || { echo no address for $2; exit; }; exec 3<>/dev/tcp/$2/80 && printf 'HEAD / HTTP/1.0\\r\\nHost: $2\\r\\n\\r\\n' >&3 && head -c 8 <&3"
    in_vm "$1" "timeout 20 bash -c \"$probe\""
}

# Waits up to $3 tenths of a second for the first pane of the tmux server
# at socket $1 to show $2; shows the pane when it does not.
tmux_shows() {
    local i
    for i in $(seq 1 "$3"); do
        tmux -S "$1" capture-pane -p -t 0 | grep -qF -- "$2" && return 0
        sleep 0.1
    done
    tmux -S "$1" capture-pane -p -t 0 | sed 's/^/      | /'
    return 1
}

summary() {
    say ""
    [ "$retried" = 0 ] || say "$1: $retried boot(s) retried after a guest soft lockup (see RETRY above)"
    say "$1: $passed passed, $failed failed"
    [ "$failed" = 0 ]
}
