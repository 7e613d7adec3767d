//! Resolves user and group names against an image's own /etc/passwd and /etc/group.

use crate::error::{Error, Result};
use std::path::Path;

/// A resolved identity for a container process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub name: Option<String>,
}

fn read_in_root(root: &Path, file: &str) -> String {
    sycri_native::resolve::resolve_in_root(root, Path::new(file))
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// (name, uid, gid) entries of passwd-format text.
fn passwd_entries(text: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

/// (name, gid, members) entries of group-format text.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `user[:group]` (names or numbers) inside the image at `root`.
/// A numeric uid missing from passwd is fine (gid 0, as Docker does); an unknown
/// name is an error.
pub fn resolve(root: &Path, spec: &str) -> Result<Identity> {
    let passwd = read_in_root(root, "/etc/passwd");
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let mut id = Identity::default();
    if !user.is_empty() {
        if let Ok(uid) = user.parse::<u32>() {
            id.uid = uid;
            if let Some((name, _, gid)) = passwd_entries(&passwd).find(|e| e.1 == uid) {
                id.gid = gid;
                id.name = Some(name.to_string());
            }
        } else {
            let (name, uid, gid) =
                passwd_entries(&passwd)
                    .find(|e| e.0 == user)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "user {user:?} is not in the image's /etc/passwd"
                        ))
                    })?;
            id.uid = uid;
            id.gid = gid;
            id.name = Some(name.to_string());
        }
    }
    let groups = read_in_root(root, "/etc/group");
    if let Some(g) = group.filter(|g| !g.is_empty()) {
        id.gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(&groups)
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("group {g:?} is not in the image's /etc/group"))
                })?,
        };
    }
    if let Some(name) = &id.name {
        id.additional_gids = group_entries(&groups)
            .filter(|e| e.2.iter().any(|m| m == name) && e.1 != id.gid)
            .map(|e| e.1)
            .collect();
    }
    Ok(id)
}

/// The user name of `uid` in the image, if any.
pub fn name_of(root: &Path, uid: u32) -> Option<String> {
    let passwd = read_in_root(root, "/etc/passwd");
    let name = passwd_entries(&passwd)
        .find(|e| e.1 == uid)
        .map(|e| e.0.to_string());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("etc")).expect("mkdir");
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .expect("write");
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nappgrp:x:1001:\nwheel:x:10:app,other\naudio:x:29:app\n",
        )
        .expect("write");
        d
    }

    #[test]
    fn resolves_names_numbers_and_groups() {
        let d = image();
        let r = d.path();
        let app = resolve(r, "app").expect("app");
        assert_eq!((app.uid, app.gid), (1000, 1001));
        assert_eq!(app.additional_gids, vec![10, 29]);
        assert_eq!(resolve(r, "1000:wheel").expect("n").gid, 10);
        let unknown_uid = resolve(r, "4242").expect("numeric");
        assert_eq!((unknown_uid.uid, unknown_uid.gid), (4242, 0));
        assert_eq!(resolve(r, "0:7").expect("n").gid, 7);
        assert!(matches!(
            resolve(r, "nobody"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            resolve(r, "app:nogroup"),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(name_of(r, 1000).as_deref(), Some("app"));
    }
}
