//! Mosquitto's command-line clients (`mosquitto_pub`, `mosquitto_sub`, `mosquitto_rr`, from the
//! Debian package mosquitto-clients) run against the daemon under test.
//!
//! `mosquitto_sub` runs with `-d` so that a test sees its SUBACK before publishing, under
//! `stdbuf -oL` so that its lines arrive as they are printed, and with `-W` so it never outlives
//! a failed test by long.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Daemon, WAIT};

/// A running `mosquitto_sub`, subscribed.
pub struct Sub {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

/// One message as `mosquitto_sub -F %j` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub topic: String,
    pub qos: u64,
    pub retain: bool,
    pub payload: String,
}

impl Msg {
    pub fn parse(line: &str) -> Msg {
        let json: Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("mosquitto_sub printed {line:?}: {err}"));
        Msg {
            topic: json["topic"].as_str().expect("topic").to_owned(),
            qos: json["qos"].as_u64().expect("qos"),
            retain: json["retain"].as_u64().expect("retain") == 1,
            payload: json["payload"].as_str().expect("payload").to_owned(),
        }
    }
}

impl Sub {
    /// Start `mosquitto_sub` with `args` (plus host, port, `-d` and a `-W` bound) and wait for
    /// its SUBACK. `-F %j` is added unless `args` has its own `-F`.
    pub fn start(daemon: &Daemon, args: &[&str]) -> Sub {
        let mut sub = Sub::spawn(daemon, args);
        sub.wait_for_line("Subscribed (mid");
        sub
    }

    pub fn spawn(daemon: &Daemon, args: &[&str]) -> Sub {
        let port = daemon.port().to_string();
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &port, "-d"])
            .args(["-W", "60"]);
        if !args.contains(&"-F") {
            cmd.args(["-F", "%j"]);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run mosquitto_sub (apt-get install mosquitto-clients)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Sub { child, lines }
    }

    pub fn wait_for_line(&mut self, prefix: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return,
                Ok(_) => {}
                Err(_) => panic!("mosquitto_sub never printed {prefix:?}"),
            }
        }
    }

    /// The next `n` printed messages (debug lines skipped); `mosquitto_sub` is then expected to
    /// exit by itself (`-C n`).
    pub fn lines(mut self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("Client ") || line.starts_with("Subscribed") => {}
                Ok(line) => out.push(line),
                Err(_) => panic!("mosquitto_sub printed {out:?}, expected {n} messages"),
            }
        }
        let status = wait_child(&mut self.child, "mosquitto_sub");
        assert!(status.success(), "mosquitto_sub exited with {status}");
        out
    }

    pub fn messages(self, n: usize) -> Vec<Msg> {
        self.lines(n).iter().map(|l| Msg::parse(l)).collect()
    }

    /// SIGKILL: the process dies without a DISCONNECT.
    pub fn kill(mut self) {
        self.child.kill().expect("kill mosquitto_sub");
        let _ = self.child.wait();
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_child(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `mosquitto_pub` with `args` (plus host and port) to its successful end.
pub fn mosquitto_pub(daemon: &Daemon, args: &[&str]) {
    let port = daemon.port().to_string();
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run mosquitto_pub (apt-get install mosquitto-clients)");
    let status = wait_child(&mut child, "mosquitto_pub");
    assert!(
        status.success(),
        "mosquitto_pub {args:?} exited with {status}"
    );
}

/// Run `mosquitto_sub` to its end without waiting for a SUBACK first (e.g. `-E`).
pub fn mosquitto_sub_once(daemon: &Daemon, args: &[&str]) {
    let mut sub = Sub::spawn(daemon, args);
    let status = wait_child(&mut sub.child, "mosquitto_sub");
    assert!(
        status.success(),
        "mosquitto_sub {args:?} exited with {status}"
    );
}

impl Sub {
    /// The next printed line for which `pred` holds (debug lines and others passed over).
    pub fn next_line(&mut self, mut pred: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => {
                    panic!("mosquitto_sub never printed the line expected; it printed {seen:?}")
                }
            }
        }
    }

    /// The next printed line that is JSON (debug lines and other output skipped) for which
    /// `pred` holds (with `-F %p`: a payload); earlier JSON lines are passed over.
    pub fn next_json(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(json) = serde_json::from_str::<Value>(&line) {
                        if pred(&json) {
                            return json;
                        }
                        seen.push(json);
                    }
                }
                Err(_) => {
                    panic!("mosquitto_sub never printed the JSON expected; it printed {seen:?}")
                }
            }
        }
    }
}

/// Run `mosquitto_rr` (MQTT 5: a request with a Response Topic) with `args` (plus host and
/// port) to its end; the response's payload, as it printed it.
pub fn mosquitto_rr(daemon: &Daemon, args: &[&str]) -> String {
    let port = daemon.port().to_string();
    let mut child = Command::new("mosquitto_rr")
        .args(["-h", "127.0.0.1", "-p", &port, "-W", "20"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run mosquitto_rr (apt-get install mosquitto-clients)");
    let mut stdout = child.stdout.take().expect("stdout");
    let status = wait_child(&mut child, "mosquitto_rr");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out).expect("mosquitto_rr's output");
    assert!(
        status.success(),
        "mosquitto_rr {args:?} exited with {status}: {out}"
    );
    out.trim().to_owned()
}
