#!/usr/bin/env bash
# Prepares a Debian machine for building and testing sycri: Debian packages the
# build and the tests use, cargo on PATH, and the kernel modules the engine
# needs (loop, squashfs, overlay). Idempotent; quiet and fast when all is there.
#
# Run it (`sudo scripts/setup.sh`) or source it (`. scripts/setup.sh`): sourced,
# it also leaves cargo on the caller's PATH. scripts/test.sh and
# scripts/start-server.sh source it.

# Debian packages:
#   build-essential, pkg-config  C compiler and make for the crates that build C
#                                (ring, zstd-sys), and libc6-dev's libc.a for the
#                                static sycri-engine; protoc is not needed (protox)
#   squashfs-tools               mksquashfs/unsquashfs, used by tests that make images
#   squashfs-tools-ng            tar2sqfs: registry pulls turn layers into squashfs
#                                with it; sqfs2tar in the conversion tests
#   e2fsprogs, mount             mkfs.ext4, mount/umount in the loop device tests
#   iproute2, iptables,          ip, iptables-save and the CNI plugins
#   containernetworking-plugins  (/usr/lib/cni) for pod networking and its tests
#   docker-registry,             a local registry and the busybox the registry
#   busybox-static               tests build their images from
#   python3-grpcio               Python's grpcio, a client the authority test
#                                drives the server with (Debian's /usr/bin/python3)
SYCRI_APT_PACKAGES=(
    build-essential pkg-config
    squashfs-tools squashfs-tools-ng
    e2fsprogs mount
    iproute2 iptables containernetworking-plugins
    docker-registry busybox-static
    python3-grpcio
)
# The oldest rustc that builds sycri (rust-version in Cargo.toml).
SYCRI_MIN_RUST=1.85

sycri_setup_say() { printf 'setup: %s\n' "$*" >&2; }

sycri_setup_apt() {
    command -v dpkg-query >/dev/null 2>&1 || {
        sycri_setup_say "not a Debian system: make sure ${SYCRI_APT_PACKAGES[*]} (or their equivalents) are installed"
        return 0
    }
    local missing=() p st
    for p in "${SYCRI_APT_PACKAGES[@]}"; do
        st="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
        [[ "$st" == *"ok installed"* ]] || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        sycri_setup_say "missing Debian packages: ${missing[*]}; run as root (sudo $0)"
        return 1
    fi
    sycri_setup_say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local apt=(apt-get -y -q -o Dpkg::Use-Pty=0 install --no-install-recommends)
    # One `apt-get update`, and only when needed: no package lists yet, or an
    # install that fails on the lists we have (stale lists).
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -n 1)" ]; then
        apt-get update -q >/dev/null
        "${apt[@]}" "${missing[@]}" >/dev/null
    elif ! "${apt[@]}" "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -q >/dev/null
        "${apt[@]}" "${missing[@]}" >/dev/null
    fi
}

# cargo on PATH: rustup installs it in ~/.cargo/bin, which a non-login shell,
# CI or sudo (HOME=/root, PATH reset) may not have on PATH.
sycri_setup_cargo() {
    if ! command -v cargo >/dev/null 2>&1; then
        local d home
        for d in "${CARGO_HOME:-}" "${HOME:-}/.cargo" /root/.cargo; do
            if [ -n "$d" ] && [ -x "$d/bin/cargo" ]; then
                export PATH="$d/bin:$PATH"
                break
            fi
        done
    fi
    if ! command -v cargo >/dev/null 2>&1 && [ -n "${SUDO_USER:-}" ]; then
        # sudo from a user whose rustup lives in their home: use that toolchain.
        home="$(getent passwd "$SUDO_USER" | cut -d: -f6)"
        if [ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ]; then
            export PATH="$home/.cargo/bin:$PATH"
            [ -z "${RUSTUP_HOME:-}" ] && [ -d "$home/.rustup" ] && export RUSTUP_HOME="$home/.rustup"
        fi
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        sycri_setup_say "cargo not found: install Rust >= $SYCRI_MIN_RUST with rustup (https://rustup.rs); Debian's own cargo is too old"
        return 1
    fi
    local v
    v="$(rustc --version 2>/dev/null | awk '{print $2}')"
    if [ -n "$v" ] && [ "$(printf '%s\n%s\n' "$SYCRI_MIN_RUST" "$v" | sort -V | head -n 1)" != "$SYCRI_MIN_RUST" ]; then
        sycri_setup_say "rustc $v is older than $SYCRI_MIN_RUST: run 'rustup update'"
        return 1
    fi
}

# Kernel modules: loop devices for SIF images, squashfs for their partitions,
# overlay for writable container roots. Built-in or absent modprobe: fine.
sycri_setup_modules() {
    local m
    if command -v modprobe >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
        for m in loop squashfs overlay; do
            modprobe -q "$m" >/dev/null 2>&1 || true
        done
    fi
}

sycri_setup() {
    sycri_setup_apt && sycri_setup_cargo && sycri_setup_modules
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # Executed.
    set -euo pipefail
    sycri_setup
    sycri_setup_say "ok ($(cargo --version))"
else
    # Sourced: report failure to the caller without ending its shell.
    sycri_setup || return 1
fi
