//! ExecSync, and the streaming RPCs Exec, Attach and PortForward, which
//! answer a URL on the streaming server.

use crate::error::Result;
use crate::proto::cri;
use crate::service::Runtime;

pub async fn exec_sync(rt: &Runtime, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse> {
    let out = rt
        .exec_sync(&req.container_id, req.cmd, req.timeout)
        .await?;
    Ok(cri::ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}

pub fn exec(rt: &Runtime, req: cri::ExecRequest) -> Result<cri::ExecResponse> {
    Ok(cri::ExecResponse {
        url: rt.exec_url(req)?,
    })
}

pub fn attach(rt: &Runtime, req: cri::AttachRequest) -> Result<cri::AttachResponse> {
    Ok(cri::AttachResponse {
        url: rt.attach_url(req)?,
    })
}

pub fn port_forward(
    rt: &Runtime,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse> {
    Ok(cri::PortForwardResponse {
        url: rt.port_forward_url(req)?,
    })
}
