#!/usr/bin/env bash
# The end-to-end suite: real guests booted from the runtime bundle, driven
# through the banger CLI as a user would, in a private HOME. Each step
# prints what it checked; on failure the VM's console and the daemon log
# are printed. Needs root (TAPs, iptables, DNS on the gateway) and
# ./runtime (make runtime).
#
# One list of checks, two backends:
#   make e2e               BANGER_E2E_VMM=qemu (QEMU and vhost-device-vsock)
#   make e2e-firecracker   runs this same script inside a banger VM with
#                          BANGER_E2E_VMM=firecracker (scripts/e2e-firecracker.sh)
# Settings (environment):
#   BANGER_E2E_VMM          qemu (default) or firecracker
#   BANGER_E2E_BANGER       the banger binary (default target/debug/banger)
#   BANGER_E2E_FIRECRACKER  the firecracker binary, for BANGER_E2E_VMM=firecracker
#   BANGER_E2E_IMAGES       the bundle images to check (default: both)
#   BANGER_E2E_POOL         "default": leave guest_ip_pool unset and put a host
#                           route over the default pool first, so the daemon
#                           must move to a free one (banger inside a banger VM)
#   BANGER_E2E_BOOT_TIMEOUT seconds to wait for SSH (default 240)
#   BANGER_E2E_VCPU         vCPUs of the suite's VMs (default: banger's, 2)
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/scripts/e2e-lib.sh"
vmm=${BANGER_E2E_VMM:-qemu}
banger="${BANGER_E2E_BANGER:-$repo/target/debug/banger}"
bundle="${BANGER_RUNTIME_DIR:-$repo/runtime}"
boot_timeout=${BANGER_E2E_BOOT_TIMEOUT:-240}
# Every VM the suite creates gets these (empty: banger's defaults).
sizes=()
[ -n "${BANGER_E2E_VCPU:-}" ] && sizes=(--vcpu "$BANGER_E2E_VCPU")

enter_world banger-e2e
# The e2e VMs use the named backend whatever the host offers, and a
# bridge, pool and DNS port of their own: the suite runs beside anyone's
# banger daemon on this host without sharing an address with it.
bridge="bge2e-$(( $$ % 100000 ))"
pool="10.218.$(( $$ % 200 + 20 )).0/24"
case "$vmm" in
    qemu) vmm_config='vmm = "qemu"' ;;
    firecracker)
        [ -x "${BANGER_E2E_FIRECRACKER:-}" ] || { say "e2e: BANGER_E2E_FIRECRACKER must name a firecracker binary"; exit 1; }
        vmm_config=$(printf 'vmm = "firecracker"\nfirecracker_bin = "%s"' "$BANGER_E2E_FIRECRACKER") ;;
    *) say "e2e: BANGER_E2E_VMM=$vmm: use qemu or firecracker"; exit 1 ;;
esac
pool_config=$(printf 'guest_ip_pool = "%s"' "$pool")
held="bge2e-held"
if [ "${BANGER_E2E_POOL:-}" = default ]; then
    # The default pool is covered by a host route, as a banger VM's own
    # eth0 covers it: the daemon must take the next free /24.
    pool_config=""
    pool="10.219.1.0/24"
fi
printf '%s\nbridge = "%s"\n%s\ndns_listen = "127.0.0.1:0"\n' "$vmm_config" "$bridge" "$pool_config" \
    > "$HOME/.config/banger/config.toml"
state="$HOME/.local/state/banger"
export PATH="$PATH:$HOME/.cargo/bin:/root/.cargo/bin"


diagnose() {
    say "---- diagnostics"
    # Every world's VMs: the suite's, the neighbour's and the full disk's.
    for log in "$state"/vms/*/firecracker.log "$world"/neighbour/.local/state/banger/vms/*/firecracker.log \
        "$world"/full/state/banger/vms/*/firecracker.log; do
        [ -e "$log" ] || continue
        say "== console of $(basename "$(dirname "$log")") (last 40 lines)"
        tail -n 40 "$log"
        # Whether its processes were running, stuck or spinning: state and
        # CPU seconds of the VMM and its vsock helper.
        for pidfile in "$(dirname "$log")"/vmm.pid "$(dirname "$log")"/vhost-vsock.pid; do
            pid=$(awk '{print $1; exit}' "$pidfile" 2>/dev/null)
            [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || continue
            say "   $(basename "$pidfile" .pid) pid $pid: $(awk '{printf "state %s, %.1f s user, %.1f s system", $3, $14/100, $15/100}' "/proc/$pid/stat")"
        done
    done
    # The full-disk world's own disk: what filled it, if it is full.
    if mountpoint -q "$world/full/state" 2>/dev/null; then
        say "== $world/full/state: $(df -h --output=used,avail "$world/full/state" | tail -n1); largest files:"
        du -a "$world/full/state" 2>/dev/null | sort -n | tail -n 8
        say "== its bangerd.log (last 20 lines)"
        tail -n 20 "$world/full/state/banger/bangerd.log" 2>/dev/null
    fi
    say "== host load: $(cat /proc/loadavg); top processes by CPU:"
    ps -eo pid,pcpu,etimes,comm --sort=-pcpu | head -n 8
    say "== bangerd.log (last 30 lines)"
    tail -n 30 "$state/bangerd.log" 2>/dev/null
}

# Runs a command in the guest; its stdout is the answer.

neighbour="$world/neighbour"
as_neighbour() {
    HOME="$neighbour" XDG_RUNTIME_DIR="$neighbour/run" "$banger" "$@"
}

cleanup() {
    [ -n "${pf_pid:-}" ] && kill "$pf_pid" 2>/dev/null
    [ -S "${tui_socket:-}" ] && tmux -S "$tui_socket" kill-server 2>/dev/null
    "$banger" vm delete e2e-a e2e-b e2e-c crash2 >/dev/null 2>&1
    "$banger" daemon stop >/dev/null 2>&1
    if [ -d "$neighbour" ]; then
        as_neighbour vm delete e2e-neighbour >/dev/null 2>&1
        as_neighbour daemon stop >/dev/null 2>&1
    fi
    drop_bridge "$bridge"
    [ "${BANGER_E2E_POOL:-}" = default ] && ip link del "$held" 2>/dev/null
    # banger0, if the neighbour made it here, goes too: a bridge left with
    # a dead daemon's tag would be refused to everyone else.
    [ -n "${neighbour_bridge:-}" ] && drop_bridge banger0
    rm -rf "$world"
}
trap cleanup EXIT

needs="ssh python3 iptables-save file cpio debugfs e2fsck"
[ "$vmm" = qemu ] && needs="$needs qemu-system-x86_64 vhost-device-vsock"
for need in $needs; do
    if ! command -v "$need" >/dev/null; then
        say "e2e: $need is missing (see .ci/run for how CI installs it)"
        exit 1
    fi
done
[ -e "$bundle/bundle.json" ] || { say "e2e: no runtime bundle at $bundle: run make runtime"; exit 1; }
[ "$(id -u)" = 0 ] || { say "e2e: needs root (TAP devices, iptables, DNS on port 53)"; exit 1; }

say "== 0. the runtime bundle"
check "vmlinux is an x86-64 ELF executable" sh -c "file -b '$bundle/vmlinux' | grep -q 'ELF 64-bit LSB executable, x86-64'"
initrd_list=$(zcat "$bundle/initrd.img" | cpio -t --quiet 2>/dev/null)
check "the initrd has its init" grep -qx init <<<"$initrd_list"
check "the initrd has virtio_blk and overlay" sh -c "grep -q 'virtio_blk.ko' <<'E'
$initrd_list
E
grep -q 'overlay.ko' <<'E'
$initrd_list
E"
check "the initrd has virtio_net and the vsock transport (eth0 and the agent before udev)" sh -c "grep -q 'virtio_net.ko' <<'E'
$initrd_list
E
grep -q 'vmw_vsock_virtio_transport.ko' <<'E'
$initrd_list
E"
check "id_ed25519 is mode 0600" test "$(stat -c %a "$bundle/id_ed25519")" = 600
for image in ${BANGER_E2E_IMAGES:-rootfs.ext4 rootfs-docker.ext4}; do
    check "$image passes e2fsck -fn" sh -c "e2fsck -fn '$bundle/$image' >/dev/null 2>&1"
    check "$image has sshd" sh -c "debugfs -R 'stat /usr/sbin/sshd' '$bundle/$image' 2>/dev/null | grep -q 'Type: regular'"
    check "$image has the pingd unit, enabled" sh -c "debugfs -R 'stat /etc/systemd/system/multi-user.target.wants/banger-vsock-pingd.service' '$bundle/$image' 2>/dev/null | grep -q symlink"
    check "$image authorizes the bundle's key for root" test "$(debugfs -R 'cat /root/.ssh/authorized_keys' "$bundle/$image" 2>/dev/null)" = "$(cat "$bundle/id_ed25519.pub")"
done

say "== 0b. a neighbour: another user's daemon with a running VM on the default bridge"
# Unless some banger daemon already owns banger0 (then it is the neighbour),
# one is made here, with a running VM whose IP the suite must never take.
if [ "$vmm" != qemu ]; then
    skip "the neighbour" "it is checked by make e2e (qemu); here banger runs alone inside its host VM"
elif owner=$(ip -o -d link show dev banger0 2>/dev/null | grep -o 'alias banger:[^ ]*' | cut -d: -f2) && [ -n "$owner" ]; then
    say "      banger0 belongs to daemon $owner already: it is the neighbour"
else
    ip link show dev banger0 >/dev/null 2>&1 || neighbour_bridge=made-here
    mkdir -p "$neighbour/run" "$neighbour/.config/banger"
    printf 'vmm = "qemu"\n' > "$neighbour/.config/banger/config.toml"
    check "the neighbour creates a VM on banger0" as_neighbour vm create --name e2e-neighbour --disk-size 1G --memory 512 --vcpu 1
fi

if [ "${BANGER_E2E_POOL:-}" = default ]; then
    say "== 0c. the default guest IP pool is taken by a host route"
    ip link add "$held" type dummy && ip addr add 10.219.0.254/24 dev "$held" && ip link set "$held" up
    check "a host route covers 10.219.0.0/24 ($(ip -4 route show 10.219.0.0/24))" test -n "$(ip -4 route show 10.219.0.0/24)"
    "$banger" vm list >/dev/null # starts the daemon
    taken=$("$banger" daemon status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s.get("guest_ip_pool"), "|", s.get("guest_ip_pool_reason"))')
    say "      daemon status: $taken"
    check "the daemon takes the next free pool $pool and says why" grep -q "^$pool | $pool (the default 10.219.0.0/24 overlaps the host route 10.219.0.0/24 dev $held" <<<"$taken"
fi

say "== 1. create e2e-a with NAT and a 2G work disk, wait for SSH ($vmm)"
check "vm create e2e-a --wait (boots to SSH)" create_booted "$banger" e2e-a "${sizes[@]}" --disk-size 2G --nat --wait --wait-timeout "$boot_timeout"
check "vm ssh works" wait_ssh e2e-a

say "== 2. inside e2e-a"
# The initrd set eth0's route; networkd takes it over seconds after SSH
# answers and must not drop it meanwhile (a route networkd calls foreign it
# deletes and re-adds: a guest's first connections failed).
watched=$(route_watch e2e-a)
check "eth0's default route stays while networkd takes it over ($watched)" grep -q ' gaps=0 settled=yes$' <<<"$watched"
check "hostname is e2e-a" test "$(in_vm e2e-a hostname)" = e2e-a
check "/ is an overlay over the read-only base" test "$(in_vm e2e-a findmnt -n -o FSTYPE /)" = overlay
size=$(in_vm e2e-a df --output=size -BM /root | tail -n1 | tr -dc 0-9)
check "/root is the work disk at about 2G (${size}M)" test "${size:-0}" -gt 1800 -a "${size:-0}" -le 2048
check "/root is mounted from the disk labelled banger-work" test "$(in_vm e2e-a findmnt -n -o LABEL /root)" = banger-work
check "the guest resolves e2e-a.vm" in_vm e2e-a getent hosts e2e-a.vm
check "the guest kernel skipped its crypto self-tests (cryptomgr.notests)" grep -q 'alg: self-tests disabled' <<<"$(in_vm e2e-a dmesg)"
check "the ping responder is active" test "$(in_vm e2e-a systemctl is-active banger-vsock-pingd)" = active
# The trimmed boot (scripts/runtime/build.sh, trim_boot): sshd and the agent
# start early, eth0 is set by the initrd, and the rest still comes up.
boot_state=$(in_vm e2e-a 'timeout 180 systemctl is-system-running --wait')
check "the boot finishes with no failed unit ($boot_state)" test "$boot_state" = running
check "sshd does not wait for network.target" sh -c "! grep -q network.target <<'E'
$(in_vm e2e-a systemctl show -p After ssh.service)
E"
check "networkd manages the address the initrd set on eth0" sh -c "grep -q 'State: routable (configured)' <<'E'
$(in_vm e2e-a networkctl status eth0)
E"
if in_vm e2e-a test -x /usr/bin/docker; then
    check "dockerd answers ($(in_vm e2e-a docker info --format '{{.ServerVersion}}'))" in_vm e2e-a docker info
fi
# Nested virtualization: a guest whose CPU offers svm/vmx gets /dev/kvm at
# boot (udev loads kvm_amd/kvm_intel). QEMU's TCG `-cpu max` always offers
# svm; under Firecracker it depends on the host's nested setting.
virt=$(in_vm e2e-a 'grep -owm1 -E "svm|vmx" /proc/cpuinfo')
if [ "$vmm" = qemu ]; then
    check "the qemu guest's CPU offers svm (${virt:-none})" test "$virt" = svm
fi
if [ -n "$virt" ]; then
    check "the guest has /dev/kvm, from $(in_vm e2e-a 'lsmod | grep -oE "^kvm_(amd|intel)"')" in_vm e2e-a test -c /dev/kvm
else
    skip "/dev/kvm in the guest" "the guest CPU offers no svm/vmx (nested virtualization is off on this host)"
fi

say "== 3. from the host"
ip_a=$(vm_field e2e-a guest_ip)
dns=$("$banger" daemon status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["dns_listen"])')
# The A record of $1 from bangerd's DNS, or nothing for NXDOMAIN.
resolved=$(dns_a e2e-a.vm)
check "e2e-a.vm resolves to $ip_a through bangerd's DNS ($dns)" test "$resolved" = "$ip_a"
check "e2e-a's IP $ip_a is in the suite's own pool $pool" test "${ip_a%.*}" = "${pool%.*/*}"
check "e2e-a's TAP is on the suite's own bridge $bridge" sh -c "ip -o link show | grep ' bg-' | grep -q 'master $bridge'"
check "the guest IP answers SSH directly" test "$(ssh -i "$bundle/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 "root@$ip_a" hostname)" = e2e-a
id_a=$(vm_field e2e-a id)
# This daemon's rules for e2e-a, by their tag banger:<daemon>:<vm id>: one
# MASQUERADE and two FORWARD rules, whatever other daemons have.
nat_rules() { iptables-save | grep -cE -- "--comment \"?banger:[^: ]+:$1\"? "; }
check "exactly e2e-a's three NAT rules exist ($(nat_rules "$id_a"))" test "$(nat_rules "$id_a")" = 3
# NAT proven from the guest: an HTTP answer from the host of the guest's
# own apt source, through the gateway's MASQUERADE.
mirror=$(apt_mirror e2e-a)
answer=$(mirror_answer e2e-a "$mirror")
check "e2e-a reaches its apt mirror ${mirror:-?} through NAT (${answer:-no answer})" grep -q '^HTTP/1' <<<"$answer"

# A runaway console: 70 MiB more in e2e-a's log (the daemon cannot tell
# who appended it) is cut within its next look, and what the guest prints
# afterwards lands at the emptied log's new end, through the VMM's own
# append-mode descriptor.
console_a="$(vm_field e2e-a dir)/firecracker.log"
head -c 70M /dev/zero | tr '\0' z >> "$console_a"
for _ in $(seq 30); do [ -e "$console_a.trimmed" ] && break; sleep 0.5; done
in_vm e2e-a 'echo e2e-after-the-cut > /dev/ttyS0'
sleep 1
check "a console log past 64 MiB is cut to $(stat -c %s "$console_a") bytes, its ends kept ($(stat -c %s "$console_a.trimmed" 2>/dev/null) bytes)" \
    sh -c "[ \$(stat -c %s '$console_a') -lt 1048576 ] && grep -q 'console output cut here' '$console_a.trimmed'"
check "the guest's console goes on at the cut log's end" grep -q e2e-after-the-cut "$console_a"

say "== 4. the post-SSH reminder over vsock"
reminder=$("$banger" vm ssh e2e-a -- true 2>&1 >/dev/null | tail -n1)
say "      $reminder"
check "the reminder says e2e-a is still running with its uptime" grep -q "^e2e-a is still running (up " <<<"$reminder"

say "== 4b. banger tui: SSH from it, and the reminder in its status line"
if ! command -v tmux >/dev/null; then
    skip "banger tui in a terminal" "tmux is not installed (apt-get install tmux)"
else
    # A tmux server of the suite's own; the TUI's pane stays after it exits.
    tui_socket="$HOME/tmux-e2e.sock"
    tui() { tmux -S "$tui_socket" "$@"; }
    tui_shows() { tmux_shows "$tui_socket" "$1" "${2:-200}"; }
    # The shell prints the TUI's exit status: tmux itself sometimes marks
    # a pane dead without learning it.
    TERM=xterm-256color tui new-session -d -x 160 -y 45 -c "$PWD" "'$banger' tui; echo TUI-EXIT=\$?; sleep 600"
    check "the TUI lists e2e-a" tui_shows " e2e-a "
    # Filter to e2e-a, so Enter is on its row whatever else exists.
    tui send-keys -t 0 / && tui send-keys -t 0 -l e2e-a && tui send-keys -t 0 Enter
    check "the TUI's filter shows e2e-a alone" tui_shows "VMs matching /e2e-a"
    tui send-keys -t 0 Enter
    # Typed only once the guest's shell prompts: keys sent earlier could
    # reach the TUI instead of the session.
    check "Enter opens an SSH session in e2e-a" tui_shows "root@e2e-a" 600
    tui send-keys -t 0 -l 'echo typed-in-tui > /root/e2e-tui; exit'
    tui send-keys -t 0 Enter
    check "back in the TUI, the status line has the reminder" tui_shows "e2e-a is still running (up "
    check "the TUI has the screen again (alternate screen on)" test "$(tui display-message -p -t 0 '#{alternate_on}')" = 1
    check "what was typed in the TUI's SSH session ran in e2e-a" test "$(in_vm e2e-a cat /root/e2e-tui)" = typed-in-tui
    tui send-keys -t 0 q
    check "q quits the TUI with status 0" tui_shows "TUI-EXIT=0" 50
    tui kill-server 2>/dev/null || true
fi

say "== 4c. vm exec: commands through the guest agent over vsock"
"$banger" vm exec e2e-a -- sh -c 'exit 3'
exec_status=$?
check "vm exec's exit status is the command's (3: $exec_status)" test "$exec_status" = 3
check "vm exec keeps stdout and stderr apart" test "$("$banger" vm exec e2e-a -- sh -c 'echo out; echo err >&2' 2>/dev/null)" = out
check "stdin reaches the command in the guest" test "$(printf abc | "$banger" vm exec e2e-a -- wc -c)" = 3
sum_guest=$("$banger" vm exec e2e-a -- sh -c 'yes banger | head -c 52428800' | sha256sum | cut -d' ' -f1)
sum_host=$(yes banger | head -c 52428800 | sha256sum | cut -d' ' -f1)
check "50 MiB of stdout arrives whole (sha256 ${sum_guest:0:16})" test "$sum_guest" = "$sum_host"
check "vm exec -e and -w set the environment and directory" test "$("$banger" vm exec e2e-a -e E2E=yes -w /tmp -- sh -c 'echo $E2E $(pwd)')" = "yes /tmp"
if command -v script >/dev/null; then
    check "vm exec -t gives the command a terminal (under script)" sh -c "script -qec \"'$banger' vm exec -t e2e-a -- tty\" /dev/null | grep -q /dev/pts/"
else
    skip "vm exec -t under script" "script (bsdutils) is not installed"
fi

say "== 4d. vm cp: a tree in and out, with modes, a symlink and a sparse file"
cp_src="$world/cp-src"
mkdir -p "$cp_src/tree/sub"
echo kept > "$cp_src/tree/sub/file"
chmod 640 "$cp_src/tree/sub/file"
ln -s sub/file "$cp_src/tree/link"
truncate -s 100M "$cp_src/tree/sparse"
expected=$(printf 'kept\n640\nsub/file')
check "vm cp into the guest's /root" "$banger" vm cp "$cp_src/tree" e2e-a:/root
check "the guest has the content, the mode and the link" test "$(in_vm e2e-a 'cat /root/tree/sub/file; stat -c %a /root/tree/sub/file; readlink /root/tree/link')" = "$expected"
check "the sparse file stays sparse in the guest ($(in_vm e2e-a 'stat -c %b /root/tree/sparse') blocks)" test "$(in_vm e2e-a 'stat -c %b /root/tree/sparse')" -lt 2048
check "vm cp back out to a new name" "$banger" vm cp e2e-a:/root/tree "$cp_src/back"
check "the host has the content, the mode and the link" test "$(cat "$cp_src/back/sub/file"; stat -c %a "$cp_src/back/sub/file"; readlink "$cp_src/back/link")" = "$expected"
cp_missing=$("$banger" vm cp e2e-a:/no/such "$cp_src/x" 2>&1)
cp_missing_status=$?
check "vm cp of a missing guest path fails ($cp_missing_status), names it, and makes nothing" test "$cp_missing_status" != 0 -a ! -e "$cp_src/x" -a -n "$(grep '/no/such: no such file or directory in the guest' <<<"$cp_missing")"

say "== 4e. vm port-forward: a host port to the guest's sshd, over vsock"
pf_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$banger" vm port-forward e2e-a "127.0.0.1:$pf_port:22" > "$world/port-forward.log" 2>&1 &
pf_pid=$!
for _ in $(seq 1 100); do grep -q '^forwarding' "$world/port-forward.log" && break; sleep 0.1; done
check "port-forward says what it forwards" grep -q "^forwarding 127.0.0.1:$pf_port -> e2e-a:22 over vsock" "$world/port-forward.log"
check "ssh through the forwarded port reaches e2e-a" test "$(ssh -p "$pf_port" -i "$bundle/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 root@127.0.0.1 hostname)" = e2e-a
pf_taken=$("$banger" vm port-forward e2e-a "127.0.0.1:$pf_port:22" 2>&1)
check "a second forward on that port is refused, naming the holder" grep -q "is already in use by banger (pid $pf_pid)" <<<"$pf_taken"
kill "$pf_pid" 2>/dev/null
wait "$pf_pid" 2>/dev/null
pf_pid=""

say "== 4f. vm pause and unpause: vCPUs frozen and thawed in place"
pid_before=$(vm_field e2e-a pid)
check "vm pause e2e-a" "$banger" vm pause e2e-a
check "vm show says paused" test "$(vm_field e2e-a state)" = paused
frozen_ssh() { ssh -i "$bundle/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=3 "root@$1" true 2>/dev/null; }
no_ssh() { ! frozen_ssh "$1"; }
check "a frozen guest answers nothing (SSH to $ip_a times out)" no_ssh "$ip_a"
check "vm unpause e2e-a" "$banger" vm unpause e2e-a
check "the same VMM process runs on ($pid_before)" test "$(vm_field e2e-a pid)" = "$pid_before" -a "$(vm_field e2e-a state)" = running
check "e2e-a answers SSH again at once" test "$(in_vm e2e-a hostname)" = e2e-a

say "== 4g. vm suspend and resume: the guest goes on where it was"
# In tmux where the image has it (the Docker image; the plain one has
# none), else in a detached shell; either way its PID is kept.
counter_loop='echo $$ > /root/counter.pid; i=0; while :; do i=$((i+1)); echo $i > /root/counter; sleep 1; done'
if [ -n "$(in_vm e2e-a 'command -v tmux')" ]; then
    keeper="a tmux session"
    check "a counter runs in $keeper in e2e-a" in_vm e2e-a "tmux new -d -s counter '$counter_loop' && sleep 2"
else
    keeper="a detached shell (no tmux in this image)"
    check "a counter runs in $keeper in e2e-a" in_vm e2e-a "setsid -f sh -c '$counter_loop' </dev/null >/dev/null 2>&1; sleep 2"
fi
boot_id=$(in_vm e2e-a cat /proc/sys/kernel/random/boot_id)
pid_before=$(vm_field e2e-a pid)
id_suspended=$(vm_field e2e-a id)
started=$SECONDS
check "vm suspend e2e-a" "$banger" vm suspend e2e-a
say "      suspended in $((SECONDS - started))s; saved state $(du -sh "$state/vms/$id_suspended/suspended" 2>/dev/null | cut -f1) for $(vm_field e2e-a memory_mib) MiB of guest memory"
check "vm show says suspended" test "$(vm_field e2e-a state)" = suspended
if [ "$vmm" = qemu ]; then
    # The stream holds the devices; the memory is a file of its own, its
    # zero pages holes, which a resume copies into the memfd QEMU maps.
    saved="$state/vms/$id_suspended/suspended"
    ram_kib=$(( $(stat -c %s "$saved/qemu-ram" 2>/dev/null || echo 0) >> 10 ))
    ram_used=$(du -k "$saved/qemu-ram" 2>/dev/null | cut -f1)
    stream_used=$(du -k "$saved/qemu-state" 2>/dev/null | cut -f1)
    check "the memory is saved beside the device stream (qemu-ram ${ram_used:-none} KiB used of ${ram_kib} KiB, qemu-state ${stream_used:-none} KiB)" \
        test "$ram_kib" = "$(( $(vm_field e2e-a memory_mib) << 10 ))" -a "${ram_used:-0}" -gt 0 -a "${ram_used:-0}" -lt "$ram_kib" -a "${stream_used:-99999}" -lt 8192
fi
check "its VMM process ($pid_before) is gone" sh -c "! kill -0 $pid_before 2>/dev/null"
refusal=$("$banger" vm stop e2e-a 2>&1); refused=$?
say "      ${refusal%%$'\n'*}"
check "vm stop without --force refuses, keeps the state and names --force" test "$refused" != 0 -a "$(vm_field e2e-a state)" = suspended -a -n "$(grep -- '--force' <<<"$refusal")"
sleep 3 # the host clock moves on while the guest's stands still
started=$SECONDS
check "vm resume e2e-a" "$banger" vm resume e2e-a
check "e2e-a answers SSH after the resume" wait_ssh e2e-a
say "      resumed and answered SSH in $((SECONDS - started))s"
check "the same boot goes on (boot_id unchanged) with the counter's process in $keeper" test "$(in_vm e2e-a 'cat /proc/sys/kernel/random/boot_id; kill -0 $(cat /root/counter.pid) && echo alive')" = "$(printf '%s\nalive' "$boot_id")"
counter_then=$(in_vm e2e-a cat /root/counter)
sleep 2
check "the counter goes on counting ($counter_then, then $(in_vm e2e-a cat /root/counter))" test "$(in_vm e2e-a cat /root/counter)" -gt "$counter_then"
clock_skew() { local guest; guest=$(in_vm e2e-a date +%s); [ -n "$guest" ] && [ $(( $(date +%s) - guest )) -le 2 ] && [ $(( guest - $(date +%s) )) -le 2 ]; }
check "the guest clock was stepped to the host's (within 2s)" clock_skew
check "vm exec works over the replugged vsock" test "$("$banger" vm exec e2e-a -- hostname)" = e2e-a
reminder=$("$banger" vm ssh e2e-a -- true 2>&1 >/dev/null | tail -n1)
check "the reminder after the resume says e2e-a is still running" grep -q "^e2e-a is still running (up " <<<"$reminder"
in_vm e2e-a 'kill $(cat /root/counter.pid)'

say "== 4h. vm snapshot: taken running, a file written after it is gone on restore"
started=$SECONDS
check "vm snapshot create e2e-a before-file" "$banger" vm snapshot create e2e-a before-file
say "      taken in $((SECONDS - started))s: $("$banger" vm snapshot list e2e-a | grep before-file)"
check "vm snapshot list says it holds disks and memory" sh -c "'$banger' vm snapshot list e2e-a | grep -q 'before-file .*disks and memory'"
check "e2e-a runs on after the snapshot" test "$(in_vm e2e-a hostname)" = e2e-a
check "write a file in /root after the snapshot" in_vm e2e-a 'echo later > /root/after-snapshot && sync'
refusal=$("$banger" vm snapshot restore e2e-a before-file 2>&1); refused=$?
check "restore without --force refuses, naming --force" test "$refused" != 0 -a -n "$(grep -- '--force' <<<"$refusal")"
check "vm snapshot restore e2e-a before-file --force" "$banger" vm snapshot restore e2e-a before-file --force
check "e2e-a answers SSH after the restore" wait_ssh e2e-a
check "the file written after the snapshot is gone" test "$(in_vm e2e-a 'test -e /root/after-snapshot || echo gone')" = gone
check "vm snapshot delete e2e-a before-file" "$banger" vm snapshot delete e2e-a before-file
check "no snapshot is left" sh -c "'$banger' vm snapshot list e2e-a | grep -q '^no snapshots'"

say "== 4i. vm branch: a copy of running e2e-a, /root included, with its own identity"
check "a file in e2e-a's /root to carry over" in_vm e2e-a 'echo carried > /root/branch-me && sync'
started=$SECONDS
check "vm branch e2e-a e2e-c --no-memory" "$banger" vm branch e2e-a e2e-c --no-memory
say "      branched in $((SECONDS - started))s"
check "e2e-c answers SSH" wait_ssh e2e-c
check "e2e-a runs on" test "$(vm_field e2e-a state)" = running -a "$(in_vm e2e-a hostname)" = e2e-a
check "e2e-c has e2e-a's /root file" test "$(in_vm e2e-c cat /root/branch-me)" = carried
check "e2e-c has its own IP ($(vm_field e2e-c guest_ip), e2e-a $(vm_field e2e-a guest_ip))" test "$(vm_field e2e-c guest_ip)" != "$(vm_field e2e-a guest_ip)"
check "e2e-c has its own hostname" test "$(in_vm e2e-c hostname)" = e2e-c
identity='cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub'
check "e2e-c has its own machine-id and SSH host key" test "$(in_vm e2e-c "$identity")" != "$(in_vm e2e-a "$identity")" -a -n "$(in_vm e2e-c "$identity")"
id_c=$(vm_field e2e-c id)
check "vm delete e2e-c" "$banger" vm delete e2e-c
# A function, not `sh -c`: pgrep -f would find that shell's own command line.
branch_gone() { ! test -e "$state/vms/$1" && ! pgrep -f "$1" >/dev/null && ! ip -o link show | grep -q " bg-${1:0:10}"; }
check "nothing of e2e-c is left (files, process, TAP)" branch_gone "$id_c"

say "== 4j. vm branch with memory: e2e-a's running processes go on in a VM of its own"
check "a counter runs in e2e-a" in_vm e2e-a "setsid -f sh -c '$counter_loop' </dev/null >/dev/null 2>&1; sleep 2"
boot_id=$(in_vm e2e-a cat /proc/sys/kernel/random/boot_id)
started=$SECONDS
check "vm branch e2e-a e2e-d (with memory, the default)" "$banger" vm branch e2e-a e2e-d
say "      branched in $((SECONDS - started))s"
check "e2e-d answers SSH at once, with its own hostname" test "$(in_vm e2e-d hostname)" = e2e-d
check "e2e-d goes on from e2e-a's memory (same boot_id, the counter's process alive)" test "$(in_vm e2e-d 'cat /proc/sys/kernel/random/boot_id; kill -0 $(cat /root/counter.pid) && echo alive')" = "$(printf '%s\nalive' "$boot_id")"
counter_then=$(in_vm e2e-d cat /root/counter)
sleep 2
check "e2e-d's counter goes on counting ($counter_then, then $(in_vm e2e-d cat /root/counter))" test "$(in_vm e2e-d cat /root/counter)" -gt "$counter_then"
check "e2e-a runs on, its counter too" test "$(vm_field e2e-a state)" = running -a -n "$(in_vm e2e-a 'kill -0 $(cat /root/counter.pid) && echo alive')"
ip_d=$(vm_field e2e-d guest_ip)
check "e2e-d holds its own address $ip_d on eth0 (e2e-a: $ip_a) and nothing else" test "$(in_vm e2e-d "ip -4 -o addr show dev eth0 | awk '{print \$4}'")" = "$ip_d/24" -a "$ip_d" != "$ip_a"
check "e2e-d has its own MAC" test "$(in_vm e2e-d cat /sys/class/net/eth0/address)" != "$(in_vm e2e-a cat /sys/class/net/eth0/address)"
check "e2e-d has its own machine-id and SSH host key" test "$(in_vm e2e-d "$identity")" != "$(in_vm e2e-a "$identity")" -a -n "$(in_vm e2e-d "$identity")"
check "e2e-d reaches its gateway, and e2e-a still answers at $ip_a" sh -c "'$banger' vm ssh e2e-d -- ping -c1 -W2 ${ip_d%.*}.1 >/dev/null 2>&1 && '$banger' vm ssh e2e-a -- true 2>/dev/null"
check "vm exec reaches e2e-d over its own vsock" test "$("$banger" vm exec e2e-d -- hostname)" = e2e-d
in_vm e2e-a 'kill $(cat /root/counter.pid)'
id_d=$(vm_field e2e-d id)
check "vm delete e2e-d" "$banger" vm delete e2e-d
check "nothing of e2e-d is left (files, process, TAP)" branch_gone "$id_d"

say "== 5. files survive stop and start; the work disk grows"
# One string: ssh joins its arguments with spaces for the remote shell.
check "write a file in /root and one in /etc" in_vm e2e-a 'echo kept > /root/e2e-root && echo kept > /etc/e2e-etc && sync'
check "both files read back before the stop" test "$(in_vm e2e-a 'cat /root/e2e-root /etc/e2e-etc')" = "$(printf 'kept\nkept')"
check "vm stop e2e-a" "$banger" vm stop e2e-a
# QEMU: ACPI power button; Firecracker: SendCtrlAltDel. Either way the
# guest powers itself off, and no signal is needed.
check "the stop was a clean shutdown of the guest ($(vm_field e2e-a exit_reason))" test "$(vm_field e2e-a exit_reason)" = "clean shutdown"
check "vm start e2e-a" "$banger" vm start e2e-a
check "e2e-a answers SSH again" wait_ssh e2e-a
check "a file in /root survived" test "$(in_vm e2e-a cat /root/e2e-root)" = kept
check "a file in /etc survived" test "$(in_vm e2e-a cat /etc/e2e-etc)" = kept
check "vm stop e2e-a again" "$banger" vm stop e2e-a
check "vm set --disk-size 3G on the stopped VM" "$banger" vm set e2e-a --disk-size 3G
# Renamed while stopped, it boots with the new hostname; renamed back
# while running, the .vm name moves at once and the agent changes the
# hostname live.
check "vm rename e2e-a e2e-renamed (stopped)" "$banger" vm rename e2e-a e2e-renamed
check "vm start e2e-renamed after the resize" "$banger" vm start e2e-renamed
check "e2e-renamed answers SSH after the resize" wait_ssh e2e-renamed
check "the guest booted with its new hostname" test "$(in_vm e2e-renamed hostname)" = e2e-renamed
check "e2e-renamed.vm resolves to e2e-a's IP $ip_a" test "$(dns_a e2e-renamed.vm)" = "$ip_a"
check "e2e-a.vm no longer resolves" test -z "$(dns_a e2e-a.vm)"
renamed=$("$banger" vm rename e2e-renamed e2e-a)
say "      $renamed"
check "vm rename e2e-renamed e2e-a (running) says the hostname changed live" grep -q "the guest's hostname is e2e-a now" <<<"$renamed"
check "the running guest's hostname is e2e-a again" test "$(in_vm e2e-a hostname)" = e2e-a
check "e2e-a.vm resolves again, and SSH by the old name works" test "$(dns_a e2e-a.vm)|$(in_vm e2e-a cat /root/e2e-root)" = "$ip_a|kept"
size=$(in_vm e2e-a df --output=size -BM /root | tail -n1 | tr -dc 0-9)
check "/root grew to about 3G (${size}M)" test "${size:-0}" -gt 2800 -a "${size:-0}" -le 3072
check "/root is still the banger-work disk" test "$(in_vm e2e-a findmnt -n -o LABEL /root)" = banger-work
check "the /root file is still there after the resize" test "$(in_vm e2e-a cat /root/e2e-root)" = kept

say "== 6. a second VM reaches e2e-a by name"
pub_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
check "vm create e2e-b --publish $pub_port:8000 (no NAT)" "$banger" vm create --name e2e-b "${sizes[@]}" --disk-size 2G --publish "$pub_port:8000"
check "e2e-b boots to SSH" wait_ssh e2e-b
check "e2e-b resolves e2e-a.vm" test "$(in_vm e2e-b getent hosts e2e-a.vm | cut -d' ' -f1)" = "$ip_a"
check "e2e-b reaches e2e-a over the bridge" in_vm e2e-b ping -c1 -W5 e2e-a.vm
id_b=$(vm_field e2e-b id)
check "e2e-b, created without --nat, has no NAT rule" test "$(nat_rules "$id_b")" = 0
check "e2e-a still has its three" test "$(nat_rules "$id_a")" = 3

say "== 6b. a published port reaches a guest service bound to 127.0.0.1"
# perl-base is in every Debian image; python3 is not. One answer per
# connection, naming the guest.
guest_http='setsid perl -MIO::Socket::INET -e '"'"'$s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 8000, Listen => 5, ReuseAddr => 1) or die "listen: $!"; while ($c = $s->accept) { <$c>; print $c "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from " . `hostname`; close $c }'"'"' </dev/null >/dev/null 2>&1 &'
check "a web server on e2e-b's 127.0.0.1:8000" "$banger" vm exec e2e-b -- sh -c "$guest_http"
published() { curl -fsS --max-time 5 "http://127.0.0.1:$pub_port/" 2>&1; }
for _ in $(seq 1 20); do [ "$(published)" = "hello from e2e-b" ] && break; sleep 0.2; done
check "curl 127.0.0.1:$pub_port on the host answers from e2e-b's 127.0.0.1:8000" test "$(published)" = "hello from e2e-b"
check "vm show lists the published port" grep -q "^publish: *127.0.0.1:$pub_port -> 8000$" <<<"$("$banger" vm show e2e-b)"
check "vm list --json has it" test "$("$banger" vm list --json | python3 -c 'import json,sys; print([v["publish"] for v in json.load(sys.stdin) if v["name"] == "e2e-b"][0])')" = "['127.0.0.1:$pub_port:8000']"
pub_taken=$("$banger" vm set e2e-a --publish "$pub_port:22" 2>&1)
check "the same host port for e2e-a is refused, naming e2e-b" grep -q "already published by VM e2e-b" <<<"$pub_taken"

say "== 6c. a stop right after vm create --wait is graceful (SSH answers before logind is up)"
check "vm create e2e-quick --wait" create_booted "$banger" e2e-quick "${sizes[@]}" --disk-size 1G --wait --wait-timeout "$boot_timeout"
stopped=$("$banger" vm stop e2e-quick 2>&1)
check "vm stop at once ends it cleanly ($stopped)" grep -q "clean shutdown" <<<"$stopped"
check "vm delete e2e-quick" "$banger" vm delete e2e-quick

say "== 7. bangerd killed with SIGKILL; the next command restarts it"
old=$(cat "$XDG_RUNTIME_DIR/banger/bangerd.pid")
kill -9 "$old"
sleep 0.5
running=$("$banger" vm list --json | python3 -c 'import json,sys; print(sum(v["state"] == "running" for v in json.load(sys.stdin)))')
new=$(cat "$XDG_RUNTIME_DIR/banger/bangerd.pid")
check "a new bangerd serves (pid $old -> $new)" test "$new" != "$old"
check "both VMs are still running" test "$running" = 2
check "e2e-a is still reachable" test "$(in_vm e2e-a hostname)" = e2e-a
check "e2e-b is still reachable" test "$(in_vm e2e-b hostname)" = e2e-b
check "the new bangerd publishes e2e-b's port again" test "$(published)" = "hello from e2e-b"

say "== 8. delete leaves nothing behind"
ids=$("$banger" vm list --json | python3 -c 'import json,sys; print(" ".join(v["id"] for v in json.load(sys.stdin)))')
# `poweroff` typed in a session: the reminder must not say "still running".
goodbye=$("$banger" vm ssh e2e-b -- systemctl poweroff 2>&1 >/dev/null | tail -n1)
say "      $goodbye"
check "after poweroff inside vm ssh, the reminder says e2e-b is going down" grep -qE "^e2e-b (is shutting down|has stopped)" <<<"$goodbye"
check "vm delete e2e-a e2e-b" "$banger" vm delete e2e-a e2e-b
leftover=0
for id in $ids; do
    pgrep -f "$id" >/dev/null && { say "      a process of $id remains"; leftover=1; }
    [ -e "$state/vms/$id" ] && { say "      files of $id remain"; leftover=1; }
done
check "no process or file of the VMs remains" test "$leftover" = 0
check "no TAP of the VMs remains" test "$(ip -o link show | grep -cE " bg-(${id_a:0:10}|${id_b:0:10})[:@]")" = 0
check "no iptables rule of the VMs remains" test "$(nat_rules "$id_a")" = 0 -a "$(nat_rules "$id_b")" = 0
check "no vsock socket remains" test -z "$(find "$state/vms" -name '*.sock' 2>/dev/null)"
check "nothing listens on the published port $pub_port" test -z "$(ss -Htln "sport = :$pub_port")"

say "== 9. bangerd killed in the middle of vm create (BANGER_TEST_CRASH_AT)"
# The daemon SIGKILLs itself at the named step; the next command starts a
# new one, which must end what the dead one started.
"$banger" daemon stop >/dev/null 2>&1
crashed=""
for step in create:provisioned boot:launched; do
    before=$(ls "$state/vms" 2>/dev/null)
    BANGER_TEST_CRASH_AT=$step "$banger" vm create --name "crash-${step%%:*}" "${sizes[@]}" >/dev/null 2>&1
    new_dirs=$(comm -13 <(printf '%s\n' $before | sort) <(ls "$state/vms" 2>/dev/null | sort))
    say "      killed at $step, leaving ${new_dirs:-nothing}"
    crashed="$crashed $new_dirs"
done
check "the crash left a VM directory behind to clean up" test -n "${crashed// /}"
check "the next command starts a daemon that lists neither half-made VM" \
    test "$("$banger" vm list --json | python3 -c 'import json,sys; print(sum(v["name"].startswith("crash-") for v in json.load(sys.stdin)))')" = 0
leftover=0
for id in $crashed; do
    pgrep -f "$id" >/dev/null && { say "      a process of $id remains: $(pgrep -af "$id")"; leftover=1; }
    [ -e "$state/vms/$id" ] && { say "      files of $id remain"; leftover=1; }
    ip -o link show | grep -q " bg-${id:0:10}[:@]" && { say "      the TAP of $id remains"; leftover=1; }
done
check "no process, TAP or file of the interrupted creates remains" test "$leftover" = 0
check "vm create crash2 --wait (takes the freed IP)" create_booted "$banger" crash2 "${sizes[@]}" --disk-size 1G --wait --wait-timeout "$boot_timeout"
check "crash2's SSH reaches crash2, not a leaked guest" test "$(in_vm crash2 hostname)" = crash2
# QEMU turns SIGTERM into exit status 0, Firecracker has no handler for
# it; either way banger records a kill.
pid_c=$(vm_field crash2 pid)
kill -TERM "$pid_c"
for _ in $(seq 50); do
    state_c=$("$banger" vm show crash2 --json | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["state"], "|", v.get("exit_reason"))')
    case "$state_c" in stopped*) break ;; esac
    sleep 0.2
done
check "$vmm ended by SIGTERM from outside is recorded as such ($state_c)" test "$state_c" = "stopped | killed by SIGTERM"
check "vm delete crash2" "$banger" vm delete crash2

if [ -d "$neighbour/run" ]; then
    neighbour_vm=$(as_neighbour vm show e2e-neighbour --json | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["state"], v["guest_ip"], v["id"])')
    say "      the neighbour's VM: $neighbour_vm"
    read -r n_state n_ip n_id <<<"$neighbour_vm"
    check "the neighbour's VM still runs, untouched by the suite" test "$n_state" = running
    check "its TAP is still on banger0" sh -c "ip -o link show dev bg-${n_id:0:10} | grep -q 'master banger0'"
    check "the neighbour deletes its VM" as_neighbour vm delete e2e-neighbour
fi

say "== 10. the state disk fills up: the guest pauses, banger says why, and still stops and deletes it"
# A daemon of its own (state on a 1.1G tmpfs, its own bridge and pool), as
# the probe that found the wedge had it.
full="$world/full"
mkdir -p "$full/state" "$full/run" "$full/config/banger"
if [ "$vmm" != qemu ]; then
    skip "the full state disk" "the paused state is QEMU's werror=stop; Firecracker returns the write error to the guest instead"
elif mount -t tmpfs -o size=1100m tmpfs "$full/state"; then
    printf 'vmm = "qemu"\nbridge = "bgfull-%s"\nguest_ip_pool = "10.217.%s.0/24"\ndns_listen = "127.0.0.1:0"\n' \
        "$(( $$ % 100000 ))" "$(( $$ % 200 + 20 ))" > "$full/config/banger/config.toml"
    as_full() { XDG_STATE_HOME="$full/state" XDG_RUNTIME_DIR="$full/run" XDG_CONFIG_HOME="$full/config" "$banger" "$@"; }
    full_state() { as_full vm show filler --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'; }
    check "vm create filler with its state on a 1.1G disk" create_booted as_full filler --disk-size 4G --memory 512 --vcpu 1 --wait --wait-timeout "$boot_timeout"
    # banger itself in the background (not through as_full, a function:
    # its $! would be a subshell, and killing that leaves banger running).
    XDG_STATE_HOME="$full/state" XDG_RUNTIME_DIR="$full/run" XDG_CONFIG_HOME="$full/config" \
        "$banger" vm ssh filler -- 'dd if=/dev/zero of=/root/fill bs=1M count=3000 conv=fsync' >/dev/null 2>&1 &
    filling=$!
    state_f=""
    for _ in $(seq 240); do
        state_f=$(full_state)
        [ "$state_f" = paused ] && break
        sleep 1
    done
    check "the guest shows paused once the host disk is full ($state_f)" test "$state_f" = paused
    shown=$(as_full vm show filler 2>&1)
    check "vm show says the disk write failed and how much is free" grep -q "disk write failed: the host filesystem holding .* free" <<<"$shown"
    check "vm list still answers" as_full vm list
    # The writer's `vm ssh` goes first: ended later, its post-SSH reminder
    # would start a new daemon after `daemon stop`. Its ssh ends with it.
    kill "$filling" 2>/dev/null
    wait "$filling" 2>/dev/null
    check "vm stop works on the full disk" as_full vm stop filler
    check "vm delete works on the full disk" as_full vm delete filler
    check "daemon stop works on the full disk" as_full daemon stop
    check "the writer's vm ssh is gone" sh -c "! kill -0 $filling 2>/dev/null"
    check "no daemon runs afterwards" sh -c "! XDG_STATE_HOME='$full/state' XDG_RUNTIME_DIR='$full/run' XDG_CONFIG_HOME='$full/config' '$banger' daemon status >/dev/null 2>&1"
    umount "$full/state" || umount -l "$full/state"
    drop_bridge "bgfull-$(( $$ % 100000 ))"
else
    check "mount a 1.1G tmpfs for the full-disk test (root)" false
fi

say "== 11. make install: the installed binaries find their bundle without the checkout"
prefix="$world/prefix"
if [ "$vmm" != qemu ]; then
    skip "make install" "the host VM has no checkout or toolchain; make e2e checks it"
elif HOME="$real_home" make -C "$repo" --no-print-directory install PREFIX="$prefix" >"$world/install.log" 2>&1; then
    source_of_bundle=$(cd / && env -u BANGER_RUNTIME_DIR HOME="$world/installed-home" XDG_RUNTIME_DIR="$world/installed-run" \
        "$prefix/bin/banger" doctor --json | python3 -c 'import json,sys; print([c["detail"] for c in json.load(sys.stdin) if c["name"] == "runtime bundle"][0])')
    check "doctor from the prefix finds $prefix/lib/banger ($source_of_bundle)" grep -q "^$prefix/lib/banger (Installed)" <<<"$source_of_bundle"
    # doctor's checks ran in the installed daemon it started: stop it.
    check "the installed daemon stops" env -u BANGER_RUNTIME_DIR HOME="$world/installed-home" XDG_RUNTIME_DIR="$world/installed-run" \
        "$prefix/bin/banger" daemon stop
else
    check "make install PREFIX=$prefix" false
    tail -n 20 "$world/install.log"
fi

summary "e2e ($vmm)"
