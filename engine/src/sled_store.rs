//! `SledStore`: the `Store` on sled 0.34, in one data folder.
//!
//! Every space lives in one sled tree, its keys prefixed by one byte per space. One tree makes
//! every `Batch` a single sled batch, atomic without cross-tree transactions (which in sled 0.34
//! are slower and, in testing here, mixed keys of different trees up).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::store::{Batch, Op, Pairs, Space, Store, StoreError};

/// The single-machine backend. Cheap to share: sled handles are internally reference counted.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Set by every write, taken by `flush`: a flush with nothing written since the last one
    /// costs nothing (sled would still seal and write a buffer, and sync its file).
    dirty: Arc<AtomicBool>,
}

fn prefixed(space: Space, key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(key.len() + 1);
    full.push(space.tag());
    full.extend_from_slice(key);
    full
}

impl SledStore {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        // Flushing is ours to decide (group commit): sled's own periodic flush is turned off so
        // that the only durability points are the explicit `flush` calls.
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .map_err(map_err)?;
        let tree = db.open_tree("mqtter").map_err(map_err)?;
        Ok(Self {
            db,
            tree,
            dirty: Arc::new(AtomicBool::new(false)),
        })
    }
}

fn map_err(err: sled::Error) -> StoreError {
    match err {
        sled::Error::Io(io) => StoreError::Io(io),
        sled::Error::Corruption { at, .. } => StoreError::Corrupt(format!("at {at:?}")),
        other => StoreError::Backend(other.to_string()),
    }
}

fn strip(item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    item.map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
        .map_err(map_err)
}

impl SledStore {
    fn apply_ops(&self, batch: Batch) -> Result<(), StoreError> {
        let mut ops = batch.into_ops();
        if ops.len() == 1 {
            // One write is atomic by itself. A sled batch seals an I/O buffer of its own (a write
            // per batch), which made each later `flush` cost about 55 us per batch applied since
            // the last one; a plain insert costs about 0.3 us of flush.
            return match ops.pop() {
                Some(Op::Put { space, key, value }) => self
                    .tree
                    .insert(prefixed(space, &key), value)
                    .map(|_| ())
                    .map_err(map_err),
                Some(Op::Remove { space, key }) => self
                    .tree
                    .remove(prefixed(space, &key))
                    .map(|_| ())
                    .map_err(map_err),
                None => Ok(()),
            };
        }
        if ops.is_empty() {
            return Ok(());
        }
        let mut sled_batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put { space, key, value } => sled_batch.insert(prefixed(space, &key), value),
                Op::Remove { space, key } => sled_batch.remove(prefixed(space, &key)),
            }
        }
        self.tree.apply_batch(sled_batch).map_err(map_err)
    }
}

impl Store for SledStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(prefixed(space, key))
            .map_err(map_err)?
            .map(|v| v.to_vec()))
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let applied = self.apply_ops(batch);
        // Marked after the write (a flush that misses the mark ran before the write was
        // complete, and the writer's own wait for durability starts after this line).
        self.dirty.store(true, Ordering::Release);
        applied
    }
    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.tree
            .scan_prefix(prefixed(space, prefix))
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
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.db.flush().map(|_| ()).map_err(|err| {
            // Not durable after all: the next flush must try again.
            self.dirty.store(true, Ordering::Release);
            map_err(err)
        })
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
