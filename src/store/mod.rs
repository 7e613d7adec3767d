//! Typed state of the runtime: pods and containers in memory, each backed by a
//! record file on disk. No engine calls and no CRI shaping here: a store holds
//! objects, finds them by id or unique id prefix, and keeps CRI names unique.
//!
//! An object is immutable metadata plus a status cell with its own short lock
//! (see [`container::Container`]); the store's own lock is held only to copy
//! an `Arc` in or out, never across an await or an operation.

pub mod container;
pub mod image_use;
pub mod pod;
pub mod record;
pub mod spare_net;

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// What a store needs of its objects.
pub trait Keyed {
    /// The object's full id.
    fn id(&self) -> &str;
}

/// Objects of one kind by id.
pub struct Store<T> {
    /// What the objects are called in messages ("container", "pod sandbox").
    kind: &'static str,
    items: RwLock<HashMap<String, Arc<T>>>,
}

impl<T: Keyed> Store<T> {
    pub fn new(kind: &'static str) -> Store<T> {
        Store {
            kind,
            items: RwLock::new(HashMap::new()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<T>>> {
        self.items.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<T>>> {
        self.items.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The object whose id is `id` or, failing that, the only one whose id
    /// starts with `id`; NOT_FOUND (one message for every caller) otherwise.
    pub fn get(&self, id: &str) -> Result<Arc<T>> {
        self.find(id)
            .ok_or_else(|| Error::NotFound(format!("{} {id:?} not found", self.kind)))
    }

    /// As [`Store::get`], None when there is no such object.
    pub fn find(&self, id: &str) -> Option<Arc<T>> {
        let m = self.read();
        if let Some(v) = m.get(id) {
            return Some(v.clone());
        }
        if id.is_empty() {
            return None;
        }
        let mut it = m.iter().filter(|(k, _)| k.starts_with(id));
        match (it.next(), it.next()) {
            (Some((_, v)), None) => Some(v.clone()),
            _ => None,
        }
    }

    /// Every object, in no particular order.
    pub fn list(&self) -> Vec<Arc<T>> {
        self.read().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub fn insert(&self, item: Arc<T>) {
        self.write().insert(item.id().to_string(), item);
    }

    pub fn remove(&self, id: &str) {
        self.write().remove(id);
    }
}

/// CRI's unique names (a pod's `name_namespace_uid_attempt`, a container's
/// `name_pod_attempt_podid`), each reserved by one id.
#[derive(Default)]
pub struct NameIndex {
    names: Mutex<HashMap<String, String>>,
}

impl NameIndex {
    /// Reserves `name` for `id`; ALREADY_EXISTS when another id holds it.
    pub fn reserve(&self, name: &str, id: &str) -> Result<()> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        match names.get(name) {
            Some(owner) if owner != id => Err(Error::AlreadyExists(format!(
                "name {name:?} is reserved by {owner}"
            ))),
            _ => {
                names.insert(name.to_string(), id.to_string());
                Ok(())
            }
        }
    }

    /// Frees `name` if `id` holds it.
    pub fn release(&self, name: &str, id: &str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.get(name).map(String::as_str) == Some(id) {
            names.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Item(String);
    impl Keyed for Item {
        fn id(&self) -> &str {
            &self.0
        }
    }

    #[test]
    fn ids_and_unique_prefixes_find_objects() {
        let s: Store<Item> = Store::new("thing");
        s.insert(Arc::new(Item("abc123".into())));
        s.insert(Arc::new(Item("abd456".into())));
        assert_eq!(
            s.get("abc123").map(|i| i.0.clone()).ok(),
            Some("abc123".into())
        );
        assert_eq!(
            s.get("abc").map(|i| i.0.clone()).ok(),
            Some("abc123".into())
        );
        // Two match "ab": neither is meant.
        assert!(s.find("ab").is_none());
        assert!(s.find("").is_none());
        match s.get("zzz") {
            Err(Error::NotFound(m)) => assert_eq!(m, "thing \"zzz\" not found"),
            other => panic!("want NotFound, got {:?}", other.map(|i| i.0.clone())),
        }
        s.remove("abc123");
        assert_eq!(s.get("ab").map(|i| i.0.clone()).ok(), Some("abd456".into()));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_name_has_one_owner_until_released() {
        let n = NameIndex::default();
        assert!(n.reserve("web_default_uid_0", "a").is_ok());
        assert!(n.reserve("web_default_uid_0", "a").is_ok());
        assert!(matches!(
            n.reserve("web_default_uid_0", "b"),
            Err(Error::AlreadyExists(_))
        ));
        n.release("web_default_uid_0", "b");
        assert!(n.reserve("web_default_uid_0", "b").is_err());
        n.release("web_default_uid_0", "a");
        assert!(n.reserve("web_default_uid_0", "b").is_ok());
    }
}
