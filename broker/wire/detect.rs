//! Which protocol a connection speaks, read off its CONNECT's first bytes before any codec runs.

use ntex_bytes::BytesMut;

use super::{Inbound, Proto, Wire, whole_packet_len};

/// What the first bytes of a connection say about its protocol.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    NeedMore,
    Proto(Proto),
    /// Not a CONNECT, or a protocol name or level this broker does not speak.
    Unsupported {
        level: Option<u8>,
    },
}

/// Look at a CONNECT's fixed header, protocol name and level without consuming anything.
pub fn detect(buf: &[u8]) -> Detected {
    if buf.is_empty() {
        return Detected::NeedMore;
    }
    if buf[0] != 0x10 {
        return Detected::Unsupported { level: None };
    }
    // Skip the remaining-length varint (1 to 4 bytes).
    let mut pos = 1;
    loop {
        let Some(byte) = buf.get(pos) else {
            return Detected::NeedMore;
        };
        pos += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if pos > 4 {
            return Detected::Unsupported { level: None };
        }
    }
    let Some(name_len) = buf.get(pos..pos + 2) else {
        return Detected::NeedMore;
    };
    let name_len = u16::from_be_bytes([name_len[0], name_len[1]]) as usize;
    let Some(name) = buf.get(pos + 2..pos + 2 + name_len) else {
        return Detected::NeedMore;
    };
    let Some(level) = buf.get(pos + 2 + name_len) else {
        return Detected::NeedMore;
    };
    match (name, level) {
        (b"MQTT", 4) => Detected::Proto(Proto::V3),
        (b"MQTT", 5) => Detected::Proto(Proto::V5),
        // MQTT (or 3.1's MQIsdp) at a level this broker does not speak: answered with a CONNACK
        // [MQTT-3.1.2-2]. Any other name is not MQTT at all: closed without one [MQTT-3.1.2-1].
        (b"MQTT" | b"MQIsdp", _) => Detected::Unsupported {
            level: Some(*level),
        },
        _ => Detected::Unsupported { level: None },
    }
}

/// How to answer a CONNECT at a level this broker does not speak (`detect` said
/// `Unsupported { level: Some(level) }`): with a v5 CONNACK 0x84 when the packet is v5-shaped
/// (it is a well-formed v5 CONNECT once its level reads 5, and, at a level below 5, not also a
/// well-formed 3.1.1 one), else with a 3.1.1 CONNACK 0x01 [MQTT-3.1.2-2]. `None` until the whole
/// packet is in `buf`.
pub fn unsupported_answer(buf: &[u8], level: u8, max_packet_size: u32) -> Option<Proto> {
    let total = match whole_packet_len(buf, max_packet_size) {
        Ok(Some(total)) => total,
        Ok(None) => return None,
        Err(_) => return Some(Proto::V3),
    };
    let decodes_as = |proto: Proto, as_level: u8| {
        let Some(at) = level_at(buf) else {
            return false;
        };
        let mut packet = BytesMut::from(&buf[..total]);
        packet[at] = as_level;
        let mut wire = Wire::new(proto, max_packet_size);
        matches!(wire.decode(&mut packet), Ok(Some(Inbound::Connect(_))))
    };
    let name_is_mqtt = level_at(buf).is_some_and(|at| buf[at - 4..at] == *b"MQTT");
    let v5 = name_is_mqtt && decodes_as(Proto::V5, 5) && (level > 5 || !decodes_as(Proto::V3, 4));
    Some(if v5 { Proto::V5 } else { Proto::V3 })
}

/// Where a CONNECT's protocol level byte is.
fn level_at(buf: &[u8]) -> Option<usize> {
    let mut pos = 1;
    while buf.get(pos)? & 0x80 != 0 {
        pos += 1;
    }
    let name_len = u16::from_be_bytes([*buf.get(pos + 1)?, *buf.get(pos + 2)?]) as usize;
    let at = pos + 3 + name_len;
    (at < buf.len()).then_some(at)
}
