//! `mqtter sim record`: capture live traffic from a running daemon (docs/SIMULATOR.md,
//! "Record and replay"). One MQTT 5 connection as the given account subscribes to the chosen
//! topics (a `thing/` filter with a wildcard stands for every thing the account may see, asked
//! with `thing.list`) and to the rules' traces; what arrives until `--duration` passes or
//! SIGINT, and the commands the things got meanwhile (their `thing.audit`, which their owner
//! may read), is turned into a scenario skeleton by [`super::skeleton`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use super::external::parse_url;
use super::mqtt::{Conn, Login, PATIENCE};
use super::skeleton::{self, Recording, Seen};

/// `mqtter sim record` arguments.
#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    /// The running daemon: mqtt://host:port.
    #[arg(long)]
    pub broker: String,
    /// The account to record as: what it may see is what is recorded (a person who owns the
    /// things sees their state and events, its inbox, its groups).
    #[arg(long, short = 'u')]
    pub username: Option<String>,
    #[arg(long, short = 'P', env = "MQTTER_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Topic filters, comma separated: plain ones as they are (`sensors/#`); `thing/#`,
    /// `thing/+/state`, `thing/+/event` stand for every thing the account may see.
    #[arg(long, value_delimiter = ',', required = true)]
    pub topics: Vec<String>,
    /// The scenario file to write (`*.sim.yaml`).
    #[arg(long)]
    pub out: PathBuf,
    /// How long to record; without it, until SIGINT (Ctrl-C).
    #[arg(long, value_parser = super::parse_timeout)]
    pub duration: Option<Duration>,
    /// The rules folder the scenario names (`rules:`); replay can name another with
    /// `mqtter sim FILE --rules DIR`.
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

/// Record, then write the skeleton.
pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("mqtter-sim-record")
        .build()
        .context("cannot start the runtime")?;
    let recording = runtime.block_on(record(&args))?;
    let rules = args.rules.as_ref().map(|dir| rules_path(&args.out, dir));
    let text = skeleton::scenario(&recording, rules.as_deref());
    std::fs::write(&args.out, text)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    super::report::out(&format!(
        "recorded {} message(s) and {} rule run(s) into {}",
        recording.seen.len(),
        recording.traces.len(),
        args.out.display()
    ));
    Ok(())
}

/// The rules folder as the scenario names it: relative to the scenario file's folder when
/// both are relative to here, else absolute.
fn rules_path(out: &std::path::Path, dir: &std::path::Path) -> String {
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let (dir, folder) = (
        absolute(dir),
        absolute(out.parent().unwrap_or(std::path::Path::new("."))),
    );
    match dir.strip_prefix(&folder) {
        Ok(inside) if inside.as_os_str().is_empty() => ".".into(),
        Ok(inside) => inside.display().to_string(),
        Err(_) => dir.display().to_string(),
    }
}

async fn record(args: &RecordArgs) -> anyhow::Result<Recording> {
    let (host, port) = parse_url(&args.broker)?;
    let credentials = args
        .username
        .clone()
        .map(|user| (user, args.password.clone().unwrap_or_default()));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let answers: Answers = Arc::default();
    let (into, waiting) = (seen.clone(), answers.clone());
    let login = Login {
        host: host.clone(),
        port,
        client_id: match &args.username {
            Some(user) => format!("{user}:sim-record"),
            None => format!("sim-record-{}", std::process::id()),
        },
        credentials,
        no_sync: true,
    };
    let conn = Conn::connect(&login, move |incoming| {
        let payload = serde_json::from_slice::<Value>(&incoming.payload).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&incoming.payload).into_owned())
        });
        if payload.get("type").and_then(Value::as_str) == Some("res")
            && let Some(id) = payload.get("id").and_then(Value::as_str)
            && let Some(tx) = waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(id)
        {
            let _ = tx.send(payload);
            return;
        }
        into.lock().unwrap_or_else(|p| p.into_inner()).push(Seen {
            at: mqtter_engine::clock::system_now_ms(),
            topic: incoming.topic,
            payload,
            user_properties: incoming.user_properties,
            retained: incoming.retain,
        });
    })
    .await
    .with_context(|| format!("cannot reach the daemon at {host}:{port}"))?;
    let mut filters = Vec::new();
    let mut things: Option<Vec<String>> = None;
    for filter in &args.topics {
        let filter = filter.trim();
        if filter.is_empty() {
            continue;
        }
        match filter.strip_prefix("thing/") {
            Some(rest) if rest.contains(['+', '#']) => {
                if args.username.is_none() {
                    bail!(
                        "--topics {filter}: the things an account may see are asked as that \
                         account: give a person's with -u USER -P PASSWORD"
                    );
                }
                if things.is_none() {
                    things = Some(list_things(&conn, &answers).await?);
                }
                for thing in things.as_deref().unwrap_or_default() {
                    filters.extend(thing_filters(rest, thing));
                }
            }
            _ => filters.push(filter.to_owned()),
        }
    }
    filters.sort();
    filters.dedup();
    for filter in &filters {
        conn.subscribe(filter)
            .await
            .with_context(|| format!("--topics {filter}"))?;
    }
    let traces_readable = match conn.subscribe("$SYS/mqtter/rules/+/traces").await {
        Ok(()) => true,
        Err(err) => {
            super::report::out(&format!(
                "warning: the rules' traces cannot be read ({err:#}): the skeleton will have \
                 no expect_chain or expect_fired steps"
            ));
            false
        }
    };
    // The retained messages of the subscriptions (what was there before) arrive first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = mqtter_engine::clock::system_now_ms();
    super::report::out(&format!(
        "recording {} on {}:{port}{}",
        filters.join(", "),
        host,
        match args.duration {
            Some(d) => format!(" for {}ms", d.as_millis()),
            None => " until Ctrl-C".into(),
        }
    ));
    match args.duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => {
            tokio::signal::ctrl_c()
                .await
                .context("cannot wait for Ctrl-C")?;
        }
    }
    let ended = mqtter_engine::clock::system_now_ms();
    // The daemon publishes the traces once a second: the last runs come after the end.
    if traces_readable {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    // The commands the things got meanwhile, from their audit (their owner may read it).
    let mut commanded = Vec::new();
    for filter in &filters {
        if let Some(thing) = filter
            .strip_prefix("thing/")
            .and_then(|rest| rest.strip_suffix("/state"))
            && !commanded.contains(&thing.to_owned())
        {
            commanded.push(thing.to_owned());
        }
    }
    let mut commands = Vec::new();
    for thing in &commanded {
        let args = json!({"thing": thing, "limit": 100});
        let Ok(answer) = request(&conn, &answers, "thing.audit", args).await else {
            continue;
        };
        for entry in answer
            .get("entries")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let at = entry.get("ts").and_then(Value::as_u64).unwrap_or(0);
            if at < started || at > ended || entry.get("id").is_none() {
                continue;
            }
            let mut payload = entry.clone();
            payload["type"] = json!("cmd");
            commands.push(Seen {
                at,
                topic: format!("thing/{thing}/cmd"),
                payload,
                user_properties: Vec::new(),
                retained: false,
            });
        }
    }
    conn.close().await;
    let mut seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    seen.extend(commands);
    seen.sort_by_key(|s| s.at);
    Ok(skeleton::collect(
        seen,
        started,
        ended,
        args.username.clone(),
    ))
}

/// Requests awaiting their answer (on the account's inbox), by id.
type Answers = Arc<Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<Value>>>>;

/// A `$things/req` request, and its answer's fields (an error when refused).
async fn request(
    conn: &Conn,
    answers: &Answers,
    op: &str,
    mut args: Value,
) -> anyhow::Result<Value> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!(
        "sim-record-{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    answers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), tx);
    args["id"] = json!(id);
    args["op"] = json!(op);
    conn.publish(
        "$things/req",
        args.to_string().into_bytes(),
        false,
        Vec::new(),
    )
    .await?;
    let answer = tokio::time::timeout(PATIENCE, rx)
        .await
        .map_err(|_| anyhow!("no answer to {op}"))?
        .map_err(|_| anyhow!("no answer to {op}"))?;
    if answer.get("ok").and_then(Value::as_bool) != Some(true) {
        bail!("{op} refused: {answer}");
    }
    Ok(answer)
}

/// The things the account may see (`thing.list`).
async fn list_things(conn: &Conn, answers: &Answers) -> anyhow::Result<Vec<String>> {
    let answer = request(conn, answers, "thing.list", json!({}))
        .await
        .context("thing.list (a `thing/` filter with a wildcard needs a person's account: -u)")?;
    Ok(answer
        .get("things")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|t| t.get("id").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// `thing/REST` with a wildcard, for one thing: its state and event topics that fit.
fn thing_filters(rest: &str, thing: &str) -> Vec<String> {
    let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
    if head != "+" && head != "#" && head != thing {
        return Vec::new();
    }
    ["state", "event"]
        .iter()
        .filter(|part| head == "#" || tail == "#" || tail == "+" || tail == **part)
        .map(|part| format!("thing/{thing}/{part}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thing_wildcards_become_each_things_topics() {
        assert_eq!(
            thing_filters("#", "door"),
            vec!["thing/door/state", "thing/door/event"]
        );
        assert_eq!(thing_filters("+/state", "door"), vec!["thing/door/state"]);
        assert_eq!(
            thing_filters("door/#", "door"),
            vec!["thing/door/state", "thing/door/event"]
        );
        assert!(thing_filters("lamp/+", "door").is_empty());
    }
}
