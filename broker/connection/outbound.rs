//! What a connection sends: the session's queue drained into the wire, in-flight windows, and
//! the acknowledgements held until what they answer is durable.

use super::*;

impl Conn {
    /// Move what the session owes the client into the wire. `Err` when the session was taken.
    pub(super) fn drain(&mut self, wire: &mut wire::Wire) -> Result<(), End> {
        let mut out = Vec::new();
        let expired;
        let waiters;
        {
            let mut state = self.session.lock();
            if state.owner != self.owner || state.eviction.is_some() {
                let eviction = state.eviction.unwrap_or(Eviction::TakenOver);
                drop(state);
                return Err(match eviction {
                    Eviction::TakenOver => {
                        wire.disconnect(reason::SESSION_TAKEN_OVER, None);
                        End::Abnormal
                    }
                    Eviction::Overflow => {
                        // It stays until the session is detached (`attach` clears it): until
                        // then the session holds no publisher back (`Session::offer_or_hold`).
                        wire.disconnect(
                            reason::QUOTA_EXCEEDED,
                            Some("client too slow: queue full"),
                        );
                        End::Abnormal
                    }
                    Eviction::Shutdown => {
                        wire.disconnect(reason::SERVER_SHUTTING_DOWN, None);
                        End::Shutdown
                    }
                    Eviction::AccountRemoved => {
                        wire.disconnect(reason::NOT_AUTHORIZED, Some("account removed"));
                        End::Abnormal
                    }
                });
            }
            state.take_sendable(self.window(), now_ms(), &mut out);
            expired = state.take_expired();
            waiters = state.take_waiters(&self.broker.limits);
        }
        // Publishers held back by this queue go on (`pause.rs`).
        waiters.into_iter().for_each(std::task::Waker::wake);
        if !expired.is_empty() {
            let mut batch = Batch::new();
            for seq in expired {
                batch.remove(Space::Queue, persist::queue_key(self.client_id(), seq));
            }
            if let Err(err) = self.broker.store.apply(batch) {
                tracing::error!(cause = %err, "cannot remove expired messages");
            }
        }
        self.send(wire, out);
        Ok(())
    }

    pub(super) fn send(&mut self, wire: &mut wire::Wire, out: Vec<Outgoing>) {
        let now = now_ms();
        // Counted here and added once: the shared counters are contended by every connection.
        let mut sent = 0u64;
        for item in out {
            match item {
                Outgoing::Release { packet_id } => wire.pubrel(packet_id),
                Outgoing::Publish {
                    packet_id,
                    delivery,
                    dup,
                } => {
                    if let Some(stamp) = &delivery.msg.stamp {
                        let already_sent = self
                            .members()
                            .is_some_and(|m| m.each().any(|m| m.already_sent(stamp)));
                        if already_sent {
                            // Already sent (it was both in the sync and live).
                            if let Some(id) = packet_id {
                                self.finish(id);
                                // Its place in the window is free: drain again, or what is
                                // queued behind it waits for the next unrelated wake-up.
                                self.redrain = true;
                            }
                            continue;
                        }
                    }
                    match wire.publish(packet_id, &delivery, dup, now) {
                        Ok(()) => {
                            sent += 1;
                            if let (Some(id), Some(seq), QoS::ExactlyOnce, false) =
                                (packet_id, delivery.store_seq, delivery.qos, dup)
                            {
                                self.save_flight(seq, id, &delivery, false);
                            }
                        }
                        Err(err) => {
                            // Too big for the client's Maximum Packet Size: dropped for this
                            // client as if delivered [MQTT-3.1.2-25] (the wire logs the first
                            // of a connection).
                            if err != EncodeError::OverMaxPacketSize {
                                tracing::warn!(?err, client_id = %self.client_id(), "cannot encode a PUBLISH");
                            }
                            self.broker.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                            if let Some(id) = packet_id {
                                self.finish(id);
                                self.redrain = true;
                            }
                        }
                    }
                }
            }
        }
        if sent > 0 {
            let metrics = &self.broker.metrics;
            metrics.publish_sent.fetch_add(sent, Ordering::Relaxed);
            metrics.messages_sent.fetch_add(sent, Ordering::Relaxed);
        }
    }

    /// A delivery is complete: out of flight, out of the store.
    pub(super) fn finish(&mut self, packet_id: u16) -> bool {
        let done = self.session.lock().inflight.remove(&packet_id);
        match done {
            Some(flight) => {
                if let Some(seq) = flight.delivery.store_seq {
                    let mut batch = Batch::new();
                    batch.remove(Space::Queue, persist::queue_key(self.client_id(), seq));
                    if let Err(err) = self.broker.store.apply(batch) {
                        tracing::error!(cause = %err, "cannot remove an acknowledged message");
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Complete the deliveries acknowledged by the PUBACKs of one read: one session lock and one
    /// store batch for all of them, instead of one each.
    pub(super) fn finish_acked(&mut self) {
        let Some(flow) = self.flow.as_mut().filter(|f| !f.acked.is_empty()) else {
            return;
        };
        let mut done = Vec::with_capacity(flow.acked.len());
        {
            let mut state = self.session.lock();
            for id in flow.acked.drain(..) {
                if let Some(flight) = state.inflight.remove(&id) {
                    done.push(flight);
                }
            }
        }
        let mut batch = Batch::new();
        let mut receipts = Vec::new();
        for flight in &done {
            if let Some(seq) = flight.delivery.store_seq {
                batch.remove(Space::Queue, persist::queue_key(self.client_id(), seq));
            }
            receipts.extend(flight.delivery.msg.receipt);
        }
        if !receipts.is_empty()
            && let Some(members) = self.members()
        {
            let now = now_ms();
            for receipt in receipts {
                members.each().for_each(|m| m.acknowledged(receipt, now));
            }
        }
        if !batch.is_empty()
            && let Err(err) = self.broker.store.apply(batch)
        {
            tracing::error!(cause = %err, "cannot remove acknowledged messages");
        }
    }

    pub(super) fn hold_or_write(&mut self, wire: &mut wire::Wire, ack: HeldAck, needs_flush: bool) {
        let busy = self
            .flow
            .as_ref()
            .is_some_and(|f| !f.held.is_empty() || f.waiting.is_some());
        if needs_flush || busy {
            let flow = self.flow_mut();
            flow.unanswered_publishes += usize::from(ack.answers_a_publish());
            flow.held.push(ack);
        } else {
            self.write_acks(wire, vec![ack]);
        }
    }

    pub(super) fn write_acks(&mut self, wire: &mut wire::Wire, acks: Vec<HeldAck>) {
        for ack in acks {
            match ack {
                HeldAck::PubAck(id, code) => wire.puback(id, code),
                HeldAck::PubRec(id, code) => wire.pubrec(id, code),
                HeldAck::SubAck(id, codes) => wire.suback(id, &codes),
                HeldAck::UnsubAck(id, codes) => wire.unsuback(id, &codes),
                HeldAck::PubRel(id) => wire.pubrel(id),
            }
        }
    }
}
