//! The daemon's rules over time: a folder rewritten 20 times under traffic (atomic renames and
//! in-place writes caught half done) handles every event exactly once, by the version in force;
//! an `after` timer outlives a stop (SIGTERM) and a crash (SIGKILL).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::WAIT;
use crate::common::im::World;
use crate::common::raw::{Client, Connect};
use crate::common::rules::{SysWatch, counters_until, write_atomically};

const ACCOUNT: &str = "persons:\n  - { id: rules, password: rules-pw }\n";

/// Version `v` of the counting rule.
fn version(v: u32) -> String {
    format!(
        "{ACCOUNT}rules:\n  - id: count\n    when: {{ topic: \"r/in\" }}\n    mode: parallel\n    \
         do: 'publish(\"r/out\", \"v{v}:\" + event.text, #{{ qos: 1 }})'\n"
    )
}

/// Write `text` in place in two steps, as an editor that saves in place may be caught: the
/// first half (cut inside the script's string, so that it does not load) is there a moment.
fn write_in_place_in_two_steps(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let cut = text.find("\"v").expect("the script") + 2;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open the rules file");
    file.write_all(&text.as_bytes()[..cut]).unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    file.write_all(&text.as_bytes()[cut..]).unwrap();
    file.flush().unwrap();
}

#[test]
fn every_event_is_handled_once_while_the_folder_is_rewritten_20_times() {
    let world = World::start(&[("count.yaml", &version(0))], "allow_anonymous = true\n");
    let mqtt = world.daemon.mqtt;
    let file = world.rules.path().join("count.yaml");
    SysWatch::status(mqtt).status_until("loaded", |s| s["rules"] == 1);
    let mut watcher = Client::session(mqtt, &Connect::v3("watcher").clean(true));
    assert_eq!(watcher.subscribe(&[("r/out", 1)]), [1]);
    // Read all along (a subscriber that does not read has its queue bound).
    let (answers, answered) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        while let Some(got) = watcher.next_publish_within(WAIT * 3) {
            if answers.send(got.payload_str().to_owned()).is_err() {
                return;
            }
        }
    });

    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut client = Client::session(mqtt, &Connect::v3("publisher"));
            let mut sent = 0u32;
            while !done.load(Ordering::Relaxed) {
                assert_eq!(
                    client.publish("r/in", 1, false, sent.to_string().as_bytes()),
                    0
                );
                sent += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        })
    };
    for v in 1..=20 {
        std::thread::sleep(Duration::from_millis(250));
        if v % 2 == 0 {
            write_atomically(&file, &version(v));
        } else {
            write_in_place_in_two_steps(&file, &version(v));
        }
    }
    // The last version is in force.
    let mut status = SysWatch::status(mqtt);
    status.status_until("version 20 loaded", |s| {
        s["ok"] == true && s["loaded_at"].as_u64().is_some()
    });
    done.store(true, Ordering::Relaxed);
    let sent = publisher.join().expect("the publisher");
    assert!(sent > 0);

    // Every event answered once: received, and counted once by the rule (kept across reloads).
    let mut seen: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    while seen.len() < sent as usize {
        let got = answered
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{} of {sent} answered", seen.len()));
        let (v, n) = got.split_once(':').expect("vN:n");
        seen.entry(n.parse().unwrap())
            .or_default()
            .push(v.to_owned());
    }
    let counters = counters_until(mqtt, "count", |c| {
        c["ran"].as_u64() >= Some(u64::from(sent))
    });
    assert_eq!(counters["matched"], sent, "{counters}");
    assert_eq!(counters["ran"], sent, "{counters}");
    let twice: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "answered more than once: {twice:?}");
    // Some events were answered by later versions than the first.
    assert!(seen.values().any(|v| v[0] != "v0"), "{seen:?}");

    // After the last rewrite, version 20 answers.
    let mut client = Client::session(mqtt, &Connect::v3("late"));
    assert_eq!(client.publish("r/in", 1, false, b"last"), 0);
    let last = answered.recv_timeout(WAIT).expect("the last answer");
    assert_eq!(last, "v20:last");
}

const TIMER: &str = r#"
rules:
  - id: set
    when: { topic: "a/set" }
    mode: queued
    do: 'after(1500, "wake", #{ v: event.text })'
  - id: wake
    when: { timer: wake }
    do: 'publish("a/fired", event.data.v, #{ qos: 1, retain: true })'
"#;

/// The retained value of `a/fired` once it is `expected`.
fn fired(mqtt: std::net::SocketAddr, expected: &str) {
    crate::common::eventually(&format!("a/fired = {expected}"), || {
        let mut look = Client::session(mqtt, &Connect::v3("look"));
        assert_eq!(look.subscribe(&[("a/fired", 1)]), [1]);
        look.next_publish_within(Duration::from_millis(500))
            .is_some_and(|p| p.payload_str() == expected)
    });
}

#[test]
fn an_after_timer_fires_after_a_stop_and_after_a_crash() {
    let rules = ACCOUNT.to_owned() + TIMER;
    let mut world = World::start(&[("timer.yaml", &rules)], "allow_anonymous = true\n");
    let mut client = Client::session(world.daemon.mqtt, &Connect::v3("setter"));
    assert_eq!(client.publish("a/set", 1, false, b"after-stop"), 0);
    // The rule that sets it has run (its counters start at 0 with each daemon).
    counters_until(world.daemon.mqtt, "set", |c| c["ran"] == 1);
    // A clean stop: the engine stops with the daemon, the timer stays in the store.
    let status = world.daemon.terminate();
    assert!(status.success(), "{status:?}");
    world.daemon.restart();
    fired(world.daemon.mqtt, "after-stop");

    let mut client = Client::session(world.daemon.mqtt, &Connect::v3("setter"));
    assert_eq!(client.publish("a/set", 1, false, b"after-crash"), 0);
    // The rule that sets it has run (its counters start at 0 with each daemon).
    counters_until(world.daemon.mqtt, "set", |c| c["ran"] == 1);
    world.daemon.kill();
    world.daemon.restart();
    fired(world.daemon.mqtt, "after-crash");
    let status =
        SysWatch::status(world.daemon.mqtt).status_until("no timer left", |s| s["timers"] == 0);
    assert_eq!(status["ok"], true, "{status}");
}
