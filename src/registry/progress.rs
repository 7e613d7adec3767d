//! What a pull has received so far, logged at a steady interval, and the
//! stall timeout (`image_pull_progress_timeout`): a pull that received nothing
//! for that long while it still waits for data ends with
//! [`RegistryError::Stalled`].

use super::RegistryError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One blob of the pull.
struct Blob {
    digest: String,
    size: u64,
    got: u64,
    done: bool,
}

/// Shared by a pull's downloads and its watchdog.
pub struct Progress {
    image: String,
    started: Instant,
    received: AtomicU64,
    /// Milliseconds since `started` of the last bytes received.
    last_ms: AtomicU64,
    /// Whether the pull still waits for data (not converting its tail).
    waiting: AtomicBool,
    blobs: Mutex<Vec<Blob>>,
}

const MIB: f64 = 1048576.0;

impl Progress {
    pub fn new(image: &str) -> Progress {
        Progress {
            image: image.to_string(),
            started: Instant::now(),
            received: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            waiting: AtomicBool::new(true),
            blobs: Mutex::new(Vec::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Data arrived (a response, a manifest): resets the stall clock.
    pub fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Announces a blob; returns its index for [`Self::got`].
    pub fn add_blob(&self, digest: &str, size: u64) -> usize {
        let mut b = self.blobs.lock().unwrap_or_else(|p| p.into_inner());
        b.push(Blob {
            digest: digest.to_string(),
            size,
            got: 0,
            done: false,
        });
        b.len() - 1
    }

    /// `n` bytes of blob `i` arrived.
    pub fn got(&self, i: usize, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
        self.touch();
        let mut b = self.blobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = b.get_mut(i) {
            b.got += n;
        }
    }

    pub fn blob_done(&self, i: usize) {
        let mut b = self.blobs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = b.get_mut(i) {
            b.done = true;
        }
    }

    /// The pull no longer waits for data.
    pub fn downloads_done(&self) {
        self.waiting.store(false, Ordering::Relaxed);
    }

    /// (received, total, blobs done, blobs, the blobs in flight as "digest pct%").
    fn summary(&self) -> (u64, u64, usize, usize, Vec<String>) {
        let b = self.blobs.lock().unwrap_or_else(|p| p.into_inner());
        let total = b.iter().map(|b| b.size).sum();
        let done = b.iter().filter(|b| b.done).count();
        let busy = b
            .iter()
            .filter(|b| !b.done && b.got > 0)
            .map(|b| {
                let short = b.digest.get(..19).unwrap_or(&b.digest);
                format!("{short} {}%", b.got * 100 / b.size.max(1))
            })
            .collect();
        (
            self.received.load(Ordering::Relaxed),
            total,
            done,
            b.len(),
            busy,
        )
    }

    /// Logs the progress every `interval`; returns (only) when the pull stalls
    /// for `timeout` (zero: never).
    pub async fn watch(&self, interval: Duration, timeout: Duration) -> RegistryError {
        let tick = if timeout.is_zero() {
            interval
        } else {
            interval.min(timeout / 4).max(Duration::from_millis(10))
        };
        let mut last_log = Instant::now();
        let mut last_bytes = 0u64;
        loop {
            tokio::time::sleep(tick).await;
            if last_log.elapsed() >= interval {
                let (got, total, done, n, busy) = self.summary();
                let secs = last_log.elapsed().as_secs_f64();
                tracing::info!(
                    image = %self.image,
                    received_mib = format!("{:.1}", got as f64 / MIB),
                    total_mib = format!("{:.1}", total as f64 / MIB),
                    rate_mib_s = format!("{:.1}", (got - last_bytes.min(got)) as f64 / MIB / secs),
                    blobs = format!("{done}/{n}"),
                    downloading = ?busy,
                    "pull progress"
                );
                last_log = Instant::now();
                last_bytes = got;
            }
            let idle = Duration::from_millis(self.now_ms() - self.last_ms.load(Ordering::Relaxed));
            if !timeout.is_zero() && self.waiting.load(Ordering::Relaxed) && idle >= timeout {
                let (got, total, done, n, busy) = self.summary();
                return RegistryError::Stalled(format!(
                    "pull of {} stalled: no data received for {:?} (image_pull_progress_timeout); \
                     {:.1} of {:.1} MiB, {done} of {n} blobs complete{}",
                    self.image,
                    timeout,
                    got as f64 / MIB,
                    total as f64 / MIB,
                    if busy.is_empty() {
                        String::new()
                    } else {
                        format!(", waiting for {}", busy.join(", "))
                    }
                ));
            }
        }
    }
}
