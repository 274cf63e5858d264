//! The trigger index: which rules an event can fire, found without looking at the others. Topic
//! triggers live in a trie of topic filters (one walk per PUBLISH, as a broker matches
//! subscriptions); every other trigger under its kind and subject (the thing, the account, the
//! group, the timer), with a list per kind for the `*` subjects.

use std::collections::HashMap;

use serde_json::Value;

use crate::events::{Event, EventData, EventKind, Interest, RelationChange};
use crate::model::{By, RelationKind, Rule, Trigger};

/// A rule and which of its triggers matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub rule: usize,
    pub trigger: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Im,
    State,
    Command,
    Ack,
    Timeout,
    Presence,
    Relation(RelationKind),
    Timer,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<String, Node>,
    plus: Option<Box<Node>>,
    /// Filters ending in `#` here.
    hash: Vec<Hit>,
    /// Filters ending here.
    here: Vec<Hit>,
}

/// The index over one rule set.
#[derive(Debug, Default)]
pub struct Index {
    topics: Node,
    keyed: HashMap<(Kind, String), Vec<Hit>>,
    /// Schedules (`cron`, `every`), fired by the scheduler rather than by events.
    pub schedules: Vec<Hit>,
}

impl Index {
    pub fn new(rules: &[Rule]) -> Self {
        let mut index = Index::default();
        for (r, rule) in rules.iter().enumerate() {
            if !rule.options.enabled {
                continue;
            }
            for (t, trigger) in rule.triggers.iter().enumerate() {
                let hit = Hit {
                    rule: r,
                    trigger: t,
                };
                let (kind, key) = match trigger {
                    Trigger::Topic { filter, .. } => {
                        index.add_filter(filter, hit);
                        continue;
                    }
                    Trigger::Cron { .. } | Trigger::Every { .. } => {
                        index.schedules.push(hit);
                        continue;
                    }
                    Trigger::Im { to, .. } => (Kind::Im, to),
                    Trigger::State { thing, .. } => (Kind::State, thing),
                    Trigger::Command { thing } => (Kind::Command, thing),
                    Trigger::Ack { thing } => (Kind::Ack, thing),
                    Trigger::Timeout { thing } => (Kind::Timeout, thing),
                    Trigger::Presence { account, .. } => (Kind::Presence, account),
                    Trigger::Relation { kind, .. } => (Kind::Relation(*kind), &String::new()),
                    Trigger::Timer { name } => (Kind::Timer, name),
                };
                index
                    .keyed
                    .entry((kind, key.clone()))
                    .or_default()
                    .push(hit);
            }
        }
        index
    }

    /// The kinds of event some enabled rule of this set can fire on, as the event seam asks
    /// (timers and schedules are the engine's own: no kind of the seam).
    pub fn interest(&self) -> Interest {
        let mut kinds = Vec::new();
        if !self.topics.is_empty() {
            kinds.push(EventKind::Publish);
        }
        for (kind, _) in self.keyed.keys() {
            kinds.push(match kind {
                Kind::Im => EventKind::ImMessage,
                Kind::State => EventKind::ThingState,
                Kind::Command => EventKind::ThingCommand,
                Kind::Ack => EventKind::ThingAck,
                Kind::Timeout => EventKind::ThingTimeout,
                Kind::Presence => EventKind::Presence,
                Kind::Relation(_) => EventKind::Relation,
                Kind::Timer => continue,
            });
        }
        Interest::of(&kinds)
    }

    fn add_filter(&mut self, filter: &str, hit: Hit) {
        let mut node = &mut self.topics;
        for level in filter.split('/') {
            match level {
                "#" => {
                    node.hash.push(hit);
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Box::default),
                l => node = node.children.entry(l.to_owned()).or_default(),
            }
        }
        node.here.push(hit);
    }

    fn match_topic(&self, topic: &str, out: &mut Vec<Hit>) {
        // [MQTT-4.7.2-1]: a filter starting with a wildcard does not match a `$` topic.
        let system = topic.starts_with('$');
        let levels: Vec<&str> = topic.split('/').collect();
        walk(&self.topics, &levels, system, out);
    }

    fn keyed(&self, kind: Kind, key: &str, out: &mut Vec<Hit>) {
        for k in [key, "*"] {
            if let Some(hits) = self.keyed.get(&(kind, k.to_owned())) {
                out.extend_from_slice(hits);
            }
        }
    }

    /// The rules (and triggers) `event` may fire, before each trigger's own conditions
    /// ([`matches`]).
    pub fn candidates(&self, event: &Event, out: &mut Vec<Hit>) {
        match &event.data {
            EventData::Publish(p) => self.match_topic(&p.topic, out),
            EventData::ImMessage(m) => self.keyed(Kind::Im, &m.to, out),
            EventData::Presence { account, .. } => self.keyed(Kind::Presence, account, out),
            EventData::Relation(change) => {
                self.keyed(Kind::Relation(relation_kind(change)), "", out)
            }
            EventData::ThingState { thing, .. } => self.keyed(Kind::State, thing, out),
            EventData::ThingCommand { thing, .. } => self.keyed(Kind::Command, thing, out),
            EventData::ThingAck { thing, .. } => self.keyed(Kind::Ack, thing, out),
            EventData::ThingTimeout { thing, .. } => self.keyed(Kind::Timeout, thing, out),
            // `after(ms, "escalate/42")` fires the rules of `timer: escalate`.
            EventData::Tick { timer } => {
                let name = timer.split('/').next().unwrap_or_default();
                self.keyed(Kind::Timer, name, out)
            }
            // No trigger names a thing's events yet.
            EventData::ThingEvent { .. } => {}
        }
        out.sort_unstable_by_key(|h| (h.rule, h.trigger));
        // A rule runs once per event, even when several of its triggers match.
        out.dedup_by_key(|h| h.rule);
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.here.is_empty()
    }
}

fn walk(node: &Node, levels: &[&str], system: bool, out: &mut Vec<Hit>) {
    if !system {
        out.extend_from_slice(&node.hash);
    }
    let Some((level, rest)) = levels.split_first() else {
        out.extend_from_slice(&node.here);
        return;
    };
    if let Some(child) = node.children.get(*level) {
        walk(child, rest, false, out);
    }
    if let Some(plus) = &node.plus
        && !system
    {
        walk(plus, rest, false, out);
    }
}

/// Does a topic `filter` match `topic`? (The same rule as the trie, for one pair: `check`.)
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

pub fn relation_kind(change: &RelationChange) -> RelationKind {
    match change {
        RelationChange::FriendAdded { .. } => RelationKind::FriendAdded,
        RelationChange::FriendRemoved { .. } => RelationKind::FriendRemoved,
        RelationChange::MemberJoined { .. } => RelationKind::MemberJoined,
        RelationChange::MemberLeft { .. } => RelationKind::MemberLeft,
        RelationChange::Bound { .. } => RelationKind::Bound,
        RelationChange::Unbound { .. } => RelationKind::Unbound,
        RelationChange::Linked { .. } => RelationKind::Linked,
        RelationChange::Unlinked { .. } => RelationKind::Unlinked,
    }
}

fn relation_parties(change: &RelationChange) -> [&str; 2] {
    match change {
        RelationChange::FriendAdded { a, b } | RelationChange::FriendRemoved { a, b } => [a, b],
        RelationChange::MemberJoined { group, member }
        | RelationChange::MemberLeft { group, member } => [group, member],
        RelationChange::Bound { thing, person } | RelationChange::Unbound { thing, person } => {
            [thing, person]
        }
        RelationChange::Linked { a, b } | RelationChange::Unlinked { a, b } => [a, b],
    }
}

fn by_matches(by: &By, event: &Event) -> bool {
    by.account
        .as_deref()
        .is_none_or(|a| event.actor.account.as_deref() == Some(a))
        && by.kind.is_none_or(|k| event.actor.kind == k)
}

/// Does `trigger` (a candidate from the index) fire on `event`? `previous` is the thing's state
/// before a state report (for `changed`/`from`).
pub fn matches(trigger: &Trigger, event: &Event, previous: Option<&Value>) -> bool {
    match (trigger, &event.data) {
        (Trigger::Topic { by, .. } | Trigger::Im { by, .. }, _) => by_matches(by, event),
        (
            Trigger::State {
                changed, from, to, ..
            },
            EventData::ThingState { state, .. },
        ) => {
            let Some(field) = changed else {
                return to.as_ref().is_none_or(|to| state == to);
            };
            let before = previous.and_then(|p| p.get(field));
            let after = state.get(field);
            after.is_some()
                && before != after
                && from.as_ref().is_none_or(|f| before == Some(f))
                && to.as_ref().is_none_or(|t| after == Some(t))
        }
        (Trigger::Presence { to, .. }, EventData::Presence { status, .. }) => {
            to.as_deref().is_none_or(|to| to == status.as_str())
        }
        (Trigger::Relation { of, .. }, EventData::Relation(change)) => of
            .as_deref()
            .is_none_or(|of| relation_parties(change).contains(&of)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interest_is_what_the_rules_can_fire_on() {
        let load = |yaml: &str| {
            let loaded = crate::loader::load_text(
                std::path::Path::new("."),
                std::path::Path::new("r.yaml"),
                yaml,
                &crate::loader::compiler(),
                &crate::loader::LoadConfig::default(),
            );
            Index::new(&loaded.0.expect("loads").rules).interest()
        };
        assert_eq!(load("rules: []"), Interest::NONE);
        let topic = load("rules:\n  - { id: a, when: { topic: a/b }, do: '1' }");
        assert_eq!(topic, Interest::of(&[EventKind::Publish]));
        let some = load(
            "rules:\n  - { id: a, when: [{ presence: '*' }, { every: 1s }, { timer: t }], do: '1' }",
        );
        assert_eq!(some, Interest::of(&[EventKind::Presence]));
        let off = load("rules:\n  - { id: a, enabled: false, when: { im: x }, do: '1' }");
        assert_eq!(off, Interest::NONE);
    }

    #[test]
    fn filters_match_as_mqtt_has_them() {
        for (filter, topic, expected) in [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/c", false),
        ] {
            assert_eq!(filter_matches(filter, topic), expected, "{filter} {topic}");
            let mut node = Index::default();
            node.add_filter(
                filter,
                Hit {
                    rule: 0,
                    trigger: 0,
                },
            );
            let mut out = Vec::new();
            node.match_topic(topic, &mut out);
            assert_eq!(!out.is_empty(), expected, "trie: {filter} {topic}");
        }
    }
}
