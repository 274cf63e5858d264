//! The `$SYS/broker/...` topics that publish the broker's counters (`crate::metrics`), as
//! Mosquitto does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::broker::Broker;
use crate::message::Message;
use crate::parking::Parking;

/// The `$SYS` topics and their current values.
pub fn snapshot(broker: &Broker, parking: &Parking) -> Vec<(&'static str, String)> {
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
        ("$SYS/broker/clients/parked", parking.parked().to_string()),
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
pub async fn run(broker: Arc<Broker>, parking: Parking, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        publish_once(&broker, &parking);
    }
}

pub fn publish_once(broker: &Broker, parking: &Parking) {
    for (topic, value) in snapshot(broker, parking) {
        let msg = Message::system(topic, value.into_bytes(), true);
        if let Err(err) = broker.publish(Arc::new(msg)) {
            tracing::warn!(cause = %err, "cannot publish $SYS");
        }
    }
}
