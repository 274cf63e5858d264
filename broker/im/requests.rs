//! `$im/req`: the operations no packet expresses. A request is `{"id": ..., "op": ..., args}`;
//! the answer `{"type":"res","id":...,"ok":...}` goes to the v5 Response Topic (with the
//! Correlation Data) when the request names one, else to the requesting device's inbox.

use std::sync::Arc;

use mqtter_engine::graph::Role;
use mqtter_engine::im::{ImError, ImResult};
use ntex_bytes::ByteString;
use serde_json::{Value, json};

use super::publish::{json_payload, res};
use super::{Device, Gate, inbox_topic, is_im_topic};
use crate::message::{Message, MessageProps, QoS};

/// A string argument of a request.
pub(super) fn arg<'a>(request: &'a Value, name: &str) -> ImResult<&'a str> {
    request
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| ImError::Invalid(format!("missing string argument {name:?}")))
}

fn opt_u64(request: &Value, name: &str) -> Option<u64> {
    request.get(name).and_then(Value::as_u64)
}

impl Gate {
    /// Run a request; the answer goes to the device's inbox, or is returned when it goes to a
    /// plain Response Topic (for the caller to publish).
    pub(super) fn request(
        &self,
        device: &Device,
        payload: &[u8],
        props: Option<&MessageProps>,
        now: u64,
    ) -> Option<Arc<Message>> {
        let request: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let result = if request.is_object() {
            self.run(device, &request, now)
        } else {
            Err(ImError::Invalid(
                r#"a request is a JSON object {"id": ..., "op": ...}"#.into(),
            ))
        };
        let answer = res(&id, result, now);
        self.answer(device, answer, props)
    }

    fn answer(
        &self,
        device: &Device,
        answer: Value,
        props: Option<&MessageProps>,
    ) -> Option<Arc<Message>> {
        let response_topic = props.and_then(|p| p.response_topic.clone());
        match response_topic {
            Some(topic) if !is_im_topic(&topic) && crate::topic::validate_name(&topic).is_ok() => {
                let msg = Message {
                    topic,
                    payload: json_payload(&answer),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    props: Some(Arc::new(MessageProps {
                        payload_is_utf8: true,
                        content_type: Some(ByteString::from_static("application/json")),
                        correlation_data: props.and_then(|p| p.correlation_data.clone()),
                        ..Default::default()
                    })),
                    expires_at_ms: None,
                    publisher: None,
                    stamp: None,
                    receipt: None,
                };
                Some(Arc::new(msg))
            }
            _ => {
                let mut msg = Gate::message(
                    inbox_topic(&device.account),
                    json_payload(&answer),
                    false,
                    None,
                );
                if let Some(correlation) = props.and_then(|p| p.correlation_data.clone()) {
                    let mut with = (*msg).clone();
                    let mut p = with.props.as_deref().cloned().unwrap_or_default();
                    p.correlation_data = Some(correlation);
                    with.props = Some(Arc::new(p));
                    msg = Arc::new(with);
                }
                Gate::deliver_to_device(device, &msg);
                None
            }
        }
    }

    fn run(&self, device: &Device, request: &Value, now: u64) -> ImResult<Value> {
        let me: &str = &device.account;
        let op = arg(request, "op")?;
        let im = &self.im;
        let done = |effects| {
            self.apply(effects, me);
            Ok(json!({}))
        };
        match op {
            "directory.search" => {
                let q = arg(request, "q")?;
                let persons = im.with_graph(|g| g.search_persons(q, 50));
                let groups: Vec<Value> = im
                    .with_graph(|g| g.group_ids())
                    .into_iter()
                    .filter_map(|id| im.group(&id).map(|g| (id, g)))
                    .filter(|(id, g)| {
                        g.open
                            && (id.contains(q) || g.name.to_lowercase().contains(&q.to_lowercase()))
                    })
                    .take(50)
                    .map(|(id, g)| json!({ "id": id, "name": g.name }))
                    .collect();
                Ok(json!({ "persons": persons, "groups": groups }))
            }
            "friend.request" => {
                let (state, effects) = im.friend_request(me, arg(request, "peer")?, now)?;
                self.apply(effects, me);
                let state = match state {
                    mqtter_engine::im::FriendState::Friends => "friends",
                    mqtter_engine::im::FriendState::Pending => "pending",
                };
                Ok(json!({ "state": state }))
            }
            "friend.accept" => done(im.friend_accept(me, arg(request, "peer")?, now)?),
            "friend.reject" => done(im.friend_reject(me, arg(request, "peer")?, now)?),
            "friend.remove" => done(im.friend_remove(
                me,
                arg(request, "peer")?,
                opt_u64(request, "retain_secs"),
                now,
            )?),
            "friend.restore" => done(im.friend_restore(me, arg(request, "peer")?, now)?),
            "block" => done(im.block(me, arg(request, "peer")?, now)?),
            "unblock" => done(im.unblock(me, arg(request, "peer")?, now)?),
            "recycle.list" => {
                let entries: Vec<Value> = im
                    .recycle_list(me, now)?
                    .iter()
                    .map(|e| e.to_json())
                    .collect();
                Ok(json!({ "entries": entries }))
            }
            "group.create" => {
                let open = request
                    .get("open")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let name = request.get("name").and_then(Value::as_str);
                done(im.group_create(me, arg(request, "group")?, name, open, now)?)
            }
            "group.invite" => {
                done(im.group_invite(me, arg(request, "group")?, arg(request, "member")?, now)?)
            }
            "group.kick" => {
                done(im.group_kick(me, arg(request, "group")?, arg(request, "member")?, now)?)
            }
            "group.set_role" => {
                let role = Role::parse(arg(request, "role")?)
                    .ok_or_else(|| ImError::Invalid("role must be admin or member".into()))?;
                done(im.group_set_role(
                    me,
                    arg(request, "group")?,
                    arg(request, "member")?,
                    role,
                    now,
                )?)
            }
            "group.leave" => done(im.group_leave(
                me,
                arg(request, "group")?,
                opt_u64(request, "retain_secs"),
                now,
            )?),
            "group.restore" => done(im.group_restore(me, arg(request, "group")?, now)?),
            "group.dissolve" => done(im.group_dissolve(me, arg(request, "group")?, now)?),
            "group.members" => {
                let group = arg(request, "group")?;
                im.authorize_group(me, group)?;
                let members: Vec<Value> = im
                    .with_graph(|g| g.members(group))
                    .into_iter()
                    .map(|(id, role)| json!({ "id": id, "role": role.as_str() }))
                    .collect();
                Ok(json!({ "members": members }))
            }
            "history" => {
                let conv = arg(request, "conv")?;
                let limit = opt_u64(request, "limit").unwrap_or(50) as usize;
                let messages = im.history(
                    me,
                    conv,
                    opt_u64(request, "before"),
                    opt_u64(request, "after"),
                    limit,
                )?;
                let last_seq = im.last_seq(conv)?;
                Ok(json!({ "conv": conv, "messages": messages, "last_seq": last_seq }))
            }
            "receipt" => {
                let seq = opt_u64(request, "seq")
                    .ok_or_else(|| ImError::Invalid("missing number argument \"seq\"".into()))?;
                done(im.receipt(me, arg(request, "conv")?, seq, arg(request, "kind")?, now)?)
            }
            "direct.open" => self.direct_open(device, request, now),
            "direct.upload" => self.direct_upload(device, request, now),
            other => Err(ImError::Invalid(format!("unknown op {other:?}"))),
        }
    }
}
