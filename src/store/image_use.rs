//! Who holds an image's root filesystem mount besides the containers in the
//! store: creations in flight pin it, and each scheduled release carries a
//! token so that only the latest one of an image acts (see
//! `service/images.rs` for the policy).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct Inner {
    /// Containers of each image being created (not in the store yet).
    creating: HashMap<String, usize>,
    /// Each image's latest scheduled release: an earlier one is void.
    release: HashMap<String, u64>,
    next: u64,
}

#[derive(Default)]
pub struct ImageUse(Mutex<Inner>);

/// Holds an image's mount for a container being created; dropped once the
/// container is in the store (or its creation failed).
pub struct ImagePin<'a> {
    uses: &'a ImageUse,
    image_id: String,
}

impl Drop for ImagePin<'_> {
    fn drop(&mut self) {
        let mut u = self.uses.lock();
        if let Some(n) = u.creating.get_mut(&self.image_id) {
            *n -= 1;
            if *n == 0 {
                u.creating.remove(&self.image_id);
            }
        }
    }
}

impl ImageUse {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Counters only: what a panicking holder left is whole.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `image_id` until the returned guard drops.
    pub fn pin(&self, image_id: &str) -> ImagePin<'_> {
        *self
            .lock()
            .creating
            .entry(image_id.to_string())
            .or_default() += 1;
        ImagePin {
            uses: self,
            image_id: image_id.to_string(),
        }
    }

    /// Whether a creation holds `image_id`.
    pub fn pinned(&self, image_id: &str) -> bool {
        self.lock().creating.contains_key(image_id)
    }

    /// Schedules a release of `image_id`: the token voids earlier ones.
    pub fn schedule_release(&self, image_id: &str) -> u64 {
        let mut u = self.lock();
        u.next += 1;
        let t = u.next;
        u.release.insert(image_id.to_string(), t);
        t
    }

    /// Whether `token` is still `image_id`'s latest release; takes it if so.
    pub fn take_release(&self, image_id: &str, token: u64) -> bool {
        let mut u = self.lock();
        if u.release.get(image_id) != Some(&token) {
            return false;
        }
        u.release.remove(image_id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_count_and_later_releases_void_earlier_ones() {
        let u = ImageUse::default();
        let a = u.pin("img");
        let b = u.pin("img");
        drop(a);
        assert!(u.pinned("img"), "one pin still holds it");
        drop(b);
        assert!(!u.pinned("img"));
        let first = u.schedule_release("img");
        let second = u.schedule_release("img");
        assert!(!u.take_release("img", first), "an earlier release acted");
        assert!(u.take_release("img", second));
        assert!(!u.take_release("img", second), "a release acted twice");
    }
}
