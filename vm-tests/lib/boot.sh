#!/usr/bin/env bash
# Boots a guest under qemu and reads its results back: the console on the
# first serial port, the driver's VMTEST lines on the second, the exit status
# through isa-debug-exit (qemu exits 2*code+1: 1 all passed, 3 some failed;
# 0 is a kernel panic or a plain poweroff, never a success), and a deadline
# after which a hung guest is killed. Sourced by run.sh.

# KVM when it works, else TCG (SYCRI_VM_ACCEL=kvm|tcg decides). One probe
# boot of KERNEL with a tiny initramfs that only says hello on the console
# tells; the answer is kept per qemu and host kernel, so that on a host where
# KVM hangs the probe costs its deadline once.
vm_accel() {
    local kernel="$1" key file out busybox
    VM_ACCEL_WHY=""
    if [ -n "${SYCRI_VM_ACCEL:-}" ]; then
        VM_ACCEL="$SYCRI_VM_ACCEL"
        return 0
    fi
    if [ ! -w /dev/kvm ]; then
        VM_ACCEL=tcg
        VM_ACCEL_WHY="no usable /dev/kvm"
        return 0
    fi
    key="$(vm_key -- "$VM_QEMU" "$(uname -r)" "$(stat -c %t:%T /dev/kvm)")"
    file="$VM_CACHE/accel-$key"
    if [ ! -s "$file" ]; then
        vm_say "probing KVM (one boot, at most 25 s)"
        busybox="$(vm_package bookworm busybox-static)/bin/busybox" || return 1
        out="$(mktemp -d)"
        mkdir -p "$out/root/bin" "$out/root/dev"
        cp "$busybox" "$out/root/bin/busybox"
        ln -s busybox "$out/root/bin/sh"
        printf '#!/bin/sh\n/bin/busybox mount -t devtmpfs d /dev\necho VMPROBE-OK >/dev/ttyS0\n/bin/busybox poweroff -f\n' >"$out/root/init"
        chmod +x "$out/root/init"
        (cd "$out/root" && find . | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) >"$out/probe.cpio"
        timeout --kill-after=5 25 "$VM_QEMU" -accel kvm -cpu host -M pc -smp 1 -m 512 \
            -display none -monitor none -nic none -no-reboot \
            -kernel "$kernel" -initrd "$out/probe.cpio" -append "console=ttyS0 panic=-1" \
            -serial "file:$out/console" </dev/null >"$out/qemu.log" 2>&1 || true
        if grep -q VMPROBE-OK "$out/console" 2>/dev/null; then echo kvm >"$file"; else echo tcg >"$file"; fi
        rm -rf "$out"
    fi
    VM_ACCEL="$(cat "$file")"
    [ "$VM_ACCEL" = tcg ] && VM_ACCEL_WHY="KVM did not boot the probe guest (answer kept in $file)"
    return 0
}

# vm_run OUT LIMIT QEMU-ARGS...: boots; sets VM_RC and VM_WALL (seconds).
vm_run() {
    local out="$1" limit="$2" t0 cpu=max
    shift 2
    mkdir -p "$out"
    : >"$out/console.log"
    : >"$out/results.log"
    [ "$VM_ACCEL" = kvm ] && cpu=host
    t0="$(vm_now)"
    VM_RC=0
    timeout --kill-after=10 "$limit" "$VM_QEMU" -accel "$VM_ACCEL" -cpu "$cpu" -M pc -smp 2 -m 2048 \
        -display none -monitor none -nic none -no-reboot \
        -serial "file:$out/console.log" -serial "file:$out/results.log" \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 "$@" </dev/null >"$out/qemu.log" 2>&1 || VM_RC=$?
    VM_WALL="$(vm_elapsed "$t0" "$(vm_now)")"
}

# vm_report PART OUT LIMIT: prints a line per test of the part and adds the
# part's counts to VM_PASSED, VM_FAILED, VM_SKIPPED. A test the guest planned
# but never finished fails, with the reason the boot ended.
vm_report() {
    local part="$1" out="$2" limit="$3" res why planned t p=0 f=0 s=0
    res="$out/results.txt"
    tr -d '\r' <"$out/results.log" | grep '^VMTEST ' >"$res" || true
    case "$VM_RC" in
    1 | 3) why="" ;;
    124 | 137) why="the guest hung: killed at the deadline of ${limit} s" ;;
    0) why="the guest ended without an exit status (kernel panic or poweroff)" ;;
    *) why="qemu exited $VM_RC ($(tail -n 1 "$out/qemu.log"))" ;;
    esac
    local tag verb name rest
    while read -r tag verb name rest; do
        case "$verb" in
        PASS)
            p=$((p + 1))
            echo "vm[$part]: PASS $name (${rest})"
            ;;
        FAIL)
            f=$((f + 1))
            echo "vm[$part]: FAIL ${name}${rest:+ $rest}"
            ;;
        SKIP)
            s=$((s + 1))
            echo "vm[$part]: SKIPPED ${name%:}: $rest"
            ;;
        NOTE) echo "vm[$part]:   ${name%:} | $rest" ;;
        esac
    done <"$res"
    planned="$(sed -n 's/^VMTEST BEGIN .*tests=//p' "$res" | head -n 1 | tr ',' ' ')"
    if ! grep -q '^VMTEST BEGIN' "$res"; then
        f=$((f + 1))
        echo "vm[$part]: FAIL boot: the driver never reported: ${why:-no BEGIN line}"
        tail -n 5 "$out/qemu.log" | sed "s/^/vm[$part]:   qemu: /"
    fi
    for t in $planned; do
        grep -qE "^VMTEST (PASS|FAIL|SKIP) $t[ :]" "$res" && continue
        f=$((f + 1))
        if grep -qE "^VMTEST START $t\$" "$res"; then
            echo "vm[$part]: FAIL $t: no result, it was running when ${why:-the driver stopped}"
        else
            echo "vm[$part]: FAIL $t: never ran: ${why:-the driver stopped before it}"
        fi
    done
    # qemu's own errors exit 1 too: a success also needs the driver's END.
    if [ "$f" = 0 ] && { [ "$VM_RC" != 1 ] || ! grep -q '^VMTEST END ' "$res"; }; then
        f=1
        echo "vm[$part]: FAIL exit: every test passed but the guest's exit says otherwise: ${why:-qemu rc $VM_RC}"
    fi
    if [ "$f" -gt 0 ]; then
        echo "vm[$part]: the console's last lines ($out/console.log):"
        tr -d '\r' <"$out/console.log" | grep -v '^VMTEST ' | tail -n 25 | sed "s/^/vm[$part]:   > /"
    fi
    echo "vm[$part]: $p passed, $f failed, $s skipped; boot to exit ${VM_WALL} s (qemu rc $VM_RC, $VM_ACCEL)"
    VM_PASSED=$((VM_PASSED + p))
    VM_FAILED=$((VM_FAILED + f))
    VM_SKIPPED=$((VM_SKIPPED + s))
}
