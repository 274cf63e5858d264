//! The direct channel's frames: each a JSON object preceded by its length (4 bytes, big-endian),
//! at most [`MAX_FRAME`] bytes; and the keyed MAC both the handshake and the messages use.

use blake2::Blake2bMac;
use blake2::digest::Mac;
use blake2::digest::consts::U32;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

/// The largest frame: a body's limit on the server (64 KiB) with room for the rest.
pub const MAX_FRAME: usize = 1 << 20;

/// One frame of the channel (docs/CLIENT.md, "The channel's protocol").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Frame {
    /// Dialer → listener, first: which channel, who dials, a fresh nonce.
    Hello {
        channel: String,
        device: String,
        nonce: String,
    },
    /// Listener → dialer: its proof of the token over the dialer's nonce, and its own nonce.
    Challenge { proof: String, nonce: String },
    /// Dialer → listener: its proof of the token over the listener's nonce.
    Auth { proof: String },
    /// Listener → dialer: the channel is open.
    Open,
    /// Either side, then the connection ends: why the peer is not accepted.
    Refused { reason: String },
    /// A message: its `cid`, the sender's time, the body's JSON text, the sender's MAC.
    Msg {
        cid: String,
        ts: u64,
        body: String,
        mac: String,
    },
    /// The message with this `cid` is kept by the receiver.
    Ack { cid: String },
    /// The sender closes the channel.
    Bye,
}

/// Write one frame.
pub async fn write(w: &mut (impl AsyncWrite + Unpin), frame: &Frame) -> Result<()> {
    let json = serde_json::to_vec(frame).map_err(|e| Error::Direct(e.to_string()))?;
    if json.len() > MAX_FRAME {
        return Err(Error::Direct(format!(
            "a frame of {} bytes (at most {MAX_FRAME})",
            json.len()
        )));
    }
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// Read one frame; `None` at a clean end of the stream before a frame begins.
pub async fn read(r: &mut (impl AsyncReadExt + Unpin)) -> Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(Error::Direct(format!(
            "the peer sent a frame of {len} bytes (at most {MAX_FRAME})"
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| Error::Direct(format!("the peer sent a frame that is not one: {e}")))
}

/// BLAKE2b-256 keyed with `key` over `parts`, each preceded by its length (8 bytes,
/// big-endian), as lower-case hex: the server's `direct` MAC, docs/PROTOCOL.md 6.1.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> String {
    let mut m = Blake2bMac::<U32>::new_from_slice(key).expect("keys of at most 64 bytes");
    for part in parts {
        m.update(&(part.len() as u64).to_be_bytes());
        m.update(part);
    }
    hex(&m.finalize().into_bytes())
}

/// The MAC a sender puts on a message (its channel key, the channel, the `cid`, the body text).
pub fn message_mac(key: &[u8], channel: &str, cid: &str, body: &str) -> String {
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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Equal, in a time that does not tell where two proofs first differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_a_huge_length_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let frame = Frame::Msg {
            cid: "c-1".into(),
            ts: 7,
            body: r#"{"text":"hi"}"#.into(),
            mac: "00".into(),
        };
        write(&mut a, &frame).await.unwrap();
        write(&mut a, &Frame::Bye).await.unwrap();
        assert_eq!(read(&mut b).await.unwrap(), Some(frame));
        assert_eq!(read(&mut b).await.unwrap(), Some(Frame::Bye));
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(read(&mut b).await.is_err());
        drop(a);
        assert_eq!(read(&mut b).await.unwrap(), None);
    }
}
