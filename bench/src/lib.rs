//! `mqtter bench`: an MQTT 3.1.1 load generator that measures a broker on loopback. Its own
//! crate, with no tie to the daemon: the `mqtter` binary runs it as a subcommand.
//!
//! It speaks raw TCP with hand-encoded packets so that it costs little next to the broker it
//! measures. Scenarios are data ([`scenario::Scenario`]); the engine ([`runner`]) runs any of
//! them. Throughput counts deliveries from the first publish to the last delivery; latency is
//! read from a timestamp in each payload; `conns` reports the broker's resident memory per
//! idle connection and the connection setup rate. The IM scenarios (`--scenario im`) need a
//! broker started with the accounts `--im-setup DIR` writes. The rules and things scenarios
//! (`--scenario rules,things`) start a daemon of their own ([`daemon`]) on a folder they write.

pub mod daemon;
pub mod packets;
pub mod runner;
pub mod scenario;
pub mod stats;
pub mod storm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use runner::{Measured, RunConfig};
use scenario::{ConnectionPlan, Scenario, Sizes};

/// Command-line options of `mqtter bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Broker to measure (loopback only).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// Scenario or group to run (repeatable or comma-separated): pairs, fanout, fanin, conns,
    /// sustain (as fast as the broker takes them for --seconds), im (MQTTER's IM world), rules
    /// and things (on a daemon the bench starts itself, ignoring --broker), or a single one
    /// such as pairs-qos1-rate, sustain-pairs2-qos1 or rules-1000.
    /// Default: the plain-MQTT scenarios of fixed size. `storm` (never by default; needs
    /// --broker-pid) is a long test: a storm of short connections with damaged input for
    /// --seconds [60] with --connections at once [64], then the broker's RSS must be back
    /// within --margin-mib of where it was before (see docs/BENCHMARKS.md); it fails the
    /// command otherwise.
    #[arg(long, value_delimiter = ',')]
    pub scenario: Vec<String>,
    /// Connections of each scenario: pairs for `pairs` and `im-direct`, subscribers for
    /// `fanout`, publishers for `fanin`, members for `im-group`, idle connections for `conns`.
    #[arg(long)]
    pub connections: Option<usize>,
    /// PUBLISH packets sent in total by a saturating scenario.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Messages per second (all publishers together) of the fixed-rate scenarios [default: 20000].
    #[arg(long)]
    pub rate: Option<u64>,
    /// Duration of the fixed-rate and sustained scenarios in seconds [default: 5].
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Payload bytes of each PUBLISH; the first 8 carry the send timestamp.
    #[arg(long, default_value_t = 64)]
    pub payload_size: usize,
    /// Process id of the broker, to report its resident memory per connection.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Also write the results as a JSON array to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Upper bound for each scenario, setup included [default: 60, 10 with --quick].
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// How far above its baseline the broker's RSS may stay after the `storm`, in MiB.
    #[arg(long, default_value_t = 8)]
    pub margin_mib: u64,
    /// Tiny sizes for a smoke test (about a second per scenario).
    #[arg(long)]
    pub quick: bool,
    /// The `mqtter` binary the rules and things scenarios start as a daemon of their own
    /// [default: the running one].
    #[arg(long, value_name = "PATH")]
    pub daemon: Option<PathBuf>,
    /// Write what a broker needs for the IM scenarios of these sizes into this folder, and
    /// run nothing: `definitions/bench.yaml` (persons, friendships, the group) and
    /// `mqtter.toml` (`rules_dir` pointing there, `im.sync_max_per_conv` for `im-reconnect`).
    /// Start the broker with `mqtter serve --config DIR/mqtter.toml`.
    #[arg(long, value_name = "DIR")]
    pub im_setup: Option<PathBuf>,
}

/// Figures of one scenario; absent figures are `null` in JSON and `-` in the table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScenarioResult {
    pub name: String,
    pub broker: String,
    pub qos: u8,
    /// What the publishers did, e.g. "saturate, 200000 messages".
    pub load: String,
    pub connections: usize,
    /// Messages delivered to subscribers.
    pub messages: u64,
    pub published: u64,
    pub expected: u64,
    /// First publish to last delivery; for `conns`, the time to connect them all.
    pub seconds: f64,
    pub msgs_per_sec: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    /// Expected deliveries that did not arrive.
    pub lost: Option<u64>,
    pub rss_per_conn_bytes: Option<u64>,
    pub conn_per_sec: Option<f64>,
    /// CPU seconds the broker used during the scenario, setup included (needs --broker-pid).
    pub broker_cpu_secs: Option<f64>,
    /// CPU seconds this load generator used during the scenario.
    pub bench_cpu_secs: Option<f64>,
    /// Events the rules engine routed (the rules scenarios, from its status).
    pub rule_events: Option<u64>,
    /// `rules-reload`: reloads done, and their time as the daemon measures it (`reload_ms` of
    /// the rules status: reading and compiling the folder, the swap, the definitions applied;
    /// the watcher's 150 ms debounce comes before it).
    pub reloads: Option<usize>,
    pub reload_mean_ms: Option<f64>,
    pub reload_worst_ms: Option<f64>,
    pub timed_out: bool,
    pub error: Option<String>,
}

impl ScenarioResult {
    fn new(sc: &Scenario, broker: &str) -> Self {
        Self {
            name: sc.name.clone(),
            broker: broker.to_string(),
            qos: sc.qos,
            load: match sc.plan {
                ConnectionPlan::Idle { .. } => "idle".to_string(),
                _ => sc.load.describe(),
            },
            connections: sc.connection_count(),
            messages: 0,
            published: 0,
            expected: 0,
            seconds: 0.0,
            msgs_per_sec: None,
            p50_us: None,
            p99_us: None,
            p999_us: None,
            lost: None,
            rss_per_conn_bytes: None,
            conn_per_sec: None,
            broker_cpu_secs: None,
            bench_cpu_secs: None,
            rule_events: None,
            reloads: None,
            reload_mean_ms: None,
            reload_worst_ms: None,
            timed_out: false,
            error: None,
        }
    }

    fn fill(&mut self, m: &Measured, idle: bool) {
        self.connections = m.connections;
        self.timed_out = m.timed_out;
        if !m.errors.is_empty() {
            self.error = Some(format!(
                "{} connection error(s), first: {}",
                m.errors.len(),
                m.errors[0]
            ));
        }
        if idle {
            if let Some(secs) = m.setup_seconds {
                self.seconds = round(secs, 3);
                if secs > 0.0 {
                    self.conn_per_sec = Some(round(m.connections as f64 / secs, 1));
                }
            }
            if let (Some(before), Some(after)) = (m.rss_before, m.rss_after)
                && m.connections > 0
            {
                self.rss_per_conn_bytes = Some(after.saturating_sub(before) / m.connections as u64);
            }
            return;
        }
        self.messages = m.delivered;
        self.published = m.published;
        self.expected = m.expected;
        self.lost = Some(m.expected.saturating_sub(m.delivered));
        self.seconds = round(m.seconds, 3);
        if m.seconds > 0.0 {
            self.msgs_per_sec = Some(round(m.delivered as f64 / m.seconds, 1));
        }
        let us = |pm| {
            m.latency
                .percentile_permille(pm)
                .map(|ns| round(ns as f64 / 1e3, 1))
        };
        self.p50_us = us(500);
        self.p99_us = us(990);
        self.p999_us = us(999);
        self.broker_cpu_secs = m.broker_cpu_secs.map(|s| round(s, 2));
        self.rule_events = m.rule_events;
        let reloads: Vec<f64> = m.reloads.iter().filter_map(|r| r.reload_ms).collect();
        if !m.reloads.is_empty() {
            self.reloads = Some(m.reloads.len());
        }
        if !reloads.is_empty() {
            let mean = reloads.iter().sum::<f64>() / reloads.len() as f64;
            self.reload_mean_ms = Some(round(mean, 1));
            self.reload_worst_ms = Some(reloads.iter().copied().fold(0.0, f64::max));
        }
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Renders results as an aligned text table.
pub fn format_table(results: &[ScenarioResult]) -> String {
    let header = [
        "scenario",
        "qos",
        "conns",
        "delivered",
        "secs",
        "msgs/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "lost",
        "rss/conn B",
        "conn/s",
        "broker cpu s",
        "bench cpu s",
    ];
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let mut name = r.name.clone();
            if r.timed_out {
                name.push_str(" (timeout)");
            }
            if r.error.is_some() {
                name.push_str(" (error)");
            }
            vec![
                name,
                r.qos.to_string(),
                r.connections.to_string(),
                r.messages.to_string(),
                format!("{:.3}", r.seconds),
                opt(r.msgs_per_sec.map(|v| format!("{v:.0}"))),
                opt(r.p50_us),
                opt(r.p99_us),
                opt(r.p999_us),
                opt(r.lost),
                opt(r.rss_per_conn_bytes),
                opt(r.conn_per_sec.map(|v| format!("{v:.0}"))),
                opt(r.broker_cpu_secs),
                opt(r.bench_cpu_secs),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    for r in results {
        if let Some(n) = r.reloads {
            out.push_str(&format!(
                "{}: {n} reloads of the folder, {} ms mean, {} ms worst\n",
                r.name,
                opt(r.reload_mean_ms),
                opt(r.reload_worst_ms),
            ));
        }
    }
    for r in results {
        if let Some(e) = &r.error {
            out.push_str(&format!("{}: {e}\n", r.name));
        }
    }
    out
}

/// Runs the selected scenarios against `args.broker`, prints a table and returns the figures.
pub async fn run(args: BenchArgs) -> anyhow::Result<Vec<ScenarioResult>> {
    if args.payload_size < 8 {
        bail!("--payload-size must be at least 8 bytes (the timestamp)");
    }
    if args.payload_size > 1024 * 1024 {
        bail!("--payload-size above 1 MiB is not supported");
    }
    if let Some(s) = args.seconds
        && !(s > 0.0 && s <= 3600.0)
    {
        bail!("--seconds must be in (0, 3600]");
    }
    if args.rate == Some(0) {
        bail!("--rate must be above 0");
    }
    let quick = args.quick;
    let timeout_secs = args
        .timeout_secs
        .unwrap_or(if quick { 10 } else { 60 })
        .clamp(1, 24 * 3600);
    let sizes = Sizes {
        connections: args.connections,
        messages: args.messages,
        rate: args.rate.unwrap_or(if quick { 1_000 } else { 20_000 }),
        seconds: args.seconds.unwrap_or(if quick { 1.0 } else { 5.0 }),
        quick,
    };
    if let Some(dir) = &args.im_setup {
        write_im_setup(dir, &sizes)?;
        return Ok(Vec::new());
    }
    let broker = runner::resolve_loopback(&args.broker).await?;
    let (storms, named): (Vec<String>, Vec<String>) =
        args.scenario.iter().cloned().partition(|s| s == "storm");
    if !storms.is_empty() {
        if !named.is_empty() {
            bail!("the storm is a long test of its own: run `--scenario storm` alone");
        }
        run_storm(&args, broker, quick).await?;
        return Ok(Vec::new());
    }
    let mut all = scenario::builtin(&sizes);
    all.extend(scenario::builtin_sustain(&sizes));
    all.extend(scenario::builtin_im(&sizes));
    all.extend(scenario::builtin_own(&sizes, args.rate));
    let scenarios = scenario::select(all, &named)?;
    let daemon_binary = match &args.daemon {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("cannot find the running binary")?,
    };
    let run_id = format!("{:08x}", rand::random::<u32>());
    let cfg = Arc::new(RunConfig {
        broker,
        payload_size: args.payload_size,
        timeout: Duration::from_secs(timeout_secs),
        drain: Duration::from_millis(if quick { 300 } else { 2_000 }),
        broker_pid: args.broker_pid,
        connect_concurrency: 64,
        window: 64,
        keep_alive: u16::try_from(timeout_secs.saturating_mul(2).saturating_add(60))
            .unwrap_or(u16::MAX),
        run_id,
        settle: Duration::from_millis(if quick { 200 } else { 1_000 }),
    });

    // Fail fast when nothing listens there (and it is needed).
    if scenarios.iter().any(|s| !s.own_daemon()) {
        runner::probe(&cfg)
            .await
            .with_context(|| format!("broker at {broker} is not answering MQTT"))?;
    }

    let mut results = Vec::with_capacity(scenarios.len());
    for sc in &scenarios {
        let mut r = ScenarioResult::new(sc, &args.broker);
        let against = if sc.own_daemon() {
            r.broker = "own daemon".to_string();
            format!("on a daemon of its own ({})", daemon_binary.display())
        } else {
            format!("against {broker}")
        };
        eprintln!(
            "bench: {} ({}, qos {}, {} connections) {against}",
            sc.name, r.load, sc.qos, r.connections
        );
        let idle = matches!(sc.plan, ConnectionPlan::Idle { .. });
        let cpu_before = (
            runner::read_cpu_secs(None),
            args.broker_pid.and_then(|p| runner::read_cpu_secs(Some(p))),
        );
        // The runner stops by its own deadline; this is a second bound in case it does not.
        let hard = cfg.timeout + Duration::from_secs(15);
        let outcome = tokio::time::timeout(hard, run_one(&cfg, sc, &daemon_binary)).await;
        match outcome {
            Ok(Ok(m)) => r.fill(&m, idle),
            Ok(Err(e)) => r.error = Some(format!("{e:#}")),
            Err(_) => {
                r.timed_out = true;
                r.error = Some("scenario did not stop by its deadline".to_string());
            }
        }
        let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(round(b - a, 2)),
            _ => None,
        };
        r.bench_cpu_secs = delta(cpu_before.0, runner::read_cpu_secs(None));
        if !sc.own_daemon() {
            r.broker_cpu_secs = delta(
                cpu_before.1,
                args.broker_pid.and_then(|p| runner::read_cpu_secs(Some(p))),
            );
        }
        results.push(r);
        // Let the broker clean up the previous connections.
        tokio::time::sleep(Duration::from_millis(if quick { 100 } else { 500 })).await;
    }

    print!("{}", format_table(&results));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&results)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(results)
}

/// The `storm` long test (see `storm`): prints its report (and writes it to `--json`), and fails
/// when the broker's RSS did not come back within the margin.
async fn run_storm(
    args: &BenchArgs,
    broker: std::net::SocketAddr,
    quick: bool,
) -> anyhow::Result<()> {
    let Some(broker_pid) = args.broker_pid else {
        bail!("--scenario storm measures the broker's memory: it needs --broker-pid");
    };
    let cfg = storm::StormConfig {
        broker,
        broker_pid,
        seconds: args.seconds.unwrap_or(if quick { 2.0 } else { 60.0 }),
        concurrency: args.connections.unwrap_or(if quick { 8 } else { 64 }),
        margin_bytes: args.margin_mib * 1024 * 1024,
        settle: Duration::from_secs(if quick { 2 } else { 10 }),
        seed: rand::random(),
    };
    eprintln!(
        "bench: storm ({} connections at once, {}s) against {broker}",
        cfg.concurrency, cfg.seconds
    );
    let report = storm::run(cfg).await?;
    println!("{}", report.describe());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !report.passed {
        bail!("the broker's RSS did not come back within the margin after the storm");
    }
    Ok(())
}

/// Writes the definitions file and the configuration the IM scenarios need (see `--im-setup`).
pub fn write_im_setup(dir: &std::path::Path, sizes: &Sizes) -> anyhow::Result<()> {
    let defs = dir.join("definitions");
    std::fs::create_dir_all(&defs).with_context(|| format!("cannot create {}", defs.display()))?;
    let scenarios = scenario::builtin_im(sizes);
    let yaml = defs.join("bench.yaml");
    std::fs::write(&yaml, scenario::im_definitions(&scenarios))
        .with_context(|| format!("cannot write {}", yaml.display()))?;
    let missed = scenarios
        .iter()
        .filter(|s| matches!(s.plan, ConnectionPlan::ImReconnect))
        .map(|s| s.load.total_messages())
        .max()
        .unwrap_or(0)
        .max(1000);
    let defs_str = defs
        .to_str()
        .context("the --im-setup folder must be a UTF-8 path")?;
    let toml = format!(
        "# Written by `mqtter bench --im-setup`: the IM scenarios' accounts and limits.\n\
         rules_dir = {defs_str:?}\n\n[im]\n\
         # `im-reconnect` replays this many missed messages before `sync.done`.\n\
         sync_max_per_conv = {missed}\n"
    );
    let config = dir.join("mqtter.toml");
    std::fs::write(&config, toml).with_context(|| format!("cannot write {}", config.display()))?;
    eprintln!(
        "bench: wrote {} and {}; start the broker with `mqtter serve --config {}`",
        yaml.display(),
        config.display(),
        config.display()
    );
    Ok(())
}

async fn run_one(
    cfg: &Arc<RunConfig>,
    sc: &Scenario,
    daemon: &std::path::Path,
) -> anyhow::Result<Measured> {
    if sc.own_daemon() {
        return runner::rules::run_own(cfg, sc, daemon).await;
    }
    match sc.plan {
        ConnectionPlan::Idle { connections } => runner::run_idle(cfg, sc, connections).await,
        ConnectionPlan::ImReconnect => runner::run_im_reconnect(cfg, sc).await,
        _ => {
            let prefix = format!("mqtter-bench/{}/{}", cfg.run_id, sc.name);
            runner::run_messaging(cfg, sc, sc.topology(&prefix)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    #[test]
    fn args_defaults_and_repeatable_scenarios() {
        let cli = Cli::try_parse_from([
            "bench",
            "--scenario",
            "pairs",
            "--scenario",
            "fanout,conns",
            "--quick",
        ])
        .unwrap();
        assert_eq!(cli.args.broker, "127.0.0.1:1883");
        assert_eq!(cli.args.payload_size, 64);
        assert_eq!(cli.args.scenario, vec!["pairs", "fanout", "conns"]);
        assert!(cli.args.quick);
        assert!(cli.args.json.is_none());
    }

    #[test]
    fn fill_computes_rates_and_losses() {
        let sc = &scenario::builtin(&Sizes {
            connections: None,
            messages: None,
            rate: 10,
            seconds: 1.0,
            quick: true,
        })[1];
        let mut m = Measured {
            connections: 4,
            published: 2_000,
            expected: 2_000,
            delivered: 1_990,
            seconds: 0.5,
            ..Measured::default()
        };
        for v in 1..=100 {
            m.latency.record(v * 1_000);
        }
        let mut r = ScenarioResult::new(sc, "127.0.0.1:1883");
        r.fill(&m, false);
        assert_eq!(r.msgs_per_sec, Some(3_980.0));
        assert_eq!(r.lost, Some(10));
        // 50_000 ns lies in the bucket 49_664..=50_175 (width 512 at this magnitude).
        assert_eq!(r.p50_us, Some(50.2));
        assert_eq!(r.p999_us, Some(100.0));
        assert_eq!(r.rss_per_conn_bytes, None);

        let idle = Measured {
            connections: 1_000,
            setup_seconds: Some(0.25),
            rss_before: Some(1_000_000),
            rss_after: Some(6_000_000),
            ..Measured::default()
        };
        let mut r = ScenarioResult::new(sc, "127.0.0.1:1883");
        r.fill(&idle, true);
        assert_eq!(r.conn_per_sec, Some(4_000.0));
        assert_eq!(r.rss_per_conn_bytes, Some(5_000));
        assert_eq!(r.lost, None);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["rss_per_conn_bytes"], 5_000);
        assert!(json["p50_us"].is_null());
        let table = format_table(&[r]);
        assert!(table.starts_with("scenario"));
        assert!(table.contains("5000"));
    }
}
