//! `Broker`: the state every connection shares (sessions, subscriptions, retained messages, the
//! store) and the one publish path every message takes.
//!
//! The publish path: (retain) -> match subscriptions -> queue a `Delivery` on each target session
//! and wake its connection -> write what persistent sessions are owed to the store in one batch
//! It reports whether a flush is needed before the publisher may be acknowledged (the
//! durability rule in ARCHITECTURE.md). `emit_publish` hands a client's message to the event
//! seam (`events`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mqtter_engine::events::{
    Actor, ActorKind, Chain, Event, EventData, EventKind, Events, PublishEvent,
};
use mqtter_engine::{Batch, GroupCommit, Space, Staged, Store, StoreError};
use ntex_bytes::ByteString;

use crate::auth::{AccountKind, Accounts, Acl};
use crate::config::{Config, Durability};
use crate::counted_store::CountedStore;
use crate::disk::{Disk, FreeLimit};
use crate::identity::{self, Claim, Holder};
use crate::im::Gate;
use crate::message::{Message, QoS, StoredMessage, now_ms};
use crate::metrics::Histogram;
use crate::metrics::Metrics;
use crate::persist::{self, QueuedHeader, SessionRecord, WillRecord};
use crate::router::Router;
use crate::session::{Delivery, Eviction, Offered, QueueLimits, Session};
use crate::wire::Will;
use mqtter_engine::im::{Im, MessageLog};

/// What publishing one message did.
#[derive(Debug, Default)]
pub struct Published {
    /// Sessions the message was queued for.
    pub delivered: usize,
    /// Sessions the topic matched (queued or not).
    pub matched: usize,
    /// The message was written to the store and must be flushed before it is acknowledged.
    pub needs_flush: bool,
    /// Online sessions whose queue it was queued beyond the bound of (backpressure, see
    /// `publish_or_hold`): the publisher waits for room in each before it goes on.
    pub full: Vec<Arc<Session>>,
}

/// Messages held by sessions (see `Broker::queue_depths`).
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueDepths {
    /// Queued in all sessions, waiting to be sent.
    pub queued: u64,
    /// Queued in the fullest session.
    pub largest: u64,
    /// Sent and not yet acknowledged, in all sessions.
    pub inflight: u64,
}

/// How a connection left, as far as its will is concerned.
#[derive(Debug)]
pub enum Departure {
    /// DISCONNECT 0x00: the will is discarded [MQTT-3.1.2-10].
    Goodbye,
    /// Any other end (network loss, protocol error, keepalive timeout, DISCONNECT 0x04,
    /// takeover): the will goes out, now or after its delay.
    Will(Will),
    /// The broker is stopping: the will stays stored and goes out at the next start.
    Shutdown,
}

/// A will waiting for its delay.
struct PendingWill {
    /// The timer that owns it (a newer timer or a reconnection replaces it).
    token: u64,
    /// The connection whose stored record keeps it across a crash.
    owner: u64,
    will: Will,
}

/// The shared state of the running broker.
pub struct Broker {
    pub config: Config,
    pub store: Arc<dyn Store>,
    commit: GroupCommit,
    pub accounts: Accounts,
    pub acl: Acl,
    pub router: RwLock<Router>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    retained: RwLock<HashMap<ByteString, Arc<Message>>>,
    /// Wills waiting for their delay, by client id: the will, the token of the timer that owns
    /// it and the connection (owner) whose stored record keeps it across a crash.
    pending_wills: Mutex<HashMap<Arc<str>, PendingWill>>,
    pub metrics: Metrics,
    next_token: AtomicU64,
    pub limits: QueueLimits,
    /// The event seam: every source emits here (plain publishes, the IM world).
    pub events: Arc<Events>,
    /// The IM world: `person/`, `group/`, `$im/` (see `crate::im`).
    pub gate: Gate,
    /// Where idle connections wait without a task (see `crate::connection`).
    pub parking: crate::parking::Parking,
    /// Password checks, bounded (see `crate::logins`).
    pub logins: crate::logins::Logins,
    /// The free space of the data folder's filesystem against `disk_free_limit`.
    pub disk: Arc<Disk>,
    /// Which clients have wills and sessions in the store (so others never read it).
    on_disk: crate::on_disk::OnDisk,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A topic of the broker's own `$SYS` tree.
fn is_system(topic: &str) -> bool {
    topic.starts_with("$SYS/")
}

/// The store (relations, sessions, retained messages, ...) and the message log (IM messages):
/// one flush makes both durable. A failure of the log's counts in `errors` (the store counts
/// its own, see `CountedStore`).
/// Its time goes into `latency`.
fn flush_both(
    store: &dyn Store,
    log: &MessageLog,
    errors: &AtomicU64,
    latency: &Histogram,
) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let result = store.flush().and_then(|()| {
        log.sync().map_err(|err| {
            errors.fetch_add(1, Ordering::Relaxed);
            StoreError::from(err)
        })
    });
    latency.observe(started.elapsed());
    result
}

impl Broker {
    /// Build the broker over `store` and restore what it holds (retained messages, sessions).
    pub fn open(config: Config, store: Arc<dyn Store>) -> Result<Arc<Self>, StoreError> {
        let limits = QueueLimits {
            max_queued: config.limits.max_queued,
            overflow: config.limits.queue_overflow,
            qos0_offline: config.limits.queue_qos0_offline,
            backpressure: config.limits.backpressure,
        };
        let metrics = Metrics::default();
        let counted: Arc<dyn Store> =
            Arc::new(CountedStore::new(store, metrics.store_errors.clone()));
        // Writes are staged and applied by the store's own thread: a slow or stuck backend
        // never holds up a connection's task (see `mqtter_engine::staged`).
        let slow = Duration::from_millis(config.store.slow_call_ms.max(1));
        let store: Arc<dyn Store> = Arc::new(Staged::new(counted, slow)?);
        let log = Arc::new(MessageLog::open(&config.data.join("messages"))?);
        let free_limit =
            FreeLimit::parse(&config.store.disk_free_limit).unwrap_or(FreeLimit::Bytes(0));
        let disk = Arc::new(Disk::new(config.data.clone(), free_limit));
        let im = Im::open(store.clone(), log.clone(), config.im.engine())?;
        let events = Arc::new(Events::default());
        let gate = Gate::new(
            im,
            config.im.clone(),
            events.clone(),
            limits,
            config.durability == Durability::Sync,
        );
        let commit = {
            let store = store.clone();
            let errors = metrics.store_errors.clone();
            let latency = metrics.flush_latency.clone();
            let gap = match config.durability {
                Durability::Sync => Duration::from_micros(config.flush_gap_us),
                Durability::Async => Duration::ZERO,
            };
            GroupCommit::start_with(move || flush_both(&*store, &log, &errors, &latency), gap)
        };
        let broker = Arc::new(Self {
            gate,
            commit,
            accounts: Accounts::new(store.clone()),
            acl: Acl::new(config.acl.clone()),
            router: RwLock::new(Router::default()),
            sessions: Mutex::new(HashMap::new()),
            retained: RwLock::new(HashMap::new()),
            pending_wills: Mutex::new(HashMap::new()),
            metrics,
            next_token: AtomicU64::new(1),
            limits,
            events,
            parking: Default::default(),
            logins: crate::logins::Logins::new(
                config.limits.password_checks,
                config.limits.password_queue,
            ),
            disk,
            on_disk: Default::default(),
            config,
            store,
        });
        broker.restore()?;
        Ok(broker)
    }

    /// Who an authenticated `username` (or an anonymous client) is, for an event.
    pub fn actor(&self, username: Option<&str>) -> Actor {
        let kind = username.and_then(|name| self.gate.im.with_graph(|g| g.account_kind(name)));
        match (username, kind) {
            (Some(name), Some(AccountKind::Thing)) => Actor {
                account: Some(Arc::from(name)),
                kind: ActorKind::Thing,
            },
            (Some(name), Some(AccountKind::Person)) => Actor::person(name),
            // A name that is no account logs in only as an anonymous client.
            _ => Actor::anonymous(),
        }
    }

    /// Hand a routed plain message to the event seam, if anyone wants publishes: caused by
    /// `actor` (made only then), in the chain its `chain-id` / `chain-hop` user properties name,
    /// else in a chain of its own.
    pub fn emit_publish(&self, msg: &Message, actor: impl FnOnce() -> Actor) {
        self.events.emit_with(EventKind::Publish, || {
            let user_properties: Vec<(String, String)> = msg
                .props
                .iter()
                .flat_map(|p| p.user_properties.iter())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let property = |name: &str| {
                user_properties
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            let chain = match property("chain-id") {
                Some(id) => Chain {
                    id: Arc::from(id),
                    hop: property("chain-hop")
                        .and_then(|h| h.parse().ok())
                        .unwrap_or(0),
                },
                None => Chain::start(format!(
                    "mqtt:{}#{}",
                    msg.publisher.as_deref().unwrap_or(""),
                    self.next_token()
                )),
            };
            let payload = msg.payload.clone();
            Event {
                actor: actor(),
                at: now_ms(),
                chain,
                data: EventData::Publish(PublishEvent {
                    topic: msg.topic.to_string(),
                    // The same bytes, not a copy.
                    payload: bytes::Bytes::from_owner(payload),
                    qos: u8::from(msg.qos),
                    retain: msg.retain,
                    user_properties,
                }),
            }
        });
    }

    pub fn next_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Make everything written so far durable, blocking (at shutdown).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        flush_both(
            &*self.store,
            self.gate.im.log(),
            &self.metrics.store_errors,
            &self.metrics.flush_latency,
        )
    }

    /// Resolves once everything written so far is durable.
    pub async fn durable(&self) -> Result<(), Arc<StoreError>> {
        self.commit.durable().await
    }

    pub fn is_sync(&self) -> bool {
        self.config.durability == Durability::Sync
    }

    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Every session, connected or not (a snapshot: none is locked).
    fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Messages waiting in sessions' queues and in flight (for `/metrics`): each session is
    /// locked a moment in turn.
    pub fn queue_depths(&self) -> QueueDepths {
        let sessions = self.all_sessions();
        let mut depths = QueueDepths::default();
        for session in sessions {
            let state = session.lock();
            let queued = state.queue.len() as u64;
            depths.queued += queued;
            depths.largest = depths.largest.max(queued);
            depths.inflight += state.inflight.len() as u64;
        }
        depths
    }

    pub fn retained_count(&self) -> usize {
        self.retained
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    // ----- publishing -------------------------------------------------------------------------

    /// Route one message to every matching session. See the module doc. A full queue applies
    /// `queue_overflow` (wills, `$SYS`, actions of the broker itself: nobody to hold back).
    pub fn publish(&self, msg: Arc<Message>) -> Result<Published, StoreError> {
        self.route(msg, false)
    }

    /// As `publish`, for a client's PUBLISH: the full queue of an online session takes it beyond
    /// its bound (with `backpressure`), and `Published::full` names the sessions to wait for.
    pub fn publish_or_hold(&self, msg: Arc<Message>) -> Result<Published, StoreError> {
        self.route(msg, true)
    }

    fn route(&self, msg: Arc<Message>, hold: bool) -> Result<Published, StoreError> {
        let mut batch = Batch::new();
        if msg.retain {
            self.retain(&msg, &mut batch);
        }
        let targets = self
            .router
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .matches(&msg.topic);
        let mut published = Published {
            matched: targets.len(),
            ..Default::default()
        };
        let mut encoded_body: Option<Vec<u8>> = None;
        for target in targets {
            if target.no_local
                && msg
                    .publisher
                    .as_deref()
                    .is_some_and(|p| *p == *target.session.client_id)
            {
                continue;
            }
            let qos = msg.qos.min(crate::message::qos_from_u8(target.qos));
            let delivery = Delivery {
                msg: msg.clone(),
                qos,
                retain: target.retain_as_published && msg.retain,
                sub_ids: target.sub_ids,
                store_seq: None,
            };
            let header = QueuedHeader {
                qos: u8::from(qos),
                retain: delivery.retain,
                sub_ids: delivery.sub_ids.clone(),
                released_packet_id: None,
                sent_packet_id: None,
            };
            let offered = if hold {
                target.session.offer_or_hold(delivery, &self.limits)
            } else {
                target.session.offer(delivery, &self.limits)
            };
            let (store_seq, displaced) = match offered {
                Offered::Queued {
                    store_seq,
                    displaced,
                } => (store_seq, displaced),
                Offered::Full { store_seq } => {
                    published.full.push(target.session.clone());
                    (store_seq, None)
                }
                Offered::Dropped => {
                    self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Offered::NotForOffline => continue,
            };
            published.delivered += 1;
            if let Some(oldest) = displaced {
                self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(seq) = oldest.store_seq {
                    batch.remove(
                        Space::Queue,
                        persist::queue_key(&target.session.client_id, seq),
                    );
                }
            }
            if let Some(seq) = store_seq {
                let body = encoded_body
                    .get_or_insert_with(|| persist::encode(&StoredMessage::from(&*msg)));
                batch.put(
                    Space::Queue,
                    persist::queue_key(&target.session.client_id, seq),
                    persist::queued_value(&header, body),
                );
            }
        }
        if !batch.is_empty() {
            published.needs_flush = msg.qos != QoS::AtMostOnce && self.is_sync();
            self.store.apply(batch)?;
        }
        Ok(published)
    }

    /// Would routing `msg` write to the store: a retained message kept, or a QoS 1/2 copy for
    /// a persistent session? (Asked below the free-space limit, see `disk`.)
    pub fn would_store(&self, msg: &Message) -> bool {
        if msg.retain && !msg.payload.is_empty() && !is_system(&msg.topic) {
            return true;
        }
        if msg.qos == QoS::AtMostOnce {
            return false;
        }
        let targets = self
            .router
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .matches(&msg.topic);
        targets
            .iter()
            .any(|t| t.qos > 0 && t.session.lock().is_persistent())
    }

    fn retain(&self, msg: &Arc<Message>, batch: &mut Batch) {
        let mut retained = self.retained.write().unwrap_or_else(|p| p.into_inner());
        if is_system(&msg.topic) {
            // `$SYS` values are the broker's own, published anew every interval from the first
            // moment: kept in memory only (no store write per tick, nothing stale after a restart).
            retained.insert(msg.topic.clone(), msg.clone());
        } else if msg.payload.is_empty() {
            // An empty retained message clears the topic and is not stored [MQTT-3.3.1-10].
            if retained.remove(&msg.topic).is_some() {
                batch.remove(Space::Retained, msg.topic.as_bytes().to_vec());
            }
        } else {
            retained.insert(msg.topic.clone(), msg.clone());
            batch.put(
                Space::Retained,
                msg.topic.as_bytes().to_vec(),
                persist::encode(&StoredMessage::from(&**msg)),
            );
        }
    }

    /// The retained messages whose topics match `filter`.
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = now_ms();
        let retained = self.retained.read().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<Arc<Message>> = retained
            .values()
            .filter(|m| crate::topic::matches(filter, &m.topic) && !m.is_expired(now))
            .cloned()
            .collect();
        found.sort_by(|a, b| a.topic.cmp(&b.topic));
        found
    }

    // ----- sessions ---------------------------------------------------------------------------

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
        let expiry = {
            let mut state = session.lock();
            if state.owner != owner {
                // Taken over: the new connection owns the session now. The will goes out now if
                // the session ended with the takeover (Clean Start) or has no delay; a connection
                // that continues the session within the Will Delay Interval cancels it
                // [MQTT-3.1.2-8].
                let continued = state.owner != 0;
                drop(state);
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
        if let Some(will) = will {
            self.schedule_will(&session.client_id, owner, will, expiry);
        }
        if expiry == 0 {
            self.end_session(session);
        } else {
            self.save_session(session, Some(now_ms()));
            self.schedule_expiry(session.clone(), expiry);
        }
    }

    fn schedule_expiry(self: &Arc<Self>, session: Arc<Session>, expiry_secs: u32) {
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
            tokio::time::sleep(Duration::from_secs(u64::from(expiry_secs))).await;
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
        if sessions
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&session.client_id);
        }
        drop(sessions);
        self.discard(session);
        let will = self
            .pending_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&session.client_id);
        if let Some(pending) = will {
            self.publish_will(pending.will);
            self.forget_will(&session.client_id, pending.owner);
        }
    }

    fn discard(&self, session: &Session) {
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

    fn forget_on_disk(&self, client_id: &str) {
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

    // ----- wills ------------------------------------------------------------------------------

    /// Publish the will of connection `owner` now, or after its delay (bounded by the session's
    /// expiry) unless a new connection for the client id comes first. Its stored record is
    /// removed once it has gone out.
    fn schedule_will(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        owner: u64,
        will: Will,
        session_expiry: u32,
    ) {
        let delay = will.delay_secs.min(session_expiry);
        if delay == 0 {
            self.publish_will(will);
            self.forget_will(client_id, owner);
            return;
        }
        let token = self.next_token();
        self.pending_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client_id.clone(), PendingWill { token, owner, will });
        let broker = Arc::clone(self);
        let client_id = client_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
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
    }

    fn publish_will(&self, will: Will) {
        let mut msg = will.msg;
        // The will's expiry interval counts from when it is published.
        msg.expires_at_ms = msg.expires_at_ms.map(|secs| now_ms() + secs * 1000);
        if let Err(err) = self.publish(Arc::new(msg)) {
            tracing::error!(cause = %err, "cannot publish a will");
        }
    }

    // ----- restart ----------------------------------------------------------------------------

    fn restore(self: &Arc<Self>) -> Result<(), StoreError> {
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
            };
            if tokio::runtime::Handle::try_current().is_ok() {
                self.schedule_will(&client_id, record.owner, will, expiry);
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
    fn forget_will(&self, client_id: &str, owner: u64) {
        if self.on_disk.take_will(client_id, Some(owner)) {
            let mut batch = Batch::new();
            batch.remove(Space::Wills, client_id.as_bytes().to_vec());
            if let Err(err) = self.store.apply(batch) {
                tracing::error!(cause = %err, client_id, "cannot remove a will");
            }
        }
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
