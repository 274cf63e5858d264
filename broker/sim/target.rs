//! What a scenario runs against: the daemon in this process on the virtual clock (the
//! default), or a running daemon over the network in real time (`--broker`, [`External`]).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use mqtter_rules::stats::Trace;
use serde_json::Value;

use crate::auth::AccountKind;

use super::Options;
use super::external::{self, External};
use super::inprocess::InProcess;
use super::scenario::{Edit, Scenario};
use super::thing::Thing;

pub enum Target {
    InProcess(Box<InProcess>),
    External(Box<External>),
}

impl Target {
    pub async fn start(
        scenario: &Scenario,
        rules: Option<&Path>,
        options: &Options,
    ) -> anyhow::Result<Target> {
        if let Some(url) = &options.broker {
            let (host, port) = external::parse_url(url)?;
            let daemon =
                External::connect(&host, port, options.credentials(), options.max_advance).await?;
            return Ok(Target::External(Box::new(daemon)));
        }
        let daemon = InProcess::start(rules, scenario.config.as_deref()).await?;
        Ok(Target::InProcess(Box::new(daemon)))
    }

    pub fn is_external(&self) -> bool {
        matches!(self, Target::External(_))
    }

    pub fn address(&self) -> (String, u16) {
        match self {
            Target::InProcess(d) => (d.host.clone(), d.port),
            Target::External(d) => (d.host.clone(), d.port),
        }
    }

    /// The password `id` logs in with. In-process the account is made or set; a daemon that
    /// runs elsewhere must know it already.
    pub fn login(
        &self,
        id: &str,
        kind: AccountKind,
        given: Option<&str>,
        defined: Option<&str>,
    ) -> anyhow::Result<String> {
        match self {
            Target::InProcess(d) => d.login(id, kind, given, defined),
            Target::External(_) => given.or(defined).map(str::to_owned).ok_or_else(|| {
                anyhow!(
                    "{id}: no password (in external mode the simulator makes no accounts: give \
                     `password:` in the scenario, or a plain one in the rules folder)"
                )
            }),
        }
    }

    /// Let what is under way finish: in-process, fire what is due and wait until the daemon
    /// is idle; external, a short pause.
    pub async fn settle(&self) {
        match self {
            Target::InProcess(d) => d.advance(Duration::ZERO).await,
            Target::External(d) => d.settle().await,
        }
    }

    /// Whether the clock may move by `by`: in-process always; externally, where time is
    /// real and moving it means waiting, up to `--max-advance`.
    pub fn check_advance(&self, by: Duration) -> anyhow::Result<()> {
        match self {
            Target::InProcess(_) => Ok(()),
            Target::External(d) => d.check_advance(by),
        }
    }

    pub async fn advance(&self, by: Duration) -> anyhow::Result<()> {
        match self {
            Target::InProcess(d) => {
                d.advance(by).await;
                Ok(())
            }
            Target::External(d) => d.advance(by).await,
        }
    }

    pub fn traces(&self) -> Vec<(String, Trace)> {
        match self {
            Target::InProcess(d) => d.traces(),
            Target::External(d) => d.traces(),
        }
    }

    pub fn rule_ids(&self) -> Vec<String> {
        match self {
            Target::InProcess(d) => d.rule_ids(),
            Target::External(d) => d.rule_ids(),
        }
    }

    /// A thing's state document: in-process from the daemon, external by asking the daemon
    /// as the thing actor (`thing.state` on `$things/req`).
    pub async fn state(
        &self,
        thing: &str,
        actors: &std::collections::BTreeMap<String, Thing>,
    ) -> anyhow::Result<Value> {
        match self {
            Target::InProcess(d) => d.state(thing),
            Target::External(_) => match actors.get(thing) {
                Some(actor) => actor.read_state().await,
                None => bail!(
                    "in external mode expect_state asks the daemon as the thing: declare {thing} \
                     under actors:"
                ),
            },
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
            Target::External(_) => bail!(
                "edit: in external mode the simulator does not change the daemon's files \
                 (run the scenario in-process)"
            ),
        }
    }

    pub async fn wait_offline(&self, account: &str, thing: bool) -> anyhow::Result<()> {
        match self {
            Target::InProcess(d) => d.wait_offline(account, thing).await,
            Target::External(d) => {
                d.settle().await;
                Ok(())
            }
        }
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            Target::InProcess(d) => d.stop().await,
            Target::External(d) => d.stop().await,
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
