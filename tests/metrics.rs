//! The Prometheus endpoint on the real daemon: `GET /metrics` on `metrics_listen` is scraped
//! over plain HTTP/1.1 and parsed as the text exposition format; its values follow what the
//! clients did (connections per listener, queue depths, messages, flushes). Off unless
//! configured.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::common::raw::{Client, Connect};
use crate::common::ws::RawWs;
use crate::common::{Daemon, WAIT, eventually, offline_subscriber};

/// One HTTP/1.1 request; the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("the response, then a close");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_owned();
    if let Some(length) = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
    {
        assert_eq!(length.parse::<usize>().unwrap(), body.len(), "{head}");
    }
    (status, body.to_owned())
}

/// Scrape and parse: every sample by its name with labels, and every metric has a TYPE.
pub(crate) fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let mut typed = Vec::new();
    let mut samples = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("name value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
        let family = name.split('{').next().unwrap();
        assert!(
            typed.iter().any(|t| family == t
                || family
                    .strip_prefix(t.as_str())
                    .is_some_and(|s| { ["_bucket", "_sum", "_count"].contains(&s) })),
            "no TYPE before {line}"
        );
        assert!(
            samples.insert(name.to_owned(), value).is_none(),
            "twice: {line}"
        );
    }
    samples
}

#[test]
fn metrics_are_scraped_from_the_running_daemon() {
    let daemon = Daemon::start_with(
        &["--allow-anonymous"],
        Some("metrics_listen = \"127.0.0.1:0\"\n"),
    );
    let addr = daemon
        .metrics
        .expect("the daemon announces its metrics listener");

    // Three messages for an offline persistent session (queued, stored: flushed before each
    // PUBACK), one TCP and one WebSocket client connected.
    let session = offline_subscriber(daemon.mqtt, "metrics-keeper", "metrics/t");
    let mut publisher = Client::session(daemon.mqtt, &Connect::v5("metrics-pub"));
    for i in 0..3u8 {
        assert_eq!(publisher.publish("metrics/t", 1, false, &[i]), 0);
    }
    let (mut ws, head) = RawWs::upgrade(daemon.ws.unwrap(), &daemon.ws_path, Some("mqtt"));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws.send_frame(0x2, &Connect::v3("metrics-ws").encode());
    assert_eq!(ws.recv_mqtt().code(), 0);

    // The subscriber's connection ends a moment after its DISCONNECT.
    eventually("one client on each listener", || {
        let m = scrape(addr);
        m["mqtter_listener_connections{listener=\"tcp\"}"] == 1.0
            && m["mqtter_listener_connections{listener=\"ws\"}"] == 1.0
    });
    let m = scrape(addr);
    let at = |name: &str| *m.get(name).unwrap_or_else(|| panic!("no {name} in {m:?}"));
    assert_eq!(at("mqtter_clients_connected"), 2.0);
    assert_eq!(at("mqtter_queued_messages"), 3.0);
    assert_eq!(at("mqtter_queued_messages_max"), 3.0);
    assert!(at("mqtter_publish_received_total") >= 3.0);
    assert_eq!(at("mqtter_store_errors_total"), 0.0);
    assert_eq!(at("mqtter_auth_failures_total"), 0.0);
    assert!(at("mqtter_disk_free_bytes") > 0.0);
    assert_eq!(at("mqtter_disk_low"), 0.0);
    let flushes = at("mqtter_flush_duration_seconds_count");
    assert!(flushes >= 3.0, "each PUBACK waited for a flush: {flushes}");
    assert_eq!(
        at("mqtter_flush_duration_seconds_bucket{le=\"+Inf\"}"),
        flushes
    );
    assert!(at("mqtter_flush_duration_seconds_sum") > 0.0);

    // The subscriber takes its messages; the WebSocket client leaves.
    let mut keeper = Client::session(daemon.mqtt, &session);
    for _ in 0..3 {
        keeper.next_publish();
    }
    drop(ws);
    eventually("the queue and the WebSocket connection are gone", || {
        let m = scrape(addr);
        m["mqtter_queued_messages"] == 0.0
            && m["mqtter_inflight_messages"] == 0.0
            && m["mqtter_listener_connections{listener=\"ws\"}"] == 0.0
            && m["mqtter_listener_connections{listener=\"tcp\"}"] == 2.0
    });

    let (status, _) = get(addr, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn no_metrics_listener_unless_configured() {
    let daemon = Daemon::start();
    assert_eq!(daemon.metrics, None);
}
