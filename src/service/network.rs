//! A pod's CNI network: attached (ADD) when the pod is made, detached (DEL)
//! when it stops. The attachment is saved before ADD, so that a failed or
//! interrupted ADD is undone by DEL.

use super::pod_spec::capability_args;
use super::Runtime;
use crate::cni::{Attachment, PodRef};
use crate::error::{Error, Result};
use crate::store::pod::PodMeta;
use std::net::IpAddr;
use std::path::Path;

impl Runtime {
    /// Attaches a pod with its own network namespace to the CNI network; its
    /// IPs. Without any network config the pod keeps loopback only.
    pub(super) async fn setup_network(&self, pod: &PodMeta) -> Result<Vec<IpAddr>> {
        let Some(net) = self.cni.network()? else {
            tracing::warn!(
                pod = %pod.id,
                dir = %self.cni.conf_dir.display(),
                "no CNI network config: the pod has loopback only"
            );
            return Ok(Vec::new());
        };
        for ty in net.plugin_types() {
            self.cni.find_plugin(ty)?;
        }
        let md = pod.config.metadata.clone().unwrap_or_default();
        let pod_ref = PodRef {
            namespace: md.namespace,
            name: md.name,
            uid: md.uid,
            id: pod.id.clone(),
        };
        let mut att = Attachment::new(
            &net,
            &pod_ref,
            &pod.ns_path("net"),
            capability_args(&pod.config, self.cni.ip_ranges())?,
        );
        // Kept before ADD, so that a failed or interrupted ADD is undone by DEL.
        att.save(&pod.dir)?;
        self.cni.add(&self.reaper, &mut att).await?;
        att.save(&pod.dir)?;
        let ips = att.ips();
        tracing::info!(
            pod = %pod.id,
            network = %net.name,
            ips = ?ips,
            "pod network attached"
        );
        Ok(ips)
    }

    /// Detaches the pod whose state is in `state_dir` from its CNI network
    /// (DEL), if it is attached. Idempotent; works with the namespace gone.
    pub(super) async fn teardown_network(&self, state_dir: &Path) -> Result<()> {
        let att = match Attachment::load(state_dir) {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(dir = %state_dir.display(), error = %e, "dropping unreadable network attachment");
                return Attachment::remove(state_dir).map_err(Error::from);
            }
        };
        self.cni.del(&self.reaper, &att).await?;
        Attachment::remove(state_dir)?;
        tracing::info!(pod = %att.container_id, "pod network detached");
        Ok(())
    }
}
