//! The connection's heart: one task (`Core`) that owns every piece of state, fed in order by the
//! rumqttc event loop's pump task and by the client handles' commands.
//!
//! **Sending.** Every PUBLISH of the client (messages, requests, presence) is an entry of the
//! outbox, published at QoS 1 and kept until its PUBACK (a message) or its answer (a request).
//! rumqttc numbers packets itself and reports `Outgoing::Publish(pkid)` in the order the
//! PUBLISHes were handed to it (one task hands them all), so the outbox maps packet ids to its
//! entries in that order. The MQTT session is persistent, so rumqttc and the server resend
//! what was in flight when a connection dropped; if the server had lost the session (it
//! expired), everything unacknowledged is published again. A message's `cid` makes every
//! resend harmless: the server stores it once.
//!
//! **Receiving.** Each message is checked against the cache: a `(conv, seq)` already there is a
//! duplicate (dropped); a `seq` past the conversation's mark + 1 shows a gap, which is fetched
//! with `history` before the message (and those after it) are yielded. So the event stream
//! yields each message once, in `seq` order per conversation, with no gap, across reconnects.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, ConnectionError, Event as MqttEvent, EventLoop};
use rumqttc::{Outgoing, v5::mqttbytes::v5::ConnectReturnCode};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::types::{ConvId, Event, Message, Notice, Presence, Receipt, Roster};

/// How many messages one gap-filling `history` request asks for (the server's most).
const PAGE: u64 = 100;

/// What the core task is fed.
pub(crate) enum Input {
    /// From the pump: what rumqttc reported.
    Mqtt(Box<MqttEvent>),
    /// From the pump: the connection failed; the next attempt comes after `retry_in`.
    Lost { reason: String, retry_in: Duration },
    /// From a handle.
    Cmd(Cmd),
    /// The last handle is gone, or `close` was called.
    Shutdown(Option<oneshot::Sender<()>>),
}

/// What a handle asks of the core.
pub(crate) enum Cmd {
    /// Publish a message (answered at its PUBACK).
    Message {
        conv: ConvId,
        /// The peer or the group (the envelope's `to`).
        to: String,
        body: Value,
        cid: String,
        reply: oneshot::Sender<Result<()>>,
    },
    /// A `$im/req` request, answered by its `res`.
    Request {
        request: Value,
        reply: oneshot::Sender<Result<Value>>,
    },
    /// Publish and forget (presence, status text): QoS 1, retried like the rest.
    Fire { topic: String, payload: Bytes },
    /// SUBSCRIBE (a group join), answered by its SUBACK's first code.
    Subscribe {
        filter: String,
        reply: oneshot::Sender<Result<u8>>,
    },
}

enum Kind {
    Message(Option<oneshot::Sender<Result<()>>>),
    /// A message of this device's own, in `conv`.
    Own(ConvId, Option<oneshot::Sender<Result<()>>>),
    Request {
        id: String,
        reply: Option<oneshot::Sender<Result<Value>>>,
        /// Internal (gap filling): the answer is handled by the core itself.
        internal: Option<ConvId>,
        acked: bool,
    },
}

struct Entry {
    topic: String,
    payload: Bytes,
    props: Option<PublishProperties>,
    kind: Kind,
    deadline: Instant,
}

/// Counters a test or a simulator can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages yielded on the stream.
    pub received: AtomicU64,
    /// Messages dropped because the cache had them already.
    pub duplicates: AtomicU64,
    /// Messages fetched with `history` to fill gaps (after a crash, or past the sync's limit).
    pub fetched: AtomicU64,
    /// Connections made (the first one included).
    pub connections: AtomicU64,
}

impl Stats {
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// State shared with the handles (read-mostly).
pub(crate) struct View {
    pub roster: std::sync::Mutex<Roster>,
    pub stats: Stats,
}

/// A message this device sent: the server sends it to the account's other devices only, so
/// this one learns its `seq` from the gap it leaves in the conversation.
struct Own {
    cid: String,
    to: String,
    body: Value,
    /// When the server acknowledged it (ms since the epoch); `None` while in flight.
    acked: Option<u64>,
}

/// A gap being filled: what waits behind it.
struct Gap {
    /// Fetch after this `seq` next.
    after: u64,
    /// Fill up to here at least (the first held message's `seq` - 1), or, for a sync's `more`,
    /// until the server has nothing more.
    until: Option<u64>,
    held: Vec<Message>,
    /// Counts against the sync's completion.
    in_sync: bool,
    /// Waiting for this device's own messages in flight, which may be what the gap is.
    waiting_own: bool,
}

pub(crate) struct Core {
    opts: Options,
    client: AsyncClient,
    cache: Cache,
    view: Arc<View>,
    events: mpsc::UnboundedSender<Event>,
    input: mpsc::UnboundedReceiver<Input>,
    connected: bool,
    ever_connected: bool,
    /// The first CONNACK (or the first failure) goes to `Client::connect`.
    first: Option<oneshot::Sender<Result<()>>>,
    outbox: BTreeMap<u64, Entry>,
    next_key: u64,
    /// Published, waiting for rumqttc's `Outgoing::Publish` to name their packet id.
    fifo: VecDeque<u64>,
    inflight: HashMap<u16, u64>,
    requests: HashMap<String, u64>,
    /// SUBSCRIBEs handed to rumqttc, then by packet id.
    sub_fifo: VecDeque<oneshot::Sender<Result<u8>>>,
    subs: HashMap<u16, oneshot::Sender<Result<u8>>>,
    gaps: HashMap<ConvId, Gap>,
    /// Per conversation, this device's messages not yet seen with their `seq`, in send order.
    own: HashMap<ConvId, BTreeMap<u64, Own>>,
    /// Between a `sync` and the end of its `sync.done` paging.
    syncing: bool,
    sync_done_seen: bool,
    dirty_since: Option<Instant>,
    pump: tokio::task::JoinHandle<()>,
    next_request: Arc<AtomicU64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

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

/// The pump: polls rumqttc's event loop, hands every event to the core, waits with backoff
/// after a failure. A refused first CONNECT ends it (bad credentials do not get better).
pub(crate) fn spawn_pump(
    mut el: EventLoop,
    opts: &Options,
    to_core: mpsc::UnboundedSender<Input>,
) -> tokio::task::JoinHandle<()> {
    let backoff = opts.backoff;
    tokio::spawn(async move {
        let mut failures = 0u32;
        let mut connected_once = false;
        loop {
            match el.poll().await {
                Ok(event) => {
                    if matches!(event, MqttEvent::Incoming(Packet::ConnAck(_))) {
                        failures = 0;
                        connected_once = true;
                    }
                    let bye = matches!(event, MqttEvent::Outgoing(Outgoing::Disconnect));
                    if to_core.send(Input::Mqtt(Box::new(event))).is_err() || bye {
                        return;
                    }
                }
                Err(err) => {
                    let refused = matches!(err, ConnectionError::ConnectionRefused(_));
                    let retry_in = backoff.delay(failures);
                    failures = failures.saturating_add(1);
                    let reason = describe(&err);
                    if to_core
                        .send(Input::Lost {
                            reason,
                            retry_in: if refused && !connected_once {
                                Duration::ZERO
                            } else {
                                retry_in
                            },
                        })
                        .is_err()
                        || (refused && !connected_once)
                    {
                        return;
                    }
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    })
}

fn describe(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => "bad user name or password".into(),
            ConnectReturnCode::NotAuthorized => "not authorized".into(),
            other => format!("refused: {other:?}"),
        },
        other => other.to_string(),
    }
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        opts: Options,
        client: AsyncClient,
        cache: Cache,
        view: Arc<View>,
        events: mpsc::UnboundedSender<Event>,
        input: mpsc::UnboundedReceiver<Input>,
        first: oneshot::Sender<Result<()>>,
        pump: tokio::task::JoinHandle<()>,
        next_request: Arc<AtomicU64>,
    ) -> Core {
        Core {
            opts,
            client,
            cache,
            view,
            events,
            input,
            connected: false,
            ever_connected: false,
            first: Some(first),
            outbox: BTreeMap::new(),
            next_key: 0,
            fifo: VecDeque::new(),
            inflight: HashMap::new(),
            requests: HashMap::new(),
            sub_fifo: VecDeque::new(),
            subs: HashMap::new(),
            gaps: HashMap::new(),
            own: HashMap::new(),
            syncing: false,
            sync_done_seen: false,
            dirty_since: None,
            pump,
            next_request,
        }
    }

    pub(crate) async fn run(mut self) {
        let done = loop {
            let wake = self.next_wake();
            let input = tokio::select! {
                input = self.input.recv() => input,
                _ = tokio::time::sleep_until(wake) => {
                    self.on_timer().await;
                    continue;
                }
            };
            match input {
                None | Some(Input::Shutdown(None)) => break None,
                Some(Input::Shutdown(Some(done))) => {
                    let _ = self.client.disconnect().await;
                    // Give the pump a moment to write the DISCONNECT.
                    let pump = std::mem::replace(&mut self.pump, tokio::spawn(async {}));
                    let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
                    break Some(done);
                }
                Some(Input::Mqtt(event)) => self.on_mqtt(*event).await,
                Some(Input::Lost { reason, retry_in }) => self.on_lost(reason, retry_in),
                Some(Input::Cmd(cmd)) => self.on_cmd(cmd).await,
            }
        };
        self.fail_all(|| Error::Closed);
        let _ = self.cache.sync();
        self.pump.abort();
        // Everything (the cache's file among it) is let go before `close` returns.
        drop(self);
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let deadline = self
            .outbox
            .values()
            .map(|e| e.deadline)
            .min()
            .unwrap_or(far);
        let flush = self
            .dirty_since
            .map(|t| t + Duration::from_secs(1))
            .unwrap_or(far);
        deadline.min(flush)
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self
            .dirty_since
            .is_some_and(|t| now >= t + Duration::from_secs(1))
        {
            self.sync_cache();
        }
        let late: Vec<u64> = self
            .outbox
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        let timeout = self.opts.request_timeout;
        for key in late {
            if let Some(entry) = self.remove(key) {
                match entry.kind {
                    Kind::Message(Some(reply)) => {
                        let _ = reply.send(Err(Error::Timeout(timeout)));
                    }
                    Kind::Own(conv, reply) => {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(Error::Timeout(timeout)));
                        }
                        if let Some(own) = self.own.get_mut(&conv) {
                            own.remove(&key);
                        }
                        self.own_settled(&conv).await;
                    }
                    Kind::Request {
                        reply: Some(reply), ..
                    } => {
                        let _ = reply.send(Err(Error::Timeout(timeout)));
                    }
                    Kind::Request {
                        internal: Some(conv),
                        ..
                    } => {
                        // A gap could not be filled in time: yield what was held, in order,
                        // rather than hold the conversation for ever; its next message tries
                        // again.
                        if let Some(gap) = self.gaps.remove(&conv) {
                            let in_sync = gap.in_sync;
                            for m in gap.held {
                                self.accept(m);
                            }
                            if in_sync {
                                self.maybe_synced();
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn remove(&mut self, key: u64) -> Option<Entry> {
        let entry = self.outbox.remove(&key)?;
        if let Kind::Request { id, .. } = &entry.kind {
            self.requests.remove(id);
        }
        self.inflight.retain(|_, k| *k != key);
        Some(entry)
    }

    fn fail_all(&mut self, err: impl Fn() -> Error) {
        for (_, entry) in std::mem::take(&mut self.outbox) {
            match entry.kind {
                Kind::Message(Some(reply)) | Kind::Own(_, Some(reply)) => {
                    let _ = reply.send(Err(err()));
                }
                Kind::Request {
                    reply: Some(reply), ..
                } => {
                    let _ = reply.send(Err(err()));
                }
                _ => {}
            }
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn sync_cache(&mut self) {
        if let Err(err) = self.cache.sync() {
            warn!(%err, "history cache sync failed");
        }
        self.dirty_since = None;
    }

    // ---- sending ----

    async fn on_cmd(&mut self, cmd: Cmd) {
        let deadline = Instant::now() + self.opts.request_timeout;
        match cmd {
            Cmd::Message {
                conv,
                to,
                body,
                cid,
                reply,
            } => {
                let props = PublishProperties {
                    user_properties: vec![("cid".into(), cid.clone())],
                    ..Default::default()
                };
                let topic = if conv.group_id().is_some() {
                    format!("group/{to}")
                } else {
                    format!("person/{to}/inbox")
                };
                let key = self.next_key;
                self.own.entry(conv.clone()).or_default().insert(
                    key,
                    Own {
                        cid,
                        to,
                        body: body.clone(),
                        acked: None,
                    },
                );
                self.push(Entry {
                    topic,
                    payload: Bytes::from(body.to_string()),
                    props: Some(props),
                    kind: Kind::Own(conv, Some(reply)),
                    deadline,
                })
                .await;
            }
            Cmd::Request { request, reply } => {
                self.push_request(request, Some(reply), None, deadline)
                    .await;
            }
            Cmd::Fire { topic, payload } => {
                self.push(Entry {
                    topic,
                    payload,
                    props: None,
                    kind: Kind::Message(None),
                    deadline,
                })
                .await;
            }
            Cmd::Subscribe { filter, reply } => {
                if !self.connected {
                    let _ = reply.send(Err(Error::Direct("not connected".into())));
                    return;
                }
                match self.client.subscribe(filter, QoS::AtLeastOnce).await {
                    Ok(()) => self.sub_fifo.push_back(reply),
                    Err(_) => {
                        let _ = reply.send(Err(Error::Closed));
                    }
                }
            }
        }
    }

    async fn push_request(
        &mut self,
        mut request: Value,
        reply: Option<oneshot::Sender<Result<Value>>>,
        internal: Option<ConvId>,
        deadline: Instant,
    ) {
        let id = match request.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => {
                let n = self.next_request.fetch_add(1, Ordering::Relaxed);
                let id = format!("{}-r{n}", self.opts.device);
                request["id"] = json!(id);
                id
            }
        };
        let payload = Bytes::from(request.to_string());
        let key = self
            .push(Entry {
                topic: "$im/req".into(),
                payload,
                props: None,
                kind: Kind::Request {
                    id: id.clone(),
                    reply,
                    internal,
                    acked: false,
                },
                deadline,
            })
            .await;
        self.requests.insert(id, key);
    }

    async fn push(&mut self, entry: Entry) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.outbox.insert(key, entry);
        if self.connected {
            self.publish(key).await;
        }
        key
    }

    /// Hand an outbox entry to rumqttc.
    async fn publish(&mut self, key: u64) {
        let Some(entry) = self.outbox.get(&key) else {
            return;
        };
        let (topic, payload, props) = (
            entry.topic.clone(),
            entry.payload.clone(),
            entry.props.clone(),
        );
        let sent = match props {
            Some(props) => {
                self.client
                    .publish_bytes_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
                    .await
            }
            None => {
                self.client
                    .publish_bytes(topic, QoS::AtLeastOnce, false, payload)
                    .await
            }
        };
        match sent {
            Ok(()) => self.fifo.push_back(key),
            // The event loop is gone (the client is shutting down).
            Err(err) => debug!(%err, "publish not queued"),
        }
    }

    async fn on_puback(&mut self, pkid: u16, code: u8) {
        let Some(key) = self.inflight.remove(&pkid) else {
            return;
        };
        let ok = code == 0 || code == 0x10;
        let Some(entry) = self.outbox.get_mut(&key) else {
            return;
        };
        if let Kind::Request { acked, .. } = &mut entry.kind
            && ok
        {
            *acked = true;
            return;
        }
        let entry = self.remove(key).expect("present");
        let result = if ok {
            Ok(())
        } else {
            Err(Error::Rejected(code))
        };
        match entry.kind {
            Kind::Message(Some(reply)) => {
                let _ = reply.send(result);
            }
            Kind::Own(conv, reply) => {
                if let Some(own) = self.own.get_mut(&conv) {
                    if ok {
                        if let Some(o) = own.get_mut(&key) {
                            o.acked = Some(now_ms());
                        }
                    } else {
                        own.remove(&key);
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
                self.own_settled(&conv).await;
            }
            Kind::Request {
                reply: Some(reply), ..
            } => {
                let _ = reply.send(result.and(Err(Error::Rejected(code))));
            }
            _ => {}
        }
    }

    /// An own message of `conv` was acknowledged or refused: a gap waiting for it decides.
    async fn own_settled(&mut self, conv: &ConvId) {
        let waiting = self.gaps.get(conv).is_some_and(|g| g.waiting_own);
        if !waiting || self.own_in_flight(conv) {
            return;
        }
        let gap = self.gaps.remove(conv).expect("present");
        let need = gap.until.map_or(0, |u| u.saturating_sub(gap.after));
        if self.explain_with_own(conv, gap.after, need) {
            self.release(gap).await;
        } else {
            self.gaps.insert(
                conv.clone(),
                Gap {
                    waiting_own: false,
                    ..gap
                },
            );
            self.fetch(conv).await;
        }
    }

    fn own_in_flight(&self, conv: &ConvId) -> bool {
        self.own
            .get(conv)
            .is_some_and(|o| o.values().any(|o| o.acked.is_none()))
    }

    /// If exactly `need` own messages of `conv` are acknowledged and unseen, they are the gap
    /// after `after` (one connection's PUBLISHes are stamped in order): cache them with their
    /// `seq`s (their `ts` is the acknowledgement's, close to the server's) and say so.
    fn explain_with_own(&mut self, conv: &ConvId, after: u64, need: u64) -> bool {
        let Some(own) = self.own.get_mut(conv) else {
            return need == 0;
        };
        let acked: Vec<u64> = own
            .iter()
            .filter(|(_, o)| o.acked.is_some())
            .map(|(k, _)| *k)
            .collect();
        if need == 0 || acked.len() as u64 != need {
            return false;
        }
        let mut messages = Vec::new();
        for (i, key) in acked.into_iter().enumerate() {
            let o = own.remove(&key).expect("present");
            let seq = after + 1 + i as u64;
            let id = format!("{conv}#{seq}");
            messages.push(Message {
                id: id.clone(),
                conv: conv.clone(),
                seq,
                from: self.opts.account.clone(),
                to: o.to,
                ts: o.acked.unwrap_or_default(),
                cid: Some(o.cid),
                body: o.body,
                chain: crate::types::Chain { id, hop: 0 },
            });
        }
        if let Err(err) = self.cache.put(&messages) {
            warn!(%err, "history cache write failed");
        }
        self.dirty_since.get_or_insert_with(Instant::now);
        true
    }

    // ---- the connection ----

    async fn on_mqtt(&mut self, event: MqttEvent) {
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

    fn on_lost(&mut self, reason: String, retry_in: Duration) {
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

    // ---- receiving ----

    async fn on_publish(&mut self, p: Publish) {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let Ok(json) = serde_json::from_slice::<Value>(&p.payload) else {
            debug!(%topic, "a payload that is not JSON");
            return;
        };
        let kind = json.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "msg" => match serde_json::from_value::<Message>(json.clone()) {
                Ok(m) => self.on_message(m).await,
                Err(err) => warn!(%err, "a message envelope of another shape"),
            },
            "sync" => {
                let roster: Roster = serde_json::from_value(json).unwrap_or_default();
                *self.view.roster.lock().unwrap_or_else(|e| e.into_inner()) = roster.clone();
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
                self.track_roster(kind, &json);
                let notice = Notice {
                    kind: kind.to_owned(),
                    body: json,
                };
                self.emit(Event::Notice(notice));
            }
        }
    }

    /// Keep the roster snapshot current with the notices that change it.
    fn track_roster(&self, kind: &str, json: &Value) {
        let field = |n: &str| json.get(n).and_then(Value::as_str).map(str::to_owned);
        let mut roster = self.view.roster.lock().unwrap_or_else(|e| e.into_inner());
        match kind {
            "friend.added" => {
                if let Some(peer) = field("peer") {
                    roster.requests.incoming.retain(|p| *p != peer);
                    roster.requests.outgoing.retain(|p| *p != peer);
                    if !roster.friends.iter().any(|f| f.id == peer) {
                        roster.friends.push(crate::types::Friend {
                            id: peer,
                            presence: "offline".into(),
                            last_seen: None,
                            text: None,
                        });
                    }
                }
            }
            "friend.removed" | "blocked" => {
                if let Some(peer) = field("peer") {
                    roster.friends.retain(|f| f.id != peer);
                }
            }
            "friend.request" => {
                if let Some(from) = field("from")
                    && !roster.requests.incoming.contains(&from)
                {
                    roster.requests.incoming.push(from);
                }
            }
            "friend.pending" => {
                if let Some(peer) = field("peer")
                    && !roster.requests.outgoing.contains(&peer)
                {
                    roster.requests.outgoing.push(peer);
                }
            }
            "friend.rejected" | "friend.withdrawn" => {
                if let Some(peer) = field("peer").or_else(|| field("from")) {
                    roster.requests.incoming.retain(|p| *p != peer);
                    roster.requests.outgoing.retain(|p| *p != peer);
                }
            }
            "group.joined" => {
                if let (Some(group), Some(member)) = (field("group"), field("member"))
                    && member == self.opts.account
                    && !roster.groups.iter().any(|g| g.id == group)
                {
                    roster.groups.push(crate::types::GroupEntry {
                        id: group,
                        name: String::new(),
                        role: field("role").unwrap_or_else(|| "member".into()),
                        last_seq: 0,
                        unread: 0,
                        join_requests: Vec::new(),
                    });
                }
            }
            "group.left" | "group.kicked" => {
                if let (Some(group), Some(member)) = (field("group"), field("member"))
                    && member == self.opts.account
                {
                    roster.groups.retain(|g| g.id != group);
                }
            }
            "group.dissolved" => {
                if let Some(group) = field("group") {
                    roster.groups.retain(|g| g.id != group);
                }
            }
            _ => {}
        }
    }

    async fn on_res(&mut self, json: Value) {
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

    /// A message from the server (or a direct channel): dedup, gap check, cache, yield.
    async fn on_message(&mut self, m: Message) {
        if let Some(gap) = self.gaps.get_mut(&m.conv) {
            gap.held.push(m);
            return;
        }
        match self.cache.has(&m.conv, m.seq) {
            Ok(true) => {
                self.view.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(false) => {}
            Err(err) => warn!(%err, "history cache read failed"),
        }
        let mark = self.cache.mark(&m.conv).ok().flatten();
        if let Some(mark) = mark
            && m.seq > mark + 1
        {
            let conv = m.conv.clone();
            let need = m.seq - mark - 1;
            if !self.own_in_flight(&conv) && self.explain_with_own(&conv, mark, need) {
                self.accept(m);
                return;
            }
            let waiting_own = self.own_in_flight(&conv);
            self.gaps.insert(
                conv.clone(),
                Gap {
                    after: mark,
                    until: Some(m.seq - 1),
                    held: vec![m],
                    in_sync: false,
                    waiting_own,
                },
            );
            if !waiting_own {
                self.fetch(&conv).await;
            }
            return;
        }
        self.accept(m);
    }

    /// What waited behind a filled gap goes through the checks again, in order.
    async fn release(&mut self, gap: Gap) {
        let in_sync = gap.in_sync;
        let mut held = gap.held;
        held.sort_by_key(|m| m.seq);
        for m in held {
            Box::pin(self.on_message(m)).await;
        }
        if in_sync {
            self.maybe_synced();
        }
    }

    /// Cache and yield a message known to be next.
    fn accept(&mut self, m: Message) {
        let mine = m.from == self.opts.account
            && m.cid.as_ref().is_some_and(|cid| {
                let own = self.own.get_mut(&m.conv);
                own.and_then(|own| {
                    let key = own.iter().find(|(_, o)| o.cid == *cid).map(|(k, _)| *k)?;
                    own.remove(&key)
                })
                .is_some()
            });
        match self.cache.put(std::slice::from_ref(&m)) {
            Ok(fresh) if fresh.is_empty() => {
                self.view.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
            Err(err) => warn!(%err, "history cache write failed"),
        }
        self.dirty_since.get_or_insert_with(Instant::now);
        if mine {
            // The sending device is not sent its own messages live; it is not told of them here
            // either.
            return;
        }
        self.view.stats.received.fetch_add(1, Ordering::Relaxed);
        self.emit(Event::Message(m));
    }

    async fn fetch(&mut self, conv: &ConvId) {
        let Some(gap) = self.gaps.get(conv) else {
            return;
        };
        let request =
            json!({"op": "history", "conv": conv.as_str(), "after": gap.after, "limit": PAGE});
        let deadline = Instant::now() + self.opts.request_timeout;
        self.push_request(request, None, Some(conv.clone()), deadline)
            .await;
    }

    async fn on_page(&mut self, conv: ConvId, page: Result<Value>) {
        let messages: Vec<Message> = match &page {
            Ok(res) => res
                .get("messages")
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .unwrap_or_default(),
            Err(err) => {
                warn!(%err, %conv, "a gap could not be fetched");
                Vec::new()
            }
        };
        let last_seq = page
            .as_ref()
            .ok()
            .and_then(|r| r.get("last_seq"))
            .and_then(Value::as_u64);
        let Some(mut gap) = self.gaps.remove(&conv) else {
            return;
        };
        let full = messages.len() as u64 >= PAGE;
        for m in messages {
            gap.after = gap.after.max(m.seq);
            if self.cache.has(&m.conv, m.seq).unwrap_or(false) {
                continue;
            }
            self.view.stats.fetched.fetch_add(1, Ordering::Relaxed);
            self.accept(m);
        }
        let wanted = match gap.until {
            Some(until) => gap.after < until,
            None => last_seq.is_some_and(|l| gap.after < l),
        };
        if page.is_ok() && full && wanted {
            self.gaps.insert(conv.clone(), gap);
            self.fetch(&conv).await;
            return;
        }
        self.release(gap).await;
    }

    fn maybe_synced(&mut self) {
        if self.syncing && self.sync_done_seen && !self.gaps.values().any(|g| g.in_sync) {
            self.syncing = false;
            self.sync_cache();
            self.emit(Event::Synced);
        }
    }
}
