//! The spare network namespaces a server keeps for its next pods: which are
//! ready, how many are being made, whether the server is stopping. Paths,
//! counts and the attachment a spare was given ahead; `service/spare_net.rs`
//! makes and releases them (the policy and the why are there).

use crate::cni::Attachment;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where the spares live, under the run dir.
pub const DIR: &str = "spare-net";

/// One spare: its directory, whose `ns/net` is the pinned namespace and whose
/// `sandbox.json` the helper that made it ran on; and, for one attached to
/// the network ahead, the attachment (kept in `record_dir`, under the state
/// dir, so that its DEL is not lost with the run dir at a reboot).
#[derive(Debug)]
pub struct Spare {
    dir: PathBuf,
    record_dir: PathBuf,
    pub attachment: Option<Attachment>,
}

impl Spare {
    /// The spare named `name`, of run dir `run` and state dir `state`
    /// (as [`SpareNets::dir`] and [`SpareNets::record_dir`]).
    pub fn at(run: &Path, state: &Path, name: &str) -> Spare {
        Spare {
            dir: run.join(name),
            record_dir: state.join(name),
            attachment: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where its attachment is kept.
    pub fn record_dir(&self) -> &Path {
        &self.record_dir
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
    /// Calls on a pod's start path (RunPodSandbox, CreateContainer,
    /// StartContainer) in flight, and when the last one ended.
    starting: usize,
    last_started: Option<Instant>,
}

/// A call on a pod's start path, in flight while this lives.
pub struct Starting<'a>(&'a SpareNets);

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.starting = s.starting.saturating_sub(1);
        s.last_started = Some(Instant::now());
    }
}

/// What a pod makes of a ready spare.
#[derive(Debug, PartialEq, Eq)]
pub enum Fit {
    /// It takes it.
    Take,
    /// It cannot use it; the spare stays for the next pod.
    Keep,
    /// Nobody can use it any more (attached to a network config that
    /// changed): it goes.
    Stale,
}

/// The spares of one server, up to `want` of them.
pub struct SpareNets {
    dir: PathBuf,
    record_dir: PathBuf,
    want: usize,
    state: Mutex<State>,
    /// Told when the last spare being made is done.
    idle: tokio::sync::Notify,
}

impl SpareNets {
    pub fn new(run_dir: &Path, state_dir: &Path, want: usize) -> SpareNets {
        SpareNets {
            dir: run_dir.join(DIR),
            record_dir: state_dir.join(DIR),
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

    /// Where the spares' attachments are kept, under the state dir.
    pub fn record_dir(&self) -> &Path {
        &self.record_dir
    }

    /// For a pod that could use a spare: the first ready one `fit` says it
    /// takes, if any, and those it says are stale (no longer kept).
    pub fn take(&self, fit: impl Fn(&Spare) -> Fit) -> (Option<Spare>, Vec<Spare>) {
        let mut s = self.lock();
        s.asked = true;
        let (mut taken, mut stale, mut kept) = (None, Vec::new(), Vec::new());
        for spare in s.ready.drain(..) {
            match fit(&spare) {
                Fit::Take if taken.is_none() => taken = Some(spare),
                Fit::Stale => stale.push(spare),
                _ => kept.push(spare),
            }
        }
        s.ready = kept;
        (taken, stale)
    }

    /// A spare taken by a pod that did not come to be (its name was in
    /// use): kept again, or handed back to be released when the server is
    /// stopping.
    pub fn give_back(&self, spare: Spare) -> Option<Spare> {
        let mut s = self.lock();
        if s.closed {
            return Some(spare);
        }
        s.ready.push(spare);
        None
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

    /// A call on a pod's start path begins: spares wait until there has been
    /// none for a while (see [`Self::until_quiet`]).
    pub fn starting(&self) -> Starting<'_> {
        self.lock().starting += 1;
        Starting(self)
    }

    /// How long until no call on a pod's start path has been in flight for
    /// `quiet` (zero: none has been), the time a spare waits before it is
    /// made; None once the server is stopping.
    pub fn until_quiet(&self, quiet: Duration) -> Option<Duration> {
        let s = self.lock();
        if s.closed {
            return None;
        }
        Some(match (s.starting, s.last_started) {
            (0, None) => Duration::ZERO,
            (0, Some(t)) => quiet.saturating_sub(t.elapsed()),
            _ => quiet,
        })
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
        let s = SpareNets::new(Path::new("/run/x"), Path::new("/var/x"), 2);
        let spare = |n: &str| Spare::at(s.dir(), s.record_dir(), n);
        assert_eq!(s.start_making(), 0, "none before a pod asks");
        assert!(s.take(|_| Fit::Take).0.is_none());
        assert_eq!(s.start_making(), 2);
        assert_eq!(s.start_making(), 0, "two are being made");
        assert!(s.made(spare("a")).is_none());
        assert_eq!(s.ready(), 1);
        assert_eq!(s.start_making(), 0, "one ready, one being made");
        let (a, stale) = s.take(|_| Fit::Take);
        let a = a.expect("ready");
        assert!(stale.is_empty());
        assert_eq!(a.net(), Path::new("/run/x/spare-net/a/ns/net"));
        assert_eq!(a.record_dir(), Path::new("/var/x/spare-net/a"));
        assert_eq!(s.start_making(), 1, "taking one asks for the next");
        assert!(s.made(spare("b")).is_none());
        let left = s.close();
        assert_eq!(left.len(), 1);
        assert_eq!(s.start_making(), 0, "none once closed");
        assert!(
            s.give_back(a).is_some(),
            "given back once closed: to release"
        );
        let late = s.made(spare("c"));
        assert!(late.is_some(), "made after the close: handed back");
        assert_eq!(s.lock().making, 1, "counted until it is released");
        s.done_making();
        assert_eq!((s.ready(), s.lock().making), (0, 0));
    }

    #[test]
    fn it_is_quiet_a_while_after_the_last_start_and_never_once_closed() {
        let s = SpareNets::new(Path::new("/run/x"), Path::new("/var/x"), 1);
        let quiet = Duration::from_secs(60);
        assert_eq!(
            s.until_quiet(quiet),
            Some(Duration::ZERO),
            "nothing started yet"
        );
        let (a, b) = (s.starting(), s.starting());
        assert_eq!(s.until_quiet(quiet), Some(quiet));
        drop(a);
        assert_eq!(s.until_quiet(quiet), Some(quiet), "one still in flight");
        drop(b);
        let left = s.until_quiet(quiet).expect("open");
        assert!(left > Duration::ZERO && left <= quiet, "{left:?}");
        assert_eq!(s.until_quiet(Duration::ZERO), Some(Duration::ZERO));
        s.close();
        assert_eq!(s.until_quiet(quiet), None);
    }

    #[test]
    fn a_pod_takes_the_first_that_fits_keeps_the_others_and_drops_the_stale() {
        let s = SpareNets::new(Path::new("/run/x"), Path::new("/var/x"), 3);
        for n in ["keep", "stale", "take", "also"] {
            assert!(s.made(Spare::at(s.dir(), s.record_dir(), n)).is_none());
        }
        let name = |sp: &Spare| {
            sp.dir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        };
        let (taken, stale) = s.take(|sp| match name(sp).as_deref() {
            Some("stale") => Fit::Stale,
            Some("keep") => Fit::Keep,
            _ => Fit::Take,
        });
        assert_eq!(taken.as_ref().and_then(name).as_deref(), Some("take"));
        assert_eq!(stale.iter().filter_map(name).collect::<Vec<_>>(), ["stale"]);
        assert_eq!(s.ready(), 2, "the one kept and the second that fit");
        let (none, _) = s.take(|_| Fit::Keep);
        assert!(none.is_none());
        assert_eq!(s.ready(), 2);
        let back = s.take(|_| Fit::Take).0.expect("one");
        assert!(s.give_back(back).is_none());
        assert_eq!(s.ready(), 2, "given back: ready again");
    }
}
