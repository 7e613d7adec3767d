//! Version, Status, RuntimeConfig and UpdateRuntimeConfig.

use crate::config::CgroupDriver;
use crate::error::{Error, Result};
use crate::proto::cri;
use crate::service::Runtime;

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> cri::RuntimeCondition {
    cri::RuntimeCondition {
        r#type: kind.to_string(),
        status,
        reason: reason.to_string(),
        message: message.to_string(),
    }
}

pub fn version(_req: cri::VersionRequest) -> cri::VersionResponse {
    cri::VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "sycri".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: "v1".into(),
    }
}

pub fn status(rt: &Runtime, req: cri::StatusRequest) -> cri::StatusResponse {
    let runtime = match rt.not_ready() {
        None => condition("RuntimeReady", true, "", ""),
        Some(why) => condition("RuntimeReady", false, "EngineNotReady", &why),
    };
    // The pod network is ready when the CNI config dir has a network whose
    // plugins are all there.
    let network = match rt.cni().ready() {
        Ok(_) => condition("NetworkReady", true, "", ""),
        Err(e) => condition(
            "NetworkReady",
            false,
            "NetworkPluginNotReady",
            &format!("cni plugin not initialized: {e}"),
        ),
    };
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        info.insert(
            "config".to_string(),
            serde_json::to_string(rt.config()).unwrap_or_default(),
        );
    }
    cri::StatusResponse {
        status: Some(cri::RuntimeStatus {
            conditions: vec![runtime, network],
        }),
        info,
        runtime_handlers: std::iter::once(String::new())
            .chain(rt.config().runtime_handlers.iter().cloned())
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
    }
}

pub fn runtime_config(rt: &Runtime, _req: cri::RuntimeConfigRequest) -> cri::RuntimeConfigResponse {
    let driver = match rt.config().cgroup_driver {
        CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
        CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
    };
    cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }
}

/// kubelet sends the node's pod CIDR here; it reaches CNI plugins that
/// declare the `ipRanges` capability.
pub fn update_runtime_config(
    rt: &Runtime,
    req: cri::UpdateRuntimeConfigRequest,
) -> Result<cri::UpdateRuntimeConfigResponse> {
    let cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    rt.cni()
        .set_pod_cidrs(&cidr)
        .map_err(Error::InvalidArgument)?;
    tracing::info!(pod_cidr = %cidr, "runtime config updated");
    Ok(cri::UpdateRuntimeConfigResponse {})
}
