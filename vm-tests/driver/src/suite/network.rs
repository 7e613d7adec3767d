//! Two pods on the CNI bridge (the guest's /etc/cni/net.d: bridge sycri0,
//! host-local addresses in 10.89.0.0/16) reach each other over TCP and ICMP;
//! when they go, so do their veth devices and their addresses.

use super::Ctx;
use crate::audit::{spare_host_interfaces, veths};
use crate::client::{container_config, wait_log};
use crate::fail::Result;
use crate::{check, check_eq};
use std::path::Path;
use std::time::Duration;

/// Where host-local keeps the addresses it gave out (one file per address).
const IPAM_DIR: &str = "/var/lib/cni/networks/sycri";

pub async fn two_pods(ctx: &mut Ctx) -> Result<()> {
    let image = ctx.image().await?;
    let mut a = ctx.run_pod("neta").await?;
    let mut b = ctx.run_pod("netb").await?;
    let (ip_a, ip_b) = (ctx.cri.pod_ip(&a.id).await?, ctx.cri.pod_ip(&b.id).await?);
    check!(ip_a != ip_b, "both pods got {ip_a}");
    check!(
        Path::new("/sys/class/net/sycri0/bridge").exists(),
        "no bridge sycri0 in the guest"
    );
    // Besides the veth of the spare the server attaches ahead for the next
    // pod, once its ADD result names it (looked at again for a while: that
    // ADD may be running).
    let pod_veths = || {
        let spares = spare_host_interfaces();
        veths().into_iter().filter(|v| !spares.contains(v)).count()
    };
    for _ in 0..40 {
        if pod_veths() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    check_eq!(pod_veths(), 2, "veth devices for two pods");
    for ip in [&ip_a, &ip_b] {
        check!(
            Path::new(IPAM_DIR).join(ip).exists(),
            "host-local has no record of {ip}"
        );
    }

    let web = container_config(
        "web",
        &image,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-a > /www/index.html && echo serving && exec httpd -f -p 8080 -h /www",
        ],
    );
    let server = ctx.create(&mut a, web).await?;
    let sleeper = container_config("client", &image, &["sh", "-c", "echo up; exec sleep 1000"]);
    let client = ctx.create(&mut b, sleeper).await?;
    ctx.cri.start(&server).await?;
    ctx.cri.start(&client).await?;
    let pids = vec![ctx.cri.pid(&server).await?, ctx.cri.pid(&client).await?];
    wait_log(&a.log("web"), "serving", Duration::from_secs(60)).await?;
    wait_log(&b.log("client"), "up", Duration::from_secs(60)).await?;

    // B fetches A's page (httpd may need a moment to listen).
    let url = format!("http://{ip_a}:8080/index.html");
    let mut got = (0, String::new(), String::new());
    for _ in 0..20 {
        got = ctx
            .cri
            .exec_sync(&client, &["wget", "-q", "-T", "10", "-O", "-", &url])
            .await?;
        if got.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    check!(
        got.0 == 0 && got.1.trim() == "hello-from-a",
        "pod B's wget {url}: {got:?}"
    );
    // A pings B.
    let (code, out, err) = ctx
        .cri
        .exec_sync(&server, &["ping", "-c", "1", "-W", "10", &ip_b])
        .await?;
    check!(code == 0, "pod A's ping {ip_b}: {code} {out:?} {err:?}");
    // Neither sees the other's loopback: B's own port 8080 is closed.
    let (code, _, _) = ctx
        .cri
        .exec_sync(
            &client,
            &["wget", "-q", "-T", "5", "-O", "-", "http://127.0.0.1:8080/"],
        )
        .await?;
    check!(code != 0, "pod B reached A's server on its own loopback");
    ctx.note(format!(
        "pod A {ip_a}, pod B {ip_b}: wget and ping across sycri0"
    ));

    ctx.finish(&[&a, &b], pids).await?;
    for ip in [&ip_a, &ip_b] {
        check!(
            !Path::new(IPAM_DIR).join(ip).exists(),
            "address {ip} still reserved after RemovePodSandbox"
        );
    }
    Ok(())
}
