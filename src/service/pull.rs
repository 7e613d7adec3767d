//! PullImage: the puller (`crate::pull`) brings the image into the store.

use super::Runtime;
use crate::error::Result;
use crate::proto::cri;

impl Runtime {
    /// Pulls `image` and answers its id.
    pub async fn pull_image(&self, image: &str, auth: Option<cri::AuthConfig>) -> Result<String> {
        self.puller.pull(&self.images, image, auth).await
    }
}
