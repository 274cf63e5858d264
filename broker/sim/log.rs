//! What the actors and the plain-topic observer received, in arrival order, and how an
//! expectation is matched against it: an envelope's `type`, a subset of its body, its text.

use std::collections::HashSet;
use std::sync::Mutex;

use serde_json::Value;

use super::scenario::Expect;

/// One received message.
#[derive(Debug, Clone)]
pub struct Entry {
    pub index: usize,
    /// The actor that received it, or [`OBSERVER`] for plain topics.
    pub source: String,
    pub topic: String,
    /// The envelope (JSON), or the payload as a JSON string when it is not JSON.
    pub value: Value,
    /// Virtual time of arrival, ms since the epoch.
    pub at: u64,
}

/// The source name of the plain-topic observer.
pub const OBSERVER: &str = "(mqtt)";

/// Everything received in a scenario.
#[derive(Default)]
pub struct Log {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: Vec<Entry>,
    /// Entries an `expect` matched already: not matched again.
    used: HashSet<usize>,
}

impl Log {
    pub fn push(&self, source: &str, topic: &str, value: Value) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let index = inner.entries.len();
        inner.entries.push(Entry {
            index,
            source: source.to_owned(),
            topic: topic.to_owned(),
            value,
            at: mqtter_engine::clock::now_ms(),
        });
    }

    /// How many entries there are (the index the next one gets).
    pub fn count(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }

    /// The first `n` entries not matched before that `want` matches, marked as matched; none
    /// until there are `n`.
    pub fn take(&self, want: &Expect, n: usize) -> Option<Vec<Entry>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let found: Vec<Entry> = inner
            .entries
            .iter()
            .filter(|e| !inner.used.contains(&e.index) && matches(want, e))
            .take(n)
            .cloned()
            .collect();
        if found.len() < n {
            return None;
        }
        for entry in &found {
            inner.used.insert(entry.index);
        }
        Some(found)
    }

    /// How many entries not matched before `want` matches.
    pub fn available(&self, want: &Expect) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .entries
            .iter()
            .filter(|e| !inner.used.contains(&e.index) && matches(want, e))
            .count()
    }

    /// Mark everything received so far as matched (what a daemon that runs on had queued for
    /// the actors is not this run's).
    pub fn consume_all(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let all: Vec<usize> = inner.entries.iter().map(|e| e.index).collect();
        inner.used.extend(all);
    }

    /// Entries from `from` on that `want` matches.
    pub fn matching_since(&self, want: &Expect, from: usize) -> Vec<Entry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .entries
            .iter()
            .skip(from)
            .filter(|e| matches(want, e))
            .cloned()
            .collect()
    }

    /// What the expectation's source received, not matched before (for a failure's "instead").
    pub fn unmatched_at(&self, want: &Expect) -> Vec<Entry> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .entries
            .iter()
            .filter(|e| !inner.used.contains(&e.index) && same_source(want, e))
            .cloned()
            .collect()
    }
}

fn same_source(want: &Expect, entry: &Entry) -> bool {
    match (&want.actor, &want.topic) {
        (Some(actor), _) => entry.source == *actor,
        (None, Some(filter)) => {
            entry.source == OBSERVER && crate::topic::matches(filter, &entry.topic)
        }
        (None, None) => false,
    }
}

/// Whether `entry` is what `want` describes.
pub fn matches(want: &Expect, entry: &Entry) -> bool {
    if !same_source(want, entry) {
        return false;
    }
    let envelope = &entry.value;
    if let Some(kind) = &want.kind
        && envelope.get("type").and_then(Value::as_str) != Some(kind.as_str())
    {
        return false;
    }
    // The body: the envelope's `body` when it has one (msg, cmd, event), else the envelope.
    let body = envelope.get("body").unwrap_or(envelope);
    if let Some(subset) = &want.body
        && !contains(body, subset)
    {
        return false;
    }
    if let Some(text) = &want.text {
        let found = body
            .get("text")
            .or_else(|| envelope.get("text"))
            .and_then(Value::as_str);
        if found != Some(text.as_str()) {
            return false;
        }
    }
    if let Some(from) = &want.from
        && envelope.get("from").and_then(Value::as_str) != Some(from.as_str())
    {
        return false;
    }
    if let Some(subset) = &want.envelope
        && !contains(envelope, subset)
    {
        return false;
    }
    if let Some(subset) = &want.payload
        && !contains(envelope, subset)
    {
        return false;
    }
    true
}

/// `subset` is in `value`: every key of an object with a matching value (recursively), arrays
/// element by element, numbers by value, anything else equal.
pub fn contains(value: &Value, subset: &Value) -> bool {
    match (value, subset) {
        (Value::Object(have), Value::Object(want)) => want
            .iter()
            .all(|(key, w)| have.get(key).is_some_and(|h| contains(h, w))),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| contains(h, w))
        }
        (Value::Number(h), Value::Number(w)) => h.as_f64() == w.as_f64(),
        (have, want) => have == want,
    }
}

/// A short one-line form of an entry for the output.
pub fn show(entry: &Entry) -> String {
    let mut text = entry.value.to_string();
    if text.len() > 240 {
        let mut cut = 240;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    if entry.source == OBSERVER {
        format!("{} {text}", entry.topic)
    } else {
        format!("{} on {}: {text}", entry.source, entry.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_subset_matches_and_a_difference_does_not() {
        let value = json!({"type": "cmd", "body": {"on": true, "level": 3.0}, "n": [1, 2]});
        assert!(contains(&value, &json!({"body": {"on": true}})));
        assert!(contains(&value, &json!({"body": {"level": 3}})));
        assert!(contains(&value, &json!({"n": [1, 2]})));
        assert!(!contains(&value, &json!({"n": [1]})));
        assert!(!contains(&value, &json!({"body": {"on": false}})));
        assert!(!contains(&value, &json!({"missing": null})));
    }
}
