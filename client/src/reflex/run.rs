//! Running a reflex: report the initial state, answer each command with the first entry that
//! matches it (after its delay, on the caller's timer), run the `every:` entries on their
//! intervals, and tell an observer what was done.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tracing::{info, warn};

use super::load::{AckSpec, Behaviour, Every, OnCommand, Spec};
use super::{Observer, ReflexAction, ReflexTimer};
use crate::client::EventStream;
use crate::things::{Ack, Command, ThingClient};
use crate::types::Event;

/// What one run shares between the command loop and the `every:` tasks.
#[derive(Clone)]
pub(super) struct Runner {
    pub spec: Arc<Spec>,
    pub thing: ThingClient,
    pub timer: Arc<dyn ReflexTimer>,
    pub observer: Option<Observer>,
    /// The state document as this thing reported it (merge patches applied).
    pub state: Arc<Mutex<Value>>,
}

/// RFC 7386: apply `patch` to `doc`.
pub(super) fn merge(doc: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let map = doc.as_object_mut().expect("an object");
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Whether `body` holds everything `pattern` says (maps: each key, recursively).
pub(super) fn matches(pattern: &Value, body: &Value) -> bool {
    match (pattern, body) {
        (Value::Object(p), Value::Object(b)) => p
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|bv| matches(v, bv))),
        _ => pattern == body,
    }
}

/// `"$command.a.b"` is the command body's field `a.b` (`null` when absent), `"$command"` the
/// whole body; everything else stays as written.
pub(super) fn fill(template: &Value, body: &Value) -> Value {
    match template {
        Value::String(s) if s == "$command" => body.clone(),
        Value::String(s) if s.starts_with("$command.") => {
            let mut at = body;
            for part in s["$command.".len()..].split('.') {
                at = at.get(part).unwrap_or(&Value::Null);
            }
            at.clone()
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill(v, body)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, body)).collect()),
        other => other.clone(),
    }
}

/// What an entry (or its script) says to do.
struct Response {
    ack: AckSpec,
    result: Value,
    state: Option<Value>,
    event: Option<Value>,
}

impl Runner {
    pub(super) async fn run(self, mut events: EventStream) {
        if let Some(state) = self.spec.state.clone() {
            let done = self.thing.report_state(state.clone()).await;
            self.apply_state(&state);
            self.tell(ReflexAction {
                command_id: None,
                ack: None,
                state: Some(state),
                event: None,
                error: done.err().map(|e| e.to_string()),
            });
        }
        let tickers: Vec<_> = self
            .spec
            .every
            .iter()
            .cloned()
            .map(|every| tokio::spawn(self.clone().tick(every)))
            .collect();
        while let Some(event) = events.next().await {
            match event {
                Event::Command(cmd) => self.on_command(cmd).await,
                Event::Disconnected { reason, retry_in } => {
                    info!(thing = self.thing.id(), %reason, ?retry_in, "disconnected; reconnecting");
                    if let Some(observer) = &self.observer {
                        observer.disconnected(&reason, retry_in);
                    }
                }
                _ => {}
            }
        }
        for ticker in tickers {
            ticker.abort();
        }
    }

    fn tell(&self, action: ReflexAction) {
        if let Some(error) = &action.error {
            warn!(thing = self.thing.id(), command = ?action.command_id, %error, "reflex");
        }
        if let Some(observer) = &self.observer {
            observer.did(action);
        }
    }

    fn apply_state(&self, patch: &Value) {
        merge(
            &mut self.state.lock().unwrap_or_else(|e| e.into_inner()),
            patch,
        );
    }

    fn current_state(&self) -> Value {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn on_command(&self, cmd: Command) {
        if let Some(observer) = &self.observer {
            observer.received(&cmd);
        }
        let entry = self
            .spec
            .on_command
            .iter()
            .find(|e| e.matches.as_ref().is_none_or(|m| matches(m, &cmd.body)));
        let response = match entry {
            None => Response {
                ack: AckSpec::Error("unsupported".into()),
                result: Value::Null,
                state: None,
                event: None,
            },
            Some(entry) => {
                if !entry.delay.is_zero() {
                    self.timer.sleep(entry.delay).await;
                }
                self.respond(entry, &cmd)
            }
        };
        let mut errors = Vec::new();
        let ack = match response.ack {
            AckSpec::None => None,
            AckSpec::Ok => Some(Ack::ok(response.result)),
            AckSpec::Error(message) => Some(Ack::error(&message)),
        };
        if let Some(ack) = &ack
            && let Err(err) = self.thing.ack(&cmd, ack.clone()).await
        {
            errors.push(format!("ack: {err}"));
        }
        if let Some(state) = &response.state {
            match self.thing.report_state_after(&cmd.id, state.clone()).await {
                Ok(()) => self.apply_state(state),
                Err(err) => errors.push(format!("state: {err}")),
            }
        }
        if let Some(event) = &response.event
            && let Err(err) = self.thing.event_after(&cmd.id, event.clone()).await
        {
            errors.push(format!("event: {err}"));
        }
        self.tell(ReflexAction {
            command_id: Some(cmd.id),
            ack,
            state: response.state,
            event: response.event,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        });
    }

    fn respond(&self, entry: &OnCommand, cmd: &Command) -> Response {
        match &entry.behaviour {
            Behaviour::Fixed { ack, state, event } => Response {
                ack: ack.clone(),
                result: Value::Null,
                state: state.as_ref().map(|s| fill(s, &cmd.body)),
                event: event.as_ref().map(|e| fill(e, &cmd.body)),
            },
            Behaviour::Script(script) => {
                let meta = serde_json::json!({
                    "id": cmd.id, "from": cmd.from, "ttl": cmd.ttl, "ts": cmd.ts,
                });
                let state = self.current_state();
                let vars = [("command", &cmd.body), ("meta", &meta), ("state", &state)];
                match self.spec.scripts.run(script, &vars) {
                    Ok(out) => script_response(&out, true)
                        .unwrap_or_else(|message| failed(&format!("{}: {message}", script.name))),
                    Err(message) => failed(&format!("{}: {message}", script.name)),
                }
            }
        }
    }

    async fn tick(self, every: Every) {
        let mut tick = 0u64;
        loop {
            self.timer.sleep(every.interval).await;
            tick += 1;
            let response = match &every.behaviour {
                Behaviour::Fixed { state, event, .. } => Response {
                    ack: AckSpec::None,
                    result: Value::Null,
                    state: state.clone(),
                    event: event.clone(),
                },
                Behaviour::Script(script) => {
                    let state = self.current_state();
                    let tick = Value::from(tick);
                    let vars = [("state", &state), ("tick", &tick)];
                    match self
                        .spec
                        .scripts
                        .run(script, &vars)
                        .and_then(|out| script_response(&out, false))
                    {
                        Ok(response) => response,
                        Err(message) => {
                            self.tell(ReflexAction {
                                error: Some(format!("{}: {message}", script.name)),
                                ..ReflexAction::default()
                            });
                            continue;
                        }
                    }
                }
            };
            let mut errors = Vec::new();
            if let Some(state) = &response.state {
                match self.thing.report_state(state.clone()).await {
                    Ok(()) => self.apply_state(state),
                    Err(err) => errors.push(format!("state: {err}")),
                }
            }
            if let Some(event) = &response.event
                && let Err(err) = self.thing.event(event.clone()).await
            {
                errors.push(format!("event: {err}"));
            }
            if response.state.is_some() || response.event.is_some() || !errors.is_empty() {
                self.tell(ReflexAction {
                    command_id: None,
                    ack: None,
                    state: response.state,
                    event: response.event,
                    error: (!errors.is_empty()).then(|| errors.join("; ")),
                });
            }
        }
    }
}

fn failed(message: &str) -> Response {
    Response {
        ack: AckSpec::Error(message.to_owned()),
        result: Value::Null,
        state: None,
        event: None,
    }
}

/// A script's value: `()` (ack ok), or a map with the optional keys `ack` (`"ok"`, `"none"`,
/// `"error: ..."`; `"ok"` when absent), `result` (the ack's result), `state` and `event` (maps).
fn script_response(out: &Value, command: bool) -> Result<Response, String> {
    let mut response = Response {
        ack: if command { AckSpec::Ok } else { AckSpec::None },
        result: Value::Null,
        state: None,
        event: None,
    };
    let map = match out {
        Value::Null => return Ok(response),
        Value::Object(map) => map,
        other => {
            return Err(format!(
                "a script returns a map (`#{{ ack: \"ok\" }}`), not {other}"
            ));
        }
    };
    for (key, value) in map {
        match key.as_str() {
            "ack" if command => {
                response.ack = value.as_str().and_then(AckSpec::parse).ok_or_else(|| {
                    format!("`ack` is \"ok\", \"none\" or \"error: ...\", not {value}")
                })?;
            }
            "result" if command => response.result = value.clone(),
            "state" | "event" if value.is_null() => {}
            "state" | "event" if !value.is_object() => {
                return Err(format!("`{key}` is a map, not {value}"));
            }
            "state" => response.state = Some(value.clone()),
            "event" => response.event = Some(value.clone()),
            other => return Err(format!("a script's map has no key `{other}`")),
        }
    }
    Ok(response)
}
