//! Loading a reflex file: YAML to the behaviour the runner follows, every problem reported with
//! its file, line and column; scripts compiled once here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use serde_saphyr::Spanned;

use super::ReflexError;
use super::model::{CommandDef, EveryDef, FileDef};
use super::script::{Script, Scripts};

/// What a command's answer is.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum AckSpec {
    Ok,
    Error(String),
    /// Never answer: the command times out after its ttl.
    None,
}

impl AckSpec {
    /// `ok`, `none`, `error` or `error: <message>`.
    pub(super) fn parse(text: &str) -> Option<AckSpec> {
        match text.trim() {
            "ok" => Some(AckSpec::Ok),
            "none" => Some(AckSpec::None),
            "error" => Some(AckSpec::Error("error".into())),
            other => other
                .strip_prefix("error:")
                .map(|m| AckSpec::Error(m.trim().to_owned())),
        }
    }
}

/// What an entry does: the same each time, or what a script says.
#[derive(Clone)]
pub(super) enum Behaviour {
    Fixed {
        ack: AckSpec,
        state: Option<Value>,
        event: Option<Value>,
    },
    Script(Script),
}

#[derive(Clone)]
pub(super) struct OnCommand {
    pub matches: Option<Value>,
    pub delay: Duration,
    pub behaviour: Behaviour,
}

#[derive(Clone)]
pub(super) struct Every {
    pub interval: Duration,
    pub behaviour: Behaviour,
}

/// A loaded reflex file.
#[derive(Clone)]
pub(super) struct Spec {
    pub thing: String,
    pub state: Option<Value>,
    pub on_command: Vec<OnCommand>,
    pub every: Vec<Every>,
    pub scripts: Scripts,
}

/// `500ms`, `30s`, `1.5s`, `2m`, `1h`, or a number of seconds.
pub(super) fn parse_duration(value: &Value) -> Option<Duration> {
    let secs = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let s = s.trim();
            let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
                (n, 0.001)
            } else if let Some(n) = s.strip_suffix('s') {
                (n, 1.0)
            } else if let Some(n) = s.strip_suffix('m') {
                (n, 60.0)
            } else if let Some(n) = s.strip_suffix('h') {
                (n, 3600.0)
            } else {
                (s, 1.0)
            };
            number.trim().parse::<f64>().ok()? * scale
        }
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// The file's text and name, for errors.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
    base_dir: &'a Path,
    scripts: &'a Scripts,
}

impl Source<'_> {
    fn error<T>(&self, at: &Spanned<T>, message: impl Into<String>) -> ReflexError {
        ReflexError {
            file: self.file.to_owned(),
            line: at.referenced.line(),
            column: at.referenced.column(),
            message: message.into(),
        }
    }

    fn object(&self, v: Option<Spanned<Value>>, what: &str) -> Result<Option<Value>, ReflexError> {
        match v {
            None => Ok(None),
            Some(s) if s.value.is_object() => Ok(Some(s.value)),
            Some(s) => Err(self.error(&s, format!("`{what}` is a map, as `{{ on: true }}`"))),
        }
    }

    fn duration(&self, v: &Spanned<Value>, what: &str) -> Result<Duration, ReflexError> {
        parse_duration(&v.value).ok_or_else(|| {
            self.error(
                v,
                format!("`{what}`: a duration as `500ms`, `30s`, `5m`, `1h`"),
            )
        })
    }

    /// `script: FILE` (relative to the reflex file's folder) or `do: <inline rhai>`.
    fn script(
        &self,
        script: Option<Spanned<String>>,
        inline: Option<Spanned<String>>,
    ) -> Result<Option<Script>, ReflexError> {
        match (script, inline) {
            (None, None) => Ok(None),
            (Some(_), Some(inline)) => {
                Err(self.error(&inline, "give `script:` or `do:`, not both"))
            }
            (Some(path), None) => {
                let file: PathBuf = self.base_dir.join(&path.value);
                let text = std::fs::read_to_string(&file).map_err(|e| {
                    self.error(
                        &path,
                        format!("cannot read the script {}: {e}", file.display()),
                    )
                })?;
                let name = file.display().to_string();
                self.scripts
                    .compile(name, &text)
                    .map(Some)
                    .map_err(|e| ReflexError {
                        file: file.clone(),
                        line: e.line as u64,
                        column: e.column as u64,
                        message: e.message,
                    })
            }
            (None, Some(inline)) => {
                let name = format!("{}:{}", self.file.display(), inline.referenced.line());
                self.scripts
                    .compile(name, &inline.value)
                    .map(Some)
                    .map_err(|e| {
                        let (line, column) = self.inline_place(&inline, e.line, e.column);
                        ReflexError {
                            file: self.file.to_owned(),
                            line,
                            column,
                            message: e.message,
                        }
                    })
            }
        }
    }

    /// Where (`line`, `column`) of an inline script is in the YAML file: after the opening
    /// quote on its line, or on the lines of a block scalar (`do: |`) below it.
    fn inline_place(&self, span: &Spanned<String>, line: usize, column: usize) -> (u64, u64) {
        let (start_line, start_col) = (span.referenced.line(), span.referenced.column());
        let nth_line = |n: u64| {
            self.text
                .lines()
                .nth(usize::try_from(n).unwrap_or(1).saturating_sub(1))
        };
        let first = nth_line(start_line)
            .and_then(|l| l.chars().nth(usize::try_from(start_col).unwrap_or(1) - 1));
        let (line, column) = (line.max(1) as u64, column.max(1) as u64);
        match first {
            Some('|' | '>') => {
                let at = start_line + line;
                let indent = nth_line(at).map_or(0, |l| l.len() - l.trim_start().len());
                (at, indent as u64 + column)
            }
            Some('\'' | '"') if line == 1 => (start_line, start_col + column),
            Some('\'' | '"') => (start_line + line - 1, column),
            _ if line == 1 => (start_line, start_col + column - 1),
            _ => (start_line + line - 1, column),
        }
    }

    fn behaviour(
        &self,
        at: &Spanned<impl Sized>,
        fixed: Fixed,
        script: Option<Script>,
    ) -> Result<Behaviour, ReflexError> {
        match script {
            Some(script) if fixed.is_empty() => Ok(Behaviour::Script(script)),
            Some(_) => Err(self.error(
                at,
                "a script entry gives its answer from the script: no `ack`, `state` or `event` beside it",
            )),
            None => Ok(Behaviour::Fixed {
                ack: fixed.ack.unwrap_or(AckSpec::Ok),
                state: fixed.state,
                event: fixed.event,
            }),
        }
    }

    fn on_command(&self, entry: Spanned<CommandDef>) -> Result<OnCommand, ReflexError> {
        let Spanned {
            value: def,
            referenced,
            defined,
        } = entry;
        let at = Spanned::new((), referenced, defined);
        let matches = self.object(def.matches, "match")?;
        let delay = match &def.delay {
            Some(d) => self.duration(d, "delay")?,
            None => Duration::ZERO,
        };
        let ack = match def.ack {
            None => None,
            Some(a) => {
                let parsed = a.value.as_str().and_then(AckSpec::parse);
                Some(parsed.ok_or_else(|| {
                    self.error(&a, "`ack`: `ok`, `none` or `\"error: <message>\"`")
                })?)
            }
        };
        let fixed = Fixed {
            ack,
            state: self.object(def.state, "state")?,
            event: self.object(def.event, "event")?,
        };
        let script = self.script(def.script, def.inline)?;
        Ok(OnCommand {
            matches,
            delay,
            behaviour: self.behaviour(&at, fixed, script)?,
        })
    }

    fn every(&self, entry: Spanned<EveryDef>) -> Result<Every, ReflexError> {
        let Spanned {
            value: def,
            referenced,
            defined,
        } = entry;
        let at = Spanned::new((), referenced, defined);
        let interval = self.duration(&def.interval, "interval")?;
        if interval.is_zero() {
            return Err(self.error(&def.interval, "`interval` must be more than 0"));
        }
        let fixed = Fixed {
            ack: None,
            state: self.object(def.state, "state")?,
            event: self.object(def.event, "event")?,
        };
        let script = self.script(def.script, def.inline)?;
        if script.is_none() && fixed.is_empty() {
            return Err(self.error(
                &at,
                "an `every` entry gives `state`, `event`, `script` or `do`",
            ));
        }
        Ok(Every {
            interval,
            behaviour: self.behaviour(&at, fixed, script)?,
        })
    }
}

/// The fixed keys of an entry.
struct Fixed {
    ack: Option<AckSpec>,
    state: Option<Value>,
    event: Option<Value>,
}

impl Fixed {
    fn is_empty(&self) -> bool {
        self.ack.is_none() && self.state.is_none() && self.event.is_none()
    }
}

/// Load the text of a reflex file (`file` names it in errors; scripts are found from
/// `base_dir`).
pub(super) fn load(text: &str, file: &Path, base_dir: &Path) -> Result<Spec, ReflexError> {
    let options = serde_saphyr::options! { strict_booleans: true };
    let def: FileDef = serde_saphyr::from_str_with_options(text, options).map_err(|err| {
        let (line, column) = err.location().map_or((0, 0), |l| (l.line(), l.column()));
        ReflexError {
            file: file.to_owned(),
            line,
            column,
            message: err.to_string().lines().next().unwrap_or("").to_owned(),
        }
    })?;
    let scripts = Scripts::new();
    let source = Source {
        file,
        text,
        base_dir,
        scripts: &scripts,
    };
    let thing = def.thing.value.clone();
    let valid = (1..=64).contains(&thing.len())
        && thing
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !valid {
        return Err(source.error(&def.thing, "`thing`: an account id, [A-Za-z0-9_.-]{1,64}"));
    }
    let state = source.object(def.state, "state")?;
    let on_command = def
        .on_command
        .into_iter()
        .map(|e| source.on_command(e))
        .collect::<Result<_, _>>()?;
    let every = def
        .every
        .into_iter()
        .map(|e| source.every(e))
        .collect::<Result<_, _>>()?;
    Ok(Spec {
        thing,
        state,
        on_command,
        every,
        scripts,
    })
}
