//! Hand-made MQTT 3.1.1 packet encoding and a zero-copy frame parser for the load generator.
//!
//! Only the packets the load generator sends (CONNECT, SUBSCRIBE, PUBLISH, PUBACK,
//! DISCONNECT) are encoded and only the ones it expects back (CONNACK, SUBACK, PUBLISH,
//! PUBACK, PINGRESP) are decoded; anything else is reported as [`Frame::Other`].

use thiserror::Error;

/// Largest value the four-byte remaining-length varint can hold (MQTT 3.1.1 §2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Fixed-header first bytes (packet type in the high nibble).
pub const CONNECT: u8 = 0x10;
pub const CONNACK: u8 = 0x20;
pub const PUBLISH: u8 = 0x30;
pub const PUBACK: u8 = 0x40;
pub const SUBSCRIBE: u8 = 0x82;
pub const SUBACK: u8 = 0x90;
pub const PINGRESP: u8 = 0xD0;
pub const DISCONNECT: u8 = 0xE0;

/// Errors found while decoding bytes from the broker.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("remaining length varint longer than four bytes")]
    BadRemainingLength,
    #[error("malformed {0} packet")]
    Malformed(&'static str),
}

/// Errors found while encoding a packet.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("packet body of {0} bytes exceeds the MQTT maximum")]
    TooLarge(usize),
    #[error("string of {0} bytes exceeds 65535")]
    StringTooLong(usize),
}

/// Appends the MQTT remaining-length varint for `len` to `out`.
pub fn encode_remaining_length(len: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if len > MAX_REMAINING_LENGTH {
        return Err(EncodeError::TooLarge(len));
    }
    let mut x = len;
    loop {
        let mut byte = (x % 128) as u8;
        x /= 128;
        if x > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if x == 0 {
            return Ok(());
        }
    }
}

/// Decodes a remaining-length varint at the start of `buf`.
///
/// Returns `Ok(None)` if more bytes are needed, else the value and the varint's length.
pub fn decode_remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    let mut multiplier = 1usize;
    for (i, &byte) in buf.iter().enumerate() {
        if i == 4 {
            return Err(DecodeError::BadRemainingLength);
        }
        value += (byte & 0x7F) as usize * multiplier;
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
        multiplier *= 128;
    }
    if buf.len() >= 4 {
        return Err(DecodeError::BadRemainingLength);
    }
    Ok(None)
}

fn push_str(s: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let len = u16::try_from(s.len()).map_err(|_| EncodeError::StringTooLong(s.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
    Ok(())
}

/// Encodes a CONNECT packet (protocol level 4, clean session, no will, no credentials).
pub fn connect(client_id: &str, keep_alive_secs: u16) -> Result<Vec<u8>, EncodeError> {
    connect_as(client_id, keep_alive_secs, None)
}

/// Encodes a CONNECT packet (protocol level 4, clean session, no will), with a username and
/// password when `login` is given.
pub fn connect_as(
    client_id: &str,
    keep_alive_secs: u16,
    login: Option<(&str, &str)>,
) -> Result<Vec<u8>, EncodeError> {
    let id = client_id.as_bytes();
    if id.len() > usize::from(u16::MAX) {
        return Err(EncodeError::StringTooLong(id.len()));
    }
    let creds = login.map_or(0, |(u, p)| 4 + u.len() + p.len());
    let body_len = 10 + 2 + id.len() + creds;
    let mut out = Vec::with_capacity(body_len + 5);
    out.push(CONNECT);
    encode_remaining_length(body_len, &mut out)?;
    push_str(b"MQTT", &mut out)?;
    out.push(4); // protocol level 3.1.1
    // Clean session, and the username and password flags with a login.
    out.push(if login.is_some() { 0xC2 } else { 0x02 });
    out.extend_from_slice(&keep_alive_secs.to_be_bytes());
    push_str(id, &mut out)?;
    if let Some((user, password)) = login {
        push_str(user.as_bytes(), &mut out)?;
        push_str(password.as_bytes(), &mut out)?;
    }
    Ok(out)
}

/// Encodes a SUBSCRIBE packet for a single topic filter.
pub fn subscribe(packet_id: u16, filter: &str, qos: u8) -> Result<Vec<u8>, EncodeError> {
    let f = filter.as_bytes();
    if f.len() > usize::from(u16::MAX) {
        return Err(EncodeError::StringTooLong(f.len()));
    }
    let body_len = 2 + 2 + f.len() + 1;
    let mut out = Vec::with_capacity(body_len + 5);
    out.push(SUBSCRIBE);
    encode_remaining_length(body_len, &mut out)?;
    out.extend_from_slice(&packet_id.to_be_bytes());
    push_str(f, &mut out)?;
    out.push(qos & 0x03);
    Ok(out)
}

/// Encodes one PUBLISH packet of `payload` (the few a thing sends in answer; the load's
/// messages use a [`PublishTemplate`]).
pub fn publish(
    topic: &str,
    qos: u8,
    packet_id: u16,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let t = topic.as_bytes();
    if t.len() > usize::from(u16::MAX) {
        return Err(EncodeError::StringTooLong(t.len()));
    }
    let qos = qos & 0x03;
    let pid_len = if qos > 0 { 2 } else { 0 };
    out.push(PUBLISH | (qos << 1));
    encode_remaining_length(2 + t.len() + pid_len + payload.len(), out)?;
    push_str(t, out)?;
    if qos > 0 {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    out.extend_from_slice(payload);
    Ok(())
}

/// Encodes a PUBACK packet.
pub fn puback(packet_id: u16) -> [u8; 4] {
    let id = packet_id.to_be_bytes();
    [PUBACK, 0x02, id[0], id[1]]
}

/// Encodes a DISCONNECT packet.
pub fn disconnect() -> [u8; 2] {
    [DISCONNECT, 0x00]
}

/// The key of the timestamp in IM payloads: `{"mqb":"<20 digits>",...}`. The broker keeps a JSON
/// body as it is inside its envelope, so the receiver finds the stamp by this key.
pub const IM_STAMP_KEY: &[u8] = b"\"mqb\":\"";
/// Decimal digits of an IM timestamp (fixed, so the template's length never changes).
const IM_STAMP_DIGITS: usize = 20;

/// How a template carries the send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StampAt {
    /// 8 little-endian bytes at the start of the payload (plain MQTT).
    Binary,
    /// 20 ASCII digits at this offset of the payload, inside a JSON string (IM).
    Ascii(usize),
}

/// A pre-encoded PUBLISH packet whose packet id and payload timestamp are patched per message.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Offset of the two packet-id bytes (QoS > 0 only).
    pid_offset: Option<usize>,
    /// Offset of the payload.
    payload_offset: usize,
    stamp: StampAt,
}

impl PublishTemplate {
    /// Builds a template for `topic` with a zero-filled payload of `payload_len` bytes.
    pub fn new(topic: &str, qos: u8, payload_len: usize) -> Result<Self, EncodeError> {
        Self::with_payload(topic, qos, vec![0; payload_len], StampAt::Binary)
    }

    /// Builds a template for an IM message: a JSON object `{"mqb":"<stamp>","pad":"..."}` of
    /// `payload_len` bytes (or the least that holds the stamp).
    pub fn im(topic: &str, qos: u8, payload_len: usize) -> Result<Self, EncodeError> {
        let mut payload = Vec::with_capacity(payload_len.max(48));
        payload.push(b'{');
        payload.extend_from_slice(IM_STAMP_KEY);
        let at = payload.len();
        payload.resize(at + IM_STAMP_DIGITS, b'0');
        payload.extend_from_slice(b"\",\"pad\":\"");
        while payload.len() + 2 < payload_len {
            payload.push(b'x');
        }
        payload.extend_from_slice(b"\"}");
        Self::with_payload(topic, qos, payload, StampAt::Ascii(at))
    }

    fn with_payload(
        topic: &str,
        qos: u8,
        payload: Vec<u8>,
        stamp: StampAt,
    ) -> Result<Self, EncodeError> {
        let payload_len = payload.len();
        let t = topic.as_bytes();
        if t.len() > usize::from(u16::MAX) {
            return Err(EncodeError::StringTooLong(t.len()));
        }
        let qos = qos & 0x03;
        let pid_len = if qos > 0 { 2 } else { 0 };
        let body_len = 2 + t.len() + pid_len + payload_len;
        let mut bytes = Vec::with_capacity(body_len + 5);
        bytes.push(PUBLISH | (qos << 1));
        encode_remaining_length(body_len, &mut bytes)?;
        push_str(t, &mut bytes)?;
        let pid_offset = if qos > 0 {
            let off = bytes.len();
            bytes.extend_from_slice(&[0, 1]);
            Some(off)
        } else {
            None
        };
        let payload_offset = bytes.len();
        bytes.extend_from_slice(&payload);
        Ok(Self {
            bytes,
            pid_offset,
            payload_offset,
            stamp,
        })
    }

    /// Encoded length of one message.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the template is empty (never: a PUBLISH has a fixed header).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends one message to `out` with the given packet id and an 8-byte little-endian
    /// timestamp at the start of the payload (if the payload has room for it).
    pub fn append(&self, out: &mut Vec<u8>, packet_id: u16, stamp_ns: u64) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(off) = self.pid_offset {
            out[start + off..start + off + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        let p = start + self.payload_offset;
        match self.stamp {
            StampAt::Binary => {
                if out.len() >= p + 8 {
                    out[p..p + 8].copy_from_slice(&stamp_ns.to_le_bytes());
                }
            }
            StampAt::Ascii(at) => {
                let digits = &mut out[p + at..p + at + IM_STAMP_DIGITS];
                let mut v = stamp_ns;
                for d in digits.iter_mut().rev() {
                    *d = b'0' + (v % 10) as u8;
                    v /= 10;
                }
            }
        }
    }
}

/// Reads the timestamp written by [`PublishTemplate::append`] from a payload.
pub fn payload_stamp(payload: &[u8]) -> Option<u64> {
    let b: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Reads the timestamp of an IM message (made by [`PublishTemplate::im`]) from the envelope the
/// broker delivers; `None` for anything else (roster, notices, presence).
pub fn im_stamp(payload: &[u8]) -> Option<u64> {
    // Built once: this runs for every message a subscriber reads.
    static KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(IM_STAMP_KEY));
    let at = KEY.find(payload)? + IM_STAMP_KEY.len();
    let digits = payload.get(at..at + IM_STAMP_DIGITS)?;
    digits.iter().try_fold(0u64, |v, d| {
        d.is_ascii_digit()
            .then(|| v.wrapping_mul(10).wrapping_add(u64::from(d - b'0')))
    })
}

/// One decoded packet from the broker, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    SubAck {
        packet_id: u16,
        codes: &'a [u8],
    },
    Publish {
        qos: u8,
        dup: bool,
        retain: bool,
        topic: &'a [u8],
        packet_id: Option<u16>,
        payload: &'a [u8],
    },
    PubAck {
        packet_id: u16,
    },
    PingResp,
    Other {
        first_byte: u8,
    },
}

fn be16(b: &[u8], what: &'static str) -> Result<u16, DecodeError> {
    match b {
        [hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo])),
        _ => Err(DecodeError::Malformed(what)),
    }
}

/// Parses one packet at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` does not hold a whole packet yet, else the frame and the
/// number of bytes it used.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some((len, vlen)) = decode_remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    let total = 1 + vlen + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[1 + vlen..total];
    let frame = match first >> 4 {
        2 => match body {
            [flags, code] => Frame::ConnAck {
                session_present: flags & 1 == 1,
                code: *code,
            },
            _ => return Err(DecodeError::Malformed("CONNACK")),
        },
        3 => {
            let qos = (first >> 1) & 0x03;
            if qos == 3 {
                return Err(DecodeError::Malformed("PUBLISH"));
            }
            let tlen = usize::from(be16(body, "PUBLISH")?);
            let topic = body
                .get(2..2 + tlen)
                .ok_or(DecodeError::Malformed("PUBLISH"))?;
            let mut rest = &body[2 + tlen..];
            let packet_id = if qos > 0 {
                let id = be16(rest, "PUBLISH")?;
                rest = &rest[2..];
                Some(id)
            } else {
                None
            };
            Frame::Publish {
                qos,
                dup: first & 0x08 != 0,
                retain: first & 0x01 != 0,
                topic,
                packet_id,
                payload: rest,
            }
        }
        4 => {
            if body.len() != 2 {
                return Err(DecodeError::Malformed("PUBACK"));
            }
            Frame::PubAck {
                packet_id: be16(body, "PUBACK")?,
            }
        }
        9 => {
            if body.len() < 3 {
                return Err(DecodeError::Malformed("SUBACK"));
            }
            Frame::SubAck {
                packet_id: be16(body, "SUBACK")?,
                codes: &body[2..],
            }
        }
        13 => Frame::PingResp,
        _ => Frame::Other { first_byte: first },
    };
    Ok(Some((frame, total)))
}

/// A growable read buffer: bytes in `start..end` are unparsed.
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity.max(64)],
            start: 0,
            end: 0,
        }
    }

    /// Unparsed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` bytes as parsed.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space to read into, after moving unparsed bytes to the front and growing the
    /// buffer if a partial packet fills it.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let new_len = self.buf.len() * 2;
            self.buf.resize(new_len, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`ReadBuf::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rl(len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        encode_remaining_length(len, &mut v).unwrap();
        v
    }

    #[test]
    fn remaining_length_boundaries_match_spec_table() {
        // MQTT 3.1.1 §2.2.3, Table 2.4.
        assert_eq!(rl(0), vec![0x00]);
        assert_eq!(rl(127), vec![0x7F]);
        assert_eq!(rl(128), vec![0x80, 0x01]);
        assert_eq!(rl(16_383), vec![0xFF, 0x7F]);
        assert_eq!(rl(16_384), vec![0x80, 0x80, 0x01]);
        assert_eq!(rl(2_097_151), vec![0xFF, 0xFF, 0x7F]);
        assert_eq!(rl(2_097_152), vec![0x80, 0x80, 0x80, 0x01]);
        assert_eq!(rl(268_435_455), vec![0xFF, 0xFF, 0xFF, 0x7F]);
        let mut v = Vec::new();
        assert_eq!(
            encode_remaining_length(268_435_456, &mut v),
            Err(EncodeError::TooLarge(268_435_456))
        );
    }

    #[test]
    fn remaining_length_round_trips_and_detects_errors() {
        for len in [
            0,
            1,
            127,
            128,
            321,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING_LENGTH,
        ] {
            let enc = rl(len);
            assert_eq!(decode_remaining_length(&enc), Ok(Some((len, enc.len()))));
            // Truncated: needs more bytes.
            assert_eq!(decode_remaining_length(&enc[..enc.len() - 1]), Ok(None));
        }
        assert_eq!(
            decode_remaining_length(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(DecodeError::BadRemainingLength)
        );
        assert_eq!(
            decode_remaining_length(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(DecodeError::BadRemainingLength)
        );
    }

    #[test]
    fn connect_layout() {
        let p = connect("ab", 60).unwrap();
        assert_eq!(
            p,
            vec![
                0x10, 14, // fixed header, remaining length 10 + 2 + 2
                0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
                0x04, // level
                0x02, // clean session
                0x00, 0x3C, // keep alive 60
                0x00, 0x02, b'a', b'b', // client id
            ]
        );
    }

    #[test]
    fn connect_with_login_layout() {
        let p = connect_as("ab", 60, Some(("u", "pw"))).unwrap();
        assert_eq!(
            p,
            vec![
                0x10, 21, // fixed header, remaining length 10 + 4 + 7
                0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
                0x04, // level
                0xC2, // username, password, clean session
                0x00, 0x3C, // keep alive 60
                0x00, 0x02, b'a', b'b', // client id
                0x00, 0x01, b'u', // username
                0x00, 0x02, b'p', b'w', // password
            ]
        );
    }

    #[test]
    fn im_template_carries_an_ascii_stamp_in_json() {
        let t = PublishTemplate::im("person/b/inbox", 1, 64).unwrap();
        let mut out = Vec::new();
        t.append(&mut out, 3, 1_234_567_890_123);
        let Some((Frame::Publish { payload, .. }, used)) = parse_frame(&out).unwrap() else {
            panic!("not a PUBLISH");
        };
        assert_eq!(used, out.len());
        assert_eq!(payload.len(), 64);
        let json = std::str::from_utf8(payload).unwrap();
        assert!(
            json.starts_with(r#"{"mqb":"00000001234567890123","pad":"x"#),
            "{json}"
        );
        assert!(json.ends_with(r#"x"}"#), "{json}");
        // The broker's envelope keeps the body as it is.
        let envelope = format!(r#"{{"body":{json},"conv":"c","type":"msg"}}"#);
        assert_eq!(im_stamp(envelope.as_bytes()), Some(1_234_567_890_123));
        assert_eq!(im_stamp(br#"{"type":"sync.done","more":[]}"#), None);
        assert_eq!(im_stamp(br#"{"mqb":"12x"}"#), None);
        // Small sizes still hold the stamp.
        let t = PublishTemplate::im("t", 0, 8).unwrap();
        assert!(t.len() > 30);
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
    }

    #[test]
    fn subscribe_layout() {
        let p = subscribe(10, "a/b", 1).unwrap();
        assert_eq!(
            p,
            vec![0x82, 8, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01]
        );
    }

    #[test]
    fn puback_and_disconnect_layout() {
        assert_eq!(puback(0x1234), [0x40, 0x02, 0x12, 0x34]);
        assert_eq!(disconnect(), [0xE0, 0x00]);
    }

    #[test]
    fn publish_template_qos0_and_qos1() {
        let t = PublishTemplate::new("t", 0, 8).unwrap();
        let mut out = Vec::new();
        t.append(&mut out, 7, 0x0102_0304_0506_0708);
        assert_eq!(
            out,
            vec![0x30, 11, 0x00, 0x01, b't', 8, 7, 6, 5, 4, 3, 2, 1]
        );
        assert_eq!(t.len(), out.len());

        let t = PublishTemplate::new("t", 1, 10).unwrap();
        let mut out = Vec::new();
        t.append(&mut out, 0xABCD, 1);
        assert_eq!(
            out,
            vec![
                0x32, 15, 0x00, 0x01, b't', 0xAB, 0xCD, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        // A second message appended after the first gets its own id and stamp.
        t.append(&mut out, 2, 9);
        assert_eq!(
            &out[17..],
            &[0x32, 15, 0, 1, b't', 0, 2, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn publish_template_with_two_byte_remaining_length() {
        let t = PublishTemplate::new("topic", 0, 200).unwrap();
        let mut out = Vec::new();
        t.append(&mut out, 0, 5);
        // body = 2 + 5 + 200 = 207 = 0xCF 0x01
        assert_eq!(&out[..3], &[0x30, 0xCF, 0x01]);
        assert_eq!(out.len(), 3 + 207);
        match parse_frame(&out).unwrap() {
            Some((
                Frame::Publish {
                    qos: 0,
                    topic,
                    payload,
                    packet_id: None,
                    ..
                },
                used,
            )) => {
                assert_eq!(topic, b"topic");
                assert_eq!(payload.len(), 200);
                assert_eq!(payload_stamp(payload), Some(5));
                assert_eq!(used, out.len());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_acks() {
        assert_eq!(
            parse_frame(&[0x20, 0x02, 0x01, 0x00]),
            Ok(Some((
                Frame::ConnAck {
                    session_present: true,
                    code: 0
                },
                4
            )))
        );
        assert_eq!(
            parse_frame(&[0x90, 0x03, 0x00, 0x0A, 0x80]),
            Ok(Some((
                Frame::SubAck {
                    packet_id: 10,
                    codes: &[0x80]
                },
                5
            )))
        );
        assert_eq!(
            parse_frame(&[0x40, 0x02, 0xFF, 0xFE]),
            Ok(Some((Frame::PubAck { packet_id: 0xFFFE }, 4)))
        );
        assert_eq!(parse_frame(&[0xD0, 0x00]), Ok(Some((Frame::PingResp, 2))));
        assert_eq!(
            parse_frame(&[0xE0, 0x00]),
            Ok(Some((Frame::Other { first_byte: 0xE0 }, 2)))
        );
    }

    #[test]
    fn parses_publish_qos1_with_flags() {
        let bytes = [0x3B, 0x07, 0x00, 0x01, b'x', 0x00, 0x05, 0xAA, 0xBB];
        assert_eq!(
            parse_frame(&bytes),
            Ok(Some((
                Frame::Publish {
                    qos: 1,
                    dup: true,
                    retain: true,
                    topic: b"x",
                    packet_id: Some(5),
                    payload: &[0xAA, 0xBB],
                },
                9
            )))
        );
    }

    #[test]
    fn partial_and_malformed_frames() {
        assert_eq!(parse_frame(&[]), Ok(None));
        assert_eq!(parse_frame(&[0x20]), Ok(None));
        assert_eq!(parse_frame(&[0x20, 0x02, 0x00]), Ok(None));
        assert_eq!(
            parse_frame(&[0x20, 0x01, 0x00]),
            Err(DecodeError::Malformed("CONNACK"))
        );
        assert_eq!(
            parse_frame(&[0x40, 0x03, 0, 1, 2]),
            Err(DecodeError::Malformed("PUBACK"))
        );
        // Topic length pointing past the body.
        assert_eq!(
            parse_frame(&[0x30, 0x03, 0x00, 0x05, b'a']),
            Err(DecodeError::Malformed("PUBLISH"))
        );
        // QoS 1 without room for a packet id.
        assert_eq!(
            parse_frame(&[0x32, 0x03, 0x00, 0x01, b'a']),
            Err(DecodeError::Malformed("PUBLISH"))
        );
        assert_eq!(
            parse_frame(&[0x36, 0x02, 0x00, 0x00]),
            Err(DecodeError::Malformed("PUBLISH"))
        );
        assert_eq!(payload_stamp(&[1, 2, 3]), None);
    }

    #[test]
    fn read_buf_compacts_and_grows() {
        let mut rb = ReadBuf::new(64);
        let spare = rb.spare();
        assert_eq!(spare.len(), 64);
        spare[..4].copy_from_slice(&[0x40, 0x02, 0x00, 0x01]);
        spare[4..6].copy_from_slice(&[0x40, 0x02]);
        rb.filled(6);
        let (f, used) = parse_frame(rb.data()).unwrap().unwrap();
        assert_eq!(f, Frame::PubAck { packet_id: 1 });
        rb.consume(used);
        assert_eq!(parse_frame(rb.data()), Ok(None));
        // Fill the rest, ending with a PINGRESP.
        let spare = rb.spare();
        let n = spare.len();
        spare[n - 2..].copy_from_slice(&[0xD0, 0x00]);
        rb.filled(n);
        assert_eq!(rb.data().len(), 2 + n);
        // Buffer full with start > 0: compacts, then there is room again.
        rb.consume(rb.data().len() - 2);
        assert!(!rb.spare().is_empty());
        assert_eq!(rb.data(), &[0xD0, 0x00]);
        // A buffer filled by one partial packet grows.
        let mut rb = ReadBuf::new(64);
        let n = rb.spare().len();
        rb.filled(n);
        assert_eq!(rb.spare().len(), 64);
    }
}
