//! `$things/req`: the things operations no packet expresses (claim codes, bind, share, links,
//! follow requests, the audit, ...). A request is `{"id": ..., "op": ..., args}`; the answer
//! `{"type":"res","id":...,"ok":...}` goes to the v5 Response Topic (with the Correlation Data)
//! when the request names a plain one, else to the requesting device's inbox.

use std::sync::Arc;

use mqtter_engine::graph::Rights;
use mqtter_engine::things::{FollowState, ThingError, ThingResult};
use serde_json::{Value, json};

use super::member::ThingMember;
use super::{delivery, json_props, message, message_with};
use crate::message::{Message, MessageProps};

fn arg<'a>(request: &'a Value, name: &str) -> ThingResult<&'a str> {
    request
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ThingError::Invalid(format!("missing string argument {name:?}")))
}

fn opt_u64(request: &Value, name: &str) -> Option<u64> {
    request.get(name).and_then(Value::as_u64)
}

/// The `res` envelope of a request.
fn res(id: &Value, result: ThingResult<Value>, now: u64) -> Value {
    mqtter_engine::im::res(id, result.map_err(|e| (e.code(), e.to_string())), now)
}

impl ThingMember {
    /// Run a request; returns the plain messages to publish (the answer, when it goes to a
    /// plain Response Topic, and what the operation's effects answer).
    pub(super) fn request(
        &self,
        payload: &[u8],
        props: Option<&MessageProps>,
        now: u64,
    ) -> Vec<Arc<Message>> {
        let request: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let mut plain = Vec::new();
        let result = if request.is_object() {
            self.run(&request, now, &mut plain)
        } else {
            Err(ThingError::Invalid(
                r#"a request is a JSON object {"id": ..., "op": ...}"#.into(),
            ))
        };
        if let Err(ThingError::Store(err)) = &result {
            tracing::error!(cause = %err, "things request not stored");
        }
        let answer = res(&id, result, now);
        let correlation = props.and_then(|p| p.correlation_data.clone());
        match props.and_then(|p| p.response_topic.clone()) {
            Some(topic)
                if !topic.starts_with("thing/")
                    && !crate::im::is_im_topic(&topic)
                    && crate::topic::validate_name(&topic).is_ok() =>
            {
                let props = Arc::new(MessageProps {
                    correlation_data: correlation,
                    ..(*json_props()).clone()
                });
                plain.push(message_with(topic, &answer, false, props));
            }
            _ => {
                let inbox = self.world().inbox_of(self.me());
                let msg = match correlation {
                    Some(correlation) => {
                        let props = Arc::new(MessageProps {
                            correlation_data: Some(correlation),
                            ..(*json_props()).clone()
                        });
                        message_with(inbox, &answer, false, props)
                    }
                    None => message(inbox, &answer, false),
                };
                self.device().session.force(delivery(&msg));
            }
        }
        plain
    }

    fn run(&self, request: &Value, now: u64, plain: &mut Vec<Arc<Message>>) -> ThingResult<Value> {
        let me = self.me();
        let world = self.world();
        let things = &world.things;
        let actor = self.actor();
        let mut done = |effects| {
            plain.extend(world.carry(effects, &actor));
            Ok(json!({}))
        };
        match arg(request, "op")? {
            "thing.claim_code" => {
                let claim = things.claim_code(me, opt_u64(request, "ttl_secs"), now)?;
                Ok(json!({ "code": claim.code, "expires_at": claim.expires_at }))
            }
            "thing.bind" => {
                let (thing, effects) = things.bind(me, arg(request, "code")?, now)?;
                done(effects)?;
                Ok(json!({ "thing": thing }))
            }
            "thing.unbind" => done(things.unbind(
                me,
                arg(request, "thing")?,
                opt_u64(request, "retain_secs"),
                now,
            )?),
            "thing.restore" => done(things.restore(me, arg(request, "thing")?, now)?),
            "thing.share" => {
                let rights = match request.get("rights").and_then(Value::as_str) {
                    None => Rights::Control,
                    Some(r) => Rights::parse(r).ok_or_else(|| {
                        ThingError::Invalid("rights must be control or view".into())
                    })?,
                };
                done(things.share(
                    me,
                    arg(request, "thing")?,
                    arg(request, "person")?,
                    rights,
                    now,
                )?)
            }
            "thing.unshare" => {
                done(things.unshare(me, arg(request, "thing")?, arg(request, "person")?, now)?)
            }
            "thing.follow" => {
                let (state, effects) = things.follow(me, arg(request, "thing")?, now)?;
                done(effects)?;
                let state = match state {
                    FollowState::Following => "following",
                    FollowState::Pending => "pending",
                };
                Ok(json!({ "state": state }))
            }
            "thing.follow_accept" => done(things.follow_accept(
                me,
                arg(request, "thing")?,
                arg(request, "person")?,
                now,
            )?),
            "thing.follow_reject" => done(things.follow_reject(
                me,
                arg(request, "thing")?,
                arg(request, "person")?,
                now,
            )?),
            op @ ("thing.link" | "thing.unlink") => {
                let pair: Vec<&str> = request
                    .get("things")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let [a, b] = pair.as_slice() else {
                    return Err(ThingError::Invalid(
                        "things must name two things: [A, B]".into(),
                    ));
                };
                if op == "thing.link" {
                    done(things.link(me, a, b, now)?)
                } else {
                    done(things.unlink(me, a, b, now)?)
                }
            }
            "thing.state" => Ok(things.state(me, arg(request, "thing")?)?.to_json()),
            "thing.audit" => {
                let page = things.audit(
                    me,
                    arg(request, "thing")?,
                    opt_u64(request, "before"),
                    opt_u64(request, "limit").map(|l| l as usize),
                )?;
                let entries: Vec<Value> = page.entries.iter().map(|e| e.to_json()).collect();
                Ok(json!({ "entries": entries, "next_before": page.next_before }))
            }
            "thing.list" => Ok(json!({ "things": things.roster(me)? })),
            "thing.feed" => {
                let limit = opt_u64(request, "limit").unwrap_or(100).min(1000) as usize;
                let entries =
                    things.feed_after(me, opt_u64(request, "after").unwrap_or(0), limit)?;
                Ok(json!({ "entries": entries, "last": things.feed_last(me)? }))
            }
            other => Err(ThingError::Invalid(format!("unknown op {other:?}"))),
        }
    }
}
