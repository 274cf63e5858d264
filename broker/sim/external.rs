//! External mode (`mqtter sim --broker mqtt://host:port`): the same scenarios against a daemon
//! that runs elsewhere, over the network, in real time. The rules' traces come from its
//! retained `$SYS/mqtter/rules/RULE/traces`, a thing's state from the daemon as the thing
//! actor asks for it (`thing.state`); accounts are not made (an actor's password comes from
//! the scenario or the rules folder's definitions), files are not edited, and the clock is the
//! daemon's: an `advance` (a `within`, a `for`) waits that long in real time, up to
//! `--max-advance`, and a longer one fails its step at once. A scenario that needs what only
//! the simulator's own daemon gives (`start`, `config`, `edit`) is skipped
//! ([`super::run::in_process_only`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mqtter_rules::stats::{Outcome, Trace};
use serde_json::Value;

use super::mqtt::{Conn, Login};

/// A daemon reached over the network.
pub struct External {
    pub host: String,
    pub port: u16,
    pub max_advance: Duration,
    /// The retained traces and counters of `$SYS/mqtter/rules/+/...`, by rule.
    traces: Arc<Mutex<BTreeMap<String, Vec<Trace>>>>,
    conn: Conn,
}

/// `mqtt://host:port` (or `host:port`; the port defaults to 1883).
pub fn parse_url(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url.strip_prefix("mqtt://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.is_empty() {
        bail!("--broker {url:?}: expected mqtt://host:port");
    }
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .with_context(|| format!("--broker {url:?}: the port is not a number"))?;
            Ok((host.to_owned(), port))
        }
        None => Ok((rest.to_owned(), 1883)),
    }
}

impl External {
    /// Connect to the daemon and follow its rules' traces (`credentials` need read access to
    /// `$SYS/mqtter/rules/#` when it has an ACL).
    pub async fn connect(
        host: &str,
        port: u16,
        credentials: Option<(String, String)>,
        max_advance: Duration,
    ) -> anyhow::Result<External> {
        let whom = match &credentials {
            Some((user, _)) => format!("as {user}"),
            None => "anonymously (to log in: -u USER -P PASSWORD)".to_owned(),
        };
        let traces: Arc<Mutex<BTreeMap<String, Vec<Trace>>>> = Arc::default();
        let seen = traces.clone();
        let login = Login {
            host: host.to_owned(),
            port,
            client_id: format!("sim-traces-{}", std::process::id()),
            credentials,
            no_sync: true,
        };
        let conn = Conn::connect(&login, move |incoming| {
            let Some(rest) = incoming.topic.strip_prefix("$SYS/mqtter/rules/") else {
                return;
            };
            let mut store = seen.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(rule) = rest.strip_suffix("/traces") {
                if incoming.payload.is_empty() {
                    store.remove(rule);
                } else if let Ok(list) = serde_json::from_slice::<Vec<Value>>(&incoming.payload) {
                    store.insert(rule.to_owned(), list.iter().filter_map(trace).collect());
                }
            } else if let Some(rule) = rest.strip_suffix("/counters")
                && !incoming.payload.is_empty()
            {
                store.entry(rule.to_owned()).or_default();
            }
        })
        .await
        .with_context(|| format!("cannot reach the daemon at {host}:{port} {whom}"))?;
        conn.subscribe("$SYS/mqtter/rules/+/traces").await?;
        conn.subscribe("$SYS/mqtter/rules/+/counters").await?;
        Ok(External {
            host: host.to_owned(),
            port,
            max_advance,
            traces,
            conn,
        })
    }

    pub fn traces(&self) -> Vec<(String, Trace)> {
        let store = self.traces.lock().unwrap_or_else(|p| p.into_inner());
        store
            .iter()
            .flat_map(|(rule, list)| list.iter().map(|t| (rule.clone(), t.clone())))
            .collect()
    }

    pub fn rule_ids(&self) -> Vec<String> {
        let store = self.traces.lock().unwrap_or_else(|p| p.into_inner());
        store.keys().cloned().collect()
    }

    /// Whether moving the clock by `by` may be waited out: at most `--max-advance`.
    pub fn check_advance(&self, by: Duration) -> anyhow::Result<()> {
        if by > self.max_advance {
            bail!(
                "{}: in external mode time is real and moving the clock means waiting; at \
                 most --max-advance {} (run the scenario in-process for virtual time)",
                show(by),
                show(self.max_advance)
            );
        }
        Ok(())
    }

    /// Real time: wait `by` if it is within `--max-advance`, else refuse.
    pub async fn advance(&self, by: Duration) -> anyhow::Result<()> {
        self.check_advance(by)?;
        tokio::time::sleep(by).await;
        Ok(())
    }

    /// Let what is under way arrive: a short real-time pause.
    pub async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.conn.close().await;
        Ok(())
    }
}

fn show(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        _ if ms >= 3_600_000 && ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms >= 60_000 && ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// A trace as `$SYS/mqtter/rules/RULE/traces` publishes it.
pub(super) fn trace(value: &Value) -> Option<Trace> {
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let reason = text("reason");
    let outcome = match value.get("outcome").and_then(Value::as_str)? {
        "ok" => Outcome::Ok,
        "failed" => Outcome::Failed(reason),
        "stopped" => Outcome::Stopped(reason),
        _ => Outcome::Skipped(reason),
    };
    Some(Trace {
        at: value.get("at").and_then(Value::as_u64).unwrap_or(0),
        trigger: text("trigger").into(),
        event: text("event"),
        chain: text("chain").into(),
        hop: value
            .get("hop")
            .and_then(Value::as_u64)
            .and_then(|h| u32::try_from(h).ok())
            .unwrap_or(0),
        condition: value.get("condition").and_then(Value::as_bool),
        actions: value
            .get("actions")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        micros: value.get("micros").and_then(Value::as_u64).unwrap_or(0),
        outcome,
    })
}

/// Wait (real time) until `done`, or `patience` has passed.
pub async fn wait_for(patience: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + patience;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(parse_url("localhost").unwrap(), ("localhost".into(), 1883));
        assert!(parse_url("mqtt://h:x").is_err());
        assert!(parse_url("http://h/x").is_err());
    }

    #[test]
    fn a_published_trace_reads_back() {
        let json = serde_json::json!({"at": 5, "trigger": "im family", "event": "im group/family",
            "chain": "c#1", "hop": 2, "condition": true, "actions": ["publish x"], "micros": 9,
            "outcome": "failed", "reason": "boom"});
        let t = trace(&json).unwrap();
        assert_eq!((t.hop, &*t.chain, t.condition), (2, "c#1", Some(true)));
        assert_eq!(t.outcome, Outcome::Failed("boom".into()));
        assert_eq!(t.actions, vec!["publish x".to_owned()]);
    }
}
