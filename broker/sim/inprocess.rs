//! In-process mode: the daemon started inside the simulator's process, on a temporary data
//! folder, listening on 127.0.0.1:0, with a copy of the scenario's rules folder (so that `edit`
//! steps never touch the original), on the virtual clock the scenario advances.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use mqtter_engine::clock::clock;
use mqtter_rules::Rules;
use mqtter_rules::stats::Trace;
use serde_json::Value;

use crate::auth::AccountKind;
use crate::broker::Broker;
use crate::config::{Config, Durability};
use crate::daemon::Daemon;

use super::mqtt::PATIENCE;

/// A running in-process daemon.
pub struct InProcess {
    pub host: String,
    pub port: u16,
    broker: Arc<Broker>,
    rules: Option<Arc<Rules>>,
    /// The scenario's copy of the rules folder.
    pub rules_dir: Option<PathBuf>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// The traces a rule keeps in the simulator: every run of a scenario.
const TRACES: usize = 100_000;

impl InProcess {
    /// Start the daemon with `rules` (copied) and the scenario's configuration text.
    pub async fn start(rules: Option<&Path>, config: Option<&str>) -> anyhow::Result<InProcess> {
        let dir = tempfile::Builder::new()
            .prefix("mqtter-sim-")
            .tempdir()
            .context("cannot make a temporary folder")?;
        let mut cfg = match config {
            Some(text) => toml::from_str::<Config>(text)
                .map_err(|err| anyhow::anyhow!("the scenario's config: {err}"))?,
            None => Config::default(),
        };
        cfg.listen = "127.0.0.1:0".into();
        cfg.ws_listen = String::new();
        cfg.metrics_listen = String::new();
        cfg.data = dir.path().join("data");
        cfg.allow_anonymous = true;
        cfg.durability = Durability::Async;
        cfg.sys_interval = 0;
        cfg.rules.traces = TRACES;
        let rules_dir = match rules {
            Some(source) => {
                let copy = dir.path().join("rules");
                copy_dir(source, &copy).with_context(|| {
                    format!("cannot copy the rules folder {}", source.display())
                })?;
                cfg.rules_dir = copy.clone();
                Some(copy)
            }
            None => None,
        };
        let daemon = Daemon::bind(cfg).await?;
        let (broker, rules) = (daemon.broker().clone(), daemon.rules().cloned());
        let port = daemon.mqtt.port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(daemon.run(async move {
            let _ = stopped.await;
        }));
        Ok(InProcess {
            host: "127.0.0.1".into(),
            port,
            broker,
            rules,
            rules_dir,
            stop: Some(stop),
            served: Some(served),
            _dir: dir,
        })
    }

    /// The password an actor logs in with: the one given, else the definitions' plain one,
    /// else one set now (the account is made if no definition names it).
    pub fn login(
        &self,
        id: &str,
        kind: AccountKind,
        given: Option<&str>,
        defined: Option<&str>,
    ) -> anyhow::Result<String> {
        let accounts = &self.broker.accounts;
        let existing = accounts.get(id)?;
        if let Some(record) = &existing
            && record.kind != kind
        {
            bail!("{id} is a {:?} account, not a {kind:?}", record.kind);
        }
        let password = given
            .or(defined)
            .map_or_else(|| format!("sim-{id}"), str::to_owned);
        match existing {
            None => {
                accounts.add(id, kind, &password, crate::message::now_ms())?;
                // The relationship graph learns of it too, as of an account added while the
                // daemon runs: a person's device is an IM member (its sync ends) only then.
                self.broker.gate.im.account_added(id, kind);
            }
            Some(_) if given.is_some() || defined.is_none() => {
                accounts.set_password(id, &password)?;
            }
            Some(_) => {}
        }
        Ok(password)
    }

    /// Move the virtual clock by `by`, firing what falls due, and let the daemon settle.
    pub async fn advance(&self, by: Duration) {
        let _ = tokio::task::spawn_blocking(move || clock().advance(by)).await;
    }

    /// Every trace of every rule loaded, oldest first per rule.
    pub fn traces(&self) -> Vec<(String, Trace)> {
        let Some(rules) = &self.rules else {
            return Vec::new();
        };
        let mut all = Vec::new();
        for report in rules.list() {
            for trace in rules.traces(&report.id).unwrap_or_default() {
                all.push((report.id.clone(), trace));
            }
        }
        all
    }

    /// The rule ids loaded.
    pub fn rule_ids(&self) -> Vec<String> {
        self.rules
            .as_ref()
            .map(|r| r.list().into_iter().map(|r| r.id).collect())
            .unwrap_or_default()
    }

    /// A thing's state document.
    pub fn state(&self, thing: &str) -> anyhow::Result<Value> {
        let doc = self.broker.things.things.current_state(thing)?;
        Ok(doc.state)
    }

    /// Reload the rules folder now (after an edit) and give the status's problems of `file`.
    pub async fn reload(&self, file: &Path) -> anyhow::Result<Vec<String>> {
        let Some(rules) = self.rules.clone() else {
            bail!("the scenario names no rules folder");
        };
        let status = tokio::task::spawn_blocking(move || rules.reload()).await?;
        let mut problems = Vec::new();
        for f in &status.files {
            if f.file.ends_with(file) || f.file == file {
                for error in &f.errors {
                    problems.push(error.to_string());
                }
            }
        }
        Ok(problems)
    }

    /// Wait until the broker has seen `account`'s last device go.
    pub async fn wait_offline(&self, account: &str, thing: bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let online = if thing {
                self.broker.things.things.is_online(account)
            } else {
                self.broker.gate.is_online(account)
            };
            if !online {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the broker still has {account} online {PATIENCE:?} after its DISCONNECT");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stop the daemon (flushes its store) and wait for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await??;
        }
        Ok(())
    }
}

/// The plain passwords and secrets the definitions of `dir` give, by account.
pub fn defined_passwords(dir: &Path) -> std::collections::HashMap<String, String> {
    let mut found = std::collections::HashMap::new();
    for file in walk(dir) {
        let is_yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if !is_yaml {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if let Ok(defs) = mqtter_engine::definitions::parse(&file, &text) {
            for account in defs.persons.into_iter().chain(defs.things) {
                if let Some(password) = account.password {
                    found.insert(account.id, password);
                }
            }
        }
    }
    found
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Copy `from` into `to`, recursively; the scenarios' own folder (`scenarios/`) is left out.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            if entry.file_name() == "scenarios" {
                continue;
            }
            copy_dir(&path, &target)?;
        } else if !path.to_string_lossy().ends_with(".sim.yaml") {
            std::fs::copy(&path, &target)?;
        }
    }
    Ok(())
}
