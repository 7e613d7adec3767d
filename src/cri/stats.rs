//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats.

use super::{convert, filters};
use crate::error::Result;
use crate::proto::cri;
use crate::service::Runtime;

pub async fn container(
    rt: &Runtime,
    req: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse> {
    let u = rt.container_usage(&req.container_id).await?;
    Ok(cri::ContainerStatsResponse {
        stats: Some(convert::container_stats(&u)),
    })
}

pub async fn list_containers(
    rt: &Runtime,
    req: cri::ListContainerStatsRequest,
) -> cri::ListContainerStatsResponse {
    let f = req.filter.as_ref();
    let stats = rt
        .list_container_usage(|m| filters::container_stats(f, m))
        .await
        .iter()
        .map(convert::container_stats)
        .collect();
    cri::ListContainerStatsResponse { stats }
}

pub async fn pod(
    rt: &Runtime,
    req: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse> {
    let u = rt.pod_usage(&req.pod_sandbox_id).await?;
    Ok(cri::PodSandboxStatsResponse {
        stats: Some(convert::pod_stats(&u)),
    })
}

pub async fn list_pods(
    rt: &Runtime,
    req: cri::ListPodSandboxStatsRequest,
) -> cri::ListPodSandboxStatsResponse {
    let f = req.filter.as_ref();
    let stats = rt
        .list_pod_usage(|m| filters::pod_stats(f, m))
        .await
        .iter()
        .map(convert::pod_stats)
        .collect();
    cri::ListPodSandboxStatsResponse { stats }
}
