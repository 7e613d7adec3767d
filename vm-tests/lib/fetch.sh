#!/usr/bin/env bash
# Downloads from Debian's archive with apt's own client, on private package
# lists kept in the cache (the machine's apt configuration and lists are left
# alone): qemu, busybox, the CNI plugins, debootstrap, and the kernels
# (bookworm's 6.1 and trixie's 6.12). Sourced by run.sh after common.sh.
# Each download is tried again on failure (a mirror's hiccup is not a reason
# to skip a part), and the error it ended with is kept for the SKIPPED line.

VM_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# How often a download is tried, and the wait before the second try (it
# triples before each further one).
VM_FETCH_TRIES="${SYCRI_VM_FETCH_TRIES:-3}"
VM_FETCH_BACKOFF="${SYCRI_VM_FETCH_BACKOFF:-5}"

# The last fetch error, for the SKIPPED line of the part that needed it. A
# file, not a variable: the fetch functions run in command substitutions.
vm_fetch_error_file() { echo "$VM_CACHE/fetch-error"; }
vm_fetch_clear() { rm -f "$(vm_fetch_error_file)"; }
# Says why a fetch failed, keeps it, and fails.
vm_fetch_fail() {
    vm_say "$*"
    mkdir -p "$VM_CACHE"
    printf '%s\n' "$*" >"$(vm_fetch_error_file)"
    return 1
}
# The last fetch error kept, on one line.
vm_fetch_error() {
    local f
    f="$(vm_fetch_error_file)"
    if [ -s "$f" ]; then
        tr '\n' ' ' <"$f" | sed 's/ *$//'
    else
        echo "no error was recorded"
    fi
}

# What a failed command said in LOG, on one line: apt's and debootstrap's
# error and warning lines (E:, W:, Err:), else the last lines.
vm_log_error() {
    local log="$1" lines
    lines="$(grep -E '^(E|W|Err):' "$log" 2>/dev/null | tail -n 4)"
    [ -n "$lines" ] || lines="$(tail -n 3 "$log" 2>/dev/null)"
    [ -n "$lines" ] || lines="no output"
    tr '\n' ' ' <<<"$lines" | sed 's/  */ /g; s/ *$//'
}

# Runs COMMAND... (its output into LOG) until it succeeds, at most
# VM_FETCH_TRIES times, waiting between tries; WHAT names it in the messages.
# VM_TRY and VM_TRIES tell the command which try this is. Fails, keeping the
# last error (vm_fetch_error), when no try succeeded.
vm_retry() {
    local log="$1" what="$2" wait="$VM_FETCH_BACKOFF"
    shift 2
    VM_TRIES="$VM_FETCH_TRIES"
    for ((VM_TRY = 1; ; VM_TRY++)); do
        "$@" >"$log" 2>&1 && return 0
        [ "$VM_TRY" -lt "$VM_TRIES" ] || break
        vm_say "$what failed (try $VM_TRY of $VM_TRIES, again in $wait s): $(vm_log_error "$log")"
        sleep "$wait"
        wait=$((wait * 3))
    done
    vm_fetch_fail "$what failed ($VM_TRIES tries): $(vm_log_error "$log")"
}

# The machine's own Debian mirror (the first `.../debian` URI of its apt
# sources), else deb.debian.org; SYCRI_VM_MIRROR overrides.
vm_mirror() {
    local want="$1" uri
    uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
        grep -v '^[[:space:]]*#' | grep -oE 'https?://[^ ]+' | sed 's:/*$::' | grep -E "/$want\$" | head -n 1)"
    echo "${uri:-http://deb.debian.org/$want}"
}

# Private apt state of one suite: sources, lists and apt's cache.
vm_apt_dir() { echo "$VM_CACHE/apt/$1"; }

vm_apt_opts() {
    local d
    d="$(vm_apt_dir "$1")"
    printf '%s\n' \
        -o "Dir::Etc::SourceList=$d/sources.list" \
        -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::Etc::Preferences=/dev/null \
        -o Dir::Etc::PreferencesParts=/dev/null \
        -o "Dir::State::Lists=$d/lists" \
        -o "Dir::Cache=$d/cache" \
        -o Acquire::Languages=none \
        -o APT::Get::List-Cleanup=0 \
        -o APT::Sandbox::User=root
}

vm_apt() {
    local suite="$1" opts
    shift
    mapfile -t opts < <(vm_apt_opts "$suite")
    apt-get -q "${opts[@]}" "$@"
}

vm_apt_cache() {
    local suite="$1" opts
    shift
    mapfile -t opts < <(vm_apt_opts "$suite")
    apt-cache "${opts[@]}" "$@"
}

# Makes sure the suite's lists are there and at most a day old (`force`:
# fetch them now, e.g. after a download the archive no longer has).
vm_apt_lists() {
    local suite="$1" force="${2:-}" d main security
    d="$(vm_apt_dir "$suite")"
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
    main="$(vm_mirror debian)"
    security="${SYCRI_VM_SECURITY_MIRROR:-$(vm_mirror debian-security)}"
    main="${SYCRI_VM_MIRROR:-$main}"
    cat >"$d/sources.list.new" <<SRC
deb [signed-by=$VM_KEYRING] $main $suite main
deb [signed-by=$VM_KEYRING] $main $suite-updates main
deb [signed-by=$VM_KEYRING] $security $suite-security main
SRC
    if ! cmp -s "$d/sources.list.new" "$d/sources.list"; then
        mv "$d/sources.list.new" "$d/sources.list"
        force=force
    else
        rm -f "$d/sources.list.new"
    fi
    # Fresh: the suite's main list (not just any list: an update that
    # fetched only the security one must not pass for a day).
    if [ -z "$force" ] && [ -n "$(find "$d/lists" -maxdepth 1 -name "*_dists_${suite}_main_binary-*_Packages*" -mmin -1440 2>/dev/null | head -n 1)" ]; then
        return 0
    fi
    vm_say "apt-get update ($suite, private lists in $d)"
    vm_retry "$d/update.log" "apt-get update ($suite)" _vm_update "$suite" || return 1
    # apt-get update leaves the lists' times as the archive's: mark the fetch.
    find "$d/lists" -maxdepth 1 -name '*_Packages*' -exec touch {} +
}

# One try of vm_apt_lists' update. apt-get exits 0 when some index failed to
# download (a warning): such a try fails too, but for the last one, which
# passes like before when the suite's main list is there.
_vm_update() {
    local suite="$1" strict=()
    [ "$VM_TRY" -lt "$VM_TRIES" ] && strict=(--error-on=any)
    vm_apt "$suite" update "${strict[@]}" || return 1
    [ -n "$(find "$(vm_apt_dir "$suite")/lists" -maxdepth 1 -name "*_dists_${suite}_main_binary-*_Packages*" 2>/dev/null | head -n 1)" ] || {
        echo "E: apt-get update left no list of $suite main"
        return 1
    }
}

# The .deb of package PKG (candidate version of SUITE) in the cache; prints
# its path. Downloads it when it is not there yet.
vm_deb() {
    local suite="$1" pkg="$2" try rec ver arch file why=""
    for try in 1 2; do
        vm_apt_lists "$suite" $([ "$try" = 2 ] && echo force) || return 1
        rec="$(vm_apt_cache "$suite" show --no-all-versions "$pkg" 2>/dev/null || true)"
        ver="$(sed -n 's/^Version: //p' <<<"$rec" | head -n 1)"
        arch="$(sed -n 's/^Architecture: //p' <<<"$rec" | head -n 1)"
        if [ -z "$ver" ]; then
            why="apt's lists of $suite have no package $pkg"
            continue
        fi
        file="$VM_CACHE/debs/${pkg}_${ver//:/%3a}_${arch}.deb"
        [ -s "$file" ] && {
            echo "$file"
            return 0
        }
        mkdir -p "$VM_CACHE/debs"
        if vm_retry "$(vm_apt_dir "$suite")/download.log" "apt-get download $pkg=$ver ($suite)" \
            _vm_download "$suite" "$pkg=$ver" "$file"; then
            echo "$file"
            return 0
        fi
        why="$(vm_fetch_error)"
    done
    vm_fetch_fail "cannot download $pkg from $suite: $why"
}

# One try of vm_deb's download of PKG=VER into the cache, as FILE.
_vm_download() {
    local suite="$1" pv="$2" file="$3"
    (cd "$VM_CACHE/debs" && vm_apt "$suite" download "$pv") || return 1
    [ -s "$file" ] || {
        echo "E: apt-get download left no $file"
        return 1
    }
}

# Unpacks a .deb into DIR once (a marker says it is complete).
vm_unpack() {
    local deb="$1" dir="$2"
    [ -e "$dir/.unpacked" ] && return 0
    rm -rf "$dir"
    mkdir -p "$dir"
    dpkg-deb -x "$deb" "$dir" && touch "$dir/.unpacked"
}

# A qemu-system-x86_64 to run: the machine's own if it has one, else
# bookworm's qemu-system-x86 and the libraries the machine lacks, unpacked
# into the cache (a plain install would replace the machine's qemu-utils).
# Sets VM_QEMU to a command that takes qemu's arguments.
vm_qemu() {
    if [ -n "${SYCRI_VM_QEMU:-}" ]; then
        VM_QEMU="$SYCRI_VM_QEMU"
        return 0
    fi
    if command -v qemu-system-x86_64 >/dev/null 2>&1; then
        VM_QEMU="$(command -v qemu-system-x86_64)"
        return 0
    fi
    vm_apt_lists bookworm || return 1
    local pkgs key root p deb
    pkgs="$(vm_apt bookworm install -s --no-install-recommends qemu-system-x86 2>/dev/null |
        sed -n 's/^Inst \([^ ]*\) .*(\([^ ]*\) .*/\1=\2/p')"
    [ -n "$pkgs" ] || {
        vm_fetch_fail "apt cannot resolve qemu-system-x86 for bookworm"
        return 1
    }
    key="$(vm_key -- $pkgs)"
    root="$VM_CACHE/qemu/$key"
    if [ ! -e "$root/.done" ]; then
        vm_say "unpacking qemu ($(wc -w <<<"$pkgs") packages) into $root"
        rm -rf "$root"
        mkdir -p "$root"
        for p in $pkgs; do
            deb="$(vm_deb bookworm "${p%%=*}")" || return 1
            dpkg-deb -x "$deb" "$root" || return 1
        done
        cat >"$root/qemu" <<WRAP
#!/bin/sh
# qemu-system-x86_64 from bookworm's packages unpacked here ($key).
LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
    exec "$root/usr/bin/qemu-system-x86_64" -L "$root/usr/share/qemu" -L "$root/usr/share/seabios" "\$@"
WRAP
        chmod +x "$root/qemu"
        touch "$root/.done"
    fi
    VM_QEMU="$root/qemu"
}

# The kernel package a flavour names: 6.1 (bookworm -amd64), 6.12 (trixie
# -amd64) or cloud (bookworm -cloud-amd64, for the systemd guest).
vm_kernel_suite() {
    case "$1" in
    6.1 | cloud) echo bookworm ;;
    6.12) echo trixie ;;
    *) return 1 ;;
    esac
}

vm_kernel_package() {
    local meta=linux-image-amd64 suite try pkg
    suite="$(vm_kernel_suite "$1")" || return 1
    [ "$1" = cloud ] && meta=linux-image-cloud-amd64
    # Lists that lack the meta package are fetched again once.
    for try in 1 2; do
        vm_apt_lists "$suite" $([ "$try" = 2 ] && echo force) || return 1
        pkg="$(vm_apt_cache "$suite" depends "$meta" 2>/dev/null |
            sed -n 's/^ *Depends: \(linux-image-[^ ]*\).*/\1/p' | head -n 1)"
        [ -n "$pkg" ] && break
    done
    echo "$pkg"
}

# Modules a kernel needs for sycri, by name; their dependencies are added.
VM_MODULES=(loop squashfs overlay veth bridge)

# A kernel ready to boot in the cache: prints its directory, which holds
# `kernel` (the uncompressed vmlinux when it can be had: qemu boots it through
# PVH, seconds faster than decompressing under TCG; else the bzImage),
# `release`, `package` and `modules/` (decompressed .ko files in load order,
# listed in modules/order).
vm_kernel() {
    local flavour="$1" suite pkg deb kdir tmp mods rel z
    suite="$(vm_kernel_suite "$flavour")" || {
        vm_say "unknown kernel $flavour (6.1, 6.12 or cloud)"
        return 1
    }
    pkg="$(vm_kernel_package "$flavour")" || return 1
    [ -n "$pkg" ] || {
        vm_fetch_fail "apt's lists of $suite name no kernel package for $flavour"
        return 1
    }
    deb="$(vm_deb "$suite" "$pkg")" || return 1
    kdir="$VM_CACHE/kernels/$(basename "$deb" .deb)"
    if [ ! -e "$kdir/.done" ]; then
        vm_say "preparing $(basename "$deb")"
        rm -rf "$kdir"
        mkdir -p "$kdir/modules"
        tmp="$(mktemp -d "$VM_CACHE/tmp.XXXXXX")"
        dpkg-deb -x "$deb" "$tmp" || return 1
        mods="$(find "$tmp" -maxdepth 4 -type d -path '*/lib/modules/*' | head -n 1)"
        rel="$(basename "$mods")"
        [ -f "$tmp/boot/vmlinuz-$rel" ] || {
            vm_say "no /boot/vmlinuz-$rel in $deb"
            return 1
        }
        vm_vmlinux "$tmp/boot/vmlinuz-$rel" "$kdir/kernel" || cp "$tmp/boot/vmlinuz-$rel" "$kdir/kernel"
        vm_modules "$mods" "$kdir/modules" "${VM_MODULES[@]}" || return 1
        echo "$rel" >"$kdir/release"
        echo "$pkg $(basename "$deb")" >"$kdir/package"
        rm -rf "$tmp"
        touch "$kdir/.done"
    fi
    echo "$kdir"
}

# The vmlinux inside a bzImage (its payload, compressed with xz in bookworm's
# -amd64 kernels and zstd in trixie's; -cloud uses LZ4 and is booted as it
# is): written to OUT when it can be had and is an ELF file.
vm_vmlinux() {
    local bz="$1" out="$2" magic tool at
    for magic in '\xfd7zXZ\x00:xz' '\x28\xb5\x2f\xfd:zstd'; do
        tool="${magic##*:}"
        at="$(LC_ALL=C grep -obUaP "${magic%:*}" "$bz" | head -n 1 | cut -d: -f1)"
        [ -n "$at" ] || continue
        # Both tools stop at the end of the first stream and complain about
        # what follows it (the size trailer): their status says nothing.
        case "$tool" in
        xz) tail -c +"$((at + 1))" "$bz" | xz -dcq --single-stream >"$out" 2>/dev/null ;;
        zstd) tail -c +"$((at + 1))" "$bz" | zstd -dcq >"$out" 2>/dev/null ;;
        esac
        [ "$(head -c 4 "$out" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] && return 0
    done
    rm -f "$out"
    return 1
}

# Copies modules NAME... of the module tree MODS into OUT, decompressed, with
# what they depend on (the `depends=` of each module's .modinfo), and writes
# OUT/order: the files in an order insmod can load them. Built-in ones are
# left out.
vm_modules() {
    local mods="$1" out="$2"
    shift 2
    local -A seen=()
    local order=()
    _vm_mod() {
        local name="${1//-/_}" file deps d
        [ -n "${seen[$name]:-}" ] && return 0
        seen[$name]=1
        file="$(find "$mods/kernel" -name "$name.ko*" -o -name "${name//_/-}.ko*" | head -n 1)"
        if [ -z "$file" ]; then
            if grep -qE "/(${name}|${name//_/-})\.ko\$" "$mods/modules.builtin" 2>/dev/null; then
                return 0
            fi
            vm_say "module $name is neither built in nor in $mods"
            return 1
        fi
        case "$file" in
        *.xz) xz -dc "$file" >"$out/$name.ko" ;;
        *.zst) zstd -qdc "$file" >"$out/$name.ko" ;;
        *.gz) gzip -dc "$file" >"$out/$name.ko" ;;
        *) cp "$file" "$out/$name.ko" ;;
        esac
        deps="$(tr '\0' '\n' <"$out/$name.ko" | sed -n 's/^depends=//p' | head -n 1)"
        for d in ${deps//,/ }; do
            _vm_mod "$d" || return 1
        done
        order+=("$name.ko")
    }
    local m
    for m in "$@"; do
        _vm_mod "$m" || return 1
    done
    printf '%s\n' "${order[@]}" >"$out/order"
}

# busybox (static), the CNI plugins and debootstrap, unpacked; prints the
# directory of the unpacked package.
vm_package() {
    local suite="$1" pkg="$2" deb dir
    deb="$(vm_deb "$suite" "$pkg")" || return 1
    dir="$VM_CACHE/pkgs/$(basename "$deb" .deb)"
    vm_unpack "$deb" "$dir" || return 1
    echo "$dir"
}
