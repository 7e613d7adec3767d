//! CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ListContainers, ContainerStatus, UpdateContainerResources and
//! ReopenContainerLog.

use super::{convert, filters};
use crate::error::Result;
use crate::proto::cri;
use crate::service::Runtime;
use std::sync::Arc;

pub async fn create(
    rt: &Arc<Runtime>,
    req: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse> {
    let container_id = rt.create_container(req).await?;
    Ok(cri::CreateContainerResponse { container_id })
}

pub async fn start(
    rt: &Runtime,
    req: cri::StartContainerRequest,
) -> Result<cri::StartContainerResponse> {
    rt.start_container(&req.container_id).await?;
    Ok(cri::StartContainerResponse {})
}

pub async fn stop(
    rt: &Runtime,
    req: cri::StopContainerRequest,
) -> Result<cri::StopContainerResponse> {
    rt.stop_container(&req.container_id, req.timeout).await?;
    Ok(cri::StopContainerResponse {})
}

pub async fn remove(
    rt: &Arc<Runtime>,
    req: cri::RemoveContainerRequest,
) -> Result<cri::RemoveContainerResponse> {
    rt.remove_container(&req.container_id).await?;
    Ok(cri::RemoveContainerResponse {})
}

pub fn list(rt: &Runtime, req: cri::ListContainersRequest) -> cri::ListContainersResponse {
    let f = req.filter.as_ref();
    let mut containers: Vec<cri::Container> = rt
        .list_containers()
        .iter()
        .filter(|(c, s)| filters::container(f, &c.meta, convert::container_state(s)))
        .map(|(c, s)| convert::container(&c.meta, s))
        .collect();
    containers.sort_by_key(|c| c.created_at);
    cri::ListContainersResponse { containers }
}

pub fn status(
    rt: &Runtime,
    req: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse> {
    let c = rt.container_status(&req.container_id, req.verbose)?;
    Ok(cri::ContainerStatusResponse {
        status: Some(convert::container_status(&c.container.meta, &c.status)),
        info: c.info,
    })
}

pub async fn update_resources(
    rt: &Runtime,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse> {
    rt.update_container_resources(&req.container_id, req.linux)
        .await?;
    Ok(cri::UpdateContainerResourcesResponse {})
}

pub async fn reopen_log(
    rt: &Runtime,
    req: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse> {
    rt.reopen_log(&req.container_id).await?;
    Ok(cri::ReopenContainerLogResponse {})
}
