//! The parts of a pod that follow from its RunPodSandbox request alone:
//! namespaces, /etc files, sysctls, CNI capability arguments, the cgroup
//! parent of its containers. Pure functions, checked before anything is made.

use super::container_spec::{check_apparmor, check_selinux, check_user_namespace};
use crate::error::{Error, Result};
use crate::proto::cri;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// Where a pod's containers get their cgroups: the pod's `cgroup_parent`
/// (as the kubelet sets it with the cgroupfs driver) relative to each
/// hierarchy's root, else `own`, the server's group (config
/// `cgroup_parent`), which a pod's may not be inside.
pub fn cgroup_parent(pod: &cri::PodSandboxConfig, own: &str) -> Result<String> {
    let given = pod
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.as_str())
        .unwrap_or("");
    if given.trim_matches('/').is_empty() {
        return Ok(own.to_string());
    }
    let parent = crate::config::cgroup_path(given).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "cgroup_parent {:?} must be a plain path inside the cgroup hierarchy",
            given.trim_matches('/')
        ))
    })?;
    // sycri's own group holds containers: a pod placed inside one would
    // share its limits, die with it and keep it from being removed.
    if parent == own || parent.starts_with(&format!("{own}/")) {
        return Err(Error::InvalidArgument(format!(
            "cgroup_parent {parent:?} is inside sycri's own cgroup {own:?}"
        )));
    }
    Ok(parent.to_string())
}

/// Refuses what a pod's security context asks that sycri cannot do: a user
/// namespace of its own, an SELinux label, an AppArmor profile. The rest of
/// it describes the sandbox's own process (a pause container elsewhere),
/// which a sycri pod does not have, so it has nothing to apply to and is
/// accepted: run_as_user, run_as_group, supplemental_groups (and their
/// policy), readonly_rootfs, privileged, and seccomp / seccomp_profile_path
/// (the kubelet sends a pod-level seccomp profile with every pod; each
/// container's own profile is applied to it).
pub fn check_security(config: &cri::PodSandboxConfig) -> Result<()> {
    let Some(sc) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
    else {
        return Ok(());
    };
    check_user_namespace(sc.namespace_options.as_ref(), "pod")?;
    check_selinux(sc.selinux_options.as_ref(), "pod")?;
    check_apparmor(sc.apparmor.as_ref(), "", "pod")
}

pub fn ns_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

pub fn resolv_conf(dns: Option<&cri::DnsConfig>) -> String {
    match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for server in &d.servers {
                s.push_str(&format!("nameserver {server}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    }
}

/// The pod's /etc/hosts: the node's with the host network; otherwise
/// localhost and the pod's hostname on its IPs (127.0.1.1 without a network).
pub fn hosts_file(hostname: &str, ips: &[IpAddr], host_net: bool) -> String {
    if host_net {
        return std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    }
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if ips.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    for ip in ips {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// Where a sysctl lives: which of the pod's namespaces it belongs to.
#[derive(Debug, PartialEq, Eq)]
enum SysctlNs {
    Net,
    Ipc,
}

/// The namespace of sysctl `name`, None when it is not namespaced (or invalid).
fn sysctl_namespace(name: &str) -> Option<SysctlNs> {
    sycri_native::sandbox::sysctl_file(name)?;
    let sep = if name.contains('/') { '/' } else { '.' };
    let mut levels = name.split(sep);
    match (levels.next(), levels.next()) {
        (Some("net"), Some(_)) => Some(SysctlNs::Net),
        (Some("kernel"), Some(k)) if k.starts_with("shm") || k.starts_with("msg") || k == "sem" => {
            Some(SysctlNs::Ipc)
        }
        (Some("fs"), Some("mqueue")) if levels.next().is_some() => Some(SysctlNs::Ipc),
        _ => None,
    }
}

/// Refuses sysctls that are not namespaced, or whose namespace the pod shares
/// with the node: setting them would change the node.
pub fn check_sysctls(
    sysctls: &std::collections::HashMap<String, String>,
    own_net: bool,
    own_ipc: bool,
) -> Result<()> {
    let mut names: Vec<&String> = sysctls.keys().collect();
    names.sort();
    for name in names {
        match sysctl_namespace(name) {
            None => {
                return Err(Error::InvalidArgument(format!(
                    "sysctl {name:?} is not namespaced: setting it would change the node; only \
                     net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* can be set for a pod"
                )))
            }
            Some(SysctlNs::Net) if !own_net => {
                return Err(Error::InvalidArgument(format!(
                    "sysctl {name:?} is not allowed: the pod uses the node's network namespace"
                )))
            }
            Some(SysctlNs::Ipc) if !own_ipc => {
                return Err(Error::InvalidArgument(format!(
                    "sysctl {name:?} is not allowed: the pod uses the node's IPC namespace"
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A Kubernetes quantity ("10M", "1Gi", "500k", "1.5M") as a number.
fn parse_quantity(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    let v = (n * mult).round();
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// Values for the CNI capabilities: `portMappings` (the pod's hostPorts),
/// `dns`, `bandwidth` (from the kubernetes.io bandwidth annotations, in bits
/// per second) and `ipRanges` (the node's pod CIDRs, when kubelet sent them).
pub fn capability_args(
    config: &cri::PodSandboxConfig,
    ip_ranges: Option<Value>,
) -> Result<Map<String, Value>> {
    let mut caps = Map::new();
    if let Some(r) = ip_ranges {
        caps.insert("ipRanges".into(), r);
    }
    let ports: Vec<Value> = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| {
            let protocol = match cri::Protocol::try_from(p.protocol) {
                Ok(cri::Protocol::Udp) => "udp",
                Ok(cri::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            let mut m = json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": protocol,
            });
            if !p.host_ip.is_empty() {
                m["hostIP"] = Value::String(p.host_ip.clone());
            }
            m
        })
        .collect();
    if !ports.is_empty() {
        caps.insert("portMappings".into(), Value::Array(ports));
    }
    if let Some(d) = &config.dns_config {
        caps.insert(
            "dns".into(),
            json!({"servers": d.servers, "searches": d.searches, "options": d.options}),
        );
    }
    let mut bw = Map::new();
    for (annotation, rate, burst) in [
        (INGRESS_BANDWIDTH, "ingressRate", "ingressBurst"),
        (EGRESS_BANDWIDTH, "egressRate", "egressBurst"),
    ] {
        if let Some(q) = config.annotations.get(annotation) {
            let v = parse_quantity(q).filter(|v| *v > 0).ok_or_else(|| {
                Error::InvalidArgument(format!("annotation {annotation}: bad quantity {q:?}"))
            })?;
            bw.insert(rate.into(), json!(v));
            // No burst limit of its own: the largest the plugin takes.
            bw.insert(burst.into(), json!(i32::MAX));
        }
    }
    if !bw.is_empty() {
        caps.insert("bandwidth".into(), Value::Object(bw));
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::super::container_spec::tests::refusal;
    use super::*;

    #[test]
    fn cgroup_parents_stay_inside_the_hierarchy() {
        let pod = |p: &str| cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: p.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            cgroup_parent(&pod(""), "sycri").ok().as_deref(),
            Some("sycri")
        );
        assert_eq!(
            cgroup_parent(&cri::PodSandboxConfig::default(), "sycri-t1")
                .ok()
                .as_deref(),
            Some("sycri-t1")
        );
        assert_eq!(
            cgroup_parent(&pod("/kubepods/burstable/pod1"), "sycri")
                .ok()
                .as_deref(),
            Some("kubepods/burstable/pod1")
        );
        // Beside a configured group of another name is fine.
        assert_eq!(
            cgroup_parent(&pod("/sycri/pod1"), "sycri-t1")
                .ok()
                .as_deref(),
            Some("sycri/pod1")
        );
        for bad in [
            "/kubepods/../../etc",
            "a/./b",
            "..",
            "a//b",
            "/sycri/0123abcd",
            "sycri",
        ] {
            assert!(
                matches!(
                    cgroup_parent(&pod(bad), "sycri"),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            cgroup_parent(&pod("/sycri-t1/x"), "sycri-t1"),
            Err(Error::InvalidArgument(_))
        ));
    }

    fn pod_with(sc: cri::LinuxSandboxSecurityContext) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(sc),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn what_the_kubelet_always_sends_is_accepted() {
        use cri::security_profile::ProfileType;
        // A pod as the kubelet sends it: the node's user namespace, a
        // pod-level seccomp profile, run_as_user and groups, privileged.
        let sc = cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            seccomp: Some(cri::SecurityProfile {
                profile_type: ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            supplemental_groups: vec![2000],
            privileged: true,
            selinux_options: Some(cri::SeLinuxOption::default()),
            apparmor: Some(cri::SecurityProfile {
                profile_type: ProfileType::Unconfined as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(refusal(check_security(&pod_with(sc))).0, "accepted");
        assert!(check_security(&cri::PodSandboxConfig::default()).is_ok());
    }

    #[test]
    fn pod_security_sycri_cannot_apply_is_refused() {
        use cri::security_profile::ProfileType;
        // The checks are container_spec's (tested there case by case); at
        // pod level each one runs and says it is the pod's.
        let userns = pod_with(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                userns_options: Some(cri::UserNamespace {
                    mode: cri::NamespaceMode::Pod as i32,
                    uids: vec![cri::IdMapping {
                        host_id: 100000,
                        container_id: 0,
                        length: 65536,
                    }],
                    gids: Vec::new(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let selinux = pod_with(cri::LinuxSandboxSecurityContext {
            selinux_options: Some(cri::SeLinuxOption {
                r#type: "spc_t".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let apparmor = pod_with(cri::LinuxSandboxSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: ProfileType::Localhost as i32,
                localhost_ref: "my-profile".into(),
            }),
            ..Default::default()
        });
        for (pod, field) in [
            (userns, "userns_options"),
            (selinux, "selinux_options"),
            (apparmor, "my-profile"),
        ] {
            let (got, msg) = refusal(check_security(&pod));
            assert_eq!(got, "FailedPrecondition", "{pod:?}: {msg}");
            assert!(msg.contains(field), "{msg:?} names {field}");
            assert!(msg.contains("pod's"), "{msg:?} says it is the pod's");
        }
    }

    #[test]
    fn sysctls_by_namespace() {
        for (name, want) in [
            ("net.ipv4.ip_forward", Some(SysctlNs::Net)),
            ("net/ipv4/conf/eth0.1/forwarding", Some(SysctlNs::Net)),
            ("kernel.shm_rmid_forced", Some(SysctlNs::Ipc)),
            ("kernel.shmmax", Some(SysctlNs::Ipc)),
            ("kernel.msgmax", Some(SysctlNs::Ipc)),
            ("kernel.sem", Some(SysctlNs::Ipc)),
            ("fs.mqueue.msg_max", Some(SysctlNs::Ipc)),
            ("fs.mqueue", None),
            ("kernel.pid_max", None),
            ("kernel.semx", None),
            ("vm.swappiness", None),
            ("net", None),
            ("net/../kernel/pid_max", None),
        ] {
            assert_eq!(sysctl_namespace(name), want, "{name}");
        }
        let mut m = std::collections::HashMap::new();
        m.insert("net.ipv4.ping_group_range".to_string(), "0 0".to_string());
        assert!(check_sysctls(&m, true, true).is_ok());
        assert!(matches!(
            check_sysctls(&m, false, true),
            Err(Error::InvalidArgument(_))
        ));
        m.insert("kernel.pid_max".to_string(), "1".to_string());
        assert!(matches!(
            check_sysctls(&m, true, true),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("10M"), Some(10_000_000));
        assert_eq!(parse_quantity("1Gi"), Some(1 << 30));
        assert_eq!(parse_quantity("1.5k"), Some(1500));
        assert_eq!(parse_quantity("123"), Some(123));
        assert_eq!(parse_quantity("1X"), None);
        assert_eq!(parse_quantity(""), None);
        assert_eq!(parse_quantity("-1M"), None);
    }

    #[test]
    fn capabilities_from_the_pod_config() {
        let mut c = cri::PodSandboxConfig {
            port_mappings: vec![
                cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                },
                cri::PortMapping {
                    protocol: cri::Protocol::Tcp as i32,
                    container_port: 80,
                    host_port: 0,
                    host_ip: String::new(),
                },
            ],
            dns_config: Some(cri::DnsConfig {
                servers: vec!["10.0.0.10".into()],
                searches: vec!["svc".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        c.annotations.insert(INGRESS_BANDWIDTH.into(), "1M".into());
        let caps = capability_args(&c, Some(json!([[{"subnet": "10.1.0.0/24"}]]))).expect("caps");
        assert_eq!(caps["ipRanges"][0][0]["subnet"], "10.1.0.0/24");
        assert_eq!(
            caps["portMappings"],
            json!([{"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}])
        );
        assert_eq!(caps["dns"]["servers"], json!(["10.0.0.10"]));
        assert_eq!(caps["bandwidth"]["ingressRate"], json!(1_000_000));
        assert!(caps["bandwidth"].get("egressRate").is_none());
        c.annotations.insert(EGRESS_BANDWIDTH.into(), "lots".into());
        assert!(matches!(
            capability_args(&c, None),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn hosts_file_names_the_pod_ip() {
        let ip: IpAddr = "10.89.0.7".parse().expect("ip");
        let h = hosts_file("web", &[ip], false);
        assert!(h.contains("10.89.0.7\tweb\n"), "{h}");
        assert!(!h.contains("127.0.1.1"));
        assert!(hosts_file("web", &[], false).contains("127.0.1.1\tweb\n"));
    }
}
