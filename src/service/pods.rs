//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus,
//! ListPodSandbox. A pod is its pinned namespaces (made by the engine's
//! sandbox helper), a shared /dev/shm, its /etc files, and, when it shares a
//! pid namespace, a tiny init.

use super::pod_spec::{self, cgroup_parent, check_sysctls, hosts_file, ns_options, resolv_conf};
use super::Runtime;
use crate::cni::NetworkConfig;
use crate::error::{Error, Result};
use crate::proto::cri;
use crate::store::pod::{Pod, PodMeta, PodStatus, RECORD};
use crate::store::record;
use crate::store::spare_net::Spare;
use crate::util::random_hex;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use sycri_native::spec::SandboxSpec;
use sycri_native::util::{now_ns, write_atomic};

const DEFAULT_SHM_SIZE: u64 = 64 << 20;

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

/// A pod's verbose status: its init, namespaces and CNI attachment.
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub status: PodStatus,
    /// `info` for verbose answers (JSON), empty otherwise.
    pub info: std::collections::HashMap<String, String>,
}

impl Runtime {
    pub async fn run_pod(self: &Arc<Self>, req: cri::RunPodSandboxRequest) -> Result<String> {
        let _starting = self.spares.starting();
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
        self.cgroup_parent(&config)?;
        pod_spec::check_security(&config)?;
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
        let caps = pod_spec::capability_args(&config, self.cni.ip_ranges())?;
        let name_key = format!("{}_{}_{}_{}", md.name, md.namespace, md.uid, md.attempt);
        // Its CNI network (a missing plugin is refused before anything is
        // made), and with one a spare namespace to start on at once.
        let net = match ns.network != cri::NamespaceMode::Node as i32 {
            true => self.pod_network(&name_key)?,
            false => None,
        };
        let mut spare = net.as_ref().and_then(|n| self.take_spare_net(n, &caps));
        // A spare attached ahead was attached under the id its pod gets.
        let id = spare
            .as_ref()
            .and_then(|s| s.attachment.as_ref())
            .map(|a| a.container_id.clone())
            .unwrap_or_else(|| random_hex(32));
        if let Err(e) = self.names.reserve(&name_key, &id) {
            if let Some(back) = spare.and_then(|s| self.spares.give_back(s)) {
                self.drop_spare_net(back).await;
            }
            return Err(e);
        }
        let made = self
            .create_pod(
                &id,
                &name_key,
                config,
                &req.runtime_handler,
                net,
                &mut spare,
            )
            .await;
        // The pod pinned the spare it took in its own ns dir (or failed
        // and is undone): the spare's pin is not needed either way, and
        // the pod need not wait for it to go.
        if let Some(spare) = spare {
            let rt = self.clone();
            tokio::spawn(async move { rt.drop_spare_net(spare).await });
        }
        self.fill_spare_nets();
        match made {
            Ok(pod) => {
                self.pods.insert(Arc::new(pod));
                tracing::info!(pod = %id, name = %name_key, "pod ready");
                Ok(id)
            }
            Err((e, kept)) => {
                match kept {
                    // Listed, not ready, still holding its name: its Stop or
                    // Remove finishes what failed.
                    Some(pod) => self.pods.insert(Arc::new(pod)),
                    None => self.names.release(&name_key, &id),
                }
                Err(e)
            }
        }
    }

    /// Where the containers of a pod with `config` get their cgroups: its
    /// own cgroup parent, else the server's (config `cgroup_parent`).
    pub(super) fn cgroup_parent(&self, config: &cri::PodSandboxConfig) -> Result<String> {
        cgroup_parent(config, self.cfg.cgroup_parent_path())
    }

    async fn create_pod(
        self: &Arc<Self>,
        id: &str,
        name_key: &str,
        config: cri::PodSandboxConfig,
        runtime_handler: &str,
        net: Option<NetworkConfig>,
        spare: &mut Option<Spare>,
    ) -> std::result::Result<Pod, (Error, Option<Pod>)> {
        let ns = ns_options(&config);
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
        let mut meta = PodMeta {
            id: id.to_string(),
            name_key: name_key.to_string(),
            created_at_ns: now_ns(),
            hostname: hostname.clone(),
            ns_dir: run.join("ns"),
            own_net: !host_net,
            own_ipc: !host_ipc,
            own_uts: !host_net,
            own_pid,
            init: None,
            shm: (!host_ipc).then(|| run.join("shm")),
            etc_dir: run.join("etc"),
            runtime_handler: runtime_handler.to_string(),
            config,
            dir: state.clone(),
        };
        let mut status = PodStatus::default();
        // Until the pod is ready its record is an intent (`creating`): a
        // server killed half way finds and undoes it (recover.rs).
        let save = |meta: &PodMeta, status: &PodStatus| {
            let mut rec = Pod::record_of(meta, status);
            rec.creating = !status.ready;
            record::save(&meta.dir, RECORD, &rec)
        };
        let made: Result<()> = async {
            std::fs::create_dir_all(&state).map_err(|e| Error::io("create pod state dir", e))?;
            std::fs::create_dir_all(&run).map_err(|e| Error::io("create pod run dir", e))?;
            record::save_config(&state, &meta.config)?;
            save(&meta, &status)?;
            // With a spare, ADD starts on it at once (or was run on it
            // ahead) while the helper makes the rest of the sandbox around it.
            let ahead = spare.as_mut().and_then(|s| s.attachment.take());
            let ahead_taken = ahead.is_some();
            let spec = SandboxSpec {
                id: id.to_string(),
                hostname: hostname.clone(),
                ns_dir: meta.ns_dir.clone(),
                share_net: meta.own_net,
                share_ipc: meta.own_ipc,
                share_uts: meta.own_uts,
                share_pid: own_pid,
                sysctls: BTreeMap::new(),
                apply_only: false,
                net_from: spare.as_ref().map(|s| s.net()),
            };
            let began = std::time::Instant::now();
            let sandbox = async {
                if let Some(shm) = &meta.shm {
                    self.engine.mount_shm(shm, DEFAULT_SHM_SIZE).await?;
                }
                let init = self
                    .engine
                    .run_sandbox(&spec, &run.join("sandbox.json"))
                    .await?;
                // Known before the network is, so that a crash or failure
                // from here on ends the pod's init too.
                save(
                    &PodMeta {
                        init,
                        ..meta.clone()
                    },
                    &status,
                )?;
                Ok::<_, Error>((init, began.elapsed()))
            };
            let pinned = meta.ns_path("net");
            let ((init, sandbox_at), network_at) = match (&net, spare.as_ref()) {
                (Some(net), Some(s)) => {
                    let (on, record) = (s.net(), s.record_dir().to_path_buf());
                    let network = async {
                        let att = match ahead {
                            Some(att) => self.adopt_network(&meta, att, &record),
                            None => self.setup_network(&meta, net, &on).await,
                        };
                        (att, began.elapsed())
                    };
                    let (made, (att, at)) = tokio::join!(sandbox, network);
                    // Kept even when the network failed: the failure path ends it.
                    if let Ok((init, _)) = &made {
                        meta.init = *init;
                    }
                    let made = made?;
                    // Both done: the spare is pinned in the pod's ns dir now,
                    // and the attachment names that pin from here on.
                    let mut att = att?;
                    att.moved_to(&pinned);
                    att.save(&meta.dir)?;
                    status.ips = att.ips();
                    (made, Some(at))
                }
                (Some(net), None) => {
                    let made = sandbox.await?;
                    meta.init = made.0;
                    status.ips = self.setup_network(&meta, net, &pinned).await?.ips();
                    (made, Some(began.elapsed()))
                }
                (None, _) => (sandbox.await?, None),
            };
            meta.init = init;
            tracing::debug!(
                pod = %id,
                spare = spare.is_some(),
                ahead = ahead_taken,
                sandbox_ms = sandbox_at.as_secs_f64() * 1e3,
                network_ms = network_at.map(|d| d.as_secs_f64() * 1e3),
                "pod namespaces and network made"
            );
            write_etc_files(
                &meta.etc_dir,
                &hostname,
                &meta.config,
                host_net,
                &status.ips,
            )?;
            let sysctls: BTreeMap<String, String> = meta
                .config
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
                self.engine
                    .apply_sysctls(&spec, &run.join("sysctls.json"))
                    .await?;
            }
            status.ready = true;
            save(&meta, &status)
        }
        .await;
        if let Err(e) = made {
            if let Err(te) = self.teardown_network(&state, &meta.ns_path("net")).await {
                // Its attachment (IP lease, veth, port mappings) must not be
                // forgotten: the pod stays, not ready, and its Stop or Remove
                // retries the DEL.
                tracing::warn!(pod = %id, error = %te, "the network of a failed pod could not be detached; it stays, not ready");
                status.ready = false;
                let pod = Pod::new(meta, status);
                if let Err(se) = pod.save() {
                    tracing::warn!(pod = %id, error = %se, "saving a failed pod");
                }
                return Err((e, Some(pod)));
            }
            if let Err(re) = self
                .engine
                .release_sandbox(&meta.ns_dir, meta.shm.as_deref(), meta.init)
                .await
            {
                tracing::warn!(pod = %id, error = %re, "releasing the namespaces of a failed pod");
            }
            let _ = record::remove_dir(&state);
            let _ = record::remove_dir(&run);
            return Err((e, None));
        }
        Ok(Pod::new(meta, status))
    }

    /// Ids of the containers of pod `pod_id`.
    pub(super) fn containers_of(&self, pod_id: &str) -> Vec<String> {
        self.containers
            .list()
            .into_iter()
            .filter(|c| c.meta.pod_id == pod_id)
            .map(|c| c.meta.id.clone())
            .collect()
    }

    /// Ends the pod's network, namespaces and shm; its containers are
    /// stopped. Unknown pods are fine.
    pub async fn stop_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(pod) = self.pods.find(id) else {
            return Ok(());
        };
        let id = pod.meta.id.clone();
        let _op = pod.exclusive_op().await;
        // All at once, each given pod_stop_timeout_secs after its stop
        // signal (0, the default: killed at once, as containerd does).
        let grace = i64::try_from(self.cfg.pod_stop_timeout_secs).unwrap_or(i64::MAX);
        let cids = self.containers_of(&id);
        let stops = cids.iter().map(|cid| self.stop_container(cid, grace));
        for r in futures_util::future::join_all(stops).await {
            r?;
        }
        self.teardown_network(&pod.meta.dir, &pod.meta.ns_path("net"))
            .await?;
        let m = &pod.meta;
        self.engine
            .release_sandbox(&m.ns_dir, m.shm.as_deref(), m.init)
            .await?;
        let s = pod.status();
        if s.ready || !s.ips.is_empty() {
            pod.update(|s| {
                s.ready = false;
                s.ips.clear();
            })?;
            tracing::info!(pod = %id, "pod stopped");
        }
        Ok(())
    }

    pub async fn remove_pod(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(pod) = self.pods.find(id) else {
            return Ok(());
        };
        let id = pod.meta.id.clone();
        let _op = pod.exclusive_op().await;
        if self.pods.find(&id).is_none() {
            // Removed by another RemovePodSandbox while we waited.
            return Ok(());
        }
        // The intent: a server killed half way finishes the removal.
        pod.update(|s| s.removing = true)?;
        for cid in self.containers_of(&id) {
            self.remove_container(&cid).await?;
        }
        self.teardown_network(&pod.meta.dir, &pod.meta.ns_path("net"))
            .await?;
        let m = &pod.meta;
        self.engine
            .release_sandbox(&m.ns_dir, m.shm.as_deref(), m.init)
            .await?;
        record::remove_dir(&self.pod_run_dir(&id))?;
        record::remove_record_dir(&pod.meta.dir, RECORD)?;
        self.names.release(&pod.meta.name_key, &id);
        self.pods.remove(&id);
        tracing::info!(pod = %id, "pod removed");
        Ok(())
    }

    /// A pod and its status; with `verbose` an `info` entry in JSON (the pod
    /// init's pid, namespaces, the CNI result).
    pub fn pod_status(&self, id: &str, verbose: bool) -> Result<PodInfo> {
        let pod = self.pods.get(id)?;
        let status = pod.status();
        let mut info = std::collections::HashMap::new();
        if verbose {
            let m = &pod.meta;
            let alive = m.init.filter(|p| self.engine.alive(*p)).map(|p| p.pid);
            let mut v = serde_json::json!({
                "pid": alive,
                "namespaceDir": m.ns_dir,
                "hostname": m.hostname,
            });
            // What the network's ADD answered, as recorded: no plugin runs
            // here (a CNI CHECK on every status call is not what the kubelet
            // expects to pay for; containerd runs none either).
            if let Ok(Some(att)) = crate::cni::Attachment::load(&m.dir) {
                v["cniResult"] = att.result.clone().unwrap_or(serde_json::Value::Null);
                v["cniNetwork"] = att
                    .network
                    .get("name")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
            }
            info.insert("info".to_string(), v.to_string());
        }
        Ok(PodInfo { pod, status, info })
    }

    /// Every pod with its status (the CRI face filters and orders them).
    pub fn list_pods(&self) -> Vec<(Arc<Pod>, PodStatus)> {
        self.pods
            .list()
            .into_iter()
            .map(|p| {
                let s = p.status();
                (p, s)
            })
            .collect()
    }

    pub fn find_pod(&self, id: &str) -> Result<Arc<Pod>> {
        self.pods.get(id)
    }
}
