//! Direct channels between two friends' devices: the server's keys.
//!
//! The server negotiates a channel (the broker's `direct.open`) and later stores what was said
//! over it (`direct.upload`), but never sees it said. So that either side may upload the whole
//! conversation of a channel in the order it happened, each message carries a MAC made with
//! its sender's **channel key**, which the server derives from a secret of its own and gives
//! only to that sender: the peer can upload the message but cannot forge one in the sender's
//! name. Nothing per channel is kept: the key of (channel, conversation, sender) is derived
//! again at upload.
//!
//! Every MAC here is BLAKE2b-256 keyed (RFC 7693) over its parts, each preceded by its length as
//! 8 bytes big-endian; keys and MACs travel as lower-case hex (docs/PROTOCOL.md, section 6.1).

use blake2::Blake2bMac;
use blake2::digest::Mac;
use blake2::digest::consts::U32;

use crate::store::{Batch, Space, Store, StoreError};

type Mac256 = Blake2bMac<U32>;

/// Where the secret is kept (`Space::Meta`).
const SECRET_KEY: &[u8] = b"direct-secret";

/// A MAC of `parts` under `key`.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = Mac256::new_from_slice(key).expect("BLAKE2b takes keys up to 64 bytes");
    for part in parts {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string, `None` when it is not one.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Equal without telling by its timing where two MACs first differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The server's secret for channel keys: made once, kept in the store.
#[derive(Clone)]
pub struct DirectKeys {
    secret: [u8; 32],
}

impl std::fmt::Debug for DirectKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectKeys(..)")
    }
}

impl DirectKeys {
    /// The store's secret, made (from the system's randomness) and written on first use.
    pub fn load(store: &dyn Store) -> Result<DirectKeys, StoreError> {
        if let Some(stored) = store.get(Space::Meta, SECRET_KEY)?
            && let Ok(secret) = <[u8; 32]>::try_from(stored.as_slice())
        {
            return Ok(DirectKeys { secret });
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        let mut batch = Batch::new();
        batch.put(Space::Meta, SECRET_KEY.to_vec(), secret.to_vec());
        store.apply(batch)?;
        store.flush()?;
        Ok(DirectKeys { secret })
    }

    /// The key `from` signs its messages of `channel` in `conv` with.
    pub fn key(&self, channel: &str, conv: &str, from: &str) -> [u8; 32] {
        mac(
            &self.secret,
            &[
                b"mqtter-direct-key",
                channel.as_bytes(),
                conv.as_bytes(),
                from.as_bytes(),
            ],
        )
    }

    /// Did `from` (holder of its channel key) write this message? `body` is the body's JSON
    /// text exactly as sent over the channel.
    pub fn verify(
        &self,
        channel: &str,
        conv: &str,
        from: &str,
        cid: &str,
        body: &str,
        mac_hex: &str,
    ) -> bool {
        let Some(given) = unhex(mac_hex) else {
            return false;
        };
        let key = self.key(channel, conv, from);
        same(&given, &message_mac(&key, channel, cid, body))
    }
}

/// The MAC a sender puts on a message of a channel (the client computes the same).
pub fn message_mac(key: &[u8], channel: &str, cid: &str, body: &str) -> [u8; 32] {
    mac(
        key,
        &[
            b"mqtter-direct-msg",
            channel.as_bytes(),
            cid.as_bytes(),
            body.as_bytes(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_verifies_under_its_senders_key_only() {
        let keys = DirectKeys { secret: [7; 32] };
        let conv = "person:alice|person:bob";
        let alice = keys.key("ch1", conv, "alice");
        let mac = hex(&message_mac(&alice, "ch1", "c-1", r#"{"text":"hi"}"#));
        assert!(keys.verify("ch1", conv, "alice", "c-1", r#"{"text":"hi"}"#, &mac));
        assert!(!keys.verify("ch1", conv, "bob", "c-1", r#"{"text":"hi"}"#, &mac));
        assert!(!keys.verify("ch2", conv, "alice", "c-1", r#"{"text":"hi"}"#, &mac));
        assert!(!keys.verify("ch1", conv, "alice", "c-1", r#"{"text":"ho"}"#, &mac));
        assert!(!keys.verify("ch1", conv, "alice", "c-2", r#"{"text":"hi"}"#, &mac));
        assert!(!keys.verify("ch1", conv, "alice", "c-1", r#"{"text":"hi"}"#, "zz"));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
