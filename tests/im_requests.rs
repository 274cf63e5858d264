//! `$im/req` requests: answers on the v5 response topic with the correlation data, or on the
//! inbox; friend requests by request; the `sync` roster; errors; definitions files that fail.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{Value, json};

use crate::common::im::{World, friends, persons};
use crate::common::raw;

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().or_else(|| v["id"].as_str()).unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn answer_to(topic: &str, correlation: &'static [u8]) -> PublishProperties {
    PublishProperties {
        response_topic: Some(topic.into()),
        correlation_data: Some(Bytes::from_static(correlation)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_goes_to_the_response_topic_with_the_correlation_data() {
    let world = World::with(&persons(&["alice", "bob", "bobby", "carol"]), "");
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    assert!(alice.subscribe("replies/alice").await <= 1);

    let request = json!({ "id": "r1", "op": "directory.search", "q": "bob" }).to_string();
    let code = alice
        .publish_with("$im/req", request, answer_to("replies/alice", b"corr-1"))
        .await;
    assert_eq!(code, 0);
    let answer = alice
        .wait_msg("the answer", |m| m.topic == "replies/alice")
        .await;
    assert_eq!(answer.correlation.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(answer.json["type"], "res");
    assert_eq!(answer.json["id"], "r1");
    assert_eq!(answer.json["ok"], true);
    assert_eq!(ids(&answer.json["persons"]), ["bob", "bobby"]);

    // A refusal is answered the same way.
    let request = json!({ "id": "r2", "op": "friend.accept", "peer": "carol" }).to_string();
    alice
        .publish_with("$im/req", request, answer_to("replies/alice", b"corr-2"))
        .await;
    let answer = alice
        .wait_msg("the refusal", |m| m.topic == "replies/alice")
        .await;
    assert_eq!(answer.correlation.as_deref(), Some(&b"corr-2"[..]));
    assert_eq!(answer.json["id"], "r2");
    assert_eq!(answer.json["ok"], false);
    assert_eq!(answer.json["error"]["code"], "not_found");
    assert!(answer.json["error"]["message"].is_string());

    // An IM topic is no response topic: the answer goes to the inbox.
    let request = json!({ "id": "r3", "op": "recycle.list" }).to_string();
    alice
        .publish_with("$im/req", request, answer_to("person/bob/inbox", b"corr-3"))
        .await;
    let answer = alice.notice_where("res", |r| r["id"] == "r3").await;
    assert_eq!(answer["ok"], true);
    // Without a response topic: the inbox; nothing answered twice.
    let res = alice.ok("recycle.list", json!({})).await;
    assert_eq!(res["entries"], json!([]));
    let inbox_answers: Vec<Value> = alice
        .received_on("person/alice/inbox")
        .into_iter()
        .filter(|m| m["type"] == "res")
        .collect();
    assert_eq!(inbox_answers.len(), 2, "{inbox_answers:?}");
    assert_eq!(alice.received_on("replies/alice").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v3_request_is_answered_on_the_inbox() {
    let world = World::with(&persons(&["alice", "bob"]), "");
    let mut alice = world.v3("alice").await;
    alice.sync().await;
    let res = alice.ok("directory.search", json!({ "q": "b" })).await;
    assert_eq!(res["type"], "res");
    assert_eq!(ids(&res["persons"]), ["bob"]);
    assert!(res["ts"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_requests_by_request() {
    let yaml = "persons:\n  - { id: alice, password: alice-pw }\n  - { id: bob, password: bob-pw }\n  - { id: carol, password: carol-pw, auto_accept: true }\n  - { id: dave, password: dave-pw }\n";
    let world = World::with(yaml, "");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v3("bob").await;
    let mut dave = world.v5("dave").await;
    for peer in [&mut alice, &mut bob, &mut dave] {
        peer.sync().await;
    }

    // Pending, then accepted.
    let res = alice.ok("friend.request", json!({ "peer": "bob" })).await;
    assert_eq!(res["state"], "pending");
    assert_eq!(bob.notice("friend.request").await["from"], "alice");
    bob.ok("friend.accept", json!({ "peer": "alice" })).await;
    assert_eq!(alice.notice("friend.added").await["peer"], "bob");
    assert_eq!(bob.notice("friend.added").await["peer"], "alice");
    assert_eq!(alice.publish("person/bob/inbox", "hi").await, 0);

    // Auto-accepted at once (carol is offline).
    let res = alice.ok("friend.request", json!({ "peer": "carol" })).await;
    assert_eq!(res["state"], "friends");
    assert_eq!(alice.notice("friend.added").await["peer"], "carol");
    assert_eq!(alice.publish("person/carol/inbox", "hi").await, 0);

    // Rejected.
    dave.ok("friend.request", json!({ "peer": "bob" })).await;
    bob.notice_where("friend.request", |r| r["from"] == "dave")
        .await;
    bob.ok("friend.reject", json!({ "peer": "dave" })).await;
    assert_eq!(dave.notice("friend.rejected").await["peer"], "bob");
    assert_eq!(dave.publish("person/bob/inbox", "hi").await, 0x87);

    // Withdrawn by an UNSUBSCRIBE while pending.
    dave.ok("friend.request", json!({ "peer": "alice" })).await;
    assert_eq!(dave.unsubscribe("person/alice/status").await, Some(0));
    assert_eq!(alice.notice("friend.withdrawn").await["peer"], "dave");
    assert_eq!(
        alice
            .refused("friend.accept", json!({ "peer": "dave" }))
            .await,
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_request_is_withdrawn_when_the_connection_ends() {
    let world = World::with(&persons(&["alice", "bob"]), "");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v5("bob").await;
    alice.sync().await;
    bob.sync().await;
    let code = alice
        .subscribe_with(
            "person/bob/status",
            crate::common::im::user(&[("im-temporary", "true")]),
        )
        .await;
    assert!(code <= 1);
    bob.notice("friend.request").await;
    alice.disconnect().await;
    assert_eq!(bob.notice("friend.withdrawn").await["peer"], "alice");
    assert_eq!(
        bob.refused("friend.accept", json!({ "peer": "alice" }))
            .await,
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_roster_shows_every_relation() {
    let yaml = persons(&["alice", "bob", "carol", "dave", "erin"])
        + friends(&[("alice", "bob"), ("alice", "erin")]).as_str()
        + "groups:\n  - { id: family, owner: alice, members: [bob], name: \"The family\" }\n";
    let world = World::with(&yaml, "");
    let mut bob = world.v5("bob").await;
    let mut carol = world.v5("carol").await;
    let mut dave = world.v5("dave").await;
    for peer in [&mut bob, &mut carol, &mut dave] {
        peer.sync().await;
    }
    for i in 1..=3 {
        assert_eq!(bob.publish("group/family", format!("f{i}")).await, 0);
    }
    carol.ok("friend.request", json!({ "peer": "alice" })).await;
    dave.subscribe("group/family").await;
    dave.notice("group.pending").await;

    let mut alice = world.v5("alice").await;
    let (roster, replayed, _) = alice.sync().await;
    assert_eq!(roster["account"], "alice");
    assert_eq!(ids(&roster["friends"]), ["bob", "erin"]);
    for friend in roster["friends"].as_array().unwrap() {
        let presence = if friend["id"] == "bob" {
            "online"
        } else {
            "offline"
        };
        assert_eq!(friend["presence"], presence, "{friend}");
        assert!(friend.get("last_seen").is_some() && friend.get("text").is_some());
    }
    assert_eq!(
        roster["requests"],
        json!({ "incoming": ["carol"], "outgoing": [] })
    );
    let family = &roster["groups"][0];
    assert_eq!(family["id"], "family");
    assert_eq!(family["role"], "owner");
    assert_eq!(family["last_seq"], 3);
    assert_eq!(family["unread"], 3);
    assert_eq!(family["join_requests"], json!(["dave"]));
    assert_eq!(roster["blocked"], json!([]));
    assert_eq!(roster["recycle"], json!([]));
    assert_eq!(replayed.len(), 3);

    // Read up to 1: two unread; a block and a removal show too.
    alice
        .ok(
            "receipt",
            json!({ "conv": "group:family", "seq": 1, "kind": "read" }),
        )
        .await;
    let receipt = bob.notice("receipt").await;
    assert_eq!(
        (&receipt["by"], &receipt["seq"]),
        (&json!("alice"), &json!(1))
    );
    alice.ok("block", json!({ "peer": "dave" })).await;
    alice
        .ok(
            "friend.remove",
            json!({ "peer": "erin", "retain_secs": 60 }),
        )
        .await;
    let (roster, _, _) = world.v3("alice:web").await.sync().await;
    assert_eq!(roster["groups"][0]["unread"], 2);
    assert_eq!(roster["blocked"], json!(["dave"]));
    assert_eq!(ids(&roster["friends"]), ["bob"]);
    let recycle = &roster["recycle"][0];
    assert_eq!(
        (&recycle["kind"], &recycle["peer"]),
        (&json!("friend"), &json!("erin"))
    );
    assert_eq!(
        recycle["expires_at"].as_u64().unwrap() - recycle["removed_at"].as_u64().unwrap(),
        60_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_have_stable_error_codes() {
    let world = World::with(&persons(&["alice", "bob"]), "");
    let mut alice = world.v5("alice").await;
    alice.sync().await;
    assert_eq!(alice.refused("no.such.op", json!({})).await, "invalid");
    assert_eq!(alice.refused("friend.request", json!({})).await, "invalid");
    assert_eq!(
        alice
            .refused("friend.request", json!({ "peer": "nobody" }))
            .await,
        "not_found"
    );
    assert_eq!(
        alice
            .refused("friend.request", json!({ "peer": "alice" }))
            .await,
        "invalid"
    );
    assert_eq!(
        alice
            .refused("group.create", json!({ "group": "bad id!" }))
            .await,
        "invalid"
    );
    alice.ok("group.create", json!({ "group": "g1" })).await;
    assert_eq!(
        alice
            .refused("group.create", json!({ "group": "g1" }))
            .await,
        "conflict"
    );
    assert_eq!(
        alice
            .refused("group.members", json!({ "group": "nowhere" }))
            .await,
        "not_found"
    );
    // Not JSON: still answered, with id null.
    assert_eq!(alice.publish("$im/req", "hello").await, 0);
    let res = alice.notice_where("res", |r| r["id"].is_null()).await;
    assert_eq!(res["ok"], false);
    assert_eq!(res["error"]["code"], "invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_definitions_file_does_not_stop_the_daemon() {
    let good = persons(&["alice", "bob"]) + friends(&[("alice", "bob")]).as_str();
    let unknown_key = "persons:\n  - { id: eve, password: eve-pw, colour: red }\n";
    let broken = "persons: [ { id: mallory, password: mallory-pw\n";
    let more =
        persons(&["carol"]) + "groups:\n  - { id: family, owner: alice, members: [bob, carol] }\n";
    let world = World::start(
        &[
            ("a.yaml", &good),
            ("b.yaml", unknown_key),
            ("c.yml", &more),
            ("d.yaml", broken),
            ("notes.txt", "not a definitions file"),
        ],
        "",
    );
    let mut alice = world.v5("alice").await;
    let (roster, _, _) = alice.sync().await;
    assert_eq!(ids(&roster["friends"]), ["bob"]);
    assert_eq!(roster["groups"][0]["id"], "family");
    let mut carol = world.v3("carol").await;
    carol.sync().await;
    assert_eq!(carol.publish("group/family", "hello").await, 0);
    alice
        .message("group/family", |m| m["from"] == "carol")
        .await;
    // The accounts of the failed files do not exist.
    for (who, password) in [("eve", "eve-pw"), ("mallory", "mallory-pw")] {
        let connect = raw::Connect::v5(who).login(who, password);
        let (_, connack) = raw::Client::connect(world.daemon.mqtt, &connect);
        assert_eq!(connack.code(), 0x86, "{who}");
    }
}

/// The README's request from the command line: `mosquitto_rr` connects with the v5 user property
/// `im-sync: false`, so the first message it gets is the answer on its response topic, not the
/// sync; the answer carries the history.
#[test]
fn mosquitto_rr_request_without_sync_gets_the_answer() {
    let yaml = format!(
        "{}{}",
        persons(&["alice", "bob"]),
        friends(&[("alice", "bob")])
    );
    let world = World::with(&yaml, "");
    let port = world.port().to_string();
    let publish = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "alice",
            "-P",
            "alice-pw",
            "-i",
            "alice",
        ])
        .args(["-t", "person/bob/inbox", "-m", "hi bob", "-q", "1"])
        .status()
        .expect("run mosquitto_pub (apt-get install mosquitto-clients)");
    assert!(publish.success());
    let request = r#"{"id":"r1","op":"history","conv":"person:alice|person:bob","limit":10}"#;
    let output = std::process::Command::new("timeout")
        .args(["20", "mosquitto_rr", "-h", "127.0.0.1", "-p", &port])
        .args(["-u", "bob", "-P", "bob-pw", "-i", "bob:cli"])
        .args(["-D", "connect", "user-property", "im-sync", "false"])
        .args(["-t", "$im/req", "-e", "replies/bob", "-m", request])
        .output()
        .expect("run mosquitto_rr");
    assert!(output.status.success(), "mosquitto_rr: {output:?}");
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON answer");
    assert_eq!(answer["type"], "res");
    assert_eq!(answer["id"], "r1");
    assert_eq!(answer["ok"], true);
    assert_eq!(answer["messages"][0]["body"]["text"], "hi bob");
    assert_eq!(answer["messages"][0]["from"], "alice");
}
