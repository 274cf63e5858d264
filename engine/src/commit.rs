//! `GroupCommit`: many writers wait for one `Store::flush` together.
//!
//! A writer applies its batch, then calls [`GroupCommit::durable`] and awaits the answer. One
//! flusher thread takes every waiter that has arrived, calls `flush` once, and answers them all; a
//! waiter that arrives while a flush runs is served by the next one (its write may have missed the
//! running flush). Under load this turns N fsyncs into about one per flush time (or per `gap`,
//! the shortest time between two flush starts, when that is longer), and with no load a lone
//! writer waits for exactly one flush.

use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

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
        Self::start_with(move || store.flush(), Duration::ZERO)
    }

    /// Start the flusher thread with `flush`: whatever makes every write so far durable (the
    /// broker flushes its store and syncs its message log). Two flushes start at least `gap`
    /// apart: under load, the waiters that arrive meanwhile share the next one (fewer fsyncs
    /// for the same writes); a lone waiter waits at most `gap`.
    pub fn start_with(
        flush: impl Fn() -> Result<(), StoreError> + Send + 'static,
        gap: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let spawned = thread::Builder::new()
            .name("mqtter-flush".into())
            .spawn(move || {
                let mut last_start: Option<Instant> = None;
                while let Ok(first) = rx.recv() {
                    if let Some(since) = last_start.map(|at| at.elapsed())
                        && since < gap
                    {
                        thread::sleep(gap - since);
                    }
                    last_start = Some(Instant::now());
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

    /// Start a flush soon without waiting for it: what was applied before this call is
    /// durable once it has run.
    pub fn soon(&self) {
        let (tx, _unwaited) = oneshot::channel();
        let _ = self.tx.send(tx);
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
    async fn waiters_that_arrive_within_the_gap_share_one_flush() {
        let flushes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = flushes.clone();
        let commit = GroupCommit::start_with(
            move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            },
            Duration::from_millis(500),
        );
        commit.durable().await.unwrap();
        // Fifty writers right after a flush: the next flush waits out the gap and serves all.
        let waits: Vec<_> = (0..50).map(|_| commit.durable()).collect();
        for result in futures_join(waits).await {
            result.unwrap();
        }
        assert_eq!(flushes.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// Poll every future together (each sends its waiter on its first poll).
    async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
        let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
        let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
                if output.is_none() {
                    match future.as_mut().poll(cx) {
                        std::task::Poll::Ready(value) => *output = Some(value),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        outputs.into_iter().flatten().collect()
    }

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
