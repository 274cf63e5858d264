//! Wills: published at once or after their delay, kept in the store while their connection
//! lives so that a crash does not lose them.

use super::*;

impl Broker {
    /// Publish the will of connection `owner` after its delay (bounded by the session's expiry)
    /// unless a new connection for the client id comes first; a will of no delay is handed
    /// back, to be published now (by the caller, once it holds no lock: see `publish_now`). Its
    /// stored record is removed once it has gone out.
    pub(super) fn schedule_will(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        owner: u64,
        will: Will,
        session_expiry: u32,
    ) -> Option<Will> {
        let delay = will.delay_secs.min(session_expiry);
        if delay == 0 {
            return Some(will);
        }
        let token = self.next_token();
        self.pending_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.clone(), PendingWill { token, owner, will });
        let broker = Arc::clone(self);
        let client_id = client_id.clone();
        tokio::spawn(async move {
            mqtter_engine::clock::clock()
                .sleep(Duration::from_secs(u64::from(delay)))
                .await;
            let mut pending = broker
                .pending_wills
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if pending.get(&client_id).is_some_and(|p| p.token == token)
                && let Some(due) = pending.remove(&client_id)
            {
                drop(pending);
                broker.publish_will(due.will);
                broker.forget_will(&client_id, due.owner);
            }
        });
        None
    }

    /// Publish the will of connection `owner` now; its stored record goes.
    pub(super) fn publish_now(&self, client_id: &str, owner: u64, will: Will) {
        self.publish_will(will);
        self.forget_will(client_id, owner);
    }

    pub(super) fn publish_will(&self, will: Will) {
        let mut msg = will.msg;
        // The will's expiry interval counts from when it is published.
        msg.expires_at_ms = msg.expires_at_ms.map(|secs| now_ms() + secs * 1000);
        let msg = Arc::new(msg);
        match self.publish(msg.clone()) {
            // Out through the event seam as its client's PUBLISH would be.
            Ok(_) => self.emit_publish(&msg, || self.will_actor(will.account.as_deref(), &msg)),
            Err(err) => tracing::error!(cause = %err, "cannot publish a will"),
        }
    }

    /// Who caused a will, for the event seam: the account its client logged in as; for a will
    /// kept across a restart (the account is not stored), the account whose namespace its
    /// client id is in (`ACCOUNT` or `ACCOUNT:*`, which only that account may use), else
    /// anonymous.
    fn will_actor(&self, account: Option<&str>, msg: &Message) -> Actor {
        if account.is_some() {
            return self.actor(account);
        }
        let client_id = msg.publisher.as_deref().unwrap_or_default();
        let namespace = client_id.split(':').next().unwrap_or_default();
        self.actor(Some(namespace))
    }

    /// Keep a new connection's will in the store (or drop an older connection's) so that a crash
    /// does not lose it. Durable with the next flush.
    pub fn remember_will(&self, client_id: &str, owner: u64, will: Option<&Will>) {
        let mut batch = Batch::new();
        match will {
            Some(will) => {
                self.on_disk.will_stored(client_id, owner);
                let record = WillRecord {
                    owner,
                    msg: StoredMessage::from(&will.msg),
                    delay_secs: will.delay_secs,
                };
                batch.put(
                    Space::Wills,
                    client_id.as_bytes().to_vec(),
                    persist::encode(&record),
                );
            }
            None if self.on_disk.take_will(client_id, None) => {
                batch.remove(Space::Wills, client_id.as_bytes().to_vec());
            }
            None => return,
        }
        if let Err(err) = self.store.apply(batch) {
            tracing::error!(cause = %err, client_id, "cannot store a will");
        }
    }

    /// The connection `owner` ended: its stored will (if still its own) is no longer needed.
    pub(super) fn forget_will(&self, client_id: &str, owner: u64) {
        if self.on_disk.take_will(client_id, Some(owner)) {
            let mut batch = Batch::new();
            batch.remove(Space::Wills, client_id.as_bytes().to_vec());
            if let Err(err) = self.store.apply(batch) {
                tracing::error!(cause = %err, client_id, "cannot remove a will");
            }
        }
    }
}
