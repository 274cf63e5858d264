//! State documents (versioned JSON, changed by JSON Merge Patch, RFC 7386), events, presence
//! and the owner's roster of things.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::payload::object_of;
use super::{Chain, Effect, ThingError, ThingResult, Things, decode, encode, item_id, lock};
use crate::graph::Access;
use crate::im::key;
use crate::store::{Batch, Space};

/// Apply `patch` to `target` as RFC 7386 says: objects merge member by member, `null` removes a
/// member, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(object) = target {
        for (name, value) in members {
            if value.is_null() {
                object.remove(name);
            } else {
                merge_patch(object.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// The smallest merge patch that turns `old` into `new` (`None`: they are equal). Only for
/// documents without `null` members (a merge patch cannot set one).
pub fn merge_patch_diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return Some(new.clone());
    };
    let mut patch = Map::new();
    for name in old.keys() {
        if !new.contains_key(name) {
            patch.insert(name.clone(), Value::Null);
        }
    }
    for (name, value) in new {
        let change = match old.get(name) {
            Some(before) => merge_patch_diff(before, value),
            None => Some(value.clone()),
        };
        if let Some(change) = change {
            patch.insert(name.clone(), change);
        }
    }
    Some(Value::Object(patch))
}

/// Remove `null` members, recursively (a document holds none: a merge patch could not say them).
fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(object) => {
            object.retain(|_, v| !v.is_null());
            object.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateRecord {
    version: u64,
    ts: u64,
    /// The document as compact JSON text.
    doc: String,
}

/// A thing's state document.
#[derive(Debug, Clone, PartialEq)]
pub struct StateDoc {
    pub thing: String,
    /// 0 before any state.
    pub version: u64,
    pub ts: u64,
    pub state: Value,
}

impl StateDoc {
    pub fn to_json(&self) -> Value {
        json!({ "thing": self.thing, "version": self.version, "state": self.state, "ts": self.ts })
    }
}

fn presence_envelope(thing: &str, online: bool, last_seen: u64) -> Value {
    let presence = if online { "online" } else { "offline" };
    json!({ "type": "presence", "id": thing, "presence": presence, "last_seen": last_seen })
}

impl Things {
    /// `thing`'s current document (version 0 and `{}` before any state), unchecked.
    pub fn current_state(&self, thing: &str) -> ThingResult<StateDoc> {
        let record = self
            .store
            .get(Space::Things, &key(&["state", thing]))?
            .and_then(|v| decode::<StateRecord>(&v));
        Ok(match record {
            Some(r) => StateDoc {
                thing: thing.to_owned(),
                version: r.version,
                ts: r.ts,
                state: serde_json::from_str(&r.doc).unwrap_or_else(|_| json!({})),
            },
            None => StateDoc {
                thing: thing.to_owned(),
                version: 0,
                ts: 0,
                state: json!({}),
            },
        })
    }

    /// `thing`'s document for `viewer`, who must be allowed to see it.
    pub fn state(&self, viewer: &str, thing: &str) -> ThingResult<StateDoc> {
        self.require_thing(thing)?;
        if !self.may_view(viewer, thing) {
            return Err(ThingError::NotAuthorized(format!(
                "{viewer} may not see {thing}"
            )));
        }
        self.current_state(thing)
    }

    /// `thing` publishes state: a merge patch on its document (with `replace`, the whole new
    /// document). A change makes a new version, durable and retained, sent to those who may
    /// see the thing with what changed; a patch that changes nothing makes nothing.
    pub fn publish_state(
        &self,
        thing: &str,
        payload: &[u8],
        replace: bool,
        chain: Option<Chain>,
        now: u64,
    ) -> ThingResult<(Option<StateDoc>, Vec<Effect>)> {
        self.require_thing(thing)?;
        let patch = Value::Object(object_of(payload, self.config.max_state_bytes, false)?);
        let _guard = self.thing_lock(thing);
        let current = self.current_state(thing)?;
        let mut doc = if replace {
            patch
        } else {
            let mut doc = current.state.clone();
            merge_patch(&mut doc, &patch);
            doc
        };
        strip_nulls(&mut doc);
        let Some(changed) = merge_patch_diff(&current.state, &doc) else {
            return Ok((None, Vec::new()));
        };
        let text = doc.to_string();
        if text.len() > self.config.max_state_bytes {
            return Err(ThingError::TooLarge(format!(
                "the state document would be {} bytes, over the limit of {}",
                text.len(),
                self.config.max_state_bytes
            )));
        }
        let mut batch = Batch::new();
        let seq = self.next_seq(&mut batch, thing)?;
        let id = item_id(thing, seq);
        let chain = self.continue_chain(chain, &id)?;
        let record = StateRecord {
            version: current.version + 1,
            ts: now,
            doc: text,
        };
        batch.put(Space::Things, key(&["state", thing]), encode(&record));
        self.store.apply(batch)?;
        let envelope = json!({
            "type": "state", "ts": now, "id": id, "thing": thing, "version": record.version,
            "state": doc, "changed": changed, "chain": chain.to_json(),
        });
        let effects = vec![Effect::Publish {
            topic: format!("thing/{thing}/state"),
            envelope,
            retain: true,
        }];
        let doc = StateDoc {
            thing: thing.to_owned(),
            version: record.version,
            ts: now,
            state: doc,
        };
        Ok((Some(doc), effects))
    }

    /// `thing` publishes an event: into the feed of every bound person, and on `thing/T/event`
    /// for the linked things that subscribe. A top-level `chain` (or `cmd`, the id of the command
    /// it follows from) in the payload, or `chain` given by the broker, continues a chain.
    pub fn publish_event(
        &self,
        thing: &str,
        payload: &[u8],
        chain: Option<Chain>,
        now: u64,
    ) -> ThingResult<(Value, Vec<Effect>)> {
        self.require_thing(thing)?;
        let mut body = object_of(payload, self.config.max_body_bytes, true)?;
        let given = body.remove("chain").and_then(|c| Chain::from_json(&c));
        let follows = body
            .remove("cmd")
            .and_then(|c| c.as_str().and_then(|id| self.chain_of_command(thing, id)));
        let _guard = self.thing_lock(thing);
        let mut batch = Batch::new();
        let seq = self.next_seq(&mut batch, thing)?;
        let id = item_id(thing, seq);
        let chain = self.continue_chain(chain.or(given).or(follows), &id)?;
        let envelope = json!({
            "type": "event", "ts": now, "id": id, "thing": thing, "body": Value::Object(body),
            "chain": chain.to_json(),
        });
        let mut effects = Vec::new();
        for person in self.bound_persons(thing) {
            effects.push(self.feed_push(&mut batch, &person, envelope.clone())?);
        }
        self.store.apply(batch)?;
        effects.push(Effect::Publish {
            topic: format!("thing/{thing}/event"),
            envelope: envelope.clone(),
            retain: false,
        });
        Ok((envelope, effects))
    }

    pub fn is_online(&self, thing: &str) -> bool {
        lock(&self.online).get(thing).is_some_and(|n| *n > 0)
    }

    pub fn last_seen(&self, thing: &str) -> ThingResult<Option<u64>> {
        self.get_u64(&key(&["seen", thing]))
    }

    fn seen(&self, thing: &str, now: u64) -> ThingResult<()> {
        let mut batch = Batch::new();
        batch.put(
            Space::Things,
            key(&["seen", thing]),
            now.to_be_bytes().to_vec(),
        );
        self.store.apply(batch)?;
        Ok(())
    }

    /// A device of `thing` connected: `online` is published when it is the first.
    pub fn connected(&self, thing: &str, now: u64) -> ThingResult<Vec<Effect>> {
        self.require_thing(thing)?;
        let first = {
            let mut online = lock(&self.online);
            let n = online.entry(thing.to_owned()).or_insert(0);
            *n += 1;
            *n == 1
        };
        self.seen(thing, now)?;
        Ok(self.presence_effect(thing, first, true, now))
    }

    /// A device of `thing` went away: `offline` is published when it was the last.
    pub fn disconnected(&self, thing: &str, now: u64) -> ThingResult<Vec<Effect>> {
        let last = {
            let mut online = lock(&self.online);
            match online.get_mut(thing) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    online.remove(thing);
                    true
                }
                None => false,
            }
        };
        self.seen(thing, now)?;
        Ok(self.presence_effect(thing, last, false, now))
    }

    /// A PINGREQ from `thing`: `last_seen` moves, nothing is published.
    pub fn ping(&self, thing: &str, now: u64) -> ThingResult<()> {
        self.seen(thing, now)
    }

    fn presence_effect(&self, thing: &str, changed: bool, online: bool, now: u64) -> Vec<Effect> {
        if !changed {
            return Vec::new();
        }
        vec![Effect::Publish {
            topic: format!("thing/{thing}/status"),
            envelope: presence_envelope(thing, online, now),
            retain: true,
        }]
    }

    /// `person`'s things for its sync roster (docs/THINGS.md section 5): presence and last state;
    /// for an owner, the follow requests and links too.
    pub fn roster(&self, person: &str) -> ThingResult<Vec<Value>> {
        let things = self.graph().things_of(person);
        let mut out = Vec::with_capacity(things.len());
        for (thing, access) in things {
            let state = self.current_state(&thing)?;
            let online = self.is_online(&thing);
            let mut entry = json!({
                "id": thing, "access": access.as_str(),
                "presence": if online { "online" } else { "offline" },
                "last_seen": self.last_seen(&thing)?, "version": state.version,
                "state": state.state,
            });
            if access == Access::Owner {
                let graph = self.graph();
                entry["follow_requests"] = json!(graph.follow_requests(&thing));
                entry["links"] = json!(graph.links_of(&thing));
            }
            out.push(entry);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{claim, sent_to, world};
    use super::*;
    use crate::graph::Rights;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386 section 3 (a selection).
        for (target, patch, result) in [
            (r#"{"a":"b"}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"b":"c"}"#, r#"{"a":"b","b":"c"}"#),
            (r#"{"a":"b"}"#, r#"{"a":null}"#, r#"{}"#),
            (r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#, r#"{"b":"c"}"#),
            (r#"{"a":["b"]}"#, r#"{"a":"c"}"#, r#"{"a":"c"}"#),
            (
                r#"{"a":{"b":"c"}}"#,
                r#"{"a":{"b":"d","c":null}}"#,
                r#"{"a":{"b":"d"}}"#,
            ),
            (r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#, r#"{"a":[1]}"#),
            (r#"["a","b"]"#, r#"["c","d"]"#, r#"["c","d"]"#),
            (r#"{"a":"foo"}"#, r#"null"#, r#"null"#),
            (r#"{"e":null}"#, r#"{"a":1}"#, r#"{"e":null,"a":1}"#),
            (r#"[1,2]"#, r#"{"a":"b","c":null}"#, r#"{"a":"b"}"#),
            (
                r#"{}"#,
                r#"{"a":{"bb":{"ccc":null}}}"#,
                r#"{"a":{"bb":{}}}"#,
            ),
        ] {
            let mut doc: Value = serde_json::from_str(target).unwrap();
            merge_patch(&mut doc, &serde_json::from_str(patch).unwrap());
            assert_eq!(
                doc,
                serde_json::from_str::<Value>(result).unwrap(),
                "{target} + {patch}"
            );
        }
        let old = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": 4});
        let new = json!({"a": 1, "b": {"c": 5, "d": 3}, "f": [1]});
        let diff = merge_patch_diff(&old, &new).unwrap();
        assert_eq!(diff, json!({"b": {"c": 5}, "e": null, "f": [1]}));
        let mut applied = old.clone();
        merge_patch(&mut applied, &diff);
        assert_eq!(applied, new);
        assert_eq!(merge_patch_diff(&new, &new), None);
    }

    #[test]
    fn two_partial_updates_make_one_versioned_document() {
        let w = world(&["alice", "bob"], &["door"]);
        let t = &w.things;
        claim(t, "door", "alice", 1);
        let (doc, effects) = t
            .publish_state("door", br#"{"open":false,"battery":90}"#, false, None, 10)
            .unwrap();
        assert_eq!(doc.unwrap().version, 1);
        let Effect::Publish { topic, retain, .. } = &effects[0] else {
            panic!()
        };
        assert_eq!((topic.as_str(), *retain), ("thing/door/state", true));
        let (doc, effects) = t
            .publish_state(
                "door",
                br#"{"open":true,"lock":{"bolt":1}}"#,
                false,
                None,
                20,
            )
            .unwrap();
        let doc = doc.unwrap();
        assert_eq!(doc.version, 2);
        assert_eq!(
            doc.state,
            json!({"open": true, "battery": 90, "lock": {"bolt": 1}})
        );
        let Effect::Publish { envelope, .. } = &effects[0] else {
            panic!()
        };
        assert_eq!(
            envelope["changed"],
            json!({"open": true, "lock": {"bolt": 1}})
        );
        assert_eq!(envelope["version"], 2);
        // Nothing changed: no version.
        let (doc, effects) = t
            .publish_state("door", br#"{"open":true}"#, false, None, 30)
            .unwrap();
        assert!(doc.is_none() && effects.is_empty());
        // Replace, with the nulls a merge patch cannot keep.
        let (doc, _) = t
            .publish_state("door", br#"{"open":false,"x":null}"#, true, None, 40)
            .unwrap();
        assert_eq!(doc.unwrap().state, json!({"open": false}));
        // Who may see it: the owner and a share, not a stranger.
        assert_eq!(t.state("alice", "door").unwrap().version, 3);
        assert!(t.state("bob", "door").is_err());
        t.share("alice", "door", "bob", Rights::View, 50).unwrap();
        assert_eq!(
            t.state("bob", "door").unwrap().state,
            json!({"open": false})
        );
        assert!(t.publish_state("door", b"[1]", false, None, 60).is_err());
        let big = format!(r#"{{"x":"{}"}}"#, "y".repeat(70_000));
        assert_eq!(
            t.publish_state("door", big.as_bytes(), false, None, 60)
                .unwrap_err()
                .code(),
            "too_large"
        );
        assert_eq!(t.current_state("door").unwrap().version, 3);
    }

    #[test]
    fn events_reach_bound_persons_feeds_and_presence_is_published() {
        let w = world(&["alice", "bob", "carol"], &["door"]);
        let t = &w.things;
        claim(t, "door", "alice", 1);
        t.share("alice", "door", "bob", Rights::View, 2).unwrap();
        let (event, effects) = t.publish_event("door", b"ding", None, 3).unwrap();
        assert_eq!(event["body"], json!({"text": "ding"}));
        assert_eq!(sent_to(&effects, "alice"), ["event"]);
        assert_eq!(sent_to(&effects, "bob"), ["event"]);
        assert!(sent_to(&effects, "carol").is_empty());
        assert_eq!(t.feed_after("bob", 0, 10).unwrap().len(), 1);
        let effects = t.connected("door", 100).unwrap();
        assert!(
            matches!(&effects[0], Effect::Publish { topic, envelope, .. }
            if topic == "thing/door/status" && envelope["presence"] == "online")
        );
        assert!(
            t.connected("door", 110).unwrap().is_empty(),
            "a second device"
        );
        t.ping("door", 150).unwrap();
        assert!(t.disconnected("door", 200).unwrap().is_empty());
        let effects = t.disconnected("door", 210).unwrap();
        assert!(matches!(&effects[0], Effect::Publish { envelope, .. }
            if envelope["presence"] == "offline" && envelope["last_seen"] == 210));
        let roster = t.roster("alice").unwrap();
        assert_eq!(roster[0]["id"], "door");
        assert_eq!(roster[0]["access"], "owner");
        assert_eq!(roster[0]["presence"], "offline");
        assert_eq!(roster[0]["last_seen"], 210);
        assert_eq!(t.roster("bob").unwrap()[0]["access"], "view");
    }
}
