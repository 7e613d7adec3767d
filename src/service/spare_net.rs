//! Spare network namespaces, made ahead of the pods that take them.
//!
//! A pod's CNI ADD is most of RunPodSandbox (the plugins take 10-20 ms) and
//! needs the pod's network namespace. With a spare at hand the ADD starts at
//! once, on the spare, while the sandbox helper enters the same spare and makes
//! the pod's other namespaces beside it; the helper pins the spare in the
//! pod's own ns dir, and the spare's own pin goes.
//!
//! A spare is `<run_dir>/spare-net/<hex>/ns/net`, pinned by the sandbox helper
//! like a pod's network namespace (loopback up, nothing else). Spares are made
//! only after a pod that could have used one (its own network, a CNI config)
//! took or missed one, up to `spare_netns` of them (0: none), so a server that
//! runs no such pod keeps none. They go when the server stops; a start sweeps
//! what a killed server left, after the half-made pods are undone (their DEL
//! may still run on the spare their ADD ran on). A pod whose attachment
//! still names a spare that is gone has its DEL run in its own pin
//! (`teardown_network`).

use super::Runtime;
use crate::store::spare_net::Spare;
use crate::util::random_hex;
use std::sync::Arc;
use std::time::Duration;
use sycri_native::spec::SandboxSpec;

impl Runtime {
    /// Makes spares in the background until `spare_netns` are ready or
    /// being made, once a pod has asked for one. Called when a pod is made
    /// (or failed), not as it is made: the helpers would compete with its
    /// CNI plugins for the CPU.
    pub(super) fn fill_spare_nets(self: &Arc<Self>) {
        for _ in 0..self.spares.start_making() {
            let rt = self.clone();
            tokio::spawn(async move {
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

    /// Makes one spare; None (logged) when the helper fails.
    async fn make_spare_net(&self) -> Option<Spare> {
        let hex = random_hex(16);
        let spare = Spare::at(self.spares.dir().join(&hex));
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
        match self.engine.run_sandbox(&spec, &spare.spec_file()).await {
            Ok(_) => Some(spare),
            Err(e) => {
                tracing::warn!(error = %e, "making a spare network namespace");
                self.drop_spare_net(spare).await;
                None
            }
        }
    }

    /// Unpins a spare (a pod that took it keeps its own pin) and removes
    /// its directory.
    pub(super) async fn drop_spare_net(&self, spare: Spare) {
        let dir = spare.dir().display();
        if let Err(e) = self
            .engine
            .release_sandbox(&spare.ns_dir(), None, None)
            .await
        {
            tracing::warn!(dir = %dir, error = %e, "releasing a spare network namespace");
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(spare.dir()) {
            tracing::warn!(dir = %dir, error = %e, "removing a spare network namespace");
        }
    }

    /// At start: the spares a killed server left (and a helper of it that is
    /// still making one) go.
    pub(super) async fn sweep_spare_nets(&self) {
        let Ok(entries) = std::fs::read_dir(self.spares.dir()) else {
            return;
        };
        let mut swept = 0;
        for e in entries.flatten() {
            let spare = Spare::at(e.path());
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
