//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status, list.
//! A pod is its pinned namespaces (made by the `__sandbox` helper), a shared
//! /dev/shm, its /etc files, and, when it shares a pid namespace, a tiny init.

use crate::cni::{Attachment, PodRef};
use crate::error::{Error, Result};
use crate::helpers::{run_helper, SANDBOX_ARG};
use crate::images::random_hex;
use crate::proto::cri;
use crate::runtime::{
    blocking, process_alive, process_start_time, read_lock, signal_process, write_lock, Runtime,
};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use sycri_native::sandbox::SandboxReady;
use sycri_native::spec::SandboxSpec;
use sycri_native::util::{now_ns, write_atomic};
use tokio::sync::Mutex;

const DEFAULT_SHM_SIZE: u64 = 64 << 20;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PodRecord {
    pub id: String,
    pub name_key: String,
    pub created_at_ns: i64,
    pub ready: bool,
    pub hostname: String,
    /// Directory of the pinned namespace files.
    pub ns_dir: PathBuf,
    pub own_net: bool,
    pub own_ipc: bool,
    pub own_uts: bool,
    pub own_pid: bool,
    pub init_pid: Option<i32>,
    pub init_start: Option<u64>,
    /// The pod's shared /dev/shm (a tmpfs), when IPC is per pod.
    pub shm: Option<PathBuf>,
    /// hostname, hosts, resolv.conf for the containers.
    pub etc_dir: PathBuf,
    pub runtime_handler: String,
    /// The pod's IPs from its CNI network (IPv4 first); empty when it has none
    /// or its network is torn down.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

pub struct Pod {
    pub rec: PodRecord,
    pub config: cri::PodSandboxConfig,
    pub dir: PathBuf,
}

impl Pod {
    pub fn load(dir: &Path) -> Result<Pod> {
        let (rec, config) = crate::runtime::load_record(dir, "pod.json")?;
        Ok(Pod {
            rec,
            config,
            dir: dir.to_path_buf(),
        })
    }

    pub fn save(&self) -> Result<()> {
        crate::runtime::save_record(&self.dir, "pod.json", &self.rec)
    }

    pub fn ns_path(&self, name: &str) -> PathBuf {
        self.rec.ns_dir.join(name)
    }

    pub fn status(&self) -> cri::PodSandboxStatus {
        let c = &self.config;
        let ns_opts = c
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone());
        cri::PodSandboxStatus {
            id: self.rec.id.clone(),
            metadata: c.metadata.clone(),
            state: if self.rec.ready {
                cri::PodSandboxState::SandboxReady as i32
            } else {
                cri::PodSandboxState::SandboxNotready as i32
            },
            created_at: self.rec.created_at_ns,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: self
                    .rec
                    .ips
                    .first()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                additional_ips: self
                    .rec
                    .ips
                    .iter()
                    .skip(1)
                    .map(|a| cri::PodIp { ip: a.to_string() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace { options: ns_opts }),
            }),
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            runtime_handler: self.rec.runtime_handler.clone(),
        }
    }
}

fn ns_options(config: &cri::PodSandboxConfig) -> cri::NamespaceOption {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default()
}

fn resolv_conf(dns: Option<&cri::DnsConfig>) -> String {
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
fn hosts_file(hostname: &str, ips: &[IpAddr], host_net: bool) -> String {
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

fn write_etc_files(
    dir: &Path,
    hostname: &str,
    config: &cri::PodSandboxConfig,
    host_net: bool,
    ips: &[IpAddr],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create pod etc dir", e))?;
    let hosts = hosts_file(hostname, ips, host_net);
    for (name, content) in [
        ("hostname", format!("{hostname}\n")),
        ("hosts", hosts),
        ("resolv.conf", resolv_conf(config.dns_config.as_ref())),
    ] {
        write_atomic(&dir.join(name), content.as_bytes())
            .map_err(|e| Error::io(format!("write pod {name}"), e))?;
    }
    Ok(())
}

impl Runtime {
    pub async fn run_pod(self: &Arc<Self>, req: cri::RunPodSandboxRequest) -> Result<String> {
        let config = req
            .config
            .ok_or_else(|| Error::InvalidArgument("RunPodSandbox needs a config".into()))?;
        let md = config
            .metadata
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("pod config needs metadata".into()))?;
        if md.name.is_empty() {
            return Err(Error::InvalidArgument("pod metadata needs a name".into()));
        }
        // Its containers' cgroups go there: refuse a bad one now, not at
        // the first CreateContainer.
        crate::resources::cgroup_parent(&config)?;
        if !req.runtime_handler.is_empty()
            && !self.cfg.runtime_handlers.contains(&req.runtime_handler)
        {
            return Err(Error::NotFound(format!(
                "no runtime for {:?} is configured",
                req.runtime_handler
            )));
        }
        // HOST_NAME_MAX; sethostname(2) refuses longer names.
        if config.hostname.len() > 64 || config.hostname.contains(['\0', '\n']) {
            return Err(Error::InvalidArgument(format!(
                "hostname {:?} is not valid: at most 64 bytes, one line",
                config.hostname
            )));
        }
        let ns = ns_options(&config);
        let linux = config.linux.clone().unwrap_or_default();
        check_sysctls(
            &linux.sysctls,
            ns.network != cri::NamespaceMode::Node as i32,
            ns.ipc != cri::NamespaceMode::Node as i32,
        )?;
        capability_args(&config, None)?;
        let name_key = format!("{}_{}_{}_{}", md.name, md.namespace, md.uid, md.attempt);
        let id = random_hex(32);
        self.reserve_name(&name_key, &id)?;
        let result = self
            .create_pod(&id, &name_key, &config, &req.runtime_handler)
            .await;
        match result {
            Ok(pod) => {
                write_lock(&self.pods).insert(id.clone(), Arc::new(Mutex::new(pod)));
                tracing::info!(pod = %id, name = %name_key, "pod ready");
                Ok(id)
            }
            Err(e) => {
                self.release_name(&name_key, &id);
                Err(e)
            }
        }
    }

    async fn create_pod(
        self: &Arc<Self>,
        id: &str,
        name_key: &str,
        config: &cri::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<Pod> {
        let ns = ns_options(config);
        let host_net = ns.network == cri::NamespaceMode::Node as i32;
        let host_ipc = ns.ipc == cri::NamespaceMode::Node as i32;
        let own_pid = ns.pid == cri::NamespaceMode::Pod as i32;
        // Without a hostname the pod keeps the node's (as its new UTS namespace
        // starts with it); kubelet always sends one.
        let hostname = if !config.hostname.is_empty() {
            config.hostname.clone()
        } else {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let state = self.pod_state_dir(id);
        let run = self.pod_run_dir(id);
        let rec = PodRecord {
            id: id.to_string(),
            name_key: name_key.to_string(),
            created_at_ns: now_ns(),
            ready: false,
            hostname: hostname.clone(),
            ns_dir: run.join("ns"),
            own_net: !host_net,
            own_ipc: !host_ipc,
            own_uts: !host_net,
            own_pid,
            init_pid: None,
            init_start: None,
            shm: (!host_ipc).then(|| run.join("shm")),
            etc_dir: run.join("etc"),
            runtime_handler: runtime_handler.to_string(),
            ips: Vec::new(),
        };
        let mut pod = Pod {
            rec,
            config: config.clone(),
            dir: state.clone(),
        };
        let made = async {
            std::fs::create_dir_all(&state).map_err(|e| Error::io("create pod state dir", e))?;
            std::fs::create_dir_all(&run).map_err(|e| Error::io("create pod run dir", e))?;
            write_atomic(&state.join("config.pb"), &config.encode_to_vec())
                .map_err(|e| Error::io("write pod config", e))?;
            pod.save()?;
            if let Some(shm) = pod.rec.shm.clone() {
                let size = DEFAULT_SHM_SIZE;
                blocking(move || {
                    std::fs::create_dir_all(&shm).map_err(|e| Error::io("create pod shm", e))?;
                    sycri_native::mounts::mount_tmpfs(&shm, size)
                        .map_err(|e| Error::Internal(e.to_string()))
                })
                .await?;
            }
            let spec = SandboxSpec {
                id: id.to_string(),
                hostname: hostname.clone(),
                ns_dir: pod.rec.ns_dir.clone(),
                share_net: pod.rec.own_net,
                share_ipc: pod.rec.own_ipc,
                share_uts: pod.rec.own_uts,
                share_pid: own_pid,
                sysctls: BTreeMap::new(),
                apply_only: false,
            };
            let spec_path = run.join("sandbox.json");
            write_atomic(
                &spec_path,
                &serde_json::to_vec(&spec).map_err(|e| Error::Internal(e.to_string()))?,
            )
            .map_err(|e| Error::io("write sandbox spec", e))?;
            let (helper, line) = run_helper(SANDBOX_ARG, &spec_path).await?;
            let code = self.reaper.wait(helper).await;
            let ready: SandboxReady = serde_json::from_str(line.trim()).map_err(|e| {
                Error::Internal(format!("sandbox helper (exit {code}) said {line:?}: {e}"))
            })?;
            if let Some(f) = ready.error {
                return Err(Error::from(f));
            }
            pod.rec.init_pid = ready.init_pid;
            pod.rec.init_start = ready.init_pid.and_then(process_start_time);
            pod.save()?;
            if pod.rec.own_net {
                pod.rec.ips = self.setup_network(&pod).await?;
            }
            write_etc_files(&pod.rec.etc_dir, &hostname, config, host_net, &pod.rec.ips)?;
            let sysctls: BTreeMap<String, String> = config
                .linux
                .as_ref()
                .map(|l| l.sysctls.clone().into_iter().collect())
                .unwrap_or_default();
            if !sysctls.is_empty() {
                let spec = SandboxSpec {
                    sysctls,
                    apply_only: true,
                    ..spec
                };
                let spec_path = run.join("sysctls.json");
                write_atomic(
                    &spec_path,
                    &serde_json::to_vec(&spec).map_err(|e| Error::Internal(e.to_string()))?,
                )
                .map_err(|e| Error::io("write sysctl spec", e))?;
                let (helper, line) = run_helper(SANDBOX_ARG, &spec_path).await?;
                let code = self.reaper.wait(helper).await;
                let _ = std::fs::remove_file(&spec_path);
                let done: SandboxReady = serde_json::from_str(line.trim()).map_err(|e| {
                    Error::Internal(format!("sysctl helper (exit {code}) said {line:?}: {e}"))
                })?;
                if let Some(f) = done.error {
                    return Err(Error::from(f));
                }
            }
            pod.rec.ready = true;
            pod.save()
        }
        .await;
        if let Err(e) = made {
            if let Err(te) = self.teardown_network(&state).await {
                tracing::warn!(pod = %id, error = %te, "tearing down the network of a failed pod");
            }
            let rec = pod.rec.clone();
            let _ = blocking(move || release_pod_resources(&rec)).await;
            let _ = std::fs::remove_dir_all(&state);
            let _ = std::fs::remove_dir_all(&run);
            return Err(e);
        }
        Ok(pod)
    }

    pub async fn stop_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some((id, pod)) = Runtime::find(&self.pods, id) else {
            return Ok(());
        };
        for cid in self.containers_of(&id).await {
            self.stop_container(&cid, 0).await?;
        }
        let mut pod = pod.lock().await;
        self.teardown_network(&pod.dir).await?;
        let rec = pod.rec.clone();
        blocking(move || release_pod_resources(&rec)).await?;
        if pod.rec.ready || !pod.rec.ips.is_empty() {
            pod.rec.ready = false;
            pod.rec.ips.clear();
            pod.save()?;
            tracing::info!(pod = %id, "pod stopped");
        }
        Ok(())
    }

    pub async fn remove_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some((id, pod)) = Runtime::find(&self.pods, id) else {
            return Ok(());
        };
        for cid in self.containers_of(&id).await {
            self.remove_container(&cid).await?;
        }
        let pod = pod.lock().await;
        self.teardown_network(&pod.dir).await?;
        let rec = pod.rec.clone();
        blocking(move || release_pod_resources(&rec)).await?;
        for d in [self.pod_run_dir(&id), pod.dir.clone()] {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("remove {}", d.display()), e)),
            }
        }
        self.release_name(&pod.rec.name_key, &id);
        write_lock(&self.pods).remove(&id);
        tracing::info!(pod = %id, "pod removed");
        Ok(())
    }

    /// Status, and with `verbose` an `info` entry in JSON (the pod init's pid, namespaces).
    pub async fn pod_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(
        cri::PodSandboxStatus,
        std::collections::HashMap<String, String>,
    )> {
        let (_, pod) = Runtime::find(&self.pods, id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))?;
        let pod = pod.lock().await;
        let mut info = std::collections::HashMap::new();
        if verbose {
            let alive = pod
                .rec
                .init_pid
                .filter(|p| process_alive(*p, pod.rec.init_start));
            let mut v = serde_json::json!({
                "pid": alive,
                "namespaceDir": pod.rec.ns_dir,
                "hostname": pod.rec.hostname,
            });
            if let Ok(Some(att)) = Attachment::load(&pod.dir) {
                // CHECK the attachment of a ready pod: "ok", "unsupported" or why not.
                let check = if pod.rec.ready {
                    match self.cni.check(&self.reaper, &att).await {
                        Ok(true) => "ok".to_string(),
                        Ok(false) => "unsupported".to_string(),
                        Err(e) => e.to_string(),
                    }
                } else {
                    String::new()
                };
                v["cniResult"] = att.result.clone().unwrap_or(Value::Null);
                v["cniNetwork"] = att.network.get("name").cloned().unwrap_or(Value::Null);
                v["cniCheck"] = Value::String(check);
            }
            info.insert("info".to_string(), v.to_string());
        }
        Ok((pod.status(), info))
    }

    pub async fn list_pods(&self, filter: Option<cri::PodSandboxFilter>) -> Vec<cri::PodSandbox> {
        let pods: Vec<_> = read_lock(&self.pods).values().cloned().collect();
        let mut out = Vec::new();
        for p in pods {
            let p = p.lock().await;
            let s = p.status();
            if let Some(f) = &filter {
                let selected = crate::runtime::id_selected(&s.id, &f.id)
                    && f.state.as_ref().is_none_or(|st| st.state == s.state)
                    && crate::runtime::labels_selected(&s.labels, &f.label_selector);
                if !selected {
                    continue;
                }
            }
            out.push(cri::PodSandbox {
                id: s.id,
                metadata: s.metadata,
                state: s.state,
                created_at: s.created_at,
                labels: s.labels,
                annotations: s.annotations,
                runtime_handler: s.runtime_handler,
            });
        }
        out.sort_by_key(|p| p.created_at);
        out
    }

    /// Ids of the containers of pod `pod_id`.
    pub async fn containers_of(&self, pod_id: &str) -> Vec<String> {
        let all: Vec<_> = read_lock(&self.containers)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut v = Vec::new();
        for (id, c) in all {
            if c.lock().await.rec.pod_id == pod_id {
                v.push(id);
            }
        }
        v
    }
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
fn check_sysctls(
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
fn capability_args(
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

impl Runtime {
    /// Attaches a pod with its own network namespace to the CNI network; its
    /// IPs. Without any network config the pod keeps loopback only.
    async fn setup_network(&self, pod: &Pod) -> Result<Vec<IpAddr>> {
        let Some(net) = self.cni.network()? else {
            tracing::warn!(
                pod = %pod.rec.id,
                dir = %self.cni.conf_dir.display(),
                "no CNI network config: the pod has loopback only"
            );
            return Ok(Vec::new());
        };
        for ty in net.plugin_types() {
            self.cni.find_plugin(ty)?;
        }
        let md = pod.config.metadata.clone().unwrap_or_default();
        let pod_ref = PodRef {
            namespace: md.namespace,
            name: md.name,
            uid: md.uid,
            id: pod.rec.id.clone(),
        };
        let mut att = Attachment::new(
            &net,
            &pod_ref,
            &pod.ns_path("net"),
            capability_args(&pod.config, self.cni.ip_ranges())?,
        );
        // Kept before ADD, so that a failed or interrupted ADD is undone by DEL.
        att.save(&pod.dir)?;
        self.cni.add(&self.reaper, &mut att).await?;
        att.save(&pod.dir)?;
        let ips = att.ips();
        tracing::info!(
            pod = %pod.rec.id,
            network = %net.name,
            ips = ?ips,
            "pod network attached"
        );
        Ok(ips)
    }

    /// Detaches the pod whose state is in `state_dir` from its CNI network
    /// (DEL), if it is attached. Idempotent; works with the namespace gone.
    async fn teardown_network(&self, state_dir: &Path) -> Result<()> {
        let att = match Attachment::load(state_dir) {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(dir = %state_dir.display(), error = %e, "dropping unreadable network attachment");
                return Attachment::remove(state_dir).map_err(Error::from);
            }
        };
        self.cni.del(&self.reaper, &att).await?;
        Attachment::remove(state_dir)?;
        tracing::info!(pod = %att.container_id, "pod network detached");
        Ok(())
    }
}

/// Ends the pod's init, unpins its namespaces and unmounts its shm. Idempotent.
pub fn release_pod_resources(rec: &PodRecord) -> Result<()> {
    if let Some(pid) = rec.init_pid {
        if signal_process(pid, rec.init_start, libc::SIGKILL) {
            // Wait (briefly) for it to die so that the pid namespace is gone too.
            for _ in 0..200 {
                if !process_alive(pid, rec.init_start) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    sycri_native::sandbox::unpin_all(&rec.ns_dir).map_err(Error::from)?;
    if let Some(shm) = &rec.shm {
        sycri_native::mounts::unmount(shm).map_err(|e| Error::Internal(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
