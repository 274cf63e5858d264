//! Presence in the IM world: online, away (only pings, or by choice), offline (disconnect or a
//! keepalive that expires), status texts; seen by friends and one's own devices, never by others.

use serde_json::{Value, json};

use crate::common::im::{Peer, World, friends, persons};
use crate::common::raw;

fn world(extra: &str) -> World {
    World::with(
        &(persons(&["alice", "bob", "carol"]) + friends(&[("alice", "bob")]).as_str()),
        extra,
    )
}

/// Nothing about alice reached `peer`: checked after a request it makes now, which is answered
/// after anything already on its way.
async fn saw_nothing_of_alice(peer: &mut Peer) {
    peer.ok("recycle.list", json!({})).await;
    let seen: Vec<Value> = peer.received_on("person/alice/status");
    assert!(seen.is_empty(), "{} saw {seen:?}", peer.client_id);
    let about: Vec<Value> = peer
        .received()
        .into_iter()
        .filter(|m| m.json["id"] == "alice" || m.topic.contains("alice"))
        .map(|m| m.json)
        .collect();
    assert!(about.is_empty(), "{} saw {about:?}", peer.client_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_friend_sees_online_away_and_offline() {
    let world = world("[im]\naway_after = 1\n");
    let mut bob = world.v5("bob").await;
    let mut carol = world.v5("carol").await;
    bob.sync().await;
    carol.sync().await;
    // Right after the sync: alice's current presence, never seen yet.
    let never = bob.presence("alice", "offline").await;
    assert_eq!(never["last_seen"], Value::Null);

    // alice only pings (keepalive 2 s: a margin on a loaded machine) and does nothing else.
    let mut alice = Peer::connect(world.port(), "alice", false, 2).await;
    alice.sync().await;
    let online = bob.presence("alice", "online").await;
    assert_eq!(online["type"], "presence");
    assert_eq!(online["id"], "alice");
    let away = bob.presence("alice", "away").await;
    assert!(away["last_seen"].as_u64().unwrap() >= online["last_seen"].as_u64().unwrap());
    // Her own device sees it too.
    alice.presence("alice", "away").await;
    // A PUBLISH makes her online again.
    assert_eq!(alice.publish("person/bob/inbox", "back").await, 0);
    bob.presence("alice", "online").await;
    bob.message("person/bob/inbox", |m| m["body"]["text"] == "back")
        .await;
    // Still connected on pings alone: the keepalive holds.
    bob.presence("alice", "away").await;
    alice.disconnect().await;
    let offline = bob.presence("alice", "offline").await;
    assert!(offline["last_seen"].is_u64(), "{offline}");
    // The roster of a new device says so too.
    let (roster, _, _) = world.v5("bob:web").await.sync().await;
    assert_eq!(roster["friends"][0]["id"], "alice");
    assert_eq!(roster["friends"][0]["presence"], "offline");

    saw_nothing_of_alice(&mut carol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_goes_offline_when_its_keepalive_expires() {
    let world = world("");
    let mut bob = world.v5("bob").await;
    let mut carol = world.v3("carol").await;
    bob.sync().await;
    carol.sync().await;
    bob.presence("alice", "offline").await;

    // A client that sends CONNECT with keepalive 1 and then nothing.
    let connect = raw::Connect::v5("alice:silent")
        .login("alice", "alice-pw")
        .keep_alive(1);
    let mut silent = raw::Client::session(world.daemon.mqtt, &connect);
    bob.presence("alice", "online").await;
    let offline = bob.presence("alice", "offline").await;
    assert_eq!(offline["id"], "alice");
    // The broker closed it with 0x8D (keepalive timeout).
    let closing = tokio::task::spawn_blocking(move || silent.expect_closed())
        .await
        .unwrap();
    let disconnect = closing
        .iter()
        .find(|p| p.kind == raw::DISCONNECT)
        .unwrap_or_else(|| panic!("no DISCONNECT before the close: {closing:?}"));
    assert_eq!(disconnect.code(), 0x8D);

    saw_nothing_of_alice(&mut carol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_text_and_chosen_away_reach_friends_only() {
    let world = world("");
    let mut alice = world.v5("alice").await;
    let mut tab = world.v3("alice:tab").await;
    let mut bob = world.v3("bob").await;
    let mut carol = world.v5("carol").await;
    for peer in [&mut alice, &mut tab, &mut bob, &mut carol] {
        peer.sync().await;
    }
    // bob's friend alice is online, as told right after his sync.
    assert_eq!(bob.presence("alice", "online").await["text"], Value::Null);
    // carol asks to be a friend: while it waits she sees nothing.
    assert!(carol.subscribe("person/alice/status").await <= 1);
    carol.notice("friend.pending").await;

    let code = alice
        .publish("person/alice/status", r#"{"text":"in a meeting"}"#)
        .await;
    assert_eq!(code, 0);
    let status = bob
        .wait_msg("alice's text", |m| {
            m.topic == "person/alice/status" && m.json["text"] == "in a meeting"
        })
        .await;
    assert_eq!(status.json["presence"], "online");
    assert!(status.retain, "presence is published retained");
    tab.wait_msg("alice's text on her other device", |m| {
        m.topic == "person/alice/status" && m.json["text"] == "in a meeting"
    })
    .await;

    let code = alice
        .publish("person/alice/status", r#"{"presence":"away"}"#)
        .await;
    assert_eq!(code, 0);
    let away = bob.presence("alice", "away").await;
    assert_eq!(away["text"], "in a meeting");
    let code = alice
        .publish(
            "person/alice/status",
            r#"{"presence":"online","text":null}"#,
        )
        .await;
    assert_eq!(code, 0);
    let online = bob.presence("alice", "online").await;
    assert_eq!(online["text"], Value::Null);
    // Not JSON, or an unknown presence: refused.
    assert_eq!(alice.publish("person/alice/status", "busy").await, 0x99);
    assert_eq!(
        alice
            .publish("person/alice/status", r#"{"presence":"gone"}"#)
            .await,
        0x99
    );

    // A friend connecting later gets the current presence at once, retained.
    drop(bob);
    let mut bob = world.v5("bob:later").await;
    bob.sync().await;
    let now = bob.presence("alice", "online").await;
    assert_eq!(now["id"], "alice");

    // carol, still only asking, saw nothing of it.
    saw_nothing_of_alice(&mut carol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_is_offline_only_when_the_last_device_leaves() {
    let world = world("");
    let mut bob = world.v5("bob").await;
    bob.sync().await;
    bob.presence("alice", "offline").await;
    let mut phone = world.v5("alice:phone").await;
    let laptop = world.v3("alice:laptop").await;
    phone.sync().await;
    bob.presence("alice", "online").await;
    laptop.disconnect().await;
    // Still online: a presence published now (a new text) says so.
    let code = phone
        .publish("person/alice/status", r#"{"text":"on the phone"}"#)
        .await;
    assert_eq!(code, 0);
    let status = bob
        .wait_msg("alice's new text", |m| {
            m.topic == "person/alice/status" && m.json["text"] == "on the phone"
        })
        .await;
    assert_eq!(status.json["presence"], "online");
    phone.disconnect().await;
    bob.presence("alice", "offline").await;
}
