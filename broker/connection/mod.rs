//! One client connection: the CONNECT handshake, then a loop that reads packets, answers them,
//! and writes what the client's session is owed. Generic over the byte stream, so TCP and
//! WebSocket connections run the same code.
//!
//! A connection has a task only while it has something to do: once idle for `PARK_AFTER_MS`
//! (nothing buffered, nothing to write, no acknowledgement waiting), its task ends and it waits
//! in the parking lot as a small record until input, a wake-up of its session or its keepalive
//! deadline gives it a task again (`park.rs`).

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use mqtter_engine::{Batch, Space, StoreError};
use ntex_bytes::{ByteString, BytesMut};
use ntex_mqtt::error::{DecodeError, EncodeError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

mod handshake;
mod inbound;
mod io;
mod outbound;
mod park;
mod pause;

pub use park::{Parked, Transport};

use crate::auth::Action;
use crate::broker::{Broker, Departure};
use crate::message::{Message, QoS, now_ms};
use crate::parking::{Parking, mono_ms};
use crate::persist::{self, QueuedHeader};
use crate::session::{Delivery, Eviction, Outgoing, Session, SubOpts};
use crate::topic;
use crate::wire::{
    self, ConnackProps, ConnectIn, Detected, Inbound, Proto, PublishIn, Will, reason,
};
use crate::worlds::{Joining, Members, Publish, Route};
use io::{Io, LINGER};
use park::{Clock, PARK_AFTER_MS};

/// Why a connection ended; decides the will and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT with reason 0: no will [MQTT-3.1.2-10].
    Normal,
    /// DISCONNECT with reason 0x04: publish the will.
    NormalWithWill,
    /// The network closed, a protocol error, a keepalive timeout, a takeover: the will is sent.
    Abnormal,
    /// The broker is stopping: the will stays stored for the next start.
    Shutdown,
}

/// What woke the connection loop.
enum Event {
    Wake,
    Durable(Result<(), Arc<StoreError>>),
    Read(std::io::Result<bool>),
    /// The keepalive deadline, or time to see whether the connection can park.
    Timer,
    /// The connection must end (found while it came back from the parking lot).
    Stop(End),
    /// Every full queue that held the publisher back has room (see `pause.rs`).
    Room,
    /// The publisher has been held back for `slow_subscriber_timeout`.
    Stuck,
}

/// Why `Conn::run` returned.
enum Stop {
    End(End),
    /// Idle: the task may end and the connection wait in the parking lot.
    Park,
}

/// An acknowledgement that waits for durability before it is written.
#[derive(Debug)]
enum HeldAck {
    PubAck(u16, u8),
    PubRec(u16, u8),
    /// A SUBACK / UNSUBACK whose IM changes (friend requests, joins, unfriending, leaving) must be
    /// durable before the client is told.
    SubAck(u16, Vec<u8>),
    UnsubAck(u16, Vec<u8>),
    /// The answer to a subscriber's PUBREC for a persistent session: sent once the release is
    /// stored, so that a restart resends the PUBREL, never the PUBLISH the client has already
    /// completed (which would deliver it twice).
    PubRel(u16),
}

impl HeldAck {
    /// An acknowledgement of a PUBLISH from the client (counted against its receive maximum).
    fn answers_a_publish(&self) -> bool {
        matches!(self, HeldAck::PubAck(..) | HeldAck::PubRec(..))
    }
}

type Durable = Pin<Box<dyn Future<Output = Result<(), Arc<StoreError>>> + Send>>;

/// What the server hands each connection it accepts.
#[derive(Clone)]
pub(crate) struct Served {
    pub broker: Arc<Broker>,
    /// The server's parking lot (off: connections keep their tasks).
    pub parking: Parking,
    /// The guard of open connections: held as long as a connection is open (so the shutdown can
    /// wait for them), except while it is parked (the lot counts those).
    pub alive: Arc<()>,
}

/// Serve one connection to its end (or until it parks: it then gets a new task whenever it has
/// something to do). `served.alive` is held as long as the connection is open.
pub(crate) async fn serve<S: Transport>(served: Served, stream: S, peer: SocketAddr) {
    let Served {
        broker,
        parking,
        alive,
    } = served;
    let mut io = Io {
        stream,
        buf: BytesMut::new(),
        broker: broker.clone(),
    };
    let connect_timeout = Duration::from_secs(broker.config.limits.connect_timeout.max(1));
    let handshake = tokio::time::timeout(connect_timeout, io.read_connect()).await;
    let (mut wire, connect) = match handshake {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return,
        Ok(Err(err)) => {
            tracing::debug!(%peer, cause = %err, "connection refused before CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time");
            return;
        }
    };
    let Some(conn) = Conn::accept(&broker, &mut wire, *connect, peer, S::WEBSOCKET).await else {
        let _ = io.flush(&mut wire).await;
        return;
    };
    let _ = io.flush(&mut wire).await;
    let now = mono_ms();
    let clock = Clock {
        deadline: conn.keepalive_deadline(now),
        // As if idle for long already: with nothing to do right after its CONNACK, the
        // connection parks at once, and its first task (sized for the handshake) is gone.
        idle_since: now.saturating_sub(PARK_AFTER_MS),
    };
    let live = Live {
        conn,
        io,
        wire,
        clock,
        cell: None,
        parking,
        alive,
    };
    drive(live, None).await;
}

/// A connection with a task: what `Conn::run` works on.
struct Live<S: Transport> {
    conn: Conn,
    io: Io<S>,
    wire: wire::Wire,
    clock: Clock,
    /// Its place in the parking lot, from its first park on (see `park::Cell`).
    cell: Option<Arc<park::Cell<S>>>,
    /// The server's parking lot (`server::Served`).
    parking: Parking,
    alive: Arc<()>,
}

/// Run a connection until it ends or parks. `first`: an event to handle before anything else
/// (input read while it tried to park).
async fn drive<S: Transport>(mut live: Live<S>, mut first: Option<Event>) {
    loop {
        let stop = live
            .conn
            .run(
                &mut live.io,
                &mut live.wire,
                &mut live.clock,
                live.parking.is_on(),
                first.take(),
            )
            .await;
        match stop {
            Stop::Park => match park::park(live) {
                Some((back, event)) => {
                    live = back;
                    first = event;
                }
                None => return,
            },
            Stop::End(end) => {
                let Live {
                    conn,
                    mut io,
                    mut wire,
                    alive,
                    ..
                } = live;
                // Bounded: a client that reads nothing (evicted as slow) does not hold it open.
                let _ = tokio::time::timeout(LINGER, io.flush(&mut wire)).await;
                // The session and the will are settled before the client sees the close: a
                // client that waits for it (after its DISCONNECT) finds its will already gone.
                conn.closed(end);
                let _ = io.stream.shutdown().await;
                if end != End::Shutdown {
                    io.linger().await;
                }
                drop(alive);
                return;
            }
        }
    }
}

struct Conn {
    broker: Arc<Broker>,
    session: Arc<Session>,
    owner: u64,
    /// 1.5 times the client's keepalive, in milliseconds; 0 for none.
    keep_alive_ms: u32,
    /// The session expiry the CONNECT asked for (a DISCONNECT may not raise it from 0).
    connect_expiry: u32,
    /// How many QoS 1/2 messages may be in flight to the client.
    window: u16,
    proto: Proto,
    /// Drain the session again before waiting: a delivery was skipped, its place in the window
    /// is free.
    redrain: bool,
    /// Came through the WebSocket listener.
    websocket: bool,
    /// What only some clients have (an account, a will, topic aliases, the IM world).
    extra: Option<Box<Extra>>,
    /// Acknowledgements in progress; `None` when there are none (always when parked).
    flow: Option<Box<Flow>>,
}

/// The parts of a connection's state that many clients never use (see `Conn::extra`).
#[derive(Default)]
struct Extra {
    /// The authenticated account, `None` for anonymous clients.
    username: Option<String>,
    will: Option<Will>,
    inbound_aliases: HashMap<u16, ByteString>,
    /// The worlds this client is a member of, each with its state of the connection.
    members: Members,
}

/// Acknowledgements on their way (see `Conn::flow`).
#[derive(Default)]
struct Flow {
    held: Vec<HeldAck>,
    waiting: Option<(Vec<HeldAck>, Durable)>,
    /// How many of `held` and `waiting` answer a PUBLISH from the client (its receive maximum
    /// counts them), kept here so that the check per PUBLISH costs no scan.
    unanswered_publishes: usize,
    /// Packet ids of PUBACKs read and not yet completed (see `finish_acked`).
    acked: Vec<u16>,
    /// Held back by full queues (backpressure, see `pause.rs`); never parked then.
    pause: Option<pause::Pause>,
}

impl Flow {
    fn is_empty(&self) -> bool {
        self.held.is_empty()
            && self.waiting.is_none()
            && self.acked.is_empty()
            && self.pause.is_none()
    }
}

/// A protocol violation: the connection is closed, with this reason for v5 clients.
struct Violation(u8, &'static str);

impl Conn {
    fn client_id(&self) -> &Arc<str> {
        &self.session.client_id
    }

    fn username(&self) -> Option<&str> {
        self.extra.as_ref().and_then(|e| e.username.as_deref())
    }

    /// The worlds' members of this connection (none for most plain clients).
    fn members(&mut self) -> Option<&mut Members> {
        self.extra
            .as_mut()
            .map(|e| &mut e.members)
            .filter(|m| !m.is_empty())
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    fn flow_mut(&mut self) -> &mut Flow {
        self.flow.get_or_insert_with(Box::default)
    }

    fn window(&self) -> usize {
        usize::from(self.window)
    }

    /// When the keepalive runs out if the client is heard from at `now` (`u64::MAX`: never).
    fn keepalive_deadline(&self, now: u64) -> u64 {
        match self.keep_alive_ms {
            0 => u64::MAX,
            ms => now + u64::from(ms),
        }
    }

    /// Nothing in progress: no input buffered, no output pending, no acknowledgement waiting.
    fn is_idle<S>(&self, io: &Io<S>, wire: &wire::Wire) -> bool {
        io.buf.is_empty()
            && !wire.has_pending()
            && !self.redrain
            && self.flow.as_ref().is_none_or(|f| f.is_empty())
    }

    async fn run<S: Transport>(
        &mut self,
        io: &mut Io<S>,
        wire: &mut wire::Wire,
        clock: &mut Clock,
        parking: bool,
        first: Option<Event>,
    ) -> Stop {
        let mut timer = pin!(tokio::time::sleep_until(crate::parking::instant_at(
            clock.next_check(parking, true, mono_ms())
        )));
        // Input already read and not yet decoded (what came in the same read as the CONNECT)
        // is handled at once: waiting for more would leave those packets unanswered until the
        // client sends something else.
        let mut next = first.or_else(|| (!io.buf.is_empty()).then_some(Event::Read(Ok(true))));
        loop {
            let event = match next.take() {
                Some(event) => event,
                None => {
                    if let Err(end) = self.drain(wire) {
                        let _ = tokio::time::timeout(LINGER, io.flush(wire)).await;
                        return Stop::End(end);
                    }
                    match self.flush_unless_evicted(io, wire).await {
                        Ok(true) => {}
                        // Evicted while its client does not read (a slow subscriber): what is
                        // left unwritten goes with the connection.
                        Ok(false) => {
                            return Stop::End(self.drain(wire).err().unwrap_or(End::Abnormal));
                        }
                        Err(_) => return Stop::End(End::Abnormal),
                    }
                    if self.redrain {
                        self.redrain = false;
                        continue;
                    }
                    let owner = self.owner;
                    let session = &self.session;
                    let broker = &self.broker;
                    let (waiting, mut held_back) = match self.flow.as_deref_mut() {
                        Some(Flow { waiting, pause, .. }) => (waiting.as_mut(), pause.as_mut()),
                        None => (None, None),
                    };
                    let held = held_back.is_some();
                    let reading = !held || io.buf.len() < pause::READ_LIMIT;
                    let stuck_at = held_back.as_ref().map_or(u64::MAX, |p| p.stuck_at(broker));
                    let room = poll_fn(|cx| match held_back.as_deref_mut() {
                        Some(pause) => pause.poll_room(broker, cx),
                        None => Poll::Pending,
                    });
                    let stuck = async {
                        tokio::time::sleep_until(crate::parking::instant_at(stuck_at)).await;
                    };
                    let wake = poll_fn(|cx| {
                        if session.lock().poll_wake(owner, cx.waker()) {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    });
                    let durable = async {
                        match waiting {
                            Some((_, fut)) => fut.await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        () = wake => Event::Wake,
                        result = durable => Event::Durable(result),
                        () = room, if held => Event::Room,
                        read = io.fill(), if reading => Event::Read(read),
                        () = stuck, if held => Event::Stuck,
                        () = timer.as_mut() => Event::Timer,
                    }
                }
            };
            match event {
                Event::Wake => clock.idle_since = mono_ms(),
                Event::Stop(end) => return Stop::End(end),
                Event::Durable(result) => {
                    clock.idle_since = mono_ms();
                    let Some(flow) = self.flow.as_mut() else {
                        continue;
                    };
                    let Some((acks, _)) = flow.waiting.take() else {
                        continue;
                    };
                    flow.unanswered_publishes -=
                        acks.iter().filter(|ack| ack.answers_a_publish()).count();
                    if let Err(err) = result {
                        tracing::error!(cause = %err, client_id = %self.client_id(), "store flush failed: closing without acknowledging");
                        wire.disconnect(reason::UNSPECIFIED, Some("storage failure"));
                        return Stop::End(End::Abnormal);
                    }
                    self.write_acks(wire, acks);
                    self.start_waiting();
                }
                Event::Read(read) => {
                    match read {
                        Ok(true) => {}
                        Ok(false) | Err(_) => return Stop::End(End::Abnormal),
                    }
                    let now = mono_ms();
                    clock.deadline = self.keepalive_deadline(now);
                    clock.idle_since = now;
                    let ended = if self.is_held() {
                        self.on_held_input(io, wire)
                    } else {
                        self.on_input(io, wire)
                    };
                    if let Some(end) = ended {
                        return Stop::End(end);
                    }
                }
                Event::Room => {
                    clock.idle_since = mono_ms();
                    if let Some(end) = self.resume(io, wire) {
                        return Stop::End(end);
                    }
                }
                Event::Stuck => self.on_stuck(),
                Event::Timer => {
                    let now = mono_ms();
                    if self.is_held() {
                        // Not read from by choice: the client is not silent.
                        clock.deadline = self.keepalive_deadline(now);
                    }
                    if now >= clock.deadline {
                        tracing::info!(client_id = %self.client_id(), "keepalive timeout");
                        wire.disconnect(reason::KEEPALIVE_TIMEOUT, None);
                        return Stop::End(End::Abnormal);
                    }
                    let idle = parking && self.is_idle(io, wire);
                    if idle && now >= clock.idle_since.saturating_add(PARK_AFTER_MS) {
                        self.flow = None;
                        return Stop::Park;
                    }
                    let at = clock.next_check(parking, idle, now);
                    timer.as_mut().reset(crate::parking::instant_at(at));
                }
            }
        }
    }

    /// Decode and handle every whole packet read. `Some` when the connection must end.
    fn on_input<S>(&mut self, io: &mut Io<S>, wire: &mut wire::Wire) -> Option<End> {
        let mut ended = self.on_packets(&mut io.buf, wire);
        if ended.is_none() && self.is_held() {
            // Acknowledgements read with the PUBLISH that held the connection back.
            ended = self.on_held_input(io, wire);
        }
        io.release_buf();
        ended
    }

    /// Decode and handle the whole packets in `buf`, until one holds the publisher back
    /// (`pause.rs`). `Some` when the connection must end.
    fn on_packets(&mut self, buf: &mut BytesMut, wire: &mut wire::Wire) -> Option<End> {
        let mut received = 0u64;
        let held = self.is_held();
        let ended = loop {
            match wire.decode(buf) {
                Ok(Some(packet)) => {
                    received += 1;
                    match self.handle(wire, packet) {
                        Ok(None) if !held && self.is_held() => break None,
                        Ok(None) => {}
                        Ok(Some(end)) => break Some(end),
                        Err(Violation(code, why)) => {
                            tracing::info!(client_id = %self.client_id(), code, why, "protocol violation");
                            wire.disconnect(code, Some(why));
                            break Some(End::Abnormal);
                        }
                    }
                }
                Ok(None) => break None,
                Err(err) => {
                    tracing::info!(client_id = %self.client_id(), ?err, "malformed packet");
                    let code = match err {
                        DecodeError::MaxSizeExceeded { .. } => reason::PACKET_TOO_LARGE,
                        // Reserved fixed-header flags (or type) are a Malformed Packet
                        // [MQTT-2.1.3-1] [MQTT-3.8.1-1].
                        DecodeError::Utf8Error
                        | DecodeError::MalformedPacket
                        | DecodeError::UnsupportedPacketType
                        | DecodeError::InvalidLength => reason::MALFORMED,
                        _ => reason::PROTOCOL_ERROR,
                    };
                    wire.disconnect(code, Some("malformed packet"));
                    break Some(End::Abnormal);
                }
            }
        };
        self.finish_acked();
        self.broker
            .metrics
            .messages_received
            .fetch_add(received, Ordering::Relaxed);
        if ended.is_none() {
            self.start_waiting();
        }
        ended
    }

    /// The connection has ended (its last bytes are written): the will, the IM world, the
    /// session.
    fn closed(mut self, end: End) {
        self.broker.metrics.disconnected();
        if self.websocket {
            self.broker
                .metrics
                .ws_connected
                .fetch_sub(1, Ordering::Relaxed);
        }
        tracing::debug!(client_id = %self.client_id(), ?end, "connection closed");
        let will = self.extra.as_mut().and_then(|e| e.will.take());
        let departure = match (end, will) {
            (End::Shutdown, _) => Departure::Shutdown,
            (End::NormalWithWill | End::Abnormal, Some(will)) => Departure::Will(will),
            _ => Departure::Goodbye,
        };
        self.leave_worlds();
        self.broker.detach(&self.session, self.owner, departure);
    }

    /// `io.flush`, unless the session is taken over or evicted first (`Ok(false)`): a client
    /// that reads nothing must not keep its connection from noticing.
    async fn flush_unless_evicted<S: Transport>(
        &mut self,
        io: &mut Io<S>,
        wire: &mut wire::Wire,
    ) -> std::io::Result<bool> {
        let (session, owner) = (&self.session, self.owner);
        let evicted = poll_fn(|cx| {
            if session.lock().poll_evicted(owner, cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::select! {
            biased;
            flushed = io.flush(wire) => flushed.map(|()| true),
            () = evicted => Ok(false),
        }
    }

    fn start_waiting(&mut self) {
        let Some(flow) = self.flow.as_mut() else {
            return;
        };
        if flow.waiting.is_none() && !flow.held.is_empty() {
            let acks = std::mem::take(&mut flow.held);
            let broker = self.broker.clone();
            flow.waiting = Some((acks, Box::pin(async move { broker.durable().await })));
        }
    }

    fn unacked_inbound(&self) -> usize {
        let flow = self.flow.as_ref().map_or(0, |f| f.unanswered_publishes);
        flow + self.session.lock().inbound_qos2_len()
    }

    /// One packet from the client (counted in `messages_received` by the caller).
    fn handle(&mut self, wire: &mut wire::Wire, packet: Inbound) -> Result<Option<End>, Violation> {
        if let Inbound::PubAck(id) = packet {
            // Completed together after the read (`finish_acked`), under one session lock.
            self.flow_mut().acked.push(id);
            return Ok(None);
        }
        self.finish_acked();
        match packet {
            Inbound::Connect(_) => return Err(Violation(reason::PROTOCOL_ERROR, "second CONNECT")),
            Inbound::Publish(publish) => self.on_publish(wire, *publish)?,
            Inbound::PubAck(_) => {}
            Inbound::PubRec(id, failed) => {
                let mut state = self.session.lock();
                match state.inflight.get_mut(&id) {
                    Some(_) if failed => {
                        drop(state);
                        self.finish(id);
                    }
                    Some(flight) => {
                        flight.released = true;
                        let delivery = flight.delivery.clone();
                        drop(state);
                        let stored = delivery.store_seq.is_some();
                        if let Some(seq) = delivery.store_seq {
                            self.save_flight(seq, id, &delivery, true);
                        }
                        let needs_flush = stored && self.broker.is_sync();
                        self.hold_or_write(wire, HeldAck::PubRel(id), needs_flush);
                    }
                    None => {
                        drop(state);
                        self.hold_or_write(wire, HeldAck::PubRel(id), false);
                    }
                }
            }
            Inbound::PubRel(id) => {
                let known = self.session.lock().remove_inbound_qos2(id);
                wire.pubcomp(
                    id,
                    if known {
                        reason::SUCCESS
                    } else {
                        reason::PACKET_ID_NOT_FOUND
                    },
                );
            }
            Inbound::PubComp(id) => {
                self.finish(id);
            }
            Inbound::Subscribe {
                packet_id,
                filters,
                user_properties,
                ..
            } => self.on_subscribe(wire, packet_id, filters, &user_properties)?,
            Inbound::Unsubscribe {
                packet_id,
                filters,
                user_properties,
            } => self.on_unsubscribe(wire, packet_id, filters, &user_properties),
            Inbound::PingReq => {
                if let Some(members) = self.members() {
                    let now = now_ms();
                    members.each().for_each(|m| m.ping(now));
                }
                wire.pingresp()
            }
            Inbound::Disconnect {
                reason: code,
                session_expiry,
            } => {
                if let Some(expiry) = session_expiry {
                    if self.connect_expiry == 0 && expiry != 0 {
                        // [MQTT-3.14.2-2]
                        return Err(Violation(
                            reason::PROTOCOL_ERROR,
                            "session expiry raised from 0",
                        ));
                    }
                    let expiry = expiry.min(self.broker.config.limits.max_session_expiry);
                    self.session.lock().expiry_secs = expiry;
                }
                return Ok(Some(if code == 0x04 {
                    End::NormalWithWill
                } else {
                    End::Normal
                }));
            }
            Inbound::Auth => {
                return Err(Violation(
                    reason::PROTOCOL_ERROR,
                    "AUTH without an authentication method",
                ));
            }
            Inbound::Unexpected(what) => {
                tracing::debug!(what, "unexpected packet from a client");
                return Err(Violation(
                    reason::PROTOCOL_ERROR,
                    "packet a client may not send",
                ));
            }
            Inbound::Invalid(code, why) => return Err(Violation(code, why)),
        }
        Ok(None)
    }

    /// Leave every world the connection is a member of (see `Member::leave`).
    fn leave_worlds(&mut self) {
        let Some(members) = self.members() else {
            return;
        };
        let members: Vec<_> = members.take().collect();
        // A persistent session taken over by a new connection keeps its queue and in-flight
        // messages: the new connection delivers them (and its own sync is queued there too).
        let taken_over = {
            let owner = self.session.lock().owner;
            owner != 0 && owner != self.owner
        };
        let now = now_ms();
        for member in members {
            member.leave(taken_over, now);
        }
    }
}
