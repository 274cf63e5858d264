//! MQTT 5 features end to end: topic aliases both ways, message expiry, subscription identifiers,
//! no-local, properties passed through unaltered, the broker's Receive Maximum, the client's
//! Maximum Packet Size, reason codes, and the Assigned Client Identifier.
//!
//! Numbers are from MQTT 5.0.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use crate::clients::raw::{self, p5};
use crate::clients::v5::{self, Filter, PublishProperties, QoS, SubscribeProperties};
use crate::common::Daemon;

fn alias(n: u16) -> Option<PublishProperties> {
    Some(PublishProperties {
        topic_alias: Some(n),
        ..Default::default()
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Section 3.3.2.3.4, [MQTT-3.3.2-12]: the broker accepts the topic aliases a client sets up (up
/// to the Topic Alias Maximum it announced), resolves an empty topic through them, and follows
/// a remapping; subscribers that allow no aliases get full topics [MQTT-3.1.2-27].
#[tokio::test]
async fn topic_aliases_from_a_client_are_resolved() {
    let daemon = Daemon::start();
    let mut sub = v5::connect(v5::options(&daemon, "alias-in-sub")).await;
    sub.subscribe("alias/#", QoS::AtLeastOnce).await;
    let mut publisher = v5::connect(v5::options(&daemon, "alias-in-pub")).await;
    let announced = publisher
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.topic_alias_max)
        .unwrap_or(0);
    assert!(announced >= 1, "the broker accepts topic aliases");

    let sends = [
        ("alias/a/rather/long/topic/name", "first"),
        ("", "second"),
        ("alias/other", "third"),
        ("", "fourth"),
    ];
    for (topic, payload) in sends {
        publisher
            .publish_with(topic, QoS::AtLeastOnce, false, payload, alias(1))
            .await;
    }
    let expected = [
        ("alias/a/rather/long/topic/name", "first"),
        ("alias/a/rather/long/topic/name", "second"),
        ("alias/other", "third"),
        ("alias/other", "fourth"),
    ];
    for (topic, payload) in expected {
        let got = sub.next_publish().await;
        assert_eq!(
            (v5::topic(&got).as_str(), text(&got.payload).as_str()),
            (topic, payload)
        );
        let sent_alias = got.properties.as_ref().and_then(|p| p.topic_alias);
        assert_eq!(
            sent_alias, None,
            "an alias went to a client that allows none"
        );
    }
}

/// [MQTT-3.1.2-26], [MQTT-3.3.2-11]: the broker may use topic aliases towards a client that
/// allows them, never above the client's Topic Alias Maximum; a client resolving them as the
/// spec says gets every topic right.
#[tokio::test]
async fn broker_uses_topic_aliases_within_the_client_maximum() {
    const MAX: u16 = 2;
    let daemon = Daemon::start();
    let mut opts = v5::options(&daemon, "alias-out-sub");
    opts.set_topic_alias_max(Some(MAX));
    let mut sub = v5::connect(opts).await;
    sub.subscribe("out/#", QoS::AtLeastOnce).await;
    let mut publisher = v5::connect(v5::options(&daemon, "alias-out-pub")).await;
    let topics = [
        "out/a", "out/a", "out/a", "out/b", "out/b", "out/c", "out/c", "out/a",
    ];
    for (i, topic) in topics.iter().enumerate() {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    let mut mapping: HashMap<u16, String> = HashMap::new();
    let mut aliased = 0;
    for (i, topic) in topics.iter().enumerate() {
        let got = sub.next_publish().await;
        assert_eq!(text(&got.payload), format!("{i}"));
        let wire_topic = v5::topic(&got);
        let resolved = match got.properties.as_ref().and_then(|p| p.topic_alias) {
            Some(a) => {
                assert!((1..=MAX).contains(&a), "alias {a} outside 1..={MAX}");
                if wire_topic.is_empty() {
                    aliased += 1;
                    mapping
                        .get(&a)
                        .unwrap_or_else(|| panic!("alias {a} used before it was set"))
                        .clone()
                } else {
                    mapping.insert(a, wire_topic.clone());
                    wire_topic
                }
            }
            None => {
                assert!(!wire_topic.is_empty(), "empty topic without an alias");
                wire_topic
            }
        };
        assert_eq!(resolved, *topic, "message {i}");
    }
    assert!(aliased > 0, "the broker never used an alias it had set up");
}

/// The topic aliases the broker set up towards a client last as long as its connection, idle
/// times included: a parked connection (idle, waiting without a task of its own) keeps them and
/// uses one set up before it parked.
#[tokio::test]
async fn topic_aliases_towards_a_client_survive_its_idle_times() {
    let daemon = Daemon::start_with(&["--allow-anonymous"], Some("sys_interval = 1\n"));
    let mut opts = v5::options(&daemon, "alias-parked-sub");
    opts.set_topic_alias_max(Some(1));
    let mut sub = v5::connect(opts).await;
    sub.subscribe("parked/#", QoS::AtLeastOnce).await;
    let mut publisher = v5::connect(v5::options(&daemon, "alias-parked-pub")).await;
    let alias_of = |got: &v5::Publish| got.properties.as_ref().and_then(|p| p.topic_alias);

    publisher
        .publish("parked/topic", QoS::AtLeastOnce, false, "first")
        .await;
    let first = sub.next_publish().await;
    assert_eq!(
        (v5::topic(&first), alias_of(&first)),
        ("parked/topic".to_string(), Some(1))
    );
    let mqtt = daemon.mqtt;
    tokio::task::spawn_blocking(move || crate::common::wait_parked(mqtt, 2))
        .await
        .expect("parked");
    publisher
        .publish("parked/topic", QoS::AtLeastOnce, false, "second")
        .await;
    let second = sub.next_publish().await;
    assert_eq!(text(&second.payload), "second");
    assert_eq!(
        (v5::topic(&second), alias_of(&second)),
        (String::new(), Some(1)),
        "the alias set up before the park is used"
    );
}

/// [MQTT-3.3.2-5]: a message whose Message Expiry Interval passed while the subscriber's session
/// was offline is not delivered; [MQTT-3.3.2-6]: one still alive is delivered with the interval
/// that remains (less than it was published with). An expired retained message is not delivered
/// on subscribe either.
#[tokio::test]
async fn expired_messages_are_not_delivered_and_the_rest_count_down() {
    let daemon = Daemon::start();
    let persistent = || {
        let mut opts = v5::options(&daemon, "msgexp-sub");
        opts.set_clean_start(false);
        opts.set_session_expiry_interval(Some(60));
        opts
    };
    let mut sub = v5::connect(persistent()).await;
    sub.subscribe("msgexp/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = v5::connect(v5::options(&daemon, "msgexp-pub")).await;
    let expiring = |secs: u32| {
        Some(PublishProperties {
            message_expiry_interval: Some(secs),
            ..Default::default()
        })
    };
    publisher
        .publish_with(
            "msgexp/short",
            QoS::AtLeastOnce,
            false,
            "short",
            expiring(1),
        )
        .await;
    publisher
        .publish_with("msgexp/long", QoS::AtLeastOnce, false, "long", expiring(60))
        .await;
    publisher
        .publish("msgexp/forever", QoS::AtLeastOnce, false, "forever")
        .await;
    publisher
        .publish_with("retexp/t", QoS::AtLeastOnce, true, "retained", expiring(1))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Section 3.3.1.3: an expired retained message is gone too.
    let mut late = v5::connect(v5::options(&daemon, "retexp-sub")).await;
    late.subscribe("retexp/#", QoS::AtLeastOnce).await;
    publisher
        .publish("retexp/marker", QoS::AtLeastOnce, false, "marker")
        .await;
    assert_eq!(
        text(&late.next_publish().await.payload),
        "marker",
        "an expired retained message was delivered"
    );

    let mut sub = v5::connect(persistent()).await;
    assert!(sub.connack.session_present);
    let got = sub.next_publish().await;
    assert_eq!(
        text(&got.payload),
        "long",
        "the expired message was delivered"
    );
    let left = got
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("a Message Expiry Interval");
    assert!(
        (1..=58).contains(&left),
        "2 s after publishing with 60 s, {left} s left"
    );
    let got = sub.next_publish().await;
    assert_eq!(text(&got.payload), "forever");
    assert_eq!(
        got.properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval),
        None
    );
}

/// [MQTT-3.3.4-2], [MQTT-3.3.4-4]: a message matching two overlapping subscriptions of a client
/// comes once, at the higher QoS, with both Subscription Identifiers; [MQTT-3.3.4-3]: one matching
/// a single subscription carries that subscription's identifier.
#[tokio::test]
async fn overlapping_subscriptions_give_one_copy_with_every_identifier() {
    let daemon = Daemon::start();
    let mut sub = v5::connect(v5::options(&daemon, "sid-sub")).await;
    let with_id = |id| {
        Some(SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        })
    };
    sub.subscribe_filter(Filter::new("sid/#", QoS::AtMostOnce), with_id(1))
        .await;
    sub.subscribe_filter(Filter::new("sid/+", QoS::ExactlyOnce), with_id(2))
        .await;
    let mut publisher = v5::connect(v5::options(&daemon, "sid-pub")).await;
    publisher
        .publish("sid/a", QoS::ExactlyOnce, false, "both")
        .await;
    publisher
        .publish("sid/a/b", QoS::ExactlyOnce, false, "one")
        .await;

    let got = sub.next_publish().await;
    assert_eq!(text(&got.payload), "both");
    assert_eq!(got.qos, QoS::ExactlyOnce, "the higher QoS of the two");
    let mut ids = got
        .properties
        .as_ref()
        .map(|p| p.subscription_identifiers.clone())
        .unwrap_or_default();
    ids.sort();
    assert_eq!(ids, [1, 2]);

    let got = sub.next_publish().await;
    assert_eq!(text(&got.payload), "one", "a second copy of \"both\" came");
    assert_eq!(got.qos, QoS::AtMostOnce);
    assert_eq!(
        got.properties.map(|p| p.subscription_identifiers),
        Some(vec![1])
    );
}

/// [MQTT-3.8.3-3]: with No Local a client does not get its own messages back; others' messages
/// still come, and without No Local a client's own messages do come back.
#[tokio::test]
async fn no_local_keeps_a_client_from_its_own_messages() {
    let daemon = Daemon::start();
    let mut quiet = v5::connect(v5::options(&daemon, "nl-quiet")).await;
    let mut filter = Filter::new("nl/#", QoS::AtLeastOnce);
    filter.nolocal = true;
    quiet.subscribe_filter(filter, None).await;
    let mut echo = v5::connect(v5::options(&daemon, "nl-echo")).await;
    echo.subscribe("nl/#", QoS::AtLeastOnce).await;

    quiet
        .publish("nl/quiet", QoS::AtLeastOnce, false, "own")
        .await;
    echo.publish("nl/echo", QoS::AtLeastOnce, false, "echo")
        .await;

    assert_eq!(text(&echo.next_publish().await.payload), "own");
    assert_eq!(
        text(&echo.next_publish().await.payload),
        "echo",
        "without No Local a client gets its own message"
    );
    assert_eq!(
        text(&quiet.next_publish().await.payload),
        "echo",
        "with No Local the client got its own message"
    );
}

/// [MQTT-3.3.2-4], [MQTT-3.3.2-17], [MQTT-3.3.2-18], [MQTT-3.3.2-20]: Payload Format Indicator,
/// User Properties (all of them, in order, repeated keys included) and Content Type reach the
/// subscriber unaltered.
#[tokio::test]
async fn user_properties_and_content_type_pass_through() {
    let daemon = Daemon::start();
    let mut sub = v5::connect(v5::options(&daemon, "props-sub")).await;
    sub.subscribe("props/#", QoS::AtLeastOnce).await;
    let mut publisher = v5::connect(v5::options(&daemon, "props-pub")).await;
    let user_properties: Vec<(String, String)> =
        [("zone", "kitchen"), ("unit", "C"), ("zone", "hall")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        user_properties: user_properties.clone(),
        ..Default::default()
    };
    publisher
        .publish_with(
            "props/t",
            QoS::AtLeastOnce,
            false,
            "{\"t\":21.5}",
            Some(props),
        )
        .await;
    let got = sub.next_publish().await;
    let p = got.properties.expect("properties");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.user_properties, user_properties);
}

/// [MQTT-3.3.2-15], [MQTT-3.3.2-16]: Response Topic and Correlation Data reach the subscriber
/// unaltered, so request/response (section 4.10) works through the broker.
#[tokio::test]
async fn response_topic_and_correlation_data_pass_through() {
    let daemon = Daemon::start();
    let mut service = v5::connect(v5::options(&daemon, "rr-service")).await;
    service.subscribe("service/echo", QoS::AtLeastOnce).await;
    let mut requester = v5::connect(v5::options(&daemon, "rr-requester")).await;
    requester
        .subscribe("reply/rr-requester", QoS::AtLeastOnce)
        .await;

    let request = PublishProperties {
        response_topic: Some("reply/rr-requester".into()),
        correlation_data: Some(Bytes::from_static(b"\x00req-42\xff")),
        ..Default::default()
    };
    requester
        .publish_with(
            "service/echo",
            QoS::AtLeastOnce,
            false,
            "ping",
            Some(request),
        )
        .await;
    let got = service.next_publish().await;
    let p = got.properties.expect("properties");
    let response_topic = p.response_topic.expect("a Response Topic");
    assert_eq!(response_topic, "reply/rr-requester");
    let correlation = p.correlation_data.expect("Correlation Data");
    assert_eq!(&correlation[..], b"\x00req-42\xff");

    let reply = PublishProperties {
        correlation_data: Some(correlation),
        ..Default::default()
    };
    service
        .publish_with(
            &response_topic,
            QoS::AtLeastOnce,
            false,
            "pong",
            Some(reply),
        )
        .await;
    let got = requester.next_publish().await;
    assert_eq!(text(&got.payload), "pong");
    assert_eq!(
        got.properties.and_then(|p| p.correlation_data).as_deref(),
        Some(&b"\x00req-42\xff"[..])
    );
}

/// Section 3.3.4: the broker announces its Receive Maximum in CONNACK, and a client that has more
/// QoS 1/2 PUBLISHes unacknowledged than that is disconnected with 0x93 (Receive Maximum
/// exceeded). A QoS 2 PUBLISH counts until its PUBCOMP.
#[tokio::test]
async fn client_exceeding_the_broker_receive_maximum_is_disconnected() {
    let daemon = Daemon::start_with(
        &["--allow-anonymous"],
        Some("[limits]\nreceive_maximum = 2\n"),
    );
    let (mut client, ack) = raw::open5(daemon.mqtt, raw::connect5("greedy"), None).await;
    assert_eq!(ack.properties.and_then(|p| p.receive_max), Some(2));
    for pkid in 1..=2u16 {
        let mut publish = p5::Publish::new("greedy/t", QoS::ExactlyOnce, "x", None);
        publish.pkid = pkid;
        client.send(p5::Packet::Publish(publish)).await;
        match client.recv().await {
            p5::Packet::PubRec(rec) => assert_eq!(rec.pkid, pkid),
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
    // Two QoS 2 exchanges open (no PUBREL yet): a third PUBLISH is one too many.
    let mut publish = p5::Publish::new("greedy/t", QoS::ExactlyOnce, "x", None);
    publish.pkid = 3;
    client.send(p5::Packet::Publish(publish)).await;
    match client.expect_closed().await.as_slice() {
        [p5::Packet::Disconnect(d)] => {
            assert_eq!(
                d.reason_code,
                p5::DisconnectReasonCode::ReceiveMaximumExceeded
            )
        }
        other => panic!("expected DISCONNECT 0x93, got {other:?}"),
    }
}

/// [MQTT-3.1.2-24]: the broker sends no packet larger than the client's Maximum Packet Size;
/// [MQTT-3.1.2-25]: such a message is dropped for that client as if sent, so it does not hold a
/// slot of the client's Receive Maximum. Other subscribers still get it.
#[tokio::test]
async fn messages_over_the_client_maximum_packet_size_are_not_sent() {
    let daemon = Daemon::start();
    let mut opts = v5::options(&daemon, "mps-small");
    opts.set_max_packet_size(Some(256));
    opts.set_receive_maximum(Some(1));
    let mut small = v5::connect(opts).await;
    small.subscribe("mps/#", QoS::AtLeastOnce).await;
    let mut large = v5::connect(v5::options(&daemon, "mps-large")).await;
    large.subscribe("mps/#", QoS::AtLeastOnce).await;

    let mut publisher = v5::connect(v5::options(&daemon, "mps-pub")).await;
    publisher
        .publish("mps/t", QoS::AtLeastOnce, false, vec![b'x'; 1000])
        .await;
    publisher
        .publish("mps/t", QoS::AtLeastOnce, false, "small")
        .await;

    assert_eq!(large.next_publish().await.payload.len(), 1000);
    assert_eq!(text(&large.next_publish().await.payload), "small");
    assert_eq!(
        text(&small.next_publish().await.payload),
        "small",
        "the oversized message reached the small client or blocked its window"
    );
}

/// A client announcing a tiny Maximum Packet Size (24 bytes): nothing larger is sent, counting
/// the whole packet with its fixed header [MQTT-3.1.2-24]; what does not fit (PUBLISHes, a
/// SUBACK with many codes) is discarded as if sent [MQTT-3.1.2-25], and the connection goes on.
/// The discards are logged once per connection, not once per packet, also across a park.
#[test]
fn a_tiny_maximum_packet_size_discards_what_does_not_fit_and_logs_it_once() {
    use crate::common::raw::{Client, Connect, PINGRESP, subscribe};
    const LIMIT: usize = 24;
    let mut daemon = Daemon::start_with(&["--allow-anonymous"], Some("sys_interval = 1\n"));
    let log = daemon.data.with_file_name("tiny-mps.log");
    daemon.log_file = Some(log.clone());
    daemon.log_filter = Some("info".into());
    daemon.restart();

    let mut tiny = Client::session(
        daemon.mqtt,
        &Connect::v5("mps-tiny").max_packet_size(LIMIT as u32),
    );
    assert_eq!(tiny.subscribe(&[("m/#", 1)]), [1]);
    // 20 filters: a SUBACK of 25 bytes, discarded; the PINGRESP after it still comes.
    let filters: Vec<(String, u8)> = (0..20).map(|i| (format!("f/{i}"), 0)).collect();
    let filters: Vec<(&str, u8)> = filters.iter().map(|(f, q)| (f.as_str(), *q)).collect();
    tiny.send(&subscribe(true, 77, &filters)).unwrap();
    tiny.send(&[0xC0, 0x00]).unwrap();
    let next = tiny.recv().expect("the PINGRESP");
    assert_eq!(
        next.kind, PINGRESP,
        "a SUBACK over the limit was sent: {next:?}"
    );

    let publish = |payloads: &[&[u8]]| {
        let mut publisher = Client::session(daemon.mqtt, &Connect::v5("mps-publisher"));
        for payload in payloads {
            assert_eq!(publisher.publish("m/b", 1, false, payload), 0);
        }
        publisher.disconnect();
    };
    publish(&[&[b'x'; 100]]);
    crate::common::wait_parked(daemon.mqtt, 1);
    // A QoS 1 PUBLISH to `m/b` without properties is 10 bytes and the payload: 15 bytes make
    // a Remaining Length of 23, under the limit, but a packet of 25 bytes; 14 bytes fit.
    publish(&[&[b'x'; 100], &[b'x'; 15], &[b'y'; 14], b"ok"]);
    let fits = tiny.next_publish();
    assert_eq!(fits.payload, [b'y'; 14], "the first message that fits");
    assert_eq!(tiny.next_publish().payload_str(), "ok");
    tiny.send(&[0xC0, 0x00]).unwrap();
    assert_eq!(tiny.recv_kind(PINGRESP).kind, PINGRESP);

    let logged = std::fs::read_to_string(&log).expect("the daemon's log");
    let lines = logged
        .lines()
        .filter(|l| l.contains("Maximum Packet Size is discarded") && l.contains("mps-tiny"))
        .count();
    assert_eq!(lines, 1, "log:\n{logged}");
}

/// Section 3.4.2.1: the broker answers a QoS 1 PUBLISH nobody subscribed to with PUBACK 0x10 (No
/// matching subscribers), a QoS 2 one with PUBREC 0x10, and 0x00 once a subscription matches.
#[tokio::test]
async fn publish_without_subscribers_is_acknowledged_with_0x10() {
    let daemon = Daemon::start();
    let mut publisher = v5::connect(v5::options(&daemon, "rc-pub")).await;
    assert_eq!(
        publisher
            .publish("nobody/t", QoS::AtLeastOnce, false, "x")
            .await,
        0x10
    );
    assert_eq!(
        publisher
            .publish("nobody/t", QoS::ExactlyOnce, false, "x")
            .await,
        0x10
    );
    let mut sub = v5::connect(v5::options(&daemon, "rc-sub")).await;
    sub.subscribe("nobody/#", QoS::AtLeastOnce).await;
    assert_eq!(
        publisher
            .publish("nobody/t", QoS::AtLeastOnce, false, "x")
            .await,
        0x00
    );
}

/// [MQTT-3.8.4-6], [MQTT-3.9.3-1]: every filter of a SUBSCRIBE gets its own reason code, in order;
/// an invalid filter gets 0x8F (Topic Filter invalid) while the valid ones are granted, and the
/// connection goes on.
#[tokio::test]
async fn invalid_topic_filters_get_suback_0x8f() {
    let daemon = Daemon::start();
    let (mut sub, _) = raw::open5(daemon.mqtt, raw::connect5("badfilter"), None).await;
    let suback = sub
        .subscribe(
            1,
            vec![
                Filter::new("ok/#", QoS::AtLeastOnce),
                Filter::new("bad/#/more", QoS::AtLeastOnce),
                Filter::new("bad+", QoS::AtLeastOnce),
                Filter::new("also/ok/+", QoS::AtMostOnce),
            ],
            None,
        )
        .await;
    use v5::SubscribeReasonCode as R;
    assert_eq!(
        suback.return_codes,
        [
            R::Success(QoS::AtLeastOnce),
            R::TopicFilterInvalid,
            R::TopicFilterInvalid,
            R::Success(QoS::AtMostOnce),
        ]
    );
    let mut publisher = v5::connect(v5::options(&daemon, "badfilter-pub")).await;
    publisher
        .publish("ok/1", QoS::AtMostOnce, false, "still here")
        .await;
    match sub.recv().await {
        p5::Packet::Publish(p) => assert_eq!(&p.payload[..], b"still here"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// [MQTT-3.2.2-16]: a v5 client connecting with an empty client id gets an Assigned Client
/// Identifier, unique per connection, and a working session.
#[tokio::test]
async fn empty_client_id_gets_an_assigned_client_identifier() {
    let daemon = Daemon::start();
    let assigned = |c: &v5::Client| {
        c.connack
            .properties
            .as_ref()
            .and_then(|p| p.assigned_client_identifier.clone())
            .expect("an Assigned Client Identifier")
    };
    let mut first = v5::connect(v5::options(&daemon, "")).await;
    let second = v5::connect(v5::options(&daemon, "")).await;
    let (a, b) = (assigned(&first), assigned(&second));
    assert!(!a.is_empty());
    assert_ne!(a, b, "two connections got the same identifier");

    first.subscribe("anon/#", QoS::AtLeastOnce).await;
    first
        .publish("anon/t", QoS::AtLeastOnce, false, "self")
        .await;
    assert_eq!(text(&first.next_publish().await.payload), "self");
}
