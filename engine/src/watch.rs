//! `Watch`: store calls that take too long are logged with what they were doing.
//!
//! A caller wraps a backend call in [`Watch::doing`]; a watchdog thread looks at the calls under
//! way and logs, once per call and again every minute, each one running longer than the
//! threshold, so a call that never returns is seen too. A call that ends after the threshold is
//! logged with its time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

struct Call {
    what: String,
    thread: String,
    since: Instant,
    /// When it was last logged as under way.
    reported: Option<Instant>,
}

struct Calls {
    slow: Duration,
    next: AtomicU64,
    under_way: Mutex<HashMap<u64, Call>>,
}

/// A handle on the watchdog; cloning shares it. The thread ends with the last handle.
#[derive(Clone)]
pub struct Watch {
    calls: Arc<Calls>,
}

/// A watched call under way; dropping it ends the call.
pub struct Doing<'a> {
    watch: &'a Watch,
    id: u64,
}

/// How often a call still under way is logged again.
const REPEAT: Duration = Duration::from_secs(60);

impl Watch {
    /// Start the watchdog: calls running longer than `slow` are logged.
    pub fn start(slow: Duration) -> std::io::Result<Self> {
        let calls = Arc::new(Calls {
            slow,
            next: AtomicU64::new(0),
            under_way: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&calls);
        let every = (slow / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
        std::thread::Builder::new()
            .name("mqtter-store-watch".into())
            .spawn(move || watch_loop(&weak, every))?;
        Ok(Self { calls })
    }

    /// Watch one call described by `what`, until the returned guard is dropped.
    pub fn doing(&self, what: impl FnOnce() -> String) -> Doing<'_> {
        let id = self.calls.next.fetch_add(1, Ordering::Relaxed);
        let call = Call {
            what: what(),
            thread: std::thread::current().name().unwrap_or("?").to_owned(),
            since: Instant::now(),
            reported: None,
        };
        self.calls
            .under_way
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, call);
        Doing { watch: self, id }
    }
}

impl Drop for Doing<'_> {
    fn drop(&mut self) {
        let call = self
            .watch
            .calls
            .under_way
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if let Some(call) = call {
            let took = call.since.elapsed();
            if took > self.watch.calls.slow {
                tracing::warn!(
                    what = %call.what,
                    thread = %call.thread,
                    took_ms = took.as_millis() as u64,
                    "a store call was slow"
                );
            }
        }
    }
}

fn watch_loop(calls: &Weak<Calls>, every: Duration) {
    loop {
        std::thread::sleep(every);
        let Some(calls) = calls.upgrade() else {
            return;
        };
        let mut under_way = calls.under_way.lock().unwrap_or_else(|p| p.into_inner());
        for call in under_way.values_mut() {
            let running = call.since.elapsed();
            let due = match call.reported {
                None => running > calls.slow,
                Some(at) => at.elapsed() > REPEAT,
            };
            if due {
                call.reported = Some(Instant::now());
                tracing::warn!(
                    what = %call.what,
                    thread = %call.thread,
                    running_ms = running.as_millis() as u64,
                    "a store call is taking long"
                );
            }
        }
    }
}
