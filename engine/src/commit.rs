//! `GroupCommit`: many writers wait for one `Store::flush` together.
//!
//! A writer applies its batch, then calls [`GroupCommit::durable`] and awaits the answer. One
//! flusher thread takes every waiter that has arrived, calls `flush` once, and answers them all; a
//! waiter that arrives while a flush runs is served by the next one (its write may have missed the
//! running flush). Under load this turns N fsyncs into about one per flush time, and with no load
//! a lone writer waits for exactly one flush.

use std::sync::{Arc, mpsc};
use std::thread;

use tokio::sync::oneshot;

use crate::store::{Store, StoreError};

type Waiter = oneshot::Sender<Result<(), Arc<StoreError>>>;

/// A handle to the flusher thread. Cloning shares the thread; it stops when every handle is gone.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Waiter>,
}

impl GroupCommit {
    /// Start the flusher thread for `store`.
    pub fn start(store: Arc<dyn Store>) -> Self {
        Self::start_with(move || store.flush())
    }

    /// Start the flusher thread with `flush`: whatever makes every write so far durable (the
    /// broker flushes its store and syncs its message log).
    pub fn start_with(flush: impl Fn() -> Result<(), StoreError> + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let spawned = thread::Builder::new()
            .name("mqtter-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiters = vec![first];
                    waiters.extend(rx.try_iter());
                    let result = flush().map_err(Arc::new);
                    if let Err(err) = &result {
                        tracing::error!(cause = %err, "store flush failed");
                    }
                    for waiter in waiters {
                        let _ = waiter.send(result.clone());
                    }
                }
            });
        if let Err(err) = spawned {
            // Without a thread there is no group commit; every waiter then gets an error below.
            tracing::error!(cause = %err, "cannot start the flush thread");
        }
        Self { tx }
    }

    /// Resolve once everything applied before this call is durable.
    pub async fn durable(&self) -> Result<(), Arc<StoreError>> {
        let (tx, rx) = oneshot::channel();
        let closed = || Arc::new(StoreError::Backend("the flush thread has stopped".into()));
        self.tx.send(tx).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Batch, SledStore, Space};

    #[tokio::test]
    async fn many_waiters_all_answered_and_data_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let commit = GroupCommit::start(store.clone());
        let mut waits = Vec::new();
        for i in 0..50u32 {
            let mut batch = Batch::new();
            batch.put(Space::Queue, i.to_be_bytes().to_vec(), b"x".to_vec());
            store.apply(batch).unwrap();
            waits.push(commit.durable());
        }
        for wait in waits {
            wait.await.unwrap();
        }
        drop(commit);
        drop(store);
        // The flusher thread lets go of the store once it sees every handle gone.
        let mut reopened = SledStore::open(dir.path());
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            reopened = SledStore::open(dir.path());
        }
        let reopened = reopened.unwrap();
        assert_eq!(reopened.scan_prefix(Space::Queue, b"").unwrap().len(), 50);
    }
}
