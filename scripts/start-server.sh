#!/usr/bin/env bash
# Sets the machine up (scripts/setup.sh; scripts/setup-cni.sh for a default pod
# network unless --no-cni), builds sycri (release) and a static sycri-engine
# (scripts/build-engine.sh), installs them to /usr/local/bin,
# writes a default /etc/sycri/sycri.toml if there is none, and starts the
# server: in the background (log /var/log/sycri.log, pid /var/run/sycri.pid),
# or in the foreground with --foreground. Then waits for the CRI socket.
#
# Usage: sudo scripts/start-server.sh [--foreground] [--no-cni] [sycri flags...]
#   e.g. sudo scripts/start-server.sh --log-level debug
# Stop:  sudo scripts/stop-server.sh (containers keep running)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=/usr/local/bin/sycri
# The helpers (one monitor per container, pod sandboxes, exec, port-forward)
# run from sycri-engine, found beside sycri (used when it comes from the same
# build); without it sycri runs them itself.
ENGINE=/usr/local/bin/sycri-engine
CONFIG=/etc/sycri/sycri.toml
LOG=${SYCRI_LOG:-/var/log/sycri.log}
PIDFILE=${SYCRI_PIDFILE:-/var/run/sycri.pid}

foreground=0
cni=1
args=()
for a in "$@"; do
    case "$a" in
        --foreground) foreground=1 ;;
        --no-cni) cni=0 ;;
        -h | --help)
            sed -n '2,12s/^# \{0,1\}//p' scripts/start-server.sh
            exit 0
            ;;
        *) args+=("$a") ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "start-server.sh: run as root (sudo scripts/start-server.sh): sycri mounts images and makes namespaces" >&2
    exit 1
fi

# The binary a process runs; " (deleted)" once a newer build replaced it.
exe_of() {
    local e
    e="$(readlink "/proc/$1/exe" 2>/dev/null || true)"
    echo "${e% (deleted)}"
}

running_pid() {
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] &&
        [ "$(exe_of "$pid")" = "$BIN" ] && echo "$pid"
}

if pid="$(running_pid)"; then
    echo "sycri is already running (pid $pid); stop it first: sudo scripts/stop-server.sh" >&2
    exit 1
fi

. scripts/setup.sh
if [ "$cni" -eq 1 ]; then
    bash scripts/setup-cni.sh
fi

echo "building sycri (release)..." >&2
cargo build --release --quiet --bin sycri
target="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
engine="$(bash scripts/build-engine.sh)"
install -D -m 0755 "${target:-target}/release/sycri" "$BIN"
install -D -m 0755 "$engine" "$ENGINE"

if [ ! -e "$CONFIG" ]; then
    mkdir -p "$(dirname "$CONFIG")"
    "$BIN" --print-config > "$CONFIG.tmp"
    mv "$CONFIG.tmp" "$CONFIG"
    echo "wrote the default configuration to $CONFIG" >&2
fi

# The socket the server will listen on, after the config file and the flags.
listen="$("$BIN" "${args[@]}" --print-config | sed -n 's/^listen = "\(.*\)"$/\1/p')"
sock="${listen#unix://}"

if [ "$foreground" -eq 1 ]; then
    echo "starting sycri in the foreground on $listen (Ctrl-C stops it; containers keep running)" >&2
    exec "$BIN" "${args[@]}"
fi

mkdir -p "$(dirname "$LOG")" "$(dirname "$PIDFILE")"
marker="$(mktemp /tmp/sycri-start.XXXXXX)"
trap 'rm -f "$marker"' EXIT
setsid "$BIN" "${args[@]}" < /dev/null >> "$LOG" 2>&1 &
pid=$!
echo "$pid" > "$PIDFILE"

# Ready when a socket newer than our start is there (the server replaces a
# stale one).
for _ in $(seq 1 300); do
    if [ -S "$sock" ] && [ -n "$(find "$sock" -newer "$marker" 2>/dev/null)" ]; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PIDFILE"
        echo "sycri exited during start-up; the end of $LOG:" >&2
        tail -n 20 "$LOG" >&2
        exit 1
    fi
    sleep 0.1
done
if ! [ -S "$sock" ]; then
    echo "sycri (pid $pid) did not create $sock within 30 s; see $LOG" >&2
    exit 1
fi

cat <<MSG
sycri is running: pid $pid, socket $listen
  config $CONFIG, log $LOG, pid file $PIDFILE
Talk to it with crictl (kubernetes-sigs/cri-tools):
  crictl --config examples/crictl.yaml version
  crictl --runtime-endpoint $listen --image-endpoint $listen info
  (walk-through: README.md, "crictl walk-through")
Stop it with: sudo scripts/stop-server.sh (containers keep running)
MSG
