//! Events: everything a rule could react to, in one type, and the seam through which every
//! source of the daemon emits them ([`Events`], [`EventSink`]); [`Actions`], the way back in.
//!
//! Sources: the plain publish path, the IM gate (direct and group messages), presence and
//! relation changes (later: things and timers). Each event names who caused it ([`Actor`]: an
//! account and its kind, or anonymous), when (ms since the epoch), and the chain it belongs to
//! ([`Chain`]: an id and the hop count, which an action continues with `hop + 1`).
//!
//! A consumer declares which kinds it wants ([`Interest`]); a source asks [`Events::wants`]
//! before it builds an event, so a kind nobody wants costs one atomic load and nothing else.
//!
//! No MQTT, no network: payloads are [`Bytes`], QoS a number, topics strings.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use bytes::Bytes;
use serde_json::Value;

/// What kind of account caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActorKind {
    Person,
    Thing,
    /// A client that did not authenticate (no account).
    Anonymous,
    /// The rules engine, acting as the account named in the actor.
    Rule,
}

/// Who caused an event: an account (none for an anonymous client) and its kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Actor {
    pub account: Option<Arc<str>>,
    pub kind: ActorKind,
}

impl Actor {
    pub fn person(account: impl Into<Arc<str>>) -> Self {
        Self {
            account: Some(account.into()),
            kind: ActorKind::Person,
        }
    }

    pub fn anonymous() -> Self {
        Self {
            account: None,
            kind: ActorKind::Anonymous,
        }
    }

    /// The account's name, `""` for an anonymous client.
    pub fn name(&self) -> &str {
        self.account.as_deref().unwrap_or("")
    }
}

/// The chain an event belongs to: what a person or device did first (hop 0) and what rules did
/// because of it (each action one hop further). A rules engine stops a chain that runs too long.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    pub id: Arc<str>,
    pub hop: u32,
}

impl Chain {
    /// A new chain, started by the event it names.
    pub fn start(id: impl Into<Arc<str>>) -> Self {
        Self {
            id: id.into(),
            hop: 0,
        }
    }

    /// The chain of what an action does because of this event.
    pub fn next(&self) -> Self {
        Self {
            id: self.id.clone(),
            hop: self.hop.saturating_add(1),
        }
    }
}

/// A person's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceStatus {
    Online,
    Away,
    Offline,
}

impl PresenceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceStatus::Online => "online",
            PresenceStatus::Away => "away",
            PresenceStatus::Offline => "offline",
        }
    }
}

/// A change of the relationship graph. Also what the IM domain returns for the broker to act
/// on (see `im::Effect::Related`); the things world emits bound/unbound and linked/unlinked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RelationChange {
    FriendAdded {
        a: String,
        b: String,
    },
    /// Unfriended or blocked.
    FriendRemoved {
        a: String,
        b: String,
    },
    MemberJoined {
        group: String,
        member: String,
    },
    /// Left, kicked, or the group dissolved.
    MemberLeft {
        group: String,
        member: String,
    },
    /// A person became a thing's owner or got a share of it (claimed, shared, accepted as a
    /// follower, restored, or from a definitions file).
    Bound {
        thing: String,
        person: String,
    },
    /// A person's ownership or share of a thing ended (unbound into the recycle bin, unshared).
    Unbound {
        thing: String,
        person: String,
    },
    Linked {
        a: String,
        b: String,
    },
    Unlinked {
        a: String,
        b: String,
    },
}

/// A plain MQTT PUBLISH, as routed.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishEvent {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub user_properties: Vec<(String, String)>,
}

/// An IM message, as stamped and stored (the fields of its envelope).
#[derive(Debug, Clone, PartialEq)]
pub struct ImMessageEvent {
    pub conv: String,
    pub seq: u64,
    pub from: String,
    /// The peer of a direct message, or the group.
    pub to: String,
    /// The text of the body's JSON object.
    pub body: Bytes,
    pub cid: Option<String>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    Publish(PublishEvent),
    ImMessage(ImMessageEvent),
    Presence {
        account: String,
        status: PresenceStatus,
        text: Option<String>,
    },
    Relation(RelationChange),
    /// A thing reported its state.
    ThingState {
        thing: String,
        state: Value,
    },
    /// A command was sent to a thing.
    ThingCommand {
        thing: String,
        id: String,
        command: Value,
    },
    /// A thing acknowledged a command.
    ThingAck {
        thing: String,
        id: String,
        result: Value,
    },
    /// A command got no acknowledgement in time.
    ThingTimeout {
        thing: String,
        id: String,
    },
    /// A timer of the rules engine fired.
    Tick {
        timer: String,
    },
    /// A thing published an event (`thing/T/event`): its id and body.
    ThingEvent {
        thing: String,
        id: String,
        body: Value,
    },
}

/// The kinds of event, one bit each in an [`Interest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum EventKind {
    Publish = 1 << 0,
    ImMessage = 1 << 1,
    Presence = 1 << 2,
    Relation = 1 << 3,
    ThingState = 1 << 4,
    ThingCommand = 1 << 5,
    ThingAck = 1 << 6,
    ThingTimeout = 1 << 7,
    Tick = 1 << 8,
    ThingEvent = 1 << 9,
}

impl EventData {
    pub fn kind(&self) -> EventKind {
        match self {
            EventData::Publish(_) => EventKind::Publish,
            EventData::ImMessage(_) => EventKind::ImMessage,
            EventData::Presence { .. } => EventKind::Presence,
            EventData::Relation(_) => EventKind::Relation,
            EventData::ThingState { .. } => EventKind::ThingState,
            EventData::ThingCommand { .. } => EventKind::ThingCommand,
            EventData::ThingAck { .. } => EventKind::ThingAck,
            EventData::ThingTimeout { .. } => EventKind::ThingTimeout,
            EventData::Tick { .. } => EventKind::Tick,
            EventData::ThingEvent { .. } => EventKind::ThingEvent,
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub actor: Actor,
    /// When it happened, ms since the epoch.
    pub at: u64,
    pub chain: Chain,
    pub data: EventData,
}

/// The kinds a consumer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Interest(u32);

impl Interest {
    pub const NONE: Interest = Interest(0);
    pub const ALL: Interest = Interest(u32::MAX);

    pub fn of(kinds: &[EventKind]) -> Self {
        Interest(kinds.iter().fold(0, |bits, k| bits | *k as u32))
    }

    pub fn contains(self, kind: EventKind) -> bool {
        self.0 & kind as u32 != 0
    }

    /// One bit per [`EventKind`] (for a consumer that keeps its interest in an atomic).
    pub fn bits(self) -> u32 {
        self.0
    }

    pub fn from_bits(bits: u32) -> Self {
        Interest(bits)
    }
}

/// A consumer of events (the rules engine, a simulator, a test). `on_event` runs on the thread
/// of the source, possibly under one of its locks (an IM message is emitted under its
/// conversation's order lock, so consumers see a conversation in order): it must be quick, must
/// not block, and must not call [`Actions`] itself; real work (and every action) goes to the
/// consumer's own threads.
pub trait EventSink: Send + Sync {
    /// The kinds this consumer wants; asked when it is added and again at each
    /// [`Events::refresh_interest`] (a consumer whose wants change calls it).
    fn interest(&self) -> Interest;
    /// The event is shared: a consumer that keeps it clones the `Arc`, not the event.
    fn on_event(&self, event: &Arc<Event>);
}

/// The seam: every source emits through one `Events`, which hands each event to the consumers
/// that want its kind.
#[derive(Default)]
pub struct Events {
    /// The union of every consumer's interest.
    wanted: AtomicU32,
    /// Read on every event (no lock); replaced whole when a consumer comes or its interest is
    /// asked again, under `changing`.
    sinks: ArcSwap<Vec<(Interest, Arc<dyn EventSink>)>>,
    changing: Mutex<()>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("wanted", &self.wanted.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Events {
    pub fn add_sink(&self, sink: Arc<dyn EventSink>) {
        let interest = sink.interest();
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let mut sinks = Vec::clone(&self.sinks.load());
        sinks.push((interest, sink));
        self.sinks.store(Arc::new(sinks));
        self.wanted.fetch_or(interest.0, Ordering::Release);
    }

    /// Ask every consumer its interest again (one whose wants changed, as a rules engine after
    /// a reload, calls this). A consumer that wants more should be asked before it needs the
    /// new kinds, and one that wants less after: see `mqtter_rules::Rules::reload`.
    pub fn refresh_interest(&self) {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let mut sinks = Vec::clone(&self.sinks.load());
        let mut wanted = 0;
        for (interest, sink) in sinks.iter_mut() {
            *interest = sink.interest();
            wanted |= interest.0;
        }
        self.sinks.store(Arc::new(sinks));
        self.wanted.store(wanted, Ordering::Release);
    }

    /// Does any consumer want `kind`? A source asks before it builds the event.
    #[inline]
    pub fn wants(&self, kind: EventKind) -> bool {
        self.wanted.load(Ordering::Relaxed) & kind as u32 != 0
    }

    /// Build the event with `make` and hand it to the consumers of `kind`, if there are any.
    #[inline]
    pub fn emit_with(&self, kind: EventKind, make: impl FnOnce() -> Event) {
        if self.wants(kind) {
            self.emit(make());
        }
    }

    /// Hand `event` to every consumer that wants its kind.
    pub fn emit(&self, event: Event) {
        let kind = event.data.kind();
        let event = Arc::new(event);
        let sinks = self.sinks.load();
        for (interest, sink) in sinks.iter() {
            if interest.contains(kind) {
                sink.on_event(&event);
            }
        }
    }
}

/// Why an action was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The account may not do this (the same check a client's PUBLISH gets).
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("storage failed: {0}")]
    Store(String),
    /// The daemon is stopping or gone.
    #[error("the daemon is not running")]
    Stopped,
}

/// A message an action publishes.
#[derive(Debug, Clone)]
pub struct ActionPublish {
    /// The account it is published as: it needs the rights a client of that account would need.
    pub account: String,
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// The chain of the event the action answers; the message carries `chain.next()`.
    pub chain: Chain,
}

/// How a non-network component (the rules engine, a simulator) acts on the world. The daemon
/// implements it so that every action enters as a PUBLISH of the named account would: the same
/// authorisation, stamping and storage, and it is emitted as an event again (one hop further).
pub trait Actions: Send + Sync {
    /// Publish a message as an account (a plain topic, or an IM topic: `person/{p}/inbox`,
    /// `group/{g}`).
    fn publish(&self, message: ActionPublish) -> Result<(), ActionError>;
    /// Send a notice envelope (`{"type": ..., ...}`) to every online device of a person's inbox.
    fn notify(&self, person: &str, envelope: Value, chain: &Chain) -> Result<(), ActionError>;
    /// Command a thing as an account: a PUBLISH of `body` (a JSON object, with `cid` / `ttl` if
    /// wanted) to `thing/{thing}/cmd`, with that account's rights (owner, `control` share or a
    /// linked thing), stamped in the chain one hop further.
    fn command(
        &self,
        account: &str,
        thing: &str,
        body: Value,
        chain: &Chain,
    ) -> Result<(), ActionError> {
        self.publish(ActionPublish {
            account: account.to_owned(),
            topic: format!("thing/{thing}/cmd"),
            payload: Bytes::from(body.to_string()),
            qos: 1,
            retain: false,
            chain: chain.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Seen(Interest, Mutex<Vec<Event>>);
    impl EventSink for Seen {
        fn interest(&self) -> Interest {
            self.0
        }
        fn on_event(&self, event: &Arc<Event>) {
            self.1.lock().unwrap().push(Event::clone(event));
        }
    }

    fn presence(account: &str) -> Event {
        Event {
            actor: Actor::person(account),
            at: 1,
            chain: Chain::start("x"),
            data: EventData::Presence {
                account: account.into(),
                status: PresenceStatus::Online,
                text: None,
            },
        }
    }

    #[test]
    fn a_kind_nobody_wants_is_never_built() {
        let events = Events::default();
        events.emit_with(EventKind::Presence, || unreachable!("nobody wants it"));
        let sink = Arc::new(Seen(Interest::of(&[EventKind::Relation]), Mutex::default()));
        events.add_sink(sink.clone());
        assert!(!events.wants(EventKind::Presence));
        events.emit_with(EventKind::Presence, || unreachable!("nobody wants it"));
        assert!(events.wants(EventKind::Relation));
    }

    #[test]
    fn each_consumer_gets_the_kinds_it_wants() {
        let events = Events::default();
        let all = Arc::new(Seen(Interest::ALL, Mutex::default()));
        let some = Arc::new(Seen(Interest::of(&[EventKind::Publish]), Mutex::default()));
        events.add_sink(all.clone());
        events.add_sink(some.clone());
        events.emit_with(EventKind::Presence, || presence("a"));
        assert_eq!(all.1.lock().unwrap().len(), 1);
        assert!(some.1.lock().unwrap().is_empty());
    }

    /// A consumer whose wants change: asked again, the seam follows it.
    struct Changing(AtomicU32, Mutex<Vec<Event>>);
    impl EventSink for Changing {
        fn interest(&self) -> Interest {
            Interest(self.0.load(Ordering::Relaxed))
        }
        fn on_event(&self, event: &Arc<Event>) {
            self.1.lock().unwrap().push(Event::clone(event));
        }
    }

    #[test]
    fn a_refreshed_interest_widens_and_narrows() {
        let events = Events::default();
        let sink = Arc::new(Changing(AtomicU32::new(0), Mutex::default()));
        events.add_sink(sink.clone());
        assert!(!events.wants(EventKind::Presence));
        sink.0.store(EventKind::Presence as u32, Ordering::Relaxed);
        events.refresh_interest();
        assert!(events.wants(EventKind::Presence));
        events.emit_with(EventKind::Presence, || presence("a"));
        assert_eq!(sink.1.lock().unwrap().len(), 1);
        sink.0.store(0, Ordering::Relaxed);
        events.refresh_interest();
        assert!(!events.wants(EventKind::Presence));
        events.emit_with(EventKind::Presence, || unreachable!("nobody wants it now"));
    }

    #[test]
    fn an_action_continues_the_chain() {
        let chain = Chain::start("c#1");
        assert_eq!(
            chain.next(),
            Chain {
                id: "c#1".into(),
                hop: 1
            }
        );
        assert_eq!(chain.next().next().hop, 2);
    }
}
