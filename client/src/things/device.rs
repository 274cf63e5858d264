//! A thing's device (docs/PROTOCOL.md section 10): it connects with its account's secret,
//! receives commands ([`crate::Event::Command`], each once, the queued ones right after
//! CONNECT), answers them, reports state (a merge patch on its document) and events, asks for a
//! claim code, and commands and watches the things it is linked to.

use serde_json::{Value, json};

use super::person::CommandOptions;
use super::types::{Ack, ClaimCode, Command, Commanded, Outcome, ThingState};
use crate::client::{Client, EventStream};
use crate::error::{Error, Result};
use crate::options::Options;

/// A thing connected to the server. Clone it freely; the connection ends when the last clone
/// is dropped or [`ThingClient::close`] is called. It reconnects by itself, as [`Client`] does.
#[derive(Clone, Debug)]
pub struct ThingClient {
    client: Client,
}

impl ThingClient {
    /// Connect as the thing `opts.account` (its secret in `opts.password`), and return once the
    /// server has accepted the CONNECT. Queued commands arrive on the stream right after.
    pub async fn connect(opts: Options) -> Result<(ThingClient, EventStream)> {
        let (client, events) = Client::connect(opts).await?;
        Ok((ThingClient { client }, events))
    }

    /// The thing's id.
    pub fn id(&self) -> &str {
        self.client.account()
    }

    /// The connection underneath (requests, subscriptions, counters).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// End the connection (DISCONNECT) and wait until it is done.
    pub async fn close(&self) {
        self.client.close().await
    }

    /// Ask for a one-time claim code (`ttl_secs`, else the server's default 600 s); a person
    /// binds with it. A new code replaces the older one; refused (`conflict`) once owned.
    pub async fn claim_code(&self, ttl_secs: Option<u64>) -> Result<ClaimCode> {
        let mut args = json!({});
        if let Some(secs) = ttl_secs {
            args["ttl_secs"] = json!(secs);
        }
        let res = self.client.things_request("thing.claim_code", args).await?;
        match (res["code"].as_str(), res["expires_at"].as_u64()) {
            (Some(code), Some(expires_at)) => Ok(ClaimCode {
                code: code.to_owned(),
                expires_at,
            }),
            _ => Err(Error::Protocol(format!("thing.claim_code answered {res}"))),
        }
    }

    /// Answer a command (the first answer counts). Refused ([`Error::Rejected`] 0x80) when the
    /// command is unknown, answered already, or timed out.
    pub async fn ack(&self, command: &Command, ack: Ack) -> Result<()> {
        self.ack_id(&command.id, ack).await
    }

    /// Answer the command with this id.
    pub async fn ack_id(&self, command_id: &str, ack: Ack) -> Result<()> {
        let payload = json!({ "id": command_id, "ok": ack.ok, "result": ack.result });
        self.client
            .publish_with(self.topic("ack"), payload.to_string(), Vec::new(), None)
            .await
    }

    /// Report state: a JSON Merge Patch on the thing's document (a key set, `null` removes
    /// it). Returns once the new version is durable.
    pub async fn report_state(&self, patch: Value) -> Result<()> {
        self.state_with(patch, Vec::new()).await
    }

    /// Report state that follows from a command (it continues the command's chain).
    pub async fn report_state_after(&self, command_id: &str, patch: Value) -> Result<()> {
        self.state_with(patch, vec![("cmd-id".into(), command_id.to_owned())])
            .await
    }

    /// Replace the whole state document.
    pub async fn replace_state(&self, doc: Value) -> Result<()> {
        self.state_with(doc, vec![("state-replace".into(), "true".into())])
            .await
    }

    async fn state_with(&self, patch: Value, user: Vec<(String, String)>) -> Result<()> {
        if !patch.is_object() {
            return Err(Error::Protocol("a state patch is a JSON object".into()));
        }
        self.client
            .publish_with(self.topic("state"), patch.to_string(), user, None)
            .await
    }

    /// Emit an event (a JSON object): it reaches the bound persons' feeds and the linked
    /// things that watch this one.
    pub async fn event(&self, body: Value) -> Result<()> {
        self.event_with(body, None).await
    }

    /// Emit an event that follows from a command (it continues the command's chain).
    pub async fn event_after(&self, command_id: &str, body: Value) -> Result<()> {
        self.event_with(body, Some(command_id)).await
    }

    async fn event_with(&self, mut body: Value, command_id: Option<&str>) -> Result<()> {
        let Some(map) = body.as_object_mut() else {
            return Err(Error::Protocol("an event is a JSON object".into()));
        };
        if let Some(id) = command_id {
            map.insert("cmd".into(), json!(id));
        }
        self.client
            .publish_with(self.topic("event"), body.to_string(), Vec::new(), None)
            .await
    }

    /// Command a linked thing (see [`Client::command`]).
    pub async fn command(
        &self,
        thing: &str,
        body: Value,
        opts: CommandOptions,
    ) -> Result<Commanded> {
        self.client.command(thing, body, opts).await
    }

    /// Command a linked thing and wait for its outcome (see [`Client::command_wait`]).
    pub async fn command_wait(
        &self,
        thing: &str,
        body: Value,
        opts: CommandOptions,
    ) -> Result<Outcome> {
        self.client.command_wait(thing, body, opts).await
    }

    /// Watch a linked thing's state, presence and events (see [`Client::watch`]).
    pub async fn watch(&self, thing: &str) -> Result<[u8; 3]> {
        self.client.watch(thing).await
    }

    /// This thing's (or a linked thing's) state document.
    pub async fn thing_state(&self, thing: &str) -> Result<ThingState> {
        self.client.thing_state(thing).await
    }

    fn topic(&self, part: &str) -> String {
        format!("thing/{}/{part}", self.id())
    }
}
