//! The rules engine in the daemon: `mqtter_rules::Rules` started on the folder `rules_dir`,
//! owning the folder's definitions (applied with `mqtter_engine::definitions::sync` at start
//! and at every reload, their effects carried out), fed by the broker's event seam, acting through `BrokerActions`, asking the engine's graph and
//! things' states (`EngineWorld`), keeping its `after` timers in the store, and showing what it does on
//! retained `$SYS/mqtter/rules/...` topics (docs/RULES.md, "Seeing what happened"):
//!
//! - `$SYS/mqtter/rules/status`: the folder's files, the rules in force, every diagnostic with
//!   file, line and column, the engine's counters (published at every reload and when it changes);
//! - `$SYS/mqtter/rules/{id}/counters`: one rule's listing and counters;
//! - `$SYS/mqtter/rules/{id}/traces`: its last runs, oldest first.
//!
//! The counters and traces are published every `[rules] publish_interval_ms` when they changed;
//! a rule that is no longer loaded has its topics cleared. Like every `$SYS` value they are kept
//! in memory only.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use mqtter_engine::definitions::{FolderFile, Targets, sync};
use mqtter_engine::events::Actor;
use mqtter_rules::world::EngineWorld;
use mqtter_rules::{DefinitionsOwner, Rules};

use crate::actions::BrokerActions;
use crate::broker::Broker;
use crate::config::ConfigError;
use crate::message::{Message, now_ms};

/// The retained status of the rules folder.
pub const STATUS_TOPIC: &str = "$SYS/mqtter/rules/status";

/// Where rule `id`'s counters are published.
pub fn counters_topic(id: &str) -> String {
    format!("$SYS/mqtter/rules/{id}/counters")
}

/// Where rule `id`'s last traces are published.
pub fn traces_topic(id: &str) -> String {
    format!("$SYS/mqtter/rules/{id}/traces")
}

/// The running rules engine of the daemon. Stopped by [`Automation::stop`] (or on drop).
pub struct Automation {
    rules: Arc<Rules>,
    publisher: Arc<Publisher>,
    /// Dropped to stop the publishing thread.
    stop: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Automation {
    /// Start the engine on `broker`'s `rules_dir`; `None` when it names no folder. Loads the
    /// folder (logging what it found), adds the engine to the event seam, sets the stored
    /// `after` timers again, and watches the folder.
    pub fn start(broker: &Arc<Broker>) -> Result<Option<Automation>, ConfigError> {
        let dir = &broker.config.rules_dir;
        if dir.as_os_str().is_empty() {
            tracing::info!("no rules_dir: the rules engine is off");
            return Ok(None);
        }
        let config = broker.config.rules.engine()?;
        let world = EngineWorld::new(
            Arc::downgrade(broker),
            |b: &Broker| &b.gate.im,
            Some(|b: &Broker| &b.things.things),
            |b: &Broker, account: &str| b.gate.presence_of(account).as_str().to_owned(),
        );
        let rules = Rules::start_owning(
            dir,
            config,
            Arc::new(BrokerActions::new(broker)),
            Arc::new(world),
            Some(broker.store.clone()),
            Some(definitions_owner(broker)),
        );
        let status = rules.status();
        let errors: usize = status.files.iter().map(|f| f.errors.len()).sum();
        tracing::info!(
            dir = %dir.display(),
            files = status.files.len(),
            rules = status.rules,
            errors,
            warnings = status.warnings.len(),
            timers = status.timers,
            "rules loaded"
        );
        broker.events.add_sink(rules.clone());
        let events = Arc::downgrade(&broker.events);
        rules.on_interest(move || {
            if let Some(events) = events.upgrade() {
                events.refresh_interest();
            }
        });
        let publisher = Arc::new(Publisher {
            broker: Arc::downgrade(broker),
            last: Mutex::default(),
        });
        let (weak, on_reload) = (Arc::downgrade(&rules), publisher.clone());
        rules.on_status(move |_| {
            if let Some(rules) = weak.upgrade() {
                on_reload.publish(&rules);
            }
        });
        if let Err(err) = rules.watch() {
            tracing::error!(dir = %dir.display(), cause = %err, "cannot watch the rules folder: it is loaded once, changes need a restart");
        }
        let interval = Duration::from_millis(broker.config.rules.publish_interval_ms.max(10));
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = {
            let (rules, publisher) = (Arc::downgrade(&rules), publisher.clone());
            std::thread::Builder::new()
                .name("rules-status".into())
                .spawn(move || publish_every(&rules, &publisher, interval, &stopped))
                .map_err(
                    |err| tracing::error!(cause = %err, "cannot start the rules' $SYS publisher"),
                )
                .ok()
        };
        Ok(Some(Automation {
            rules,
            publisher,
            stop: Some(stop),
            thread,
        }))
    }

    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    /// Stop publishing, the watcher, the timers and the workers (a run going on ends first,
    /// within its budget). Pending `after` timers stay in the store for the next start.
    pub fn stop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.rules.stop();
        // The last counters, for whoever looks before the daemon is gone.
        self.publisher.publish(&self.rules);
    }
}

impl Drop for Automation {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.stop();
        }
    }
}

/// The daemon applies the folder's definitions (`mqtter_engine::definitions::sync`: each file
/// owns what it declares) and carries out what that changes: the members and friends told, the
/// relation events emitted (as done by the account `definitions`), rights granted or revoked.
fn definitions_owner(broker: &Arc<Broker>) -> DefinitionsOwner {
    let broker = Arc::downgrade(broker);
    Box::new(move |folder: &[FolderFile<'_>]| {
        let Some(broker) = broker.upgrade() else {
            return Vec::new();
        };
        let targets = Targets {
            accounts: &broker.accounts,
            im: &broker.gate.im,
            things: Some(&broker.things.things),
        };
        let synced = sync(folder, &*broker.store, &targets, now_ms());
        if synced.applied + synced.withdrawn > 0 {
            tracing::info!(
                applied = synced.applied,
                withdrawn = synced.withdrawn,
                problems = synced.diagnostics.len(),
                "definitions in force"
            );
        }
        for account in &synced.effects.removed_accounts {
            let told = broker.evict_account(account);
            tracing::info!(
                account,
                connections = told,
                "account withdrawn: its connections end"
            );
        }
        broker.gate.apply(synced.effects.im, DEFINITIONS_ACTOR);
        for msg in broker
            .things
            .carry(synced.effects.things, &Actor::person(DEFINITIONS_ACTOR))
        {
            if let Err(err) = broker.publish(msg) {
                tracing::warn!(cause = %err, "cannot publish a definitions change");
            }
        }
        synced.diagnostics
    })
}

/// The actor of the events the definitions files cause.
pub const DEFINITIONS_ACTOR: &str = "definitions";

fn publish_every(
    rules: &Weak<Rules>,
    publisher: &Publisher,
    interval: Duration,
    stopped: &Receiver<()>,
) {
    loop {
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(rules) = rules.upgrade() else { return };
        publisher.publish(&rules);
    }
}

/// Publishes the `$SYS/mqtter/rules/...` topics that changed since it last did.
struct Publisher {
    broker: Weak<Broker>,
    /// What each topic carries now. Held while publishing: two publications (a reload's, the
    /// periodic one) never interleave, so the last published is the latest computed.
    last: Mutex<HashMap<String, String>>,
}

impl Publisher {
    fn publish(&self, rules: &Rules) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut now: HashMap<String, String> = HashMap::new();
        let status = rules.status();
        now.insert(STATUS_TOPIC.to_owned(), to_json(&status));
        for report in rules.list() {
            let counters = counters_topic(&report.id);
            let traces = traces_topic(&report.id);
            let text = to_json(&report);
            // A trace is recorded only with a counter that moves: unchanged counters, unchanged
            // traces (no need to serialise them).
            let trace_text = match last.get(&counters) {
                Some(before) if *before == text => last.get(&traces).cloned(),
                _ => None,
            };
            let trace_text = trace_text
                .unwrap_or_else(|| to_json(&rules.traces(&report.id).unwrap_or_default()));
            now.insert(counters, text);
            now.insert(traces, trace_text);
        }
        for (topic, text) in &now {
            if last.get(topic) != Some(text) {
                send(&broker, topic, text.as_bytes().to_vec());
            }
        }
        for topic in last.keys() {
            if !now.contains_key(topic) {
                // No longer loaded: an empty retained message clears the topic.
                send(&broker, topic, Vec::new());
            }
        }
        *last = now;
    }
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
}

fn send(broker: &Broker, topic: &str, payload: Vec<u8>) {
    let msg = Message::system(topic.to_owned(), payload, true);
    if let Err(err) = broker.publish(Arc::new(msg)) {
        tracing::warn!(topic, cause = %err, "cannot publish the rules' $SYS topic");
    }
}
