# Sourced by the guests: the cgroup v2 tree as systemd and the kubelet
# (cgroupfs driver) leave it. Processes move out of the root into
# init.scope, the root passes its controllers on (system.slice for the
# server, kubepods for pods), and the kubelet's QoS levels pass them on
# down to where sycri puts pod and container cgroups:
#   /kubepods/burstable/pod<uid>/<container id>
cg=/sys/fs/cgroup
want="cpuset cpu io memory hugetlb pids"
enable() {
    for c in $want; do
        grep -qw "$c" "$1/cgroup.controllers" && echo "+$c" >"$1/cgroup.subtree_control"
    done
}
if [ ! -d "$cg/init.scope" ]; then
    mkdir -p "$cg/init.scope"
    echo $$ >"$cg/init.scope/cgroup.procs"
fi
enable "$cg"
mkdir -p "$cg/system.slice/sycri.service" "$cg/kubepods/burstable" "$cg/kubepods/besteffort"
enable "$cg/system.slice"
enable "$cg/kubepods"
enable "$cg/kubepods/burstable"
enable "$cg/kubepods/besteffort"
