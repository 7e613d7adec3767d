//! RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus and
//! ListPodSandbox.

use super::{convert, filters};
use crate::error::Result;
use crate::proto::cri;
use crate::service::Runtime;
use std::sync::Arc;

pub async fn run(
    rt: &Arc<Runtime>,
    req: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse> {
    let pod_sandbox_id = rt.run_pod(req).await?;
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id })
}

pub async fn stop(
    rt: &Arc<Runtime>,
    req: cri::StopPodSandboxRequest,
) -> Result<cri::StopPodSandboxResponse> {
    rt.stop_pod(&req.pod_sandbox_id).await?;
    Ok(cri::StopPodSandboxResponse {})
}

pub async fn remove(
    rt: &Arc<Runtime>,
    req: cri::RemovePodSandboxRequest,
) -> Result<cri::RemovePodSandboxResponse> {
    rt.remove_pod(&req.pod_sandbox_id).await?;
    Ok(cri::RemovePodSandboxResponse {})
}

pub async fn status(
    rt: &Arc<Runtime>,
    req: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse> {
    let p = rt.pod_status(&req.pod_sandbox_id, req.verbose)?;
    Ok(cri::PodSandboxStatusResponse {
        status: Some(convert::pod_status(&p.pod.meta, &p.status)),
        info: p.info,
        containers_statuses: Vec::new(),
        timestamp: sycri_native::util::now_ns(),
    })
}

pub fn list(rt: &Runtime, req: cri::ListPodSandboxRequest) -> cri::ListPodSandboxResponse {
    let f = req.filter.as_ref();
    let mut items: Vec<cri::PodSandbox> = rt
        .list_pods()
        .iter()
        .filter(|(p, s)| filters::pod(f, &p.meta, convert::pod_state(s)))
        .map(|(p, s)| convert::pod(&p.meta, s))
        .collect();
    items.sort_by_key(|p| p.created_at);
    cri::ListPodSandboxResponse { items }
}
