//! The things world as a `World`, and `ThingMember`, its state of one connected device of a
//! person or a thing: the CONNECT sync (a thing's queued commands, a person's things, the
//! feed), PUBLISH on `thing/T/cmd|ack|state|event` and `$things/req`, SUBSCRIBE as a follow
//! request, UNSUBSCRIBE as an unbind, PINGREQ as last seen, and the end (offline).

use std::sync::Arc;

use mqtter_engine::events::Actor;
use mqtter_engine::things::{AckRequest, Chain, CommandRequest, Effect, Reply, Sent, ThingError};
use ntex_bytes::ByteString;
use serde_json::{Value, json};

use super::{Device, ThingsWorld, delivery, is_things_topic, message};
use crate::message::{MessageProps, QoS, Receipt};
use crate::wire::reason;
use crate::worlds::{Joining, Member, Outcome, Publish, World};

fn user_property<'a>(props: Option<&'a MessageProps>, name: &str) -> Option<&'a str> {
    props?
        .user_properties
        .iter()
        .find(|(k, _)| &**k == name)
        .map(|(_, v)| &**v)
}

fn property<'a>(props: &'a [(ByteString, ByteString)], name: &str) -> Option<&'a str> {
    props.iter().find(|(k, _)| &**k == name).map(|(_, v)| &**v)
}

/// The chain the v5 user properties `chain-id` / `chain-hop` name.
fn chain_property(props: Option<&MessageProps>) -> Option<Chain> {
    let id = user_property(props, "chain-id")?;
    let hop = user_property(props, "chain-hop")
        .and_then(|h| h.parse().ok())
        .unwrap_or(0);
    Some(Chain {
        id: id.to_owned(),
        hop,
    })
}

/// The v5 reason code for a refused things act.
pub(super) fn error_code(err: &ThingError) -> u8 {
    match err {
        ThingError::Invalid(_) => 0x99,
        ThingError::TooLarge(_) | ThingError::QueueFull(_) => reason::QUOTA_EXCEEDED,
        ThingError::Store(_) => reason::UNSPECIFIED,
        _ => reason::NOT_AUTHORIZED,
    }
}

/// `{"type":"error","code":...,"message":...,"topic":...}` for v3 clients.
pub(super) fn error_envelope(err: &ThingError, topic: &str, now: u64) -> Value {
    mqtter_engine::im::notice(
        "error",
        now,
        json!({ "code": err.code(), "message": err.to_string(), "topic": topic }),
    )
}

/// A connected device in the things world.
pub struct ThingMember {
    world: Arc<ThingsWorld>,
    device: Device,
    /// Acting for the rules engine as the device's account (an action), not a client.
    by_rule: bool,
}

impl World for ThingsWorld {
    fn owns(&self, topic: &str) -> bool {
        is_things_topic(topic)
    }

    /// Persons and things join. A thing comes online and gets, after the CONNACK, its queued
    /// commands within their ttl (handed over once), then its feed; a person gets its things
    /// (`things`: presence, state, follow requests, links) and its feed. Both end with
    /// `feed.done`, but a thing that is owed nothing gets nothing.
    fn join(self: Arc<Self>, client: &Joining<'_>, now: u64) -> Option<Box<dyn Member>> {
        let account = client.account?;
        let is_thing = self.things.is_thing(account);
        if !is_thing && !self.im.is_person(account) {
            return None;
        }
        let device = Device {
            token: client.token,
            account: Arc::from(account),
            client_id: client.client_id.clone(),
            session: client.session.clone(),
            v5: client.v5,
            is_thing,
            subs: Default::default(),
        };
        // Registered first: what is sent from now on reaches it.
        self.devices()
            .entry(device.account.clone())
            .or_default()
            .push(device.clone());
        let inbox = self.inbox_of(account);
        // `im-sync: false` (a script that only makes requests): no sync in any world; live
        // messages still reach it.
        let sync = property(client.user_properties, "im-sync") != Some("false");
        if !sync {
            if is_thing && let Err(err) = self.things.connected(account, now) {
                tracing::error!(cause = %err, account, "thing presence not stored");
            }
            return Some(Box::new(ThingMember {
                world: self,
                device,
                by_rule: false,
            }));
        }
        // What follows the CONNACK, in order.
        let mut sync = Vec::new();
        if is_thing {
            match self.things.connected(account, now) {
                Ok(effects) => {
                    self.carry(effects, &super::thing_actor(account));
                }
                Err(err) => tracing::error!(cause = %err, account, "thing presence not stored"),
            }
            match self.things.take_queued(account, device.token, now) {
                Ok((commands, effects)) => {
                    sync.extend(self.queued_for(account, device.token, &commands));
                    self.carry(effects, &super::thing_actor(account));
                }
                Err(err) => tracing::error!(cause = %err, account, "cannot read queued commands"),
            }
        } else {
            match self.things.roster(account) {
                Ok(things) => {
                    let envelope =
                        mqtter_engine::im::notice("things", now, json!({ "things": things }));
                    sync.push(delivery(&message(&*inbox, &envelope, false)));
                }
                Err(err) => tracing::error!(cause = %err, account, "cannot list things"),
            }
        }
        let mut last = self.things.feed_last(account).unwrap_or(0);
        match self.things.feed_sync(&device.client_id, account) {
            Ok(entries) => {
                // The device's cursor moves as it acknowledges them (`acknowledged`).
                for entry in &entries {
                    sync.push(delivery(&super::feed_message(&inbox, entry)));
                    last = last.max(entry["feed"].as_u64().unwrap_or(0));
                }
            }
            Err(err) => tracing::error!(cause = %err, account, "cannot read the feed"),
        }
        // A thing with nothing owed gets nothing (a thing account may be a plain MQTT device).
        if !is_thing || !sync.is_empty() {
            let done = mqtter_engine::im::notice("feed.done", now, json!({ "last": last }));
            sync.push(delivery(&message(&*inbox, &done, false)));
        }
        for d in sync {
            device.session.force(d);
        }
        Some(Box::new(ThingMember {
            world: self,
            device,
            by_rule: false,
        }))
    }
}

impl ThingMember {
    pub(super) fn me(&self) -> &str {
        &self.device.account
    }

    pub(super) fn world(&self) -> &ThingsWorld {
        &self.world
    }

    pub(super) fn device(&self) -> &Device {
        &self.device
    }

    pub(super) fn actor(&self) -> Actor {
        if self.by_rule {
            Actor {
                account: Some(self.device.account.clone()),
                kind: mqtter_engine::events::ActorKind::Rule,
            }
        } else if self.device.is_thing {
            super::thing_actor(self.me())
        } else {
            Actor::person(self.me())
        }
    }

    /// A refusal: v5 says it in the reason code, v3 is told on its inbox.
    fn refuse(&self, err: &ThingError, topic: &str, now: u64) -> Outcome {
        if let ThingError::Store(_) = err {
            tracing::error!(account = self.me(), topic, cause = %err, "things act not stored: not acknowledged");
            return Outcome::storage_failed();
        }
        tracing::debug!(account = self.me(), topic, cause = %err, "things publish refused");
        if !self.device.v5 {
            self.world
                .tell_device(&self.device, &error_envelope(err, topic, now));
        }
        Outcome::code(error_code(err))
    }

    fn done(&self, p: &Publish<'_>, answers: Vec<Arc<crate::message::Message>>) -> Outcome {
        Outcome {
            code: reason::SUCCESS,
            needs_flush: p.qos != QoS::AtMostOnce && self.world.sync_acks,
            storage_failed: false,
            answers,
        }
    }

    fn command(&self, thing: &str, p: &Publish<'_>, now: u64) -> Result<Outcome, ThingError> {
        let world = &self.world;
        let mut req = CommandRequest::from_payload(
            self.me(),
            thing,
            &p.payload,
            world.things.config().max_body_bytes,
        )?;
        if let Some(cid) = user_property(p.props, "cid") {
            req.cid = Some(cid.to_owned());
        }
        if let Some(ttl) = user_property(p.props, "ttl") {
            req.ttl_secs = Some(
                ttl.parse()
                    .map_err(|_| ThingError::Invalid("ttl must be whole seconds".into()))?,
            );
        }
        if let Some(chain) = chain_property(p.props) {
            req.chain = Some(chain);
        }
        // A v5 request: the answer also goes to its (plain) Response Topic.
        if let Some(topic) = p.props.and_then(|props| props.response_topic.as_ref())
            && !topic.starts_with("thing/")
            && !crate::im::is_im_topic(topic)
            && crate::topic::validate_name(topic).is_ok()
        {
            req.reply = Some(Reply {
                topic: topic.to_string(),
                correlation: p
                    .props
                    .and_then(|props| props.correlation_data.as_ref())
                    .map(|c| c.to_vec()),
            });
        }
        let body = req.body.clone();
        let (sent, effects) = world.things.command(req, now)?;
        if !matches!(sent, Sent::Duplicate { .. }) {
            world.emit_command(&self.actor(), thing, sent.id(), &body, now);
        }
        let answers = world.carry(effects, &self.actor());
        Ok(self.done(p, answers))
    }

    fn own_publish(&self, what: &str, p: &Publish<'_>, now: u64) -> Result<Outcome, ThingError> {
        let world = &self.world;
        let me = self.me();
        let actor = self.actor();
        let effects = match what {
            "ack" => {
                let correlation = p.props.and_then(|props| props.correlation_data.as_deref());
                let ack = AckRequest::from_payload(&p.payload, correlation)?;
                world.things.ack(me, ack, now)?
            }
            "state" => {
                let replace = user_property(p.props, "state-replace") == Some("true");
                let chain = chain_property(p.props).or_else(|| {
                    user_property(p.props, "cmd-id")
                        .and_then(|id| world.things.chain_of_command(me, id))
                });
                world
                    .things
                    .publish_state(me, &p.payload, replace, chain, now)?
                    .1
            }
            "event" => {
                let chain = chain_property(p.props);
                world.things.publish_event(me, &p.payload, chain, now)?.1
            }
            _ => {
                return Err(ThingError::NotAuthorized(format!(
                    "{} is not open to {me}",
                    p.topic
                )));
            }
        };
        let answers = world.carry(effects, &actor);
        Ok(self.done(p, answers))
    }
}

impl ThingsWorld {
    /// A PUBLISH on a things topic as `account` by a component without a connection (an
    /// action of the rules engine): the same rights, stamping and storage as that account's
    /// client would get. `None` when the account is neither a person nor a thing.
    pub fn act(
        self: &Arc<Self>,
        account: &str,
        p: Publish<'_>,
        session: Arc<crate::session::Session>,
        now: u64,
    ) -> Option<Outcome> {
        let is_thing = self.things.is_thing(account);
        if !is_thing && !self.im.is_person(account) {
            return None;
        }
        let mut member = ThingMember {
            world: self.clone(),
            device: Device {
                token: 0,
                account: Arc::from(account),
                client_id: session.client_id.clone(),
                session,
                v5: true,
                is_thing,
                subs: Default::default(),
            },
            by_rule: p.by_rule,
        };
        Some(member.publish(p, now))
    }
}

impl Member for ThingMember {
    fn publish(&mut self, p: Publish<'_>, now: u64) -> Outcome {
        let levels: smallvec::SmallVec<[&str; 4]> = p.topic.split('/').collect();
        let result = match levels.as_slice() {
            ["thing", thing, "cmd"] => self.command(thing, &p, now),
            ["thing", thing, what @ ("ack" | "state" | "event")] if *thing == self.me() => {
                self.own_publish(what, &p, now)
            }
            ["$things", "req"] => {
                let answers = self.request(&p.payload, p.props, now);
                Ok(self.done(&p, answers))
            }
            _ => Err(ThingError::NotAuthorized(format!(
                "{} is not open to {}",
                p.topic,
                self.me()
            ))),
        };
        match result {
            Ok(outcome) => outcome,
            // An answer nothing waits for: 0x80 (docs/PROTOCOL.md 8.3).
            Err(err @ ThingError::NotFound(_)) if p.topic.ends_with("/ack") => {
                let outcome = self.refuse(&err, p.topic, now);
                Outcome::code(if outcome.code == reason::NOT_AUTHORIZED {
                    reason::UNSPECIFIED
                } else {
                    outcome.code
                })
            }
            Err(err) => self.refuse(&err, p.topic, now),
        }
    }

    fn subscribe(
        &mut self,
        filter: &str,
        qos: u8,
        _user_properties: &[(ByteString, ByteString)],
        now: u64,
    ) -> u8 {
        if filter.contains(['+', '#']) {
            // Nothing under thing/ is read by wildcard: every right is the graph's.
            return reason::NOT_AUTHORIZED;
        }
        let granted = qos.min(1);
        let levels: Vec<&str> = filter.split('/').collect();
        let thing = match levels.as_slice() {
            ["thing", thing, what] if *thing == self.me() => {
                // Its own topics: its state and presence as they are now, as a follower's.
                if matches!(*what, "state" | "status" | "event") {
                    self.device.subs_mut().insert(filter.to_owned());
                    self.world.send_current(&self.device, thing, filter);
                }
                return granted;
            }
            ["thing", thing, "state" | "status" | "event"] => *thing,
            _ => return reason::NOT_AUTHORIZED,
        };
        match self.world.things.follow(self.me(), thing, now) {
            Ok((_, effects)) => {
                // In force before the effects: a granted follower gets the document at once,
                // a pending one when the owner accepts.
                self.device.subs_mut().insert(filter.to_owned());
                // One who may see the thing already: this SUBSCRIBE's own topic, to this
                // device (a grant would send every subscribed topic of the thing again, to
                // every device of the account).
                let (already, effects): (Vec<_>, Vec<_>) = effects.into_iter().partition(|e| {
                    matches!(e, Effect::Grant { account, thing: t } if account == self.me() && t == thing)
                });
                let plain = self.world.carry(effects, &self.actor());
                debug_assert!(plain.is_empty());
                if !already.is_empty() {
                    self.world.send_current(&self.device, thing, filter);
                }
                granted
            }
            Err(err) => {
                tracing::debug!(account = self.me(), filter, cause = %err, "things subscribe refused");
                if !self.device.v5 {
                    self.world
                        .tell_device(&self.device, &error_envelope(&err, filter, now));
                }
                reason::NOT_AUTHORIZED
            }
        }
    }

    fn unsubscribe(
        &mut self,
        filter: &str,
        user_properties: &[(ByteString, ByteString)],
        now: u64,
    ) -> u8 {
        self.device.subs_mut().remove(filter);
        let levels: Vec<&str> = filter.split('/').collect();
        let thing = match levels.as_slice() {
            ["thing", thing, "state"] if !self.device.is_thing => *thing,
            ["thing", _, _] => return reason::SUCCESS,
            _ => return reason::NO_SUBSCRIPTION_EXISTED,
        };
        let retain_secs =
            property(user_properties, "im-retain-secs").and_then(|v| v.parse::<u64>().ok());
        match self.world.things.unbind(self.me(), thing, retain_secs, now) {
            Ok(effects) => {
                self.world.carry(effects, &self.actor());
                reason::SUCCESS
            }
            Err(ThingError::NotFound(_)) | Err(ThingError::NotAuthorized(_)) => {
                reason::NO_SUBSCRIPTION_EXISTED
            }
            Err(err) => {
                if !self.device.v5 {
                    self.world
                        .tell_device(&self.device, &error_envelope(&err, filter, now));
                }
                reason::UNSPECIFIED
            }
        }
    }

    fn ping(&mut self, now: u64) {
        if self.device.is_thing
            && let Err(err) = self.world.things.ping(self.me(), now)
        {
            tracing::warn!(cause = %err, "cannot save last seen");
        }
    }

    /// A command's PUBACK hands it over; a feed entry's moves the device's feed cursor.
    fn acknowledged(&mut self, receipt: Receipt, _now: u64) {
        match receipt {
            Receipt::ThingCommand { seq, .. } if self.device.is_thing => {
                self.world.handed_over(self.me(), seq);
            }
            Receipt::ThingFeed { seq } => {
                if let Err(err) = self.world.things.feed_received(&self.device.client_id, seq) {
                    tracing::warn!(cause = %err, "cannot save a feed cursor");
                }
            }
            Receipt::ThingCommand { .. } => {}
        }
    }

    /// The device leaves: what it did not acknowledge is owed again (commands it held go to
    /// the thing's devices online or wait for the next CONNECT; its feed cursor goes back
    /// before the first feed entry it did not acknowledge, unless a newer connection took
    /// its session over and delivers them); a thing's last device going makes it offline.
    fn leave(self: Box<Self>, taken_over: bool, now: u64) {
        let device = &self.device;
        {
            let mut devices = self.world.devices();
            let list = devices.entry(device.account.clone()).or_default();
            list.retain(|d| d.token != device.token);
            if list.is_empty() {
                devices.remove(&device.account);
            }
        }
        // Commands ride on one connection only: out of the session, even one taken over.
        let token = device.token;
        let unacked = device.session.take_receipts(|r| match r {
            Receipt::ThingCommand { holder, .. } => *holder == token,
            Receipt::ThingFeed { .. } => !taken_over,
        });
        if device.is_thing {
            self.world.release(&device.account, token, now);
        }
        let first_unacked = unacked
            .iter()
            .filter_map(|r| match r {
                Receipt::ThingFeed { seq } => Some(*seq),
                Receipt::ThingCommand { .. } => None,
            })
            .min();
        if let Some(seq) = first_unacked
            && let Err(err) = self
                .world
                .things
                .feed_rewind(&device.client_id, seq.saturating_sub(1))
        {
            tracing::warn!(cause = %err, "cannot save a feed cursor");
        }
        if device.is_thing {
            match self.world.things.disconnected(&device.account, now) {
                Ok(effects) => {
                    self.world.carry(effects, &self.actor());
                }
                Err(err) => tracing::warn!(cause = %err, "thing presence not stored"),
            }
        }
    }
}
