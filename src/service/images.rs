//! Images as the runtime uses them: an image's root filesystem is mounted
//! once (by the engine), shared by every container of the image, and
//! released when the last of them goes; ListImages, ImageStatus, RemoveImage
//! and ImageFsInfo.

use super::Runtime;
use crate::error::{Error, Result};
use crate::images::ImageRecord;
use crate::util::blocking;
use std::path::PathBuf;

/// Bytes and inodes a file system holds for the runtime, and where.
pub struct FsUsage {
    pub mountpoint: PathBuf,
    pub bytes: u64,
    pub inodes: u64,
}

impl Runtime {
    /// Whether a container other than `except` uses image `image_id`.
    fn image_in_use(&self, image_id: &str, except: Option<&str>) -> bool {
        self.containers
            .list()
            .iter()
            .any(|c| c.meta.image_id == image_id && Some(c.meta.id.as_str()) != except)
    }

    /// The image's root filesystem, mounted if it is not yet.
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

    /// Unmounts an image's root filesystem when no container (but `except`,
    /// which is going) uses it.
    pub(super) async fn release_image_if_unused(&self, image_id: &str, except: Option<&str>) {
        let _g = self.image_mounts.lock().await;
        if self.image_in_use(image_id, except) {
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
        if self.image_in_use(&rec.id, None) {
            return Err(Error::FailedPrecondition(format!(
                "image {} is in use by a container",
                rec.id
            )));
        }
        self.engine.unmount(&self.images.mount_point(&rec)).await?;
        let images = self.images.clone();
        blocking(move || images.remove(&rec.id, |_| false).map(|_| ())).await
    }

    /// What the image store holds, and what containers' writable layers hold.
    pub fn image_fs_usage(&self) -> (FsUsage, FsUsage) {
        let (bytes, inodes) = self.images.usage();
        (
            FsUsage {
                mountpoint: self.images.dir().to_path_buf(),
                bytes,
                inodes,
            },
            FsUsage {
                mountpoint: self.state_dir.join("containers"),
                bytes: 0,
                inodes: 0,
            },
        )
    }
}
