//! The parking lot: where idle connections wait without a task.
//!
//! A connection idle for `PARK_AFTER_MS` (nothing buffered, nothing to write, no acknowledgement
//! waiting: `Conn::is_idle`), or idle right after its CONNACK, ends its task and leaves a `Record`
//! (its `Conn`, its stream, the small form of its wire, its keepalive deadline) in its `Cell`.
//! Three things give it a task again (`resume`), each holding a `Waker` of the cell:
//! - its session: a message queued for it, a takeover, an eviction, the shutdown
//!   (`SessionState::park_waker`, woken like the task it replaces);
//! - its stream: input or the end of it. A TCP stream leaves tokio's reactor while parked (whose
//!   registration costs 256 bytes a socket) and is watched by the lot's own epoll instance
//!   instead, by file descriptor; any other stream (WebSocket's pipe) keeps the cell's waker in
//!   its read (`Transport`);
//! - its keepalive deadline, on a wheel of one-second buckets (`Lot::schedule`): at most one
//!   second late, never early.
//!
//! A wake-up between the decision to park and the record's arrival in the cell is not lost: the
//! cell is `Parking` meanwhile and a wake-up makes it `Woken`, which the parking connection sees
//! and keeps its task. A wake-up of a parked cell takes the record out and spawns its task; one
//! of a running cell does nothing (the task has its own registrations, and the session's
//! `signalled` flag keeps what a stale session waker was told). The new task reads and writes
//! what it can on the socket before handing it back to tokio, whose new registration reports
//! readiness only at the reactor's next turn.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use ntex_bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::TcpStream;

use super::io::{Io, SCRATCH, WRITE_SLICES, io_slices, poll_read_into};
use super::{Conn, End, Event, Live, drive};
use crate::parking::{Lot, Parking, lock, mono_ms};
use crate::wire::{ParkedWire, Wire};

/// How long a connection stays idle before it parks. Short next to the time a person or a device
/// leaves a connection idle, long next to the gaps between the packets of a busy one (which would
/// otherwise park and get a task back for every message).
pub(super) const PARK_AFTER_MS: u64 = 250;

/// A connection's timing, in `mono_ms`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    /// When the keepalive runs out (`u64::MAX`: never); moved on by every read.
    pub deadline: u64,
    /// Since when nothing happened.
    pub idle_since: u64,
}

impl Clock {
    /// When the running connection looks at its timer next: the keepalive deadline, or when it
    /// may park (`idle`: it could park now if it had been idle long enough).
    pub fn next_check(&self, parking: bool, idle: bool, now: u64) -> u64 {
        let park_at = match (parking, idle) {
            (false, _) => u64::MAX,
            (true, true) => self.idle_since.saturating_add(PARK_AFTER_MS),
            (true, false) => now.saturating_add(PARK_AFTER_MS),
        };
        self.deadline.min(park_at)
    }
}

/// What a stream became when its connection tried to park.
pub enum Parked<S: Transport> {
    /// Parked: the waker is woken at input.
    Yes(S::Parked),
    /// Not parked. `Some` when it read: how many bytes (appended to the buffer; 0 at the end
    /// of the stream).
    No(S, Option<io::Result<usize>>),
    /// The stream could not be taken back from the runtime: the connection is over.
    Lost(io::Error),
}

/// A byte stream a connection can park with.
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin + Sized + 'static {
    /// The stream comes through the WebSocket listener (counted apart in `/metrics`).
    const WEBSOCKET: bool;

    /// The stream while its connection is parked.
    type Parked: Send + 'static;

    /// Park: `waker` is to be woken when the stream has input (or ends). Input already there
    /// is read into `buf`, and the stream does not park.
    fn park(self, lot: &Lot, waker: &Waker, buf: &mut BytesMut) -> Parked<Self>;

    /// Back from the lot, on the connection's new task.
    fn unpark(parked: Self::Parked, lot: &Lot) -> io::Result<Self>;

    /// Read what input is there, without waiting: `None` when there is none (yet), `Some(Ok(0))`
    /// at the end of the stream.
    fn read_parked(parked: &mut Self::Parked, buf: &mut BytesMut) -> Option<io::Result<usize>>;

    /// Write as much of what `wire` has pending as the stream takes without waiting; how much.
    fn write_parked(parked: &mut Self::Parked, wire: &mut Wire) -> io::Result<usize>;
}

impl Transport for TcpStream {
    const WEBSOCKET: bool = false;
    type Parked = std::net::TcpStream;

    fn park(self, lot: &Lot, waker: &Waker, _buf: &mut BytesMut) -> Parked<Self> {
        let stream = match self.into_std() {
            Ok(stream) => stream,
            Err(err) => return Parked::Lost(err),
        };
        match lot.watch(stream.as_raw_fd(), waker) {
            Ok(()) => Parked::Yes(stream),
            Err(err) => {
                tracing::debug!(cause = %err, "cannot watch a parked socket: it keeps its task");
                match TcpStream::from_std(stream) {
                    Ok(stream) => Parked::No(stream, None),
                    Err(err) => Parked::Lost(err),
                }
            }
        }
    }

    fn unpark(parked: Self::Parked, lot: &Lot) -> io::Result<Self> {
        lot.unwatch(parked.as_raw_fd());
        TcpStream::from_std(parked)
    }

    fn read_parked(parked: &mut Self::Parked, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            loop {
                match parked.read(&mut scratch[..]) {
                    Ok(n) => {
                        buf.extend_from_slice(&scratch[..n]);
                        return Some(Ok(n));
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => return None,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Some(Err(err)),
                }
            }
        })
    }

    fn write_parked(parked: &mut Self::Parked, wire: &mut Wire) -> io::Result<usize> {
        let mut written = 0;
        if let Some(pages) = wire.pending() {
            while !pages.is_empty() {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let count = io_slices(pages, &mut slices);
                match parked.write_vectored(&slices[..count]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        pages.advance_to(n);
                        written += n;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            }
        }
        if !wire.has_pending() {
            wire.written();
        }
        Ok(written)
    }
}

impl Transport for DuplexStream {
    const WEBSOCKET: bool = true;
    type Parked = DuplexStream;

    fn park(mut self, _lot: &Lot, waker: &Waker, buf: &mut BytesMut) -> Parked<Self> {
        // A read that finds nothing leaves `waker` with the pipe, to be woken by its writer.
        let mut cx = Context::from_waker(waker);
        match poll_read_into(&mut self, buf, &mut cx) {
            Poll::Pending => Parked::Yes(self),
            Poll::Ready(read) => Parked::No(self, Some(read)),
        }
    }

    fn unpark(parked: Self::Parked, _lot: &Lot) -> io::Result<Self> {
        Ok(parked)
    }

    // The pipe's reader and writer are tasks that run as soon as they are woken: nothing to gain.
    fn read_parked(_parked: &mut Self::Parked, _buf: &mut BytesMut) -> Option<io::Result<usize>> {
        None
    }

    fn write_parked(_parked: &mut Self::Parked, _wire: &mut Wire) -> io::Result<usize> {
        Ok(0)
    }
}

/// A parked connection: all it needs to run again.
pub(super) struct Record<S: Transport> {
    conn: Conn,
    stream: S::Parked,
    wire: ParkedWire,
    /// The keepalive deadline (`Clock::deadline`), in whole seconds rounded up: the lot's
    /// wheel wakes it at the second anyway, and 4 bytes keep the record in its size class.
    deadline: ParkedDeadline,
}

/// A keepalive deadline in `mono_ms`, kept as whole seconds rounded up (`u32::MAX`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ParkedDeadline(u32);

impl ParkedDeadline {
    fn of(ms: u64) -> ParkedDeadline {
        if ms == u64::MAX {
            return ParkedDeadline(u32::MAX);
        }
        ParkedDeadline(u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX - 1))
    }

    /// Back in `mono_ms`: never earlier than the deadline it was made of.
    fn ms(self) -> u64 {
        match self.0 {
            u32::MAX => u64::MAX,
            s => u64::from(s) * 1000,
        }
    }
}

enum Slot<S: Transport> {
    /// The connection has a task.
    Running,
    /// Its task is registering the wakers of a park.
    Parking,
    /// Woken while `Parking`: the task keeps running.
    Woken,
    Parked(Record<S>),
}

/// A connection's place in the parking lot, from its first park to its end: the wakers of its
/// parks are this cell's, so a stale one (from an earlier park) finds it running and does nothing.
pub(super) struct Cell<S: Transport> {
    /// The lot it parks in.
    lot: Arc<Lot>,
    slot: Mutex<Slot<S>>,
    /// The tick of this connection's pending keepalive wake-up, 0 for none (see `Lot::schedule`).
    wheel_at: AtomicU64,
}

impl<S: Transport> Wake for Cell<S> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut slot = lock(&self.slot);
        match &*slot {
            Slot::Parking => *slot = Slot::Woken,
            Slot::Parked(_) => {
                if let Slot::Parked(record) = std::mem::replace(&mut *slot, Slot::Running) {
                    drop(slot);
                    let lot = &self.lot;
                    // The guard first: the shutdown waits while either is held.
                    let alive = lot.alive.clone();
                    lot.parked.fetch_sub(1, Ordering::Relaxed);
                    lot.handle.spawn(resume(self.clone(), record, alive));
                }
            }
            Slot::Running | Slot::Woken => {}
        }
    }
}

/// Park an idle connection (its task then ends). `Some` when it must keep running instead, with
/// an event to handle first.
pub(super) fn park<S: Transport>(live: Live<S>) -> Option<(Live<S>, Option<Event>)> {
    let Some(lot) = live.parking.lot().cloned() else {
        return Some((live, None));
    };
    let cell = match &live.cell {
        Some(cell) => cell.clone(),
        None => Arc::new(Cell {
            lot: lot.clone(),
            slot: Mutex::new(Slot::Running),
            wheel_at: AtomicU64::new(0),
        }),
    };
    *lock(&cell.slot) = Slot::Parking;
    let waker = Waker::from(cell.clone());
    let Live {
        conn,
        io,
        wire,
        mut clock,
        cell: _,
        parking,
        alive,
    } = live;
    // Should it keep running, this counts as activity: it tries again `PARK_AFTER_MS` later.
    let now = mono_ms();
    let Io {
        stream,
        mut buf,
        broker,
    } = io;
    let (stream, event) = match S::park(stream, &lot, &waker, &mut buf) {
        Parked::Yes(stream) => {
            let mut parked = conn.session.park_waker(conn.owner, &waker);
            if parked && clock.deadline != u64::MAX {
                lot.schedule(clock.deadline, &cell.wheel_at, &waker);
            }
            let mut slot = lock(&cell.slot);
            if matches!(*slot, Slot::Woken) {
                parked = false;
            }
            if parked {
                lot.parked.fetch_add(1, Ordering::Relaxed);
                *slot = Slot::Parked(Record {
                    conn,
                    stream,
                    wire: wire.park(),
                    deadline: ParkedDeadline::of(clock.deadline),
                });
                drop(slot);
                // Counted as parked (above) before the guard goes.
                drop(alive);
                return None;
            }
            // Something came up meanwhile: take the stream back and go on.
            drop(slot);
            match S::unpark(stream, &lot) {
                Ok(stream) => (stream, None),
                Err(err) => {
                    *lock(&cell.slot) = Slot::Running;
                    lost(conn, &err);
                    return None;
                }
            }
        }
        Parked::No(stream, read) => {
            if let Some(Ok(n)) = read {
                conn.broker
                    .metrics
                    .bytes_received
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            (stream, read.map(|read| Event::Read(read.map(|n| n > 0))))
        }
        Parked::Lost(err) => {
            *lock(&cell.slot) = Slot::Running;
            lost(conn, &err);
            return None;
        }
    };
    *lock(&cell.slot) = Slot::Running;
    clock.idle_since = now;
    let io = Io {
        stream,
        buf,
        broker,
    };
    let live = Live {
        conn,
        io,
        wire,
        clock,
        cell: Some(cell),
        parking,
        alive,
    };
    Some((live, event))
}

/// The stream could not move between the runtime and the lot: the connection is over.
fn lost(conn: Conn, err: &io::Error) {
    tracing::debug!(client_id = %conn.client_id(), cause = %err, "connection lost at a park");
    conn.closed(End::Abnormal);
}

/// The task of a connection woken in the lot.
async fn resume<S: Transport>(cell: Arc<Cell<S>>, record: Record<S>, alive: Arc<()>) {
    let Record {
        mut conn,
        mut stream,
        wire,
        deadline,
    } = record;
    let lot = cell.lot.clone();
    // What can be done at once is done on the stream as the lot hands it back: a socket new to
    // the runtime is reported ready only at the reactor's next turn, which can be long in coming
    // when every worker is busy.
    let mut wire = wire.resume(conn.client_id());
    let mut buf = BytesMut::new();
    let metrics = &conn.broker.metrics;
    let mut first = S::read_parked(&mut stream, &mut buf).map(|read| {
        if let Ok(n) = read {
            metrics
                .bytes_received
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        Event::Read(read.map(|n| n > 0))
    });
    // Input comes first: what the client sent before a takeover or an eviction (a DISCONNECT,
    // say) is handled before the connection ends, and `run` drains the session after it.
    if !matches!(first, Some(Event::Read(Ok(true)))) {
        if let Err(end) = conn.drain(&mut wire) {
            first = Some(Event::Stop(end));
        }
        match S::write_parked(&mut stream, &mut wire) {
            Ok(n) => {
                let metrics = &conn.broker.metrics;
                metrics.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            // As `run` does: a connection already ending keeps its reason.
            Err(_) if !matches!(first, Some(Event::Stop(_))) => {
                first = Some(Event::Stop(End::Abnormal));
            }
            Err(_) => {}
        }
    }
    let stream = match S::unpark(stream, &lot) {
        Ok(stream) => stream,
        Err(err) => return lost(conn, &err),
    };
    let clock = Clock {
        deadline: deadline.ms(),
        // Counted as activity: parking again before the first read of a socket back in the
        // runtime would only bring it back.
        idle_since: mono_ms(),
    };
    let live = Live {
        io: Io {
            stream,
            buf,
            broker: conn.broker.clone(),
        },
        conn,
        wire,
        clock,
        cell: Some(cell),
        parking: Parking::of(lot),
        alive,
    };
    drive(live, first).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle TCP connection costs beyond its session is its cell; the allocator rounds
    /// 16 bytes of reference counts plus this up to its size classes (128 bytes here), so a
    /// field more can cost a whole class more per idle connection (docs/BENCHMARKS.md).
    #[test]
    fn a_parked_connection_stays_small() {
        assert!(std::mem::size_of::<Cell<TcpStream>>() <= 112);
        assert!(std::mem::size_of::<crate::session::Session>() <= 144);
    }

    #[test]
    fn a_parked_deadline_is_never_earlier_and_never_stays_never() {
        for ms in [0, 1, 999, 1_000, 1_001, 86_400_123] {
            let back = ParkedDeadline::of(ms).ms();
            assert!(back >= ms && back < ms + 1_000, "{ms} -> {back}");
        }
        assert_eq!(ParkedDeadline::of(u64::MAX).ms(), u64::MAX);
    }

    #[test]
    fn the_timer_looks_at_the_keepalive_deadline_and_at_parking() {
        let clock = Clock {
            deadline: 10_000,
            idle_since: 1_000,
        };
        assert_eq!(clock.next_check(true, true, 1_100), 1_000 + PARK_AFTER_MS);
        assert_eq!(clock.next_check(true, false, 1_100), 1_100 + PARK_AFTER_MS);
        assert_eq!(clock.next_check(false, true, 1_100), 10_000);
        let never = Clock {
            deadline: u64::MAX,
            idle_since: 0,
        };
        assert_eq!(never.next_check(false, true, 5), u64::MAX);
    }
}
