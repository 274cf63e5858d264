//! What a scenario runs against: the daemon in this process on the virtual clock (the
//! default), or a running daemon over the network in real time (`--broker`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use mqtter_rules::stats::Trace;
use serde_json::Value;

use crate::auth::AccountKind;

use super::Options;
use super::inprocess::InProcess;
use super::scenario::{Edit, Scenario};

pub enum Target {
    InProcess(Box<InProcess>),
}

impl Target {
    pub async fn start(
        scenario: &Scenario,
        rules: Option<&Path>,
        _options: &Options,
    ) -> anyhow::Result<Target> {
        let daemon = InProcess::start(rules, scenario.config.as_deref()).await?;
        Ok(Target::InProcess(Box::new(daemon)))
    }

    pub fn address(&self) -> (String, u16) {
        match self {
            Target::InProcess(d) => (d.host.clone(), d.port),
        }
    }

    pub fn login(
        &self,
        id: &str,
        kind: AccountKind,
        given: Option<&str>,
        defined: Option<&str>,
    ) -> anyhow::Result<String> {
        match self {
            Target::InProcess(d) => d.login(id, kind, given, defined),
        }
    }

    /// Let what is under way finish: fire what is due and wait until the daemon is idle.
    pub async fn settle(&self) {
        match self {
            Target::InProcess(d) => d.advance(Duration::ZERO).await,
        }
    }

    pub async fn advance(&self, by: Duration) -> anyhow::Result<()> {
        match self {
            Target::InProcess(d) => {
                d.advance(by).await;
                Ok(())
            }
        }
    }

    pub fn traces(&self) -> Vec<(String, Trace)> {
        match self {
            Target::InProcess(d) => d.traces(),
        }
    }

    pub fn rule_ids(&self) -> Vec<String> {
        match self {
            Target::InProcess(d) => d.rule_ids(),
        }
    }

    pub fn state(&self, thing: &str) -> anyhow::Result<Value> {
        match self {
            Target::InProcess(d) => d.state(thing),
        }
    }

    /// Change the file, reload, and give the problems the reload reports in it.
    pub async fn edit(&self, edit: &Edit) -> anyhow::Result<Vec<String>> {
        match self {
            Target::InProcess(d) => {
                let Some(dir) = &d.rules_dir else {
                    bail!("the scenario names no rules folder to edit");
                };
                let path = dir.join(&edit.file);
                write_edit(&path, edit)?;
                d.reload(&path).await
            }
        }
    }

    pub async fn wait_offline(&self, account: &str, thing: bool) -> anyhow::Result<()> {
        match self {
            Target::InProcess(d) => d.wait_offline(account, thing).await,
        }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            Target::InProcess(d) => d.stop().await,
        }
    }
}

/// Apply an edit to `path` (written whole, then renamed into place, as editors do).
fn write_edit(path: &Path, edit: &Edit) -> anyhow::Result<()> {
    let text = match (&edit.content, &edit.replace, &edit.with) {
        (Some(content), None, None) => content.clone(),
        (None, Some(replace), Some(with)) => {
            let old = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if !old.contains(replace.as_str()) {
                bail!("{} does not contain {replace:?}", edit.file.display());
            }
            old.replacen(replace.as_str(), with, 1)
        }
        _ => bail!("edit needs `content`, or `replace` and `with`"),
    };
    let temp = path.with_extension("sim-edit");
    std::fs::write(&temp, text).with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
