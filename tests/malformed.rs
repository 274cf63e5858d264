//! Malformed and forbidden input from raw TCP clients: each time the broker closes that
//! connection (v5: with the DISCONNECT reason code the specification names, [MQTT-4.13.1-1]),
//! and a well-behaved pair of clients keeps publishing and receiving throughout. Also the
//! converse: a well-formed packet that arrives in pieces is taken whole.

use std::net::Shutdown;

use crate::common::raw::{self, CONNACK, Client, Connect, DISCONNECT, frame, string};
use crate::common::{Daemon, WAIT};

/// A subscriber and a publisher that behave, connected before the misbehaving client and
/// checked after it: the broker serves others whatever one client sends.
struct Watch {
    sub: Client,
    publisher: Client,
    round: u32,
}

impl Watch {
    fn new(daemon: &Daemon) -> Watch {
        let mut sub = Client::session(daemon.mqtt, &Connect::v5("watch-sub"));
        assert_eq!(sub.subscribe(&[("#", 1)]), [1]);
        let publisher = Client::session(daemon.mqtt, &Connect::v3("watch-pub"));
        let mut watch = Watch {
            sub,
            publisher,
            round: 0,
        };
        watch.check();
        watch
    }

    /// One message from the publisher reaches the subscriber, and it is the next one the
    /// subscriber gets (nothing from the misbehaving client slipped in).
    fn check(&mut self) {
        self.round += 1;
        let payload = format!("still serving {}", self.round);
        self.publisher
            .publish("watch/alive", 1, false, payload.as_bytes());
        let got = self.sub.next_publish();
        assert_eq!(
            (got.topic.as_str(), got.payload_str()),
            ("watch/alive", payload.as_str()),
            "the well-behaved subscriber got something else first"
        );
    }
}

/// The connection closes; a v5 client gets exactly a DISCONNECT with `code` first, a v3 client
/// nothing at all.
fn closed_with(client: &mut Client, code: Option<u8>) {
    let packets = client.expect_closed();
    match code {
        Some(code) => {
            assert_eq!(packets.len(), 1, "expected one DISCONNECT, got {packets:?}");
            assert_eq!(packets[0].kind, DISCONNECT, "got {packets:?}");
            assert_eq!(
                packets[0].code(),
                code,
                "DISCONNECT reason code 0x{:02x}, expected 0x{code:02x}",
                packets[0].code()
            );
        }
        None => assert!(packets.is_empty(), "expected a bare close, got {packets:?}"),
    }
}

fn connected(daemon: &Daemon, v5: bool, id: &str) -> Client {
    let connect = if v5 { Connect::v5(id) } else { Connect::v3(id) };
    Client::session(daemon.mqtt, &connect)
}

/// A PUBLISH written in pieces (the header split inside the topic, the payload in parts) is
/// delivered whole, once.
#[test]
fn a_packet_arriving_in_pieces_is_delivered_whole() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    for v5 in [false, true] {
        let mut slow = connected(&daemon, v5, "pieces");
        let payload: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let packet = raw::publish(v5, "watch/pieces", 1, false, 9, &payload);
        for piece in [
            &packet[..4],
            &packet[4..3000],
            &packet[3000..40_000],
            &packet[40_000..],
        ] {
            slow.send(piece).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        let ack = slow.recv_kind(raw::PUBACK);
        assert_eq!(ack.packet_id(), 9);
        let got = watch.sub.next_publish();
        assert_eq!(got.topic, "watch/pieces");
        assert!(
            got.payload == payload,
            "payload of {} bytes differs",
            got.payload.len()
        );
        watch.check();
    }
}

/// A packet cut short by the end of the stream is never acted on; the connection closes.
#[test]
fn truncated_packets_are_dropped_with_the_connection() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);

    // Half a CONNECT, then end of stream: no CONNACK.
    let mut half = Client::open(daemon.mqtt);
    let connect = Connect::v3("half").encode();
    half.send(&connect[..connect.len() / 2]).unwrap();
    half.stream.shutdown(Shutdown::Write).unwrap();
    closed_with(&mut half, None);

    // A PUBLISH announcing 100 bytes, 20 sent, then end of stream: nothing is delivered.
    for v5 in [false, true] {
        let mut cut = connected(&daemon, v5, "cut");
        let whole = raw::publish(v5, "watch/partial", 0, false, 0, &[b'x'; 100]);
        cut.send(&whole[..20]).unwrap();
        cut.stream.shutdown(Shutdown::Write).unwrap();
        closed_with(&mut cut, None);
        watch.check();
    }
}

/// A client that stops in the middle of a packet is disconnected once its keepalive passes
/// (1.5 times the Keep Alive [MQTT-3.1.2-24]).
#[test]
fn a_stalled_partial_packet_ends_at_the_keepalive() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    for v5 in [false, true] {
        let connect = if v5 {
            Connect::v5("stalled")
        } else {
            Connect::v3("stalled")
        };
        let mut stalled = Client::session(daemon.mqtt, &connect.keep_alive(1));
        let whole = raw::publish(v5, "watch/stalled", 1, false, 1, b"never finished");
        stalled.send(&whole[..6]).unwrap();
        // v5: Keep Alive timeout (0x8D).
        closed_with(&mut stalled, v5.then_some(0x8D));
        watch.check();
    }
}

/// A Remaining Length of five bytes is malformed (at most four [MQTT-1.5.5-1]; 0x81 Malformed
/// Packet).
#[test]
fn a_remaining_length_of_five_bytes_closes_the_connection() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    for v5 in [false, true] {
        let mut bad = connected(&daemon, v5, "long-length");
        bad.send(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]).unwrap();
        closed_with(&mut bad, v5.then_some(0x81));
        watch.check();
    }
    // Before CONNECT too: no CONNACK.
    let mut bad = Client::open(daemon.mqtt);
    bad.send(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]).unwrap();
    let packets = bad.expect_closed();
    assert!(
        packets.iter().all(|p| p.kind == CONNACK && p.code() != 0),
        "a malformed CONNECT was accepted: {packets:?}"
    );
    watch.check();
}

/// A field longer than its packet (a topic length of 50 in a 5-byte PUBLISH) is malformed.
#[test]
fn a_field_longer_than_its_packet_closes_the_connection() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    for v5 in [false, true] {
        let mut bad = connected(&daemon, v5, "overrun");
        bad.send(&frame(0x30, &[0x00, 50, b'a', b'/', b'b']))
            .unwrap();
        closed_with(&mut bad, v5.then_some(0x81));
        watch.check();
    }
}

/// A PUBLISH topic with a wildcard is refused [MQTT-3.3.2-2]: v5 DISCONNECT 0x90 (Topic Name
/// invalid); it reaches nobody.
#[test]
fn a_wildcard_in_a_publish_topic_closes_the_connection() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    for v5 in [false, true] {
        for topic in ["watch/+/x", "watch/#"] {
            let mut bad = connected(&daemon, v5, "wild");
            bad.send(&raw::publish(v5, topic, 1, false, 1, b"wild"))
                .unwrap();
            closed_with(&mut bad, v5.then_some(0x90));
            watch.check();
        }
    }
}

/// Invalid UTF-8 in a topic name is malformed [MQTT-1.5.3-1]; so is U+0000 [MQTT-1.5.4-2].
#[test]
fn a_topic_that_is_not_utf8_closes_the_connection() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    for v5 in [false, true] {
        for topic in [&b"watch/\xff\xfe"[..], &b"watch/\x00"[..]] {
            let mut bad = connected(&daemon, v5, "utf8");
            let mut body = string(topic);
            if v5 {
                body.push(0);
            }
            body.extend_from_slice(b"payload");
            bad.send(&frame(0x30, &body)).unwrap();
            let packets = bad.expect_closed();
            if v5 {
                // Malformed Packet or Topic Name invalid: both say the topic was refused.
                assert!(
                    packets.len() == 1
                        && packets[0].kind == DISCONNECT
                        && [0x81, 0x90].contains(&packets[0].code()),
                    "expected DISCONNECT 0x81 or 0x90, got {packets:?}"
                );
            } else {
                assert!(packets.is_empty(), "got {packets:?}");
            }
            watch.check();
        }
    }
}

/// A PUBLISH with both QoS bits set is malformed [MQTT-3.3.1-4].
#[test]
fn a_publish_with_qos_3_closes_the_connection() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    for v5 in [false, true] {
        let mut bad = connected(&daemon, v5, "qos3");
        let mut packet = raw::publish(v5, "watch/qos3", 2, false, 1, b"three");
        packet[0] |= 0x06;
        bad.send(&packet).unwrap();
        closed_with(&mut bad, v5.then_some(0x81));
        watch.check();
    }
}

/// SUBSCRIBE's fixed-header flags must be 0010 [MQTT-3.8.1-1].
#[test]
fn a_subscribe_with_wrong_flags_closes_the_connection() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    for v5 in [false, true] {
        let mut bad = connected(&daemon, v5, "flags");
        let mut packet = raw::subscribe(v5, 1, &[("watch/#", 0)]);
        packet[0] = 0x80;
        bad.send(&packet).unwrap();
        closed_with(&mut bad, v5.then_some(0x81));
        watch.check();
    }
}

/// A second CONNECT is a protocol violation [MQTT-3.1.0-2]: v5 DISCONNECT 0x82.
#[test]
fn a_second_connect_closes_the_connection() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    for v5 in [false, true] {
        let connect = if v5 {
            Connect::v5("twice")
        } else {
            Connect::v3("twice")
        };
        let mut bad = Client::session(daemon.mqtt, &connect);
        bad.send(&connect.encode()).unwrap();
        closed_with(&mut bad, v5.then_some(0x82));
        watch.check();
    }
}

/// The first packet must be CONNECT [MQTT-3.1.0-1]: anything else is closed without an answer
/// and has no effect.
#[test]
fn a_first_packet_that_is_not_connect_closes_the_connection() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    let first_packets = [
        vec![0xC0, 0x00], // PINGREQ
        raw::publish(false, "watch/sneaky", 0, false, 0, b"no connect"),
        raw::subscribe(false, 1, &[("#", 0)]),
    ];
    for first in first_packets {
        let mut bad = Client::open(daemon.mqtt);
        bad.send(&first).unwrap();
        closed_with(&mut bad, None);
        watch.check();
    }
}

/// CONNECT with a reserved flag set is malformed [MQTT-3.1.2-3]: refused, never accepted.
#[test]
fn a_connect_with_the_reserved_flag_closes_the_connection() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    for v5 in [false, true] {
        let connect = if v5 {
            Connect::v5("reserved")
        } else {
            Connect::v3("reserved")
        };
        let mut packet = connect.encode();
        // Fixed header (2) + protocol name (6) + level (1): the connect flags.
        packet[9] |= 0x01;
        let mut bad = Client::open(daemon.mqtt);
        bad.send(&packet).unwrap();
        let packets = bad.expect_closed();
        assert!(
            packets.iter().all(|p| p.kind == CONNACK && p.code() != 0),
            "a CONNECT with the reserved flag was accepted: {packets:?}"
        );
        watch.check();
    }
}

/// An unsupported protocol level gets CONNACK 0x01 (unacceptable protocol version), then the
/// connection closes [MQTT-3.1.2-2]; a v5-shaped CONNECT (one with a properties field) at an
/// unknown level gets a v5 CONNACK 0x84 (Unsupported Protocol Version) instead, as MQTT 5 says
/// [MQTT-3.1.2-2].
#[test]
fn an_unsupported_protocol_level_gets_connack_0x01_or_v5_0x84() {
    let daemon = Daemon::start();
    let mut watch = Watch::new(&daemon);
    // MQTT 3.1 ("MQIsdp", level 3) and an unknown level 6 of "MQTT" shaped as 3.1.1.
    let mut v31 = string("MQIsdp");
    v31.extend([3, 0x02, 0x00, 0x3c]);
    v31.extend(string("old-client"));
    let mut v6_as_v3 = string("MQTT");
    v6_as_v3.extend([6, 0x02, 0x00, 0x3c]);
    v6_as_v3.extend(string("future-client"));
    for body in [v31, v6_as_v3] {
        let mut old = Client::open(daemon.mqtt);
        old.send(&frame(0x10, &body)).unwrap();
        let packets = old.expect_closed();
        assert_eq!(
            packets,
            vec![raw::Packet {
                kind: CONNACK,
                flags: 0,
                body: vec![0x00, 0x01]
            }],
            "expected CONNACK 0x01 then a close"
        );
        watch.check();
    }
    // Level 6 and level 3 of "MQTT" shaped as v5: properties (here a Session Expiry Interval),
    // then the client id.
    for level in [6, 3] {
        let mut v5_shaped = string("MQTT");
        v5_shaped.extend([level, 0x02, 0x00, 0x3c, 0x05, 0x11, 0x00, 0x00, 0x00, 0x0a]);
        v5_shaped.extend(string("future-client"));
        let mut future = Client::open(daemon.mqtt);
        future.send(&frame(0x10, &v5_shaped)).unwrap();
        let packets = future.expect_closed();
        assert_eq!(packets.len(), 1, "level {level}: {packets:?}");
        let connack = &packets[0];
        assert_eq!(connack.kind, CONNACK);
        assert_eq!(
            connack.body[..2],
            [0x00, 0x84],
            "level {level}: expected v5 CONNACK 0x84"
        );
        // A v5 CONNACK: its properties length follows the reason code.
        assert!(connack.body.len() > 2, "level {level}: {connack:?}");
        watch.check();
    }
}

/// A packet over `max_packet_size` closes the connection: v5 DISCONNECT 0x95 (Packet too
/// large), after the CONNACK told the client the limit [MQTT-3.2.2-15]. A packet within the
/// limit is fine.
#[test]
fn a_packet_over_the_size_limit_closes_the_connection() {
    let daemon = Daemon::start_with(
        &["--allow-anonymous"],
        Some("[limits]\nmax_packet_size = 1024\n"),
    );
    let mut watch = Watch::new(&daemon);

    // The v5 CONNACK carries Maximum Packet Size (0x27) = 1024.
    let (_client, connack) = Client::connect(daemon.mqtt, &Connect::v5("sizes"));
    let limit = [0x27, 0x00, 0x00, 0x04, 0x00];
    assert!(
        connack.body.windows(5).any(|w| w == limit),
        "CONNACK without Maximum Packet Size 1024: {connack:?}"
    );

    for v5 in [false, true] {
        let mut ok = connected(&daemon, v5, "small");
        assert_eq!(ok.publish("watch/small", 1, false, &[b's'; 900]), 0);
        let got = watch.sub.next_publish();
        assert_eq!(
            (got.topic.as_str(), got.payload.len()),
            ("watch/small", 900)
        );

        let mut big = connected(&daemon, v5, "big");
        big.send(&raw::publish(v5, "watch/big", 1, false, 1, &[b'b'; 2000]))
            .unwrap();
        closed_with(&mut big, v5.then_some(0x95));
        watch.check();
    }
}

/// The broker keeps serving while a client misbehaves slowly: a connection that never sends
/// CONNECT is closed after `connect_timeout`, others are unaffected meanwhile.
#[test]
fn a_connection_without_connect_is_closed_after_the_timeout() {
    let daemon = Daemon::start_with(
        &["--allow-anonymous"],
        Some("[limits]\nconnect_timeout = 1\n"),
    );
    let mut watch = Watch::new(&daemon);
    let mut silent = Client::open(daemon.mqtt);
    watch.check();
    assert!(
        matches!(silent.recv_within(WAIT), Ok(None)),
        "the silent connection was not closed"
    );
    watch.check();
}
