//! How sessions, queued messages and retained messages are laid out in the `Store`.
//!
//! - `Sessions`: client id -> `SessionRecord` (with its holder; records written before the holder
//!   was kept still decode, see `SessionRecord::decode`).
//! - `Queue`: `[len u16][client id][seq u64]` -> `[header len u16][QueuedHeader][StoredMessage]`,
//!   one entry per QoS 1/2 message owed to a persistent session, removed when acknowledged.
//! - `Retained`: topic -> `StoredMessage`.
//!
//! All values are postcard-encoded; the message body of a queued entry is encoded once per
//! PUBLISH and shared by every session it is queued for.

use mqtter_engine::{Space, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::identity::{self, StoredHolder};
use crate::message::StoredMessage;
use crate::session::SubOpts;

/// A persistent session as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub expiry_secs: u32,
    pub subscriptions: Vec<(String, SubOpts)>,
    pub inbound_qos2: Vec<u16>,
    /// When the client went away; `None` while connected (a crash leaves it `None`: the
    /// restart then counts the expiry from the restart).
    pub disconnected_at_ms: Option<u64>,
    /// Who the session belongs to (see `identity`); records written before it was kept decode
    /// as `Unknown`.
    pub holder: StoredHolder,
}

/// A session record as versions before `holder` wrote it.
#[derive(Deserialize)]
struct LegacySessionRecord {
    expiry_secs: u32,
    subscriptions: Vec<(String, SubOpts)>,
    inbound_qos2: Vec<u16>,
    disconnected_at_ms: Option<u64>,
}

impl SessionRecord {
    /// Decode a record of this version or of an earlier one.
    pub fn decode(bytes: &[u8]) -> Option<SessionRecord> {
        decode(bytes).or_else(|| {
            let old: LegacySessionRecord = decode(bytes)?;
            Some(SessionRecord {
                expiry_secs: old.expiry_secs,
                subscriptions: old.subscriptions,
                inbound_qos2: old.inbound_qos2,
                disconnected_at_ms: old.disconnected_at_ms,
                holder: StoredHolder::Unknown,
            })
        })
    }
}

/// The client ids in `account`'s namespace that have a stored session of another holder: an
/// account of that name would take their client ids away (see `crate::identity`).
pub fn foreign_sessions(store: &dyn Store, account: &str) -> Result<Vec<String>, StoreError> {
    let mut found = Vec::new();
    for (key, value) in store.scan_prefix(Space::Sessions, account.as_bytes())? {
        let client_id = String::from_utf8_lossy(&key).into_owned();
        if identity::namespace(&client_id) != account {
            continue;
        }
        let holder = SessionRecord::decode(&value).map_or(StoredHolder::Unknown, |r| r.holder);
        if holder != StoredHolder::Account(account.to_owned()) {
            found.push(client_id);
        }
    }
    Ok(found)
}

/// The last will of a connected client, kept so that a broker crash does not lose it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WillRecord {
    /// The connection that set it (a takeover's new will is not removed by the old connection).
    pub owner: u64,
    /// The will message; `expires_at_ms` holds its Message Expiry Interval in seconds until it
    /// is published.
    pub msg: StoredMessage,
    pub delay_secs: u32,
}

/// What is particular to one session in a queued entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueuedHeader {
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    /// Set once the client sent PUBREC: the packet id to resend PUBREL with.
    pub released_packet_id: Option<u16>,
    /// Set when a QoS 2 message was sent: the packet id to resend it with (DUP) after a restart,
    /// so that a client which already has it does not deliver it twice [MQTT-4.3.3-9].
    pub sent_packet_id: Option<u16>,
}

pub fn client_prefix(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + client_id.len() + 8);
    key.extend_from_slice(&(client_id.len().min(u16::MAX as usize) as u16).to_be_bytes());
    key.extend_from_slice(client_id.as_bytes());
    key
}

pub fn queue_key(client_id: &str, seq: u64) -> Vec<u8> {
    let mut key = client_prefix(client_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The sequence number at the end of a queue key.
pub fn seq_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|tail| <[u8; 8]>::try_from(tail).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard fails only on types it cannot represent, which ours are not.
    postcard::to_allocvec(value).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    postcard::from_bytes(bytes).ok()
}

pub fn queued_value(header: &QueuedHeader, message: &[u8]) -> Vec<u8> {
    let header = encode(header);
    let mut value = Vec::with_capacity(2 + header.len() + message.len());
    value.extend_from_slice(&(header.len() as u16).to_be_bytes());
    value.extend_from_slice(&header);
    value.extend_from_slice(message);
    value
}

pub fn split_queued(value: &[u8]) -> Option<(QueuedHeader, StoredMessage)> {
    let len = u16::from_be_bytes([*value.first()?, *value.get(1)?]) as usize;
    let header = decode(value.get(2..2 + len)?)?;
    let message = decode(value.get(2 + len..)?)?;
    Some((header, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_client_then_sequence() {
        let a1 = queue_key("a", 1);
        let a2 = queue_key("a", 256);
        let ab = queue_key("ab", 0);
        assert!(a1 < a2);
        assert!(a1.starts_with(&client_prefix("a")));
        assert!(!ab.starts_with(&client_prefix("a")));
        assert_eq!(seq_of(&a2), 256);
    }

    #[test]
    fn session_records_of_an_earlier_version_still_decode() {
        #[derive(Serialize)]
        struct Old {
            expiry_secs: u32,
            subscriptions: Vec<(String, SubOpts)>,
            inbound_qos2: Vec<u16>,
            disconnected_at_ms: Option<u64>,
        }
        let old = encode(&Old {
            expiry_secs: 60,
            subscriptions: vec![(
                "a/#".into(),
                SubOpts {
                    qos: 1,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                    sub_id: None,
                },
            )],
            inbound_qos2: vec![4],
            disconnected_at_ms: Some(9),
        });
        let record = SessionRecord::decode(&old).expect("an old record");
        assert_eq!(record.expiry_secs, 60);
        assert_eq!(record.inbound_qos2, [4]);
        assert_eq!(record.holder, StoredHolder::Unknown);
        let new = SessionRecord {
            holder: StoredHolder::Account("bob".into()),
            ..record.clone()
        };
        assert_eq!(SessionRecord::decode(&encode(&new)), Some(new));
    }

    #[test]
    fn queued_values_round_trip() {
        let header = QueuedHeader {
            qos: 2,
            retain: true,
            sub_ids: vec![7],
            released_packet_id: Some(3),
            sent_packet_id: Some(3),
        };
        let msg = StoredMessage {
            topic: "t".into(),
            payload: b"p".to_vec(),
            qos: 2,
            retain: false,
            expires_at_ms: None,
            publisher: None,
            payload_is_utf8: false,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        };
        let value = queued_value(&header, &encode(&msg));
        assert_eq!(split_queued(&value), Some((header, msg)));
        assert_eq!(split_queued(b"\x00"), None);
    }
}
