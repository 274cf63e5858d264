//! A virtual thing: a device of the thing's account (plain MQTT 5) that runs its reflex, the
//! shared reflex format (docs/CLIENT.md): the `state` it reports after connecting, the first
//! `on_command` entry whose `match` the command's body contains (after its `delay`, on the
//! virtual clock: the ack, then the state report and the event, which continue the command's
//! chain), and the periodic reports of `every`. Everything it receives is in the log.
//!
//! The simulator's own runner covers the declarative keys; `script:` / `do:` (Rhai) are
//! refused when the scenario is loaded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::log::{Log, contains};
use super::mqtt::{Conn, Login};
use super::scenario::{Every, OnCommand, ThingActor, duration};

/// A thing's behaviour, checked at load.
#[derive(Clone)]
pub struct Reflex {
    pub state: Option<Value>,
    pub on_command: Vec<OnCommand>,
    pub every: Vec<(std::time::Duration, Every)>,
}

impl Reflex {
    /// From a thing actor's inline keys, or its reflex file (relative to `base`).
    pub fn load(actor: &ThingActor, base: &std::path::Path) -> anyhow::Result<Reflex> {
        let (state, on_command, every) = match &actor.reflex {
            Some(file) => {
                let path = base.join(file);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read the reflex {}", path.display()))?;
                let parsed = super::scenario::Scenario::parse_reflex(&path, &text)?;
                if parsed.thing != actor.thing {
                    bail!(
                        "{}: the reflex is for thing {}, the actor is {}",
                        path.display(),
                        parsed.thing,
                        actor.thing
                    );
                }
                (parsed.state, parsed.on_command, parsed.every)
            }
            None => (
                actor.state.clone(),
                actor.on_command.clone(),
                actor.every.clone(),
            ),
        };
        for entry in &on_command {
            if entry.script.is_some() || entry.code.is_some() {
                bail!(
                    "thing {}: `script`/`do` in on_command is not supported by the simulator \
                     (use match/delay/ack/state/event)",
                    actor.thing
                );
            }
            if let Some(delay) = &entry.delay {
                duration(delay)?;
            }
            if let Some(ack) = &entry.ack {
                parse_ack(ack)?;
            }
        }
        let mut periodic = Vec::new();
        for entry in every {
            if entry.script.is_some() || entry.code.is_some() {
                bail!(
                    "thing {}: `script`/`do` in every is not supported by the simulator",
                    actor.thing
                );
            }
            periodic.push((duration(&entry.interval)?, entry));
        }
        Ok(Reflex {
            state,
            on_command,
            every: periodic,
        })
    }
}

/// What an `ack:` says.
enum Ack {
    Ok,
    Error(String),
    None,
}

fn parse_ack(text: &str) -> anyhow::Result<Ack> {
    match text.trim() {
        "ok" => Ok(Ack::Ok),
        "none" => Ok(Ack::None),
        other => match other.strip_prefix("error:") {
            Some(message) => Ok(Ack::Error(message.trim().to_owned())),
            None => bail!("ack {other:?}: ok, none or \"error: <message>\""),
        },
    }
}

/// Answers to the thing's own requests (`$things/req`), by request id, while awaited.
type Awaited = Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<Value>>>>;

/// A connected thing and its reflex's tasks.
pub struct Thing {
    pub id: String,
    password: String,
    host: String,
    port: u16,
    reflex: Reflex,
    awaited: Awaited,
    requests: std::sync::atomic::AtomicU64,
    conn: Option<Arc<Conn>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Thing {
    pub fn new(id: &str, password: &str, (host, port): (&str, u16), reflex: Reflex) -> Thing {
        Thing {
            id: id.to_owned(),
            password: password.to_owned(),
            host: host.to_owned(),
            port,
            reflex,
            awaited: Awaited::default(),
            requests: std::sync::atomic::AtomicU64::new(0),
            conn: None,
            tasks: Vec::new(),
        }
    }

    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Connect, report the reflex's `state`, start its `every` reports.
    pub async fn connect(&mut self, log: &Arc<Log>) -> anyhow::Result<()> {
        if self.conn.is_some() {
            bail!("{} is connected already", self.id);
        }
        let login = Login {
            host: self.host.clone(),
            port: self.port,
            client_id: self.id.clone(),
            credentials: Some((self.id.clone(), self.password.clone())),
            no_sync: false,
        };
        let (commands_tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let (log2, me) = (log.clone(), self.id.clone());
        let cmd_topic = format!("thing/{}/cmd", self.id);
        let awaited = self.awaited.clone();
        let conn = Conn::connect(&login, move |incoming| {
            let value = serde_json::from_slice::<Value>(&incoming.payload).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&incoming.payload).into_owned())
            });
            // The answer to a request of the simulator's own is not something the thing got.
            if value.get("type").and_then(Value::as_str) == Some("res")
                && let Some(id) = value.get("id").and_then(Value::as_str)
                && let Some(waiter) = awaited.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
            {
                let _ = waiter.send(value);
                return;
            }
            log2.push(&me, &incoming.topic, value.clone());
            if incoming.topic == cmd_topic {
                let _ = commands_tx.send(value);
            }
        })
        .await?;
        let conn = Arc::new(conn);
        self.conn = Some(conn.clone());
        if let Some(state) = &self.reflex.state {
            self.report_state(state.clone(), None).await?;
        }
        let (id, on_command) = (self.id.clone(), Arc::new(self.reflex.on_command.clone()));
        let answering = conn.clone();
        self.tasks.push(tokio::spawn(async move {
            while let Some(cmd) = commands.recv().await {
                let (conn, id, on_command) = (answering.clone(), id.clone(), on_command.clone());
                tokio::spawn(async move {
                    if let Err(err) = answer(&conn, &id, &on_command, &cmd).await {
                        tracing::warn!(thing = %id, cause = %err, "the thing could not answer");
                    }
                });
            }
        }));
        for (interval, every) in self.reflex.every.clone() {
            let (conn, id) = (conn.clone(), self.id.clone());
            self.tasks.push(tokio::spawn(async move {
                let clock = mqtter_engine::clock::clock();
                let step = u64::try_from(interval.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let mut at = clock.now_ms();
                loop {
                    at = at.saturating_add(step);
                    clock.sleep_until_ms(at).await;
                    if let Err(err) =
                        report(&conn, &id, every.state.clone(), every.event.clone(), None).await
                    {
                        tracing::warn!(thing = %id, cause = %err, "a periodic report failed");
                    }
                }
            }));
        }
        Ok(())
    }

    pub async fn disconnect(&mut self) -> anyhow::Result<()> {
        let Some(conn) = self.conn.take() else {
            bail!("{} is not connected", self.id);
        };
        for task in self.tasks.drain(..) {
            task.abort();
        }
        conn.close().await;
        Ok(())
    }

    /// The thing's state document as the daemon has it (`thing.state`, answered on the
    /// thing's inbox).
    pub async fn read_state(&self) -> anyhow::Result<Value> {
        let conn = self.conn()?;
        let n = self
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("sim-state-{n}");
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.awaited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), tx);
        let request = json!({"id": id, "op": "thing.state", "thing": self.id});
        conn.publish(
            "$things/req",
            request.to_string().into_bytes(),
            false,
            Vec::new(),
        )
        .await?;
        let answer = tokio::time::timeout(super::mqtt::PATIENCE, rx)
            .await
            .map_err(|_| anyhow::anyhow!("no answer to thing.state for {}", self.id))?
            .map_err(|_| anyhow::anyhow!("no answer to thing.state for {}", self.id))?;
        if answer.get("ok").and_then(Value::as_bool) != Some(true) {
            bail!("thing.state for {} refused: {answer}", self.id);
        }
        Ok(answer.get("state").cloned().unwrap_or(Value::Null))
    }

    /// A state report (a merge patch) as the thing; `cmd` names the command it follows from.
    pub async fn report_state(&self, state: Value, cmd: Option<&str>) -> anyhow::Result<()> {
        let conn = self.conn()?;
        report(conn, &self.id, Some(state), None, cmd).await
    }

    pub async fn report_event(&self, event: Value) -> anyhow::Result<()> {
        let conn = self.conn()?;
        report(conn, &self.id, None, Some(event), None).await
    }

    /// Any PUBLISH as the thing (a command to a linked thing, a plain topic).
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        user_properties: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        self.conn()?
            .publish(topic, payload, retain, user_properties)
            .await
    }

    fn conn(&self) -> anyhow::Result<&Arc<Conn>> {
        match &self.conn {
            Some(conn) => Ok(conn),
            None => bail!("{} is not connected", self.id),
        }
    }
}

/// The state report and the event of a reflex entry, continuing the command `cmd`'s chain.
async fn report(
    conn: &Conn,
    thing: &str,
    state: Option<Value>,
    event: Option<Value>,
    cmd: Option<&str>,
) -> anyhow::Result<()> {
    let follows = cmd
        .map(|id| vec![("cmd-id".to_owned(), id.to_owned())])
        .unwrap_or_default();
    if let Some(state) = state {
        let topic = format!("thing/{thing}/state");
        conn.publish(&topic, state.to_string().into_bytes(), false, follows)
            .await?;
    }
    if let Some(mut event) = event {
        if let (Some(id), Value::Object(map)) = (cmd, &mut event) {
            map.insert("cmd".into(), json!(id));
        }
        let topic = format!("thing/{thing}/event");
        conn.publish(&topic, event.to_string().into_bytes(), false, Vec::new())
            .await?;
    }
    Ok(())
}

/// A command arrived: the first matching entry's delay, ack, state and event.
async fn answer(
    conn: &Conn,
    thing: &str,
    on_command: &[OnCommand],
    cmd: &Value,
) -> anyhow::Result<()> {
    let id = cmd.get("id").and_then(Value::as_str).unwrap_or_default();
    let body = cmd.get("body").cloned().unwrap_or(Value::Null);
    let found = on_command
        .iter()
        .find(|entry| entry.matches.as_ref().is_none_or(|m| contains(&body, m)));
    let ack_topic = format!("thing/{thing}/ack");
    let Some(entry) = found else {
        let answer = json!({"id": id, "ok": false, "result": {"error": "unsupported"}});
        return conn
            .publish(
                &ack_topic,
                answer.to_string().into_bytes(),
                false,
                Vec::new(),
            )
            .await;
    };
    if let Some(delay) = &entry.delay {
        mqtter_engine::clock::clock().sleep(duration(delay)?).await;
    }
    let ack = match &entry.ack {
        Some(text) => parse_ack(text)?,
        None => Ack::Ok,
    };
    let answer = match ack {
        Ack::Ok => Some(json!({"id": id, "ok": true, "result": body})),
        Ack::Error(message) => Some(json!({"id": id, "ok": false, "result": {"error": message}})),
        Ack::None => None,
    };
    if let Some(answer) = answer {
        conn.publish(
            &ack_topic,
            answer.to_string().into_bytes(),
            false,
            Vec::new(),
        )
        .await?;
    }
    let state = entry.state.as_ref().map(|s| substitute(s, &body));
    let event = entry.event.as_ref().map(|e| substitute(e, &body));
    report(conn, thing, state, event, Some(id)).await
}

/// `"$command.<field>"` values replaced by the command body's field.
fn substitute(template: &Value, body: &Value) -> Value {
    match template {
        Value::String(text) => match text.strip_prefix("$command.") {
            Some(field) => body.get(field).cloned().unwrap_or(Value::Null),
            None => template.clone(),
        },
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, body)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, body)).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_fields_are_substituted() {
        let body = json!({"mode": "eco", "level": 2});
        let got = substitute(
            &json!({"mode": "$command.mode", "n": ["$command.level"], "x": 1}),
            &body,
        );
        assert_eq!(got, json!({"mode": "eco", "n": [2], "x": 1}));
    }
}
