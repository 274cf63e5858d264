//! Direct messages in the IM world: offline delivery at CONNECT (also across a restart), several
//! devices of one person, `cid` retries, history pages, receipts, limits, and every attempt to
//! forge or snoop.

use serde_json::{Value, json};

use crate::common::im::{Ev, Opts, Peer, World, conv, friends, persons, with_user};
use crate::common::raw;

fn alice_and_bob() -> String {
    persons(&["alice", "bob", "carol"]) + friends(&[("alice", "bob")]).as_str()
}

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["body"]["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// alice sends `m<from>` .. `m<to - 1>` to bob at QoS 1 and waits for every PUBACK.
async fn send_many(alice: &mut Peer, from: u32, to: u32) {
    for i in from..to {
        alice.send("person/bob/inbox", format!("m{i}")).await;
    }
    for _ in from..to {
        assert_eq!(alice.puback().await, 0);
    }
}

/// bob's sync carries exactly `m<from>` .. `m<to - 1>` with seqs `from..to`, then `sync.done`.
fn assert_replayed(replayed: &[Value], from: u32, to: u32) {
    assert_eq!(seqs(replayed), (from as u64..to as u64).collect::<Vec<_>>());
    assert_eq!(
        texts(replayed),
        (from..to).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    for m in replayed {
        assert_eq!(m["type"], "msg");
        assert_eq!(m["from"], "alice");
        assert_eq!(m["to"], "bob");
        assert_eq!(m["conv"], conv("alice", "bob"));
        assert_eq!(m["id"], format!("{}#{}", conv("alice", "bob"), m["seq"]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_person_gets_every_message_at_connect() {
    let world = World::with(&alice_and_bob(), "");
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    send_many(&mut alice, 1, 51).await;

    // bob connects with a clean session: sync, the 50 in order, sync.done; then presence.
    let mut bob = world.v3("bob").await;
    let (roster, replayed, done) = bob.sync().await;
    assert_eq!(roster["account"], "bob");
    assert_eq!(roster["friends"][0]["id"], "alice");
    assert_eq!(roster["friends"][0]["presence"], "online");
    assert_replayed(&replayed, 1, 51);
    assert_eq!(done["more"], json!([]));
    // The sync is the first thing on the inbox.
    assert_eq!(bob.received_on("person/bob/inbox")[0]["type"], "sync");
    bob.presence("alice", "online").await;

    // A live message after the sync continues the sequence, once.
    assert_eq!(alice.publish("person/bob/inbox", "live").await, 0);
    let live = bob
        .message("person/bob/inbox", |m| m["body"]["text"] == "live")
        .await;
    assert_eq!(live["seq"], 51);
    let inbox = bob.received_on("person/bob/inbox");
    let msgs: Vec<Value> = inbox.into_iter().filter(|m| m["type"] == "msg").collect();
    assert_eq!(seqs(&msgs), (1..=51).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_messages_survive_a_restart() {
    let mut world = World::with(&alice_and_bob(), "");
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    send_many(&mut alice, 1, 51).await;
    drop(alice);
    world.daemon.restart();

    let mut bob = world.v5("bob").await;
    let (_, replayed, done) = bob.sync().await;
    assert_replayed(&replayed, 1, 51);
    assert_eq!(done["more"], json!([]));
    // The sequence goes on after the restart.
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    assert_eq!(alice.publish("person/bob/inbox", "after").await, 0);
    let after = bob
        .message("person/bob/inbox", |m| m["body"]["text"] == "after")
        .await;
    assert_eq!(after["seq"], 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_gets_only_what_it_missed() {
    let world = World::with(&alice_and_bob(), "");
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    let mut bob = world.v5("bob:phone").await;
    bob.sync().await;
    send_many(&mut alice, 1, 6).await;
    for i in 1..6 {
        bob.message("person/bob/inbox", |m| m["seq"] == i).await;
    }
    bob.disconnect().await;
    alice.presence("bob", "offline").await;

    send_many(&mut alice, 6, 11).await;
    let mut bob = world.v5("bob:phone").await;
    let (_, replayed, _) = bob.sync().await;
    assert_replayed(&replayed, 6, 11);
    // A device never seen counts from the account's last device.
    bob.disconnect().await;
    alice.presence("bob", "offline").await;
    let mut laptop = world.v3("bob:laptop").await;
    let (_, replayed, _) = laptop.sync().await;
    assert_replayed(&replayed, 11, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_stops_at_the_limit_and_says_where_to_page_from() {
    let world = World::with(&alice_and_bob(), "[im]\nsync_max_per_conv = 10\n");
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    send_many(&mut alice, 1, 16).await;
    let mut bob = world.v5("bob").await;
    let (_, replayed, done) = bob.sync().await;
    assert_replayed(&replayed, 1, 11);
    assert_eq!(
        done["more"],
        json!([{ "conv": conv("alice", "bob"), "after": 10 }])
    );
    let page = bob
        .ok(
            "history",
            json!({ "conv": conv("alice", "bob"), "after": 10 }),
        )
        .await;
    assert_replayed(page["messages"].as_array().unwrap(), 11, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_gets_the_message_and_the_senders_other_devices_a_copy() {
    let world = World::with(&alice_and_bob(), "");
    let mut phone = world.v5("bob:phone").await;
    let mut laptop = world.v3("bob:laptop").await;
    let mut alice_phone = world.v5("alice:phone").await;
    let mut alice_laptop = world.v3("alice:laptop").await;
    for peer in [&mut phone, &mut laptop, &mut alice_phone, &mut alice_laptop] {
        peer.sync().await;
    }

    assert_eq!(alice_phone.publish("person/bob/inbox", "to both").await, 0);
    let on_phone = phone.message("person/bob/inbox", |_| true).await;
    let on_laptop = laptop.message("person/bob/inbox", |_| true).await;
    assert_eq!(on_phone, on_laptop);
    assert_eq!(on_phone["body"]["text"], "to both");
    // The sender's other device: the same envelope, on its own inbox.
    let copy = alice_laptop.message("person/alice/inbox", |_| true).await;
    assert_eq!(copy, on_phone);

    // The sending device does not get it: bob's answer comes after it would have.
    assert_eq!(phone.publish("person/alice/inbox", "got it").await, 0);
    let answer = alice_phone.message("person/alice/inbox", |_| true).await;
    assert_eq!(answer["from"], "bob");
    assert_eq!(answer["seq"], 2);
    assert!(
        alice_phone
            .received_on("person/alice/inbox")
            .iter()
            .all(|m| m["type"] != "msg" || m["from"] != "alice"),
        "the sending device got its own message"
    );
    // bob's other device has the copy of the answer; alice's laptop the answer itself.
    laptop
        .message("person/bob/inbox", |m| m["body"]["text"] == "got it")
        .await;
    alice_laptop
        .message("person/alice/inbox", |m| m["body"]["text"] == "got it")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_cid_is_stored_and_delivered_once() {
    let world = World::with(&alice_and_bob(), "");
    let mut bob = world.v5("bob").await;
    bob.sync().await;
    let mut alice5 = world.v5("alice:v5").await;
    let mut alice3 = world.v3("alice:v3").await;
    alice5.sync().await;
    alice3.sync().await;

    // v5: the user property `cid`; both acknowledged.
    for _ in 0..2 {
        let code = alice5
            .publish_with("person/bob/inbox", "once", with_user(&[("cid", "c-1")]))
            .await;
        assert_eq!(code, 0);
    }
    // v3: a top-level "cid" in the JSON.
    for _ in 0..2 {
        let code = alice3
            .publish("person/bob/inbox", r#"{"cid":"c-2","text":"twice sent"}"#)
            .await;
        assert_eq!(code, 0);
    }
    assert_eq!(alice5.publish("person/bob/inbox", "barrier").await, 0);
    bob.message("person/bob/inbox", |m| m["body"]["text"] == "barrier")
        .await;

    let got: Vec<Value> = bob
        .received_on("person/bob/inbox")
        .into_iter()
        .filter(|m| m["type"] == "msg")
        .collect();
    assert_eq!(seqs(&got), [1, 2, 3]);
    assert_eq!(got[0]["cid"], "c-1");
    assert_eq!(got[0]["body"], json!({ "text": "once" }));
    assert_eq!(got[1]["cid"], "c-2");
    // The cid is taken out of the body.
    assert_eq!(got[1]["body"], json!({ "text": "twice sent" }));
    assert!(got[2].get("cid").is_none_or(Value::is_null));
    let page = bob
        .ok("history", json!({ "conv": conv("alice", "bob") }))
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    assert_eq!(page["last_seq"], 3);
    // The same cid from another sender is another message.
    assert_eq!(
        bob.publish_with("person/alice/inbox", "mine", with_user(&[("cid", "c-1")]))
            .await,
        0
    );
    let mine = alice5
        .message("person/alice/inbox", |m| m["from"] == "bob")
        .await;
    assert_eq!(mine["seq"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_return_exactly_the_stored_sequence() {
    let world = World::with(&alice_and_bob(), "[im]\nhistory_max = 100\n");
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    send_many(&mut alice, 1, 26).await;
    let mut bob = world.v5("bob").await;
    bob.sync().await;
    let c = conv("alice", "bob");

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = bob
            .ok("history", json!({ "conv": c, "after": after, "limit": 10 }))
            .await;
        assert_eq!(page["conv"], c);
        assert_eq!(page["last_seq"], 25);
        let messages = page["messages"].as_array().unwrap().clone();
        if messages.is_empty() {
            break;
        }
        assert!(messages.len() <= 10);
        after = messages.last().unwrap()["seq"].as_u64().unwrap();
        paged.extend(messages);
    }
    assert_replayed(&paged, 1, 26);
    // Everything paged equals the newest page of all.
    let all = bob.ok("history", json!({ "conv": c, "limit": 100 })).await;
    assert_eq!(all["messages"].as_array().unwrap(), &paged);
    // The newest before 11, ascending.
    let page = bob
        .ok("history", json!({ "conv": c, "before": 11, "limit": 5 }))
        .await;
    assert_replayed(page["messages"].as_array().unwrap(), 6, 11);
    // The newest page.
    let page = alice.ok("history", json!({ "conv": c, "limit": 3 })).await;
    assert_replayed(page["messages"].as_array().unwrap(), 23, 26);
    // Between after and before.
    let page = alice
        .ok("history", json!({ "conv": c, "after": 3, "before": 7 }))
        .await;
    assert_replayed(page["messages"].as_array().unwrap(), 4, 7);
    // Not a party: refused.
    let mut carol = world.v5("carol").await;
    carol.sync().await;
    assert_eq!(
        carol.refused("history", json!({ "conv": c })).await,
        "not_authorized"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_receipt_reaches_the_sender() {
    let world = World::with(&alice_and_bob(), "");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v3("bob").await;
    alice.sync().await;
    bob.sync().await;
    assert_eq!(alice.publish("person/bob/inbox", "read me").await, 0);
    let msg = bob.message("person/bob/inbox", |_| true).await;
    bob.ok(
        "receipt",
        json!({ "conv": msg["conv"], "seq": msg["seq"], "kind": "read" }),
    )
    .await;
    let receipt = alice.notice("receipt").await;
    assert_eq!(receipt["conv"], conv("alice", "bob"));
    assert_eq!(receipt["seq"], 1);
    assert_eq!(receipt["kind"], "read");
    assert_eq!(receipt["by"], "bob");
    // A receipt for a message that does not exist is refused.
    assert_eq!(
        bob.refused(
            "receipt",
            json!({ "conv": msg["conv"], "seq": 9, "kind": "read" })
        )
        .await,
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_and_invalid_bodies_are_refused() {
    let world = World::with(&alice_and_bob(), "[im]\nmax_body_bytes = 100\n");
    let mut alice = world.v5("alice").await;
    let mut alice3 = world.v3("alice:v3").await;
    alice.sync().await;
    alice3.sync().await;
    let big = "x".repeat(200);
    assert_eq!(alice.publish("person/bob/inbox", big.clone()).await, 0x97);
    assert_eq!(
        alice.publish("person/bob/inbox", vec![0xffu8, 0xfe]).await,
        0x99
    );
    assert_eq!(alice3.publish("person/bob/inbox", big).await, 0);
    assert_eq!(alice3.notice("error").await["code"], "too_large");
    // Nothing was stored.
    let page = alice
        .ok("history", json!({ "conv": conv("alice", "bob") }))
        .await;
    assert_eq!(page["messages"], json!([]));
    assert_eq!(page["last_seq"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_persons_inbox_cannot_be_read() {
    let world = World::with(&alice_and_bob(), "");
    let mut carol5 = world.v5("carol").await;
    let mut carol3 = world.v3("carol:v3").await;
    carol5.sync().await;
    carol3.sync().await;
    assert_eq!(carol5.subscribe("person/bob/inbox").await, 0x87);
    assert_eq!(carol3.subscribe("person/bob/inbox").await, 0x80);
    // Even a friend cannot.
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    assert_eq!(alice.subscribe("person/bob/inbox").await, 0x87);
    // Wildcards and shared subscriptions on IM topics are refused.
    for filter in [
        "person/+/inbox",
        "person/#",
        "group/#",
        "$share/x/person/bob/inbox",
    ] {
        let code = carol5.subscribe(filter).await;
        assert!(code >= 0x80, "{filter}: SUBACK {code:#x}");
    }
    // One's own inbox and status are fine.
    assert!(carol5.subscribe("person/carol/inbox").await <= 1);
    assert!(carol5.subscribe("person/carol/status").await <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscribers_never_see_the_im_world() {
    let world = World::with(&alice_and_bob(), "");
    let mut carol = world.v5("carol").await;
    carol.sync().await;
    assert!(carol.subscribe("#").await <= 1);
    let mut carol3 = world.v3("carol:v3").await;
    carol3.sync().await;
    assert!(carol3.subscribe("#").await <= 1);
    assert!(carol3.subscribe("+/+/+").await <= 1);

    let mut alice = world.v5("alice").await;
    let mut bob = world.v5("bob").await;
    alice.sync().await;
    bob.sync().await;
    assert_eq!(alice.publish("person/bob/inbox", "secret").await, 0);
    bob.message("person/bob/inbox", |_| true).await;
    assert_eq!(
        alice
            .publish("person/alice/status", r#"{"text":"private"}"#)
            .await,
        0
    );
    bob.wait_msg("alice's status text", |m| {
        m.topic == "person/alice/status" && m.json["text"] == "private"
    })
    .await;
    // A plain message through the same wildcard arrives after anything before it would have.
    assert_eq!(alice.publish("plain/after", "plain").await, 0);
    for peer in [&mut carol, &mut carol3] {
        peer.wait_msg("the plain message", |m| m.topic == "plain/after")
            .await;
        let seen: Vec<String> = peer.received().into_iter().map(|m| m.topic).collect();
        assert!(
            seen.iter()
                .all(|t| !t.contains("alice") && !t.contains("bob")),
            "{}: saw {seen:?}",
            peer.client_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_from_arrives_with_the_true_sender() {
    let world = World::with(&alice_and_bob(), "");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v3("bob").await;
    alice.sync().await;
    bob.sync().await;
    let forged = json!({
        "type": "msg", "from": "carol", "to": "bob", "seq": 999, "conv": "person:bob|person:carol",
        "text": "it's carol"
    });
    assert_eq!(
        alice.publish("person/bob/inbox", forged.to_string()).await,
        0
    );
    let got = bob.message("person/bob/inbox", |_| true).await;
    assert_eq!(got["from"], "alice");
    assert_eq!(got["seq"], 1);
    assert_eq!(got["conv"], conv("alice", "bob"));
    // What the client wrote is the body, nothing more.
    assert_eq!(got["body"]["from"], "carol");
    // Nor can anyone publish a status for another person or a message to their own inbox.
    assert_eq!(
        alice
            .publish("person/bob/status", r#"{"presence":"offline"}"#)
            .await,
        0x87
    );
    assert_eq!(alice.publish("person/alice/inbox", "me").await, 0x87);
    assert_eq!(alice.publish("person/bob/other", "x").await, 0x87);
    assert_eq!(alice.publish("$im/other", "x").await, 0x87);
}

#[test]
fn a_client_id_naming_another_account_is_refused() {
    let world = World::with(&alice_and_bob(), "");
    let addr = world.daemon.mqtt;
    for (v5, expected) in [(true, 0x85), (false, 0x02)] {
        for client_id in ["bob", "bob:phone"] {
            let connect = if v5 {
                raw::Connect::v5(client_id)
            } else {
                raw::Connect::v3(client_id)
            };
            let (_, connack) = raw::Client::connect(addr, &connect.login("alice", "alice-pw"));
            assert_eq!(connack.code(), expected, "v5={v5} client id {client_id}");
        }
    }
    // Her own, with or without a device, and a bad password.
    let (_, connack) = raw::Client::connect(
        addr,
        &raw::Connect::v5("alice:x").login("alice", "alice-pw"),
    );
    assert_eq!(connack.code(), 0);
    let (_, connack) =
        raw::Client::connect(addr, &raw::Connect::v5("alice").login("alice", "nope"));
    assert_eq!(connack.code(), 0x86);
    let (_, connack) =
        raw::Client::connect(addr, &raw::Connect::v3("alice").login("alice", "nope"));
    assert_eq!(connack.code(), 0x04);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_count_as_missed() {
    let world = World::with(&alice_and_bob(), "");
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    // bob's phone receives but never acknowledges.
    let lazy = Opts {
        manual_acks: true,
        ..Opts::default()
    };
    let mut bob = Peer::connect_with(world.port(), "bob:phone", lazy).await;
    bob.sync().await;
    send_many(&mut alice, 1, 4).await;
    for i in 1..4 {
        bob.message("person/bob/inbox", |m| m["seq"] == i).await;
    }
    bob.disconnect().await;
    alice.presence("bob", "offline").await;
    send_many(&mut alice, 4, 6).await;
    let mut bob = world.v3("bob:phone").await;
    let (_, replayed, _) = bob.sync().await;
    assert_replayed(&replayed, 1, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_session_gets_each_message_once() {
    let world = World::with(&alice_and_bob(), "");
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    for v5 in [false, true] {
        let device = if v5 { "bob:v5" } else { "bob:v3" };
        let persistent = Opts {
            v5,
            clean: false,
            ..Opts::default()
        };
        let mut bob = Peer::connect_with(world.port(), device, persistent).await;
        bob.sync().await;
        let first = alice
            .ok("history", json!({ "conv": conv("alice", "bob") }))
            .await["last_seq"]
            .as_u64()
            .unwrap();
        send_many(&mut alice, first as u32 + 1, first as u32 + 2).await;
        bob.message("person/bob/inbox", |m| m["seq"] == first + 1)
            .await;
        bob.disconnect().await;
        alice.presence("bob", "offline").await;

        send_many(&mut alice, first as u32 + 2, first as u32 + 5).await;
        let mut bob = Peer::connect_with(world.port(), device, persistent).await;
        let (_, replayed, _) = bob.sync().await;
        assert_replayed(&replayed, first as u32 + 2, first as u32 + 5);
        send_many(&mut alice, first as u32 + 5, first as u32 + 6).await;
        bob.message("person/bob/inbox", |m| m["seq"] == first + 5)
            .await;
        let got: Vec<Value> = bob
            .received_on("person/bob/inbox")
            .into_iter()
            .filter(|m| m["type"] == "msg")
            .collect();
        assert_eq!(
            seqs(&got),
            (first + 2..=first + 5).collect::<Vec<_>>(),
            "{device}"
        );
        bob.disconnect().await;
        alice.presence("bob", "offline").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_device_taken_over_still_gets_its_messages() {
    // One message in flight at a time, so the old connection still has messages queued when
    // the new one takes its session over.
    let world = World::with(&alice_and_bob(), "[limits]\nmax_inflight = 1\n");
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    send_many(&mut alice, 1, 6).await;

    let persistent = Opts {
        clean: false,
        ..Opts::default()
    };
    // The old connection acknowledges nothing: the sync stays in flight, the rest queued.
    let mut old = Peer::connect_with(
        world.port(),
        "bob:phone",
        Opts {
            manual_acks: true,
            ..persistent
        },
    )
    .await;
    old.notice("sync").await;
    // The same device comes back on a new connection (its network changed, say).
    let mut bob = Peer::connect_with(world.port(), "bob:phone", persistent).await;
    old.wait("the old connection's end", |e| matches!(e, Ev::Closed(_)))
        .await;
    for i in 1..6 {
        bob.message("person/bob/inbox", |m| m["seq"] == i).await;
    }
    // Live messages go on from there; each arrives once.
    send_many(&mut alice, 6, 8).await;
    bob.message("person/bob/inbox", |m| m["seq"] == 7).await;
    let got: Vec<Value> = bob
        .received_on("person/bob/inbox")
        .into_iter()
        .filter(|m| m["type"] == "msg")
        .collect();
    assert_eq!(seqs(&got), (1..8).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_client_may_continue_a_chain() {
    let world = World::with(&alice_and_bob(), "");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v5("bob").await;
    alice.sync().await;
    bob.sync().await;
    assert_eq!(alice.publish("person/bob/inbox", "first").await, 0);
    let first = bob.message("person/bob/inbox", |_| true).await;
    assert_eq!(first["chain"], json!({ "id": first["id"], "hop": 0 }));
    let code = alice
        .publish_with(
            "person/bob/inbox",
            "second",
            with_user(&[("chain-id", first["id"].as_str().unwrap())]),
        )
        .await;
    assert_eq!(code, 0);
    let second = bob.message("person/bob/inbox", |m| m["seq"] == 2).await;
    assert_eq!(second["chain"], json!({ "id": first["id"], "hop": 0 }));
    assert_ne!(second["id"], first["id"]);
}

#[test]
fn anonymous_clients_and_things_are_kept_out() {
    let yaml = alice_and_bob() + "things:\n  - { id: door, secret: door-secret }\n";
    let world = World::with(&yaml, "allow_anonymous = true\n");
    let addr = world.daemon.mqtt;
    let anonymous = raw::Connect::v5("someone");
    let stranger = raw::Connect::v5("stranger").login("stranger", "whatever");
    let thing = raw::Connect::v5("door").login("door", "door-secret");
    for connect in [anonymous, stranger, thing] {
        let mut client = raw::Client::session(addr, &connect);
        let codes = client.subscribe(&[
            ("person/alice/status", 1),
            ("person/alice/inbox", 1),
            ("group/family", 1),
            ("$im/req", 1),
        ]);
        assert_eq!(codes, [0x87; 4], "{}", connect.client_id);
        for topic in ["person/alice/inbox", "group/family", "$im/req"] {
            assert_eq!(client.publish(topic, 1, false, b"hi"), 0x87, "{topic}");
            // QoS 2 is refused in the PUBREC.
            assert_eq!(client.publish(topic, 2, false, b"hi"), 0x87, "{topic}");
        }
    }
}
