//! Quality of service end to end: QoS 0/1/2 both ways for v3.1.1 and v5, packet ids, the QoS
//! downgrade to the subscription's maximum, exactly-once for QoS 2, the in-flight window a v5
//! client's Receive Maximum sets, and redelivery on a resumed session.

use crate::clients::raw::{self, p3, p5};
use crate::clients::{QUIET, v3, v5};
use crate::common::Daemon;

#[tokio::test]
async fn v311_qos_0_1_2_round_trip() {
    use v3::{Event, Packet, QoS, SubscribeReasonCode};
    let daemon = Daemon::start();
    let mut sub = v3::connect(v3::options(&daemon, "qos3-sub")).await;
    assert_eq!(
        sub.subscribe("qos/#", QoS::ExactlyOnce).await,
        SubscribeReasonCode::Success(QoS::ExactlyOnce)
    );
    let mut publisher = v3::connect(v3::options(&daemon, "qos3-pub")).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let level = qos as u8;
        // `publish` returns once the broker acknowledged: PUBACK for QoS 1 [MQTT-4.3.2-2],
        // PUBREC then PUBCOMP for QoS 2 [MQTT-4.3.3-2].
        publisher
            .publish(&format!("qos/{level}"), qos, false, format!("m{level}"))
            .await;
        let got = sub.next_publish().await;
        assert_eq!(got.topic, format!("qos/{level}"));
        assert_eq!(&got.payload[..], format!("m{level}").as_bytes());
        assert_eq!(got.qos, qos, "delivered at the QoS it was published with");
        assert!(!got.dup);
        if qos == QoS::AtMostOnce {
            // [MQTT-2.3.1-5]: a QoS 0 PUBLISH carries no packet id.
            assert_eq!(got.pkid, 0);
        } else {
            // [MQTT-2.3.1-1]: QoS 1/2 PUBLISHes carry a non-zero packet id.
            assert_ne!(got.pkid, 0);
        }
        if qos == QoS::ExactlyOnce {
            // [MQTT-4.3.3-1]: after the subscriber's PUBREC the broker sends PUBREL.
            let pkid = got.pkid;
            sub.events
                .wait_for("PUBREL", |e| match e {
                    Event::Incoming(Packet::PubRel(r)) if r.pkid == pkid => Some(()),
                    _ => None,
                })
                .await;
        }
    }
}

#[tokio::test]
async fn v5_qos_0_1_2_round_trip() {
    use v5::{Event, Packet, QoS, SubscribeReasonCode};
    let daemon = Daemon::start();
    let mut sub = v5::connect(v5::options(&daemon, "qos5-sub")).await;
    assert_eq!(
        sub.subscribe("qos/#", QoS::ExactlyOnce).await,
        SubscribeReasonCode::Success(QoS::ExactlyOnce)
    );
    let mut publisher = v5::connect(v5::options(&daemon, "qos5-pub")).await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let level = qos as u8;
        let code = publisher
            .publish(&format!("qos/{level}"), qos, false, format!("m{level}"))
            .await;
        assert_eq!(
            code, 0x00,
            "a matched QoS {level} publish is acknowledged with Success"
        );
        let got = sub.next_publish().await;
        assert_eq!(v5::topic(&got), format!("qos/{level}"));
        assert_eq!(&got.payload[..], format!("m{level}").as_bytes());
        assert_eq!(got.qos, qos);
        assert!(!got.dup);
        if qos == QoS::AtMostOnce {
            assert_eq!(got.pkid, 0); // [MQTT-2.2.1-2]
        } else {
            assert_ne!(got.pkid, 0); // [MQTT-2.2.1-4]
        }
        if qos == QoS::ExactlyOnce {
            let pkid = got.pkid;
            sub.events
                .wait_for("PUBREL", |e| match e {
                    Event::Incoming(Packet::PubRel(r)) if r.pkid == pkid => Some(()),
                    _ => None,
                })
                .await;
        }
    }
}

/// v5 [MQTT-3.8.4-8] (and v3.1.1 section 3.8.4): a message is delivered at the lower of the QoS
/// it was published with and the QoS the subscription was granted; never upgraded.
#[tokio::test]
async fn delivered_qos_is_the_lower_of_message_and_subscription() {
    use v3::QoS;
    let daemon = Daemon::start();
    let mut subs = Vec::new();
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let mut sub = v3::connect(v3::options(&daemon, &format!("down-sub{i}"))).await;
        sub.subscribe("down/t", qos).await;
        subs.push((sub, qos));
    }
    let mut publisher = v3::connect(v3::options(&daemon, "down-pub")).await;
    for published in [QoS::ExactlyOnce, QoS::AtLeastOnce, QoS::AtMostOnce] {
        publisher
            .publish("down/t", published, false, format!("q{}", published as u8))
            .await;
        for (sub, granted) in subs.iter_mut() {
            let got = sub.next_publish().await;
            assert_eq!(&got.payload[..], format!("q{}", published as u8).as_bytes());
            let expected = if (published as u8) < (*granted as u8) {
                published
            } else {
                *granted
            };
            assert_eq!(
                got.qos, expected,
                "published at {published:?} to a {granted:?} subscription"
            );
        }
    }
}

/// [MQTT-4.3.3-2] (v3.1.1; v5 [MQTT-4.3.3-9]): until PUBREL, a PUBLISH resent with the same
/// packet id is acknowledged again with PUBREC and not delivered a second time; after PUBCOMP
/// the id is free and starts a new message.
#[tokio::test]
async fn qos2_publish_resent_before_pubrel_is_delivered_once() {
    use rumqttc::QoS;
    let daemon = Daemon::start();
    let mut sub = v3::connect(v3::options(&daemon, "once-sub")).await;
    sub.subscribe("once/t", QoS::ExactlyOnce).await;

    let (mut publisher, ack) = raw::open3(daemon.mqtt, raw::connect3("once-pub")).await;
    assert_eq!(ack.code, p3::ConnectReturnCode::Success);
    publisher
        .send(raw::publish3(
            "once/t",
            QoS::ExactlyOnce,
            7,
            false,
            b"first",
        ))
        .await;
    assert_eq!(
        publisher.recv().await,
        p3::Packet::PubRec(p3::PubRec::new(7))
    );
    // The same message again, as a client would resend it after a lost PUBREC.
    publisher
        .send(raw::publish3("once/t", QoS::ExactlyOnce, 7, true, b"first"))
        .await;
    assert_eq!(
        publisher.recv().await,
        p3::Packet::PubRec(p3::PubRec::new(7))
    );
    publisher.send(p3::Packet::PubRel(p3::PubRel::new(7))).await;
    assert_eq!(
        publisher.recv().await,
        p3::Packet::PubComp(p3::PubComp::new(7))
    );
    // Released: id 7 now names a new message.
    publisher
        .send(raw::publish3(
            "once/t",
            QoS::ExactlyOnce,
            7,
            false,
            b"second",
        ))
        .await;
    assert_eq!(
        publisher.recv().await,
        p3::Packet::PubRec(p3::PubRec::new(7))
    );
    publisher.send(p3::Packet::PubRel(p3::PubRel::new(7))).await;
    assert_eq!(
        publisher.recv().await,
        p3::Packet::PubComp(p3::PubComp::new(7))
    );

    assert_eq!(&sub.next_publish().await.payload[..], b"first");
    assert_eq!(
        &sub.next_publish().await.payload[..],
        b"second",
        "the resent PUBLISH was delivered twice"
    );
}

/// v5 [MQTT-3.3.4-9]: the broker never has more unacknowledged QoS 1/2 PUBLISHes out to a client
/// than the client's Receive Maximum; each acknowledgement lets one more through, with packet
/// ids unique among those in flight [MQTT-2.2.1-4].
#[tokio::test]
async fn v5_receive_maximum_caps_unacknowledged_deliveries() {
    use v5::QoS;
    let daemon = Daemon::start();
    let mut connect = raw::connect5("window-sub");
    let mut props = p5::ConnectProperties::new();
    props.receive_maximum = Some(2);
    connect.properties = Some(props);
    let (mut sub, ack) = raw::open5(daemon.mqtt, connect, None).await;
    assert_eq!(ack.code, p5::ConnectReturnCode::Success);
    let suback = sub
        .subscribe(1, vec![p5::Filter::new("window/t", QoS::AtLeastOnce)], None)
        .await;
    assert_eq!(
        suback.return_codes,
        [p5::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let mut publisher = v5::connect(v5::options(&daemon, "window-pub")).await;
    for i in 0..5 {
        publisher
            .publish("window/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }

    let next = |packet: p5::Packet| match packet {
        p5::Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    let first = next(sub.recv().await);
    let second = next(sub.recv().await);
    assert_eq!(&first.payload[..], b"m0");
    assert_eq!(&second.payload[..], b"m1");
    assert_ne!(first.pkid, second.pkid, "ids in flight are distinct");
    assert!(
        sub.recv_within(QUIET).await.is_err(),
        "a third PUBLISH went out with two unacknowledged"
    );

    sub.send(p5::Packet::PubAck(p5::PubAck::new(first.pkid, None)))
        .await;
    let third = next(sub.recv().await);
    assert_eq!(&third.payload[..], b"m2");
    assert!(
        sub.recv_within(QUIET).await.is_err(),
        "one acknowledgement let more than one PUBLISH through"
    );

    let mut in_flight = vec![second.pkid, third.pkid];
    let mut rest = Vec::new();
    while rest.len() < 2 {
        let pkid = in_flight.remove(0);
        sub.send(p5::Packet::PubAck(p5::PubAck::new(pkid, None)))
            .await;
        let p = next(sub.recv().await);
        assert!(
            !in_flight.contains(&p.pkid),
            "id {} reused in flight",
            p.pkid
        );
        in_flight.push(p.pkid);
        rest.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    assert_eq!(rest, ["m3", "m4"]);
}

/// [MQTT-4.4.0-1]: on a resumed session the broker resends an unacknowledged QoS 1 PUBLISH with
/// its original packet id, and with DUP set as every resend must [MQTT-3.3.1-1]. Once
/// acknowledged it is not sent again.
#[tokio::test]
async fn resumed_session_resends_unacknowledged_qos1_with_dup_and_same_id() {
    use rumqttc::QoS;
    let daemon = Daemon::start();
    let mut connect = raw::connect3("redeliver");
    connect.clean_session = false;
    let (mut sub, ack) = raw::open3(daemon.mqtt, connect.clone()).await;
    assert!(!ack.session_present);
    sub.subscribe(1, "redo/#", QoS::AtLeastOnce).await;

    let mut publisher = v3::connect(v3::options(&daemon, "redeliver-pub")).await;
    publisher
        .publish("redo/a", QoS::AtLeastOnce, false, "keep me")
        .await;
    let original = match sub.recv().await {
        p3::Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert!(!original.dup);
    assert_eq!(original.qos, QoS::AtLeastOnce);

    // No PUBACK; leave with a normal DISCONNECT (the session stays: clean session 0).
    sub.send(p3::Packet::Disconnect).await;
    sub.expect_closed().await;

    let (mut sub, ack) = raw::open3(daemon.mqtt, connect.clone()).await;
    assert!(ack.session_present, "[MQTT-3.2.2-2] session present");
    let resent = match sub.recv().await {
        p3::Packet::Publish(p) => p,
        other => panic!("expected the PUBLISH again, got {other:?}"),
    };
    assert_eq!(resent.pkid, original.pkid, "same packet id");
    assert!(resent.dup, "DUP set on the resend");
    assert_eq!(resent.topic, "redo/a");
    assert_eq!(&resent.payload[..], b"keep me");
    sub.send(p3::Packet::PubAck(p3::PubAck::new(resent.pkid)))
        .await;

    // Acknowledged now: a later message comes next, fresh (DUP 0).
    publisher
        .publish("redo/b", QoS::AtLeastOnce, false, "next")
        .await;
    let next = match sub.recv().await {
        p3::Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert_eq!(next.topic, "redo/b");
    assert!(!next.dup);
}

/// [MQTT-4.4.0-1]: a QoS 2 delivery whose PUBREC arrived but whose PUBCOMP did not is resumed with
/// PUBREL (same id), not with the PUBLISH.
#[tokio::test]
async fn resumed_session_resends_pubrel_for_a_received_qos2() {
    use rumqttc::QoS;
    let daemon = Daemon::start();
    let mut connect = raw::connect3("rel-sub");
    connect.clean_session = false;
    let (mut sub, _) = raw::open3(daemon.mqtt, connect.clone()).await;
    sub.subscribe(1, "rel/#", QoS::ExactlyOnce).await;

    let mut publisher = v3::connect(v3::options(&daemon, "rel-pub")).await;
    publisher
        .publish("rel/a", QoS::ExactlyOnce, false, "two")
        .await;
    let publish = match sub.recv().await {
        p3::Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    assert_eq!(publish.qos, QoS::ExactlyOnce);
    sub.send(p3::Packet::PubRec(p3::PubRec::new(publish.pkid)))
        .await;
    assert_eq!(
        sub.recv().await,
        p3::Packet::PubRel(p3::PubRel::new(publish.pkid))
    );
    // No PUBCOMP: the connection drops.
    drop(sub);

    let (mut sub, ack) = raw::open3(daemon.mqtt, connect).await;
    assert!(ack.session_present);
    assert_eq!(
        sub.recv().await,
        p3::Packet::PubRel(p3::PubRel::new(publish.pkid)),
        "PUBREL resent with the original id"
    );
    sub.send(p3::Packet::PubComp(p3::PubComp::new(publish.pkid)))
        .await;
    publisher
        .publish("rel/b", QoS::AtMostOnce, false, "after")
        .await;
    match sub.recv().await {
        p3::Packet::Publish(p) => assert_eq!(p.topic, "rel/b", "nothing else was owed"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// v5 [MQTT-4.9.0-1], [MQTT-4.9.0-2]: the send quota starts again from the client's Receive
/// Maximum on every connection, and resent PUBLISHes use it up like new ones: a client resuming
/// with a smaller Receive Maximum gets its unacknowledged messages again (DUP, original ids,
/// [MQTT-4.4.0-1]) no more than that many at a time.
#[tokio::test]
async fn v5_resend_on_resume_respects_the_new_receive_maximum() {
    use v5::QoS;
    let daemon = Daemon::start();
    let connect = |receive_maximum| {
        let mut connect = raw::connect5("resume-window");
        connect.clean_start = false;
        let mut props = p5::ConnectProperties::new();
        props.session_expiry_interval = Some(60);
        props.receive_maximum = Some(receive_maximum);
        connect.properties = Some(props);
        connect
    };
    let next = |packet: p5::Packet| match packet {
        p5::Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    };
    let (mut sub, _) = raw::open5(daemon.mqtt, connect(3), None).await;
    sub.subscribe(1, vec![p5::Filter::new("resume/t", QoS::AtLeastOnce)], None)
        .await;
    let mut publisher = v5::connect(v5::options(&daemon, "resume-window-pub")).await;
    for i in 0..3 {
        publisher
            .publish("resume/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(next(sub.recv().await));
    }
    sub.send(p5::Packet::Disconnect(p5::Disconnect::new(
        p5::DisconnectReasonCode::NormalDisconnection,
    )))
    .await;
    sub.expect_closed().await;

    let (mut sub, ack) = raw::open5(daemon.mqtt, connect(1), None).await;
    assert!(ack.session_present);
    for (i, original) in first.iter().enumerate() {
        let resent = next(sub.recv().await);
        assert!(resent.dup);
        assert_eq!(resent.pkid, original.pkid);
        assert_eq!(&resent.payload[..], format!("m{i}").as_bytes());
        assert!(
            sub.recv_within(QUIET).await.is_err(),
            "more than Receive Maximum (1) resent at once"
        );
        sub.send(p5::Packet::PubAck(p5::PubAck::new(resent.pkid, None)))
            .await;
    }
}
