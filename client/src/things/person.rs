//! The things world for a person (docs/PROTOCOL.md section 10.4): bind with a claim code, list
//! one's things, share, follow, link, read state and the audit, and command a thing with a ttl,
//! its outcome (`cmd.ack` or `cmd.timeout`) waited for or taken from the stream. A linked thing
//! commands with the same calls through [`crate::ThingClient`].

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::types::{AuditPage, Commanded, FollowState, Outcome, Rights, ThingEntry, ThingState};
use crate::client::Client;
use crate::core::{Cmd, Waiter};
use crate::error::{Error, Result};
use crate::types::Chain;

/// The request topic of the things world.
pub(crate) const REQ: &str = "$things/req";

/// How a command is given (all optional).
#[derive(Debug, Clone, Default)]
pub struct CommandOptions {
    /// How long the command may wait for the thing (whole seconds; the server's default, 30 s,
    /// when `None`; capped by its `cmd_ttl_max`).
    pub ttl: Option<Duration>,
    /// The client command id (one is made when `None`); the same `cid` twice to one thing is
    /// recorded once.
    pub cid: Option<String>,
    /// The chain this command continues (a thing commanding because it was commanded).
    pub chain: Option<Chain>,
}

impl CommandOptions {
    /// With this ttl.
    pub fn ttl(ttl: Duration) -> CommandOptions {
        CommandOptions {
            ttl: Some(ttl),
            ..CommandOptions::default()
        }
    }
}

fn shaped<T: DeserializeOwned>(value: &Value) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|e| Error::Protocol(e.to_string()))
}

impl Client {
    /// A `$things/req` request: `op` and its arguments (a JSON object). Returns the `res`
    /// envelope when `ok`, else [`Error::Refused`] with the server's code (`wrong_code`,
    /// `code_expired`, `not_authorized`, ...).
    pub async fn things_request(&self, op: &str, args: Value) -> Result<Value> {
        self.request_on(REQ, op, args).await
    }

    /// Bind a thing with the claim code it asked for: one becomes its owner. Returns its id.
    pub async fn bind(&self, code: &str) -> Result<String> {
        let res = self
            .things_request("thing.bind", json!({ "code": code }))
            .await?;
        res["thing"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::Protocol(format!("thing.bind answered {res}")))
    }

    /// Unbind (the owner's binding, or one's share) into the recycle bin for `retain_secs`
    /// (else the server's default). An owner's unbinding ends the thing's shares and links.
    pub async fn unbind(&self, thing: &str, retain_secs: Option<u64>) -> Result<()> {
        let mut args = json!({ "thing": thing });
        if let Some(secs) = retain_secs {
            args["retain_secs"] = json!(secs);
        }
        self.things_request("thing.unbind", args).await.map(drop)
    }

    /// Bring an unbound binding back from the recycle bin.
    pub async fn thing_restore(&self, thing: &str) -> Result<()> {
        self.thing_op("thing.restore", thing).await.map(drop)
    }

    /// Share one's thing with a person (or change the rights of a share).
    pub async fn share(&self, thing: &str, person: &str, rights: Rights) -> Result<()> {
        let args = json!({ "thing": thing, "person": person, "rights": rights.as_str() });
        self.things_request("thing.share", args).await.map(drop)
    }

    /// End a share at once.
    pub async fn unshare(&self, thing: &str, person: &str) -> Result<()> {
        let args = json!({ "thing": thing, "person": person });
        self.things_request("thing.unshare", args).await.map(drop)
    }

    /// Ask to follow a thing (its owner approves), or find one may see it already.
    pub async fn follow(&self, thing: &str) -> Result<FollowState> {
        let res = self.thing_op("thing.follow", thing).await?;
        match res["state"].as_str() {
            Some("following") => Ok(FollowState::Following),
            Some("pending") => Ok(FollowState::Pending),
            _ => Err(Error::Protocol(format!("thing.follow answered {res}"))),
        }
    }

    /// The owner accepts a follow request: the person gets a `view` share.
    pub async fn follow_accept(&self, thing: &str, person: &str) -> Result<()> {
        let args = json!({ "thing": thing, "person": person });
        self.things_request("thing.follow_accept", args)
            .await
            .map(drop)
    }

    pub async fn follow_reject(&self, thing: &str, person: &str) -> Result<()> {
        let args = json!({ "thing": thing, "person": person });
        self.things_request("thing.follow_reject", args)
            .await
            .map(drop)
    }

    /// Link two of one's things: each may command the other and sees its state and events.
    pub async fn link(&self, a: &str, b: &str) -> Result<()> {
        let args = json!({ "things": [a, b] });
        self.things_request("thing.link", args).await.map(drop)
    }

    /// Unlink two things (the owner of either); revoked at once.
    pub async fn unlink(&self, a: &str, b: &str) -> Result<()> {
        let args = json!({ "things": [a, b] });
        self.things_request("thing.unlink", args).await.map(drop)
    }

    /// A thing's current state document (version 0 and `{}` before any state).
    pub async fn thing_state(&self, thing: &str) -> Result<ThingState> {
        shaped(&self.thing_op("thing.state", thing).await?)
    }

    /// The things one owns or is shared, with presence and last state.
    pub async fn things(&self) -> Result<Vec<ThingEntry>> {
        let res = self.things_request("thing.list", json!({})).await?;
        shaped(&res["things"])
    }

    /// A page of a thing's audit (the owner's only), newest first: entries before `before`
    /// (a `seq`), at most `limit` (the server's most is 100).
    pub async fn audit(
        &self,
        thing: &str,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> Result<AuditPage> {
        let mut args = json!({ "thing": thing });
        if let Some(before) = before {
            args["before"] = json!(before);
        }
        if let Some(limit) = limit {
            args["limit"] = json!(limit);
        }
        let res = self.things_request("thing.audit", args).await?;
        Ok(AuditPage {
            entries: shaped(&res["entries"])?,
            next_before: res["next_before"].as_u64(),
        })
    }

    /// One's feed (`cmd.ack`, `cmd.timeout`, events), entries after `after`; and the newest
    /// entry's number.
    pub async fn feed(
        &self,
        after: Option<u64>,
        limit: Option<usize>,
    ) -> Result<(Vec<Value>, u64)> {
        let mut args = json!({});
        if let Some(after) = after {
            args["after"] = json!(after);
        }
        if let Some(limit) = limit {
            args["limit"] = json!(limit);
        }
        let res = self.things_request("thing.feed", args).await?;
        let entries = res["entries"].as_array().cloned().unwrap_or_default();
        Ok((entries, res["last"].as_u64().unwrap_or(0)))
    }

    /// SUBSCRIBE to a thing's state, presence and events: the current document comes at once
    /// ([`crate::Event::ThingState`]), then every change. For a person who may not see the
    /// thing yet this is a follow request. Returns the SUBACK codes (status, event, state).
    /// Subscriptions last as long as the connection (subscribe again after a reconnect).
    pub async fn watch(&self, thing: &str) -> Result<[u8; 3]> {
        let mut codes = [0u8; 3];
        // `state` last: the server takes each of the three as a follow, and each follow hands
        // the current document to the state subscriptions already open.
        for (code, part) in codes.iter_mut().zip(["status", "event", "state"]) {
            *code = self.subscribe(&format!("thing/{thing}/{part}")).await?;
        }
        Ok(codes)
    }

    /// Command a thing: returns once the server recorded (or queued) the command; its outcome
    /// comes on the stream as [`crate::Event::CommandAck`] or [`crate::Event::CommandTimeout`]
    /// (also after a reconnect: it is kept in one's feed). Refused without rights
    /// ([`Error::Rejected`] 0x87).
    pub async fn command(
        &self,
        thing: &str,
        body: Value,
        opts: CommandOptions,
    ) -> Result<Commanded> {
        self.give_command(thing, body, opts, None).await
    }

    /// Command a thing and wait for its outcome: the thing's answer, or the timeout when its ttl
    /// passed unanswered. Gives up with [`Error::Timeout`] when neither came within the ttl
    /// (30 s when `None`) plus the request timeout.
    pub async fn command_wait(
        &self,
        thing: &str,
        body: Value,
        opts: CommandOptions,
    ) -> Result<Outcome> {
        let (tx, rx) = oneshot::channel();
        let ttl = opts.ttl.unwrap_or(Duration::from_secs(30));
        self.give_command(thing, body, opts, Some(tx)).await?;
        let limit = ttl + self.options().request_timeout;
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(limit)),
        }
    }

    async fn give_command(
        &self,
        thing: &str,
        body: Value,
        opts: CommandOptions,
        outcome: Option<oneshot::Sender<Outcome>>,
    ) -> Result<Commanded> {
        if !body.is_object() {
            return Err(Error::Protocol("a command body is a JSON object".into()));
        }
        let cid = opts.cid.unwrap_or_else(|| self.new_cid());
        let mut user = vec![("cid".to_owned(), cid.clone())];
        if let Some(ttl) = opts.ttl {
            user.push(("ttl".into(), ttl.as_secs().max(1).to_string()));
        }
        if let Some(chain) = opts.chain {
            user.push(("chain-id".into(), chain.id));
            user.push(("chain-hop".into(), chain.hop.to_string()));
        }
        let waiter = outcome.map(|reply| Waiter {
            thing: thing.to_owned(),
            cid: cid.clone(),
            reply,
        });
        self.publish_with(format!("thing/{thing}/cmd"), body.to_string(), user, waiter)
            .await?;
        Ok(Commanded {
            thing: thing.to_owned(),
            cid,
        })
    }

    /// PUBLISH (QoS 1, retried across reconnects) with user properties; returns at the PUBACK.
    pub(crate) async fn publish_with(
        &self,
        topic: String,
        payload: impl Into<Bytes>,
        user: Vec<(String, String)>,
        outcome: Option<Waiter>,
    ) -> Result<()> {
        let props = (!user.is_empty()).then(|| {
            Box::new(PublishProperties {
                user_properties: user,
                ..Default::default()
            })
        });
        let (reply, answer) = oneshot::channel();
        self.send_cmd(Cmd::Publish {
            topic,
            payload: payload.into(),
            props,
            reply,
            outcome,
        })?;
        answer.await.map_err(|_| Error::Closed)?
    }

    async fn thing_op(&self, op: &str, thing: &str) -> Result<Value> {
        self.things_request(op, json!({ "thing": thing })).await
    }
}
