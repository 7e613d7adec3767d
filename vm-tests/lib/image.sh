#!/usr/bin/env bash
# Builds what the guests boot from, cached by a key of everything that goes
# in: the initramfs (busybox, sycri and its libraries, the static engine, the
# driver, the CNI plugins, the SIF fixture, a kernel's modules, the guest
# scripts) and the systemd guest's ext4 root image (a debootstrap'ed bookworm
# plus the same files). Sourced by run.sh after common.sh and fetch.sh; uses
# VM_BIN_SYCRI, VM_BIN_ENGINE, VM_BIN_DRIVER, VM_FIXTURES, VM_DIR.

# "SOURCE DEST" lines: the files both guests get, and the shared libraries
# the dynamic ones need (the systemd guest has its own libc; the lists are
# the same glibc release, bookworm's).
vm_payload() {
    local busybox="$1" cni="$2" kdir="$3" p
    echo "$VM_BIN_SYCRI /usr/local/bin/sycri"
    echo "$VM_BIN_ENGINE /usr/local/bin/sycri-engine"
    echo "$VM_BIN_DRIVER /opt/sycri-vm/bin/sycri-vm-driver"
    echo "$busybox /opt/sycri-vm/bin/busybox"
    for p in bridge host-local loopback; do
        echo "$cni/$p /opt/cni/bin/$p"
    done
    echo "$VM_FIXTURES/busybox_amd64.sif /opt/sycri-vm/sif/busybox_amd64.sif"
    echo "$VM_DIR/guest/common/10-sycri.conflist /etc/cni/net.d/10-sycri.conflist"
    echo "$VM_DIR/guest/common/cgroups.sh /opt/sycri-vm/cgroups.sh"
    for p in "$kdir"/modules/*; do
        echo "$p /opt/sycri-vm/modules/${p##*/}"
    done
}

# The shared libraries (and the loader) the dynamic files of a payload need.
vm_libraries() {
    local src
    awk '{print $1}' | while read -r src; do
        ldd "$src" 2>/dev/null | grep -oE '/[^ ]+\.so[^ ]*' || true
    done | sort -u | while read -r lib; do
        echo "$lib $lib"
    done
}

# Copies a payload ("SOURCE DEST" lines on stdin) into the tree ROOT; ELF
# files of our own build are stripped of their symbols (a third of the size).
vm_install_payload() {
    local root="$1" src dest
    while read -r src dest; do
        mkdir -p "$root$(dirname "$dest")"
        case "$src" in
        "$VM_BIN_SYCRI" | "$VM_BIN_ENGINE" | "$VM_BIN_DRIVER")
            strip -o "$root$dest" "$src" 2>/dev/null || cp -L "$src" "$root$dest"
            ;;
        *) cp -L "$src" "$root$dest" ;;
        esac
    done
}

# Key of a payload: the content of every source and where it goes.
vm_payload_key() {
    local list="$1"
    shift
    local files
    mapfile -t files < <(awk '{print $1}' "$list")
    vm_key "${files[@]}" "$@" -- "$(cat "$list")"
}

# The initramfs for a kernel directory (vm_kernel); prints its path.
vm_initramfs() {
    local kdir="$1" busybox cni list key out stage applet
    busybox="$(vm_package bookworm busybox-static)/bin/busybox" || return 1
    cni="$(vm_package bookworm containernetworking-plugins)/usr/lib/cni" || return 1
    list="$(mktemp)"
    {
        vm_payload "$busybox" "$cni" "$kdir"
        vm_payload "$busybox" "$cni" "$kdir" | vm_libraries
    } >"$list"
    key="$(vm_payload_key "$list" "$VM_DIR/guest/initramfs" "$VM_DIR/guest/common")"
    out="$VM_CACHE/images/initramfs-$key.cpio"
    if [ ! -s "$out" ]; then
        vm_say "building the initramfs ($(wc -l <"$list") files) for $(cat "$kdir/release")"
        mkdir -p "$VM_CACHE/images"
        stage="$(mktemp -d "$VM_CACHE/tmp.XXXXXX")"
        vm_install_payload "$stage" <"$list"
        mkdir -p "$stage/bin" "$stage/dev" "$stage/proc" "$stage/sys" "$stage/etc" "$stage/var/lib"
        cp "$busybox" "$stage/bin/busybox"
        for applet in $("$busybox" --list-full); do
            [ -e "$stage/$applet" ] && continue
            mkdir -p "$stage/$(dirname "$applet")"
            ln -s /bin/busybox "$stage/$applet"
        done
        mknod -m 600 "$stage/dev/console" c 5 1
        install -m 0755 "$VM_DIR/guest/initramfs/init" "$stage/init"
        install -m 0755 "$VM_DIR/guest/initramfs/stage2" "$stage/opt/sycri-vm/stage2"
        printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
        printf 'root:x:0:\n' >"$stage/etc/group"
        printf '127.0.0.1 localhost\n' >"$stage/etc/hosts"
        (cd "$stage" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) >"$out.tmp" &&
            mv "$out.tmp" "$out"
        rm -rf "$stage"
    fi
    rm -f "$list"
    [ -s "$out" ] && echo "$out"
}

# bookworm with systemd, from debootstrap (unpacked from its package, not
# installed), cached by the debootstrap version, the mirror and the package
# list; prints the directory of the tree.
VM_DEBOOTSTRAP_INCLUDE=systemd,systemd-sysv,dbus
vm_debootstrap() {
    local ds mirror key dir
    ds="$(vm_package bookworm debootstrap)" || return 1
    mirror="${SYCRI_VM_MIRROR:-$(vm_mirror debian)}"
    key="$(vm_key "$ds/usr/sbin/debootstrap" -- "$mirror" "$VM_DEBOOTSTRAP_INCLUDE")"
    dir="$VM_CACHE/rootfs/bookworm-systemd-$key"
    if [ ! -e "$dir/.done" ]; then
        vm_say "debootstrap bookworm (minbase + $VM_DEBOOTSTRAP_INCLUDE) into $dir"
        mkdir -p "$VM_CACHE/rootfs" "$VM_CACHE/debootstrap-debs"
        # Tried again from scratch on failure (the packages it already has
        # stay in its cache directory).
        vm_retry "$VM_CACHE/rootfs/debootstrap.log" "debootstrap of bookworm" \
            _vm_debootstrap "$ds" "$dir" "$mirror" || {
            tail -n 20 "$VM_CACHE/rootfs/debootstrap.log" >&2
            return 1
        }
        # Space the image need not carry.
        rm -rf "$dir/var/cache/apt/archives/"*.deb "$dir/usr/share/doc" "$dir/usr/share/man" "$dir/usr/share/locale"
        touch "$dir/.done"
    fi
    echo "$dir"
}

# One try of vm_debootstrap's: debootstrap DS's bookworm into DIR, afresh.
_vm_debootstrap() {
    local ds="$1" dir="$2" mirror="$3"
    rm -rf "$dir"
    mkdir -p "$dir"
    DEBOOTSTRAP_DIR="$ds/usr/share/debootstrap" "$ds/usr/sbin/debootstrap" \
        --variant=minbase --include="$VM_DEBOOTSTRAP_INCLUDE" \
        --cache-dir="$VM_CACHE/debootstrap-debs" \
        --keyring="$VM_KEYRING" \
        bookworm "$dir" "$mirror"
}

# The systemd guest's root image for a kernel directory; prints its path.
vm_systemd_image() {
    local kdir="$1" base busybox cni list key out stage u
    base="$(vm_debootstrap)" || return 1
    busybox="$(vm_package bookworm busybox-static)/bin/busybox" || return 1
    cni="$(vm_package bookworm containernetworking-plugins)/usr/lib/cni" || return 1
    list="$(mktemp)"
    vm_payload "$busybox" "$cni" "$kdir" >"$list"
    key="$(vm_payload_key "$list" "$VM_DIR/guest/systemd" "$VM_DIR/guest/common" -- "$base")"
    out="$VM_CACHE/images/systemd-$key.ext4"
    if [ ! -s "$out" ]; then
        vm_say "building the systemd root image for $(cat "$kdir/release")"
        mkdir -p "$VM_CACHE/images"
        stage="$(mktemp -d "$VM_CACHE/tmp.XXXXXX")"
        cp -a "$base/." "$stage/"
        rm -f "$stage/.done"
        vm_install_payload "$stage" <"$list"
        install -m 0755 "$VM_DIR/guest/systemd/load-modules" "$stage/opt/sycri-vm/load-modules"
        for u in sycri.service kubelet-cgroups.service sycri-vm-test.service; do
            install -m 0644 "$VM_DIR/guest/systemd/$u" "$stage/etc/systemd/system/$u"
        done
        mkdir -p "$stage/etc/systemd/system/multi-user.target.wants"
        ln -sf ../sycri.service "$stage/etc/systemd/system/multi-user.target.wants/sycri.service"
        ln -sf ../sycri-vm-test.service "$stage/etc/systemd/system/multi-user.target.wants/sycri-vm-test.service"
        # No udev in minbase: no getty waiting for its tty device.
        ln -sf /dev/null "$stage/etc/systemd/system/serial-getty@ttyS0.service"
        ln -sf /dev/null "$stage/etc/systemd/system/getty@tty1.service"
        : >"$stage/etc/fstab"
        echo sycri-vm >"$stage/etc/hostname"
        printf '127.0.0.1 localhost sycri-vm\n' >"$stage/etc/hosts"
        mkfs.ext4 -q -F -L root -d "$stage" "$out.tmp" 640M >/dev/null && mv "$out.tmp" "$out"
        rm -rf "$stage"
    fi
    rm -f "$list"
    [ -s "$out" ] && echo "$out"
}
