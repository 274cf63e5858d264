//! `Metrics`: the broker's counters (connections, messages, bytes, drops, store errors), which
//! `$SYS` (`crate::sys`) and `/metrics` (`crate::prometheus`) publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counters updated on the hot path (relaxed atomics: they are statistics, not synchronisation).
#[derive(Debug)]
pub struct Metrics {
    pub started: Instant,
    pub clients_connected: AtomicU64,
    pub clients_maximum: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub publish_received: AtomicU64,
    pub publish_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub dropped: AtomicU64,
    /// Subscribers found slow: a publisher waited `slow_subscriber_timeout` for their queue.
    pub slow_subscribers: AtomicU64,
    /// Store writes and flushes that failed (a full disk, say): shared with the flush thread.
    pub store_errors: Arc<AtomicU64>,
    /// Connected clients that came through the WebSocket listener (the rest came over TCP).
    pub ws_connected: AtomicU64,
    /// How long flushes of the store and the message log take: shared with the flush thread.
    pub flush_latency: Arc<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            clients_connected: AtomicU64::new(0),
            clients_maximum: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            publish_received: AtomicU64::new(0),
            publish_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            slow_subscribers: AtomicU64::new(0),
            store_errors: Arc::new(AtomicU64::new(0)),
            ws_connected: AtomicU64::new(0),
            flush_latency: Arc::new(Histogram::default()),
        }
    }
}

impl Metrics {
    /// Take a connection place if fewer than `max` are taken. Taken before the CONNACK is
    /// written and in one atomic step, so that CONNECTs racing for the last place cannot all
    /// have it. Given back with `disconnected`.
    pub fn try_connect(&self, max: usize) -> bool {
        let before = self.clients_connected.fetch_add(1, Ordering::Relaxed);
        if before as usize >= max {
            self.clients_connected.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.clients_maximum
            .fetch_max(before + 1, Ordering::Relaxed);
        true
    }

    pub fn disconnected(&self) {
        self.clients_connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Upper bounds of the flush latency buckets, in microseconds.
const BOUNDS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// A latency histogram with fixed buckets (relaxed atomics: statistics).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at most `BOUNDS_US[i]` (not cumulative; summed when rendered).
    buckets: [AtomicU64; BOUNDS_US.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BOUNDS_US.iter().position(|bound| us <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Each bucket's upper bound (µs) and its observations (not cumulative).
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        BOUNDS_US
            .iter()
            .zip(&self.buckets)
            .map(|(bound, bucket)| (*bound, bucket.load(Ordering::Relaxed)))
    }

    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }
}
