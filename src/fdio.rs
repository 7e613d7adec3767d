//! Non-blocking reads and writes on plain descriptors (pipes, a pty master,
//! a unix socket) driven by tokio's reactor.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;

pub struct Fd {
    inner: AsyncFd<OwnedFd>,
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn check(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Fd {
    /// Takes `fd` over, makes it non-blocking and registers it with the reactor
    /// (must be called inside the tokio runtime).
    pub fn new(fd: OwnedFd) -> io::Result<Fd> {
        set_nonblocking(&fd)?;
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and is the
        // same descriptor for the AsyncFd's whole life (it closes on drop).
        let inner = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Fd { inner })
    }

    pub fn raw(&self) -> RawFd {
        self.inner.get_ref().as_raw_fd()
    }

    /// Runs `f` on the descriptor once it is readable, again on EWOULDBLOCK
    /// and EINTR.
    pub async fn read_with<R>(&self, mut f: impl FnMut(RawFd) -> io::Result<R>) -> io::Result<R> {
        loop {
            let mut guard = self.inner.readable().await?;
            match guard.try_io(|fd| f(fd.as_raw_fd())) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// As [`Fd::read_with`], for writing.
    pub async fn write_with<R>(&self, mut f: impl FnMut(RawFd) -> io::Result<R>) -> io::Result<R> {
        loop {
            let mut guard = self.inner.writable().await?;
            match guard.try_io(|fd| f(fd.as_raw_fd())) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads what is there; Ok(0) at end of file. EIO (a pty whose other side
    /// is closed) counts as end of file.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self
            .read_with(|fd| {
                // SAFETY: read(2) into our own buffer, at most its length.
                check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
            })
            .await;
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
            r => r,
        }
    }

    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self
                .write_with(|fd| {
                    // SAFETY: write(2) from our own buffer, at most its length.
                    check(unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })
                })
                .await?;
            data = &data[n..];
        }
        Ok(())
    }
}
