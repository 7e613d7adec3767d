//! A group's cgroups, one directory in each hierarchy that carries a
//! controller for it, and the one way sycri writes a cgroup file: the base
//! that resources.rs (limits) and stats.rs (usage) stand on.

use crate::failure::Failure;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A container's (or any group's) cgroups: the v2 one and the v1 ones of the
/// controllers v2 lacks on this host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Cgroups {
    #[serde(default)]
    pub v2: Option<PathBuf>,
    /// (controller, directory), e.g. ("memory", /sys/fs/cgroup/memory/sycri/<id>).
    #[serde(default)]
    pub v1: Vec<(String, PathBuf)>,
}

impl Cgroups {
    /// The directory that carries `controller`: its v1 cgroup, else the v2 one.
    pub fn dir_for(&self, controller: &str) -> Option<(&Path, bool)> {
        match self.v1.iter().find(|(c, _)| c == controller) {
            Some((_, d)) => Some((d.as_path(), false)),
            None => self.v2.as_deref().map(|d| (d, true)),
        }
    }

    /// Every directory, v2 first.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.v2
            .iter()
            .map(PathBuf::as_path)
            .chain(self.v1.iter().map(|(_, d)| d.as_path()))
    }
}

/// Writes one value to an existing cgroup file (never creates one: a missing
/// file means a missing controller).
pub(super) fn write_file(path: &Path, value: &str) -> Result<(), Failure> {
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| Failure::internal(format!("write {value:?} to {}", path.display()), e))
}
