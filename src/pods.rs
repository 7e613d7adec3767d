//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, status, list.
//! A pod is its pinned namespaces (made by the `__sandbox` helper), a shared
//! /dev/shm, its /etc files, and, when it shares a pid namespace, a tiny init.

use crate::error::{Error, Result};
use crate::helpers::{run_helper, SANDBOX_ARG};
use crate::images::random_hex;
use crate::proto::cri;
use crate::runtime::{
    blocking, process_alive, process_start_time, read_lock, signal_process, write_lock, Runtime,
};
use prost::Message;
use serde::{Deserialize, Serialize};
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
}

pub struct Pod {
    pub rec: PodRecord,
    pub config: cri::PodSandboxConfig,
    pub dir: PathBuf,
}

impl Pod {
    pub fn load(dir: &Path) -> Result<Pod> {
        let rec: PodRecord = serde_json::from_slice(
            &std::fs::read(dir.join("pod.json")).map_err(|e| Error::io("read pod.json", e))?,
        )
        .map_err(|e| Error::Internal(format!("pod.json: {e}")))?;
        let config = cri::PodSandboxConfig::decode(
            std::fs::read(dir.join("config.pb"))
                .map_err(|e| Error::io("read config.pb", e))?
                .as_slice(),
        )
        .map_err(|e| Error::Internal(format!("config.pb: {e}")))?;
        Ok(Pod {
            rec,
            config,
            dir: dir.to_path_buf(),
        })
    }

    pub fn save(&self) -> Result<()> {
        let data = serde_json::to_vec_pretty(&self.rec)
            .map_err(|e| Error::Internal(format!("encode pod: {e}")))?;
        write_atomic(&self.dir.join("pod.json"), &data).map_err(|e| Error::io("write pod.json", e))
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
            network: Some(cri::PodSandboxNetworkStatus::default()),
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

fn write_etc_files(
    dir: &Path,
    hostname: &str,
    config: &cri::PodSandboxConfig,
    host_net: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create pod etc dir", e))?;
    let hosts = if host_net {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
        )
    };
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
        let linux = config.linux.clone().unwrap_or_default();
        if !linux.sysctls.is_empty() {
            tracing::warn!(
                "pod sysctls are not applied yet: {:?}",
                linux.sysctls.keys()
            );
        }
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
        let hostname = if !config.hostname.is_empty() {
            config.hostname.clone()
        } else if host_net {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            config
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
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
            write_etc_files(&pod.rec.etc_dir, &hostname, config, host_net)?;
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
            pod.rec.ready = true;
            pod.save()
        }
        .await;
        if let Err(e) = made {
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
        let rec = pod.rec.clone();
        blocking(move || release_pod_resources(&rec)).await?;
        if pod.rec.ready {
            pod.rec.ready = false;
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
            let v = serde_json::json!({
                "pid": alive,
                "namespaceDir": pod.rec.ns_dir,
                "hostname": pod.rec.hostname,
            });
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
                if !f.id.is_empty() && !s.id.starts_with(&f.id) {
                    continue;
                }
                if let Some(st) = &f.state {
                    if st.state != s.state {
                        continue;
                    }
                }
                if !f
                    .label_selector
                    .iter()
                    .all(|(k, v)| s.labels.get(k) == Some(v))
                {
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
