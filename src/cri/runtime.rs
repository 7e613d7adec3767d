//! RuntimeService: version, status, pods and containers.

use crate::config::CgroupDriver;
use crate::proto::cri;
use crate::proto::cri::runtime_service_server::RuntimeService as Service;
use crate::runtime::Runtime;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct RuntimeService {
    rt: Arc<Runtime>,
}

impl RuntimeService {
    pub fn new(rt: Arc<Runtime>) -> Self {
        RuntimeService { rt }
    }
}

type R<T> = Result<Response<T>, Status>;

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> cri::RuntimeCondition {
    cri::RuntimeCondition {
        r#type: kind.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

/// Whether this host can run containers with sycri's engine, and why not.
fn runtime_ready(rt: &Runtime) -> Result<(), String> {
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for needed in ["squashfs", "overlay"] {
        if !fs
            .lines()
            .any(|l| l.split_whitespace().last() == Some(needed))
        {
            return Err(format!("the kernel has no {needed} filesystem"));
        }
    }
    if !std::path::Path::new("/dev/loop-control").exists() {
        return Err("/dev/loop-control is missing (no loop device support)".into());
    }
    for d in [&rt.run_dir, &rt.state_dir] {
        if !d.is_dir() {
            return Err(format!("{} is missing", d.display()));
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl Service for RuntimeService {
    async fn version(&self, _req: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "sycri".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        let runtime = match runtime_ready(&self.rt) {
            Ok(()) => condition("RuntimeReady", true, "", ""),
            Err(why) => condition("RuntimeReady", false, "EngineNotReady", &why),
        };
        // The pod network is ready when the CNI config dir has a network whose
        // plugins are all there.
        let network = match self.rt.cni.ready() {
            Ok(_) => condition("NetworkReady", true, "", ""),
            Err(e) => condition(
                "NetworkReady",
                false,
                "NetworkPluginNotReady",
                &format!("cni plugin not initialized: {e}"),
            ),
        };
        let mut info = std::collections::HashMap::new();
        if req.into_inner().verbose {
            info.insert(
                "config".to_string(),
                serde_json::to_string(&self.rt.cfg).unwrap_or_default(),
            );
        }
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            info,
            runtime_handlers: std::iter::once(String::new())
                .chain(self.rt.cfg.runtime_handlers.iter().cloned())
                .map(|name| cri::RuntimeHandler {
                    name,
                    features: Some(cri::RuntimeHandlerFeatures {
                        recursive_read_only_mounts: false,
                        user_namespaces: false,
                    }),
                })
                .collect(),
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: false,
                user_namespaces_host_network: false,
            }),
        }))
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> R<cri::RuntimeConfigResponse> {
        let driver = match self.rt.cfg.cgroup_driver {
            CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
            CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }))
    }

    /// kubelet sends the node's pod CIDR here; it reaches CNI plugins that
    /// declare the `ipRanges` capability.
    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        let cidr = req
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        self.rt
            .cni
            .set_pod_cidrs(&cidr)
            .map_err(Status::invalid_argument)?;
        tracing::info!(pod_cidr = %cidr, "runtime config updated");
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> R<cri::RunPodSandboxResponse> {
        let id = self.rt.run_pod(req.into_inner()).await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> R<cri::StopPodSandboxResponse> {
        self.rt.stop_pod(&req.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> R<cri::RemovePodSandboxResponse> {
        self.rt.remove_pod(&req.into_inner().pod_sandbox_id).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> R<cri::PodSandboxStatusResponse> {
        let req = req.into_inner();
        let (status, info) = self.rt.pod_status(&req.pod_sandbox_id, req.verbose).await?;
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: Vec::new(),
            timestamp: sycri_native::util::now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> R<cri::ListPodSandboxResponse> {
        let items = self.rt.list_pods(req.into_inner().filter).await;
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> R<cri::CreateContainerResponse> {
        let id = self.rt.create_container(req.into_inner()).await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> R<cri::StartContainerResponse> {
        self.rt
            .start_container(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> R<cri::StopContainerResponse> {
        let req = req.into_inner();
        self.rt
            .stop_container(&req.container_id, req.timeout)
            .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> R<cri::RemoveContainerResponse> {
        self.rt
            .remove_container(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> R<cri::ListContainersResponse> {
        let containers = self.rt.list_containers(req.into_inner().filter).await;
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> R<cri::ContainerStatusResponse> {
        let req = req.into_inner();
        let (status, info) = self
            .rt
            .container_status(&req.container_id, req.verbose)
            .await?;
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(status),
            info,
        }))
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        let req = req.into_inner();
        let out = self
            .rt
            .exec_sync(&req.container_id, req.cmd, req.timeout)
            .await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        let url = self.rt.exec_url(req.into_inner()).await?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        let url = self.rt.attach_url(req.into_inner()).await?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> R<cri::PortForwardResponse> {
        let url = self.rt.port_forward_url(req.into_inner()).await?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        let req = req.into_inner();
        self.rt
            .update_container_resources(&req.container_id, req.linux)
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> R<cri::ContainerStatsResponse> {
        let stats = self
            .rt
            .container_stats(&req.into_inner().container_id)
            .await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        let stats = self.rt.list_container_stats(req.into_inner().filter).await;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> R<cri::PodSandboxStatsResponse> {
        let stats = self
            .rt
            .pod_sandbox_stats(&req.into_inner().pod_sandbox_id)
            .await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        let stats = self
            .rt
            .list_pod_sandbox_stats(req.into_inner().filter)
            .await;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        self.rt.reopen_log(&req.into_inner().container_id).await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }
}
