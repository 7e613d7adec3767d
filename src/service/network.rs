//! A pod's CNI network: attached (ADD) when the pod is made, detached (DEL)
//! when it stops. The attachment is saved before ADD, so that a failed or
//! interrupted ADD is undone by DEL.

use super::pod_spec::capability_args;
use super::Runtime;
use crate::cni::{Attachment, NetworkConfig, PodRef};
use crate::error::{Error, Result};
use crate::store::pod::PodMeta;
use std::net::IpAddr;
use std::path::Path;

impl Runtime {
    /// Attaches a pod with its own network namespace to CNI network `net`
    /// (the pod's, loaded before); its IPs. ADD runs on `netns`: the pod's
    /// pinned namespace, or the spare it is taking while the sandbox helper
    /// pins that spare in the pod's ns dir; the attachment names the pod's
    /// pin from then on (DEL copes with a path that is not a namespace).
    pub(super) async fn setup_network(
        &self,
        pod: &PodMeta,
        net: &NetworkConfig,
        netns: &Path,
    ) -> Result<Vec<IpAddr>> {
        let md = pod.config.metadata.clone().unwrap_or_default();
        let pod_ref = PodRef {
            namespace: md.namespace,
            name: md.name,
            uid: md.uid,
            id: pod.id.clone(),
        };
        let mut att = Attachment::new(
            net,
            &pod_ref,
            netns,
            capability_args(&pod.config, self.cni.ip_ranges())?,
        );
        // Kept before ADD, so that a failed or interrupted ADD is undone by DEL.
        att.save(&pod.dir)?;
        self.cni.add(&self.reaper, &mut att).await?;
        att.moved_to(&pod.ns_path("net"));
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

    /// The pod network, if a CNI config names one, with each of its plugins
    /// found; without one a pod with its own network namespace has loopback
    /// only.
    pub(super) fn pod_network(&self, pod: &str) -> Result<Option<NetworkConfig>> {
        let Some(net) = self.cni.network()? else {
            tracing::warn!(
                pod = %pod,
                dir = %self.cni.conf_dir.display(),
                "no CNI network config: the pod has loopback only"
            );
            return Ok(None);
        };
        for ty in net.plugin_types() {
            self.cni.find_plugin(ty)?;
        }
        Ok(Some(net))
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
