//! Memory that must come back: session expiry timers do not pile up (nor keep ended sessions
//! alive), and the `storm` long test of `mqtter bench` runs against the real daemon (its
//! figures are in docs/BENCHMARKS.md).

use std::process::Command;

use crate::common::raw::{Client, Connect};
use crate::common::{Daemon, WAIT};

/// `$SYS/broker/tasks` of a daemon started with `sys_interval = 1`: a fresh value (one
/// published after this call).
fn tasks(daemon: &Daemon) -> u64 {
    let mut watcher = Client::session(daemon.mqtt, &Connect::v3("tasks-watcher"));
    assert_eq!(watcher.subscribe(&[("$SYS/broker/uptime", 0)]), [0]);
    // The retained uptime, then the next one: the tasks value after it is fresh.
    watcher.next_publish();
    watcher.next_publish();
    assert_eq!(watcher.subscribe(&[("$SYS/broker/tasks", 0)]), [0]);
    let value = watcher
        .next_publish()
        .payload_str()
        .parse()
        .expect("a count");
    watcher.disconnect();
    value
}

/// A client with a persistent session (expiry: an hour) comes and goes 200 times. Each going
/// starts the session's expiry timer; a coming back must stop it, or 200 timers (and the
/// sessions they hold) wait for an hour. `$SYS/broker/tasks` counts what is alive.
#[test]
fn expiry_timers_do_not_pile_up_as_a_client_comes_and_goes() {
    let daemon = Daemon::start_with(&["--allow-anonymous"], Some("sys_interval = 1\n"));
    let session = Connect::v5("mem-timer").session_expiry(3600).clean(false);
    Client::session(daemon.mqtt, &session).disconnect();
    let before = tasks(&daemon);
    for _ in 0..200 {
        Client::session(daemon.mqtt, &session).disconnect();
    }
    // A Clean Start ends the session: its timer goes too.
    Client::session(daemon.mqtt, &Connect::v5("mem-timer")).disconnect();
    let after = tasks(&daemon);
    assert!(
        after < before + 20,
        "{before} tasks before, {after} after 200 comings and goings"
    );
}

/// `mqtter bench --scenario storm` against the real daemon: damaged connections for a moment,
/// then the daemon's RSS back within the (generous, for a debug build) margin.
#[test]
fn the_storm_long_test_runs() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("storm.json");
    let pid = daemon.pid().expect("pid").to_string();
    let broker = daemon.mqtt.to_string();
    let output = Command::new(Daemon::binary())
        .args([
            "bench",
            "--scenario",
            "storm",
            "--quick",
            "--margin-mib",
            "32",
        ])
        .args(["--broker", &broker, "--broker-pid", &pid, "--json"])
        .arg(&json)
        .output()
        .expect("run mqtter bench");
    assert!(
        output.status.success(),
        "the storm failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the report")).unwrap();
    assert!(report["cases"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["passed"], true, "{report}");
    // The daemon still serves.
    let mut client = Client::session(daemon.mqtt, &Connect::v3("after-the-storm"));
    client.send(&[0xC0, 0x00]).unwrap();
    assert!(client.recv_within(WAIT).ok().flatten().is_some());
}
