#!/usr/bin/env bash
# Pod networking: installs the CNI plugins (Debian's containernetworking-plugins,
# in /usr/lib/cni), ip and iptables through scripts/setup.sh, then, when the CNI
# config directory holds no network config, installs examples/cni/10-sycri.conflist
# there: pods on the bridge sycri0 in 10.89.0.0/16, hostPorts through portmap, no
# masquerading (pod traffic stays on this machine; set "ipMasq": true in the file
# for pods that should reach further). An existing config is left alone.
#
# Usage: sudo scripts/setup-cni.sh [CONF_DIR]   (default /etc/cni/net.d, sycri's cni_conf_dir)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

. scripts/setup.sh

dir="${1:-/etc/cni/net.d}"
shopt -s nullglob
existing=("$dir"/*.conflist "$dir"/*.conf "$dir"/*.json)
if [ "${#existing[@]}" -gt 0 ]; then
    echo "setup-cni: $dir already has a network config (${existing[0]##*/}); left as it is" >&2
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "setup-cni: run as root to write $dir" >&2
    exit 1
fi
install -D -m 0644 examples/cni/10-sycri.conflist "$dir/10-sycri.conflist"
echo "setup-cni: wrote $dir/10-sycri.conflist (bridge sycri0, 10.89.0.0/16)" >&2
