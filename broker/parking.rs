//! The parking lot's own machinery: `Parking` (off until `start_parking`), the `Lot` with its
//! epoll instance for parked TCP sockets and its keepalive wheel of one-second buckets, and the
//! task that serves them. What parks and how a connection comes back is `connection::park`'s.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Token};
use tokio::io::unix::AsyncFd;

/// The keepalive wheel's bucket.
const TICK_MS: u64 = 1000;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Milliseconds on a monotonic clock (since its first use in this process).
pub fn mono_ms() -> u64 {
    u64::try_from(base().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The instant of `mono_ms() == ms`, for tokio's timers; at most a day ahead.
pub fn instant_at(ms: u64) -> tokio::time::Instant {
    let cap = mono_ms().saturating_add(86_400_000);
    tokio::time::Instant::from_std(base() + Duration::from_millis(ms.min(cap)))
}

/// The server's parking lot, as its connections and readers see it: off (`Parking::default()`,
/// connections keep their tasks) or the lot `start_parking` opened. Owned by `server::run`, which
/// hands a clone to every connection and to the counters' readers (`sys`, `prometheus`).
#[derive(Default, Clone)]
pub struct Parking {
    lot: Option<Arc<Lot>>,
}

impl std::fmt::Debug for Parking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parking")
            .field("on", &self.is_on())
            .finish()
    }
}

impl Parking {
    /// The lot itself, as a resumed connection takes it back from its cell.
    pub(crate) fn of(lot: Arc<Lot>) -> Parking {
        Parking { lot: Some(lot) }
    }

    pub fn is_on(&self) -> bool {
        self.lot.is_some()
    }

    /// Whether the lot holds a clone of the open connections' guard (it does once started).
    pub fn holds_guard(&self) -> bool {
        self.is_on()
    }

    /// How many connections are parked now (they hold no guard meanwhile).
    pub fn parked(&self) -> u64 {
        self.lot
            .as_ref()
            .map_or(0, |lot| lot.parked.load(Ordering::Relaxed))
    }

    pub(crate) fn lot(&self) -> Option<&Arc<Lot>> {
        self.lot.as_ref()
    }
}

/// The parked connections' sockets and keepalive deadlines (see the module doc).
pub struct Lot {
    /// Where parked connections get their tasks back.
    pub(crate) handle: tokio::runtime::Handle,
    /// The lot's epoll instance (a handle of its own: valid even once the serving task is gone).
    registry: mio::Registry,
    /// The waker of each parked TCP connection, by file descriptor.
    sockets: Mutex<Vec<Option<Waker>>>,
    wheel: Mutex<Wheel>,
    pub(crate) parked: AtomicU64,
    /// The guard of open connections (see `server::run`): a parked record holds none, so that it
    /// stays small; `parked` counts it meanwhile, and its task gets a clone of this one.
    pub(crate) alive: Arc<()>,
}

#[derive(Default)]
struct Wheel {
    /// Tick (`mono_ms / TICK_MS`, rounded up) -> the connections to wake then.
    buckets: BTreeMap<u64, Vec<Waker>>,
    /// Every tick up to this one has been woken.
    done: u64,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Open the parking lot on the current runtime: the `Parking` to hand to connections, and the
/// task that serves it (wakes parked connections on input and at their keepalive deadlines).
/// Connections served without it keep their tasks. `alive` is the guard every open connection holds; the lot keeps
/// one clone for its parked connections (see `Parking::parked`).
pub fn start_parking(
    alive: Arc<()>,
) -> io::Result<(
    Parking,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let poll = mio::Poll::new()?;
    let registry = poll.registry().try_clone()?;
    // SAFETY: `mio::Poll` owns its epoll descriptor and keeps it open, unchanged, until it is
    // dropped, which only the `AsyncFd` can do.
    let events = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }
        .map_err(|err| err.into_parts().1)?;
    let lot = Arc::new(Lot {
        handle: tokio::runtime::Handle::current(),
        registry,
        sockets: Mutex::new(Vec::new()),
        wheel: Mutex::new(Wheel::default()),
        parked: AtomicU64::new(0),
        alive,
    });
    let parking = Parking {
        lot: Some(lot.clone()),
    };
    Ok((parking, serve_lot(lot, events)))
}

async fn serve_lot(lot: Arc<Lot>, mut poll: AsyncFd<mio::Poll>) {
    let mut events = mio::Events::with_capacity(1024);
    // On the ticks' boundaries (and back on them after a late one), so that a bucket is woken as
    // soon as its tick has come: at most a tick after the deadlines in it.
    let first = instant_at(mono_ms().div_ceil(TICK_MS) * TICK_MS);
    let mut ticker = tokio::time::interval_at(first, Duration::from_millis(TICK_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            ready = poll.readable_mut() => {
                let mut guard = match ready {
                    Ok(guard) => guard,
                    Err(err) => {
                        tracing::error!(cause = %err, "parking lot: cannot wait for sockets");
                        return;
                    }
                };
                loop {
                    events.clear();
                    match guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        Ok(()) => {}
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                        Err(err) => {
                            tracing::error!(cause = %err, "parking lot: cannot poll sockets");
                            return;
                        }
                    }
                    if events.is_empty() {
                        guard.clear_ready();
                        break;
                    }
                    let ready: Vec<Waker> = {
                        let mut sockets = lock(&lot.sockets);
                        events
                            .iter()
                            .filter_map(|e| sockets.get_mut(e.token().0).and_then(Option::take))
                            .collect()
                    };
                    ready.into_iter().for_each(Waker::wake);
                }
            }
            _ = ticker.tick() => lot.tick(),
        }
    }
}

impl Lot {
    /// Wake the connections whose keepalive bucket has come.
    fn tick(&self) {
        let now = mono_ms() / TICK_MS;
        let due = {
            let mut wheel = lock(&self.wheel);
            let later = wheel.buckets.split_off(&(now + 1));
            wheel.done = now;
            std::mem::replace(&mut wheel.buckets, later)
        };
        due.into_values().flatten().for_each(Waker::wake);
    }

    /// Have `waker` woken at `deadline` or up to a tick later, unless this connection's pending
    /// wake-up (`at`: its tick, 0 for none) comes before: a deadline only moves on, so a
    /// connection has one entry on the wheel however often it parks.
    pub(crate) fn schedule(&self, deadline: u64, at: &AtomicU64, waker: &Waker) {
        let tick = deadline.div_ceil(TICK_MS);
        let mut wheel = lock(&self.wheel);
        let pending = at.load(Ordering::Relaxed);
        if pending > wheel.done && pending <= tick {
            return;
        }
        wheel.buckets.entry(tick).or_default().push(waker.clone());
        at.store(tick, Ordering::Relaxed);
    }

    /// Watch a parked socket: `waker` is woken when it has input, or an error, or is closed.
    pub(crate) fn watch(&self, fd: RawFd, waker: &Waker) -> io::Result<()> {
        let slot = usize::try_from(fd).map_err(io::Error::other)?;
        {
            let mut sockets = lock(&self.sockets);
            if sockets.len() <= slot {
                // Grown in steps rather than doubled: one slot per descriptor is all it needs.
                let len = (slot + 1).next_multiple_of(1024);
                let more = len - sockets.len();
                sockets.reserve_exact(more);
                sockets.resize(len, None);
            }
            sockets[slot] = Some(waker.clone());
        }
        // Edge-triggered, and an epoll registration reports what is already there: input that
        // arrived before this point wakes the connection too.
        let registered =
            self.registry
                .register(&mut SourceFd(&fd), Token(slot), Interest::READABLE);
        if registered.is_err() {
            lock(&self.sockets)[slot] = None;
        }
        registered
    }

    pub(crate) fn unwatch(&self, fd: RawFd) {
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        if let Ok(slot) = usize::try_from(fd)
            && let Some(waker) = lock(&self.sockets).get_mut(slot)
        {
            *waker = None;
        }
    }
}
