//! The outbox: every PUBLISH kept until its PUBACK (a message) or its answer (a request),
//! resent across reconnects, failed at its deadline.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::debug;

use super::{Cmd, Core, Own, now_ms};
use crate::error::{Error, Result};
use crate::types::ConvId;

pub(super) enum Kind {
    Message(Option<oneshot::Sender<Result<()>>>),
    /// A message of this device's own, in `conv`.
    Own(ConvId, Option<oneshot::Sender<Result<()>>>),
    Request {
        id: String,
        reply: Option<oneshot::Sender<Result<Value>>>,
        /// Internal (gap filling): the answer is handled by the core itself.
        internal: Option<ConvId>,
        acked: bool,
    },
}

pub(super) struct Entry {
    pub(super) topic: String,
    pub(super) payload: Bytes,
    pub(super) props: Option<PublishProperties>,
    pub(super) kind: Kind,
    pub(super) deadline: Instant,
}

impl Core {
    /// Fail what is past its deadline.
    pub(super) async fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .outbox
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        let timeout = self.opts.request_timeout;
        for key in late {
            if let Some(entry) = self.remove(key) {
                match entry.kind {
                    Kind::Message(Some(reply)) => {
                        let _ = reply.send(Err(Error::Timeout(timeout)));
                    }
                    Kind::Own(conv, reply) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(Error::Timeout(timeout)));
                        }
                        if let Some(own) = self.own.get_mut(&conv) {
                            own.remove(&key);
                        }
                        self.own_settled(&conv).await;
                    }
                    Kind::Request {
                        reply: Some(reply), ..
                    } => {
                        let _ = reply.send(Err(Error::Timeout(timeout)));
                    }
                    Kind::Request {
                        internal: Some(conv),
                        ..
                    } => {
                        // A gap could not be filled in time: yield what was held, in order,
                        // rather than hold the conversation for ever; its next message tries
                        // again.
                        if let Some(gap) = self.gaps.remove(&conv) {
                            let in_sync = gap.in_sync;
                            for m in gap.held {
                                self.accept(m);
                            }
                            if in_sync {
                                self.maybe_synced();
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    pub(super) fn remove(&mut self, key: u64) -> Option<Entry> {
        let entry = self.outbox.remove(&key)?;
        if let Kind::Request { id, .. } = &entry.kind {
            self.requests.remove(id);
        }
        self.inflight.retain(|_, k| *k != key);
        Some(entry)
    }

    pub(super) fn fail_all(&mut self, err: impl Fn() -> Error) {
        for (_, entry) in std::mem::take(&mut self.outbox) {
            match entry.kind {
                Kind::Message(Some(reply)) | Kind::Own(_, Some(reply)) => {
                    let _ = reply.send(Err(err()));
                }
                Kind::Request {
                    reply: Some(reply), ..
                } => {
                    let _ = reply.send(Err(err()));
                }
                _ => {}
            }
        }
    }

    pub(super) async fn on_cmd(&mut self, cmd: Cmd) {
        let deadline = Instant::now() + self.opts.request_timeout;
        match cmd {
            Cmd::Message {
                conv,
                to,
                body,
                cid,
                reply,
            } => {
                let props = PublishProperties {
                    user_properties: vec![("cid".into(), cid.clone())],
                    ..Default::default()
                };
                let topic = if conv.group_id().is_some() {
                    format!("group/{to}")
                } else {
                    format!("person/{to}/inbox")
                };
                let key = self.next_key;
                self.own.entry(conv.clone()).or_default().insert(
                    key,
                    Own {
                        cid,
                        to,
                        body: body.clone(),
                        acked: None,
                    },
                );
                self.push(Entry {
                    topic,
                    payload: Bytes::from(body.to_string()),
                    props: Some(props),
                    kind: Kind::Own(conv, Some(reply)),
                    deadline,
                })
                .await;
            }
            Cmd::Request {
                topic,
                request,
                reply,
            } => {
                self.push_request(topic, request, Some(reply), None, deadline)
                    .await;
            }
            Cmd::Publish {
                topic,
                payload,
                props,
                reply,
                outcome,
            } => {
                if let Some(waiter) = outcome {
                    self.things.wait(waiter);
                }
                self.push(Entry {
                    topic,
                    payload,
                    props: props.map(|p| *p),
                    kind: Kind::Message(Some(reply)),
                    deadline,
                })
                .await;
            }
            Cmd::Fire { topic, payload } => {
                self.push(Entry {
                    topic,
                    payload,
                    props: None,
                    kind: Kind::Message(None),
                    deadline,
                })
                .await;
            }
            Cmd::Subscribe { filter, reply } => {
                if !self.connected {
                    let _ = reply.send(Err(Error::Direct("not connected".into())));
                    return;
                }
                match self.client.subscribe(filter, QoS::AtLeastOnce).await {
                    Ok(()) => self.sub_fifo.push_back(reply),
                    Err(_) => {
                        let _ = reply.send(Err(Error::Closed));
                    }
                }
            }
        }
    }

    pub(super) async fn push_request(
        &mut self,
        topic: &'static str,
        mut request: Value,
        reply: Option<oneshot::Sender<Result<Value>>>,
        internal: Option<ConvId>,
        deadline: Instant,
    ) {
        let id = match request.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => {
                let n = self.next_request.fetch_add(1, Ordering::Relaxed);
                let id = format!("{}-r{n}", self.opts.device);
                request["id"] = json!(id);
                id
            }
        };
        let payload = Bytes::from(request.to_string());
        let key = self
            .push(Entry {
                topic: topic.into(),
                payload,
                props: None,
                kind: Kind::Request {
                    id: id.clone(),
                    reply,
                    internal,
                    acked: false,
                },
                deadline,
            })
            .await;
        self.requests.insert(id, key);
    }

    pub(super) async fn push(&mut self, entry: Entry) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.outbox.insert(key, entry);
        if self.connected {
            self.publish(key).await;
        }
        key
    }

    /// Hand an outbox entry to rumqttc.
    pub(super) async fn publish(&mut self, key: u64) {
        let Some(entry) = self.outbox.get(&key) else {
            return;
        };
        let (topic, payload, props) = (
            entry.topic.clone(),
            entry.payload.clone(),
            entry.props.clone(),
        );
        let sent = match props {
            Some(props) => {
                self.client
                    .publish_bytes_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
                    .await
            }
            None => {
                self.client
                    .publish_bytes(topic, QoS::AtLeastOnce, false, payload)
                    .await
            }
        };
        match sent {
            Ok(()) => self.fifo.push_back(key),
            // The event loop is gone (the client is shutting down).
            Err(err) => debug!(%err, "publish not queued"),
        }
    }

    pub(super) async fn on_puback(&mut self, pkid: u16, code: u8) {
        let Some(key) = self.inflight.remove(&pkid) else {
            return;
        };
        let ok = code == 0 || code == 0x10;
        let Some(entry) = self.outbox.get_mut(&key) else {
            return;
        };
        if let Kind::Request { acked, .. } = &mut entry.kind
            && ok
        {
            *acked = true;
            return;
        }
        let entry = self.remove(key).expect("present");
        let result = if ok {
            Ok(())
        } else {
            Err(Error::Rejected(code))
        };
        match entry.kind {
            Kind::Message(Some(reply)) => {
                let _ = reply.send(result);
            }
            Kind::Own(conv, reply) => {
                if let Some(own) = self.own.get_mut(&conv) {
                    if ok {
                        if let Some(o) = own.get_mut(&key) {
                            o.acked = Some(now_ms());
                        }
                    } else {
                        own.remove(&key);
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
                self.own_settled(&conv).await;
            }
            Kind::Request {
                reply: Some(reply), ..
            } => {
                let _ = reply.send(result.and(Err(Error::Rejected(code))));
            }
            _ => {}
        }
    }
}
