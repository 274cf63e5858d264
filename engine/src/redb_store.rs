//! `RedbStore`: the `Store` on redb 4 (a copy-on-write B-tree in one file, one writer at a time).
//!
//! One table per space. `apply` commits a write transaction with `Durability::None` (visible at
//! once, not synced); `flush` commits an empty transaction with `Durability::Immediate`, which
//! makes every commit before it durable: the durability rule. After a crash redb is back at its
//! last durable commit, so a batch is all there or not at all.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use crate::staged::prefix_end;
use crate::store::{Batch, Op, Pairs, Space, Store, StoreError};
use crate::unflushed::Unflushed;

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn table(space: Space) -> Table {
    TableDefinition::new(space.name())
}

/// The redb backend.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    path: std::path::PathBuf,
    /// Writes not yet flushed, and one flush at a time.
    unflushed: Arc<Unflushed>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn map_err(err: impl Into<redb::Error>) -> StoreError {
    match err.into() {
        redb::Error::Io(io) => StoreError::Io(io),
        redb::Error::Corrupted(what) => StoreError::Corrupt(what),
        other => StoreError::Backend(other.to_string()),
    }
}

fn pairs<'a>(
    items: impl Iterator<
        Item = Result<
            (
                redb::AccessGuard<'a, &'static [u8]>,
                redb::AccessGuard<'a, &'static [u8]>,
            ),
            redb::StorageError,
        >,
    >,
) -> Result<Pairs, StoreError> {
    items
        .map(|item| {
            item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                .map_err(map_err)
        })
        .collect()
}

impl RedbStore {
    /// Open (or create) the store in the file `file`.
    pub fn open(file: impl AsRef<Path>) -> Result<Self, StoreError> {
        let file = file.as_ref();
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(file).map_err(map_err)?;
        // Every table exists from the start, so reads never meet a missing one.
        let tx = db.begin_write().map_err(map_err)?;
        for space in Space::ALL {
            tx.open_table(table(space)).map_err(map_err)?;
        }
        tx.commit().map_err(map_err)?;
        Ok(Self {
            db: Arc::new(db),
            path: file.to_path_buf(),
            unflushed: Arc::default(),
        })
    }
}

impl Store for RedbStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(map_err)?;
        let t = tx.open_table(table(space)).map_err(map_err)?;
        Ok(t.get(key).map_err(map_err)?.map(|v| v.value().to_vec()))
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let applied = (|| {
            let mut tx = self.db.begin_write().map_err(map_err)?;
            tx.set_durability(Durability::None).map_err(map_err)?;
            for op in batch.into_ops() {
                match op {
                    Op::Put { space, key, value } => {
                        let mut t = tx.open_table(table(space)).map_err(map_err)?;
                        t.insert(&key[..], &value[..]).map_err(map_err)?;
                    }
                    Op::Remove { space, key } => {
                        let mut t = tx.open_table(table(space)).map_err(map_err)?;
                        t.remove(&key[..]).map_err(map_err)?;
                    }
                }
            }
            tx.commit().map_err(map_err)
        })();
        self.unflushed.written();
        applied
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let tx = self.db.begin_read().map_err(map_err)?;
        let t = tx.open_table(table(space)).map_err(map_err)?;
        match prefix_end(prefix) {
            Some(end) => pairs(t.range(prefix..&end[..]).map_err(map_err)?),
            None => pairs(t.range(prefix..).map_err(map_err)?),
        }
    }

    fn scan_range(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().map_err(map_err)?;
        let t = tx.open_table(table(space)).map_err(map_err)?;
        let range = t.range(from..to).map_err(map_err)?;
        if reverse {
            pairs(range.rev().take(limit))
        } else {
            pairs(range.take(limit))
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.unflushed.flush(|| {
            let mut tx = self.db.begin_write().map_err(map_err)?;
            tx.set_durability(Durability::Immediate).map_err(map_err)?;
            tx.commit().map_err(map_err)
        })
    }

    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a copy of the file, opened as after a crash, holds `key` in `Timers`.
    fn durable(file: &Path, key: &[u8]) -> bool {
        let copy = file.with_extension("copy");
        std::fs::copy(file, &copy).expect("copy the store's file");
        let found = RedbStore::open(&copy)
            .expect("open the copy")
            .get(Space::Timers, key)
            .expect("read the copy");
        found.is_some()
    }

    /// A flush that finds another flush under way (it took `dirty`, its durable commit is still
    /// to come) returns only once that one is done: what was applied before it is durable.
    #[test]
    fn a_flush_returns_after_the_flush_under_way() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("store.redb");
        let store = RedbStore::open(&file).expect("open");
        let mut batch = Batch::new();
        batch.put(Space::Timers, b"wake".to_vec(), b"set".to_vec());
        store.apply(batch).expect("apply");
        assert!(!durable(&file, b"wake"), "durable before any flush");

        // The first flush takes `dirty`, then waits for the write lock held here to commit.
        let held = store.db.begin_write().expect("a write transaction");
        let first = std::thread::spawn({
            let store = store.clone();
            move || store.flush()
        });
        while store.unflushed.pending() {
            std::thread::yield_now();
        }
        let (done, second) = std::sync::mpsc::channel();
        let second_flush = std::thread::spawn({
            let (store, file) = (store.clone(), file.clone());
            move || {
                store.flush().expect("the second flush");
                let _ = done.send(durable(&file, b"wake"));
            }
        });
        // Done while the first cannot commit, it must have made the write durable itself.
        if let Ok(durable) = second.recv_timeout(std::time::Duration::from_millis(500)) {
            assert!(
                durable,
                "the second flush returned before the write was durable"
            );
        }
        drop(held);
        first.join().expect("the first flush").expect("flushed");
        second_flush.join().expect("the second flush");
        assert!(durable(&file, b"wake"));
    }
}
