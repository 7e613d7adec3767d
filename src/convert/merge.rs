//! The merged view of all layers, built entry by entry as the layers stream by,
//! and the plan of the image: every directory with its final attributes, and
//! every inode that still has names, under those names.
//!
//! Semantics follow the OCI image spec's changesets as containerd applies them:
//! - an entry replaces what is at its path; a directory over a directory only
//!   replaces the directory's metadata and keeps its contents, anything else
//!   removes the old subtree first;
//! - `.wh.<name>` removes `<name>` and everything below it;
//! - `.wh..wh..opq` in a directory removes everything below it that came from
//!   lower layers (entries of the same layer that came before it stay);
//! - other `.wh..wh.*` names (aufs metadata) are ignored;
//! - missing parent directories are created (0755, root, mtime 0); a parent that
//!   is not a directory (file, symlink) is an error: symlinks are never followed.
//!
//! Hard links: every regular file, symlink and FIFO entry is an inode; a hard link
//! entry adds a name to the inode its target has *at that point* (the target must
//! exist and not be a directory). After all layers, each inode that still has names
//! is written once, at its original entry, under its first name (byte order); its
//! other names become hard links to that name. So a hard link keeps the content it
//! was created with even when a later layer replaces or deletes the target's path,
//! as on an overlay mount.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::error::ConvertError;
use super::tar_read::{Entry, Kind};

/// Metadata of a directory (kept in memory until pass 2 writes all directories
/// first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DirMeta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl DirMeta {
    /// Attributes of directories no layer declares.
    pub fn implicit() -> Self {
        DirMeta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        }
    }

    fn of(e: Entry) -> Self {
        DirMeta {
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            xattrs: e.xattrs,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum NodeKind {
    Dir(Box<DirMeta>),
    /// Index into `Merger::inodes`.
    Inode(u64),
}

#[derive(Debug, Serialize, Deserialize)]
struct Node {
    /// Layer that last wrote this path.
    layer: usize,
    kind: NodeKind,
}

/// A file, symlink or FIFO entry: its header (without the path) and what the
/// caller keeps with it (where its data went).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct InodeInfo<P> {
    pub entry: Entry,
    pub data: P,
}

/// The merged image.
#[derive(Debug)]
pub(crate) struct Plan<P> {
    pub root: DirMeta,
    /// All directories but the root, parents before children.
    pub dirs: Vec<(Vec<u8>, DirMeta)>,
    /// Inodes that still have names, with their names in byte order.
    pub inodes: Vec<(Vec<Vec<u8>>, InodeInfo<P>)>,
    /// Inodes that lost all their names (replaced or whited out later).
    pub orphans: Vec<InodeInfo<P>>,
    /// Entries the image will have (root, directories and all names).
    pub entries: u64,
}

pub(crate) struct Merger<P> {
    tree: BTreeMap<Vec<u8>, Node>,
    root: DirMeta,
    inodes: Vec<InodeInfo<P>>,
    entries: u64,
    max_entries: u64,
}

/// Whether an entry is a whiteout (`.wh.<name>`, opaque markers and aufs metadata).
pub(crate) fn is_whiteout(path: &[u8]) -> bool {
    split(path).1.starts_with(b".wh.")
}

/// The parent directory ("" for the root) and the last component.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// The key range of everything strictly below `dir` ("" is the root).
fn below(dir: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    if dir.is_empty() {
        return (Vec::new(), None);
    }
    let mut lo = dir.to_vec();
    lo.push(b'/');
    let mut hi = dir.to_vec();
    hi.push(b'/' + 1);
    (lo, Some(hi))
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// A merger's state between two layers, as [`Merger::save`] writes it.
#[derive(Serialize)]
struct SavedRef<'a, P> {
    tree: Vec<(&'a Vec<u8>, &'a Node)>,
    root: &'a DirMeta,
    inodes: &'a [InodeInfo<P>],
    entries: u64,
}

#[derive(Deserialize)]
struct Saved<P> {
    tree: Vec<(Vec<u8>, Node)>,
    root: DirMeta,
    inodes: Vec<InodeInfo<P>>,
    entries: u64,
}

impl<P: Serialize + for<'de> Deserialize<'de>> Merger<P> {
    /// The merged state so far, to go on from later with [`Merger::restore`].
    pub fn save(&self) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&SavedRef {
            tree: self.tree.iter().collect(),
            root: &self.root,
            inodes: &self.inodes,
            entries: self.entries,
        })
    }

    /// A merger that goes on from a saved state; `check` vets each inode's
    /// payload (it comes from a file). Every inode a path names must exist.
    pub fn restore(
        bytes: &[u8],
        max_entries: u64,
        check: impl Fn(&P) -> bool,
    ) -> Result<Self, String> {
        let s: Saved<P> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let n = s.inodes.len() as u64;
        let bad_node = s.tree.iter().any(|(_, node)| {
            node.layer != 0
                || match node.kind {
                    NodeKind::Inode(i) => i >= n,
                    NodeKind::Dir(_) => false,
                }
        });
        let kinds = s
            .inodes
            .iter()
            .all(|i| matches!(i.entry.kind, Kind::Regular | Kind::Symlink | Kind::Fifo));
        if bad_node || !kinds || s.entries > max_entries || !s.inodes.iter().all(|i| check(&i.data))
        {
            return Err("the saved layer names inodes or data it does not have".into());
        }
        let tree: BTreeMap<Vec<u8>, Node> = s.tree.into_iter().collect();
        // Paths as the tar reader makes them, under directories that exist.
        for path in tree.keys() {
            let normal = !path.is_empty()
                && path
                    .split(|&b| b == b'/')
                    .all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0));
            let (parent, _) = split(path);
            let parent_ok = parent.is_empty()
                || matches!(
                    tree.get(parent),
                    Some(Node {
                        kind: NodeKind::Dir(_),
                        ..
                    })
                );
            if !normal || !parent_ok {
                return Err(format!(
                    "the saved layer has a path {:?} no layer can have",
                    String::from_utf8_lossy(path)
                ));
            }
        }
        Ok(Merger {
            tree,
            root: s.root,
            inodes: s.inodes,
            entries: s.entries,
            max_entries,
        })
    }
}

impl<P> Merger<P> {
    pub fn new(max_entries: u64) -> Self {
        Merger {
            tree: BTreeMap::new(),
            root: DirMeta::implicit(),
            inodes: Vec::new(),
            entries: 0,
            max_entries,
        }
    }

    fn keys_below(&self, dir: &[u8]) -> Vec<Vec<u8>> {
        let (lo, hi) = below(dir);
        match hi {
            Some(hi) => self.tree.range(lo..hi).map(|(k, _)| k.clone()).collect(),
            None => self.tree.keys().cloned().collect(),
        }
    }

    /// Removes `path` and everything below it.
    fn remove_subtree(&mut self, path: &[u8]) {
        if self.tree.remove(path).is_some() {
            for k in self.keys_below(path) {
                self.tree.remove(&k);
            }
        }
    }

    /// Makes sure `parent` (the directory of `entry`) and its ancestors exist as
    /// directories, creating missing ones.
    fn ensure_dir(
        &mut self,
        layer: usize,
        parent: &[u8],
        entry: &[u8],
    ) -> Result<(), ConvertError> {
        let mut missing: Vec<&[u8]> = Vec::new();
        let mut dir = parent;
        while !dir.is_empty() {
            match self.tree.get(dir) {
                Some(Node {
                    kind: NodeKind::Dir(_),
                    ..
                }) => break,
                Some(_) => {
                    return Err(ConvertError::InvalidLayer {
                        layer,
                        reason: format!(
                            "{} is inside {}, which is not a directory",
                            lossy(entry),
                            lossy(dir)
                        ),
                    })
                }
                None => {
                    missing.push(dir);
                    dir = split(dir).0;
                }
            }
        }
        for d in missing.into_iter().rev() {
            self.tree.insert(
                d.to_vec(),
                Node {
                    layer,
                    kind: NodeKind::Dir(Box::new(DirMeta::implicit())),
                },
            );
        }
        Ok(())
    }

    /// Applies the next entry of layer `layer`; `data` stays with the inode a
    /// file, symlink or FIFO entry makes.
    pub fn add(&mut self, layer: usize, mut e: Entry, data: P) -> Result<(), ConvertError> {
        self.entries += 1;
        if self.entries > self.max_entries {
            return Err(ConvertError::TooLarge {
                what: "number of entries in the layers",
                limit: self.max_entries,
            });
        }
        let Some(path) = e.path.take() else {
            // The reader only lets directories be the root.
            self.root = DirMeta::of(e);
            return Ok(());
        };
        let (parent, name) = split(&path);
        if let Some(target) = name.strip_prefix(b".wh.") {
            return self.whiteout(layer, &path, parent, target);
        }
        self.ensure_dir(layer, parent, &path)?;
        let kind = match e.kind {
            Kind::Dir => {
                if let Some(Node {
                    layer: l,
                    kind: NodeKind::Dir(meta),
                }) = self.tree.get_mut(&path)
                {
                    *l = layer;
                    **meta = DirMeta::of(e);
                    return Ok(());
                }
                NodeKind::Dir(Box::new(DirMeta::of(e)))
            }
            Kind::Hardlink => {
                let target = &e.link;
                if *target == path {
                    return Err(ConvertError::InvalidLayer {
                        layer,
                        reason: format!("hard link {} points to itself", lossy(&path)),
                    });
                }
                match self.tree.get(target) {
                    Some(Node {
                        kind: NodeKind::Inode(id),
                        ..
                    }) => NodeKind::Inode(*id),
                    Some(_) => {
                        return Err(ConvertError::InvalidLayer {
                            layer,
                            reason: format!(
                                "hard link {} points to directory {}",
                                lossy(&path),
                                lossy(target)
                            ),
                        })
                    }
                    None => {
                        return Err(ConvertError::InvalidLayer {
                            layer,
                            reason: format!(
                                "hard link {} points to {}, which does not exist",
                                lossy(&path),
                                lossy(target)
                            ),
                        })
                    }
                }
            }
            Kind::Regular | Kind::Symlink | Kind::Fifo => {
                let id = self.inodes.len() as u64;
                self.inodes.push(InodeInfo { entry: e, data });
                NodeKind::Inode(id)
            }
        };
        self.remove_subtree(&path);
        self.tree.insert(path, Node { layer, kind });
        Ok(())
    }

    fn whiteout(
        &mut self,
        layer: usize,
        path: &[u8],
        parent: &[u8],
        target: &[u8],
    ) -> Result<(), ConvertError> {
        if target == b".wh..opq" {
            // Opaque directory: drop what lower layers put below `parent`. A lower
            // node is removed with its whole subtree.
            let parent_is_dir = parent.is_empty()
                || matches!(
                    self.tree.get(parent),
                    Some(Node {
                        kind: NodeKind::Dir(_),
                        ..
                    })
                );
            if parent_is_dir {
                let (lo, hi) = below(parent);
                let lower: Vec<Vec<u8>> = match hi {
                    Some(hi) => self
                        .tree
                        .range(lo..hi)
                        .filter(|(_, n)| n.layer < layer)
                        .map(|(k, _)| k.clone())
                        .collect(),
                    None => self
                        .tree
                        .iter()
                        .filter(|(_, n)| n.layer < layer)
                        .map(|(k, _)| k.clone())
                        .collect(),
                };
                for k in lower {
                    self.remove_subtree(&k);
                }
            }
            return Ok(());
        }
        if target.starts_with(b".wh.") {
            tracing::debug!(layer, path = %lossy(path), "ignoring aufs metadata entry");
            return Ok(());
        }
        match target {
            b"" => Err(ConvertError::InvalidLayer {
                layer,
                reason: format!("whiteout {} names no file", lossy(path)),
            }),
            b"." | b".." => Err(ConvertError::Unsafe {
                layer,
                path: lossy(path),
                reason: "whiteout of \".\" or \"..\"".into(),
            }),
            _ => {
                let mut victim = parent.to_vec();
                if !victim.is_empty() {
                    victim.push(b'/');
                }
                victim.extend_from_slice(target);
                self.remove_subtree(&victim);
                Ok(())
            }
        }
    }

    /// The merged image.
    pub fn plan(self) -> Plan<P> {
        let mut dirs = Vec::new();
        let mut names: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        for (path, node) in self.tree {
            match node.kind {
                NodeKind::Dir(meta) => dirs.push((path, *meta)),
                // Keys come in order, so each name list is sorted.
                NodeKind::Inode(id) => names.entry(id).or_default().push(path),
            }
        }
        let mut entries = 1 + dirs.len() as u64;
        let mut inodes = Vec::with_capacity(names.len());
        let mut orphans = Vec::new();
        for (id, info) in self.inodes.into_iter().enumerate() {
            match names.remove(&(id as u64)) {
                Some(n) => {
                    entries += n.len() as u64;
                    inodes.push((n, info));
                }
                None => orphans.push(info),
            }
        }
        Plan {
            root: self.root,
            dirs,
            inodes,
            orphans,
            entries,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind, link: &str) -> Entry {
        Entry {
            path: Some(path.as_bytes().to_vec()),
            kind,
            link: link.as_bytes().to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            xattrs: Vec::new(),
        }
    }

    fn file(p: &str) -> Entry {
        entry(p, Kind::Regular, "")
    }

    fn dir(p: &str) -> Entry {
        entry(p, Kind::Dir, "")
    }

    /// The payload of each inode is where it came from: (layer, entry index).
    fn apply(layers: &[Vec<Entry>]) -> Result<Plan<(usize, u64)>, ConvertError> {
        let mut m = Merger::new(1000);
        for (l, entries) in layers.iter().enumerate() {
            for (i, e) in entries.iter().enumerate() {
                let e = Entry {
                    path: e.path.clone(),
                    link: e.link.clone(),
                    xattrs: e.xattrs.clone(),
                    ..*e
                };
                m.add(l, e, (l, i as u64))?;
            }
        }
        Ok(m.plan())
    }

    /// All final names with (layer, index) of their content; hard links as "=first".
    fn listing(p: &Plan<(usize, u64)>) -> Vec<String> {
        let mut out: Vec<String> = p
            .dirs
            .iter()
            .map(|(d, _)| format!("{}/", lossy(d)))
            .collect();
        for (names, info) in &p.inodes {
            let (layer, index) = info.data;
            out.push(format!("{} @{layer}.{index}", lossy(&names[0])));
            for n in &names[1..] {
                out.push(format!("{} ={}", lossy(n), lossy(&names[0])));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn overrides_and_whiteouts() {
        let p = apply(&[
            vec![
                dir("a"),
                file("a/x"),
                file("a/y"),
                dir("o"),
                file("o/old"),
                file("k"),
            ],
            vec![
                file("a/.wh.x"),
                dir("o"),
                file("o/.wh..wh..opq"),
                file("o/new"),
                file("k"),
                file("implied/deep/f"),
            ],
        ])
        .expect("merge");
        assert_eq!(
            listing(&p),
            vec![
                "a/",
                "a/y @0.2",
                "implied/",
                "implied/deep/",
                "implied/deep/f @1.5",
                "k @1.4",
                "o/",
                "o/new @1.3",
            ]
        );
        assert_eq!(p.entries, 1 + 4 + 4);
    }

    #[test]
    fn opaque_keeps_same_layer_entries_before_it() {
        let p = apply(&[
            vec![dir("d"), file("d/lower"), dir("d/sub"), file("d/sub/x")],
            vec![file("d/mine"), dir("d/sub"), file("d/.wh..wh..opq")],
        ])
        .expect("merge");
        assert_eq!(listing(&p), vec!["d/", "d/mine @1.0", "d/sub/"]);
    }

    #[test]
    fn replacing_a_directory_drops_its_contents() {
        let p = apply(&[vec![dir("d"), file("d/x")], vec![file("d")]]).expect("merge");
        assert_eq!(listing(&p), vec!["d @1.0"]);
        let p = apply(&[vec![dir("d"), file("d/x")], vec![dir("d")]]).expect("merge");
        assert_eq!(listing(&p), vec!["d/", "d/x @0.1"]);
    }

    #[test]
    fn hard_links_keep_their_inode() {
        // The target is replaced later: the link keeps the old content.
        let p = apply(&[
            vec![
                file("a"),
                entry("b", Kind::Hardlink, "a"),
                entry("c", Kind::Hardlink, "b"),
            ],
            vec![file("a")],
        ])
        .expect("merge");
        assert_eq!(listing(&p), vec!["a @1.0", "b @0.0", "c =b"]);
        // The target is deleted later.
        let p = apply(&[
            vec![file("a"), entry("b", Kind::Hardlink, "a")],
            vec![file(".wh.a")],
        ])
        .expect("merge");
        assert_eq!(listing(&p), vec!["b @0.0"]);
        // Link across layers.
        let p = apply(&[vec![file("a")], vec![entry("b", Kind::Hardlink, "a")]]).expect("merge");
        assert_eq!(listing(&p), vec!["a @0.0", "b =a"]);
    }

    #[test]
    fn bad_hard_links() {
        let missing = apply(&[vec![entry("b", Kind::Hardlink, "nope")]]);
        assert!(matches!(missing, Err(ConvertError::InvalidLayer { .. })));
        let to_dir = apply(&[vec![dir("d"), entry("b", Kind::Hardlink, "d")]]);
        assert!(matches!(to_dir, Err(ConvertError::InvalidLayer { .. })));
        let itself = apply(&[vec![file("b"), entry("b", Kind::Hardlink, "b")]]);
        assert!(matches!(itself, Err(ConvertError::InvalidLayer { .. })));
        // The target was whited out before the link.
        let gone = apply(&[
            vec![file("a")],
            vec![file(".wh.a"), entry("b", Kind::Hardlink, "a")],
        ]);
        assert!(matches!(gone, Err(ConvertError::InvalidLayer { .. })));
    }

    #[test]
    fn parents_must_be_directories() {
        let r = apply(&[vec![entry("l", Kind::Symlink, "/etc"), file("l/passwd")]]);
        assert!(matches!(r, Err(ConvertError::InvalidLayer { .. })));
        let r = apply(&[vec![file("f"), file("f/x")]]);
        assert!(matches!(r, Err(ConvertError::InvalidLayer { .. })));
    }

    #[test]
    fn whiteout_names() {
        let r = apply(&[vec![file("d/.wh...")]]);
        assert!(matches!(r, Err(ConvertError::Unsafe { .. })));
        let r = apply(&[vec![file(".wh.")]]);
        assert!(matches!(r, Err(ConvertError::InvalidLayer { .. })));
        let p = apply(&[vec![file(".wh..wh.plnk"), file(".wh.nothing")]]).expect("merge");
        assert!(listing(&p).is_empty());
    }

    #[test]
    fn root_opaque_and_entry_limit() {
        let p = apply(&[
            vec![file("a"), dir("b")],
            vec![file(".wh..wh..opq"), file("c")],
        ])
        .expect("merge");
        assert_eq!(listing(&p), vec!["c @1.1"]);
        let mut m = Merger::new(2);
        m.add(0, file("a"), (0, 0)).expect("1");
        m.add(0, file("b"), (0, 1)).expect("2");
        assert!(matches!(
            m.add(0, file("c"), (0, 2)),
            Err(ConvertError::TooLarge { .. })
        ));
    }
}
