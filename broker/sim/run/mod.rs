//! Running one scenario: start the daemon (or reach the external one), connect the actors,
//! run the steps in order, each reported as it ends, then stop everything.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use super::Options;
use super::chain;
use super::log::{self, Log, OBSERVER};
use super::mqtt::{Conn, Login};
use super::person::Person;
use super::report::{self, ScenarioResult, StepResult};
use super::scenario::{self, Actor, Expect, ExpectChain, ExpectState, Scenario, Step};
use super::target::Target;
use super::thing::{self, Thing};

mod expect;
use expect::describe_expect;

/// Run the scenario in `file`, printing each step as it ends.
pub async fn run_file(file: &Path, options: &Options) -> ScenarioResult {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".sim.yaml").to_owned())
        .unwrap_or_default();
    let mut result = ScenarioResult {
        file: file.to_owned(),
        name: name.clone(),
        steps: Vec::new(),
        error: None,
        skipped: None,
    };
    let parsed = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {}", file.display()))
        .and_then(|text| Scenario::parse(file, &text).map_err(anyhow::Error::from));
    let scenario = match parsed {
        Ok(scenario) => scenario,
        Err(err) => {
            report::print_header(file, &name);
            result.error = Some(format!("{err:#}"));
            report::print_error(&format!("{err:#}"));
            return result;
        }
    };
    if let Some(given) = &scenario.name {
        result.name = given.clone();
    }
    report::print_header(file, &result.name);
    if options.broker.is_some()
        && let Some(reason) = in_process_only(&scenario)
    {
        let reason = format!("in external mode: {reason} (run it in-process)");
        report::print_skip(&reason);
        result.skipped = Some(reason);
        return result;
    }
    let base = file.parent().unwrap_or(Path::new(".")).to_owned();
    let mut runner = match Runner::start(&scenario, &base, options).await {
        Ok(runner) => runner,
        Err(err) => {
            result.error = Some(format!("{err:#}"));
            report::print_error(&format!("cannot start: {err:#}"));
            return result;
        }
    };
    for (i, step) in scenario.steps.iter().enumerate() {
        let started = Instant::now();
        let (title, outcome) = runner.step(step).await;
        let step_result = StepResult {
            title,
            ok: outcome.is_ok(),
            detail: outcome.err().unwrap_or_default(),
            seconds: started.elapsed().as_secs_f64(),
        };
        report::print_step(i + 1, &step_result);
        result.steps.push(step_result);
    }
    if let Err(err) = runner.stop().await {
        result.error = Some(format!("the daemon did not stop cleanly: {err:#}"));
        report::print_error(&format!("stop: {err:#}"));
    }
    result
}

/// Why a scenario needs in-process mode, if it does: what it asks for that a daemon running
/// elsewhere cannot give (its clock set, its configuration, its files changed).
pub fn in_process_only(scenario: &Scenario) -> Option<String> {
    let mut needs = Vec::new();
    if scenario.start.is_some() {
        needs.push("`start` sets the virtual clock, and the daemon's clock is real");
    }
    if scenario.config.is_some() {
        needs.push("`config` configures the simulator's own daemon");
    }
    if scenario.steps.iter().any(|s| s.edit.is_some()) {
        needs.push("an `edit` step changes rule files, and the daemon's are not the simulator's");
    }
    (!needs.is_empty()).then(|| needs.join("; "))
}

/// A step's failure: its lines.
type Outcome = Result<(), Vec<String>>;

fn fail(line: impl Into<String>) -> Outcome {
    Err(vec![line.into()])
}

struct Runner {
    target: Target,
    log: Arc<Log>,
    persons: BTreeMap<String, Person>,
    things: BTreeMap<String, Thing>,
    /// Anonymous: plain topics as any subscriber sees them, and publishes without `as`.
    observer: Conn,
    /// Chains an `expect_chain` matched already.
    used_chains: HashSet<String>,
    /// Chains that ran before the scenario (a daemon that runs on): not this run's.
    before: HashSet<String>,
    options: Options,
}

impl Runner {
    async fn start(scenario: &Scenario, base: &Path, options: &Options) -> anyhow::Result<Runner> {
        // `--rules` (a changed rules folder to replay against) overrides the scenario's.
        let rules = options
            .rules
            .clone()
            .or_else(|| scenario.rules.as_ref().map(|r| base.join(r)));
        if let Some(dir) = &rules
            && !dir.is_dir()
        {
            bail!("rules: {} is not a folder", dir.display());
        }
        let target = Target::start(scenario, rules.as_deref(), options).await?;
        let defined = rules
            .as_deref()
            .map(super::inprocess::defined_passwords)
            .unwrap_or_default();
        let log = Arc::new(Log::default());
        let (host, port) = target.address();
        let observer_log = log.clone();
        let observer = Conn::connect(
            &Login {
                host: host.clone(),
                port,
                client_id: format!("sim-observer-{}", std::process::id()),
                credentials: options.credentials(),
                no_sync: true,
            },
            move |incoming| {
                let value =
                    serde_json::from_slice::<Value>(&incoming.payload).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&incoming.payload).into_owned())
                    });
                observer_log.push(OBSERVER, &incoming.topic, value);
            },
        )
        .await
        .context("the simulator's observer of plain topics")?;
        observer.subscribe("#").await?;
        let mut runner = Runner {
            target,
            log,
            persons: BTreeMap::new(),
            things: BTreeMap::new(),
            observer,
            used_chains: HashSet::new(),
            before: HashSet::new(),
            options: options.clone(),
        };
        let mut to_connect = Vec::new();
        for actor in &scenario.actors {
            match actor {
                Actor::Person(p) => {
                    let password = runner.target.login(
                        &p.person,
                        crate::auth::AccountKind::Person,
                        p.password.as_deref(),
                        defined.get(&p.person).map(String::as_str),
                    )?;
                    let replies = p.replies.iter().map(clone_reply).collect();
                    runner.persons.insert(
                        p.person.clone(),
                        Person::new(&p.person, &password, &host, port, replies),
                    );
                    if p.connect {
                        to_connect.push(p.person.clone());
                    }
                }
                Actor::Thing(t) => {
                    let reflex = thing::load_reflex(t, base)?;
                    let password = runner.target.login(
                        &t.thing,
                        crate::auth::AccountKind::Thing,
                        t.password.as_deref(),
                        defined.get(&t.thing).map(String::as_str),
                    )?;
                    let thing = Thing::new(&t.thing, &password, (&host, port), reflex);
                    runner.things.insert(t.thing.clone(), thing);
                    if t.connect {
                        to_connect.push(t.thing.clone());
                    }
                }
            }
        }
        for id in to_connect {
            runner.connect(&id).await?;
        }
        // What connecting set off (initial state reports) has run before the first step.
        runner.target.settle().await;
        if runner.target.is_external() {
            // A daemon that runs on kept what earlier runs left for these devices, and the
            // traces of earlier chains: none of it is this run's.
            runner.log.consume_all();
            for (_, trace) in runner.target.traces() {
                runner.used_chains.insert(trace.chain.to_string());
                runner.before.insert(trace.chain.to_string());
            }
        }
        Ok(runner)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        for person in self.persons.values_mut() {
            if person.connected() {
                let _ = person.disconnect().await;
            }
        }
        for thing in self.things.values_mut() {
            if thing.connected() {
                let _ = thing.disconnect().await;
            }
        }
        self.observer.close().await;
        self.target.stop().await
    }

    async fn connect(&mut self, id: &str) -> anyhow::Result<()> {
        if let Some(person) = self.persons.get_mut(id) {
            return person.connect(&self.log).await;
        }
        if let Some(thing) = self.things.get_mut(id) {
            return thing.connect(&self.log).await;
        }
        bail!("no actor {id} (declare it under actors:)")
    }

    async fn disconnect(&mut self, id: &str) -> anyhow::Result<()> {
        if let Some(person) = self.persons.get_mut(id) {
            person.disconnect().await?;
            return self.target.wait_offline(id, false).await;
        }
        if let Some(thing) = self.things.get_mut(id) {
            thing.disconnect().await?;
            return self.target.wait_offline(id, true).await;
        }
        bail!("no actor {id} (declare it under actors:)")
    }

    /// Run one step: its title and outcome.
    async fn step(&mut self, step: &Step) -> (String, Outcome) {
        let kinds = [
            step.publish.is_some(),
            step.command.is_some(),
            step.connect.is_some(),
            step.disconnect.is_some(),
            step.advance.is_some(),
            step.edit.is_some(),
            step.expect.is_some(),
            step.expect_none.is_some(),
            step.expect_chain.is_some(),
            step.expect_state.is_some(),
            step.expect_fired.is_some(),
        ];
        let title = step.name.clone();
        if kinds.iter().filter(|k| **k).count() != 1 {
            let title = title.unwrap_or_else(|| "(step)".into());
            return (
                title,
                fail(
                    "a step has exactly one of publish, command, connect, disconnect, advance, edit, expect, expect_none, expect_chain, expect_state, expect_fired",
                ),
            );
        }
        let (auto_title, outcome) = if let Some(publish) = &step.publish {
            let title = describe_publish(publish);
            (title, self.publish(publish).await.map_err(lines))
        } else if let Some(command) = &step.command {
            let title = format!(
                "command {} as {}: {}",
                command.thing, command.actor, command.body
            );
            (title, self.command(command).await.map_err(lines))
        } else if let Some(id) = &step.connect {
            let outcome = self.connect(id).await;
            self.target.settle().await;
            (format!("connect {id}"), outcome.map_err(lines))
        } else if let Some(id) = &step.disconnect {
            let outcome = self.disconnect(id).await;
            self.target.settle().await;
            (format!("disconnect {id}"), outcome.map_err(lines))
        } else if let Some(by) = &step.advance {
            let outcome = self.advance(by).await;
            (format!("advance {by}"), outcome.map_err(lines))
        } else if let Some(edit) = &step.edit {
            let title = format!("edit {}", edit.file.display());
            (title, self.edit(edit).await)
        } else if let Some(want) = &step.expect {
            (describe_expect("expect", want), self.expect(want).await)
        } else if let Some(want) = &step.expect_none {
            (
                describe_expect("expect_none", want),
                self.expect_none(want).await,
            )
        } else if let Some(want) = &step.expect_chain {
            let title = format!("expect_chain {}", chain::describe(&want.links()));
            (title, self.expect_chain(want).await)
        } else if let Some(want) = &step.expect_state {
            let title = format!("expect_state {} {}", want.thing, want.state);
            (title, self.expect_state(want).await)
        } else if let Some(want) = &step.expect_fired {
            let title = format!(
                "expect_fired {}",
                want.iter()
                    .map(|(rule, n)| format!("{rule} x{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            (title, self.expect_fired(want).await)
        } else {
            unreachable!("one kind is set")
        };
        (title.unwrap_or(auto_title), outcome)
    }

    async fn publish(&mut self, p: &scenario::Publish) -> anyhow::Result<()> {
        let payload = |value: &Value| match value {
            Value::String(text) => text.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        if let Some(to) = &p.to {
            let Some(actor) = &p.actor else {
                bail!("an IM message (`to`) needs `as: PERSON`");
            };
            let body = match (&p.body, &p.text) {
                (Some(body), _) => body.clone(),
                (None, Some(text)) => json!({ "text": text }),
                (None, None) => bail!("an IM message needs `text` or `body`"),
            };
            let person = self
                .persons
                .get(actor)
                .ok_or_else(|| anyhow!("no person actor {actor}"))?;
            person.send(to, body).await?;
        } else if p.state.is_some() || p.event.is_some() {
            let Some(actor) = &p.actor else {
                bail!("a state report or event needs `as: THING`");
            };
            let thing = self
                .things
                .get(actor)
                .ok_or_else(|| anyhow!("no thing actor {actor}"))?;
            if let Some(state) = &p.state {
                thing.report_state(state.clone()).await?;
            }
            if let Some(event) = &p.event {
                thing.report_event(event.clone()).await?;
            }
        } else if let Some(topic) = &p.topic {
            let bytes = p.payload.as_ref().map(payload).unwrap_or_default();
            self.publish_as(p.actor.as_deref(), topic, bytes, p.retain, Vec::new())
                .await?;
        } else {
            bail!("publish needs `to` (IM), `state`/`event` (a thing) or `topic`");
        }
        self.target.settle().await;
        Ok(())
    }

    async fn publish_as(
        &mut self,
        actor: Option<&str>,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        props: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        match actor {
            None => self.observer.publish(topic, payload, retain, props).await,
            Some(id) => {
                if let Some(person) = self.persons.get_mut(id) {
                    person.publish(topic, payload, retain, props).await
                } else if let Some(thing) = self.things.get_mut(id) {
                    thing.publish(topic, payload, retain, props).await
                } else {
                    bail!("no actor {id}")
                }
            }
        }
    }

    async fn command(&mut self, c: &scenario::Command) -> anyhow::Result<()> {
        let mut props = Vec::new();
        if let Some(ttl) = c.ttl {
            props.push(("ttl".to_owned(), ttl.to_string()));
        }
        let topic = format!("thing/{}/cmd", c.thing);
        self.publish_as(
            Some(&c.actor),
            &topic,
            c.body.to_string().into_bytes(),
            false,
            props,
        )
        .await?;
        self.target.settle().await;
        Ok(())
    }

    async fn advance(&mut self, by: &str) -> anyhow::Result<()> {
        let by = scenario::duration(by)?;
        self.target.advance(by).await?;
        self.quiet().await;
        Ok(())
    }

    async fn edit(&mut self, edit: &scenario::Edit) -> Outcome {
        let result = self.target.edit(edit).await;
        match result {
            Err(err) => Err(lines(err)),
            Ok(problems) if edit.fails && problems.is_empty() => {
                fail("the reload was expected to report an error in this file; it loaded")
            }
            Ok(problems) if !edit.fails && !problems.is_empty() => {
                let mut out = vec![
                    "the file does not load (its last good version stays in force):".to_owned(),
                ];
                out.extend(problems);
                Err(out)
            }
            Ok(_) => Ok(()),
        }
    }

    /// Wait (real time, bounded) until the log has been still for a moment and the daemon
    /// settled: what is in flight arrives before the clock moves on.
    async fn quiet(&self) {
        self.target.settle().await;
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut seen = self.log.count();
        loop {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let now = self.log.count();
            if now == seen || Instant::now() > deadline {
                break;
            }
            seen = now;
        }
    }

    /// Advance by `within` in tenths until `done` says yes, then wait real time (bounded).
    async fn wait_until<T>(
        &mut self,
        within: Option<&str>,
        mut done: impl AsyncFnMut(&mut Runner) -> Option<T>,
    ) -> anyhow::Result<Option<T>> {
        let within = within
            .map(scenario::duration)
            .transpose()?
            .unwrap_or_default();
        self.target.settle().await;
        if let Some(found) = done(self).await {
            return Ok(Some(found));
        }
        if !within.is_zero() {
            self.target.check_advance(within)?;
            self.quiet().await;
            let chunk = (within / 10).max(Duration::from_millis(1));
            let mut advanced = Duration::ZERO;
            while advanced < within {
                if let Some(found) = done(self).await {
                    return Ok(Some(found));
                }
                let by = chunk.min(within - advanced);
                self.target.advance(by).await?;
                advanced += by;
                self.quiet().await;
            }
        }
        let deadline = Instant::now() + self.options.timeout;
        loop {
            if let Some(found) = done(self).await {
                return Ok(Some(found));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn clone_reply(r: &scenario::Reply) -> scenario::Reply {
    scenario::Reply {
        matches: r.matches.clone(),
        from: r.from.clone(),
        to: r.to.clone(),
        text: r.text.clone(),
        body: r.body.clone(),
    }
}

fn lines(err: anyhow::Error) -> Vec<String> {
    vec![format!("{err:#}")]
}

fn describe_publish(p: &scenario::Publish) -> String {
    let who = p.actor.clone().unwrap_or_else(|| "anonymous".into());
    if let Some(to) = &p.to {
        let what = p
            .text
            .as_ref()
            .map(|t| format!("{t:?}"))
            .or_else(|| p.body.as_ref().map(Value::to_string))
            .unwrap_or_default();
        return format!("{who} -> {to}: {what}");
    }
    if let Some(state) = &p.state {
        return format!("{who} state {state}");
    }
    if let Some(event) = &p.event {
        return format!("{who} event {event}");
    }
    let payload = p.payload.as_ref().map(Value::to_string).unwrap_or_default();
    format!(
        "{who} publish {} {payload}",
        p.topic.clone().unwrap_or_default()
    )
}

/// Scenario files of `path`: the file itself, or every `*.sim.yaml` under the folder.
pub fn scenario_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    if !path.is_dir() {
        bail!("{}: no such file or folder", path.display());
    }
    let mut found = Vec::new();
    collect(path, &mut found)?;
    found.sort();
    Ok(found)
}

fn collect(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, found)?;
        } else if path.to_string_lossy().ends_with(".sim.yaml") {
            found.push(path);
        }
    }
    Ok(())
}
