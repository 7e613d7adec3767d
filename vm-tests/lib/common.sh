#!/usr/bin/env bash
# Shared by the vm-tests scripts: logging, the cache directory, content keys.
# Sourced, never run.

# Where downloads, extracted packages and built images are kept between runs
# (outside the repository).
VM_CACHE="${SYCRI_VM_CACHE:-/var/cache/sycri-vm}"

vm_say() { printf 'vm: %s\n' "$*" >&2; }
vm_die() {
    printf 'vm: error: %s\n' "$*" >&2
    exit 2
}

# A short content key of files and strings: `vm_key FILE... -- STRING...`.
# Files are hashed by content, strings as given; the key changes when any
# input does.
vm_key() {
    local f
    {
        while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
            f="$1"
            shift
            if [ -d "$f" ]; then
                (cd "$f" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
            else
                sha256sum <"$f"
            fi
        done
        [ "${1:-}" = -- ] && shift
        printf '%s\n' "$@"
    } | sha256sum | cut -c1-16
}

# Seconds since the epoch, with a fraction.
vm_now() { date +%s.%N; }
# Seconds between two vm_now readings, one decimal.
vm_elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
