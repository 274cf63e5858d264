//! A raw MQTT client over a blocking `TcpStream`: it writes exactly the bytes a test builds
//! (well-formed or not) and decodes what the broker answers, so tests can check reason codes and
//! flags byte for byte.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::WAIT;

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// One packet as received: the type (high nibble), the flags (low nibble) and the body after
/// the remaining length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub kind: u8,
    pub flags: u8,
    pub body: Vec<u8>,
}

impl Packet {
    /// The reason (or return) code of a CONNACK, a v5 PUBACK/PUBREC/PUBREL/PUBCOMP, or a v5
    /// DISCONNECT; 0 when the packet omits it (as the v5 short forms may).
    pub fn code(&self) -> u8 {
        match self.kind {
            CONNACK => self.body[1],
            PUBACK | PUBREC | PUBREL | PUBCOMP => self.body.get(2).copied().unwrap_or(0),
            DISCONNECT => self.body.first().copied().unwrap_or(0),
            other => panic!("packet type {other} has no single reason code"),
        }
    }

    /// CONNACK: the Session Present flag.
    pub fn session_present(&self) -> bool {
        assert_eq!(self.kind, CONNACK);
        self.body[0] & 1 == 1
    }

    /// The packet id of an acknowledgement (PUBACK ... SUBACK).
    pub fn packet_id(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }
}

/// A received PUBLISH, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: u16,
}

impl Publish {
    pub fn payload_str(&self) -> &str {
        std::str::from_utf8(&self.payload).expect("UTF-8 payload")
    }
}

/// The MQTT variable byte integer.
pub fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A packet: first byte, remaining length, body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// A UTF-8 string (or binary data) with its two-byte length.
pub fn string(s: impl AsRef<[u8]>) -> Vec<u8> {
    let s = s.as_ref();
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A CONNECT to build.
#[derive(Debug, Clone)]
pub struct Connect {
    pub v5: bool,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Topic, payload, QoS, retain.
    pub will: Option<(String, Vec<u8>, u8, bool)>,
    /// v5 Session Expiry Interval.
    pub session_expiry: Option<u32>,
    /// v5 Will Delay Interval.
    pub will_delay: Option<u32>,
    /// v5 Maximum Packet Size.
    pub max_packet_size: Option<u32>,
}

impl Connect {
    pub fn v3(client_id: &str) -> Self {
        Self {
            v5: false,
            client_id: client_id.into(),
            clean: true,
            keep_alive: 0,
            username: None,
            password: None,
            will: None,
            session_expiry: None,
            will_delay: None,
            max_packet_size: None,
        }
    }

    pub fn v5(client_id: &str) -> Self {
        Self {
            v5: true,
            ..Self::v3(client_id)
        }
    }

    pub fn clean(mut self, clean: bool) -> Self {
        self.clean = clean;
        self
    }

    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }

    pub fn login(mut self, username: &str, password: &str) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    pub fn username(mut self, username: &str) -> Self {
        self.username = Some(username.into());
        self
    }

    pub fn session_expiry(mut self, secs: u32) -> Self {
        self.session_expiry = Some(secs);
        self
    }

    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Self {
        self.will = Some((topic.into(), payload.into(), qos, retain));
        self
    }

    /// v5: the largest packet the client accepts.
    pub fn max_packet_size(mut self, bytes: u32) -> Self {
        self.max_packet_size = Some(bytes);
        self
    }

    /// v5: publish the will this long after the connection ends.
    pub fn will_delay(mut self, secs: u32) -> Self {
        self.will_delay = Some(secs);
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = string("MQTT");
        body.push(if self.v5 { 5 } else { 4 });
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some((_, _, qos, retain)) = &self.will {
            flags |= 0x04 | (qos << 3);
            if *retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        if self.v5 {
            let mut props = Vec::new();
            if let Some(expiry) = self.session_expiry {
                props.push(0x11);
                props.extend(expiry.to_be_bytes());
            }
            if let Some(max) = self.max_packet_size {
                props.push(0x27);
                props.extend(max.to_be_bytes());
            }
            body.extend(varint(props.len()));
            body.extend(props);
        }
        body.extend(string(&self.client_id));
        if let Some((topic, payload, _, _)) = &self.will {
            if self.v5 {
                match self.will_delay {
                    Some(delay) => {
                        body.push(5);
                        body.push(0x18);
                        body.extend(delay.to_be_bytes());
                    }
                    None => body.push(0), // no will properties
                }
            }
            body.extend(string(topic));
            body.extend(string(payload));
        }
        if let Some(username) = &self.username {
            body.extend(string(username));
        }
        if let Some(password) = &self.password {
            body.extend(string(password));
        }
        frame(0x10, &body)
    }
}

/// A PUBLISH (no properties in v5).
pub fn publish(
    v5: bool,
    topic: &str,
    qos: u8,
    retain: bool,
    packet_id: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = string(topic);
    if qos > 0 {
        body.extend(packet_id.to_be_bytes());
    }
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// A SUBSCRIBE with one QoS (v3) or options byte (v5) per filter.
pub fn subscribe(v5: bool, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for (filter, qos) in filters {
        body.extend(string(filter));
        body.push(*qos);
    }
    frame(0x82, &body)
}

/// An UNSUBSCRIBE of one filter.
pub fn unsubscribe(v5: bool, packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    body.extend(string(filter));
    frame(0xA2, &body)
}

/// An acknowledgement in its short form (packet id only), e.g. `ack(PUBACK, id)`.
pub fn ack(kind: u8, packet_id: u16) -> Vec<u8> {
    let first = (kind << 4) | if kind == PUBREL { 0x02 } else { 0 };
    frame(first, &packet_id.to_be_bytes())
}

/// DISCONNECT with reason 0 (both versions).
pub fn disconnect() -> Vec<u8> {
    vec![0xE0, 0x00]
}

/// A blocking connection that sends raw bytes and decodes packets.
pub struct Client {
    pub stream: TcpStream,
    pub v5: bool,
    buf: Vec<u8>,
    /// Packets read while waiting for something else (deliveries while awaiting an ack).
    pending: VecDeque<Packet>,
    next_id: u16,
}

impl Client {
    /// Open a TCP connection (nothing sent yet).
    pub fn open(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to the broker");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        Client {
            stream,
            v5: false,
            buf: Vec::new(),
            pending: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Open, send the CONNECT, and return the CONNACK (whatever its code).
    pub fn connect(addr: SocketAddr, connect: &Connect) -> (Client, Packet) {
        let mut client = Client::open(addr);
        client.v5 = connect.v5;
        client.send(&connect.encode()).expect("send CONNECT");
        let connack = client.recv().expect("a CONNACK, not a closed connection");
        assert_eq!(
            connack.kind, CONNACK,
            "first packet from the broker: {connack:?}"
        );
        (client, connack)
    }

    /// Connect and insist on success.
    pub fn session(addr: SocketAddr, connect: &Connect) -> Client {
        let (client, connack) = Client::connect(addr, connect);
        assert_eq!(
            connack.code(),
            0,
            "CONNACK refused the session of {}",
            connect.client_id
        );
        client
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// A fresh packet id.
    pub fn next_id(&mut self) -> u16 {
        self.next_id = self.next_id % 65535 + 1;
        self.next_id
    }

    /// The next packet within `wait`: `Ok(None)` when the broker closed the connection,
    /// `Err(())` when nothing came in time.
    pub fn recv_within(&mut self, wait: Duration) -> Result<Option<Packet>, ()> {
        if let Some(packet) = self.pending.pop_front() {
            return Ok(Some(packet));
        }
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let result = loop {
            if let Some(packet) = take_packet(&mut self.buf) {
                break Ok(Some(packet));
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => break Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break Err(());
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                // Reset by the peer and the like: closed.
                Err(_) => break Ok(None),
            }
        };
        self.stream.set_read_timeout(Some(WAIT)).unwrap();
        result
    }

    /// The next packet; `None` when the broker closed the connection. Panics after `WAIT`.
    pub fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .unwrap_or_else(|_| panic!("no packet from the broker within {WAIT:?}"))
    }

    /// Read until the broker closes the connection; the packets it sent before closing.
    pub fn expect_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(packet) = self.recv_within(WAIT).unwrap_or_else(|_| {
            panic!("the broker did not close the connection within {WAIT:?}; it sent {seen:?}")
        }) {
            seen.push(packet);
        }
        seen
    }

    /// Read until a packet of `kind`, keeping the others for later.
    pub fn recv_kind(&mut self, kind: u8) -> Packet {
        let mut skipped = Vec::new();
        let found = loop {
            let packet = self.recv().unwrap_or_else(|| {
                panic!("connection closed while waiting for packet type {kind}")
            });
            if packet.kind == kind {
                break packet;
            }
            skipped.push(packet);
        };
        for packet in skipped.into_iter().rev() {
            self.pending.push_front(packet);
        }
        found
    }

    /// SUBSCRIBE and return the SUBACK's codes (v3 return codes or v5 reason codes).
    pub fn subscribe(&mut self, filters: &[(&str, u8)]) -> Vec<u8> {
        let id = self.next_id();
        self.send(&subscribe(self.v5, id, filters))
            .expect("send SUBSCRIBE");
        let suback = self.recv_kind(SUBACK);
        assert_eq!(suback.packet_id(), id);
        let mut rest = &suback.body[2..];
        if self.v5 {
            let (len, used) = read_varint(rest);
            rest = &rest[used + len..];
        }
        rest.to_vec()
    }

    /// PUBLISH and, for QoS 1/2, complete the exchange; the PUBACK's or PUBREC's reason code.
    pub fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: &[u8]) -> u8 {
        let id = if qos > 0 { self.next_id() } else { 0 };
        self.send(&publish(self.v5, topic, qos, retain, id, payload))
            .expect("send PUBLISH");
        match qos {
            0 => 0,
            1 => {
                let ack = self.recv_kind(PUBACK);
                assert_eq!(ack.packet_id(), id);
                ack.code()
            }
            _ => {
                let rec = self.recv_kind(PUBREC);
                assert_eq!(rec.packet_id(), id);
                if rec.code() < 0x80 {
                    self.send(&ack(PUBREL, id)).expect("send PUBREL");
                    let comp = self.recv_kind(PUBCOMP);
                    assert_eq!(comp.packet_id(), id);
                }
                rec.code()
            }
        }
    }

    /// The next PUBLISH, acknowledged as its QoS asks (PUBREL answered on the way).
    pub fn next_publish(&mut self) -> Publish {
        self.next_publish_within(WAIT)
            .unwrap_or_else(|| panic!("no PUBLISH within {WAIT:?}"))
    }

    /// The next PUBLISH within `wait`, or `None`. Panics if the connection closes.
    pub fn next_publish_within(&mut self, wait: Duration) -> Option<Publish> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let packet = match self.recv_within(left) {
                Ok(Some(packet)) => packet,
                Ok(None) => panic!("connection closed while waiting for a PUBLISH"),
                Err(()) => return None,
            };
            match packet.kind {
                PUBLISH => {
                    let publish = self.decode_publish(&packet);
                    match publish.qos {
                        1 => self.send(&ack(PUBACK, publish.packet_id)).expect("PUBACK"),
                        2 => self.send(&ack(PUBREC, publish.packet_id)).expect("PUBREC"),
                        _ => {}
                    }
                    return Some(publish);
                }
                PUBREL => self
                    .send(&ack(PUBCOMP, packet.packet_id()))
                    .expect("PUBCOMP"),
                _ => {}
            }
        }
    }

    pub fn decode_publish(&self, packet: &Packet) -> Publish {
        assert_eq!(packet.kind, PUBLISH);
        let body = &packet.body;
        let qos = (packet.flags >> 1) & 3;
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).expect("UTF-8 topic");
        let mut pos = 2 + topic_len;
        let mut packet_id = 0;
        if qos > 0 {
            packet_id = u16::from_be_bytes([body[pos], body[pos + 1]]);
            pos += 2;
        }
        if self.v5 {
            let (len, used) = read_varint(&body[pos..]);
            pos += used + len;
        }
        Publish {
            topic,
            payload: body[pos..].to_vec(),
            qos,
            retain: packet.flags & 1 == 1,
            dup: packet.flags & 8 == 8,
            packet_id,
        }
    }

    /// Send DISCONNECT (reason 0) and wait for the broker to close.
    pub fn disconnect(mut self) {
        let _ = self.send(&disconnect());
        let _ = self.recv_within(WAIT);
    }
}

/// Take one whole packet off the front of `buf`, if it holds one.
pub fn take_packet(buf: &mut Vec<u8>) -> Option<Packet> {
    let mut len = 0usize;
    let mut mult = 1usize;
    let mut pos = 1;
    loop {
        let byte = *buf.get(pos)?;
        len += usize::from(byte & 0x7f) * mult;
        mult *= 128;
        pos += 1;
        if byte & 0x80 == 0 {
            break;
        }
        assert!(pos <= 4, "broker sent a bad remaining length");
    }
    if buf.len() < pos + len {
        return None;
    }
    let first = buf[0];
    let body = buf[pos..pos + len].to_vec();
    buf.drain(..pos + len);
    Some(Packet {
        kind: first >> 4,
        flags: first & 0x0f,
        body,
    })
}

/// Decode a variable byte integer: (value, bytes used).
pub fn read_varint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    let mut mult = 1usize;
    for (i, byte) in bytes.iter().enumerate().take(4) {
        value += usize::from(byte & 0x7f) * mult;
        mult *= 128;
        if byte & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("bad variable byte integer")
}
