//! Bindings through the recycle bin on the real daemon (docs/PROTOCOL.md 10.4, 10.5): a share
//! and an ownership removed at runtime are listed by `recycle.list`, restored by
//! `thing.restore` or a new SUBSCRIBE (an ownership without its shares), and a restore is a
//! conflict once someone else has claimed the thing.

use serde_json::{Value, json};

use crate::common::im::{Peer, World, persons, user};

const REQ: &str = "$things/req";

fn world() -> World {
    let mut yaml = persons(&["alice", "bob", "carol"]);
    yaml.push_str("things:\n  - { id: door, secret: door-pw }\n");
    World::with(&yaml, "")
}

async fn things_ok(peer: &mut Peer, op: &str, args: Value) -> Value {
    let res = peer.request_on(REQ, op, args.clone()).await;
    assert_eq!(res["ok"], true, "{}: {op} {args}: {res}", peer.client_id);
    res
}

async fn things_refused(peer: &mut Peer, op: &str, args: Value) -> String {
    let res = peer.request_on(REQ, op, args.clone()).await;
    assert_eq!(res["ok"], false, "{}: {op} {args}: {res}", peer.client_id);
    res["error"]["code"].as_str().unwrap_or_default().to_owned()
}

async fn person(world: &World, id: &str) -> Peer {
    let mut peer = world.v5(id).await;
    peer.notice("feed.done").await;
    peer
}

/// The thing's device asks for a claim code; `person` binds with it.
async fn claim(door: &mut Peer, person: &mut Peer) {
    let code = things_ok(door, "thing.claim_code", json!({})).await["code"].clone();
    things_ok(person, "thing.bind", json!({ "code": code })).await;
    person.notice("thing.bound").await;
}

/// The one entry of `peer`'s recycle bin: a binding to the door kept for `secs`.
async fn binned(peer: &mut Peer, secs: u64) {
    let list = peer.ok("recycle.list", json!({})).await;
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{}: {list}", peer.client_id);
    assert_eq!(entries[0]["kind"], "binding");
    assert_eq!(entries[0]["peer"], "door");
    let removed_at = entries[0]["removed_at"].as_u64().unwrap();
    assert_eq!(
        entries[0]["expires_at"].as_u64().unwrap(),
        removed_at + secs * 1000
    );
}

async fn empty_bin(peer: &mut Peer) {
    let list = peer.ok("recycle.list", json!({})).await;
    assert_eq!(list["entries"], json!([]), "{}", peer.client_id);
}

#[tokio::test]
async fn removed_bindings_are_listed_in_the_recycle_bin_and_restored() {
    let world = world();
    let mut door = Peer::connect(world.port(), "door", true, 30).await.thing();
    let mut alice = person(&world, "alice").await;
    let mut bob = person(&world, "bob").await;
    claim(&mut door, &mut alice).await;
    let share = json!({"thing": "door", "person": "bob", "rights": "control"});
    things_ok(&mut alice, "thing.share", share).await;
    bob.notice("thing.shared").await;

    // bob removes his share: in his bin (not alice's) for the retention he asked for.
    let code = bob
        .unsubscribe_with("thing/door/state", user(&[("im-retain-secs", "600")]))
        .await;
    assert_eq!(code, Some(0));
    bob.notice("thing.unbound").await;
    binned(&mut bob, 600).await;
    empty_bin(&mut alice).await;
    assert_eq!(bob.publish("thing/door/cmd", r#"{"n":1}"#).await, 0x87);
    things_ok(&mut bob, "thing.restore", json!({"thing": "door"})).await;
    bob.notice("thing.shared").await;
    empty_bin(&mut bob).await;
    assert_eq!(bob.publish("thing/door/cmd", r#"{"n":2}"#).await, 0);
    let cmd = door
        .wait_msg("bob's command", |m| m.topic == "thing/door/cmd")
        .await;
    assert_eq!(cmd.json["body"], json!({"n": 2}));
    assert_eq!(
        things_refused(&mut bob, "thing.restore", json!({"thing": "door"})).await,
        "not_found",
        "restored once"
    );

    // The owner unbinds: the share ends with it (not into bob's bin); the ownership is in
    // alice's bin, and a new SUBSCRIBE brings back the ownership only.
    let unbind = json!({"thing": "door", "retain_secs": 300});
    things_ok(&mut alice, "thing.unbind", unbind).await;
    alice.notice("thing.unbound").await;
    bob.notice("thing.unshared").await;
    binned(&mut alice, 300).await;
    empty_bin(&mut bob).await;
    assert_eq!(alice.publish("thing/door/cmd", r#"{"n":3}"#).await, 0x87);
    assert!(alice.subscribe("thing/door/state").await <= 1);
    let bound = alice.notice("thing.bound").await;
    assert_eq!(bound["restored"], true, "{bound}");
    empty_bin(&mut alice).await;
    assert_eq!(alice.publish("thing/door/cmd", r#"{"n":4}"#).await, 0);
    assert_eq!(bob.publish("thing/door/cmd", r#"{"n":5}"#).await, 0x87);

    // Unbound again and claimed by carol meanwhile: alice's restore is a conflict, and the
    // binding stays in her bin.
    assert_eq!(alice.unsubscribe("thing/door/state").await, Some(0));
    let mut carol = person(&world, "carol").await;
    claim(&mut door, &mut carol).await;
    assert_eq!(
        things_refused(&mut alice, "thing.restore", json!({"thing": "door"})).await,
        "conflict"
    );
    let list = alice.ok("recycle.list", json!({})).await;
    assert_eq!(list["entries"][0]["peer"], "door", "{list}");
    assert_eq!(carol.publish("thing/door/cmd", r#"{"n":6}"#).await, 0);
}
