//! The image store on its own (no server): images a pull wrote without fsync
//! are synced afterwards, and at open those a crash cut short are dropped
//! while whole ones are kept.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use sycri::convert::{squashfs_to_sif, ConvertOptions, Converter};
use sycri::images::{ImageRecord, ImageStore};

/// A SIF of one small tar layer, written as a pull writes it (unsynced),
/// and the CRC squashfs_to_sif gave.
fn converted_sif(dir: &Path) -> (PathBuf, u32) {
    let text = "one";
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(text.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "hello.txt", text.as_bytes())
        .expect("tar");
    let layer = b.into_inner().expect("tar");
    let sqfs = dir.join("rootfs.squashfs");
    let mut c = Converter::new(&sqfs, 1, &ConvertOptions::default()).expect("converter");
    c.add_layer("application/vnd.oci.image.layer.v1.tar", &layer[..])
        .expect("layer");
    c.finish().expect("finish");
    let sif = dir.join("image.sif");
    let crc = squashfs_to_sif(&sqfs, br#"{"Cmd":["sh"]}"#, &sif).expect("sif");
    (sif, crc)
}

const ID: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const TAG: &str = "docker.io/x/y:1";

/// The records of the index as saved on disk.
fn saved(storage: &Path) -> Vec<serde_json::Value> {
    let b = fs::read(storage.join("images/index.json")).expect("index");
    let v: serde_json::Value = serde_json::from_slice(&b).expect("index json");
    v["images"].as_array().expect("images").clone()
}

/// A fresh store under `dir`: its storage and run directories and the store.
fn open_store(dir: &Path) -> (PathBuf, PathBuf, ImageStore) {
    let (storage, run) = (dir.join("s"), dir.join("r"));
    let store = ImageStore::open(&storage, &run).expect("open");
    (storage, run, store)
}

/// Adds a SIF made in `dir` as a pull adds it (unsynced, with its CRC and
/// `state` as its first-layer state); the SIF's path, its CRC and the
/// outcome.
fn add_pulled(
    store: &ImageStore,
    dir: &Path,
    state: Option<(String, Vec<u8>)>,
) -> (PathBuf, u32, sycri::error::Result<ImageRecord>) {
    let (sif, crc) = converted_sif(dir);
    let r = store.add_converted(&sif, ID, Some(TAG.into()), None, state, Some(crc));
    (sif, crc, r)
}

fn base_of(store: &ImageStore, rec: &ImageRecord) -> PathBuf {
    store.blob_path(rec).with_extension("base")
}

#[test]
fn a_pulled_image_is_synced_later_and_then_says_so() {
    let t = tempfile::tempdir().expect("tempdir");
    let (storage, _, store) = open_store(t.path());
    let (_, crc, rec) = add_pulled(&store, t.path(), None);
    assert_eq!(rec.expect("add").unsynced_crc, Some(crc));
    assert_eq!(saved(&storage)[0]["unsynced_crc"], serde_json::json!(crc));
    store.sync(ID).expect("sync");
    assert!(saved(&storage)[0].get("unsynced_crc").is_none());
    assert_eq!(store.get(ID).expect("stored").unsynced_crc, None);
    // Again, and for an image that is not there: nothing to do.
    store.sync(ID).expect("sync twice");
    store.sync("sha256:2222").expect("sync of nothing");
}

#[test]
fn an_unsynced_image_that_is_whole_is_kept_at_open() {
    let t = tempfile::tempdir().expect("tempdir");
    let (storage, run, store) = open_store(t.path());
    add_pulled(&store, t.path(), None).2.expect("add");
    drop(store);
    let store = ImageStore::open(&storage, &run).expect("reopen");
    let rec = store.get(TAG).expect("kept");
    assert_eq!(rec.unsynced_crc, None, "checked and synced at open");
    assert!(store.blob_path(&rec).exists());
    assert!(saved(&storage)[0].get("unsynced_crc").is_none());
}

#[test]
fn an_unsynced_image_a_crash_damaged_is_dropped_at_open() {
    type Damage = fn(&Path, &ImageRecord);
    let cases: [(&str, Damage); 4] = [
        ("gone", |p, _| fs::remove_file(p).expect("rm")),
        ("empty", |p, _| fs::write(p, b"").expect("truncate")),
        ("cut short", |p, r| {
            let f = fs::OpenOptions::new().write(true).open(p).expect("open");
            f.set_len(r.size - 1).expect("truncate");
        }),
        ("a byte of the root filesystem changed", |p, r| {
            use std::io::{Seek, SeekFrom};
            let at = r.rootfs_offset + r.rootfs_size / 2;
            let mut b = fs::read(p).expect("read");
            b[usize::try_from(at).expect("offset")] ^= 0xff;
            let mut f = fs::OpenOptions::new().write(true).open(p).expect("open");
            f.seek(SeekFrom::Start(0)).expect("seek");
            f.write_all(&b).expect("write");
        }),
    ];
    for (what, damage) in cases {
        let t = tempfile::tempdir().expect("tempdir");
        let (storage, run, store) = open_store(t.path());
        let state = Some(("sha256:layer".into(), b"state".to_vec()));
        let rec = add_pulled(&store, t.path(), state).2.expect("add");
        let path = store.blob_path(&rec);
        let base = base_of(&store, &rec);
        assert!(base.exists(), "{what}: the first layer's state is written");
        drop(store);
        damage(&path, &rec);
        let store = ImageStore::open(&storage, &run).expect("reopen");
        assert!(store.get(TAG).is_none(), "{what}: record dropped");
        assert!(store.list().is_empty(), "{what}");
        assert!(!path.exists(), "{what}: file removed");
        assert!(!base.exists(), "{what}: first layer's state removed");
        assert!(
            saved(&storage).is_empty(),
            "{what}: gone from the saved index too"
        );
    }
}

#[test]
fn an_image_that_cannot_be_stored_leaves_no_file_behind() {
    let t = tempfile::tempdir().expect("tempdir");
    let (storage, _, store) = open_store(t.path());
    // Its place in the store is taken by a directory: the rename fails.
    let blobs = storage.join("images/sha256");
    let hex = ID.trim_start_matches("sha256:");
    fs::create_dir_all(blobs.join(format!("{hex}.sif/in-the-way"))).expect("mkdir");
    let state = Some(("sha256:layer".into(), b"state".to_vec()));
    let (sif, _, r) = add_pulled(&store, t.path(), state);
    r.expect_err("cannot be stored");
    assert!(!sif.exists(), "the new SIF is removed");
    let left: Vec<String> = fs::read_dir(&blobs)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        [format!("{hex}.sif")],
        "no first-layer state or temporary file"
    );
    assert!(store.list().is_empty());
}
