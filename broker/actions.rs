//! `BrokerActions`: the daemon's side of `mqtter_engine::events::Actions`, the way a component
//! without a network connection (the rules engine, a simulator) acts on the world.
//!
//! An action enters as a PUBLISH of the named account would: a plain topic goes through the
//! same ACL check and `Broker::publish` (retained, queued, stored) as a client's; an IM topic
//! through the gate (authorised against the graph, stamped, stored once, fanned out); a things
//! topic through the things world (a command: the account's rights, stamped, queued or
//! delivered, audited). It is
//! emitted as an event again, with the chain one hop further (`chain-id` / `chain-hop` user
//! properties on the message, `chain` in an IM envelope). Its writes are durable with the next
//! flush (there is no publisher waiting for an acknowledgement).

use std::sync::{Arc, Weak};

use mqtter_engine::events::{ActionError, ActionPublish, Actions, Actor, ActorKind, Chain};
use ntex_bytes::{ByteString, Bytes};
use serde_json::Value;

use crate::auth::Action;
use crate::broker::Broker;
use crate::im::{Device, ImPublish, is_im_topic};
use crate::message::{Message, MessageProps, now_ms, qos_from_u8};
use crate::session::Session;
use crate::things::is_things_topic;
use crate::worlds::Publish;

/// Acts on the broker it was made for; holds it weakly (the broker's event sinks may hold this),
/// so an action after the broker is gone is `ActionError::Stopped`.
#[derive(Debug, Clone)]
pub struct BrokerActions {
    broker: Weak<Broker>,
}

impl BrokerActions {
    pub fn new(broker: &Arc<Broker>) -> Self {
        Self {
            broker: Arc::downgrade(broker),
        }
    }

    fn broker(&self) -> Result<Arc<Broker>, ActionError> {
        self.broker.upgrade().ok_or(ActionError::Stopped)
    }
}

/// The v5 user properties that carry a chain on a message.
fn chain_properties(chain: &Chain) -> Vec<(ByteString, ByteString)> {
    vec![
        (
            ByteString::from_static("chain-id"),
            ByteString::from(&*chain.id),
        ),
        (
            ByteString::from_static("chain-hop"),
            ByteString::from(chain.hop.to_string()),
        ),
    ]
}

/// The client id an action's PUBLISH carries: it names where the message came from (the
/// account's devices all get the sender's copy of an IM message).
fn action_client_id(account: &str) -> Arc<str> {
    Arc::from(format!("$rule/{account}"))
}

impl Actions for BrokerActions {
    fn publish(&self, action: ActionPublish) -> Result<(), ActionError> {
        let broker = self.broker()?;
        if action.qos > 2 {
            return Err(ActionError::Invalid(format!("QoS {}", action.qos)));
        }
        if crate::topic::validate_name(&action.topic).is_err() {
            return Err(ActionError::Invalid(format!(
                "topic name {:?}",
                action.topic
            )));
        }
        if broker
            .gate
            .im
            .with_graph(|g| g.account_kind(&action.account))
            .is_none()
        {
            return Err(ActionError::NotAuthorized(format!(
                "no account {}",
                action.account
            )));
        }
        let chain = action.chain.next();
        let props = MessageProps {
            user_properties: chain_properties(&chain),
            ..Default::default()
        };
        let client_id = action_client_id(&action.account);
        let payload = Bytes::copy_from_slice(&action.payload);
        let qos = qos_from_u8(action.qos);
        if is_im_topic(&action.topic) {
            if !broker.gate.im.is_person(&action.account) {
                return Err(ActionError::NotAuthorized(format!(
                    "{} is not a person",
                    action.account
                )));
            }
            // A device of no connection: the account's own devices all get the sender's copy.
            let device = Device {
                token: 0,
                account: Arc::from(action.account.as_str()),
                client_id: client_id.clone(),
                session: Arc::new(Session::new(client_id)),
                v5: true,
                sync: false,
            };
            let outcome = broker.gate.publish(
                Some(&device),
                ImPublish {
                    topic: &action.topic,
                    payload,
                    qos,
                    props: Some(&props),
                    by_rule: true,
                },
                now_ms(),
                None,
            );
            for answer in outcome.answers.iter().cloned() {
                broker
                    .publish(answer)
                    .map_err(|err| ActionError::Store(err.to_string()))?;
            }
            return match outcome {
                o if o.storage_failed => Err(ActionError::Store("IM message not stored".into())),
                o if o.code >= 0x80 => Err(ActionError::NotAuthorized(format!(
                    "{} may not publish to {} (reason 0x{:02x})",
                    action.account, action.topic, o.code
                ))),
                _ => Ok(()),
            };
        }
        if is_things_topic(&action.topic) {
            // The things world continues the chain itself (one hop further).
            let props = MessageProps {
                user_properties: chain_properties(&action.chain),
                ..Default::default()
            };
            let publish = Publish {
                topic: &action.topic,
                payload,
                qos,
                props: Some(&props),
                by_rule: true,
            };
            let session = Arc::new(Session::new(client_id));
            let Some(outcome) = broker
                .things
                .act(&action.account, publish, session, now_ms())
            else {
                return Err(ActionError::NotAuthorized(format!(
                    "{} is neither a person nor a thing",
                    action.account
                )));
            };
            for answer in outcome.answers.iter().cloned() {
                broker
                    .publish(answer)
                    .map_err(|err| ActionError::Store(err.to_string()))?;
            }
            return match outcome {
                o if o.storage_failed => Err(ActionError::Store("things act not stored".into())),
                o if o.code >= 0x80 => Err(ActionError::NotAuthorized(format!(
                    "{} may not publish to {} (reason 0x{:02x})",
                    action.account, action.topic, o.code
                ))),
                _ => Ok(()),
            };
        }
        let allowed = !action.topic.starts_with("$SYS")
            && broker.acl.allows(
                Some(&action.account),
                &client_id,
                Action::Publish,
                &action.topic,
            );
        if !allowed {
            return Err(ActionError::NotAuthorized(format!(
                "{} may not publish to {}",
                action.account, action.topic
            )));
        }
        let msg = Arc::new(Message {
            topic: ByteString::from(action.topic.as_str()),
            payload,
            qos,
            retain: action.retain,
            props: Some(Arc::new(props)),
            expires_at_ms: None,
            publisher: Some(client_id),
            stamp: None,
            receipt: None,
        });
        broker
            .publish(msg.clone())
            .map_err(|err| ActionError::Store(err.to_string()))?;
        broker.emit_publish(&msg, || Actor {
            account: Some(Arc::from(action.account.as_str())),
            kind: ActorKind::Rule,
        });
        Ok(())
    }

    fn notify(&self, person: &str, mut envelope: Value, chain: &Chain) -> Result<(), ActionError> {
        let broker = self.broker()?;
        if !broker.gate.im.is_person(person) {
            return Err(ActionError::Invalid(format!("no person {person}")));
        }
        let Value::Object(fields) = &mut envelope else {
            return Err(ActionError::Invalid("a notice is a JSON object".into()));
        };
        if !fields.get("type").is_some_and(Value::is_string) {
            return Err(ActionError::Invalid(
                "a notice has a string \"type\"".into(),
            ));
        }
        let chain = chain.next();
        fields.insert(
            "chain".into(),
            serde_json::json!({ "id": &*chain.id, "hop": chain.hop }),
        );
        fields
            .entry("ts")
            .or_insert_with(|| serde_json::json!(now_ms()));
        broker.gate.notify(person, &envelope);
        Ok(())
    }
}
