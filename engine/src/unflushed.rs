//! `Unflushed`: whether a backend has writes not yet made durable, and the one flush at a time
//! that makes them so (shared by the redb, fjall and sled stores).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by every write, taken by a flush: a flush with nothing written costs no sync.
#[derive(Debug, Default)]
pub(crate) struct Unflushed {
    dirty: AtomicBool,
    /// Held through a flush, from taking `dirty` to the end of its sync: a flush that finds
    /// `dirty` taken by another one under way waits for that one to be durable. Without it, it
    /// returned at once while the other's sync (an fsync, long under load) was still to come:
    /// its caller was told durable too early, and a crash lost the write.
    flushing: Mutex<()>,
}

impl Unflushed {
    /// Something was written.
    pub(crate) fn written(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Whether something was written since the last flush took the flag.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Make every write so far durable with `sync`, if there was one since the last flush; a
    /// failed sync leaves the writes pending, for the next flush to try again.
    pub(crate) fn flush<E>(&self, sync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let _flushing = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        sync().inspect_err(|_| self.written())
    }
}
