#!/usr/bin/env bash
# Builds sycri-engine, the helper binary (one monitor per container, pod
# sandboxes, exec and port-forward), as a static executable and prints its path.
#
# Static linking keeps each monitor small: no dynamic loader, no libc.so or
# libgcc_s pages mapped, and a faster exec on the container start path. Rust
# turns glibc's static linking on with the crt-static target feature; it is
# given with an explicit --target so that it applies to the engine only and not
# to build scripts and proc macros (which cannot be static), and the result
# lands in its own directory, target/<host triple>/release/sycri-engine, beside
# the ordinary dynamic builds.
#
# Usage: scripts/build-engine.sh   (needs cargo and glibc's static libc.a,
#                                   from libc6-dev, which scripts/setup.sh installs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

host="$(rustc -vV | sed -n 's/^host: //p')"
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --quiet -p sycri-native --bin sycri-engine --target "$host"
target="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
echo "${target:-target}/$host/release/sycri-engine"
