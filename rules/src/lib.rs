//! MQTTER's rules engine: rules in YAML files and Rhai scripts from one watched folder, run on the
//! engine's events, acting through the engine's actions.
//!
//! # Layout
//! - [`model`]: what a rule is, as written (`RuleDef`) and as run (`Rule`, `Trigger`, `Options`).
//! - [`loader`]: reads the folder into rules and definitions, with a [`Diagnostic`] per problem.
//! - [`diagnostic`]: file, line, column, message and a rustc-like snippet.
//! - [`check`]: validates a folder without a broker (`mqtter check DIR`): references and loops.
//! - [`index`]: which rules an event can fire (a trie of topic filters, a map of subjects).
//! - [`world`]: the read-only questions a script can ask (`World`), and the folder's answers.
//! - [`exec`]: the sink (route an event to its rules, queue them) and the workers that run them.
//! - `repeats`: runs per (chain, rule), for `max_repeats`.
//! - [`reads`]: which event fields a rule's scripts read (only those are built for a run).
//! - `api`: the Rhai engine of a worker, its limits and the functions a script calls.
//! - `timers`: `after`, debounced runs and schedules, on one thread.
//! - [`stats`]: per-rule counters and traces.
//! - [`service`]: [`Rules`], the running engine: reload, watch, status, listings.
//! - [`definitions`]: the folder's definitions files (applied by the daemon at every load).
//!
//! **Architecture Invariant:** this crate depends on `mqtter-engine` only: no MQTT, no network,
//! no daemon types. Events come in through the engine's event seam and actions go out through it.

mod api;
pub mod check;
pub mod definitions;
pub mod diagnostic;
pub mod exec;
pub mod index;
pub mod loader;
pub mod model;
pub mod reads;
mod repeats;
mod script_event;
pub mod service;
pub mod stats;
mod timers;
pub mod world;

pub use mqtter_engine::events;

/// The time zone of schedules and the script's clock (`[rules] time_zone`).
pub use chrono_tz::Tz as TimeZone;

pub use check::{CheckReport, check_dir};
pub use diagnostic::{Diagnostic, Severity};
pub use exec::Config;
pub use loader::{LoadConfig, Loaded, load_dir};
pub use model::{Rule, RuleId, Trigger};
pub use service::{DefinitionsOwner, Rules, Status};
