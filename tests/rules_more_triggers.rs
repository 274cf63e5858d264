//! The trigger kinds `rules_triggers.rs` leaves out, end to end on the real daemon: a command
//! that times out, a cron schedule, and the things' and groups' relation changes made at run
//! time (bound, linked, unlinked, member_left), each firing its rule once, with the event's
//! fields as docs/RULES.md lists them.

use serde_json::json;

use crate::common::im::{Peer, World, persons};

const RULES: &str = r#"
things:
  - { id: lamp, secret: lamp-pw }
  - { id: cam, secret: cam-pw }
groups:
  - { id: family, owner: alice, members: [bob] }
relations:
  - { bind: cam, to: alice }
rules:
  - id: timed-out
    when: { timeout: cam }
    as: bot
    do: 'publish("t/out/timeout", event.thing + " " + event.id)'
  - id: each-second
    when: { cron: "* * * * * *" }
    as: bot
    do: 'publish("t/out/cron", "tick")'
  - id: bound
    when: { relation: bound, of: lamp }
    as: bot
    do: 'publish("t/out/bound", event.thing + " to " + event.person)'
  - id: linked
    when: { relation: linked, of: lamp }
    as: bot
    do: 'publish("t/out/linked", event.relation)'
  - id: unlinked
    when: { relation: unlinked, of: cam }
    as: bot
    do: 'publish("t/out/unlinked", event.relation)'
  - id: left
    when: { relation: member_left, of: family }
    as: bot
    do: 'publish("t/out/left", event.member + " left " + event.group)'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_cron_and_runtime_relation_changes_fire_their_rules() {
    let yaml = persons(&["alice", "bob", "bot", "watcher"]) + RULES;
    let world = World::with(
        &yaml,
        "allow_anonymous = true\n[things]\nsweep_interval_ms = 100\n",
    );
    let mut watcher = world.v5("watcher").await;
    watcher.sync().await;
    assert!(watcher.subscribe("t/out/#").await <= 1);

    // A cron schedule of every second.
    assert_eq!(watcher.text_on("t/out/cron").await, "tick");

    // A command to the offline camera with a one-second ttl times out: the `timeout` trigger.
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    assert!(
        alice
            .publish("thing/cam/cmd", r#"{"snap":true,"ttl":1}"#)
            .await
            < 0x80
    );
    let timed_out = watcher.text_on("t/out/timeout").await;
    assert!(timed_out.starts_with("cam thing:cam#"), "{timed_out}");

    // The lamp is claimed at run time: `bound`, with the thing and the person.
    let mut lamp = Peer::connect(world.port(), "lamp", true, 30).await.thing();
    let code = lamp
        .request_on("$things/req", "thing.claim_code", json!({}))
        .await;
    assert_eq!(code["ok"], true, "{code}");
    let code = code["code"].as_str().expect("a claim code").to_owned();
    let bound = alice
        .request_on("$things/req", "thing.bind", json!({ "code": code }))
        .await;
    assert_eq!(bound["ok"], true, "{bound}");
    assert_eq!(watcher.text_on("t/out/bound").await, "lamp to alice");

    // Alice owns both now: linking fires `linked` (of either thing), unlinking `unlinked`.
    let linked = alice
        .request_on(
            "$things/req",
            "thing.link",
            json!({ "things": ["lamp", "cam"] }),
        )
        .await;
    assert_eq!(linked["ok"], true, "{linked}");
    assert_eq!(watcher.text_on("t/out/linked").await, "linked");
    let unlinked = alice
        .request_on(
            "$things/req",
            "thing.unlink",
            json!({ "things": ["lamp", "cam"] }),
        )
        .await;
    assert_eq!(unlinked["ok"], true, "{unlinked}");
    assert_eq!(watcher.text_on("t/out/unlinked").await, "unlinked");

    // Bob leaves the family group: `member_left`, with the group and the member.
    let mut bob = world.v5("bob").await;
    bob.sync().await;
    let left = bob.ok("group.leave", json!({ "group": "family" })).await;
    assert_eq!(left["ok"], true, "{left}");
    assert_eq!(watcher.text_on("t/out/left").await, "bob left family");

    // Each relation rule fired once.
    for topic in [
        "t/out/bound",
        "t/out/linked",
        "t/out/unlinked",
        "t/out/left",
    ] {
        let seen = watcher.received_on(topic);
        assert!(
            seen.len() <= 1,
            "{topic} fired {} times: {seen:?}",
            seen.len()
        );
    }
}
