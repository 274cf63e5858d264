//! A store that is stuck (as sled 0.34's deadlock left it, or a dead disk) does not stop the
//! broker from answering what needs no disk: a CONNECT without a persistent session, PINGREQ,
//! QoS 0 routing, and a clean stop on SIGTERM. Durable work waits instead: a QoS 1 PUBLISH that
//! must be stored is not acknowledged while the store is stuck. The stuck store is the daemon's
//! test-only `[store] test_hang_while` (every store call blocks while a marker file exists).

use std::time::Duration;

use crate::common::raw::{self, Client, Connect, PINGREQ, PINGRESP, PUBACK};
use crate::common::{Daemon, eventually};

#[test]
fn a_stuck_store_leaves_pings_qos0_connects_and_sigterm_answered() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("stuck");
    let config = format!(
        "[store]\ntest_hang_while = {:?}\nslow_call_ms = 200\nstop_flush_timeout_ms = 1000\n",
        marker.to_str().unwrap()
    );
    let mut daemon = Daemon::start_with(&["--allow-anonymous"], Some(&config));
    let log = daemon.data.with_file_name("daemon.log");
    daemon.log_file = Some(log.clone());
    daemon.restart();

    // A persistent subscriber: what it is owed must be stored.
    let mut durable = Client::session(daemon.mqtt, &Connect::v3("durable").clean(false));
    assert_eq!(durable.subscribe(&[("durable/#", 1)]), [1]);
    let mut fast = Client::session(daemon.mqtt, &Connect::v3("fast"));
    assert_eq!(fast.subscribe(&[("fast/#", 0)]), [0]);

    std::fs::write(&marker, b"").unwrap();
    // A QoS 1 message for the persistent session: its write reaches the stuck store, and the
    // watchdog logs the call that does not return.
    let mut publisher = Client::session(daemon.mqtt, &Connect::v3("publisher"));
    publisher
        .send(&raw::publish(false, "durable/x", 1, false, 1, b"must wait"))
        .unwrap();
    eventually("the stuck store call is logged", || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("a store call is taking long"))
    });

    // What needs no disk is answered. A new client without a persistent session connects.
    let (mut newcomer, connack) = Client::connect(daemon.mqtt, &Connect::v5("newcomer"));
    assert_eq!(
        connack.code(),
        0,
        "CONNACK refused while the store is stuck"
    );
    // PINGREQ is answered [MQTT-3.12.4-1].
    newcomer.send(&[PINGREQ << 4, 0]).unwrap();
    assert_eq!(newcomer.recv_kind(PINGRESP).kind, PINGRESP);
    // QoS 0 is routed.
    assert_eq!(newcomer.publish("fast/y", 0, false, b"quick"), 0);
    let msg = fast.next_publish();
    assert_eq!((msg.topic.as_str(), msg.payload_str()), ("fast/y", "quick"));
    // The persistent session got its message at once (visible before durable) ...
    let owed = durable.next_publish();
    assert_eq!(owed.payload_str(), "must wait");
    // ... but its publisher is not acknowledged before the write is durable.
    if let Ok(Some(packet)) = publisher.recv_within(Duration::from_secs(1)) {
        assert_ne!(
            packet.kind, PUBACK,
            "a PUBACK came while the store was stuck"
        );
    }
    newcomer.disconnect();

    // A clean stop, store still stuck.
    let status = daemon.terminate();
    assert!(
        status.success(),
        "exit status {status} with the store stuck"
    );
    std::fs::remove_file(&marker).unwrap();
}
