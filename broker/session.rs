//! An MQTT session: subscriptions, messages queued for the client, messages in flight, and the
//! inbound QoS 2 packet ids awaiting PUBREL. Shared between the client's connection (which drains
//! it) and every publisher (which fills it), so its state sits behind one mutex.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use serde::{Deserialize, Serialize};

use crate::config::Overflow;
use crate::identity::Holder;
use crate::message::{Message, QoS};

/// Options of one subscription, as the client asked (v3 clients only set `qos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubOpts {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub sub_id: Option<u32>,
}

impl SubOpts {
    pub fn qos(&self) -> QoS {
        crate::message::qos_from_u8(self.qos)
    }
}

/// Hashes packet ids for the in-flight map: one multiplication instead of SipHash, which was a
/// visible share of every QoS 1 delivery (a packet id is no untrusted key: the broker picks it).
#[derive(Debug, Default, Clone, Copy)]
pub struct PacketIdHasher(u64);

impl Hasher for PacketIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub type PacketIdHash = BuildHasherDefault<PacketIdHasher>;

/// One message owed to this session, with what the matching subscriptions made of it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// The QoS it is sent with: the lower of the message's and the subscription's.
    pub qos: QoS,
    /// The RETAIN flag it is sent with.
    pub retain: bool,
    /// Every matching subscription identifier (v5).
    pub sub_ids: Vec<u32>,
    /// Its key in the store's queue, when this session is persistent and the QoS is 1 or 2.
    pub store_seq: Option<u64>,
}

/// A QoS 1/2 delivery sent and not yet fully acknowledged.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub delivery: Delivery,
    /// PUBREC received and PUBREL sent: only PUBCOMP is awaited.
    pub released: bool,
    /// Order of sending, so that a resend keeps it.
    pub order: u64,
    /// To be resent (DUP) on this connection once the client's Receive Maximum leaves room.
    pub resend: bool,
}

/// What the connection must send next, taken out of the session in one lock.
#[derive(Debug)]
pub enum Outgoing {
    Publish {
        packet_id: Option<u16>,
        delivery: Delivery,
        dup: bool,
    },
    Release {
        packet_id: u16,
    },
}

/// Why a connection must stop serving this session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Another connection took the client id over.
    TakenOver,
    /// The client could not keep up and the overflow policy says disconnect.
    Overflow,
    /// The broker is shutting down.
    Shutdown,
    /// The client's account was removed (a definitions file no longer declares it).
    AccountRemoved,
}

#[derive(Debug, Default)]
pub struct SessionState {
    /// Session Expiry Interval in seconds; 0 means the session ends with the connection.
    pub expiry_secs: u32,
    pub queue: VecDeque<Delivery>,
    pub inflight: HashMap<u16, Inflight, PacketIdHash>,
    /// What many sessions never use (subscriptions, QoS 2 and persistence bookkeeping),
    /// allocated on first use: every idle session would pay for the room.
    extra: Option<Box<Extra>>,
    next_packet_id: u16,
    /// The connection generation that owns this session, 0 when none.
    pub owner: u64,
    pub eviction: Option<Eviction>,
    /// Wakes the owning connection (its task, or its parked record), taken by the first wake-up.
    /// Only the owner registers it (`poll_wake`, `park_waker` check `owner`), so a connection
    /// that was taken over never takes a wake-up meant for the new one.
    waker: Option<Waker>,
    /// A wake-up happened since the owner last looked (`poll_wake`): it has something to do.
    signalled: bool,
    /// Some in-flight deliveries may still wait for their resend (see `resend_all`).
    pending_resends: bool,
}

/// The parts of a session state many sessions never use (see `SessionState::extra`).
#[derive(Debug, Default)]
struct Extra {
    subscriptions: HashMap<String, SubOpts>,
    inbound_qos2: HashSet<u16, PacketIdHash>,
    /// Order of sending of the next QoS 1/2 delivery (see `Inflight::order`).
    next_order: u64,
    /// Last sequence number used for the store's queue keys.
    next_store_seq: u64,
    /// Store sequence numbers of stored deliveries that expired in the queue: their entries
    /// are to be removed from the store (see `take_expired`).
    expired: Vec<u64>,
    /// The pending expiry timer (see `Broker::schedule_expiry`): its token (a timer with
    /// another is stale) and the handle that stops it. At most one waits: a new one or a new
    /// connection stops it, so that timers neither pile up nor outlive their session.
    expiry_timer: Option<(u64, tokio::task::AbortHandle)>,
    /// Publishers waiting for room in the queue (see `Session::has_room`).
    waiters: Vec<Waker>,
    /// The subscriber was found slow with `slow_subscriber = "drop"`: `queue_overflow` applies
    /// to it, not backpressure, until its queue is half empty again.
    shedding: bool,
    /// Who the session belongs to (anonymous unless set).
    holder: Holder,
}

impl SessionState {
    /// Persistent sessions outlive their connection, and their QoS 1/2 messages are stored.
    pub fn is_persistent(&self) -> bool {
        self.expiry_secs > 0
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The subscriptions, by filter as the client wrote it (with `$share/..`).
    pub fn subscriptions(&self) -> impl Iterator<Item = (&String, &SubOpts)> {
        self.extra.iter().flat_map(|h| h.subscriptions.iter())
    }

    pub fn add_subscription(&mut self, filter: String, opts: SubOpts) {
        self.extra_mut().subscriptions.insert(filter, opts);
    }

    pub fn remove_subscription(&mut self, filter: &str) {
        if let Some(extra) = &mut self.extra {
            extra.subscriptions.remove(filter);
        }
    }

    /// Inbound QoS 2 packet ids (PUBREC sent, PUBREL awaited).
    pub fn inbound_qos2(&self) -> impl Iterator<Item = u16> {
        self.extra
            .iter()
            .flat_map(|h| h.inbound_qos2.iter().copied())
    }

    pub fn has_inbound_qos2(&self, packet_id: u16) -> bool {
        self.extra
            .as_ref()
            .is_some_and(|h| h.inbound_qos2.contains(&packet_id))
    }

    pub fn add_inbound_qos2(&mut self, packet_id: u16) {
        self.extra_mut().inbound_qos2.insert(packet_id);
    }

    /// `false` when the id was not awaiting its PUBREL.
    pub fn remove_inbound_qos2(&mut self, packet_id: u16) -> bool {
        self.extra
            .as_mut()
            .is_some_and(|h| h.inbound_qos2.remove(&packet_id))
    }

    pub fn inbound_qos2_len(&self) -> usize {
        self.extra.as_ref().map_or(0, |h| h.inbound_qos2.len())
    }

    /// Forget every subscription and inbound QoS 2 id.
    pub fn clear_subscriptions(&mut self) {
        if let Some(extra) = &mut self.extra {
            extra.subscriptions.clear();
            extra.inbound_qos2.clear();
        }
    }

    fn next_order(&mut self) -> u64 {
        let extra = self.extra_mut();
        extra.next_order += 1;
        extra.next_order
    }

    /// The sequence number of the next message stored in this session's queue.
    fn next_store_seq(&mut self) -> u64 {
        let extra = self.extra_mut();
        extra.next_store_seq += 1;
        extra.next_store_seq
    }

    /// A message of the store's queue was restored with `seq`: new ones come after it.
    pub fn restored_store_seq(&mut self, seq: u64) {
        let extra = self.extra_mut();
        extra.next_store_seq = extra.next_store_seq.max(seq);
    }

    /// Who the session belongs to (see `identity`).
    pub fn holder(&self) -> &Holder {
        self.extra
            .as_ref()
            .map_or(&Holder::Anonymous, |e| &e.holder)
    }

    pub fn set_holder(&mut self, holder: Holder) {
        if holder != *self.holder() {
            self.extra_mut().holder = holder;
        }
    }

    /// The token of the pending expiry timer (0: none).
    pub fn expiry_token(&self) -> u64 {
        self.extra
            .as_ref()
            .and_then(|e| e.expiry_timer.as_ref())
            .map_or(0, |(token, _)| *token)
    }

    /// The expiry timer `token` waits now; the one before, if any, is stopped.
    pub fn set_expiry_timer(&mut self, token: u64, timer: tokio::task::AbortHandle) {
        if let Some((_, old)) = self.extra_mut().expiry_timer.replace((token, timer)) {
            old.abort();
        }
    }

    /// Stop the pending expiry timer, if any (the session is taken up again, or ends).
    pub fn stop_expiry_timer(&mut self) {
        if let Some((_, timer)) = self.extra.as_mut().and_then(|e| e.expiry_timer.take()) {
            timer.abort();
        }
    }

    /// The store entries of deliveries that expired unsent since the last call: the caller
    /// removes them from the store, which would otherwise bring them back at every restart.
    pub fn take_expired(&mut self) -> Vec<u64> {
        match self.extra.as_mut() {
            Some(extra) if !extra.expired.is_empty() => std::mem::take(&mut extra.expired),
            _ => Vec::new(),
        }
    }

    /// Nothing may wake the previous owner any more, and the new one starts unsignalled (it
    /// drains what is queued when it starts). Returns the previous owner's waker.
    pub fn take_waker(&mut self) -> Option<Waker> {
        self.signalled = false;
        self.waker.take()
    }

    /// Note a wake-up for the owner and take its waker (to wake once the lock is released).
    fn signal(&mut self) -> Option<Waker> {
        self.signalled = true;
        self.waker.take()
    }

    /// Whether connection `owner` should look at the session now (a wake-up since it last
    /// looked, an eviction, or no longer its own); if not, `waker` is woken at the next wake-up.
    /// The wake-up is consumed.
    pub fn poll_wake(&mut self, owner: u64, waker: &Waker) -> bool {
        if self.signalled || self.owner != owner || self.eviction.is_some() {
            self.signalled = false;
            return true;
        }
        match &self.waker {
            Some(current) if current.will_wake(waker) => {}
            _ => self.waker = Some(waker.clone()),
        }
        false
    }

    /// The packet id for a delivery: a stored one's follows from its place in the session's
    /// queue (`seq`), so that if a crash loses the record of its sending, it is sent again after
    /// the restart with the same id, which a client that already has it recognises
    /// [MQTT-4.3.3-9]. Unless that id is in use; then, as for the rest, the next free one.
    fn packet_id_for(&mut self, delivery: &Delivery) -> u16 {
        if let Some(seq) = delivery.store_seq {
            let id = (seq % 65535) as u16 + 1;
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
        self.free_packet_id()
    }

    fn free_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                continue;
            }
            if !self.inflight.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }

    /// Take what can be sent now: every queued QoS 0 message, and QoS 1/2 ones while fewer than
    /// `window` are in flight. Expired messages are dropped here [MQTT-3.3.2-5].
    pub fn take_sendable(&mut self, window: usize, now_ms: u64, out: &mut Vec<Outgoing>) {
        self.take_resends(window, out);
        while let Some(front) = self.queue.front() {
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= window {
                break;
            }
            let Some(delivery) = self.queue.pop_front() else {
                break;
            };
            if delivery.msg.is_expired(now_ms) {
                if let Some(seq) = delivery.store_seq {
                    self.extra_mut().expired.push(seq);
                }
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                out.push(Outgoing::Publish {
                    packet_id: None,
                    delivery,
                    dup: false,
                });
            } else {
                let packet_id = self.packet_id_for(&delivery);
                let order = self.next_order();
                self.inflight.insert(
                    packet_id,
                    Inflight {
                        delivery: delivery.clone(),
                        released: false,
                        order,
                        resend: false,
                    },
                );
                out.push(Outgoing::Publish {
                    packet_id: Some(packet_id),
                    delivery,
                    dup: false,
                });
            }
        }
    }

    /// Everything in flight, in the order it was first sent, to resend on a resumed session
    /// [MQTT-4.4.0-1]: PUBLISH with DUP and the original id, or PUBREL. Resent PUBLISHes use up
    /// the new connection's send quota like new ones [MQTT-4.9.0-1], [MQTT-4.9.0-2]: past
    /// `window` (released deliveries hold their slot until PUBCOMP) they wait, marked `resend`,
    /// for `take_sendable` as acknowledgements come in.
    pub fn resend_all(&mut self, window: usize, out: &mut Vec<Outgoing>) {
        let mut order: Vec<(u64, u16)> =
            self.inflight.iter().map(|(id, f)| (f.order, *id)).collect();
        order.sort_unstable();
        let mut on_wire = self.inflight.values().filter(|f| f.released).count();
        for (_, id) in order {
            let Some(f) = self.inflight.get_mut(&id) else {
                continue;
            };
            f.resend = false;
            if f.released {
                out.push(Outgoing::Release { packet_id: id });
            } else if on_wire < window {
                on_wire += 1;
                out.push(Outgoing::Publish {
                    packet_id: Some(id),
                    delivery: f.delivery.clone(),
                    dup: true,
                });
            } else {
                f.resend = true;
                self.pending_resends = true;
            }
        }
    }

    /// The resends `resend_all` held back, in order, while the window has room.
    fn take_resends(&mut self, window: usize, out: &mut Vec<Outgoing>) {
        if !self.pending_resends {
            return;
        }
        let mut waiting: Vec<(u64, u16)> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.resend && !f.released)
            .map(|(id, f)| (f.order, *id))
            .collect();
        waiting.sort_unstable();
        let mut on_wire = self.inflight.len() - waiting.len();
        for (_, id) in waiting {
            if on_wire >= window {
                return;
            }
            if let Some(f) = self.inflight.get_mut(&id) {
                f.resend = false;
                on_wire += 1;
                out.push(Outgoing::Publish {
                    packet_id: Some(id),
                    delivery: f.delivery.clone(),
                    dup: true,
                });
            }
        }
        self.pending_resends = false;
    }

    /// After a drain: the publishers waiting for room, if the queue is at most half full now
    /// (they are woken once the lock is released). A subscriber shedding load stops shedding.
    pub fn take_waiters(&mut self, limits: &QueueLimits) -> Vec<Waker> {
        match self.extra.as_mut() {
            Some(extra)
                if (!extra.waiters.is_empty() || extra.shedding)
                    && self.queue.len() <= limits.low_mark() =>
            {
                extra.shedding = false;
                std::mem::take(&mut extra.waiters)
            }
            _ => Vec::new(),
        }
    }

    /// The connection `owner` must stop: taken over or evicted. If not, `waker` is woken at the
    /// next wake-up. Unlike `poll_wake`, the wake-up is not consumed.
    pub fn poll_evicted(&mut self, owner: u64, waker: &Waker) -> bool {
        if self.owner != owner || self.eviction.is_some() {
            return true;
        }
        match &self.waker {
            Some(current) if current.will_wake(waker) => {}
            _ => self.waker = Some(waker.clone()),
        }
        false
    }

    /// Put back a message taken with `take_sendable` that could not be written.
    pub fn requeue_front(&mut self, packet_id: Option<u16>, delivery: Delivery) {
        if let Some(id) = packet_id {
            self.inflight.remove(&id);
        }
        self.queue.push_front(delivery);
    }

    /// A re-established delivery after a restart: in flight, released, with its old id.
    pub fn restore_inflight(&mut self, packet_id: u16, delivery: Delivery, released: bool) {
        let order = self.next_order();
        self.inflight.insert(
            packet_id,
            Inflight {
                delivery,
                released,
                order,
                resend: false,
            },
        );
    }
}

/// A session, shared by its connection and by publishers.
#[derive(Debug)]
pub struct Session {
    pub client_id: Arc<str>,
    state: Mutex<SessionState>,
    /// True while a connection serves the session (read without the lock by the router, to
    /// prefer online members of a shared subscription).
    online: AtomicBool,
}

/// A queued delivery dropped to make room for a newer one.
#[derive(Debug, PartialEq, Eq)]
pub struct Displaced {
    /// Its sequence number in the store, if it was stored: that entry must go too.
    pub store_seq: Option<u64>,
}

/// What `Session::offer` did with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// Queued. `store_seq`: it must be written to the store under that sequence number.
    /// `displaced`: the oldest queued delivery, dropped to make room (`drop_oldest`).
    Queued {
        store_seq: Option<u64>,
        displaced: Option<Displaced>,
    },
    /// Queued beyond the bound of a full queue (backpressure): the publisher must wait for room
    /// (`Session::has_room`). `store_seq` as for `Queued`.
    Full { store_seq: Option<u64> },
    /// Not queued: the queue was full (a drop, counted).
    Dropped,
    /// Not queued: QoS 0 is not kept for an offline session (`queue_qos0_offline = false`), as
    /// MQTT allows; not a drop.
    NotForOffline,
}

impl Session {
    pub fn new(client_id: Arc<str>) -> Self {
        Self {
            client_id,
            state: Mutex::new(SessionState::default()),
            online: AtomicBool::new(false),
        }
    }

    /// Lock the state. A poisoned lock (a panic while holding it) is recovered: the state is
    /// plain data and every operation leaves it consistent.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
        if !online {
            // An offline session holds no publisher back: the waiting ones go on.
            let waiters = self
                .lock()
                .extra
                .as_mut()
                .map(|e| std::mem::take(&mut e.waiters))
                .unwrap_or_default();
            waiters.into_iter().for_each(Waker::wake);
        }
    }

    /// Whether a publisher held back by this session's full queue may go on: the queue is at
    /// most half full, or the session is offline, evicted or shedding load. If not, `waker` is
    /// woken when that may have changed (`take_waiters`, `set_online`, `slow`).
    pub fn has_room(&self, limits: &QueueLimits, waker: &Waker) -> bool {
        let mut state = self.lock();
        if !self.is_online() || state.eviction.is_some() || state.queue.len() <= limits.low_mark() {
            return true;
        }
        let extra = state.extra_mut();
        if extra.shedding {
            return true;
        }
        if !extra.waiters.iter().any(|w| w.will_wake(waker)) {
            extra.waiters.push(waker.clone());
        }
        false
    }

    /// A publisher waited `slow_subscriber_timeout` for room here: the subscriber is slow.
    /// `disconnect`: it is evicted (DISCONNECT 0x97); otherwise it sheds load. `false` when it
    /// was not slow any more.
    pub fn slow(&self, limits: &QueueLimits, disconnect: bool) -> bool {
        let mut state = self.lock();
        if !self.is_online() || state.eviction.is_some() || state.queue.len() <= limits.low_mark() {
            return false;
        }
        let waiters = if disconnect {
            state.eviction = Some(Eviction::Overflow);
            Vec::new()
        } else {
            let extra = state.extra_mut();
            extra.shedding = true;
            std::mem::take(&mut extra.waiters)
        };
        let owner = state.signal();
        drop(state);
        waiters.into_iter().chain(owner).for_each(Waker::wake);
        true
    }

    /// Wake the connection that owns the session, if any (new messages, or an eviction).
    pub fn wake(&self) {
        let waker = self.lock().signal();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Register the waker of connection `owner`'s parked record: `false` (and nothing
    /// registered) when the connection has something to do already, as `poll_wake` says.
    pub fn park_waker(&self, owner: u64, waker: &Waker) -> bool {
        !self.lock().poll_wake(owner, waker)
    }

    /// Queue a delivery for the client and wake its connection. A full queue applies
    /// `queue_overflow` (the IM world, retained messages, wills and `$SYS` take this path).
    pub fn offer(&self, delivery: Delivery, limits: &QueueLimits) -> Offered {
        self.offer_with(delivery, limits, false)
    }

    /// As `offer`, for a client's PUBLISH: with `backpressure`, the full queue of an online
    /// session takes the delivery beyond its bound and answers `Full`: the publisher waits for
    /// room (`has_room`) before it is acknowledged or read from again.
    pub fn offer_or_hold(&self, delivery: Delivery, limits: &QueueLimits) -> Offered {
        self.offer_with(delivery, limits, limits.backpressure)
    }

    fn offer_with(&self, mut delivery: Delivery, limits: &QueueLimits, hold: bool) -> Offered {
        let online = self.is_online();
        let mut state = self.lock();
        if !online && delivery.qos == QoS::AtMostOnce && !limits.qos0_offline {
            return Offered::NotForOffline;
        }
        let mut displaced = None;
        let mut full = false;
        if state.queue.len() >= limits.max_queued {
            // An evicted session is on its way offline: it holds nobody back any more.
            let shedding = state.extra.as_ref().is_some_and(|e| e.shedding);
            match limits.overflow {
                _ if hold && online && !shedding && state.eviction.is_none() => full = true,
                Overflow::DropOldest => {
                    displaced = state.queue.pop_front().map(|oldest| Displaced {
                        store_seq: oldest.store_seq,
                    });
                }
                Overflow::Disconnect if online => {
                    state.eviction = Some(Eviction::Overflow);
                    drop(state);
                    self.wake();
                    return Offered::Dropped;
                }
                _ => return Offered::Dropped,
            }
        }
        let store_seq = if state.is_persistent() && delivery.qos != QoS::AtMostOnce {
            Some(state.next_store_seq())
        } else {
            None
        };
        delivery.store_seq = store_seq;
        state.queue.push_back(delivery);
        // The waker is taken under this lock rather than by `wake` (a second lock per message).
        let waker = if online { state.signal() } else { None };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        if full {
            return Offered::Full { store_seq };
        }
        Offered::Queued {
            store_seq,
            displaced,
        }
    }
}

impl Session {
    /// Queue a delivery whatever the queue bound (the IM sync replay, which the IM log bounds),
    /// and wake the connection.
    pub fn force(&self, delivery: Delivery) {
        self.lock().queue.push_back(delivery);
        self.wake();
    }

    /// Put deliveries at the front of the queue, in order, whatever the bound (the IM sync:
    /// it must come before anything queued while it was being read), and wake the connection.
    pub fn force_front(&self, deliveries: Vec<Delivery>) {
        let mut state = self.lock();
        for delivery in deliveries.into_iter().rev() {
            state.queue.push_front(delivery);
        }
        drop(state);
        self.wake();
    }

    /// Take every delivery with a receipt that `which` picks, still queued or unacknowledged,
    /// out of the session, and return the receipts: their world, not the MQTT session, gives
    /// them again.
    pub fn take_receipts(
        &self,
        mut which: impl FnMut(&crate::message::Receipt) -> bool,
    ) -> Vec<crate::message::Receipt> {
        self.take_deliveries(|msg| msg.receipt.filter(|r| which(r)))
    }

    /// Take every IM delivery (stamped) still queued or unacknowledged out of the session, and
    /// return their stamps: the IM log, not the MQTT session, redelivers them at the next CONNECT.
    pub fn take_im_unacked(&self) -> Vec<crate::message::Stamp> {
        self.take_deliveries(|msg| msg.stamp.clone())
    }

    /// Take every delivery, queued or in flight, that `pick` says something of out of the
    /// session, and return what it said: how a world takes back what it owns.
    fn take_deliveries<T>(&self, mut pick: impl FnMut(&Message) -> Option<T>) -> Vec<T> {
        let mut state = self.lock();
        let mut taken = Vec::new();
        let mut keep = |msg: &Message| match pick(msg) {
            Some(t) => {
                taken.push(t);
                false
            }
            None => true,
        };
        state.queue.retain(|d| keep(&d.msg));
        state.inflight.retain(|_, f| keep(&f.delivery.msg));
        taken
    }
}

/// The queue limits every session shares (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_queued: usize,
    pub overflow: Overflow,
    pub qos0_offline: bool,
    /// Hold publishers back instead of dropping for an online session (see `offer_or_hold`).
    pub backpressure: bool,
}

impl QueueLimits {
    /// A publisher held back by a full queue goes on once it is at most this long.
    pub fn low_mark(&self) -> usize {
        self.max_queued / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ntex_bytes::Bytes;

    fn delivery(qos: QoS) -> Delivery {
        Delivery {
            msg: Arc::new(Message::system("t", Bytes::from_static(b"x"), false)),
            qos,
            retain: false,
            sub_ids: vec![],
            store_seq: None,
        }
    }

    #[test]
    fn stored_deliveries_that_expire_unsent_are_reported_for_removal() {
        let mut state = SessionState::default();
        let mut expiring = delivery(QoS::AtLeastOnce);
        let mut msg = Message::system("t", Bytes::from_static(b"x"), false);
        msg.expires_at_ms = Some(10);
        expiring.msg = Arc::new(msg);
        expiring.store_seq = Some(7);
        state.queue.push_back(expiring);
        state.queue.push_back(delivery(QoS::AtLeastOnce));
        let mut out = Vec::new();
        state.take_sendable(10, 20, &mut out);
        assert_eq!(out.len(), 1, "the expired one is not sent");
        assert_eq!(state.take_expired(), [7]);
        assert!(state.take_expired().is_empty(), "reported once");
    }

    #[test]
    fn window_limits_qos1_but_not_qos0() {
        let mut state = SessionState::default();
        for _ in 0..3 {
            state.queue.push_back(delivery(QoS::AtLeastOnce));
        }
        state.queue.push_back(delivery(QoS::AtMostOnce));
        let mut out = Vec::new();
        state.take_sendable(2, 0, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(state.inflight.len(), 2);
        assert_eq!(state.queue.len(), 2);
    }

    #[test]
    fn resend_keeps_order_and_ids() {
        let mut state = SessionState::default();
        for _ in 0..3 {
            state.queue.push_back(delivery(QoS::ExactlyOnce));
        }
        let mut out = Vec::new();
        state.take_sendable(10, 0, &mut out);
        if let Some(f) = state.inflight.get_mut(&2) {
            f.released = true;
        }
        let mut again = Vec::new();
        state.resend_all(10, &mut again);
        let ids: Vec<String> = again
            .iter()
            .map(|o| match o {
                Outgoing::Publish { packet_id, dup, .. } => {
                    format!("P{}{}", packet_id.unwrap_or(0), dup)
                }
                Outgoing::Release { packet_id } => format!("R{packet_id}"),
            })
            .collect();
        assert_eq!(ids, ["P1true", "R2", "P3true"]);
    }

    #[test]
    fn resends_wait_for_room_in_the_window() {
        let mut state = SessionState::default();
        for _ in 0..3 {
            state.queue.push_back(delivery(QoS::AtLeastOnce));
        }
        state.queue.push_back(delivery(QoS::AtLeastOnce));
        let mut out = Vec::new();
        state.take_sendable(3, 0, &mut out);
        let ids = |out: &[Outgoing]| -> Vec<String> {
            out.iter()
                .map(|o| match o {
                    Outgoing::Publish { packet_id, dup, .. } => {
                        format!("P{}{}", packet_id.unwrap_or(0), dup)
                    }
                    Outgoing::Release { packet_id } => format!("R{packet_id}"),
                })
                .collect()
        };
        // Resumed with a window of 1: one resend now, the next once id 1 is acknowledged, and
        // the queued message only after every resend.
        let mut again = Vec::new();
        state.resend_all(1, &mut again);
        assert_eq!(ids(&again), ["P1true"]);
        let mut more = Vec::new();
        state.take_sendable(1, 0, &mut more);
        assert!(more.is_empty());
        for (acked, expect) in [(1, "P2true"), (2, "P3true"), (3, "P4false")] {
            state.inflight.remove(&acked);
            let mut more = Vec::new();
            state.take_sendable(1, 0, &mut more);
            assert_eq!(ids(&more), [expect]);
        }
    }

    #[test]
    fn overflow_policies() {
        let session = Session::new(Arc::from("c"));
        session.set_online(true);
        let limits = QueueLimits {
            max_queued: 2,
            overflow: Overflow::DropNew,
            qos0_offline: false,
            backpressure: true,
        };
        let queued = Offered::Queued {
            store_seq: None,
            displaced: None,
        };
        assert_eq!(session.offer(delivery(QoS::AtMostOnce), &limits), queued);
        assert_eq!(session.offer(delivery(QoS::AtMostOnce), &limits), queued);
        assert_eq!(
            session.offer(delivery(QoS::AtMostOnce), &limits),
            Offered::Dropped
        );
        let drop_oldest = QueueLimits {
            overflow: Overflow::DropOldest,
            ..limits
        };
        assert_eq!(
            session.offer(delivery(QoS::AtMostOnce), &drop_oldest),
            Offered::Queued {
                store_seq: None,
                displaced: Some(Displaced { store_seq: None }),
            }
        );
        assert_eq!(session.lock().queue.len(), 2);
        let limits = QueueLimits {
            overflow: Overflow::Disconnect,
            ..limits
        };
        assert_eq!(
            session.offer(delivery(QoS::AtMostOnce), &limits),
            Offered::Dropped
        );
        assert_eq!(session.lock().eviction, Some(Eviction::Overflow));
        session.set_online(false);
        assert_eq!(
            session.offer(delivery(QoS::AtMostOnce), &limits),
            Offered::NotForOffline
        );
    }
}
