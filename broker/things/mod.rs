//! The things world: where MQTT packets on `thing/` and `$things/` become acts of the things
//! domain (`mqtter_engine::things`: claim codes, bindings, shares, links, commands with
//! acknowledgement and timeout, state documents, events, the audit, feeds).
//!
//! As in the IM world, the graph decides who may do what and the broker delivers directly onto
//! the sessions of the devices it names: nothing under `thing/` goes through the subscription
//! trie, so no wildcard reaches a thing, and a right that ends (unshare, unlink, unbind) stops
//! delivery at once. This module knows devices and the wire shapes; the domain is the engine's.
//!
//! - [`ThingsWorld`]: online devices per account, delivery, carrying out the engine's
//!   `Effect`s, the events of the seam, the timeout sweep.
//! - `member`: the `World` and its `Member` (a connected person's or thing's device): CONNECT
//!   sync, PUBLISH / SUBSCRIBE / UNSUBSCRIBE on things topics, PINGREQ, the end.
//! - `requests`: the `$things/req` operations.

mod member;
mod requests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use mqtter_engine::GroupCommit;
use mqtter_engine::events::{
    Actor, ActorKind, Chain as EventChain, Event, EventData, EventKind, Events, PresenceStatus,
    RelationChange,
};
use mqtter_engine::im::Im;
use mqtter_engine::things::{Command, EFFECT_HOLDER, Effect, Things};
use ntex_bytes::{ByteString, Bytes};
use serde_json::Value;

use crate::message::{Message, MessageProps, QoS, Receipt, now_ms};
use crate::session::{Delivery, Session};

pub use member::ThingMember;

/// Does this topic (or filter) belong to the things world?
pub fn is_things_topic(topic: &str) -> bool {
    topic.starts_with("thing/") || topic == "thing" || topic.starts_with("$things/")
}

/// The request topic of the things world.
pub const REQUEST_TOPIC: &str = "$things/req";

/// One connected device of a person or a thing.
#[derive(Debug, Clone)]
pub struct Device {
    /// The connection's generation: unique per connection, even for one client id.
    pub token: u64,
    pub account: Arc<str>,
    pub client_id: Arc<str>,
    pub session: Arc<Session>,
    pub v5: bool,
    /// The account is a thing (else a person).
    pub is_thing: bool,
    /// The things topics this connection subscribed to (`thing/T/state`, `status`, `event`):
    /// what it receives of them while the graph lets it see `T`.
    pub subs: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Device {
    fn subscribed(&self, topic: &str) -> bool {
        self.subs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    fn subs_mut(&self) -> MutexGuard<'_, std::collections::HashSet<String>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type DeviceMap = HashMap<Arc<str>, Vec<Device>, foldhash::fast::RandomState>;

/// The things world of the running broker.
pub struct ThingsWorld {
    pub things: Things,
    im: Arc<Im>,
    events: Arc<Events>,
    /// Acknowledgements of QoS 1/2 PUBLISHes wait until they are durable.
    sync_acks: bool,
    /// The broker's flusher: a command's hand-over is made durable at once (with
    /// `sync_acks`), so that a crash seldom gives it again.
    commit: GroupCommit,
    devices: Mutex<DeviceMap>,
}

impl std::fmt::Debug for ThingsWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThingsWorld").finish_non_exhaustive()
    }
}

fn json_props() -> Arc<MessageProps> {
    static PROPS: std::sync::LazyLock<Arc<MessageProps>> = std::sync::LazyLock::new(|| {
        Arc::new(MessageProps {
            payload_is_utf8: true,
            content_type: Some(ByteString::from_static("application/json")),
            ..Default::default()
        })
    });
    PROPS.clone()
}

fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// A message of the things world as devices receive it (QoS 1, JSON).
fn message(topic: impl Into<ByteString>, envelope: &Value, retain: bool) -> Arc<Message> {
    message_with(topic, envelope, retain, json_props())
}

fn message_with(
    topic: impl Into<ByteString>,
    envelope: &Value,
    retain: bool,
    props: Arc<MessageProps>,
) -> Arc<Message> {
    Arc::new(unshared(topic, envelope, retain, props))
}

fn unshared(
    topic: impl Into<ByteString>,
    envelope: &Value,
    retain: bool,
    props: Arc<MessageProps>,
) -> Message {
    Message {
        topic: topic.into(),
        payload: json_bytes(envelope),
        qos: QoS::AtLeastOnce,
        retain,
        props: Some(props),
        expires_at_ms: None,
        publisher: None,
        stamp: None,
        receipt: None,
    }
}

/// A feed entry (`Effect::Feed`, or at a sync) as a device receives it on `inbox`: its
/// acknowledgement moves the device's feed cursor.
fn feed_message(inbox: &str, envelope: &Value) -> Arc<Message> {
    let mut msg = unshared(inbox.to_owned(), envelope, false, json_props());
    msg.receipt = envelope["feed"]
        .as_u64()
        .map(|seq| Receipt::ThingFeed { seq });
    Arc::new(msg)
}

fn delivery(msg: &Arc<Message>) -> Delivery {
    Delivery {
        msg: msg.clone(),
        qos: QoS::AtLeastOnce,
        retain: msg.retain,
        sub_ids: Vec::new(),
        store_seq: None,
    }
}

/// The chain an envelope carries, for the event seam.
fn chain_of(envelope: &Value) -> EventChain {
    match mqtter_engine::things::Chain::from_json(&envelope["chain"]) {
        Some(chain) => EventChain {
            id: Arc::from(chain.id.as_str()),
            hop: chain.hop,
        },
        None => EventChain::start(envelope["id"].as_str().unwrap_or("thing")),
    }
}

fn thing_actor(thing: &str) -> Actor {
    Actor {
        account: Some(Arc::from(thing)),
        kind: ActorKind::Thing,
    }
}

/// `thing/T/<what>` -> `T`.
fn thing_of<'a>(topic: &'a str, what: &str) -> Option<&'a str> {
    topic
        .strip_prefix("thing/")?
        .strip_suffix(what)?
        .strip_suffix('/')
}

impl ThingsWorld {
    pub fn new(
        things: Things,
        im: Arc<Im>,
        events: Arc<Events>,
        sync_acks: bool,
        commit: GroupCommit,
    ) -> Self {
        Self {
            things,
            im,
            events,
            sync_acks,
            commit,
            devices: Mutex::new(DeviceMap::default()),
        }
    }

    fn devices(&self) -> MutexGuard<'_, DeviceMap> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn devices_of(&self, account: &str) -> Vec<Device> {
        self.devices().get(account).cloned().unwrap_or_default()
    }

    /// The inbox topic of an account: `thing/T/inbox` for a thing, else `person/P/inbox`.
    pub fn inbox_of(&self, account: &str) -> String {
        if self.things.is_thing(account) {
            format!("thing/{account}/inbox")
        } else {
            format!("person/{account}/inbox")
        }
    }

    /// Queue `msg` for every online device of `account`, whatever its queue bound (what the
    /// things world sends is owed: commands, answers, state).
    fn deliver(&self, account: &str, msg: &Arc<Message>) {
        for device in self.devices_of(account) {
            device.session.force(delivery(msg));
        }
    }

    /// Send an envelope to one device's inbox.
    fn tell_device(&self, device: &Device, envelope: &Value) {
        let msg = message(self.inbox_of(&device.account), envelope, false);
        device.session.force(delivery(&msg));
    }

    /// Who sees what `thing` publishes on `thing/T/state` and `thing/T/status`: its owner, the
    /// persons it is shared with and the things it is linked with.
    fn viewers(&self, thing: &str) -> Vec<String> {
        self.im.with_graph(|g| {
            // T itself first (docs/PROTOCOL.md 10.1: T may see its own state, events, presence).
            let mut out: Vec<String> = vec![thing.to_owned()];
            out.extend(g.owner_of(thing));
            out.extend(g.shares_of(thing).into_iter().map(|(p, _)| p));
            out.extend(g.links_of(thing));
            out
        })
    }

    /// The current state document of `thing` as a retained `state` envelope.
    fn state_message(&self, thing: &str) -> Option<Arc<Message>> {
        let doc = self.things.current_state(thing).ok()?;
        if doc.version == 0 {
            return None;
        }
        let envelope = serde_json::json!({
            "type": "state", "ts": doc.ts, "thing": thing, "version": doc.version,
            "state": doc.state, "changed": doc.state,
        });
        Some(message(format!("thing/{thing}/state"), &envelope, true))
    }

    fn status_message(&self, thing: &str) -> Arc<Message> {
        let online = self.things.is_online(thing);
        let last_seen = self.things.last_seen(thing).ok().flatten();
        let envelope = serde_json::json!({
            "type": "presence", "id": thing,
            "presence": if online { "online" } else { "offline" }, "last_seen": last_seen,
        });
        message(format!("thing/{thing}/status"), &envelope, true)
    }

    /// `account` may now see `thing`: its devices subscribed to its state and presence get
    /// them at once.
    fn grant(&self, account: &str, thing: &str) {
        let devices = self.devices_of(account);
        if devices.is_empty() {
            return;
        }
        let (state_topic, status_topic) = (
            format!("thing/{thing}/state"),
            format!("thing/{thing}/status"),
        );
        let state = self.state_message(thing);
        let status = self.status_message(thing);
        for device in devices {
            if let Some(state) = &state
                && device.subscribed(&state_topic)
            {
                device.session.force(delivery(state));
            }
            if device.subscribed(&status_topic) {
                device.session.force(delivery(&status));
            }
        }
    }

    /// The current value of one of `thing`'s topics (`topic`: its state or its presence; its
    /// events have none) to one device that has just subscribed to it.
    fn send_current(&self, device: &Device, thing: &str, topic: &str) {
        let current = match topic.rsplit('/').next() {
            Some("state") => self.state_message(thing),
            Some("status") => Some(self.status_message(thing)),
            _ => None,
        };
        if let Some(msg) = current {
            device.session.force(delivery(&msg));
        }
    }

    /// `account` may no longer see `thing`: its subscriptions there end at once.
    fn revoke(&self, account: &str, thing: &str) {
        let prefix = format!("thing/{thing}/");
        for device in self.devices_of(account) {
            device.subs_mut().retain(|t| !t.starts_with(&prefix));
        }
    }

    /// Queue `msg` for the devices of `account` that subscribed to its topic.
    fn deliver_subscribed(&self, account: &str, msg: &Arc<Message>) {
        for device in self.devices_of(account) {
            if device.subscribed(&msg.topic) {
                device.session.force(delivery(msg));
            }
        }
    }

    /// Carry out what a domain operation asks (`by` caused it). Returns the messages on plain
    /// topics (answers to v5 Response Topics) for the caller to publish on the plain path.
    pub fn carry(&self, effects: Vec<Effect>, by: &Actor) -> Vec<Arc<Message>> {
        let mut plain = Vec::new();
        for effect in effects {
            match effect {
                Effect::Command {
                    thing,
                    seq,
                    envelope,
                } => {
                    self.give(&thing, seq, &envelope);
                    self.hand_back(&thing, seq, EFFECT_HOLDER);
                }
                Effect::Feed { to, envelope, .. } => {
                    self.emit_answer(&envelope);
                    self.deliver(&to, &feed_message(&self.inbox_of(&to), &envelope));
                }
                Effect::Notify { to, envelope } => {
                    self.emit_relation(&to, &envelope, by);
                    let msg = message(self.inbox_of(&to), &envelope, false);
                    self.deliver(&to, &msg);
                }
                Effect::Respond {
                    topic,
                    correlation,
                    envelope,
                } => {
                    if crate::topic::validate_name(&topic).is_ok() {
                        let props = Arc::new(MessageProps {
                            correlation_data: correlation.map(Bytes::from),
                            ..(*json_props()).clone()
                        });
                        plain.push(message_with(topic, &envelope, false, props));
                    }
                }
                Effect::Publish {
                    topic,
                    envelope,
                    retain,
                } => self.publish_effect(&topic, &envelope, retain, by),
                Effect::Grant { account, thing } => self.grant(&account, &thing),
                Effect::Revoke { account, thing } => self.revoke(&account, &thing),
            }
        }
        plain
    }

    /// A command as the device of connection `holder` receives it: v5 Response Topic
    /// `thing/T/ack` and the command id as Correlation Data; its PUBACK hands it over.
    fn command_message(&self, thing: &str, seq: u64, envelope: &Value, holder: u64) -> Delivery {
        let id = envelope["id"].as_str().unwrap_or_default();
        let props = Arc::new(MessageProps {
            response_topic: Some(ByteString::from(format!("thing/{thing}/ack"))),
            correlation_data: Some(Bytes::copy_from_slice(id.as_bytes())),
            ..(*json_props()).clone()
        });
        let mut msg = unshared(format!("thing/{thing}/cmd"), envelope, false, props);
        msg.receipt = Some(Receipt::ThingCommand { seq, holder });
        delivery(&Arc::new(msg))
    }

    /// Give command `seq` of `thing` to every device of the thing online now, each
    /// connection holding it until its PUBACK (see `mqtter_engine::things` `handover.rs`).
    fn give(&self, thing: &str, seq: u64, envelope: &Value) {
        for device in self.devices_of(thing) {
            self.things.sending(thing, seq, device.token);
            device
                .session
                .force(self.command_message(thing, seq, envelope, device.token));
        }
    }

    /// `holder` lets command `seq` of `thing` go unacknowledged: if nobody holds it now, the
    /// devices online get it again (none: it waits for the next CONNECT).
    fn hand_back(&self, thing: &str, seq: u64, holder: u64) {
        match self.things.handed_back(thing, seq, holder, now_ms()) {
            Ok(Some(cmd)) => self.give(thing, seq, &cmd.envelope()),
            Ok(None) => {}
            Err(err) => tracing::warn!(thing, cause = %err, "cannot read a command handed back"),
        }
    }

    /// The connection `holder` of `thing` ended: the commands it held unacknowledged go to
    /// the devices online (none: they wait for the next CONNECT).
    fn release(&self, thing: &str, holder: u64, now: u64) {
        match self.things.release(thing, holder, now) {
            Ok(again) => {
                for cmd in again {
                    self.give(thing, cmd.seq, &cmd.envelope());
                }
            }
            Err(err) => tracing::warn!(thing, cause = %err, "cannot read commands handed back"),
        }
    }

    /// A device of `thing` acknowledged command `seq`: handed over, made durable at once.
    fn handed_over(&self, thing: &str, seq: u64) {
        match self.things.handed_over(thing, seq) {
            Ok(true) if self.sync_acks => self.commit.soon(),
            Ok(_) => {}
            Err(err) => tracing::error!(thing, cause = %err, "a command's hand-over not stored"),
        }
    }

    /// The connection `holder` of `thing` is given these queued commands at its CONNECT.
    fn queued_for(&self, thing: &str, holder: u64, cmds: &[Command]) -> Vec<Delivery> {
        cmds.iter()
            .map(|cmd| self.command_message(thing, cmd.seq, &cmd.envelope(), holder))
            .collect()
    }

    /// State, presence and events of a thing, to those who may see them.
    fn publish_effect(&self, topic: &str, envelope: &Value, retain: bool, by: &Actor) {
        let msg = message(topic, envelope, retain);
        if let Some(thing) = thing_of(topic, "state") {
            self.events.emit_with(EventKind::ThingState, || Event {
                actor: by.clone(),
                at: envelope["ts"].as_u64().unwrap_or_default(),
                chain: chain_of(envelope),
                data: EventData::ThingState {
                    thing: thing.to_owned(),
                    state: envelope["state"].clone(),
                },
            });
            for viewer in self.viewers(thing) {
                self.deliver_subscribed(&viewer, &msg);
            }
        } else if let Some(thing) = thing_of(topic, "status") {
            self.events.emit_with(EventKind::Presence, || {
                let online = envelope["presence"] == "online";
                Event {
                    actor: thing_actor(thing),
                    at: envelope["last_seen"].as_u64().unwrap_or_default(),
                    chain: EventChain::start(format!(
                        "presence:{thing}#{}",
                        envelope["last_seen"].as_u64().unwrap_or_default()
                    )),
                    data: EventData::Presence {
                        account: thing.to_owned(),
                        status: if online {
                            PresenceStatus::Online
                        } else {
                            PresenceStatus::Offline
                        },
                        text: None,
                    },
                }
            });
            for viewer in self.viewers(thing) {
                self.deliver_subscribed(&viewer, &msg);
            }
        } else if let Some(thing) = thing_of(topic, "event") {
            self.events.emit_with(EventKind::ThingEvent, || Event {
                actor: by.clone(),
                at: envelope["ts"].as_u64().unwrap_or_default(),
                chain: chain_of(envelope),
                data: EventData::ThingEvent {
                    thing: thing.to_owned(),
                    id: envelope["id"].as_str().unwrap_or_default().to_owned(),
                    body: envelope["body"].clone(),
                },
            });
            // Bound persons have it in their feed already: live here to the linked things that
            // subscribed, and to T's own devices that did.
            self.deliver_subscribed(thing, &msg);
            for peer in self.im.with_graph(|g| g.links_of(thing)) {
                self.deliver_subscribed(&peer, &msg);
            }
        }
    }

    /// `cmd.ack` and `cmd.timeout` go out through the event seam as they reach the commander.
    fn emit_answer(&self, envelope: &Value) {
        let thing = envelope["thing"].as_str().unwrap_or_default();
        let id = envelope["id"].as_str().unwrap_or_default();
        match envelope["type"].as_str() {
            Some("cmd.ack") => self.events.emit_with(EventKind::ThingAck, || Event {
                actor: thing_actor(thing),
                at: envelope["ts"].as_u64().unwrap_or_default(),
                chain: chain_of(envelope),
                data: EventData::ThingAck {
                    thing: thing.to_owned(),
                    id: id.to_owned(),
                    result: serde_json::json!({ "ok": envelope["ok"], "result": envelope["result"] }),
                },
            }),
            Some("cmd.timeout") => self.events.emit_with(EventKind::ThingTimeout, || Event {
                actor: thing_actor(thing),
                at: envelope["ts"].as_u64().unwrap_or_default(),
                chain: chain_of(envelope),
                data: EventData::ThingTimeout {
                    thing: thing.to_owned(),
                    id: id.to_owned(),
                },
            }),
            _ => {}
        }
    }

    /// Binding and link changes go out through the event seam, once each: read from the
    /// notice the person (or, for links, the first thing of the pair) gets.
    fn emit_relation(&self, to: &str, envelope: &Value, by: &Actor) {
        let thing = envelope["thing"].as_str().unwrap_or_default();
        let named = |field: &str| envelope[field].as_str() == Some(to);
        let change = match envelope["type"].as_str() {
            Some("thing.bound") if named("owner") => RelationChange::Bound {
                thing: thing.to_owned(),
                person: to.to_owned(),
            },
            Some("thing.shared") => RelationChange::Bound {
                thing: thing.to_owned(),
                person: to.to_owned(),
            },
            Some("thing.unbound") if named("owner") || named("person") => RelationChange::Unbound {
                thing: thing.to_owned(),
                person: to.to_owned(),
            },
            Some("thing.unshared") => RelationChange::Unbound {
                thing: thing.to_owned(),
                person: to.to_owned(),
            },
            Some(kind @ ("thing.linked" | "thing.unlinked")) => {
                let Some(peer) = envelope["peer"].as_str().filter(|p| to < *p) else {
                    return;
                };
                let (a, b) = (to.to_owned(), peer.to_owned());
                if kind == "thing.linked" {
                    RelationChange::Linked { a, b }
                } else {
                    RelationChange::Unlinked { a, b }
                }
            }
            _ => return,
        };
        self.events.emit_with(EventKind::Relation, || Event {
            actor: by.clone(),
            at: envelope["ts"].as_u64().unwrap_or_default(),
            chain: EventChain::start(format!(
                "{}:{to}#{}",
                envelope["type"].as_str().unwrap_or_default(),
                envelope["ts"].as_u64().unwrap_or_default()
            )),
            data: EventData::Relation(change),
        });
    }

    /// A command was accepted: out through the event seam.
    fn emit_command(&self, by: &Actor, thing: &str, id: &str, body: &str, now: u64) {
        self.events.emit_with(EventKind::ThingCommand, || {
            let chain = match self.things.chain_of_command(thing, id) {
                Some(c) => EventChain {
                    id: Arc::from(c.id.as_str()),
                    hop: c.hop,
                },
                None => EventChain::start(id),
            };
            Event {
                actor: by.clone(),
                at: now,
                chain,
                data: EventData::ThingCommand {
                    thing: thing.to_owned(),
                    id: id.to_owned(),
                    command: serde_json::from_str(body).unwrap_or(Value::Null),
                },
            }
        });
    }

    /// Close the commands whose ttl has passed (`cmd.timeout` to their commanders). Called on
    /// a timer; returns the plain answers to publish.
    pub fn sweep(&self, now: u64) -> Vec<Arc<Message>> {
        match self.things.sweep(now) {
            Ok(effects) => self.carry(effects, &Actor::anonymous()),
            Err(err) => {
                tracing::warn!(cause = %err, "command timeouts not stored; tried again");
                Vec::new()
            }
        }
    }

    /// Purge claim codes and command ids that are no longer needed. Called on a timer.
    pub fn purge(&self, now: u64) {
        if let Err(err) = self.things.purge(now) {
            tracing::error!(cause = %err, "things purge failed");
        }
    }
}
