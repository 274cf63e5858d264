//! `HangWhile`: a `Store` that blocks every call while a marker file exists. **For tests only**
//! (selected by `[store] test_hang_while` in the daemon's configuration): it makes the store
//! stuck on demand, as sled's deadlock did, to show what still works while it is.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{Batch, Pairs, Space, Store, StoreError};

/// Every call of `inner` waits while `marker` exists.
#[derive(Debug)]
pub struct HangWhile {
    inner: Arc<dyn Store>,
    marker: PathBuf,
}

impl HangWhile {
    pub fn new(inner: Arc<dyn Store>, marker: PathBuf) -> Self {
        Self { inner, marker }
    }

    fn wait(&self) {
        while self.marker.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Store for HangWhile {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.wait();
        self.inner.get(space, key)
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        self.wait();
        self.inner.apply(batch)
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.wait();
        self.inner.scan_prefix(space, prefix)
    }

    fn scan_range(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, StoreError> {
        self.wait();
        self.inner.scan_range(space, from, to, limit, reverse)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.wait();
        self.inner.flush()
    }

    fn size_on_disk(&self) -> u64 {
        self.wait();
        self.inner.size_on_disk()
    }
}
