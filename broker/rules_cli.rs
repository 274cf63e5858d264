//! `mqtter rules list` and `mqtter rules trace RULE`: what a running daemon's rules engine says
//! on its retained `$SYS/mqtter/rules/...` topics (`crate::automation`), read over MQTT 3.1.1
//! like any client would. With no ACL every client may read `$SYS`; with one, the account given
//! (`--username`, `--password`) needs read access to `$SYS/mqtter/rules/#`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mqtter_bench::packets::{self, Frame};
use serde_json::Value;

use crate::automation::{STATUS_TOPIC, counters_topic, traces_topic};
use crate::message::now_ms;

#[derive(clap::Args, Debug)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub command: RulesCommand,
    /// The daemon's MQTT address.
    #[arg(long, global = true, default_value = "127.0.0.1:1883")]
    pub host: String,
    /// An account allowed to read `$SYS/mqtter/rules/#` (not needed without an ACL when the
    /// daemon allows anonymous clients).
    #[arg(long, short = 'u', global = true)]
    pub username: Option<String>,
    #[arg(long, short = 'P', global = true, env = "MQTTER_PASSWORD")]
    pub password: Option<String>,
    /// Print the JSON the daemon publishes instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for the daemon's answer, in milliseconds.
    #[arg(long, global = true, default_value_t = 5000)]
    pub wait_ms: u64,
}

#[derive(clap::Subcommand, Debug)]
pub enum RulesCommand {
    /// The folder's status (files, errors with file:line:column) and every rule's counters.
    List,
    /// The last runs of one rule: trigger, event, chain and hop, `if`, actions, time, outcome.
    Trace {
        /// The rule's id.
        rule: String,
    },
}

pub fn run(args: RulesArgs) -> anyhow::Result<()> {
    let login = match (&args.username, &args.password) {
        (Some(user), Some(password)) => Some((user.as_str(), password.as_str())),
        (Some(_), None) => bail!("--username needs --password (or MQTTER_PASSWORD)"),
        _ => None,
    };
    let mut reader = Reader::connect(&args.host, login)?;
    let deadline = Instant::now() + Duration::from_millis(args.wait_ms);
    match args.command {
        RulesCommand::List => {
            let counters_filter = counters_topic("+");
            reader.subscribe(&[STATUS_TOPIC, &counters_filter])?;
            let mut status = None;
            let mut rules = BTreeMap::new();
            let complete = |status: &Option<Value>, rules: &BTreeMap<String, Value>| {
                status
                    .as_ref()
                    .is_some_and(|s| s["rules"].as_u64() <= Some(rules.len() as u64))
            };
            while !complete(&status, &rules) {
                let Some((topic, payload)) = reader.next(deadline)? else {
                    if status.is_none() {
                        bail!(
                            "no {STATUS_TOPIC} from {} (is its rules_dir set?)",
                            args.host
                        );
                    }
                    break;
                };
                let Ok(value) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                if topic == STATUS_TOPIC {
                    status = Some(value);
                } else if let Some(id) = value["id"].as_str() {
                    rules.insert(id.to_owned(), value);
                }
            }
            let status = status.unwrap_or(Value::Null);
            if args.json {
                let all = serde_json::json!({ "status": status, "rules": rules.values().collect::<Vec<_>>() });
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                print!("{}", render_list(&status, &rules));
            }
        }
        RulesCommand::Trace { rule } => {
            let topic = traces_topic(&rule);
            reader.subscribe(&[&topic])?;
            let Some((_, payload)) = reader.next(deadline)? else {
                bail!("no rule {rule} is loaded (nothing on {topic})");
            };
            let traces: Value =
                serde_json::from_slice(&payload).with_context(|| format!("{topic} is not JSON"))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&traces)?);
            } else {
                print!("{}", render_traces(&rule, &traces));
            }
        }
    }
    reader.close();
    Ok(())
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let secs = now_ms().saturating_sub(ms) / 1000;
    format!("{secs}s ago")
}

fn render_list(status: &Value, rules: &BTreeMap<String, Value>) -> String {
    let mut out = String::new();
    let files = status["files"].as_array().map_or(0, Vec::len);
    out.push_str(&format!(
        "{} rules from {} files, {} events, {} chains stopped, {} queue full, {} timers: {}\n",
        status["rules"],
        files,
        status["events"],
        status["chains_stopped"],
        status["queue_full"],
        status["timers"],
        if status["ok"] == Value::Bool(true) {
            "ok"
        } else {
            "errors"
        }
    ));
    for file in status["files"].as_array().into_iter().flatten() {
        for error in file["errors"].as_array().into_iter().flatten() {
            out.push_str(&format!("{}\n", diagnostic("error", error)));
        }
        if file["last_good"] == Value::Bool(true) {
            out.push_str(&format!(
                "  {}: its last good version is in force\n",
                file["file"].as_str().unwrap_or_default()
            ));
        }
    }
    for warning in status["warnings"].as_array().into_iter().flatten() {
        out.push_str(&format!("{}\n", diagnostic("warning", warning)));
    }
    out.push_str(&format!(
        "{:<28} {:>8} {:>8} {:>6} {:>7} {:>7} {:>7} {:>8} {:>8}  last run\n",
        "rule", "matched", "ran", "failed", "stopped", "skipped", "dropped", "mean_us", "p99_us"
    ));
    for (id, r) in rules {
        let id = if r["enabled"] == Value::Bool(false) {
            format!("{id} (off)")
        } else {
            id.clone()
        };
        out.push_str(&format!(
            "{:<28} {:>8} {:>8} {:>6} {:>7} {:>7} {:>7} {:>8} {:>8}  {}\n",
            id,
            r["matched"].to_string(),
            r["ran"].to_string(),
            r["failed"].to_string(),
            r["stopped"].to_string(),
            r["skipped"].to_string(),
            r["dropped"].to_string(),
            r["mean_us"].to_string(),
            r["p99_us"].to_string(),
            ago(r["last_run"].as_u64().unwrap_or(0))
        ));
    }
    out
}

fn diagnostic(severity: &str, d: &Value) -> String {
    format!(
        "{severity}: {}:{}:{}: {}",
        d["file"].as_str().unwrap_or_default(),
        d["line"],
        d["column"],
        d["message"].as_str().unwrap_or_default()
    )
}

fn render_traces(rule: &str, traces: &Value) -> String {
    let list = traces.as_array().cloned().unwrap_or_default();
    let mut out = format!("{rule}: the last {} runs, oldest first\n", list.len());
    for t in &list {
        let condition = match t.get("condition") {
            Some(Value::Bool(c)) => format!(" if={c}"),
            _ => String::new(),
        };
        let reason = t["reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{}  {} on {}  chain {} hop {}{}  {}us  {}{}\n",
            ago(t["at"].as_u64().unwrap_or(0)),
            t["trigger"].as_str().unwrap_or_default(),
            t["event"].as_str().unwrap_or_default(),
            t["chain"].as_str().unwrap_or_default(),
            t["hop"],
            condition,
            t["micros"],
            t["outcome"].as_str().unwrap_or_default(),
            reason
        ));
        for action in t["actions"].as_array().into_iter().flatten() {
            out.push_str(&format!("    {}\n", action.as_str().unwrap_or_default()));
        }
    }
    out
}

/// A clean-session MQTT 3.1.1 connection that subscribes at QoS 0 and reads PUBLISHes.
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
    next_id: u16,
}

impl Reader {
    fn connect(host: &str, login: Option<(&str, &str)>) -> anyhow::Result<Reader> {
        let stream =
            TcpStream::connect(host).with_context(|| format!("cannot connect to {host}"))?;
        let mut reader = Reader {
            stream,
            buf: Vec::new(),
            next_id: 1,
        };
        let id = format!("mqtter-rules-cli-{}", std::process::id());
        reader
            .stream
            .write_all(&packets::connect_as(&id, 30, login)?)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match reader.frame(deadline)? {
                Some(Owned::ConnAck { code: 0 }) => return Ok(reader),
                Some(Owned::ConnAck { code }) => {
                    bail!(
                        "{host} refused the connection (CONNACK code {code}: 4 or 5 is a login it does not accept)"
                    )
                }
                Some(_) => {}
                None => bail!("no CONNACK from {host}"),
            }
        }
    }

    fn subscribe(&mut self, filters: &[&str]) -> anyhow::Result<()> {
        for filter in filters {
            let id = self.next_id;
            self.next_id += 1;
            self.stream.write_all(&packets::subscribe(id, filter, 0)?)?;
        }
        Ok(())
    }

    /// The next PUBLISH (topic, payload) before `deadline`; refused subscriptions are errors.
    fn next(&mut self, deadline: Instant) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        loop {
            match self.frame(deadline)? {
                None => return Ok(None),
                Some(Owned::Publish { topic, payload }) => {
                    return Ok(Some((
                        String::from_utf8_lossy(&topic).into_owned(),
                        payload,
                    )));
                }
                Some(Owned::SubAck { codes }) if codes.contains(&0x80) => {
                    bail!(
                        "the daemon refused to let this account read $SYS/mqtter/rules/# (an ACL rule must allow it)"
                    )
                }
                Some(_) => {}
            }
        }
    }

    /// The next packet before `deadline`, owned.
    fn frame(&mut self, deadline: Instant) -> anyhow::Result<Option<Owned>> {
        loop {
            if let Some((frame, used)) = packets::parse_frame(&self.buf)? {
                let owned = Owned::from(frame);
                self.buf.drain(..used);
                return Ok(Some(owned));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("the daemon closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(err) => return Err(err).context("reading from the daemon"),
            }
        }
    }

    fn close(mut self) {
        let _ = self.stream.write_all(&packets::disconnect());
    }
}

/// A packet of [`Frame`]'s kinds, not borrowing the read buffer.
enum Owned {
    ConnAck { code: u8 },
    SubAck { codes: Vec<u8> },
    Publish { topic: Vec<u8>, payload: Vec<u8> },
    Other,
}

impl std::fmt::Debug for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Owned::ConnAck { .. } => "CONNACK",
            Owned::SubAck { .. } => "SUBACK",
            Owned::Publish { .. } => "PUBLISH",
            Owned::Other => "another packet",
        })
    }
}

impl From<Frame<'_>> for Owned {
    fn from(frame: Frame<'_>) -> Self {
        match frame {
            Frame::ConnAck { code, .. } => Owned::ConnAck { code },
            Frame::SubAck { codes, .. } => Owned::SubAck {
                codes: codes.to_vec(),
            },
            Frame::Publish { topic, payload, .. } => Owned::Publish {
                topic: topic.to_vec(),
                payload: payload.to_vec(),
            },
            _ => Owned::Other,
        }
    }
}
