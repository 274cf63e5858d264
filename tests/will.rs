//! Last will end to end: published when a connection ends abnormally (the TCP connection drops,
//! or the client goes silent past 1.5x its keepalive), not after a normal DISCONNECT; the v5 will
//! delay (published after it; not at all when the client comes back within it).
//!
//! Numbers are from MQTT 3.1.1 unless marked v5.

use std::time::{Duration, Instant};

use crate::clients::raw::{self, p3, p5};
use crate::clients::{QUIET, v3, v5};
use crate::common::{Daemon, WAIT};

fn will_props(delay_secs: u32) -> v5::LastWillProperties {
    v5::LastWillProperties {
        delay_interval: Some(delay_secs),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    }
}

/// [MQTT-3.1.2-8]: the will is published when the network connection closes without a
/// DISCONNECT, with its topic, payload and QoS.
#[tokio::test]
async fn will_is_published_when_the_connection_drops() {
    use v3::QoS;
    let daemon = Daemon::start();
    let mut sub = v3::connect(v3::options(&daemon, "will-sub")).await;
    sub.subscribe("will/#", QoS::AtLeastOnce).await;

    let mut opts = v3::options(&daemon, "will-dropper");
    opts.set_last_will(v3::LastWill::new(
        "will/dropper",
        "connection lost",
        QoS::AtLeastOnce,
        false,
    ));
    let client = v3::connect(opts).await;
    drop(client); // the TCP connection closes, no DISCONNECT

    let got = sub.next_publish().await;
    assert_eq!(got.topic, "will/dropper");
    assert_eq!(&got.payload[..], b"connection lost");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert!(!got.retain);
}

/// [MQTT-3.1.2-17] (v5 [MQTT-3.1.2-15]): a will with Will Retain set is published as a retained
/// message, so a later subscriber still gets it.
#[tokio::test]
async fn retained_will_is_kept_for_later_subscribers() {
    use v3::QoS;
    let daemon = Daemon::start();
    let mut opts = v3::options(&daemon, "will-retainer");
    opts.set_last_will(v3::LastWill::new(
        "status/retainer",
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    let mut watcher = v3::connect(v3::options(&daemon, "will-watcher")).await;
    watcher.subscribe("status/#", QoS::AtLeastOnce).await;
    drop(v3::connect(opts).await);
    assert_eq!(&watcher.next_publish().await.payload[..], b"offline");

    let mut late = v3::connect(v3::options(&daemon, "will-late")).await;
    late.subscribe("status/#", QoS::AtLeastOnce).await;
    let got = late.next_publish().await;
    assert_eq!(got.topic, "status/retainer");
    assert_eq!(&got.payload[..], b"offline");
    assert!(got.retain);
}

/// [MQTT-3.1.2-10]: a normal DISCONNECT discards the will.
#[tokio::test]
async fn will_is_not_published_after_a_normal_disconnect() {
    use v3::QoS;
    let daemon = Daemon::start();
    let mut sub = v3::connect(v3::options(&daemon, "nowill-sub")).await;
    sub.subscribe("nowill/#", QoS::AtLeastOnce).await;

    let mut opts = v3::options(&daemon, "nowill-client");
    opts.set_last_will(v3::LastWill::new(
        "nowill/client",
        "should not be sent",
        QoS::AtLeastOnce,
        false,
    ));
    v3::connect(opts).await.disconnect().await;
    // The broker has closed the connection; give a (wrong) will time to come out, then mark.
    tokio::time::sleep(QUIET).await;
    let mut publisher = v3::connect(v3::options(&daemon, "nowill-pub")).await;
    publisher
        .publish("nowill/marker", QoS::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(
        &sub.next_publish().await.payload[..],
        b"marker",
        "the will was published after a normal DISCONNECT"
    );
}

/// [MQTT-3.1.2-24]: a client silent for 1.5x its keepalive is disconnected as if the network had
/// failed, so its will is published [MQTT-3.1.2-8]. The connection lasts at least 1.5 s for a 1 s
/// keepalive (a lower bound only: nothing here asserts speed).
#[tokio::test]
async fn silent_client_is_disconnected_after_one_and_a_half_keepalives_and_its_will_fires() {
    use rumqttc::QoS;
    let daemon = Daemon::start();
    let mut sub = v3::connect(v3::options(&daemon, "silent-sub")).await;
    sub.subscribe("silent/#", QoS::AtLeastOnce).await;

    let mut connect = raw::connect3("silent");
    connect.keep_alive = 1;
    connect.last_will = Some(p3::LastWill::new(
        "silent/will",
        "timed out",
        QoS::AtLeastOnce,
        false,
    ));
    let start = Instant::now();
    let (mut silent, ack) = raw::open3(daemon.mqtt, connect).await;
    assert_eq!(ack.code, p3::ConnectReturnCode::Success);
    let sent = silent.expect_closed().await;
    let lasted = start.elapsed();
    assert!(
        sent.is_empty(),
        "a v3.1.1 client is just disconnected: {sent:?}"
    );
    assert!(
        lasted >= Duration::from_millis(1500),
        "disconnected after {lasted:?}, before 1.5x the keepalive"
    );
    let got = sub.next_publish().await;
    assert_eq!(got.topic, "silent/will");
    assert_eq!(&got.payload[..], b"timed out");
}

/// v5 [MQTT-3.1.2-22]: the same for v5, which is told why: DISCONNECT 0x8D (Keep Alive timeout).
#[tokio::test]
async fn v5_silent_client_gets_disconnect_keepalive_timeout() {
    let daemon = Daemon::start();
    let mut connect = raw::connect5("silent5");
    connect.keep_alive = 1;
    let start = Instant::now();
    let (mut silent, ack) = raw::open5(daemon.mqtt, connect, None).await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);
    let sent = silent.expect_closed().await;
    assert!(start.elapsed() >= Duration::from_millis(1500));
    match sent.as_slice() {
        [p5::Packet::Disconnect(d)] => {
            assert_eq!(d.reason_code, p5::DisconnectReasonCode::KeepAliveTimeout)
        }
        other => panic!("expected one DISCONNECT 0x8D, got {other:?}"),
    }
}

/// v5 section 3.14.2.1: DISCONNECT with reason 0x04 (Disconnect with Will Message) closes normally
/// but asks for the will.
#[tokio::test]
async fn v5_disconnect_with_will_message_publishes_the_will() {
    use v5::QoS;
    let daemon = Daemon::start();
    let mut sub = v5::connect(v5::options(&daemon, "w4-sub")).await;
    sub.subscribe("w4/#", QoS::AtLeastOnce).await;

    let will = p5::LastWill::new("w4/client", "asked for", QoS::AtLeastOnce, false, None);
    let (mut client, _) = raw::open5(daemon.mqtt, raw::connect5("w4-client"), Some(will)).await;
    client
        .send(p5::Packet::Disconnect(p5::Disconnect::new(
            p5::DisconnectReasonCode::DisconnectWithWillMessage,
        )))
        .await;
    client.expect_closed().await;
    let got = sub.next_publish().await;
    assert_eq!(v5::topic(&got), "w4/client");
    assert_eq!(&got.payload[..], b"asked for");
}

/// v5 [MQTT-3.1.2-8]: with a Will Delay Interval the will is published once the delay has passed
/// after the connection closed (here 1 s; a lower bound only).
#[tokio::test]
async fn v5_will_is_published_after_its_delay() {
    use v5::QoS;
    let daemon = Daemon::start();
    let mut sub = v5::connect(v5::options(&daemon, "delay-sub")).await;
    sub.subscribe("delay/#", QoS::AtLeastOnce).await;

    let mut opts = v5::options(&daemon, "delay-client");
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(60));
    opts.set_last_will(v5::LastWill::new(
        "delay/client",
        "late news",
        QoS::AtLeastOnce,
        false,
        Some(will_props(1)),
    ));
    let client = v5::connect(opts).await;
    let dropped = Instant::now();
    drop(client);
    let got = sub.next_publish().await;
    assert!(
        dropped.elapsed() >= Duration::from_secs(1),
        "the will came {:?} after the drop, before its 1 s delay",
        dropped.elapsed()
    );
    assert_eq!(v5::topic(&got), "delay/client");
    assert_eq!(&got.payload[..], b"late news");
}

/// v5 [MQTT-3.1.2-8]: a client that reconnects (same client id) before the Will Delay Interval
/// has passed cancels the will.
#[tokio::test]
async fn v5_will_is_cancelled_by_reconnecting_within_the_delay() {
    use v5::QoS;
    const DELAY: u32 = 3;
    let daemon = Daemon::start();
    let started = Instant::now();
    // A round proves something only if the client was back within the delay; on a machine so
    // loaded that it was not, the will may rightly go out, and a new round (other ids, other
    // topics) is tried.
    for round in 0.. {
        let mut sub = v5::connect(v5::options(&daemon, &format!("cancel-sub-{round}"))).await;
        sub.subscribe(&format!("cancel/{round}/#"), QoS::AtLeastOnce)
            .await;
        let options = || {
            let mut opts = v5::options(&daemon, &format!("cancel-client-{round}"));
            opts.set_clean_start(false);
            opts.set_session_expiry_interval(Some(60));
            opts.set_last_will(v5::LastWill::new(
                format!("cancel/{round}/client"),
                "must not be sent",
                QoS::AtLeastOnce,
                false,
                Some(will_props(DELAY)),
            ));
            opts
        };
        let client = v5::connect(options()).await;
        // The broker sees the connection end after this, and the new one before its CONNACK.
        let dropped = Instant::now();
        drop(client);
        let back = v5::connect(options()).await;
        if dropped.elapsed() >= Duration::from_secs(DELAY.into()) {
            assert!(
                started.elapsed() < WAIT,
                "no reconnection within the {DELAY} s will delay in {WAIT:?}"
            );
            continue;
        }
        assert!(back.connack.session_present);
        // Wait out the delay (and a margin), then mark.
        tokio::time::sleep(Duration::from_secs(DELAY.into()) + QUIET).await;
        let mut publisher = v5::connect(v5::options(&daemon, &format!("cancel-pub-{round}"))).await;
        publisher
            .publish(
                &format!("cancel/{round}/marker"),
                QoS::AtLeastOnce,
                false,
                "marker",
            )
            .await;
        assert_eq!(
            &sub.next_publish().await.payload[..],
            b"marker",
            "the delayed will was published although the client came back in time"
        );
        drop(back);
        return;
    }
}

/// v5 [MQTT-3.1.2-8] on a session takeover: the new connection (Clean Start 0) continues the
/// session within the Will Delay Interval, so the old connection's will is not published.
#[tokio::test]
async fn v5_takeover_within_the_will_delay_does_not_publish_the_will() {
    use v5::QoS;
    const DELAY: u32 = 2;
    let daemon = Daemon::start();
    let mut sub = v5::connect(v5::options(&daemon, "tw-sub")).await;
    sub.subscribe("tw/#", QoS::AtLeastOnce).await;

    let options = || {
        let mut opts = v5::options(&daemon, "tw-client");
        opts.set_clean_start(false);
        opts.set_session_expiry_interval(Some(60));
        opts.set_last_will(v5::LastWill::new(
            "tw/client",
            "must not be sent",
            QoS::AtLeastOnce,
            false,
            Some(will_props(DELAY)),
        ));
        opts
    };
    let mut first = v5::connect(options()).await;
    let second = v5::connect(options()).await;
    assert!(second.connack.session_present);
    first.events.closed().await;
    tokio::time::sleep(Duration::from_secs(DELAY.into()) + QUIET).await;
    let mut publisher = v5::connect(v5::options(&daemon, "tw-pub")).await;
    publisher
        .publish("tw/marker", QoS::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(
        &sub.next_publish().await.payload[..],
        b"marker",
        "the taken-over connection's delayed will was published"
    );
    drop(second);
}

/// A parked connection (idle, waiting without a task) is still watched: silent past 1.5x its
/// keepalive it is disconnected and its will published; and when its network connection drops
/// while it is parked, its will is published too.
#[test]
fn parked_connections_still_time_out_and_publish_their_wills() {
    use crate::common::raw::{Client, Connect};
    use crate::common::wait_parked;
    let daemon = Daemon::start_with(&["--allow-anonymous"], Some("sys_interval = 1\n"));
    let mut watcher = Client::session(daemon.mqtt, &Connect::v3("parked-will-watcher"));
    assert_eq!(watcher.subscribe(&[("parked-will/#", 1)]), [1]);
    let mut silent = Client::session(
        daemon.mqtt,
        &Connect::v3("parked-silent").keep_alive(2).will(
            "parked-will/silent",
            b"timed out",
            1,
            false,
        ),
    );
    let dropped = Client::session(
        daemon.mqtt,
        &Connect::v3("parked-dropped").will("parked-will/dropped", b"gone", 1, false),
    );
    wait_parked(daemon.mqtt, 3);

    drop(dropped);
    let will = watcher.next_publish();
    assert_eq!(
        (will.topic.as_str(), will.payload_str()),
        ("parked-will/dropped", "gone")
    );
    // A v3.1.1 client is just disconnected.
    assert_eq!(silent.expect_closed(), []);
    let will = watcher.next_publish();
    assert_eq!(
        (will.topic.as_str(), will.payload_str()),
        ("parked-will/silent", "timed out")
    );
}

/// v5 [MQTT-3.1.2-8] where it is decided: the end of a connection (`Broker::detach`) and the
/// client's next connection (`Broker::attach`, Clean Start 0) on two threads at once, for many
/// client ids. Whichever the broker takes first, the client came back within the delay: its will
/// goes out neither now nor later, and its session is online. In process, on the broker's own
/// calls: two clients over TCP make the two meet within a few instructions only now and then,
/// on a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnection_racing_the_end_of_the_connection_cancels_the_delayed_will() {
    use std::sync::{Arc, Barrier};

    use mqtter::broker::Departure;
    use mqtter::message::Message;
    use mqtter::wire::Will;
    use mqtter::{Broker, Config};
    use mqtter_engine::events::{Event, EventData, EventSink, Interest};
    use mqtter_engine::{RedbStore, Store};

    /// Passes on the topic of every publish.
    struct Publishes(tokio::sync::mpsc::UnboundedSender<String>);
    impl EventSink for Publishes {
        fn interest(&self) -> Interest {
            Interest::ALL
        }
        fn on_event(&self, event: &Arc<Event>) {
            if let EventData::Publish(publish) = &event.data {
                let _ = self.0.send(publish.topic.clone());
            }
        }
    }

    const CLIENTS: usize = 1000;
    const DELAY: u32 = 1;
    const EXPIRY: u32 = 60;
    let will = |client_id: &str, delay_secs: u32| {
        let mut msg = Message::system(format!("race/{client_id}"), b"will".to_vec(), false);
        msg.publisher = Some(Arc::from(client_id));
        Will {
            msg,
            delay_secs,
            account: None,
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        data: dir.path().join("data"),
        ..Config::default()
    };
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(dir.path().join("store.redb")).expect("store"));
    let broker = Broker::open(config, store).expect("open the broker");
    let (tx, mut published) = tokio::sync::mpsc::unbounded_channel();
    broker.events.add_sink(Arc::new(Publishes(tx)));

    // Every client connected once, with a delayed will.
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("racer-{i}")).collect();
    let first: Vec<_> = ids
        .iter()
        .map(|id| {
            let owner = broker.next_token();
            let (session, _) = broker
                .attach(id, None, false, EXPIRY, owner)
                .expect("attached");
            (session, owner)
        })
        .collect();
    // Then each one's connection ends while it connects again.
    let start = Arc::new(Barrier::new(2));
    let runtime = tokio::runtime::Handle::current();
    let ends = std::thread::spawn({
        let (broker, start, runtime, ids) =
            (broker.clone(), start.clone(), runtime.clone(), ids.clone());
        move || {
            let _runtime = runtime.enter();
            for ((session, owner), id) in first.into_iter().zip(&ids) {
                start.wait();
                broker.detach(&session, owner, Departure::Will(will(id, DELAY)));
            }
        }
    });
    let comes_back = std::thread::spawn({
        let (broker, ids) = (broker.clone(), ids.clone());
        move || {
            let _runtime = runtime.enter();
            ids.iter()
                .map(|id| {
                    start.wait();
                    let owner = broker.next_token();
                    let (session, present) = broker
                        .attach(id, None, false, EXPIRY, owner)
                        .expect("attached again");
                    assert!(present, "{id}: the session was not resumed");
                    session
                })
                .collect::<Vec<_>>()
        }
    });
    ends.join().expect("the ends");
    let sessions = comes_back.join().expect("the reconnections");
    let offline: Vec<_> = sessions
        .iter()
        .filter(|s| !s.is_online())
        .map(|s| s.client_id.clone())
        .collect();
    assert!(offline.is_empty(), "reconnected, yet offline: {offline:?}");

    // A client that does not come back: its will, a second later than any of theirs, marks the
    // point by which theirs would have gone out.
    let owner = broker.next_token();
    let (control, _) = broker
        .attach("racer-control", None, false, EXPIRY, owner)
        .expect("attached");
    broker.detach(
        &control,
        owner,
        Departure::Will(will("racer-control", DELAY + 1)),
    );
    let mut sent = Vec::new();
    loop {
        let topic = tokio::time::timeout(WAIT, published.recv())
            .await
            .expect("the control's will")
            .expect("the event seam");
        if topic == "race/racer-control" {
            break;
        }
        sent.push(topic);
    }
    assert!(
        sent.is_empty(),
        "{} wills published although their clients came back within the delay: {sent:?}",
        sent.len()
    );
}
