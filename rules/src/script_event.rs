//! The triggering event as a rule sees it: the Rhai map a script reads as `event` (also
//! `msg`), and the short form a trace shows.

use rhai::{Dynamic, ImmutableString, Map};
use serde_json::Value;

use crate::api;
use crate::events::{ActorKind, Event, EventData, RelationChange};
use crate::reads::Reads;

/// The event as a script sees it (`event`, also `msg`): a Rhai map built directly (no JSON
/// document in between: this runs for every rule run), with the fields in `reads` only (a
/// script that never reads the payload does not pay for parsing it). A JSON payload or body
/// becomes a map, anything else its text.
pub(crate) fn event_map(
    event: &Event,
    previous: Option<&Value>,
    data: &Value,
    reads: &Reads,
) -> Dynamic {
    fn int(v: u64) -> Dynamic {
        Dynamic::from_int(i64::try_from(v).unwrap_or(i64::MAX))
    }
    fn text(s: &str) -> Dynamic {
        Dynamic::from(ImmutableString::from(s))
    }
    fn json(v: &Value) -> Dynamic {
        api::to_dynamic(v)
    }
    fn opt_json(v: Option<&Value>) -> Dynamic {
        v.map_or(Dynamic::UNIT, json)
    }
    /// Bytes as text (invalid UTF-8 shown as U+FFFD).
    fn shown(bytes: &[u8]) -> Dynamic {
        text(&String::from_utf8_lossy(bytes))
    }
    /// A JSON body as a map (or other JSON value), else its text.
    fn body(bytes: &[u8]) -> Dynamic {
        let looks_json = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| {
                matches!(
                    b,
                    b'{' | b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9'
                )
            });
        looks_json
            .then(|| serde_json::from_slice::<Dynamic>(bytes).ok())
            .flatten()
            .unwrap_or_else(|| shown(bytes))
    }
    let mut map = Map::new();
    let mut put = |key: &str, value: &dyn Fn() -> Dynamic| {
        if reads.has(key) {
            map.insert(key.into(), value());
        }
    };
    put("by", &|| text(event.actor.name()));
    put("by_kind", &|| {
        text(match event.actor.kind {
            ActorKind::Person => "person",
            ActorKind::Thing => "thing",
            ActorKind::Anonymous => "anonymous",
            ActorKind::Rule => "rule",
        })
    });
    put("at", &|| int(event.at));
    put("chain", &|| {
        let mut chain = Map::new();
        chain.insert("id".into(), text(&event.chain.id));
        chain.insert("hop".into(), int(u64::from(event.chain.hop)));
        Dynamic::from_map(chain)
    });
    match &event.data {
        EventData::Publish(p) => {
            put("kind", &|| text("publish"));
            put("topic", &|| text(&p.topic));
            put("payload", &|| body(&p.payload));
            put("text", &|| shown(&p.payload));
            put("qos", &|| int(u64::from(p.qos)));
            put("retain", &|| Dynamic::from_bool(p.retain));
        }
        EventData::ImMessage(m) => {
            put("kind", &|| text("im"));
            put("conv", &|| text(&m.conv));
            put("seq", &|| int(m.seq));
            put("from", &|| text(&m.from));
            put("to", &|| text(&m.to));
            put("body", &|| body(&m.body));
        }
        EventData::Presence {
            account,
            status,
            text: said,
        } => {
            put("kind", &|| text("presence"));
            put("account", &|| text(account));
            put("status", &|| text(status.as_str()));
            put("text", &|| said.as_deref().map_or(Dynamic::UNIT, text));
        }
        EventData::Relation(change) => {
            put("kind", &|| text("relation"));
            put("relation", &|| {
                text(crate::index::relation_kind(change).as_str())
            });
            let (k1, v1, k2, v2) = match change {
                RelationChange::FriendAdded { a, b }
                | RelationChange::FriendRemoved { a, b }
                | RelationChange::Linked { a, b }
                | RelationChange::Unlinked { a, b } => ("a", a, "b", b),
                RelationChange::MemberJoined { group, member }
                | RelationChange::MemberLeft { group, member } => {
                    ("group", group, "member", member)
                }
                RelationChange::Bound { thing, person }
                | RelationChange::Unbound { thing, person } => ("thing", thing, "person", person),
            };
            put(k1, &|| text(v1));
            put(k2, &|| text(v2));
        }
        EventData::ThingState { thing, state } => {
            put("kind", &|| text("state"));
            put("thing", &|| text(thing));
            put("state", &|| json(state));
            put("previous", &|| opt_json(previous));
        }
        EventData::ThingCommand { thing, id, command } => {
            put("kind", &|| text("command"));
            put("thing", &|| text(thing));
            put("id", &|| text(id));
            put("command", &|| json(command));
        }
        EventData::ThingAck { thing, id, result } => {
            put("kind", &|| text("ack"));
            put("thing", &|| text(thing));
            put("id", &|| text(id));
            put("result", &|| json(result));
        }
        EventData::ThingTimeout { thing, id } => {
            put("kind", &|| text("timeout"));
            put("thing", &|| text(thing));
            put("id", &|| text(id));
        }
        EventData::Tick { timer } => {
            put("kind", &|| text("timer"));
            put("timer", &|| text(timer));
            put("data", &|| json(data));
        }
        EventData::ThingEvent { thing, id, body } => {
            put("kind", &|| text("event"));
            put("thing", &|| text(thing));
            put("id", &|| text(id));
            put("body", &|| json(body));
        }
    }
    Dynamic::from_map(map)
}

/// The event in short, for a trace: its kind and subject.
pub(crate) fn describe(event: &Event) -> String {
    match &event.data {
        EventData::Publish(p) => format!("publish {}", p.topic),
        EventData::ImMessage(m) => format!("im {} from {}", m.to, m.from),
        EventData::Presence {
            account, status, ..
        } => format!("presence {account} {}", status.as_str()),
        EventData::Relation(change) => format!("relation {change:?}"),
        EventData::ThingState { thing, .. } => format!("state {thing}"),
        EventData::ThingCommand { thing, .. } => format!("command {thing}"),
        EventData::ThingAck { thing, .. } => format!("ack {thing}"),
        EventData::ThingTimeout { thing, .. } => format!("timeout {thing}"),
        EventData::Tick { timer } => format!("timer {timer}"),
        EventData::ThingEvent { thing, .. } => format!("event {thing}"),
    }
}
