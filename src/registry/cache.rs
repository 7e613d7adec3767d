//! Small documents a client fetched by digest (manifests, image configs),
//! kept in memory for the next pull of the same repository: a pull asks the
//! registry what a tag names now, but what a digest names never changes, so
//! an image pulled again (after RemoveImage, say) costs one manifest request
//! and its layers instead of three round trips before the first layer byte.
//!
//! Entries are keyed by the reference's registry and repository as well as
//! the digest: a document is served only for the repository the registry
//! served it from, never to a pull of another repository that names the
//! same digest (which that registry might refuse). Every entry was checked
//! against its digest when it came in. Bounded: at most [`MAX_ENTRIES`]
//! entries and [`MAX_BYTES`] in all, each at most [`MAX_ENTRY`]; the least
//! recently used go first. Memory only: a restarted server asks again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

pub const MAX_ENTRIES: usize = 256;
pub const MAX_BYTES: usize = 8 << 20;
pub const MAX_ENTRY: usize = 1 << 20;

/// Registry, repository, digest.
type Key = (String, String, String);

/// One cached document: its content type as served (for manifests) and bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub content_type: String,
    pub bytes: Arc<[u8]>,
}

#[derive(Default)]
struct Inner {
    docs: HashMap<Key, Doc>,
    /// Least recently used first.
    order: VecDeque<Key>,
    bytes: usize,
}

#[derive(Default)]
pub struct DocCache(Mutex<Inner>);

fn key(registry: &str, repository: &str, digest: &str) -> Key {
    (registry.into(), repository.into(), digest.into())
}

impl DocCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, registry: &str, repository: &str, digest: &str) -> Option<Doc> {
        let k = key(registry, repository, digest);
        let mut g = self.lock();
        let doc = g.docs.get(&k)?.clone();
        if let Some(i) = g.order.iter().position(|o| *o == k) {
            g.order.remove(i);
        }
        g.order.push_back(k);
        Some(doc)
    }

    /// Keeps `bytes`, which the caller has checked against `digest`.
    pub fn put(
        &self,
        registry: &str,
        repository: &str,
        digest: &str,
        content_type: &str,
        bytes: &[u8],
    ) {
        if bytes.len() > MAX_ENTRY {
            return;
        }
        let k = key(registry, repository, digest);
        let mut g = self.lock();
        if g.docs.contains_key(&k) {
            return;
        }
        while !g.order.is_empty()
            && (g.docs.len() >= MAX_ENTRIES || g.bytes + bytes.len() > MAX_BYTES)
        {
            if let Some(old) = g.order.pop_front() {
                if let Some(d) = g.docs.remove(&old) {
                    g.bytes -= d.bytes.len();
                }
            }
        }
        g.bytes += bytes.len();
        g.order.push_back(k.clone());
        g.docs.insert(
            k,
            Doc {
                content_type: content_type.to_string(),
                bytes: bytes.into(),
            },
        );
    }

    #[cfg(test)]
    fn len_and_bytes(&self) -> (usize, usize) {
        let g = self.lock();
        (g.docs.len(), g.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_only_for_the_repository_it_came_from() {
        let c = DocCache::default();
        c.put("r.io", "a/app", "sha256:1", "application/json", b"{}");
        let d = c.get("r.io", "a/app", "sha256:1").expect("hit");
        assert_eq!(
            (d.content_type.as_str(), &*d.bytes),
            ("application/json", &b"{}"[..])
        );
        assert!(
            c.get("r.io", "b/app", "sha256:1").is_none(),
            "other repository"
        );
        assert!(
            c.get("other.io", "a/app", "sha256:1").is_none(),
            "other registry"
        );
        assert!(c.get("r.io", "a/app", "sha256:2").is_none());
    }

    #[test]
    fn bounded_least_recently_used_first() {
        let c = DocCache::default();
        let big = vec![0u8; MAX_ENTRY];
        c.put("r", "x", "too-big", "", &vec![0u8; MAX_ENTRY + 1]);
        assert_eq!(c.len_and_bytes(), (0, 0));
        let n = MAX_BYTES / MAX_ENTRY;
        for i in 0..n {
            c.put("r", "x", &format!("d{i}"), "", &big);
        }
        assert_eq!(c.len_and_bytes(), (n, MAX_BYTES));
        // d0 used again: d1 is now the oldest and goes for the next one.
        assert!(c.get("r", "x", "d0").is_some());
        c.put("r", "x", "new", "", &big);
        assert_eq!(c.len_and_bytes(), (n, MAX_BYTES));
        assert!(c.get("r", "x", "d0").is_some());
        assert!(c.get("r", "x", "d1").is_none());
        assert!(c.get("r", "x", "new").is_some());
        // Many small ones: the entry count is bounded too.
        for i in 0..MAX_ENTRIES + 10 {
            c.put("r", "y", &format!("s{i}"), "", b"x");
        }
        assert_eq!(c.len_and_bytes().0, MAX_ENTRIES);
        assert!(c.get("r", "y", &format!("s{}", MAX_ENTRIES + 9)).is_some());
        assert!(c.get("r", "y", "s0").is_none());
    }
}
