//! How commands and feed entries reach devices, on the real daemon (docs/PROTOCOL.md 10.3.2,
//! 10.3.5, 10.8): a command is handed over by the thing's PUBACK, once, across SIGKILLs; one
//! that was not acknowledged is given again with the same id; a feed entry a device did not
//! acknowledge comes again at its next sync.

use serde_json::{Value, json};

use crate::common::im::{Opts, Peer, World, persons};

const REQ: &str = "$things/req";

fn home() -> String {
    let mut yaml = persons(&["alice"]);
    yaml.push_str("things:\n  - { id: door, secret: door-pw }\n");
    yaml.push_str("relations:\n  - { bind: door, to: alice }\n");
    yaml
}

/// The door's device; `acks`: it acknowledges what it receives (else never).
async fn door(world: &World, acks: bool) -> Peer {
    let opts = Opts {
        manual_acks: !acks,
        ..Opts::default()
    };
    Peer::connect_with(world.port(), "door", opts).await.thing()
}

/// The `cid`s of the commands the door's device has received so far.
fn cids(door: &mut Peer) -> Vec<String> {
    door.received_on("thing/door/cmd")
        .iter()
        .map(|c| c["cid"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn ids(door: &mut Peer) -> Vec<String> {
    door.received_on("thing/door/cmd")
        .iter()
        .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// alice commands the door (acknowledged, so durable), one command per `cid`.
async fn command(world: &World, cids: &[String]) {
    let mut alice = Peer::connect(world.port(), "alice", false, 30).await;
    alice.notice("feed.done").await;
    for cid in cids {
        let cmd = json!({"cid": cid, "ttl": 600}).to_string();
        assert_eq!(alice.publish("thing/door/cmd", cmd).await, 0);
    }
}

/// The door's state document, as alice reads it.
async fn state(world: &World) -> Value {
    let mut alice = Peer::connect(world.port(), "alice", false, 30).await;
    alice.notice("feed.done").await;
    let res = alice
        .request_on(REQ, "thing.state", json!({"thing": "door"}))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    res
}

/// SIGKILL with commands queued for the offline door and its state just acknowledged, three
/// times over: after each restart the door gets the commands queued since the last crash,
/// each once, and never one it had acknowledged before a crash; the state is the last one
/// acknowledged. A command the door received but never acknowledged is given again after the
/// crash, with the same id.
#[tokio::test]
async fn commands_are_handed_over_once_across_sigkills() {
    let mut world = World::with(&home(), "");
    for round in 1..=3 {
        let queued: Vec<String> = (1..=2).map(|n| format!("r{round}-{n}")).collect();
        command(&world, &queued).await;
        world.daemon.kill();
        world.daemon.restart();

        let mut door = door(&world, true).await;
        door.notice("feed.done").await;
        assert_eq!(cids(&mut door), queued, "round {round}: the queue, once");
        // The state's PUBACK comes once it is durable, and with it the PUBACKs of the
        // commands the door sent before it: their hand-over.
        let patch = json!({ "round": round }).to_string();
        assert_eq!(door.publish("thing/door/state", patch).await, 0);
        world.daemon.kill();
        world.daemon.restart();
        let doc = state(&world).await;
        assert_eq!(doc["version"], round, "round {round}: {doc}");
        assert_eq!(doc["state"], json!({ "round": round }));
    }

    // Received, never acknowledged: given again after the crash, the same commands.
    let queued = vec!["lazy-1".to_owned(), "lazy-2".to_owned()];
    command(&world, &queued).await;
    let mut lazy = door(&world, false).await;
    lazy.notice("feed.done").await;
    let first = ids(&mut lazy);
    assert_eq!(cids(&mut lazy), queued);
    assert_eq!(lazy.publish("thing/door/state", r#"{"lazy":1}"#).await, 0);
    world.daemon.kill();
    world.daemon.restart();
    let mut door = door(&world, true).await;
    door.notice("feed.done").await;
    assert_eq!(ids(&mut door), first, "given again with the same ids");
    assert_eq!(door.publish("thing/door/state", r#"{"lazy":2}"#).await, 0);
    world.daemon.kill();
    world.daemon.restart();
    let mut door = Peer::connect(world.port(), "door", false, 30).await.thing();
    let res = door.request_on(REQ, "thing.feed", json!({})).await;
    assert_eq!(res["ok"], true, "{res}");
    assert!(cids(&mut door).is_empty(), "handed over: never again");
}

/// Without a crash: a device that received a command and ended without acknowledging it
/// did not take it; the next CONNECT gets it, the same command, and a device that
/// acknowledged it gets it never again. A second device online when the first one lets go of
/// it gets it at once.
#[tokio::test]
async fn a_command_not_acknowledged_is_given_again_with_its_id() {
    let world = World::with(&home(), "");
    let mut lazy = door(&world, false).await;
    let res = lazy.request_on(REQ, "thing.feed", json!({})).await;
    assert_eq!(res["ok"], true, "{res}");
    command(&world, &["c-1".to_owned()]).await;
    let cmd = lazy
        .wait_msg("a command", |m| m.topic == "thing/door/cmd")
        .await;
    // Another device of the door, online meanwhile, is not given what the first holds ...
    let mut other = Peer::connect(world.port(), "door:b", false, 30)
        .await
        .thing();
    let res = other.request_on(REQ, "thing.feed", json!({})).await;
    assert_eq!(res["ok"], true, "{res}");
    assert!(cids(&mut other).is_empty());
    // ... until the first lets go of it unacknowledged.
    lazy.disconnect().await;
    let again = other
        .wait_msg("the command again", |m| m.topic == "thing/door/cmd")
        .await;
    assert_eq!(again.json["id"], cmd.json["id"]);
    assert_eq!(again.json["cid"], "c-1");
    // Acknowledged by `other` (automatically): handed over.
    assert_eq!(other.publish("thing/door/state", r#"{"x":1}"#).await, 0);
    other.disconnect().await;
    let mut door = door(&world, true).await;
    let res = door.request_on(REQ, "thing.feed", json!({})).await;
    assert_eq!(res["ok"], true, "{res}");
    assert!(cids(&mut door).is_empty(), "handed over once");
    let mut alice = Peer::connect(world.port(), "alice", false, 30).await;
    alice.notice("feed.done").await;
    let audit = alice
        .request_on(REQ, "thing.audit", json!({"thing": "door"}))
        .await;
    assert_eq!(
        audit["entries"][0]["result"],
        json!({"kind": "pending", "delivered": true}),
        "{audit}"
    );
}

/// A person's device on a clean session receives feed entries live and ends without
/// acknowledging them: its next sync gets them again (the cursor moves on acknowledgement,
/// not when an entry is queued for the device). Then, acknowledged, never again.
#[tokio::test]
async fn feed_entries_a_device_did_not_acknowledge_come_at_its_next_sync() {
    let world = World::with(&home(), "");
    for v5 in [false, true] {
        let device = if v5 { "alice:v5" } else { "alice:v3" };
        let lazy = Opts {
            v5,
            manual_acks: true,
            ..Opts::default()
        };
        let mut alice = Peer::connect_with(world.port(), device, lazy).await;
        let done = alice.notice("feed.done").await;
        let last = done["last"].as_u64().unwrap();
        // A device never seen before gets the newest entries at its first sync (here the
        // first round's, for the second device): not acknowledged either.
        let mut owed = feed_numbers(&mut alice);
        let mut door = Peer::connect(world.port(), "door", v5, 30).await.thing();
        for n in 1..=3 {
            let event = json!({ "n": n, "v5": v5 }).to_string();
            assert_eq!(door.publish("thing/door/event", event).await, 0);
        }
        for n in 1..=3 {
            alice
                .notice_where("event", |e| e["body"]["n"] == n && e["body"]["v5"] == v5)
                .await;
        }
        alice.disconnect().await;

        let opts = Opts {
            v5,
            ..Opts::default()
        };
        let mut alice = Peer::connect_with(world.port(), device, opts).await;
        alice.notice("feed.done").await;
        owed.extend([last + 1, last + 2, last + 3]);
        assert_eq!(
            feed_numbers(&mut alice),
            owed,
            "{device}: what it did not acknowledge"
        );
        // Acknowledged this time (the PUBACKs went before the request).
        let res = alice.request_on(REQ, "thing.feed", json!({})).await;
        assert_eq!(res["ok"], true, "{res}");
        alice.disconnect().await;
        let mut alice = Peer::connect_with(world.port(), device, opts).await;
        alice.notice("feed.done").await;
        assert!(
            feed_numbers(&mut alice).is_empty(),
            "{device}: once acknowledged"
        );
    }
}

/// The feed numbers of the entries on the person's inbox so far.
fn feed_numbers(peer: &mut Peer) -> Vec<u64> {
    let inbox = peer.inbox_topic();
    peer.received_on(&inbox)
        .iter()
        .filter_map(|e| e["feed"].as_u64())
        .collect()
}
