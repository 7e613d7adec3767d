//! Small shared pieces of the server: running blocking work off the async
//! threads and random identifiers.

use crate::error::{Error, Result};

/// Runs blocking work (file system, cgroup files, mounts through the engine
/// crate) on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: getrandom writes at most `n - filled` bytes into our buffer.
        let r = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if r <= 0 {
            // Fall back to the clock mixed with the pid; only ids depend on it.
            let seed =
                sycri_native::util::now_ns() as u64 ^ u64::from(std::process::id()).rotate_left(32);
            for (i, b) in buf[filled..].iter_mut().enumerate() {
                *b = (seed >> ((i % 8) * 8)) as u8 ^ i as u8;
            }
            break;
        }
        filled += r as usize;
    }
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_hex_of_the_length_asked_and_differ() {
        let a = random_hex(32);
        let b = random_hex(32);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
