//! ListImages, ImageStatus, PullImage, RemoveImage and ImageFsInfo.

use super::convert;
use crate::error::{Error, Result};
use crate::proto::cri;
use crate::service::{FsUsage, Runtime};

pub fn list(rt: &Runtime, req: cri::ListImagesRequest) -> cri::ListImagesResponse {
    let filter = req
        .filter
        .and_then(|f| f.image)
        .map(|i| i.image)
        .filter(|i| !i.is_empty());
    let images = match filter {
        Some(f) => rt.image(&f).iter().map(convert::image).collect(),
        None => rt.list_images().iter().map(convert::image).collect(),
    };
    cri::ListImagesResponse { images }
}

pub fn status(rt: &Runtime, req: cri::ImageStatusRequest) -> Result<cri::ImageStatusResponse> {
    let name = req.image.map(|i| i.image).unwrap_or_default();
    if name.is_empty() {
        return Err(Error::InvalidArgument("ImageStatus needs an image".into()));
    }
    let rec = rt.image(&name);
    let mut info = std::collections::HashMap::new();
    if let (Some(r), true) = (&rec, req.verbose) {
        info.insert(
            "info".to_string(),
            serde_json::to_string(r).unwrap_or_default(),
        );
    }
    Ok(cri::ImageStatusResponse {
        image: rec.as_ref().map(convert::image),
        info,
    })
}

pub async fn pull(rt: &Runtime, req: cri::PullImageRequest) -> Result<cri::PullImageResponse> {
    let name = req
        .image
        .map(|i| i.image)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Error::InvalidArgument("PullImage needs an image".into()))?;
    let id = rt.pull_image(&name, req.auth).await?;
    tracing::info!(image = %name, id = %id, "image pulled");
    Ok(cri::PullImageResponse { image_ref: id })
}

pub async fn remove(
    rt: &Runtime,
    req: cri::RemoveImageRequest,
) -> Result<cri::RemoveImageResponse> {
    let name = req.image.map(|i| i.image).unwrap_or_default();
    if name.is_empty() {
        return Err(Error::InvalidArgument("RemoveImage needs an image".into()));
    }
    rt.remove_image(&name).await?;
    Ok(cri::RemoveImageResponse {})
}

fn usage(u: FsUsage) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp: sycri_native::util::now_ns(),
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: u.mountpoint.to_string_lossy().into_owned(),
        }),
        used_bytes: Some(cri::UInt64Value { value: u.bytes }),
        inodes_used: Some(cri::UInt64Value { value: u.inodes }),
    }
}

pub async fn fs_info(
    rt: &Runtime,
    _req: cri::ImageFsInfoRequest,
) -> Result<cri::ImageFsInfoResponse> {
    let (images, containers) = rt.image_fs_usage().await?;
    Ok(cri::ImageFsInfoResponse {
        image_filesystems: vec![usage(images)],
        container_filesystems: vec![usage(containers)],
    })
}
