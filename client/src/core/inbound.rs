//! What a PUBLISH from the server is: a message, the sync and its end, a request's answer,
//! presence, a receipt, an error, or a notice.

use rumqttc::v5::mqttbytes::v5::Publish;
use serde_json::Value;
use tracing::{debug, warn};

use super::Core;
use super::gaps::Gap;
use super::outbox::Kind;
use crate::error::Error;
use crate::types::{ConvId, Event, Message, Notice, Presence, Receipt, Roster};

impl Core {
    pub(super) async fn on_publish(&mut self, p: Publish) {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let Ok(json) = serde_json::from_slice::<Value>(&p.payload) else {
            debug!(%topic, "a payload that is not JSON");
            return;
        };
        let kind = json.get("type").and_then(Value::as_str).unwrap_or_default();
        if self.on_thing_envelope(kind, &topic, &json) {
            return;
        }
        match kind {
            "msg" => match serde_json::from_value::<Message>(json.clone()) {
                Ok(m) => self.on_message(m).await,
                Err(err) => warn!(%err, "a message envelope of another shape"),
            },
            "sync" => {
                let mut roster: Roster = serde_json::from_value(json).unwrap_or_default();
                let mut held = self.view.roster.lock().unwrap_or_else(|e| e.into_inner());
                // The things come after the sync (their own envelope): keep the last list.
                roster.things = std::mem::take(&mut held.things);
                *held = roster.clone();
                drop(held);
                self.syncing = true;
                self.sync_done_seen = false;
                self.emit(Event::Connected(roster));
            }
            "sync.done" => {
                self.sync_done_seen = true;
                let more = json
                    .get("more")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for entry in more {
                    let (Some(conv), Some(after)) = (
                        entry.get("conv").and_then(Value::as_str),
                        entry.get("after").and_then(Value::as_u64),
                    ) else {
                        continue;
                    };
                    let conv = ConvId(conv.to_owned());
                    if !self.gaps.contains_key(&conv) {
                        let after = self
                            .cache
                            .mark(&conv)
                            .ok()
                            .flatten()
                            .unwrap_or(0)
                            .max(after);
                        self.gaps.insert(
                            conv.clone(),
                            Gap {
                                after,
                                until: None,
                                held: Vec::new(),
                                in_sync: true,
                                waiting_own: false,
                            },
                        );
                        self.fetch(&conv).await;
                    }
                }
                self.maybe_synced();
            }
            "res" => self.on_res(json).await,
            "presence" => {
                if let Ok(presence) = serde_json::from_value::<Presence>(json) {
                    let mut roster = self.view.roster.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(f) = roster.friends.iter_mut().find(|f| f.id == presence.id) {
                        f.presence = presence.presence.clone();
                        f.last_seen = presence.last_seen.or(f.last_seen);
                        f.text = presence.text.clone();
                    }
                    drop(roster);
                    self.emit(Event::Presence(presence));
                }
            }
            "receipt" => {
                if let Ok(receipt) = serde_json::from_value::<Receipt>(json) {
                    self.emit(Event::Receipt(receipt));
                }
            }
            "error" => self.emit(Event::Refused(Notice {
                kind: kind.to_owned(),
                body: json,
            })),
            "" => {}
            _ => {
                if kind == "direct.offer" {
                    let _ = self.direct.send(crate::p2p::Hook::Offer(json.clone()));
                }
                self.track_roster(kind, &json);
                let notice = Notice {
                    kind: kind.to_owned(),
                    body: json,
                };
                self.emit(Event::Notice(notice));
            }
        }
    }

    pub(super) async fn on_res(&mut self, json: Value) {
        let Some(id) = json.get("id").and_then(Value::as_str) else {
            return;
        };
        let Some(key) = self.requests.get(id).copied() else {
            return;
        };
        let Some(entry) = self.remove(key) else {
            return;
        };
        let result = if json.get("ok") == Some(&Value::Bool(true)) {
            Ok(json)
        } else {
            let error = &json["error"];
            Err(Error::Refused {
                code: error["code"].as_str().unwrap_or("unknown").to_owned(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
            })
        };
        if let Kind::Request {
            reply, internal, ..
        } = entry.kind
        {
            if let Some(reply) = reply {
                let _ = reply.send(result);
            } else if let Some(conv) = internal {
                self.on_page(conv, result).await;
            }
        }
    }
}
