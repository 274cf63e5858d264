//! A virtual thing: a device of the thing's account (`THING:sim`, a `mqtter-client`
//! [`ThingClient`]) running its reflex with the client library's runner
//! ([`mqtter_client::Reflex`], the format of docs/CLIENT.md, Rhai included) on the virtual
//! clock ([`VirtualTimer`]). Everything the thing receives is in the log (a tee of its event
//! stream); for plain topics and commands to linked things it has a second connection without
//! sync, opened on first use.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use mqtter_client::{Event, Options, Reflex, ReflexTimer, ThingClient};
use serde_json::{Map, Value, json};

use super::log::Log;
use super::mqtt::{Conn, Login, PATIENCE};
use super::person::envelope;
use super::scenario::{Every, OnCommand, ThingActor};

/// The device name of the simulator's thing connections.
const DEVICE: &str = "sim";

/// A reflex's delays and intervals on the process's clock: virtual in-process (a scenario's
/// `advance` fires them), real in external mode.
pub struct VirtualTimer;

impl ReflexTimer for VirtualTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(mqtter_engine::clock::clock().sleep(duration))
    }
}

/// A thing actor's reflex: its reflex file (relative to `base`), or its inline keys (their
/// `script:` files relative to `base`).
pub fn load_reflex(actor: &ThingActor, base: &Path) -> anyhow::Result<Reflex> {
    let Some(file) = &actor.reflex else {
        let text = inline_reflex(actor).to_string();
        return Reflex::from_yaml(&text, base)
            .map_err(|err| anyhow!("thing {}: {}", actor.thing, err.message));
    };
    if actor.state.is_some() || !actor.on_command.is_empty() || !actor.every.is_empty() {
        bail!(
            "thing {}: `reflex:` names a file; give `state`, `on_command` and `every` there, \
             not beside it",
            actor.thing
        );
    }
    let reflex = Reflex::from_file(base.join(file)).map_err(|err| anyhow!("{err}"))?;
    if reflex.thing() != actor.thing {
        bail!(
            "{}: the reflex is for thing {}, the actor is {}",
            base.join(file).display(),
            reflex.thing(),
            actor.thing
        );
    }
    Ok(reflex)
}

/// The actor's inline keys as a reflex file's (JSON is YAML).
fn inline_reflex(actor: &ThingActor) -> Value {
    fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
        if let Some(value) = value {
            map.insert(key.to_owned(), value);
        }
    }
    let text = |s: &Option<String>| s.clone().map(Value::String);
    let on_command = |e: &OnCommand| {
        let mut map = Map::new();
        put(&mut map, "match", e.matches.clone());
        put(&mut map, "delay", text(&e.delay));
        put(&mut map, "ack", text(&e.ack));
        put(&mut map, "state", e.state.clone());
        put(&mut map, "event", e.event.clone());
        put(&mut map, "script", text(&e.script));
        put(&mut map, "do", text(&e.code));
        Value::Object(map)
    };
    let every = |e: &Every| {
        let mut map = Map::new();
        map.insert("interval".into(), Value::String(e.interval.clone()));
        put(&mut map, "state", e.state.clone());
        put(&mut map, "event", e.event.clone());
        put(&mut map, "script", text(&e.script));
        put(&mut map, "do", text(&e.code));
        Value::Object(map)
    };
    let mut map = Map::new();
    map.insert("thing".into(), json!(actor.thing));
    put(&mut map, "state", actor.state.clone());
    map.insert(
        "on_command".into(),
        actor.on_command.iter().map(on_command).collect(),
    );
    map.insert("every".into(), actor.every.iter().map(every).collect());
    Value::Object(map)
}

/// A thing actor: its device while connected, and its reflex's run.
pub struct Thing {
    pub id: String,
    password: String,
    host: String,
    port: u16,
    reflex: Reflex,
    client: Option<ThingClient>,
    run: Option<tokio::task::JoinHandle<()>>,
    /// Plain topics and commands (`THING:sim-mqtt`, no sync), opened on first use.
    raw: Option<Conn>,
}

impl Thing {
    pub fn new(id: &str, password: &str, (host, port): (&str, u16), reflex: Reflex) -> Thing {
        Thing {
            id: id.to_owned(),
            password: password.to_owned(),
            host: host.to_owned(),
            port,
            reflex,
            client: None,
            run: None,
            raw: None,
        }
    }

    pub fn connected(&self) -> bool {
        self.client.is_some()
    }

    /// Connect, and start the reflex: it reports its `state` (done before this returns, so a
    /// step after it sees it), then answers commands and runs its `every` entries.
    pub async fn connect(&mut self, log: &Arc<Log>) -> anyhow::Result<()> {
        if self.client.is_some() {
            bail!("{} is connected already", self.id);
        }
        let opts = Options::new(&self.host, self.port, &self.id, &self.password, DEVICE);
        let (client, events) = tokio::time::timeout(PATIENCE, ThingClient::connect(opts))
            .await
            .map_err(|_| anyhow!("{} got no CONNACK in {PATIENCE:?}", self.id))?
            .map_err(|err| anyhow!("{} cannot connect: {err}", self.id))?;
        let (log, me) = (log.clone(), self.id.clone());
        let (cmd_topic, inbox) = (format!("thing/{me}/cmd"), format!("thing/{me}/inbox"));
        let events = events.tee(move |event| {
            let value = match event {
                Event::Command(cmd) => serde_json::to_value(cmd).ok().map(|mut v| {
                    v["type"] = json!("cmd");
                    v
                }),
                other => envelope(other),
            };
            if let Some(value) = value {
                let topic = if matches!(event, Event::Command(_)) {
                    &cmd_topic
                } else {
                    &inbox
                };
                log.push(&me, topic, value);
            }
        });
        let (reported_tx, reported) = tokio::sync::oneshot::channel();
        let (observed_tx, mut observed) = tokio::sync::mpsc::unbounded_channel();
        let (reflex, runner, me) = (self.reflex.clone(), client.clone(), self.id.clone());
        let has_state = self.reflex_reports_state();
        self.run = Some(tokio::spawn(async move {
            let watch = tokio::spawn(async move {
                let mut reported_tx = Some(reported_tx);
                while let Some(action) = observed.recv().await {
                    let action: mqtter_client::ReflexAction = action;
                    if let Some(error) = &action.error {
                        tracing::warn!(thing = %me, %error, "the thing's reflex");
                    }
                    if action.command_id.is_none()
                        && let Some(tx) = reported_tx.take()
                    {
                        let _ = tx.send(());
                    }
                }
            });
            let timer: Arc<dyn ReflexTimer> = Arc::new(VirtualTimer);
            reflex
                .run_observed(runner, events, timer, Some(observed_tx))
                .await;
            watch.abort();
        }));
        self.client = Some(client);
        if has_state && tokio::time::timeout(PATIENCE, reported).await.is_err() {
            bail!(
                "{}: its initial state was not reported in {PATIENCE:?}",
                self.id
            );
        }
        Ok(())
    }

    /// Whether the reflex reports a state once connected (its first action).
    fn reflex_reports_state(&self) -> bool {
        self.reflex.reports_state()
    }

    pub async fn disconnect(&mut self) -> anyhow::Result<()> {
        let Some(client) = self.client.take() else {
            bail!("{} is not connected", self.id);
        };
        client.close().await;
        if let Some(run) = self.run.take() {
            run.abort();
        }
        if let Some(raw) = self.raw.take() {
            raw.close().await;
        }
        Ok(())
    }

    /// The thing's state document as the daemon has it (`thing.state`).
    pub async fn read_state(&self) -> anyhow::Result<Value> {
        let state = self
            .client()?
            .thing_state(&self.id)
            .await
            .map_err(|err| anyhow!("thing.state for {}: {err}", self.id))?;
        Ok(state.state)
    }

    /// A state report (a merge patch) as the thing.
    pub async fn report_state(&self, state: Value) -> anyhow::Result<()> {
        self.client()?
            .report_state(state)
            .await
            .map_err(|err| anyhow!("{}'s state report: {err}", self.id))
    }

    pub async fn report_event(&self, event: Value) -> anyhow::Result<()> {
        self.client()?
            .event(event)
            .await
            .map_err(|err| anyhow!("{}'s event: {err}", self.id))
    }

    /// Any PUBLISH as the thing (a command to a linked thing, a plain topic), from its second
    /// device.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        user_properties: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        self.client()?;
        if self.raw.is_none() {
            let login = Login {
                host: self.host.clone(),
                port: self.port,
                client_id: format!("{}:{DEVICE}-mqtt", self.id),
                credentials: Some((self.id.clone(), self.password.clone())),
                no_sync: true,
            };
            let conn = Conn::connect(&login, |_| {})
                .await
                .with_context(|| format!("{}'s plain MQTT connection", self.id))?;
            self.raw = Some(conn);
        }
        let raw = self.raw.as_ref().expect("just connected");
        raw.publish(topic, payload, retain, user_properties).await
    }

    fn client(&self) -> anyhow::Result<&ThingClient> {
        match &self.client {
            Some(client) => Ok(client),
            None => bail!("{} is not connected", self.id),
        }
    }
}
