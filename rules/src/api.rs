//! The Rhai side: one [`Engine`] per worker thread with the per-run limits, and the API a script
//! calls (`publish`, `notify`, `command`, `state`, the graph queries, `after`, `cancel`, `log`,
//! the clock). Every action goes through the engine's `Actions` with the triggering event's
//! chain, so the daemon stamps it one hop further.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use chrono::{Datelike, Timelike};
use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map};
use serde_json::Value;

use crate::events::{ActionPublish, Chain};
use crate::exec::Core;

type Fallible<T> = Result<T, Box<EvalAltResult>>;

/// What the running script's calls need to know: set by the worker around each run.
pub(crate) struct RunCtx {
    pub rule: Arc<str>,
    pub account: Arc<str>,
    pub chain: Chain,
    pub actions: Vec<String>,
    pub deadline: Instant,
    /// For `mode: restart`: the rule's generation when this run started.
    pub restart: Option<(Arc<AtomicU64>, u64)>,
    /// Why `on_progress` stopped the run.
    pub stopped: Option<String>,
}

thread_local! {
    static RUN: RefCell<Option<RunCtx>> = const { RefCell::new(None) };
}

pub(crate) fn begin(ctx: RunCtx) {
    RUN.with(|r| *r.borrow_mut() = Some(ctx));
}

pub(crate) fn end() -> Option<RunCtx> {
    RUN.with(|r| r.borrow_mut().take())
}

fn with<R>(f: impl FnOnce(&mut RunCtx) -> R) -> Fallible<R> {
    RUN.with(|r| match r.borrow_mut().as_mut() {
        Some(ctx) => Ok(f(ctx)),
        None => Err("called outside a rule's run".into()),
    })
}

/// A value as Rhai sees it (JSON objects become maps).
pub(crate) fn to_dynamic(value: &Value) -> Dynamic {
    rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT)
}

fn to_json(value: &Dynamic) -> Value {
    rhai::serde::from_dynamic(value).unwrap_or(Value::Null)
}

/// A payload: a string as it is, anything else as JSON text.
fn payload(value: &Dynamic) -> Bytes {
    if let Some(s) = value.read_lock::<ImmutableString>() {
        return Bytes::copy_from_slice(s.as_bytes());
    }
    Bytes::from(to_json(value).to_string())
}

fn strings(list: Vec<String>) -> Array {
    list.into_iter().map(Dynamic::from).collect()
}

/// A worker's engine, with the limits of `core.config` and the API registered.
pub(crate) fn engine(core: &Arc<Core>) -> Engine {
    let config = &core.config;
    let mut engine = Engine::new();
    engine
        .set_max_operations(config.max_operations)
        .set_max_call_levels(config.max_call_levels)
        .set_max_expr_depths(64, 32)
        .set_max_string_size(config.max_size)
        .set_max_array_size(config.max_size)
        .set_max_map_size(config.max_size);
    engine.on_progress(|ops| {
        // The clock and the restart flag are looked at every 64 operations, not at each.
        if ops % 64 != 0 {
            return None;
        }
        RUN.with(|r| {
            let mut r = r.borrow_mut();
            let ctx = r.as_mut()?;
            let reason = if Instant::now() > ctx.deadline {
                "over its time budget"
            } else if ctx
                .restart
                .as_ref()
                .is_some_and(|(g, mine)| g.load(Ordering::Acquire) != *mine)
            {
                "restarted by a newer trigger"
            } else {
                return None;
            };
            ctx.stopped = Some(reason.into());
            Some(Dynamic::from(reason))
        })
    });
    engine.on_print(log_line);
    engine.on_debug(|text, _, _| log_line(text));
    engine.register_fn("log", |value: Dynamic| log_line(&value.to_string()));
    register_actions(&mut engine, core);
    register_queries(&mut engine, core);
    register_clock(&mut engine, core);
    engine
}

fn log_line(text: &str) {
    let _ = with(|ctx| {
        tracing::info!(rule = %ctx.rule, chain = %ctx.chain.id, hop = ctx.chain.hop, "{text}");
        ctx.actions.push(format!("log: {text}"));
    });
}

fn publish(core: &Core, topic: &str, body: &Dynamic, qos: i64, retain: bool) -> Fallible<()> {
    let qos = u8::try_from(qos)
        .ok()
        .filter(|q| *q <= 2)
        .ok_or("qos is 0, 1 or 2")?;
    let (account, chain) = with(|c| (c.account.clone(), c.chain.clone()))?;
    let result = core.actions.publish(ActionPublish {
        account: account.to_string(),
        topic: topic.to_owned(),
        payload: payload(body),
        qos,
        retain,
        chain,
    });
    let line = match &result {
        Ok(()) => format!("publish {topic}"),
        Err(err) => format!("publish {topic}: {err}"),
    };
    with(|c| c.actions.push(line))?;
    result.map_err(|err| format!("publish {topic}: {err}").into())
}

fn register_actions(engine: &mut Engine, core: &Arc<Core>) {
    let c = core.clone();
    engine.register_fn("publish", move |topic: &str, body: Dynamic| {
        publish(&c, topic, &body, 0, false)
    });
    let c = core.clone();
    engine.register_fn(
        "publish",
        move |topic: &str, body: Dynamic, options: Map| {
            let qos = options
                .get("qos")
                .and_then(|q| q.as_int().ok())
                .unwrap_or(0);
            let retain = options
                .get("retain")
                .and_then(|r| r.as_bool().ok())
                .unwrap_or(false);
            publish(&c, topic, &body, qos, retain)
        },
    );
    let c = core.clone();
    engine.register_fn(
        "notify",
        move |person: &str, body: Dynamic| -> Fallible<()> {
            let (rule, chain) = with(|ctx| (ctx.rule.clone(), ctx.chain.clone()))?;
            let mut envelope = match to_json(&body) {
                Value::Object(map) => map,
                Value::String(text) => serde_json::Map::from_iter([("text".into(), text.into())]),
                other => serde_json::Map::from_iter([("text".into(), other.to_string().into())]),
            };
            envelope.entry("type").or_insert("notice".into());
            envelope.entry("rule").or_insert((*rule).into());
            let result = c.actions.notify(person, Value::Object(envelope), &chain);
            let line = match &result {
                Ok(()) => format!("notify {person}"),
                Err(err) => format!("notify {person}: {err}"),
            };
            with(|ctx| ctx.actions.push(line))?;
            result.map_err(|err| format!("notify {person}: {err}").into())
        },
    );
    let c = core.clone();
    engine.register_fn(
        "command",
        move |thing: &str, command: Map| -> Fallible<String> {
            let id = format!("{}-{}", c.config.account, c.next_id());
            let mut body = match to_json(&Dynamic::from_map(command)) {
                Value::Object(map) => map,
                _ => serde_json::Map::new(),
            };
            body.insert("cid".into(), id.clone().into());
            let text = Dynamic::from(Value::Object(body).to_string());
            publish(&c, &format!("thing/{thing}/cmd"), &text, 1, false)?;
            Ok(id)
        },
    );
    let c = core.clone();
    engine.register_fn("after", move |ms: i64, name: &str, data: Dynamic| {
        after(&c, ms, name, to_json(&data))
    });
    let c = core.clone();
    engine.register_fn("after", move |ms: i64, name: &str| {
        after(&c, ms, name, Value::Null)
    });
    let c = core.clone();
    engine.register_fn("cancel", move |name: &str| -> Fallible<bool> {
        let rule = with(|ctx| {
            ctx.actions.push(format!("cancel {name}"));
            ctx.rule.clone()
        })?;
        Ok(c.timers.cancel(&rule, name))
    });
}

fn after(core: &Core, ms: i64, name: &str, data: Value) -> Fallible<()> {
    let ms = u64::try_from(ms).map_err(|_| "after: a delay in ms, not negative")?;
    let (rule, account, chain) = with(|ctx| {
        ctx.actions.push(format!("after {ms}ms {name}"));
        (ctx.rule.clone(), ctx.account.clone(), ctx.chain.next())
    })?;
    let due = crate::exec::now_ms().saturating_add(ms);
    core.timers
        .set(&rule, name, due, account.to_string(), chain, data)
        .map_err(|err| format!("after: {err}").into())
}

fn register_queries(engine: &mut Engine, core: &Arc<Core>) {
    let c = core.clone();
    engine.register_fn("state", move |thing: &str| {
        c.world
            .state(thing)
            .map_or(Dynamic::UNIT, |s| to_dynamic(&s))
    });
    let c = core.clone();
    engine.register_fn("owner_of", move |thing: &str| {
        c.world.owner_of(thing).map_or(Dynamic::UNIT, Dynamic::from)
    });
    let c = core.clone();
    engine.register_fn("bound_to", move |person: &str| {
        strings(c.world.bound_to(person))
    });
    let c = core.clone();
    engine.register_fn("linked", move |thing: &str| strings(c.world.linked(thing)));
    let c = core.clone();
    engine.register_fn("friends", move |person: &str| {
        strings(c.world.friends(person))
    });
    let c = core.clone();
    engine.register_fn("members", move |group: &str| {
        strings(c.world.members(group))
    });
    let c = core.clone();
    engine.register_fn("presence", move |account: &str| c.world.presence(account));
}

fn register_clock(engine: &mut Engine, core: &Arc<Core>) {
    let tz = core.config.time_zone;
    let local = move || crate::exec::now_utc().with_timezone(&tz);
    engine.register_fn("now", || {
        i64::try_from(crate::exec::now_ms()).unwrap_or(i64::MAX)
    });
    engine.register_fn("hour", move || i64::from(local().hour()));
    engine.register_fn("minute", move || i64::from(local().minute()));
    // 0 is Sunday, as cron has it.
    engine.register_fn("weekday", move || {
        i64::from(local().weekday().num_days_from_sunday())
    });
}
