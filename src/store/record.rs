//! Record files: each pod and container is a directory holding its record
//! (JSON, rewritten atomically on every change) and its CRI config
//! (`config.pb`, protobuf, written once).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Reads a persisted object: its record (`<name>` JSON) and its CRI config
/// (`config.pb`) from `dir`.
pub fn load<R: serde::de::DeserializeOwned, C: prost::Message + Default>(
    dir: &Path,
    name: &str,
) -> Result<(R, C)> {
    let rec = serde_json::from_slice(
        &std::fs::read(dir.join(name)).map_err(|e| Error::io(format!("read {name}"), e))?,
    )
    .map_err(|e| Error::Internal(format!("{name}: {e}")))?;
    let config = C::decode(
        std::fs::read(dir.join("config.pb"))
            .map_err(|e| Error::io("read config.pb", e))?
            .as_slice(),
    )
    .map_err(|e| Error::Internal(format!("config.pb: {e}")))?;
    Ok((rec, config))
}

/// Writes a record (`<name>` JSON in `dir`) atomically: a reader (or the next
/// server) sees the old record or the new one, never a torn one.
pub fn save<R: serde::Serialize>(dir: &Path, name: &str, rec: &R) -> Result<()> {
    let data = serde_json::to_vec_pretty(rec)
        .map_err(|e| Error::Internal(format!("encode {name}: {e}")))?;
    sycri_native::util::write_atomic(&dir.join(name), &data)
        .map_err(|e| Error::io(format!("write {name}"), e))
}

/// Writes the CRI config beside the record.
pub fn save_config<C: prost::Message>(dir: &Path, config: &C) -> Result<()> {
    sycri_native::util::write_atomic(&dir.join("config.pb"), &config.encode_to_vec())
        .map_err(|e| Error::io("write config.pb", e))
}

/// (name, path) of each subdirectory of `dir`.
pub fn list_dirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                v.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
    }
    v
}

/// Reads a file that may not exist.
pub fn read_optional(p: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

/// Removes the state directory `d` of an object whose record is the file
/// `record` in it: the record first, so that a removal cut short (a kill in
/// the middle of the tree) leaves a directory without a record, which the
/// next start removes, never a record whose other files are gone (an
/// unreadable object the start would have to skip and keep).
pub fn remove_record_dir(d: &Path, record: &str) -> Result<()> {
    match std::fs::remove_file(d.join(record)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("remove {}", d.join(record).display()), e)),
    }
    remove_dir(d)
}

/// Removes a directory tree; one that is not there is fine.
pub fn remove_dir(d: &Path) -> Result<()> {
    match std::fs::remove_dir_all(d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", d.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_cut_short_leaves_no_record() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path().join("obj");
        std::fs::create_dir_all(d.join("busy")).expect("mkdir");
        for f in ["a.json", "config.pb", "z.json"] {
            std::fs::write(d.join(f), b"x").expect("write");
        }
        // A mount inside makes the tree's removal fail part way, as a kill
        // would cut it short (root only: the test suite runs as root).
        let busy = d.join("busy");
        let mounted = nix::mount::mount(
            Some("tmpfs"),
            &busy,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .is_ok();
        if mounted {
            assert!(remove_record_dir(&d, "z.json").is_err());
            assert!(!d.join("z.json").exists(), "the record went first");
            nix::mount::umount(&busy).expect("umount");
        }
        remove_record_dir(&d, "z.json").expect("remove");
        assert!(!d.exists());
        remove_record_dir(&d, "z.json").expect("gone already: fine");
    }
}
