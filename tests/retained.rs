//! Retained messages end to end: set, replace, clear with an empty payload, delivery on subscribe
//! with RETAIN=1, v5 Retain Handling 0/1/2 and Retain As Published, and retained messages
//! surviving a daemon restart.
//!
//! Numbers are from MQTT 3.1.1 unless marked v5 (the two number section 3.3.1 differently).

use crate::clients::{v3, v5};
use crate::common::Daemon;

/// 3.1.1 [MQTT-3.3.1-5]: a retained message is stored; [MQTT-3.3.1-6]: a new subscription gets
/// it; [MQTT-3.3.1-8]: with RETAIN=1; [MQTT-3.3.1-9]: an established subscription gets the live
/// message with RETAIN=0; [MQTT-3.3.1-12]: a non-retained message leaves the retained one alone.
#[tokio::test]
async fn retained_message_reaches_new_subscribers_with_retain_set() {
    use v3::QoS;
    let daemon = Daemon::start();
    let mut live = v3::connect(v3::options(&daemon, "ret-live")).await;
    live.subscribe("ret/#", QoS::AtLeastOnce).await;
    let mut publisher = v3::connect(v3::options(&daemon, "ret-pub")).await;
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, "on")
        .await;

    let got = live.next_publish().await;
    assert_eq!(&got.payload[..], b"on");
    assert!(
        !got.retain,
        "live delivery to an existing subscription has RETAIN=0"
    );

    // Not retained: delivered live, and the retained "on" stays.
    publisher
        .publish("ret/a", QoS::AtLeastOnce, false, "transient")
        .await;
    assert_eq!(&live.next_publish().await.payload[..], b"transient");

    let mut late = v3::connect(v3::options(&daemon, "ret-late")).await;
    late.subscribe("ret/+", QoS::AtLeastOnce).await;
    let got = late.next_publish().await;
    assert_eq!(got.topic, "ret/a");
    assert_eq!(&got.payload[..], b"on");
    assert!(
        got.retain,
        "a retained message sent on subscribe has RETAIN=1"
    );
    assert_eq!(got.qos, QoS::AtLeastOnce);
}

/// 3.1.1 [MQTT-3.3.1-5] (v5 [MQTT-3.3.1-5]): a retained message replaces the one before it.
#[tokio::test]
async fn a_retained_message_replaces_the_previous_one() {
    use v3::QoS;
    let daemon = Daemon::start();
    let mut publisher = v3::connect(v3::options(&daemon, "rep-pub")).await;
    publisher
        .publish("rep/t", QoS::AtLeastOnce, true, "v1")
        .await;
    publisher
        .publish("rep/t", QoS::AtLeastOnce, true, "v2")
        .await;

    let mut sub = v3::connect(v3::options(&daemon, "rep-sub")).await;
    sub.subscribe("rep/#", QoS::AtLeastOnce).await;
    let got = sub.next_publish().await;
    assert_eq!(&got.payload[..], b"v2");
    assert!(got.retain);
    // A live marker shows that nothing else (no "v1") was retained for the topic.
    publisher
        .publish("rep/marker", QoS::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"marker");
}

/// 3.1.1 [MQTT-3.3.1-10], [MQTT-3.3.1-11] (v5 [MQTT-3.3.1-6], [MQTT-3.3.1-7]): a retained PUBLISH
/// with an empty payload clears the topic's retained message (and is not itself retained); it
/// still goes to current subscribers as a normal message.
#[tokio::test]
async fn empty_retained_payload_clears_the_topic() {
    use v3::QoS;
    let daemon = Daemon::start();
    let mut publisher = v3::connect(v3::options(&daemon, "clr-pub")).await;
    publisher
        .publish("clr/a", QoS::AtLeastOnce, true, "a")
        .await;
    publisher
        .publish("clr/b", QoS::AtLeastOnce, true, "b")
        .await;

    let mut live = v3::connect(v3::options(&daemon, "clr-live")).await;
    live.subscribe("clr/a", QoS::AtLeastOnce).await;
    assert_eq!(&live.next_publish().await.payload[..], b"a");

    publisher.publish("clr/a", QoS::AtLeastOnce, true, "").await;
    let cleared = live.next_publish().await;
    assert_eq!(cleared.topic, "clr/a");
    assert!(cleared.payload.is_empty());

    let mut late = v3::connect(v3::options(&daemon, "clr-late")).await;
    late.subscribe("clr/#", QoS::AtLeastOnce).await;
    let got = late.next_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("clr/b", &b"b"[..]),
        "only clr/b is still retained"
    );
    publisher
        .publish("clr/marker", QoS::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(&late.next_publish().await.payload[..], b"marker");
}

/// v5 [MQTT-3.3.1-9]: Retain Handling 0 sends retained messages on every SUBSCRIBE;
/// [MQTT-3.3.1-10]: 1 sends them only when the subscription is new; [MQTT-3.3.1-11]: 2 never.
#[tokio::test]
async fn v5_retain_handling_decides_what_a_subscribe_gets() {
    use v5::{Filter, QoS, RetainForwardRule};
    let daemon = Daemon::start();
    let mut publisher = v5::connect(v5::options(&daemon, "rh-pub")).await;
    for handling in 0..3 {
        publisher
            .publish(&format!("rh{handling}/t"), QoS::AtLeastOnce, true, "kept")
            .await;
    }
    let filter = |handling: u8| {
        let mut f = Filter::new(format!("rh{handling}/#"), QoS::AtLeastOnce);
        f.retain_forward_rule = match handling {
            0 => RetainForwardRule::OnEverySubscribe,
            1 => RetainForwardRule::OnNewSubscribe,
            _ => RetainForwardRule::Never,
        };
        f
    };

    for handling in 0..3u8 {
        let mut sub = v5::connect(v5::options(&daemon, &format!("rh-sub{handling}"))).await;
        for attempt in ["new", "repeated"] {
            sub.subscribe_filter(filter(handling), None).await;
            let expect_retained = match handling {
                0 => true,
                1 => attempt == "new",
                _ => false,
            };
            if expect_retained {
                let got = sub.next_publish().await;
                assert_eq!(&got.payload[..], b"kept", "handling {handling}, {attempt}");
                assert!(got.retain);
            }
            // The marker must be the next thing: no (further) retained copy came first.
            publisher
                .publish(
                    &format!("rh{handling}/marker"),
                    QoS::AtLeastOnce,
                    false,
                    attempt,
                )
                .await;
            let got = sub.next_publish().await;
            assert_eq!(
                &got.payload[..],
                attempt.as_bytes(),
                "retain handling {handling}, {attempt} subscription: unexpected retained copy"
            );
        }
    }
}

/// v5 [MQTT-3.3.1-12]: with Retain As Published 0 a forwarded message has RETAIN=0;
/// [MQTT-3.3.1-13]: with 1 it keeps the RETAIN flag it was published with.
#[tokio::test]
async fn v5_retain_as_published_keeps_the_flag() {
    use v5::{Filter, QoS};
    let daemon = Daemon::start();
    let mut plain = v5::connect(v5::options(&daemon, "rap-plain")).await;
    plain.subscribe("rap/#", QoS::AtLeastOnce).await;
    let mut keeper = v5::connect(v5::options(&daemon, "rap-keep")).await;
    let mut filter = Filter::new("rap/#", QoS::AtLeastOnce);
    filter.preserve_retain = true;
    keeper.subscribe_filter(filter, None).await;

    let mut publisher = v5::connect(v5::options(&daemon, "rap-pub")).await;
    publisher
        .publish("rap/t", QoS::AtLeastOnce, true, "retained")
        .await;
    publisher
        .publish("rap/t", QoS::AtLeastOnce, false, "plain")
        .await;

    let got = plain.next_publish().await;
    assert_eq!(&got.payload[..], b"retained");
    assert!(!got.retain, "RAP 0: RETAIN cleared");
    assert!(!plain.next_publish().await.retain);

    let got = keeper.next_publish().await;
    assert_eq!(&got.payload[..], b"retained");
    assert!(got.retain, "RAP 1: RETAIN as published");
    let got = keeper.next_publish().await;
    assert_eq!(&got.payload[..], b"plain");
    assert!(!got.retain, "RAP 1: RETAIN as published (0)");
}

/// Retained messages are stored: after a crash and restart the last retained message of each
/// topic is still delivered on subscribe, and a cleared topic stays cleared.
#[tokio::test]
async fn retained_messages_survive_a_restart() {
    use v3::QoS;
    let mut daemon = Daemon::start();
    {
        let mut publisher = v3::connect(v3::options(&daemon, "keep-pub")).await;
        // QoS 1: acknowledged once durable (durability = "sync").
        publisher
            .publish("keep/a", QoS::AtLeastOnce, true, "old")
            .await;
        publisher
            .publish("keep/a", QoS::AtLeastOnce, true, "a")
            .await;
        publisher
            .publish("keep/b", QoS::AtLeastOnce, true, "b")
            .await;
        publisher
            .publish("keep/b", QoS::AtLeastOnce, true, "")
            .await;
    }
    daemon.restart();

    let mut sub = v3::connect(v3::options(&daemon, "keep-sub")).await;
    sub.subscribe("keep/#", QoS::AtLeastOnce).await;
    let got = sub.next_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("keep/a", &b"a"[..])
    );
    assert!(got.retain);
    let mut publisher = v3::connect(v3::options(&daemon, "keep-pub2")).await;
    publisher
        .publish("keep/marker", QoS::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(
        &sub.next_publish().await.payload[..],
        b"marker",
        "keep/b was cleared before the restart"
    );
}
