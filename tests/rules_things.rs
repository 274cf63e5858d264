//! The rules engine and the things world on the real daemon: a thing's state report fires a
//! rule that commands another thing, the command and its acknowledgement fire rules of their
//! own, and the chain ends in a person's inbox: thing -> thing -> person, one chain id, hops
//! 0 to 3. A rule's script reads a thing's state from the things world.

use serde_json::json;

use crate::common::im::{Peer, World, persons};

const WORLD: &str = r#"
things:
  - { id: door, secret: door-pw }
  - { id: lamp, secret: lamp-pw }
relations:
  - { bind: door, to: alice }
  - { bind: lamp, to: alice }
  - { share: lamp, with: home, rights: control }
  - { friends: [home, alice] }
rules:
  - id: door-opens-lamp-on
    when: { state: door, changed: open, to: true }
    as: home
    do: 'command("lamp", #{ on: true })'
  - id: lamp-commanded
    when: { command: lamp }
    as: home
    do: 'publish("seen/command", event.chain.hop.to_string())'
  - id: lamp-answered
    when: { ack: lamp }
    as: home
    do: |
      publish("person/alice/inbox", #{
        text: "the lamp is on; the door open: " + state("door").open,
        seen_hop: event.chain.hop,
      });
"#;

async fn thing(world: &World, id: &str) -> Peer {
    let mut peer = Peer::connect(world.port(), id, true, 30).await.thing();
    let res = peer
        .request_on("$things/req", "thing.feed", json!({}))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    peer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thing_thing_person_chain_runs_through_rules_with_one_id() {
    let world = World::with(&(persons(&["alice", "home"]) + WORLD), "");
    let mut alice = Peer::connect(world.port(), "alice", true, 30).await;
    alice.notice("feed.done").await;
    assert!(alice.subscribe("seen/#").await <= 1);
    let mut door = thing(&world, "door").await;
    let mut lamp = thing(&world, "lamp").await;

    // hop 0: the door reports it opened.
    assert!(door.publish("thing/door/state", r#"{"open":true}"#).await < 0x80);
    // hop 1: the rule's command reaches the lamp, as home's.
    let cmd = lamp
        .wait_msg("the rule's command", |m| {
            m.topic == "thing/lamp/cmd" && m.kind() == "cmd"
        })
        .await
        .json;
    assert_eq!(cmd["from"], "home", "{cmd}");
    assert_eq!(cmd["body"]["on"], true, "{cmd}");
    assert_eq!(cmd["chain"]["hop"], 1, "{cmd}");
    let chain = cmd["chain"]["id"].clone();
    // The command itself fired a rule, at its hop.
    let seen = alice
        .wait_msg("the command rule", |m| m.topic == "seen/command")
        .await;
    assert_eq!(&seen.payload[..], b"1");

    // hop 2: the lamp answers; hop 3: the answer's rule writes to alice.
    let answer = json!({"id": cmd["id"], "result": {"on": true}}).to_string();
    assert!(lamp.publish("thing/lamp/ack", answer).await < 0x80);
    let told = alice
        .message("person/alice/inbox", |m| m["from"] == "home")
        .await;
    assert_eq!(
        told["body"]["text"], "the lamp is on; the door open: true",
        "{told}"
    );
    assert_eq!(told["body"]["seen_hop"], 2, "{told}");
    assert_eq!(told["chain"], json!({"id": chain, "hop": 3}), "{told}");
    assert!(chain.as_str().is_some_and(|c| !c.is_empty()), "{chain}");
}
