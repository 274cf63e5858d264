//! `Broker`: the state every connection shares (sessions, subscriptions, retained messages, the
//! store) and the publish path of plain MQTT (the IM world's is the gate's, `crate::im`).
//!
//! The publish path: (retain) -> match subscriptions -> queue a `Delivery` on each target session
//! and wake its connection -> write what persistent sessions are owed to the store in one batch.
//! It reports whether a flush is needed before the publisher may be acknowledged (the
//! durability rule in ARCHITECTURE.md). `emit_publish` hands a client's message to the event
//! seam (`events`).
//!
//! The rest of `Broker`, by concept: `sessions` (attach and takeover, detach, expiry, the end of
//! a session), `wills` (now or after their delay, stored while their connection lives) and
//! `restore` (what the store holds, at start).

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
use crate::things::ThingsWorld;
use crate::wire::Will;
use crate::worlds::World;
use mqtter_engine::im::{Im, MessageLog};
use mqtter_engine::things::Things;

mod restore;
mod sessions;
mod wills;

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
    pub gate: Arc<Gate>,
    /// Every world but plain MQTT and `$SYS`, which the connection layer dispatches to (see
    /// `crate::worlds`): registering a world is adding it here.
    pub worlds: Vec<Arc<dyn World>>,
    /// The things world: `thing/`, `$things/` (see `crate::things`).
    pub things: Arc<ThingsWorld>,
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
        let im = Arc::new(Im::open(store.clone(), log.clone(), config.im.engine())?);
        let events = Arc::new(Events::default());
        let gate = Arc::new(Gate::new(
            im.clone(),
            config.im.clone(),
            events.clone(),
            limits,
            config.durability == Durability::Sync,
        ));
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
        let things = Arc::new(ThingsWorld::new(
            Things::open(store.clone(), im, config.things.engine())?,
            gate.im.clone(),
            events.clone(),
            config.durability == Durability::Sync,
            commit.clone(),
        ));
        let worlds: Vec<Arc<dyn World>> = vec![gate.clone(), things.clone()];
        let broker = Arc::new(Self {
            gate,
            worlds,
            things,
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
                // `mqtt:{publisher}#{token}`, built without the formatting machinery: this
                // runs for every message while a rule is loaded.
                None => {
                    let publisher = msg.publisher.as_deref().unwrap_or("");
                    let mut digits = itoa::Buffer::new();
                    let token = digits.format(self.next_token());
                    let mut id = String::with_capacity(6 + publisher.len() + token.len());
                    id.push_str("mqtt:");
                    id.push_str(publisher);
                    id.push('#');
                    id.push_str(token);
                    Chain::start(id)
                }
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
            // An empty one clears its topic, as any retained message.
            if msg.payload.is_empty() {
                retained.remove(&msg.topic);
            } else {
                retained.insert(msg.topic.clone(), msg.clone());
            }
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
}
