//! Reflexes: a virtual thing described by a small YAML file (with Rhai for what YAML cannot
//! say), run against the server through a [`ThingClient`]. `mqtter thing FILE` runs one in real
//! time; a simulator runs many on its virtual clock. The format is in docs/CLIENT.md:
//!
//! ```yaml
//! thing: lamp-1
//! state: { on: false }          # reported once after connect
//! on_command:                   # first match wins; none => ack "error: unsupported"
//!   - match: { on: true }       # a subset the command body must contain
//!     delay: 500ms              # on the caller's timer
//!     ack: ok                   # ok | "error: <message>" | none
//!     state: { on: "$command.on" }
//!     event: { kind: switched }
//!   - do: '#{ ack: "ok", state: #{ level: command.level } }'   # or script: lamp.rhai
//! every:
//!   - interval: 30s
//!     state: { temperature: 21.5 }
//! ```
//!
//! # Layout
//! - `model.rs`: the file as written (serde, with places).
//! - `load.rs`: checks and compiles it ([`Reflex::from_file`], [`Reflex::from_yaml`]); every
//!   problem is a [`ReflexError`] with file, line and column.
//! - `script.rs`: the Rhai engine (limits) and script runs.
//! - `run.rs`: the runner ([`Reflex::run`]).
//!
//! Time: the runner never reads a clock; delays and intervals wait on the [`ReflexTimer`] it is
//! given ([`RealTime`] for real time).

mod load;
mod model;
mod run;
mod script;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::client::EventStream;
use crate::things::{Ack, Command, ThingClient};

/// The timer a reflex waits on for `delay` and `interval`.
pub trait ReflexTimer: Send + Sync + 'static {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// Real time (tokio's timer).
#[derive(Debug, Clone, Copy, Default)]
pub struct RealTime;

impl ReflexTimer for RealTime {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A reflex file that could not be loaded: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", file.display())]
pub struct ReflexError {
    pub file: PathBuf,
    /// 1-based; 0 when unknown (a file that cannot be read).
    pub line: u64,
    pub column: u64,
    pub message: String,
}

/// What a reflex did: for a command (`command_id`), or on its own (the initial state, an
/// `every:` tick). `error` says what failed (a script, a refused ack), if anything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReflexAction {
    pub command_id: Option<String>,
    /// The answer given (`None`: none, as `ack: none` says, or no command).
    pub ack: Option<Ack>,
    /// The state patch reported.
    pub state: Option<Value>,
    /// The event emitted.
    pub event: Option<Value>,
    pub error: Option<String>,
}

/// What a reflex run reports with [`Reflex::run_reported`], in the order it happened: each
/// command as it arrives (before its `delay`), each [`ReflexAction`], and each lost
/// connection (the thing connects again by itself after `retry_in`).
#[derive(Debug, Clone, PartialEq)]
pub enum ReflexReport {
    Received(Command),
    Did(ReflexAction),
    Disconnected { reason: String, retry_in: Duration },
}

/// Where a run tells what it does.
#[derive(Clone)]
pub(super) enum Observer {
    Actions(mpsc::UnboundedSender<ReflexAction>),
    Reports(mpsc::UnboundedSender<ReflexReport>),
}

impl Observer {
    pub(super) fn received(&self, cmd: &Command) {
        if let Observer::Reports(tx) = self {
            let _ = tx.send(ReflexReport::Received(cmd.clone()));
        }
    }

    pub(super) fn disconnected(&self, reason: &str, retry_in: Duration) {
        if let Observer::Reports(tx) = self {
            let _ = tx.send(ReflexReport::Disconnected {
                reason: reason.to_owned(),
                retry_in,
            });
        }
    }

    pub(super) fn did(&self, action: ReflexAction) {
        match self {
            Observer::Actions(tx) => {
                let _ = tx.send(action);
            }
            Observer::Reports(tx) => {
                let _ = tx.send(ReflexReport::Did(action));
            }
        }
    }
}

/// A loaded reflex file: cheap to clone, one per file for any number of things.
#[derive(Clone)]
pub struct Reflex {
    spec: Arc<load::Spec>,
}

impl std::fmt::Debug for Reflex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflex")
            .field("thing", &self.spec.thing)
            .field("on_command", &self.spec.on_command.len())
            .field("every", &self.spec.every.len())
            .finish()
    }
}

impl Reflex {
    /// Load a reflex file; its scripts are found next to it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Reflex, ReflexError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ReflexError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read it: {e}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::load(&text, path, base)
    }

    /// Load a reflex from its text; `script:` files are found in `base_dir`. Errors name the
    /// file `<reflex>`.
    pub fn from_yaml(text: &str, base_dir: impl AsRef<Path>) -> Result<Reflex, ReflexError> {
        Self::load(text, Path::new("<reflex>"), base_dir.as_ref())
    }

    fn load(text: &str, file: &Path, base_dir: &Path) -> Result<Reflex, ReflexError> {
        Ok(Reflex {
            spec: Arc::new(load::load(text, file, base_dir)?),
        })
    }

    /// The thing the file names (`thing:`).
    pub fn thing(&self) -> &str {
        &self.spec.thing
    }

    /// Whether it reports a `state:` once connected (the first thing a run does).
    pub fn reports_state(&self) -> bool {
        self.spec.state.is_some()
    }

    /// Run as `thing` (connected with [`ThingClient::connect`], `events` its stream) until the
    /// connection is closed ([`ThingClient::close`]): the initial state, then each command in
    /// arrival order (one at a time, as a device with one loop), and the `every:` entries.
    pub async fn run(&self, thing: ThingClient, events: EventStream, timer: Arc<dyn ReflexTimer>) {
        self.run_observed(thing, events, timer, None).await
    }

    /// As [`Reflex::run`], telling `observer` each [`ReflexAction`].
    pub async fn run_observed(
        &self,
        thing: ThingClient,
        events: EventStream,
        timer: Arc<dyn ReflexTimer>,
        observer: Option<mpsc::UnboundedSender<ReflexAction>>,
    ) {
        self.run_with(thing, events, timer, observer.map(Observer::Actions))
            .await
    }

    /// As [`Reflex::run`], telling `reports` each command as it arrives and each
    /// [`ReflexAction`] (what `mqtter thing` prints).
    pub async fn run_reported(
        &self,
        thing: ThingClient,
        events: EventStream,
        timer: Arc<dyn ReflexTimer>,
        reports: mpsc::UnboundedSender<ReflexReport>,
    ) {
        self.run_with(thing, events, timer, Some(Observer::Reports(reports)))
            .await
    }

    async fn run_with(
        &self,
        thing: ThingClient,
        events: EventStream,
        timer: Arc<dyn ReflexTimer>,
        observer: Option<Observer>,
    ) {
        let runner = run::Runner {
            spec: self.spec.clone(),
            thing,
            timer,
            observer,
            state: Arc::new(Mutex::new(Value::Object(Default::default()))),
        };
        runner.run(events).await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::load::{AckSpec, parse_duration};
    use super::run::{fill, matches, merge};
    use super::*;

    #[test]
    fn durations_acks_matches_templates_and_merges() {
        assert_eq!(
            parse_duration(&json!("500ms")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration(&json!("1.5s")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration(&json!("2m")), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration(&json!(3)), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration(&json!("soon")), None);
        assert_eq!(
            AckSpec::parse("error: jammed"),
            Some(AckSpec::Error("jammed".into()))
        );
        assert_eq!(AckSpec::parse("maybe"), None);
        assert!(matches(&json!({"on": true}), &json!({"on": true, "x": 1})));
        assert!(!matches(&json!({"on": true}), &json!({"on": false})));
        assert!(matches(
            &json!({"a": {"b": 1}}),
            &json!({"a": {"b": 1, "c": 2}})
        ));
        let body = json!({"level": 7, "to": {"x": 1}});
        assert_eq!(
            fill(
                &json!({"l": "$command.level", "x": "$command.to.x", "n": "$command.no", "k": "kept"}),
                &body
            ),
            json!({"l": 7, "x": 1, "n": null, "k": "kept"})
        );
        let mut doc = json!({"a": 1, "b": {"c": 2}});
        merge(&mut doc, &json!({"a": null, "b": {"d": 3}}));
        assert_eq!(doc, json!({"b": {"c": 2, "d": 3}}));
    }

    #[test]
    fn bad_files_say_where() {
        let err = Reflex::from_yaml("thing: lamp\non_command:\n  - ack: maybe\n", ".").unwrap_err();
        assert_eq!((err.line, err.column), (3, 10), "{err}");
        assert!(err.to_string().starts_with("<reflex>:3:10: "), "{err}");
        let err = Reflex::from_yaml("thing: lamp\nstate: { on: false\n", ".").unwrap_err();
        assert!(err.line >= 2, "{err}");
        let err = Reflex::from_yaml("thing: lamp\nbogus: 1\n", ".").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        let err = Reflex::from_yaml("thing: lamp\non_command:\n  - do: '#{ ack: \"ok\" '\n", ".")
            .unwrap_err();
        assert_eq!(err.line, 3, "{err}");
        let err = Reflex::from_yaml(
            "thing: lamp\nevery:\n  - interval: never\n    state: {}\n",
            ".",
        )
        .unwrap_err();
        assert_eq!((err.line, err.column), (3, 15), "{err}");
        let ok = Reflex::from_yaml(
            "thing: lamp\nstate: { on: false }\non_command:\n  - match: { on: true }\n    ack: ok\n  - do: |\n      #{ ack: \"none\" }\n",
            ".",
        )
        .unwrap();
        assert_eq!(ok.thing(), "lamp");
    }
}
