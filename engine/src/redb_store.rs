//! `RedbStore`: the `Store` on redb 4 (a copy-on-write B-tree in one file, one writer at a time).
//!
//! One table per space. `apply` commits a write transaction with `Durability::None` (visible at
//! once, not synced); `flush` commits an empty transaction with `Durability::Immediate`, which
//! makes every commit before it durable: the durability rule. After a crash redb is back at its
//! last durable commit, so a batch is all there or not at all.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use crate::staged::prefix_end;
use crate::store::{Batch, Op, Pairs, Space, Store, StoreError};

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn table(space: Space) -> Table {
    TableDefinition::new(space.name())
}

/// The redb backend.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    path: std::path::PathBuf,
    dirty: Arc<AtomicBool>,
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
            dirty: Arc::new(AtomicBool::new(false)),
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
        self.dirty.store(true, Ordering::Release);
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
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let flushed = (|| {
            let mut tx = self.db.begin_write().map_err(map_err)?;
            tx.set_durability(Durability::Immediate).map_err(map_err)?;
            tx.commit().map_err(map_err)
        })();
        flushed.inspect_err(|_| self.dirty.store(true, Ordering::Release))
    }

    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}
