//! A pod's CNI network: attached (ADD) when the pod is made, detached (DEL)
//! when it stops. The attachment is saved before ADD, so that a failed or
//! interrupted ADD is undone by DEL.

use super::pod_spec::capability_args;
use super::Runtime;
use crate::cni::{Attachment, NetworkConfig, PodRef, Priority};
use crate::error::{Error, Result};
use crate::store::pod::PodMeta;
use std::path::Path;

impl Runtime {
    /// Attaches a pod with its own network namespace to CNI network `net`
    /// (the pod's, loaded before); the attachment, saved. ADD runs on
    /// `netns`: the pod's pinned namespace, or the spare it is taking while
    /// the sandbox helper pins that spare in the pod's ns dir (the caller
    /// moves the attachment to the pin once it is there).
    pub(super) async fn setup_network(
        &self,
        pod: &PodMeta,
        net: &NetworkConfig,
        netns: &Path,
    ) -> Result<Attachment> {
        let mut att = Attachment::new(
            net,
            &pod_ref(pod),
            netns,
            capability_args(&pod.config, self.cni.ip_ranges())?,
        );
        // Kept before ADD, so that a failed or interrupted ADD is undone by DEL.
        att.save(&pod.dir)?;
        self.cni
            .add(&self.reaper, &mut att, Priority::Normal)
            .await?;
        att.save(&pod.dir)?;
        tracing::info!(
            pod = %pod.id,
            network = %net.name,
            ips = ?att.ips(),
            "pod network attached"
        );
        Ok(att)
    }

    /// The pod takes the attachment `att` of the spare it takes (made ahead
    /// under the pod's id, kept in `spare_record`): it names the pod and is
    /// the pod's from now on, kept in its state dir (its failure path or its
    /// Stop runs the DEL), and the spare's record of it goes. The caller
    /// moves it to the pod's pin once the helper pinned the spare there.
    pub(super) fn adopt_network(
        &self,
        pod: &PodMeta,
        mut att: Attachment,
        spare_record: &Path,
    ) -> Result<Attachment> {
        att.for_pod(&pod_ref(pod));
        att.save(&pod.dir)?;
        if let Err(e) = std::fs::remove_dir_all(spare_record) {
            // A DEL of the spare's record would undo the pod's network.
            tracing::warn!(dir = %spare_record.display(), error = %e, "removing the record of a taken spare");
            Attachment::remove(spare_record)?;
        }
        tracing::info!(
            pod = %pod.id,
            network = %att.network["name"].as_str().unwrap_or(""),
            ips = ?att.ips(),
            "pod network attached (ahead)"
        );
        Ok(att)
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
    /// `pin` is the pod's own network namespace file: DEL runs there when
    /// the attachment names a spare that is gone (an ADD on a spare that
    /// failed, or a crash, before the attachment was moved to the pin).
    pub(super) async fn teardown_network(&self, state_dir: &Path, pin: &Path) -> Result<()> {
        let mut att = match Attachment::load(state_dir) {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(dir = %state_dir.display(), error = %e, "dropping unreadable network attachment");
                return Attachment::remove(state_dir).map_err(Error::from);
            }
        };
        if let Some(ns) = del_netns(&att.netns, pin) {
            att.netns = ns;
        }
        self.cni.del(&self.reaper, &att, Priority::Normal).await?;
        Attachment::remove(state_dir)?;
        tracing::info!(pod = %att.container_id, "pod network detached");
        Ok(())
    }
}

/// The pod facts CNI gets for `pod`.
fn pod_ref(pod: &PodMeta) -> PodRef {
    let md = pod.config.metadata.clone().unwrap_or_default();
    PodRef {
        namespace: md.namespace,
        name: md.name,
        uid: md.uid,
        id: pod.id.clone(),
    }
}

/// Where DEL runs when the attachment's namespace file `attached` is no
/// namespace any more but the pod's own pin is: there (None: as attached).
fn del_netns(attached: &Path, pin: &Path) -> Option<std::path::PathBuf> {
    (!crate::cni::is_netns(attached) && crate::cni::is_netns(pin)).then(|| pin.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::del_netns;
    use std::path::Path;

    #[test]
    fn del_runs_in_the_pods_pin_when_the_spare_it_was_added_on_is_gone() {
        // Any network namespace file will do for the pin: this process's.
        let pin = Path::new("/proc/self/ns/net");
        let gone = Path::new("/nonexistent/spare-net/x/ns/net");
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("net");
        std::fs::write(&plain, b"").expect("write");
        assert_eq!(del_netns(gone, pin).as_deref(), Some(pin));
        assert_eq!(del_netns(&plain, pin).as_deref(), Some(pin));
        assert_eq!(del_netns(pin, gone), None, "attached on a live one: there");
        assert_eq!(del_netns(gone, &plain), None, "no pin either: as attached");
    }
}
