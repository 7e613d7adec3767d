//! The CRI's gRPC faces: the two tonic services, each RPC a line or two
//! that hand the request to its family's handler (`runtime.rs`: version,
//! status and configuration; `sandbox.rs`; `container.rs`; `stats.rs`;
//! `stream.rs`; `image.rs`); calls that change the host run to their end
//! even when the client goes away ([`to_completion`]). Handlers check and
//! shape; the work is the service's. RPCs not built yet answer
//! UNIMPLEMENTED (tonic's default stubs).

mod container;
mod convert;
mod filters;
mod image;
mod runtime;
mod sandbox;
mod stats;
mod stream;

use crate::error::Result;
use crate::proto::cri;
use crate::proto::cri::image_service_server::ImageService as ImageApi;
use crate::proto::cri::runtime_service_server::RuntimeService as RuntimeApi;
use crate::service::Runtime;
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

pub struct ImageService {
    rt: Arc<Runtime>,
}

impl ImageService {
    pub fn new(rt: Arc<Runtime>) -> Self {
        ImageService { rt }
    }
}

type R<T> = std::result::Result<Response<T>, Status>;

fn answer<T>(r: Result<T>) -> R<T> {
    r.map(Response::new).map_err(Status::from)
}

/// Runs a call that changes the host to its end even when its client goes
/// away (a deadline, a reset, a closed connection): tonic drops the call's
/// future then, and an operation dropped half way would leave what it had
/// made (namespaces, mounts, a monitor, cgroups) until the next start's
/// recovery. It finishes, or fails and is undone, as if the client had
/// waited; the answer goes nowhere. Not for PullImage, whose cancellation
/// stops its download on purpose, nor for reads.
async fn to_completion<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    match tokio::spawn(f).await {
        Ok(r) => r,
        Err(e) => Err(crate::error::Error::Internal(format!(
            "the operation did not finish: {e}"
        ))),
    }
}

#[tonic::async_trait]
impl RuntimeApi for RuntimeService {
    async fn version(&self, r: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        answer(Ok(runtime::version(r.into_inner())))
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        answer(Ok(runtime::status(&self.rt, r.into_inner())))
    }

    async fn runtime_config(
        &self,
        r: Request<cri::RuntimeConfigRequest>,
    ) -> R<cri::RuntimeConfigResponse> {
        answer(Ok(runtime::runtime_config(&self.rt, r.into_inner())))
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        answer(runtime::update_runtime_config(&self.rt, r.into_inner()))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> R<cri::RunPodSandboxResponse> {
        let (rt, req) = (self.rt.clone(), r.into_inner());
        answer(to_completion(async move { sandbox::run(&rt, req).await }).await)
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> R<cri::StopPodSandboxResponse> {
        let (rt, req) = (self.rt.clone(), r.into_inner());
        answer(to_completion(async move { sandbox::stop(&rt, req).await }).await)
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> R<cri::RemovePodSandboxResponse> {
        let (rt, req) = (self.rt.clone(), r.into_inner());
        answer(to_completion(async move { sandbox::remove(&rt, req).await }).await)
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> R<cri::PodSandboxStatusResponse> {
        answer(sandbox::status(&self.rt, r.into_inner()).await)
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> R<cri::ListPodSandboxResponse> {
        answer(Ok(sandbox::list(&self.rt, r.into_inner())))
    }

    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> R<cri::CreateContainerResponse> {
        let (rt, req) = (self.rt.clone(), r.into_inner());
        answer(to_completion(async move { container::create(&rt, req).await }).await)
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> R<cri::StartContainerResponse> {
        let (rt, req) = (self.rt.clone(), r.into_inner());
        answer(to_completion(async move { container::start(&rt, req).await }).await)
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> R<cri::StopContainerResponse> {
        let (rt, req) = (self.rt.clone(), r.into_inner());
        answer(to_completion(async move { container::stop(&rt, req).await }).await)
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> R<cri::RemoveContainerResponse> {
        let (rt, req) = (self.rt.clone(), r.into_inner());
        answer(to_completion(async move { container::remove(&rt, req).await }).await)
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> R<cri::ListContainersResponse> {
        answer(Ok(container::list(&self.rt, r.into_inner())))
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> R<cri::ContainerStatusResponse> {
        answer(container::status(&self.rt, r.into_inner()))
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        let (rt, req) = (self.rt.clone(), r.into_inner());
        answer(to_completion(async move { container::update_resources(&rt, req).await }).await)
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        let (rt, req) = (self.rt.clone(), r.into_inner());
        answer(to_completion(async move { container::reopen_log(&rt, req).await }).await)
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        answer(stream::exec_sync(&self.rt, r.into_inner()).await)
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        answer(stream::exec(&self.rt, r.into_inner()))
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        answer(stream::attach(&self.rt, r.into_inner()))
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> R<cri::PortForwardResponse> {
        answer(stream::port_forward(&self.rt, r.into_inner()))
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> R<cri::ContainerStatsResponse> {
        answer(stats::container(&self.rt, r.into_inner()).await)
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        answer(Ok(stats::list_containers(&self.rt, r.into_inner()).await))
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> R<cri::PodSandboxStatsResponse> {
        answer(stats::pod(&self.rt, r.into_inner()).await)
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        answer(Ok(stats::list_pods(&self.rt, r.into_inner()).await))
    }
}

#[tonic::async_trait]
impl ImageApi for ImageService {
    async fn list_images(&self, r: Request<cri::ListImagesRequest>) -> R<cri::ListImagesResponse> {
        answer(Ok(image::list(&self.rt, r.into_inner())))
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> R<cri::ImageStatusResponse> {
        answer(image::status(&self.rt, r.into_inner()))
    }

    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> R<cri::PullImageResponse> {
        answer(image::pull(&self.rt, r.into_inner()).await)
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> R<cri::RemoveImageResponse> {
        let (rt, req) = (self.rt.clone(), r.into_inner());
        answer(to_completion(async move { image::remove(&rt, req).await }).await)
    }

    async fn image_fs_info(
        &self,
        r: Request<cri::ImageFsInfoRequest>,
    ) -> R<cri::ImageFsInfoResponse> {
        answer(image::fs_info(&self.rt, r.into_inner()).await)
    }
}
