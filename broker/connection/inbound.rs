//! What a client sends after CONNECT that changes state: PUBLISH, SUBSCRIBE and UNSUBSCRIBE,
//! with their acknowledgements. Plain topics go through the ACL and the router; a world's
//! topics to the connection's member of that world (`crate::worlds`).

use super::*;
use crate::worlds::Outcome;

impl Conn {
    /// A v5 reason code as the client's protocol says it (v3 SUBACK: 0x80 for any failure).
    pub(super) fn suback_code(&self, code: u8) -> u8 {
        if self.proto == Proto::V3 && code >= 0x80 {
            0x80
        } else {
            code
        }
    }

    /// Record in a persistent session's queue entry where its QoS 2 flow stands: sent with
    /// `packet_id`, or released (PUBREC received, PUBREL sent).
    pub(super) fn save_flight(
        &self,
        seq: u64,
        packet_id: u16,
        delivery: &Delivery,
        released: bool,
    ) {
        let header = QueuedHeader {
            qos: u8::from(delivery.qos),
            retain: delivery.retain,
            sub_ids: delivery.sub_ids.clone(),
            released_packet_id: released.then_some(packet_id),
            sent_packet_id: Some(packet_id),
        };
        let body = persist::encode(&crate::message::StoredMessage::from(&*delivery.msg));
        let mut batch = Batch::new();
        batch.put(
            Space::Queue,
            persist::queue_key(self.client_id(), seq),
            persist::queued_value(&header, &body),
        );
        if let Err(err) = self.broker.store.apply(batch) {
            tracing::error!(cause = %err, "cannot record a PUBREC");
        }
    }

    /// Below the free-space limit (see `disk`), a PUBLISH that would be stored is refused, not
    /// acknowledged: v5 PUBACK / PUBREC 0x97 (Quota exceeded); v3, which cannot refuse, and a v5
    /// QoS 0 IM message close the connection (v5 DISCONNECT 0x97), so the client sends it again.
    fn refuse_for_disk(
        &mut self,
        wire: &mut wire::Wire,
        qos: QoS,
        packet_id: u16,
    ) -> Result<(), Violation> {
        tracing::debug!(client_id = %self.client_id(), "publish refused: disk space low");
        let code = reason::QUOTA_EXCEEDED;
        match (self.proto, qos) {
            (Proto::V5, QoS::AtLeastOnce) => {
                self.ack_publish(wire, HeldAck::PubAck(packet_id, code), false);
                Ok(())
            }
            (Proto::V5, QoS::ExactlyOnce) => {
                self.ack_publish(wire, HeldAck::PubRec(packet_id, code), false);
                Ok(())
            }
            _ => Err(Violation(code, "free disk space below disk_free_limit")),
        }
    }

    pub(super) fn on_publish(
        &mut self,
        wire: &mut wire::Wire,
        p: PublishIn,
    ) -> Result<(), Violation> {
        self.broker
            .metrics
            .publish_received
            .fetch_add(1, Ordering::Relaxed);
        let packet_id = p.packet_id.unwrap_or(0);
        // A resend before PUBREL: acknowledge again, deliver nothing [MQTT-4.3.3-9]. A resend
        // carries DUP [MQTT-3.3.1-1]; without it the id is being used anew, which a client does
        // only after the flow ended, so the id known here is stale (its PUBREL came, but the
        // broker restarted before that was stored) and this is a new message.
        if p.qos == QoS::ExactlyOnce && p.dup && self.session.lock().has_inbound_qos2(packet_id) {
            self.hold_or_write(wire, HeldAck::PubRec(packet_id, reason::SUCCESS), false);
            return Ok(());
        }
        if p.qos != QoS::AtMostOnce
            && self.proto == Proto::V5
            && self.unacked_inbound() >= usize::from(self.broker.config.limits.receive_maximum)
        {
            return Err(Violation(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                "receive maximum exceeded",
            ));
        }
        let topic = match p.topic_alias {
            Some(alias) => {
                if alias == 0 || alias > self.broker.config.limits.max_topic_alias {
                    return Err(Violation(
                        reason::TOPIC_ALIAS_INVALID,
                        "topic alias out of range",
                    ));
                }
                if p.topic.is_empty() {
                    match self
                        .extra
                        .as_ref()
                        .and_then(|e| e.inbound_aliases.get(&alias))
                    {
                        Some(topic) => topic.clone(),
                        None => {
                            return Err(Violation(reason::PROTOCOL_ERROR, "unknown topic alias"));
                        }
                    }
                } else {
                    self.extra_mut()
                        .inbound_aliases
                        .insert(alias, p.topic.clone());
                    p.topic.clone()
                }
            }
            None => p.topic.clone(),
        };
        if topic::validate_name(&topic).is_err() {
            return Err(Violation(reason::TOPIC_NAME_INVALID, "invalid topic name"));
        }
        if p.has_sub_ids {
            return Err(Violation(
                reason::PROTOCOL_ERROR,
                "subscription identifier in a PUBLISH",
            ));
        }
        let now = now_ms();
        if let Some(members) = self.members() {
            members.each().for_each(|m| m.active(now));
        }
        let route = Route::of(&self.broker.worlds, &topic);
        if let Route::World(world) = route {
            if self.broker.disk.is_low() {
                return self.refuse_for_disk(wire, p.qos, packet_id);
            }
            let publish = Publish {
                topic: &topic,
                payload: p.payload,
                qos: p.qos,
                props: p.props.as_ref(),
                by_rule: false,
            };
            // A client that is no member of the world (anonymous, or another kind of account)
            // may not publish there.
            let outcome = match self.members().and_then(|m| m.of(world)) {
                Some(member) => member.publish(publish, now),
                None => Outcome::code(reason::NOT_AUTHORIZED),
            };
            if outcome.storage_failed {
                // Not stored, so not acknowledged, in v3 as in v5: the client sends it again.
                return Err(Violation(reason::UNSPECIFIED, "storage failure"));
            }
            for answer in outcome.answers {
                if let Err(err) = self.broker.publish(answer) {
                    tracing::error!(cause = %err, "cannot publish an answer");
                }
            }
            // v3 cannot refuse a PUBLISH: it is acknowledged, dropped, and the sender's inbox
            // gets an error envelope.
            let code = if self.proto == Proto::V3 {
                reason::SUCCESS
            } else {
                outcome.code
            };
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.hold_or_write(wire, HeldAck::PubAck(packet_id, code), outcome.needs_flush)
                }
                QoS::ExactlyOnce => {
                    if code < 0x80 {
                        self.session.lock().add_inbound_qos2(packet_id);
                    }
                    self.hold_or_write(wire, HeldAck::PubRec(packet_id, code), outcome.needs_flush)
                }
            }
            return Ok(());
        }
        // `$SYS` is the broker's own: no client writes there.
        let allowed = route != Route::Sys
            && self
                .broker
                .acl
                .allows(self.username(), self.client_id(), Action::Publish, &topic);
        if !allowed {
            tracing::debug!(client_id = %self.client_id(), %topic, "publish denied");
            let code = if self.proto == Proto::V3 {
                reason::SUCCESS
            } else if self.broker.config.hide_denial_reason {
                reason::UNSPECIFIED
            } else {
                reason::NOT_AUTHORIZED
            };
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.hold_or_write(wire, HeldAck::PubAck(packet_id, code), false)
                }
                QoS::ExactlyOnce => {
                    self.hold_or_write(wire, HeldAck::PubRec(packet_id, code), false)
                }
            }
            return Ok(());
        }
        let msg = Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            props: p.props.map(Arc::new),
            expires_at_ms: p.expiry_secs.map(|s| now + u64::from(s) * 1000),
            publisher: Some(self.client_id().clone()),
            stamp: None,
            receipt: None,
        };
        if msg.qos != QoS::AtMostOnce && self.broker.disk.is_low() && self.broker.would_store(&msg)
        {
            return self.refuse_for_disk(wire, msg.qos, packet_id);
        }
        let msg = Arc::new(msg);
        let mut published = match self.broker.publish_or_hold(msg.clone()) {
            Ok(published) => published,
            Err(err) => {
                tracing::error!(cause = %err, "store write failed: closing without acknowledging");
                return Err(Violation(reason::UNSPECIFIED, "storage failure"));
            }
        };
        // A full subscriber queue holds this publisher back, and its acknowledgement with it.
        self.hold_back(std::mem::take(&mut published.full));
        self.broker
            .emit_publish(&msg, || self.broker.actor(self.username()));
        let code = if published.matched == 0 && self.proto == Proto::V5 {
            reason::NO_MATCHING_SUBSCRIBERS
        } else {
            reason::SUCCESS
        };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.ack_publish(
                wire,
                HeldAck::PubAck(packet_id, code),
                published.needs_flush,
            ),
            QoS::ExactlyOnce => {
                let persistent = {
                    let mut state = self.session.lock();
                    state.add_inbound_qos2(packet_id);
                    state.is_persistent()
                };
                // A persistent session stores the open flow's id with the routing, before the
                // PUBREC: a resend after a restart is then recognised, not delivered again.
                let mut needs_flush = published.needs_flush;
                if persistent {
                    self.broker.save_session(&self.session, None);
                    needs_flush |= self.broker.is_sync();
                }
                self.ack_publish(wire, HeldAck::PubRec(packet_id, code), needs_flush);
            }
        }
        Ok(())
    }

    pub(super) fn on_subscribe(
        &mut self,
        wire: &mut wire::Wire,
        packet_id: u16,
        filters: Vec<(ByteString, SubOpts)>,
        user_properties: &[(ByteString, ByteString)],
    ) -> Result<(), Violation> {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained: Vec<Delivery> = Vec::new();
        let mut world_changed = false;
        let now = now_ms();
        for (filter, opts) in filters {
            let split = match topic::split_share(&filter) {
                Ok(split) => split,
                Err(_) => {
                    codes.push(if self.proto == Proto::V5 {
                        reason::TOPIC_FILTER_INVALID
                    } else {
                        0x80
                    });
                    continue;
                }
            };
            if let Route::World(world) = Route::of(&self.broker.worlds, split.filter) {
                // A world's filter: granted (or refused) by the world, never shared.
                let member = self.members().and_then(|m| m.of(world));
                let code = match member {
                    Some(member) if split.group.is_none() => {
                        member.subscribe(split.filter, opts.qos, user_properties, now)
                    }
                    _ => reason::NOT_AUTHORIZED,
                };
                world_changed |= code < 0x80;
                codes.push(self.suback_code(code));
                continue;
            }
            if split.group.is_some() && opts.no_local {
                // [MQTT-3.8.3-4]
                return Err(Violation(
                    reason::PROTOCOL_ERROR,
                    "no-local on a shared subscription",
                ));
            }
            if !self.broker.acl.allows(
                self.username(),
                self.client_id(),
                Action::Subscribe,
                split.filter,
            ) {
                // v3.1.1 has only 0x80 [MQTT-3.9.3-2]; v5 says 0x87, or 0x80 when the server
                // does not reveal the reason [MQTT-3.9.3-1].
                codes.push(
                    if self.proto == Proto::V3 || self.broker.config.hide_denial_reason {
                        reason::UNSPECIFIED
                    } else {
                        reason::NOT_AUTHORIZED
                    },
                );
                continue;
            }
            let opts = SubOpts {
                qos: opts.qos.min(2),
                ..opts
            };
            let existed = self
                .broker
                .router
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .subscribe(split.filter, split.group, &self.session, opts);
            self.session
                .lock()
                .add_subscription(filter.to_string(), opts);
            codes.push(opts.qos);
            let send_retained = split.group.is_none()
                && (opts.retain_handling == 0 || (opts.retain_handling == 1 && !existed));
            if send_retained {
                for msg in self.broker.retained_matching(split.filter) {
                    retained.push(Delivery {
                        qos: msg.qos.min(opts.qos()),
                        msg,
                        // Retained messages sent on subscribe keep RETAIN=1 [MQTT-3.3.1-8].
                        retain: true,
                        sub_ids: opts.sub_id.into_iter().collect(),
                        store_seq: None,
                    });
                }
            }
        }
        self.broker.save_session(&self.session, None);
        if world_changed && self.broker.is_sync() {
            self.flow_mut().held.push(HeldAck::SubAck(packet_id, codes));
        } else {
            // SUBACKs are not ordered with PUBACKs: no need to wait behind held ones, and the
            // retained messages queued below must follow it.
            wire.suback(packet_id, &codes);
        }
        for delivery in retained {
            // The session is online: queued now, written after the SUBACK by `drain`.
            self.session.offer(delivery, &self.broker.limits);
        }
        Ok(())
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        wire: &mut wire::Wire,
        packet_id: u16,
        filters: Vec<ByteString>,
        user_properties: &[(ByteString, ByteString)],
    ) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut world_changed = false;
        let now = now_ms();
        for filter in filters {
            if let Route::World(world) = Route::of(&self.broker.worlds, &filter) {
                let code = match self.members().and_then(|m| m.of(world)) {
                    Some(member) => member.unsubscribe(&filter, user_properties, now),
                    None => reason::NO_SUBSCRIPTION_EXISTED,
                };
                world_changed |= code == reason::SUCCESS;
                codes.push(code);
                continue;
            }
            let existed = match topic::split_share(&filter) {
                Ok(split) => {
                    let removed = self
                        .broker
                        .router
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .unsubscribe(split.filter, split.group, &self.session);
                    self.session.lock().remove_subscription(&filter);
                    removed
                }
                Err(_) => false,
            };
            codes.push(if existed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.broker.save_session(&self.session, None);
        if world_changed && self.broker.is_sync() {
            self.flow_mut()
                .held
                .push(HeldAck::UnsubAck(packet_id, codes));
        } else {
            wire.unsuback(packet_id, &codes);
        }
    }
}
