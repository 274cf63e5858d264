//! What the daemon's rules engine shows: the retained `$SYS/mqtter/rules/status` (a broken file
//! with line and column, keeping its last good version; fixing it clears it), `mqtter rules
//! list` and `mqtter rules trace` against the running daemon, a loop between two rules stopped
//! at the limit and reported, `loop {}` stopped within its budget while traffic flows, and a
//! rule acting as no account warned of at load until the account is declared.

use std::time::Duration;

use crate::common::raw::{Client, Connect};
use crate::common::rules::{SysWatch, counters_until, errors, traces_until, write_atomically};
use crate::common::{WAIT, im::World, run_cli};

fn account(id: &str) -> String {
    format!("persons:\n  - {{ id: {id}, password: {id}-pw }}\n")
}

const ECHO: &str = r#"
rules:
  - id: echo
    when: { topic: "e/in" }
    mode: queued
    do: 'publish("e/out", "v1:" + event.text)'
"#;

/// The echo rule's answer to one message on `e/in`.
fn echo(client: &mut Client, watcher: &mut Client, text: &str) -> String {
    client.publish("e/in", 1, false, text.as_bytes());
    let got = watcher.next_publish_within(WAIT).expect("the echo");
    got.payload_str().to_owned()
}

/// The warnings of a status, as `file:line: message`.
fn warnings(status: &serde_json::Value) -> Vec<String> {
    status["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|d| {
                    let file = d["file"].as_str().unwrap_or_default();
                    let file = file.rsplit('/').next().unwrap_or_default();
                    format!(
                        "{file}:{}: {}",
                        d["line"],
                        d["message"].as_str().unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A rule without `as:` acts as `[rules] account` (`rules`): when no such account exists, what
/// it does is refused, so the load says so, with the rule's file and line, and the warning goes
/// once a file declares the account (without a secret: it cannot log in) and the rule works.
#[test]
fn a_rule_acting_as_no_account_is_warned_of_until_the_account_exists() {
    let world = World::start(&[("echo.yaml", ECHO)], "allow_anonymous = true\n");
    let mqtt = world.daemon.mqtt;
    let mut status = SysWatch::status(mqtt);
    let loaded = status.status_until("the warning", |s| !warnings(s).is_empty());
    let found = warnings(&loaded);
    assert_eq!(found.len(), 1, "{loaded}");
    assert!(
        found[0].starts_with("echo.yaml:3: rule `echo` acts as `rules`, which is no account"),
        "{found:?}"
    );
    // Declared without a secret: an account that cannot log in, for the rule to act as.
    std::fs::write(
        world.rules.path().join("rules-account.yaml"),
        "persons:\n  - { id: rules }\n",
    )
    .expect("write the account's file");
    status.status_until("the warning gone", |s| {
        warnings(s).is_empty() && s["ok"] == true
    });
    let mut watcher = Client::session(mqtt, &Connect::v3("watcher"));
    assert_eq!(watcher.subscribe(&[("e/out", 0)]), [0]);
    let mut client = Client::session(mqtt, &Connect::v3("client"));
    assert_eq!(echo(&mut client, &mut watcher, "now"), "v1:now");
    for password in ["", "rules", "rules-pw"] {
        let (_, connack) = Client::connect(mqtt, &Connect::v5("rules").login("rules", password));
        assert_eq!(connack.code(), 0x86, "logged in as rules with {password:?}");
    }
}

#[test]
fn a_broken_file_keeps_its_last_version_and_reports_line_and_column_until_fixed() {
    let world = World::start(
        &[("rules.yaml", &(account("rules") + ECHO))],
        "allow_anonymous = true\n",
    );
    let mqtt = world.daemon.mqtt;
    let mut status = SysWatch::status(mqtt);
    let first = status.status_until("the folder loaded", |s| s["rules"] == 1);
    assert_eq!(first["ok"], true, "{first}");
    let mut watcher = Client::session(mqtt, &Connect::v3("watcher"));
    assert_eq!(watcher.subscribe(&[("e/out", 0)]), [0]);
    let mut client = Client::session(mqtt, &Connect::v3("client"));
    assert_eq!(echo(&mut client, &mut watcher, "a"), "v1:a");

    // A syntax error in the script, on line 5 of the file.
    let file = world.rules.path().join("rules.yaml");
    let broken = account("rules")
        + "rules:\n  - id: echo\n    when: { topic: \"e/in\" }\n    do: 'publish(\"e/out\" \"v2\")'\n";
    write_atomically(&file, &broken);
    let failing = status.status_until("the error", |s| s["ok"] == false);
    let found = errors(&failing);
    assert_eq!(found.len(), 1, "{failing}");
    assert!(found[0].starts_with("rules.yaml:6:"), "{found:?}");
    assert_eq!(failing["files"][0]["last_good"], true, "{failing}");
    // The last good version still answers.
    assert_eq!(echo(&mut client, &mut watcher, "b"), "v1:b");
    // `mqtter rules list` says so too.
    let host = mqtt.to_string();
    let listed = run_cli(&["rules", "list", "--host", &host], None);
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.status.success(), "{listed:?}");
    assert!(text.contains("rules.yaml:6:"), "{text}");
    assert!(text.contains("last good version"), "{text}");
    assert!(text.contains("echo"), "{text}");

    // Fixed (written in place this time): the error is gone and the new version answers.
    std::fs::write(
        &file,
        account("rules") + ECHO.replace("v1:", "v2:").as_str(),
    )
    .unwrap();
    let fixed = status.status_until("the fix", |s| s["ok"] == true);
    assert!(errors(&fixed).is_empty(), "{fixed}");
    assert_eq!(echo(&mut client, &mut watcher, "c"), "v2:c");

    // Its trace, as `mqtter rules trace` shows it.
    traces_until(mqtt, "echo", |t| t.len() >= 3);
    let traced = run_cli(&["rules", "trace", "echo", "--host", &host], None);
    let text = String::from_utf8_lossy(&traced.stdout).into_owned();
    assert!(traced.status.success(), "{traced:?}");
    assert!(text.contains("publish e/out"), "{text}");
    assert!(text.contains("topic e/in"), "{text}");
    let unknown = run_cli(
        &[
            "rules",
            "trace",
            "nothing",
            "--host",
            &host,
            "--wait-ms",
            "500",
        ],
        None,
    );
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no rule nothing"),
        "{unknown:?}"
    );

    // A removed file's rules go, and so do their topics.
    std::fs::remove_file(&file).unwrap();
    status.status_until("no rules", |s| s["rules"] == 0);
    let topic = "$SYS/mqtter/rules/echo/counters";
    let mut gone = Client::session(mqtt, &Connect::v3("gone"));
    assert_eq!(gone.subscribe(&[(topic, 0)]), [0]);
    crate::common::eventually("the counters topic cleared", || {
        let mut look = Client::session(mqtt, &Connect::v3("look"));
        assert_eq!(look.subscribe(&[(topic, 0)]), [0]);
        look.next_publish_within(Duration::from_millis(300))
            .is_none()
    });
}

#[test]
fn a_loop_between_two_rules_stops_at_the_limit_and_is_reported() {
    let rules = account("rules")
        + r#"
rules:
  - id: ping
    when: { topic: "loop/ping" }
    mode: parallel
    do: 'publish("loop/pong", event.text)'
  - id: pong
    when: { topic: "loop/pong" }
    mode: parallel
    do: 'publish("loop/ping", event.text)'
"#;
    let world = World::start(
        &[("loop.yaml", &rules)],
        "allow_anonymous = true\n[rules]\nmax_hops = 6\nmax_repeats = 100\n",
    );
    let mqtt = world.daemon.mqtt;
    let mut status = SysWatch::status(mqtt);
    // The static check warned at load.
    let loaded = status.status_until("loaded", |s| s["rules"] == 2);
    let warnings = loaded["warnings"].to_string();
    assert!(
        warnings.contains("ping -> pong -> ping") || warnings.contains("pong -> ping -> pong"),
        "{loaded}"
    );
    let mut client = Client::session(mqtt, &Connect::v3("starter"));
    client.publish("loop/ping", 1, false, b"go");
    let stopped = status.status_until("the chain stopped", |s| s["chains_stopped"] == 1);
    let last = &stopped["last_stopped"];
    assert_eq!(last["hop"], 6, "{stopped}");
    assert!(
        last["reason"].as_str().unwrap().contains("max_hops"),
        "{stopped}"
    );
    // (`parallel`: with `single`, ping's next event may come while its run still returns.)
    // ping at hops 0, 2, 4 and pong at 1, 3, 5 ran; ping at hop 6 was stopped (a stopped run
    // counts as run, with its reason in the trace).
    let ping = counters_until(mqtt, "ping", |c| c["matched"] == 4 && c["stopped"] == 1);
    let pong = counters_until(mqtt, "pong", |c| c["matched"] == 3);
    assert_eq!(pong["stopped"], 0, "{pong}");
    assert_eq!(ping["ran"], 4, "{ping}");
    assert_eq!(last["rule"], "ping", "{stopped}");
}

#[test]
fn an_endless_script_is_stopped_within_its_budget_while_traffic_flows() {
    let rules = account("rules")
        + r#"
rules:
  - id: spin
    when: { topic: "spin/go" }
    mode: parallel
    do: 'loop { }'
  - id: echo
    when: { topic: "e/in" }
    do: 'publish("e/out", event.text)'
"#;
    let world = World::start(
        &[("spin.yaml", &rules)],
        "allow_anonymous = true\n[rules]\nbudget_ms = 300\nmax_operations = 1000000000000\n",
    );
    let mqtt = world.daemon.mqtt;
    let mut client = Client::session(mqtt, &Connect::v3("spinner"));
    let mut watcher = Client::session(mqtt, &Connect::v3("watcher"));
    assert_eq!(watcher.subscribe(&[("plain/#", 0), ("e/out", 0)]), [0, 0]);
    // Start the endless script on one worker; the other keeps serving rules, and plain traffic
    // is never held up by either.
    client.publish("spin/go", 1, false, b"1");
    for n in 0..20 {
        let text = format!("m{n}");
        client.publish("plain/x", 1, false, text.as_bytes());
        let got = watcher.next_publish_within(WAIT).expect("plain traffic");
        assert_eq!(got.payload_str(), text);
    }
    client.publish("e/in", 1, false, b"still");
    let echoed = watcher.next_publish_within(WAIT).expect("the echo");
    assert_eq!(echoed.payload_str(), "still");
    let spin = counters_until(mqtt, "spin", |c| c["stopped"] == 1);
    assert_eq!(spin["failed"], 0, "{spin}");
    let traces = traces_until(mqtt, "spin", |t| !t.is_empty());
    assert_eq!(traces[0]["outcome"], "stopped", "{traces:?}");
    assert_eq!(traces[0]["reason"], "over its time budget", "{traces:?}");
}

fn example(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn the_example_folders_load_without_problems_on_the_daemon() {
    for name in ["quickstart", "smart-home", "factory"] {
        let config = format!("rules_dir = {:?}\n", example(name));
        let daemon = crate::common::Daemon::start_with(&["--allow-anonymous"], Some(&config));
        let status = SysWatch::status(daemon.mqtt).status_until("loaded", |s| s["rules"] != 0);
        assert_eq!(status["ok"], true, "{name}: {status}");
        assert_eq!(
            status["warnings"],
            serde_json::Value::Null,
            "{name}: {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_rule_tells_alice_of_a_warm_kitchen() {
    let config = format!("rules_dir = {:?}\n", example("quickstart"));
    let daemon = crate::common::Daemon::start_with(&["--allow-anonymous"], Some(&config));
    let mut alice = crate::common::im::Peer::connect(daemon.port(), "alice", true, 30).await;
    alice.sync().await;
    let sensor = crate::common::im::Peer::connect(daemon.port(), "sensor", false, 30).await;
    // 21.5 is not over 25; 27 is.
    sensor.send("sensors/kitchen/temp", "21.5").await;
    sensor.send("sensors/kitchen/temp", "27").await;
    let notice = alice.notice("notice").await;
    assert_eq!(notice["text"], "sensors/kitchen/temp reads 27", "{notice}");
    assert_eq!(notice["rule"], "too-warm-tells-alice", "{notice}");
}
