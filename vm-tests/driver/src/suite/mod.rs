//! The tests the driver runs in the guest, and what they share.
//!
//! Adding a test: write `async fn name(ctx: &mut Ctx) -> Result<()>` in one
//! of these modules and add a [`Test`] line to [`TESTS`]; `smoke: true` puts it
//! in the subset the second kernel and the systemd guest run. Every test
//! removes what it made and checks that nothing of it is left
//! ([`crate::audit::assert_clean`]). A test of something sycri does not do
//! yet carries its `known_gap`: it is reported SKIPPED in `all` and `smoke`
//! runs, and runs when named.

mod cgroups;
mod guest;
mod limits;
mod network;
mod restart;
mod walkthrough;

use crate::audit::{assert_clean, remove_pod_cgroup, Gone};
use crate::client::{pod_cgroup, pod_config, Cri};
use crate::fail::Result;
use crate::report::Report;
use crate::server::Server;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use sycri::proto::cri;

pub type TestFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

pub struct Test {
    pub name: &'static str,
    /// In the smoke subset.
    pub smoke: bool,
    /// The test fails when it takes longer (TCG: generous).
    pub limit: Duration,
    pub about: &'static str,
    /// Set while sycri lacks what the test checks: `all` and `smoke` then
    /// report the test SKIPPED with this reason instead of running it (naming
    /// it runs it). Remove the line once sycri has it.
    pub known_gap: Option<&'static str>,
    pub run: for<'a> fn(&'a mut Ctx) -> TestFuture<'a>,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Every test, in the order they run.
pub const TESTS: &[Test] = &[
    Test {
        name: "guest",
        smoke: true,
        limit: secs(60),
        about: "the guest is pure cgroup v2 with the controllers delegated, and has sycri's modules",
        known_gap: None,
        run: |c| Box::pin(guest::guest(c)),
    },
    Test {
        name: "walkthrough",
        smoke: true,
        limit: secs(420),
        about: "pod, pull a SIF, create, start, logs, exec (ExecSync and streamed), stop, remove",
        known_gap: None,
        run: |c| Box::pin(walkthrough::walkthrough(c)),
    },
    Test {
        name: "memory",
        smoke: true,
        limit: secs(420),
        about: "memory.max enforced (OOMKilled, memory.events), read back by ContainerStats, changed by UpdateContainerResources",
        known_gap: None,
        run: |c| Box::pin(limits::memory(c)),
    },
    Test {
        name: "cpu",
        smoke: false,
        limit: secs(300),
        about: "cpu.max throttles (nr_throttled, measured share), cpu.weight, ContainerStats, UpdateContainerResources",
        known_gap: None,
        run: |c| Box::pin(limits::cpu(c)),
    },
    Test {
        name: "pids",
        smoke: false,
        limit: secs(300),
        about: "pids.max (unified) refuses forks, pids.events counts them, UpdateContainerResources raises it",
        known_gap: None,
        run: |c| Box::pin(limits::pids(c)),
    },
    Test {
        name: "cgroup-kill",
        smoke: true,
        limit: secs(300),
        about: "stop ends every process of the container through cgroup.kill, SIGTERM-deaf, setsid and exec'd ones too",
        known_gap: None,
        run: |c| Box::pin(cgroups::cgroup_kill(c)),
    },
    Test {
        name: "cgroupns",
        smoke: false,
        limit: secs(300),
        about: "a container sees its own cgroup as the root of a cgroup namespace, with its limits in /sys/fs/cgroup",
        known_gap: Some("sycri gives containers no cgroup namespace and no /sys/fs/cgroup yet"),
        run: |c| Box::pin(cgroups::cgroupns(c)),
    },
    Test {
        name: "network",
        smoke: false,
        limit: secs(420),
        about: "two pods on the CNI bridge reach each other (TCP and ICMP); their veths and addresses go with them",
        known_gap: None,
        run: |c| Box::pin(network::two_pods(c)),
    },
    Test {
        name: "restart",
        smoke: false,
        limit: secs(420),
        about: "kill -9 of the server: the container runs on, the restarted server finds it and can stop it",
        known_gap: None,
        run: |c| Box::pin(restart::kill9_and_restart(c)),
    },
];

/// What a test has to work with.
pub struct Ctx {
    pub cri: Cri,
    pub server: Server,
    /// Directory of the SIF fixtures.
    pub fixtures: PathBuf,
    pub report: Arc<Report>,
    /// The running test's name, for notes.
    pub test: &'static str,
}

impl Ctx {
    /// A line in the report under the running test (measured figures, what
    /// was seen).
    pub fn note(&self, text: impl AsRef<str>) {
        self.report
            .line(&format!("VMTEST NOTE {}: {}", self.test, text.as_ref()));
    }

    /// The busybox SIF fixture's path.
    pub fn busybox(&self) -> String {
        self.fixtures
            .join("busybox_amd64.sif")
            .to_string_lossy()
            .into_owned()
    }

    /// Pulls the busybox fixture (again: a pull of a stored image is cheap)
    /// and returns its image id.
    pub async fn image(&mut self) -> Result<String> {
        let sif = self.busybox();
        self.cri.pull(&sif).await
    }
}

/// A pod a test made, and the containers it created in it.
pub struct Pod {
    pub id: String,
    pub cfg: cri::PodSandboxConfig,
    /// Its cgroup parent (v2 directory).
    pub cgroup: PathBuf,
    pub containers: Vec<String>,
}

impl Pod {
    /// The CRI log file of its container `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        Path::new(&self.cfg.log_directory).join(format!("{name}.log"))
    }

    /// The cgroup of its container `id`.
    pub fn cgroup_of(&self, id: &str) -> PathBuf {
        self.cgroup.join(id)
    }
}

impl Ctx {
    /// RunPodSandbox of a pod named `name` (see [`pod_config`]).
    pub async fn run_pod(&mut self, name: &str) -> Result<Pod> {
        let cfg = pod_config(name);
        let id = self.cri.run_pod(&cfg).await?;
        Ok(Pod {
            id,
            cgroup: pod_cgroup(&cfg),
            cfg,
            containers: Vec::new(),
        })
    }

    /// CreateContainer in `pod`.
    pub async fn create(&mut self, pod: &mut Pod, cfg: cri::ContainerConfig) -> Result<String> {
        let id = self.cri.create(&pod.id, &pod.cfg, cfg).await?;
        pod.containers.push(id.clone());
        Ok(id)
    }

    /// Stops and removes the pods, checks that nothing of them is left (their
    /// containers' cgroups, `pids`, helpers, mounts), then removes their
    /// cgroup parents as the kubelet does (which fails if anything is in them).
    pub async fn finish(&mut self, pods: &[&Pod], pids: Vec<i32>) -> Result<()> {
        for pod in pods {
            self.cri.stop_pod(&pod.id).await?;
            self.cri.remove_pod(&pod.id).await?;
        }
        let cgroups = pods
            .iter()
            .flat_map(|p| p.containers.iter().map(|c| p.cgroup_of(c)))
            .collect();
        assert_clean(&Gone {
            pids,
            cgroups,
            image_kept: true,
        })
        .await?;
        for pod in pods {
            remove_pod_cgroup(&pod.cgroup)?;
        }
        Ok(())
    }
}
