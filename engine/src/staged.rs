//! `Staged`: a `Store` whose writes never wait for the disk on the caller's thread.
//!
//! `apply` puts the batch into an in-memory overlay and returns; one writer thread applies what
//! the overlay holds to the backend, in order, as one atomic batch per round. Reads look in the
//! overlay first, so a write is visible at once; `flush` waits (on the group commit's thread)
//! until the writer has applied everything staged before it, then flushes the backend: durable
//! after a later flush, as the durability rule says. A batch merged into a round is applied with
//! the batches before and after it, atomically, so after a crash the store holds a prefix of the
//! writes in their order, never a later write without an earlier one.
//!
//! A backend that is slow or stuck then holds up the writer thread and the flushes, not the
//! callers of `apply`: the broker keeps answering what needs no disk, and what waits for a flush
//! (an acknowledgement) waits. A failed write of the backend is sticky: every later flush fails
//! (as sled, fjall and redb themselves keep an I/O error until a restart), so no waiter is told
//! "durable" about a write that was lost.
//!
//! Every backend call made here, and every read through it, is watched: one that runs longer
//! than the configured threshold is logged with what it was doing (see [`Watch`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::store::{Batch, Op, Pairs, Space, Store, StoreError};
use crate::watch::Watch;

/// Staged writes by space and key: `None` is a removal.
type Overlay = BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>;

#[derive(Default)]
struct State {
    /// Writes not yet taken by the writer.
    pending: Overlay,
    /// Writes the writer is applying now.
    applying: Arc<Overlay>,
    /// Batches staged so far.
    staged: u64,
    /// Rounds the writer has taken so far (a scan that sees this change retries).
    rounds: u64,
    /// Every batch up to this one has been applied to the backend (or failed).
    applied: u64,
    /// The first write the backend refused: every flush from then on fails.
    failed: Option<String>,
    /// The last handle is gone: the writer applies what is pending and ends.
    closing: bool,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for work.
    work: Condvar,
    /// Flushes wait here for the writer.
    done: Condvar,
    /// The backend's size, refreshed by the writer (reading it may touch the disk).
    size: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// See the module doc.
pub struct Staged {
    inner: Arc<dyn Store>,
    shared: Arc<Shared>,
    watch: Watch,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Staged {
    /// Stage writes for `inner`; backend calls over `slow` are logged.
    pub fn new(inner: Arc<dyn Store>, slow: Duration) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            size: AtomicU64::new(0),
        });
        let watch = Watch::start(slow)?;
        {
            let inner = inner.clone();
            let shared = shared.clone();
            let watch = watch.clone();
            std::thread::Builder::new()
                .name("mqtter-store-writer".into())
                .spawn(move || write_loop(&*inner, &shared, &watch))?;
        }
        Ok(Self {
            inner,
            shared,
            watch,
        })
    }

    /// The overlay's entries of `space` with keys in `[from, to)` (`to` None: to the end of the
    /// space), the newest write per key, and the writer's round count when they were taken.
    fn staged_range(&self, space: Space, from: &[u8], to: Option<&[u8]>) -> (Overlay, u64) {
        let state = self.shared.lock();
        let lower = Bound::Included((space, from.to_vec()));
        let upper = match to {
            Some(to) => Bound::Excluded((space, to.to_vec())),
            None => match next_space(space) {
                Some(next) => Bound::Excluded((next, Vec::new())),
                None => Bound::Unbounded,
            },
        };
        let mut merged: Overlay = state
            .applying
            .range((lower.clone(), upper.clone()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in state.pending.range((lower, upper)) {
            merged.insert(k.clone(), v.clone());
        }
        (merged, state.rounds)
    }

    /// Read the backend with the overlay over it. The overlay is taken first; if the writer
    /// started a round while the backend was read, that round may have written newer values
    /// than the overlay taken, so the read is made again (a few times at most: a scan under a
    /// heavy write load then sees the writes of one round late, as a backend's own iterator
    /// would).
    fn overlaid(
        &self,
        space: Space,
        from: &[u8],
        to: Option<&[u8]>,
        read: impl Fn(usize) -> Result<Pairs, StoreError>,
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, StoreError> {
        let mut attempts = 0;
        loop {
            let (staged, rounds) = self.staged_range(space, from, to);
            let stored = read(staged.len())?;
            attempts += 1;
            if attempts >= 4 || self.shared.lock().rounds == rounds {
                return Ok(merge(stored, staged, limit, reverse));
            }
        }
    }
}

fn next_space(space: Space) -> Option<Space> {
    Space::ALL.iter().copied().filter(|s| *s > space).min()
}

/// Apply what is staged, round after round, until the last handle is gone.
fn write_loop(inner: &dyn Store, shared: &Shared, watch: &Watch) {
    shared.size.store(inner.size_on_disk(), Ordering::Relaxed);
    let mut sized = Instant::now();
    loop {
        let (round, upto) = {
            let mut state = shared.lock();
            while state.pending.is_empty() && !state.closing {
                state = shared.work.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.pending.is_empty() {
                return;
            }
            let round = Arc::new(std::mem::take(&mut state.pending));
            state.applying = round.clone();
            state.rounds += 1;
            (round, state.staged)
        };
        let mut batch = Batch::new();
        for ((space, key), value) in round.iter() {
            match value {
                Some(value) => batch.put(*space, key.clone(), value.clone()),
                None => batch.remove(*space, key.clone()),
            }
        }
        let result = {
            let _doing = watch.doing(|| describe(&batch));
            inner.apply(batch)
        };
        // Reading the size may touch the disk (file sizes): at most once a second.
        if sized.elapsed() >= Duration::from_secs(1) {
            shared.size.store(inner.size_on_disk(), Ordering::Relaxed);
            sized = Instant::now();
        }
        let mut state = shared.lock();
        state.applying = Arc::default();
        state.applied = upto;
        if let Err(err) = result {
            tracing::error!(cause = %err, "the store refused a write: later flushes fail");
            state.failed.get_or_insert_with(|| err.to_string());
        }
        drop(state);
        shared.done.notify_all();
    }
}

/// "apply 3 writes (queue 2, retained 1)".
fn describe(batch: &Batch) -> String {
    let mut spaces: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut count = 0;
    for op in batch.ops() {
        let space = match op {
            Op::Put { space, .. } | Op::Remove { space, .. } => space,
        };
        *spaces.entry(space.name()).or_default() += 1;
        count += 1;
    }
    let parts: Vec<String> = spaces.iter().map(|(s, n)| format!("{s} {n}")).collect();
    format!("apply {count} writes ({})", parts.join(", "))
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_all();
    }
}

impl Store for Staged {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        {
            let state = self.shared.lock();
            let full = (space, key.to_vec());
            if let Some(value) = state
                .pending
                .get(&full)
                .or_else(|| state.applying.get(&full))
            {
                return Ok(value.clone());
            }
        }
        let _doing = self
            .watch
            .doing(|| format!("read a key of {}", space.name()));
        self.inner.get(space, key)
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut state = self.shared.lock();
        for op in batch.into_ops() {
            match op {
                Op::Put { space, key, value } => {
                    state.pending.insert((space, key), Some(value));
                }
                Op::Remove { space, key } => {
                    state.pending.insert((space, key), None);
                }
            }
        }
        state.staged += 1;
        drop(state);
        self.shared.work.notify_one();
        Ok(())
    }

    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let end = prefix_end(prefix);
        let read = |_| {
            let _doing = self
                .watch
                .doing(|| format!("scan a prefix of {}", space.name()));
            self.inner.scan_prefix(space, prefix)
        };
        self.overlaid(space, prefix, end.as_deref(), read, usize::MAX, false)
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
        // Each staged removal can hide one stored pair: ask for that many more.
        let read = |staged: usize| {
            let _doing = self
                .watch
                .doing(|| format!("scan a range of {}", space.name()));
            self.inner
                .scan_range(space, from, to, limit.saturating_add(staged), reverse)
        };
        self.overlaid(space, from, Some(to), read, limit, reverse)
    }

    fn flush(&self) -> Result<(), StoreError> {
        {
            let mut state = self.shared.lock();
            let target = state.staged;
            let _doing = (state.applied < target).then(|| {
                self.watch
                    .doing(|| "wait for staged writes to be applied".into())
            });
            while state.applied < target {
                state = self
                    .shared
                    .done
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if let Some(failed) = &state.failed {
                return Err(StoreError::Backend(format!(
                    "an earlier write failed ({failed}); nothing is durable until a restart"
                )));
            }
        }
        let _doing = self.watch.doing(|| "flush".into());
        self.inner.flush()
    }

    fn size_on_disk(&self) -> u64 {
        self.shared.size.load(Ordering::Relaxed)
    }
}

/// The smallest key greater than every key starting with `prefix`, if there is one.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The stored pairs with the staged writes laid over them, in key order (reversed when
/// `reverse`), at most `limit`.
fn merge(stored: Pairs, staged: Overlay, limit: usize, reverse: bool) -> Pairs {
    if staged.is_empty() {
        let mut stored = stored;
        stored.truncate(limit);
        return stored;
    }
    let mut all: BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
    for ((_, key), value) in staged {
        match value {
            Some(value) => {
                all.insert(key, value);
            }
            None => {
                all.remove(&key);
            }
        }
    }
    if reverse {
        all.into_iter().rev().take(limit).collect()
    } else {
        all.into_iter().take(limit).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xFF]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
