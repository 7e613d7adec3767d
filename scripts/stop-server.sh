#!/usr/bin/env bash
# Stops the server started by scripts/start-server.sh with SIGTERM and waits
# for it to exit. Containers keep running (each has its own monitor) and the
# next server picks them up again.
#
# Usage: sudo scripts/stop-server.sh
set -euo pipefail

BIN=/usr/local/bin/sycri
PIDFILE=${SYCRI_PIDFILE:-/var/run/sycri.pid}

# The binary a process runs; " (deleted)" once a newer build replaced it.
exe_of() {
    local e
    e="$(readlink "/proc/$1/exe" 2>/dev/null || true)"
    echo "${e% (deleted)}"
}

pid="$(cat "$PIDFILE" 2>/dev/null || true)"
if [ -z "$pid" ] || ! [ -d "/proc/$pid" ]; then
    echo "sycri is not running (no live pid in $PIDFILE)" >&2
    rm -f "$PIDFILE"
    exit 0
fi
# A reused pid is not ours to signal.
if [ "$(exe_of "$pid")" != "$BIN" ]; then
    echo "pid $pid from $PIDFILE is not $BIN; not signalling it" >&2
    rm -f "$PIDFILE"
    exit 1
fi

kill -TERM "$pid"
for _ in $(seq 1 300); do
    # Gone, or a zombie waiting for a parent that does not reap.
    state="$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status" 2>/dev/null || true)"
    if [ -z "$state" ] || [ "$state" = Z ]; then
        rm -f "$PIDFILE"
        echo "sycri (pid $pid) stopped; containers keep running"
        exit 0
    fi
    sleep 0.1
done
echo "sycri (pid $pid) is still running 30 s after SIGTERM" >&2
exit 1
