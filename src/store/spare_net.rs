//! The spare network namespaces a server keeps for its next pods: which are
//! ready, how many are being made, whether the server is stopping. Paths and
//! counts only; `service/spare_net.rs` makes and releases them (the policy and
//! the why are there).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Where the spares live, under the run dir.
pub const DIR: &str = "spare-net";

/// One spare: its directory, whose `ns/net` is the pinned namespace and whose
/// `sandbox.json` the helper that made it ran on.
#[derive(Debug)]
pub struct Spare {
    dir: PathBuf,
}

impl Spare {
    pub fn at(dir: PathBuf) -> Spare {
        Spare { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pinned network namespace.
    pub fn net(&self) -> PathBuf {
        self.ns_dir().join("net")
    }

    /// The directory the sandbox helper pins it in.
    pub fn ns_dir(&self) -> PathBuf {
        self.dir.join("ns")
    }

    /// The helper's spec file.
    pub fn spec_file(&self) -> PathBuf {
        self.dir.join("sandbox.json")
    }
}

#[derive(Default)]
struct State {
    ready: Vec<Spare>,
    making: usize,
    /// A pod has asked for one: from then on spares are kept.
    asked: bool,
    /// The server is stopping: no spare is kept any more.
    closed: bool,
}

/// The spares of one server, up to `want` of them.
pub struct SpareNets {
    dir: PathBuf,
    want: usize,
    state: Mutex<State>,
    /// Told when the last spare being made is done.
    idle: tokio::sync::Notify,
}

impl SpareNets {
    pub fn new(run_dir: &Path, want: usize) -> SpareNets {
        SpareNets {
            dir: run_dir.join(DIR),
            want,
            state: Mutex::default(),
            idle: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A ready spare, if there is one, for a pod that could use one.
    pub fn take(&self) -> Option<Spare> {
        let mut s = self.lock();
        s.asked = true;
        s.ready.pop()
    }

    /// How many more to make to have `want` ready or being made (none
    /// before a pod asked for one, none once stopping); they count as being
    /// made from now on.
    pub fn start_making(&self) -> usize {
        let mut s = self.lock();
        if s.closed || !s.asked {
            return 0;
        }
        let missing = self.want.saturating_sub(s.ready.len() + s.making);
        s.making += missing;
        missing
    }

    /// A spare made: kept (and no longer counted as being made, under the
    /// same lock, so that a pod's `start_making` sees it one way or the
    /// other), or handed back to be released when the server is stopping
    /// (still counted until [`Self::done_making`]).
    pub fn made(&self, spare: Spare) -> Option<Spare> {
        let mut s = self.lock();
        if s.closed {
            return Some(spare);
        }
        s.ready.push(spare);
        self.one_less(&mut s);
        None
    }

    /// One that [`Self::start_making`] counted failed, or was handed back
    /// by [`Self::made`] and released.
    pub fn done_making(&self) {
        let mut s = self.lock();
        self.one_less(&mut s);
    }

    fn one_less(&self, s: &mut State) {
        s.making = s.making.saturating_sub(1);
        if s.making == 0 {
            self.idle.notify_waiters();
        }
    }

    /// The server is stopping: no spare is kept from now on; those that
    /// were ready, to release.
    pub fn close(&self) -> Vec<Spare> {
        let mut s = self.lock();
        s.closed = true;
        std::mem::take(&mut s.ready)
    }

    /// Waits (at most `limit`) until none is being made.
    pub async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                // Registered before the check: a notice between the two is not lost.
                let idle = self.idle.notified();
                if self.lock().making == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }

    /// How many are ready.
    #[cfg(test)]
    pub fn ready(&self) -> usize {
        self.lock().ready.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_want_at_most_and_none_once_closed() {
        let s = SpareNets::new(Path::new("/run/x"), 2);
        assert_eq!(s.start_making(), 0, "none before a pod asks");
        assert!(s.take().is_none());
        assert_eq!(s.start_making(), 2);
        assert_eq!(s.start_making(), 0, "two are being made");
        assert!(s.made(Spare::at("/run/x/spare-net/a".into())).is_none());
        assert_eq!(s.ready(), 1);
        assert_eq!(s.start_making(), 0, "one ready, one being made");
        let a = s.take().expect("ready");
        assert_eq!(a.net(), Path::new("/run/x/spare-net/a/ns/net"));
        assert_eq!(s.start_making(), 1, "taking one asks for the next");
        assert!(s.made(Spare::at("/run/x/spare-net/b".into())).is_none());
        let left = s.close();
        assert_eq!(left.len(), 1);
        assert_eq!(s.start_making(), 0, "none once closed");
        let late = s.made(Spare::at("/run/x/spare-net/c".into()));
        assert!(late.is_some(), "made after the close: handed back");
        assert_eq!(s.lock().making, 1, "counted until it is released");
        s.done_making();
        assert_eq!((s.ready(), s.lock().making), (0, 0));
    }
}
