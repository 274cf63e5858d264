//! The daemon as an operator sees it: `mqtter config --print-default`, clear errors for bad
//! configuration, a graceful stop on SIGTERM that keeps what was stored, and the
//! `$SYS/broker/...` topics.

use std::collections::HashMap;
use std::time::Instant;

use crate::common::raw::{Client, Connect};
use crate::common::{
    Daemon, WAIT, nothing_comes_before_a_later_message, offline_subscriber, run_cli,
};

/// The printed default configuration is valid TOML, equal to the built-in defaults, and a
/// daemon starts with it (its `allow_anonymous = false` shows: anonymous clients are refused).
#[test]
fn the_printed_default_configuration_starts_the_daemon() {
    let out = run_cli(&["config", "--print-default"], None);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let parsed: mqtter::Config = toml::from_str(&text).expect("the printed default parses");
    assert_eq!(parsed, mqtter::Config::default());

    // The harness overrides listen, ws_listen and data with flags; the rest comes from the file.
    let daemon = Daemon::start_with(&[], Some(&text));
    assert_eq!(daemon.ws_path, "/mqtt");
    let (_client, connack) = Client::connect(daemon.mqtt, &Connect::v3("anon"));
    assert_eq!(connack.code(), 0x05, "anonymous access is off by default");
}

/// `mqtter serve` with an unusable configuration exits non-zero before listening, with a
/// message naming the file or the key, said once.
#[test]
fn a_bad_configuration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let cases: [(&str, Option<&str>, &[&str]); 6] = [
        (
            "unknown-key",
            Some("lisen = \"127.0.0.1:1\"\n"),
            &["lisen", "unknown field"],
        ),
        (
            "bad-address",
            Some("listen = \"nowhere\"\n"),
            &["listen", "nowhere"],
        ),
        (
            "bad-syntax",
            Some("listen = \n"),
            &["bad-syntax.toml", "line 1"],
        ),
        (
            "bad-type",
            Some("[limits]\nmax_connections = \"many\"\n"),
            &["max_connections", "invalid type"],
        ),
        (
            "bad-acl",
            Some("[[acl]]\ntopic = \"a/#/b\"\naccess = \"read\"\n"),
            &["acl", "a/#/b"],
        ),
        ("missing", None, &["missing.toml", "cannot read"]),
    ];
    for (name, body, expected) in cases {
        let path = dir.path().join(format!("{name}.toml"));
        if let Some(body) = body {
            std::fs::write(&path, body).unwrap();
        }
        let path = path.to_str().unwrap();
        let out = run_cli(
            &[
                "serve",
                "--config",
                path,
                "--listen",
                "127.0.0.1:0",
                "--ws-listen",
                "off",
                "--data",
                data,
            ],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{name}: the daemon accepted it");
        assert!(!stdout.contains("listening"), "{name}: the daemon listened");
        for word in expected {
            assert!(stderr.contains(word), "{name}: {word:?} not in {stderr}");
        }
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.starts_with("mqtter: "), "{name}: {stderr}");
        assert_eq!(
            stderr.matches(expected[1]).count(),
            1,
            "{name}: the message is repeated: {stderr}"
        );
    }
    // A bad flag value, too.
    let out = run_cli(
        &[
            "serve",
            "--durability",
            "maybe",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data,
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("durability"));
}

/// SIGTERM: connected v5 clients are told (DISCONNECT 0x8B Server shutting down), the daemon
/// exits 0, and retained messages (QoS 0 ones too, which are not flushed before their
/// acknowledgement) and queued messages of persistent sessions are there after a restart.
#[test]
fn sigterm_stops_gracefully_and_keeps_the_store() {
    let mut daemon = Daemon::start();
    let mut sleeper = Client::session(daemon.mqtt, &Connect::v3("sleeper").clean(false));
    assert_eq!(sleeper.subscribe(&[("mail/#", 1)]), [1]);
    sleeper.disconnect();

    let mut publisher = Client::session(daemon.mqtt, &Connect::v3("publisher"));
    publisher.publish("kept/qos0", 0, true, b"zero");
    assert_eq!(publisher.publish("kept/qos1", 1, true, b"one"), 0);
    assert_eq!(publisher.publish("mail/box", 1, false, b"letter"), 0);
    // A round trip, so that the QoS 0 PUBLISH before it has been handled.
    assert_eq!(publisher.subscribe(&[("nothing", 0)]), [0]);

    let mut v5 = Client::session(daemon.mqtt, &Connect::v5("told"));
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");
    let packets = v5.expect_closed();
    assert!(
        packets
            .iter()
            .any(|p| p.kind == crate::common::raw::DISCONNECT && p.code() == 0x8B),
        "v5 client not told of the shutdown: {packets:?}"
    );

    daemon.restart();
    let mut reader = Client::session(daemon.mqtt, &Connect::v5("reader"));
    assert_eq!(reader.subscribe(&[("kept/#", 1)]), [1]);
    let mut kept = HashMap::new();
    while kept.len() < 2 {
        let msg = reader.next_publish();
        assert!(msg.retain);
        kept.insert(msg.topic.clone(), msg.payload_str().to_owned());
    }
    assert_eq!(kept["kept/qos0"], "zero");
    assert_eq!(kept["kept/qos1"], "one");

    let (mut sleeper, connack) = Client::connect(daemon.mqtt, &Connect::v3("sleeper").clean(false));
    assert!(connack.session_present(), "the persistent session was lost");
    let msg = sleeper.next_publish();
    assert_eq!(
        (msg.topic.as_str(), msg.payload_str()),
        ("mail/box", "letter")
    );
}

/// A SIGTERM the moment the daemon has said it is listening is already a graceful stop (exit
/// status 0), not death by the signal.
#[test]
fn sigterm_right_after_the_start_is_a_graceful_stop() {
    for _ in 0..20 {
        let mut daemon = Daemon::start();
        let status = daemon.terminate();
        assert!(status.success(), "exit status {status}");
    }
}

/// SIGTERM closes every connection without the client's goodbye, so the wills of the clients
/// connected at the stop are kept and published at the next start, as after a crash
/// [MQTT-3.1.2-8]; a client that left with DISCONNECT before leaves none [MQTT-3.1.2-10].
#[test]
fn sigterm_keeps_the_wills_of_connected_clients_for_the_next_start() {
    let mut daemon = Daemon::start();
    let session = offline_subscriber(daemon.mqtt, "will-watcher", "stop/will/#");
    let _connected = Client::session(
        daemon.mqtt,
        &Connect::v5("connected").will("stop/will/connected", b"broker stopped", 1, false),
    );
    let polite = Client::session(
        daemon.mqtt,
        &Connect::v3("polite").will("stop/will/polite", b"never sent", 1, false),
    );
    polite.disconnect();

    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");
    daemon.restart();
    let mut watcher = Client::session(daemon.mqtt, &session);
    let will = watcher.next_publish();
    assert_eq!(
        (will.topic.as_str(), will.payload_str()),
        ("stop/will/connected", "broker stopped")
    );
    // Nothing else: the polite client's will was dropped with its DISCONNECT.
    nothing_comes_before_a_later_message(daemon.mqtt, &mut watcher, "stop/will/after");
}

/// SIGTERM reaches parked connections too (idle ones, waiting without a task): each v5 client
/// is told (DISCONNECT 0x8B), and the daemon exits 0.
#[test]
fn sigterm_disconnects_parked_connections() {
    let mut daemon = Daemon::start_with(&["--allow-anonymous"], Some("sys_interval = 1\n"));
    let mut clients: Vec<Client> = (0..3)
        .map(|i| Client::session(daemon.mqtt, &Connect::v5(&format!("parked-{i}"))))
        .collect();
    crate::common::wait_parked(daemon.mqtt, 3);
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");
    for client in &mut clients {
        let packets = client.expect_closed();
        assert!(
            matches!(packets.as_slice(), [p] if p.kind == crate::common::raw::DISCONNECT && p.code() == 0x8B),
            "expected one DISCONNECT 0x8B, got {packets:?}"
        );
    }
}

/// Read `$SYS/broker/...` messages until `done` holds for the latest values.
fn sys_until(
    client: &mut Client,
    values: &mut HashMap<String, String>,
    done: impl Fn(&HashMap<String, String>) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(values) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = client
            .next_publish_within(left)
            .unwrap_or_else(|| panic!("$SYS values never got there: {values:?}"));
        values.insert(msg.topic.clone(), msg.payload_str().to_owned());
    }
}

fn number(values: &HashMap<String, String>, topic: &str) -> u64 {
    values
        .get(topic)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `$SYS` values are the running broker's own: they are not stored, so after a restart with
/// `$SYS` turned off a subscriber to `$SYS/#` gets no stale values of the broker before.
#[test]
fn sys_values_do_not_outlive_the_broker_that_published_them() {
    let mut daemon = Daemon::start_with(&["--allow-anonymous"], Some("sys_interval = 1\n"));
    let mut sys = Client::session(daemon.mqtt, &Connect::v3("sys-watcher"));
    assert_eq!(sys.subscribe(&[("$SYS/broker/uptime", 0)]), [0]);
    sys.next_publish();
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}");

    daemon.rewrite_config("sys_interval = 0\n");
    daemon.restart();
    let mut sys = Client::session(daemon.mqtt, &Connect::v3("sys-watcher"));
    assert_eq!(sys.subscribe(&[("$SYS/#", 0), ("after", 1)]), [0, 1]);
    nothing_comes_before_a_later_message(daemon.mqtt, &mut sys, "after");
}

/// `$SYS/broker/...` is published every `sys_interval` seconds: version, uptime, clients
/// connected, messages received. `#` does not match it [MQTT-4.7.2-1] and clients cannot publish
/// to it.
#[test]
fn sys_topics_report_the_broker() {
    let daemon = Daemon::start_with(&["--allow-anonymous"], Some("sys_interval = 1\n"));
    let mut sys = Client::session(daemon.mqtt, &Connect::v3("sys-watcher"));
    assert_eq!(sys.subscribe(&[("$SYS/broker/#", 0)]), [0]);
    let mut everything = Client::session(daemon.mqtt, &Connect::v3("everything"));
    assert_eq!(everything.subscribe(&[("#", 0)]), [0]);
    let mut publisher = Client::session(daemon.mqtt, &Connect::v5("sys-publisher"));
    for i in 0..5 {
        publisher.publish("plain/count", 1, false, format!("{i}").as_bytes());
    }

    let mut values = HashMap::new();
    sys_until(&mut sys, &mut values, |v| {
        number(v, "$SYS/broker/clients/connected") >= 3
            && number(v, "$SYS/broker/publish/messages/received") >= 5
            && number(v, "$SYS/broker/messages/received") >= 5
            && v.contains_key("$SYS/broker/version")
            && v.contains_key("$SYS/broker/uptime")
    });
    assert!(
        values["$SYS/broker/version"].starts_with("mqtter "),
        "{values:?}"
    );
    let uptime = &values["$SYS/broker/uptime"];
    assert!(
        uptime.ends_with(" seconds") && number(&values, "$SYS/broker/uptime") < 3600,
        "{uptime}"
    );

    // The uptime advances.
    let before = number(&values, "$SYS/broker/uptime");
    sys_until(&mut sys, &mut values, |v| {
        number(v, "$SYS/broker/uptime") > before
    });

    // The `#` subscriber got the plain messages and no $SYS topic, though several ticks passed.
    for i in 0..5 {
        let msg = everything.next_publish();
        assert_eq!(
            (msg.topic.as_str(), msg.payload_str()),
            ("plain/count", i.to_string().as_str())
        );
    }
    publisher.publish("plain/marker", 1, false, b"end");
    let msg = everything.next_publish();
    assert_eq!(
        msg.topic, "plain/marker",
        "a wildcard subscription matched $SYS"
    );

    // Clients cannot publish to $SYS.
    assert_eq!(
        publisher.publish("$SYS/broker/version", 1, true, b"fake"),
        0x87
    );
    let mut late = Client::session(daemon.mqtt, &Connect::v3("late"));
    assert_eq!(late.subscribe(&[("$SYS/broker/version", 0)]), [0]);
    let msg = late.next_publish();
    assert!(msg.payload_str().starts_with("mqtter "), "{msg:?}");
}
