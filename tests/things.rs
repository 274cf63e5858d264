//! The things world on the real daemon (docs/PROTOCOL.md section 8): claim codes and binding,
//! commands with acknowledgement, queueing and timeout, refusals, shares, state documents,
//! follow requests, links, unbind and restore, chains, the audit, a crash. (The same with
//! Mosquitto's command-line clients only: `things_mosquitto.rs`.)

use serde_json::{Value, json};

use crate::common::im::{Peer, World, with_user};
use crate::common::thing::world_yaml as yaml;

const REQ: &str = "$things/req";

/// A thing's device, connected; what it was owed at CONNECT has arrived (a request's answer
/// comes after it: a thing owed nothing gets no `feed.done`).
async fn thing(world: &World, id: &str, v5: bool) -> Peer {
    let mut peer = Peer::connect(world.port(), id, v5, 30).await.thing();
    ok(&mut peer, "thing.feed", json!({})).await;
    peer
}

async fn person(world: &World, id: &str, v5: bool) -> Peer {
    let mut peer = Peer::connect(world.port(), id, v5, 30).await;
    peer.notice("feed.done").await;
    peer
}

async fn ok(peer: &mut Peer, op: &str, args: Value) -> Value {
    let res = peer.request_on(REQ, op, args.clone()).await;
    assert_eq!(
        res["ok"], true,
        "{}: {op} {args} answered {res}",
        peer.client_id
    );
    res
}

async fn refused(peer: &mut Peer, op: &str, args: Value) -> String {
    let res = peer.request_on(REQ, op, args.clone()).await;
    assert_eq!(
        res["ok"], false,
        "{}: {op} {args} answered {res}",
        peer.client_id
    );
    res["error"]["code"].as_str().unwrap_or_default().to_owned()
}

/// The next command `peer` (a thing) receives.
async fn next_cmd(peer: &mut Peer) -> Value {
    let topic = format!("thing/{}/cmd", peer.account);
    peer.wait_msg("a command", |m| m.topic == topic && m.kind() == "cmd")
        .await
        .json
}

#[tokio::test]
async fn claim_bind_command_and_ack_round_trip() {
    let world = World::with(&yaml(&["alice", "bob", "carol"], &["door"], &[]), "");
    let mut door = thing(&world, "door", true).await;
    let claim = ok(&mut door, "thing.claim_code", json!({})).await;
    let code = claim["code"].as_str().unwrap().to_owned();
    assert!(claim["expires_at"].as_u64().unwrap() > 0);

    let mut alice = person(&world, "alice", false).await;
    assert_eq!(
        refused(&mut alice, "thing.bind", json!({"code": "NOPE"})).await,
        "wrong_code"
    );
    let bound = ok(&mut alice, "thing.bind", json!({ "code": code })).await;
    assert_eq!(bound["thing"], "door");
    alice.notice("thing.bound").await;
    door.notice("thing.bound").await;
    // A code works once.
    let mut bob = person(&world, "bob", false).await;
    assert_eq!(
        refused(&mut bob, "thing.bind", json!({ "code": code })).await,
        "wrong_code"
    );

    // A command, stamped and delivered with a Response Topic and the id as Correlation Data.
    assert_eq!(
        alice
            .publish("thing/door/cmd", r#"{"open":true,"cid":"c-1"}"#)
            .await,
        0
    );
    let cmd = door
        .wait_msg("a command", |m| m.topic == "thing/door/cmd")
        .await;
    let id = cmd.json["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("thing:door#"), "{}", cmd.json);
    assert_eq!(cmd.json["from"], "alice");
    assert_eq!(cmd.json["body"], json!({"open": true}));
    assert_eq!(cmd.json["cid"], "c-1");
    assert_eq!(cmd.json["chain"], json!({"id": id, "hop": 0}));
    assert_eq!(cmd.correlation.as_deref(), Some(id.as_bytes()));

    // The answer reaches the commander as `cmd.ack`.
    let answer = json!({"id": id, "result": {"open": true}}).to_string();
    assert_eq!(door.publish("thing/door/ack", answer.clone()).await, 0);
    let ack = alice.notice("cmd.ack").await;
    assert_eq!(ack["id"], id.as_str());
    assert_eq!(ack["ok"], true);
    assert_eq!(ack["result"], json!({"open": true}));
    assert_eq!(ack["cid"], "c-1");
    assert_eq!(ack["chain"], json!({"id": id, "hop": 1}));
    // A second answer changes nothing: not found (v5 0x80).
    assert_eq!(door.publish("thing/door/ack", answer).await, 0x80);

    // No rights: v3 acknowledged with an error envelope, v5 0x87; never delivered.
    assert_eq!(bob.publish("thing/door/cmd", r#"{"open":false}"#).await, 0);
    let error = bob.notice("error").await;
    assert_eq!(error["code"], "not_authorized");
    let mut carol = person(&world, "carol", true).await;
    assert_eq!(
        carol.publish("thing/door/cmd", r#"{"open":false}"#).await,
        0x87
    );
    // A retry of c-1 is not delivered again; the next command door gets is c-2.
    assert_eq!(
        alice
            .publish("thing/door/cmd", r#"{"x":1,"cid":"c-1"}"#)
            .await,
        0
    );
    assert_eq!(
        alice
            .publish("thing/door/cmd", r#"{"x":2,"cid":"c-2"}"#)
            .await,
        0
    );
    let next = next_cmd(&mut door).await;
    assert_eq!(next["cid"], "c-2", "{next}");
    assert_eq!(next["from"], "alice");
    // Not a JSON object: 0x99 for v5.
    assert_eq!(carol.publish("thing/door/state", "{}").await, 0x87);
    assert_eq!(door.publish("thing/door/cmd", "[1]").await, 0x99);
    // Nothing under thing/ by wildcard.
    assert_eq!(carol.subscribe("thing/#").await, 0x87);
}

#[tokio::test]
async fn an_offline_thing_gets_its_command_at_connect_and_the_timeout_reaches_an_offline_commander()
{
    let world = World::with(
        &yaml(&["alice"], &["door"], &["{ bind: door, to: alice }"]),
        "[things]\nsweep_interval_ms = 50\n",
    );
    let mut alice = person(&world, "alice", false).await;
    assert_eq!(
        alice
            .publish("thing/door/cmd", r#"{"n":1,"cid":"q-1","ttl":60}"#)
            .await,
        0
    );
    assert_eq!(
        alice
            .publish("thing/door/cmd", r#"{"n":2,"cid":"q-2","ttl":1}"#)
            .await,
        0
    );
    alice.disconnect().await;
    // q-2's ttl passes while both are offline (a wait, not a measurement).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let mut door = Peer::connect(world.port(), "door", false, 30).await.thing();
    let first = next_cmd(&mut door).await;
    assert_eq!(first["cid"], "q-1");
    assert_eq!(first["body"], json!({"n": 1}));
    door.notice("feed.done").await;
    let cmds = door.received_on("thing/door/cmd");
    assert_eq!(cmds.len(), 1, "only q-1 is within its ttl: {cmds:?}");
    let answer = json!({"id": first["id"], "ok": true}).to_string();
    assert_eq!(door.publish("thing/door/ack", answer).await, 0);

    // A command is handed over once: not again at the next CONNECT.
    door.disconnect().await;
    let mut door = thing(&world, "door", false).await;
    assert!(door.received_on("thing/door/cmd").is_empty());

    // alice, offline meanwhile, finds the timeout of q-2 and the answer to q-1 in her feed.
    let mut alice = Peer::connect(world.port(), "alice", false, 30).await;
    let timeout = alice.notice("cmd.timeout").await;
    assert_eq!(timeout["cid"], "q-2");
    assert_eq!(timeout["delivered"], false);
    let ack = alice.notice("cmd.ack").await;
    assert_eq!(ack["cid"], "q-1");
    alice.notice("feed.done").await;
}

#[tokio::test]
async fn partial_states_make_one_document_a_view_share_sees_it_and_cannot_command() {
    let world = World::with(
        &yaml(
            &["alice", "bob", "carol"],
            &["door"],
            &[
                "{ bind: door, to: alice }",
                "{ share: door, with: bob, rights: view }",
            ],
        ),
        "",
    );
    let mut door = thing(&world, "door", true).await;
    let mut alice = person(&world, "alice", false).await;
    let mut bob = person(&world, "bob", true).await;
    assert!(alice.subscribe("thing/door/state").await <= 1);
    assert!(bob.subscribe("thing/door/state").await <= 1);
    assert_eq!(
        door.publish("thing/door/state", r#"{"open":false,"battery":90}"#)
            .await,
        0
    );
    assert_eq!(
        door.publish("thing/door/state", r#"{"open":true}"#).await,
        0
    );
    for peer in [&mut alice, &mut bob] {
        let state = peer
            .wait_msg("state v2", |m| {
                m.topic == "thing/door/state" && m.json["version"] == 2
            })
            .await
            .json;
        assert_eq!(state["state"], json!({"open": true, "battery": 90}));
        assert_eq!(state["changed"], json!({"open": true}));
    }
    // A patch that changes nothing makes no version.
    assert_eq!(
        door.publish("thing/door/state", r#"{"open":true}"#).await,
        0
    );
    let doc = ok(&mut bob, "thing.state", json!({"thing": "door"})).await;
    assert_eq!(doc["version"], 2);
    // view: no command.
    assert_eq!(
        bob.publish("thing/door/cmd", r#"{"open":false}"#).await,
        0x87
    );

    // carol asks to follow; the owner accepts; she gets the document at once.
    let mut carol = person(&world, "carol", true).await;
    assert!(carol.subscribe("thing/door/state").await <= 1);
    carol.notice("thing.follow_pending").await;
    let request = alice.notice("thing.follow_request").await;
    assert_eq!(request["from"], "carol");
    assert!(carol.received_on("thing/door/state").is_empty());
    ok(
        &mut alice,
        "thing.follow_accept",
        json!({"thing": "door", "person": "carol"}),
    )
    .await;
    carol.notice("thing.shared").await;
    let state = carol
        .wait_msg("the document", |m| m.topic == "thing/door/state")
        .await;
    assert!(state.retain);
    assert_eq!(state.json["version"], 2);
    assert_eq!(state.json["state"], json!({"open": true, "battery": 90}));
}

/// A SUBSCRIBE gets the current value of its own topic, once, on the device that made it: not
/// the state document again on another topic's SUBSCRIBE, nor on another device's.
#[tokio::test]
async fn each_subscribe_sends_its_own_topic_once_to_its_own_device() {
    let world = World::with(
        &yaml(&["alice"], &["door"], &["{ bind: door, to: alice }"]),
        "",
    );
    let mut door = thing(&world, "door", true).await;
    assert_eq!(
        door.publish("thing/door/state", r#"{"open":true}"#).await,
        0
    );
    let mut phone = person(&world, "alice", true).await;
    assert!(phone.subscribe("thing/door/state").await <= 1);
    phone
        .wait_msg("the document", |m| m.topic == "thing/door/state")
        .await;
    assert!(phone.subscribe("thing/door/status").await <= 1);
    let status = phone
        .wait_msg("the presence", |m| m.topic == "thing/door/status")
        .await;
    assert_eq!(status.json["presence"], "online");
    // A second device of alice subscribes to the state: it gets the document, the first
    // device nothing more.
    let mut laptop = person(&world, "alice:laptop", true).await;
    assert!(laptop.subscribe("thing/door/state").await <= 1);
    laptop
        .wait_msg("the document", |m| m.topic == "thing/door/state")
        .await;
    // A later state change reaches both: the phone's messages before it are what counts.
    assert_eq!(
        door.publish("thing/door/state", r#"{"open":false}"#).await,
        0
    );
    phone
        .wait_msg("state v2", |m| {
            m.topic == "thing/door/state" && m.json["version"] == 2
        })
        .await;
    let states = phone.received_on("thing/door/state");
    assert_eq!(
        states.len(),
        2,
        "one document at SUBSCRIBE, one change: {states:?}"
    );
    assert_eq!(phone.received_on("thing/door/status").len(), 1);
}

/// T itself may see its own state, events and presence (docs/PROTOCOL.md 10.1): a device of T
/// that subscribes gets the current document at once, and what another device of T reports.
#[tokio::test]
async fn a_thing_sees_its_own_state_and_events() {
    let world = World::with(
        &yaml(&["alice"], &["door"], &["{ bind: door, to: alice }"]),
        "",
    );
    let mut sensor = thing(&world, "door", true).await;
    assert_eq!(
        sensor.publish("thing/door/state", r#"{"open":true}"#).await,
        0
    );
    let mut panel = Peer::connect(world.port(), "door:panel", true, 30)
        .await
        .thing();
    assert!(panel.subscribe("thing/door/state").await <= 1);
    let doc = panel
        .wait_msg("its own document", |m| m.topic == "thing/door/state")
        .await;
    assert_eq!(doc.json["state"], json!({"open": true}), "{:?}", doc.json);
    assert!(panel.subscribe("thing/door/status").await <= 1);
    let status = panel
        .wait_msg("its own presence", |m| m.topic == "thing/door/status")
        .await;
    assert_eq!(status.json["presence"], "online");
    assert!(panel.subscribe("thing/door/event").await <= 1);
    assert_eq!(
        sensor
            .publish("thing/door/state", r#"{"open":false}"#)
            .await,
        0
    );
    let doc = panel
        .wait_msg("the next version", |m| {
            m.topic == "thing/door/state" && m.json["version"] == 2
        })
        .await;
    assert_eq!(doc.json["state"], json!({"open": false}));
    assert_eq!(
        sensor
            .publish("thing/door/event", r#"{"kind":"knock"}"#)
            .await,
        0
    );
    let event = panel
        .wait_msg("its own event", |m| m.topic == "thing/door/event")
        .await;
    assert_eq!(
        event.json["body"],
        json!({"kind": "knock"}),
        "{:?}",
        event.json
    );
}

#[tokio::test]
async fn unbind_goes_to_the_recycle_bin_and_restore_brings_it_back() {
    let world = World::with(
        &yaml(
            &["alice", "bob"],
            &["door"],
            &[
                "{ bind: door, to: alice }",
                "{ share: door, with: bob, rights: control }",
            ],
        ),
        "",
    );
    let mut door = thing(&world, "door", true).await;
    let mut bob = person(&world, "bob", true).await;
    assert_eq!(bob.publish("thing/door/cmd", r#"{"a":1}"#).await, 0);
    next_cmd(&mut door).await;
    assert_eq!(bob.unsubscribe("thing/door/state").await, Some(0));
    assert_eq!(bob.publish("thing/door/cmd", r#"{"a":2}"#).await, 0x87);
    // Nothing left to remove.
    assert_eq!(bob.unsubscribe("thing/door/state").await, Some(0x11));
    ok(&mut bob, "thing.restore", json!({"thing": "door"})).await;
    assert_eq!(bob.publish("thing/door/cmd", r#"{"a":3}"#).await, 0);
    let cmd = next_cmd(&mut door).await;
    assert_eq!(cmd["body"], json!({"a": 3}));
}

#[tokio::test]
async fn linked_things_command_each_other_along_one_chain_and_unlink_revokes_at_once() {
    let world = World::with(
        &yaml(
            &["alice"],
            &["lamp", "hall"],
            &[
                "{ bind: lamp, to: alice }",
                "{ bind: hall, to: alice }",
                "{ link: [lamp, hall] }",
            ],
        ),
        "",
    );
    let mut lamp = thing(&world, "lamp", true).await;
    let mut hall = thing(&world, "hall", true).await;
    let mut alice = person(&world, "alice", true).await;
    assert!(lamp.subscribe("thing/hall/event").await <= 1);

    // person -> lamp -> hall -> event -> alice's feed: one chain, rising hops.
    assert_eq!(alice.publish("thing/lamp/cmd", r#"{"go":1}"#).await, 0);
    let first = next_cmd(&mut lamp).await;
    let chain_id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(first["chain"], json!({"id": chain_id, "hop": 0}));
    let onward = json!({"on": true, "chain": first["chain"]}).to_string();
    assert_eq!(lamp.publish("thing/hall/cmd", onward).await, 0);
    let second = next_cmd(&mut hall).await;
    assert_eq!(second["from"], "lamp");
    assert_eq!(second["chain"], json!({"id": chain_id, "hop": 1}));
    let event = json!({"rang": true, "cmd": second["id"]}).to_string();
    assert_eq!(hall.publish("thing/hall/event", event).await, 0);
    let seen = alice.notice("event").await;
    assert_eq!(seen["thing"], "hall");
    assert_eq!(seen["body"], json!({"rang": true}));
    assert_eq!(seen["chain"], json!({"id": chain_id, "hop": 2}));
    let live = lamp
        .wait_msg("hall's event", |m| m.topic == "thing/hall/event")
        .await;
    assert_eq!(live.json["chain"]["hop"], 2);

    // Unlink: neither commands the other, and the open subscription gets nothing more.
    ok(
        &mut alice,
        "thing.unlink",
        json!({"things": ["lamp", "hall"]}),
    )
    .await;
    lamp.notice("thing.unlinked").await;
    assert_eq!(
        lamp.publish("thing/hall/cmd", r#"{"on":false}"#).await,
        0x87
    );
    assert_eq!(
        hall.publish("thing/lamp/cmd", r#"{"on":false}"#).await,
        0x87
    );
    assert_eq!(hall.publish("thing/hall/event", r#"{"rang":2}"#).await, 0);
    alice
        .notice_where("event", |e| e["body"]["rang"] == 2)
        .await;
    // A later command of alice's reaches lamp after anything queued before it.
    assert_eq!(alice.publish("thing/lamp/cmd", r#"{"marker":1}"#).await, 0);
    let marker = next_cmd(&mut lamp).await;
    assert_eq!(marker["body"], json!({"marker": 1}));
    assert_eq!(lamp.received_on("thing/hall/event").len(), 1);
}

#[tokio::test]
async fn the_owner_pages_the_audit_and_nobody_else_reads_it() {
    let world = World::with(
        &yaml(&["alice", "bob"], &["door"], &["{ bind: door, to: alice }"]),
        "",
    );
    let mut door = thing(&world, "door", true).await;
    let mut alice = person(&world, "alice", true).await;
    let mut bob = person(&world, "bob", true).await;
    assert_eq!(
        alice
            .publish("thing/door/cmd", r#"{"n":1,"cid":"a-1"}"#)
            .await,
        0
    );
    let cmd = next_cmd(&mut door).await;
    let answer = json!({"id": cmd["id"], "ok": false, "result": "jammed"}).to_string();
    assert_eq!(door.publish("thing/door/ack", answer).await, 0);
    alice.notice("cmd.ack").await;
    assert_eq!(bob.publish("thing/door/cmd", r#"{"n":2}"#).await, 0x87);
    assert_eq!(alice.publish("thing/door/cmd", r#"{"n":3}"#).await, 0);
    next_cmd(&mut door).await;

    let page = ok(
        &mut alice,
        "thing.audit",
        json!({"thing": "door", "limit": 2}),
    )
    .await;
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["result"]["kind"], "pending");
    assert_eq!(entries[0]["body"], json!({"n": 3}));
    assert_eq!(entries[1]["result"]["kind"], "refused");
    assert_eq!(entries[1]["from"], "bob");
    let rest = ok(
        &mut alice,
        "thing.audit",
        json!({"thing": "door", "before": page["next_before"]}),
    )
    .await;
    let older = rest["entries"].as_array().unwrap();
    assert_eq!(older.len(), 1, "{rest}");
    assert_eq!(older[0]["cid"], "a-1");
    assert_eq!(older[0]["from"], "alice");
    assert_eq!(older[0]["result"]["kind"], "acked");
    assert_eq!(older[0]["result"]["ok"], false);
    assert_eq!(older[0]["result"]["result"], "jammed");
    assert_eq!(older[0]["chain"]["id"], older[0]["id"]);
    assert_eq!(
        refused(&mut bob, "thing.audit", json!({"thing": "door"})).await,
        "not_authorized"
    );
}

#[tokio::test]
async fn a_v5_command_with_a_response_topic_gets_its_answer_there() {
    let world = World::with(
        &yaml(&["alice"], &["door"], &["{ bind: door, to: alice }"]),
        "",
    );
    let mut door = thing(&world, "door", true).await;
    let mut alice = person(&world, "alice", true).await;
    assert!(alice.subscribe("replies/alice").await <= 1);
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        response_topic: Some("replies/alice".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr-7")),
        user_properties: with_user(&[("cid", "v-1")]).user_properties,
        ..Default::default()
    };
    assert_eq!(
        alice
            .publish_with("thing/door/cmd", r#"{"open":true}"#, props)
            .await,
        0
    );
    let cmd = next_cmd(&mut door).await;
    assert_eq!(cmd["cid"], "v-1");
    // A generic v5 device answers on its Response Topic with the Correlation Data.
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        correlation_data: Some(bytes::Bytes::from(
            cmd["id"].as_str().unwrap().as_bytes().to_vec(),
        )),
        ..Default::default()
    };
    assert_eq!(
        door.publish_with("thing/door/ack", r#"{"result":1}"#, props)
            .await,
        0
    );
    let reply = alice
        .wait_msg("the reply", |m| m.topic == "replies/alice")
        .await;
    assert_eq!(reply.json["type"], "cmd.ack");
    assert_eq!(reply.json["result"], 1);
    assert_eq!(reply.correlation.as_deref(), Some(&b"corr-7"[..]));
    alice.notice("cmd.ack").await;
}

#[tokio::test]
async fn after_a_crash_queued_commands_and_the_acknowledged_state_are_there_once() {
    let mut world = World::with(
        &yaml(&["alice"], &["door"], &["{ bind: door, to: alice }"]),
        "",
    );
    let mut door = thing(&world, "door", false).await;
    assert_eq!(
        door.publish("thing/door/state", r#"{"locked":true}"#).await,
        0
    );
    door.disconnect().await;
    let mut alice = person(&world, "alice", false).await;
    for n in 1..=3 {
        let cmd = json!({"n": n, "cid": format!("k-{n}"), "ttl": 600}).to_string();
        assert_eq!(alice.publish("thing/door/cmd", cmd).await, 0);
    }
    drop(alice);
    world.daemon.kill();
    world.daemon.restart();

    let mut door = Peer::connect(world.port(), "door", false, 30).await.thing();
    door.notice("feed.done").await;
    let cids: Vec<Value> = door
        .received_on("thing/door/cmd")
        .iter()
        .map(|c| c["cid"].clone())
        .collect();
    assert_eq!(cids, [json!("k-1"), json!("k-2"), json!("k-3")]);
    door.disconnect().await;
    let mut door = thing(&world, "door", false).await;
    assert!(
        door.received_on("thing/door/cmd").is_empty(),
        "handed over once"
    );
    let mut alice = person(&world, "alice", false).await;
    let doc = ok(&mut alice, "thing.state", json!({"thing": "door"})).await;
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["state"], json!({"locked": true}));
    // A retry of an acknowledged command after the restart is still a duplicate.
    assert_eq!(
        alice
            .publish("thing/door/cmd", r#"{"n":1,"cid":"k-1"}"#)
            .await,
        0
    );
    assert_eq!(
        alice
            .publish("thing/door/cmd", r#"{"n":4,"cid":"k-4"}"#)
            .await,
        0
    );
    let next = next_cmd(&mut door).await;
    assert_eq!(next["cid"], "k-4");
}

/// The README's things example, as it is written: `examples/things/home.yaml`.
#[tokio::test]
async fn the_readme_example_works_as_written() {
    let home = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/things/home.yaml"
    ))
    .expect("the example's definitions");
    let world = World::start(&[("home.yaml", &home)], "");
    let mut light = thing(&world, "hall-light", false).await;
    let mut dana = person(&world, "dana", false).await;
    assert_eq!(
        dana.publish("thing/hall-light/cmd", r#"{"on":true,"ttl":300}"#)
            .await,
        0
    );
    let cmd = next_cmd(&mut light).await;
    assert_eq!(cmd["id"], "thing:hall-light#1");
    let answer = r#"{"id":"thing:hall-light#1","result":{"on":true}}"#;
    assert_eq!(light.publish("thing/hall-light/ack", answer).await, 0);
    assert_eq!(dana.notice("cmd.ack").await["result"], json!({"on": true}));
    assert!(dana.subscribe("thing/hall-light/state").await <= 1);
    assert_eq!(
        light
            .publish("thing/hall-light/state", r#"{"on":true}"#)
            .await,
        0
    );
    let state = dana
        .wait_msg("the state", |m| m.topic == "thing/hall-light/state")
        .await;
    assert_eq!(state.json["version"], 1);
    // The two things are linked: the doorbell may command the light.
    let mut bell = thing(&world, "doorbell", false).await;
    assert_eq!(
        bell.publish("thing/hall-light/cmd", r#"{"blink":2}"#).await,
        0
    );
    assert_eq!(next_cmd(&mut light).await["from"], "doorbell");
    let feed = ok(&mut dana, "thing.feed", json!({})).await;
    assert_eq!(feed["entries"][0]["type"], "cmd.ack");
}

/// A rule commands a thing as its account, with that account's rights, in the chain of the
/// event it answers; a rule's account without rights is refused and nothing is delivered.
#[tokio::test]
async fn a_rule_commands_a_thing_through_the_same_rights() {
    let mut defs = yaml(
        &["alice", "home", "stranger"],
        &["door", "lamp"],
        &[
            "{ bind: door, to: alice }",
            "{ bind: lamp, to: alice }",
            "{ share: lamp, with: home, rights: control }",
        ],
    );
    defs.push_str(
        r#"rules:
  - id: door-opens-lamp-on
    when: { state: door, changed: open, to: true }
    as: home
    do: 'command("lamp", #{ on: true })'
  - id: stranger-tries
    when: { state: door, changed: open, to: true }
    as: stranger
    do: 'command("lamp", #{ on: "no" })'
"#,
    );
    let world = World::with(&defs, "");
    let mut lamp = thing(&world, "lamp", true).await;
    let mut door = thing(&world, "door", true).await;
    let mut alice = person(&world, "alice", true).await;
    assert!(alice.subscribe("thing/door/state").await <= 1);
    assert_eq!(
        door.publish("thing/door/state", r#"{"open":true}"#).await,
        0
    );
    let state = alice
        .wait_msg("the state", |m| m.topic == "thing/door/state")
        .await;
    let cmd = next_cmd(&mut lamp).await;
    assert_eq!(cmd["from"], "home");
    assert_eq!(cmd["body"]["on"], true);
    assert_eq!(cmd["chain"]["id"], state.json["chain"]["id"]);
    assert_eq!(cmd["chain"]["hop"], 1);
    // The stranger's command is in the audit as refused, never delivered.
    let mut refused_seen = false;
    for _ in 0..100 {
        let page = ok(&mut alice, "thing.audit", json!({"thing": "lamp"})).await;
        let entries = page["entries"].as_array().unwrap().clone();
        if entries
            .iter()
            .any(|e| e["from"] == "stranger" && e["result"]["kind"] == "refused")
        {
            refused_seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(refused_seen, "the stranger's command is audited as refused");
    assert_eq!(alice.publish("thing/lamp/cmd", r#"{"marker":1}"#).await, 0);
    let next = next_cmd(&mut lamp).await;
    assert_eq!(
        next["body"],
        json!({"marker": 1}),
        "nothing of the stranger's came first"
    );
}

/// Bindings and links go out through the event seam: a rule sees them.
#[tokio::test]
async fn bind_and_link_changes_reach_the_rules() {
    let mut defs = yaml(&["alice", "bob", "home"], &["door", "lamp"], &[]);
    defs.push_str(
        r#"rules:
  - id: told-of-bindings
    when: { relation: bound }
    as: home
    do: 'notify("bob", "bound " + event.thing + " " + event.person)'
  - id: told-of-links
    when: { relation: linked }
    as: home
    do: 'notify("bob", "linked " + event.a + " " + event.b)'
"#,
    );
    let world = World::with(&defs, "");
    let mut bob = person(&world, "bob", true).await;
    for id in ["door", "lamp"] {
        let mut t = thing(&world, id, true).await;
        let claim = ok(&mut t, "thing.claim_code", json!({})).await;
        let mut alice = person(&world, "alice", true).await;
        ok(&mut alice, "thing.bind", json!({ "code": claim["code"] })).await;
        bob.notice_where("notice", |n| n["text"] == format!("bound {id} alice"))
            .await;
    }
    let mut alice = person(&world, "alice", true).await;
    ok(
        &mut alice,
        "thing.link",
        json!({"things": ["lamp", "door"]}),
    )
    .await;
    bob.notice_where("notice", |n| n["text"] == "linked door lamp")
        .await;
}
