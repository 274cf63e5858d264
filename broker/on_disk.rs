//! `OnDisk`: what the store holds per client id (a will record, a session record or queued
//! messages), kept in memory so that the CONNECT and the end of a client with nothing stored
//! never read the store: a slow or stuck store cannot hold those up (ARCHITECTURE.md,
//! durability rule). Filled at start from the store, then kept up to date by every write of
//! those records.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct Held {
    /// Client ids with a stored will, and the connection (owner) whose will it is.
    wills: HashMap<String, u64>,
    /// Client ids whose session was stored (a record, queued messages) and not yet forgotten.
    sessions: HashSet<String>,
}

#[derive(Default)]
pub struct OnDisk {
    held: Mutex<Held>,
}

impl OnDisk {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The will of connection `owner` of `client_id` is (being) stored.
    pub fn will_stored(&self, client_id: &str, owner: u64) {
        self.lock().wills.insert(client_id.to_owned(), owner);
    }

    /// Forget the stored will of `client_id` (of any connection when `owner` is None, else
    /// only if it is `owner`'s): true if there was one to remove from the store.
    pub fn take_will(&self, client_id: &str, owner: Option<u64>) -> bool {
        let mut held = self.lock();
        match (held.wills.get(client_id), owner) {
            (Some(stored), Some(owner)) if *stored != owner => false,
            (Some(_), _) => held.wills.remove(client_id).is_some(),
            (None, _) => false,
        }
    }

    /// The session of `client_id` has (or may have) records in the store.
    pub fn session_stored(&self, client_id: &str) {
        let mut held = self.lock();
        if !held.sessions.contains(client_id) {
            held.sessions.insert(client_id.to_owned());
        }
    }

    /// Forget the stored session of `client_id`: true if it had records to remove.
    pub fn take_session(&self, client_id: &str) -> bool {
        self.lock().sessions.remove(client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_will_is_taken_only_by_its_own_connection_or_by_any() {
        let on_disk = OnDisk::default();
        on_disk.will_stored("c", 7);
        assert!(!on_disk.take_will("c", Some(6)));
        assert!(on_disk.take_will("c", Some(7)));
        assert!(!on_disk.take_will("c", Some(7)));
        on_disk.will_stored("c", 8);
        assert!(on_disk.take_will("c", None));
        assert!(!on_disk.take_session("c"));
        on_disk.session_stored("c");
        assert!(on_disk.take_session("c"));
        assert!(!on_disk.take_session("c"));
    }
}
