//! Seeing what happened: per-rule counters (matched, ran, failed, stopped, skipped, dropped,
//! last run, mean and p99 time) and the last runs' traces, kept across reloads by rule id.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// How many run times the p99 is computed over.
const TIMES: usize = 1024;

/// How one run (or one event that did not run) ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "outcome", content = "reason")]
pub enum Outcome {
    /// The script ran to its end (or the condition was false: see `condition`).
    Ok,
    /// The condition or the script raised an error.
    Failed(String),
    /// Stopped by a limit: the chain's hops or repeats, the operations or time budget, a restart.
    Stopped(String),
    /// Not run: the mode (single, already running), the rate limit, or a newer debounced event.
    Skipped(String),
}

/// One run of a rule, as `mqtter rules trace RULE` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// When the run started, ms since the epoch.
    pub at: u64,
    /// The trigger that matched.
    pub trigger: Arc<str>,
    /// The event, in short: its kind and subject.
    pub event: String,
    pub chain: Arc<str>,
    pub hop: u32,
    /// The `if` result (absent without an `if`, or when it was never evaluated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<bool>,
    /// Each action, in order (`publish x`, `notify p`, `log: ...`).
    pub actions: Vec<String>,
    pub micros: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Default)]
struct Times {
    ring: VecDeque<u64>,
    sum: u128,
    count: u64,
}

/// The counters and traces of one rule id.
#[derive(Debug, Default)]
pub struct RuleStats {
    pub matched: AtomicU64,
    pub ran: AtomicU64,
    pub failed: AtomicU64,
    pub stopped: AtomicU64,
    pub skipped: AtomicU64,
    /// Matched, but the queue was full: never run.
    pub dropped: AtomicU64,
    pub last_run: AtomicU64,
    times: Mutex<Times>,
    traces: Mutex<VecDeque<Trace>>,
}

/// A rule's counters, as `$SYS/mqtter/rules/{id}` and `mqtter rules list` show them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Counters {
    pub matched: u64,
    pub ran: u64,
    pub failed: u64,
    pub stopped: u64,
    pub skipped: u64,
    pub dropped: u64,
    /// ms since the epoch, 0 if it never ran.
    pub last_run: u64,
    pub mean_us: u64,
    pub p99_us: u64,
}

impl RuleStats {
    /// Record a finished trace, keeping the last `keep`.
    pub fn record(&self, trace: Trace, keep: usize) {
        match &trace.outcome {
            Outcome::Ok => {}
            Outcome::Failed(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Stopped(_) => {
                self.stopped.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Skipped(_) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
        // A false `if` is traced, not counted as a run.
        if !matches!(trace.outcome, Outcome::Skipped(_)) && trace.condition != Some(false) {
            self.ran.fetch_add(1, Ordering::Relaxed);
            self.last_run.store(trace.at, Ordering::Relaxed);
            let mut times = self.times.lock().unwrap_or_else(|p| p.into_inner());
            if times.ring.len() == TIMES {
                times.ring.pop_front();
            }
            times.ring.push_back(trace.micros);
            times.sum += u128::from(trace.micros);
            times.count += 1;
        }
        let mut traces = self.traces.lock().unwrap_or_else(|p| p.into_inner());
        while traces.len() >= keep.max(1) {
            traces.pop_front();
        }
        traces.push_back(trace);
    }

    pub fn traces(&self) -> Vec<Trace> {
        let traces = self.traces.lock().unwrap_or_else(|p| p.into_inner());
        traces.iter().cloned().collect()
    }

    pub fn counters(&self) -> Counters {
        let (mean_us, p99_us) = {
            let times = self.times.lock().unwrap_or_else(|p| p.into_inner());
            let mean = if times.count == 0 {
                0
            } else {
                u64::try_from(times.sum / u128::from(times.count)).unwrap_or(u64::MAX)
            };
            let mut sorted: Vec<u64> = times.ring.iter().copied().collect();
            sorted.sort_unstable();
            let p99 = sorted
                .get((sorted.len() * 99).div_ceil(100).saturating_sub(1))
                .copied()
                .unwrap_or(0);
            (mean, p99)
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            matched: get(&self.matched),
            ran: get(&self.ran),
            failed: get(&self.failed),
            stopped: get(&self.stopped),
            skipped: get(&self.skipped),
            dropped: get(&self.dropped),
            last_run: get(&self.last_run),
            mean_us,
            p99_us,
        }
    }
}
