//! A recording (what `mqtter sim record` saw) turned into a scenario skeleton: the actors seen,
//! each input (what a thing, a person or a plain client did: hop 0 of its chain) as a
//! `publish` step with the recorded gaps as `advance`, and what followed from it (hop 1 and
//! more: a thing's state after a command, a rule's notice or message, a rule's plain publish,
//! the chains the rules' traces show) as `expect` steps, ending with `expect_fired`: how often
//! each rule ran. Replayed against a changed rules folder, the failing steps are the rules
//! that would have fired differently.

use std::collections::{BTreeMap, BTreeSet};

use mqtter_rules::stats::Trace;
use serde_json::{Map, Value, json};

/// One message received while recording.
pub struct Seen {
    /// Wall-clock time of arrival, ms since the epoch.
    pub at: u64,
    pub topic: String,
    /// JSON, or the payload as a JSON string.
    pub payload: Value,
    pub user_properties: Vec<(String, String)>,
    /// Sent by a SUBSCRIBE (what was there before the recording).
    pub retained: bool,
}

/// What a recording holds, ready to be written out.
pub struct Recording {
    pub started: u64,
    pub ended: u64,
    /// The account recorded as (its inbox is a person actor's).
    pub account: Option<String>,
    /// The messages that arrived during the recording (no `$SYS`, nothing retained).
    pub seen: Vec<Seen>,
    /// The rules' runs during the recording, by rule.
    pub traces: Vec<(String, Trace)>,
}

/// Split what arrived into messages and the rules' new runs.
pub fn collect(all: Vec<Seen>, started: u64, ended: u64, account: Option<String>) -> Recording {
    let mut seen = Vec::new();
    let mut runs = BTreeMap::new();
    for message in all {
        if let Some(rule) = message
            .topic
            .strip_prefix("$SYS/mqtter/rules/")
            .and_then(|rest| rest.strip_suffix("/traces"))
        {
            for trace in message
                .payload
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(super::external::trace)
                .filter(|t| t.at >= started)
            {
                let key = (trace.at, rule.to_owned(), trace.chain.clone(), trace.hop);
                runs.insert(key, (rule.to_owned(), trace));
            }
        } else if message.at >= started
            && !message.topic.starts_with('$')
            && !was_there_before(&message)
        {
            seen.push(message);
        }
    }
    Recording {
        started,
        ended,
        account,
        seen,
        traces: runs.into_values().collect(),
    }
}

/// What a SUBSCRIBE sent of what was there before: a retained plain message, a thing's
/// current state document (no `id`: not a change). The things world sends its live states
/// with the retain flag too (they are its retained documents), so the flag alone does not say.
fn was_there_before(message: &Seen) -> bool {
    if message.topic.starts_with("thing/") {
        return message.payload.get("id").is_none();
    }
    message.retained
}

/// A step of the skeleton, at a time.
struct Item {
    at: u64,
    /// Inputs move the clock; what follows them is expected.
    input: bool,
    step: Value,
    /// The chain it belongs to, when it says.
    chain: Option<String>,
}

/// A message's chain id: its envelope's `chain.id`, else the v5 user property `chain-id`.
fn chain_id(seen: &Seen) -> Option<String> {
    seen.payload
        .get("chain")
        .and_then(|c| c.get("id"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            seen.user_properties
                .iter()
                .find(|(k, _)| k == "chain-id")
                .map(|(_, v)| v.clone())
        })
}

/// The hop of a message: its envelope's `chain.hop`, else the v5 user property `chain-hop`.
fn hop(seen: &Seen) -> u64 {
    seen.payload
        .get("chain")
        .and_then(|c| c.get("hop"))
        .and_then(Value::as_u64)
        .or_else(|| {
            seen.user_properties
                .iter()
                .find(|(k, _)| k == "chain-hop")
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What each thing did after a command (its reflex in the replay): the state changes and
/// events of hop 1 and more, the first of each.
#[derive(Default)]
struct Answers {
    state: Option<Value>,
    event: Option<Value>,
    /// The states and events after commands: (chain id, hop, state, event).
    followed: Vec<(String, u64, Option<Value>, Option<Value>)>,
    /// The commands it got (from its audit): (chain id, hop, body, how it answered).
    commands: Vec<(String, u64, Value, Option<String>)>,
}

impl Answers {
    /// Its `on_command`: an entry per command body seen, with the answer and the state and
    /// event that followed it in its chain; last, any other command is answered `ok` (with the
    /// first state seen after a command, when no command was seen at all).
    fn on_command(&self) -> Vec<Value> {
        let mut entries: Vec<Value> = Vec::new();
        let mut bodies: Vec<&Value> = Vec::new();
        for (chain, hop, body, ack) in &self.commands {
            if bodies.contains(&body) {
                continue;
            }
            bodies.push(body);
            let mut entry = Map::new();
            entry.insert("match".into(), body.clone());
            if let Some(ack) = ack {
                entry.insert("ack".into(), json!(ack));
            }
            for (c, h, state, event) in &self.followed {
                if c == chain && *h == hop + 1 {
                    if let Some(state) = state {
                        entry.entry("state").or_insert(state.clone());
                    }
                    if let Some(event) = event {
                        entry.entry("event").or_insert(event.clone());
                    }
                }
            }
            entries.push(Value::Object(entry));
        }
        let mut other = Map::new();
        if self.commands.is_empty() {
            if let Some(state) = &self.state {
                other.insert("state".into(), state.clone());
            }
            if let Some(event) = &self.event {
                other.insert("event".into(), event.clone());
            }
        }
        entries.push(Value::Object(other));
        entries
    }
}

/// How a command was answered, as a reflex's `ack` (`None`: ok, the default).
fn ack_of(entry: &Value) -> Option<String> {
    let result = entry.get("result")?;
    match result.get("kind").and_then(Value::as_str) {
        Some("acked") if result.get("ok").and_then(Value::as_bool) == Some(false) => {
            let why = result
                .get("result")
                .and_then(|r| r.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("failed");
            Some(format!("error: {why}"))
        }
        Some("timeout" | "pending") => Some("none".into()),
        _ => None,
    }
}

/// The scenario text (YAML, each step a line of JSON flow style).
pub fn scenario(recording: &Recording, rules: Option<&str>) -> String {
    let mut items = Vec::new();
    let mut things: BTreeSet<String> = BTreeSet::new();
    let mut persons: BTreeSet<String> = BTreeSet::new();
    let mut answers: BTreeMap<String, Answers> = BTreeMap::new();
    // Who sent a command from a device (a person, or a linked thing).
    let mut commanders: BTreeSet<String> = BTreeSet::new();
    if let Some(account) = &recording.account {
        persons.insert(account.clone());
    }
    let me = recording.account.clone().unwrap_or_default();
    // The chain each input started: its rules' runs come after it, even when the daemon ran
    // them before the recording connection got the input.
    let mut started_by: BTreeMap<String, u64> = BTreeMap::new();
    for seen in &recording.seen {
        let parts: Vec<&str> = seen.topic.split('/').collect();
        let kind = seen.payload.get("type").and_then(Value::as_str);
        let (at, hop) = (seen.at, hop(seen));
        let step = match (parts.as_slice(), kind) {
            (["thing", thing, "state"], Some("state")) => {
                things.insert((*thing).to_owned());
                let changed = seen.payload.get("changed").cloned().unwrap_or(json!({}));
                if hop == 0 {
                    Some((true, json!({"publish": {"as": thing, "state": changed}})))
                } else {
                    let answer = answers.entry((*thing).to_owned()).or_default();
                    answer.state.get_or_insert(changed.clone());
                    let chain = chain_id(seen).unwrap_or_default();
                    answer
                        .followed
                        .push((chain, hop, Some(changed.clone()), None));
                    Some((
                        false,
                        json!({"expect_state": {"thing": thing, "state": changed}}),
                    ))
                }
            }
            (["thing", thing, "event"], Some("event")) => {
                things.insert((*thing).to_owned());
                let mut body = seen.payload.get("body").cloned().unwrap_or(json!({}));
                if let Value::Object(map) = &mut body {
                    map.remove("cmd");
                }
                if hop == 0 {
                    Some((true, json!({"publish": {"as": thing, "event": body}})))
                } else {
                    let answer = answers.entry((*thing).to_owned()).or_default();
                    answer.event.get_or_insert(body.clone());
                    let chain = chain_id(seen).unwrap_or_default();
                    answer.followed.push((chain, hop, None, Some(body)));
                    None
                }
            }
            (["thing", thing, "cmd"], Some("cmd")) => {
                things.insert((*thing).to_owned());
                let body = seen.payload.get("body").cloned().unwrap_or(json!({}));
                let from = seen
                    .payload
                    .get("from")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let chain = chain_id(seen).unwrap_or_default();
                answers
                    .entry((*thing).to_owned())
                    .or_default()
                    .commands
                    .push((chain, hop, body.clone(), ack_of(&seen.payload)));
                if hop == 0 && !from.is_empty() {
                    commanders.insert(from.to_owned());
                    Some((
                        true,
                        json!({"command": {"as": from, "thing": thing, "body": body}}),
                    ))
                } else {
                    Some((
                        false,
                        json!({"expect": {"actor": thing, "type": "cmd", "body": body}}),
                    ))
                }
            }
            (["person", _, "inbox"] | ["group", _], Some("msg")) => {
                let from = seen
                    .payload
                    .get("from")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let body = seen.payload.get("body").cloned().unwrap_or(json!({}));
                let conv = seen
                    .payload
                    .get("conv")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let to = match conv.strip_prefix("group:") {
                    Some(group) => format!("group/{group}"),
                    None => format!(
                        "person/{}/inbox",
                        seen.payload.get("to").and_then(Value::as_str).unwrap_or("")
                    ),
                };
                if from == me || from.is_empty() {
                    None
                } else if hop == 0 {
                    persons.insert(from.to_owned());
                    Some((
                        true,
                        json!({"publish": {"as": from, "to": to, "body": body}}),
                    ))
                } else {
                    Some((
                        false,
                        json!({"expect": {"actor": me, "type": "msg", "from": from, "body": body}}),
                    ))
                }
            }
            (["person", _, "inbox"], Some("notice")) if seen.payload.get("rule").is_some() => {
                let mut want = Map::new();
                want.insert("actor".into(), json!(me));
                want.insert("type".into(), json!("notice"));
                match seen.payload.get("text") {
                    Some(text) => want.insert("text".into(), text.clone()),
                    None => want.insert("envelope".into(), seen.payload.clone()),
                };
                Some((false, json!({ "expect": want })))
            }
            (["person", ..] | ["group", ..] | ["thing", ..], _) => None,
            _ => {
                let payload = seen.payload.clone();
                if hop == 0 {
                    Some((
                        true,
                        json!({"publish": {"topic": seen.topic, "payload": payload}}),
                    ))
                } else {
                    Some((
                        false,
                        json!({"expect": {"topic": seen.topic, "payload": payload}}),
                    ))
                }
            }
        };
        if let Some((input, step)) = step {
            let chain = chain_id(seen);
            if input && let Some(chain) = &chain {
                started_by.insert(chain.clone(), at);
            }
            items.push(Item {
                at,
                input,
                step,
                chain,
            });
        }
    }
    // What followed an input comes after it, even when it reached the recording connection
    // first (a rule's notice can overtake the state report that set it off).
    for item in items.iter_mut().filter(|item| !item.input) {
        if let Some(input) = item.chain.as_ref().and_then(|c| started_by.get(c)) {
            item.at = item.at.max(*input);
        }
    }
    // The chains, each at its first run's time.
    let mut chains: BTreeMap<String, Vec<(u64, u32, String)>> = BTreeMap::new();
    let mut fired: BTreeMap<String, u64> = BTreeMap::new();
    for (rule, trace) in &recording.traces {
        if super::chain::ran(trace) {
            chains.entry(trace.chain.to_string()).or_default().push((
                trace.at,
                trace.hop,
                rule.clone(),
            ));
            *fired.entry(rule.clone()).or_default() += 1;
        }
        for action in &trace.actions {
            if let Some(thing) = action.strip_prefix("command ") {
                let thing = thing.split([':', ' ']).next().unwrap_or(thing);
                things.insert(thing.to_owned());
            }
        }
    }
    for (id, runs) in &mut chains {
        runs.sort();
        let first = runs.iter().map(|r| r.0).min().unwrap_or(0);
        let at = started_by.get(id).map_or(first, |input| first.max(*input));
        // After the messages of the chain that arrived by then.
        let at = at.max(
            items
                .iter()
                .filter(|item| item.chain.as_deref() == Some(id.as_str()))
                .map(|item| item.at)
                .min()
                .unwrap_or(at),
        );
        let mut by_hop = runs.clone();
        by_hop.sort_by_key(|r| (r.1, r.0));
        let links: Vec<String> = by_hop
            .iter()
            .map(|(_, hop, rule)| format!("{rule}@{hop}"))
            .collect();
        items.push(Item {
            at,
            input: false,
            step: json!({ "expect_chain": links }),
            chain: Some(id.clone()),
        });
    }
    // By time; at the same time, an input before what follows from it.
    items.sort_by_key(|item| (item.at, !item.input));
    let mut out = String::new();
    out.push_str(&format!(
        "# Recorded by `mqtter sim record` from {} to {} ({} messages, {} rule runs).\n\
         # Replay: mqtter sim THIS-FILE --rules DIR (docs/SIMULATOR.md, \"Record and replay\").\n",
        rfc3339(recording.started),
        rfc3339(recording.ended),
        recording.seen.len(),
        recording.traces.len()
    ));
    out.push_str(&format!("name: recorded {}\n", rfc3339(recording.started)));
    if let Some(rules) = rules {
        out.push_str(&format!("rules: {}\n", Value::String(rules.to_owned())));
    }
    out.push_str(&format!("start: {}\n", rfc3339(recording.started)));
    for commander in commanders {
        if !things.contains(&commander) {
            persons.insert(commander);
        }
    }
    out.push_str(if persons.is_empty() && things.is_empty() {
        "actors: []\n"
    } else {
        "actors:\n"
    });
    for person in &persons {
        out.push_str(&format!("  - {}\n", json!({ "person": person })));
    }
    for thing in &things {
        let on_command = answers
            .get(thing)
            .map_or_else(|| vec![json!({})], Answers::on_command);
        out.push_str(&format!(
            "  - {}\n",
            json!({ "thing": thing, "on_command": on_command })
        ));
    }
    out.push_str("steps:\n");
    let mut now = recording.started;
    for item in &items {
        // Inputs keep their gaps; what follows an input is waited for only when it came later
        // than a second after it (an `after` timer, a schedule).
        let gap = item.at.saturating_sub(now);
        if item.input || gap >= 1000 {
            if gap > 0 {
                out.push_str(&format!(
                    "  - {}\n",
                    json!({ "advance": format!("{gap}ms") })
                ));
            }
            now = item.at.max(now);
        }
        out.push_str(&format!("  - {}\n", item.step));
    }
    let fired: Map<String, Value> = fired.into_iter().map(|(r, n)| (r, json!(n))).collect();
    out.push_str(&format!(
        "  - {}\n",
        json!({ "expect_fired": Value::Object(fired) })
    ));
    out
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(at: u64, topic: &str, payload: Value) -> Seen {
        Seen {
            at,
            topic: topic.into(),
            payload,
            user_properties: Vec::new(),
            retained: false,
        }
    }

    #[test]
    fn an_empty_recording_is_a_scenario_that_parses() {
        let recording = Recording {
            started: 1_000,
            ended: 2_000,
            account: None,
            seen: Vec::new(),
            traces: Vec::new(),
        };
        let text = scenario(&recording, None);
        let parsed = crate::sim::scenario::Scenario::parse(std::path::Path::new("x"), &text);
        assert!(parsed.is_ok(), "{text}");
    }

    #[test]
    fn inputs_become_publishes_and_what_followed_expectations() {
        let trace = |at, chain: &str, hop| Trace {
            at,
            trigger: "state".into(),
            event: "state hall-light".into(),
            chain: chain.into(),
            hop,
            condition: None,
            actions: vec!["notify alice".into()],
            micros: 1,
            outcome: mqtter_rules::stats::Outcome::Ok,
        };
        let recording = Recording {
            started: 1_000,
            ended: 9_000,
            account: Some("alice".into()),
            seen: vec![
                seen(
                    3_000,
                    "thing/hall-light/state",
                    json!({"type": "state", "id": "thing:hall-light#3", "changed": {"on": true},
                        "chain": {"id": "thing:hall-light#3", "hop": 0}}),
                ),
                seen(
                    2_990,
                    "person/alice/inbox",
                    json!({"type": "notice", "rule": "light-on", "text": "on",
                        "chain": {"id": "thing:hall-light#3", "hop": 1}}),
                ),
                seen(5_000, "sensors/t", json!(21)),
            ],
            traces: vec![("light-on".into(), trace(2_999, "thing:hall-light#3", 0))],
        };
        let text = scenario(&recording, Some(".."));
        let steps: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "steps:")
            .skip(1)
            .collect();
        assert_eq!(
            steps,
            vec![
                r#"  - {"advance":"2000ms"}"#,
                r#"  - {"publish":{"as":"hall-light","state":{"on":true}}}"#,
                r#"  - {"expect":{"actor":"alice","text":"on","type":"notice"}}"#,
                r#"  - {"expect_chain":["light-on@0"]}"#,
                r#"  - {"advance":"2000ms"}"#,
                r#"  - {"publish":{"payload":21,"topic":"sensors/t"}}"#,
                r#"  - {"expect_fired":{"light-on":1}}"#,
            ],
            "{text}"
        );
        assert!(text.contains("start: 1970-01-01T00:00:01.000Z\n"), "{text}");
        assert!(text.contains(r#"  - {"person":"alice"}"#), "{text}");
        assert!(
            text.contains(r#"  - {"on_command":[{}],"thing":"hall-light"}"#),
            "{text}"
        );
        assert!(text.contains("rules: \"..\"\n"), "{text}");
    }
}
