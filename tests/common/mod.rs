//! Test harness: starts the real `sycri` binary on a private socket and private
//! directories (and a cgroup parent of its own), connects a tonic client over
//! the unix socket, and audits what is left behind (mounts, loop devices,
//! processes, cgroups in every hierarchy).

#![allow(dead_code)]

pub mod oci;
pub mod spdy;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};
use sycri::proto::cri;
use sycri::proto::cri::image_service_client::ImageServiceClient;
use sycri::proto::cri::runtime_service_client::RuntimeServiceClient;
use sycri_native::testing::skip;
use tonic::transport::{Channel, Endpoint};

pub type Rt = RuntimeServiceClient<Channel>;
pub type Img = ImageServiceClient<Channel>;

static SERVER_PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static REAPER: Once = Once::new();

/// Helpers and containers outlive a killed server. An init would reap them once
/// they end; this machine's pid 1 does not, so the test process takes that role:
/// it becomes a child subreaper and reaps every zombie child that is not a
/// server it is still tracking.
fn start_reaper() {
    REAPER.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        std::thread::spawn(|| loop {
            let me = std::process::id();
            if let Ok(rd) = std::fs::read_dir("/proc") {
                for e in rd.flatten() {
                    let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                        continue;
                    };
                    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                        continue;
                    };
                    let Some(close) = stat.rfind(')') else {
                        continue;
                    };
                    let f: Vec<&str> = stat[close + 2..].split(' ').collect();
                    if f.first() == Some(&"Z")
                        && f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(me)
                    {
                        // Checked and reaped under the lock that spawn_kept()
                        // holds from spawn to tracking: a child the test
                        // waits for itself is never taken from it.
                        let Ok(tracked) = SERVER_PIDS.lock() else {
                            continue;
                        };
                        if tracked.contains(&pid) {
                            continue;
                        }
                        let mut st = 0;
                        // SAFETY: waitpid on a zombie child of ours, status into a local.
                        unsafe { libc::waitpid(pid as i32, &mut st, libc::WNOHANG) };
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        });
    });
}

/// Where the shared SIF fixtures are, or None (tests then say they were skipped).
pub fn fixtures() -> Option<PathBuf> {
    let dir = std::env::var_os("SYCRI_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/sif"));
    dir.join("busybox_amd64.sif").exists().then_some(dir)
}

/// The busybox SIF fixture, or None after reporting `test` skipped.
pub fn busybox_sif(test: &str) -> Option<PathBuf> {
    match fixtures() {
        Some(d) => Some(d.join("busybox_amd64.sif")),
        None => {
            skip(
                test,
                "SIF fixtures not found (set SYCRI_FIXTURES or provide ../shared)",
            );
            None
        }
    }
}

/// For a test that needs root and the busybox fixture: the fixture, or None
/// after reporting `test` skipped (once, for the first thing missing).
pub fn root_busybox_sif(test: &str) -> Option<PathBuf> {
    if !is_root() {
        skip(test, "needs root");
        return None;
    }
    busybox_sif(test)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub rt: Rt,
    pub img: Img,
}

impl Server {
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("cri.sock")
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// The server's own cgroup group (config `cgroup_parent`).
    pub fn cgroup_parent(&self) -> String {
        cgroup_parent_of(self.dir.path())
    }

    /// Starts sycri on fresh directories.
    pub async fn start() -> Server {
        Server::start_with_config("").await
    }

    /// Starts sycri on fresh directories with this config file (TOML); the
    /// flags the harness passes (socket, directories, CNI) override it.
    pub async fn start_with_config(toml: &str) -> Server {
        Server::start_prepared(toml, |_| {}).await
    }

    /// As [`Server::start_with_config`], with `prepare` run on the fresh
    /// directory first (to make its run directory a symlink, say).
    pub async fn start_prepared(toml: &str, prepare: impl FnOnce(&Path)) -> Server {
        start_reaper();
        let dir = tempfile::Builder::new()
            .prefix("sy")
            .tempdir_in("/tmp")
            .expect("tempdir");
        prepare(dir.path());
        std::fs::write(dir.path().join("sycri.toml"), toml).expect("write test config");
        let (child, rt, img) = spawn(dir.path()).await;
        Server {
            dir,
            child: Some(child),
            rt,
            img,
        }
    }

    /// Kills the server with SIGKILL (containers live on).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            untrack(c.id());
        }
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let st = c.wait().expect("wait server");
        untrack(c.id());
        st
    }

    /// Starts the server again on the same directories.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        let (child, rt, img) = spawn(self.dir.path()).await;
        self.child = Some(child);
        self.rt = rt;
        self.img = img;
    }

    /// Pulls the busybox fixture.
    pub async fn pull(&mut self, path: &Path) -> String {
        self.img
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: path.to_string_lossy().into_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("pull image")
            .into_inner()
            .image_ref
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Best effort: remove what a failed test left, so one failure does not
        // leak into the next test; the audit has already judged.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            untrack(c.id());
        }
        kill_processes_under(self.dir.path());
        for m in mounts_under(self.dir.path()) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        let left = cgroups_under(&self.cgroup_parent());
        if !left.is_empty() {
            eprintln!("harness: removing the cgroups the test left: {left:?}");
        }
        remove_cgroup_parent(&self.cgroup_parent());
    }
}

/// A child the test waits for itself (a server it started by hand): the
/// harness's reaper must leave its exit to the test. A child that may end at
/// once must be started with [`spawn_kept`] instead, or the reaper may take
/// its exit before this is called.
pub fn keep_child(pid: u32) {
    if let Ok(mut v) = SERVER_PIDS.lock() {
        v.push(pid);
    }
}

/// Spawns `cmd` as a child the test waits for itself (then [`untrack`]s):
/// tracked from the moment it exists, so the harness's reaper never takes
/// its exit, however soon it ends.
pub fn spawn_kept(cmd: &mut Command) -> std::io::Result<Child> {
    let mut tracked = SERVER_PIDS.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    tracked.push(child.id());
    Ok(child)
}

/// The test is done with a child it kept.
pub fn untrack(pid: u32) {
    if let Ok(mut v) = SERVER_PIDS.lock() {
        v.retain(|p| *p != pid);
    }
}

async fn spawn(dir: &Path) -> (Child, Rt, Img) {
    // An empty config file of the test's own: never the machine's /etc/sycri.
    let config = dir.join("sycri.toml");
    if !config.exists() {
        std::fs::write(&config, "").expect("write test config");
    }
    launch(dir, &config, true).await
}

/// Starts `sycri --config <config>` with its socket at `<dir>/cri.sock` and its
/// log in `<dir>/server.log`, and connects to it. With `dir_flags` the
/// harness's flags put the store, run directory and CNI config (an empty
/// directory: loopback only, never the host's /etc/cni/net.d) under `dir`;
/// without, the config file must name them (and the socket).
///
/// Unless the config names one, the server's cgroup parent is
/// [`cgroup_parent_of`] `dir`: its containers' cgroups are its own, which
/// the audit can tell from other servers' on the machine.
///
/// $SYCRI_TEST_ENGINE (scripts/test.sh sets it to the static engine that
/// scripts/start-server.sh installs) is the helper binary unless the config
/// names one.
pub async fn launch(dir: &Path, config: &Path, dir_flags: bool) -> (Child, Rt, Img) {
    let sock = dir.join("cri.sock");
    let _ = std::fs::remove_file(&sock);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("server log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sycri"));
    cmd.arg("--config").arg(config);
    if dir_flags {
        cmd.arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .arg("--storage-dir")
            .arg(dir.join("store"))
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--log-level")
            .arg("debug")
            .arg("--cni-conf-dir")
            .arg(dir.join("cni"));
    }
    let mut configured = std::fs::read_to_string(config).unwrap_or_default();
    if !configured.contains("image_unmount_delay") {
        // The audits check that an image no container uses is unmounted as
        // its last container goes; the test of the delay configures one.
        // (First in the file: after a [table] line a key would belong to it.)
        configured = format!("image_unmount_delay = \"0\"\n{configured}");
        std::fs::write(config, &configured).expect("write test config");
    }
    if !configured.contains("cgroup_parent") {
        cmd.arg("--cgroup-parent").arg(cgroup_parent_of(dir));
    }
    if let Some(engine) = std::env::var_os("SYCRI_TEST_ENGINE") {
        if !configured.contains("engine_binary") {
            cmd.arg("--engine-binary").arg(engine);
        }
    }
    let mut child = spawn_kept(
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .process_group(0),
    )
    .expect("start sycri");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            // No Server owns it yet to clean up: what it made goes now.
            let _ = child.kill();
            let _ = child.wait();
            untrack(child.id());
            remove_cgroup_parent(&cgroup_parent_of(dir));
            panic!(
                "sycri did not create its socket ({}); log:\n{}",
                exited.map_or("still running".to_string(), |st| st.to_string()),
                server_log(dir)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let channel = connect(&sock).await;
    (
        child,
        RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(16 << 20),
        ImageServiceClient::new(channel).max_decoding_message_size(16 << 20),
    )
}

pub fn server_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

pub async fn connect(sock: &Path) -> Channel {
    // The socket file appears at bind(); on a loaded machine the first connect
    // may still be refused for a moment, so try for a bounded while.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let path = sock.to_path_buf();
        let attempt = Endpoint::try_from("http://sycri.invalid")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await;
        match attempt {
            Ok(channel) => return channel,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect to sycri at {}: {e}; retrying", sock.display());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connect to sycri at {}: {e}", sock.display()),
        }
    }
}

/// Mount points at or below `dir` in our mount namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    sycri_native::mounts::mounts_under(dir).unwrap_or_default()
}

/// Loop devices whose backing file lies below `dir`.
pub fn loops_under(dir: &Path) -> Vec<(u32, PathBuf)> {
    sycri_native::loopdev::attached_devices()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, p)| p.starts_with(dir))
        .collect()
}

/// Live (non-zombie) processes whose command line mentions `dir`: monitors,
/// sandbox helpers and pod inits of a server running on `dir`.
pub fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let servers: Vec<u32> = SERVER_PIDS.lock().map(|v| v.clone()).unwrap_or_default();
    sycri_native::testing::processes()
        .into_iter()
        .map(|(pid, args)| (pid, args.join(" ")))
        .filter(|(pid, cmd)| cmd.contains(&needle) && !servers.contains(&(*pid as u32)))
        .collect()
}

fn kill_processes_under(dir: &Path) {
    for (pid, _) in processes_under(dir) {
        // SAFETY: kill(2) with integer arguments.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

pub use sycri_native::testing::pid_alive;

/// The cgroup group the harness gives the server on `dir` (config
/// `cgroup_parent`): one per server, so that what it leaves is its own.
pub fn cgroup_parent_of(dir: &Path) -> String {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("sycri-test-{name}")
}

/// Every cgroup hierarchy's mount point: v2 and each v1 hierarchy (every
/// controller's, named ones too), from /proc/self/mountinfo.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = sycri_native::mounts::parse_mountinfo(&info)
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The cgroups below group `parent` in every hierarchy, deepest first.
pub fn cgroups_under(parent: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
                out.push(e.path());
            }
        }
    }
    let mut v = Vec::new();
    for h in cgroup_hierarchies() {
        walk(&h.join(parent), &mut v);
    }
    v
}

/// Ends every process in the group `parent` and removes it, below and
/// itself, in every hierarchy (best effort: the cleanup after a test).
pub fn remove_cgroup_parent(parent: &str) {
    if parent.is_empty() || parent.split('/').any(|s| s.is_empty() || s == "..") {
        return;
    }
    let mut dirs = cgroups_under(parent);
    dirs.extend(cgroup_hierarchies().into_iter().map(|h| h.join(parent)));
    let dirs: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    for d in &dirs {
        loop {
            let pids = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) with integer arguments.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if std::fs::remove_dir(d).is_ok() || !d.exists() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Asserts that nothing of the server on `dir` remains but the server itself:
/// no mount, no loop device over its files, no helper process, none of
/// `pids`, no cgroup below its cgroup parent in any hierarchy.
pub fn assert_no_leaks(dir: &Path, pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let parent = cgroup_parent_of(dir);
    loop {
        let mounts = mounts_under(dir);
        let loops = loops_under(dir);
        let procs = processes_under(dir);
        let live: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        let cgroups = cgroups_under(&parent);
        if mounts.is_empty()
            && loops.is_empty()
            && procs.is_empty()
            && live.is_empty()
            && cgroups.is_empty()
        {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "leaks under {}:\n mounts {mounts:?}\n loop devices {loops:?}\n processes {procs:?}\n container pids still alive {live:?}\n cgroups {cgroups:?}",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: [("app".to_string(), name.to_string())].into(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// A pod whose containers may be privileged.
pub fn privileged_pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    let mut c = pod_config(name, log_dir);
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    c
}

pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: [("c".to_string(), name.to_string())].into(),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

pub async fn run_pod(rt: &mut Rt, config: cri::PodSandboxConfig) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .expect("run pod")
    .into_inner()
    .pod_sandbox_id
}

pub async fn create(
    rt: &mut Rt,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(cfg),
        sandbox_config: Some(pod_cfg.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

pub async fn start(rt: &mut Rt, id: &str) -> Result<(), tonic::Status> {
    rt.start_container(cri::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .map(|_| ())
}

pub async fn status(rt: &mut Rt, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: true,
    })
    .await
    .expect("container status")
    .into_inner()
    .status
    .expect("status present")
}

/// The container's pid from verbose status info.
pub async fn container_pid(rt: &mut Rt, id: &str) -> Option<i32> {
    let info = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .ok()?
        .into_inner()
        .info;
    let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    v.get("pid")?.as_i64().map(|p| p as i32)
}

/// Waits until the container reaches `state`.
pub async fn wait_state(rt: &mut Rt, id: &str, state: cri::ContainerState) -> cri::ContainerStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(rt, id).await;
        if s.state == state as i32 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} never reached {state:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The content lines of a CRI log file, after checking every record's format.
pub fn log_lines(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap_or("");
            assert!(
                ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
                "bad timestamp in {l:?}"
            );
            let stream = it.next().unwrap_or("").to_string();
            let tag = it.next().unwrap_or("");
            assert!(tag == "F" || tag == "P", "bad tag in {l:?}");
            (stream, it.next().unwrap_or("").to_string())
        })
        .collect()
}

/// Waits until the log holds a line equal to `want`.
pub async fn wait_log_line(path: &Path, want: &str) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = log_lines(path);
        if lines.iter().any(|(_, l)| l == want) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "log {} never showed {want:?}: {lines:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Helpers for the restart, leak and bad-input tests.

/// Asserts the server still answers (Version) after whatever came before.
pub async fn assert_serving(rt: &mut Rt, after: &str) {
    let v = rt
        .version(cri::VersionRequest::default())
        .await
        .unwrap_or_else(|e| panic!("server stopped serving after {after}: {e}"))
        .into_inner();
    assert_eq!(v.runtime_name, "sycri", "after {after}");
}

/// Persistent and runtime directories the server keeps for pod `id`.
pub fn pod_dirs(s: &Server, id: &str) -> [PathBuf; 2] {
    [
        s.storage_dir().join("state").join("pods").join(id),
        s.run_dir().join("pods").join(id),
    ]
}

/// Persistent and runtime directories the server keeps for container `id`.
pub fn container_dirs(s: &Server, id: &str) -> [PathBuf; 2] {
    [
        s.storage_dir().join("state").join("containers").join(id),
        s.run_dir().join("c").join(id),
    ]
}

/// Entries of the image store's blob directory (pulled SIFs and temp files).
pub fn image_blobs(s: &Server) -> Vec<String> {
    store_files(s)
        .into_iter()
        .filter(|n| !n.ends_with(".base"))
        .collect()
}

/// The saved first-layer states in the image store (`<hex>.base`).
pub fn base_states(s: &Server) -> Vec<String> {
    store_files(s)
        .into_iter()
        .filter(|n| n.ends_with(".base"))
        .collect()
}

fn store_files(s: &Server) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(s.storage_dir().join("images").join("sha256"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// (id, state) of every container ListContainers reports.
pub async fn list_containers(rt: &mut Rt) -> Vec<(String, i32)> {
    rt.list_containers(cri::ListContainersRequest::default())
        .await
        .expect("list containers")
        .into_inner()
        .containers
        .into_iter()
        .map(|c| (c.id, c.state))
        .collect()
}

/// (id, state) of every pod ListPodSandbox reports.
pub async fn list_pods(rt: &mut Rt) -> Vec<(String, i32)> {
    rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .expect("list pods")
        .into_inner()
        .items
        .into_iter()
        .map(|p| (p.id, p.state))
        .collect()
}

pub async fn list_images(img: &mut Img) -> Vec<cri::Image> {
    img.list_images(cri::ListImagesRequest::default())
        .await
        .expect("list images")
        .into_inner()
        .images
}

pub async fn stop_container(rt: &mut Rt, id: &str, timeout: i64) -> Result<(), tonic::Status> {
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.into(),
        timeout,
    })
    .await
    .map(|_| ())
}

pub async fn remove_container(rt: &mut Rt, id: &str) -> Result<(), tonic::Status> {
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .map(|_| ())
}

pub async fn remove_image(img: &mut Img, image: &str) -> Result<(), tonic::Status> {
    img.remove_image(cri::RemoveImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
    })
    .await
    .map(|_| ())
}

pub async fn stop_pod(rt: &mut Rt, id: &str) -> Result<(), tonic::Status> {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map(|_| ())
}

pub async fn remove_pod(rt: &mut Rt, id: &str) -> Result<(), tonic::Status> {
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .map(|_| ())
}

/// The pod's init pid from verbose PodSandboxStatus info (None when it has none).
pub async fn pod_init_pid(rt: &mut Rt, pod: &str) -> Option<i32> {
    let info = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await
        .expect("pod status")
        .into_inner()
        .info;
    let v: serde_json::Value =
        serde_json::from_str(info.get("info").expect("verbose pod status has info"))
            .expect("pod info is JSON");
    v.get("pid")?.as_i64().map(|p| p as i32)
}

/// PullImage of `reference`, the image_ref or the error.
pub async fn pull_ref(img: &mut Img, reference: &str) -> Result<String, tonic::Status> {
    img.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: reference.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

/// A CRI bind mount.
pub fn bind(host: &Path, container: &str) -> cri::Mount {
    cri::Mount {
        host_path: host.to_string_lossy().into_owned(),
        container_path: container.into(),
        ..Default::default()
    }
}

/// Namespace options with the given pid mode (network and ipc per pod).
pub fn pid_mode(mode: cri::NamespaceMode) -> cri::NamespaceOption {
    cri::NamespaceOption {
        pid: mode as i32,
        network: cri::NamespaceMode::Pod as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod config whose sandbox uses `ns`.
pub fn pod_config_ns(
    name: &str,
    log_dir: &Path,
    ns: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    let mut c = pod_config(name, log_dir);
    c.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// A container config whose process uses `ns`.
pub fn container_config_ns(
    name: &str,
    image: &str,
    command: &[&str],
    ns: cri::NamespaceOption,
) -> cri::ContainerConfig {
    let mut c = container_config(name, image, command);
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// Waits (bounded) until `f` holds; panics with `what` otherwise.
pub async fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pid namespace of `pid` (the `pid:[inode]` link), if it exists.
pub fn pid_ns_of(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Live processes in pid namespace `ns` (as returned by [`pid_ns_of`]).
pub fn pids_in_ns(ns: &Path) -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if pid_ns_of(pid).as_deref() == Some(ns) && pid_alive(pid) {
                v.push(pid);
            }
        }
    }
    v
}

/// What is left under the server's directory besides the pods in `pods` (their
/// pinned namespaces, shm and init) and the mounts in `allowed`: stray mounts,
/// loop devices, helper processes and cgroups of containers that are gone,
/// described for a failure message.
pub fn leftovers_besides(s: &Server, pods: &[&str], allowed: &[PathBuf]) -> Vec<String> {
    let pod_runs: Vec<PathBuf> = pods
        .iter()
        .map(|p| s.run_dir().join("pods").join(p))
        .collect();
    let mut v = Vec::new();
    for m in mounts_under(s.dir.path()) {
        if !pod_runs.iter().any(|r| m.starts_with(r)) && !allowed.contains(&m) {
            v.push(format!("mount {}", m.display()));
        }
    }
    let loops = loops_under(s.dir.path());
    // One loop device per image mount that may stay.
    let images_allowed = allowed
        .iter()
        .filter(|p| p.starts_with(s.run_dir().join("images")))
        .count();
    if loops.len() > images_allowed {
        v.push(format!("loop devices {loops:?}"));
    }
    for (pid, cmd) in processes_under(s.dir.path()) {
        if !pod_runs.iter().any(|r| cmd.contains(&*r.to_string_lossy())) {
            v.push(format!("process {pid} {cmd}"));
        }
    }
    // A container's cgroups are named by its id: those of a container the
    // server no longer keeps are left behind.
    let kept = dir_entries(&s.storage_dir().join("state").join("containers"));
    for cg in cgroups_under(&s.cgroup_parent()) {
        let name = cg
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !kept.contains(&name) {
            v.push(format!("cgroup {}", cg.display()));
        }
    }
    v
}

/// Waits (bounded) until [`leftovers_besides`] is empty, and panics with what is left.
pub async fn assert_only_pods_left(s: &Server, pods: &[&str], allowed: &[PathBuf]) {
    assert_only_pods_left_and(s, pods, || allowed.to_vec()).await
}

/// As [`assert_only_pods_left`], with the mounts allowed looked up again on
/// each look (some appear in the background while it waits).
pub async fn assert_only_pods_left_and(
    s: &Server,
    pods: &[&str],
    allowed: impl Fn() -> Vec<PathBuf>,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers_besides(s, pods, &allowed());
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind under {}:\n {}",
            s.dir.path().display(),
            left.join("\n ")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the server mounts image `image_ref`'s root filesystem.
pub fn image_mount_point(s: &Server, image_ref: &str) -> PathBuf {
    s.run_dir()
        .join("images")
        .join(image_ref.strip_prefix("sha256:").unwrap_or(image_ref))
        .join("rootfs")
}

/// Names of the entries of `dir` (empty when it does not exist).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
