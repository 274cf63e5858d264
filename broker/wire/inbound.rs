//! What a client sends, version-neutral: the packet types the broker sees and their translation
//! from ntex-mqtt's v3.1.1 and v5 codecs.

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;

use ntex_bytes::{ByteString, Bytes};
use ntex_mqtt::{v3, v5};

use crate::message::{Message, MessageProps, QoS};
use crate::session::SubOpts;

/// A last will, as the CONNECT carried it.
#[derive(Debug, Clone)]
pub struct Will {
    pub msg: Message,
    pub delay_secs: u32,
    /// The account whose client set it (its CONNECT's username), for the event seam; not
    /// stored (after a restart, the client id's namespace says, see `Broker::will_actor`).
    pub account: Option<std::sync::Arc<str>>,
}

/// A CONNECT, version-neutral.
#[derive(Debug, Clone)]
pub struct ConnectIn {
    pub client_id: ByteString,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    /// v3: 0 for a clean session, "never" (u32::MAX) for a persistent one; v5: as sent.
    pub session_expiry: u32,
    pub receive_max: u16,
    pub max_packet_size: Option<u32>,
    pub topic_alias_max: u16,
    pub request_problem_info: bool,
    pub auth_method: Option<ByteString>,
    /// v5 user properties (the IM world reads `im-sync`).
    pub user_properties: Vec<(ByteString, ByteString)>,
}

/// A PUBLISH from the client, version-neutral.
#[derive(Debug, Clone)]
pub struct PublishIn {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: Option<u16>,
    pub topic_alias: Option<u16>,
    pub props: Option<MessageProps>,
    pub expiry_secs: Option<u32>,
    /// A client may not send Subscription Identifiers [MQTT-3.3.4-6].
    pub has_sub_ids: bool,
}

/// Every packet a client can send, version-neutral.
#[derive(Debug, Clone)]
pub enum Inbound {
    Connect(Box<ConnectIn>),
    Publish(Box<PublishIn>),
    PubAck(u16),
    /// PUBREC; `true` when its reason code is an error (then no PUBREL follows).
    PubRec(u16, bool),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        packet_id: u16,
        sub_id: Option<u32>,
        filters: Vec<(ByteString, SubOpts)>,
        /// v5 user properties (the IM world reads `im-temporary`).
        user_properties: Vec<(ByteString, ByteString)>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<ByteString>,
        /// v5 user properties (the IM world reads `im-retain-secs`).
        user_properties: Vec<(ByteString, ByteString)>,
    },
    PingReq,
    Disconnect {
        reason: u8,
        session_expiry: Option<u32>,
    },
    Auth,
    /// A packet only a server sends (CONNACK, SUBACK, ...): a protocol error from a client.
    Unexpected(&'static str),
    /// A packet the codec cannot represent, refused with this v5 reason code.
    Invalid(u8, &'static str),
}

fn v5_props(props: &v5::codec::PublishProperties) -> Option<MessageProps> {
    let p = MessageProps {
        payload_is_utf8: props.is_utf8_payload,
        content_type: props.content_type.clone(),
        response_topic: props.response_topic.clone(),
        correlation_data: props.correlation_data.clone(),
        user_properties: props.user_properties.clone(),
    };
    if p.is_empty() { None } else { Some(p) }
}

fn will_v3(will: v3::codec::LastWill) -> Will {
    Will {
        msg: Message {
            topic: will.topic,
            payload: will.message,
            qos: will.qos,
            retain: will.retain,
            props: None,
            expires_at_ms: None,
            publisher: None,
            stamp: None,
            receipt: None,
        },
        delay_secs: 0,
        account: None,
    }
}

fn will_v5(will: v5::codec::LastWill) -> Will {
    let props = MessageProps {
        payload_is_utf8: will.is_utf8_payload.unwrap_or(false),
        content_type: will.content_type,
        response_topic: will.response_topic,
        correlation_data: will.correlation_data,
        user_properties: will.user_properties,
    };
    Will {
        msg: Message {
            topic: will.topic,
            payload: will.message,
            qos: will.qos,
            retain: will.retain,
            props: if props.is_empty() {
                None
            } else {
                Some(Arc::new(props))
            },
            // Stored as an interval until the will is published (see `Broker::publish_will`).
            expires_at_ms: will.message_expiry_interval.map(|s| u64::from(s.get())),
            publisher: None,
            stamp: None,
            receipt: None,
        },
        delay_secs: will.will_delay_interval_sec.unwrap_or(0),
        account: None,
    }
}

pub(super) fn from_v3(decoded: v3::codec::Decoded) -> Inbound {
    use v3::codec::Packet as P;
    match decoded {
        v3::codec::Decoded::Publish(p, payload, _) => Inbound::Publish(Box::new(PublishIn {
            topic: p.topic,
            payload,
            qos: p.qos,
            retain: p.retain,
            dup: p.dup,
            packet_id: p.packet_id.map(NonZeroU16::get),
            topic_alias: None,
            props: None,
            expiry_secs: None,
            has_sub_ids: false,
        })),
        v3::codec::Decoded::PayloadChunk(..) => Inbound::Unexpected("payload chunk"),
        v3::codec::Decoded::Packet(packet, _) => match packet {
            P::Connect(c) => Inbound::Connect(Box::new(ConnectIn {
                client_id: c.client_id,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                username: c.username,
                password: c.password,
                will: c.last_will.map(will_v3),
                session_expiry: if c.clean_session { 0 } else { u32::MAX },
                receive_max: u16::MAX,
                max_packet_size: None,
                topic_alias_max: 0,
                request_problem_info: true,
                auth_method: None,
                user_properties: Vec::new(),
            })),
            P::PublishAck { packet_id } => Inbound::PubAck(packet_id.get()),
            P::PublishReceived { packet_id } => Inbound::PubRec(packet_id.get(), false),
            P::PublishRelease { packet_id } => Inbound::PubRel(packet_id.get()),
            P::PublishComplete { packet_id } => Inbound::PubComp(packet_id.get()),
            P::Subscribe {
                packet_id,
                topic_filters,
            } => Inbound::Subscribe {
                packet_id: packet_id.get(),
                sub_id: None,
                user_properties: Vec::new(),
                filters: topic_filters
                    .into_iter()
                    .map(|(f, qos)| {
                        let opts = SubOpts {
                            qos: u8::from(qos),
                            no_local: false,
                            retain_as_published: false,
                            retain_handling: 0,
                            sub_id: None,
                        };
                        (f, opts)
                    })
                    .collect(),
            },
            P::Unsubscribe {
                packet_id,
                topic_filters,
            } => Inbound::Unsubscribe {
                packet_id: packet_id.get(),
                filters: topic_filters,
                user_properties: Vec::new(),
            },
            P::PingRequest => Inbound::PingReq,
            P::Disconnect => Inbound::Disconnect {
                reason: 0,
                session_expiry: None,
            },
            P::ConnectAck(_) => Inbound::Unexpected("CONNACK"),
            P::SubscribeAck { .. } => Inbound::Unexpected("SUBACK"),
            P::UnsubscribeAck { .. } => Inbound::Unexpected("UNSUBACK"),
            P::PingResponse => Inbound::Unexpected("PINGRESP"),
        },
    }
}

pub(super) fn from_v5(decoded: v5::codec::Decoded) -> Inbound {
    use v5::codec::Packet as P;
    match decoded {
        v5::codec::Decoded::Publish(p, payload, _) => Inbound::Publish(Box::new(PublishIn {
            props: v5_props(&p.properties),
            expiry_secs: p.properties.message_expiry_interval.map(NonZeroU32::get),
            topic_alias: p.properties.topic_alias.map(NonZeroU16::get),
            has_sub_ids: !p.properties.subscription_ids.is_empty(),
            topic: p.topic,
            payload,
            qos: p.qos,
            retain: p.retain,
            dup: p.dup,
            packet_id: p.packet_id.map(NonZeroU16::get),
        })),
        v5::codec::Decoded::PayloadChunk(..) => Inbound::Unexpected("payload chunk"),
        v5::codec::Decoded::Packet(packet, _) => match packet {
            P::Connect(c) => {
                let c = *c;
                Inbound::Connect(Box::new(ConnectIn {
                    client_id: c.client_id,
                    clean_start: c.clean_start,
                    keep_alive: c.keep_alive,
                    username: c.username,
                    password: c.password,
                    will: c.last_will.map(will_v5),
                    session_expiry: c.session_expiry_interval_secs,
                    receive_max: c.receive_max.map_or(u16::MAX, NonZeroU16::get),
                    max_packet_size: c.max_packet_size.map(NonZeroU32::get),
                    topic_alias_max: c.topic_alias_max,
                    request_problem_info: c.request_problem_info,
                    auth_method: c.auth_method,
                    user_properties: c.user_properties,
                }))
            }
            P::PublishAck(a) => Inbound::PubAck(a.packet_id.get()),
            P::PublishReceived(a) => {
                Inbound::PubRec(a.packet_id.get(), u8::from(a.reason_code) >= 0x80)
            }
            P::PublishRelease(a) => Inbound::PubRel(a.packet_id.get()),
            P::PublishComplete(a) => Inbound::PubComp(a.packet_id.get()),
            P::Subscribe(s) => Inbound::Subscribe {
                user_properties: s.user_properties.clone(),
                packet_id: s.packet_id.get(),
                sub_id: s.id.map(NonZeroU32::get),
                filters: s
                    .topic_filters
                    .into_iter()
                    .map(|(f, o)| {
                        let opts = SubOpts {
                            qos: u8::from(o.qos),
                            no_local: o.no_local,
                            retain_as_published: o.retain_as_published,
                            retain_handling: o.retain_handling as u8,
                            sub_id: s.id.map(NonZeroU32::get),
                        };
                        (f, opts)
                    })
                    .collect(),
            },
            P::Unsubscribe(u) => Inbound::Unsubscribe {
                packet_id: u.packet_id.get(),
                filters: u.topic_filters,
                user_properties: u.user_properties,
            },
            P::PingRequest => Inbound::PingReq,
            P::Disconnect(d) => Inbound::Disconnect {
                reason: u8::from(d.reason_code),
                session_expiry: d.session_expiry_interval_secs,
            },
            P::Auth(_) => Inbound::Auth,
            P::ConnectAck(_) => Inbound::Unexpected("CONNACK"),
            P::SubscribeAck(_) => Inbound::Unexpected("SUBACK"),
            P::UnsubscribeAck(_) => Inbound::Unexpected("UNSUBACK"),
            P::PingResponse => Inbound::Unexpected("PINGRESP"),
        },
    }
}
