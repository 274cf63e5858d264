//! The wire: ntex-mqtt's v3.1.1 and v5 codecs behind one interface, translating packets to and
//! from the broker's own model so that sessions and routing never see a protocol version.

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

use ntex_bytes::{BytePageSize, BytePages, ByteString, BytesMut};
use ntex_codec::{Decoder, Encoder};
use ntex_mqtt::error::{DecodeError, EncodeError};
use ntex_mqtt::{v3, v5};

use crate::session::Delivery;

mod detect;
mod inbound;

pub use detect::{Detected, detect, unsupported_answer};
pub use inbound::{ConnectIn, Inbound, PublishIn, Will};
use inbound::{from_v3, from_v5};

/// The protocol a connection speaks, decided by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    V3,
    V5,
}

/// v5 reason codes the broker uses (v3 maps them to its fewer codes).
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED: u8 = 0x80;
    pub const MALFORMED: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    pub const UNSUPPORTED_PROTOCOL: u8 = 0x84;
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    pub const BAD_USER_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const BAD_AUTH_METHOD: u8 = 0x8C;
    pub const KEEPALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_ID_IN_USE: u8 = 0x91;
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    pub const SHARED_NOT_SUPPORTED: u8 = 0x9E;
}

/// What the CONNACK tells a v5 client about the server.
#[derive(Debug, Clone, Default)]
pub struct ConnackProps {
    pub assigned_client_id: Option<ByteString>,
    pub server_keepalive: Option<u16>,
    pub session_expiry: Option<u32>,
    pub receive_max: u16,
    pub max_packet_size: u32,
    pub topic_alias_max: u16,
    pub reason_string: Option<ByteString>,
}

enum Inner {
    V3(v3::codec::Codec),
    V5(v5::codec::Codec),
}

/// The codec of one connection, plus the outbound topic aliases it has handed out (v5).
pub struct Wire {
    inner: Inner,
    /// Encoded and not yet written; a page list (taken from a per-thread cache) only while there
    /// is something to write.
    out: Option<BytePages>,
    /// Outbound topic aliases: topic -> alias, up to the client's Topic Alias Maximum.
    aliases: std::collections::HashMap<ByteString, u16>,
    alias_max: u16,
    /// The largest Remaining Length accepted (0: no limit).
    max_inbound: u32,
    /// The client's Maximum Packet Size (v5; 0: none).
    max_outbound: u32,
    /// A packet over `max_outbound` was discarded already: logged once per connection.
    oversize_logged: bool,
    /// The client's id, for that log line; only for a client with a Maximum Packet Size.
    client_id: Option<Arc<str>>,
}

/// A `Wire` with nothing to write, kept small while its connection is parked: the codec is
/// built again from the limits, only the outbound topic aliases are state.
pub struct ParkedWire {
    #[expect(
        clippy::box_collection,
        reason = "one pointer in every parked record, the map only for clients that have aliases"
    )]
    aliases: Option<Box<std::collections::HashMap<ByteString, u16>>>,
    max_inbound: u32,
    max_outbound: u32,
    alias_max: u16,
    proto: Proto,
    oversize_logged: bool,
}

impl ParkedWire {
    pub fn resume(self, client_id: &Arc<str>) -> Wire {
        let mut wire = Wire::new(self.proto, self.max_inbound);
        wire.set_client_limits(
            Some(self.max_outbound).filter(|m| *m > 0),
            self.alias_max,
            client_id,
        );
        wire.oversize_logged = self.oversize_logged;
        if let Some(aliases) = self.aliases {
            wire.aliases = *aliases;
        }
        wire
    }
}

/// ntex's v5 encoders never go below this limit: those of the acknowledgements subtract 7 from
/// it, and a smaller one overflows.
const CODEC_FLOOR: u32 = 7;

/// The Remaining Length limit for ntex's v5 codec under a client's Maximum Packet Size of `max`
/// bytes. The codec compares it with the Remaining Length (and leaves out a reason string or
/// user properties that would not fit); on its own it assumes the largest fixed header, which
/// discards packets up to 3 bytes smaller than the maximum, and for a maximum under 6 bytes
/// lets the fixed header go over it. So this is the largest Remaining Length of a packet of at
/// most `max` bytes, fixed header included, and never below `CODEC_FLOOR` (`Wire::encode_within`
/// then catches what does not fit).
fn codec_limit(max: u32) -> u32 {
    let varint_len = |n: u32| match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    let remaining = (1..=4u32)
        .find_map(|len| {
            let r = max.checked_sub(1 + len)?;
            (varint_len(r) <= len).then_some(r)
        })
        .unwrap_or(0);
    remaining.max(CODEC_FLOOR)
}

/// The page list a new encoding goes to.
fn pages(out: &mut Option<BytePages>) -> &mut BytePages {
    out.get_or_insert_with(|| BytePages::new(BytePageSize::Size4))
}

fn nz16(id: u16) -> NonZeroU16 {
    NonZeroU16::new(id).unwrap_or(NonZeroU16::MIN)
}

impl Wire {
    pub fn new(proto: Proto, max_inbound: u32) -> Self {
        let inner = match proto {
            Proto::V3 => {
                let codec = v3::codec::Codec::new();
                codec.set_max_size(max_inbound);
                codec.set_min_chunk_size(u32::MAX);
                Inner::V3(codec)
            }
            Proto::V5 => {
                let codec = v5::codec::Codec::new();
                codec.set_max_inbound_size(max_inbound);
                codec.set_min_chunk_size(u32::MAX);
                Inner::V5(codec)
            }
        };
        Self {
            inner,
            out: None,
            aliases: Default::default(),
            alias_max: 0,
            max_inbound,
            max_outbound: 0,
            oversize_logged: false,
            client_id: None,
        }
    }

    pub fn proto(&self) -> Proto {
        match self.inner {
            Inner::V3(_) => Proto::V3,
            Inner::V5(_) => Proto::V5,
        }
    }

    /// The client's Maximum Packet Size and Topic Alias Maximum (v5), for what we send.
    pub fn set_client_limits(
        &mut self,
        max_packet_size: Option<u32>,
        topic_alias_max: u16,
        client_id: &Arc<str>,
    ) {
        if let (Inner::V5(codec), Some(max)) = (&self.inner, max_packet_size.filter(|m| *m > 0)) {
            // The codec takes 5 bytes off for the largest fixed header.
            codec.set_max_outbound_size(codec_limit(max) + 5);
            self.max_outbound = max;
            self.client_id = Some(client_id.clone());
        }
        self.alias_max = topic_alias_max;
    }

    /// Encode one packet into the pending pages with `encode`. A packet over the client's
    /// Maximum Packet Size, counted whole (fixed header included) [MQTT-3.1.2-24], is taken back
    /// out: it is discarded as if it had been sent [MQTT-3.1.2-25], and the first discard of a
    /// connection is logged (a client that announces a tiny maximum would otherwise log a line
    /// per packet).
    fn encode_within(
        &mut self,
        encode: impl FnOnce(&Inner, &mut BytePages) -> Result<(), EncodeError>,
    ) -> Result<(), EncodeError> {
        let out = pages(&mut self.out);
        let before = out.len();
        let mut result = encode(&self.inner, out);
        if result.is_ok()
            && self.max_outbound > 0
            && out.len() - before > self.max_outbound as usize
        {
            let kept = out.split_to(before);
            *out = kept;
            result = Err(EncodeError::OverMaxPacketSize);
        }
        if result == Err(EncodeError::OverMaxPacketSize) {
            self.discarded();
        }
        result
    }

    /// A packet over the client's Maximum Packet Size was discarded: logged for the first one.
    fn discarded(&mut self) {
        if !self.oversize_logged {
            self.oversize_logged = true;
            tracing::info!(
                client_id = self.client_id.as_deref().unwrap_or_default(),
                max_packet_size = self.max_outbound,
                "a packet over the client's Maximum Packet Size is discarded (logged once per connection)"
            );
        }
    }

    /// Decode the next whole packet from `src`, if there is one.
    ///
    /// The codec is handed exactly one whole packet: ntex's codecs return a PUBLISH as soon as
    /// its header is in (with an empty payload, the rest following as chunks), and read a field
    /// past the end of its packet when the lengths inside disagree. The broker routes complete
    /// messages only, and a packet that cannot be decoded from its own bytes is malformed.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Inbound>, DecodeError> {
        let Some(total) = whole_packet_len(src, self.max_inbound)? else {
            return Ok(None);
        };
        if matches!(self.inner, Inner::V5(_)) && v5_publish_alias_is_zero(&src[..total]) {
            let _ = src.split_to(total);
            // ntex-mqtt fails such a PUBLISH as malformed (its Topic Alias is a NonZeroU16);
            // the specification makes it a Topic Alias invalid error [MQTT-3.3.2-8].
            return Ok(Some(Inbound::Invalid(
                reason::TOPIC_ALIAS_INVALID,
                "topic alias 0",
            )));
        }
        let mut packet = BytesMut::from(src.split_to(total));
        let decoded = match &self.inner {
            Inner::V3(codec) => codec.decode(&mut packet)?.map(from_v3),
            Inner::V5(codec) => codec.decode(&mut packet)?.map(from_v5),
        };
        match decoded {
            Some(inbound) if packet.is_empty() => Ok(Some(inbound)),
            _ => Err(DecodeError::MalformedPacket),
        }
    }

    /// Bytes encoded and not yet written, if any.
    pub fn pending(&mut self) -> Option<&mut BytePages> {
        self.out.as_mut().filter(|out| !out.is_empty())
    }

    /// Everything pending was written: the page list goes back to the thread's cache.
    pub fn written(&mut self) {
        self.out = None;
    }

    pub fn has_pending(&self) -> bool {
        self.out.as_ref().is_some_and(|out| !out.is_empty())
    }

    /// The small form of a wire with nothing pending (see `ParkedWire`).
    pub fn park(self) -> ParkedWire {
        let proto = self.proto();
        ParkedWire {
            aliases: (!self.aliases.is_empty()).then(|| Box::new(self.aliases)),
            max_inbound: self.max_inbound,
            max_outbound: self.max_outbound,
            alias_max: self.alias_max,
            proto,
            oversize_logged: self.oversize_logged,
        }
    }

    fn put_v3(&mut self, packet: v3::codec::Packet) {
        let encoded = self.encode_within(|inner, out| match inner {
            Inner::V3(codec) => codec.encodev(v3::codec::Encoded::Packet(packet), out),
            Inner::V5(_) => Ok(()),
        });
        if let Err(err) = encoded {
            tracing::warn!(?err, "cannot encode a v3 packet");
        }
    }

    fn put_v5(&mut self, packet: v5::codec::Packet) {
        let encoded = self.encode_within(|inner, out| match inner {
            Inner::V5(codec) => codec.encodev(v5::codec::Encoded::Packet(packet), out),
            Inner::V3(_) => Ok(()),
        });
        match encoded {
            // Discarded as if sent, logged once (`encode_within`).
            Ok(()) | Err(EncodeError::OverMaxPacketSize) => {}
            Err(err) => tracing::warn!(?err, "cannot encode a v5 packet"),
        }
    }

    /// CONNACK. `code` is a v5 reason code; v3 gets the nearest of its own.
    pub fn connack(&mut self, session_present: bool, code: u8, props: ConnackProps) {
        match self.inner {
            Inner::V3(_) => {
                use v3::codec::ConnectAckReason as R;
                let return_code = match code {
                    reason::SUCCESS => R::ConnectionAccepted,
                    reason::UNSUPPORTED_PROTOCOL => R::UnacceptableProtocolVersion,
                    reason::CLIENT_ID_NOT_VALID => R::IdentifierRejected,
                    reason::BAD_USER_OR_PASSWORD => R::BadUserNameOrPassword,
                    reason::NOT_AUTHORIZED => R::NotAuthorized,
                    _ => R::ServiceUnavailable,
                };
                self.put_v3(v3::codec::Packet::ConnectAck(v3::codec::ConnectAck {
                    return_code,
                    session_present,
                }));
            }
            Inner::V5(_) => {
                let reason_code = v5::codec::ConnectAckReason::try_from(code)
                    .unwrap_or(v5::codec::ConnectAckReason::UnspecifiedError);
                let ack = v5::codec::ConnectAck {
                    session_present,
                    reason_code,
                    session_expiry_interval_secs: props.session_expiry,
                    receive_max: nz16(props.receive_max.max(1)),
                    max_packet_size: Some(props.max_packet_size).filter(|m| *m > 0),
                    assigned_client_id: props.assigned_client_id,
                    topic_alias_max: props.topic_alias_max,
                    server_keepalive_sec: props.server_keepalive,
                    reason_string: props.reason_string,
                    ..Default::default()
                };
                self.put_v5(v5::codec::Packet::ConnectAck(Box::new(ack)));
            }
        }
    }

    /// Encode a PUBLISH to the client. Fails with `OverMaxPacketSize` when the client's Maximum
    /// Packet Size forbids it (the caller then drops the message for this client).
    pub fn publish(
        &mut self,
        packet_id: Option<u16>,
        delivery: &Delivery,
        dup: bool,
        now_ms: u64,
    ) -> Result<(), EncodeError> {
        let msg = &delivery.msg;
        match &self.inner {
            Inner::V3(_) => {
                let packet = v3::codec::Publish {
                    dup,
                    retain: delivery.retain,
                    qos: delivery.qos,
                    topic: msg.topic.clone(),
                    packet_id: packet_id.and_then(NonZeroU16::new),
                    payload_size: msg.payload.len() as u32,
                };
                let publish = v3::codec::Encoded::Publish(packet, Some(msg.payload.clone()));
                self.encode_within(|inner, out| match inner {
                    Inner::V3(codec) => codec.encodev(publish, out),
                    Inner::V5(_) => Ok(()),
                })
            }
            Inner::V5(_) => {
                let mut properties = v5::codec::PublishProperties::default();
                if let Some(p) = msg.props.as_deref() {
                    properties.is_utf8_payload = p.payload_is_utf8;
                    properties.content_type = p.content_type.clone();
                    properties.response_topic = p.response_topic.clone();
                    properties.correlation_data = p.correlation_data.clone();
                    properties.user_properties = p.user_properties.clone();
                }
                properties.message_expiry_interval = msg
                    .remaining_expiry_secs(now_ms)
                    .and_then(|s| NonZeroU32::new(s.max(1)));
                properties.subscription_ids = delivery
                    .sub_ids
                    .iter()
                    .filter_map(|id| NonZeroU32::new(*id))
                    .collect();
                let mut topic = msg.topic.clone();
                let mut new_alias = false;
                if self.alias_max > 0 {
                    if let Some(alias) = self.aliases.get(&msg.topic) {
                        properties.topic_alias = NonZeroU16::new(*alias);
                        topic = ByteString::default();
                    } else if self.aliases.len() < self.alias_max as usize {
                        let alias = self.aliases.len() as u16 + 1;
                        self.aliases.insert(msg.topic.clone(), alias);
                        properties.topic_alias = NonZeroU16::new(alias);
                        new_alias = true;
                    }
                }
                let packet = v5::codec::Publish {
                    dup,
                    retain: delivery.retain,
                    qos: delivery.qos,
                    packet_id: packet_id.and_then(NonZeroU16::new),
                    topic,
                    payload_size: msg.payload.len() as u32,
                    properties,
                };
                let publish = v5::codec::Encoded::Publish(packet, Some(msg.payload.clone()));
                let encoded = self.encode_within(|inner, out| match inner {
                    Inner::V5(codec) => codec.encodev(publish, out),
                    Inner::V3(_) => Ok(()),
                });
                if encoded.is_err() && new_alias {
                    // The client never saw the alias: it is not one.
                    self.aliases.remove(&msg.topic);
                }
                encoded
            }
        }
    }

    pub fn puback(&mut self, packet_id: u16, code: u8) {
        match self.inner {
            Inner::V3(_) => self.put_v3(v3::codec::Packet::PublishAck {
                packet_id: nz16(packet_id),
            }),
            Inner::V5(_) => self.put_v5(v5::codec::Packet::PublishAck(v5_ack(packet_id, code))),
        }
    }

    pub fn pubrec(&mut self, packet_id: u16, code: u8) {
        match self.inner {
            Inner::V3(_) => self.put_v3(v3::codec::Packet::PublishReceived {
                packet_id: nz16(packet_id),
            }),
            Inner::V5(_) => {
                self.put_v5(v5::codec::Packet::PublishReceived(v5_ack(packet_id, code)))
            }
        }
    }

    pub fn pubrel(&mut self, packet_id: u16) {
        match self.inner {
            Inner::V3(_) => self.put_v3(v3::codec::Packet::PublishRelease {
                packet_id: nz16(packet_id),
            }),
            Inner::V5(_) => self.put_v5(v5::codec::Packet::PublishRelease(v5_ack2(
                packet_id,
                reason::SUCCESS,
            ))),
        }
    }

    pub fn pubcomp(&mut self, packet_id: u16, code: u8) {
        match self.inner {
            Inner::V3(_) => self.put_v3(v3::codec::Packet::PublishComplete {
                packet_id: nz16(packet_id),
            }),
            Inner::V5(_) => {
                self.put_v5(v5::codec::Packet::PublishComplete(v5_ack2(packet_id, code)))
            }
        }
    }

    /// SUBACK with one v5 reason code per filter (v3: granted QoS or 0x80).
    pub fn suback(&mut self, packet_id: u16, codes: &[u8]) {
        match self.inner {
            Inner::V3(_) => {
                let status = codes
                    .iter()
                    .map(|c| match c {
                        0..=2 => {
                            v3::codec::SubscribeReturnCode::Success(crate::message::qos_from_u8(*c))
                        }
                        _ => v3::codec::SubscribeReturnCode::Failure,
                    })
                    .collect();
                self.put_v3(v3::codec::Packet::SubscribeAck {
                    packet_id: nz16(packet_id),
                    status,
                });
            }
            Inner::V5(_) => {
                // ntex's SUBACK encoder subtracts the codes from the limit (and overflows below
                // it); such a SUBACK cannot fit anyway.
                if self.max_outbound > 0
                    && codes.len() + 2 > codec_limit(self.max_outbound) as usize
                {
                    return self.discarded();
                }
                let status = codes
                    .iter()
                    .map(|c| {
                        v5::codec::SubscribeAckReason::try_from(*c)
                            .unwrap_or(v5::codec::SubscribeAckReason::UnspecifiedError)
                    })
                    .collect();
                self.put_v5(v5::codec::Packet::SubscribeAck(v5::codec::SubscribeAck {
                    packet_id: nz16(packet_id),
                    properties: Vec::new(),
                    reason_string: None,
                    status,
                }));
            }
        }
    }

    pub fn unsuback(&mut self, packet_id: u16, codes: &[u8]) {
        match self.inner {
            Inner::V3(_) => self.put_v3(v3::codec::Packet::UnsubscribeAck {
                packet_id: nz16(packet_id),
            }),
            Inner::V5(_) => {
                let status = codes
                    .iter()
                    .map(|c| {
                        v5::codec::UnsubscribeAckReason::try_from(*c)
                            .unwrap_or(v5::codec::UnsubscribeAckReason::UnspecifiedError)
                    })
                    .collect();
                self.put_v5(v5::codec::Packet::UnsubscribeAck(
                    v5::codec::UnsubscribeAck {
                        packet_id: nz16(packet_id),
                        properties: Vec::new(),
                        reason_string: None,
                        status,
                    },
                ));
            }
        }
    }

    pub fn pingresp(&mut self) {
        match self.inner {
            Inner::V3(_) => self.put_v3(v3::codec::Packet::PingResponse),
            Inner::V5(_) => self.put_v5(v5::codec::Packet::PingResponse),
        }
    }

    /// A server DISCONNECT with a reason (v5 only; a v3 connection is simply closed).
    pub fn disconnect(&mut self, code: u8, reason_string: Option<&str>) {
        if let Inner::V5(_) = self.inner {
            let reason_code = v5::codec::DisconnectReasonCode::try_from(code)
                .unwrap_or(v5::codec::DisconnectReasonCode::UnspecifiedError);
            let packet = v5::codec::Disconnect::new(reason_code)
                .reason_string(reason_string.map(ByteString::from));
            self.put_v5(v5::codec::Packet::Disconnect(packet));
        }
    }
}

/// A Variable Byte Integer at the start of `buf`: its value and its length in bytes.
fn var_int(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Whether a whole v5 packet is a PUBLISH carrying a Topic Alias of 0. Anything else, or a
/// packet too broken to tell, is `false` (the codec then judges it).
fn v5_publish_alias_is_zero(packet: &[u8]) -> bool {
    const TOPIC_ALIAS: u8 = 0x23;
    let Some(&first) = packet.first() else {
        return false;
    };
    if first >> 4 != 3 {
        return false;
    }
    let Some((_, header)) = packet.get(1..).and_then(var_int) else {
        return false;
    };
    let mut pos = 1 + header;
    let Some(topic_len) = packet.get(pos..pos + 2) else {
        return false;
    };
    pos += 2 + usize::from(u16::from_be_bytes([topic_len[0], topic_len[1]]));
    if (first >> 1) & 0x03 != 0 {
        pos += 2; // packet identifier
    }
    let Some((props_len, used)) = packet.get(pos..).and_then(var_int) else {
        return false;
    };
    pos += used;
    let Some(mut props) = packet.get(pos..pos + props_len) else {
        return false;
    };
    let string_len = |p: &[u8]| {
        p.get(..2)
            .map(|l| 2 + usize::from(u16::from_be_bytes([l[0], l[1]])))
    };
    while let Some((&id, rest)) = props.split_first() {
        let len = match id {
            TOPIC_ALIAS => return rest.get(..2) == Some(&[0, 0][..]),
            0x01 => Some(1),
            0x02 => Some(4),
            0x03 | 0x08 | 0x09 => string_len(rest),
            0x0B => var_int(rest).map(|(_, used)| used),
            0x26 => string_len(rest).and_then(|k| Some(k + string_len(rest.get(k..)?)?)),
            _ => None,
        };
        let Some(next) = len.and_then(|len| rest.get(len..)) else {
            return false;
        };
        props = next;
    }
    false
}

/// The length of the packet at the front of `src` once all of it is there. A Remaining Length
/// over `max` (0: no limit) is refused before the packet arrives; one of more than four bytes
/// is malformed [MQTT-1.5.5-1].
fn whole_packet_len(src: &[u8], max: u32) -> Result<Option<usize>, DecodeError> {
    let mut remaining: u32 = 0;
    for (i, byte) in src.iter().skip(1).enumerate() {
        if i == 4 {
            return Err(DecodeError::InvalidLength);
        }
        remaining |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if max != 0 && remaining > max {
                return Err(DecodeError::MaxSizeExceeded {
                    size: remaining,
                    max_size: max,
                });
            }
            let total = 2 + i + remaining as usize;
            return Ok((src.len() >= total).then_some(total));
        }
    }
    Ok(None)
}

fn v5_ack(packet_id: u16, code: u8) -> v5::codec::PublishAck {
    v5::codec::PublishAck {
        packet_id: nz16(packet_id),
        reason_code: v5::codec::PublishAckReason::try_from(code)
            .unwrap_or(v5::codec::PublishAckReason::UnspecifiedError),
        properties: Vec::new(),
        reason_string: None,
    }
}

fn v5_ack2(packet_id: u16, code: u8) -> v5::codec::PublishAck2 {
    v5::codec::PublishAck2 {
        packet_id: nz16(packet_id),
        reason_code: v5::codec::PublishAck2Reason::try_from(code)
            .unwrap_or(v5::codec::PublishAck2Reason::PacketIdNotFound),
        properties: Vec::new(),
        reason_string: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codec_limit_is_the_largest_remaining_length_that_fits() {
        assert_eq!(codec_limit(24), 22);
        assert_eq!(codec_limit(129), 127);
        assert_eq!(codec_limit(130), 127); // 128 would need a 2-byte length: 131 bytes
        assert_eq!(codec_limit(131), 128);
        assert_eq!(codec_limit(16_777_216), 16_777_211);
        assert_eq!(codec_limit(1), CODEC_FLOOR);
        assert_eq!(codec_limit(8), CODEC_FLOOR);
    }

    /// [MQTT-3.1.2-24]: under any Maximum Packet Size, however tiny, no packet larger is
    /// written, and none makes the encoder fail or panic: what does not fit is discarded.
    #[test]
    fn nothing_over_a_tiny_maximum_packet_size_is_written() {
        let client_id: Arc<str> = Arc::from("tiny");
        for max in 1..=40u32 {
            let mut wire = Wire::new(Proto::V5, 0);
            wire.set_client_limits(Some(max), 0, &client_id);
            let packets: [&dyn Fn(&mut Wire); 8] = [
                &|w| w.puback(1, reason::SUCCESS),
                &|w| w.puback(2, 0x10),
                &|w| w.pubrec(3, 0x87),
                &|w| w.pubrel(4),
                &|w| w.pubcomp(5, reason::PACKET_ID_NOT_FOUND),
                &|w| w.suback(6, &[1; 30]),
                &|w| w.unsuback(7, &[0x11; 3]),
                &|w| w.disconnect(reason::PROTOCOL_ERROR, Some("a reason string")),
            ];
            for (i, packet) in packets.iter().enumerate() {
                let before = wire.pending().map_or(0, |p| p.len());
                packet(&mut wire);
                let after = wire.pending().map_or(0, |p| p.len());
                assert!(
                    after - before <= max as usize,
                    "packet {i}: {} bytes under a maximum of {max}",
                    after - before
                );
            }
            wire.pingresp();
        }
    }

    #[test]
    fn detects_the_protocol_from_the_connect() {
        let v3 = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";
        assert_eq!(detect(v3), Detected::Proto(Proto::V3));
        let mut v5 = v3.to_vec();
        v5[8] = 5;
        assert_eq!(detect(&v5), Detected::Proto(Proto::V5));
        assert_eq!(detect(&v3[..5]), Detected::NeedMore);
        assert_eq!(detect(b"\x30\x00"), Detected::Unsupported { level: None });
        let mut old = v3.to_vec();
        old[8] = 3;
        assert_eq!(detect(&old), Detected::Unsupported { level: Some(3) });
        let mut wrong_name = v3.to_vec();
        wrong_name[4..8].copy_from_slice(b"MQTX");
        assert_eq!(detect(&wrong_name), Detected::Unsupported { level: None });
    }

    #[test]
    fn an_unknown_level_is_answered_in_the_shape_of_the_connect() {
        // v5: flags (clean start), keepalive 60, a Session Expiry Interval, client id "c".
        let v5 = b"\x10\x13\x00\x04MQTT\x05\x02\x00\x3c\x05\x11\x00\x00\x00\x0a\x00\x01c";
        let v3 = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c";
        let at = |packet: &[u8], level: u8| {
            let mut p = packet.to_vec();
            p[8] = level;
            unsupported_answer(&p, level, 0)
        };
        assert_eq!(at(v5, 6), Some(Proto::V5));
        assert_eq!(at(v5, 3), Some(Proto::V5));
        assert_eq!(at(v3, 6), Some(Proto::V3));
        assert_eq!(at(v3, 3), Some(Proto::V3));
        assert_eq!(at(&v5[..10], 6), None);
        let mut isdp = b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01c".to_vec();
        assert_eq!(unsupported_answer(&isdp, 3, 0), Some(Proto::V3));
        isdp[10] = 9;
        assert_eq!(unsupported_answer(&isdp, 9, 0), Some(Proto::V3));
    }

    #[test]
    fn a_v5_topic_alias_of_0_is_topic_alias_invalid() {
        // QoS 1 PUBLISH to "t", packet id 1, properties: a user property ("a", "b"), a Payload
        // Format Indicator, then a Topic Alias; payload "x".
        let publish = |alias: u8| {
            let mut p = vec![0x32, 0x13, 0x00, 0x01, b't', 0x00, 0x01, 0x0c];
            p.extend_from_slice(&[0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b']);
            p.extend_from_slice(&[0x01, 0x00, 0x23, 0x00, alias, b'x']);
            p
        };
        assert!(v5_publish_alias_is_zero(&publish(0)));
        assert!(!v5_publish_alias_is_zero(&publish(1)));
        let mut wire = Wire::new(Proto::V5, 0);
        let mut buf = BytesMut::from(&publish(0)[..]);
        match wire.decode(&mut buf) {
            Ok(Some(Inbound::Invalid(code, _))) => assert_eq!(code, reason::TOPIC_ALIAS_INVALID),
            other => panic!("expected Topic Alias invalid, got {other:?}"),
        }
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&publish(1)[..]);
        match wire.decode(&mut buf) {
            Ok(Some(Inbound::Publish(p))) => assert_eq!(p.topic_alias, Some(1)),
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }
}
