//! Execution: the sink half that runs on the sources' threads ([`Core::route`]: look the event
//! up in the trigger index, hand the matches to the queue, never block) and the worker half
//! (one Rhai engine per worker thread, per-run limits, modes, rate limits, chain limits, traces).
//!
//! **When the queue is full** the event's matches are dropped, never waited for: each matching
//! rule's `dropped` counter and the engine's `queue_full` counter count them, and the log says so
//! (the first time, then every 1,000th). The network threads are never held up by rules.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rhai::{Dynamic, Engine, EvalAltResult, Scope};
use serde_json::{Value, json};

use crate::api::{self, RunCtx};
use crate::events::{Actions, Actor, ActorKind, Chain, Event, EventData};
use crate::index::{Hit, Index, matches};
use crate::model::{Mode, Rule, Trigger};
use crate::reads::Reads;
use crate::repeats::Repeats;
use crate::script_event::{describe, event_map};
use crate::stats::{Outcome, RuleStats, Trace};
use crate::timers::{Item, Timers};
use crate::world::World;

/// ms since the epoch, on the process's clock (virtual under `mqtter sim`).
pub use mqtter_engine::clock::now_ms;

/// The process's clock as a UTC time, for `cron` and the time functions.
pub(crate) fn now_utc() -> chrono::DateTime<chrono::Utc> {
    let ms = i64::try_from(now_ms()).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The engine's settings (`[rules]` in the daemon's configuration).
#[derive(Debug, Clone)]
pub struct Config {
    /// The account a rule acts as when it names none.
    pub account: String,
    /// The time zone of `cron` schedules and of `hour()`, `minute()`, `weekday()`.
    pub time_zone: chrono_tz::Tz,
    /// A rule does not run on an event this many hops into its chain.
    pub max_hops: u32,
    /// A rule does not run more than this many times for one chain.
    pub max_repeats: u32,
    pub workers: usize,
    /// Events waiting for a worker, at most.
    pub queue: usize,
    /// Rhai operations per run.
    pub max_operations: u64,
    pub max_call_levels: usize,
    /// The largest string (bytes), array or map (items) a script may build.
    pub max_size: usize,
    /// The wall-clock time a run may take.
    pub budget: Duration,
    /// Traces kept per rule.
    pub traces: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            account: "rules".into(),
            time_zone: chrono_tz::UTC,
            max_hops: 16,
            max_repeats: 8,
            workers: 2,
            queue: 10_000,
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_size: 65_536,
            budget: Duration::from_millis(250),
            traces: 20,
        }
    }
}

/// A rule's state that outlives reloads (by id): its counters and what its mode needs.
#[derive(Debug, Default)]
pub struct RuleState {
    pub stats: RuleStats,
    running: AtomicU32,
    generation: Arc<AtomicU64>,
    queue: Mutex<()>,
    /// (window start ms, runs in it).
    window: Mutex<(u64, u32)>,
    debounce: AtomicU64,
}

/// A loaded rule with its state.
#[derive(Debug)]
pub struct Loaded {
    pub rule: Rule,
    pub state: Arc<RuleState>,
}

/// The rule set in force, swapped whole on reload.
#[derive(Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Loaded>,
    pub index: Index,
    pub generation: u64,
}

/// Work for a worker: an event, the rule set in force when it happened, and its matches.
pub(crate) struct Job {
    pub set: Arc<RuleSet>,
    pub event: Arc<Event>,
    pub hits: Vec<Hit>,
    /// The thing's state before this report (state events).
    pub previous: Option<Value>,
    /// A timer's data (`after`).
    pub data: Value,
    /// A debounced run that is due (not to be debounced again).
    pub debounced: bool,
    /// The order in which the event came in (set by `Core::enqueue`): workers may take jobs
    /// out of order, and debouncing keeps the last to arrive.
    pub arrival: u64,
    /// The `after` timer (name, setting) this job runs: removed from the store once it has run.
    pub timer: Option<(String, u64)>,
}

pub(crate) enum Work {
    Run(Job),
    Stop,
}

/// The engine's own counters.
#[derive(Debug, Default)]
pub struct EngineCounters {
    pub events: AtomicU64,
    pub queue_full: AtomicU64,
    pub chains_stopped: AtomicU64,
}

/// What the sink, the workers, the timers and the API share.
pub struct Core {
    pub config: Config,
    pub actions: Arc<dyn Actions>,
    pub world: Arc<dyn World>,
    pub set: ArcSwap<RuleSet>,
    pub counters: EngineCounters,
    pub(crate) timers: Timers,
    tx: SyncSender<Work>,
    states: Mutex<HashMap<String, Arc<RuleState>>>,
    /// The last state each thing reported, for `changed` and `from`.
    things: Mutex<HashMap<String, Value>>,
    /// Runs per (chain, rule), for `max_repeats`.
    repeats: Mutex<Repeats>,
    ids: AtomicU64,
    /// Jobs enqueued so far: each job's `arrival`.
    arrivals: AtomicU64,
    /// The last chain stopped, for the status.
    pub last_stopped: Mutex<Option<Value>>,
    /// Jobs queued or running: the engine is idle at 0 (a virtual clock waits for it).
    busy: AtomicUsize,
}

impl Core {
    pub(crate) fn new(
        config: Config,
        actions: Arc<dyn Actions>,
        world: Arc<dyn World>,
        store: Option<Arc<dyn mqtter_engine::Store>>,
    ) -> (Arc<Core>, Receiver<Work>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(config.queue.max(1));
        let core = Core {
            config,
            actions,
            world,
            set: ArcSwap::from_pointee(RuleSet::default()),
            counters: EngineCounters::default(),
            timers: Timers::new(store),
            tx,
            states: Mutex::default(),
            things: Mutex::default(),
            repeats: Mutex::default(),
            ids: AtomicU64::new(now_ms()),
            arrivals: AtomicU64::new(0),
            last_stopped: Mutex::default(),
            busy: AtomicUsize::new(0),
        };
        (Arc::new(core), rx)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// The lasting state of rule `id` (made on first use).
    pub fn state_of(&self, id: &str) -> Arc<RuleState> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.entry(id.to_owned()).or_default().clone()
    }

    /// Put `rules` in force, and their schedules on the timers.
    pub fn install(&self, rules: Vec<Rule>) {
        self.install_with(rules, |_| ());
    }

    /// As [`Core::install`], calling `before` with the new set's index just before it is put in
    /// force.
    pub fn install_with<T>(&self, rules: Vec<Rule>, before: impl FnOnce(&Index) -> T) -> T {
        let generation = self.set.load().generation + 1;
        let rules: Vec<Loaded> = rules
            .into_iter()
            .map(|rule| Loaded {
                state: self.state_of(&rule.id.0),
                rule,
            })
            .collect();
        let index = Index::new(&rules.iter().map(|l| l.rule.clone()).collect::<Vec<_>>());
        let set = Arc::new(RuleSet {
            rules,
            index,
            generation,
        });
        for hit in &set.index.schedules {
            if let Some(due) = self.next_schedule(&set, *hit) {
                self.timers.push(
                    due,
                    Item::Schedule {
                        generation,
                        hit: *hit,
                    },
                );
            }
        }
        let out = before(&set.index);
        self.set.store(set);
        out
    }

    fn next_schedule(&self, set: &RuleSet, hit: Hit) -> Option<u64> {
        let now = now_ms();
        match &set.rules.get(hit.rule)?.rule.triggers.get(hit.trigger)? {
            Trigger::Every { period } => {
                Some(now + u64::try_from(period.as_millis()).unwrap_or(u64::MAX))
            }
            Trigger::Cron { schedule, .. } => {
                let local = now_utc().with_timezone(&self.config.time_zone);
                let next = schedule.find_next_occurrence(&local, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
            _ => None,
        }
    }

    /// The sink: find the rules `event` fires and queue them. Quick, never blocks.
    pub fn route(&self, event: &Arc<Event>) {
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        let previous = match &event.data {
            EventData::ThingState { thing, state } => self.remember_state(thing, state),
            _ => None,
        };
        let set = self.set.load_full();
        let mut hits = Vec::new();
        set.index.candidates(event, &mut hits);
        hits.retain(|hit| {
            let trigger = &set.rules[hit.rule].rule.triggers[hit.trigger];
            matches(trigger, event, previous.as_ref())
        });
        if hits.is_empty() {
            return;
        }
        self.enqueue(Job {
            set,
            event: Arc::clone(event),
            hits,
            previous,
            data: Value::Null,
            debounced: false,
            arrival: 0,
            timer: None,
        });
    }

    /// A state report merges into the thing's last state (a report may carry some fields
    /// only); the state before it is returned.
    fn remember_state(&self, thing: &str, state: &Value) -> Option<Value> {
        let mut things = self.things.lock().unwrap_or_else(|p| p.into_inner());
        let entry = things.entry(thing.to_owned()).or_insert(Value::Null);
        let before = entry.clone();
        match (entry.as_object_mut(), state.as_object()) {
            (Some(old), Some(new)) => {
                for (k, v) in new {
                    old.insert(k.clone(), v.clone());
                }
            }
            _ => *entry = state.clone(),
        }
        (!before.is_null()).then_some(before)
    }

    pub(crate) fn enqueue(&self, mut job: Job) {
        if !job.debounced {
            job.arrival = self.arrivals.fetch_add(1, Ordering::Relaxed) + 1;
        }
        self.busy.fetch_add(1, Ordering::AcqRel);
        match self.tx.try_send(Work::Run(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(work)) => {
                self.busy.fetch_sub(1, Ordering::AcqRel);
                let Work::Run(Job {
                    set, hits, timer, ..
                }) = work
                else {
                    return;
                };
                if let Some((name, id)) = &timer {
                    self.timers.fired(name, *id);
                }
                for hit in hits {
                    set.rules[hit.rule]
                        .state
                        .stats
                        .dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
                let n = self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(1000) {
                    tracing::warn!(
                        dropped = n + 1,
                        "rules: queue full, an event's rules were not run"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.busy.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// No job is queued or running.
    pub fn idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// Timers that are due: `after` events, debounced runs and schedules.
    pub(crate) fn fire(&self, item: Item) {
        match item {
            Item::After {
                name,
                id,
                account,
                chain,
                data,
            } => {
                let event = Event {
                    actor: Actor {
                        account: Some(account.into()),
                        kind: ActorKind::Rule,
                    },
                    at: now_ms(),
                    chain,
                    data: EventData::Tick {
                        timer: name.clone(),
                    },
                };
                let set = self.set.load_full();
                let mut hits = Vec::new();
                set.index.candidates(&event, &mut hits);
                if hits.is_empty() {
                    self.timers.fired(&name, id);
                } else {
                    // Removed from the store by the worker once its rules have run (or here
                    // if the queue is full: see `enqueue`).
                    self.enqueue(Job {
                        set,
                        event: Arc::new(event),
                        hits,
                        previous: None,
                        data,
                        debounced: false,
                        arrival: 0,
                        timer: Some((name, id)),
                    });
                }
            }
            Item::Debounce { job, seq } => {
                let Some(hit) = job.hits.first() else { return };
                let state = &job.set.rules[hit.rule].state;
                if state.debounce.load(Ordering::Acquire) == seq {
                    self.enqueue(Job {
                        debounced: true,
                        ..job
                    });
                }
            }
            Item::Schedule { generation, hit } => {
                let set = self.set.load_full();
                if set.generation != generation {
                    return;
                }
                let rule = &set.rules[hit.rule].rule;
                let event = Event {
                    actor: Actor {
                        account: Some(rule.options.account.clone()),
                        kind: ActorKind::Rule,
                    },
                    at: now_ms(),
                    chain: Chain::start(format!("{}@{}", rule.id, now_ms())),
                    data: EventData::Tick {
                        timer: rule.triggers[hit.trigger].describe(),
                    },
                };
                if let Some(due) = self.next_schedule(&set, hit) {
                    self.timers.push(due, Item::Schedule { generation, hit });
                }
                self.enqueue(Job {
                    set,
                    event: Arc::new(event),
                    hits: vec![hit],
                    previous: None,
                    data: Value::Null,
                    debounced: false,
                    arrival: 0,
                    timer: None,
                });
            }
        }
    }

    pub(crate) fn stop_workers(&self, workers: usize) {
        self.timers.stop();
        for _ in 0..workers {
            let _ = self.tx.send(Work::Stop);
        }
    }

    /// Count a run of `rule` for `chain`; false if it has run `max_repeats` times already.
    fn repeat_ok(&self, chain: &Chain, rule: &str) -> bool {
        let mut repeats = self.repeats.lock().unwrap_or_else(|p| p.into_inner());
        repeats.count(&chain.id, rule, now_ms()) <= self.config.max_repeats
    }

    fn chain_stopped(&self, rule: &str, event: &Event, reason: &str) {
        self.counters.chains_stopped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(rule, chain = %event.chain.id, hop = event.chain.hop, "rules: chain stopped: {reason}");
        let report = json!({
            "rule": rule, "chain": &*event.chain.id, "hop": event.chain.hop,
            "reason": reason, "at": now_ms(),
        });
        *self.last_stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }
}

/// The most jobs a worker takes from the queue at one lock.
const BATCH: usize = 16;

/// A worker (one of `workers`): runs jobs until told to stop. Under load it takes several jobs
/// at one lock, at most its share of what is waiting (so that a slow job does not hold back
/// others that another worker could run); a lone job is taken at once.
pub(crate) fn worker(core: Arc<Core>, rx: Arc<Mutex<Receiver<Work>>>, workers: usize) {
    let engine = api::engine(&core);
    let mut batch: Vec<Work> = Vec::with_capacity(BATCH);
    loop {
        {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(work) => batch.push(work),
                Err(_) => return,
            }
            // Queued and running jobs, shared out; up to a `Stop`, never past one: each `Stop`
            // ends a worker of its own.
            let share = (core.busy.load(Ordering::Acquire) / workers.max(1)).clamp(1, BATCH);
            while batch.len() < share && !matches!(batch.last(), Some(Work::Stop)) {
                match rx.try_recv() {
                    Ok(work) => batch.push(work),
                    Err(_) => break,
                }
            }
        }
        for work in batch.drain(..) {
            match work {
                Work::Run(job) => run_job(&core, &engine, job),
                Work::Stop => return,
            }
        }
    }
}

/// Run a job's rules, each with the event as its scripts read it.
fn run_job(core: &Core, engine: &Engine, job: Job) {
    // Built once for the job's rules, with the fields they read; each run gets its own (the
    // last this one).
    let reads = match &job.hits[..] {
        [one] => Cow::Borrowed(&job.set.rules[one.rule].rule.reads.fields),
        hits => Cow::Owned(hits.iter().fold(Reads::Only(Vec::new()), |all, hit| {
            all.union(&job.set.rules[hit.rule].rule.reads.fields)
        })),
    };
    let map = event_map(&job.event, job.previous.as_ref(), &job.data, &reads);
    let mut event = Some(map);
    for (i, hit) in job.hits.iter().enumerate() {
        let value = if i + 1 == job.hits.len() {
            event.take().unwrap_or_default()
        } else {
            event.clone().unwrap_or_default()
        };
        run(core, engine, &job, *hit, value);
    }
    if let Some((name, id)) = &job.timer {
        core.timers.fired(name, *id);
    }
    core.busy.fetch_sub(1, Ordering::AcqRel);
}

/// Run one rule for one job.
fn run(core: &Core, engine: &Engine, job: &Job, hit: Hit, value: Dynamic) {
    let loaded = &job.set.rules[hit.rule];
    let (rule, state) = (&loaded.rule, &loaded.state);
    let event = &job.event;
    let started_at = now_ms();
    let mut trace = Trace {
        at: started_at,
        trigger: rule.trigger_names[hit.trigger].clone(),
        event: describe(event),
        chain: event.chain.id.clone(),
        hop: event.chain.hop,
        condition: None,
        actions: Vec::new(),
        micros: 0,
        outcome: Outcome::Ok,
    };
    if !job.debounced {
        state.stats.matched.fetch_add(1, Ordering::Relaxed);
    }
    let keep = core.config.traces;
    let skip = |mut trace: Trace, outcome: Outcome| {
        trace.outcome = outcome;
        state.stats.record(trace, keep);
    };
    if let (Some(wait), false) = (rule.options.debounce, job.debounced) {
        // Only the last event to arrive waits: a worker that took an earlier one late leaves it.
        let seq = job.arrival;
        if state.debounce.fetch_max(seq, Ordering::AcqRel) > seq {
            return;
        }
        let due = started_at + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        let job = Job {
            set: job.set.clone(),
            event: job.event.clone(),
            hits: vec![hit],
            previous: job.previous.clone(),
            data: job.data.clone(),
            debounced: false,
            arrival: seq,
            timer: None,
        };
        core.timers.push(due, Item::Debounce { job, seq });
        return;
    }
    if event.chain.hop >= core.config.max_hops {
        let reason = format!(
            "the chain is {} hops long (rules.max_hops)",
            event.chain.hop
        );
        core.chain_stopped(&rule.id.0, event, &reason);
        return skip(trace, Outcome::Stopped(reason));
    }
    if !core.repeat_ok(&event.chain, &rule.id.0) {
        let reason = format!(
            "the rule ran {} times in this chain (rules.max_repeats)",
            core.config.max_repeats
        );
        core.chain_stopped(&rule.id.0, event, &reason);
        return skip(trace, Outcome::Stopped(reason));
    }
    if let Some((count, per)) = rule.options.rate {
        let per = u64::try_from(per.as_millis()).unwrap_or(u64::MAX);
        let mut window = state.window.lock().unwrap_or_else(|p| p.into_inner());
        if started_at.saturating_sub(window.0) >= per {
            *window = (started_at, 0);
        }
        if window.1 >= count {
            drop(window);
            return skip(trace, Outcome::Skipped("rate limit".into()));
        }
        window.1 += 1;
    }
    let _queued;
    let mut restart = None;
    match rule.options.mode {
        Mode::Single => {
            if state
                .running
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return skip(
                    trace,
                    Outcome::Skipped("already running (mode: single)".into()),
                );
            }
        }
        Mode::Queued => {
            _queued = state.queue.lock().unwrap_or_else(|p| p.into_inner());
            state.running.fetch_add(1, Ordering::AcqRel);
        }
        Mode::Parallel => {
            state.running.fetch_add(1, Ordering::AcqRel);
        }
        Mode::Restart => {
            let mine = state.generation.fetch_add(1, Ordering::AcqRel) + 1;
            restart = Some((state.generation.clone(), mine));
            state.running.fetch_add(1, Ordering::AcqRel);
        }
    }
    let clock = Instant::now();
    api::begin(RunCtx {
        rule: rule.id.0.clone(),
        account: rule.options.account.clone(),
        chain: event.chain.clone(),
        actions: Vec::new(),
        deadline: clock + core.config.budget,
        restart,
        stopped: None,
    });
    let mut scope = Scope::new();
    if rule.reads.as_msg {
        scope.push_dynamic("msg", value.clone());
    }
    scope.push_dynamic("event", value);
    let result = evaluate(engine, &mut scope, rule, &mut trace);
    let ctx = api::end();
    state.running.fetch_sub(1, Ordering::AcqRel);
    trace.micros = u64::try_from(clock.elapsed().as_micros()).unwrap_or(u64::MAX);
    if let Some(ctx) = ctx {
        trace.actions = ctx.actions;
        trace.outcome = match (result, ctx.stopped) {
            (Ok(()), _) => Outcome::Ok,
            (Err(_), Some(reason)) => Outcome::Stopped(reason),
            (Err(err), None) => match *err {
                EvalAltResult::ErrorTooManyOperations(_) => {
                    Outcome::Stopped("over its operations budget (rules.max_operations)".into())
                }
                err => Outcome::Failed(err.to_string()),
            },
        };
    }
    match &trace.outcome {
        Outcome::Failed(why) | Outcome::Stopped(why) => {
            tracing::warn!(rule = %rule.id, chain = %event.chain.id, "rules: run ended: {why}");
        }
        _ => {}
    }
    state.stats.record(trace, keep);
}

fn evaluate(
    engine: &Engine,
    scope: &mut Scope,
    rule: &Rule,
    trace: &mut Trace,
) -> Result<(), Box<EvalAltResult>> {
    if let Some(condition) = &rule.condition {
        let pass = engine
            .eval_ast_with_scope::<Dynamic>(scope, condition)?
            .as_bool()
            .map_err(|t| format!("`if` gave a {t}, not a bool"))?;
        trace.condition = Some(pass);
        if !pass {
            return Ok(());
        }
    }
    engine.run_ast_with_scope(scope, &rule.action)
}
