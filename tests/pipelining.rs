//! Pipelined packets: a client may send packets right after its CONNECT without waiting for the
//! CONNACK, and many do. Each test sends a whole session in one write (one WebSocket frame) and
//! checks that every packet in it is answered at once, over TCP and over WebSocket: what arrives
//! in the same read as the CONNECT, what a parked connection finds when it resumes, and what a
//! client taking over a session sends along with its CONNECT.

use std::net::Shutdown;

use crate::common::raw::{
    self, CONNACK, Client, Connect, DISCONNECT, PINGRESP, PUBACK, PUBLISH, Packet, SUBACK,
};
use crate::common::ws::RawWs;
use crate::common::{Daemon, nothing_comes_before_a_later_message, wait_parked};

const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// One raw connection, over TCP or WebSocket.
enum Link {
    Tcp(Client),
    Ws(RawWs),
}

impl Link {
    /// Open a connection (nothing MQTT sent yet).
    fn open(daemon: &Daemon, ws: bool) -> Link {
        if ws {
            let (link, head) = RawWs::upgrade(daemon.ws.unwrap(), &daemon.ws_path, Some("mqtt"));
            assert!(head.starts_with("HTTP/1.1 101"), "response: {head}");
            Link::Ws(link)
        } else {
            Link::Tcp(Client::open(daemon.mqtt))
        }
    }

    /// Everything in one write (one binary frame).
    fn send(&mut self, bytes: &[u8]) {
        match self {
            Link::Tcp(client) => client.send(bytes).expect("send"),
            Link::Ws(ws) => ws.send_frame(0x2, bytes),
        }
    }

    /// The next packet; `None` once the broker closed the connection.
    fn recv(&mut self) -> Option<Packet> {
        match self {
            Link::Tcp(client) => client.recv(),
            Link::Ws(ws) => ws.next_mqtt(),
        }
    }

    fn expect(&mut self, kind: u8) -> Packet {
        let packet = self
            .recv()
            .unwrap_or_else(|| panic!("closed while packet type {kind} was expected"));
        assert_eq!(packet.kind, kind, "expected packet type {kind}: {packet:?}");
        packet
    }

    /// The client has sent all it will (TCP: its write side is shut; WebSocket: nothing more is
    /// sent, the broker closes after the DISCONNECT: a close frame from the client would race
    /// the broker's answers, since its WebSocket layer replies with a close at once and sends
    /// no data frame after it); the packets the broker sends until it closes.
    fn finish(mut self) -> Vec<Packet> {
        match &mut self {
            Link::Tcp(client) => client.stream.shutdown(Shutdown::Write).expect("shutdown"),
            Link::Ws(_) => {}
        }
        let mut seen = Vec::new();
        while let Some(packet) = self.recv() {
            seen.push(packet);
        }
        seen
    }
}

/// The packet id of a QoS 1/2 PUBLISH (after its topic).
fn publish_id(publish: &Packet) -> u16 {
    let topic_len = usize::from(u16::from_be_bytes([publish.body[0], publish.body[1]]));
    u16::from_be_bytes([publish.body[2 + topic_len], publish.body[3 + topic_len]])
}

/// Run `case` over TCP and WebSocket, v3 and v5: with a new link, the CONNECT of a client id
/// made from `prefix`, and whether it is v5.
fn every_way(daemon: &Daemon, prefix: &str, mut case: impl FnMut(Link, Connect, bool)) {
    for ws in [false, true] {
        for v5 in [false, true] {
            let id = format!("{prefix}-{ws}-{v5}");
            let connect = if v5 {
                Connect::v5(&id)
            } else {
                Connect::v3(&id)
            };
            case(Link::open(daemon, ws), connect, v5);
        }
    }
}

fn session(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The bytes of the report: CONNECT (keepalive 60, client id `pipe`) and PINGREQ in one write
/// get the CONNACK and the PINGRESP.
#[test]
fn connect_and_pingreq_in_one_write_get_both_answers() {
    let daemon = Daemon::start();
    let bytes = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04pipe\xc0\x00";
    for ws in [false, true] {
        let mut link = Link::open(&daemon, ws);
        link.send(bytes);
        assert_eq!(link.expect(CONNACK).code(), 0);
        link.expect(PINGRESP);
    }
}

/// CONNECT + SUBSCRIBE + PINGREQ in one write: SUBACK and PINGRESP, v3 and v5, TCP and WebSocket.
#[test]
fn connect_and_subscribe_in_one_write_get_the_suback() {
    let daemon = Daemon::start();
    every_way(&daemon, "pipe-sub", |mut link, connect, v5| {
        link.send(&session(&[
            &connect.keep_alive(60).encode(),
            &raw::subscribe(v5, 7, &[("pipe/sub", 1)]),
            &PINGREQ,
        ]));
        assert_eq!(link.expect(CONNACK).code(), 0);
        let suback = link.expect(SUBACK);
        assert_eq!(suback.packet_id(), 7);
        assert_eq!(suback.body.last(), Some(&1), "granted QoS 1: {suback:?}");
        link.expect(PINGRESP);
    });
}

/// CONNECT + PUBLISH QoS 1 in one write, with a short keepalive and nothing sent after: the
/// PUBLISH is acknowledged and delivered [MQTT-4.3.2-2].
#[test]
fn connect_and_publish_in_one_write_are_acknowledged_and_delivered() {
    let daemon = Daemon::start();
    let mut subscriber = Client::session(daemon.mqtt, &Connect::v3("pipe-watcher"));
    assert_eq!(subscriber.subscribe(&[("pipe/pub/#", 1)]), [1]);
    every_way(&daemon, "pipe-pub", |mut link, connect, v5| {
        let topic = format!("pipe/pub/{}", connect.client_id);
        link.send(&session(&[
            &connect.keep_alive(2).encode(),
            &raw::publish(v5, &topic, 1, false, 9, b"pipelined"),
        ]));
        assert_eq!(link.expect(CONNACK).code(), 0);
        let puback = link.expect(PUBACK);
        assert_eq!(puback.packet_id(), 9);
        let got = subscriber.next_publish();
        assert_eq!(
            (got.topic.as_str(), got.payload_str()),
            (&*topic, "pipelined")
        );
    });
}

/// CONNECT (with a will) + DISCONNECT in one write, then the close: a normal end, the will is
/// discarded [MQTT-3.1.2-10] [MQTT-3.14.4-3].
#[test]
fn connect_and_disconnect_in_one_write_discard_the_will() {
    let daemon = Daemon::start();
    let mut watcher = Client::session(daemon.mqtt, &Connect::v3("pipe-will-watcher"));
    assert_eq!(watcher.subscribe(&[("pipe/will", 1)]), [1]);
    every_way(&daemon, "pipe-will", |mut link, connect, _| {
        link.send(&session(&[
            &connect.will("pipe/will", b"gone", 1, false).encode(),
            &raw::disconnect(),
        ]));
        let seen = link.finish();
        assert_eq!(seen.first().map(|p| p.kind), Some(CONNACK), "{seen:?}");
        assert!(
            seen.iter().all(|p| p.kind != DISCONNECT),
            "the broker ended the session itself: {seen:?}"
        );
        nothing_comes_before_a_later_message(daemon.mqtt, &mut watcher, "pipe/will");
    });
}

/// A parked connection that wakes up to several packets in one read answers them all at once.
#[test]
fn a_parked_connection_answers_a_whole_burst() {
    let daemon = Daemon::start_with(&["--allow-anonymous"], Some("sys_interval = 1\n"));
    let mut links = Vec::new();
    for ws in [false, true] {
        let mut link = Link::open(&daemon, ws);
        link.send(&Connect::v5(&format!("pipe-parked-{ws}")).encode());
        assert_eq!(link.expect(CONNACK).code(), 0);
        links.push((ws, link));
    }
    wait_parked(daemon.mqtt, 2);
    for (ws, link) in &mut links {
        let topic = format!("pipe/parked/{ws}");
        link.send(&session(&[
            &raw::subscribe(true, 3, &[(&topic, 1)]),
            &raw::publish(true, &topic, 1, false, 4, b"to myself"),
            &PINGREQ,
        ]));
        let mut kinds = Vec::new();
        while kinds.len() < 4 {
            let packet = link.recv().expect("an answer, not a close");
            if packet.kind == PUBLISH {
                link.send(&raw::ack(PUBACK, publish_id(&packet)));
            }
            kinds.push(packet.kind);
        }
        kinds.sort_unstable();
        assert_eq!(kinds, [PUBLISH, PUBACK, SUBACK, PINGRESP], "ws: {ws}");
    }
}

/// A client taking over a session sends its packets along with its CONNECT: they are answered,
/// and the old connection is told it was taken over (v5 0x8E).
#[test]
fn a_takeover_with_pipelined_packets_answers_them() {
    let daemon = Daemon::start();
    for ws in [false, true] {
        let id = format!("pipe-takeover-{ws}");
        let connect = Connect::v5(&id).session_expiry(60).clean(false);
        let mut old = Link::open(&daemon, ws);
        old.send(&connect.encode());
        assert_eq!(old.expect(CONNACK).code(), 0);

        let mut new = Link::open(&daemon, ws);
        new.send(&session(&[
            &connect.encode(),
            &raw::subscribe(true, 5, &[("pipe/takeover", 0)]),
            &PINGREQ,
        ]));
        let connack = new.expect(CONNACK);
        assert_eq!(connack.code(), 0);
        assert!(connack.session_present());
        assert_eq!(new.expect(SUBACK).packet_id(), 5);
        new.expect(PINGRESP);
        assert_eq!(old.expect(DISCONNECT).code(), 0x8E);
    }
}
