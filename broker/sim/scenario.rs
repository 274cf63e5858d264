//! A scenario file (`*.sim.yaml`, docs/SIMULATOR.md) as written: the rules folder, the start
//! time, the actors, the steps. Parsed with serde-saphyr; a bad file is reported with its line
//! and column, and unknown keys are errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

/// One scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Shown in the output (default: the file name).
    #[serde(default)]
    pub name: Option<String>,
    /// The rules folder (`rules_dir`), relative to the scenario file.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    /// When the virtual clock starts (RFC 3339, `2026-06-01T07:00:00Z`); default: now.
    #[serde(default)]
    pub start: Option<String>,
    /// Daemon configuration (TOML) for this scenario; the simulator sets the listeners, the
    /// data folder and `rules_dir` itself.
    #[serde(default)]
    pub config: Option<String>,
    #[serde(default)]
    pub actors: Vec<Actor>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// A virtual person or thing.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Actor {
    Person(PersonActor),
    Thing(ThingActor),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonActor {
    /// The person's account id.
    pub person: String,
    /// Default: the rules folder's definition's plain password, else one the simulator sets.
    #[serde(default)]
    pub password: Option<String>,
    /// Connected before the first step (default true).
    #[serde(default = "yes")]
    pub connect: bool,
    /// Replies to messages that arrive (a person who answers).
    #[serde(default)]
    pub replies: Vec<Reply>,
}

/// "When a message like this arrives, send that."
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// A subset of the arriving message's body (`{text: "ack?"}`); none: any message.
    #[serde(default, rename = "match")]
    pub matches: Option<Value>,
    /// Only messages from this account.
    #[serde(default)]
    pub from: Option<String>,
    /// Where to send the reply: `person/P/inbox` or `group/G` (default: back to the sender, or
    /// to the group it came in).
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub body: Option<Value>,
}

/// A thing: its reflex (the shared reflex format, docs/CLIENT.md) inline, or in a file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThingActor {
    pub thing: String,
    /// Default: the rules folder's definition's plain secret, else one the simulator sets.
    #[serde(default, alias = "secret")]
    pub password: Option<String>,
    #[serde(default = "yes")]
    pub connect: bool,
    /// A reflex file (relative to the scenario) instead of the keys below.
    #[serde(default)]
    pub reflex: Option<PathBuf>,
    #[serde(default)]
    pub state: Option<Value>,
    #[serde(default)]
    pub on_command: Vec<OnCommand>,
    #[serde(default)]
    pub every: Vec<Every>,
}

fn yes() -> bool {
    true
}

/// One entry of a thing's `on_command`: the first whose `match` the command's body contains.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnCommand {
    #[serde(default, rename = "match")]
    pub matches: Option<Value>,
    #[serde(default)]
    pub delay: Option<String>,
    /// `ok` (default), `"error: <message>"`, or `none` (never acks: the command times out).
    #[serde(default)]
    pub ack: Option<String>,
    #[serde(default)]
    pub state: Option<Value>,
    #[serde(default)]
    pub event: Option<Value>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default, rename = "do")]
    pub code: Option<String>,
}

/// A thing's periodic report.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Every {
    pub interval: String,
    #[serde(default)]
    pub state: Option<Value>,
    #[serde(default)]
    pub event: Option<Value>,
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default, rename = "do")]
    pub code: Option<String>,
}

/// One step: exactly one of the keys, plus an optional `name`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub publish: Option<Publish>,
    #[serde(default)]
    pub command: Option<Command>,
    #[serde(default)]
    pub connect: Option<String>,
    #[serde(default)]
    pub disconnect: Option<String>,
    #[serde(default)]
    pub advance: Option<String>,
    #[serde(default)]
    pub edit: Option<Edit>,
    #[serde(default)]
    pub expect: Option<Expect>,
    #[serde(default)]
    pub expect_none: Option<Expect>,
    #[serde(default)]
    pub expect_chain: Option<ExpectChain>,
    #[serde(default)]
    pub expect_state: Option<ExpectState>,
    /// How often each rule ran since the scenario started (a rule not named: never).
    #[serde(default)]
    pub expect_fired: Option<std::collections::BTreeMap<String, u64>>,
}

/// A PUBLISH as an actor (or anonymous): an IM message (`to`), a thing's `state` or `event`,
/// or a plain `topic`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    #[serde(default, rename = "as")]
    pub actor: Option<String>,
    /// `person/P/inbox` or `group/G`: an IM message (persons).
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub body: Option<Value>,
    /// A thing's state report (merge patch) or event.
    #[serde(default)]
    pub state: Option<Value>,
    #[serde(default)]
    pub event: Option<Value>,
    /// A plain topic and its payload (a string as it is, anything else as JSON).
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub retain: bool,
}

/// A command to a thing, as a person or thing actor (`thing/T/cmd`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    #[serde(rename = "as")]
    pub actor: String,
    pub thing: String,
    pub body: Value,
    /// Seconds.
    #[serde(default)]
    pub ttl: Option<u64>,
}

/// Change a file of the rules folder (the scenario's copy), then wait for the reload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    /// Relative to the rules folder.
    pub file: PathBuf,
    #[serde(default)]
    pub replace: Option<String>,
    #[serde(default)]
    pub with: Option<String>,
    /// The whole new text.
    #[serde(default)]
    pub content: Option<String>,
    /// The reload is expected to report an error in this file (its last good version stays).
    #[serde(default)]
    pub fails: bool,
}

/// A message expected (or, for `expect_none`, not expected) at an actor or on plain topics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// What an actor received: a person's inbox, a thing's commands and inbox.
    #[serde(default)]
    pub actor: Option<String>,
    /// Or a plain topic filter (`+`, `#`), as any subscriber sees it.
    #[serde(default)]
    pub topic: Option<String>,
    /// The envelope's `type` (`msg`, `notice`, `cmd`, `cmd.ack`, `cmd.timeout`, ...).
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// A subset of the envelope's `body` (or of the envelope, when it has none).
    #[serde(default)]
    pub body: Option<Value>,
    /// The body's (or envelope's) `text`, exactly.
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    /// A subset of the whole envelope.
    #[serde(default)]
    pub envelope: Option<Value>,
    /// A subset of a plain message's payload (JSON), or the payload's text.
    #[serde(default)]
    pub payload: Option<Value>,
    /// How many such messages (default 1): `expect` takes that many.
    #[serde(default)]
    pub count: Option<usize>,
    /// Virtual time the message may take (the clock is advanced as far as needed).
    #[serde(default)]
    pub within: Option<String>,
    /// `expect_none`: how long nothing may arrive (virtual time).
    #[serde(default, rename = "for")]
    pub during: Option<String>,
}

/// The rules a chain ran, in order, with their hops.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ExpectChain {
    List(Vec<ChainLink>),
    Full {
        rules: Vec<ChainLink>,
        #[serde(default)]
        within: Option<String>,
    },
}

/// `rule-id`, `rule-id@2` (its hop), or `{rule, hop}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChainLink {
    Text(String),
    Map {
        rule: String,
        #[serde(default)]
        hop: Option<u32>,
    },
}

impl ChainLink {
    pub fn parts(&self) -> (String, Option<u32>) {
        match self {
            ChainLink::Text(text) => match text.rsplit_once('@') {
                Some((rule, hop)) if hop.parse::<u32>().is_ok() => {
                    (rule.to_owned(), hop.parse().ok())
                }
                _ => (text.clone(), None),
            },
            ChainLink::Map { rule, hop } => (rule.clone(), *hop),
        }
    }
}

impl ExpectChain {
    pub fn links(&self) -> Vec<(String, Option<u32>)> {
        let links = match self {
            ExpectChain::List(links) | ExpectChain::Full { rules: links, .. } => links,
        };
        links.iter().map(ChainLink::parts).collect()
    }

    pub fn within(&self) -> Option<&str> {
        match self {
            ExpectChain::List(_) => None,
            ExpectChain::Full { within, .. } => within.as_deref(),
        }
    }
}

/// A subset of a thing's state document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectState {
    pub thing: String,
    pub state: Value,
    #[serde(default)]
    pub within: Option<String>,
}

/// A parse error with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ParseError {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl Scenario {
    pub fn parse(file: &Path, text: &str) -> Result<Scenario, ParseError> {
        parse_yaml(file, text)
    }
}

/// YAML 1.2 booleans only (`on` is a string, as in the rules), errors with line and column.
fn parse_yaml<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T, ParseError> {
    let options = serde_saphyr::options! { strict_booleans: true };
    serde_saphyr::from_str_with_options::<T>(text, options).map_err(|err| {
        let location = err.location();
        ParseError {
            file: file.to_owned(),
            line: location.map_or(0, |l| l.line()),
            column: location.map_or(0, |l| l.column()),
            message: err.to_string(),
        }
    })
}

/// `500ms`, `10s`, `5m`, `2h`, `1d` (the rules' syntax).
pub fn duration(text: &str) -> anyhow::Result<Duration> {
    mqtter_rules::model::parse_duration(text)
        .ok_or_else(|| anyhow::anyhow!("{text:?} is not a duration (500ms, 10s, 5m, 2h, 1d)"))
}

/// The start time in ms since the epoch.
pub fn start_ms(start: &str) -> anyhow::Result<u64> {
    let at = chrono::DateTime::parse_from_rfc3339(start).map_err(|err| {
        anyhow::anyhow!("start {start:?} is not an RFC 3339 time (2026-06-01T07:00:00Z): {err}")
    })?;
    u64::try_from(at.timestamp_millis())
        .map_err(|_| anyhow::anyhow!("start {start:?} is before 1970"))
}
