//! What a rule is: its YAML shape as written in a file ([`RuleDef`], with source locations) and
//! the checked form the engine runs ([`Rule`], [`Trigger`], [`Options`]).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

/// A rule's id, unique in the folder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(pub std::sync::Arc<str>);

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The part of a YAML file the rules engine reads (the definitions are the engine's:
/// `mqtter_engine::definitions`).
#[derive(Debug, Default, Deserialize)]
pub struct RulesFile {
    #[serde(default)]
    pub rules: Vec<Spanned<RuleDef>>,
}

/// A rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub id: Spanned<String>,
    /// One trigger or a list of them ([`TriggerDef`]), read in a second step so that a wrong
    /// key gets serde's "unknown field, expected one of" message.
    pub when: Spanned<Value>,
    #[serde(default, rename = "if")]
    pub condition: Option<Spanned<String>>,
    #[serde(default, rename = "do")]
    pub action: Option<Spanned<String>>,
    #[serde(default)]
    pub script: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub mode: Mode,
    /// At most this many runs per `per` (the others are skipped and counted).
    #[serde(default)]
    pub rate: Option<Spanned<String>>,
    /// Wait until the triggers have been quiet this long, then run once with the last event.
    #[serde(default)]
    pub debounce: Option<Spanned<String>>,
    /// The account the rule acts as (default: `rules.account` of the configuration).
    #[serde(default, rename = "as")]
    pub account: Option<Spanned<String>>,
    #[serde(default)]
    pub description: Option<String>,
}

fn yes() -> bool {
    true
}

/// A trigger as written: exactly one of the subject keys (`topic`, `im`, `state`, `command`,
/// `ack`, `timeout`, `presence`, `relation`, `cron`, `every`, `timer`) plus its qualifiers.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    pub topic: Option<String>,
    pub im: Option<String>,
    pub state: Option<String>,
    pub command: Option<String>,
    pub ack: Option<String>,
    pub timeout: Option<String>,
    pub presence: Option<String>,
    pub relation: Option<String>,
    pub cron: Option<String>,
    pub every: Option<String>,
    pub timer: Option<String>,
    /// Who caused the event (an account id).
    pub by: Option<String>,
    /// What kind of account caused it: person, thing, anonymous, rule.
    pub kind: Option<String>,
    /// The state field that must change (`state:`).
    pub changed: Option<String>,
    /// The value before (`state:`).
    pub from: Option<Value>,
    /// The value after (`state:`), or the presence status (`presence:`).
    pub to: Option<Value>,
    /// The account or group a relation change concerns (`relation:`).
    pub of: Option<String>,
}

/// What a rule does when it is triggered while a run of it is still going (as Home Assistant's
/// automation modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The new trigger is skipped (counted).
    #[default]
    Single,
    /// The new run waits for the one going on, then runs.
    Queued,
    /// Runs at the same time.
    Parallel,
    /// The run going on is stopped and the new one starts.
    Restart,
}

/// A relation change a trigger can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelationKind {
    FriendAdded,
    FriendRemoved,
    MemberJoined,
    MemberLeft,
    Bound,
    Unbound,
    Linked,
    Unlinked,
}

impl RelationKind {
    pub const ALL: [(&'static str, RelationKind); 8] = [
        ("friend_added", RelationKind::FriendAdded),
        ("friend_removed", RelationKind::FriendRemoved),
        ("member_joined", RelationKind::MemberJoined),
        ("member_left", RelationKind::MemberLeft),
        ("bound", RelationKind::Bound),
        ("unbound", RelationKind::Unbound),
        ("linked", RelationKind::Linked),
        ("unlinked", RelationKind::Unlinked),
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("", |(n, _)| n)
    }
}

/// Which sender a message-like trigger accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct By {
    pub account: Option<String>,
    pub kind: Option<crate::events::ActorKind>,
}

/// A checked trigger.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// A plain PUBLISH on a topic filter.
    Topic {
        filter: String,
        by: By,
    },
    /// An IM message to a person (direct) or a group; `*` for any.
    Im {
        to: String,
        by: By,
    },
    /// A thing's state report; with `changed`, only when that field changed (from, to).
    State {
        thing: String,
        changed: Option<String>,
        from: Option<Value>,
        to: Option<Value>,
    },
    Command {
        thing: String,
    },
    Ack {
        thing: String,
    },
    Timeout {
        thing: String,
    },
    /// An account's presence (`*` for any), optionally only to one status.
    Presence {
        account: String,
        to: Option<String>,
    },
    Relation {
        kind: RelationKind,
        of: Option<String>,
    },
    /// A cron expression, in the configured time zone.
    Cron {
        expr: String,
        schedule: Box<croner::Cron>,
    },
    Every {
        period: Duration,
    },
    /// A timer set with `after(ms, name, data)` fired.
    Timer {
        name: String,
    },
}

impl Trigger {
    /// A short text for traces and listings.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Topic { filter, .. } => format!("topic {filter}"),
            Trigger::Im { to, .. } => format!("im {to}"),
            Trigger::State { thing, changed, .. } => match changed {
                Some(field) => format!("state {thing}.{field}"),
                None => format!("state {thing}"),
            },
            Trigger::Command { thing } => format!("command {thing}"),
            Trigger::Ack { thing } => format!("ack {thing}"),
            Trigger::Timeout { thing } => format!("timeout {thing}"),
            Trigger::Presence { account, .. } => format!("presence {account}"),
            Trigger::Relation { kind, .. } => format!("relation {}", kind.as_str()),
            Trigger::Cron { expr, .. } => format!("cron {expr}"),
            Trigger::Every { period } => format!("every {}ms", period.as_millis()),
            Trigger::Timer { name } => format!("timer {name}"),
        }
    }
}

/// How a rule runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub enabled: bool,
    pub mode: Mode,
    /// At most `.0` runs per `.1`.
    pub rate: Option<(u32, Duration)>,
    pub debounce: Option<Duration>,
    /// The account the rule acts as.
    pub account: std::sync::Arc<str>,
}

/// A checked, compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: RuleId,
    pub file: std::path::PathBuf,
    pub line: u64,
    pub triggers: Vec<Trigger>,
    /// Each trigger as a trace shows it ([`Trigger::describe`]), made once at load.
    pub trigger_names: Vec<std::sync::Arc<str>>,
    pub condition: Option<rhai::AST>,
    pub action: rhai::AST,
    pub options: Options,
    pub description: Option<String>,
    /// The API calls its scripts make with a literal first argument (`command("lamp", ..)`):
    /// what `check` reads for references and for loops.
    pub calls: Vec<Call>,
    /// How its scripts use the event: only the fields they read are built for a run, and
    /// `msg` (the other name of `event`) is set only if they name it.
    pub reads: crate::reads::EventUse,
}

/// A call found in a script: `command("lamp", ..)` is `{ name: command, target: Some(lamp) }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    pub target: Option<String>,
}

/// `500ms`, `10s`, `5m`, `2h`, `1d`, or a bare number of milliseconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" | "min" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// `10/s`, `3/m`, `100/h`, or `5/10s`.
pub fn parse_rate(text: &str) -> Option<(u32, Duration)> {
    let (count, per) = text.split_once('/')?;
    let count: u32 = count.trim().parse().ok().filter(|n| *n > 0)?;
    let per = per.trim();
    let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(per)?
    } else {
        parse_duration(&format!("1{per}"))?
    };
    Some((count, per))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_rate("10/s"), Some((10, Duration::from_secs(1))));
        assert_eq!(parse_rate("5/10s"), Some((5, Duration::from_secs(10))));
        assert_eq!(parse_rate("0/s"), None);
    }
}
