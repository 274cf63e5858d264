//! One client connection: the CONNECT handshake, then a loop that reads packets, answers them,
//! and writes what the client's session is owed. Generic over the byte stream, so TCP and
//! WebSocket connections run the same code.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use mqtter_engine::{Batch, Space, StoreError};
use ntex_bytes::{ByteString, BytesMut};
use ntex_mqtt::error::{DecodeError, EncodeError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::auth::Action;
use crate::broker::Broker;
use crate::im::{Device, ImPublish};
use crate::message::{Message, QoS, now_ms};
use crate::persist::{self, QueuedHeader};
use crate::session::{Delivery, Eviction, Outgoing, Session, SubOpts};
use crate::topic;
use crate::wire::{
    self, ConnackProps, ConnectIn, Detected, Inbound, Proto, PublishIn, Will, reason,
};

/// Bytes one read takes at most, into the worker thread's scratch buffer (see `Io::fill`).
const READ_CHUNK: usize = 64 * 1024;
/// Pages of pending output handed to one vectored write.
const WRITE_SLICES: usize = 64;
/// How long a closed connection keeps reading (and discarding) what its client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// Why a connection ended; decides the will and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT with reason 0: no will [MQTT-3.1.2-10].
    Normal,
    /// DISCONNECT with reason 0x04: publish the will.
    NormalWithWill,
    /// The network closed, a protocol error, a keepalive timeout, a takeover: the will is sent.
    Abnormal,
    /// The broker is stopping.
    Shutdown,
}

/// What woke the connection loop.
enum Event {
    Wake,
    Durable(Result<(), Arc<StoreError>>),
    Read(std::io::Result<bool>),
    KeepaliveTimeout,
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
}

type Durable = Pin<Box<dyn Future<Output = Result<(), Arc<StoreError>>> + Send>>;

/// Serve one connection to its end.
pub async fn serve<S>(broker: Arc<Broker>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
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
    let Some(mut conn) = Conn::accept(&broker, &mut wire, *connect, peer).await else {
        let _ = io.flush(&mut wire).await;
        return;
    };
    let _ = io.flush(&mut wire).await;
    let end = conn.run(&mut io, &mut wire).await;
    let _ = io.flush(&mut wire).await;
    let _ = io.stream.shutdown().await;
    broker.metrics.disconnected();
    tracing::debug!(%peer, client_id = %conn.client_id, ?end, "connection closed");
    let will = match end {
        End::Normal | End::Shutdown => None,
        End::NormalWithWill | End::Abnormal => conn.will.take(),
    };
    conn.leave_im();
    broker.detach(&conn.session, conn.owner, will);
    if end != End::Shutdown {
        io.linger().await;
    }
}

thread_local! {
    /// Each worker thread reads into this and copies out what arrived, so that a connection
    /// waiting for input holds no buffer: an idle connection costs its state, not 64 KiB.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice());
}

/// One read from `stream` through the thread's scratch buffer, appended to `buf`. Reading and
/// writing never overlap on a connection, so the stream is not split.
fn poll_read_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> Poll<std::io::Result<usize>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut rb = ReadBuf::new(&mut scratch[..]);
        match Pin::new(stream).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let filled = rb.filled();
                buf.extend_from_slice(filled);
                Poll::Ready(Ok(filled.len()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => Poll::Pending,
        }
    })
}

struct Io<S> {
    stream: S,
    buf: BytesMut,
    broker: Arc<Broker>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    /// Read more bytes; `false` when the peer closed the stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let Io { stream, buf, .. } = self;
        let n = poll_fn(|cx| poll_read_into(stream, buf, cx)).await?;
        if n == 0 {
            return Ok(false);
        }
        self.broker
            .metrics
            .bytes_received
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Every whole packet has been decoded: let go of a large read buffer, so that a connection
    /// that goes idle after a burst keeps only a small one.
    fn release_buf(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 1024 {
            self.buf = BytesMut::new();
        }
    }

    /// Lingering close, after the write side is shut: read and discard what the client still
    /// sends, until it closes or `LINGER` passes. Closing a socket with unread input resets the
    /// connection, and a reset can destroy the DISCONNECT just written before the client reads
    /// it (a client exceeding Receive Maximum is still sending when it is told 0x93); the
    /// sender of a DISCONNECT closes the connection [MQTT-3.14.4-2], this only lets it arrive.
    async fn linger(&mut self) {
        let Io { stream, buf, .. } = self;
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(n) = poll_fn(|cx| poll_read_into(stream, buf, cx)).await {
                buf.clear();
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    /// Write everything pending, up to `WRITE_SLICES` pages per (vectored) write call.
    async fn flush(&mut self, wire: &mut wire::Wire) -> std::io::Result<()> {
        if !wire.has_pending() {
            return Ok(());
        }
        let pages = wire.pending();
        let mut written = 0;
        while !pages.is_empty() {
            let stream = &mut self.stream;
            let n = poll_fn(|cx| {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let mut count = 0;
                for (slot, page) in slices.iter_mut().zip(pages.iter()) {
                    *slot = IoSlice::new(page);
                    count += 1;
                }
                Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..count])
            })
            .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            pages.advance_to(n);
            written += n;
        }
        // A fresh (thread-cached) page list: the written one would keep its last page, 4 KiB per
        // idle connection.
        *pages = ntex_bytes::BytePages::new(pages.page_size());
        self.stream.flush().await?;
        self.broker
            .metrics
            .bytes_sent
            .fetch_add(written as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Read up to the CONNECT; `None` when the peer went away or spoke something else.
    async fn read_connect(&mut self) -> std::io::Result<Option<(wire::Wire, Box<ConnectIn>)>> {
        let proto = loop {
            match wire::detect(&self.buf) {
                Detected::Proto(proto) => break proto,
                Detected::NeedMore => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
                Detected::Unsupported { level: Some(level) } => {
                    // [MQTT-3.1.2-2]: answer an unknown protocol level with 0x01 and close.
                    tracing::debug!(level, "unsupported protocol level");
                    let mut w = wire::Wire::new(Proto::V3, 0);
                    w.connack(false, reason::UNSUPPORTED_PROTOCOL, ConnackProps::default());
                    self.flush(&mut w).await?;
                    return Ok(None);
                }
                Detected::Unsupported { level: None } => return Ok(None),
            }
        };
        let mut wire = wire::Wire::new(proto, self.broker.config.limits.max_packet_size);
        loop {
            match wire.decode(&mut self.buf) {
                Ok(Some(Inbound::Connect(connect))) => return Ok(Some((wire, connect))),
                Ok(Some(_)) => return Ok(None),
                Ok(None) => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
                Err(err) => {
                    tracing::debug!(?err, "malformed CONNECT");
                    let code = match err {
                        DecodeError::MaxSizeExceeded { .. } => reason::PACKET_TOO_LARGE,
                        DecodeError::InvalidClientId => reason::CLIENT_ID_NOT_VALID,
                        _ => reason::MALFORMED,
                    };
                    wire.connack(false, code, ConnackProps::default());
                    self.flush(&mut wire).await?;
                    return Ok(None);
                }
            }
        }
    }
}

struct Conn {
    broker: Arc<Broker>,
    session: Arc<Session>,
    /// This connection's own wake-up (see `SessionState::waker`).
    waker: Arc<tokio::sync::Notify>,
    owner: u64,
    client_id: Arc<str>,
    /// The authenticated account, `None` for anonymous clients.
    username: Option<String>,
    proto: Proto,
    will: Option<Will>,
    keep_alive: Option<Duration>,
    /// How many QoS 1/2 messages may be in flight to the client.
    window: usize,
    /// The session expiry the CONNECT asked for (a DISCONNECT may not raise it from 0).
    connect_expiry: u32,
    inbound_aliases: HashMap<u16, ByteString>,
    held: Vec<HeldAck>,
    waiting: Option<(Vec<HeldAck>, Durable)>,
    /// Set when the client is a person: its device in the IM world.
    device: Option<Device>,
    /// The last IM sequence number sent per conversation (saved as cursors at the end).
    cursors: HashMap<Arc<str>, u64, foldhash::fast::RandomState>,
    /// Friend requests made with `im-temporary`, withdrawn at the end if still pending.
    temporary: Vec<String>,
    /// Packet ids of PUBACKs read and not yet completed (see `finish_acked`).
    acked: Vec<u16>,
}

/// A protocol violation: the connection is closed, with this reason for v5 clients.
struct Violation(u8, &'static str);

impl Conn {
    /// Check the CONNECT, answer it (into `wire`: `serve` writes it), and attach the session.
    /// `None`: refused.
    async fn accept(
        broker: &Arc<Broker>,
        wire: &mut wire::Wire,
        connect: ConnectIn,
        peer: SocketAddr,
    ) -> Option<Conn> {
        let proto = wire.proto();
        let limits = &broker.config.limits;
        let refuse = |wire: &mut wire::Wire, code: u8, why: &str| {
            tracing::info!(%peer, client_id = %connect.client_id, code, why, "connection refused");
            wire.connack(false, code, ConnackProps::default());
            None
        };
        if broker.metrics.clients_connected.load(Ordering::Relaxed) as usize
            >= limits.max_connections
        {
            return refuse(wire, reason::QUOTA_EXCEEDED, "too many connections");
        }
        if connect.auth_method.is_some() {
            return refuse(
                wire,
                reason::BAD_AUTH_METHOD,
                "enhanced authentication is not supported",
            );
        }

        // Who is it?
        let username = match &connect.username {
            Some(name) => {
                let accounts = broker.accounts.clone();
                let name_owned = name.to_string();
                let password = connect.password.clone().unwrap_or_default().to_vec();
                let verdict =
                    tokio::task::spawn_blocking(move || accounts.verify(&name_owned, &password))
                        .await;
                match verdict {
                    Ok(Ok(Some(true))) => Some(name.to_string()),
                    Ok(Ok(Some(false))) => {
                        return refuse(wire, reason::BAD_USER_OR_PASSWORD, "bad password");
                    }
                    Ok(Ok(None)) if broker.config.allow_anonymous => None,
                    Ok(Ok(None)) => {
                        return refuse(wire, reason::BAD_USER_OR_PASSWORD, "no such account");
                    }
                    Ok(Err(err)) => {
                        tracing::error!(cause = %err, "account lookup failed");
                        return refuse(wire, reason::SERVER_UNAVAILABLE, "account store failed");
                    }
                    Err(_) => {
                        return refuse(wire, reason::SERVER_UNAVAILABLE, "account check failed");
                    }
                }
            }
            None if broker.config.allow_anonymous => None,
            None => return refuse(wire, reason::NOT_AUTHORIZED, "anonymous access is off"),
        };

        // Which session?
        let mut props = ConnackProps {
            receive_max: limits.receive_maximum,
            max_packet_size: limits.max_packet_size,
            topic_alias_max: if proto == Proto::V5 {
                limits.max_topic_alias
            } else {
                0
            },
            ..Default::default()
        };
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            if proto == Proto::V3 && !connect.clean_start {
                // [MQTT-3.1.3-8]
                return refuse(
                    wire,
                    reason::CLIENT_ID_NOT_VALID,
                    "empty client id needs a clean session",
                );
            }
            let assigned = format!("mqtter-{:016x}", rand::random::<u64>());
            props.assigned_client_id = Some(ByteString::from(assigned.as_str()));
            Arc::from(assigned)
        } else {
            Arc::from(&*connect.client_id)
        };
        let expiry = match proto {
            Proto::V3 => connect.session_expiry,
            Proto::V5 => {
                let granted = connect.session_expiry.min(limits.max_session_expiry);
                if granted != connect.session_expiry {
                    props.session_expiry = Some(granted);
                }
                granted
            }
        };
        let mut keep_alive = connect.keep_alive;
        if proto == Proto::V5 && keep_alive > limits.max_keepalive {
            keep_alive = limits.max_keepalive;
            props.server_keepalive = Some(keep_alive);
        }

        if let Some(will) = &connect.will {
            if topic::validate_name(&will.msg.topic).is_err() {
                return refuse(wire, reason::TOPIC_NAME_INVALID, "invalid will topic");
            }
            if !broker.acl.allows(
                username.as_deref(),
                &client_id,
                Action::Publish,
                &will.msg.topic,
            ) {
                return refuse(wire, reason::NOT_AUTHORIZED, "will topic not allowed");
            }
        }

        // A person's client id is `<account>` or `<account>:<device>`; one naming another account
        // is refused.
        if let Some(account) = username.as_deref() {
            let named = client_id.split(':').next().unwrap_or_default();
            if named != account
                && broker
                    .gate
                    .im
                    .with_graph(|g| g.account_kind(named).is_some())
            {
                return refuse(
                    wire,
                    reason::CLIENT_ID_NOT_VALID,
                    "client id names another account",
                );
            }
        }

        // The place is taken here, atomically, after every other check (the early check above
        // only spares refused clients the password hash); `serve` gives it back.
        if !broker.metrics.try_connect(limits.max_connections) {
            return refuse(wire, reason::QUOTA_EXCEEDED, "too many connections");
        }
        let owner = broker.next_token();
        let waker = Arc::new(tokio::sync::Notify::new());
        let (session, present) = broker.attach(
            &client_id,
            connect.clean_start,
            expiry,
            owner,
            waker.clone(),
        );
        wire.connack(present, reason::SUCCESS, props);
        wire.set_client_limits(connect.max_packet_size, connect.topic_alias_max);
        let mut will = connect.will;
        if let Some(will) = will.as_mut() {
            will.msg.publisher = Some(client_id.clone());
        }
        broker.remember_will(&client_id, owner, will.as_ref());
        tracing::debug!(%peer, %client_id, ?proto, present, expiry, keep_alive, "client connected");
        let window = usize::from(connect.receive_max.min(limits.max_inflight).max(1));
        let mut conn = Conn {
            broker: broker.clone(),
            session,
            waker,
            owner,
            client_id,
            username,
            proto,
            will,
            keep_alive: (keep_alive > 0)
                .then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
            window,
            connect_expiry: expiry,
            inbound_aliases: HashMap::new(),
            held: Vec::new(),
            waiting: None,
            device: None,
            cursors: HashMap::default(),
            temporary: Vec::new(),
            acked: Vec::new(),
        };
        if present {
            // [MQTT-4.4.0-1]: resend what was in flight, with the original ids, within the
            // client's Receive Maximum [MQTT-4.9.0-2].
            let mut out = Vec::new();
            conn.session.lock().resend_all(conn.window, &mut out);
            conn.send(wire, out);
        }
        if let Some(account) = conn.username.as_deref()
            && broker.gate.im.is_person(account)
        {
            let device = Device {
                token: owner,
                account: Arc::from(account),
                client_id: conn.client_id.clone(),
                session: conn.session.clone(),
                v5: proto == Proto::V5,
                sync: !connect
                    .user_properties
                    .iter()
                    .any(|(k, v)| k == "im-sync" && v == "false"),
            };
            // After CONNACK: the roster, every missed message, `sync.done`.
            broker
                .gate
                .connect(device.clone(), now_ms(), &broker.limits);
            conn.device = Some(device);
        }
        // The CONNACK and what follows it are written by `serve`: awaiting here, with the new
        // `Conn` alive, would size every connection's task for this state.
        Some(conn)
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
        wire: &mut wire::Wire,
    ) -> End {
        let mut deadline = self.keep_alive.map(|k| Instant::now() + k);
        loop {
            if let Err(end) = self.drain(wire) {
                let _ = io.flush(wire).await;
                return end;
            }
            if io.flush(wire).await.is_err() {
                return End::Abnormal;
            }
            let event = {
                let waker = self.waker.clone();
                let waiting = &mut self.waiting;
                let keepalive = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                let durable = async {
                    match waiting.as_mut() {
                        Some((_, fut)) => fut.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = waker.notified() => Event::Wake,
                    result = durable => Event::Durable(result),
                    read = io.fill() => Event::Read(read),
                    _ = keepalive => Event::KeepaliveTimeout,
                }
            };
            match event {
                Event::Wake => {}
                Event::Durable(result) => {
                    let Some((acks, _)) = self.waiting.take() else {
                        continue;
                    };
                    if let Err(err) = result {
                        tracing::error!(cause = %err, client_id = %self.client_id, "store flush failed: closing without acknowledging");
                        wire.disconnect(reason::UNSPECIFIED, Some("storage failure"));
                        return End::Abnormal;
                    }
                    self.write_acks(wire, acks);
                    self.start_waiting();
                }
                Event::Read(read) => {
                    match read {
                        Ok(true) => {}
                        Ok(false) | Err(_) => return End::Abnormal,
                    }
                    deadline = self.keep_alive.map(|k| Instant::now() + k);
                    let mut received = 0u64;
                    let ended = loop {
                        match wire.decode(&mut io.buf) {
                            Ok(Some(packet)) => {
                                received += 1;
                                match self.handle(wire, packet) {
                                    Ok(None) => {}
                                    Ok(Some(end)) => break Some(end),
                                    Err(Violation(code, why)) => {
                                        tracing::info!(client_id = %self.client_id, code, why, "protocol violation");
                                        wire.disconnect(code, Some(why));
                                        break Some(End::Abnormal);
                                    }
                                }
                            }
                            Ok(None) => {
                                io.release_buf();
                                break None;
                            }
                            Err(err) => {
                                tracing::info!(client_id = %self.client_id, ?err, "malformed packet");
                                let code = match err {
                                    DecodeError::MaxSizeExceeded { .. } => reason::PACKET_TOO_LARGE,
                                    // Reserved fixed-header flags (or type) are a Malformed
                                    // Packet [MQTT-2.1.3-1] [MQTT-3.8.1-1].
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
                    if let Some(end) = ended {
                        return end;
                    }
                    self.start_waiting();
                }
                Event::KeepaliveTimeout => {
                    tracing::info!(client_id = %self.client_id, "keepalive timeout");
                    wire.disconnect(reason::KEEPALIVE_TIMEOUT, None);
                    return End::Abnormal;
                }
            }
        }
    }

    /// Move what the session owes the client into the wire. `Err` when the session was taken.
    fn drain(&mut self, wire: &mut wire::Wire) -> Result<(), End> {
        let mut out = Vec::new();
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
                        self.session.lock().eviction = None;
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
                });
            }
            state.take_sendable(self.window, now_ms(), &mut out);
        }
        self.send(wire, out);
        Ok(())
    }

    fn send(&mut self, wire: &mut wire::Wire, out: Vec<Outgoing>) {
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
                        // Looked up before inserting: `conv` is shared by every recipient of the
                        // message, and cloning it per delivery contends on its count.
                        if !self.cursors.contains_key(&*stamp.conv) {
                            self.cursors.insert(stamp.conv.clone(), 0);
                        }
                        let Some(cursor) = self.cursors.get_mut(&*stamp.conv) else {
                            continue;
                        };
                        if stamp.seq <= *cursor {
                            // Already sent (it was both in the sync and live).
                            if let Some(id) = packet_id {
                                self.finish(id);
                                // Its place in the window is free: drain again, or what is
                                // queued behind it waits for the next unrelated wake-up.
                                self.waker.notify_one();
                            }
                            continue;
                        }
                        *cursor = stamp.seq;
                    }
                    match wire.publish(packet_id, &delivery, dup, now) {
                        Ok(()) => sent += 1,
                        Err(err) => {
                            // Too big for the client's Maximum Packet Size: dropped for this
                            // client as if delivered [MQTT-3.1.2-25].
                            if err != EncodeError::OverMaxPacketSize {
                                tracing::warn!(?err, client_id = %self.client_id, "cannot encode a PUBLISH");
                            }
                            self.broker.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                            if let Some(id) = packet_id {
                                self.finish(id);
                                self.waker.notify_one();
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
    fn finish(&mut self, packet_id: u16) -> bool {
        let done = self.session.lock().inflight.remove(&packet_id);
        match done {
            Some(flight) => {
                if let Some(seq) = flight.delivery.store_seq {
                    let mut batch = Batch::new();
                    batch.remove(Space::Queue, persist::queue_key(&self.client_id, seq));
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
    fn finish_acked(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let mut done = Vec::with_capacity(self.acked.len());
        {
            let mut state = self.session.lock();
            for id in self.acked.drain(..) {
                if let Some(flight) = state.inflight.remove(&id) {
                    done.push(flight);
                }
            }
        }
        let mut batch = Batch::new();
        for flight in &done {
            if let Some(seq) = flight.delivery.store_seq {
                batch.remove(Space::Queue, persist::queue_key(&self.client_id, seq));
            }
        }
        if !batch.is_empty()
            && let Err(err) = self.broker.store.apply(batch)
        {
            tracing::error!(cause = %err, "cannot remove acknowledged messages");
        }
    }

    fn hold_or_write(&mut self, wire: &mut wire::Wire, ack: HeldAck, needs_flush: bool) {
        if needs_flush || !self.held.is_empty() || self.waiting.is_some() {
            self.held.push(ack);
        } else {
            self.write_acks(wire, vec![ack]);
        }
    }

    fn write_acks(&mut self, wire: &mut wire::Wire, acks: Vec<HeldAck>) {
        for ack in acks {
            match ack {
                HeldAck::PubAck(id, code) => wire.puback(id, code),
                HeldAck::PubRec(id, code) => wire.pubrec(id, code),
                HeldAck::SubAck(id, codes) => wire.suback(id, &codes),
                HeldAck::UnsubAck(id, codes) => wire.unsuback(id, &codes),
            }
        }
    }

    fn start_waiting(&mut self) {
        if self.waiting.is_none() && !self.held.is_empty() {
            let acks = std::mem::take(&mut self.held);
            let broker = self.broker.clone();
            self.waiting = Some((acks, Box::pin(async move { broker.durable().await })));
        }
    }

    fn unacked_inbound(&self) -> usize {
        self.held.len()
            + self.waiting.as_ref().map_or(0, |(a, _)| a.len())
            + self.session.lock().inbound_qos2.len()
    }

    /// One packet from the client (counted in `messages_received` by the caller).
    fn handle(&mut self, wire: &mut wire::Wire, packet: Inbound) -> Result<Option<End>, Violation> {
        if let Inbound::PubAck(id) = packet {
            // Completed together after the read (`finish_acked`), under one session lock.
            self.acked.push(id);
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
                        wire.pubrel(id);
                        if let Some(seq) = delivery.store_seq {
                            self.save_released(seq, id, &delivery);
                        }
                    }
                    None => {
                        drop(state);
                        wire.pubrel(id);
                    }
                }
            }
            Inbound::PubRel(id) => {
                let known = self.session.lock().inbound_qos2.remove(&id);
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
                if let Some(device) = &self.device {
                    self.broker.gate.ping(&device.account, now_ms());
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

    /// Leave the IM world: what was sent but not acknowledged is owed again (the cursors go back
    /// before it), temporary requests still pending are withdrawn, the device goes offline.
    fn leave_im(&mut self) {
        let Some(device) = self.device.take() else {
            return;
        };
        // A persistent session taken over by a new connection keeps its queue and in-flight
        // messages: the new connection delivers them (and its own sync is queued there too).
        let taken_over = {
            let owner = self.session.lock().owner;
            owner != 0 && owner != self.owner
        };
        if !taken_over {
            for stamp in self.session.take_im_unacked() {
                if let Some(cursor) = self.cursors.get_mut(&stamp.conv) {
                    *cursor = (*cursor).min(stamp.seq.saturating_sub(1));
                }
            }
        }
        let cursors: Vec<(String, u64)> = self
            .cursors
            .iter()
            .map(|(conv, seq)| (conv.to_string(), *seq))
            .collect();
        let now = now_ms();
        let gate = &self.broker.gate;
        gate.withdraw_temporary(&self.broker, &device.account, &self.temporary, now);
        gate.disconnect(&device, &cursors, now, &self.broker.limits);
    }

    /// A v5 reason code as the client's protocol says it (v3 SUBACK: 0x80 for any failure).
    fn suback_code(&self, code: u8) -> u8 {
        if self.proto == Proto::V3 && code >= 0x80 {
            0x80
        } else {
            code
        }
    }

    fn save_released(&self, seq: u64, packet_id: u16, delivery: &Delivery) {
        let header = QueuedHeader {
            qos: u8::from(delivery.qos),
            retain: delivery.retain,
            sub_ids: delivery.sub_ids.clone(),
            released_packet_id: Some(packet_id),
        };
        let body = persist::encode(&crate::message::StoredMessage::from(&*delivery.msg));
        let mut batch = Batch::new();
        batch.put(
            Space::Queue,
            persist::queue_key(&self.client_id, seq),
            persist::queued_value(&header, &body),
        );
        if let Err(err) = self.broker.store.apply(batch) {
            tracing::error!(cause = %err, "cannot record a PUBREC");
        }
    }

    fn on_publish(&mut self, wire: &mut wire::Wire, p: PublishIn) -> Result<(), Violation> {
        self.broker
            .metrics
            .publish_received
            .fetch_add(1, Ordering::Relaxed);
        let packet_id = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce && self.session.lock().inbound_qos2.contains(&packet_id) {
            // A resend before PUBREL: acknowledge again, deliver nothing [MQTT-4.3.3-9].
            self.hold_or_write(wire, HeldAck::PubRec(packet_id, reason::SUCCESS), false);
            return Ok(());
        }
        if p.qos != QoS::AtMostOnce
            && self.proto == Proto::V5
            && self.unacked_inbound() >= usize::from(self.broker.config.limits.receive_maximum)
        {
            return Err(Violation(
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                "receive maximum exceeded",
            ));
        }
        let topic = match p.topic_alias {
            Some(alias) => {
                if alias == 0 || alias > self.broker.config.limits.max_topic_alias {
                    return Err(Violation(
                        reason::TOPIC_ALIAS_INVALID,
                        "topic alias out of range",
                    ));
                }
                if p.topic.is_empty() {
                    match self.inbound_aliases.get(&alias) {
                        Some(topic) => topic.clone(),
                        None => {
                            return Err(Violation(reason::PROTOCOL_ERROR, "unknown topic alias"));
                        }
                    }
                } else {
                    self.inbound_aliases.insert(alias, p.topic.clone());
                    p.topic.clone()
                }
            }
            None => p.topic.clone(),
        };
        if topic::validate_name(&topic).is_err() {
            return Err(Violation(reason::TOPIC_NAME_INVALID, "invalid topic name"));
        }
        if p.has_sub_ids {
            return Err(Violation(
                reason::PROTOCOL_ERROR,
                "subscription identifier in a PUBLISH",
            ));
        }
        if let Some(device) = &self.device {
            self.broker
                .gate
                .activity(&device.account, now_ms(), &self.broker.limits);
        }
        if crate::im::is_im_topic(&topic) {
            let outcome = self.broker.gate.publish(
                &self.broker,
                self.device.as_ref(),
                ImPublish {
                    topic: &topic,
                    payload: p.payload,
                    qos: p.qos,
                    props: p.props.as_ref(),
                },
                now_ms(),
            );
            // v3 cannot refuse a PUBLISH: it is acknowledged, dropped, and the sender's inbox
            // gets an error envelope.
            let code = if self.proto == Proto::V3 {
                reason::SUCCESS
            } else {
                outcome.code
            };
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.hold_or_write(wire, HeldAck::PubAck(packet_id, code), outcome.needs_flush)
                }
                QoS::ExactlyOnce => {
                    if code < 0x80 {
                        self.session.lock().inbound_qos2.insert(packet_id);
                    }
                    self.hold_or_write(wire, HeldAck::PubRec(packet_id, code), outcome.needs_flush)
                }
            }
            return Ok(());
        }
        let allowed = !topic.starts_with("$SYS")
            && self.broker.acl.allows(
                self.username.as_deref(),
                &self.client_id,
                Action::Publish,
                &topic,
            );
        if !allowed {
            tracing::debug!(client_id = %self.client_id, %topic, "publish denied");
            let code = if self.proto == Proto::V3 {
                reason::SUCCESS
            } else if self.broker.config.hide_denial_reason {
                reason::UNSPECIFIED
            } else {
                reason::NOT_AUTHORIZED
            };
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.hold_or_write(wire, HeldAck::PubAck(packet_id, code), false)
                }
                QoS::ExactlyOnce => {
                    self.hold_or_write(wire, HeldAck::PubRec(packet_id, code), false)
                }
            }
            return Ok(());
        }
        let now = now_ms();
        let msg = Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            props: p.props.map(Arc::new),
            expires_at_ms: p.expiry_secs.map(|s| now + u64::from(s) * 1000),
            publisher: Some(self.client_id.clone()),
            stamp: None,
        };
        let published = match self.broker.publish(Arc::new(msg)) {
            Ok(published) => published,
            Err(err) => {
                tracing::error!(cause = %err, "store write failed: closing without acknowledging");
                return Err(Violation(reason::UNSPECIFIED, "storage failure"));
            }
        };
        let code = if published.matched == 0 && self.proto == Proto::V5 {
            reason::NO_MATCHING_SUBSCRIBERS
        } else {
            reason::SUCCESS
        };
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.hold_or_write(
                wire,
                HeldAck::PubAck(packet_id, code),
                published.needs_flush,
            ),
            QoS::ExactlyOnce => {
                self.session.lock().inbound_qos2.insert(packet_id);
                self.hold_or_write(
                    wire,
                    HeldAck::PubRec(packet_id, code),
                    published.needs_flush,
                );
            }
        }
        Ok(())
    }

    fn on_subscribe(
        &mut self,
        wire: &mut wire::Wire,
        packet_id: u16,
        filters: Vec<(ByteString, SubOpts)>,
        user_properties: &[(ByteString, ByteString)],
    ) -> Result<(), Violation> {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained: Vec<Delivery> = Vec::new();
        let mut im_changed = false;
        let temporary = user_properties
            .iter()
            .any(|(k, v)| k == "im-temporary" && v == "true");
        for (filter, opts) in filters {
            let split = match topic::split_share(&filter) {
                Ok(split) => split,
                Err(_) => {
                    codes.push(if self.proto == Proto::V5 {
                        reason::TOPIC_FILTER_INVALID
                    } else {
                        0x80
                    });
                    continue;
                }
            };
            if crate::im::is_im_topic(split.filter) {
                // The IM world: a friend request, a join, or one's own inbox and status.
                let code = if split.group.is_some() {
                    reason::NOT_AUTHORIZED
                } else {
                    self.broker.gate.subscribe(
                        &self.broker,
                        self.device.as_ref(),
                        split.filter,
                        opts.qos,
                        now_ms(),
                    )
                };
                if temporary
                    && code < 0x80
                    && let Some(peer) = split
                        .filter
                        .strip_prefix("person/")
                        .and_then(|t| t.strip_suffix("/status"))
                {
                    self.temporary.push(peer.to_owned());
                }
                im_changed |= code < 0x80;
                codes.push(self.suback_code(code));
                continue;
            }
            if split.group.is_some() && opts.no_local {
                // [MQTT-3.8.3-4]
                return Err(Violation(
                    reason::PROTOCOL_ERROR,
                    "no-local on a shared subscription",
                ));
            }
            if !self.broker.acl.allows(
                self.username.as_deref(),
                &self.client_id,
                Action::Subscribe,
                split.filter,
            ) {
                // v3.1.1 has only 0x80 [MQTT-3.9.3-2]; v5 says 0x87, or 0x80 when the server
                // does not reveal the reason [MQTT-3.9.3-1].
                codes.push(
                    if self.proto == Proto::V3 || self.broker.config.hide_denial_reason {
                        reason::UNSPECIFIED
                    } else {
                        reason::NOT_AUTHORIZED
                    },
                );
                continue;
            }
            let opts = SubOpts {
                qos: opts.qos.min(2),
                ..opts
            };
            let existed = self
                .broker
                .router
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .subscribe(split.filter, split.group, &self.session, opts);
            self.session
                .lock()
                .subscriptions
                .insert(filter.to_string(), opts);
            codes.push(opts.qos);
            let send_retained = split.group.is_none()
                && (opts.retain_handling == 0 || (opts.retain_handling == 1 && !existed));
            if send_retained {
                for msg in self.broker.retained_matching(split.filter) {
                    retained.push(Delivery {
                        qos: msg.qos.min(opts.qos()),
                        msg,
                        // Retained messages sent on subscribe keep RETAIN=1 [MQTT-3.3.1-8].
                        retain: true,
                        sub_ids: opts.sub_id.into_iter().collect(),
                        store_seq: None,
                    });
                }
            }
        }
        self.broker.save_session(&self.session, None);
        if im_changed && self.broker.is_sync() {
            self.held.push(HeldAck::SubAck(packet_id, codes));
        } else {
            // SUBACKs are not ordered with PUBACKs: no need to wait behind held ones, and the
            // retained messages queued below must follow it.
            wire.suback(packet_id, &codes);
        }
        for delivery in retained {
            // The session is online: queued now, written after the SUBACK by `drain`.
            self.session.offer(delivery, &self.broker.limits);
        }
        Ok(())
    }

    fn on_unsubscribe(
        &mut self,
        wire: &mut wire::Wire,
        packet_id: u16,
        filters: Vec<ByteString>,
        user_properties: &[(ByteString, ByteString)],
    ) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut im_changed = false;
        let retain_secs = user_properties
            .iter()
            .find(|(k, _)| k == "im-retain-secs")
            .and_then(|(_, v)| v.parse::<u64>().ok());
        for filter in filters {
            if crate::im::is_im_topic(&filter) {
                let code = self.broker.gate.unsubscribe(
                    &self.broker,
                    self.device.as_ref(),
                    &filter,
                    retain_secs,
                    now_ms(),
                );
                im_changed |= code == reason::SUCCESS;
                codes.push(code);
                continue;
            }
            let existed = match topic::split_share(&filter) {
                Ok(split) => {
                    let removed = self
                        .broker
                        .router
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .unsubscribe(split.filter, split.group, &self.session);
                    self.session.lock().subscriptions.remove(&*filter);
                    removed
                }
                Err(_) => false,
            };
            codes.push(if existed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.broker.save_session(&self.session, None);
        if im_changed && self.broker.is_sync() {
            self.held.push(HeldAck::UnsubAck(packet_id, codes));
        } else {
            wire.unsuback(packet_id, &codes);
        }
    }
}
