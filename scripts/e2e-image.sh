#!/usr/bin/env bash
# End-to-end test of `banger image build` on the qemu backend: a real
# builder VM provisions an image from the bundle's base (one apt package,
# mise and opencode from their pinned npm upstreams, tmux plugins from
# local tarballs the test makes and pins, the pingd service); a VM made
# from it has them all; `image delete` waits for that VM. Then a bad pin,
# a Ctrl-C and a killed daemon each leave no image, builder VM or file.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
. "$repo/scripts/e2e-lib.sh"
banger="${BANGER_E2E_BANGER:-$repo/target/debug/banger}"
bundle="${BANGER_RUNTIME_DIR:-$repo/runtime}"
boot_timeout=${BANGER_E2E_BOOT_TIMEOUT:-240}

enter_world banger-e2e-image
bridge="bgimg-$(( $$ % 100000 ))"
pool="10.217.$(( $$ % 200 + 20 )).0/24"
state="$HOME/.local/state/banger"
# Verified downloads outlive the run: the next one does not fetch them again.
source_cache="$real_home/.cache/banger-e2e/image-sources"

diagnose() {
    say "---- diagnostics"
    for log in "$state"/image-build/*.log; do
        [ -e "$log" ] || continue
        say "== $(basename "$log") (last 30 lines)"
        tail -n 30 "$log"
    done
    say "== bangerd.log (last 20 lines)"
    tail -n 20 "$state/bangerd.log" 2>/dev/null
}

cleanup() {
    [ -n "${build_pid:-}" ] && kill "$build_pid" 2>/dev/null
    for socket in "$world"/tmux-*.sock; do
        [ -S "$socket" ] && tmux -S "$socket" kill-server 2>/dev/null
    done
    "$banger" vm delete e2e-imgvm >/dev/null 2>&1
    for vm in $("$banger" vm list --json 2>/dev/null | python3 -c 'import json,sys; print(" ".join(v["name"] for v in json.load(sys.stdin)))'); do
        "$banger" vm delete "$vm" >/dev/null 2>&1
    done
    if [ -d "$world/.cache/banger/image-sources" ]; then
        mkdir -p "$source_cache"
        cp -n "$world"/.cache/banger/image-sources/{mise,opencode}-*.tar "$source_cache"/ 2>/dev/null
    fi
    "$banger" daemon stop >/dev/null 2>&1
    drop_bridge "$bridge"
    rm -rf "$world"
}
trap cleanup EXIT

if [ ! -f "$bundle/rootfs.ext4" ]; then
    skip "image build e2e" "the runtime bundle has no rootfs.ext4 (run make runtime)"
    exit 0
fi

say "== 1. sources: mise and opencode from their pinned upstream, the tmux plugins made here"
mkdir -p "$world/.cache/banger/image-sources"
cp "$source_cache"/*.tar "$world/.cache/banger/image-sources/" 2>/dev/null
plugins="$world/plugins"
mkdir -p "$plugins/tmux-resurrect-4.0.0/scripts" "$plugins/tmux-continuum-3.1.0/scripts"
printf '#!/usr/bin/env bash\n# e2e stand-in for tmux-resurrect\n' > "$plugins/tmux-resurrect-4.0.0/resurrect.tmux"
printf '#!/usr/bin/env bash\n# e2e stand-in for tmux-continuum\n' > "$plugins/tmux-continuum-3.1.0/continuum.tmux"
chmod 755 "$plugins"/*/*.tmux
tar -C "$plugins" -cf "$plugins/resurrect.tar" tmux-resurrect-4.0.0
tar -C "$plugins" -cf "$plugins/continuum.tar" tmux-continuum-3.1.0
sum() { sha256sum "$1" | cut -c1-64; }
config() {
    printf 'vmm = "qemu"\nbridge = "%s"\nguest_ip_pool = "%s"\ndns_listen = "127.0.0.1:0"\n[image_sources]\n' "$bridge" "$pool"
    printf 'tmux_resurrect = { place = "%s", sha256 = "%s" }\n' "$plugins/resurrect.tar" "$1"
    printf 'tmux_continuum = { place = "%s", sha256 = "%s" }\n' "$plugins/continuum.tar" "$(sum "$plugins/continuum.tar")"
}
config "$(sum "$plugins/resurrect.tar")" > "$HOME/.config/banger/config.toml"
echo tree > "$world/packages.apt"

say "== 2. image build --name e2e-img: one package, from the bundle's base"
build_out="$world/build.out"
"$banger" image build --name e2e-img --packages "$world/packages.apt" > "$build_out" 2>&1
build_status=$?
sed 's/^/      | /' "$build_out"
check "image build exits 0 ($build_status)" test "$build_status" = 0
check "it names each step with its time" test "$(grep -cE '^ *(done|skipped) ' "$build_out")" -ge 10
check "it ends with the image and its size" grep -qE '^built image e2e-img \([0-9]+M\) in [0-9]+s' "$build_out"
log=$(sed -n 's/^log: //p' "$build_out")
check "the build log is under ~/.local/state/banger/image-build" test -f "$log" -a "$(dirname "$log")" = "$state/image-build"
for key in mise opencode tmux_resurrect tmux_continuum; do
    check "the log names $key's upstream URL and pin" grep -qE "^$key [0-9.]+: upstream https://[^ ]+ pinned to tar sha256 [0-9a-f]{64}" "$log"
done
check "mise came from the npm registry, checked against its pin" grep -qE '^mise [0-9.]+: upstream (https://registry.npmjs.org/[^ ]+) pinned to tar sha256 [0-9a-f]{64}; taken from https://registry.npmjs.org/' "$log"
shown=$("$banger" image show e2e-img)
check "image show lists the package" grep -q '^packages: *tree$' <<<"$shown"
check "image show lists the base" grep -qF "base:        $bundle/rootfs.ext4" <<<"$shown"
check "image show lists the size and the log" test "$(grep -cE "^(size: +[0-9]+M|build log: +$log)$" <<<"$shown")" = 2
check "image list has e2e-img as built" grep -qE '^e2e-img +no +built ' <<<"$("$banger" image list)"
check "no builder VM remains" test -z "$("$banger" vm list --json | python3 -c 'import json,sys; print(" ".join(v["name"] for v in json.load(sys.stdin)))')"

say "== 3. a VM made from e2e-img has what the build installed"
check "vm create --image e2e-img (no NAT)" create_booted "$banger" e2e-imgvm --image e2e-img --wait --wait-timeout "$boot_timeout"
# One string: ssh joins its arguments with spaces for the remote shell.
in_imgvm() { in_vm e2e-imgvm "$1"; }
check "the package: tree" in_imgvm 'command -v tree'
mise_version=$(in_imgvm "bash -lc 'mise --version'")
check "mise --version from a login shell ($mise_version)" grep -qE '^[0-9]{4}\.[0-9]+\.[0-9]+ linux-x64' <<<"$mise_version"
check "opencode through mise ($(in_imgvm "bash -lc 'mise which opencode'"))" grep -q '/mise/installs/opencode/' <<<"$(in_imgvm "bash -lc 'mise which opencode'")"
tmux_conf=$(in_imgvm 'cat /root/.tmux.conf')
check "root's tmux config loads both plugins" test "$(grep -c '^run-shell /root/.tmux/plugins/tmux-' <<<"$tmux_conf")" = 2
check "the plugins are in root's home" in_imgvm 'test -x /root/.tmux/plugins/tmux-resurrect/resurrect.tmux -a -x /root/.tmux/plugins/tmux-continuum/continuum.tmux'
check "continuum autosaves and never restores by itself" test "$(grep -cE "^set -g @continuum-(save-interval '15'|restore 'off')$" <<<"$tmux_conf")" = 2
check "pingd is enabled" test "$(in_imgvm 'systemctl is-enabled banger-vsock-pingd')" = enabled
reminder=$("$banger" vm ssh e2e-imgvm -- true 2>&1 >/dev/null | tail -n1)
check "the reminder works ($reminder)" grep -q "^e2e-imgvm is still running" <<<"$reminder"

say "== 3b. --interactive: a shell in the image, sealed on exit 0, discarded on exit 1"
if ! command -v tmux >/dev/null; then
    skip "image build --interactive" "tmux is not installed (apt-get install tmux)"
else
    pane() { tmux -S "$tmux_socket" "$@"; }
    pane_shows() { tmux_shows "$tmux_socket" "$1" 1800; }
    : > "$world/no-packages.apt"
    for verdict in 0 1; do
        name="e2e-shell$verdict"
        # A server of its own per build: a killed server may still be
        # exiting when the next session would join it.
        tmux_socket="$world/tmux-$verdict.sock"
        TERM=xterm-256color pane new-session -d -x 150 -y 40 \
            "'$banger' image build --name $name --base e2e-img --packages '$world/no-packages.apt' --interactive; echo BUILD-EXIT=\$?; sleep 600"
        check "$name: the build opens a shell in the image" pane_shows "root@build-$name:/#"
        pane send-keys -t 0 -l "echo made-in-the-shell > /etc/e2e-shell; exit $verdict"
        pane send-keys -t 0 Enter
        if [ "$verdict" = 0 ]; then
            check "exit 0 seals: the build succeeds" pane_shows "BUILD-EXIT=0"
            check "the shell's file is in the image" test "$(debugfs -R 'cat /etc/e2e-shell' "$state/images/$name/rootfs.ext4" 2>/dev/null)" = made-in-the-shell
            check "the builder's hostname is not" test "$(debugfs -R 'cat /etc/hostname' "$state/images/$name/rootfs.ext4" 2>/dev/null)" != "build-$name"
            check "image delete $name" "$banger" image delete "$name"
        else
            check "exit 1 discards: the build ends cancelled (130)" pane_shows "BUILD-EXIT=130"
            check "no image $name, no builder, no staging" sh -c "! '$banger' image show $name >/dev/null 2>&1 && ! '$banger' vm show build-$name >/dev/null 2>&1 && test ! -e '$state/images/.build-$name'"
        fi
        pane kill-server 2>/dev/null
    done
fi

say "== 4. a rebuild serves new VMs; e2e-imgvm keeps the build it was made from"
echo 'kept by its VM' | "$banger" vm ssh e2e-imgvm -- 'cat > /etc/e2e-marker' 2>/dev/null
check "image build --name e2e-img again, while e2e-imgvm uses it" "$banger" image build --name e2e-img --packages "$world/packages.apt"
kept=$(vm_field e2e-imgvm image)
check "e2e-imgvm now names the previous build ($kept)" grep -qE '^e2e-img-[0-9]+$' <<<"$kept"
check "image list has both builds" test "$("$banger" image list | grep -cE "^(e2e-img|$kept) ")" = 2
check "vm restart e2e-imgvm" "$banger" vm restart e2e-imgvm
check "e2e-imgvm answers SSH again" wait_ssh e2e-imgvm
check "it booted its own build, its overlay intact" test "$(in_imgvm 'cat /etc/e2e-marker')" = "kept by its VM"

say "== 5. image delete waits for the VMs that use the image"
refused=$("$banger" image delete "$kept" 2>&1)
check "image delete $kept is refused, naming e2e-imgvm" grep -q 'is used by e2e-imgvm' <<<"$refused"
check "image delete e2e-img (the new build, unused)" "$banger" image delete e2e-img
check "vm delete e2e-imgvm" "$banger" vm delete e2e-imgvm
check "image delete $kept" "$banger" image delete "$kept"
check "their files are gone" test -z "$(ls -A "$state/images")"

nothing_left() {
    test -z "$("$banger" vm list --json | python3 -c 'import json,sys; print(" ".join(v["name"] for v in json.load(sys.stdin)))')" \
        && test -z "$(ls -A "$state/images" 2>/dev/null)" \
        && ! "$banger" image list | grep -q "^$1 "
}

say "== 6. a bad pin stops the build, naming the file and both hashes"
config "$(printf '0%.0s' $(seq 64))" > "$HOME/.config/banger/config.toml"
"$banger" daemon stop >/dev/null 2>&1
bad=$("$banger" image build --name e2e-bad --packages "$world/packages.apt" 2>&1)
bad_status=$?
check "the build fails ($bad_status)" test "$bad_status" = 1
check "the error names the file and both hashes" grep -q "checksum mismatch for tmux_resurrect 4.0.0 from $plugins/resurrect.tar: expected sha256 0\{64\}, found $(sum "$plugins/resurrect.tar")" <<<"$bad"
check "nothing of it remains" nothing_left e2e-bad
config "$(sum "$plugins/resurrect.tar")" > "$HOME/.config/banger/config.toml"
"$banger" daemon stop >/dev/null 2>&1

# Waits up to 120 s for the builder VM of image $1 to exist.
builder_up() {
    local i
    for i in $(seq 1 600); do
        "$banger" vm list --json 2>/dev/null | grep -q "\"build-$1\"" && return 0
        sleep 0.2
    done
    return 1
}

say "== 7. Ctrl-C during the build"
"$banger" image build --name e2e-int --packages "$world/packages.apt" > "$world/int.out" 2>&1 &
build_pid=$!
check "the builder VM appears" builder_up e2e-int
kill -INT "$build_pid"
wait "$build_pid"
int_status=$?
build_pid=""
sed 's/^/      | /' "$world/int.out"
check "the build says it was cancelled and exits 130 ($int_status)" sh -c "test $int_status = 130 && grep -q '^cancelled: no image, builder VM or temporary file of it remains' '$world/int.out'"
check "nothing of it remains" nothing_left e2e-int

say "== 8. bangerd killed during the build"
"$banger" image build --name e2e-kill --packages "$world/packages.apt" > "$world/kill.out" 2>&1 &
build_pid=$!
check "the builder VM appears" builder_up e2e-kill
builder_id=$("$banger" vm show build-e2e-kill --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
kill -9 "$(cat "$XDG_RUNTIME_DIR/banger/bangerd.pid")"
wait "$build_pid"
kill_status=$?
build_pid=""
check "the build reports the lost daemon ($kill_status)" sh -c "test $kill_status != 0 && grep -q 'the next daemon start removes the builder VM' '$world/kill.out'"
check "the next daemon removes the builder VM and the staging files" nothing_left e2e-kill
gone() { local i; for i in $(seq 1 50); do pgrep -f "$1" >/dev/null || return 0; sleep 0.2; done; pgrep -af "$1"; return 1; }
check "no process of the builder ($builder_id) runs" gone "$builder_id"

say "== 9. ./verify.sh --nat, the seed's smoke test, on the same steps"
BANGER="$banger" "$repo/verify.sh" --nat > "$world/verify.out" 2>&1
verify_status=$?
sed 's/^/      | /' "$world/verify.out"
check "./verify.sh --nat passes every step ($verify_status)" test "$verify_status" = 0 -a "$(grep -c '^ok ' "$world/verify.out")" -ge 7
bad_arg=$("$repo/verify.sh" --bogus 2>&1)
check "./verify.sh refuses an unknown argument, naming it (exit $?)" grep -q 'unknown argument --bogus' <<<"$bad_arg"

summary "e2e image build"
