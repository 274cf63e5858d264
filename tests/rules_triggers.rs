//! The rules engine in the daemon, end to end: each trigger kind the daemon emits today fires
//! its rule (a plain message, an IM message, presence, a relation change, an interval, an
//! `after` timer), a false `if` does not, and a chain through two rules reaches a person's
//! inbox with one chain id and rising hops.

use serde_json::Value;

use crate::common::im::{World, make_friends, persons};
use crate::common::rules::{counters_until, traces_until};

const RULES: &str = r#"
relations:
  - { friends: [alice, bob] }
  - { friends: [bot, alice] }
rules:
  - id: plain
    when: { topic: "t/in" }
    as: bot
    do: 'publish("t/out/plain", event.text)'
  - id: never
    when: { topic: "t/in" }
    if: 'event.text == "never"'
    as: bot
    do: 'publish("t/out/never", event.text)'
  - id: direct
    when: { im: bob, by: alice }
    as: bot
    do: 'publish("t/out/im", event.body.text)'
  - id: online
    when: { presence: carol, to: online }
    as: bot
    do: 'publish("t/out/presence", event.account)'
  - id: befriended
    when: { relation: friend_added, of: carol }
    as: bot
    do: 'publish("t/out/relation", event.a + "+" + event.b)'
  - id: ticking
    when: { every: 1s }
    as: bot
    do: 'publish("t/out/every", "tick")'
  - id: later-set
    when: { topic: "t/later" }
    as: bot
    do: 'after(300, "later", #{ v: event.text })'
  - id: later-fired
    when: { timer: later }
    as: bot
    do: 'publish("t/out/after", event.data.v)'
  - id: hop-1
    when: { topic: "c/start", kind: person }
    as: bot
    do: 'publish("c/mid", event.text)'
  - id: hop-2
    when: { topic: "c/mid", kind: rule }
    as: bot
    do: 'publish("person/alice/inbox", #{ text: event.text, seen_hop: event.chain.hop })'
"#;

fn world() -> World {
    let yaml = persons(&["alice", "bob", "carol", "bot", "watcher"]) + RULES;
    World::with(&yaml, "allow_anonymous = true\n")
}

/// A PUBACK that accepts (0, or v5's 0x10 "no matching subscribers").
fn accepted(code: u8) {
    assert!(code < 0x80, "PUBACK 0x{code:02x}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_trigger_kind_fires_its_rule() {
    let world = world();
    let mqtt = world.daemon.mqtt;
    let mut watcher = world.v5("watcher").await;
    watcher.sync().await;
    assert!(watcher.subscribe("t/out/#").await <= 1);
    // An interval.
    assert_eq!(watcher.text_on("t/out/every").await, "tick");

    // A plain message: the rule fires; the one whose `if` is false does not.
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    accepted(alice.publish("t/in", "hello").await);
    assert_eq!(watcher.text_on("t/out/plain").await, "hello");
    let never =
        tokio::task::spawn_blocking(move || counters_until(mqtt, "never", |c| c["matched"] == 1))
            .await
            .unwrap();
    assert_eq!(never["ran"], 0, "{never}");
    let traces =
        tokio::task::spawn_blocking(move || traces_until(mqtt, "never", |t| !t.is_empty()))
            .await
            .unwrap();
    assert_eq!(traces[0]["condition"], false, "{traces:?}");
    assert!(traces[0]["actions"].as_array().unwrap().is_empty());

    // An IM message.
    accepted(alice.publish("person/bob/inbox", "hi bob").await);
    assert_eq!(watcher.text_on("t/out/im").await, "hi bob");

    // Presence, then a relation change made at runtime.
    let mut carol = world.v5("carol").await;
    carol.sync().await;
    assert_eq!(watcher.text_on("t/out/presence").await, "carol");
    let mut bob = world.v5("bob").await;
    bob.sync().await;
    make_friends(&mut carol, &mut bob).await;
    let pair = watcher.text_on("t/out/relation").await;
    assert!(pair == "carol+bob" || pair == "bob+carol", "{pair}");

    // An `after` timer.
    accepted(alice.publish("t/later", "soon").await);
    assert_eq!(watcher.text_on("t/out/after").await, "soon");

    // Nothing came of the false `if`.
    let stray: Vec<_> = watcher
        .received()
        .into_iter()
        .filter(|m| m.topic == "t/out/never")
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_through_rules_reaches_an_inbox_with_one_id_and_rising_hops() {
    let world = world();
    let mqtt = world.daemon.mqtt;
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    accepted(alice.publish("c/start", "relay").await);
    let delivered = alice
        .message("person/alice/inbox", |m| m["body"]["text"] == "relay")
        .await;
    assert_eq!(delivered["from"], "bot", "{delivered}");
    // hop 0: alice's PUBLISH; hop 1: hop-1's; hop 2: hop-2's message into the inbox.
    assert_eq!(delivered["body"]["seen_hop"], 1, "{delivered}");
    assert_eq!(delivered["chain"]["hop"], 2, "{delivered}");
    let chain = delivered["chain"]["id"].as_str().unwrap().to_owned();
    assert!(chain.starts_with("mqtt:alice#"), "{chain}");
    let first = tokio::task::spawn_blocking(move || traces_until(mqtt, "hop-1", |t| !t.is_empty()))
        .await
        .unwrap();
    let second =
        tokio::task::spawn_blocking(move || traces_until(mqtt, "hop-2", |t| !t.is_empty()))
            .await
            .unwrap();
    let link = |t: &Value| {
        (
            t["chain"].as_str().unwrap().to_owned(),
            t["hop"].as_u64().unwrap(),
        )
    };
    assert_eq!(link(&first[0]), (chain.clone(), 0));
    assert_eq!(link(&second[0]), (chain, 1));
}
