#!/usr/bin/env bash
# The test command: sets the machine up (scripts/setup.sh), then
#   cargo fmt --check, cargo clippy -D warnings   (fail fast)
#   scripts/check-layers.py                       (modules depend one way)
#   cargo build --workspace --all-targets, scripts/build-engine.sh
#   cargo test --workspace --no-fail-fast [ARGS...]
# as root: the tests attach loop devices, mount and make namespaces.
#
# Usage: sudo scripts/test.sh [cargo test args, e.g. `-- walkthrough`]
# Env:   SYCRI_SKIP_LINT=1       skip fmt and clippy
#        SYCRI_FIXTURES=DIR      SIF fixtures (default ../shared/fixtures/sif)
#        SYCRI_TEST_TIMEOUT=DUR  limit for `cargo test` when CI is set (default 70m)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --preserve-env=PATH,CARGO_HOME,RUSTUP_HOME,CARGO_TARGET_DIR,SYCRI_FIXTURES,SYCRI_SKIP_LINT,SYCRI_TEST_TIMEOUT,CI \
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
echo "helpers run from $SYCRI_TEST_ENGINE"

# cargo's own summaries ("test result: ...") go to stdout as usual; a copy is
# kept to add them up at the end.
log="$(mktemp /tmp/sycri-test.XXXXXX)"
trap 'rm -f "$log"' EXIT
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

# Totals over every test binary and doc-test run.
read -r passed failed ignored < <(
    sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$log" |
        awk '{p += $1; f += $2; i += $3} END {print p + 0, f + 0, i + 0}'
)
echo
echo "total: $passed passed, $failed failed, $ignored skipped"
if [ "$rc" -ne 0 ]; then
    echo "test.sh: cargo test failed (exit $rc)" >&2
    exit "$rc"
fi
