//! The CRI client the suite drives sycri with: sycri's own generated tonic
//! types over the unix socket, and the few calls the tests repeat, each
//! bounded in time (TCG makes everything slow, a hung call must still end).

use crate::fail::{Context, Fail, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use sycri::proto::cri;
use sycri::proto::cri::image_service_client::ImageServiceClient;
use sycri::proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

/// How long one RPC may take before the test fails (CreateContainer and
/// StopPodSandbox do real work; under TCG seconds, not milliseconds).
pub const RPC_LIMIT: Duration = Duration::from_secs(90);

/// Connected clients of both CRI services.
#[derive(Clone)]
pub struct Cri {
    pub rt: RuntimeServiceClient<Channel>,
    pub img: ImageServiceClient<Channel>,
}

/// Bounds one RPC and turns its status into a [`Fail`] naming the call.
pub async fn call<T>(
    what: &str,
    fut: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T> {
    match tokio::time::timeout(RPC_LIMIT, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner).context(what),
        Err(_) => Err(Fail(format!("{what}: no answer in {RPC_LIMIT:?}"))),
    }
}

impl Cri {
    /// Connects to the socket, retrying for a while: the file appears at
    /// bind(), a moment before the server accepts.
    pub async fn connect(sock: &Path, limit: Duration) -> Result<Cri> {
        let deadline = Instant::now() + limit;
        loop {
            let path = sock.to_path_buf();
            let attempt = Endpoint::try_from("http://sycri.invalid")
                .map_err(|e| Fail(format!("endpoint: {e}")))?
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await;
            match attempt {
                Ok(ch) => {
                    return Ok(Cri {
                        rt: RuntimeServiceClient::new(ch.clone()),
                        img: ImageServiceClient::new(ch),
                    })
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(Fail(format!("connect to {}: {e}", sock.display())))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    pub async fn pull(&mut self, image: &str) -> Result<String> {
        let req = cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(call("PullImage", self.img.pull_image(req)).await?.image_ref)
    }

    pub async fn run_pod(&mut self, config: &cri::PodSandboxConfig) -> Result<String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        Ok(call("RunPodSandbox", self.rt.run_pod_sandbox(req))
            .await?
            .pod_sandbox_id)
    }

    pub async fn pod_status(&mut self, pod: &str) -> Result<cri::PodSandboxStatusResponse> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        };
        call("PodSandboxStatus", self.rt.pod_sandbox_status(req)).await
    }

    /// The pod's address on the CNI network.
    pub async fn pod_ip(&mut self, pod: &str) -> Result<String> {
        let st = self.pod_status(pod).await?;
        st.status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .context(format!("pod {pod}'s IP in PodSandboxStatus"))
    }

    /// The pid of the pod's init (its pinned namespaces), if it has one.
    pub async fn pod_pid(&mut self, pod: &str) -> Result<Option<i32>> {
        let st = self.pod_status(pod).await?;
        Ok(info_pid(st.info.get("info")))
    }

    pub async fn create(
        &mut self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> Result<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        };
        Ok(call("CreateContainer", self.rt.create_container(req))
            .await?
            .container_id)
    }

    pub async fn start(&mut self, id: &str) -> Result<()> {
        let req = cri::StartContainerRequest {
            container_id: id.into(),
        };
        call("StartContainer", self.rt.start_container(req)).await?;
        Ok(())
    }

    pub async fn status_full(&mut self, id: &str) -> Result<cri::ContainerStatusResponse> {
        let req = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        call("ContainerStatus", self.rt.container_status(req)).await
    }

    pub async fn status(&mut self, id: &str) -> Result<cri::ContainerStatus> {
        self.status_full(id)
            .await?
            .status
            .context("ContainerStatus's status")
    }

    /// The container's first process, from the verbose status.
    pub async fn pid(&mut self, id: &str) -> Result<i32> {
        let st = self.status_full(id).await?;
        info_pid(st.info.get("info")).context(format!("pid of container {id} in its status"))
    }

    /// Waits until the container is in `state`; its status then.
    pub async fn wait_state(
        &mut self,
        id: &str,
        state: cri::ContainerState,
        limit: Duration,
    ) -> Result<cri::ContainerStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let st = self.status(id).await?;
            if st.state == state as i32 {
                return Ok(st);
            }
            if Instant::now() > deadline {
                return Err(Fail(format!(
                    "container {id} not {state:?} after {limit:?}: state {}, reason {:?}, message {:?}",
                    st.state, st.reason, st.message
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the container has exited; its status then.
    pub async fn wait_exited(&mut self, id: &str, secs: u64) -> Result<cri::ContainerStatus> {
        self.wait_state(
            id,
            cri::ContainerState::ContainerExited,
            Duration::from_secs(secs),
        )
        .await
    }

    /// ExecSync: (exit code, stdout, stderr).
    pub async fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> Result<(i32, String, String)> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        };
        let r = call(&format!("ExecSync {cmd:?}"), self.rt.exec_sync(req)).await?;
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    pub async fn stop(&mut self, id: &str, timeout: i64) -> Result<()> {
        let req = cri::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        call("StopContainer", self.rt.stop_container(req)).await?;
        Ok(())
    }

    pub async fn remove(&mut self, id: &str) -> Result<()> {
        let req = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        call("RemoveContainer", self.rt.remove_container(req)).await?;
        Ok(())
    }

    pub async fn stop_pod(&mut self, pod: &str) -> Result<()> {
        let req = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        call("StopPodSandbox", self.rt.stop_pod_sandbox(req)).await?;
        Ok(())
    }

    pub async fn remove_pod(&mut self, pod: &str) -> Result<()> {
        let req = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        };
        call("RemovePodSandbox", self.rt.remove_pod_sandbox(req)).await?;
        Ok(())
    }

    pub async fn containers(&mut self) -> Result<Vec<cri::Container>> {
        let req = cri::ListContainersRequest::default();
        Ok(call("ListContainers", self.rt.list_containers(req))
            .await?
            .containers)
    }

    pub async fn pods(&mut self) -> Result<Vec<cri::PodSandbox>> {
        let req = cri::ListPodSandboxRequest::default();
        Ok(call("ListPodSandbox", self.rt.list_pod_sandbox(req))
            .await?
            .items)
    }

    pub async fn stats(&mut self, id: &str) -> Result<cri::ContainerStats> {
        let req = cri::ContainerStatsRequest {
            container_id: id.into(),
        };
        call("ContainerStats", self.rt.container_stats(req))
            .await?
            .stats
            .context("ContainerStats's stats")
    }

    pub async fn update(&mut self, id: &str, r: cri::LinuxContainerResources) -> Result<()> {
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(r),
            ..Default::default()
        };
        call(
            "UpdateContainerResources",
            self.rt.update_container_resources(req),
        )
        .await?;
        Ok(())
    }

    /// The limits ContainerStatus reports.
    pub async fn reported_resources(&mut self, id: &str) -> Result<cri::LinuxContainerResources> {
        self.status(id)
            .await?
            .resources
            .and_then(|r| r.linux)
            .context("linux resources in ContainerStatus")
    }

    /// Removes every pod and container the server knows (best effort), so
    /// that a failed test does not spill into the next one.
    pub async fn remove_everything(&mut self) {
        if let Ok(cs) = self.containers().await {
            for c in cs {
                let _ = self.stop(&c.id, 0).await;
                let _ = self.remove(&c.id).await;
            }
        }
        if let Ok(ps) = self.pods().await {
            for p in ps {
                let _ = self.stop_pod(&p.id).await;
                let _ = self.remove_pod(&p.id).await;
            }
        }
    }
}

/// The `pid` of a verbose status's `info` JSON (absent or 0: none).
fn info_pid(info: Option<&String>) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_str(info?).ok()?;
    v.get("pid")?
        .as_i64()
        .filter(|p| *p > 0)
        .and_then(|p| i32::try_from(p).ok())
}

/// A pod as the kubelet makes one with the cgroupfs driver: a Burstable pod
/// whose cgroup parent is `/kubepods/burstable/pod<uid>`, and its logs under
/// /var/log/pods.
pub fn pod_config(name: &str) -> cri::PodSandboxConfig {
    let uid = format!("{name}-{}", std::process::id());
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.clone(),
            namespace: "vm".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: format!("/var/log/pods/vm_{name}_{uid}"),
        labels: [("app".to_string(), name.to_string())].into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/burstable/pod{uid}"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's cgroup (v2) directory.
pub fn pod_cgroup(cfg: &cri::PodSandboxConfig) -> PathBuf {
    let parent = cfg
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.trim_matches('/').to_string())
        .unwrap_or_default();
    crate::audit::cgroup_root().join(parent)
}

pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: [("c".to_string(), name.to_string())].into(),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// A container config with these limits.
pub fn with_resources(
    mut c: cri::ContainerConfig,
    r: cri::LinuxContainerResources,
) -> cri::ContainerConfig {
    c.linux.get_or_insert_with(Default::default).resources = Some(r);
    c
}

/// The content of each record of a CRI log file (`<time> <stream> <tag> <text>`).
pub fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
        .collect()
}

/// Waits until the log has a record that contains `want`; all records then.
pub async fn wait_log(path: &Path, want: &str, limit: Duration) -> Result<Vec<String>> {
    let deadline = Instant::now() + limit;
    loop {
        let lines = log_lines(path);
        if lines.iter().any(|l| l.contains(want)) {
            return Ok(lines);
        }
        if Instant::now() > deadline {
            return Err(Fail(format!(
                "log {} has no {want:?} after {limit:?}: {lines:?}",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
