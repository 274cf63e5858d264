//! A short smoke run of every `mqtter bench` scenario against the real daemon, so the load
//! generator never rots. It checks that each scenario completes and delivers what it sent; it
//! asserts no speed (figures belong in docs/BENCHMARKS.md).

use std::process::Command;

use crate::common::Daemon;

/// Run `mqtter bench ARGS --json FILE` and return the records.
fn bench(args: &[&str]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("results.json");
    let output = Command::new(Daemon::binary())
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run mqtter bench");
    assert!(
        output.status.success(),
        "mqtter bench failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("the JSON results");
    serde_json::from_str::<Vec<serde_json::Value>>(&text).expect("a JSON array")
}

fn check(records: &[serde_json::Value], expected_names: &[&str]) {
    let names: Vec<&str> = records.iter().filter_map(|r| r["name"].as_str()).collect();
    for name in expected_names {
        assert!(
            names.contains(name),
            "scenario {name} did not run: {names:?}"
        );
    }
    for record in records {
        let name = record["name"].as_str().unwrap_or("?");
        assert!(
            record["error"].is_null(),
            "{name} failed: {}",
            record["error"]
        );
        assert_eq!(record["timed_out"], false, "{name} timed out");
        if name == "conns" {
            assert!(
                record["conn_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
                "{name}: {record}"
            );
            continue;
        }
        let delivered = record["messages"].as_u64().unwrap_or(0);
        assert!(delivered > 0, "{name} delivered nothing: {record}");
        if record["qos"].as_u64() == Some(1) {
            // QoS 1 loses nothing; QoS 0 may, by design, under overload.
            assert_eq!(
                record["lost"].as_u64().unwrap_or(0),
                0,
                "{name} lost messages: {record}"
            );
        }
    }
}

/// Queues as unbounded as the compared brokers' (benches/compare.sh), so that QoS 1 bursts from
/// many publishers to one subscriber are queued, not dropped by the default `max_queued`.
const UNBOUNDED: &str = "[limits]\nmax_queued = 10000000\n";

#[test]
fn every_plain_scenario_runs_against_the_daemon() {
    let daemon = Daemon::start_with(&["--allow-anonymous"], Some(UNBOUNDED));
    let broker = daemon.mqtt.to_string();
    let pid = daemon.pid().expect("pid").to_string();
    let records = bench(&[
        "--broker",
        &broker,
        "--broker-pid",
        &pid,
        "--quick",
        "--scenario",
        "conns,pairs,fanout,fanin",
    ]);
    check(
        &records,
        &[
            "conns",
            "pairs-qos0",
            "pairs-qos1",
            "pairs-qos0-rate",
            "pairs-qos1-rate",
            "fanout-qos0",
            "fanout-qos1",
            "fanin-qos0",
            "fanin-qos1",
        ],
    );
}

/// The sustained shape runs against the daemon's default queue limits: publishers as fast as it
/// takes them, and not one acknowledged QoS 1 message lost (backpressure, docs/PROTOCOL.md).
#[test]
fn the_sustained_scenarios_lose_no_acknowledged_message_with_default_limits() {
    let daemon = Daemon::start();
    let broker = daemon.mqtt.to_string();
    // QoS 0 publishers fill their sockets' buffers (megabytes each) before the broker slows
    // them: only the smallest QoS 0 shape, whose backlog an unoptimised build drains in time.
    let scenarios = [
        "sustain-pairs2-qos0",
        "sustain-pairs2-qos1",
        "sustain-pairs10-qos1",
        "sustain-fanout8-qos1",
    ];
    let records = bench(&[
        "--broker",
        &broker,
        "--quick",
        "--timeout-secs",
        "120",
        "--scenario",
        &scenarios.join(","),
    ]);
    check(&records, &scenarios);
}

#[test]
fn every_im_scenario_runs_against_the_daemon() {
    let setup = tempfile::tempdir().expect("temp dir");
    let status = Command::new(Daemon::binary())
        .args(["bench", "--quick", "--im-setup"])
        .arg(setup.path())
        .status()
        .expect("mqtter bench --im-setup");
    assert!(status.success());
    let config = std::fs::read_to_string(setup.path().join("mqtter.toml")).expect("config");
    // The bench checks that the broker answers MQTT with an anonymous probe first.
    let daemon = Daemon::start_with(
        &["--allow-anonymous"],
        Some(&format!("{config}\n{UNBOUNDED}")),
    );
    let broker = daemon.mqtt.to_string();
    let records = bench(&["--broker", &broker, "--quick", "--scenario", "im"]);
    check(
        &records,
        &[
            "im-direct",
            "im-direct-ref",
            "im-group",
            "im-group-ref",
            "im-reconnect",
        ],
    );
}

/// The rules and things scenarios start a daemon of their own (this binary) on the folder they
/// write: each runs, loses nothing, and the rules engine saw every event; `rules-reload`
/// reloaded its folder under the stream of events and reports how long that took.
#[test]
fn every_rules_and_things_scenario_runs_on_a_daemon_of_its_own() {
    let scenarios = [
        "rules-0",
        "rules-1000",
        "rules-chain",
        "rules-reload",
        "things-roundtrip",
    ];
    let records = bench(&[
        "--quick",
        "--timeout-secs",
        "120",
        "--scenario",
        "rules,things",
    ]);
    check(&records, &scenarios);
    let by_name = |name: &str| {
        records
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {records:?}"))
    };
    for name in scenarios {
        let r = by_name(name);
        assert_eq!(r["broker"], "own daemon", "{r}");
        assert_eq!(r["messages"], r["expected"], "{name}: {r}");
        assert!(r["p99_us"].as_f64().is_some_and(|p| p > 0.0), "{r}");
        assert!(r["broker_cpu_secs"].as_f64().is_some(), "{r}");
    }
    // Every plain message was an event for the rules engine once it had rules.
    let thousand = by_name("rules-1000");
    assert_eq!(thousand["rule_events"], thousand["published"], "{thousand}");
    assert_eq!(by_name("rules-0")["rule_events"], 0);
    let reload = by_name("rules-reload");
    assert_eq!(reload["reloads"], 3, "{reload}");
    for key in ["reload_mean_ms", "reload_worst_ms"] {
        assert!(
            reload[key].as_f64().is_some_and(|ms| ms > 0.0),
            "{key}: {reload}"
        );
    }
}
