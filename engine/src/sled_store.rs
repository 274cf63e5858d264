//! `SledStore`: the `Store` on sled 0.34, in one data folder.
//!
//! Every space lives in one sled tree, its keys prefixed by one byte per space. One tree makes
//! every `Batch` a single sled batch, atomic without cross-tree transactions (which in sled 0.34
//! are slower and, in testing here, mixed keys of different trees up).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::store::{Batch, Op, Pairs, Space, Store, StoreError, prefixed};
use crate::unflushed::Unflushed;

/// The single-machine backend. Cheap to share: sled handles are internally reference counted.
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Writes not yet flushed: a flush with nothing written since the last one costs nothing (sled would still seal and write a buffer, and sync its file).
    unflushed: Arc<Unflushed>,
    /// Wakes a flush that sled forgot to wake (see `watch_flushes`).
    watch: Arc<FlushWatch>,
}

/// What the flush watchdog needs: when the running flush began, and where to poke.
#[derive(Debug)]
struct FlushWatch {
    tree: sled::Tree,
    /// When the running flush started, in ms since `epoch` plus one; 0 when none runs.
    started: AtomicU64,
    epoch: Instant,
}

impl FlushWatch {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }
}

/// A flush running longer than this gets a probe write.
const FLUSH_PATIENCE: Duration = Duration::from_millis(1000);

/// How often the watchdog looks.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// The probe's key: a tag byte no `Space` uses, so no scan ever sees it.
const PROBE_KEY: &[u8] = &[0xFF, b'p', b'r', b'o', b'b', b'e'];

/// sled 0.34 records a failed background write of its log (a full disk) without waking the
/// threads waiting for that write, so a `flush` under way can wait forever; any later write
/// attempt finds the error and wakes them (and the flush then returns the error). So while a
/// flush runs longer than `FLUSH_PATIENCE`, this thread makes a small probe write every
/// `WATCH_EVERY`. It ends once the store is dropped.
fn watch_flushes(watch: Weak<FlushWatch>) {
    loop {
        std::thread::sleep(WATCH_EVERY);
        let Some(watch) = watch.upgrade() else {
            return;
        };
        let started = watch.started.load(Ordering::Acquire);
        let overdue =
            started != 0 && watch.now().saturating_sub(started) > FLUSH_PATIENCE.as_millis() as u64;
        if overdue && let Err(err) = watch.tree.insert(PROBE_KEY, &[][..]) {
            tracing::warn!(cause = %err, "a flush is waiting on a store that fails its writes");
        }
    }
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
        let watch = Arc::new(FlushWatch {
            tree: tree.clone(),
            started: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let weak = Arc::downgrade(&watch);
        std::thread::Builder::new()
            .name("mqtter-store-watch".into())
            .spawn(move || watch_flushes(weak))?;
        Ok(Self {
            db,
            tree,
            unflushed: Arc::default(),
            watch,
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
        self.unflushed.written();
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
        self.unflushed.flush(|| {
            self.watch
                .started
                .store(self.watch.now(), Ordering::Release);
            let flushed = self.db.flush();
            self.watch.started.store(0, Ordering::Release);
            flushed.map(|_| ()).map_err(map_err)
        })
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
