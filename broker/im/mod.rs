//! The IM gate: where MQTT packets on `person/`, `group/` and `$im/` become IM acts.
//!
//! Every PUBLISH and SUBSCRIBE there is authorised against the relationship graph (the ACL *is*
//! the graph), stamped, stored and fanned out to the online devices the graph names; nothing in
//! the IM world goes through the subscription trie, so no wildcard can reach another account's
//! messages. The domain itself (friends, groups, conversations) is `mqtter_engine::im`; this
//! module knows devices, presence and the wire shapes.
//!
//! - [`Gate`]: online devices per account, presence, delivery, effects.
//! - `connected`: what the IM world keeps per connection of a device ([`Connected`]).
//! - `publish`: PUBLISH / SUBSCRIBE / UNSUBSCRIBE on IM topics.
//! - `requests`: the `$im/req` operations.
//! - `direct`: direct channels between friends' devices (`direct.open`, `direct.upload`).

mod connected;
mod direct;
mod publish;
mod requests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use mqtter_engine::events::{
    Actor, Chain, Event, EventData, EventKind, Events, PresenceStatus, RelationChange,
};
use mqtter_engine::im::{Effect, Im, notice};
use ntex_bytes::{ByteString, Bytes};
use serde_json::{Value, json};

use crate::config::ImSection;
use crate::message::{Message, MessageProps, QoS, Stamp, now_ms};
use crate::session::{Delivery, QueueLimits, Session};

pub use connected::Connected;
pub use publish::{ImPublish, LastPeer};

/// Does this topic (or filter) belong to the IM world?
pub fn is_im_topic(topic: &str) -> bool {
    topic.starts_with("person/")
        || topic.starts_with("group/")
        || topic.starts_with("$im/")
        || topic == "person"
        || topic == "group"
        || topic == "$im"
}

pub fn inbox_topic(account: &str) -> String {
    let mut topic = String::with_capacity(account.len() + 13);
    topic.push_str("person/");
    topic.push_str(account);
    topic.push_str("/inbox");
    topic
}

/// One connected device of a person: a client connection with its session.
#[derive(Debug, Clone)]
pub struct Device {
    /// The connection's generation: unique per connection, even for one client id.
    pub token: u64,
    pub account: Arc<str>,
    pub client_id: Arc<str>,
    pub session: Arc<Session>,
    pub v5: bool,
    /// Sent the sync at CONNECT. A device that connects with the v5 user property
    /// `im-sync: false` (a script that only makes requests) gets no sync and no presence of its
    /// own coming online; live messages still reach it.
    pub sync: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Online,
    Away,
    Offline,
}

impl Status {
    fn as_str(self) -> &'static str {
        self.public().as_str()
    }

    fn public(self) -> PresenceStatus {
        match self {
            Status::Online => PresenceStatus::Online,
            Status::Away => PresenceStatus::Away,
            Status::Offline => PresenceStatus::Offline,
        }
    }
}

/// The chain a relation change starts: named after what changed.
fn relation_chain(change: &RelationChange) -> String {
    match change {
        RelationChange::FriendAdded { a, b } => format!("friend.added:{a}|{b}"),
        RelationChange::FriendRemoved { a, b } => format!("friend.removed:{a}|{b}"),
        RelationChange::MemberJoined { group, member } => format!("group.joined:{group}|{member}"),
        RelationChange::MemberLeft { group, member } => format!("group.left:{group}|{member}"),
        RelationChange::Bound { thing, person } => format!("thing.bound:{thing}|{person}"),
        RelationChange::Unbound { thing, person } => format!("thing.unbound:{thing}|{person}"),
        RelationChange::Linked { a, b } => format!("thing.linked:{a}|{b}"),
        RelationChange::Unlinked { a, b } => format!("thing.unlinked:{a}|{b}"),
    }
}

#[derive(Debug, Clone)]
struct Presence {
    status: Status,
    /// Last packet of any kind (PINGREQ included).
    last_seen: u64,
    /// Last packet other than PINGREQ.
    last_active: u64,
    /// Set by the person: `away` stays until they say `online` or publish.
    away_by_choice: bool,
    text: Option<String>,
}

/// Online devices by account. Looked up once per recipient of every message: hashed with
/// foldhash, which costs a fraction of SipHash on these short ids (the accounts are the
/// registry's, not a client's choice).
type DeviceMap = HashMap<Arc<str>, Vec<Device>, foldhash::fast::RandomState>;

/// Presence by account, looked up for every packet of a person (foldhash, like `DeviceMap`).
type PresenceMap = HashMap<Arc<str>, Presence, foldhash::fast::RandomState>;

/// The sessions one account's message goes to (most persons have one or two devices online).
type SmallSessions = smallvec::SmallVec<[Arc<Session>; 2]>;

/// The IM world of the running broker.
pub struct Gate {
    pub im: Arc<Im>,
    settings: ImSection,
    /// Where the gate emits what happens in the IM world (messages, presence, relations).
    events: Arc<Events>,
    /// The queue bound of a device's session (the broker's `[limits]`).
    limits: QueueLimits,
    /// Acknowledgements of QoS 1/2 messages wait until they are durable (`durability = "sync"`).
    sync_acks: bool,
    devices: Mutex<DeviceMap>,
    presence: Mutex<PresenceMap>,
    /// Per group, the sessions its messages go to; emptied when a device comes or goes, and an
    /// entry is stale once the graph's version moved on.
    group_sessions: Mutex<HashMap<String, Arc<MemberSessions>, foldhash::fast::RandomState>>,
}

/// The online sessions of a group's members, with the graph version they were derived from.
#[derive(Debug)]
struct MemberSessions {
    graph_version: u64,
    sessions: Vec<(Arc<str>, Arc<Session>)>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

fn json_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// The properties of every IM message (JSON, UTF-8): one shared value, not one per message.
fn json_props() -> Option<Arc<MessageProps>> {
    static PROPS: std::sync::LazyLock<Arc<MessageProps>> = std::sync::LazyLock::new(|| {
        Arc::new(MessageProps {
            payload_is_utf8: true,
            content_type: Some(ByteString::from_static("application/json")),
            ..Default::default()
        })
    });
    Some(PROPS.clone())
}

impl Gate {
    pub fn new(
        im: Arc<Im>,
        settings: ImSection,
        events: Arc<Events>,
        limits: QueueLimits,
        sync_acks: bool,
    ) -> Self {
        Self {
            im,
            settings,
            events,
            limits,
            sync_acks,
            devices: Mutex::new(DeviceMap::default()),
            presence: Mutex::new(PresenceMap::default()),
            group_sessions: Mutex::new(HashMap::default()),
        }
    }

    fn devices(&self) -> MutexGuard<'_, DeviceMap> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device table, to change it: what was derived from it is forgotten.
    fn devices_mut(&self) -> MutexGuard<'_, DeviceMap> {
        let devices = self.devices();
        self.group_sessions_map().clear();
        devices
    }

    fn group_sessions_map(
        &self,
    ) -> MutexGuard<'_, HashMap<String, Arc<MemberSessions>, foldhash::fast::RandomState>> {
        self.group_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn presences(&self) -> MutexGuard<'_, PresenceMap> {
        self.presence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The online devices of an account.
    fn devices_of(&self, account: &str) -> Vec<Device> {
        self.devices().get(account).cloned().unwrap_or_default()
    }

    /// A person's presence as their friends see it (offline when not connected).
    pub fn presence_of(&self, account: &str) -> PresenceStatus {
        self.presences()
            .get(account)
            .map_or(PresenceStatus::Offline, |p| p.status.public())
    }

    pub fn is_online(&self, account: &str) -> bool {
        self.devices().get(account).is_some_and(|d| !d.is_empty())
    }

    /// A message of the IM world, as devices receive it.
    fn message(
        topic: impl Into<ByteString>,
        payload: Bytes,
        retain: bool,
        stamp: Option<Stamp>,
    ) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload,
            qos: QoS::AtLeastOnce,
            retain,
            props: json_props(),
            expires_at_ms: None,
            publisher: None,
            stamp,
            receipt: None,
        })
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

    /// Queue `msg` for every online device of `account`, but `except` (the sending device).
    fn deliver(&self, account: &str, msg: &Arc<Message>, except: Option<&str>) {
        for session in self.sessions_of(account, except) {
            session.offer(Self::delivery(msg), &self.limits);
        }
    }

    /// The sessions of the online devices of `account` but `except`; usually one, so no
    /// allocation.
    fn sessions_of(&self, account: &str, except: Option<&str>) -> SmallSessions {
        let devices = self.devices();
        let mut out = SmallSessions::new();
        for device in devices.get(account).into_iter().flatten() {
            if except.is_none_or(|e| *e != *device.client_id) {
                out.push(device.session.clone());
            }
        }
        out
    }

    /// Queue `msg` for every online device of every member of `group` but `sender`. The list of
    /// sessions is derived once (graph, then device table) and kept until either changes, so a
    /// busy group's messages cost one offer per device.
    fn deliver_to_members(&self, group: &str, sender: &str, msg: &Arc<Message>) {
        for (account, session) in &self.member_sessions(group).sessions {
            if **account != *sender {
                session.offer(Self::delivery(msg), &self.limits);
            }
        }
    }

    fn member_sessions(&self, group: &str) -> Arc<MemberSessions> {
        let version = self.im.graph_version();
        if let Some(cached) = self.group_sessions_map().get(group)
            && cached.graph_version == version
        {
            return cached.clone();
        }
        self.im.with_graph(|graph| {
            // Under the graph's read lock the version cannot move.
            let graph_version = self.im.graph_version();
            let devices = self.devices();
            let mut sessions = Vec::new();
            graph.for_each_member(group, |member| {
                if let Some(list) = devices.get(member) {
                    sessions.extend(
                        list.iter()
                            .map(|device| (device.account.clone(), device.session.clone())),
                    );
                }
            });
            // Stored while the device table is still locked: a device that comes or goes
            // afterwards empties the cache after this insert, never before it.
            let derived = Arc::new(MemberSessions {
                graph_version,
                sessions,
            });
            self.group_sessions_map()
                .insert(group.to_owned(), derived.clone());
            derived
        })
    }

    /// Queue `msg` for one device whatever its queue bound (sync replay, answers).
    fn deliver_to_device(device: &Device, msg: &Arc<Message>) {
        device.session.force(Self::delivery(msg));
    }

    /// Send a notice envelope to every device of `to`.
    pub fn notify(&self, to: &str, envelope: &Value) {
        let msg = Self::message(inbox_topic(to), json_bytes(envelope), false, None);
        self.deliver(to, &msg, None);
    }

    /// Send an envelope to one device's inbox.
    pub fn tell_device(device: &Device, envelope: &Value) {
        let msg = Self::message(
            inbox_topic(&device.account),
            json_bytes(envelope),
            false,
            None,
        );
        Self::deliver_to_device(device, &msg);
    }

    /// Carry out what a domain operation of `by` asks.
    pub fn apply(&self, effects: Vec<Effect>, by: &str) {
        for effect in effects {
            match effect {
                Effect::Notify { to, envelope } => self.notify(&to, &envelope),
                Effect::ShowPresence { to, of } => self.show_presence(&to, &of),
                Effect::Related(change) => {
                    // New friends see each other's presence at once (retained). Delivery
                    // follows the graph at send time: a removed relation gets nothing more.
                    if let RelationChange::FriendAdded { a, b } = &change {
                        self.show_presence(a, b);
                        self.show_presence(b, a);
                    }
                    self.events.emit_with(EventKind::Relation, || Event {
                        actor: Actor::person(by),
                        at: now_ms(),
                        chain: Chain::start(relation_chain(&change)),
                        data: EventData::Relation(change),
                    });
                }
            }
        }
    }

    /// Queue `of`'s presence (retained) for every online device of `to`.
    fn show_presence(&self, to: &str, of: &str) {
        let msg = self.status_message(of);
        for device in self.devices_of(to) {
            Self::deliver_to_device(&device, &msg);
        }
    }

    // ----- presence --------------------------------------------------------------------------

    fn presence_json(&self, account: &str) -> Value {
        let presences = self.presences();
        match presences.get(account) {
            Some(p) => {
                json!({ "presence": p.status.as_str(), "last_seen": p.last_seen, "text": p.text })
            }
            None => {
                json!({ "presence": "offline", "last_seen": self.im.last_seen(account), "text": Value::Null })
            }
        }
    }

    fn status_message(&self, account: &str) -> Arc<Message> {
        let mut envelope = self.presence_json(account);
        envelope["type"] = json!("presence");
        envelope["id"] = json!(account);
        Self::message(
            format!("person/{account}/status"),
            json_bytes(&envelope),
            true,
            None,
        )
    }

    /// Publish `account`'s presence to its friends and its own devices (retained).
    fn publish_presence(&self, account: &str) {
        self.events.emit_with(EventKind::Presence, || {
            let (status, text) = match self.presences().get(account) {
                Some(p) => (p.status.public(), p.text.clone()),
                None => (PresenceStatus::Offline, None),
            };
            let at = now_ms();
            Event {
                actor: Actor::person(account),
                at,
                chain: Chain::start(format!("presence:{account}#{at}")),
                data: EventData::Presence {
                    account: account.to_owned(),
                    status,
                    text,
                },
            }
        });
        let msg = self.status_message(account);
        let friends = self.im.with_graph(|g| g.friends(account));
        for friend in friends
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(account))
        {
            self.deliver(friend, &msg, None);
        }
    }

    fn set_status(&self, account: &str, status: Status, now: u64) {
        let changed = {
            let mut presences = self.presences();
            let p = presences.entry(Arc::from(account)).or_insert(Presence {
                status: Status::Offline,
                last_seen: now,
                last_active: now,
                away_by_choice: false,
                text: None,
            });
            p.last_seen = now;
            let changed = p.status != status;
            p.status = status;
            changed
        };
        if changed {
            self.publish_presence(account);
        }
    }

    /// A packet other than PINGREQ from a person: active, so online again if away by inactivity.
    pub fn activity(&self, account: &str, now: u64) {
        let back = {
            let mut presences = self.presences();
            match presences.get_mut(account) {
                Some(p) => {
                    p.last_seen = now;
                    p.last_active = now;
                    p.status == Status::Away && !p.away_by_choice
                }
                None => false,
            }
        };
        if back {
            self.set_status(account, Status::Online, now);
        }
    }

    /// PINGREQ: last seen, nothing else.
    pub fn ping(&self, account: &str, now: u64) {
        if let Some(p) = self.presences().get_mut(account) {
            p.last_seen = now;
        }
    }

    /// Persons online with only pings for `away_after` become away. Called on a timer.
    pub fn tick(&self, now: u64) {
        let away_after = self.settings.away_after.saturating_mul(1000);
        let going_away: Vec<Arc<str>> = self
            .presences()
            .iter()
            .filter(|(_, p)| {
                p.status == Status::Online && now.saturating_sub(p.last_active) >= away_after
            })
            .map(|(a, _)| a.clone())
            .collect();
        for account in going_away {
            self.set_status(&account, Status::Away, now);
        }
    }

    /// When the next online person becomes away if nothing but pings comes from them (ms since
    /// the epoch): what the timer sleeps until on a virtual clock.
    pub fn next_away_at(&self) -> Option<u64> {
        let away_after = self.settings.away_after.saturating_mul(1000);
        self.presences()
            .values()
            .filter(|p| p.status == Status::Online)
            .map(|p| p.last_active.saturating_add(away_after))
            .min()
    }

    /// Purge the recycle bin of what has expired. Called on a timer.
    pub fn purge(&self, now: u64) {
        match self.im.purge(now) {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "recycle bin entries expired"),
            Err(err) => tracing::error!(cause = %err, "recycle bin purge failed"),
        }
    }

    // ----- connect / disconnect --------------------------------------------------------------

    /// A person's device connected: register it, mark them online, and send it the `sync`
    /// envelope, every message it missed (oldest first per conversation), `sync.done`, and its
    /// friends' presence.
    pub fn connect(&self, device: Device, now: u64) {
        let account = device.account.clone();
        if !device.sync {
            self.mark_online(&account, now);
            self.devices_mut().entry(account).or_default().push(device);
            return;
        }
        // Registered first, so that nothing sent from now on is missed; what arrives live while
        // the sync is read queues behind it (the sync goes to the front), and a message in both
        // is sent once (the connection skips what its cursor has passed).
        self.devices_mut()
            .entry(account.clone())
            .or_default()
            .push(device.clone());
        let mut sync = Vec::new();
        let envelope = |value: &Value| {
            Self::delivery(&Self::message(
                inbox_topic(&account),
                json_bytes(value),
                false,
                None,
            ))
        };
        match self
            .im
            .roster(&account, now, |friend| self.presence_json(friend))
        {
            Ok(roster) => sync.push(envelope(&roster)),
            Err(err) => tracing::error!(cause = %err, %account, "cannot build the roster"),
        }
        let mut more = Vec::new();
        match self.im.missed(&device.client_id, &account) {
            Ok(missed) => {
                for conv in missed {
                    let conv_id: Arc<str> = Arc::from(conv.conv.as_str());
                    for (seq, bytes) in conv.messages {
                        let stamp = Stamp {
                            conv: conv_id.clone(),
                            seq,
                        };
                        let msg = Self::message(
                            inbox_topic(&account),
                            Bytes::from(bytes),
                            false,
                            Some(stamp),
                        );
                        sync.push(Self::delivery(&msg));
                    }
                    if let Some(after) = conv.more_after {
                        more.push(json!({ "conv": conv.conv, "after": after }));
                    }
                }
            }
            Err(err) => tracing::error!(cause = %err, %account, "cannot read missed messages"),
        }
        sync.push(envelope(&notice("sync.done", now, json!({ "more": more }))));
        device.session.force_front(sync);
        self.mark_online(&account, now);
        for friend in self.im.with_graph(|g| g.friends(&account)) {
            Self::deliver_to_device(&device, &self.status_message(&friend));
        }
    }

    /// A device of `account` connected: active now, and online.
    fn mark_online(&self, account: &Arc<str>, now: u64) {
        {
            let mut presences = self.presences();
            let p = presences.entry(account.clone()).or_insert(Presence {
                status: Status::Offline,
                last_seen: now,
                last_active: now,
                away_by_choice: false,
                text: None,
            });
            p.last_active = now;
        }
        self.set_status(account, Status::Online, now);
    }

    /// A device went away: save its cursors; the last device leaving makes the person offline.
    pub fn disconnect(&self, device: &Device, cursors: &[(String, u64)], now: u64) {
        if let Err(err) = self
            .im
            .save_cursors(&device.client_id, &device.account, cursors)
        {
            tracing::error!(cause = %err, account = %device.account, "cannot save cursors");
        }
        let last = {
            let mut devices = self.devices_mut();
            let list = devices.entry(device.account.clone()).or_default();
            list.retain(|d| d.token != device.token);
            let empty = list.is_empty();
            if empty {
                devices.remove(&device.account);
            }
            empty
        };
        if last {
            if let Err(err) = self.im.set_last_seen(&device.account, now) {
                tracing::warn!(cause = %err, "cannot save last seen");
            }
            self.set_status(&device.account, Status::Offline, now);
        }
    }
}
