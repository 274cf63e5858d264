//! `CountedStore`: a `Store` that counts its failed writes and flushes, for
//! `$SYS/broker/store/errors` and `on_store_failure`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mqtter_engine::store::{Batch, Pairs, Space, Store, StoreError};

/// Every write and flush of the broker and its IM world goes through this, so that any failure
/// is counted once, wherever it happens (a routed message, a will record, a cursor).
#[derive(Debug)]
pub struct CountedStore {
    inner: Arc<dyn Store>,
    errors: Arc<AtomicU64>,
}

impl CountedStore {
    pub fn new(inner: Arc<dyn Store>, errors: Arc<AtomicU64>) -> Self {
        Self { inner, errors }
    }

    fn count<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl Store for CountedStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(space, key)
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        self.count(self.inner.apply(batch))
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Pairs, StoreError> {
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
        self.inner.scan_range(space, from, to, limit, reverse)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.count(self.inner.flush())
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose disk refuses every write.
    #[derive(Debug)]
    struct Refusing;

    fn refused() -> StoreError {
        StoreError::Io(std::io::Error::other("no space left on device (test)"))
    }

    impl Store for Refusing {
        fn get(&self, _: Space, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        fn apply(&self, _: Batch) -> Result<(), StoreError> {
            Err(refused())
        }
        fn scan_prefix(&self, _: Space, _: &[u8]) -> Result<Pairs, StoreError> {
            Ok(Vec::new())
        }
        fn scan_range(
            &self,
            _: Space,
            _: &[u8],
            _: &[u8],
            _: usize,
            _: bool,
        ) -> Result<Pairs, StoreError> {
            Ok(Vec::new())
        }
        fn flush(&self) -> Result<(), StoreError> {
            Err(refused())
        }
        fn size_on_disk(&self) -> u64 {
            0
        }
    }

    #[test]
    fn every_failed_write_and_flush_is_counted_once_and_reads_are_not() {
        let errors = Arc::new(AtomicU64::new(0));
        let store = CountedStore::new(Arc::new(Refusing), errors.clone());
        let mut batch = Batch::new();
        batch.put(Space::Wills, b"c".to_vec(), b"w".to_vec());
        assert!(store.apply(batch).is_err());
        assert!(store.flush().is_err());
        assert!(store.get(Space::Wills, b"c").is_ok());
        assert_eq!(errors.load(Ordering::Relaxed), 2);
    }
}
