//! The daemon's clock: wall time (`now_ms`) and waiting for a deadline, from the system or from a
//! virtual clock that a simulator moves (`advance`), firing every deadline it passes, in order.
//!
//! **One clock per process.** [`clock`] is the system clock unless [`install`] put a virtual one
//! in place before anything asked (`mqtter sim` does, before it starts the daemon in-process).
//! The system clock costs one atomic load more than `SystemTime::now`.
//!
//! **What runs on it.** What a scenario must be able to move: the wall-clock reads that stamp and
//! expire (messages, commands, presence, the recycle bin), session expiry and will delays, and the
//! rules engine's schedules, `after` timers and debounces. What protects the network (keepalive,
//! flush gaps, parking, login delays, script budgets) stays on real time.
//!
//! **Advancing.** [`Clock::advance`] moves time to each registered deadline in turn (a [`Sleep`]
//! of a task, an [`Alarm`] of a thread), wakes what waits for it, and lets the daemon settle
//! before the next one: every woken sleep has run, every fired alarm's thread has come back to
//! wait, and every idle probe ([`Clock::add_idle_probe`], e.g. the rules engine's queue) says
//! idle. So a deadline that a thread sets again when its alarm fired, or that a rule sets while
//! the engine is busy, is fired in the same advance if it falls within it. (A task woken by a
//! sleep is seen to have run once it is polled; a sleep it starts after that is seen only if it
//! is registered before the daemon looks idle. The daemon's sleeps start no further ones.)

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

static CLOCK: OnceLock<Clock> = OnceLock::new();

/// The process's clock (the system clock unless [`install`] set another first).
pub fn clock() -> &'static Clock {
    CLOCK.get_or_init(Clock::system)
}

/// Make `clock` the process's clock. Fails (giving it back) if a clock is in use already.
pub fn install(clock: Clock) -> Result<(), Clock> {
    CLOCK.set(clock)
}

/// ms since the Unix epoch on the process's clock.
pub fn now_ms() -> u64 {
    clock().now_ms()
}

/// ms since the Unix epoch on the system clock.
pub fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How long [`Clock::advance`] waits at most for the daemon to settle after one deadline.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// How often a thread waiting on a virtual [`Alarm`] looks at the time (real time).
const ALARM_POLL: Duration = Duration::from_millis(2);

/// A clock: the system's, or a virtual one. Cheap to clone.
#[derive(Clone, Default)]
pub struct Clock {
    virt: Option<Arc<Virtual>>,
}

type Probe = Box<dyn Fn() -> bool + Send + Sync>;

struct Virtual {
    now: AtomicU64,
    registry: Mutex<Registry>,
    probes: Mutex<Vec<Probe>>,
    /// One advance at a time.
    advancing: Mutex<()>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    /// Pending sleeps: id -> (deadline, waker).
    sleeps: HashMap<u64, (u64, Waker)>,
    /// Sleeps woken by an advance that have not yet been polled (or dropped).
    woken: std::collections::HashSet<u64>,
    /// Alarms: id -> (deadline, fired and not yet re-armed).
    alarms: HashMap<u64, (Option<u64>, bool)>,
}

impl Registry {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn earliest(&self) -> Option<u64> {
        let sleeps = self.sleeps.values().map(|(at, _)| *at);
        let alarms = self
            .alarms
            .values()
            .filter(|(_, fired)| !fired)
            .filter_map(|(at, _)| *at);
        sleeps.chain(alarms).min()
    }

    fn settled(&self) -> bool {
        self.woken.is_empty() && self.alarms.values().all(|(_, fired)| !fired)
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { virt: None }
    }

    /// A virtual clock that starts at `start_ms` (ms since the epoch) and moves only when
    /// advanced.
    pub fn new_virtual(start_ms: u64) -> Clock {
        Clock {
            virt: Some(Arc::new(Virtual {
                now: AtomicU64::new(start_ms),
                registry: Mutex::default(),
                probes: Mutex::default(),
                advancing: Mutex::default(),
            })),
        }
    }

    pub fn is_virtual(&self) -> bool {
        self.virt.is_some()
    }

    /// ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.virt {
            None => system_now_ms(),
            Some(v) => v.now.load(Ordering::Acquire),
        }
    }

    /// Wait `duration` (a task's timer).
    pub fn sleep(&self, duration: Duration) -> Sleep {
        match &self.virt {
            None => Sleep(SleepOn::System(Box::pin(tokio::time::sleep(duration)))),
            Some(_) => {
                let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
                self.sleep_until_ms(self.now_ms().saturating_add(ms))
            }
        }
    }

    /// Wait until the clock reads `at_ms`.
    pub fn sleep_until_ms(&self, at_ms: u64) -> Sleep {
        match &self.virt {
            None => {
                let left = at_ms.saturating_sub(system_now_ms());
                Sleep(SleepOn::System(Box::pin(tokio::time::sleep(
                    Duration::from_millis(left),
                ))))
            }
            Some(v) => Sleep(SleepOn::Virtual {
                clock: v.clone(),
                at: at_ms,
                id: None,
            }),
        }
    }

    /// A deadline a thread waits for with a `Condvar` (see [`Alarm::wait`]).
    pub fn alarm(&self) -> Alarm {
        let id = self.virt.as_ref().map_or(0, |v| {
            let mut registry = v.lock();
            let id = registry.id();
            registry.alarms.insert(id, (None, false));
            id
        });
        Alarm {
            clock: self.clone(),
            id,
        }
    }

    /// With a virtual clock, `probe` must say idle before an advance goes on to the next
    /// deadline (e.g. the rules engine: no job queued or running). Ignored by the system clock.
    pub fn add_idle_probe(&self, probe: impl Fn() -> bool + Send + Sync + 'static) {
        if let Some(v) = &self.virt {
            v.probes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Box::new(probe));
        }
    }

    /// Move a virtual clock forward by `by`, firing every deadline reached, in order, and letting
    /// the daemon settle after each (see the module's doc). Blocks the calling thread, which must
    /// not be one the woken tasks need (call it from `spawn_blocking` in a runtime). Returns how
    /// many deadlines fired. The system clock does not move: 0.
    pub fn advance(&self, by: Duration) -> usize {
        let Some(v) = &self.virt else { return 0 };
        let _one = v.advancing.lock().unwrap_or_else(|p| p.into_inner());
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let target = v.now.load(Ordering::Acquire).saturating_add(by);
        let mut fired = 0;
        v.settle();
        loop {
            let mut registry = v.lock();
            let Some(at) = registry.earliest().filter(|at| *at <= target) else {
                break;
            };
            if at > v.now.load(Ordering::Acquire) {
                v.now.store(at, Ordering::Release);
            }
            let now = v.now.load(Ordering::Acquire);
            let due: Vec<u64> = registry
                .sleeps
                .iter()
                .filter(|(_, (at, _))| *at <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                if let Some((_, waker)) = registry.sleeps.remove(&id) {
                    registry.woken.insert(id);
                    waker.wake();
                    fired += 1;
                }
            }
            for (at, was_fired) in registry.alarms.values_mut() {
                if !*was_fired && at.is_some_and(|at| at <= now) {
                    *was_fired = true;
                    fired += 1;
                }
            }
            drop(registry);
            v.settle();
        }
        v.now.fetch_max(target, Ordering::AcqRel);
        v.settle();
        fired
    }
}

impl Virtual {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idle(&self) -> bool {
        self.lock().settled()
            && self
                .probes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .all(|probe| probe())
    }

    /// Wait (real time, bounded) until what the last deadlines woke has run; twice idle a few
    /// ms apart, so that work handed on from one part to the next is seen.
    fn settle(&self) {
        let started = Instant::now();
        let mut idle_in_a_row = 0;
        while idle_in_a_row < 2 && started.elapsed() < SETTLE_LIMIT {
            if self.idle() {
                idle_in_a_row += 1;
            } else {
                idle_in_a_row = 0;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if idle_in_a_row < 2 {
            tracing::warn!("clock: the daemon did not settle after a deadline; advancing anyway");
        }
    }
}

/// A task's timer on a [`Clock`]: a tokio sleep on the system clock, a registered deadline on a
/// virtual one.
pub struct Sleep(SleepOn);

enum SleepOn {
    System(Pin<Box<tokio::time::Sleep>>),
    Virtual {
        clock: Arc<Virtual>,
        at: u64,
        id: Option<u64>,
    },
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.get_mut().0 {
            SleepOn::System(sleep) => sleep.as_mut().poll(cx),
            SleepOn::Virtual { clock, at, id } => {
                let mut registry = clock.lock();
                if clock.now.load(Ordering::Acquire) >= *at {
                    if let Some(id) = id.take() {
                        registry.sleeps.remove(&id);
                        registry.woken.remove(&id);
                    }
                    return Poll::Ready(());
                }
                let key = match id {
                    Some(key) => *key,
                    None => {
                        let key = registry.id();
                        *id = Some(key);
                        key
                    }
                };
                registry.woken.remove(&key);
                registry.sleeps.insert(key, (*at, cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let SleepOn::Virtual {
            clock,
            id: Some(id),
            ..
        } = &mut self.0
        {
            let mut registry = clock.lock();
            registry.sleeps.remove(id);
            registry.woken.remove(id);
        }
    }
}

/// A deadline a thread waits for on a `Condvar`. On a virtual clock the deadline is registered,
/// so that an advance stops at it and waits for the thread to come back to wait.
pub struct Alarm {
    clock: Clock,
    id: u64,
}

impl Alarm {
    /// Bring the registered deadline forward to `at_ms` if it is later (or none): for code that
    /// adds a deadline while the thread waits, so that an advance sees it at once.
    pub fn earlier(&self, at_ms: u64) {
        if let Some(v) = &self.clock.virt
            && let Some((at, _)) = v.lock().alarms.get_mut(&self.id)
            && at.is_none_or(|at| at > at_ms)
        {
            *at = Some(at_ms);
        }
    }

    /// Wait on `cv` until notified, or until the clock reads `at_ms` (`None`: no deadline), or a
    /// while (the caller loops and looks again). On a virtual clock the thread looks at the time
    /// every few ms of real time.
    pub fn wait<'a, T>(
        &self,
        cv: &Condvar,
        guard: MutexGuard<'a, T>,
        at_ms: Option<u64>,
    ) -> MutexGuard<'a, T> {
        match &self.clock.virt {
            None => {
                let left = at_ms.map_or(3_600_000, |at| at.saturating_sub(system_now_ms()));
                cv.wait_timeout(guard, Duration::from_millis(left.max(1)))
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            Some(v) => {
                if let Some(alarm) = v.lock().alarms.get_mut(&self.id) {
                    *alarm = (at_ms, false);
                }
                cv.wait_timeout(guard, ALARM_POLL)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        if let Some(v) = &self.clock.virt {
            v.lock().alarms.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_reads_the_system_time() {
        let clock = Clock::system();
        let (before, read) = (system_now_ms(), clock.now_ms());
        assert!(read >= before && read < before + 60_000);
        assert_eq!(clock.advance(Duration::from_secs(10)), 0);
    }

    #[test]
    fn an_advance_fires_sleeps_in_order() {
        let clock = Clock::new_virtual(1_000_000);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        for (name, secs) in [("c", 90), ("b", 20), ("a", 10)] {
            let (clock, seen) = (clock.clone(), seen.clone());
            runtime.spawn(async move {
                clock.sleep(Duration::from_secs(secs)).await;
                seen.lock().unwrap().push((name, clock.now_ms()));
            });
        }
        // Let the tasks register before the advance.
        let started = Instant::now();
        while clock.virt.as_ref().unwrap().lock().sleeps.len() < 3 {
            assert!(started.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(clock.advance(Duration::from_secs(60)), 2);
        assert_eq!(clock.now_ms(), 1_060_000);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("a", 1_010_000), ("b", 1_020_000)]
        );
    }

    #[test]
    fn an_alarm_stops_an_advance_and_waits_for_its_thread() {
        let clock = Clock::new_virtual(0);
        let pair = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let (clock2, pair2) = (clock.clone(), pair.clone());
        let thread = std::thread::spawn(move || {
            let alarm = clock2.alarm();
            let (lock, cv) = &*pair2;
            let mut next = 1_000;
            let mut seen = lock.lock().unwrap();
            while next <= 3_000 {
                if clock2.now_ms() >= next {
                    seen.push(clock2.now_ms());
                    next += 1_000;
                }
                seen = alarm.wait(cv, seen, Some(next));
            }
        });
        let started = Instant::now();
        while clock.virt.as_ref().unwrap().lock().earliest().is_none() {
            assert!(started.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(1));
        }
        clock.advance(Duration::from_millis(2_500));
        assert_eq!(*pair.0.lock().unwrap(), vec![1_000, 2_000]);
        clock.advance(Duration::from_millis(1_000));
        thread.join().unwrap();
        assert_eq!(*pair.0.lock().unwrap(), vec![1_000, 2_000, 3_000]);
    }
}
