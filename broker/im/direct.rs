//! Direct channels between friends' devices, the server's two parts (docs/PROTOCOL.md 6.1):
//! `direct.open` (who may open one, the token, the offer to the peer's device) and
//! `direct.upload` (what was said over a channel, stored once as if sent through the server).
//!
//! The server never carries a channel's messages and keeps nothing per channel: the token goes
//! to the two devices, which check it themselves when they meet, and the key each sender signs
//! its messages with is derived again at upload (`mqtter_engine::im::direct`).

use std::net::SocketAddr;
use std::sync::Arc;

use mqtter_engine::im::direct::hex;
use mqtter_engine::im::{ImError, ImResult, conv_direct, notice, parse_body};
use ntex_bytes::ByteString;
use serde_json::{Value, json};

use super::requests::arg;
use super::{Device, Gate, inbox_topic};

/// The most messages one `direct.upload` may carry (a longer channel uploads in parts).
pub const UPLOAD_MAX: usize = 1000;

/// 16 random bytes as hex (a channel id), or 32 (a token).
fn random_hex<const N: usize>() -> String {
    hex(&rand::random::<[u8; N]>())
}

/// One message of an upload, checked.
struct Upload {
    from: Arc<str>,
    to: String,
    cid: String,
    body: Vec<u8>,
}

impl Gate {
    /// The person `me` may open a direct channel to `peer`: friends, no block either way.
    fn check_peer(&self, me: &str, peer: &str) -> ImResult<()> {
        if peer == me {
            return Err(ImError::NotAuthorized(
                "a direct channel is between two persons".into(),
            ));
        }
        self.im.authorize_direct(me, peer)
    }

    /// `direct.open`: `device` asks for a channel to `peer`, saying where it listens. The
    /// chosen device of the peer gets a `direct.offer`; the answer carries the same token.
    pub(super) fn direct_open(
        &self,
        device: &Device,
        request: &Value,
        now: u64,
    ) -> ImResult<Value> {
        let me: &str = &device.account;
        let peer = arg(request, "peer")?;
        let addr = arg(request, "addr")?;
        let parsed: SocketAddr = addr.parse().map_err(|_| {
            ImError::Invalid(format!(
                "addr {addr:?} is not an IP address and port (e.g. 192.168.1.7:40123)"
            ))
        })?;
        if parsed.ip().is_unspecified() || parsed.port() == 0 {
            return Err(ImError::Invalid(format!(
                "addr {addr:?} cannot be dialled: give the address the peer can reach"
            )));
        }
        self.check_peer(me, peer)?;
        let wanted = request.get("device").and_then(Value::as_str);
        let devices = self.devices_of(peer);
        let target = match wanted {
            Some(name) => devices.iter().rev().find(|d| {
                *d.client_id == *name || d.client_id.strip_prefix(&format!("{peer}:")) == Some(name)
            }),
            None => devices.last(),
        };
        let Some(target) = target else {
            return Err(ImError::Offline(match wanted {
                Some(name) => format!("{peer} has no device {name} online"),
                None => format!("{peer} is offline"),
            }));
        };
        let channel = random_hex::<16>();
        let token = random_hex::<32>();
        let lifetime = self.settings.direct_token_ms;
        let expires_at = now.saturating_add(lifetime);
        let conv = conv_direct(me, peer);
        let keys = self.im.direct_keys();
        let offer = notice(
            "direct.offer",
            now,
            json!({
                "channel": channel,
                "from": me,
                "from_device": &*device.client_id,
                "device": &*target.client_id,
                "addr": addr,
                "token": token,
                "expires_at": expires_at,
                "lifetime_ms": lifetime,
                "key": hex(&keys.key(&channel, &conv, peer)),
            }),
        );
        Gate::tell_device(target, &offer);
        tracing::info!(
            from = %device.client_id,
            to = %target.client_id,
            %channel,
            "direct channel offered"
        );
        Ok(json!({
            "channel": channel,
            "peer": peer,
            "peer_device": &*target.client_id,
            "token": token,
            "expires_at": expires_at,
            "lifetime_ms": lifetime,
            "key": hex(&keys.key(&channel, &conv, me)),
        }))
    }

    /// `direct.upload`: messages said over direct channels between `device`'s person and
    /// `peer`, in the order they were said, each stored once (conversation + sender + `cid`),
    /// stamped and delivered to every device of both persons like a message sent now. The
    /// peer's messages must carry the MAC of the peer's channel key; all are checked before
    /// any is stored.
    pub(super) fn direct_upload(
        &self,
        device: &Device,
        request: &Value,
        now: u64,
    ) -> ImResult<Value> {
        let me: &str = &device.account;
        let peer = arg(request, "peer")?;
        self.check_peer(me, peer)?;
        let messages = request
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| ImError::Invalid("missing array argument \"messages\"".into()))?;
        if messages.len() > UPLOAD_MAX {
            return Err(ImError::TooLarge(format!(
                "{} messages in one upload, at most {UPLOAD_MAX}",
                messages.len()
            )));
        }
        let conv: Arc<str> = Arc::from(conv_direct(me, peer));
        let me_arc = device.account.clone();
        let peer_arc: Arc<str> = Arc::from(peer);
        let mut checked = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let field = |name: &str| {
                m.get(name).and_then(Value::as_str).ok_or_else(|| {
                    ImError::Invalid(format!("message {i}: missing string {name:?}"))
                })
            };
            let (from, to) = match field("from")? {
                f if f == me => (me_arc.clone(), peer.to_owned()),
                f if f == peer => (peer_arc.clone(), me.to_owned()),
                other => {
                    return Err(ImError::Invalid(format!(
                        "message {i}: from {other:?} is neither {me} nor {peer}"
                    )));
                }
            };
            let cid = field("cid")?;
            if cid.is_empty() {
                return Err(ImError::Invalid(format!("message {i}: an empty cid")));
            }
            let text = field("body")?;
            let body =
                parse_body(text.as_bytes(), self.settings.max_body_bytes).map_err(|e| match e {
                    ImError::TooLarge(m) => ImError::TooLarge(format!("message {i}: {m}")),
                    other => ImError::Invalid(format!("message {i}: {other}")),
                })?;
            if *from == *peer {
                let (channel, mac) = (field("channel")?, field("mac")?);
                if !self
                    .im
                    .direct_keys()
                    .verify(channel, &conv, peer, cid, text, mac)
                {
                    return Err(ImError::NotAuthorized(format!(
                        "message {i}: its MAC is not {peer}'s for channel {channel}"
                    )));
                }
            }
            checked.push(Upload {
                from,
                to,
                cid: cid.to_owned(),
                body: body.json.into_owned(),
            });
        }
        let _order = self.im.lock_conv(&conv);
        let mut answers = Vec::with_capacity(checked.len());
        for m in checked {
            let fresh = self.stamp(
                &conv,
                &m.from,
                &m.to,
                &m.body,
                Some(&m.cid),
                None,
                false,
                now,
            )?;
            let seq = match &fresh {
                Some(fresh) => {
                    for account in [&*m.from, m.to.as_str()] {
                        let msg = fresh.message(ByteString::from(inbox_topic(account)));
                        self.deliver(account, &msg, None);
                    }
                    fresh.stamp.seq
                }
                None => self.im.find_cid(&conv, &m.from, &m.cid).unwrap_or(0),
            };
            answers.push(json!({
                "cid": m.cid,
                "from": &*m.from,
                "seq": seq,
                "duplicate": fresh.is_none(),
            }));
        }
        Ok(json!({ "conv": &*conv, "messages": answers }))
    }
}
