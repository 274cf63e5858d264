//! Definitions owned by their files, on the running daemon (docs/DEFINITIONS.md, "Who owns
//! what"): a friendship taken out of a file goes (into the recycle bin, restorable), a member
//! added joins (the members told, the relation event seen by a rule), a runtime unfriend is
//! not undone by a restart, a broken file keeps its last good definitions and is reported
//! until it is fixed, and an account taken out of its file is disconnected at once and cannot
//! log in again.

use serde_json::json;

use crate::common::im::{Peer, World, persons};
use crate::common::raw::{CONNACK, Client, Connect, DISCONNECT};
use crate::common::rules::{SysWatch, errors, write_atomically};

const PEOPLE: &[&str] = &["alice", "bob", "carol", "rules"];

fn home(friends: bool, members: &[&str]) -> String {
    let mut yaml = persons(PEOPLE);
    yaml.push_str(&format!(
        "groups:\n  - {{ id: family, owner: alice, members: [{}] }}\n",
        members.join(", ")
    ));
    if friends {
        yaml.push_str("relations:\n  - { friends: [alice, bob] }\n");
    }
    yaml
}

/// A rule that tells `d/joined` who joined a group (the relation event, as rules see it).
const JOINED_RULE: &str = "rules:\n  - id: joined\n    when: { relation: member_joined }\n    \
     do: 'publish(\"d/joined\", event.group + \"/\" + event.member)'\n";

async fn synced(world: &World, id: &str) -> (Peer, serde_json::Value) {
    let mut peer = world.v5(id).await;
    let (roster, _, _) = peer.sync().await;
    (peer, roster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_file_withdraws_and_adds_what_it_declares() {
    let world = World::start(
        &[
            ("home.yaml", &home(true, &["bob"])),
            ("joined.yaml", JOINED_RULE),
        ],
        "allow_anonymous = true\n",
    );
    let mqtt = world.daemon.mqtt;
    let file = world.rules.path().join("home.yaml");
    let mut watcher = Client::session(mqtt, &Connect::v3("watcher").clean(true));
    assert_eq!(watcher.subscribe(&[("d/joined", 0)]), [0]);
    let (mut alice, roster) = synced(&world, "alice").await;
    assert_eq!(roster["friends"][0]["id"], "bob", "{roster}");

    // The friendship taken out of the file, carol added to the group.
    write_atomically(&file, &home(false, &["bob", "carol"]));
    let removed = alice.notice("friend.removed").await;
    assert_eq!(removed["peer"], "bob");
    let joined = alice
        .notice_where("group.joined", |j| j["member"] == "carol")
        .await;
    assert_eq!(joined["group"], "family");
    // (bob's join at start may come first: the rule ran then too.)
    loop {
        let seen = watcher
            .next_publish_within(crate::common::WAIT)
            .expect("the rule on member_joined");
        if seen.payload_str() == "family/carol" {
            break;
        }
        assert_eq!(seen.payload_str(), "family/bob");
    }
    assert_eq!(
        alice.publish("person/bob/inbox", "still friends?").await,
        0x87
    );

    // In alice's recycle bin, and restorable.
    let list = alice.ok("recycle.list", json!({})).await;
    let entries = list["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(
        (&entries[0]["kind"], &entries[0]["peer"]),
        (&json!("friend"), &json!("bob"))
    );
    alice.ok("friend.restore", json!({ "peer": "bob" })).await;
    let added = alice.notice("friend.added").await;
    assert_eq!(added["restored"], true);
    assert_eq!(alice.publish("person/bob/inbox", "back").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_unfriend_survives_a_restart() {
    let world = World::start(&[("home.yaml", &home(true, &["bob"]))], "");
    let (mut alice, roster) = synced(&world, "alice").await;
    assert_eq!(roster["friends"][0]["id"], "bob", "{roster}");
    assert_eq!(alice.unsubscribe("person/bob/status").await, Some(0));
    alice.notice("friend.removed").await;
    drop(alice);

    let mut world = world;
    world.daemon.restart();
    let (mut alice, roster) = synced(&world, "alice").await;
    assert_eq!(roster["friends"], json!([]), "not made again: {roster}");
    assert_eq!(alice.publish("person/bob/inbox", "hello?").await, 0x87);
    // The file's other declarations still hold: bob is in the family.
    let (_bob, roster) = synced(&world, "bob").await;
    assert!(roster["groups"].to_string().contains("family"), "{roster}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_keeps_its_last_good_definitions_and_is_reported() {
    let world = World::start(
        &[("home.yaml", &home(true, &["bob"]))],
        "allow_anonymous = true\n",
    );
    let mqtt = world.daemon.mqtt;
    let file = world.rules.path().join("home.yaml");
    let mut status = SysWatch::status(mqtt);
    status.status_until("loaded", |s| s["ok"] == true);
    let (mut alice, _) = synced(&world, "alice").await;

    // Broken on line 3 (the friendship is gone from the text, but the text does not load).
    let broken = format!("{}groups: [ {{ id: family, owner: alice\n", persons(PEOPLE));
    write_atomically(&file, &broken);
    let failing = status.status_until("the error", |s| s["ok"] == false);
    let errors = errors(&failing);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("home.yaml:"), "{errors:?}");
    assert!(!errors[0].starts_with("home.yaml:0:"), "a line: {errors:?}");
    assert_eq!(failing["files"][0]["last_good"], true, "{failing}");
    // The last good definitions hold, across a restart too.
    assert_eq!(alice.publish("person/bob/inbox", "still here").await, 0);
    drop(alice);
    let mut world = world;
    world.daemon.restart();
    let mut status = SysWatch::status(world.daemon.mqtt);
    status.status_until("still failing", |s| s["ok"] == false);
    let (mut alice, roster) = synced(&world, "alice").await;
    assert_eq!(roster["friends"][0]["id"], "bob", "{roster}");

    // Fixed (without the friendship): the report clears and the friendship goes.
    write_atomically(&file, &home(false, &["bob"]));
    status.status_until("fixed", |s| s["ok"] == true);
    alice.notice("friend.removed").await;
}

#[test]
fn an_account_taken_out_of_its_file_is_disconnected_and_cannot_log_in() {
    let world = World::start(
        &[
            ("home.yaml", &persons(&["alice"])),
            ("bob.yaml", &persons(&["bob"])),
        ],
        "",
    );
    let mqtt = world.daemon.mqtt;
    let password = crate::common::im::password("bob");
    let bob_v5 = Connect::v5("bob:phone").login("bob", &password);
    let bob_v3 = Connect::v3("bob:laptop").login("bob", &password);
    let (mut phone, connack) = Client::connect(mqtt, &bob_v5);
    assert_eq!(connack.code(), 0);
    let (mut laptop, connack) = Client::connect(mqtt, &bob_v3);
    assert_eq!(connack.code(), 0);
    let (mut alice, connack) = Client::connect(
        mqtt,
        &Connect::v5("alice").login("alice", &crate::common::im::password("alice")),
    );
    assert_eq!(connack.code(), 0);

    // bob's file deleted: his account is withdrawn.
    std::fs::remove_file(world.rules.path().join("bob.yaml")).expect("remove bob.yaml");

    // v5: DISCONNECT 0x87 Not authorized, then the close; v3: the connection closed.
    let sent = phone.expect_closed();
    let disconnect = sent
        .iter()
        .find(|p| p.kind == DISCONNECT)
        .unwrap_or_else(|| panic!("no DISCONNECT before the close: {sent:?}"));
    assert_eq!(disconnect.code(), 0x87);
    laptop.expect_closed();
    // He cannot come back: v5 0x86 Bad user name or password, v3 4.
    let (_, connack) = Client::connect(mqtt, &bob_v5);
    assert_eq!((connack.kind, connack.code()), (CONNACK, 0x86));
    let (_, connack) = Client::connect(mqtt, &bob_v3);
    assert_eq!((connack.kind, connack.code()), (CONNACK, 4));
    // alice, whose file still declares her, stays connected.
    assert_eq!(alice.publish("t/still-here", 1, false, b"yes"), 0x10);
}
