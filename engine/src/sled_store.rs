//! `SledStore`: the `Store` on sled 0.34, one sled tree per `Space`, in one data folder.

use std::path::Path;

use sled::Transactional;

use crate::store::{Batch, Op, Pairs, Space, Store, StoreError};

/// The single-machine backend. Cheap to share: sled handles are internally reference counted.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    trees: Vec<sled::Tree>,
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
        let trees = Space::ALL
            .iter()
            .map(|space| db.open_tree(space.name()).map_err(map_err))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { db, trees })
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        let index = Space::ALL.iter().position(|s| *s == space).unwrap_or(0);
        &self.trees[index]
    }
}

fn map_err(err: sled::Error) -> StoreError {
    match err {
        sled::Error::Io(io) => StoreError::Io(io),
        sled::Error::Corruption { at, .. } => StoreError::Corrupt(format!("at {at:?}")),
        other => StoreError::Backend(other.to_string()),
    }
}

impl Store for SledStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(space)
            .get(key)
            .map_err(map_err)?
            .map(|v| v.to_vec()))
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let ops = batch.into_ops();
        if ops.is_empty() {
            return Ok(());
        }
        // One sled batch per tree, applied in one transaction across the trees involved.
        let mut per_tree: Vec<sled::Batch> =
            Space::ALL.iter().map(|_| sled::Batch::default()).collect();
        let mut used = [false; Space::ALL.len()];
        for op in ops {
            let space = match &op {
                Op::Put { space, .. } | Op::Remove { space, .. } => *space,
            };
            let index = Space::ALL.iter().position(|s| *s == space).unwrap_or(0);
            used[index] = true;
            match op {
                Op::Put { key, value, .. } => per_tree[index].insert(key, value),
                Op::Remove { key, .. } => per_tree[index].remove(key),
            }
        }
        let involved: Vec<usize> = (0..used.len()).filter(|i| used[*i]).collect();
        if involved.len() == 1 {
            let index = involved[0];
            let batch = std::mem::take(&mut per_tree[index]);
            return self.trees[index].apply_batch(batch).map_err(map_err);
        }
        let trees: Vec<&sled::Tree> = involved.iter().map(|i| &self.trees[*i]).collect();
        let batches: Vec<sled::Batch> = involved
            .iter()
            .map(|i| std::mem::take(&mut per_tree[*i]))
            .collect();
        trees
            .as_slice()
            .transaction(|txs| {
                for (tx, batch) in txs.iter().zip(batches.iter()) {
                    tx.apply_batch(batch)?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|err| match err {
                sled::transaction::TransactionError::Storage(err) => map_err(err),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Backend("transaction aborted".into())
                }
            })
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.tree(space)
            .scan_prefix(prefix)
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(map_err))
            .collect()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(map_err)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
