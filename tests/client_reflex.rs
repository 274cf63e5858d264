//! Reflexes (`mqtter_client::reflex`) against the real daemon: a virtual thing from a YAML file
//! acks commands and reports state, an `ack: none` command times out after its ttl, a Rhai
//! reflex (a script file and inline `do:`) answers and reports, a failing script acks an error
//! and the thing lives on, `every:` ticks on the caller's timer, and a bad file says where.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mqtter_client::{
    Client, CommandAck, CommandOptions, Outcome, RealTime, Reflex, ReflexAction, ReflexTimer,
    ThingClient,
};
use serde_json::json;
use tokio::sync::{Notify, mpsc};

use crate::common::WAIT;
use crate::common::im::World;
use crate::common::person::{options, person};
use crate::common::thing::world_yaml;

fn ttl(secs: u64) -> CommandOptions {
    CommandOptions::ttl(Duration::from_secs(secs))
}

/// Start `reflex` as the thing `id` in the background; what it does comes on the channel.
async fn start(
    port: u16,
    id: &str,
    reflex: Reflex,
    timer: Arc<dyn ReflexTimer>,
) -> (ThingClient, mpsc::UnboundedReceiver<ReflexAction>) {
    let (thing, events) = ThingClient::connect(options(port, id, "reflex"))
        .await
        .expect("the thing connects");
    let (tx, rx) = mpsc::unbounded_channel();
    let runner = thing.clone();
    tokio::spawn(async move { reflex.run_observed(runner, events, timer, Some(tx)).await });
    (thing, rx)
}

async fn next_action(rx: &mut mpsc::UnboundedReceiver<ReflexAction>) -> ReflexAction {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an action within the wait")
        .expect("the reflex runs")
}

/// Command the lamp and wait for its answer (a timeout fails the test).
async fn answer(alice: &Client, body: serde_json::Value) -> CommandAck {
    match alice.command_wait("lamp", body, ttl(30)).await.unwrap() {
        Outcome::Acked(ack) => ack,
        other => panic!("no answer: {other:?}"),
    }
}

fn lamp_world() -> World {
    World::with(
        &world_yaml(&["alice"], &["lamp"], &["{ bind: lamp, to: alice }"]),
        "[things]\nsweep_interval_ms = 50\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_reflex_acks_reports_state_and_lets_an_unacked_command_time_out() {
    let world = lamp_world();
    let dir = tempfile::tempdir().unwrap();
    let reflex = Reflex::from_yaml(
        r#"
thing: lamp
state: { on: false, level: 0 }
on_command:
  - match: { on: true }
    delay: 10ms
    ack: ok
    state: { on: true, level: "$command.level" }
    event: { kind: switched, by: "$command.by" }
  - match: { on: false }
    ack: "error: stuck"
  - match: { ignore: true }
    ack: none
"#,
        ".",
    )
    .unwrap();
    let (_lamp, mut actions) = start(world.port(), "lamp", reflex, Arc::new(RealTime)).await;
    let first = next_action(&mut actions).await;
    assert_eq!(first.state, Some(json!({"on": false, "level": 0})));
    assert_eq!(first.error, None);

    let (alice, mut a) = person(world.port(), "alice", "laptop", dir.path()).await;
    assert_eq!(
        alice.thing_state("lamp").await.unwrap().state,
        json!({"on": false, "level": 0})
    );
    let outcome = alice
        .command_wait(
            "lamp",
            json!({"on": true, "level": 5, "by": "alice"}),
            ttl(30),
        )
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Acked(ack) if ack.ok),
        "{outcome:?}"
    );
    let done = next_action(&mut actions).await;
    assert_eq!(done.command_id.as_deref(), Some(outcome.id()));
    assert_eq!(done.state, Some(json!({"on": true, "level": 5})));
    let event = a.thing_event("lamp").await;
    assert_eq!(event.body, json!({"kind": "switched", "by": "alice"}));
    assert_eq!(event.chain.id, outcome.id());
    let doc = alice.thing_state("lamp").await.unwrap();
    assert_eq!(doc.state, json!({"on": true, "level": 5}));

    // An error ack, and no match at all.
    let stuck = answer(&alice, json!({"on": false})).await;
    assert!(!stuck.ok);
    assert_eq!(stuck.result, json!({"error": "stuck"}));
    let unsupported = answer(&alice, json!({"dance": true})).await;
    assert_eq!(unsupported.result, json!({"error": "unsupported"}));

    // `ack: none`: the command times out after its ttl, delivered.
    let outcome = alice
        .command_wait("lamp", json!({"ignore": true}), ttl(1))
        .await
        .unwrap();
    let Outcome::TimedOut(timeout) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(timeout.delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rhai_reflex_answers_from_its_scripts_and_survives_a_failing_one() {
    let world = lamp_world();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("dimmer.rhai"),
        r#"
let level = command.level;
if level > 100 { return #{ ack: "error: too bright" }; }
#{ ack: "ok", result: #{ was: state.level }, state: #{ level: level }, event: #{ kind: "dimmed", by: meta.from } }
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("lamp.yaml"),
        r#"
thing: lamp
state: { level: 0 }
on_command:
  - match: { op: dim }
    script: dimmer.rhai
  - match: { op: toggle }
    do: '#{ state: #{ on: !(state.on ?? false) } }'
  - match: { op: crash }
    do: |
      let x = command.missing.field;
      x
"#,
    )
    .unwrap();
    let reflex = Reflex::from_file(dir.path().join("lamp.yaml")).unwrap();
    let (_lamp, mut actions) = start(world.port(), "lamp", reflex, Arc::new(RealTime)).await;
    next_action(&mut actions).await;
    let (alice, _a) = person(world.port(), "alice", "laptop", dir.path()).await;

    let ack = answer(&alice, json!({"op": "dim", "level": 40})).await;
    assert!(ack.ok);
    assert_eq!(ack.result, json!({"was": 0}));
    // The state is reported after the ack: wait for the reflex to say it did.
    assert_eq!(
        next_action(&mut actions).await.state,
        Some(json!({"level": 40}))
    );
    assert_eq!(alice.thing_state("lamp").await.unwrap().state["level"], 40);
    let ack = answer(&alice, json!({"op": "dim", "level": 400})).await;
    assert_eq!(ack.result, json!({"error": "too bright"}));
    next_action(&mut actions).await;

    for expected in [true, false] {
        let outcome = alice
            .command_wait("lamp", json!({"op": "toggle"}), ttl(30))
            .await
            .unwrap();
        assert!(
            matches!(outcome, Outcome::Acked(ref a) if a.ok),
            "{outcome:?}"
        );
        assert_eq!(
            next_action(&mut actions).await.state,
            Some(json!({"on": expected}))
        );
        assert_eq!(
            alice.thing_state("lamp").await.unwrap().state["on"],
            expected
        );
    }

    // A failing script: an error ack naming it, and the thing goes on answering.
    let ack = answer(&alice, json!({"op": "crash"})).await;
    assert!(!ack.ok);
    let message = ack.result["error"].as_str().unwrap();
    assert!(message.contains("lamp.yaml"), "{message}");
    assert!(next_action(&mut actions).await.ack.is_some_and(|a| !a.ok));
    let outcome = alice
        .command_wait("lamp", json!({"op": "toggle"}), ttl(30))
        .await
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Acked(ref a) if a.ok),
        "{outcome:?}"
    );
}

/// A timer the test moves by hand: each `tick()` ends one pending sleep.
struct HandTimer(Arc<Notify>);

impl ReflexTimer for HandTimer {
    fn sleep(&self, _: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let notify = self.0.clone();
        Box::pin(async move { notify.notified().await })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entries_tick_on_the_callers_timer() {
    let world = lamp_world();
    let dir = tempfile::tempdir().unwrap();
    let reflex = Reflex::from_yaml(
        "thing: lamp\nevery:\n  - interval: 1h\n    do: '#{ state: #{ ticks: tick }, event: #{ kind: \"tick\" } }'\n",
        ".",
    )
    .unwrap();
    let notify = Arc::new(Notify::new());
    let (_lamp, mut actions) = start(
        world.port(),
        "lamp",
        reflex,
        Arc::new(HandTimer(notify.clone())),
    )
    .await;
    let (alice, mut a) = person(world.port(), "alice", "laptop", dir.path()).await;
    for n in 1..=3u64 {
        // An hour passes, as far as the reflex knows.
        notify.notify_one();
        let action = next_action(&mut actions).await;
        assert_eq!(action.state, Some(json!({"ticks": n})));
        assert_eq!(a.thing_event("lamp").await.body, json!({"kind": "tick"}));
    }
    assert_eq!(
        alice.thing_state("lamp").await.unwrap().state,
        json!({"ticks": 3})
    );
}

#[test]
fn a_bad_reflex_file_says_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "thing: lamp\non_command:\n  - match: { on: true }\n    delay: soon\n",
    )
    .unwrap();
    let err = Reflex::from_file(&path).unwrap_err();
    assert_eq!(err.file, path);
    assert_eq!((err.line, err.column), (4, 12), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}:4:12: ", path.display())),
        "{err}"
    );
    // A Rhai syntax error in a script file is placed in that file.
    std::fs::write(dir.path().join("broken.rhai"), "let x = ;\n").unwrap();
    std::fs::write(&path, "thing: lamp\non_command:\n  - script: broken.rhai\n").unwrap();
    let err = Reflex::from_file(&path).unwrap_err();
    assert_eq!(err.file, dir.path().join("broken.rhai"));
    assert_eq!(err.line, 1, "{err}");
    // A missing script file is placed at its name.
    std::fs::write(&path, "thing: lamp\non_command:\n  - script: gone.rhai\n").unwrap();
    let err = Reflex::from_file(&path).unwrap_err();
    assert_eq!((err.file.as_path(), err.line), (path.as_path(), 3), "{err}");
    // An unknown key.
    std::fs::write(&path, "thing: lamp\non_comand: []\n").unwrap();
    let err = Reflex::from_file(&path).unwrap_err();
    assert_eq!(err.line, 2, "{err}");
}
