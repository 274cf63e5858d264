//! The scenarios on a daemon of the bench's own (`rules-*`, `things-roundtrip`): the daemon is
//! started on the folder the scenario writes, then the scenario runs against it: plain pairs
//! (`rules-0`, `rules-1000`), events while the folder is rewritten (`rules-reload`), or persons
//! commanding things that answer (`rules-chain`, `things-roundtrip`). At the end the rules
//! engine's status says whether every event was routed and none dropped.

use std::path::Path;
use std::time::SystemTime;

use serde_json::Value;

use super::*;
use crate::daemon::OwnDaemon;
use crate::scenario::{CommanderSpec, ConnectionPlan, ThingSpec, own_folder, reload_files};

/// The retained status of the rules engine (docs/RULES.md).
const STATUS_TOPIC: &str = "$SYS/mqtter/rules/status";

/// Runs scenario `sc` on a daemon of its own, started from `binary`.
pub async fn run_own(
    cfg: &Arc<RunConfig>,
    sc: &Scenario,
    binary: &Path,
) -> anyhow::Result<Measured> {
    let folder = own_folder(sc).context("not a scenario with a daemon of its own")?;
    let (binary, tag) = (binary.to_owned(), format!("{}-{}", cfg.run_id, sc.name));
    let daemon = tokio::task::spawn_blocking(move || OwnDaemon::start(&binary, &folder, &tag))
        .await
        .context("starting the daemon")??;
    let cfg = Arc::new(RunConfig {
        broker: daemon.addr,
        broker_pid: Some(daemon.pid),
        ..RunConfig::clone(cfg)
    });
    let cpu_before = read_cpu_secs(Some(daemon.pid));
    let mut m = match sc.plan {
        ConnectionPlan::RulesPairs { .. } => run_messaging(&cfg, sc, sc.topology("")).await?,
        ConnectionPlan::RulesReload { .. } => run_reload(&cfg, sc, &daemon).await?,
        _ => run_commands(&cfg, sc).await?,
    };
    if let (Some(a), Some(b)) = (cpu_before, read_cpu_secs(Some(daemon.pid))) {
        m.broker_cpu_secs = Some(b - a);
    }
    check_rules_status(&cfg, sc, &mut m).await;
    Ok(m)
}

/// Reads the rules engine's status once its event count stops moving and notes, as errors,
/// events whose rules were dropped on a full queue.
async fn check_rules_status(cfg: &RunConfig, sc: &Scenario, m: &mut Measured) {
    if matches!(sc.plan, ConnectionPlan::ThingsRoundtrip { .. }) {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut watch = match StatusWatch::connect(cfg, deadline).await {
        Ok(w) => w,
        Err(e) => {
            m.errors.push(format!("rules status: {e:#}"));
            return;
        }
    };
    // The status is published when it changes (every `publish_interval_ms`): the first that
    // counts every event published, else the last of a quiet second.
    let all = match sc.plan {
        ConnectionPlan::RulesPairs { rules, .. } if rules > 0 => Some(m.published),
        _ => None,
    };
    let mut last: Option<Value> = None;
    while let Ok(Ok(status)) = timeout(Duration::from_secs(1), watch.next(deadline)).await {
        let done = all.is_some_and(|n| status["events"].as_u64().is_some_and(|e| e >= n));
        last = Some(status);
        if done {
            break;
        }
    }
    let Some(status) = last else {
        m.errors.push("rules status: none received".into());
        return;
    };
    m.rule_events = status["events"].as_u64();
    if let Some(dropped) = status["queue_full"].as_u64().filter(|d| *d > 0) {
        m.errors.push(format!(
            "the rules engine dropped the rules of {dropped} events (queue full)"
        ));
    }
}

/// A connection subscribed to the rules engine's retained status.
struct StatusWatch {
    stream: TcpStream,
    rb: ReadBuf,
    acks: Vec<u8>,
}

impl StatusWatch {
    async fn connect(cfg: &RunConfig, deadline: tokio::time::Instant) -> anyhow::Result<Self> {
        let id = format!("mqb-{}-status", cfg.run_id);
        let (mut stream, mut rb) = open(cfg, &id, None, ACTIVE_BUF, deadline).await?;
        let sub = packets::subscribe(1, STATUS_TOPIC, 0)?;
        stream.write_all(&sub).await?;
        await_ack(&mut stream, &mut rb, true, deadline).await?;
        Ok(Self {
            stream,
            rb,
            acks: Vec::new(),
        })
    }

    /// The next status published.
    async fn next(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<Value> {
        loop {
            let mut found = None;
            while let Some((frame, used)) = packets::parse_frame(self.rb.data())? {
                if let Frame::Publish {
                    qos,
                    packet_id,
                    payload,
                    ..
                } = frame
                {
                    if let (1, Some(id)) = (qos, packet_id) {
                        self.acks.extend_from_slice(&packets::puback(id));
                    }
                    found = serde_json::from_slice::<Value>(payload).ok();
                }
                self.rb.consume(used);
                if found.is_some() {
                    break;
                }
            }
            if !self.acks.is_empty() {
                self.stream.write_all(&self.acks).await?;
                self.acks.clear();
            }
            if let Some(status) = found {
                return Ok(status);
            }
            timeout_at(deadline, read_some(&mut self.stream, &mut self.rb))
                .await
                .map_err(|_| anyhow!("timed out waiting for {STATUS_TOPIC}"))??;
        }
    }

    /// The first status for which `want` holds.
    async fn until(
        &mut self,
        deadline: tokio::time::Instant,
        want: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        loop {
            let status = self.next(deadline).await?;
            if want(&status) {
                return Ok(status);
            }
        }
    }
}

/// ms since the epoch on the system clock (the daemon's `loaded_at` is on the same clock).
fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes `name` in `dir` as an editor's atomic save does: a hidden temporary file, renamed.
fn write_atomically(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name))
        .with_context(|| format!("cannot rename {}", tmp.display()))?;
    Ok(())
}

/// `rules-reload`: events flow (each forwarded by one rule) while the folder is rewritten
/// `reloads` times; every event must arrive once.
async fn run_reload(
    cfg: &Arc<RunConfig>,
    sc: &Scenario,
    daemon: &OwnDaemon,
) -> anyhow::Result<Measured> {
    let ConnectionPlan::RulesReload { rules, reloads, .. } = sc.plan else {
        bail!("not a reload scenario");
    };
    let seconds = match sc.load {
        LoadShape::Rate { seconds, .. } => seconds,
        _ => 5.0,
    };
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    let mut watch = StatusWatch::connect(cfg, deadline).await?;
    watch
        .until(deadline, |s| s["rules"].as_u64() == Some(rules as u64))
        .await
        .context("the first load")?;
    let dir = daemon.rules_dir.clone();
    let reloader = tokio::spawn(async move {
        // From the first events on, spread over the load's duration.
        watch
            .until(deadline, |s| s["events"].as_u64().is_some_and(|e| e > 0))
            .await
            .context("the first events")?;
        let gap = Duration::from_secs_f64(seconds / (reloads as f64 + 1.0));
        let mut timings = Vec::with_capacity(reloads);
        for version in 1..=reloads {
            sleep(gap).await;
            let written_at = epoch_ms();
            for (name, text) in reload_files(rules, version) {
                write_atomically(&dir, &name, &text)?;
            }
            let status = watch
                .until(deadline, |s| {
                    s["loaded_at"].as_u64().is_some_and(|at| at >= written_at)
                        && s["rules"].as_u64() == Some(rules as u64)
                })
                .await
                .with_context(|| format!("reload {version}"))?;
            timings.push(ReloadTiming {
                reload_ms: status["reload_ms"].as_f64(),
            });
        }
        anyhow::Ok(timings)
    });
    let mut m = run_messaging(cfg, sc, sc.topology("")).await?;
    match reloader.await.context("the reloads")? {
        Ok(timings) => m.reloads = timings,
        Err(e) => m.errors.push(format!("reloads: {e:#}")),
    }
    if m.delivered > m.expected {
        m.errors.push(format!(
            "{} events were handled twice",
            m.delivered - m.expected
        ));
    }
    Ok(m)
}

/// One reload of `rules-reload`, as the daemon measures it (`reload_ms` of the status: from
/// reading the folder to the new set in force and its definitions applied).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReloadTiming {
    pub reload_ms: Option<f64>,
}

/// `rules-chain` and `things-roundtrip`: things that answer, persons that command them and
/// count the stamped envelopes that come back.
async fn run_commands(cfg: &Arc<RunConfig>, sc: &Scenario) -> anyhow::Result<Measured> {
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    let epoch = Instant::now();
    let plan = sc.commands();
    let mut m = Measured {
        connections: plan.commanders.len() + plan.things.len(),
        expected: plan.commanders.iter().map(|c| c.messages).sum(),
        ..Measured::default()
    };
    check_fd_limit(m.connections)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (start_tx, start_rx) = watch::channel(false);
    let things = Arc::new(plan.things);
    let thing_conns = {
        let (cfg, things) = (Arc::clone(cfg), Arc::clone(&things));
        parallel(things.len(), cfg.connect_concurrency, move |i| {
            let cfg = Arc::clone(&cfg);
            let id = things[i].account.clone();
            async move { login(&cfg, &id, Some(&id), None, ACTIVE_BUF, deadline).await }
        })
        .await
        .context("connecting the things")?
    };
    let mut thing_tasks = JoinSet::new();
    for ((stream, rb), spec) in thing_conns.into_iter().zip(things.iter()) {
        let thing = Thing {
            stream,
            rb,
            spec: spec.clone(),
            stop: stop_rx.clone(),
        };
        thing_tasks.spawn(thing.run());
    }
    let commanders = Arc::new(plan.commanders);
    let conns = {
        let (cfg, commanders) = (Arc::clone(cfg), Arc::clone(&commanders));
        parallel(commanders.len(), cfg.connect_concurrency, move |i| {
            let cfg = Arc::clone(&cfg);
            let id = commanders[i].account.clone();
            async move { open_as(&cfg, &id, Some(&id), None, ACTIVE_BUF, deadline).await }
        })
        .await
        .context("connecting the persons")?
    };
    let rate = match sc.load {
        LoadShape::Rate { per_sec, .. } => {
            Some((per_sec as f64 / commanders.len().max(1) as f64).max(1e-3))
        }
        _ => None,
    };
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let count = commanders.len().max(1) as f64;
    for (i, ((stream, rb), spec)) in conns.into_iter().zip(commanders.iter()).enumerate() {
        // Commander i starts i/N of a period after the first, so that together they send one
        // command every 1/rate s, not N at once every N/rate s.
        let phase = rate
            .and_then(|r| Duration::try_from_secs_f64(i as f64 / count / r).ok())
            .unwrap_or_default();
        let c = Commander {
            stream,
            rb,
            template: PublishTemplate::im(&spec.topic, 1, cfg.payload_size)?,
            spec: spec.clone(),
            rate,
            phase,
            epoch,
            delivered: Arc::clone(&delivered),
            start: start_rx.clone(),
            stop: stop_rx.clone(),
        };
        tasks.spawn(c.run());
    }
    let _ = start_tx.send(true);
    // Until every commander has what it expects, or nothing arrives for `drain` once the
    // load's time is over.
    let load_secs = match sc.load {
        LoadShape::Rate { seconds, .. } => seconds,
        _ => 0.0,
    };
    let load_end = tokio::time::Instant::now() + Duration::from_secs_f64(load_secs);
    let mut seen = 0;
    let mut progress_at = tokio::time::Instant::now();
    while !tasks.is_empty() {
        match timeout(Duration::from_millis(10), tasks.join_next()).await {
            Ok(Some(joined)) => m.absorb_commander(joined.context("commander task failed")?),
            Ok(None) => break,
            Err(_) => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            m.timed_out = true;
            break;
        }
        let d = delivered.load(Ordering::Relaxed);
        if d != seen {
            seen = d;
            progress_at = now;
        } else if now >= load_end && now.duration_since(progress_at) >= cfg.drain {
            break;
        }
    }
    let _ = stop_tx.send(true);
    while let Some(joined) = tasks.join_next().await {
        m.absorb_commander(joined.context("commander task failed")?);
    }
    while let Some(joined) = thing_tasks.join_next().await {
        if let Err(e) = joined.context("thing task failed")? {
            m.errors.push(format!("thing: {e:#}"));
        }
    }
    if let (Some(f), Some(l)) = (m.first_ns, m.last_ns) {
        m.seconds = l.saturating_sub(f) as f64 / 1e9;
    }
    Ok(m)
}

impl Measured {
    fn absorb_commander(&mut self, o: CommanderOutcome) {
        self.published += o.sent;
        self.delivered += o.received;
        self.latency.merge(&o.latency);
        if let Some(f) = o.first_ns {
            self.first_ns = Some(self.first_ns.map_or(f, |x| x.min(f)));
        }
        if let Some(l) = o.last_ns {
            self.last_ns = Some(self.last_ns.map_or(l, |x| x.max(l)));
        }
        if let Some(e) = o.error {
            self.errors.push(format!("commander: {e}"));
        }
    }
}

/// A thing's device: acknowledges each command it gets (its PUBACK, then `thing/T/ack`).
struct Thing {
    stream: TcpStream,
    rb: ReadBuf,
    spec: ThingSpec,
    stop: watch::Receiver<bool>,
}

impl Thing {
    async fn run(mut self) -> anyhow::Result<()> {
        let ack_topic = format!("thing/{}/ack", self.spec.account);
        let mut out: Vec<u8> = Vec::with_capacity(4096);
        let mut next_id: u16 = 1;
        let mut pending = !self.rb.data().is_empty();
        loop {
            if !pending {
                tokio::select! {
                    biased;
                    _ = flagged(&mut self.stop) => break,
                    r = read_some(&mut self.stream, &mut self.rb) => r?,
                }
            }
            pending = false;
            while let Some((frame, used)) = packets::parse_frame(self.rb.data())? {
                if let Frame::Publish {
                    qos,
                    packet_id,
                    topic,
                    payload,
                    ..
                } = frame
                {
                    if let (1, Some(id)) = (qos, packet_id) {
                        out.extend_from_slice(&packets::puback(id));
                    }
                    if topic.ends_with(b"/cmd") {
                        let answer = self.answer(payload)?;
                        packets::publish(&ack_topic, 1, next_id, answer.as_bytes(), &mut out)?;
                        next_id = next_id.checked_add(1).unwrap_or(1);
                    }
                }
                self.rb.consume(used);
            }
            if !out.is_empty() {
                self.stream.write_all(&out).await?;
                out.clear();
            }
        }
        close(self.stream).await;
        Ok(())
    }

    /// The answer to a command envelope: its id, and with `echo` the send time it carried.
    fn answer(&self, envelope: &[u8]) -> anyhow::Result<String> {
        let cmd: Value = serde_json::from_slice(envelope).context("a command envelope")?;
        let id = cmd["id"].as_str().context("a command without an id")?;
        let mut answer = serde_json::json!({ "id": id });
        if self.spec.echo {
            answer["result"] = serde_json::json!({ "mqb": cmd["body"]["mqb"] });
        }
        Ok(answer.to_string())
    }
}

struct CommanderOutcome {
    sent: u64,
    received: u64,
    latency: Histogram,
    first_ns: Option<u64>,
    last_ns: Option<u64>,
    error: Option<String>,
}

/// A person's device that sends commands and counts the stamped envelopes coming back.
struct Commander {
    stream: TcpStream,
    rb: ReadBuf,
    template: PublishTemplate,
    spec: CommanderSpec,
    /// Commands per second, when not windowed.
    rate: Option<f64>,
    /// How long after the start this commander sends its first command.
    phase: Duration,
    epoch: Instant,
    delivered: Arc<AtomicU64>,
    start: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

impl Commander {
    async fn run(mut self) -> CommanderOutcome {
        let mut out = CommanderOutcome {
            sent: 0,
            received: 0,
            latency: Histogram::new(),
            first_ns: None,
            last_ns: None,
            error: None,
        };
        if let Err(e) = self.drive(&mut out).await {
            out.error = Some(format!("{e:#}"));
        }
        close(self.stream).await;
        out
    }

    async fn drive(&mut self, out: &mut CommanderOutcome) -> anyhow::Result<()> {
        tokio::select! {
            biased;
            _ = flagged(&mut self.stop) => return Ok(()),
            _ = flagged(&mut self.start) => {}
        }
        if !self.phase.is_zero() {
            tokio::select! {
                biased;
                _ = flagged(&mut self.stop) => return Ok(()),
                () = tokio::time::sleep(self.phase) => {}
            }
        }
        let started = tokio::time::Instant::now();
        let total = self.spec.messages;
        let mut wbuf: Vec<u8> = Vec::with_capacity(self.template.len() * BATCH as usize);
        let mut next_id: u16 = 1;
        // Bytes buffered during the login are read first.
        self.take_input(&mut wbuf, out)?;
        while out.received < total {
            let mut allowed = total - out.sent;
            if let Some(rate) = self.rate {
                let due = (started.elapsed().as_secs_f64() * rate).floor() as u64 + 1;
                allowed = allowed.min(due.saturating_sub(out.sent));
            }
            if let Some(window) = self.spec.window {
                allowed = allowed.min(window.saturating_sub(out.sent - out.received));
            }
            allowed = allowed.min(BATCH);
            if allowed > 0 {
                let now = ns_since(self.epoch);
                out.first_ns.get_or_insert(now);
                for _ in 0..allowed {
                    self.template.append(&mut wbuf, next_id, now);
                    next_id = next_id.checked_add(1).unwrap_or(1);
                }
                out.sent += allowed;
            }
            if !wbuf.is_empty() {
                tokio::select! {
                    biased;
                    _ = flagged(&mut self.stop) => return Ok(()),
                    r = self.stream.write_all(&wbuf) => r?,
                }
                wbuf.clear();
            }
            let wake = match self.rate {
                Some(rate) if out.sent < total => {
                    Duration::try_from_secs_f64(out.sent as f64 / rate)
                        .ok()
                        .and_then(|d| started.checked_add(d))
                }
                _ => None,
            };
            tokio::select! {
                biased;
                _ = flagged(&mut self.stop) => return Ok(()),
                r = self.stream.readable() => {
                    r?;
                    self.take_input(&mut wbuf, out)?;
                }
                _ = sleep_until(wake.unwrap_or(started)), if wake.is_some() => {}
            }
        }
        Ok(())
    }

    /// Reads what is buffered without waiting: PUBACKs owed go into `wbuf`, stamped envelopes
    /// are counted with their latency.
    fn take_input(&mut self, wbuf: &mut Vec<u8>, out: &mut CommanderOutcome) -> anyhow::Result<()> {
        loop {
            let now = ns_since(self.epoch);
            let mut got = 0;
            while let Some((frame, used)) = packets::parse_frame(self.rb.data())? {
                if let Frame::Publish {
                    qos,
                    packet_id,
                    payload,
                    ..
                } = frame
                {
                    if let (1, Some(id)) = (qos, packet_id) {
                        wbuf.extend_from_slice(&packets::puback(id));
                    }
                    if let Some(stamp) = packets::im_stamp(payload) {
                        got += 1;
                        out.latency.record(now.saturating_sub(stamp));
                    }
                }
                self.rb.consume(used);
            }
            if got > 0 {
                out.received += got;
                out.last_ns = Some(now);
                self.delivered.fetch_add(got, Ordering::Relaxed);
            }
            match self.stream.try_read(self.rb.spare()) {
                Ok(0) => bail!("connection closed by the broker"),
                Ok(n) => self.rb.filled(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}
