//! The loader: reads a rules folder (`rules_dir`), one YAML file at a time, into checked and
//! compiled [`Rule`]s plus the engine's [`Definitions`], with a [`Diagnostic`] for every problem.
//!
//! A file is all or nothing: if any part of it fails (YAML, a trigger, a Rhai script it uses),
//! the whole file fails and the caller keeps the last good version it had (see `reload`).
//! Definitions are parsed by the engine (`mqtter_engine::definitions::parse`); this module reads
//! the folder, the `rules:` part and the `.rhai` files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mqtter_engine::definitions::{self, Definitions};
use rhai::{AST, Engine};
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::diagnostic::Diagnostic;
use crate::events::ActorKind;
use crate::model::{
    By, Call, Mode, Options, RelationKind, Rule, RuleDef, RuleId, RulesFile, Trigger, TriggerDef,
    parse_duration, parse_rate,
};

/// What the loader needs to know besides the folder.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The account a rule acts as when it names none (`as:`).
    pub account: String,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            account: "rules".into(),
        }
    }
}

/// One YAML file, loaded.
#[derive(Debug)]
pub struct FileRules {
    pub rules: Vec<Rule>,
    pub definitions: Definitions,
    /// The `.rhai` files its rules use: a change to one of them reloads this file.
    pub scripts: Vec<PathBuf>,
}

/// A whole folder, loaded: every YAML file's outcome (`None`: it failed) and every diagnostic.
#[derive(Debug, Default)]
pub struct Loaded {
    pub files: BTreeMap<PathBuf, Option<FileRules>>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Every rule of the files that loaded, in file order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.files.values().flatten().flat_map(|f| f.rules.iter())
    }
}

/// Every YAML file of `dir` (sorted), or the reason the folder cannot be read.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    crate::definitions::files_in(dir).map_err(|err| Diagnostic::error(dir, 0, 0, err.to_string()))
}

/// Load every YAML file of `dir`. Rule ids must be unique across the folder: a file that
/// repeats an id an earlier file (in name order) has fails.
pub fn load_dir(dir: &Path, engine: &Engine, config: &LoadConfig) -> Loaded {
    let mut loaded = Loaded::default();
    let files = match yaml_files(dir) {
        Ok(files) => files,
        Err(d) => {
            loaded.diagnostics.push(d);
            return loaded;
        }
    };
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        let (outcome, mut diagnostics) = load_file(dir, &file, engine, config);
        let outcome = outcome.and_then(|rules| {
            let clashes = duplicate_ids(&rules, &file, &seen);
            if clashes.is_empty() {
                for rule in &rules.rules {
                    seen.insert(rule.id.0.to_string(), file.clone());
                }
                Some(rules)
            } else {
                diagnostics.extend(clashes);
                None
            }
        });
        loaded.diagnostics.extend(diagnostics);
        loaded.files.insert(file, outcome);
    }
    loaded
}

/// The rules of `rules` whose ids another file (`seen`) already has.
pub fn duplicate_ids(
    rules: &FileRules,
    file: &Path,
    seen: &BTreeMap<String, PathBuf>,
) -> Vec<Diagnostic> {
    rules
        .rules
        .iter()
        .filter_map(|rule| {
            let other = seen.get(&*rule.id.0)?;
            (other != file).then(|| {
                Diagnostic::error(
                    file,
                    rule.line,
                    1,
                    format!(
                        "rule `{}` is already defined in {}",
                        rule.id,
                        other.display()
                    ),
                )
            })
        })
        .collect()
}

/// Load one YAML file: its rules (`None` if anything in it is an error) and its diagnostics.
pub fn load_file(
    dir: &Path,
    file: &Path,
    engine: &Engine,
    config: &LoadConfig,
) -> (Option<FileRules>, Vec<Diagnostic>) {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) => return (None, vec![Diagnostic::error(file, 0, 0, err.to_string())]),
    };
    load_text(dir, file, &text, engine, config)
}

/// Load one YAML file's text.
pub fn load_text(
    dir: &Path,
    file: &Path,
    text: &str,
    engine: &Engine,
    config: &LoadConfig,
) -> (Option<FileRules>, Vec<Diagnostic>) {
    let definitions = match definitions::parse(file, text) {
        Ok(defs) => defs,
        Err(d) => return (None, vec![Diagnostic::from(d).with_source(text)]),
    };
    // YAML 1.2 booleans (`true`, `false`): `changed: on` names the field `on`.
    let options = serde_saphyr::options! { strict_booleans: true };
    let parsed: RulesFile = match serde_saphyr::from_str_with_options(text, options) {
        Ok(parsed) => parsed,
        Err(err) => {
            let (line, column) = err.location().map_or((0, 0), |l| (l.line(), l.column()));
            let d = Diagnostic::error(file, line, column, err.to_string()).with_source(text);
            return (None, vec![d]);
        }
    };
    let mut out = FileRules {
        rules: Vec::new(),
        definitions,
        scripts: Vec::new(),
    };
    let mut diagnostics = Vec::new();
    let mut ids = BTreeMap::new();
    let source = Source { file, text };
    for def in parsed.rules {
        let line = def.referenced.line();
        match build_rule(
            dir,
            &source,
            def.value,
            line,
            engine,
            config,
            &mut out.scripts,
        ) {
            Ok(rule) => {
                if let Some(first) = ids.insert(rule.id.0.to_string(), line) {
                    diagnostics.push(source.error(
                        line,
                        1,
                        format!("rule `{}` is already defined at line {first}", rule.id),
                    ));
                }
                out.rules.push(rule);
            }
            Err(mut errors) => diagnostics.append(&mut errors),
        }
    }
    if diagnostics.iter().any(Diagnostic::is_error) {
        (None, diagnostics)
    } else {
        (Some(out), diagnostics)
    }
}

/// A YAML file and its text, for diagnostics with snippets.
struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn error(&self, line: u64, column: u64, message: impl Into<String>) -> Diagnostic {
        Diagnostic::error(self.file, line, column, message).with_source(self.text)
    }

    fn at<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> Diagnostic {
        let l = spanned.referenced;
        self.error(l.line(), l.column(), message)
    }

    /// Where a Rhai error at (`line`, `column`) of an inline script starting at `span` is in
    /// the YAML file: after the opening quote on the same line, or on the lines of a block
    /// scalar (`do: |`) below it, whose span starts at its content.
    fn inline(&self, span: &Spanned<String>, line: usize, column: usize) -> (u64, u64) {
        let start_line = span.referenced.line();
        let start_col = span.referenced.column();
        let first = self
            .text
            .lines()
            .nth(usize::try_from(start_line).unwrap_or(1).saturating_sub(1))
            .and_then(|l| l.chars().nth(usize::try_from(start_col).unwrap_or(1) - 1));
        match first {
            Some('|' | '>') => {
                let at = start_line + line as u64;
                let indent = self
                    .text
                    .lines()
                    .nth(usize::try_from(at).unwrap_or(1).saturating_sub(1))
                    .map_or(0, |l| l.len() - l.trim_start().len());
                (at, indent as u64 + column as u64)
            }
            Some('\'' | '"') if line <= 1 => (start_line, start_col + column as u64),
            Some('\'' | '"') => (start_line + line as u64 - 1, column as u64),
            // A plain scalar, or a block scalar's content (each line at the same indent).
            _ => (start_line + line as u64 - 1, start_col + column as u64 - 1),
        }
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn build_rule(
    dir: &Path,
    source: &Source<'_>,
    def: RuleDef,
    line: u64,
    engine: &Engine,
    config: &LoadConfig,
    scripts: &mut Vec<PathBuf>,
) -> Result<Rule, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    if !valid_id(&def.id.value) {
        errors.push(source.at(
            &def.id,
            format!(
                "rule id `{}` must match [A-Za-z0-9_.-]{{1,64}}",
                def.id.value
            ),
        ));
    }
    let triggers = triggers(source, &def.when, &mut errors);
    let condition = def.condition.as_ref().and_then(|cond| {
        engine
            .compile_expression(&cond.value)
            .map_err(|err| errors.push(rhai_error(source, cond, &err)))
            .ok()
    });
    let action = match (&def.action, &def.script) {
        (Some(code), None) => engine
            .compile(&code.value)
            .map_err(|err| errors.push(rhai_error(source, code, &err)))
            .ok(),
        (None, Some(script)) => compile_script(dir, source, script, engine, &mut errors)
            .inspect(|_| scripts.push(dir.join(&script.value))),
        (Some(code), Some(_)) => {
            errors.push(source.at(code, "a rule has `do` or `script`, not both"));
            None
        }
        (None, None) => {
            errors.push(source.error(line, 1, "a rule needs `do` (inline Rhai) or `script`"));
            None
        }
    };
    let rate = def.rate.as_ref().and_then(|rate| {
        let parsed = parse_rate(&rate.value);
        if parsed.is_none() {
            errors.push(source.at(rate, "a rate is a count per period: `10/s`, `3/m`, `5/10s`"));
        }
        parsed
    });
    let debounce = def.debounce.as_ref().and_then(|d| {
        let parsed = parse_duration(&d.value);
        if parsed.is_none() {
            errors.push(source.at(d, "a duration is `500ms`, `10s`, `5m`, `2h` or `1d`"));
        }
        parsed
    });
    let account = match &def.account {
        Some(account) if !valid_id(&account.value) => {
            errors.push(source.at(account, "`as` names an account id"));
            String::new()
        }
        Some(account) => account.value.clone(),
        None => config.account.clone(),
    };
    let (Some(action), true) = (action, errors.is_empty()) else {
        return Err(errors);
    };
    let mut calls = calls_in(&action);
    if let Some(cond) = &condition {
        calls.extend(calls_in(cond));
    }
    let reads = crate::reads::event_use(std::iter::once(&action).chain(&condition));
    Ok(Rule {
        id: RuleId(def.id.value.into()),
        file: source.file.to_owned(),
        line,
        trigger_names: triggers.iter().map(|t| t.describe().into()).collect(),
        triggers,
        condition,
        action,
        options: Options {
            enabled: def.enabled,
            mode: def.mode,
            rate,
            debounce,
            account: account.into(),
        },
        description: def.description,
        calls,
        reads,
    })
}

fn compile_script(
    dir: &Path,
    source: &Source<'_>,
    script: &Spanned<String>,
    engine: &Engine,
    errors: &mut Vec<Diagnostic>,
) -> Option<AST> {
    let name = Path::new(&script.value);
    if name.is_absolute()
        || name
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        || name.extension().is_none_or(|x| x != "rhai")
    {
        errors.push(source.at(
            script,
            "`script` names a .rhai file inside the rules folder",
        ));
        return None;
    }
    let path = dir.join(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => {
            errors.push(source.at(script, format!("{}: {err}", path.display())));
            return None;
        }
    };
    match engine.compile(&text) {
        Ok(ast) => Some(ast),
        Err(err) => {
            let pos = err.position();
            let d = Diagnostic::error(
                &path,
                pos.line().unwrap_or(0) as u64,
                pos.position().unwrap_or(0) as u64,
                err.err_type().to_string(),
            );
            errors.push(d.with_source(&text));
            None
        }
    }
}

fn rhai_error(source: &Source<'_>, code: &Spanned<String>, err: &rhai::ParseError) -> Diagnostic {
    let pos = err.position();
    let (line, column) = source.inline(code, pos.line().unwrap_or(1), pos.position().unwrap_or(1));
    source.error(line, column, err.err_type().to_string())
}

/// The API calls of `ast` with a literal first argument, for `check`.
fn calls_in(ast: &AST) -> Vec<Call> {
    const API: [&str; 12] = [
        "publish", "notify", "command", "state", "owner_of", "bound_to", "linked", "friends",
        "members", "presence", "after", "cancel",
    ];
    let mut calls = Vec::new();
    ast.walk(&mut |path: &[rhai::ASTNode]| {
        let call = match path.last() {
            Some(rhai::ASTNode::Expr(rhai::Expr::FnCall(call, _)))
            | Some(rhai::ASTNode::Stmt(rhai::Stmt::FnCall(call, _))) => call,
            _ => return true,
        };
        if API.contains(&call.name.as_str()) {
            // `after(ms, "name", data)` names its timer second.
            let at = usize::from(call.name == "after");
            let target = match call.args.get(at) {
                Some(rhai::Expr::StringConstant(s, _)) => Some(s.to_string()),
                _ => None,
            };
            calls.push(Call {
                name: call.name.to_string(),
                target,
            });
        }
        true
    });
    calls
}

/// The triggers of `when:`: one mapping or a list of them.
fn triggers(
    source: &Source<'_>,
    when: &Spanned<Value>,
    errors: &mut Vec<Diagnostic>,
) -> Vec<Trigger> {
    let items = match &when.value {
        Value::Array(items) if !items.is_empty() => items.clone(),
        Value::Object(_) => vec![when.value.clone()],
        _ => {
            errors.push(source.at(when, "`when` is a trigger or a list of triggers"));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for item in items {
        match serde_json::from_value::<TriggerDef>(item)
            .map_err(|e| e.to_string())
            .and_then(trigger)
        {
            Ok(trigger) => out.push(trigger),
            Err(message) => errors.push(source.at(when, format!("trigger: {message}"))),
        }
    }
    out
}

fn actor_kind(kind: &str) -> Result<ActorKind, String> {
    Ok(match kind {
        "person" => ActorKind::Person,
        "thing" => ActorKind::Thing,
        "anonymous" => ActorKind::Anonymous,
        "rule" => ActorKind::Rule,
        other => {
            return Err(format!(
                "kind `{other}`: expected person, thing, anonymous or rule"
            ));
        }
    })
}

/// A topic filter as MQTT has them: `+` and `#` fill whole levels, `#` only last.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

fn trigger(def: TriggerDef) -> Result<Trigger, String> {
    let subjects = [
        ("topic", def.topic.is_some()),
        ("im", def.im.is_some()),
        ("state", def.state.is_some()),
        ("command", def.command.is_some()),
        ("ack", def.ack.is_some()),
        ("timeout", def.timeout.is_some()),
        ("presence", def.presence.is_some()),
        ("relation", def.relation.is_some()),
        ("cron", def.cron.is_some()),
        ("every", def.every.is_some()),
        ("timer", def.timer.is_some()),
    ];
    let named: Vec<&str> = subjects.iter().filter(|s| s.1).map(|s| s.0).collect();
    let subject = match named.as_slice() {
        [one] => *one,
        [] => return Err(format!("name one of {}", subjects.map(|s| s.0).join(", "))),
        many => {
            return Err(format!(
                "one trigger names one subject, not {}",
                many.join(" and ")
            ));
        }
    };
    let allowed: &[&str] = match subject {
        "topic" | "im" => &["by", "kind"],
        "state" => &["changed", "from", "to"],
        "presence" => &["to"],
        "relation" => &["of"],
        _ => &[],
    };
    for (name, set) in [
        ("by", def.by.is_some()),
        ("kind", def.kind.is_some()),
        ("changed", def.changed.is_some()),
        ("from", def.from.is_some()),
        ("to", def.to.is_some()),
        ("of", def.of.is_some()),
    ] {
        if set && !allowed.contains(&name) {
            return Err(format!("`{name}` does not go with `{subject}`"));
        }
    }
    let by = By {
        account: def.by,
        kind: def.kind.as_deref().map(actor_kind).transpose()?,
    };
    let some = |v: Option<String>| v.unwrap_or_default();
    Ok(match subject {
        "topic" => {
            let filter = some(def.topic);
            if !valid_filter(&filter) {
                return Err(format!("`{filter}` is not a valid topic filter"));
            }
            Trigger::Topic { filter, by }
        }
        "im" => Trigger::Im {
            to: some(def.im),
            by,
        },
        "state" => Trigger::State {
            thing: some(def.state),
            changed: def.changed,
            from: def.from,
            to: def.to,
        },
        "command" => Trigger::Command {
            thing: some(def.command),
        },
        "ack" => Trigger::Ack {
            thing: some(def.ack),
        },
        "timeout" => Trigger::Timeout {
            thing: some(def.timeout),
        },
        "presence" => {
            let to = match def.to {
                None => None,
                Some(Value::String(s)) if ["online", "away", "offline"].contains(&s.as_str()) => {
                    Some(s)
                }
                Some(other) => {
                    return Err(format!("presence `to: {other}`: online, away or offline"));
                }
            };
            Trigger::Presence {
                account: some(def.presence),
                to,
            }
        }
        "relation" => {
            let name = some(def.relation);
            let kind = RelationKind::parse(&name).ok_or_else(|| {
                let all: Vec<&str> = RelationKind::ALL.iter().map(|k| k.0).collect();
                format!("relation `{name}`: one of {}", all.join(", "))
            })?;
            Trigger::Relation { kind, of: def.of }
        }
        "cron" => {
            let expr = some(def.cron);
            let schedule = expr
                .parse::<croner::Cron>()
                .map_err(|e| format!("cron `{expr}`: {e}"))?;
            Trigger::Cron {
                expr,
                schedule: Box::new(schedule),
            }
        }
        "every" => {
            let text = some(def.every);
            let period = parse_duration(&text)
                .ok_or_else(|| format!("every `{text}`: a duration as `10s`, `5m`, `1h`"))?;
            Trigger::Every { period }
        }
        _ => Trigger::Timer {
            name: some(def.timer),
        },
    })
}

/// The engine that compiles scripts for loading and checking (no functions needed: calls are
/// resolved when a script runs).
pub fn compiler() -> Engine {
    let mut engine = Engine::new_raw();
    engine.set_max_expr_depths(64, 32);
    engine
}

/// A mode's name as written in YAML.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Single => "single",
        Mode::Queued => "queued",
        Mode::Parallel => "parallel",
        Mode::Restart => "restart",
    }
}
