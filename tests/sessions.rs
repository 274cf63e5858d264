//! Sessions end to end: clean session / clean start, persistent sessions that keep subscriptions
//! and queue QoS 1/2 messages while offline, v5 session expiry, the bound on a session's queue,
//! sessions surviving a daemon restart, session takeover, keepalive for a live client, and the
//! client identifier rules.
//!
//! Numbers are from MQTT 3.1.1 unless marked v5.

use std::time::{Duration, Instant};

use crate::clients::raw::{self, p3, p5};
use crate::clients::{QUIET, v3, v5};
use crate::common::{Daemon, WAIT};

fn persistent3(daemon: &Daemon, id: &str) -> v3::MqttOptions {
    let mut opts = v3::options(daemon, id);
    opts.set_clean_session(false);
    opts
}

fn persistent5(daemon: &Daemon, id: &str, expiry: u32) -> v5::MqttOptions {
    let mut opts = v5::options(daemon, id);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(expiry));
    opts
}

/// [MQTT-3.1.2-6], [MQTT-3.2.2-1]: with Clean Session 1 the session lasts as long as the
/// connection: nothing is kept, nothing is queued, the next CONNACK says no session.
#[tokio::test]
async fn clean_session_keeps_nothing() {
    use v3::QoS;
    let daemon = Daemon::start();
    let mut sub = v3::connect(v3::options(&daemon, "clean")).await;
    assert!(!sub.connack.session_present);
    sub.subscribe("clean/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = v3::connect(v3::options(&daemon, "clean-pub")).await;
    publisher
        .publish("clean/t", QoS::AtLeastOnce, false, "while away")
        .await;

    let mut sub = v3::connect(v3::options(&daemon, "clean")).await;
    assert!(!sub.connack.session_present);
    sub.subscribe("clean/#", QoS::AtLeastOnce).await;
    publisher
        .publish("clean/t", QoS::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(
        &sub.next_publish().await.payload[..],
        b"marker",
        "a message from while the clean session was gone was delivered"
    );
}

/// [MQTT-3.1.2-4], [MQTT-3.1.2-5], [MQTT-3.2.2-2]: with Clean Session 0 the session outlives the
/// connection: its subscriptions stay, QoS 1 and 2 messages published meanwhile are queued and
/// delivered on return, at their QoS and in order.
#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queues_qos1_and_qos2() {
    use v3::QoS;
    let daemon = Daemon::start();
    let mut sub = v3::connect(persistent3(&daemon, "keeper")).await;
    assert!(!sub.connack.session_present);
    sub.subscribe("keep/#", QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publisher = v3::connect(v3::options(&daemon, "keeper-pub")).await;
    publisher
        .publish("keep/1", QoS::AtLeastOnce, false, "q1")
        .await;
    publisher
        .publish("keep/2", QoS::ExactlyOnce, false, "q2")
        .await;

    let mut sub = v3::connect(persistent3(&daemon, "keeper")).await;
    assert!(sub.connack.session_present, "the session was resumed");
    let first = sub.next_publish().await;
    assert_eq!(
        (first.topic.as_str(), first.qos),
        ("keep/1", QoS::AtLeastOnce)
    );
    let second = sub.next_publish().await;
    assert_eq!(
        (second.topic.as_str(), second.qos),
        ("keep/2", QoS::ExactlyOnce)
    );

    // The subscription is still there: no SUBSCRIBE on this connection.
    publisher
        .publish("keep/3", QoS::AtLeastOnce, false, "live")
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"live");
}

/// [MQTT-3.1.2-6]: connecting with Clean Session 1 discards a persistent session: its
/// subscriptions and its queued messages.
#[tokio::test]
async fn clean_session_discards_a_persistent_session() {
    use v3::QoS;
    let daemon = Daemon::start();
    let mut sub = v3::connect(persistent3(&daemon, "discard")).await;
    sub.subscribe("discard/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = v3::connect(v3::options(&daemon, "discard-pub")).await;
    publisher
        .publish("discard/t", QoS::AtLeastOnce, false, "queued")
        .await;

    let mut sub = v3::connect(v3::options(&daemon, "discard")).await;
    assert!(!sub.connack.session_present);
    publisher
        .publish(
            "discard/t",
            QoS::AtLeastOnce,
            false,
            "to the old subscription",
        )
        .await;
    sub.subscribe("marker", QoS::AtLeastOnce).await;
    publisher
        .publish("marker", QoS::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(
        &sub.next_publish().await.payload[..],
        b"marker",
        "the discarded session's queue or subscription delivered something"
    );
}

/// v5 [MQTT-3.1.2-4]: Clean Start 1 discards the session too, whatever its expiry.
#[tokio::test]
async fn v5_clean_start_discards_the_session() {
    use v5::QoS;
    let daemon = Daemon::start();
    let mut sub = v5::connect(persistent5(&daemon, "v5-discard", 60)).await;
    sub.subscribe("v5d/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut opts = persistent5(&daemon, "v5-discard", 60);
    opts.set_clean_start(true);
    let sub = v5::connect(opts).await;
    assert!(!sub.connack.session_present);
    let mut publisher = v5::connect(v5::options(&daemon, "v5-discard-pub")).await;
    assert_eq!(
        publisher
            .publish("v5d/t", QoS::AtLeastOnce, false, "x")
            .await,
        0x10,
        "the old subscription is gone: no matching subscribers"
    );
}

/// v5 [MQTT-3.1.2-23], [MQTT-3.1.2-5]: with a Session Expiry Interval the session is kept after
/// the connection closes, and a client coming back within it finds its session and the messages
/// queued meanwhile.
#[tokio::test]
async fn v5_session_is_kept_within_its_expiry() {
    use v5::QoS;
    let daemon = Daemon::start();
    let mut sub = v5::connect(persistent5(&daemon, "exp-keep", 60)).await;
    sub.subscribe("expk/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = v5::connect(v5::options(&daemon, "exp-keep-pub")).await;
    assert_eq!(
        publisher
            .publish("expk/t", QoS::AtLeastOnce, false, "while away")
            .await,
        0x00,
        "the offline session's subscription matches"
    );
    let mut sub = v5::connect(persistent5(&daemon, "exp-keep", 60)).await;
    assert!(sub.connack.session_present);
    assert_eq!(&sub.next_publish().await.payload[..], b"while away");
}

/// v5 [MQTT-4.1.0-2]: once the Session Expiry Interval has passed after the connection closed, the
/// session is discarded (here 1 s: its subscription stops matching, and the client's next CONNECT
/// finds no session). A lower bound on the time only.
#[tokio::test]
async fn v5_session_is_gone_after_its_expiry() {
    use v5::QoS;
    let daemon = Daemon::start();
    let mut sub = v5::connect(persistent5(&daemon, "exp-gone", 1)).await;
    sub.subscribe("expg/#", QoS::AtLeastOnce).await;
    let left = Instant::now();
    sub.disconnect().await;

    let mut publisher = v5::connect(v5::options(&daemon, "exp-gone-pub")).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let code = publisher
            .publish("expg/t", QoS::AtLeastOnce, false, "probe")
            .await;
        if code == 0x10 {
            break;
        }
        assert!(Instant::now() < deadline, "the session never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        left.elapsed() >= Duration::from_secs(1),
        "the session went after {:?}, before its 1 s expiry",
        left.elapsed()
    );
    let sub = v5::connect(persistent5(&daemon, "exp-gone", 1)).await;
    assert!(!sub.connack.session_present);
}

/// v5 section 3.1.2.11.2: with no Session Expiry Interval (0) the session ends with the
/// connection, even with Clean Start 0.
#[tokio::test]
async fn v5_session_without_expiry_ends_with_the_connection() {
    use v5::QoS;
    let daemon = Daemon::start();
    let mut opts = v5::options(&daemon, "exp-zero");
    opts.set_clean_start(false);
    let mut sub = v5::connect(opts.clone()).await;
    sub.subscribe("expz/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let sub = v5::connect(opts).await;
    assert!(!sub.connack.session_present);
}

/// `[limits] max_queued` bounds what an offline session holds; with `queue_overflow = "drop_new"`
/// the messages past the bound are dropped for that session (the publisher is still
/// acknowledged) and the first ones are kept.
#[tokio::test]
async fn offline_queue_is_bounded_and_drops_new_messages() {
    use v3::QoS;
    let daemon = Daemon::start_with(
        &["--allow-anonymous"],
        Some("[limits]\nmax_queued = 3\nqueue_overflow = \"drop_new\"\n"),
    );
    let mut sub = v3::connect(persistent3(&daemon, "bounded")).await;
    sub.subscribe("bounded/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = v3::connect(v3::options(&daemon, "bounded-pub")).await;
    for i in 0..6 {
        publisher
            .publish("bounded/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let mut sub = v3::connect(persistent3(&daemon, "bounded")).await;
    assert!(sub.connack.session_present);
    for i in 0..3 {
        assert_eq!(
            String::from_utf8_lossy(&sub.next_publish().await.payload),
            format!("m{i}")
        );
    }
    publisher
        .publish("bounded/t", QoS::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(
        String::from_utf8_lossy(&sub.next_publish().await.payload),
        "marker",
        "messages past the bound were queued"
    );
}

/// With `queue_overflow = "drop_oldest"` an offline session keeps the newest `max_queued`
/// messages; the ones it dropped stay dropped after a restart (their stored copies go with
/// them) and are counted in `$SYS/broker/publish/messages/dropped`.
#[test]
fn offline_queue_drop_oldest_keeps_the_newest_messages_across_a_restart() {
    use crate::common::raw::{Client, Connect};
    use crate::common::{nothing_comes_before_a_later_message, offline_subscriber};
    let mut daemon = Daemon::start_with(
        &["--allow-anonymous"],
        Some("sys_interval = 1\n[limits]\nmax_queued = 3\nqueue_overflow = \"drop_oldest\"\n"),
    );
    let session = offline_subscriber(daemon.mqtt, "newest", "newest/#");
    let mut publisher = Client::session(daemon.mqtt, &Connect::v3("newest-pub"));
    for i in 0..6 {
        let payload = format!("m{i}");
        assert_eq!(
            publisher.publish("newest/t", 1, false, payload.as_bytes()),
            0
        );
    }
    let mut watcher = Client::session(daemon.mqtt, &Connect::v3("newest-watcher"));
    assert_eq!(
        watcher.subscribe(&[("$SYS/broker/publish/messages/dropped", 0)]),
        [0]
    );
    crate::common::eventually("three drops counted", || {
        watcher
            .next_publish_within(WAIT)
            .is_some_and(|msg| msg.payload_str() == "3")
    });

    daemon.restart();
    let mut sub = Client::session(daemon.mqtt, &session);
    for i in 3..6 {
        assert_eq!(sub.next_publish().payload_str(), format!("m{i}"));
    }
    nothing_comes_before_a_later_message(daemon.mqtt, &mut sub, "newest/t");
}

/// Sessions are stored: after a crash (SIGKILL) and restart a persistent session is resumed with
/// its subscription and the QoS 1 message queued for it before the crash.
#[tokio::test]
async fn persistent_sessions_survive_a_restart() {
    use v3::QoS;
    let mut daemon = Daemon::start();
    {
        let mut sub = v3::connect(persistent3(&daemon, "survivor")).await;
        sub.subscribe("survive/#", QoS::AtLeastOnce).await;
        sub.disconnect().await;
        let mut publisher = v3::connect(v3::options(&daemon, "survivor-pub")).await;
        // Acknowledged once durable (durability = "sync").
        publisher
            .publish("survive/t", QoS::AtLeastOnce, false, "before the crash")
            .await;
    }
    daemon.restart();

    let mut sub = v3::connect(persistent3(&daemon, "survivor")).await;
    assert!(sub.connack.session_present, "the session survived");
    let got = sub.next_publish().await;
    assert_eq!(got.topic, "survive/t");
    assert_eq!(&got.payload[..], b"before the crash");
    let mut publisher = v3::connect(v3::options(&daemon, "survivor-pub")).await;
    publisher
        .publish("survive/t", QoS::AtLeastOnce, false, "after")
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"after");
}

/// [MQTT-3.1.4-2]: a second connection with a connected client id closes the first one; with
/// Clean Session 0 the second one continues the session.
#[tokio::test]
async fn second_connection_with_the_same_client_id_takes_over() {
    use v3::QoS;
    let daemon = Daemon::start();
    let mut first = v3::connect(persistent3(&daemon, "twin")).await;
    first.subscribe("twin/#", QoS::AtLeastOnce).await;
    let mut second = v3::connect(persistent3(&daemon, "twin")).await;
    assert!(second.connack.session_present);
    first.events.closed().await;

    let mut publisher = v3::connect(v3::options(&daemon, "twin-pub")).await;
    publisher
        .publish("twin/t", QoS::AtLeastOnce, false, "to the new one")
        .await;
    assert_eq!(&second.next_publish().await.payload[..], b"to the new one");
}

/// v5 [MQTT-3.1.4-3]: the taken-over connection is told why: DISCONNECT 0x8E (Session taken
/// over); its will (no delay) is published as for any connection closed without a normal
/// DISCONNECT (v5 section 3.1.4).
#[tokio::test]
async fn v5_takeover_sends_disconnect_session_taken_over() {
    use v5::QoS;
    let daemon = Daemon::start();
    let mut watcher = v5::connect(v5::options(&daemon, "twin5-watch")).await;
    watcher.subscribe("twin5/#", QoS::AtLeastOnce).await;

    let will = p5::LastWill::new("twin5/will", "taken over", QoS::AtLeastOnce, false, None);
    let (mut first, _) = raw::open5(daemon.mqtt, raw::connect5("twin5"), Some(will)).await;
    let _second = v5::connect(v5::options(&daemon, "twin5")).await;
    match first.expect_closed().await.as_slice() {
        [p5::Packet::Disconnect(d)] => {
            assert_eq!(d.reason_code, p5::DisconnectReasonCode::SessionTakenOver)
        }
        other => panic!("expected one DISCONNECT 0x8E, got {other:?}"),
    }
    assert_eq!(&watcher.next_publish().await.payload[..], b"taken over");
}

/// [MQTT-3.12.4-1]: a client that sends PINGREQ within its keepalive gets PINGRESP each time and
/// stays connected well past 1.5x the keepalive.
#[tokio::test]
async fn pinging_client_stays_connected() {
    let daemon = Daemon::start();
    let mut connect = raw::connect3("pinger");
    connect.keep_alive = 2;
    let (mut client, _) = raw::open3(daemon.mqtt, connect).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.send(p3::Packet::PingReq).await;
        assert_eq!(client.recv().await, p3::Packet::PingResp);
    }
    assert!(
        client.recv_within(QUIET).await.is_err(),
        "the broker closed or sent something unasked"
    );
}

/// [MQTT-3.1.3-6]: an empty client id is accepted with Clean Session 1; [MQTT-3.1.3-8]: refused
/// with Clean Session 0, by CONNACK 0x02 (identifier rejected), and the connection is closed
/// [MQTT-3.2.2-5].
#[tokio::test]
async fn v311_empty_client_id_needs_a_clean_session() {
    let daemon = Daemon::start();
    let (_client, ack) = raw::open3(daemon.mqtt, raw::connect3("")).await;
    assert_eq!(ack.code, p3::ConnectReturnCode::Success);
    assert!(!ack.session_present);

    let mut connect = raw::connect3("");
    connect.clean_session = false;
    let (mut refused, ack) = raw::open3(daemon.mqtt, connect).await;
    assert_eq!(ack.code, p3::ConnectReturnCode::BadClientId);
    assert!(!ack.session_present, "[MQTT-3.2.2-4]");
    refused.expect_closed().await;
}

/// Idle connections park (they wait without a task of their own until they have something to
/// do): a parked subscriber still gets what is published to it, QoS 1 and QoS 0, however often
/// it parks, and a parked client is still taken over by a new connection with its client id, is
/// told so (v5: DISCONNECT 0x8E) and its will is published.
#[test]
fn parked_connections_still_get_messages_and_are_taken_over() {
    use crate::common::raw::{Client, Connect, DISCONNECT};
    use crate::common::wait_parked;
    let daemon = Daemon::start_with(&["--allow-anonymous"], Some("sys_interval = 1\n"));
    let mut subs: Vec<Client> = (0..3)
        .map(|i| {
            let mut sub = Client::session(daemon.mqtt, &Connect::v3(&format!("parked-{i}")));
            assert_eq!(sub.subscribe(&[("parked/#", 1)]), [1]);
            sub
        })
        .collect();
    let mut watcher = Client::session(daemon.mqtt, &Connect::v5("parked-watcher-of-wills"));
    assert_eq!(watcher.subscribe(&[("will/#", 1)]), [0x01]);
    let mut twin = Client::session(
        daemon.mqtt,
        &Connect::v5("parked-twin").will("will/twin", b"taken over", 1, false),
    );
    let mut publisher = Client::session(daemon.mqtt, &Connect::v3("parked-pub"));

    // QoS 1, then, parked again (their PUBACKs read), QoS 0.
    for (topic, payload, qos) in [("parked/one", "first", 1), ("parked/two", "second", 0)] {
        wait_parked(daemon.mqtt, 6);
        assert_eq!(publisher.publish(topic, qos, false, payload.as_bytes()), 0);
        for sub in &mut subs {
            let msg = sub.next_publish();
            assert_eq!(
                (msg.topic.as_str(), msg.payload_str(), msg.qos),
                (topic, payload, qos)
            );
        }
    }

    wait_parked(daemon.mqtt, 6);
    let _new = Client::session(daemon.mqtt, &Connect::v5("parked-twin"));
    let packets = twin.expect_closed();
    assert!(
        matches!(packets.as_slice(), [p] if p.kind == DISCONNECT && p.code() == 0x8E),
        "expected one DISCONNECT 0x8E, got {packets:?}"
    );
    let will = watcher.next_publish();
    assert_eq!(
        (will.topic.as_str(), will.payload_str()),
        ("will/twin", "taken over")
    );
}
