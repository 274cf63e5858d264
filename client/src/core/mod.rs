//! The connection's heart: one task (`Core`) that owns every piece of state, fed in order by the
//! rumqttc event loop's pump task and by the client handles' commands.
//!
//! **Sending** (`outbox.rs`, `own.rs`). Every PUBLISH of the client (messages, requests,
//! presence) is an entry of the outbox, published at QoS 1 and kept until its PUBACK (a message)
//! or its answer (a request). rumqttc numbers packets itself and reports
//! `Outgoing::Publish(pkid)` in the order the PUBLISHes were handed to it (one task hands them
//! all), so the outbox maps packet ids to its entries in that order. The MQTT session is
//! persistent, so rumqttc and the server resend what was in flight when a connection dropped;
//! if the server had lost the session (it expired), everything unacknowledged is published
//! again. A message's `cid` makes every resend harmless: the server stores it once.
//!
//! **Receiving** (`inbound.rs`, `gaps.rs`, `roster.rs`). Each message is checked against the
//! cache: a `(conv, seq)` already there is a duplicate (dropped); a `seq` past the
//! conversation's mark + 1 shows a gap, which is fetched with `history` before the message (and
//! those after it) are yielded. So the event stream yields each message once, in `seq` order
//! per conversation, with no gap, across reconnects.
//!
//! **The connection** (`pump.rs`, `connection.rs`): the task polling rumqttc with backoff, and
//! what a CONNACK, a PUBACK, a SUBACK or a lost connection does to the state.
//!
//! # Layout
//! - `mod.rs`: what the core is fed ([`Input`], [`Cmd`]), its state, the loop and its timer.
//! - `pump.rs`: the rumqttc event loop's task.
//! - `connection.rs`: CONNACK (resend what the session lost), acks, a dropped connection.
//! - `outbox.rs`: entries kept until acknowledged or answered; requests and their answers.
//! - `own.rs`: this device's own messages, which the server does not echo back.
//! - `inbound.rs`: what a PUBLISH from the server is (message, sync, res, presence, notice).
//! - `gaps.rs`: dedup, gap filling with `history`, the sync's completion.
//! - `roster.rs`: the roster snapshot kept current by notices.

mod connection;
mod gaps;
mod inbound;
mod outbox;
mod own;
mod pump;
mod roster;
mod things;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::Event as MqttEvent;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::warn;

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::types::{ConvId, Event, Roster};

use gaps::Gap;
use outbox::Entry;
use own::Own;
pub(crate) use pump::spawn_pump;
pub(crate) use things::Waiter;

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
    /// A request (on `$im/req` or `$things/req`), answered by its `res`.
    Request {
        topic: &'static str,
        request: Value,
        reply: oneshot::Sender<Result<Value>>,
    },
    /// Publish and forget (presence, status text): QoS 1, retried like the rest.
    Fire { topic: String, payload: Bytes },
    /// Publish, answered at its PUBACK (a command, a thing's state, event or ack); a command's
    /// outcome goes to `outcome` as well as to the stream.
    Publish {
        topic: String,
        payload: Bytes,
        props: Option<Box<PublishProperties>>,
        reply: oneshot::Sender<Result<()>>,
        outcome: Option<things::Waiter>,
    },
    /// SUBSCRIBE (a group join), answered by its SUBACK's first code.
    Subscribe {
        filter: String,
        reply: oneshot::Sender<Result<u8>>,
    },
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
    /// The things world: outcome waiters, dedup of commands and feed entries.
    things: things::Seen,
    /// What the direct channels hear of (offers, the end of a sync).
    direct: mpsc::UnboundedSender<crate::p2p::Hook>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
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
        direct: mpsc::UnboundedSender<crate::p2p::Hook>,
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
            things: things::Seen::default(),
            direct,
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
        self.expire(now).await;
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
}
