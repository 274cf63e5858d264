//! Listeners (MQTT over TCP and over WebSocket), the background tasks, and graceful shutdown.
//!
//! `run` takes **already bound** listeners, so a test binds `127.0.0.1:0` and gets a real broker.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mqtter_engine::clock::clock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use crate::broker::Broker;
use crate::config::StoreFailure;
use crate::connection::{self, Served};
use crate::parking::Parking;
use crate::sys;

/// The bound listeners the broker serves.
pub struct Listeners {
    pub tcp: TcpListener,
    pub ws: Option<TcpListener>,
    /// The Prometheus endpoint (`metrics_listen`), if any.
    pub metrics: Option<TcpListener>,
}

/// Serve until `shutdown` resolves, then stop accepting, ask every client to go, flush, return.
pub async fn run(
    broker: Arc<Broker>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let alive = Arc::new(());
    let mut tasks = tokio::task::JoinSet::new();
    // Before the first connection: one served without the lot would never park.
    let parking = match crate::parking::start_parking(alive.clone()) {
        Ok((parking, lot)) => {
            tasks.spawn(lot);
            parking
        }
        Err(err) => {
            tracing::warn!(cause = %err, "no parking lot: idle connections keep their tasks");
            Parking::default()
        }
    };
    let served = Served {
        broker: broker.clone(),
        parking: parking.clone(),
        alive: alive.clone(),
    };
    tasks.spawn(accept_loop(
        served.clone(),
        listeners.tcp,
        connection::serve,
    ));
    // `served` holds a clone of the guard: it goes to the last accept loop, or now, so that
    // the stop below does not wait for it (it waited its whole 5 s without a WebSocket listener).
    match listeners.ws {
        Some(ws) => {
            tasks.spawn(accept_loop(served, ws, serve_ws));
        }
        None => drop(served),
    }
    if let Some(metrics) = listeners.metrics {
        tasks.spawn(crate::prometheus::serve(
            broker.clone(),
            parking.clone(),
            metrics,
        ));
    }
    if broker.config.sys_interval > 0 {
        tasks.spawn(sys::run(
            broker.clone(),
            parking.clone(),
            Duration::from_secs(broker.config.sys_interval),
        ));
    }
    tasks.spawn(flush_periodically(broker.clone()));
    tasks.spawn(crate::disk::watch(
        broker.disk.clone(),
        Duration::from_millis(broker.config.store.disk_check_interval_ms.max(10)),
    ));
    tasks.spawn(im_timers(broker.clone()));
    tasks.spawn(things_timers(broker.clone()));

    let store_failed = tokio::select! {
        _ = shutdown => false,
        _ = store_failure(&broker) => true,
    };
    if store_failed {
        tracing::error!("the store cannot write: stopping (on_store_failure = \"stop\")");
    }
    tracing::info!("shutting down: no new connections, asking clients to go");
    tasks.abort_all();
    broker.evict_all();
    // Connections finish their writes and end; give them a bounded time. Each holds a clone of
    // `alive`, except while parked (then the lot holds one clone for all and counts them).
    let idle = 1 + usize::from(parking.holds_guard());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while (Arc::strong_count(&alive) > idle || parking.parked() > 0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flushed = broker.clone();
    let patience = Duration::from_millis(broker.config.store.stop_flush_timeout_ms);
    let last_flush = tokio::task::spawn_blocking(move || flushed.flush_blocking());
    match tokio::time::timeout(patience, last_flush).await {
        Ok(joined) => joined
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?,
        Err(_) => {
            // Nothing acknowledged waits for this flush (acknowledgements wait for their own),
            // so a store stuck past the patience is left behind rather than keeping the stop.
            tracing::error!(
                waited_ms = patience.as_millis() as u64,
                "the store did not finish the last flush: stopping without it (what was \
                 acknowledged was durable already; later writes may be lost)"
            );
            if !store_failed {
                tracing::info!("stopped");
                return Ok(());
            }
        }
    }
    if store_failed {
        return Err(std::io::Error::other(
            "stopped because the store could not write (on_store_failure = \"stop\")",
        ));
    }
    tracing::info!("store flushed, stopped");
    Ok(())
}

/// Resolves once a store write or flush has failed, with `on_store_failure = "stop"`; never
/// otherwise.
async fn store_failure(broker: &Broker) {
    if broker.config.on_store_failure != StoreFailure::Stop {
        return std::future::pending().await;
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        ticker.tick().await;
        if broker.metrics.store_errors.load(Ordering::Relaxed) > 0 {
            return;
        }
    }
}

/// Flush on a timer, so that what does not wait for a flush (QoS 0 retained messages, session
/// changes, and everything in `durability = "async"`) is durable within `flush_interval_ms`.
async fn flush_periodically(broker: Arc<Broker>) {
    let every = Duration::from_millis(broker.config.flush_interval_ms.max(10));
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        if let Err(err) = broker.durable().await {
            tracing::error!(cause = %err, "periodic flush failed");
        }
    }
}

/// A purge every `every_ms` on the clock: when it is due, and when next.
struct Purge {
    last: AtomicU64,
    every_ms: u64,
}

impl Purge {
    fn new(broker: &Broker) -> Arc<Purge> {
        Arc::new(Purge {
            last: AtomicU64::new(crate::message::now_ms()),
            every_ms: broker.config.im.purge_interval.max(1).saturating_mul(1000),
        })
    }

    /// Whether one is due at `now` (then the next is counted from `now`).
    fn due(&self, now: u64) -> bool {
        let due = now.saturating_sub(self.last.load(Ordering::Acquire)) >= self.every_ms;
        if due {
            self.last.store(now, Ordering::Release);
        }
        due
    }

    fn next(&self) -> u64 {
        self.last
            .load(Ordering::Acquire)
            .saturating_add(self.every_ms)
    }
}

/// Presence (away after pings only) and the recycle bin's purge, on timers.
async fn im_timers(broker: Arc<Broker>) {
    let purge = Purge::new(&broker);
    let work = {
        let purge = purge.clone();
        move |broker: &Broker, now: u64| {
            broker.gate.tick(now);
            if purge.due(now) {
                broker.gate.purge(now);
            }
        }
    };
    if clock().is_virtual() {
        let next = move |broker: &Broker| {
            let at = purge.next();
            broker.gate.next_away_at().map_or(at, |away| away.min(at))
        };
        return on_virtual_deadlines(broker, next, work).await;
    }
    // Ticks on real time; what is due is measured on the clock.
    let away_after_ms = broker.config.im.away_after.saturating_mul(1000).max(1);
    let tick = Duration::from_millis((away_after_ms / 4).clamp(100, 1000));
    on_ticks(broker, tick, work).await
}

/// The things world's timers: commands whose ttl passed are closed (`cmd.timeout`, and the
/// answer to a v5 Response Topic published here), claim codes and command ids purged.
async fn things_timers(broker: Arc<Broker>) {
    let purge = Purge::new(&broker);
    let work = {
        let purge = purge.clone();
        move |broker: &Broker, now: u64| {
            for answer in broker.things.sweep(now) {
                if let Err(err) = broker.publish(answer) {
                    tracing::error!(cause = %err, "cannot publish a command timeout");
                }
            }
            if purge.due(now) {
                broker.things.purge(now);
            }
        }
    };
    if clock().is_virtual() {
        let next = move |broker: &Broker| {
            let at = purge.next();
            let ttl = broker.things.things.next_deadline();
            ttl.map_or(at, |ttl| ttl.min(at))
        };
        return on_virtual_deadlines(broker, next, work).await;
    }
    // Ticks on real time; what is due (ttls, purges) is measured on the clock.
    let tick = Duration::from_millis(broker.config.things.sweep_interval_ms.max(10));
    on_ticks(broker, tick, work).await
}

/// A timer on the system clock: `work` every `tick`.
async fn on_ticks(broker: Arc<Broker>, tick: Duration, work: impl Fn(&Broker, u64)) {
    let mut ticker = tokio::time::interval(tick);
    loop {
        ticker.tick().await;
        work(&broker, crate::message::now_ms());
    }
}

/// How often (real time) a timer on the virtual clock looks for a new next deadline.
const VIRTUAL_RECHECK: Duration = Duration::from_millis(5);

/// A timer on a virtual clock (`mqtter sim`): sleeps until the next deadline `next` names and
/// runs `work` when it is reached, so an advance fires each deadline at its exact time rather
/// than at ticks. A deadline can be added at any moment (a command with a ttl), so the task looks
/// again every few ms of real time; an idle probe holds an advance back until the task sleeps
/// until the deadline in force (and while `work` runs).
async fn on_virtual_deadlines(
    broker: Arc<Broker>,
    next: impl Fn(&Broker) -> u64 + Send + Sync + 'static,
    work: impl Fn(&Broker, u64),
) {
    let clock = clock();
    let next = Arc::new(next);
    // The deadline the task sleeps until; 0 while it is not sleeping.
    let armed = Arc::new(AtomicU64::new(0));
    {
        let (weak, next, armed) = (Arc::downgrade(&broker), next.clone(), armed.clone());
        clock.add_idle_probe(move || match weak.upgrade() {
            Some(broker) => armed.load(Ordering::Acquire) == next(&broker),
            None => true,
        });
    }
    loop {
        let at = next(&broker);
        armed.store(at, Ordering::Release);
        let reached = tokio::select! {
            _ = clock.sleep_until_ms(at) => true,
            _ = tokio::time::sleep(VIRTUAL_RECHECK) => false,
        };
        if reached {
            armed.store(0, Ordering::Release);
            work(&broker, clock.now_ms());
        }
    }
}

/// Accept connections for ever, each served by its own task.
async fn accept_loop<F, Fut>(served: Served, listener: TcpListener, serve: F)
where
    F: Fn(Served, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                // Spawned as it is, not in an `async move { served.await }` block: an async
                // block holds the future it awaits twice (as captured and as awaited), which
                // doubled every connection's task.
                tokio::spawn(serve(served.clone(), stream, peer));
            }
            Err(err) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(cause = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// MQTT over WebSocket: binary frames carry the MQTT byte stream ([MQTT-6.0.0-1]), bridged to
/// the same connection code through an in-memory pipe.
#[allow(clippy::result_large_err)] // the handshake callback's type is tungstenite's
async fn serve_ws(served: Served, stream: TcpStream, peer: SocketAddr) {
    let path = served.broker.config.ws_path.clone();
    let check =
        move |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
            if request.uri().path() != path {
                let mut refusal = ErrorResponse::new(Some("no MQTT endpoint here".into()));
                *refusal.status_mut() = StatusCode::NOT_FOUND;
                return Err(refusal);
            }
            let offers_mqtt = request
                .headers()
                .get_all("Sec-WebSocket-Protocol")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|p| p.trim() == "mqtt");
            if offers_mqtt {
                response
                    .headers_mut()
                    .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
            }
            Ok(response)
        };
    let ws = match tokio_tungstenite::accept_hdr_async(stream, check).await {
        Ok(ws) => ws,
        Err(err) => {
            tracing::debug!(%peer, cause = %err, "WebSocket handshake failed");
            return;
        }
    };
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mqtt_side, pipe) = tokio::io::duplex(64 * 1024);
    let (mut pipe_rx, mut pipe_tx) = tokio::io::split(pipe);
    let inbound = async move {
        while let Some(Ok(frame)) = ws_rx.next().await {
            match frame {
                WsMessage::Binary(data) if pipe_tx.write_all(&data).await.is_err() => break,
                // A data frame that is not binary closes the connection [MQTT-6.0.0-1].
                WsMessage::Text(_) | WsMessage::Close(_) => break,
                _ => {}
            }
        }
        let _ = pipe_tx.shutdown().await;
    };
    let outbound = async move {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match pipe_rx.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(WsMessage::binary(chunk[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.close().await;
    };
    // The bridge holds a guard of its own: at the shutdown, the DISCONNECT the connection writes
    // into the pipe still has to reach the client.
    let bridge_alive = served.alive.clone();
    tokio::spawn(async move {
        tokio::join!(inbound, outbound);
        drop(bridge_alive);
    });
    // This task ends when the connection ends or parks; the bridge lives on its own task.
    connection::serve(served, mqtt_side, peer).await;
}
