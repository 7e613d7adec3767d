//! Seccomp: RuntimeDefault puts a filter on the container, a Localhost
//! profile blocks what it names (also for exec'd processes), Unconfined and
//! privileged containers run without one, and bad profiles are refused at
//! CreateContainer.

mod common;

use common::*;
use sycri::proto::cri;
use sycri::proto::cri::security_profile::ProfileType;
use tonic::Code;

const SCRIPT: &str = "grep Seccomp: /proc/self/status; \
    if chmod 400 /tmp; then echo chmod-allowed; else echo chmod-denied; fi";

fn with_profile(
    mut c: cri::ContainerConfig,
    profile: Option<cri::SecurityProfile>,
    privileged: bool,
) -> cri::ContainerConfig {
    let linux = c.linux.get_or_insert_with(Default::default);
    let sc = linux.security_context.get_or_insert_with(Default::default);
    sc.seccomp = profile;
    sc.privileged = privileged;
    c
}

fn profile(t: ProfileType, localhost_ref: &str) -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost_ref.into(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn profiles_are_applied() {
    let Some(sif) = root_busybox_sif("profiles_are_applied") else {
        return;
    };
    let mut s = Server::start().await;
    let image = s.pull(&sif).await;
    let block_chmod = s.dir.path().join("block-chmod.json");
    std::fs::write(
        &block_chmod,
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"names":["chmod","fchmodat","fchmodat2"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .expect("write profile");
    let local = block_chmod.to_string_lossy().into_owned();

    // Privileged containers need a privileged pod.
    let pod_cfg = privileged_pod_config("sec", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;

    // (name, profile, privileged, Seccomp: mode, chmod result)
    let cases = [
        ("none", None, false, "0", "chmod-allowed"),
        (
            "default",
            profile(ProfileType::RuntimeDefault, ""),
            false,
            "2",
            "chmod-allowed",
        ),
        (
            "unconfined",
            profile(ProfileType::Unconfined, ""),
            false,
            "0",
            "chmod-allowed",
        ),
        (
            "local",
            profile(ProfileType::Localhost, &local),
            false,
            "2",
            "chmod-denied",
        ),
        (
            "privileged",
            profile(ProfileType::Localhost, &local),
            true,
            "0",
            "chmod-allowed",
        ),
    ];
    for (name, p, privileged, mode, chmod) in cases {
        let mut cfg = container_config(name, &image, &["sh", "-c", SCRIPT]);
        cfg.log_path = format!("{name}.log");
        let cfg = with_profile(cfg, p, privileged);
        let id = create(&mut s.rt, &pod, &pod_cfg, cfg).await.expect(name);
        start(&mut s.rt, &id).await.expect(name);
        let st = wait_state(&mut s.rt, &id, cri::ContainerState::ContainerExited).await;
        assert_eq!(st.exit_code, 0, "{name}: {st:?}");
        let out: Vec<String> = log_lines(&s.log_dir().join(format!("{name}.log")))
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        let seccomp_line = out
            .iter()
            .find(|l| l.starts_with("Seccomp:"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            seccomp_line.split_whitespace().nth(1),
            Some(mode),
            "{name}: {out:?}"
        );
        assert!(out.iter().any(|l| l == chmod), "{name}: {out:?}");
    }

    // A process exec'd into a filtered container is filtered too.
    let mut cfg = container_config("execd", &image, &["sleep", "1000"]);
    cfg = with_profile(cfg, profile(ProfileType::Localhost, &local), false);
    let id = create(&mut s.rt, &pod, &pod_cfg, cfg)
        .await
        .expect("create");
    start(&mut s.rt, &id).await.expect("start");
    let out =
        s.rt.exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["chmod".into(), "400".into(), "/tmp".into()],
            timeout: 10,
        })
        .await
        .expect("exec")
        .into_inner();
    assert_ne!(out.exit_code, 0, "chmod in exec must be denied");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bad profiles: refused at create, nothing left behind.
    let garbage = s.dir.path().join("garbage.json");
    std::fs::write(&garbage, "{\"defaultAction\": 12").expect("write");
    for (what, p, code) in [
        (
            "a missing profile",
            profile(ProfileType::Localhost, "/no/such/profile.json"),
            Code::NotFound,
        ),
        (
            "a profile that is not JSON",
            profile(ProfileType::Localhost, &garbage.to_string_lossy()),
            Code::InvalidArgument,
        ),
        (
            "a relative profile path",
            profile(ProfileType::Localhost, "profile.json"),
            Code::InvalidArgument,
        ),
    ] {
        let cfg = with_profile(container_config("bad", &image, &["true"]), p, false);
        let r = create(&mut s.rt, &pod, &pod_cfg, cfg).await;
        assert_eq!(r.map_err(|e| e.code()).err(), Some(code), "{what}");
    }
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}
