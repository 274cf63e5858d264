//! The broker's own message model, independent of the protocol version that carried it.

use std::sync::Arc;

use ntex_bytes::{ByteString, Bytes};
use serde::{Deserialize, Serialize};

pub use ntex_mqtt::QoS;

/// Milliseconds since the Unix epoch, the broker's wall clock for expiry and `$SYS`: the
/// process's clock (`mqtter_engine::clock`, virtual under `mqtter sim`).
pub use mqtter_engine::clock::now_ms;

/// MQTT 5 properties that travel with a message from publisher to subscribers unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProps {
    pub payload_is_utf8: bool,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(ByteString, ByteString)>,
}

impl MessageProps {
    pub fn is_empty(&self) -> bool {
        *self == MessageProps::default()
    }
}

/// One application message, shared (`Arc`) by every subscriber it goes to: the payload is never
/// copied per subscriber.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// The QoS the publisher sent it with (the most a subscriber can get).
    pub qos: QoS,
    pub retain: bool,
    pub props: Option<Arc<MessageProps>>,
    /// When the message expires (v5 Message Expiry Interval), in ms since the epoch.
    pub expires_at_ms: Option<u64>,
    /// The client id of the publisher, for no-local; `None` for messages the broker makes.
    pub publisher: Option<Arc<str>>,
    /// For IM messages: the conversation and sequence number, so that a connection knows which
    /// messages its client has received (its cursors).
    pub stamp: Option<Stamp>,
    /// For a message a world wants to hear back about: told to the connection's members when
    /// the client acknowledges it (`Member::acknowledged`), and handed back to the world when
    /// the connection ends without that (`Session::take_receipts`).
    pub receipt: Option<Receipt>,
}

/// Where an IM message stands in its conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub conv: Arc<str>,
    pub seq: u64,
}

/// What a world asks to be told about one message it sends (see `Message::receipt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The things world's command `seq` to the connection's thing, held by the connection of
    /// token `holder`: acknowledged = handed over.
    ThingCommand { seq: u64, holder: u64 },
    /// The things world's feed entry `seq` of the connection's account: acknowledged =
    /// received by that device (its feed cursor).
    ThingFeed { seq: u64 },
}

impl Message {
    /// A message the broker itself publishes (`$SYS`, wills are published with their owner).
    pub fn system(topic: impl Into<ByteString>, payload: impl Into<Bytes>, retain: bool) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain,
            props: None,
            expires_at_ms: None,
            publisher: None,
            stamp: None,
            receipt: None,
        }
    }

    /// Seconds left before expiry, `None` when it never expires, `Some(0)` when already expired.
    pub fn remaining_expiry_secs(&self, now_ms: u64) -> Option<u32> {
        self.expires_at_ms.map(|at| {
            if at <= now_ms {
                0
            } else {
                (at - now_ms).div_ceil(1000).min(u32::MAX as u64) as u32
            }
        })
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        matches!(self.expires_at_ms, Some(at) if at <= now_ms)
    }
}

/// The on-disk form of a message (postcard-encoded), kept separate from `Message` so the
/// in-memory type can use shared buffers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub expires_at_ms: Option<u64>,
    pub publisher: Option<String>,
    pub payload_is_utf8: bool,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub user_properties: Vec<(String, String)>,
}

pub fn qos_from_u8(value: u8) -> QoS {
    match value {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl From<&Message> for StoredMessage {
    fn from(msg: &Message) -> Self {
        let props = msg.props.as_deref().cloned().unwrap_or_default();
        Self {
            topic: msg.topic.to_string(),
            payload: msg.payload.to_vec(),
            qos: u8::from(msg.qos),
            retain: msg.retain,
            expires_at_ms: msg.expires_at_ms,
            publisher: msg.publisher.as_deref().map(str::to_owned),
            payload_is_utf8: props.payload_is_utf8,
            content_type: props.content_type.map(|s| s.to_string()),
            response_topic: props.response_topic.map(|s| s.to_string()),
            correlation_data: props.correlation_data.map(|b| b.to_vec()),
            user_properties: props
                .user_properties
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

impl From<StoredMessage> for Message {
    fn from(s: StoredMessage) -> Self {
        let props = MessageProps {
            payload_is_utf8: s.payload_is_utf8,
            content_type: s.content_type.map(ByteString::from),
            response_topic: s.response_topic.map(ByteString::from),
            correlation_data: s.correlation_data.map(Bytes::from),
            user_properties: s
                .user_properties
                .into_iter()
                .map(|(k, v)| (ByteString::from(k), ByteString::from(v)))
                .collect(),
        };
        Self {
            topic: ByteString::from(s.topic),
            payload: Bytes::from(s.payload),
            qos: qos_from_u8(s.qos),
            retain: s.retain,
            props: if props.is_empty() {
                None
            } else {
                Some(Arc::new(props))
            },
            expires_at_ms: s.expires_at_ms,
            publisher: s.publisher.map(Arc::from),
            stamp: None,
            receipt: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips() {
        let msg = Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::ExactlyOnce,
            retain: true,
            props: Some(Arc::new(MessageProps {
                payload_is_utf8: true,
                content_type: Some("text/plain".into()),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("k".into(), "v".into())],
            })),
            expires_at_ms: Some(42),
            publisher: Some(Arc::from("pub")),
            stamp: None,
            receipt: None,
        };
        let stored = StoredMessage::from(&msg);
        let bytes = postcard::to_allocvec(&stored).unwrap();
        let back: StoredMessage = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, stored);
        let msg2 = Message::from(back);
        assert_eq!(msg2.topic, msg.topic);
        assert_eq!(msg2.props, msg.props);
    }

    #[test]
    fn expiry_counts_down_in_whole_seconds() {
        let mut msg = Message::system("t", Bytes::new(), false);
        assert_eq!(msg.remaining_expiry_secs(0), None);
        msg.expires_at_ms = Some(10_500);
        assert_eq!(msg.remaining_expiry_secs(9_000), Some(2));
        assert!(msg.is_expired(10_500));
    }
}
