#!/usr/bin/env bash
# The VM suite: sycri on clean Debian kernels in qemu, pure cgroup v2.
#
# Fetches qemu, busybox, the CNI plugins and the kernels from Debian's
# archive (cached), builds the release sycri, the static engine and the test
# driver, packs them with the SIF fixture into a guest, boots it with
# cgroup_no_v1=all and reads the driver's results back. Parts (each one boot):
#   6.1      bookworm's 6.1 -amd64, initramfs guest, every test
#   6.12     trixie's 6.12 -amd64, initramfs guest, every test
#   systemd  bookworm's 6.1 -cloud, a debootstrap'ed root with systemd as
#            pid 1 and sycri started by its unit: the smoke subset and
#            restart (SIGKILL of the unit's server, systemd restarts it)
#
# Usage: sudo vm-tests/run.sh [--kernel 6.1|6.12] [--profile initramfs|systemd]
#                             [--only TEST,...] [--timeout SECS] [--list]
#   --kernel, --profile  run only the parts named (6.1, 6.12, systemd) or of
#                        that profile (repeatable; both given: parts that match both)
#   --only               the tests to run in each chosen part (names, `smoke`, `all`)
#   --timeout            deadline of each boot (a guest still running then is killed)
#   --list               the tests and the parts, then exit
# Env: SYCRI_VM_CACHE (default /var/cache/sycri-vm), SYCRI_FIXTURES,
#      SYCRI_VM_ACCEL=kvm|tcg, SYCRI_VM_QEMU, SYCRI_VM_MIRROR,
#      SYCRI_VM_FETCH_TRIES (3), SYCRI_VM_FETCH_BACKOFF (5 s, tripled each try),
#      SYCRI_SKIP_VM=1 (every part SKIPPED).
# Ends with `vm-tests total: N passed, N failed, N skipped`; exits 1 when a
# test failed (a hung or crashed guest fails its tests), 0 otherwise.
set -euo pipefail
VM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$VM_DIR")"
. "$VM_DIR/lib/common.sh"
. "$VM_DIR/lib/fetch.sh"
. "$VM_DIR/lib/image.sh"
. "$VM_DIR/lib/boot.sh"

# name profile kernel tests deadline(s)
VM_PARTS=(
    "6.1 initramfs 6.1 all 900"
    "6.12 initramfs 6.12 all 900"
    "systemd systemd cloud smoke,restart 600"
)

kernels=() profiles=() only="" deadline="" list=0
while [ "$#" -gt 0 ]; do
    case "$1" in
    --kernel) kernels+=("$2"); shift 2 ;;
    --profile) profiles+=("$2"); shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --timeout) deadline="$2"; shift 2 ;;
    --list) list=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) vm_die "unknown argument $1 (see --help)" ;;
    esac
done

# A part runs when --kernel (if given) names it and --profile (if given) is its.
in_list() {
    local want="$1"
    shift
    [ "$#" -eq 0 ] || printf '%s\n' "$@" | grep -qx -- "$want"
}
parts=()
for p in "${VM_PARTS[@]}"; do
    read -r name profile _ <<<"$p"
    in_list "$name" "${kernels[@]}" && in_list "$profile" "${profiles[@]}" && parts+=("$p")
done
[ "${#parts[@]}" -gt 0 ] || vm_die "no part matches --kernel ${kernels[*]:-} --profile ${profiles[*]:-}"

VM_PASSED=0 VM_FAILED=0 VM_SKIPPED=0
T_START="$(vm_now)"

# Every chosen part SKIPPED for one reason; the summary, exit 0.
skip_all() {
    local p name
    for p in "${parts[@]}"; do
        read -r name _ <<<"$p"
        echo "SKIPPED vm-tests $name: $1"
        VM_SKIPPED=$((VM_SKIPPED + 1))
    done
    summary
    exit 0
}

summary() {
    echo "vm-tests wall time: $(vm_elapsed "$T_START" "$(vm_now)") s${TIMES:+ ($TIMES)}"
    echo "vm-tests total: $VM_PASSED passed, $VM_FAILED failed, $VM_SKIPPED skipped"
}
TIMES=""
lap() { TIMES="${TIMES:+$TIMES, }$1 $(vm_elapsed "$2" "$(vm_now)") s"; }

[ "${SYCRI_SKIP_VM:-0}" = 1 ] && [ "$list" = 0 ] && skip_all "SYCRI_SKIP_VM=1"
[ "$(id -u)" -eq 0 ] || skip_all "needs root (loop devices for the images, mknod, debootstrap)"
[ "$(uname -m)" = x86_64 ] || skip_all "the guests are x86_64 and this machine is $(uname -m)"
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
    skip_all "no apt-get/dpkg-deb: the kernels and qemu come from Debian's archive"

VM_FIXTURES="${SYCRI_FIXTURES:-$REPO/../shared/fixtures/sif}"
[ -f "$VM_FIXTURES/busybox_amd64.sif" ] ||
    [ "$list" = 1 ] || skip_all "SIF fixtures not found at $VM_FIXTURES (set SYCRI_FIXTURES)"

# The binaries under test.
. "$REPO/scripts/setup.sh" >/dev/null
t="$(vm_now)"
vm_say "building the release sycri, the test driver and the static engine"
(cd "$REPO" && cargo build --release --quiet -p sycri -p sycri-vm-driver --bins)
VM_BIN_ENGINE="$(cd "$REPO" && bash scripts/build-engine.sh)"
case "$VM_BIN_ENGINE" in /*) ;; *) VM_BIN_ENGINE="$REPO/$VM_BIN_ENGINE" ;; esac
target="$(dirname "$(dirname "$(dirname "$VM_BIN_ENGINE")")")"
VM_BIN_SYCRI="$target/release/sycri"
VM_BIN_DRIVER="$target/release/sycri-vm-driver"
lap build "$t"
if [ "$list" = 1 ]; then
    "$VM_BIN_DRIVER" list
    echo
    printf 'part     profile    kernel  tests\n'
    for p in "${VM_PARTS[@]}"; do
        read -r name profile kernel tests _ <<<"$p"
        printf '%-8s %-10s %-7s %s\n' "$name" "$profile" "$kernel" "$tests"
    done
    exit 0
fi

t="$(vm_now)"
mkdir -p "$VM_CACHE"
# One run at a time per cache (a second waits): the cache is written in
# place, and two TCG guests on two cores would only slow each other down.
exec 9>"$VM_CACHE/.lock"
if ! flock -n 9; then
    vm_say "waiting for another vm-tests run to finish (lock $VM_CACHE/.lock)"
    flock 9
fi
vm_fetch_clear
vm_qemu || skip_all "qemu cannot be had (neither installed nor downloadable from Debian's archive): $(vm_fetch_error)"
qv="$("$VM_QEMU" --version 2>&1 | head -n 1)" || skip_all "qemu does not run here: $qv"
vm_say "$qv"
{ vm_package bookworm busybox-static && vm_package bookworm containernetworking-plugins; } >/dev/null ||
    skip_all "busybox-static or containernetworking-plugins cannot be downloaded from Debian's archive: $(vm_fetch_error)"
lap fetch "$t"

VM_ACCEL="" VM_ACCEL_WHY=""
for p in "${parts[@]}"; do
    read -r name profile kernel tests limit <<<"$p"
    tests="${only:-$tests}"
    limit="${deadline:-$limit}"
    t="$(vm_now)"
    vm_fetch_clear
    if ! kdir="$(vm_kernel "$kernel")"; then
        echo "SKIPPED vm-tests $name: the $kernel kernel cannot be downloaded from Debian's archive: $(vm_fetch_error)"
        VM_SKIPPED=$((VM_SKIPPED + 1))
        continue
    fi
    out="$VM_CACHE/logs/$name"
    rm -rf "$out"
    mkdir -p "$out"
    append="console=ttyS0 cgroup_no_v1=all panic=-1 vmtests=$tests"
    case "$profile" in
    initramfs)
        initrd="$(vm_initramfs "$kdir")" || vm_die "building the initramfs failed"
        [ -n "$VM_ACCEL" ] || vm_accel "$kdir/kernel"
        boot=(-kernel "$kdir/kernel" -initrd "$initrd" -append "$append quiet")
        ;;
    systemd)
        vm_fetch_clear
        if ! base="$(vm_debootstrap)"; then
            echo "SKIPPED vm-tests $name: debootstrap of bookworm failed: $(vm_fetch_error) (see $VM_CACHE/rootfs/debootstrap.log)"
            VM_SKIPPED=$((VM_SKIPPED + 1))
            continue
        fi
        image="$(vm_systemd_image "$kdir")" || vm_die "building the systemd root image failed"
        [ -n "$VM_ACCEL" ] || vm_accel "$kdir/kernel"
        boot=(-kernel "$kdir/kernel"
            -drive "file=$image,if=none,id=d0,format=raw,snapshot=on" -device nvme,drive=d0,serial=root
            -append "$append root=/dev/nvme0n1 rootfstype=ext4 rw init=/lib/systemd/systemd")
        ;;
    esac
    lap "$name-prepare" "$t"
    vm_say "booting $name: $(cat "$kdir/release"), tests $tests, $VM_ACCEL${VM_ACCEL_WHY:+ ($VM_ACCEL_WHY)}, deadline $limit s; logs in $out"
    t="$(vm_now)"
    vm_run "$out" "$limit" "${boot[@]}"
    # A guest kernel that dies before the driver starts has run nothing of
    # ours (under TCG the kernel now and then trips over its own code
    # patching at boot: "Oops: int3" in kernel_init): boot it once more, and
    # say so. A second death fails the part as before.
    if [ "$VM_RC" = 0 ] && ! tr -d '\r' <"$out/results.log" | grep -q '^VMTEST BEGIN'; then
        first="$(tr -d '\r' <"$out/console.log" | grep -m 1 -E 'Oops|panic|BUG' || true)"
        mv "$out/console.log" "$out/console.first-boot.log"
        vm_say "the $name guest died before the driver started (${first:-no console line}; $out/console.first-boot.log); booting it once more"
        vm_run "$out" "$limit" "${boot[@]}"
    fi
    vm_report "$name" "$out" "$limit"
    lap "$name" "$t"
done

summary
[ "$VM_FAILED" -eq 0 ]
