//! The shapes of docs/PROTOCOL.md as Rust types: conversations, message envelopes, the roster,
//! presence, receipts, notices, and what the event stream yields.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A conversation id: `person:A|person:B` (the two ids in byte order) or `group:G`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConvId(pub String);

impl ConvId {
    /// The direct conversation of two persons.
    pub fn direct(a: &str, b: &str) -> ConvId {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        ConvId(format!("person:{x}|person:{y}"))
    }

    /// A group's conversation.
    pub fn group(group: &str) -> ConvId {
        ConvId(format!("group:{group}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The group's id, for a group conversation.
    pub fn group_id(&self) -> Option<&str> {
        self.0.strip_prefix("group:")
    }

    /// The other party of a direct conversation, seen from `me`.
    pub fn peer_of(&self, me: &str) -> Option<&str> {
        let rest = self.0.strip_prefix("person:")?;
        let (a, b) = rest.split_once("|person:")?;
        if a == me { Some(b) } else { Some(a) }
    }
}

impl fmt::Display for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a message goes: a friend's inbox or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Person(String),
    Group(String),
}

impl Target {
    /// The MQTT topic a message to this target is published on.
    pub fn topic(&self) -> String {
        match self {
            Target::Person(p) => format!("person/{p}/inbox"),
            Target::Group(g) => format!("group/{g}"),
        }
    }

    /// The conversation a message from `me` to this target belongs to.
    pub fn conv(&self, me: &str) -> ConvId {
        match self {
            Target::Person(p) => ConvId::direct(me, p),
            Target::Group(g) => ConvId::group(g),
        }
    }
}

/// The chain a message belongs to (`{id, hop}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Chain {
    pub id: String,
    pub hop: u64,
}

/// A stamped message, as delivered and stored (`{"type":"msg", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub conv: ConvId,
    pub seq: u64,
    pub from: String,
    pub to: String,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    pub body: Value,
    #[serde(default)]
    pub chain: Chain,
}

impl Message {
    /// The body's `text`, when it has one.
    pub fn text(&self) -> Option<&str> {
        self.body.get("text").and_then(Value::as_str)
    }
}

/// A friend as the roster lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Friend {
    pub id: String,
    #[serde(default)]
    pub presence: String,
    #[serde(default)]
    pub last_seen: Option<u64>,
    #[serde(default)]
    pub text: Option<String>,
}

/// Pending friend requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Requests {
    #[serde(default)]
    pub incoming: Vec<String>,
    #[serde(default)]
    pub outgoing: Vec<String>,
}

/// A group the account belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupEntry {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub last_seq: u64,
    #[serde(default)]
    pub unread: u64,
    #[serde(default)]
    pub join_requests: Vec<String>,
}

/// An entry of the recycle bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecycleEntry {
    pub kind: String,
    pub peer: String,
    #[serde(default)]
    pub removed_at: u64,
    #[serde(default)]
    pub expires_at: u64,
}

/// The roster that opens every sync (`{"type":"sync", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Roster {
    #[serde(default)]
    pub account: String,
    #[serde(default)]
    pub friends: Vec<Friend>,
    #[serde(default)]
    pub requests: Requests,
    #[serde(default)]
    pub groups: Vec<GroupEntry>,
    #[serde(default)]
    pub blocked: Vec<String>,
    #[serde(default)]
    pub recycle: Vec<RecycleEntry>,
    /// The things one owns or is shared (the `things` envelope after the sync), kept current
    /// by the things notices, state and presence.
    #[serde(default)]
    pub things: Vec<crate::things::ThingEntry>,
}

/// A presence change of a friend or of oneself (`{"type":"presence", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    pub id: String,
    pub presence: String,
    #[serde(default)]
    pub last_seen: Option<u64>,
    #[serde(default)]
    pub text: Option<String>,
}

/// A delivery or read receipt (`{"type":"receipt", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub conv: ConvId,
    pub seq: u64,
    pub kind: String,
    pub by: String,
}

/// What a receipt says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptKind {
    Delivered,
    Read,
}

impl ReceiptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Delivered => "delivered",
            ReceiptKind::Read => "read",
        }
    }
}

/// The state a friend request leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendState {
    Friends,
    Pending,
}

/// A group member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// A group member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub role: Role,
}

/// One page of a conversation's history, ascending by `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub conv: ConvId,
    pub messages: Vec<Message>,
    /// The conversation's newest `seq` on the server.
    pub last_seq: u64,
}

/// Which page of history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Range {
    /// The newest page.
    #[default]
    Newest,
    /// The newest messages before this `seq`.
    Before(u64),
    /// The oldest messages after this `seq`.
    After(u64),
}

/// A notice with no type of its own here (`friend.request`, `group.joined`, ...): its `type` and
/// the whole envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub kind: String,
    pub body: Value,
}

impl Notice {
    /// A string field of the notice (`peer`, `from`, `group`, `member`, ...).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.body.get(name).and_then(Value::as_str)
    }
}

/// What the event stream yields, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Connected (again): the roster of this connection's sync.
    Connected(Roster),
    /// The sync is complete: every missed message (and every page the server said was left)
    /// has been yielded.
    Synced,
    /// A message, each `(conv, seq)` once and in `seq` order per conversation.
    Message(Message),
    /// A friend's presence (or one's own).
    Presence(Presence),
    Receipt(Receipt),
    /// A thing: a command to answer ([`crate::ThingClient::ack`]), each once.
    Command(crate::things::Command),
    /// A thing answered one's command.
    CommandAck(crate::things::CommandAck),
    /// One's command's ttl passed unanswered.
    CommandTimeout(crate::things::CommandTimeout),
    /// A state document one subscribed to (a new version, or the current one at once).
    ThingState(crate::things::ThingState),
    /// An event of a bound thing (from the feed) or of a linked thing one subscribed to.
    ThingEvent(crate::things::ThingEvent),
    /// A thing's presence, on `thing/T/status`.
    ThingPresence(Presence),
    /// A person's things, after the sync (also in [`crate::Client::roster`]).
    Things(Vec<crate::things::ThingEntry>),
    /// The feed's catch-up after CONNECT is done: every entry up to `last` was yielded.
    FeedDone {
        last: u64,
    },
    /// An `error` notice: something this device published was refused (v3.1.1 style).
    Refused(Notice),
    Notice(Notice),
    /// A direct channel to a friend was opened (see [`crate::p2p`]).
    DirectOpened {
        peer: String,
    },
    /// A direct channel ended; what was not acknowledged over it goes through the server.
    DirectClosed {
        peer: String,
        reason: String,
    },
    /// The connection to the server was lost; the client reconnects by itself after `retry_in`.
    Disconnected {
        reason: String,
        retry_in: std::time::Duration,
    },
}
