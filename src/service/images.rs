//! Images as the runtime uses them: an image's root filesystem is mounted
//! once (by the engine), shared by every container of the image, and
//! released `image_unmount_delay` after the last of them goes (at once by
//! RemoveImage); ListImages, ImageStatus, RemoveImage and ImageFsInfo.
//!
//! Why the delay: a kubelet replaces a container by a new one of the same
//! image (restarts, jobs, probes' retries), and a fresh mount starts cold:
//! the loop device's and squashfs's caches are empty, so the next container's
//! first exec and its passwd lookups read and decompress again (a cold exec
//! of busybox costs about 8 ms here, a warm one 1.3 ms), on top of the loop
//! attach and mount, and the removal pays the unmount. An image no container
//! has used for the delay goes, so a node does not hold a loop device for
//! every image it ever ran.

use super::Runtime;
use crate::error::{Error, Result};
use crate::images::ImageRecord;
use crate::store::image_use::ImagePin;
use crate::util::blocking;
use std::path::PathBuf;
use std::sync::Arc;

/// Bytes and inodes a file system holds for the runtime, and where.
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub bytes: u64,
    pub inodes: u64,
}

impl Runtime {
    /// Whether a container uses image `image_id`, or one is being created
    /// with it.
    fn image_in_use(&self, image_id: &str) -> bool {
        self.image_use.pinned(image_id)
            || self
                .containers
                .list()
                .iter()
                .any(|c| c.meta.image_id == image_id)
    }

    /// Keeps the image mounted while a container of it is created.
    pub(super) fn pin_image(&self, image_id: &str) -> ImagePin<'_> {
        self.image_use.pin(image_id)
    }

    /// The image's root filesystem, mounted if it is not yet (the caller
    /// holds a [`Runtime::pin_image`] of it).
    pub(super) async fn mount_image(&self, image: &ImageRecord) -> Result<PathBuf> {
        let _g = self.image_mounts.lock().await;
        let target = self.images.mount_point(image);
        self.engine
            .mount_image(
                &self.images.blob_path(image),
                image.rootfs_offset,
                image.rootfs_size,
                &target,
            )
            .await?;
        Ok(target)
    }

    /// Unmounts an image's root filesystem `image_unmount_delay` from now,
    /// when no container uses it then and no release was scheduled since.
    pub(super) async fn release_image_if_unused(self: &Arc<Self>, image_id: &str) {
        let delay = self.cfg.image_unmount_delay.0;
        if delay.is_zero() {
            return self.release_now_if_unused(image_id, None).await;
        }
        let token = self.image_use.schedule_release(image_id);
        let (rt, image_id) = (Arc::downgrade(self), image_id.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // A server that is gone leaves the mount to the next one,
            // which adopts it (see recover.rs).
            if let Some(rt) = rt.upgrade() {
                rt.release_now_if_unused(&image_id, Some(token)).await;
            }
        });
    }

    /// The release itself; `token`: only if no release was scheduled since.
    async fn release_now_if_unused(&self, image_id: &str, token: Option<u64>) {
        let _g = self.image_mounts.lock().await;
        if token.is_some_and(|t| !self.image_use.take_release(image_id, t)) {
            return;
        }
        if self.image_in_use(image_id) {
            return;
        }
        let Some(rec) = self.images.get(image_id) else {
            return;
        };
        let target = self.images.mount_point(&rec);
        if let Err(e) = self.engine.unmount(&target).await {
            tracing::warn!(image = %image_id, error = %e, "could not release image mount");
            return;
        }
        if let Some(dir) = target.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// The image mounts no container uses: released at once (`now`: the
    /// server is stopping, and no timer of its outlives it) or after the
    /// delay (a restarted server adopting an earlier one's). Mounts of
    /// images no longer in the store (removed while no server ran) go at
    /// once either way.
    pub async fn release_unused_image_mounts(self: &Arc<Self>, now: bool) {
        for (hex, dir) in self.images.mount_dirs() {
            if let Some(rec) = self.images.get(&format!("sha256:{hex}")) {
                if self.image_in_use(&rec.id) {
                    continue;
                }
                if now {
                    self.release_now_if_unused(&rec.id, None).await;
                } else {
                    self.release_image_if_unused(&rec.id).await;
                }
                continue;
            }
            let _g = self.image_mounts.lock().await;
            match self.engine.unmount(&dir.join("rootfs")).await {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Err(e) => {
                    tracing::warn!(image = %hex, error = %e, "releasing an unused image mount")
                }
            }
        }
    }

    pub fn list_images(&self) -> Vec<ImageRecord> {
        self.images.list()
    }

    /// The image a reference names (id, id prefix, tag or repo digest).
    pub fn image(&self, reference: &str) -> Option<ImageRecord> {
        self.images.get(reference)
    }

    /// Removes an image that no container uses; an unknown one is fine.
    pub async fn remove_image(&self, reference: &str) -> Result<()> {
        let Some(rec) = self.images.get(reference) else {
            return Ok(());
        };
        let _g = self.image_mounts.lock().await;
        if self.image_in_use(&rec.id) {
            return Err(Error::FailedPrecondition(format!(
                "image {} is in use by a container",
                rec.id
            )));
        }
        self.engine.unmount(&self.images.mount_point(&rec)).await?;
        let images = self.images.clone();
        blocking(move || images.remove(&rec.id, |_| false).map(|_| ())).await
    }

    /// What the image store holds, and what the containers' writable layers
    /// (their overlays' upper directories, under the state directory's
    /// `containers/`) hold. The kubelet asks every ~10 s: the walk runs on
    /// the blocking pool, one layer after another, without any container's
    /// lock, and costs what ContainerStats' walk of the same layers does: a
    /// stat per file, about 2 µs each (5 ms for 100 layers of 12 entries, a
    /// debug build on the loaded 2-core development machine), so nothing is
    /// cached and the answer is never stale.
    pub async fn image_fs_usage(&self) -> Result<(FsUsage, FsUsage)> {
        let images = self.images.clone();
        let uppers: Vec<PathBuf> = self
            .containers
            .list()
            .iter()
            .map(|c| c.upper_dir())
            .collect();
        let layers = self.state_dir.join("containers");
        blocking(move || {
            let (bytes, inodes) = images.usage();
            let image_fs = FsUsage {
                mountpoint: images.dir().to_path_buf(),
                bytes,
                inodes,
            };
            let (bytes, inodes) = layers_usage(&uppers);
            Ok((
                image_fs,
                FsUsage {
                    mountpoint: layers,
                    bytes,
                    inodes,
                },
            ))
        })
        .await
    }
}

/// Bytes and inodes the writable layers at `uppers` hold together (a layer
/// not made yet, or gone, holds nothing).
fn layers_usage(uppers: &[PathBuf]) -> (u64, u64) {
    uppers.iter().fold((0, 0), |(b, i), upper| {
        let (bytes, inodes) = sycri_native::util::disk_usage(upper);
        (b + bytes, i + inodes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_layers_add_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a/upper"), dir.path().join("b/upper"));
        std::fs::create_dir_all(a.join("etc")).expect("mkdir");
        std::fs::create_dir_all(&b).expect("mkdir");
        let gone = dir.path().join("c/upper");
        let uppers = vec![a.clone(), b.clone(), gone];
        let (bytes0, inodes0) = layers_usage(&uppers);
        assert_eq!(inodes0, 1, "the etc directory");
        std::fs::write(a.join("etc/data"), vec![1u8; 64 << 10]).expect("write");
        std::fs::write(b.join("log"), vec![2u8; 64 << 10]).expect("write");
        let (bytes, inodes) = layers_usage(&uppers);
        assert_eq!(inodes, inodes0 + 2);
        assert!(
            bytes >= bytes0 + (128 << 10),
            "{bytes} bytes after writing 128 KiB to {bytes0}"
        );
    }
}
