//! Pod networking through CNI, with the real plugins (bridge, host-local,
//! portmap) on bridges that each test makes on this machine: `sytest<N>` with
//! 10.90.<N>.0/24, a test-only config dir and IPAM data dir, no masquerade, and
//! the bridge deleted afterwards. No traffic leaves the machine: pods talk to
//! each other over the bridge, and the host reaches a hostPort on 127.0.0.1.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sycri::proto::cri;

const PLUGIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];

/// The CNI plugins the tests need, or None after reporting `test` skipped.
fn plugins(test: &str) -> Option<()> {
    let all = ["bridge", "host-local", "portmap"];
    let found = all
        .iter()
        .all(|p| PLUGIN_DIRS.iter().any(|d| Path::new(d).join(p).exists()));
    if !found {
        sycri_native::testing::skip(
            test,
            &format!(
                "CNI plugins {all:?} not found in {PLUGIN_DIRS:?} (scripts/setup-cni.sh installs them)"
            ),
        );
        return None;
    }
    Some(())
}

/// A test network: bridge `sytest<n>`, subnet 10.90.<n>.0/24, its config dir
/// and IPAM data dir in a temp dir. Dropping it deletes the bridge.
struct TestNet {
    n: u32,
    dir: tempfile::TempDir,
}

impl TestNet {
    fn new(n: u32) -> TestNet {
        let dir = tempfile::Builder::new()
            .prefix("sycri-net")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let net = TestNet { n, dir };
        // A bridge left by an earlier, interrupted run.
        let _ = ip(&["link", "del", &net.bridge()]);
        std::fs::create_dir_all(net.conf_dir()).expect("conf dir");
        net.write_config(&net.conf_dir());
        net
    }

    fn bridge(&self) -> String {
        format!("sytest{}", self.n)
    }

    fn name(&self) -> String {
        format!("sytest{}", self.n)
    }

    fn subnet_prefix(&self) -> String {
        format!("10.90.{}.", self.n)
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn write_config(&self, dir: &Path) {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name(),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge(),
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": self.ipam_dir(),
                        "ranges": [[{"subnet": format!("10.90.{}.0/24", self.n)}]]
                    }
                },
                {
                    "type": "portmap",
                    "capabilities": {"portMappings": true},
                    "snat": true
                }
            ]
        });
        std::fs::write(
            dir.join("10-test.conflist"),
            serde_json::to_vec_pretty(&conf).expect("json"),
        )
        .expect("write CNI config");
    }

    /// IPs host-local still has allocated.
    fn allocations(&self) -> Vec<String> {
        dir_entries(&self.ipam_dir().join(self.name()))
            .into_iter()
            .filter(|e| e != "lock" && !e.starts_with("last_reserved_ip"))
            .collect()
    }

    /// Interfaces enslaved to the bridge (the pods' host-side veths).
    fn ports(&self) -> Vec<String> {
        dir_entries(&PathBuf::from(format!(
            "/sys/class/net/{}/brif",
            self.bridge()
        )))
    }

    /// The id host-local's allocation of `ip` is for.
    fn allocated_to(&self, ip: &str) -> String {
        std::fs::read_to_string(self.ipam_dir().join(self.name()).join(ip))
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    }

    /// Whether host-local still has an IP allocated to `id`.
    fn holds_ip_of(&self, id: &str) -> bool {
        self.allocations()
            .iter()
            .any(|ip| self.allocated_to(ip) == id)
    }

    /// Asserts the network holds nothing of any pod any more; with the
    /// server `running`, but what its spares attached ahead hold (the IP
    /// allocated to a spare's id, the veth its ADD result names; looked up
    /// on each look, as a spare is made in the background).
    async fn assert_empty(&self, pod_ids: &[&str], running: Option<&Server>) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let spares = running.map(spare_records).unwrap_or_default();
            let ports: Vec<String> = self
                .ports()
                .into_iter()
                .filter(|p| !spares.iter().any(|r| r.host_ifs.contains(p)))
                .collect();
            let allocs: Vec<String> = self
                .allocations()
                .into_iter()
                .filter(|ip| !spares.iter().any(|r| r.id == self.allocated_to(ip)))
                .collect();
            let nat = iptables_nat();
            let rules: Vec<&str> = pod_ids
                .iter()
                .copied()
                .filter(|id| nat.contains(*id))
                .collect();
            if ports.is_empty() && allocs.is_empty() && rules.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left on network {}: veths {ports:?}, IPAM allocations {allocs:?}, NAT rules of pods {rules:?}",
                self.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestNet {
    /// Best effort, for a test that failed half way: hostPort rules of pods
    /// that were never detached (portmap DEL by their ids), then the bridge.
    fn drop(&mut self) {
        let tag = format!("dnat name: \\\"{}\\\" id: \\\"", self.name());
        let portmap = PLUGIN_DIRS
            .iter()
            .map(|d| Path::new(d).join("portmap"))
            .find(|p| p.exists());
        for line in iptables_nat().lines() {
            let (Some(i), Some(portmap)) = (line.find(&tag), &portmap) else {
                continue;
            };
            let id: String = line[i + tag.len()..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
            let conf = serde_json::json!({
                "cniVersion": "1.0.0", "name": self.name(), "type": "portmap", "snat": true,
                "runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 1, "protocol": "tcp"}]}
            });
            if let Ok(mut child) = Command::new(portmap)
                .env("CNI_COMMAND", "DEL")
                .env("CNI_CONTAINERID", &id)
                .env("CNI_NETNS", "")
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", PLUGIN_DIRS.join(":"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
            {
                if let Some(mut w) = child.stdin.take() {
                    let _ = w.write_all(conf.to_string().as_bytes());
                }
                let _ = child.wait();
            }
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Runs `cmd` to its end for its output, out of the harness reaper's reach.
fn output(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    let child = spawn_kept(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let pid = child.id();
    let out = child.wait_with_output();
    untrack(pid);
    out
}

fn ip(args: &[&str]) -> std::io::Result<std::process::Output> {
    output(Command::new("ip").args(args))
}

/// The NAT table as iptables-save prints it ("" without iptables).
fn iptables_nat() -> String {
    output(Command::new("iptables-save").args(["-t", "nat"]))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Starts sycri on fresh directories with `cni_conf_dir`. The config file
/// lives outside the server's directory, so the server's command line does
/// not name that directory (the leak audits look for processes that do).
async fn start_server(cfg_dir: &Path, cni_conf_dir: &Path) -> Server {
    let dir = tempfile::Builder::new()
        .prefix("sy")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let cfg = cfg_dir.join("sycri.toml");
    let bins: Vec<String> = PLUGIN_DIRS.iter().map(|d| format!("{d:?}")).collect();
    std::fs::write(
        &cfg,
        format!(
            "listen = \"unix://{sock}\"\nstorage_dir = \"{store}\"\nrun_dir = \"{run}\"\n\
             log_level = \"debug\"\ncni_conf_dir = \"{conf}\"\ncni_bin_dirs = [{bins}]\n",
            sock = dir.path().join("cri.sock").display(),
            store = dir.path().join("store").display(),
            run = dir.path().join("run").display(),
            conf = cni_conf_dir.display(),
            bins = bins.join(", "),
        ),
    )
    .expect("write server config");
    let (child, rt, img) = launch(dir.path(), &cfg, false).await;
    Server {
        dir,
        child: Some(child),
        rt,
        img,
    }
}

/// Stops the server (SIGTERM; containers and pods live on) and starts it again.
async fn restart_server(s: &mut Server, cfg_dir: &Path) {
    s.terminate();
    relaunch(s, cfg_dir).await;
}

async fn network_condition(rt: &mut Rt) -> cri::RuntimeCondition {
    rt.status(cri::StatusRequest { verbose: false })
        .await
        .expect("status")
        .into_inner()
        .status
        .expect("conditions")
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady")
}

async fn pod_status(rt: &mut Rt, id: &str) -> (cri::PodSandboxStatus, serde_json::Value) {
    let r = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("pod status")
        .into_inner();
    let info = r
        .info
        .get("info")
        .and_then(|i| serde_json::from_str(i).ok())
        .unwrap_or_default();
    (r.status.expect("status"), info)
}

async fn exec(rt: &mut Rt, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 20,
        })
        .await
        .expect("exec")
        .into_inner();
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

/// A running container in `pod` that serves "hello from <name>" over HTTP on 8080.
async fn web(s: &mut Server, pod: &str, pod_cfg: &cri::PodSandboxConfig, image: &str) -> String {
    let name = pod_cfg
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let script = format!(
        "mkdir -p /tmp/www && echo hello from {name} > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"
    );
    let c = create(
        &mut s.rt,
        pod,
        pod_cfg,
        container_config("web", image, &["sh", "-c", &script]),
    )
    .await
    .expect("create web");
    start(&mut s.rt, &c).await.expect("start web");
    wait_state(&mut s.rt, &c, cri::ContainerState::ContainerRunning).await;
    c
}

/// A running container in `pod` that sleeps, to exec in.
async fn sleeper(
    s: &mut Server,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    image: &str,
) -> String {
    let c = create(
        &mut s.rt,
        pod,
        pod_cfg,
        container_config("sleeper", image, &["sleep", "600"]),
    )
    .await
    .expect("create sleeper");
    start(&mut s.rt, &c).await.expect("start sleeper");
    wait_state(&mut s.rt, &c, cri::ContainerState::ContainerRunning).await;
    c
}

/// Runs `cmd` in container `id` until it succeeds (a server may take a moment
/// to listen); the last output.
async fn exec_until_ok(rt: &mut Rt, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = exec(rt, id, cmd).await;
        if r.0 == 0 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop_and_remove(s: &mut Server, pod: &str) {
    stop_pod(&mut s.rt, pod).await.expect("stop pod");
    stop_pod(&mut s.rt, pod).await.expect("stop pod twice");
    remove_pod(&mut s.rt, pod).await.expect("remove pod");
    remove_pod(&mut s.rt, pod).await.expect("remove pod twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_ready_follows_the_cni_config() {
    assert!(is_root(), "integration tests run as root");
    if plugins("network_ready_follows_the_cni_config").is_none() {
        return;
    }
    let net = TestNet::new(9);
    let empty = net.dir.path().join("empty.d");
    std::fs::create_dir_all(&empty).expect("dir");
    let mut s = start_server(net.dir.path(), &empty).await;
    let c = network_condition(&mut s.rt).await;
    assert!(!c.status, "{c:?}");
    assert_eq!(c.reason, "NetworkPluginNotReady");
    assert!(c.message.contains("no network config"), "{c:?}");

    // The config dir is read on each call: a config with its plugins makes it ready.
    net.write_config(&empty);
    let c = network_condition(&mut s.rt).await;
    assert!(c.status, "{c:?}");

    // A config naming a plugin that does not exist is not ready.
    std::fs::write(
        empty.join("05-missing.conflist"),
        r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .expect("write");
    let c = network_condition(&mut s.rt).await;
    assert!(!c.status && c.message.contains("no-such-plugin"), "{c:?}");

    // A pod with its own network namespace on a network without its plugins fails cleanly.
    let cfg = pod_config("nonet", &s.log_dir());
    let err =
        s.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("no plugin, no pod");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(list_pods(&mut s.rt).await.is_empty());

    // An unknown runtime handler is refused.
    let err =
        s.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: "no-such-handler".into(),
        })
        .await
        .expect_err("unknown handler");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert_no_leaks(s.dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_reach_each_other_over_the_bridge() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("two_pods_reach_each_other_over_the_bridge") else {
        return;
    };
    if plugins("two_pods_reach_each_other_over_the_bridge").is_none() {
        return;
    }
    let net = TestNet::new(1);
    let mut s = start_server(net.dir.path(), &net.conf_dir()).await;
    assert!(network_condition(&mut s.rt).await.status);
    let image = s.pull(&sif).await;

    let cfg_a = pod_config("alpha", &s.log_dir());
    let cfg_b = pod_config("beta", &s.log_dir());
    let a = run_pod(&mut s.rt, cfg_a.clone()).await;
    let b = run_pod(&mut s.rt, cfg_b.clone()).await;
    let (st_a, info_a) = pod_status(&mut s.rt, &a).await;
    let (st_b, _) = pod_status(&mut s.rt, &b).await;
    let ip_a = st_a.network.clone().expect("network").ip;
    let ip_b = st_b.network.clone().expect("network").ip;
    assert!(ip_a.starts_with(&net.subnet_prefix()), "{st_a:?}");
    assert!(ip_b.starts_with(&net.subnet_prefix()), "{st_b:?}");
    assert_ne!(ip_a, ip_b);
    assert!(st_a.network.expect("network").additional_ips.is_empty());
    assert_eq!(info_a["cniNetwork"], net.name(), "{info_a}");
    assert!(info_a["cniResult"]["ips"].is_array(), "{info_a}");
    assert_eq!(net.ports().len(), 2, "one veth per pod on the bridge");
    assert_eq!(net.allocations().len(), 2);

    let web_a = web(&mut s, &a, &cfg_a, &image).await;
    let client = sleeper(&mut s, &b, &cfg_b, &image).await;

    // The pod's /etc/hosts names it by its IP; eth0 has that IP.
    let (code, hosts, _) = exec(&mut s.rt, &web_a, &["cat", "/etc/hosts"]).await;
    assert_eq!(code, 0);
    assert!(hosts.contains(&format!("{ip_a}\talpha")), "{hosts}");
    let (code, addr, _) = exec(&mut s.rt, &web_a, &["ip", "-4", "addr", "show", "eth0"]).await;
    assert_eq!(code, 0, "{addr}");
    assert!(addr.contains(&format!("inet {ip_a}/24")), "{addr}");

    // Pod beta fetches from pod alpha over the bridge.
    let url = format!("http://{ip_a}:8080/");
    let (code, body, err) = exec_until_ok(
        &mut s.rt,
        &client,
        &["wget", "-q", "-T", "5", "-O", "-", &url],
    )
    .await;
    assert_eq!(code, 0, "wget {url}: {err}");
    assert_eq!(body.trim(), "hello from alpha");

    // And a plain TCP connection with nc works the other way round (alpha to beta).
    let nc_server = create(
        &mut s.rt,
        &b,
        &cfg_b,
        container_config(
            "nc",
            &image,
            &["sh", "-c", "echo ping-from-beta | nc -l -p 9090"],
        ),
    )
    .await
    .expect("create nc");
    start(&mut s.rt, &nc_server).await.expect("start nc");
    let probe = format!("nc {ip_b} 9090 </dev/null");
    let (code, got, err) = exec_until_ok(&mut s.rt, &web_a, &["sh", "-c", &probe]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(got.trim(), "ping-from-beta");

    for p in [&a, &b] {
        stop_pod(&mut s.rt, p).await.expect("stop");
        let (st, _) = pod_status(&mut s.rt, p).await;
        assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
        assert_eq!(st.network.expect("network").ip, "", "no IP once stopped");
    }
    net.assert_empty(&[&a, &b], Some(&s)).await;
    for p in [&a, &b] {
        stop_and_remove(&mut s, p).await;
    }
    assert!(list_pods(&mut s.rt).await.is_empty());
    net.assert_empty(&[&a, &b], Some(&s)).await;
    assert_no_leaks_but_the_spare(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_port_answers_on_localhost() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("host_port_answers_on_localhost") else {
        return;
    };
    if plugins("host_port_answers_on_localhost").is_none() {
        return;
    }
    let net = TestNet::new(2);
    let mut s = start_server(net.dir.path(), &net.conf_dir()).await;
    let image = s.pull(&sif).await;
    // A port that is free now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut cfg = pod_config("ported", &s.log_dir());
    cfg.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: i32::from(port),
        host_ip: String::new(),
    }];
    let pod = run_pod(&mut s.rt, cfg.clone()).await;
    let web_c = web(&mut s, &pod, &cfg, &image).await;
    // Wait until httpd listens inside the pod.
    let (code, _, err) = exec_until_ok(
        &mut s.rt,
        &web_c,
        &["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(iptables_nat().contains(&pod), "portmap rules name the pod");

    let body = tokio::task::spawn_blocking(move || http_get("127.0.0.1", port))
        .await
        .expect("join");
    assert!(
        body.contains("hello from ported"),
        "hostPort {port} on 127.0.0.1 answered {body:?}"
    );

    stop_and_remove(&mut s, &pod).await;
    net.assert_empty(&[&pod], Some(&s)).await;
    assert_no_leaks_but_the_spare(&s).await;
}

/// GET / from host:port with a plain TCP client: the response, or the error.
fn http_get(host: &str, port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = (|| -> std::io::Result<String> {
            let mut c = std::net::TcpStream::connect((host, port))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut s = String::new();
            c.read_to_string(&mut s)?;
            Ok(s)
        })();
        match r {
            Ok(s) if !s.is_empty() => return s,
            Ok(_) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Ok(s) => return s,
            Err(e) => return format!("error: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pod_sees_the_host_interfaces() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("host_network_pod_sees_the_host_interfaces") else {
        return;
    };
    if plugins("host_network_pod_sees_the_host_interfaces").is_none() {
        return;
    }
    let net = TestNet::new(3);
    let mut s = start_server(net.dir.path(), &net.conf_dir()).await;
    let image = s.pull(&sif).await;
    let ns = cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    };
    let cfg = pod_config_ns("hostnet", &s.log_dir(), ns);
    let pod = run_pod(&mut s.rt, cfg.clone()).await;
    let (st, info) = pod_status(&mut s.rt, &pod).await;
    assert_eq!(st.network.expect("network").ip, "");
    assert!(
        info.get("cniResult").is_none(),
        "no CNI for the host network: {info}"
    );
    assert!(net.ports().is_empty() && net.allocations().is_empty());
    let c = sleeper(&mut s, &pod, &cfg, &image).await;
    let (code, dev, _) = exec(&mut s.rt, &c, &["cat", "/proc/net/dev"]).await;
    assert_eq!(code, 0);
    let host_dev = std::fs::read_to_string("/proc/net/dev").expect("host /proc/net/dev");
    let names = |t: &str| -> Vec<String> {
        t.lines()
            .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
            .filter(|n| !n.starts_with("veth") && !n.starts_with("sytest") && !n.starts_with("cni"))
            .collect()
    };
    let (mut want, mut got) = (names(&host_dev), names(&dev));
    want.sort();
    got.sort();
    assert!(want.len() > 1, "the host has more than lo: {want:?}");
    assert_eq!(got, want, "a host-network pod sees the host's interfaces");
    stop_and_remove(&mut s, &pod).await;
    assert_no_leaks(s.dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysctls_are_applied_in_the_pod_and_others_refused() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("sysctls_are_applied_in_the_pod_and_others_refused") else {
        return;
    };
    if plugins("sysctls_are_applied_in_the_pod_and_others_refused").is_none() {
        return;
    }
    let net = TestNet::new(4);
    let mut s = start_server(net.dir.path(), &net.conf_dir()).await;
    let image = s.pull(&sif).await;
    let host_ping =
        std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").expect("host sysctl");
    let host_shm = std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").expect("host");
    let host_arp =
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/arp_ignore").expect("host sysctl");

    let with_sysctls = |name: &str, sysctls: &[(&str, &str)], log: &Path| {
        let mut c = pod_config(name, log);
        c.linux.get_or_insert_with(Default::default).sysctls = sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>();
        c
    };
    let cfg = with_sysctls(
        "tuned",
        &[
            ("net.ipv4.ping_group_range", "0 4242"),
            // An interface sysctl: applied once eth0 exists, after CNI ADD.
            ("net/ipv4/conf/eth0/arp_ignore", "2"),
            ("kernel.shm_rmid_forced", "1"),
            ("fs.mqueue.msg_max", "42"),
        ],
        &s.log_dir(),
    );
    let pod = run_pod(&mut s.rt, cfg.clone()).await;
    let c = sleeper(&mut s, &pod, &cfg, &image).await;
    for (path, want) in [
        ("/proc/sys/net/ipv4/ping_group_range", "0\t4242"),
        ("/proc/sys/net/ipv4/conf/eth0/arp_ignore", "2"),
        ("/proc/sys/kernel/shm_rmid_forced", "1"),
        ("/proc/sys/fs/mqueue/msg_max", "42"),
    ] {
        let (code, out, err) = exec(&mut s.rt, &c, &["cat", path]).await;
        assert_eq!((code, out.trim()), (0, want), "{path}: {err}");
    }
    // The host's values did not move.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").expect("read"),
        host_ping
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").expect("read"),
        host_shm
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/arp_ignore").expect("read"),
        host_arp
    );
    stop_and_remove(&mut s, &pod).await;

    // Refused: not namespaced; net.* on the host network; a key that does not
    // exist. None leaves a pod, an IP or a veth behind.
    let host_net = {
        let mut c = with_sysctls(
            "hostnet",
            &[("net.ipv4.ping_group_range", "0 1")],
            &s.log_dir(),
        );
        if let Some(l) = c.linux.as_mut() {
            l.security_context = Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        c
    };
    for (cfg, what) in [
        (
            with_sysctls("nonns", &[("kernel.pid_max", "4242")], &s.log_dir()),
            "not namespaced",
        ),
        (
            with_sysctls("vm", &[("vm.swappiness", "1")], &s.log_dir()),
            "not namespaced",
        ),
        (host_net, "node's network"),
        (
            with_sysctls("nokey", &[("net.ipv4.no_such_sysctl", "1")], &s.log_dir()),
            "no_such_sysctl",
        ),
    ] {
        let err =
            s.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .expect_err("refused sysctl");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(what), "{err:?}");
    }
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .expect("read")
            .trim(),
        "4242"
    );
    assert!(list_pods(&mut s.rt).await.is_empty());
    net.assert_empty(&[&pod], Some(&s)).await;
    assert_no_leaks_but_the_spare(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_after_restart_and_without_the_netns() {
    assert!(is_root(), "integration tests run as root");
    if plugins("teardown_after_restart_and_without_the_netns").is_none() {
        return;
    }
    let net = TestNet::new(5);
    let mut s = start_server(net.dir.path(), &net.conf_dir()).await;
    let logs = s.log_dir();
    let a = run_pod(&mut s.rt, pod_config("keep", &logs)).await;
    let b = run_pod(&mut s.rt, pod_config("lose", &logs)).await;
    let ip_a = pod_status(&mut s.rt, &a).await.0.network.expect("net").ip;
    assert_eq!(net.allocations().len(), 2);

    // The config dir changes while the server is down: DEL uses what ADD used.
    restart_server(&mut s, net.dir.path()).await;
    std::fs::remove_file(net.conf_dir().join("10-test.conflist")).expect("remove config");
    let (st, _) = pod_status(&mut s.rt, &a).await;
    assert_eq!(
        st.network.expect("net").ip,
        ip_a,
        "the IP survives a restart"
    );
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);

    // Pod b's namespace pin is gone (as after a reboot): DEL still releases its IP.
    let pin = s.run_dir().join("pods").join(&b).join("ns").join("net");
    nix::mount::umount2(&pin, nix::mount::MntFlags::MNT_DETACH).expect("unpin netns");
    std::fs::remove_file(&pin).expect("remove pin");

    stop_and_remove(&mut s, &a).await;
    stop_and_remove(&mut s, &b).await;
    net.assert_empty(&[&a, &b], Some(&s)).await;
    assert!(list_pods(&mut s.rt).await.is_empty());
    assert_no_leaks(s.dir.path(), &[]);
    let log = server_log(s.dir.path());
    assert!(!log.contains("panicked"), "{log}");
}

/// The spare network namespaces the server holds (pinned files).
fn spare_nets(s: &Server) -> Vec<PathBuf> {
    let dir = s.run_dir().join("spare-net");
    mounts_under(&dir)
}

/// A spare the server attached ahead (its record in the state dir, kept
/// from before its ADD): the id, whether its ADD is done (the record has its
/// result), and the host-side interfaces the result names (its veth).
struct SpareRecord {
    id: String,
    done: bool,
    host_ifs: Vec<String>,
}

fn spare_records(s: &Server) -> Vec<SpareRecord> {
    let dir = s.storage_dir().join("state").join("spare-net");
    dir_entries(&dir)
        .into_iter()
        .filter_map(|name| {
            let p = dir.join(name).join("network.json");
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
            let host_ifs = v["result"]["interfaces"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i.get("sandbox").is_none())
                .filter_map(|i| i["name"].as_str().map(String::from))
                .collect();
            Some(SpareRecord {
                id: v["container_id"].as_str()?.to_string(),
                done: !v["result"].is_null(),
                host_ifs,
            })
        })
        .collect()
}

/// The ids of the server's spares attached ahead, or being attached.
fn spare_ids(s: &Server) -> Vec<String> {
    spare_records(s).into_iter().map(|r| r.id).collect()
}

/// The server's one spare, attached ahead: its id and its IP, once its ADD
/// is done.
async fn wait_attached_spare(s: &Server, net: &TestNet) -> (String, String) {
    let found = || {
        let records = spare_records(s);
        let r = records.first()?;
        let ip = net
            .allocations()
            .into_iter()
            .find(|ip| net.allocated_to(ip) == r.id)?;
        (records.len() == 1 && r.done).then(|| (r.id.clone(), ip))
    };
    wait_for("a spare attached ahead", Duration::from_secs(10), || {
        found().is_some()
    })
    .await;
    found().expect("found")
}

/// The server's one spare network namespace, once it is made.
async fn wait_spare(s: &Server) -> PathBuf {
    wait_for("a spare network namespace", Duration::from_secs(10), || {
        spare_nets(s).len() == 1
    })
    .await;
    spare_nets(s).remove(0)
}

/// What assert_no_leaks asks of a running server, which may keep its one
/// spare network namespace (`spare_netns` = 1): at most one, a network
/// namespace, and nothing else (a second spare, or one that is no
/// namespace, is left over). The spare is looked up on each look: it is made
/// in the background after the last pod, and may appear while this waits.
async fn assert_no_leaks_but_the_spare(s: &Server) {
    assert_only_pods_left_and(s, &[], || {
        spare_nets(s)
            .into_iter()
            .filter(|p| p.ends_with("ns/net") && sycri::cni::is_netns(p))
            .take(1)
            .collect()
    })
    .await
}

fn inode(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_takes_the_spare_netns_and_a_stop_or_crash_leaves_none() {
    assert!(is_root(), "integration tests run as root");
    if plugins("a_pod_takes_the_spare_netns_and_a_stop_or_crash_leaves_none").is_none() {
        return;
    }
    let net = TestNet::new(6);
    let mut s = start_server(net.dir.path(), &net.conf_dir()).await;
    let logs = s.log_dir();
    assert!(spare_nets(&s).is_empty(), "none before a pod asks");
    let a = run_pod(&mut s.rt, pod_config("first", &logs)).await;
    let spare = wait_spare(&s).await;
    let spare_ino = inode(&spare);
    // bridge, host-local and portmap read nothing of the pod: the spare is
    // attached ahead, its IP allocated before any pod takes it.
    let (ahead_id, ahead_ip) = wait_attached_spare(&s, &net).await;

    // The next pod runs in the spare (its pin is the spare's namespace), on
    // the network, and a new spare is made for the pod after it.
    let b = run_pod(&mut s.rt, pod_config("second", &logs)).await;
    assert_eq!(
        b, ahead_id,
        "the pod has the id its spare was attached under"
    );
    let b_net = s.run_dir().join("pods").join(&b).join("ns").join("net");
    assert_eq!(inode(&b_net), spare_ino, "the pod took the spare");
    // Its own pin goes in the background once the pod pinned it.
    wait_for("the spare's own pin gone", Duration::from_secs(10), || {
        !spare.exists()
    })
    .await;
    let next = wait_spare(&s).await;
    assert_ne!(inode(&next), spare_ino);
    let (next_id, _) = wait_attached_spare(&s, &net).await;
    assert_ne!(next_id, b);
    let (st, info) = pod_status(&mut s.rt, &b).await;
    let ip = st.network.expect("network").ip;
    assert_eq!(ip, ahead_ip, "the IP allocated ahead");
    assert!(ip.starts_with(&net.subnet_prefix()), "{ip}");
    // The attachment names the pod's own pin, not the spare's (DEL uses it),
    // and the pod's facts in CNI_ARGS.
    let eth0 = info["cniResult"]["interfaces"]
        .as_array()
        .and_then(|v| v.iter().find(|i| i["name"] == "eth0"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(eth0["sandbox"], b_net.to_string_lossy().as_ref(), "{info}");
    assert!(!info.to_string().contains("spare-net"), "{info}");
    let kept: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            s.storage_dir()
                .join("state/pods")
                .join(&b)
                .join("network.json"),
        )
        .expect("the pod's attachment"),
    )
    .expect("json");
    assert!(
        kept["args"]
            .to_string()
            .contains("\"K8S_POD_NAME\",\"second\""),
        "{kept}"
    );
    let addrs = output(
        Command::new("nsenter")
            .arg(format!("--net={}", b_net.display()))
            .args(["ip", "-4", "-o", "addr", "show", "eth0"]),
    )
    .expect("nsenter");
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(
        addrs.contains(&format!("{ip}/")),
        "eth0 of the pod: {addrs}"
    );

    // A pod with a host port gives portmap other values than the spare was
    // attached with: it runs its own ADD and leaves the spare for the next.
    let mut ported = pod_config("ported", &logs);
    ported.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: i32::from(oci::free_port()),
        host_ip: String::new(),
    }];
    let p = run_pod(&mut s.rt, ported).await;
    assert_ne!(p, next_id);
    assert_eq!(
        spare_ids(&s),
        std::slice::from_ref(&next_id),
        "the spare stays"
    );
    assert!(
        iptables_nat().contains(&p),
        "the pod's own ADD mapped its port"
    );

    // A changed network config: the spare attached with the old one goes
    // (DEL: its IP is free again) and the next is attached with the new one.
    let conflist = net.conf_dir().join("10-test.conflist");
    let mut conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&conflist).expect("read conflist")).expect("json");
    conf["plugins"][0]["mtu"] = serde_json::json!(1400);
    std::fs::write(&conflist, serde_json::to_vec(&conf).expect("json")).expect("write conflist");
    let c = run_pod(&mut s.rt, pod_config("third", &logs)).await;
    assert_ne!(c, next_id, "the stale spare is not taken");
    wait_for(
        "the stale spare's IP released",
        Duration::from_secs(10),
        || !net.holds_ip_of(&next_id),
    )
    .await;
    let (fresh_id, _) = wait_attached_spare(&s, &net).await;
    assert_ne!(fresh_id, next_id);

    for pod in [&a, &b, &p, &c] {
        stop_and_remove(&mut s, pod).await;
    }
    net.assert_empty(&[&a, &b, &p, &c], Some(&s)).await;
    assert_no_leaks_but_the_spare(&s).await;
    assert_eq!(spare_nets(&s).len(), 1);

    // A stopping server releases its spare, and its IP.
    s.terminate();
    assert_no_leaks(s.dir.path(), &[]);
    net.assert_empty(&[], None).await;

    // One killed with a spare ready: the next start releases it (and makes
    // none until a pod asks), and the pod lives on.
    relaunch(&mut s, net.dir.path()).await;
    let d = run_pod(&mut s.rt, pod_config("fourth", &logs)).await;
    let left = wait_spare(&s).await;
    let (left_id, _) = wait_attached_spare(&s, &net).await;
    s.kill9();
    relaunch(&mut s, net.dir.path()).await;
    assert!(spare_nets(&s).is_empty(), "swept: {:?}", spare_nets(&s));
    assert!(!left.exists(), "{}", left.display());
    assert!(spare_ids(&s).is_empty());
    assert!(
        !net.holds_ip_of(&left_id),
        "the swept spare's IP is released"
    );
    assert_eq!(
        pod_status(&mut s.rt, &d).await.0.state,
        cri::PodSandboxState::SandboxReady as i32
    );

    // Killed again, and the run dir's spare gone as with a reboot: the
    // spare's record in the state dir still releases its IP.
    let e = run_pod(&mut s.rt, pod_config("fifth", &logs)).await;
    let gone = wait_spare(&s).await;
    let (gone_id, _) = wait_attached_spare(&s, &net).await;
    s.kill9();
    nix::mount::umount2(&gone, nix::mount::MntFlags::MNT_DETACH).expect("unpin the spare");
    std::fs::remove_dir_all(s.run_dir().join("spare-net")).expect("remove the run dir's spares");
    relaunch(&mut s, net.dir.path()).await;
    assert!(spare_ids(&s).is_empty());
    assert!(
        !net.holds_ip_of(&gone_id),
        "the lost spare's IP is released"
    );
    for pod in [&d, &e] {
        stop_and_remove(&mut s, pod).await;
    }
    net.assert_empty(&[&d, &e], None).await;
    assert_no_leaks(s.dir.path(), &[]);
    let log = server_log(s.dir.path());
    assert!(!log.contains("panicked"), "{log}");
}

/// Starts the server again on the same directories (it is not running:
/// stopped or killed).
async fn relaunch(s: &mut Server, cfg_dir: &Path) {
    let (child, rt, img) = launch(s.dir.path(), &cfg_dir.join("sycri.toml"), false).await;
    s.child = Some(child);
    s.rt = rt;
    s.img = img;
}
