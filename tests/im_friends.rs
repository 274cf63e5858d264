//! Friendship in the IM world: requests by SUBSCRIBE, strangers refused, unfriending into the
//! recycle bin and restoring from it, blocking.

use serde_json::json;

use crate::common::im::{World, conv, friends, make_friends, persons, user};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_each_others_status_makes_friends() {
    let world = World::with(&persons(&["alice", "bob"]), "");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v3("bob").await;
    let (roster, _, _) = alice.sync().await;
    assert_eq!(roster["friends"], json!([]));
    bob.sync().await;

    // Before they are friends, a message is refused.
    assert_eq!(alice.publish("person/bob/inbox", "too soon").await, 0x87);

    // alice asks: her SUBACK grants it, she is told it waits, bob is asked.
    let code = alice.subscribe("person/bob/status").await;
    assert!(code <= 1, "SUBACK {code:#x}");
    let pending = alice.notice("friend.pending").await;
    assert_eq!(pending["peer"], "bob");
    let request = bob.notice("friend.request").await;
    assert_eq!(request["from"], "alice");
    assert!(request["ts"].is_u64());

    // bob asks back: friends at once, both told.
    let code = bob.subscribe("person/alice/status").await;
    assert!(code <= 1, "SUBACK {code:#x}");
    let added = alice.notice("friend.added").await;
    assert_eq!(added["peer"], "bob");
    assert_eq!(added["restored"], false);
    let added = bob.notice("friend.added").await;
    assert_eq!(added["peer"], "alice");
    assert_eq!(added["restored"], false);

    // Now they can talk, and each sees the other's presence.
    alice.presence("bob", "online").await;
    bob.presence("alice", "online").await;
    assert_eq!(alice.publish("person/bob/inbox", "hi bob").await, 0);
    let msg = bob.message("person/bob/inbox", |_| true).await;
    assert_eq!(msg["from"], "alice");
    assert_eq!(msg["to"], "bob");
    assert_eq!(msg["conv"], conv("alice", "bob"));
    assert_eq!(msg["body"], json!({ "text": "hi bob" }));

    // The friendship is permanent: a new connection's roster lists it.
    drop(bob);
    let mut bob = world.v5("bob:tablet").await;
    let (roster, _, _) = bob.sync().await;
    assert_eq!(roster["friends"][0]["id"], "alice");
    assert_eq!(
        roster["requests"],
        json!({ "incoming": [], "outgoing": [] })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_message_a_person() {
    let yaml = persons(&["alice", "bob", "carol"]) + friends(&[("alice", "bob")]).as_str();
    let world = World::with(&yaml, "");
    let mut bob = world.v5("bob").await;
    bob.sync().await;
    let mut carol5 = world.v5("carol:v5").await;
    let mut carol3 = world.v3("carol:v3").await;
    carol5.sync().await;
    carol3.sync().await;

    // v5: refused in the PUBACK.
    assert_eq!(carol5.publish("person/bob/inbox", "let me in").await, 0x87);
    // v3 cannot be refused: acknowledged, dropped, and told on its own inbox.
    assert_eq!(carol3.publish("person/bob/inbox", "let me in").await, 0);
    let error = carol3.notice("error").await;
    assert_eq!(error["code"], "not_authorized");
    assert_eq!(error["topic"], "person/bob/inbox");
    assert!(error["message"].is_string());
    // The v5 device was told by its PUBACK, not by an error envelope.
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    assert_eq!(alice.publish("person/bob/inbox", "barrier").await, 0);
    bob.message("person/bob/inbox", |m| m["body"]["text"] == "barrier")
        .await;
    let inbox = bob.received_on("person/bob/inbox");
    assert!(
        inbox.iter().all(|m| m["from"] != "carol"),
        "carol reached bob: {inbox:?}"
    );
    assert!(
        carol5
            .received_on("person/carol/inbox")
            .iter()
            .all(|m| m["type"] != "error")
    );
    // Nothing was stored either.
    let page = bob
        .ok("history", json!({ "conv": conv("bob", "carol") }))
        .await;
    assert_eq!(page["messages"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfriended_person_stays_restorable_until_the_retention_ends() {
    // Friends made at runtime: this is about what persons do (a file's own friendships:
    // tests/definitions_reload.rs).
    let world = World::with(&persons(&["alice", "bob"]), "[im]\npurge_interval = 1\n");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v5("bob").await;
    alice.sync().await;
    bob.sync().await;
    make_friends(&mut alice, &mut bob).await;

    // Unfriend with a 2 s retention.
    let code = alice
        .unsubscribe_with("person/bob/status", user(&[("im-retain-secs", "2")]))
        .await;
    assert_eq!(code, Some(0));
    let removed = alice.notice("friend.removed").await;
    assert_eq!(
        (&removed["peer"], &removed["by"]),
        (&json!("bob"), &json!("alice"))
    );
    let removed = bob.notice("friend.removed").await;
    assert_eq!(
        (&removed["peer"], &removed["by"]),
        (&json!("alice"), &json!("alice"))
    );
    assert_eq!(
        alice.publish("person/bob/inbox", "still there?").await,
        0x87
    );
    assert_eq!(
        bob.publish("person/alice/inbox", "still there?").await,
        0x87
    );
    // Nothing more to remove.
    assert_eq!(alice.unsubscribe("person/bob/status").await, Some(0x11));

    let list = alice.ok("recycle.list", json!({})).await;
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["kind"], "friend");
    assert_eq!(entries[0]["peer"], "bob");
    let removed_at = entries[0]["removed_at"].as_u64().unwrap();
    assert_eq!(
        entries[0]["expires_at"].as_u64().unwrap(),
        removed_at + 2000
    );
    // Only alice's bin holds it.
    let list = bob.ok("recycle.list", json!({})).await;
    assert_eq!(list["entries"], json!([]));

    // Restored before expiry: as it was, both told.
    alice.ok("friend.restore", json!({ "peer": "bob" })).await;
    let added = alice.notice("friend.added").await;
    assert_eq!(
        (&added["peer"], &added["restored"]),
        (&json!("bob"), &json!(true))
    );
    let added = bob.notice("friend.added").await;
    assert_eq!(
        (&added["peer"], &added["restored"]),
        (&json!("alice"), &json!(true))
    );
    assert_eq!(alice.publish("person/bob/inbox", "back").await, 0);
    bob.message("person/bob/inbox", |m| m["body"]["text"] == "back")
        .await;
    let list = alice.ok("recycle.list", json!({})).await;
    assert_eq!(list["entries"], json!([]));

    // Removed again; after the retention (and a purge) it is gone for good.
    let code = alice
        .unsubscribe_with("person/bob/status", user(&[("im-retain-secs", "2")]))
        .await;
    assert_eq!(code, Some(0));
    let list = alice.ok("recycle.list", json!({})).await;
    let expires_at = list["entries"][0]["expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Past the expiry, and past the next purge (every second).
    tokio::time::sleep(std::time::Duration::from_millis(
        expires_at.saturating_sub(now) + 1500,
    ))
    .await;
    let list = alice.ok("recycle.list", json!({})).await;
    assert_eq!(list["entries"], json!([]));
    assert_eq!(
        alice
            .refused("friend.restore", json!({ "peer": "bob" }))
            .await,
        "not_found"
    );
    assert_eq!(alice.publish("person/bob/inbox", "gone").await, 0x87);

    // Also across a restart: nothing comes back.
    drop((alice, bob));
    let mut world = world;
    world.daemon.restart();
    let mut alice = world.v5("alice").await;
    let (roster, _, _) = alice.sync().await;
    assert_eq!(roster["friends"], json!([]));
    assert_eq!(roster["recycle"], json!([]));
    assert_eq!(
        alice
            .refused("friend.restore", json!({ "peer": "bob" }))
            .await,
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscribe_restores_from_the_recycle_bin_without_approval() {
    let yaml = persons(&["alice", "bob"]) + friends(&[("alice", "bob")]).as_str();
    let world = World::with(&yaml, "");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v3("bob").await;
    alice.sync().await;
    bob.sync().await;
    // v3 has no user properties: the default retention (7 days).
    assert_eq!(bob.unsubscribe("person/alice/status").await, None);
    bob.notice("friend.removed").await;
    alice.notice("friend.removed").await;
    let list = bob.ok("recycle.list", json!({})).await;
    let entry = &list["entries"][0];
    assert_eq!(
        entry["expires_at"].as_u64().unwrap() - entry["removed_at"].as_u64().unwrap(),
        7 * 24 * 3600 * 1000
    );
    // SUBSCRIBE again: back at once, no request to alice.
    assert!(bob.subscribe("person/alice/status").await <= 1);
    let added = bob.notice("friend.added").await;
    assert_eq!(
        (&added["peer"], &added["restored"]),
        (&json!("alice"), &json!(true))
    );
    let added = alice.notice("friend.added").await;
    assert_eq!(
        (&added["peer"], &added["restored"]),
        (&json!("bob"), &json!(true))
    );
    assert_eq!(alice.publish("person/bob/inbox", "welcome back").await, 0);
    bob.message("person/bob/inbox", |m| m["body"]["text"] == "welcome back")
        .await;
    assert!(
        alice
            .received_on("person/alice/inbox")
            .iter()
            .all(|m| m["type"] != "friend.request")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_person_can_neither_ask_nor_message() {
    let yaml = persons(&["alice", "bob", "carol"]) + friends(&[("alice", "bob")]).as_str();
    let world = World::with(&yaml, "");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v5("bob").await;
    let mut carol = world.v5("carol").await;
    alice.sync().await;
    bob.sync().await;
    carol.sync().await;

    alice.ok("block", json!({ "peer": "carol" })).await;
    assert_eq!(alice.notice("blocked").await["peer"], "carol");
    assert_eq!(carol.subscribe("person/alice/status").await, 0x87);
    assert_eq!(
        carol
            .refused("friend.request", json!({ "peer": "alice" }))
            .await,
        "not_authorized"
    );
    assert_eq!(carol.publish("person/alice/inbox", "hey").await, 0x87);

    // Blocking a friend ends the friendship (into the blocker's bin), also for a connection
    // that has just sent them a message (and remembers the way).
    assert_eq!(bob.publish("person/alice/inbox", "before").await, 0);
    alice.ok("block", json!({ "peer": "bob" })).await;
    assert_eq!(bob.publish("person/alice/inbox", "hey").await, 0x87);
    let (roster, _, _) = world.v5("alice:web").await.sync().await;
    assert_eq!(roster["friends"], json!([]));
    let mut blocked: Vec<String> = serde_json::from_value(roster["blocked"].clone()).unwrap();
    blocked.sort();
    assert_eq!(blocked, ["bob", "carol"]);

    // Unblocked, carol may ask again.
    alice.ok("unblock", json!({ "peer": "carol" })).await;
    assert!(carol.subscribe("person/alice/status").await <= 1);
    carol.notice("friend.pending").await;
    alice.notice("friend.request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_asked_for_is_capped() {
    let yaml = persons(&["alice", "bob"]) + friends(&[("alice", "bob")]).as_str();
    let world = World::with(&yaml, "[im]\nrecycle_max_secs = 100\n");
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    let code = alice
        .unsubscribe_with("person/bob/status", user(&[("im-retain-secs", "999999")]))
        .await;
    assert_eq!(code, Some(0));
    let list = alice.ok("recycle.list", json!({})).await;
    let entry = &list["entries"][0];
    assert_eq!(
        entry["expires_at"].as_u64().unwrap() - entry["removed_at"].as_u64().unwrap(),
        100_000
    );
}
