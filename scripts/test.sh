#!/usr/bin/env bash
# The test command: sets the machine up (scripts/setup.sh), then
#   cargo fmt --check, cargo clippy -D warnings   (fail fast)
#   scripts/check-layers.py                       (modules depend one way)
#   cargo build --workspace --all-targets, scripts/build-engine.sh
#   cargo test --workspace --no-fail-fast [ARGS...]
#     (a test that cannot run here says so through sycri_native::testing,
#     into $SYCRI_SKIP_LOG: the summary counts it skipped, not passed, and
#     lists it with its reason)
#   vm-tests/run.sh (the VM suite: clean Debian kernels, pure cgroup v2)
# as root: the tests attach loop devices, mount and make namespaces.
#
# Usage: sudo scripts/test.sh [cargo test args, e.g. `-- walkthrough`]
#        (with cargo test args the VM suite is SKIPPED: run vm-tests/run.sh)
# Env:   SYCRI_SKIP_LINT=1       skip fmt and clippy
#        SYCRI_SKIP_VM=1         skip the VM suite (it says SKIPPED)
#        SYCRI_FIXTURES=DIR      SIF fixtures (default ../shared/fixtures/sif)
#        SYCRI_TEST_TIMEOUT=DUR  limit for `cargo test` when CI is set (default 70m)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CARGO_TARGET_DIR,SYCRI_FIXTURES,SYCRI_SKIP_LINT,SYCRI_SKIP_VM,SYCRI_VM_CACHE,SYCRI_TEST_TIMEOUT,SYCRI_CI_T0,CI \
            bash "$PWD/scripts/test.sh" "$@"
    fi
    echo "test.sh: the tests need root (loop devices, mounts, namespaces)" >&2
    exit 1
fi

. scripts/setup.sh

step() {
    printf '\n==> %s\n' "$*"
    "$@"
}

fixtures="${SYCRI_FIXTURES:-$PWD/../shared/fixtures/sif}"
if [ ! -d "$fixtures" ]; then
    echo "test.sh: no SIF fixtures at $fixtures: the tests that need them will say SKIPPED" >&2
fi

if [ "${SYCRI_SKIP_LINT:-0}" != 1 ]; then
    if cargo fmt --version >/dev/null 2>&1; then
        step cargo fmt --all -- --check
    else
        echo "test.sh: rustfmt not installed, skipping the format check" >&2
    fi
    if cargo clippy --version >/dev/null 2>&1; then
        step cargo clippy --workspace --all-targets --quiet -- -D warnings
    else
        echo "test.sh: clippy not installed, skipping lints" >&2
    fi
fi

# Modules depend on each other one way, layer by layer (no import cycle).
step python3 scripts/check-layers.py

step cargo build --workspace --all-targets

# The servers under test run their helpers from the static sycri-engine, the
# binary scripts/start-server.sh installs (tests/common: SYCRI_TEST_ENGINE).
printf '\n==> scripts/build-engine.sh\n'
SYCRI_TEST_ENGINE="$(bash scripts/build-engine.sh)"
export SYCRI_TEST_ENGINE
# The Python with grpcio (setup.sh installs Debian's python3-grpcio, for
# /usr/bin/python3, which another python3 first on PATH may not see).
if [ -z "${SYCRI_TEST_PYTHON:-}" ] && /usr/bin/python3 -c 'import grpc' 2>/dev/null; then
    export SYCRI_TEST_PYTHON=/usr/bin/python3
fi
echo "helpers run from $SYCRI_TEST_ENGINE"

# cargo's own summaries ("test result: ...") go to stdout as usual; a copy is
# kept to add them up at the end.
log="$(mktemp /tmp/sycri-test.XXXXXX)"
vmlog="$(mktemp /tmp/sycri-vm.XXXXXX)"
# Each test that skips (or leaves a part out) appends a line here:
# test<TAB>reason, or test<TAB>reason<TAB>part (native/src/testing.rs).
skiplog="$(mktemp /tmp/sycri-skips.XXXXXX)"
trap 'rm -f "$log" "$vmlog" "$skiplog"' EXIT
export SYCRI_SKIP_LOG="$skiplog"
t_host=$SECONDS
printf '\n==> cargo test --workspace --no-fail-fast %s\n' "$*"
# Under CI (no terminal) a time limit keeps a hung test from using up the
# job: it ends the whole process group of cargo and the test binaries.
limit=()
[ -n "${CI:-}" ] && limit=(timeout --kill-after=30s "${SYCRI_TEST_TIMEOUT:-70m}")
set +e
"${limit[@]}" cargo test --workspace --no-fail-fast "$@" < /dev/null 2>&1 | tee "$log"
rc="${PIPESTATUS[0]}"
set -e
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "test.sh: cargo test ran out of time (${SYCRI_TEST_TIMEOUT:-70m})" >&2
fi

t_host=$((SECONDS - t_host))

# The VM suite after the host's (even when that failed: both results count).
t_vm=$SECONDS
vm_rc=0
if [ "$#" -gt 0 ]; then
    echo "SKIPPED vm-tests: cargo test arguments were given (the VM suite runs alone: sudo vm-tests/run.sh)" | tee "$vmlog"
    echo "vm-tests total: 0 passed, 0 failed, 1 skipped" >>"$vmlog"
else
    printf '\n==> vm-tests/run.sh\n'
    set +e
    bash vm-tests/run.sh </dev/null 2>&1 | tee "$vmlog"
    vm_rc="${PIPESTATUS[0]}"
    set -e
fi
t_vm=$((SECONDS - t_vm))

# Totals over every test binary and doc-test run, and the VM suite's.
read -r passed failed ignored < <(
    sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$log" |
        awk '{p += $1; f += $2; i += $3} END {print p + 0, f + 0, i + 0}'
)
read -r vm_passed vm_failed vm_skipped < <(
    sed -n 's/^vm-tests total: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped$/\1 \2 \3/p' "$vmlog" |
        tail -n 1 | grep . || echo "0 1 0"
)
# cargo counted the tests that reported a skip as passed: they count as
# skipped here (each once), beside the ignored ones.
skips="$(awk -F '\t' 'NF == 2 && !seen[$1]++ {print "  SKIPPED " $1 ": " $2}' "$skiplog" | sort)"
parts="$(awk -F '\t' 'NF >= 3 && !seen[$1 FS $3]++ {print "  ran without: " $1 ": " $3 " (" $2 ")"}' "$skiplog" | sort)"
n_skips="$(printf '%s' "$skips" | grep -c . || true)"
passed=$((passed > n_skips ? passed - n_skips : 0))
skipped=$((ignored + n_skips))
echo
echo "cargo test: $passed passed, $failed failed, $skipped skipped (${t_host} s)"
[ -n "$skips" ] && printf '%s\n' "$skips"
[ -n "$parts" ] && printf '%s\n' "$parts"
echo "vm-tests: $vm_passed passed, $vm_failed failed, $vm_skipped skipped (${t_vm} s)"
[ -n "${SYCRI_CI_T0:-}" ] && echo "wall time of .ci/run: $(($(date +%s) - SYCRI_CI_T0)) s"
echo "total: $((passed + vm_passed)) passed, $((failed + vm_failed)) failed, $((skipped + vm_skipped)) skipped"
if [ "$rc" -ne 0 ]; then
    echo "test.sh: cargo test failed (exit $rc)" >&2
    exit "$rc"
fi
if [ "$vm_rc" -ne 0 ] || [ "$vm_failed" -ne 0 ]; then
    echo "test.sh: the VM suite failed (exit $vm_rc)" >&2
    exit 1
fi
