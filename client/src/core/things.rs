//! The things world's envelopes (docs/PROTOCOL.md section 10): commands a thing receives, the
//! outcomes of one's own commands, state documents, events, things' presence, a person's list of
//! things. Each command and each feed entry is yielded once (a resend after a reconnect is
//! dropped); a command's outcome also goes to the call waiting for it.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::warn;

use super::Core;
use crate::things::{
    Command, CommandAck, CommandTimeout, Outcome, ThingEntry, ThingEvent, ThingState,
};
use crate::types::{Event, Presence};

/// How many command ids and feed numbers are remembered for dedup.
const REMEMBER: usize = 4096;

/// A call waiting for the outcome of the command `(thing, cid)`.
pub(crate) struct Waiter {
    pub thing: String,
    pub cid: String,
    pub reply: oneshot::Sender<Outcome>,
}

/// What the things world's part of the core remembers.
#[derive(Default)]
pub(super) struct Seen {
    waiters: HashMap<(String, String), oneshot::Sender<Outcome>>,
    /// Commands (by id) and feed entries (by number) already yielded, oldest first.
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    pub(super) fn wait(&mut self, waiter: Waiter) {
        self.waiters.retain(|_, w| !w.is_closed());
        self.waiters
            .insert((waiter.thing, waiter.cid), waiter.reply);
    }

    /// False when `key` was seen before.
    fn first(&mut self, key: String) -> bool {
        if !self.ids.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > REMEMBER
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        true
    }

    fn settle(&mut self, thing: &str, cid: Option<&str>, outcome: Outcome) {
        if let Some(cid) = cid
            && let Some(reply) = self.waiters.remove(&(thing.to_owned(), cid.to_owned()))
        {
            let _ = reply.send(outcome);
        }
    }
}

fn parse<T: DeserializeOwned>(kind: &str, json: &Value) -> Option<T> {
    match serde_json::from_value(json.clone()) {
        Ok(t) => Some(t),
        Err(err) => {
            warn!(%err, kind, "a things envelope of another shape");
            None
        }
    }
}

impl Core {
    /// A things envelope is handled here (true), anything else by the IM side (false).
    pub(super) fn on_thing_envelope(&mut self, kind: &str, topic: &str, json: &Value) -> bool {
        let from_thing_topic = topic.starts_with("thing/");
        let feed = json.get("feed").and_then(Value::as_u64);
        if let Some(n) = feed
            && matches!(kind, "cmd.ack" | "cmd.timeout" | "event")
            && !self.things.first(format!("feed:{n}"))
        {
            return true;
        }
        match kind {
            "cmd" if from_thing_topic => {
                if let Some(cmd) = parse::<Command>(kind, json)
                    && self.things.first(format!("cmd:{}", cmd.id))
                {
                    self.emit(Event::Command(cmd));
                }
            }
            "cmd.ack" => {
                if let Some(ack) = parse::<CommandAck>(kind, json) {
                    let outcome = Outcome::Acked(ack.clone());
                    self.things.settle(&ack.thing, ack.cid.as_deref(), outcome);
                    self.emit(Event::CommandAck(ack));
                }
            }
            "cmd.timeout" => {
                if let Some(timeout) = parse::<CommandTimeout>(kind, json) {
                    let outcome = Outcome::TimedOut(timeout.clone());
                    let cid = timeout.cid.clone();
                    self.things.settle(&timeout.thing, cid.as_deref(), outcome);
                    self.emit(Event::CommandTimeout(timeout));
                }
            }
            "state" if from_thing_topic => {
                if let Some(state) = parse::<ThingState>(kind, json) {
                    self.update_thing(&state.thing, |t| {
                        t.version = state.version;
                        t.state = state.state.clone();
                    });
                    self.emit(Event::ThingState(state));
                }
            }
            "event" => {
                if let Some(event) = parse::<ThingEvent>(kind, json) {
                    self.emit(Event::ThingEvent(event));
                }
            }
            "presence" if from_thing_topic => {
                if let Some(presence) = parse::<Presence>(kind, json) {
                    self.update_thing(&presence.id, |t| {
                        t.presence = presence.presence.clone();
                        t.last_seen = presence.last_seen.or(t.last_seen);
                    });
                    self.emit(Event::ThingPresence(presence));
                }
            }
            "things" => {
                let things: Vec<ThingEntry> = parse(kind, &json["things"]).unwrap_or_default();
                self.view
                    .roster
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .things = things.clone();
                self.emit(Event::Things(things));
            }
            "feed.done" => {
                let last = json.get("last").and_then(Value::as_u64).unwrap_or(0);
                self.emit(Event::FeedDone { last });
            }
            _ => return false,
        }
        true
    }

    fn update_thing(&self, thing: &str, change: impl FnOnce(&mut ThingEntry)) {
        let mut roster = self.view.roster.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = roster.things.iter_mut().find(|t| t.id == thing) {
            change(t);
        }
    }
}
