//! PullImage of registry images, end to end through the CRI socket: a local
//! docker-registry serves images built in memory from busybox-static (OCI and
//! Docker schema 2 manifests, indexes and manifest lists, gzip, zstd and plain
//! layers); sycri downloads them, converts the layers into one SIF and stores it
//! once; containers see the image config and the merged layers. Hostile layers
//! and registries, size limits and mirrors are covered too.
//!
//! Needs /usr/bin/docker-registry (package docker-registry), /bin/busybox
//! (busybox-static); without them each
//! test says SKIPPED.

mod common;

use common::oci::*;
use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use sycri::proto::cri;
use tonic::Code;

fn ready(test: &str) -> bool {
    assert!(is_root(), "integration tests run as root");
    tools_present(test)
}

async fn image_status(img: &mut Img, name: &str) -> Option<cri::Image> {
    img.image_status(cri::ImageStatusRequest {
        image: Some(cri::ImageSpec {
            image: name.into(),
            ..Default::default()
        }),
        verbose: false,
    })
    .await
    .unwrap_or_else(|e| panic!("image status {name}: {e}"))
    .into_inner()
    .image
}

async fn list_filtered(img: &mut Img, name: &str) -> Vec<cri::Image> {
    img.list_images(cri::ListImagesRequest {
        filter: Some(cri::ImageFilter {
            image: Some(cri::ImageSpec {
                image: name.into(),
                ..Default::default()
            }),
        }),
    })
    .await
    .expect("list images")
    .into_inner()
    .images
}

async fn pull_ok(s: &mut Server, reference: &str) -> String {
    match pull_ref(&mut s.img, reference).await {
        Ok(id) => id,
        Err(e) => panic!(
            "pull {reference}: {e:?}\nserver log:\n{}",
            tail(&server_log(s.dir.path()))
        ),
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("sycri")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The store's temporary pull directories.
fn tmp_entries(s: &Server) -> Vec<String> {
    dir_entries(&s.storage_dir().join("images").join("tmp"))
}

fn set<I: IntoIterator<Item = String>>(i: I) -> BTreeSet<String> {
    i.into_iter().collect()
}

fn hex(id: &str) -> &str {
    id.strip_prefix("sha256:").unwrap_or(id)
}

async fn exec(rt: &mut Rt, id: &str, script: &str) -> (String, i32) {
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["/bin/sh".into(), "-c".into(), script.into()],
            timeout: 20,
        })
        .await
        .unwrap_or_else(|e| panic!("exec {script}: {e}"))
        .into_inner();
    if r.exit_code >= 126 {
        eprintln!(
            "exec {script}: exit {}: {}",
            r.exit_code,
            String::from_utf8_lossy(&r.stderr)
        );
    }
    (String::from_utf8_lossy(&r.stdout).into_owned(), r.exit_code)
}

/// Runs `cfg` in `pod` to its end; its stdout lines.
async fn run_to_end(
    s: &mut Server,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> Vec<String> {
    let name = cfg.metadata.as_ref().map(|m| m.name.clone()).unwrap();
    let c = create(&mut s.rt, pod, pod_cfg, cfg)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    start(&mut s.rt, &c)
        .await
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let st = wait_state(&mut s.rt, &c, cri::ContainerState::ContainerExited).await;
    let lines = log_lines(&s.log_dir().join(format!("{name}.log")));
    assert_eq!(st.exit_code, 0, "{name}: {st:?} {lines:?}");
    remove_container(&mut s.rt, &c).await.expect("remove");
    lines
        .into_iter()
        .filter(|(stream, _)| stream == "stdout")
        .map(|(_, l)| l)
        .collect()
}

// ---------------------------------------------------------------------------

/// A three-layer image pulled by tag: its id is the config digest, and it is
/// found by tag, id, short id and repo digest with the right names and user; the
/// other manifest kinds (OCI manifest, Docker list, Docker schema 2) pull too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_then_find_by_tag_id_and_digest() {
    if !ready("pull_by_tag_then_find_by_tag_id_and_digest") {
        return;
    }
    let reg = Registry::start().await;
    let mut s = Server::start().await;
    let image = Image::busybox3(test_runtime_config());
    let pushed = push(&reg, "team/app", "v1", &image, Flavor::OciIndex).await;
    let reference = format!("{}/team/app:v1", reg.host());
    let repo_digest = format!("{}/team/app@{}", reg.host(), pushed.manifest_digest);

    let id = pull_ok(&mut s, &reference).await;
    assert_eq!(id, pushed.config_digest, "image_ref is the config digest");
    assert_eq!(image_blobs(&s), vec![format!("{}.sif", hex(&id))]);
    assert_eq!(tmp_entries(&s), Vec::<String>::new(), "no pull left behind");
    // The pull answers before its fsync; the sync then clears the record's CRC.
    let index = s.storage_dir().join("images/index.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&index).expect("index")).expect("index json");
        let rec = &saved["images"][0];
        assert_eq!(rec["id"], json!(id));
        if rec.get("unsynced_crc").is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never synced: {rec}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    for name in [
        reference.as_str(),
        id.as_str(),
        hex(&id),
        &hex(&id)[..12],
        repo_digest.as_str(),
    ] {
        let st = image_status(&mut s.img, name)
            .await
            .unwrap_or_else(|| panic!("ImageStatus {name} found nothing"));
        assert_eq!(st.id, id, "{name}");
        assert_eq!(st.repo_tags, vec![reference.clone()], "{name}");
        assert_eq!(st.repo_digests, vec![repo_digest.clone()], "{name}");
        assert_eq!(st.username, "app", "the config's User: {st:?}");
        assert_eq!(st.uid, None);
        assert!(st.size > 0);
        let listed = list_filtered(&mut s.img, name).await;
        assert_eq!(listed.len(), 1, "ListImages filtered by {name}");
        assert_eq!(listed[0].id, id);
    }
    let all = list_images(&mut s.img).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].repo_tags, vec![reference.clone()]);
    for absent in [
        format!("{}/team/app:v2", reg.host()),
        format!("{}/team/other:v1", reg.host()),
        format!("{}/team/app@{}", reg.host(), pushed.image_manifest_digest),
        format!("{}/team/app@sha256:{}", reg.host(), "0".repeat(64)),
    ] {
        assert!(
            image_status(&mut s.img, &absent).await.is_none(),
            "{absent} is not stored"
        );
    }

    // The other manifest kinds; the last one with a numeric User.
    for (i, flavor) in [
        Flavor::OciManifest,
        Flavor::DockerList,
        Flavor::DockerManifest,
    ]
    .into_iter()
    .enumerate()
    {
        let mut cfg = test_runtime_config();
        cfg["Labels"]["flavor"] = json!(format!("{flavor:?}"));
        if flavor == Flavor::DockerManifest {
            cfg["User"] = json!("1000:1000");
        }
        let image = Image::busybox3(cfg);
        let repo = format!("kinds/k{i}");
        let pushed = push(&reg, &repo, "latest", &image, flavor).await;
        let reference = format!("{}/{repo}:latest", reg.host());
        let id = pull_ok(&mut s, &reference).await;
        assert_eq!(id, pushed.config_digest, "{flavor:?}");
        let st = image_status(&mut s.img, &reference).await.expect("status");
        assert_eq!(st.repo_tags, vec![reference.clone()], "{flavor:?}");
        assert_eq!(
            st.repo_digests,
            vec![format!("{}/{repo}@{}", reg.host(), pushed.manifest_digest)],
            "{flavor:?}: the repo digest is what the tag names"
        );
        if flavor == Flavor::DockerManifest {
            assert_eq!(st.uid, Some(cri::Int64Value { value: 1000 }), "{st:?}");
            assert_eq!(st.username, "");
        } else {
            assert_eq!(st.username, "app");
        }
    }
    assert_eq!(list_images(&mut s.img).await.len(), 4);
    assert_eq!(image_blobs(&s).len(), 4);
    assert_eq!(tmp_entries(&s), Vec::<String>::new());
    assert_no_leaks(s.dir.path(), &[]);
}

/// Containers of a pulled image: Entrypoint + Cmd, Env, WorkingDir and User of
/// the config, CRI args/command/env over them; whiteouts, opaque directories,
/// hard links, modes, owners and overrides of the layers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_see_the_config_and_the_merged_layers() {
    if !ready("containers_see_the_config_and_the_merged_layers") {
        return;
    }
    let reg = Registry::start().await;
    let mut s = Server::start().await;
    let image = Image::busybox3(test_runtime_config());
    push(&reg, "run/app", "v1", &image, Flavor::OciIndex).await;
    let reference = format!("{}/run/app:v1", reg.host());
    let id = pull_ok(&mut s, &reference).await;

    let pod_cfg = pod_config("regpod", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;

    // No command: Entrypoint + Cmd, as user app in WorkingDir.
    let out = run_to_end(
        &mut s,
        &pod,
        &pod_cfg,
        container_config("defaults", &reference, &[]),
    )
    .await;
    assert_eq!(
        out,
        ["foo=from-image bar=kept", "/home/app", "1000", "1000"]
    );

    // Args replace Cmd (the entrypoint stays); CRI env overrides the image's.
    let mut cfg = container_config("args", &id, &[]);
    cfg.args = vec!["echo args $FOO $BAR".into()];
    cfg.envs = vec![cri::KeyValue {
        key: "FOO".into(),
        value: b"from-cri".to_vec(),
    }];
    let out = run_to_end(&mut s, &pod, &pod_cfg, cfg).await;
    assert_eq!(out, ["args from-cri kept"]);

    // Command replaces the entrypoint, and the image's Cmd is not appended.
    let out = run_to_end(
        &mut s,
        &pod,
        &pod_cfg,
        container_config("command", &reference, &["/bin/echo", "command", "only"]),
    )
    .await;
    assert_eq!(out, ["command only"]);

    // The merged file system, looked at from inside.
    let c = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("fs", &reference, &["/bin/sleep", "1000"]),
    )
    .await
    .expect("create fs");
    start(&mut s.rt, &c).await.expect("start fs");
    let pid = container_pid(&mut s.rt, &c).await.expect("pid");
    let checks: &[(&str, &str)] = &[
        (
            "ls -A /data",
            "deep\nkeep.txt\nlower-link\nnew-link\nnew.txt\nsecret\n",
        ),
        ("test -e /data/old.txt || echo whiteout-ok", "whiteout-ok\n"),
        ("ls -A /opq", "c\n"),
        ("cat /etc/motd", "layer3\n"),
        ("cat /data/new-link /data/lower-link", "new\nkeep\n"),
        ("stat -c '%a %u %g' /data/secret", "750 1000 1000\n"),
        ("stat -c '%a %u %g' /home/app", "755 1000 1000\n"),
        ("stat -c '%a %u %g' /tmp", "1777 0 0\n"),
        ("stat -c '%a' /etc/passwd /bin/busybox", "644\n755\n"),
        ("readlink /bin/sh", "busybox\n"),
        ("id -u; id -g", "1000\n1000\n"),
    ];
    let long = format!("cat /{}", long_path());
    let checks = [checks, &[(long.as_str(), "deep\n")]].concat();
    for (script, want) in &checks {
        let (out, code) = exec(&mut s.rt, &c, script).await;
        assert_eq!((out.as_str(), code), (*want, 0), "{script}");
    }
    // Hard links share an inode (two names each).
    for (a, b) in [
        ("/data/new.txt", "/data/new-link"),
        ("/data/keep.txt", "/data/lower-link"),
    ] {
        let (out, code) = exec(&mut s.rt, &c, &format!("stat -c '%i %h' {a} {b}")).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(code, 0, "{out}");
        assert_eq!(lines.len(), 2, "{out}");
        assert_eq!(lines[0], lines[1], "{a} and {b} are one inode: {out}");
        assert!(lines[0].ends_with(" 2"), "two links: {out}");
    }
    let (ls_i, _) = exec(&mut s.rt, &c, "ls -i /data/new.txt /data/new-link").await;
    let inodes: BTreeSet<&str> = ls_i
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(inodes.len(), 1, "ls -i: {ls_i}");

    stop_container(&mut s.rt, &c, 5).await.expect("stop");
    remove_container(&mut s.rt, &c).await.expect("remove");
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[pid]);
}

/// The squashfs bytes of stored image `id`, as the store's index places them.
fn rootfs_bytes(s: &Server, id: &str) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let dir = s.storage_dir().join("images");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index"))
            .expect("index json");
    let rec = index["images"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"] == id))
        .expect("record")
        .clone();
    let f = std::fs::File::open(dir.join("sha256").join(rec["file"].as_str().expect("file")))
        .expect("open sif");
    let mut buf = vec![0u8; rec["rootfs_size"].as_u64().expect("size") as usize];
    f.read_exact_at(&mut buf, rec["rootfs_offset"].as_u64().expect("offset"))
        .expect("read rootfs");
    buf
}

/// An image whose first layer a stored image starts with goes on from the
/// stored one: that layer is neither fetched (its blob is gone from the
/// registry) nor converted again, and the image is the one a full pull
/// makes. The saved state goes with its image; a copy stays with the image
/// that reused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_sharing_a_stored_first_layer_does_not_fetch_it_again() {
    let test = "an_image_sharing_a_stored_first_layer_does_not_fetch_it_again";
    if !ready(test) {
        return;
    }
    let reg = Registry::start().await;
    let mut s = Server::start().await;
    let a = Image::busybox3(test_runtime_config());
    let own = |label: &str| {
        let mut t = TarBuilder::new();
        t.dir(label, 0o755)
            .file(&format!("{label}/own"), label.as_bytes(), 0o644)
            .file("etc/motd", label.as_bytes(), 0o644);
        Image::new(
            vec![
                Layer::new(&busybox_layer(), Compression::Gzip),
                Layer::gzip(&t.finish()),
            ],
            json!({"Labels": {"name": label}}),
        )
    };
    let (b, c) = (own("b"), own("c"));
    assert_eq!(a.layers[0].digest(), b.layers[0].digest());
    push(&reg, "share/a", "v1", &a, Flavor::OciManifest).await;
    push(&reg, "share/b", "v1", &b, Flavor::OciManifest).await;
    push(&reg, "share/c", "v1", &c, Flavor::DockerManifest).await;
    let (ra, rb, rc) = (
        format!("{}/share/a:v1", reg.host()),
        format!("{}/share/b:v1", reg.host()),
        format!("{}/share/c:v1", reg.host()),
    );
    let ida = pull_ok(&mut s, &ra).await;
    assert_eq!(base_states(&s), vec![format!("{}.base", hex(&ida))]);

    let blob = reg.blob_file(&a.layers[0].digest());
    let layer = std::fs::read(&blob).expect("read blob");
    std::fs::remove_file(&blob).expect("remove blob");
    let idb = pull_ok(&mut s, &rb).await;
    std::fs::write(&blob, &layer).expect("put the blob back");
    let mut full = Server::start().await;
    assert_eq!(pull_ok(&mut full, &rb).await, idb);
    assert!(
        rootfs_bytes(&s, &idb) == rootfs_bytes(&full, &idb),
        "the image made from the stored first layer differs from a full pull's"
    );

    // A's state goes with A; B's copy serves the next image, also after a
    // restart.
    remove_image(&mut s.img, &ra).await.expect("remove a");
    assert_eq!(base_states(&s), vec![format!("{}.base", hex(&idb))]);
    s.terminate();
    s.restart().await;
    std::fs::remove_file(&blob).expect("remove blob again");
    let idc = pull_ok(&mut s, &rc).await;
    std::fs::write(&blob, &layer).expect("put the blob back");
    assert_eq!(pull_ok(&mut full, &rc).await, idc);
    assert!(rootfs_bytes(&s, &idc) == rootfs_bytes(&full, &idc));

    // The first layer once more on top: stored blocks for the bottom, the
    // blob fetched all the same for the top.
    let mut layers = own("again").layers;
    layers.push(layers[0].clone());
    let again = Image::new(layers, json!({"Labels": {"name": "again"}}));
    push(&reg, "share/again", "v1", &again, Flavor::OciManifest).await;
    let r = format!("{}/share/again:v1", reg.host());
    let id = pull_ok(&mut s, &r).await;
    assert_eq!(pull_ok(&mut full, &r).await, id);
    assert!(rootfs_bytes(&s, &id) == rootfs_bytes(&full, &id));
    remove_image(&mut s.img, &r).await.expect("remove again");

    // Damaged states are not used: the layer is fetched and converted again.
    for id in [&idb, &idc] {
        let f = s
            .storage_dir()
            .join("images/sha256")
            .join(format!("{}.base", hex(id)));
        std::fs::write(&f, b"{\"format\":1}\n[").expect("damage the state");
    }
    let d = own("d");
    push(&reg, "share/d", "v1", &d, Flavor::OciManifest).await;
    let rd = format!("{}/share/d:v1", reg.host());
    let idd = pull_ok(&mut s, &rd).await;
    assert_eq!(pull_ok(&mut full, &rd).await, idd);
    assert!(rootfs_bytes(&s, &idd) == rootfs_bytes(&full, &idd));
    assert!(base_states(&s).contains(&format!("{}.base", hex(&idd))));
    for id in [&idb, &idc] {
        assert!(
            !base_states(&s).contains(&format!("{}.base", hex(id))),
            "a damaged state was kept"
        );
    }

    // A stored image that fails half way (its SIF cut short: the state
    // checks out against the index, the copy does not): the pull starts
    // again in full and the state goes.
    let sif = s
        .storage_dir()
        .join("images/sha256")
        .join(format!("{}.sif", hex(&idd)));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&sif)
        .expect("open sif");
    f.set_len(4096).expect("cut the SIF short");
    let e = own("e");
    push(&reg, "share/e", "v1", &e, Flavor::OciManifest).await;
    let re = format!("{}/share/e:v1", reg.host());
    let ide = pull_ok(&mut s, &re).await;
    assert_eq!(pull_ok(&mut full, &re).await, ide);
    assert!(rootfs_bytes(&s, &ide) == rootfs_bytes(&full, &ide));
    assert_eq!(base_states(&s), vec![format!("{}.base", hex(&ide))]);
    assert_eq!(tmp_entries(&s), Vec::<String>::new());
}

/// One image under several names (tags, digest, another repository and
/// manifest kind) is one file and one ListImages entry; a tag that moves to
/// another image leaves the first one with its other names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_image_is_stored_once() {
    if !ready("same_image_is_stored_once") {
        return;
    }
    let reg = Registry::start().await;
    let mut s = Server::start().await;
    let mut cfg = test_runtime_config();
    cfg["Labels"]["case"] = json!("dedup");
    let image = Image::busybox3(cfg);
    let p1 = push(&reg, "dedup/app", "one", &image, Flavor::OciIndex).await;
    let p2 = push(&reg, "dedup/app", "two", &image, Flavor::OciIndex).await;
    assert_eq!(p1, p2);
    let p3 = push(
        &reg,
        "dedup/other",
        "latest",
        &image,
        Flavor::DockerManifest,
    )
    .await;
    assert_eq!(p3.config_digest, p1.config_digest);
    let h = reg.host();
    let one = format!("{h}/dedup/app:one");
    let two = format!("{h}/dedup/app:two");
    let other = format!("{h}/dedup/other:latest");
    let by_digest = format!("{h}/dedup/app@{}", p1.manifest_digest);
    let other_digest = format!("{h}/dedup/other@{}", p3.manifest_digest);

    for r in [&one, &one, &by_digest, &two, &other, &by_digest] {
        assert_eq!(pull_ok(&mut s, r).await, p1.config_digest, "{r}");
        assert_eq!(
            image_blobs(&s),
            vec![format!("{}.sif", hex(&p1.config_digest))],
            "after {r}"
        );
    }
    let all = list_images(&mut s.img).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(
        set(all[0].repo_tags.clone()),
        set([one.clone(), two.clone(), other.clone()])
    );
    assert_eq!(
        set(all[0].repo_digests.clone()),
        set([by_digest.clone(), other_digest.clone()])
    );
    assert_eq!(tmp_entries(&s), Vec::<String>::new());

    // The tag `two` moves to another image.
    let moved = Image::tiny("moved");
    let p4 = push(&reg, "dedup/app", "two", &moved, Flavor::OciManifest).await;
    assert_eq!(pull_ok(&mut s, &two).await, p4.config_digest);
    let old = image_status(&mut s.img, &p1.config_digest)
        .await
        .expect("old image stays");
    assert_eq!(set(old.repo_tags), set([one.clone(), other.clone()]));
    let new = image_status(&mut s.img, &two).await.expect("moved tag");
    assert_eq!(new.id, p4.config_digest);
    assert_eq!(new.repo_tags, vec![two.clone()]);
    assert_eq!(list_images(&mut s.img).await.len(), 2);
    assert_eq!(image_blobs(&s).len(), 2);

    // The names survive a restart.
    s.terminate();
    s.restart().await;
    let st = image_status(&mut s.img, &by_digest)
        .await
        .expect("found by digest after a restart");
    assert_eq!(st.id, p1.config_digest);
    assert_eq!(set(st.repo_tags), set([one.clone(), other.clone()]));

    // RemoveImage by repo digest removes the image and its file; it pulls again.
    remove_image(&mut s.img, &by_digest)
        .await
        .expect("remove image");
    for name in [&one, &other, &by_digest, &p1.config_digest] {
        assert!(image_status(&mut s.img, name).await.is_none(), "{name}");
    }
    assert_eq!(
        image_blobs(&s),
        vec![format!("{}.sif", hex(&p4.config_digest))]
    );
    assert_eq!(pull_ok(&mut s, &one).await, p1.config_digest);
    assert_eq!(image_blobs(&s).len(), 2);
    assert_eq!(tmp_entries(&s), Vec::<String>::new());
    assert_no_leaks(s.dir.path(), &[]);
}

/// Five pulls of one new reference at once all answer the same id and leave one
/// image; so do pulls of one new image under different references at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_store_one_image() {
    if !ready("concurrent_pulls_store_one_image") {
        return;
    }
    let reg = Registry::start().await;
    let mut s = Server::start().await;
    let mut cfg = test_runtime_config();
    cfg["Labels"]["case"] = json!("concurrent");
    let image = Image::busybox3(cfg);
    let p = push(&reg, "conc/app", "v1", &image, Flavor::OciIndex).await;
    let reference = format!("{}/conc/app:v1", reg.host());

    let pulls = |refs: Vec<String>, img: Img| {
        refs.into_iter()
            .map(|r| {
                let mut img = img.clone();
                tokio::spawn(async move { (r.clone(), pull_ref(&mut img, &r).await) })
            })
            .collect::<Vec<_>>()
    };
    for t in pulls(vec![reference.clone(); 5], s.img.clone()) {
        let (r, res) = t.await.expect("join");
        assert_eq!(res.expect("concurrent pull"), p.config_digest, "{r}");
    }
    assert_eq!(
        image_blobs(&s),
        vec![format!("{}.sif", hex(&p.config_digest))]
    );
    let all = list_images(&mut s.img).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].repo_tags, vec![reference.clone()]);
    assert_eq!(tmp_entries(&s), Vec::<String>::new());

    // One new image under three names, each asked for twice, all at once.
    let mut cfg = test_runtime_config();
    cfg["Labels"]["case"] = json!("concurrent-names");
    let image = Image::busybox3(cfg);
    let q = push(&reg, "conc/names", "x", &image, Flavor::OciIndex).await;
    push(&reg, "conc/names", "y", &image, Flavor::OciIndex).await;
    let h = reg.host();
    let names = [
        format!("{h}/conc/names:x"),
        format!("{h}/conc/names:y"),
        format!("{h}/conc/names@{}", q.manifest_digest),
    ];
    let refs: Vec<String> = names.iter().chain(names.iter()).cloned().collect();
    for t in pulls(refs, s.img.clone()) {
        let (r, res) = t.await.expect("join");
        assert_eq!(res.expect("concurrent pull"), q.config_digest, "{r}");
    }
    assert_eq!(image_blobs(&s).len(), 2, "{:?}", image_blobs(&s));
    let st = image_status(&mut s.img, &q.config_digest)
        .await
        .expect("status");
    assert_eq!(set(st.repo_tags), set(names[..2].to_vec()));
    assert_eq!(st.repo_digests, vec![names[2].clone()]);
    assert_eq!(list_images(&mut s.img).await.len(), 2);
    assert_eq!(tmp_entries(&s), Vec::<String>::new());
    assert_no_leaks(s.dir.path(), &[]);
}

// ---------------------------------------------------------------------------
// Hostile images and registries.

/// What the store looks like, to compare after a failed pull.
struct StoreState {
    images: Vec<(String, Vec<String>, Vec<String>)>,
    blobs: Vec<String>,
}

async fn store_state(s: &mut Server) -> StoreState {
    let mut images: Vec<_> = list_images(&mut s.img)
        .await
        .into_iter()
        .map(|i| (i.id, i.repo_tags, i.repo_digests))
        .collect();
    images.sort();
    StoreState {
        images,
        blobs: image_blobs(s),
    }
}

/// Files named `marker` below `dir` (not following symlinks).
fn find_named(dir: &Path, marker: &str, found: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().contains(marker) {
            found.push(p.display().to_string());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            find_named(&p, marker, found);
        }
    }
}

/// Pulls `reference`, expects `code`, and checks that nothing was stored, no
/// temporary file stayed, nothing named `marker` appeared and the server serves.
async fn refused(
    s: &mut Server,
    before: &StoreState,
    reference: &str,
    code: &[Code],
    marker: &str,
    case: &str,
) -> tonic::Status {
    let err = match pull_ref(&mut s.img, reference).await {
        Ok(id) => panic!("{case}: pulling {reference} succeeded with {id}"),
        Err(e) => e,
    };
    assert!(
        code.contains(&err.code()),
        "{case}: want {code:?}, got {:?}: {}",
        err.code(),
        err.message()
    );
    assert!(!err.message().is_empty(), "{case}: a message says why");
    let after = store_state(s).await;
    assert_eq!(after.images, before.images, "{case}: ListImages changed");
    assert_eq!(after.blobs, before.blobs, "{case}: files in images/sha256");
    assert_eq!(tmp_entries(s), Vec::<String>::new(), "{case}: images/tmp");
    let mut found = Vec::new();
    find_named(s.dir.path(), marker, &mut found);
    for d in ["/", "/tmp", "/etc", "/root"] {
        if Path::new(d).join(marker).exists() {
            found.push(format!("{d}/{marker}"));
        }
    }
    assert!(found.is_empty(), "{case}: written outside: {found:?}");
    assert_serving(&mut s.rt, case).await;
    err
}

fn base_layer() -> Layer {
    let mut t = TarBuilder::new();
    t.dir("data", 0o755).file("data/ok", b"ok\n", 0o644);
    Layer::gzip(&t.finish())
}

/// Each hostile layer ends in InvalidArgument, with nothing stored or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_are_refused_and_leave_nothing() {
    if !ready("hostile_layers_are_refused_and_leave_nothing") {
        return;
    }
    let reg = Registry::start().await;
    let mut s = Server::start().await;
    // Something stored already, to see that it stays as it is.
    push(
        &reg,
        "good/app",
        "v1",
        &Image::tiny("good"),
        Flavor::OciIndex,
    )
    .await;
    pull_ok(&mut s, &format!("{}/good/app:v1", reg.host())).await;
    let before = store_state(&mut s).await;
    assert_eq!(before.images.len(), 1);

    let m = format!("sycri-escape-{}", std::process::id());
    let layer = |f: &dyn Fn(&mut TarBuilder)| {
        let mut t = TarBuilder::new();
        f(&mut t);
        Layer::gzip(&t.finish())
    };
    let reg_file = |t: &mut TarBuilder, name: &str| {
        t.raw(
            name.as_bytes(),
            tar::EntryType::Regular,
            b"",
            b"pwned\n",
            0o644,
            0,
            0,
        );
    };
    let mut cases: Vec<(&str, Vec<Layer>)> = vec![
        (
            "dotdot",
            vec![layer(&|t| {
                reg_file(t, &format!("../../../../../../../../tmp/{m}"))
            })],
        ),
        (
            "dotdot-inside",
            vec![layer(&|t| reg_file(t, &format!("data/../../{m}")))],
        ),
        (
            "absolute",
            vec![layer(&|t| reg_file(t, &format!("/tmp/{m}")))],
        ),
        (
            "symlink-then-file",
            vec![layer(&|t| {
                t.symlink("esc", "/tmp");
                reg_file(t, &format!("esc/{m}"));
            })],
        ),
        (
            "symlink-then-file-next-layer",
            vec![
                layer(&|t| {
                    t.symlink("esc", "../../../../../../tmp");
                }),
                layer(&|t| reg_file(t, &format!("esc/{m}"))),
            ],
        ),
        (
            "symlink-then-dir",
            vec![layer(&|t| {
                t.symlink("esc", "/etc");
                t.dir(&format!("esc/{m}"), 0o755);
            })],
        ),
        (
            "hardlink-escape",
            vec![layer(&|t| {
                t.hardlink(&format!("data/{m}"), "../../../../../etc/passwd");
            })],
        ),
        (
            "hardlink-absolute",
            vec![layer(&|t| {
                t.hardlink(&format!("data/{m}"), "/etc/passwd");
            })],
        ),
        (
            "hardlink-through-symlink",
            vec![layer(&|t| {
                t.symlink("esc", "/etc");
                t.hardlink(&format!("data/{m}"), "esc/passwd");
            })],
        ),
        (
            "whiteout-dotdot",
            vec![layer(&|t| reg_file(t, &format!("../.wh.{m}")))],
        ),
        (
            "whiteout-dotdot-inside",
            vec![layer(&|t| reg_file(t, "data/../../.wh.etc"))],
        ),
        (
            "char-device",
            vec![layer(&|t| {
                t.char_device(&format!("data/{m}"), 1, 1);
            })],
        ),
        (
            "block-device",
            vec![layer(&|t| {
                t.raw(
                    format!("data/{m}").as_bytes(),
                    tar::EntryType::Block,
                    b"",
                    b"",
                    0o660,
                    0,
                    0,
                );
            })],
        ),
    ];
    // A gzip layer cut in half.
    let mut truncated = Layer::gzip(&busybox_layer());
    truncated.bytes.truncate(truncated.bytes.len() / 2);
    cases.push(("truncated-gzip", vec![truncated]));
    // gzip of something that is not a tar archive.
    let mut not_tar = Layer::gzip(&[0x5a; 4096]);
    not_tar.oci_type = "application/vnd.oci.image.layer.v1.tar+gzip".into();
    cases.push(("gzip-of-garbage", vec![not_tar]));
    // A media type that is no tar layer.
    let mut foreign = base_layer();
    foreign.oci_type = "application/vnd.example.not-a-layer".into();
    cases.push(("unknown-media-type", vec![foreign]));

    for (case, layers) in cases {
        let mut all = vec![base_layer()];
        all.extend(layers);
        let image = Image::new(all, json!({"Labels": {"case": case}}));
        push(
            &reg,
            &format!("evil/{case}"),
            "v1",
            &image,
            Flavor::OciManifest,
        )
        .await;
        let reference = format!("{}/evil/{case}:v1", reg.host());
        let err = refused(
            &mut s,
            &before,
            &reference,
            &[Code::InvalidArgument],
            &m,
            case,
        )
        .await;
        eprintln!("{case}: {:?}: {}", err.code(), err.message());
    }
    assert_no_leaks(s.dir.path(), &[]);
}

/// Bad registries: a blob that does not match its digest, garbage for a
/// manifest, a layer declared too large, unknown tags and repositories, a
/// closed port, a malformed reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registries_give_clear_errors() {
    if !ready("bad_registries_give_clear_errors") {
        return;
    }
    let reg = Registry::start().await;
    let tiny = TinyServer::start().await;
    let mut s = Server::start().await;
    push(
        &reg,
        "good/app",
        "v1",
        &Image::tiny("good"),
        Flavor::OciIndex,
    )
    .await;
    pull_ok(&mut s, &format!("{}/good/app:v1", reg.host())).await;
    let before = store_state(&mut s).await;
    let m = "sycri-no-such-marker";
    let h = reg.host();

    // The registry's copy of a layer changed on disk: same size, other bytes.
    let image = Image::tiny("tampered");
    push(&reg, "bad/tampered", "v1", &image, Flavor::OciManifest).await;
    let file = reg.blob_file(&image.layers[0].digest());
    let mut bytes = std::fs::read(&file).expect("registry blob");
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    std::fs::write(&file, &bytes).expect("tamper");
    let err = refused(
        &mut s,
        &before,
        &format!("{h}/bad/tampered:v1"),
        &[Code::Unknown, Code::DataLoss, Code::InvalidArgument],
        m,
        "digest mismatch",
    )
    .await;
    assert!(err.message().contains("digest"), "{}", err.message());
    eprintln!("digest mismatch: {:?}: {}", err.code(), err.message());

    // The same from a server that serves other bytes for the config.
    let image = Image::tiny("mismatch-config");
    tiny.serve_image("bad/cfg", "v1", &image, Flavor::OciManifest);
    tiny.set(
        &format!("/v2/bad/cfg/blobs/{}", image.config_digest()),
        Reply::Body(
            200,
            "application/octet-stream".into(),
            vec![b' '; image.config.len()],
        ),
    );
    let err = refused(
        &mut s,
        &before,
        &format!("{}/bad/cfg:v1", tiny.host()),
        &[Code::Unknown, Code::DataLoss, Code::InvalidArgument],
        m,
        "config digest mismatch",
    )
    .await;
    eprintln!(
        "config digest mismatch: {:?}: {}",
        err.code(),
        err.message()
    );

    // The same, with the wrong config coming in slowly: the layer is
    // converted before the config's digest fails, and the pull still ends
    // at once with the digest's error (it once waited for the converter it
    // had already seen finish, until the stall timeout).
    let image = Image::tiny("mismatch-config-late");
    tiny.serve_image("bad/latecfg", "v1", &image, Flavor::OciManifest);
    let n = image.config.len();
    tiny.set(
        &format!("/v2/bad/latecfg/blobs/{}", image.config_digest()),
        Reply::Drip(
            "application/octet-stream".into(),
            vec![b' '; n],
            n.div_ceil(4),
            300,
        ),
    );
    let reference = format!("{}/bad/latecfg:v1", tiny.host());
    let late = refused(
        &mut s,
        &before,
        &reference,
        &[Code::Unknown, Code::DataLoss, Code::InvalidArgument],
        m,
        "config digest mismatch after the conversion",
    );
    let err = tokio::time::timeout(Duration::from_secs(60), late)
        .await
        .expect("a pull whose config fails after its conversion ends");
    assert!(err.message().contains("digest"), "{}", err.message());

    // Garbage for a manifest.
    tiny.set(
        "/v2/bad/garbage/manifests/v1",
        Reply::Body(200, OCI_MANIFEST.into(), b"\x00\x01 not json {{{".to_vec()),
    );
    let err = refused(
        &mut s,
        &before,
        &format!("{}/bad/garbage:v1", tiny.host()),
        &[Code::Unknown, Code::InvalidArgument],
        m,
        "garbage manifest",
    )
    .await;
    eprintln!("garbage manifest: {:?}: {}", err.code(), err.message());

    // A manifest whose bytes are not what the digest asked for names.
    let image = Image::tiny("wrong-manifest");
    let docs = tiny.serve_image("bad/mdigest", "v1", &image, Flavor::OciManifest);
    let other = Image::tiny("another");
    let (mt, ob) = other.manifest(false);
    tiny.set(
        &format!("/v2/bad/mdigest/manifests/{}", docs.top.0),
        Reply::Body(200, mt.into(), ob),
    );
    let err = refused(
        &mut s,
        &before,
        &format!("{}/bad/mdigest@{}", tiny.host(), docs.top.0),
        &[Code::Unknown, Code::DataLoss, Code::InvalidArgument],
        m,
        "manifest digest mismatch",
    )
    .await;
    eprintln!(
        "manifest digest mismatch: {:?}: {}",
        err.code(),
        err.message()
    );

    // Not HTTP at all.
    tiny.set(
        "/v2/bad/raw/manifests/v1",
        Reply::Raw(b"SSH-2.0-garbage\r\n\r\n\x00\x01\x02".to_vec()),
    );
    let err = refused(
        &mut s,
        &before,
        &format!("{}/bad/raw:v1", tiny.host()),
        &[Code::Unknown, Code::Unavailable],
        m,
        "not HTTP",
    )
    .await;
    eprintln!("not HTTP: {:?}: {}", err.code(), err.message());

    // A layer the manifest says is 20 GiB.
    let image = Image::tiny("huge");
    let docs = tiny.serve_image("bad/huge", "v1", &image, Flavor::OciManifest);
    let mut mv: serde_json::Value = serde_json::from_slice(&docs.top.2).expect("json");
    mv["layers"][0]["size"] = json!(20u64 << 30);
    tiny.set(
        "/v2/bad/huge/manifests/v1",
        Reply::Body(
            200,
            OCI_MANIFEST.into(),
            serde_json::to_vec(&mv).expect("json"),
        ),
    );
    let err = refused(
        &mut s,
        &before,
        &format!("{}/bad/huge:v1", tiny.host()),
        &[Code::ResourceExhausted, Code::FailedPrecondition],
        m,
        "declared too large",
    )
    .await;
    eprintln!("declared too large: {:?}: {}", err.code(), err.message());

    // An index without this machine's platform.
    let other = Image::for_arch(other_arch(), vec![base_layer()], json!({}));
    let (omt, ob) = other.manifest(false);
    let od = sha256(&ob);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": omt, "digest": od, "size": ob.len(),
                       "platform": {"architecture": other_arch(), "os": "linux"}}],
    });
    tiny.set(
        &format!("/v2/bad/noplat/manifests/{od}"),
        Reply::Body(200, omt.into(), ob),
    );
    tiny.set(
        "/v2/bad/noplat/manifests/v1",
        Reply::Body(
            200,
            OCI_INDEX.into(),
            serde_json::to_vec(&index).expect("json"),
        ),
    );
    let err = refused(
        &mut s,
        &before,
        &format!("{}/bad/noplat:v1", tiny.host()),
        &[Code::NotFound],
        m,
        "no image for this platform",
    )
    .await;
    eprintln!("no platform: {:?}: {}", err.code(), err.message());

    // Unknown tag, unknown repository.
    for r in [format!("{h}/good/app:nope"), format!("{h}/nobody/here:v1")] {
        refused(&mut s, &before, &r, &[Code::NotFound], m, &r).await;
    }
    // A closed port (after the client's retries).
    let closed = format!("127.0.0.1:{}/x/y:v1", free_port());
    let err = refused(
        &mut s,
        &before,
        &closed,
        &[Code::Unavailable],
        m,
        "closed port",
    )
    .await;
    eprintln!("closed port: {:?}: {}", err.code(), err.message());
    // Not a reference.
    refused(
        &mut s,
        &before,
        "127.0.0.1:5000/UPPER/case::x",
        &[Code::InvalidArgument],
        m,
        "bad reference",
    )
    .await;
    assert_no_leaks(s.dir.path(), &[]);
}

/// A layer inflating to 10 MB of zeros against `max_image_bytes` of 1 MiB: an
/// error and nothing stored; images under the limit still pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bomb_is_refused() {
    if !ready("decompression_bomb_is_refused") {
        return;
    }
    let reg = Registry::start().await;
    let mut s = start_server_with_config("max_image_bytes = 1048576\n").await;
    let zeros = vec![0u8; 10 << 20];
    let mut t = TarBuilder::new();
    t.dir("data", 0o755).file("data/zeros", &zeros, 0o644);
    let bomb = Layer::gzip(&t.finish());
    assert!(
        bomb.bytes.len() < 100 << 10,
        "compressed: {}",
        bomb.bytes.len()
    );
    let image = Image::new(vec![bomb], json!({}));
    push(&reg, "bomb/zip", "v1", &image, Flavor::OciManifest).await;

    // Two layers, each under the limit, over it together.
    let half = |name: &str| {
        let mut t = TarBuilder::new();
        t.file(name, &vec![1u8; 600 << 10], 0o644);
        Layer::gzip(&t.finish())
    };
    let image2 = Image::new(vec![half("a"), half("b")], json!({}));
    push(&reg, "bomb/sum", "v1", &image2, Flavor::OciManifest).await;

    let before = store_state(&mut s).await;
    let h = reg.host();
    let mut codes = Vec::new();
    for r in [format!("{h}/bomb/zip:v1"), format!("{h}/bomb/sum:v1")] {
        let err = refused(
            &mut s,
            &before,
            &r,
            &[Code::ResourceExhausted, Code::FailedPrecondition],
            "sycri-no-such-marker",
            &r,
        )
        .await;
        assert!(
            err.message().contains("limit") || err.message().contains("large"),
            "{}",
            err.message()
        );
        eprintln!("{r}: {:?}: {}", err.code(), err.message());
        codes.push(err.code());
    }
    // A small image is fine.
    push(
        &reg,
        "bomb/small",
        "v1",
        &Image::tiny("small"),
        Flavor::OciIndex,
    )
    .await;
    pull_ok(&mut s, &format!("{h}/bomb/small:v1")).await;
    assert_eq!(list_images(&mut s.img).await.len(), 1);
    s.terminate();
    assert_no_leaks(s.dir.path(), &[]);
    eprintln!("too large: {codes:?}");
}

/// `[registry.hosts."docker.io"] mirrors = [...]`: `busybox` comes from the
/// local registry, under its docker.io names, and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_serves_docker_hub_references() {
    if !ready("mirror_serves_docker_hub_references") {
        return;
    }
    let reg = Registry::start().await;
    let mut cfg = test_runtime_config();
    cfg["Labels"]["case"] = json!("mirror");
    let image = Image::busybox3(cfg);
    let p = push(
        &reg,
        "library/busybox",
        "latest",
        &image,
        Flavor::DockerList,
    )
    .await;
    let mut s = start_server_with_config(&format!(
        "[registry.hosts.\"docker.io\"]\nmirrors = [\"{}\"]\n",
        reg.url()
    ))
    .await;

    let id = pull_ok(&mut s, "busybox").await;
    assert_eq!(id, p.config_digest);
    let tag = "docker.io/library/busybox:latest".to_string();
    let digest = format!("docker.io/library/busybox@{}", p.manifest_digest);
    for name in [
        "busybox",
        "busybox:latest",
        "library/busybox",
        tag.as_str(),
        digest.as_str(),
        id.as_str(),
    ] {
        let st = image_status(&mut s.img, name)
            .await
            .unwrap_or_else(|| panic!("{name} not found"));
        assert_eq!(st.id, id, "{name}");
        assert_eq!(st.repo_tags, vec![tag.clone()], "{name}");
        assert_eq!(st.repo_digests, vec![digest.clone()], "{name}");
    }
    // By digest, through the mirror too (already stored: same image).
    assert_eq!(
        pull_ok(&mut s, &format!("busybox@{}", p.manifest_digest)).await,
        id
    );
    assert_eq!(image_blobs(&s).len(), 1);

    let pod_cfg = pod_config("mirrorpod", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let out = run_to_end(
        &mut s,
        &pod,
        &pod_cfg,
        container_config("motd", "busybox", &["/bin/cat", "/etc/motd"]),
    )
    .await;
    assert_eq!(out, ["layer3"]);
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}

/// An image config as `docker import` writes it (`"Env": null`, `"Cmd": null`,
/// ...) pulls and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_with_null_fields_pulls() {
    if !ready("config_with_null_fields_pulls") {
        return;
    }
    let reg = Registry::start().await;
    let mut s = Server::start().await;
    let layer = Layer::gzip(&busybox_layer());
    let config = json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": {
            "Hostname": "", "Domainname": "", "User": "",
            "AttachStdin": false, "AttachStdout": false, "AttachStderr": false,
            "Tty": false, "OpenStdin": false, "StdinOnce": false,
            "Env": null, "Cmd": null, "Image": "", "Volumes": null,
            "WorkingDir": "", "Entrypoint": null, "OnBuild": null, "Labels": null
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    });
    let image = Image::with_raw_config(vec![layer], serde_json::to_vec(&config).expect("json"));
    let p = push(&reg, "imported/app", "v1", &image, Flavor::DockerManifest).await;
    let reference = format!("{}/imported/app:v1", reg.host());
    let id = pull_ok(&mut s, &reference).await;
    assert_eq!(id, p.config_digest);

    let pod_cfg = pod_config("nullpod", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let out = run_to_end(
        &mut s,
        &pod,
        &pod_cfg,
        container_config("imported", &reference, &["/bin/echo", "imported-ok"]),
    )
    .await;
    assert_eq!(out, ["imported-ok"]);
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}

/// PullImage over a bare HTTP/2 stream with `grpc-timeout: timeout` and no
/// timer on this side (tonic's client would end the call itself, with its
/// own Cancelled): the gRPC status code and message the server sends.
async fn pull_with_grpc_timeout(sock: &Path, image: &str, timeout: &str) -> (String, String) {
    use prost::Message;
    let io = tokio::net::UnixStream::connect(sock)
        .await
        .expect("connect");
    let (client, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("h2 ready");
    let req = http::Request::post("http://localhost/runtime.v1.ImageService/PullImage")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .expect("request");
    let (resp, mut send) = client.send_request(req, false).expect("send");
    let msg = cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend(u32::try_from(msg.len()).expect("len").to_be_bytes());
    framed.extend(msg);
    send.send_data(framed.into(), true).expect("send body");
    let (parts, mut body) = resp.await.expect("response").into_parts();
    let field = |h: &http::HeaderMap, k: &str| {
        h.get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    if parts.headers.contains_key("grpc-status") {
        return (
            field(&parts.headers, "grpc-status"),
            field(&parts.headers, "grpc-message"),
        );
    }
    while let Some(d) = body.data().await {
        d.expect("body");
    }
    let t = body.trailers().await.expect("trailers").unwrap_or_default();
    (field(&t, "grpc-status"), field(&t, "grpc-message"))
}

/// A registry serving `repo:v1` whose first layer stops after 1000 bytes;
/// the reference to pull.
async fn stalling_registry(repo: &str) -> (TinyServer, String) {
    let tiny = TinyServer::start().await;
    let image = Image::busybox3(json!({}));
    tiny.serve_image(repo, "v1", &image, Flavor::OciManifest);
    let layer = &image.layers[0];
    tiny.set(
        &format!("/v2/{repo}/blobs/{}", layer.digest()),
        Reply::Stall("application/octet-stream".into(), layer.bytes.clone(), 1000),
    );
    let reference = format!("{}/{repo}:v1", tiny.host());
    (tiny, reference)
}

/// A client deadline that passes during a pull (critest's PullImage with a
/// one-millisecond timeout; here a stalled registry) ends the call with
/// DEADLINE_EXCEEDED, not tonic's CANCELLED; the pull stops and leaves
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_past_the_clients_deadline_ends_with_deadline_exceeded() {
    if !ready("a_pull_past_the_clients_deadline_ends_with_deadline_exceeded") {
        return;
    }
    let (_tiny, reference) = stalling_registry("late/app").await;
    let mut s = Server::start().await;
    for timeout in ["300m", "999u", "1m"] {
        let (code, message) = pull_with_grpc_timeout(&s.socket(), &reference, timeout).await;
        // 4: DEADLINE_EXCEEDED (1 would be CANCELLED).
        assert_eq!(code, "4", "grpc-timeout {timeout}: {message}");
    }
    wait_for(
        "the temporary directory to empty",
        Duration::from_secs(5),
        || tmp_entries(&s).is_empty(),
    )
    .await;
    assert!(
        list_images(&mut s.img).await.is_empty(),
        "the server answers"
    );
    assert_no_leaks(s.dir.path(), &[]);
}

/// `image_pull_progress_timeout`: a registry that stops sending half way
/// through a layer ends the pull after that long with DeadlineExceeded and a
/// message that says so; nothing is left in the store's temporary directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_pull_times_out_and_leaves_nothing() {
    if !ready("stalled_pull_times_out_and_leaves_nothing") {
        return;
    }
    let (_tiny, reference) = stalling_registry("slow/app").await;
    let mut s = start_server_with_config("image_pull_progress_timeout = \"1500ms\"\n").await;
    let t = std::time::Instant::now();
    let err = pull_ref(&mut s.img, &reference)
        .await
        .expect_err("a stalled pull fails");
    let took = t.elapsed();
    eprintln!(
        "stalled: {:?} after {took:?}: {}",
        err.code(),
        err.message()
    );
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());
    assert!(
        err.message().contains("no data received"),
        "{}",
        err.message()
    );
    assert!(took < Duration::from_secs(20), "{took:?}");
    wait_for(
        "the temporary directory to empty",
        Duration::from_secs(5),
        || tmp_entries(&s).is_empty(),
    )
    .await;
    assert!(list_images(&mut s.img).await.is_empty());
}

/// A PullImage whose client goes away stops the download (the registry sees
/// the connection close) and leaves no temporary file, unless another
/// PullImage of the same image still waits: then the one download goes on and
/// serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_pull_stops_its_download_unless_shared() {
    if !ready("cancelled_pull_stops_its_download_unless_shared") {
        return;
    }
    let tiny = TinyServer::start().await;
    let image = Image::busybox3(json!({}));
    tiny.serve_image("drip/app", "v1", &image, Flavor::OciManifest);
    let layer = &image.layers[0];
    let blob = format!("/v2/drip/app/blobs/{}", layer.digest());
    // About 4 s for the whole layer.
    let chunk = layer.bytes.len() / 40 + 1;
    tiny.set(
        &blob,
        Reply::Drip(
            "application/octet-stream".into(),
            layer.bytes.clone(),
            chunk,
            100,
        ),
    );
    let mut s = Server::start().await;
    let reference = format!("{}/drip/app:v1", tiny.host());

    // Alone: given up after 1 s.
    let r = tokio::time::timeout(Duration::from_secs(1), pull_ref(&mut s.img, &reference)).await;
    assert!(r.is_err(), "the pull should still run: {r:?}");
    wait_for(
        "the registry to see the download stop",
        Duration::from_secs(5),
        || tiny.aborted.lock().expect("aborted").contains(&blob),
    )
    .await;
    wait_for(
        "the temporary directory to empty",
        Duration::from_secs(5),
        || tmp_entries(&s).is_empty(),
    )
    .await;
    assert!(list_images(&mut s.img).await.is_empty());

    // Shared: the first caller leaves, the second gets the image from the same download.
    let gets_before = tiny
        .requests
        .lock()
        .expect("requests")
        .iter()
        .filter(|p| **p == blob)
        .count();
    let mut img2 = s.img.clone();
    let reference2 = reference.clone();
    let second = tokio::spawn(async move { pull_ref(&mut img2, &reference2).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first =
        tokio::time::timeout(Duration::from_millis(700), pull_ref(&mut s.img, &reference)).await;
    assert!(first.is_err(), "the first caller gives up");
    let id = second
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("shared pull: {e:?}\n{}", tail(&server_log(s.dir.path()))));
    assert_eq!(id, image.config_digest());
    let gets = tiny
        .requests
        .lock()
        .expect("requests")
        .iter()
        .filter(|p| **p == blob)
        .count();
    assert_eq!(gets - gets_before, 1, "one download for both callers");
    assert!(tmp_entries(&s).is_empty());
}
