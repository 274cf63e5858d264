//! PUBLISH, SUBSCRIBE and UNSUBSCRIBE on IM topics: direct messages, group messages, status,
//! requests; friend requests and joins by SUBSCRIBE; unfriending and leaving by UNSUBSCRIBE.

use std::sync::Arc;

use mqtter_engine::events::{Actor, ActorKind, Chain, Event, EventData, EventKind, ImMessageEvent};
use mqtter_engine::im::{ImError, conv_direct, conv_group, parse_body};
use ntex_bytes::{ByteString, Bytes};
use serde_json::{Value, json};

use super::{Device, Gate, Status, inbox_topic, json_bytes};
use crate::message::{MessageProps, QoS, Stamp};
use crate::wire::reason;
use crate::worlds::{Outcome, Publish};

/// A PUBLISH on an IM topic.
pub type ImPublish<'a> = Publish<'a>;

/// What a connection remembers of the person it last sent a direct message to, so that the
/// next message to them skips the graph and a few allocations. Valid while the graph's version
/// is the one it was derived at (a block, an unfriending, any relation change moves it).
#[derive(Debug, Default)]
pub struct LastPeer {
    peer: String,
    conv: Option<Arc<str>>,
    inbox: ByteString,
    graph_version: u64,
}

fn user_property<'a>(props: Option<&'a MessageProps>, name: &str) -> Option<&'a str> {
    props?
        .user_properties
        .iter()
        .find(|(k, _)| &**k == name)
        .map(|(_, v)| &**v)
}

/// A message just stamped and stored: its envelope, to be delivered.
pub(super) struct Fresh {
    pub stamp: Stamp,
    pub payload: Bytes,
}

impl Fresh {
    /// The message as devices receive it on `topic`.
    pub fn message(&self, topic: ByteString) -> Arc<crate::message::Message> {
        Gate::message(topic, self.payload.clone(), false, Some(self.stamp.clone()))
    }
}

/// The v5 reason code for a refused IM act.
pub fn error_code(err: &ImError) -> u8 {
    match err {
        ImError::NotFound(_) | ImError::NotAuthorized(_) => reason::NOT_AUTHORIZED,
        ImError::TooLarge(_) => reason::QUOTA_EXCEEDED,
        ImError::Invalid(_) => 0x99,
        ImError::Conflict(_) | ImError::Offline(_) | ImError::Store(_) => reason::UNSPECIFIED,
    }
}

/// `{"type":"error","code":...,"message":...}` for v3 clients, which cannot be refused a PUBLISH.
pub fn error_envelope(err: &ImError, topic: &str, now: u64) -> Value {
    mqtter_engine::im::notice(
        "error",
        now,
        json!({ "code": err.code(), "message": err.to_string(), "topic": topic }),
    )
}

impl Gate {
    /// A PUBLISH on an IM topic by `device` (`None`: an anonymous client or a thing).
    pub fn publish(
        &self,
        device: Option<&Device>,
        p: ImPublish<'_>,
        now: u64,
        last_peer: Option<&mut LastPeer>,
    ) -> Outcome {
        let Some(device) = device else {
            return Outcome::code(reason::NOT_AUTHORIZED);
        };
        // The connection has marked the person active (every packet does).
        match self.publish_as(device, &p, now, last_peer) {
            Ok(outcome) => outcome,
            Err(err @ ImError::Store(_)) => {
                tracing::error!(account = %device.account, topic = p.topic, cause = %err, "IM message not stored: not acknowledged");
                Outcome::storage_failed()
            }
            Err(err) => {
                tracing::debug!(account = %device.account, topic = p.topic, cause = %err, "IM publish refused");
                if !device.v5 {
                    Self::tell_device(device, &error_envelope(&err, p.topic, now));
                }
                Outcome::code(error_code(&err))
            }
        }
    }

    fn publish_as(
        &self,
        device: &Device,
        p: &ImPublish<'_>,
        now: u64,
        last_peer: Option<&mut LastPeer>,
    ) -> Result<Outcome, ImError> {
        let me: &str = &device.account;
        // IM topics have at most three levels: no allocation to take them apart.
        let levels: smallvec::SmallVec<[&str; 4]> = p.topic.split('/').collect();
        let durable = p.qos != QoS::AtMostOnce && self.sync_acks;
        match levels.as_slice() {
            ["person", peer, "inbox"] => {
                let (conv, inbox) = self.direct_route(me, peer, last_peer)?;
                let duplicate = self.send(device, &conv, peer, p, now, |gate, msg_for| {
                    gate.deliver(peer, &msg_for(inbox), None);
                })?;
                Ok(Outcome {
                    code: reason::SUCCESS,
                    needs_flush: durable && !duplicate,
                    storage_failed: false,
                    answers: Vec::new(),
                })
            }
            ["group", group] => {
                self.im.authorize_group(me, group)?;
                let duplicate = self.send(
                    device,
                    &Arc::from(conv_group(group)),
                    group,
                    p,
                    now,
                    |gate, msg_for| {
                        let msg = msg_for(ByteString::from(format!("group/{group}")));
                        gate.deliver_to_members(group, me, &msg);
                    },
                )?;
                Ok(Outcome {
                    code: reason::SUCCESS,
                    needs_flush: durable && !duplicate,
                    storage_failed: false,
                    answers: Vec::new(),
                })
            }
            ["person", who, "status"] if *who == me => {
                self.set_own_status(me, &p.payload, now)?;
                Ok(Outcome {
                    code: reason::SUCCESS,
                    needs_flush: false,
                    storage_failed: false,
                    answers: Vec::new(),
                })
            }
            ["$im", "req"] => {
                let answer = self.request(device, &p.payload, p.props, now);
                // A request may have written relations, the bin, cursors: acknowledged means
                // durable, as for a message.
                Ok(Outcome {
                    code: reason::SUCCESS,
                    needs_flush: durable,
                    storage_failed: false,
                    answers: answer.into_iter().collect(),
                })
            }
            _ => Err(ImError::NotAuthorized(format!(
                "{} is not open to {me}",
                p.topic
            ))),
        }
    }

    /// The conversation and the recipient's inbox topic of a direct message from `me` to `peer`,
    /// once `me` may send it: from `last_peer` when it names `peer` at the graph's current
    /// version, else checked against the graph (and remembered).
    fn direct_route(
        &self,
        me: &str,
        peer: &str,
        last_peer: Option<&mut LastPeer>,
    ) -> Result<(Arc<str>, ByteString), ImError> {
        // Read before the check: a change in between makes the remembered version stale, never
        // the other way round.
        let version = self.im.graph_version();
        if let Some(last) = last_peer.as_deref()
            && last.graph_version == version
            && last.peer == peer
            && let Some(conv) = &last.conv
        {
            return Ok((conv.clone(), last.inbox.clone()));
        }
        if peer == me {
            // Not a friend of oneself: refused like any other non-friend (0x87).
            return Err(ImError::NotAuthorized(
                "a person cannot message themself".into(),
            ));
        }
        self.im.authorize_direct(me, peer)?;
        let conv: Arc<str> = Arc::from(conv_direct(me, peer));
        let inbox = ByteString::from(inbox_topic(peer));
        if let Some(last) = last_peer {
            *last = LastPeer {
                peer: peer.to_owned(),
                conv: Some(conv.clone()),
                inbox: inbox.clone(),
                graph_version: version,
            };
        }
        Ok((conv, inbox))
    }

    /// Stamp, store and fan out one message of `conv` (under its lock, so every member sees one
    /// order). `fan_out` delivers to the recipients; the sender's other devices get a copy here.
    /// Returns whether it was a duplicate (same `cid`), which is acknowledged but not delivered.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        device: &Device,
        conv: &Arc<str>,
        to: &str,
        p: &ImPublish<'_>,
        now: u64,
        fan_out: impl FnOnce(&Gate, &dyn Fn(ByteString) -> Arc<crate::message::Message>),
    ) -> Result<bool, ImError> {
        let body = parse_body(&p.payload, self.settings.max_body_bytes)?;
        let cid = user_property(p.props, "cid").or(body.cid.as_deref());
        let chain = user_property(p.props, "chain-id").map(|id| {
            let hop = user_property(p.props, "chain-hop").and_then(|h| h.parse().ok());
            (id, hop.unwrap_or(0))
        });
        let _order = self.im.lock_conv(conv);
        let Some(stamped) = self.stamp(
            conv,
            &device.account,
            to,
            &body.json,
            cid,
            chain,
            p.by_rule,
            now,
        )?
        else {
            return Ok(true);
        };
        let msg_for = |topic: ByteString| stamped.message(topic);
        fan_out(self, &msg_for);
        // A copy to the sender's other devices, if it has any online.
        let others = self.sessions_of(&device.account, Some(&device.client_id));
        if !others.is_empty() {
            let own = msg_for(ByteString::from(inbox_topic(&device.account)));
            for session in others {
                session.offer(Gate::delivery(&own), &self.limits);
            }
        }
        Ok(false)
    }

    /// Stamp and store one message of `conv` from `from` (hold `lock_conv(conv)`) and emit it
    /// on the event seam; `None` when it is a duplicate (the same `cid` from `from` was stored
    /// before), which is delivered to nobody.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stamp(
        &self,
        conv: &Arc<str>,
        from: &Arc<str>,
        to: &str,
        body: &[u8],
        cid: Option<&str>,
        chain: Option<(&str, u32)>,
        by_rule: bool,
        now: u64,
    ) -> Result<Option<Fresh>, ImError> {
        let stamped = self.im.append(conv, from, to, body, cid, chain, now)?;
        if stamped.duplicate {
            return Ok(None);
        }
        self.events.emit_with(EventKind::ImMessage, || Event {
            actor: Actor {
                account: Some(from.clone()),
                kind: if by_rule {
                    ActorKind::Rule
                } else {
                    ActorKind::Person
                },
            },
            at: now,
            chain: match chain {
                Some((id, hop)) => Chain {
                    id: Arc::from(id),
                    hop,
                },
                None => Chain::start(format!("{conv}#{}", stamped.seq)),
            },
            data: EventData::ImMessage(ImMessageEvent {
                conv: conv.to_string(),
                seq: stamped.seq,
                from: from.to_string(),
                to: to.to_owned(),
                body: bytes::Bytes::copy_from_slice(body),
                cid: cid.map(str::to_owned),
            }),
        });
        Ok(Some(Fresh {
            stamp: Stamp {
                conv: conv.clone(),
                seq: stamped.seq,
            },
            payload: Bytes::from(stamped.envelope),
        }))
    }

    fn set_own_status(&self, me: &str, payload: &[u8], now: u64) -> Result<(), ImError> {
        let value: Value = serde_json::from_slice(payload).map_err(|_| {
            ImError::Invalid(
                r#"status must be JSON: {"presence": "away"|"online", "text": "..."}"#.into(),
            )
        })?;
        let status = match value.get("presence").and_then(Value::as_str) {
            Some("away") => Some(Status::Away),
            Some("online") => Some(Status::Online),
            Some(other) => return Err(ImError::Invalid(format!("unknown presence {other:?}"))),
            None => None,
        };
        let text_changed = {
            let mut presences = self.presences();
            let Some(p) = presences.get_mut(me) else {
                return Ok(());
            };
            if let Some(status) = status {
                p.away_by_choice = status == Status::Away;
            }
            match value.get("text") {
                Some(text) => {
                    p.text = text.as_str().map(str::to_owned);
                    true
                }
                None => false,
            }
        };
        match status {
            Some(status) => self.set_status(me, status, now),
            None if text_changed => self.publish_presence(me),
            None => {}
        }
        if text_changed && status.is_some() {
            // `set_status` publishes only on a status change; a new text must show too.
            self.publish_presence(me);
        }
        Ok(())
    }

    /// A SUBSCRIBE to an IM filter. Returns the v5 reason code (granted QoS, or 0x87).
    pub fn subscribe(&self, device: Option<&Device>, filter: &str, qos: u8, now: u64) -> u8 {
        let Some(device) = device else {
            return reason::NOT_AUTHORIZED;
        };
        if filter.contains(['+', '#']) {
            // The IM world cannot be read by wildcard: every IM topic is granted by the graph.
            return reason::NOT_AUTHORIZED;
        }
        self.activity(&device.account, now);
        let granted = qos.min(1);
        let me: &str = &device.account;
        let levels: Vec<&str> = filter.split('/').collect();
        let result = match levels.as_slice() {
            ["person", who, "inbox" | "status"] if *who == me => Ok(Vec::new()),
            ["person", peer, "status"] => self
                .im
                .friend_request(me, peer, now)
                .map(|(_, effects)| effects),
            ["group", group] => self
                .im
                .group_join(me, group, now)
                .map(|(_, effects)| effects),
            _ => Err(ImError::NotAuthorized(format!(
                "{filter} is not open to {me}"
            ))),
        };
        match result {
            Ok(effects) => {
                self.apply(effects, me);
                granted
            }
            Err(err) => {
                tracing::debug!(account = me, filter, cause = %err, "IM subscribe refused");
                if !device.v5 {
                    Self::tell_device(device, &error_envelope(&err, filter, now));
                }
                reason::NOT_AUTHORIZED
            }
        }
    }

    /// An UNSUBSCRIBE from an IM filter: unfriend or leave, into the recycle bin for
    /// `retain_secs` (default and cap from the configuration).
    pub fn unsubscribe(
        &self,
        device: Option<&Device>,
        filter: &str,
        retain_secs: Option<u64>,
        now: u64,
    ) -> u8 {
        let Some(device) = device else {
            return reason::NO_SUBSCRIPTION_EXISTED;
        };
        let me: &str = &device.account;
        let levels: Vec<&str> = filter.split('/').collect();
        let result = match levels.as_slice() {
            ["person", who, "inbox" | "status"] if *who == me => return reason::SUCCESS,
            ["person", peer, "status"] => self.im.friend_remove(me, peer, retain_secs, now),
            ["group", group] => self.im.group_leave(me, group, retain_secs, now),
            _ => return reason::NO_SUBSCRIPTION_EXISTED,
        };
        match result {
            Ok(effects) => {
                self.apply(effects, me);
                reason::SUCCESS
            }
            Err(ImError::NotFound(_)) | Err(ImError::NotAuthorized(_)) => {
                reason::NO_SUBSCRIPTION_EXISTED
            }
            Err(err) => {
                if !device.v5 {
                    Self::tell_device(device, &error_envelope(&err, filter, now));
                }
                reason::UNSPECIFIED
            }
        }
    }

    /// Withdraw friend requests that were made with `im-temporary` and are still pending.
    pub fn withdraw_temporary(&self, account: &str, peers: &[String], now: u64) {
        for peer in peers {
            let pending = self
                .im
                .with_graph(|g| g.get(account, peer, "freq").is_some());
            if pending && let Ok(effects) = self.im.friend_remove(account, peer, None, now) {
                self.apply(effects, account);
            }
        }
    }
}

/// The answer shape shared with requests.
pub(super) fn res(id: &Value, result: Result<Value, ImError>, now: u64) -> Value {
    mqtter_engine::im::res(id, result.map_err(|e| (e.code(), e.to_string())), now)
}

pub(super) fn json_payload(value: &Value) -> Bytes {
    json_bytes(value)
}
