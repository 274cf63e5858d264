//! The test harness: start the real `mqtter` daemon on 127.0.0.1:0 and talk to it.
//!
//! `Daemon::start()` runs the built binary with a fresh data folder and reads the ports from the
//! one line it prints on stdout. Dropping the `Daemon` kills the process (SIGKILL) and removes the
//! folder, unless it is kept for a restart with `Daemon::restart`.

#![allow(dead_code)]

pub mod im;
pub mod mosquitto;
pub mod person;
pub mod proxy;
pub mod raw;
pub mod rules;
pub mod thing;
pub mod ws;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The default bound on waiting for anything in a test: generous, so a loaded 2-core machine
/// never fails a correct broker, and never an assertion about speed.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Daemon {
    child: Option<Child>,
    pub mqtt: SocketAddr,
    pub ws: Option<SocketAddr>,
    pub ws_path: String,
    /// The Prometheus endpoint, when the configuration sets `metrics_listen`.
    pub metrics: Option<SocketAddr>,
    pub data: PathBuf,
    /// The temporary folder owning `data` (kept alive while the daemon may restart).
    _dir: Option<tempfile::TempDir>,
    config: Option<PathBuf>,
    extra: Vec<String>,
    /// RLIMIT_FSIZE for the process: a write that would make a file larger fails (EFBIG), as
    /// on a full disk. Applies to the next start.
    pub file_size_limit: Option<u64>,
    /// Where the daemon's log (stderr) goes, appended, instead of the test's own stderr.
    pub log_file: Option<PathBuf>,
    /// The daemon's `RUST_LOG` (else `MQTTER_TEST_LOG`, else `warn`). Applies to the next start.
    pub log_filter: Option<String>,
}

impl Daemon {
    /// Anonymous access on, a fresh store, TCP and WebSocket on free ports.
    pub fn start() -> Daemon {
        Self::start_with(&["--allow-anonymous"], None)
    }

    /// Start with extra CLI arguments and, if given, a configuration file body (TOML).
    pub fn start_with(args: &[&str], config_toml: Option<&str>) -> Daemon {
        Self::start_prepared(args, config_toml, |_| {})
    }

    /// As `start_with`, after `prepare` has run on the (not yet created) data folder, e.g. to add
    /// accounts with `mqtter account add ... --data DIR` before the daemon opens the store.
    pub fn start_prepared(
        args: &[&str],
        config_toml: Option<&str>,
        prepare: impl FnOnce(&Path),
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let config = with_engine(config_toml).map(|body| {
            let path = dir.path().join("mqtter.toml");
            std::fs::write(&path, body).expect("write config");
            path
        });
        let extra: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        prepare(&data);
        let mut daemon = Daemon {
            child: None,
            mqtt: "127.0.0.1:0".parse().unwrap(),
            ws: None,
            ws_path: "/mqtt".into(),
            metrics: None,
            data,
            _dir: Some(dir),
            config,
            extra,
            file_size_limit: None,
            log_file: None,
            log_filter: None,
        };
        daemon.spawn();
        daemon
    }

    /// As `start_with`, on a full disk: the process's file size limit is `bytes`, so that the
    /// store's writes fail (EFBIG) once a file would grow past it, and its log goes to a file
    /// already past the limit (the same full disk), where no line can be written.
    pub fn start_on_a_full_disk(bytes: u64, args: &[&str], config_toml: Option<&str>) -> Daemon {
        let mut daemon = Self::start_prepared(args, config_toml, |_| {});
        let log = daemon.data.with_file_name("full-disk.log");
        let filler = vec![b'.'; usize::try_from(bytes).expect("a small limit") + 1];
        std::fs::write(&log, filler).expect("fill the log file");
        daemon.file_size_limit = Some(bytes);
        daemon.log_file = Some(log);
        daemon.restart();
        daemon
    }

    /// The path of the `mqtter` binary under test.
    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_mqtter")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(Self::binary());
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--ws-listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(&self.data);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(&self.extra);
        let filter = self
            .log_filter
            .clone()
            .unwrap_or_else(|| std::env::var("MQTTER_TEST_LOG").unwrap_or_else(|_| "warn".into()));
        cmd.env("RUST_LOG", filter);
        let stderr = match &self.log_file {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("open the log file"),
            ),
            None => Stdio::inherit(),
        };
        cmd.stdout(Stdio::piped())
            .stderr(stderr)
            .stdin(Stdio::null());
        if let Some(bytes) = self.file_size_limit {
            use std::os::unix::process::CommandExt;
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct given.
            let got = unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) };
            assert_eq!(got, 0, "getrlimit: {}", std::io::Error::last_os_error());
            limit.rlim_cur = (bytes as libc::rlim_t).min(limit.rlim_max);
            // SAFETY: between fork and exec only setrlimit runs (async-signal-safe), on a
            // value owned by the closure.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd.spawn().expect("start mqtter");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        // "mqtter listening mqtt=127.0.0.1:PORT ws=127.0.0.1:PORT/mqtt"
        for word in line.split_whitespace() {
            if let Some(addr) = word.strip_prefix("mqtt=") {
                self.mqtt = addr.parse().expect("mqtt address");
            }
            if let Some(rest) = word.strip_prefix("metrics=") {
                let addr = rest.split('/').next().unwrap_or(rest);
                self.metrics = Some(addr.parse().expect("metrics address"));
            }
            if let Some(rest) = word.strip_prefix("ws=") {
                let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                self.ws = Some(addr.parse().expect("ws address"));
                self.ws_path = path.to_string();
            }
        }
        assert!(
            line.starts_with("mqtter listening"),
            "unexpected first line: {line:?}"
        );
        self.child = Some(child);
    }

    pub fn port(&self) -> u16 {
        self.mqtt.port()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status (graceful stop).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_ref().expect("running daemon");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: a plain system call on the pid of a child not yet waited for.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
        self.wait_for_exit("after SIGTERM")
    }

    /// Wait (within `WAIT`) for the daemon to exit by itself; `why` names the wait if it fails.
    pub fn wait_for_exit(&mut self, why: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running daemon");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not stop {why}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replace the configuration file's body; it applies from the next start.
    pub fn rewrite_config(&self, config_toml: &str) {
        let path = self
            .config
            .as_ref()
            .expect("a daemon started with a configuration");
        std::fs::write(path, config_toml).expect("rewrite the configuration");
    }

    /// Start again on the same data folder (new ports).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process is still running (it has not exited or been killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `MQTTER_TEST_ENGINE=redb` (or fjall, sled) runs every daemon of the suite on that store
/// engine (how the engines were compared on the crash and full-disk suites, docs/BENCHMARKS.md),
/// except where a test names its own `[store]`.
fn with_engine(config_toml: Option<&str>) -> Option<String> {
    let engine = std::env::var("MQTTER_TEST_ENGINE").ok();
    match (config_toml, engine) {
        (Some(body), Some(engine)) if !body.contains("[store]") => {
            Some(format!("{body}\n[store]\nengine = \"{engine}\"\n"))
        }
        (None, Some(engine)) => Some(format!("[store]\nengine = \"{engine}\"\n")),
        (body, _) => body.map(str::to_owned),
    }
}

/// Poll `check` until it is true or `WAIT` passes.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A persistent (clean session 0) v3.1.1 subscriber to `filter` at QoS 1, gone offline: what
/// the filter matches is kept for it. Returns its CONNECT, to come back with.
pub fn offline_subscriber(mqtt: SocketAddr, client_id: &str, filter: &str) -> raw::Connect {
    let session = raw::Connect::v3(client_id).clean(false);
    let mut subscriber = raw::Client::session(mqtt, &session);
    assert_eq!(subscriber.subscribe(&[(filter, 1)]), [1]);
    subscriber.disconnect();
    session
}

/// `watcher` has nothing before a message published now on `topic` (which it subscribes to): a
/// fresh client publishes one and it arrives next.
pub fn nothing_comes_before_a_later_message(
    mqtt: SocketAddr,
    watcher: &mut raw::Client,
    topic: &str,
) {
    let mut publisher = raw::Client::session(mqtt, &raw::Connect::v3("later-publisher"));
    assert_eq!(publisher.publish(topic, 1, false, b"later"), 0);
    let next = watcher
        .next_publish_within(WAIT)
        .expect("the later message");
    assert_eq!(
        (next.topic.as_str(), next.payload_str()),
        (topic, "later"),
        "something came before the later message"
    );
}

/// Wait until the daemon at `mqtt` (started with `sys_interval = 1`) reports at least `n` idle
/// connections parked (`$SYS/broker/clients/parked`): a test of what a parked connection still
/// does must know it is parked. Each look is a connection of its own, closed before the next
/// report, so that the watcher does not count itself.
pub fn wait_parked(mqtt: SocketAddr, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut watcher = raw::Client::session(mqtt, &raw::Connect::v3("parked-watcher"));
        assert_eq!(watcher.subscribe(&[("$SYS/broker/clients/parked", 0)]), [0]);
        let parked = watcher
            .next_publish_within(Duration::from_millis(1500))
            .and_then(|msg| msg.payload_str().parse::<u64>().ok())
            .unwrap_or(0);
        watcher.disconnect();
        if parked >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{parked} connections parked, not {n}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Run the `mqtter` binary with `args` (and `stdin`, if given) to its end, within `WAIT`.
pub fn run_cli(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(Daemon::binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mqtter");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        let _ = input.write_all(text.as_bytes());
    }
    drop(input);
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mqtter {args:?} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}
