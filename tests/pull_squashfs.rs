//! PullImage of a SIF whose root file system does not fit its partition (the
//! partition's size cut in the descriptor) is refused at once, with
//! INVALID_ARGUMENT and a message that says why, and nothing is stored; before,
//! such an image was accepted and failed only at CreateContainer, as an
//! internal mount error.

mod common;

use common::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use sycri_native::sif::{SifImage, DESCRIPTOR_SIZE};
use tonic::Code;

/// Sets the size of the primary partition of the SIF at `path` to `size` in
/// its descriptor (the data size, an i64 at byte 25); returns the old size.
fn set_partition_size(path: &Path, size: u64) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let img = SifImage::parse(&mut f).expect("parse");
    let d = img.primary_partition().expect("primary").clone();
    for slot in 0..img.header.total_descriptors {
        let at = img.header.descriptor_offset + slot * DESCRIPTOR_SIZE as u64;
        let mut id = [0u8; 4];
        f.seek(SeekFrom::Start(at + 5)).expect("seek");
        f.read_exact(&mut id).expect("read");
        if u32::from_le_bytes(id) == d.id {
            f.seek(SeekFrom::Start(at + 25)).expect("seek");
            f.write_all(&(size as i64).to_le_bytes()).expect("write");
            return d.size;
        }
    }
    panic!("no descriptor for partition {}", d.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_file_system_cut_short_is_refused_at_pull() {
    let Some(sif) = root_busybox_sif("a_root_file_system_cut_short_is_refused_at_pull") else {
        return;
    };
    let mut s = Server::start().await;
    let shrunk = s.dir.path().join("shrunk.sif");
    std::fs::copy(&sif, &shrunk).expect("copy fixture");
    let (img, _) = SifImage::open(&shrunk).expect("open");
    let full = img.primary_partition().expect("primary").size;
    // A quarter of the file system gone: the SIF itself still parses.
    let cut = full - full / 4;
    assert_eq!(set_partition_size(&shrunk, cut), full);
    SifImage::open(&shrunk).expect("the SIF layout is still valid");
    let images = s.storage_dir().join("images");
    let before = walk(&images);

    let err = pull_ref(&mut s.img, &shrunk.to_string_lossy())
        .await
        .expect_err("a cut-short root file system is refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let msg = err.message();
    assert!(
        msg.contains(&shrunk.display().to_string())
            && msg.contains("cannot be mounted")
            && msg.contains(&format!("its partition has only {cut}")),
        "{msg}"
    );
    // Nothing was stored, half-copied or mounted.
    assert!(list_images(&mut s.img).await.is_empty());
    assert!(image_blobs(&s).is_empty(), "{:?}", image_blobs(&s));
    assert_eq!(walk(&images), before, "the store is as it was");
    assert!(mounts_under(s.dir.path()).is_empty());
    assert!(loops_under(s.dir.path()).is_empty());

    // The same bytes with the partition's size restored pull and run: only
    // the size made the difference.
    set_partition_size(&shrunk, full);
    let image = pull_ref(&mut s.img, &shrunk.to_string_lossy())
        .await
        .expect("the intact copy pulls");
    assert_eq!(list_images(&mut s.img).await.len(), 1);
    let pod_cfg = pod_config("squashfs", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let c = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("ok", &image, &["true"]),
    )
    .await
    .expect("create from the intact copy");
    start(&mut s.rt, &c).await.expect("start");
    assert_serving(&mut s.rt, "the refused pull").await;
}

/// Every file and directory below `dir`, as sorted strings.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.display().to_string());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out.sort();
    out
}
