//! Wills go out through the event seam (ARCHITECTURE.md, "The event seam"): the rules engine
//! sees a will as the PUBLISH of the client that set it, with that client's account and kind.

use crate::common::im::{Msg, World, persons};
use crate::common::raw;

const RULES: &str = r#"
things:
  - { id: door, secret: door-pw }
rules:
  - id: a-thing-is-gone
    when: { topic: "lwt/+", kind: thing }
    as: bot
    do: 'publish("t/out/thing", event.topic + " " + event.by + " " + event.text)'
  - id: anyone-is-gone
    when: { topic: "lwt/+" }
    # queued: the test sends the next will as soon as it sees this rule's message, which can
    # be before the run that sent it has ended (mode single would skip the next event then).
    mode: queued
    as: bot
    do: 'publish("t/out/any", event.topic + " " + event.by_kind)'
"#;

fn text(m: &Msg) -> String {
    String::from_utf8_lossy(&m.payload).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_engine_sees_a_will_as_its_clients_publish() {
    let yaml = persons(&["bot", "watcher"]) + RULES;
    let world = World::with(&yaml, "allow_anonymous = true\n");
    let mut watcher = world.v5("watcher").await;
    watcher.sync().await;
    assert!(watcher.subscribe("t/out/#").await <= 1);

    // A thing's device (a client id outside its namespace) drops without a DISCONNECT.
    let connect = raw::Connect::v3("front-door-1")
        .login("door", "door-pw")
        .will("lwt/door", b"gone", 1, false);
    let (client, connack) = raw::Client::connect(world.daemon.mqtt, &connect);
    assert_eq!(connack.code(), 0);
    drop(client);
    let seen = watcher
        .wait_msg("the thing rule", |m| m.topic == "t/out/thing")
        .await;
    assert_eq!(text(&seen), "lwt/door door gone");
    let any = watcher
        .wait_msg("the any rule", |m| m.topic == "t/out/any")
        .await;
    assert_eq!(text(&any), "lwt/door thing");

    // An anonymous client's will: the rule without a kind sees it, the thing rule does not.
    let connect = raw::Connect::v3("sensor-7").will("lwt/sensor-7", b"bye", 0, false);
    let (client, connack) = raw::Client::connect(world.daemon.mqtt, &connect);
    assert_eq!(connack.code(), 0);
    drop(client);
    let any = watcher
        .wait_msg("the any rule again", |m| m.topic == "t/out/any")
        .await;
    assert_eq!(text(&any), "lwt/sensor-7 anonymous");
    assert!(
        watcher
            .received()
            .iter()
            .filter(|m| m.topic == "t/out/thing")
            .count()
            == 1,
        "the thing rule fired for the thing's will only"
    );
}
