//! Broker counters and the `$SYS/broker/...` topics that publish them, as Mosquitto does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::broker::Broker;
use crate::message::Message;
use crate::prometheus::Histogram;

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

/// The `$SYS` topics and their current values.
pub fn snapshot(broker: &Broker) -> Vec<(&'static str, String)> {
    let m = &broker.metrics;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
    let connected = m.clients_connected.load(Ordering::Relaxed);
    let total = broker.session_count() as u64;
    let subscriptions = broker.router.read().map(|r| r.len()).unwrap_or(0);
    vec![
        (
            "$SYS/broker/version",
            format!("mqtter {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", m.started.elapsed().as_secs()),
        ),
        ("$SYS/broker/clients/connected", connected.to_string()),
        ("$SYS/broker/clients/active", connected.to_string()),
        (
            "$SYS/broker/clients/total",
            total.max(connected).to_string(),
        ),
        (
            "$SYS/broker/clients/disconnected",
            total.saturating_sub(connected).to_string(),
        ),
        ("$SYS/broker/clients/maximum", get(&m.clients_maximum)),
        // Connected and idle: waiting in the parking lot, without a task.
        (
            "$SYS/broker/clients/parked",
            broker.parking.parked().to_string(),
        ),
        ("$SYS/broker/messages/received", get(&m.messages_received)),
        ("$SYS/broker/messages/sent", get(&m.messages_sent)),
        (
            "$SYS/broker/publish/messages/received",
            get(&m.publish_received),
        ),
        ("$SYS/broker/publish/messages/sent", get(&m.publish_sent)),
        ("$SYS/broker/publish/messages/dropped", get(&m.dropped)),
        ("$SYS/broker/clients/slow", get(&m.slow_subscribers)),
        ("$SYS/broker/bytes/received", get(&m.bytes_received)),
        ("$SYS/broker/bytes/sent", get(&m.bytes_sent)),
        (
            "$SYS/broker/retained messages/count",
            broker.retained_count().to_string(),
        ),
        ("$SYS/broker/subscriptions/count", subscriptions.to_string()),
        (
            "$SYS/broker/store/bytes",
            broker.store.size_on_disk().to_string(),
        ),
        ("$SYS/broker/store/errors", get(&m.store_errors)),
        // Tasks alive: connections with a task (not the parked ones), timers (session expiry,
        // will delay), the background ones. What grows here without connections is kept.
        (
            "$SYS/broker/tasks",
            tokio::runtime::Handle::try_current()
                .map_or(0, |h| h.metrics().num_alive_tasks())
                .to_string(),
        ),
        (
            "$SYS/broker/auth/failures",
            broker.logins.failures.load(Ordering::Relaxed).to_string(),
        ),
        (
            "$SYS/broker/auth/busy",
            broker.logins.busy.load(Ordering::Relaxed).to_string(),
        ),
        (
            "$SYS/broker/store/disk_free",
            broker.disk.free_bytes().to_string(),
        ),
        (
            "$SYS/broker/store/disk_low",
            u8::from(broker.disk.is_low()).to_string(),
        ),
    ]
}

/// Publish the `$SYS` topics (retained) every `interval` until the broker stops.
pub async fn run(broker: Arc<Broker>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        publish_once(&broker);
    }
}

pub fn publish_once(broker: &Broker) {
    for (topic, value) in snapshot(broker) {
        let msg = Message::system(topic, value.into_bytes(), true);
        if let Err(err) = broker.publish(Arc::new(msg)) {
            tracing::warn!(cause = %err, "cannot publish $SYS");
        }
    }
}
