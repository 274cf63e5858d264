//! The Prometheus text endpoint: `GET /metrics` on `metrics_listen` answers with the `$SYS`
//! counters, the connections per listener, queue depths, store errors, the free disk space and
//! a histogram of flush latency, in the text exposition format (version 0.0.4). A tiny
//! HTTP/1.1 responder: one request per connection, answered and closed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::broker::Broker;
use crate::metrics::Histogram;
use crate::parking::Parking;

/// `histogram` in the text format: its buckets cumulated, with `+Inf`, the sum and the count.
fn render_histogram(histogram: &Histogram, name: &str, help: &str, out: &mut String) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, bucket) in histogram.buckets() {
        cumulative += bucket;
        let le = bound as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let count = histogram.count();
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let sum = histogram.sum_us() as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
}

/// One metric without labels.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The whole exposition.
pub fn render(broker: &Broker, parking: &Parking) -> String {
    let m = &broker.metrics;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut out = String::with_capacity(4096);
    let connected = get(&m.clients_connected);
    let ws = get(&m.ws_connected).min(connected);
    let gauges: [(&str, &str, u64); 9] = [
        (
            "mqtter_uptime_seconds",
            "Seconds since the daemon started.",
            m.started.elapsed().as_secs(),
        ),
        ("mqtter_clients_connected", "Connected clients.", connected),
        (
            "mqtter_clients_maximum",
            "Most clients connected at once since the start.",
            get(&m.clients_maximum),
        ),
        (
            "mqtter_clients_parked",
            "Connected clients that are idle, waiting without a task.",
            parking.parked(),
        ),
        (
            "mqtter_sessions",
            "Sessions, connected or kept for their expiry.",
            broker.session_count() as u64,
        ),
        (
            "mqtter_subscriptions",
            "Subscriptions.",
            broker.router.read().map(|r| r.len()).unwrap_or(0) as u64,
        ),
        (
            "mqtter_retained_messages",
            "Retained messages.",
            broker.retained_count() as u64,
        ),
        (
            "mqtter_store_bytes",
            "Size of the store on disk.",
            broker.store.size_on_disk(),
        ),
        (
            "mqtter_disk_free_bytes",
            "Free space of the data folder's filesystem, as last looked at.",
            broker.disk.free_bytes(),
        ),
    ];
    for (name, help, value) in gauges {
        metric(&mut out, name, "gauge", help, value);
    }
    metric(
        &mut out,
        "mqtter_disk_free_limit_bytes",
        "gauge",
        "disk_free_limit in bytes: below it durable messages are refused.",
        broker.disk.limit_bytes(),
    );
    metric(
        &mut out,
        "mqtter_disk_low",
        "gauge",
        "1 while the free space is below disk_free_limit.",
        u64::from(broker.disk.is_low()),
    );
    let _ = writeln!(
        out,
        "# HELP mqtter_listener_connections Connected clients per listener.\n\
         # TYPE mqtter_listener_connections gauge\n\
         mqtter_listener_connections{{listener=\"tcp\"}} {}\n\
         mqtter_listener_connections{{listener=\"ws\"}} {ws}",
        connected - ws
    );
    let depths = broker.queue_depths();
    for (name, help, value) in [
        (
            "mqtter_queued_messages",
            "Messages queued in all sessions, waiting to be sent.",
            depths.queued,
        ),
        (
            "mqtter_queued_messages_max",
            "Messages queued in the fullest session.",
            depths.largest,
        ),
        (
            "mqtter_inflight_messages",
            "QoS 1/2 messages sent and not yet acknowledged, in all sessions.",
            depths.inflight,
        ),
    ] {
        metric(&mut out, name, "gauge", help, value);
    }
    let counters: [(&str, &str, &AtomicU64); 8] = [
        (
            "mqtter_messages_received_total",
            "MQTT packets received.",
            &m.messages_received,
        ),
        (
            "mqtter_messages_sent_total",
            "MQTT packets sent.",
            &m.messages_sent,
        ),
        (
            "mqtter_publish_received_total",
            "PUBLISH packets received.",
            &m.publish_received,
        ),
        (
            "mqtter_publish_sent_total",
            "PUBLISH packets sent.",
            &m.publish_sent,
        ),
        (
            "mqtter_publish_dropped_total",
            "Messages dropped for a full queue.",
            &m.dropped,
        ),
        (
            "mqtter_bytes_received_total",
            "Bytes received.",
            &m.bytes_received,
        ),
        ("mqtter_bytes_sent_total", "Bytes sent.", &m.bytes_sent),
        (
            "mqtter_store_errors_total",
            "Store writes and flushes that failed.",
            &m.store_errors,
        ),
    ];
    for (name, help, value) in counters {
        metric(&mut out, name, "counter", help, get(value));
    }
    for (name, help, value) in [
        (
            "mqtter_auth_failures_total",
            "Wrong passwords.",
            &broker.logins.failures,
        ),
        (
            "mqtter_auth_busy_total",
            "CONNECTs refused as Server busy: too many password checks waiting.",
            &broker.logins.busy,
        ),
    ] {
        metric(&mut out, name, "counter", help, get(value));
    }
    render_histogram(
        &m.flush_latency,
        "mqtter_flush_duration_seconds",
        "Time of one flush of the store and the message log (a group commit or a periodic one).",
        &mut out,
    );
    out
}

/// Answer scrapes on `listener` until the broker stops.
pub async fn serve(broker: Arc<Broker>, parking: Parking, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(broker.clone(), parking.clone(), stream));
            }
            Err(err) => {
                tracing::warn!(cause = %err, "metrics listener: cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Read one request head (at most 8 KiB, within 10 s) and answer it.
async fn answer(broker: Arc<Broker>, parking: Parking, mut stream: TcpStream) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let method = words.next().unwrap_or_default();
    let path = words.next().unwrap_or_default();
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, body) = match (method, path) {
        (b"GET" | b"HEAD", b"/metrics") => ("200 OK", render(&broker, &parking)),
        (b"GET" | b"HEAD", _) => ("404 Not Found", "not found: try /metrics\n".to_owned()),
        _ => ("405 Method Not Allowed", "GET /metrics\n".to_owned()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != b"HEAD" {
        response.push_str(&body);
    }
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(80));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(3));
        let mut out = String::new();
        render_histogram(&h, "f", "help", &mut out);
        assert!(out.contains("f_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("f_bucket{le=\"0.001\"} 2\n"), "{out}");
        assert!(out.contains("f_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("f_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("f_count 3\n"), "{out}");
    }
}
