//! `FjallStore`: the `Store` on fjall 3 (an LSM tree with a write-ahead journal), in one folder.
//!
//! Every space lives in one keyspace, its keys prefixed by one byte per space (as in
//! `SledStore`), so a `Batch` is one fjall write batch: atomic, one journal record. The journal
//! is persisted only by `flush` (`manual_journal_persist`): an applied batch is in memory and in
//! the journal's buffer, durable once `flush` has synced the journal, which is the durability rule
//! and the group commit's model (one fsync serves every write before it).

use std::path::Path;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::store::{Batch, Op, Pairs, Space, Store, StoreError, prefixed};
use crate::unflushed::Unflushed;

/// The fjall backend. Cheap to share: fjall handles are reference counted.
#[derive(Clone)]
pub struct FjallStore {
    db: Database,
    tree: Keyspace,
    /// Set by every write, taken by `flush`: a flush with nothing written costs no fsync.
    /// Writes not yet flushed, and one flush at a time.
    unflushed: Arc<Unflushed>,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore").finish_non_exhaustive()
    }
}

fn map_err(err: fjall::Error) -> StoreError {
    match err {
        fjall::Error::Io(io) => StoreError::Io(io),
        fjall::Error::Storage(lsm_err) => StoreError::Backend(lsm_err.to_string()),
        fjall::Error::Poisoned => StoreError::Backend(
            "an earlier write or flush failed (fjall keeps the error until a restart)".into(),
        ),
        other => StoreError::Backend(format!("{other:?}")),
    }
}

fn strip(guard: fjall::Guard) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let (key, value) = guard.into_inner().map_err(map_err)?;
    Ok((key[1..].to_vec(), value.to_vec()))
}

impl FjallStore {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .open()
            .map_err(map_err)?;
        let tree = db
            .keyspace("mqtter", KeyspaceCreateOptions::default)
            .map_err(map_err)?;
        Ok(Self {
            db,
            tree,
            unflushed: Arc::default(),
        })
    }
}

impl Store for FjallStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(prefixed(space, key))
            .map_err(map_err)?
            .map(|v| v.to_vec()))
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut write = self.db.batch();
        for op in batch.into_ops() {
            match op {
                Op::Put { space, key, value } => {
                    write.insert(&self.tree, prefixed(space, &key), value)
                }
                Op::Remove { space, key } => write.remove(&self.tree, prefixed(space, &key)),
            }
        }
        let applied = write.commit().map_err(map_err);
        self.unflushed.written();
        applied
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.tree
            .prefix(prefixed(space, prefix))
            .map(strip)
            .collect()
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
        let range = self.tree.range(prefixed(space, from)..prefixed(space, to));
        if reverse {
            range.rev().take(limit).map(strip).collect()
        } else {
            range.take(limit).map(strip).collect()
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.unflushed
            .flush(|| self.db.persist(PersistMode::SyncAll).map_err(map_err))
    }

    fn size_on_disk(&self) -> u64 {
        self.db.disk_space().unwrap_or(0)
    }
}
