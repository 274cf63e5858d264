//! The rules engine driven with real events through a recording `Actions`: a test double for the
//! broker (it records each action and feeds a published message back in as the event the daemon
//! would emit, one hop further; a command to a thing is answered by the thing's state report, as a
//! device would). End-to-end tests on the real daemon come when the engine is wired into it.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqtter_rules::Rules;
use mqtter_rules::events::{
    ActionError, ActionPublish, Actions, Actor, ActorKind, Chain, Event, EventData, PublishEvent,
};
use mqtter_rules::exec::Config;
use mqtter_rules::stats::Outcome;
use mqtter_rules::world::FolderWorld;
use serde_json::{Value, json};

/// What the engine did, in order.
#[derive(Debug, Clone)]
enum Done {
    Published(ActionPublish),
    Notified(String, Value, Chain),
}

#[derive(Default)]
struct Recorder {
    rules: Mutex<Weak<Rules>>,
    done: Mutex<Vec<Done>>,
    changed: Condvar,
}

impl Recorder {
    fn push(&self, done: Done) {
        self.done.lock().unwrap().push(done);
        self.changed.notify_all();
    }

    fn emit(&self, event: Event) {
        let rules = self.rules.lock().unwrap().upgrade();
        if let Some(rules) = rules {
            rules.on_event(&event);
        }
    }

    /// Wait (generously) until `pred` holds over what was done; what was done.
    fn wait_for(&self, what: &str, pred: impl Fn(&[Done]) -> bool) -> Vec<Done> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut done = self.done.lock().unwrap();
        while !pred(&done) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}: {done:#?}");
            done = self.changed.wait_timeout(done, left).unwrap().0;
        }
        done.clone()
    }

    fn published(&self) -> Vec<ActionPublish> {
        let done = self.done.lock().unwrap();
        done.iter()
            .filter_map(|d| match d {
                Done::Published(p) => Some(p.clone()),
                Done::Notified(..) => None,
            })
            .collect()
    }
}

impl Actions for Recorder {
    fn publish(&self, message: ActionPublish) -> Result<(), ActionError> {
        if message.topic.starts_with("forbidden/") {
            return Err(ActionError::NotAuthorized(message.topic));
        }
        self.push(Done::Published(message.clone()));
        let chain = message.chain.next();
        self.emit(Event {
            actor: Actor {
                account: Some(message.account.as_str().into()),
                kind: ActorKind::Rule,
            },
            at: 1,
            chain: chain.clone(),
            data: EventData::Publish(PublishEvent {
                topic: message.topic.clone(),
                payload: message.payload.clone(),
                qos: message.qos,
                retain: message.retain,
                user_properties: Vec::new(),
            }),
        });
        // The thing carries the command out and reports its state, in the same chain.
        if let Some(thing) = message
            .topic
            .strip_prefix("thing/")
            .and_then(|t| t.strip_suffix("/cmd"))
        {
            let mut state: Value = serde_json::from_slice(&message.payload).unwrap();
            state.as_object_mut().unwrap().remove("id");
            self.emit(Event {
                actor: Actor {
                    account: Some(thing.into()),
                    kind: ActorKind::Thing,
                },
                at: 1,
                chain: chain.next(),
                data: EventData::ThingState {
                    thing: thing.into(),
                    state,
                },
            });
        }
        Ok(())
    }

    fn notify(&self, person: &str, envelope: Value, chain: &Chain) -> Result<(), ActionError> {
        self.push(Done::Notified(person.into(), envelope, chain.next()));
        Ok(())
    }
}

struct Setup {
    dir: tempfile::TempDir,
    rules: Arc<Rules>,
    recorder: Arc<Recorder>,
}

const PEOPLE: &str = r#"
persons: [{ id: alice, password: a }, { id: bob, password: b }, { id: rules, password: r }]
things: [{ id: door, secret: d }, { id: hall-light, secret: h }, { id: heater, secret: h }]
groups: [{ id: family, owner: alice, members: [bob] }]
relations:
  - { bind: door, to: alice }
  - { link: [door, hall-light] }
"#;

fn start_with(files: &[(&str, &str)], config: Config) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("people.yaml"), PEOPLE).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let mut world = FolderWorld::default();
    let defs = mqtter_engine::definitions::parse(Path::new("people.yaml"), PEOPLE).unwrap();
    world.add(&defs);
    let recorder = Arc::new(Recorder::default());
    let rules = Rules::start(dir.path(), config, recorder.clone(), Arc::new(world), None);
    *recorder.rules.lock().unwrap() = Arc::downgrade(&rules);
    let status = rules.status();
    assert!(
        status.ok,
        "{}",
        serde_json::to_string_pretty(&status).unwrap()
    );
    Setup {
        dir,
        rules,
        recorder,
    }
}

fn start(files: &[(&str, &str)]) -> Setup {
    start_with(files, Config::default())
}

fn publish(by: &str, kind: ActorKind, topic: &str, payload: &str, chain: &str) -> Event {
    Event {
        actor: Actor {
            account: Some(by.into()),
            kind,
        },
        at: 1,
        chain: Chain::start(chain),
        data: EventData::Publish(PublishEvent {
            topic: topic.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: 0,
            retain: false,
            user_properties: Vec::new(),
        }),
    }
}

/// Wait until rule `id` has `n` traces; its traces.
fn traces(setup: &Setup, id: &str, n: usize) -> Vec<mqtter_rules::stats::Trace> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let traces = setup.rules.traces(id).unwrap_or_default();
        if traces.len() >= n {
            return traces;
        }
        assert!(Instant::now() < deadline, "rule {id}: {traces:#?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_topic_rule_fires_and_a_false_if_does_not() {
    let setup = start(&[(
        "a.yaml",
        r#"
rules:
  - id: hot
    when: { topic: "sensors/+/temp", kind: thing }
    mode: queued                   # (single would skip c3 while c1 runs on the other worker)
    if: 'event.payload.c > 30'
    do: 'publish("alerts/" + event.by, #{ c: event.payload.c })'
"#,
    )]);
    let r = &setup.rules;
    r.on_event(&publish(
        "heater",
        ActorKind::Thing,
        "sensors/h/temp",
        r#"{"c": 20}"#,
        "c1",
    ));
    r.on_event(&publish(
        "alice",
        ActorKind::Person,
        "sensors/h/temp",
        r#"{"c": 40}"#,
        "c2",
    ));
    r.on_event(&publish(
        "heater",
        ActorKind::Thing,
        "sensors/h/temp",
        r#"{"c": 35}"#,
        "c3",
    ));
    let done = setup.recorder.wait_for("the alert", |d| !d.is_empty());
    let Done::Published(p) = &done[0] else {
        panic!("{done:?}")
    };
    assert_eq!(p.topic, "alerts/heater");
    assert_eq!(p.account, "rules");
    assert_eq!(p.payload, Bytes::from_static(br#"{"c":35}"#));
    // The action answers the event of chain c3, at hop 0 (the daemon stamps it hop 1).
    assert_eq!(p.chain, Chain::start("c3"));
    let traces = traces(&setup, "hot", 2);
    // Two workers: the runs may end in either order.
    let (pass, fail): (Vec<_>, Vec<_>) = traces.iter().partition(|t| t.condition == Some(true));
    assert_eq!((pass.len(), fail.len()), (1, 1), "{traces:#?}");
    assert_eq!(fail[0].condition, Some(false));
    assert_eq!(pass[0].actions, ["publish alerts/heater"]);
    let list = setup.rules.list();
    // The person's message never matched (kind: thing).
    assert_eq!((list[0].counters.matched, list[0].counters.ran), (2, 1));
}

#[test]
fn a_chain_person_thing_thing_person_keeps_one_id() {
    let setup = start(&[(
        "home.yaml",
        r#"
rules:
  - id: door-opens-light-on
    when: { state: door, changed: open, to: true }
    do: 'command("hall-light", #{ on: true })'
  - id: light-on-tells-owner
    when: { state: hall-light, changed: on }
    do: 'notify(owner_of("door"), "hall light is " + event.state.on)'
"#,
    )]);
    let door = |open: bool, chain: &str| Event {
        actor: Actor {
            account: Some("door".into()),
            kind: ActorKind::Thing,
        },
        at: 1,
        chain: Chain::start(chain),
        data: EventData::ThingState {
            thing: "door".into(),
            state: json!({ "open": open }),
        },
    };
    setup.rules.on_event(&door(false, "first"));
    setup.rules.on_event(&door(true, "alice-opened"));
    let done = setup.recorder.wait_for("the notice", |d| {
        d.iter().any(|d| matches!(d, Done::Notified(..)))
    });
    let (Done::Published(cmd), Done::Notified(person, envelope, chain)) = (&done[0], &done[1])
    else {
        panic!("{done:#?}")
    };
    assert_eq!(cmd.topic, "thing/hall-light/cmd");
    assert_eq!(&*cmd.chain.id, "alice-opened");
    assert_eq!(person, "alice");
    assert_eq!(envelope["text"], "hall light is true");
    assert_eq!(envelope["rule"], "light-on-tells-owner");
    // door (0) -> command (1) -> the light's state (2) -> the notice (3).
    assert_eq!(
        chain,
        &Chain {
            id: "alice-opened".into(),
            hop: 3
        }
    );
}

#[test]
fn a_loop_between_two_rules_stops_at_max_hops_and_is_reported() {
    let setup = start_with(
        &[(
            "loop.yaml",
            r#"
rules:
  - id: ping
    when: { topic: ping }
    mode: parallel                 # (single would skip a ping while the last one still runs)
    do: 'publish("pong", "x")'
  - id: pong
    when: { topic: pong }
    mode: parallel
    do: 'publish("ping", "x")'
"#,
        )],
        Config {
            max_hops: 6,
            ..Config::default()
        },
    );
    setup
        .rules
        .on_event(&publish("alice", ActorKind::Person, "ping", "x", "loop"));
    // ping runs at hops 0, 2 and 4, pong at 1, 3 and 5; ping at hop 6 is stopped.
    traces(&setup, "ping", 4);
    let deadline = Instant::now() + Duration::from_secs(20);
    while setup.rules.status().chains_stopped == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    // Hops 0..5 ran (ping, pong, ping, ...), the one at hop 6 was stopped.
    assert_eq!(setup.recorder.published().len(), 6);
    let status = setup.rules.status();
    assert_eq!(status.last_stopped.as_ref().unwrap()["hop"], 6);
    assert_eq!(status.last_stopped.as_ref().unwrap()["chain"], "loop");
    let all: Vec<_> = ["ping", "pong"]
        .iter()
        .flat_map(|r| setup.rules.traces(r).unwrap())
        .collect();
    assert!(
        all.iter()
            .any(|t| matches!(&t.outcome, Outcome::Stopped(why) if why.contains("max_hops")))
    );
}

#[test]
fn the_same_rule_again_in_one_chain_stops_at_max_repeats() {
    let setup = start_with(
        &[(
            "again.yaml",
            "rules:\n  - id: again\n    when: { topic: again }\n    mode: parallel\n    do: 'publish(\"again\", \"x\")'\n",
        )],
        Config {
            max_repeats: 3,
            ..Config::default()
        },
    );
    setup
        .rules
        .on_event(&publish("alice", ActorKind::Person, "again", "x", "r"));
    let traces = traces(&setup, "again", 4);
    // Runs record as they end: the stopped fourth may end before the third.
    let stopped = traces
        .iter()
        .filter(|t| matches!(&t.outcome, Outcome::Stopped(why) if why.contains("max_repeats")));
    assert_eq!(stopped.count(), 1, "{traces:#?}");
    assert_eq!(setup.recorder.published().len(), 3);
}

#[test]
fn an_endless_loop_is_stopped_and_other_rules_run_meanwhile() {
    let setup = start_with(
        &[(
            "a.yaml",
            r#"
rules:
  - id: spins
    when: { topic: spin }
    do: 'loop { }'
  - id: fails
    when: { topic: spin }
    do: 'let x = 1 / 0;'
  - id: forbidden
    when: { topic: spin }
    do: 'publish("forbidden/x", "y")'
  - id: works
    when: { topic: work }
    mode: queued
    do: 'publish("done", event.text)'
"#,
        )],
        Config {
            max_operations: u64::MAX,
            budget: Duration::from_millis(300),
            ..Config::default()
        },
    );
    setup
        .rules
        .on_event(&publish("alice", ActorKind::Person, "spin", "", "s"));
    for n in 0..20 {
        let chain = format!("w{n}");
        setup.rules.on_event(&publish(
            "alice",
            ActorKind::Person,
            "work",
            &n.to_string(),
            &chain,
        ));
    }
    setup.recorder.wait_for("20 runs", |d| d.len() == 20);
    let spins = traces(&setup, "spins", 1);
    assert!(
        matches!(&spins[0].outcome, Outcome::Stopped(why) if why.contains("time budget")),
        "{spins:?}"
    );
    assert!(spins[0].micros < 20_000_000);
    let fails = traces(&setup, "fails", 1);
    assert!(
        matches!(&fails[0].outcome, Outcome::Failed(why) if why.contains("zero")),
        "{fails:?}"
    );
    let forbidden = traces(&setup, "forbidden", 1);
    assert!(
        matches!(&forbidden[0].outcome, Outcome::Failed(why) if why.contains("not authorized"))
    );
}

#[test]
fn too_many_operations_stop_a_run() {
    let setup = start_with(
        &[(
            "a.yaml",
            "rules:\n  - id: spins\n    when: { topic: spin }\n    do: 'loop { }'\n",
        )],
        Config {
            max_operations: 10_000,
            budget: Duration::from_secs(60),
            ..Config::default()
        },
    );
    setup
        .rules
        .on_event(&publish("alice", ActorKind::Person, "spin", "", "s"));
    let spins = traces(&setup, "spins", 1);
    assert!(matches!(&spins[0].outcome, Outcome::Stopped(why) if why.contains("operations")));
}

#[test]
fn after_fires_a_timer_rule_in_the_same_chain_and_cancel_removes_one() {
    let setup = start(&[(
        "t.yaml",
        r#"
rules:
  - id: arm
    when: { topic: arm }
    do: 'after(50, "escalate/" + event.text, #{ alarm: event.text }); after(50, "never"); cancel("never")'
  - id: escalate
    when: { timer: escalate }
    do: 'publish("escalated", event.data.alarm)'
  - id: never
    when: { timer: never }
    do: 'publish("never", "")'
"#,
    )]);
    setup
        .rules
        .on_event(&publish("alice", ActorKind::Person, "arm", "a7", "t"));
    let done = setup.recorder.wait_for("the escalation", |d| !d.is_empty());
    let Done::Published(p) = &done[0] else {
        panic!()
    };
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("escalated", &b"a7"[..])
    );
    assert_eq!(
        p.chain,
        Chain {
            id: "t".into(),
            hop: 1
        }
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(setup.recorder.published().len(), 1);
}

#[test]
fn single_mode_skips_and_rate_limits_count() {
    let setup = start(&[(
        "m.yaml",
        r#"
rules:
  - id: limited
    when: { topic: tick }
    rate: 2/1h
    mode: parallel
    do: 'publish("ticked", "")'
"#,
    )]);
    for n in 0..5 {
        setup.rules.on_event(&publish(
            "alice",
            ActorKind::Person,
            "tick",
            "",
            &format!("c{n}"),
        ));
    }
    let traces = traces(&setup, "limited", 5);
    let skipped = traces
        .iter()
        .filter(|t| matches!(t.outcome, Outcome::Skipped(_)))
        .count();
    assert_eq!(skipped, 3);
    assert_eq!(setup.rules.list()[0].counters.skipped, 3);
}

#[test]
fn a_full_queue_drops_and_counts() {
    let setup = start_with(
        &[(
            "q.yaml",
            "rules:\n  - id: slow\n    when: { topic: q }\n    mode: queued\n    do: 'loop { }'\n",
        )],
        Config {
            workers: 1,
            queue: 2,
            max_operations: u64::MAX,
            budget: Duration::from_millis(200),
            ..Config::default()
        },
    );
    for _ in 0..10 {
        setup
            .rules
            .on_event(&publish("alice", ActorKind::Person, "q", "", "q"));
    }
    // One run at a time and two waiting: most of the ten cannot be queued (how many exactly
    // depends on how fast the worker takes the first).
    let status = setup.rules.status();
    assert!(status.queue_full >= 1, "{status:?}");
    assert_eq!(setup.rules.list()[0].counters.dropped, status.queue_full);
}

#[test]
fn a_broken_file_keeps_its_last_good_version_until_fixed() {
    let good = "rules:\n  - id: r\n    when: { topic: a }\n    do: 'publish(\"v1\", \"\")'\n";
    let setup = start(&[("r.yaml", good)]);
    let file = setup.dir.path().join("r.yaml");
    std::fs::write(
        &file,
        "rules:\n  - id: r\n    when: { topic: a }\n    do: 'publish(\"v2\" \"\")'\n",
    )
    .unwrap();
    let status = setup.rules.reload();
    assert!(!status.ok);
    let f = status.files.iter().find(|f| f.file == file).unwrap();
    assert!(f.last_good);
    assert_eq!(
        (f.errors[0].line, f.errors[0].column),
        (4, 23),
        "{:?}",
        f.errors
    );
    setup
        .rules
        .on_event(&publish("alice", ActorKind::Person, "a", "", "1"));
    setup.recorder.wait_for("v1", |d| d.len() == 1);
    std::fs::write(&file, good.replace("v1", "v3")).unwrap();
    let status = setup.rules.reload();
    assert!(status.ok, "{status:?}");
    setup
        .rules
        .on_event(&publish("alice", ActorKind::Person, "a", "", "2"));
    setup.recorder.wait_for("v3", |d| d.len() == 2);
    let topics: Vec<String> = setup
        .recorder
        .published()
        .into_iter()
        .map(|p| p.topic)
        .collect();
    assert_eq!(topics, ["v1", "v3"]);
    // Counters are the rule id's, across reloads.
    traces(&setup, "r", 2);
    assert_eq!(setup.rules.list()[0].counters.ran, 2);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(setup.rules.reload().rules, 0);
}

#[test]
fn the_watcher_reloads_on_atomic_saves_and_in_place_writes() {
    let setup = start(&[]);
    setup.rules.watch().unwrap();
    let dir = setup.dir.path();
    for n in 0..20 {
        let text = format!(
            "rules:\n  - id: w\n    when: {{ topic: a }}\n    do: 'publish(\"v{n}\", \"\")'\n"
        );
        if n % 2 == 0 {
            let tmp = dir.join(".w.yaml.tmp");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, dir.join("w.yaml")).unwrap();
        } else {
            std::fs::write(dir.join("w.yaml"), &text).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for attempt in 0.. {
            let chain = format!("w{n}.{attempt}");
            setup
                .rules
                .on_event(&publish("alice", ActorKind::Person, "a", "", &chain));
            let seen = setup.recorder.published().last().map(|p| p.topic.clone());
            if seen.as_deref() == Some(format!("v{n}").as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "version {n} never came: {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A reload reads every file of the folder: the watcher must not take those reads for changes
/// (it did, and reloaded the folder about six times a second for ever after the first edit,
/// logging a broken file's error each time).
#[test]
fn the_watcher_does_not_reload_a_folder_nobody_changes() {
    let setup = start(&[]);
    setup.rules.watch().unwrap();
    let file = setup.dir.path().join("q.yaml");
    let broken = "rules:\n  - id: q\n    when: { topic: a }\n    do: 'publish(\"v\" \"\")'\n";
    std::fs::write(&file, broken).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while setup.rules.status().ok {
        assert!(Instant::now() < deadline, "the edit was never loaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The edit's events may still bring one more reload; after that, nothing changes.
    std::thread::sleep(Duration::from_secs(1));
    let settled = setup.rules.status().loaded_at;
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        setup.rules.status().loaded_at,
        settled,
        "reloaded with no change to the folder"
    );
}

#[test]
fn an_after_timer_survives_a_restart() {
    let rule = r#"
rules:
  - id: arm
    when: { topic: arm }
    do: 'after(1500, "later", #{ n: 7 })'
  - id: later
    when: { timer: later }
    do: 'publish("fired", event.data.n.to_string())'
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.yaml"), rule).unwrap();
    let data = tempfile::tempdir().unwrap();
    let world = Arc::new(FolderWorld::default());
    {
        let store: Arc<dyn mqtter_engine::Store> =
            Arc::new(mqtter_engine::SledStore::open(data.path()).unwrap());
        let recorder = Arc::new(Recorder::default());
        let rules = Rules::start(
            dir.path(),
            Config::default(),
            recorder.clone(),
            world.clone(),
            Some(store),
        );
        rules.on_event(&publish("alice", ActorKind::Person, "arm", "", "before"));
        traces_of(&rules, "arm", 1);
        assert_eq!(rules.status().timers, 1);
        // Stopped before the timer is due.
    }
    let store: Arc<dyn mqtter_engine::Store> =
        Arc::new(mqtter_engine::SledStore::open(data.path()).unwrap());
    let recorder = Arc::new(Recorder::default());
    let rules = Rules::start(
        dir.path(),
        Config::default(),
        recorder.clone(),
        world,
        Some(store.clone()),
    );
    let done = recorder.wait_for("the timer after the restart", |d| !d.is_empty());
    let Done::Published(p) = &done[0] else {
        panic!()
    };
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("fired", &b"7"[..]));
    assert_eq!(
        p.chain,
        Chain {
            id: "before".into(),
            hop: 1
        }
    );
    drop(rules);
    assert!(
        store
            .scan_prefix(mqtter_engine::Space::Timers, b"")
            .unwrap()
            .is_empty()
    );
}

fn traces_of(rules: &Rules, id: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while rules.traces(id).unwrap_or_default().len() < n {
        assert!(Instant::now() < deadline, "rule {id} never ran");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn actor(account: &str, kind: ActorKind) -> Actor {
    Actor {
        account: Some(account.into()),
        kind,
    }
}

fn event(actor: Actor, data: EventData) -> Event {
    Event {
        actor,
        at: 1,
        chain: Chain::start("k"),
        data,
    }
}

#[test]
fn each_trigger_kind_fires_its_rule_and_only_on_its_own_events() {
    use mqtter_rules::events::{ImMessageEvent, PresenceStatus, RelationChange};
    let im = |from: &str, to: &str| {
        event(
            actor(from, ActorKind::Person),
            EventData::ImMessage(ImMessageEvent {
                conv: format!("{from}|{to}"),
                seq: 1,
                from: from.into(),
                to: to.into(),
                body: Bytes::from_static(br#"{"text":"hi"}"#),
                cid: None,
            }),
        )
    };
    let presence = |account: &str, status| {
        event(
            actor(account, ActorKind::Person),
            EventData::Presence {
                account: account.into(),
                status,
                text: None,
            },
        )
    };
    let relation = |change| {
        event(
            actor("alice", ActorKind::Person),
            EventData::Relation(change),
        )
    };
    let thing = |data| event(actor("door", ActorKind::Thing), data);
    let cases: Vec<(&str, Event, Event)> = vec![
        (
            "{ im: family, by: alice }",
            im("alice", "family"),
            im("bob", "family"),
        ),
        (
            "{ im: \"*\", kind: person }",
            im("bob", "alice"),
            publish("bob", ActorKind::Person, "x", "", "k"),
        ),
        (
            "{ presence: alice, to: away }",
            presence("alice", PresenceStatus::Away),
            presence("alice", PresenceStatus::Online),
        ),
        (
            "{ relation: friend_added, of: bob }",
            relation(RelationChange::FriendAdded {
                a: "alice".into(),
                b: "bob".into(),
            }),
            relation(RelationChange::FriendRemoved {
                a: "alice".into(),
                b: "bob".into(),
            }),
        ),
        (
            "{ relation: member_joined, of: family }",
            relation(RelationChange::MemberJoined {
                group: "family".into(),
                member: "bob".into(),
            }),
            relation(RelationChange::MemberJoined {
                group: "other".into(),
                member: "bob".into(),
            }),
        ),
        (
            "{ command: door }",
            thing(EventData::ThingCommand {
                thing: "door".into(),
                id: "1".into(),
                command: json!({}),
            }),
            thing(EventData::ThingAck {
                thing: "door".into(),
                id: "1".into(),
                result: json!(true),
            }),
        ),
        (
            "{ ack: door }",
            thing(EventData::ThingAck {
                thing: "door".into(),
                id: "1".into(),
                result: json!(true),
            }),
            thing(EventData::ThingTimeout {
                thing: "door".into(),
                id: "1".into(),
            }),
        ),
        (
            "{ timeout: door }",
            thing(EventData::ThingTimeout {
                thing: "door".into(),
                id: "1".into(),
            }),
            thing(EventData::ThingTimeout {
                thing: "heater".into(),
                id: "1".into(),
            }),
        ),
        (
            "{ state: door, to: { open: true } }",
            thing(EventData::ThingState {
                thing: "door".into(),
                state: json!({ "open": true }),
            }),
            thing(EventData::ThingState {
                thing: "door".into(),
                state: json!({ "open": false }),
            }),
        ),
    ];
    for (when, fires, does_not) in cases {
        let text = format!(
            "rules:\n  - id: r\n    when: {when}\n    do: 'publish(\"fired\", event.kind)'\n"
        );
        let setup = start(&[("r.yaml", &text)]);
        setup.rules.on_event(&does_not);
        setup.rules.on_event(&fires);
        setup.recorder.wait_for(when, |d| !d.is_empty());
        std::thread::sleep(Duration::from_millis(50));
        let list = setup.rules.list();
        assert_eq!(
            list[0].counters.matched,
            1,
            "{when}: {:?}",
            setup.rules.traces("r")
        );
    }
}

#[test]
fn schedules_fire_on_their_own() {
    let setup = start(&[(
        "s.yaml",
        r#"
rules:
  - id: often
    when: { every: 100ms }
    mode: queued
    do: 'publish("every", "")'
  - id: each-second
    when: { cron: "* * * * * *" }
    do: 'publish("cron", event.timer)'
"#,
    )]);
    setup.recorder.wait_for("both schedules", |d| {
        let topics: Vec<&str> = d
            .iter()
            .filter_map(|d| match d {
                Done::Published(p) => Some(p.topic.as_str()),
                Done::Notified(..) => None,
            })
            .collect();
        topics.iter().filter(|t| **t == "every").count() >= 3 && topics.contains(&"cron")
    });
}

#[test]
fn debounce_runs_once_with_the_last_event() {
    let setup = start(&[(
        "d.yaml",
        "rules:\n  - id: d\n    when: { topic: d }\n    debounce: 1s\n    do: 'publish(\"settled\", event.text)'\n",
    )]);
    for n in 0..5 {
        setup.rules.on_event(&publish(
            "alice",
            ActorKind::Person,
            "d",
            &n.to_string(),
            &format!("d{n}"),
        ));
    }
    // The run comes with the last event, after a quiet second. (A thread stalled for more than
    // that between two events on a loaded machine would see an earlier run too: fewer runs than
    // events is what debouncing guarantees.)
    let last = |d: &[Done]| {
        d.iter()
            .any(|d| matches!(d, Done::Published(p) if &p.payload[..] == b"4"))
    };
    setup.recorder.wait_for("the debounced run", last);
    std::thread::sleep(Duration::from_millis(1500));
    let published = setup.recorder.published();
    assert!(published.len() < 5, "{published:?}");
    assert_eq!(&published.last().unwrap().payload[..], b"4");
}

#[test]
fn restart_mode_stops_the_run_going_on() {
    let setup = start_with(
        &[(
            "r.yaml",
            "rules:\n  - id: r\n    when: { topic: r }\n    mode: restart\n    do: 'if event.text == \"spin\" { loop { } } else { publish(\"second\", \"\") }'\n",
        )],
        Config {
            max_operations: u64::MAX,
            budget: Duration::from_secs(30),
            ..Config::default()
        },
    );
    setup
        .rules
        .on_event(&publish("alice", ActorKind::Person, "r", "spin", "r1"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while setup.rules.list()[0].counters.matched == 0 || setup.rules.status().events == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    setup
        .rules
        .on_event(&publish("alice", ActorKind::Person, "r", "go", "r2"));
    setup.recorder.wait_for("the second run", |d| !d.is_empty());
    let traces = traces(&setup, "r", 2);
    assert!(
        traces
            .iter()
            .any(|t| matches!(&t.outcome, Outcome::Stopped(why) if why.contains("restarted"))),
        "{traces:#?}"
    );
}

#[test]
fn reload_under_traffic_handles_every_event_exactly_once() {
    use std::io::Write as _;
    let version = |n: usize| {
        format!(
            "rules:\n  - id: w\n    when: {{ topic: \"stream/#\" }}\n    mode: parallel\n    do: 'publish(\"v{n}\", event.text)'\n"
        )
    };
    let setup = start(&[("w.yaml", &version(0))]);
    setup.rules.watch().unwrap();
    let dir = setup.dir.path().to_owned();
    let rules = setup.rules.clone();
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let still_writing = writing.clone();
    // At most 1,000 events a second (fewer than the queue holds over the whole test) for as
    // long as the files are rewritten.
    let stream = std::thread::spawn(move || {
        let mut sent = 0;
        while still_writing.load(std::sync::atomic::Ordering::Acquire) && sent < 50_000 {
            let chain = format!("s{sent}");
            rules.on_event(&publish(
                "alice",
                ActorKind::Person,
                "stream/x",
                &sent.to_string(),
                &chain,
            ));
            sent += 1;
            if sent % 5 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        sent
    });
    for n in 1..=20 {
        let text = version(n);
        if n % 2 == 0 {
            let tmp = dir.join(".w.yaml.tmp");
            std::fs::write(&tmp, &text).unwrap();
            std::fs::rename(&tmp, dir.join("w.yaml")).unwrap();
        } else {
            // In place, in two writes: the watcher may see the first half alone (a broken
            // file, whose last good version stays in force).
            let mut file = std::fs::File::create(dir.join("w.yaml")).unwrap();
            let (a, b) = text.split_at(text.len() / 2);
            file.write_all(a.as_bytes()).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            file.write_all(b.as_bytes()).unwrap();
        }
        // Longer than the watcher's debounce, so that each version gets its turn.
        std::thread::sleep(Duration::from_millis(300));
    }
    writing.store(false, std::sync::atomic::Ordering::Release);
    let sent = stream.join().unwrap();
    assert!(sent > 100, "{sent}");
    assert_eq!(setup.rules.status().queue_full, 0);
    let done = setup.recorder.wait_for("every event", |d| d.len() >= sent);
    std::thread::sleep(Duration::from_millis(200));
    let published = setup.recorder.published();
    assert_eq!(published.len(), sent, "each event once, none twice");
    let mut seen = vec![0u32; sent];
    for p in &published {
        let n: usize = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        seen[n] += 1;
    }
    assert!(seen.iter().all(|c| *c == 1), "{done:?}");
    // And the stream really crossed reloads: several versions handled it.
    let versions: std::collections::BTreeSet<&str> =
        published.iter().map(|p| p.topic.as_str()).collect();
    assert!(versions.len() >= 3, "{versions:?}");
    // The last version is in force once the watcher settled.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        setup.rules.on_event(&publish(
            "alice",
            ActorKind::Person,
            "stream/y",
            "last",
            "last",
        ));
        std::thread::sleep(Duration::from_millis(50));
        if setup
            .recorder
            .published()
            .last()
            .is_some_and(|p| p.topic == "v20")
        {
            break;
        }
        assert!(Instant::now() < deadline, "v20 never in force");
    }
    assert!(setup.rules.status().ok);
}

#[test]
fn a_timer_set_again_by_its_own_run_stays_in_the_store() {
    let rule = r#"
rules:
  - id: arm
    when: { topic: arm }
    do: 'after(10, "tick")'
  - id: again
    when: { timer: tick }
    do: 'after(600000, "tick"); publish("ticked", "")'
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.yaml"), rule).unwrap();
    let data = tempfile::tempdir().unwrap();
    let store: Arc<dyn mqtter_engine::Store> =
        Arc::new(mqtter_engine::SledStore::open(data.path()).unwrap());
    let recorder = Arc::new(Recorder::default());
    let rules = Rules::start(
        dir.path(),
        Config::default(),
        recorder.clone(),
        Arc::new(FolderWorld::default()),
        Some(store.clone()),
    );
    rules.on_event(&publish("alice", ActorKind::Person, "arm", "", "c"));
    recorder.wait_for("the first tick", |d| !d.is_empty());
    // The run that fired ends after it set the timer again: the new setting is kept.
    drop(rules);
    let kept = store
        .scan_prefix(mqtter_engine::Space::Timers, b"")
        .unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
}

/// `msg` is the other name of `event` (set for the rules that read it); a payload that is not
/// JSON is its text in both `payload` and `text`.
#[test]
fn msg_is_the_event_and_a_text_payload_is_its_text() {
    let setup = start(&[(
        "a.yaml",
        r#"
rules:
  - id: echo
    when: { topic: "in/#" }
    do: 'publish("out/" + msg.topic, msg.payload + "|" + event.text + "|" + msg.by_kind + "|" + event.chain.hop)'
"#,
    )]);
    setup.rules.on_event(&publish(
        "alice",
        ActorKind::Person,
        "in/a",
        "hello there",
        "c1",
    ));
    let done = setup.recorder.wait_for("the echo", |d| !d.is_empty());
    let Done::Published(p) = &done[0] else {
        panic!("{done:?}")
    };
    assert_eq!(p.topic, "out/in/a");
    assert_eq!(
        p.payload,
        Bytes::from_static(b"hello there|hello there|person|0")
    );
}

/// A run builds only the fields its rules read (rules/src/reads.rs): two rules on one event
/// each see the field they name, and a script that uses the event whole sees every field.
#[test]
fn each_rule_sees_the_fields_it_reads_and_a_whole_use_sees_them_all() {
    let setup = start(&[(
        "a.yaml",
        r#"
rules:
  - id: topic-only
    when: { topic: "both/#" }
    mode: parallel
    do: 'publish("t/" + event.topic, "x")'
  - id: text-only
    when: { topic: "both/#" }
    mode: parallel
    do: 'publish("x/" + msg["text"], "y")'
  - id: whole
    when: { topic: whole }
    do: 'let k = event.keys(); k.sort(); publish("keys", k)'
"#,
    )]);
    setup
        .rules
        .on_event(&publish("alice", ActorKind::Person, "both/a", "hi", "c1"));
    setup
        .rules
        .on_event(&publish("alice", ActorKind::Person, "whole", "{}", "c2"));
    setup.recorder.wait_for("three publishes", |d| d.len() >= 3);
    let mut published: Vec<(String, Bytes)> = setup
        .recorder
        .published()
        .into_iter()
        .map(|p| (p.topic, p.payload))
        .collect();
    published.sort();
    assert_eq!(
        published,
        vec![
            (
                "keys".to_owned(),
                Bytes::from_static(
                    br#"["at","by","by_kind","chain","kind","payload","qos","retain","text","topic"]"#
                )
            ),
            ("t/both/a".to_owned(), Bytes::from_static(b"x")),
            ("x/hi".to_owned(), Bytes::from_static(b"y")),
        ]
    );
}
