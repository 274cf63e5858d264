//! Sessions of the broker: attaching a connection (creating, resuming or replacing a session,
//! taking over an older connection), detaching it, expiry, the end of a session, its record.

use super::*;

impl Broker {
    /// Attach a new connection (generation `owner`) to the session of `client_id`, creating it,
    /// resuming it, or replacing it when `clean_start`. An older connection on the same client id
    /// is told to go [MQTT-3.1.4-3]. Returns the session and whether an old one was resumed;
    /// `None` when the session belongs to another identity than `account` (see `identity`):
    /// then nothing changed.
    pub fn attach(
        &self,
        client_id: &str,
        account: Option<&str>,
        clean_start: bool,
        expiry_secs: u32,
        owner: u64,
    ) -> Option<(Arc<Session>, bool)> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let existing = sessions.get(client_id).cloned();
        let mut clean_start = clean_start;
        if let Some(old) = &existing {
            match identity::claim(old.lock().holder(), account, client_id) {
                Claim::Own => {}
                Claim::Foreign => return None,
                Claim::Reclaim => {
                    tracing::warn!(
                        client_id,
                        "a session made before its account existed is ended, not resumed"
                    );
                    clean_start = true;
                }
            }
        }
        // A new connection for this client id stops a delayed will [MQTT-3.1.3-9].
        self.pending_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(client_id);
        if let Some(old) = &existing {
            let mut state = old.lock();
            state.stop_expiry_timer();
            if state.owner != 0 {
                state.eviction = Some(Eviction::TakenOver);
                state.owner = 0;
                let old_waker = state.take_waker();
                drop(state);
                old.set_online(false);
                // A busy old connection sees the new owner the next time it looks at the session;
                // a waiting or parked one is woken to look.
                if let Some(old_waker) = old_waker {
                    old_waker.wake();
                }
            }
        }
        let (session, present) = match existing {
            Some(old) if !clean_start => (old, true),
            Some(old) => {
                self.discard(&old);
                sessions.remove(client_id);
                (Arc::new(Session::new(Arc::from(client_id))), false)
            }
            None => (Arc::new(Session::new(Arc::from(client_id))), false),
        };
        {
            let mut state = session.lock();
            state.owner = owner;
            state.set_holder(Holder::of(account));
            state.eviction = None;
            state.expiry_secs = expiry_secs;
            state.take_waker();
        }
        session.set_online(true);
        sessions.insert(session.client_id.clone(), session.clone());
        drop(sessions);
        if expiry_secs > 0 {
            self.save_session(&session, None);
        } else if present {
            // The session was persistent and now ends with this connection: forget it on disk.
            self.forget_on_disk(&session.client_id);
        }
        Some((session, present))
    }

    /// A connection of generation `owner` has ended. Publishes or schedules the will, and ends
    /// the session or keeps it for its expiry.
    ///
    /// The stored will record lives as long as the will may still go out: it is removed here
    /// when the will is published now or not at all, and kept while a delayed will waits (the
    /// timer removes it) or when the broker is stopping (`Departure::Shutdown`: the next start
    /// publishes it, as after a crash, since the client never said goodbye).
    pub fn detach(self: &Arc<Self>, session: &Arc<Session>, owner: u64, departure: Departure) {
        let will = match departure {
            Departure::Shutdown => None,
            Departure::Goodbye => {
                self.forget_will(&session.client_id, owner);
                None
            }
            Departure::Will(will) => Some(will),
        };
        // Decided under the sessions' lock, which `attach` holds throughout: a new connection for
        // the client id is attached wholly before (it took the session over) or wholly after
        // (it finds the session detached and its delayed will pending, and cancels it). Without
        // it, a reconnection that came between the owner's reset and the pending will (or
        // between a takeover's two steps) had the will published although the client was back
        // within the delay [MQTT-3.1.2-8], and its session marked offline. Wills go out once
        // the lock is released.
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let expiry = {
            let mut state = session.lock();
            if state.owner != owner {
                // Taken over: the new connection owns the session now. The will goes out now if
                // the session ended with the takeover (Clean Start) or has no delay; a connection
                // that continues the session within the Will Delay Interval cancels it
                // [MQTT-3.1.2-8].
                let continued = state.owner != 0;
                drop(state);
                drop(sessions);
                if let Some(will) = will
                    && (!continued || will.delay_secs == 0)
                {
                    self.publish_will(will);
                }
                // The new connection has stored its own will (or none) already, so this only
                // removes a record still ours.
                self.forget_will(&session.client_id, owner);
                return;
            }
            state.owner = 0;
            state.take_waker();
            state.expiry_secs
        };
        session.set_online(false);
        let now = will.and_then(|will| self.schedule_will(&session.client_id, owner, will, expiry));
        if expiry == 0 {
            Self::unlist(&mut sessions, session);
            self.discard(session);
        } else {
            self.save_session(session, Some(now_ms()));
            self.schedule_expiry(session.clone(), expiry);
        }
        drop(sessions);
        if let Some(will) = now {
            self.publish_now(&session.client_id, owner, will);
        }
        if expiry == 0 {
            self.publish_pending_will(&session.client_id);
        }
    }

    pub(super) fn schedule_expiry(self: &Arc<Self>, session: Arc<Session>, expiry_secs: u32) {
        if expiry_secs == u32::MAX {
            return; // never expires
        }
        // The timer only ends the session if nothing attached it since (a reconnect and a new
        // disconnect start a new timer with a new token, and stop this one). It holds the
        // session weakly: a session ended meanwhile (by a Clean Start) is freed at once, not
        // when an expiry that no longer applies runs out, which can be days.
        let token = self.next_token();
        let broker = Arc::clone(self);
        let weak = Arc::downgrade(&session);
        let mut state = session.lock();
        let timer = tokio::spawn(async move {
            mqtter_engine::clock::clock()
                .sleep(Duration::from_secs(u64::from(expiry_secs)))
                .await;
            let Some(session) = weak.upgrade() else {
                return;
            };
            let due = {
                let state = session.lock();
                state.owner == 0 && state.expiry_token() == token
            };
            if due {
                broker.end_session(&session);
            }
        });
        state.set_expiry_timer(token, timer.abort_handle());
    }

    /// End a session for good: its subscriptions, queue and record go; a pending will is sent.
    pub fn end_session(&self, session: &Arc<Session>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        Self::unlist(&mut sessions, session);
        drop(sessions);
        self.discard(session);
        self.publish_pending_will(&session.client_id);
    }

    /// `session` leaves the map, unless another session of its client id has replaced it.
    fn unlist(sessions: &mut HashMap<Arc<str>, Arc<Session>>, session: &Arc<Session>) {
        if sessions
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&session.client_id);
        }
    }

    /// The session of `client_id` has ended: its delayed will, if one waits, goes out now.
    fn publish_pending_will(&self, client_id: &str) {
        let will = self
            .pending_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(client_id);
        if let Some(pending) = will {
            self.publish_will(pending.will);
            self.forget_will(client_id, pending.owner);
        }
    }

    pub(super) fn discard(&self, session: &Session) {
        let filters: Vec<String> = session
            .lock()
            .subscriptions()
            .map(|(filter, _)| filter.clone())
            .collect();
        {
            let mut router = self.router.write().unwrap_or_else(|p| p.into_inner());
            for filter in &filters {
                if let Ok(split) = crate::topic::split_share(filter) {
                    router.unsubscribe(split.filter, split.group, session);
                }
            }
        }
        let mut state = session.lock();
        state.clear_subscriptions();
        state.queue.clear();
        state.inflight.clear();
        drop(state);
        self.forget_on_disk(&session.client_id);
    }

    pub(super) fn forget_on_disk(&self, client_id: &str) {
        if !self.on_disk.take_session(client_id) {
            return; // nothing stored: no scan of the store
        }
        let mut batch = Batch::new();
        batch.remove(Space::Sessions, client_id.as_bytes());
        match self
            .store
            .scan_prefix(Space::Queue, &persist::client_prefix(client_id))
        {
            Ok(entries) => entries
                .into_iter()
                .for_each(|(key, _)| batch.remove(Space::Queue, key)),
            Err(err) => tracing::error!(cause = %err, client_id, "cannot list a session's queue"),
        }
        if let Err(err) = self.store.apply(batch) {
            tracing::error!(cause = %err, client_id, "cannot remove a session from the store");
        }
    }

    /// Write the session record of a persistent session.
    pub fn save_session(&self, session: &Session, disconnected_at_ms: Option<u64>) {
        let state = session.lock();
        if !state.is_persistent() {
            return;
        }
        let record = SessionRecord {
            expiry_secs: state.expiry_secs,
            subscriptions: state
                .subscriptions()
                .map(|(f, o)| (f.clone(), *o))
                .collect(),
            inbound_qos2: state.inbound_qos2().collect(),
            disconnected_at_ms,
            holder: state.holder().into(),
        };
        drop(state);
        self.on_disk.session_stored(&session.client_id);
        let mut batch = Batch::new();
        batch.put(
            Space::Sessions,
            session.client_id.as_bytes(),
            persist::encode(&record),
        );
        if let Err(err) = self.store.apply(batch) {
            tracing::error!(cause = %err, client_id = %session.client_id, "cannot save a session");
        }
    }

    /// Tell every connection of `account` to go (its account was removed): DISCONNECT 0x87 on
    /// v5, the connection closed on v3. Returns how many were told.
    pub fn evict_account(&self, account: &str) -> usize {
        let mut told = 0;
        for session in self.all_sessions() {
            let mut state = session.lock();
            let held = matches!(state.holder(), Holder::Account(a) if &**a == account);
            if state.owner != 0 && held {
                state.eviction = Some(Eviction::AccountRemoved);
                drop(state);
                session.wake();
                told += 1;
            }
        }
        told
    }

    /// Tell every connection to go (shutdown); they flush what they owe and close.
    pub fn evict_all(&self) {
        let sessions = self.all_sessions();
        for session in sessions {
            let mut state = session.lock();
            if state.owner != 0 {
                state.eviction = Some(Eviction::Shutdown);
                drop(state);
                session.wake();
            }
        }
    }
}
