//! The things world's shapes (docs/PROTOCOL.md section 10) as Rust types: commands as a thing
//! receives them, their outcome as the commander receives it, state documents, events, the
//! person's list of things, audit entries.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::types::Chain;

/// A command as the thing receives it on `thing/T/cmd` (`{"type":"cmd", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// `thing:T#N`: what the answer names.
    pub id: String,
    pub thing: String,
    /// The commander (a person, a linked thing, a rule's account).
    pub from: String,
    pub ts: u64,
    pub ttl: u64,
    /// `ts + ttl` (ms since the epoch): no answer counts after it.
    pub expires: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    pub body: Value,
    #[serde(default)]
    pub chain: Chain,
}

/// A thing's answer to a command.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub ok: bool,
    /// Any JSON value (`null` when there is nothing to say).
    pub result: Value,
}

impl Ack {
    /// `ok: true` with a result.
    pub fn ok(result: Value) -> Ack {
        Ack { ok: true, result }
    }

    /// `ok: false` with `{"error": message}` as the result.
    pub fn error(message: &str) -> Ack {
        Ack {
            ok: false,
            result: serde_json::json!({ "error": message }),
        }
    }
}

/// `cmd.ack`: the thing answered one's command (in the commander's feed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandAck {
    /// The command's id (`thing:T#N`).
    pub id: String,
    pub thing: String,
    #[serde(default)]
    pub cid: Option<String>,
    pub ok: bool,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub feed: u64,
    #[serde(default)]
    pub ts: u64,
    #[serde(default)]
    pub chain: Chain,
}

/// `cmd.timeout`: the ttl passed without an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandTimeout {
    pub id: String,
    pub thing: String,
    #[serde(default)]
    pub cid: Option<String>,
    #[serde(default)]
    pub expires: u64,
    /// Whether the command had been handed to a device of the thing.
    #[serde(default)]
    pub delivered: bool,
    #[serde(default)]
    pub feed: u64,
    #[serde(default)]
    pub ts: u64,
    #[serde(default)]
    pub chain: Chain,
}

/// How a command ended, for the one who gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Acked(CommandAck),
    TimedOut(CommandTimeout),
}

impl Outcome {
    /// The command's id.
    pub fn id(&self) -> &str {
        match self {
            Outcome::Acked(a) => &a.id,
            Outcome::TimedOut(t) => &t.id,
        }
    }
}

/// A command given: its `cid` (the server records it once) and the thing. Its outcome comes
/// as [`crate::Event::CommandAck`] / [`crate::Event::CommandTimeout`], or through
/// [`crate::Client::command_wait`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commanded {
    pub thing: String,
    pub cid: String,
}

/// A state document (`{"type":"state", ...}` on `thing/T/state`, or `thing.state`'s answer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThingState {
    pub thing: String,
    /// Rises by one per change; 0 before any state.
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub state: Value,
    /// The merge patch from `version - 1` (the whole document when sent at a subscription).
    #[serde(default)]
    pub changed: Value,
    #[serde(default)]
    pub ts: u64,
    /// `None` for the retained copy a new subscriber gets.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub chain: Option<Chain>,
}

/// A thing's event (`{"type":"event", ...}`: in a bound person's feed, or live to a linked
/// thing that subscribed to `thing/T/event`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThingEvent {
    pub id: String,
    pub thing: String,
    pub body: Value,
    #[serde(default)]
    pub feed: Option<u64>,
    #[serde(default)]
    pub ts: u64,
    #[serde(default)]
    pub chain: Chain,
}

/// A person's access to a thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Owner,
    Control,
    View,
}

/// The rights of a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rights {
    /// Command, see state, events and presence.
    Control,
    /// See state, events and presence; never command.
    View,
}

impl Rights {
    pub fn as_str(self) -> &'static str {
        match self {
            Rights::Control => "control",
            Rights::View => "view",
        }
    }
}

/// A thing in a person's list (the `things` envelope after the sync, and `thing.list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThingEntry {
    pub id: String,
    pub access: Access,
    #[serde(default)]
    pub presence: String,
    #[serde(default)]
    pub last_seen: Option<u64>,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub state: Value,
    /// The owner's only: persons asking to follow.
    #[serde(default)]
    pub follow_requests: Vec<String>,
    /// The owner's only: the things it is linked to.
    #[serde(default)]
    pub links: Vec<String>,
}

/// What a follow request became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowState {
    /// One may see the thing already (a binding or a share).
    Following,
    /// The owner was asked.
    Pending,
}

/// A one-time claim code a thing asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCode {
    pub code: String,
    pub expires_at: u64,
}

/// One entry of a thing's audit (`thing.audit`), newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// The command's id (`None` for a refused command).
    #[serde(default)]
    pub id: Option<String>,
    pub from: String,
    pub ts: u64,
    #[serde(default)]
    pub chain: Option<Chain>,
    #[serde(default)]
    pub cid: Option<String>,
    #[serde(default)]
    pub body: Value,
    #[serde(default)]
    pub ttl: Option<u64>,
    /// `{"kind": "pending"|"acked"|"timeout"|"refused", ...}`.
    pub result: Value,
}

impl AuditEntry {
    /// `result.kind`: `pending`, `acked`, `timeout` or `refused`.
    pub fn kind(&self) -> &str {
        self.result
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// A page of the audit.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; `None` at the end.
    pub next_before: Option<u64>,
}
