//! `mqtter sim FILE|DIR`: scenarios that prove rule chains before any device exists
//! (docs/SIMULATOR.md). A scenario names a rules folder, virtual persons and things, and steps
//! (publish, connect, advance the clock, edit a rule file, expect messages, chains and states);
//! each step is reported pass or fail, a failure with what was expected, what arrived instead
//! and the chain traces of what the rules did.
//!
//! - [`scenario`]: the file format, parsed with line and column on errors.
//! - [`run`]: one scenario: the daemon, the actors, the steps.
//! - [`target`], [`inprocess`], [`external`]: what it runs against (the daemon in this
//!   process on the virtual clock, or a running one over the network in real time).
//! - [`person`], [`thing`], [`mqtt`]: the actors and their connections.
//! - [`log`]: what the actors received, and how an expectation matches it.
//! - [`chain`]: chains from the rules engine's traces.
//! - [`report`]: the output, the closing line, JUnit XML.
//! - [`record`], [`skeleton`]: `mqtter sim record` (live traffic from a running daemon) and the
//!   scenario skeleton it writes, replayed with `--rules DIR`.
//!
//! The clock is one per process: each scenario file runs in a process of its own (a folder's
//! files are run by child processes, one after the other).

pub mod chain;
pub mod external;
pub mod inprocess;
pub mod log;
pub mod mqtt;
pub mod person;
pub mod record;
pub mod report;
pub mod run;
pub mod scenario;
pub mod skeleton;
pub mod target;
pub mod thing;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};

use report::ScenarioResult;

/// `mqtter sim` arguments.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SimArgs {
    /// Scenario files (`*.sim.yaml`) or folders (every `*.sim.yaml` under them).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Also write the results as JUnit XML (for CI).
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// How long (real time) an expectation waits for what it expects before it fails, once
    /// its `within` of virtual time has passed.
    #[arg(long, default_value = "5s", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Run against a running daemon (mqtt://host:port) in real time instead of in-process.
    #[arg(long)]
    pub broker: Option<String>,
    /// External mode: the account of the simulator's own connections (the observer of plain
    /// topics and of `$SYS/mqtter/rules/...`); default anonymous.
    #[arg(long, short = 'u')]
    pub username: Option<String>,
    /// External mode: that account's password (or the environment's `MQTTER_PASSWORD`).
    #[arg(long, short = 'P', env = "MQTTER_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// External mode: the longest `advance` (or `within`, `for`) waited out in real time;
    /// a longer one fails its step at once, without waiting.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    pub max_advance: Duration,
    /// The rules folder to run against instead of each scenario's `rules` (replaying a
    /// recording against changed rules).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Run one scenario and write its result as JSON here (how a folder's files are run).
    #[arg(long, hide = true)]
    pub result_json: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<SimCommand>,
}

/// `mqtter sim` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum SimCommand {
    /// Capture live traffic from a running daemon into a scenario skeleton (replay it with
    /// `mqtter sim FILE --rules DIR`).
    Record(record::RecordArgs),
}

pub(crate) fn parse_timeout(text: &str) -> Result<Duration, String> {
    scenario::duration(text).map_err(|err| err.to_string())
}

/// How scenarios are run.
#[derive(Clone, Debug)]
pub struct Options {
    pub timeout: Duration,
    /// External mode: the daemon's `mqtt://host:port`.
    pub broker: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub max_advance: Duration,
    /// `--rules`: the rules folder instead of each scenario's.
    pub rules: Option<PathBuf>,
}

impl Options {
    /// The login of the simulator's own connections: anonymous unless given.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.username
            .clone()
            .map(|user| (user, self.password.clone().unwrap_or_default()))
    }
}

/// Run the scenarios; `Ok(true)` when every step passed.
pub fn run(args: SimArgs) -> anyhow::Result<bool> {
    if let Some(SimCommand::Record(record)) = args.command {
        record::run(record)?;
        return Ok(true);
    }
    let mut files = Vec::new();
    for path in &args.paths {
        files.extend(run::scenario_files(path)?);
    }
    if files.is_empty() {
        bail!("no scenario (*.sim.yaml) found");
    }
    let options = Options {
        timeout: args.timeout,
        broker: args.broker.clone(),
        username: args.username.clone(),
        password: args.password.clone(),
        max_advance: args.max_advance,
        rules: args.rules.clone(),
    };
    let results = if files.len() == 1 {
        vec![run_here(&files[0], &options)?]
    } else {
        let mut results = Vec::new();
        for file in &files {
            results.push(run_child(file, &args)?);
        }
        results
    };
    if let Some(path) = &args.result_json {
        let text = serde_json::to_string(&results)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    } else {
        report::out(&report::closing_line(&results));
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, report::junit(&results))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let ran = results.iter().any(|r| r.skipped.is_none());
    if !ran && args.result_json.is_none() {
        report::out("no scenario ran: every one was skipped");
    }
    Ok(ran && results.iter().all(|r| r.failed() == 0))
}

/// One scenario in this process, on a virtual clock installed now.
fn run_here(file: &std::path::Path, options: &Options) -> anyhow::Result<ScenarioResult> {
    // External mode runs on the system clock: the daemon's time is real.
    if options.broker.is_none() {
        let start = scenario_start(file)?;
        let virtual_clock = mqtter_engine::clock::Clock::new_virtual(start);
        if mqtter_engine::clock::install(virtual_clock).is_err() {
            bail!("the clock was in use before the simulator could install its virtual one");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("mqtter-sim")
        .build()
        .context("cannot start the runtime")?;
    let result = runtime.block_on(run::run_file(file, options));
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(result)
}

/// The virtual clock's start: the scenario's `start`, else now. A file that does not parse
/// starts now (its error is reported by the run).
fn scenario_start(file: &std::path::Path) -> anyhow::Result<u64> {
    let now = mqtter_engine::clock::system_now_ms();
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(now);
    };
    match scenario::Scenario::parse(file, &text) {
        Ok(parsed) => match parsed.start {
            Some(start) => scenario::start_ms(&start),
            None => Ok(now),
        },
        Err(_) => Ok(now),
    }
}

/// One scenario in a child process (a clock of its own), its output passed through.
fn run_child(file: &std::path::Path, args: &SimArgs) -> anyhow::Result<ScenarioResult> {
    let exe = std::env::current_exe().context("cannot find the mqtter binary")?;
    let result_file = tempfile::NamedTempFile::new().context("cannot make a temporary file")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("sim")
        .arg("--timeout")
        .arg(format!("{}ms", args.timeout.as_millis()))
        .arg("--max-advance")
        .arg(format!("{}ms", args.max_advance.as_millis()))
        .arg("--result-json")
        .arg(result_file.path());
    if let Some(broker) = &args.broker {
        command.arg("--broker").arg(broker);
    }
    if let Some(username) = &args.username {
        command.arg("--username").arg(username);
    }
    if let Some(rules) = &args.rules {
        command.arg("--rules").arg(rules);
    }
    if let Some(password) = &args.password {
        // Through the environment, not the command line others can read.
        command.env("MQTTER_PASSWORD", password);
    }
    let status = command
        .arg(file)
        .status()
        .context("cannot run the scenario's process")?;
    let text = std::fs::read_to_string(result_file.path()).unwrap_or_default();
    match serde_json::from_str::<Vec<ScenarioResult>>(&text) {
        Ok(mut results) if results.len() == 1 => Ok(results.remove(0)),
        _ => {
            let error = format!("the scenario's process ended without a result ({status})");
            report::print_error(&error);
            Ok(ScenarioResult {
                file: file.to_owned(),
                name: file.display().to_string(),
                steps: Vec::new(),
                error: Some(error),
                skipped: None,
            })
        }
    }
}
