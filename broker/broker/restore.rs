//! Restoring at start what the store holds: retained messages, persistent sessions with their
//! queues and in-flight messages, and the wills still owed.

use super::*;

impl Broker {
    pub(super) fn restore(self: &Arc<Self>) -> Result<(), StoreError> {
        let now = now_ms();
        let mut retained = self.retained.write().unwrap_or_else(|p| p.into_inner());
        let mut stale = Batch::new();
        for (key, value) in self.store.scan_prefix(Space::Retained, b"")? {
            if is_system(&String::from_utf8_lossy(&key)) {
                // Stored by an earlier version: the values of a broker long gone.
                stale.remove(Space::Retained, key);
                continue;
            }
            match persist::decode::<StoredMessage>(&value) {
                Some(stored) => {
                    let msg = Message::from(stored);
                    if msg.is_expired(now) {
                        // Its Message Expiry Interval passed [MQTT-3.3.2-5]: gone for good.
                        stale.remove(Space::Retained, key);
                    } else {
                        retained.insert(msg.topic.clone(), Arc::new(msg));
                    }
                }
                None => {
                    tracing::warn!(topic = %String::from_utf8_lossy(&key), "unreadable retained message skipped")
                }
            }
        }
        drop(retained);
        if !stale.is_empty() {
            self.store.apply(stale)?;
        }

        let mut restored = 0;
        for (key, value) in self.store.scan_prefix(Space::Sessions, b"")? {
            let client_id = String::from_utf8_lossy(&key).into_owned();
            self.on_disk.session_stored(&client_id);
            let Some(record) = SessionRecord::decode(&value) else {
                tracing::warn!(client_id, "unreadable session record skipped");
                continue;
            };
            let gone_at = record.disconnected_at_ms.unwrap_or(now);
            let expired = record.expiry_secs != u32::MAX
                && gone_at + u64::from(record.expiry_secs) * 1000 <= now;
            if expired || record.expiry_secs == 0 {
                self.forget_on_disk(&client_id);
                continue;
            }
            let session = Arc::new(Session::new(Arc::from(client_id.as_str())));
            {
                let mut state = session.lock();
                state.expiry_secs = record.expiry_secs;
                state.set_holder(record.holder.into());
                for id in &record.inbound_qos2 {
                    state.add_inbound_qos2(*id);
                }
                let mut router = self.router.write().unwrap_or_else(|p| p.into_inner());
                for (filter, opts) in &record.subscriptions {
                    if let Ok(split) = crate::topic::split_share(filter) {
                        router.subscribe(split.filter, split.group, &session, *opts);
                        state.add_subscription(filter.clone(), *opts);
                    }
                }
                for (key, value) in self
                    .store
                    .scan_prefix(Space::Queue, &persist::client_prefix(&client_id))?
                {
                    let seq = persist::seq_of(&key);
                    state.restored_store_seq(seq);
                    let Some((header, stored)) = persist::split_queued(&value) else {
                        continue;
                    };
                    let delivery = Delivery {
                        msg: Arc::new(Message::from(stored)),
                        qos: crate::message::qos_from_u8(header.qos),
                        retain: header.retain,
                        sub_ids: header.sub_ids,
                        store_seq: Some(seq),
                    };
                    match (header.released_packet_id, header.sent_packet_id) {
                        (Some(id), _) => state.restore_inflight(id, delivery, true),
                        (None, Some(id)) => state.restore_inflight(id, delivery, false),
                        (None, None) => state.queue.push_back(delivery),
                    }
                }
            }
            let remaining = if record.expiry_secs == u32::MAX {
                u32::MAX
            } else {
                let left_ms = (gone_at + u64::from(record.expiry_secs) * 1000).saturating_sub(now);
                left_ms.div_ceil(1000).min(u64::from(u32::MAX - 1)) as u32
            };
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(session.client_id.clone(), session.clone());
            if record.disconnected_at_ms.is_none() {
                self.save_session(&session, Some(now));
            }
            if tokio::runtime::Handle::try_current().is_ok() {
                self.schedule_expiry(session, remaining);
            }
            restored += 1;
        }
        // Wills of the clients that were connected when the broker stopped (crashed or was
        // stopped: either way the client said no goodbye) and of those whose delay was still
        // running: they go out now, or after their delay if the session lives on and nobody
        // comes back [MQTT-3.1.2-8]. A record stays stored until its will has gone out.
        let mut wills = 0;
        for (key, value) in self.store.scan_prefix(Space::Wills, b"")? {
            let client_id: Arc<str> = Arc::from(String::from_utf8_lossy(&key).as_ref());
            let Some(record) = persist::decode::<WillRecord>(&value) else {
                tracing::warn!(%client_id, "unreadable will record dropped");
                let mut batch = Batch::new();
                batch.remove(Space::Wills, key);
                self.store.apply(batch)?;
                continue;
            };
            self.on_disk.will_stored(&client_id, record.owner);
            let expiry = self
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&client_id)
                .map_or(0, |s| s.lock().expiry_secs);
            let will = Will {
                msg: Message::from(record.msg),
                delay_secs: record.delay_secs,
                account: None,
            };
            if tokio::runtime::Handle::try_current().is_ok() {
                if let Some(will) = self.schedule_will(&client_id, record.owner, will, expiry) {
                    self.publish_now(&client_id, record.owner, will);
                }
                wills += 1;
            }
        }
        tracing::info!(
            sessions = restored,
            retained = self.retained_count(),
            wills,
            "store restored"
        );
        Ok(())
    }
}
