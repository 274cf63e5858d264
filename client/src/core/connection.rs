//! The connection's packets: a CONNACK (resend what the session lost), PUBACKs and SUBACKs,
//! and a dropped connection.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rumqttc::Outgoing;
use rumqttc::v5::Event as MqttEvent;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use tracing::debug;

use super::Core;
use super::outbox::{Entry, Kind};
use crate::error::Error;
use crate::types::Event;

fn reason_code(reason: &PubAckReason) -> u8 {
    use PubAckReason::*;
    match reason {
        Success => 0,
        NoMatchingSubscribers => 0x10,
        UnspecifiedError => 0x80,
        ImplementationSpecificError => 0x83,
        NotAuthorized => 0x87,
        TopicNameInvalid => 0x90,
        PacketIdentifierInUse => 0x91,
        QuotaExceeded => 0x97,
        PayloadFormatInvalid => 0x99,
    }
}

fn suback_code(code: &rumqttc::v5::mqttbytes::v5::SubscribeReasonCode) -> u8 {
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::*;
    match code {
        Success(qos) => *qos as u8,
        Failure | Unspecified => 0x80,
        ImplementationSpecific => 0x83,
        NotAuthorized => 0x87,
        TopicFilterInvalid => 0x8F,
        PkidInUse => 0x91,
        QuotaExceeded => 0x97,
        SharedSubscriptionsNotSupported => 0x9E,
        SubscriptionIdNotSupported => 0xA1,
        WildcardSubscriptionsNotSupported => 0xA2,
    }
}

impl Core {
    pub(super) async fn on_mqtt(&mut self, event: MqttEvent) {
        match event {
            MqttEvent::Incoming(Packet::ConnAck(ack)) => {
                self.view.stats.connections.fetch_add(1, Ordering::Relaxed);
                self.connected = true;
                if let Some(first) = self.first.take() {
                    let _ = first.send(Ok(()));
                }
                let resume = self.ever_connected && ack.session_present;
                self.ever_connected = true;
                if !resume {
                    // Whatever rumqttc held for the old session is gone: publish everything
                    // unacknowledged again (a message's cid makes a second copy harmless).
                    self.fifo.clear();
                    self.inflight.clear();
                }
                // Requests acknowledged before the drop whose answer did not come (answers are
                // live notices) are asked again, with the same id.
                let again: Vec<u64> = self
                    .outbox
                    .iter()
                    .filter(|(key, e)| match &e.kind {
                        Kind::Request { acked, .. } => *acked || !resume,
                        Kind::Message(_) | Kind::Own(..) => !resume,
                    } && !self.fifo.contains(key))
                    .map(|(k, _)| *k)
                    .collect();
                for key in again {
                    if let Some(Entry {
                        kind: Kind::Request { acked, .. },
                        ..
                    }) = self.outbox.get_mut(&key)
                    {
                        *acked = false;
                    }
                    self.inflight.retain(|_, k| *k != key);
                    self.publish(key).await;
                }
            }
            MqttEvent::Incoming(Packet::PubAck(ack)) => {
                self.on_puback(ack.pkid, reason_code(&ack.reason)).await;
            }
            MqttEvent::Incoming(Packet::Publish(p)) => self.on_publish(p).await,
            MqttEvent::Incoming(Packet::SubAck(ack)) => {
                if let Some(reply) = self.subs.remove(&ack.pkid) {
                    let code = ack.return_codes.first().map(suback_code).unwrap_or(0x80);
                    let _ = reply.send(Ok(code));
                }
            }
            MqttEvent::Outgoing(Outgoing::Subscribe(pkid)) => {
                if let Some(reply) = self.sub_fifo.pop_front() {
                    self.subs.insert(pkid, reply);
                }
            }
            MqttEvent::Incoming(Packet::Disconnect(d)) => {
                debug!(reason = ?d.reason_code, "the server disconnected");
            }
            MqttEvent::Outgoing(Outgoing::Publish(pkid)) => {
                if !self.inflight.contains_key(&pkid)
                    && let Some(key) = self.fifo.pop_front()
                {
                    self.inflight.insert(pkid, key);
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_lost(&mut self, reason: String, retry_in: Duration) {
        if let Some(first) = self.first.take() {
            let _ = first.send(Err(Error::Connect(reason)));
            return;
        }
        for reply in self
            .sub_fifo
            .drain(..)
            .chain(self.subs.drain().map(|(_, r)| r))
        {
            let _ = reply.send(Err(Error::Direct("the connection dropped".into())));
        }
        if self.connected {
            self.connected = false;
            self.sync_cache();
            self.emit(Event::Disconnected { reason, retry_in });
        }
    }
}
