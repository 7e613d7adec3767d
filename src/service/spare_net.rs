//! Spare network namespaces, made ahead of the pods that take them.
//!
//! A pod's CNI ADD is most of RunPodSandbox (the plugins take 10-20 ms) and
//! needs the pod's network namespace. With a spare at hand the ADD starts at
//! once, on the spare, while the sandbox helper enters the same spare and makes
//! the pod's other namespaces beside it; the helper pins the spare in the
//! pod's own ns dir, and the spare's own pin goes.
//!
//! When every plugin of the network is one whose ADD does not depend on
//! which pod it is for (`spare_netns_attach`: the reference plugins), a spare
//! is also attached ahead: ADD runs on it when it is made, under the id the
//! pod that takes it will have, with the capability values a pod without
//! pod-specific ones would give. A pod whose values give the plugins the same
//! `runtimeConfig` (no host ports, no bandwidth annotations, ...) takes it and
//! runs no plugin at all; another pod leaves it for the next. A spare attached
//! to a network config that changed since is stale and goes (DEL). The ADD and
//! DEL of spares run at a lower priority (nice 10), and a spare is made only
//! once no pod has been started for [`QUIET`]: no pod waits for them, and the
//! calls served beside them must not wait either.
//!
//! A spare is `<run_dir>/spare-net/<hex>/ns/net`, pinned by the sandbox helper
//! like a pod's network namespace (loopback up, nothing else); the attachment
//! of one attached ahead is `<state_dir>/spare-net/<hex>/network.json`, kept
//! before its ADD and until its DEL (or a pod took it: the pod's state dir has
//! it then), so that a crash or a reboot loses no IP lease. Spares are made
//! only after a pod that could have used one (its own network, a CNI config)
//! took or missed one, up to `spare_netns` of them (0: none), so a server that
//! runs no such pod keeps none. They go when the server stops; a start sweeps
//! what a killed server left, after the half-made pods are undone (their DEL
//! may still run on the spare their ADD ran on). A pod whose attachment
//! still names a spare that is gone has its DEL run in its own pin
//! (`teardown_network`).

use super::pod_spec::capability_args;
use super::Runtime;
use crate::cni::{runtime_configs, Attachment, NetworkConfig, Priority};
use crate::proto::cri;
use crate::store::record;
use crate::store::spare_net::{Fit, Spare};
use crate::util::random_hex;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use sycri_native::spec::SandboxSpec;

/// Whether a spare may be attached to `net` ahead: each of its plugins, and
/// each IPAM plugin they delegate to (one that keeps the pod's name, as
/// whereabouts does, must not get a spare's empty one), is one of `ahead`
/// and `found`.
fn attachable_ahead(net: &NetworkConfig, ahead: &[String], found: impl Fn(&str) -> bool) -> bool {
    let ahead: BTreeSet<&str> = ahead.iter().map(String::as_str).collect();
    net.plugin_types()
        .chain(net.ipam_types())
        .all(|ty| ahead.contains(ty) && found(ty))
}

/// How long the server makes no spare after a call on a pod's start path:
/// the next call of the same pod (CreateContainer after RunPodSandbox,
/// StartContainer after CreateContainer) comes within a few milliseconds.
pub(super) const QUIET: Duration = Duration::from_millis(10);

impl Runtime {
    /// Makes spares in the background until `spare_netns` are ready or
    /// being made, once a pod has asked for one. Called when a pod is made
    /// (or failed), not as it is made; and each waits until no call on a
    /// pod's start path (RunPodSandbox, CreateContainer, StartContainer) has
    /// been served for [`QUIET`]: its helper and plugins would compete with
    /// them for the CPU.
    pub(super) fn fill_spare_nets(self: &Arc<Self>) {
        for _ in 0..self.spares.start_making() {
            let rt = self.clone();
            tokio::spawn(async move {
                loop {
                    match rt.spares.until_quiet(QUIET) {
                        None => {
                            // Stopping: none is made any more.
                            rt.spares.done_making();
                            return;
                        }
                        Some(d) if d.is_zero() => break,
                        Some(d) => tokio::time::sleep(d).await,
                    }
                }
                let Some(spare) = rt.make_spare_net().await else {
                    rt.spares.done_making();
                    return;
                };
                if let Some(late) = rt.spares.made(spare) {
                    // Made while the server was stopping.
                    rt.drop_spare_net(late).await;
                    rt.spares.done_making();
                }
            });
        }
    }

    /// Makes one spare, attached ahead when the network allows it; None
    /// (logged) when the helper or the ADD fails.
    async fn make_spare_net(&self) -> Option<Spare> {
        let hex = random_hex(16);
        let mut spare = Spare::at(self.spares.dir(), self.spares.record_dir(), &hex);
        if let Err(e) = std::fs::create_dir_all(spare.dir()) {
            tracing::warn!(dir = %spare.dir().display(), error = %e, "making a spare network namespace");
            return None;
        }
        let spec = SandboxSpec {
            id: format!("spare-net-{hex}"),
            ns_dir: spare.ns_dir(),
            share_net: true,
            ..SandboxSpec::default()
        };
        if let Err(e) = self.engine.run_sandbox(&spec, &spare.spec_file()).await {
            tracing::warn!(error = %e, "making a spare network namespace");
            self.drop_spare_net(spare).await;
            return None;
        }
        let Some((net, caps)) = self.network_ahead() else {
            return Some(spare);
        };
        // The id of the pod that will take it: CNI_CONTAINERID is the pod's.
        let mut att = Attachment::ahead(&net, &random_hex(32), &spare.net(), caps);
        // Kept before ADD, so that a failed or interrupted ADD is undone by DEL.
        let kept = std::fs::create_dir_all(spare.record_dir())
            .map_err(|e| e.to_string())
            .and_then(|()| att.save(spare.record_dir()).map_err(|e| e.to_string()));
        if let Err(e) = kept {
            tracing::warn!(error = %e, "keeping the attachment of a spare network namespace");
            self.drop_spare_net(spare).await;
            return None;
        }
        let added = self
            .cni
            .add(&self.reaper, &mut att, Priority::Background)
            .await;
        match added.and_then(|()| att.save(spare.record_dir())) {
            Ok(()) => {
                tracing::debug!(id = %att.container_id, ips = ?att.ips(), "spare network namespace attached ahead");
                spare.attachment = Some(att);
                Some(spare)
            }
            Err(e) => {
                tracing::warn!(error = %e, "attaching a spare network namespace ahead");
                self.drop_spare_net(spare).await;
                None
            }
        }
    }

    /// The network a spare is attached to ahead, with the capability values
    /// of a pod that gives none of its own: None when there is no network
    /// config, or one of its plugins (or the IPAM plugins they delegate to)
    /// is missing or may depend on the pod.
    fn network_ahead(&self) -> Option<(NetworkConfig, Map<String, Value>)> {
        let net = self.cni.network().ok()??;
        let fits = attachable_ahead(&net, &self.cfg.spare_netns_attach, |ty| {
            self.cni.find_plugin(ty).is_ok()
        });
        let caps = self.spare_capability_args()?;
        fits.then_some((net, caps))
    }

    /// The capability values of a pod that gives none of its own (only the
    /// node's: its pod CIDRs).
    fn spare_capability_args(&self) -> Option<Map<String, Value>> {
        capability_args(&cri::PodSandboxConfig::default(), self.cni.ip_ranges()).ok()
    }

    /// A ready spare for a pod on network `net` whose capability values are
    /// `caps`, if there is one it can take; stale spares go (in the
    /// background).
    pub(super) fn take_spare_net(
        self: &Arc<Self>,
        net: &NetworkConfig,
        caps: &Map<String, Value>,
    ) -> Option<Spare> {
        let (network, pod) = (net.to_value(), runtime_configs(net, caps));
        let node = self
            .spare_capability_args()
            .map(|c| runtime_configs(net, &c));
        let (taken, stale) = self.spares.take(|spare| {
            let Some(a) = &spare.attachment else {
                // Not attached: any pod of the network can use it.
                return Fit::Take;
            };
            let given = a.runtime_configs();
            if a.network != network || node.as_ref() != Some(&given) {
                // Another network config, or the node's values changed.
                return Fit::Stale;
            }
            if given == pod {
                Fit::Take
            } else {
                Fit::Keep
            }
        });
        for spare in stale {
            let rt = self.clone();
            tokio::spawn(async move { rt.drop_spare_net(spare).await });
        }
        taken
    }

    /// Detaches a spare attached ahead (DEL; its attachment is in its
    /// record dir until a pod takes it), unpins it (a pod that took it keeps
    /// its own pin) and removes its directories. A spare whose DEL fails is
    /// left as it is, for the next start's sweep to try again.
    pub(super) async fn drop_spare_net(&self, spare: Spare) {
        let dir = spare.dir().display();
        match Attachment::load(spare.record_dir()) {
            Ok(Some(att)) => {
                if let Err(e) = self.cni.del(&self.reaper, &att, Priority::Background).await {
                    tracing::warn!(dir = %dir, error = %e, "detaching a spare network namespace; left for the next start");
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(dir = %dir, error = %e, "dropping the unreadable attachment of a spare network namespace");
            }
        }
        if let Err(e) = record::remove_dir(spare.record_dir()) {
            tracing::warn!(error = %e, "removing the record of a spare network namespace");
        }
        if let Err(e) = self
            .engine
            .release_sandbox(&spare.ns_dir(), None, None)
            .await
        {
            tracing::warn!(dir = %dir, error = %e, "releasing a spare network namespace");
            return;
        }
        if let Err(e) = record::remove_dir(spare.dir()) {
            tracing::warn!(error = %e, "removing a spare network namespace");
        }
    }

    /// At start: the spares a killed server left (and a helper of it that is
    /// still making one) go; so do the attachments of spares whose run dir
    /// went with a reboot (DEL without a namespace).
    pub(super) async fn sweep_spare_nets(&self) {
        let names: BTreeSet<std::ffi::OsString> = [self.spares.dir(), self.spares.record_dir()]
            .into_iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|rd| rd.flatten().map(|e| e.file_name()))
            .collect();
        let mut swept = 0;
        for name in names {
            let spare = Spare::at(
                self.spares.dir(),
                self.spares.record_dir(),
                &name.to_string_lossy(),
            );
            self.engine.kill_helpers(&spare.spec_file()).await;
            self.drop_spare_net(spare).await;
            swept += 1;
        }
        if swept > 0 {
            tracing::info!(
                swept,
                "released the spare network namespaces of an earlier server"
            );
        }
    }

    /// When the server stops: no spare is kept, those being made included
    /// (waited for, a little).
    pub async fn release_spare_nets(&self) {
        for spare in self.spares.close() {
            self.drop_spare_net(spare).await;
        }
        self.spares.wait_idle(Duration::from_secs(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::attachable_ahead;
    use crate::cni::NetworkConfig;
    use std::path::Path;

    fn net(ipam: &str) -> NetworkConfig {
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","plugins":[
                {{"type":"bridge","ipam":{{"type":"{ipam}"}}}},
                {{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#
        );
        NetworkConfig::parse(conf.as_bytes(), Path::new("n.conflist")).expect("parse")
    }

    #[test]
    fn every_plugin_and_ipam_plugin_must_be_listed_and_found() {
        let list: Vec<String> = ["bridge", "host-local", "portmap"]
            .map(String::from)
            .to_vec();
        assert!(attachable_ahead(&net("host-local"), &list, |_| true));
        assert!(
            !attachable_ahead(&net("whereabouts"), &list, |_| true),
            "an IPAM plugin not listed"
        );
        assert!(
            !attachable_ahead(&net("host-local"), &list[..2], |_| true),
            "portmap not listed"
        );
        assert!(
            !attachable_ahead(&net("host-local"), &list, |ty| ty != "portmap"),
            "one missing"
        );
        assert!(
            !attachable_ahead(&net("host-local"), &[], |_| true),
            "none listed"
        );
    }
}
