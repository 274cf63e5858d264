//! A virtual person: a device of the person's account through `mqtter-client` (IM messages,
//! notices, presence, the things' `cmd.ack` and `cmd.timeout` on its inbox), its replies, and
//! for plain topics and commands a second connection without sync.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use mqtter_client::{Client, Event, Options, Target};
use serde_json::{Value, json};

use super::log::{Log, contains};
use super::mqtt::{Conn, Login, PATIENCE};
use super::scenario::Reply;

/// The device name of the simulator's person connections.
const DEVICE: &str = "sim";

pub struct Person {
    pub id: String,
    password: String,
    host: String,
    port: u16,
    replies: Arc<Vec<Reply>>,
    client: Option<Client>,
    pump: Option<tokio::task::JoinHandle<()>>,
    /// Plain topics and commands (`account:sim-mqtt`, no sync), opened on first use.
    raw: Option<Conn>,
}

impl Person {
    pub fn new(id: &str, password: &str, host: &str, port: u16, replies: Vec<Reply>) -> Person {
        Person {
            id: id.to_owned(),
            password: password.to_owned(),
            host: host.to_owned(),
            port,
            replies: Arc::new(replies),
            client: None,
            pump: None,
            raw: None,
        }
    }

    pub fn connected(&self) -> bool {
        self.client.is_some()
    }

    /// Connect and wait until the sync is done (its messages are in the log).
    pub async fn connect(&mut self, log: &Arc<Log>) -> anyhow::Result<()> {
        if self.client.is_some() {
            bail!("{} is connected already", self.id);
        }
        let opts = Options::new(&self.host, self.port, &self.id, &self.password, DEVICE);
        let (client, mut events) = tokio::time::timeout(PATIENCE, Client::connect(opts))
            .await
            .map_err(|_| anyhow!("{} got no CONNACK in {PATIENCE:?}", self.id))?
            .map_err(|err| anyhow!("{} cannot connect: {err}", self.id))?;
        let (synced_tx, synced) = tokio::sync::oneshot::channel();
        let (log, me, replies, replier) = (
            log.clone(),
            self.id.clone(),
            self.replies.clone(),
            client.clone(),
        );
        let inbox = format!("person/{}/inbox", self.id);
        self.pump = Some(tokio::spawn(async move {
            let mut synced_tx = Some(synced_tx);
            while let Some(event) = events.next().await {
                if matches!(event, Event::Synced)
                    && let Some(tx) = synced_tx.take()
                {
                    let _ = tx.send(());
                }
                let Some(value) = envelope(&event) else {
                    continue;
                };
                log.push(&me, &inbox, value.clone());
                if let Event::Message(message) = &event {
                    reply(&replier, &me, &replies, message).await;
                }
            }
        }));
        self.client = Some(client);
        if tokio::time::timeout(PATIENCE, synced).await.is_err() {
            bail!("{}: no end of the sync in {PATIENCE:?}", self.id);
        }
        Ok(())
    }

    pub async fn disconnect(&mut self) -> anyhow::Result<()> {
        let Some(client) = self.client.take() else {
            bail!("{} is not connected", self.id);
        };
        client.close().await;
        if let Some(pump) = self.pump.take() {
            pump.abort();
        }
        if let Some(raw) = self.raw.take() {
            raw.close().await;
        }
        Ok(())
    }

    /// An IM message to `to` (`person/P/inbox`, `group/G`, or just `P` / `group:G`).
    pub async fn send(&self, to: &str, body: Value) -> anyhow::Result<()> {
        let Some(client) = &self.client else {
            bail!("{} is not connected", self.id);
        };
        let target = target(to)?;
        client
            .send(&target, body)
            .await
            .map_err(|err| anyhow!("{} cannot send to {to}: {err}", self.id))?;
        Ok(())
    }

    /// A PUBLISH on any topic (a plain one, `thing/T/cmd`) from the person's second device.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        user_properties: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        if self.client.is_none() {
            bail!("{} is not connected", self.id);
        }
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
}

fn target(to: &str) -> anyhow::Result<Target> {
    if let Some(group) = to.strip_prefix("group/") {
        return Ok(Target::Group(group.to_owned()));
    }
    if let Some(rest) = to.strip_prefix("person/") {
        let person = rest.strip_suffix("/inbox").unwrap_or(rest);
        return Ok(Target::Person(person.to_owned()));
    }
    if to.contains('/') || to.is_empty() {
        bail!("`to: {to}` is neither person/P/inbox nor group/G");
    }
    Ok(Target::Person(to.to_owned()))
}

/// What an event of the person's stream looks like as an envelope (`type` first).
pub(super) fn envelope(event: &Event) -> Option<Value> {
    fn typed(kind: &str, value: &impl serde::Serialize) -> Option<Value> {
        let mut value = serde_json::to_value(value).ok()?;
        if let Value::Object(map) = &mut value {
            map.insert("type".into(), json!(kind));
        }
        Some(value)
    }
    match event {
        Event::Message(m) => typed("msg", m),
        Event::Notice(n) | Event::Refused(n) => Some(n.body.clone()),
        Event::Presence(p) => typed("presence", p),
        Event::Receipt(r) => typed("receipt", r),
        Event::CommandAck(a) => typed("cmd.ack", a),
        Event::CommandTimeout(t) => typed("cmd.timeout", t),
        Event::ThingState(s) => typed("state", s),
        Event::ThingEvent(e) => typed("event", e),
        Event::ThingPresence(p) => typed("presence", p),
        Event::Things(list) => Some(json!({ "type": "things", "things": list })),
        Event::FeedDone { last } => Some(json!({ "type": "feed.done", "last": last })),
        _ => None,
    }
}

/// The first reply whose `match` and `from` fit the message, sent back.
async fn reply(client: &Client, me: &str, replies: &[Reply], message: &mqtter_client::Message) {
    if message.from == me {
        return;
    }
    let found = replies.iter().find(|r| {
        r.from.as_ref().is_none_or(|f| *f == message.from)
            && r.matches
                .as_ref()
                .is_none_or(|m| contains(&message.body, m))
    });
    let Some(found) = found else { return };
    let to = match (&found.to, message.conv.group_id()) {
        (Some(to), _) => to.clone(),
        (None, Some(group)) => format!("group/{group}"),
        (None, None) => format!("person/{}/inbox", message.from),
    };
    let body = match (&found.body, &found.text) {
        (Some(body), _) => body.clone(),
        (None, Some(text)) => json!({ "text": text }),
        (None, None) => json!({ "text": "ok" }),
    };
    let target = match target(&to) {
        Ok(target) => target,
        Err(err) => {
            tracing::warn!(person = me, cause = %err, "a reply with a bad target");
            return;
        }
    };
    if let Err(err) = tokio::time::timeout(Duration::from_secs(20), client.send(&target, body))
        .await
        .map_err(|_| anyhow!("timed out"))
        .and_then(|sent| sent.map_err(|err| anyhow!("{err}")))
    {
        tracing::warn!(person = me, cause = %err, "a reply was not sent");
    }
}
