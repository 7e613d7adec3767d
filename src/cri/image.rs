//! ImageService: pull, list, status, remove, filesystem usage.

use crate::error::Error;
use crate::images::ImageRecord;
use crate::proto::cri;
use crate::proto::cri::image_service_server::ImageService as Service;
use crate::runtime::{blocking, Runtime};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ImageService {
    rt: Arc<Runtime>,
}

impl ImageService {
    pub fn new(rt: Arc<Runtime>) -> Self {
        ImageService { rt }
    }
}

type R<T> = Result<Response<T>, Status>;

fn to_cri(rec: &ImageRecord) -> cri::Image {
    let user = rec
        .config
        .as_ref()
        .map(|c| c.user.clone())
        .unwrap_or_default();
    let user = user.split(':').next().unwrap_or("").to_string();
    let (uid, username) = match user.parse::<i64>() {
        Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
        Err(_) if user.is_empty() => (None, String::new()),
        Err(_) => (None, user),
    };
    cri::Image {
        id: rec.id.clone(),
        repo_tags: rec.tags.clone(),
        repo_digests: rec.digests.clone(),
        size: rec.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: rec.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

#[tonic::async_trait]
impl Service for ImageService {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> R<cri::ListImagesResponse> {
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        let images = match filter {
            Some(f) => self.rt.images.get(&f).iter().map(to_cri).collect(),
            None => self.rt.images.list().iter().map(to_cri).collect(),
        };
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> R<cri::ImageStatusResponse> {
        let req = req.into_inner();
        let name = req.image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Error::InvalidArgument("ImageStatus needs an image".into()).into());
        }
        let rec = self.rt.images.get(&name);
        let mut info = std::collections::HashMap::new();
        if let (Some(r), true) = (&rec, req.verbose) {
            info.insert(
                "info".to_string(),
                serde_json::to_string(r).unwrap_or_default(),
            );
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: rec.as_ref().map(to_cri),
            info,
        }))
    }

    async fn pull_image(&self, req: Request<cri::PullImageRequest>) -> R<cri::PullImageResponse> {
        let req = req.into_inner();
        let name = req
            .image
            .map(|i| i.image)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::InvalidArgument("PullImage needs an image".into()))?;
        let id = self.rt.pull_image(&name, req.auth).await?;
        tracing::info!(image = %name, id = %id, "image pulled");
        Ok(Response::new(cri::PullImageResponse { image_ref: id }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> R<cri::RemoveImageResponse> {
        let name = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Error::InvalidArgument("RemoveImage needs an image".into()).into());
        }
        let Some(rec) = self.rt.images.get(&name) else {
            return Ok(Response::new(cri::RemoveImageResponse {}));
        };
        if self.rt.image_in_use(&rec.id, None).await {
            return Err(Error::FailedPrecondition(format!(
                "image {} is in use by a container",
                rec.id
            ))
            .into());
        }
        let _g = self.rt.image_mounts.lock().await;
        let rt = self.rt.clone();
        blocking(move || rt.images.remove(&rec.id, |_| false).map(|_| ())).await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> R<cri::ImageFsInfoResponse> {
        let (bytes, inodes) = self.rt.images.usage();
        let usage = |mountpoint: String, bytes: u64, inodes: u64| cri::FilesystemUsage {
            timestamp: sycri_native::util::now_ns(),
            fs_id: Some(cri::FilesystemIdentifier { mountpoint }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        let state = self.rt.state_dir.join("containers");
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage(
                self.rt.images.dir().to_string_lossy().into_owned(),
                bytes,
                inodes,
            )],
            container_filesystems: vec![usage(state.to_string_lossy().into_owned(), 0, 0)],
        }))
    }
}
