//! The kernel calls that set a container up (mounts, namespaces, the root
//! switch), behind one narrow trait so that the code that makes them can be
//! tested without root: [`Linux`] makes the real system calls (a unit type,
//! statically dispatched, so it costs nothing over calling nix directly);
//! under `cfg(test)`, [`recording::Recording`] writes each call down in
//! order, with all its arguments, and fails the calls a test chooses.
//!
//! Only calls that change what the kernel holds for the process or its mount
//! namespace belong here. Plain file work in the rootfs (creating mount
//! points, reading links) stays ordinary file system code: on a test's
//! temporary directory it does the same as on a real rootfs.

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use std::os::fd::BorrowedFd;
use std::path::Path;

/// The system calls of container set-up. Every method has the meaning and the
/// error of the system call it is named after.
pub trait Kernel {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    fn chdir(&self, dir: &Path) -> nix::Result<()>;
    fn fchdir(&self, dir: BorrowedFd<'_>) -> nix::Result<()>;
    fn setns(&self, ns: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()>;
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()>;
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: libc::dev_t) -> nix::Result<()>;
    /// Makes `link` a symbolic link that reads `target`.
    fn symlink(&self, target: &Path, link: &Path) -> nix::Result<()>;
    fn sethostname(&self, name: &str) -> nix::Result<()>;
}

/// The running kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Linux;

impl Kernel for Linux {
    #[inline]
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    #[inline]
    fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
        nix::mount::umount2(target, flags)
    }

    #[inline]
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    #[inline]
    fn chdir(&self, dir: &Path) -> nix::Result<()> {
        nix::unistd::chdir(dir)
    }

    #[inline]
    fn fchdir(&self, dir: BorrowedFd<'_>) -> nix::Result<()> {
        nix::unistd::fchdir(dir)
    }

    #[inline]
    fn setns(&self, ns: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()> {
        nix::sched::setns(ns, nstype)
    }

    #[inline]
    fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(flags)
    }

    #[inline]
    fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: libc::dev_t) -> nix::Result<()> {
        nix::sys::stat::mknod(path, kind, perm, dev)
    }

    #[inline]
    fn symlink(&self, target: &Path, link: &Path) -> nix::Result<()> {
        nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, link)
    }

    #[inline]
    fn sethostname(&self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(name)
    }
}

#[cfg(test)]
pub mod recording {
    //! A kernel that only writes calls down (see the module header).

    use super::Kernel;
    use nix::errno::Errno;
    use nix::mount::{MntFlags, MsFlags};
    use nix::sched::CloneFlags;
    use nix::sys::stat::{Mode, SFlag};
    use std::cell::RefCell;
    use std::os::fd::{AsRawFd, BorrowedFd};
    use std::path::{Path, PathBuf};

    /// One call, with its arguments. A path given as `/proc/self/fd/N` (how
    /// set-up mounts onto a target it opened safely) is recorded as the path
    /// that descriptor names, which is where the real call would act; a
    /// descriptor argument likewise.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Call {
        Mount {
            source: Option<PathBuf>,
            target: PathBuf,
            fstype: Option<String>,
            flags: MsFlags,
            data: Option<String>,
        },
        Umount2 {
            target: PathBuf,
            flags: MntFlags,
        },
        PivotRoot {
            new_root: PathBuf,
            put_old: PathBuf,
        },
        Chdir(PathBuf),
        Fchdir(PathBuf),
        Setns {
            ns: PathBuf,
            nstype: CloneFlags,
        },
        Unshare(CloneFlags),
        Mknod {
            path: PathBuf,
            kind: SFlag,
            perm: Mode,
            dev: libc::dev_t,
        },
        Symlink {
            target: PathBuf,
            link: PathBuf,
        },
        Sethostname(String),
    }

    impl Call {
        /// A mount with these arguments, for building expected lists.
        pub fn mount(
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> Call {
            Call::Mount {
                source: source.map(Path::to_path_buf),
                target: target.to_path_buf(),
                fstype: fstype.map(str::to_string),
                flags,
                data: data.map(str::to_string),
            }
        }
    }

    type Rule = (Box<dyn Fn(&Call) -> bool>, Errno);

    /// Records calls; fails those that a rule given to [`Recording::fail`] picks.
    #[derive(Default)]
    pub struct Recording {
        calls: RefCell<Vec<Call>>,
        rules: RefCell<Vec<Rule>>,
    }

    impl Recording {
        pub fn new() -> Self {
            Self::default()
        }

        /// The first call from now on for which `pick` says true fails with
        /// `errno` (it is still recorded); later calls pass.
        pub fn fail(&self, pick: impl Fn(&Call) -> bool + 'static, errno: Errno) {
            self.rules.borrow_mut().push((Box::new(pick), errno));
        }

        /// Every call so far, in order.
        pub fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }

        fn record(&self, call: Call) -> nix::Result<()> {
            let mut rules = self.rules.borrow_mut();
            let hit = rules.iter().position(|(pick, _)| pick(&call));
            self.calls.borrow_mut().push(call);
            match hit {
                Some(i) => Err(rules.remove(i).1),
                None => Ok(()),
            }
        }
    }

    /// `p`, or what it names when it is a /proc/self/fd link.
    fn named(p: &Path) -> PathBuf {
        if p.starts_with("/proc/self/fd") {
            if let Ok(real) = std::fs::read_link(p) {
                return real;
            }
        }
        p.to_path_buf()
    }

    fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
        named(&PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())))
    }

    impl Kernel for Recording {
        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> nix::Result<()> {
            self.record(Call::Mount {
                source: source.map(named),
                target: named(target),
                fstype: fstype.map(str::to_string),
                flags,
                data: data.map(str::to_string),
            })
        }

        fn umount2(&self, target: &Path, flags: MntFlags) -> nix::Result<()> {
            self.record(Call::Umount2 {
                target: named(target),
                flags,
            })
        }

        fn pivot_root(&self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
            self.record(Call::PivotRoot {
                new_root: new_root.to_path_buf(),
                put_old: put_old.to_path_buf(),
            })
        }

        fn chdir(&self, dir: &Path) -> nix::Result<()> {
            self.record(Call::Chdir(dir.to_path_buf()))
        }

        fn fchdir(&self, dir: BorrowedFd<'_>) -> nix::Result<()> {
            self.record(Call::Fchdir(fd_path(dir)))
        }

        fn setns(&self, ns: BorrowedFd<'_>, nstype: CloneFlags) -> nix::Result<()> {
            self.record(Call::Setns {
                ns: fd_path(ns),
                nstype,
            })
        }

        fn unshare(&self, flags: CloneFlags) -> nix::Result<()> {
            self.record(Call::Unshare(flags))
        }

        /// Also leaves a plain file where the node would be, so that the file
        /// work that follows a real mknod (chmod, a bind from it) finds one.
        fn mknod(&self, path: &Path, kind: SFlag, perm: Mode, dev: libc::dev_t) -> nix::Result<()> {
            self.record(Call::Mknod {
                path: named(path),
                kind,
                perm,
                dev,
            })?;
            std::fs::File::create(path)
                .map(drop)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        }

        fn symlink(&self, target: &Path, link: &Path) -> nix::Result<()> {
            self.record(Call::Symlink {
                target: target.to_path_buf(),
                link: link.to_path_buf(),
            })
        }

        fn sethostname(&self, name: &str) -> nix::Result<()> {
            self.record(Call::Sethostname(name.to_string()))
        }
    }

    #[test]
    fn records_in_order_and_fails_the_chosen_call_once() {
        let k = Recording::new();
        k.fail(
            |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "proc"),
            Errno::EPERM,
        );
        let t = Path::new("/x");
        assert_eq!(k.unshare(CloneFlags::CLONE_NEWNS), Ok(()));
        assert_eq!(
            k.mount(
                Some(Path::new("proc")),
                t,
                Some("proc"),
                MsFlags::empty(),
                None
            ),
            Err(Errno::EPERM)
        );
        assert_eq!(
            k.mount(
                Some(Path::new("proc")),
                t,
                Some("proc"),
                MsFlags::empty(),
                None
            ),
            Ok(()),
            "a rule fails one call only"
        );
        assert_eq!(k.sethostname("h"), Ok(()));
        let calls = k.calls();
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[0], Call::Unshare(CloneFlags::CLONE_NEWNS));
        assert_eq!(
            calls[1],
            Call::mount(
                Some(Path::new("proc")),
                t,
                Some("proc"),
                MsFlags::empty(),
                None
            )
        );
        assert_eq!(calls[3], Call::Sethostname("h".into()));
    }

    #[test]
    fn descriptor_paths_are_recorded_as_what_they_name() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = std::fs::File::open(d.path()).expect("open");
        let k = Recording::new();
        let via = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        k.mount(None, &via, None, MsFlags::MS_PRIVATE, None)
            .expect("recorded");
        use std::os::fd::AsFd;
        k.fchdir(f.as_fd()).expect("recorded");
        let real = std::fs::canonicalize(d.path()).expect("canonicalize");
        assert_eq!(
            k.calls(),
            vec![
                Call::mount(None, &real, None, MsFlags::MS_PRIVATE, None),
                Call::Fchdir(real.clone()),
            ]
        );
    }
}
