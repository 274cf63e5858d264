//! Groups in the IM world: creating and inviting, joining by SUBSCRIBE, one message order for
//! every member, kicking, leaving into the recycle bin and restoring, dissolving.

use serde_json::json;

use crate::common::im::{Peer, World, persons, user};

const CONV: &str = "group:team";

/// alice creates `group`, invites each of `members`, and each joins by SUBSCRIBE.
async fn team(alice: &mut Peer, group: &str, members: &mut [&mut Peer]) {
    alice
        .ok(
            "group.create",
            json!({ "group": group, "name": "The team" }),
        )
        .await;
    let joined = alice.notice("group.joined").await;
    assert_eq!(joined["member"], "alice");
    assert_eq!(joined["role"], "owner");
    for member in members.iter_mut() {
        let who = member.account.clone();
        alice
            .ok("group.invite", json!({ "group": group, "member": who }))
            .await;
        let invited = member.notice("group.invited").await;
        assert_eq!(invited["group"], group);
        assert_eq!(invited["by"], "alice");
        let code = member.subscribe(&format!("group/{group}")).await;
        assert!(code <= 1, "{who}: SUBACK {code:#x}");
        let joined = member
            .notice_where("group.joined", |j| j["member"] == who.as_str())
            .await;
        assert_eq!(joined["group"], group);
        assert_eq!(joined["role"], "member");
        alice
            .notice_where("group.joined", |j| j["member"] == who.as_str())
            .await;
    }
}

/// The group messages a device has received (on the group topic or, as copies of its own
/// account's, on its inbox), in arrival order.
fn group_messages(peer: &mut Peer) -> Vec<(u64, String, String)> {
    peer.received()
        .into_iter()
        .filter(|m| m.json["type"] == "msg" && m.json["conv"] == CONV)
        .map(|m| {
            (
                m.json["seq"].as_u64().unwrap(),
                m.json["from"].as_str().unwrap().to_owned(),
                m.json["body"]["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_sees_one_order() {
    let world = World::with(&persons(&["alice", "bob", "carol"]), "");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v5("bob").await;
    let mut carol = world.v3("carol").await;
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.sync().await;
    }
    team(&mut alice, "team", &mut [&mut bob, &mut carol]).await;
    // Second devices of the two senders see both streams.
    let mut alice_tab = world.v3("alice:tab").await;
    let mut bob_tab = world.v5("bob:tab").await;
    alice_tab.sync().await;
    bob_tab.sync().await;

    // alice and bob send 20 each, at the same time.
    let sender = |mut peer: Peer, tag: &'static str| async move {
        for i in 0..20 {
            peer.send("group/team", format!("{tag}{i}")).await;
        }
        for _ in 0..20 {
            assert_eq!(peer.puback().await, 0);
        }
        peer
    };
    let a = tokio::spawn(sender(alice, "a"));
    let b = tokio::spawn(sender(bob, "b"));
    let mut alice = a.await.unwrap();
    let bob = b.await.unwrap();

    for peer in [&mut alice_tab, &mut bob_tab, &mut carol] {
        for seq in 1..=40u64 {
            peer.wait_msg(&format!("group message {seq}"), |m| {
                m.json["conv"] == CONV && m.json["seq"] == seq
            })
            .await;
        }
    }
    let order = group_messages(&mut carol);
    assert_eq!(
        order.iter().map(|(s, _, _)| *s).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>()
    );
    assert_eq!(group_messages(&mut alice_tab), order);
    assert_eq!(group_messages(&mut bob_tab), order);
    // Each sender's own texts in the order sent.
    for tag in ["a", "b"] {
        let texts: Vec<&str> = order
            .iter()
            .filter(|(_, _, t)| t.starts_with(tag))
            .map(|(_, _, t)| t.as_str())
            .collect();
        let sent: Vec<String> = (0..20).map(|i| format!("{tag}{i}")).collect();
        assert_eq!(texts, sent);
    }
    // Group messages come on the group topic; copies of one's own on the inbox.
    for m in alice_tab.received() {
        if m.json["conv"] == CONV {
            let own = m.json["from"] == "alice";
            let topic = if own {
                "person/alice/inbox"
            } else {
                "group/team"
            };
            assert_eq!(m.topic, topic, "{}", m.json);
        }
    }

    // The sending device gets the others' messages, not its own.
    let bobs: Vec<_> = order
        .iter()
        .filter(|(_, f, _)| f == "bob")
        .cloned()
        .collect();
    for (seq, _, _) in &bobs {
        alice
            .wait_msg("bob's message", |m| m.json["seq"] == *seq)
            .await;
    }
    assert_eq!(group_messages(&mut alice), bobs);

    // A new device's roster shows the group and where it stands.
    let (roster, _, _) = world.v5("carol:web").await.sync().await;
    let group = &roster["groups"][0];
    assert_eq!(group["id"], "team");
    assert_eq!(group["name"], "The team");
    assert_eq!(group["role"], "member");
    assert_eq!(group["last_seq"], 40);
    drop(bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_leave_restore_and_dissolve() {
    let world = World::with(&persons(&["alice", "bob", "carol"]), "");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v5("bob").await;
    let mut carol = world.v3("carol").await;
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.sync().await;
    }
    team(&mut alice, "team", &mut [&mut bob, &mut carol]).await;
    let members = bob.ok("group.members", json!({ "group": "team" })).await;
    let mut ids: Vec<(String, String)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            ("alice".to_owned(), "owner".to_owned()),
            ("bob".to_owned(), "member".to_owned()),
            ("carol".to_owned(), "member".to_owned())
        ]
    );

    // A member cannot kick; the owner can.
    assert_eq!(
        bob.refused("group.kick", json!({ "group": "team", "member": "carol" }))
            .await,
        "not_authorized"
    );
    alice
        .ok("group.kick", json!({ "group": "team", "member": "carol" }))
        .await;
    for peer in [&mut carol, &mut bob] {
        let kicked = peer.notice("group.kicked").await;
        assert_eq!(kicked["group"], "team");
        assert_eq!(kicked["member"], "carol");
        assert_eq!(kicked["by"], "alice");
    }
    assert_eq!(carol.publish("group/team", "still here?").await, 0);
    assert_eq!(carol.notice("error").await["code"], "not_authorized");
    assert_eq!(
        carol
            .refused("group.members", json!({ "group": "team" }))
            .await,
        "not_authorized"
    );

    // bob leaves by UNSUBSCRIBE: into his bin.
    let code = bob
        .unsubscribe_with("group/team", user(&[("im-retain-secs", "60")]))
        .await;
    assert_eq!(code, Some(0));
    let left = alice.notice("group.left").await;
    assert_eq!(
        (&left["group"], &left["member"]),
        (&json!("team"), &json!("bob"))
    );
    bob.notice("group.left").await;
    assert_eq!(bob.publish("group/team", "hello?").await, 0x87);
    let list = bob.ok("recycle.list", json!({})).await;
    let entry = &list["entries"][0];
    assert_eq!(
        (&entry["kind"], &entry["peer"]),
        (&json!("group"), &json!("team"))
    );
    assert_eq!(
        entry["expires_at"].as_u64().unwrap() - entry["removed_at"].as_u64().unwrap(),
        60_000
    );
    // ... and back with group.restore, as he was.
    bob.ok("group.restore", json!({ "group": "team" })).await;
    let joined = alice
        .notice_where("group.joined", |j| j["member"] == "bob")
        .await;
    assert_eq!(joined["role"], "member");
    assert_eq!(bob.publish("group/team", "back").await, 0);
    let back = alice.message("group/team", |_| true).await;
    assert_eq!(back["from"], "bob");
    assert_eq!(back["body"]["text"], "back");
    // The owner cannot leave.
    assert_eq!(
        alice
            .refused("group.leave", json!({ "group": "team" }))
            .await,
        "invalid"
    );

    // Dissolved: every member told, the topic refused afterwards.
    assert_eq!(
        bob.refused("group.dissolve", json!({ "group": "team" }))
            .await,
        "not_authorized"
    );
    alice.ok("group.dissolve", json!({ "group": "team" })).await;
    for peer in [&mut alice, &mut bob] {
        let dissolved = peer.notice("group.dissolved").await;
        assert_eq!(dissolved["group"], "team");
        assert_eq!(dissolved["by"], "alice");
    }
    assert_eq!(bob.publish("group/team", "anyone?").await, 0x87);
    assert_eq!(alice.publish("group/team", "anyone?").await, 0x87);
    assert_eq!(bob.subscribe("group/team").await, 0x87);
    let (roster, _, _) = world.v5("bob:web").await.sync().await;
    assert_eq!(roster["groups"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_request_waits_for_an_admin() {
    let yaml = persons(&["alice", "bob", "carol", "dave"])
        + "groups:\n  - { id: family, owner: alice, members: [bob], name: \"The family\" }\n";
    let world = World::with(&yaml, "");
    let mut alice = world.v5("alice").await;
    let mut carol = world.v5("carol").await;
    let mut bob = world.v3("bob").await;
    alice.sync().await;
    carol.sync().await;
    // The group from the definitions file is in bob's roster.
    let (roster, _, _) = bob.sync().await;
    let family = &roster["groups"][0];
    assert_eq!(family["id"], "family");
    assert_eq!(family["name"], "The family");
    assert_eq!(family["role"], "member");

    // A closed group: carol's SUBSCRIBE waits.
    assert!(carol.subscribe("group/family").await <= 1);
    assert_eq!(carol.notice("group.pending").await["group"], "family");
    let request = alice.notice("group.join_request").await;
    assert_eq!(request["group"], "family");
    assert_eq!(request["from"], "carol");
    assert_eq!(carol.publish("group/family", "hi all").await, 0x87);
    // The owner's roster lists the request.
    let (roster, _, _) = world.v5("alice:web").await.sync().await;
    assert_eq!(roster["groups"][0]["join_requests"], json!(["carol"]));
    // Approved by an invite: in at once, every member told.
    alice
        .ok(
            "group.invite",
            json!({ "group": "family", "member": "carol" }),
        )
        .await;
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.notice_where("group.joined", |j| j["member"] == "carol")
            .await;
    }
    assert_eq!(carol.publish("group/family", "hi all").await, 0);
    let got = bob.message("group/family", |_| true).await;
    assert_eq!(
        (&got["from"], &got["to"]),
        (&json!("carol"), &json!("family"))
    );
    assert_eq!(got["conv"], "group:family");

    // An open group is joined at once and found in the directory.
    alice
        .ok(
            "group.create",
            json!({ "group": "chess", "name": "Chess club", "open": true }),
        )
        .await;
    let mut dave = world.v5("dave").await;
    dave.sync().await;
    let found = dave.ok("directory.search", json!({ "q": "chess" })).await;
    assert_eq!(
        found["groups"],
        json!([{ "id": "chess", "name": "Chess club" }])
    );
    let found = dave.ok("directory.search", json!({ "q": "fam" })).await;
    assert_eq!(found["groups"], json!([]), "a closed group is not listed");
    assert!(dave.subscribe("group/chess").await <= 1);
    let joined = dave.notice("group.joined").await;
    assert_eq!(
        (&joined["group"], &joined["member"]),
        (&json!("chess"), &json!("dave"))
    );
    assert_eq!(dave.publish("group/chess", "e4").await, 0);
    // Creating a taken id is a conflict; a group that does not exist cannot be joined.
    assert_eq!(
        dave.refused("group.create", json!({ "group": "chess" }))
            .await,
        "conflict"
    );
    assert_eq!(dave.subscribe("group/nowhere").await, 0x87);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_survive_a_restart() {
    let mut world = World::with(&persons(&["alice", "bob", "carol"]), "");
    let mut alice = world.v5("alice").await;
    let mut bob = world.v5("bob").await;
    let mut carol = world.v5("carol").await;
    for peer in [&mut alice, &mut bob, &mut carol] {
        peer.sync().await;
    }
    team(&mut alice, "team", &mut [&mut bob, &mut carol]).await;
    for i in 1..=3 {
        assert_eq!(alice.publish("group/team", format!("t{i}")).await, 0);
    }
    alice
        .ok("group.kick", json!({ "group": "team", "member": "carol" }))
        .await;
    let code = bob
        .unsubscribe_with("group/team", user(&[("im-retain-secs", "600")]))
        .await;
    assert_eq!(code, Some(0));
    alice.notice("group.left").await;
    alice
        .ok(
            "group.create",
            json!({ "group": "gone", "name": "Short-lived" }),
        )
        .await;
    alice.ok("group.dissolve", json!({ "group": "gone" })).await;
    drop((alice, bob, carol));
    world.daemon.restart();

    let mut alice = world.v5("alice").await;
    let mut bob = world.v5("bob").await;
    let mut carol = world.v5("carol").await;
    let (roster, _, _) = alice.sync().await;
    let groups: Vec<&str> = roster["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["team"]);
    assert_eq!(roster["groups"][0]["last_seq"], 3);
    let (roster, _, _) = bob.sync().await;
    assert_eq!(roster["groups"], json!([]));
    assert_eq!(roster["recycle"][0]["peer"], "team");
    carol.sync().await;

    // bob comes back from the bin; carol stays out; the sequence goes on.
    bob.ok("group.restore", json!({ "group": "team" })).await;
    assert_eq!(carol.publish("group/team", "me too").await, 0x87);
    assert_eq!(alice.publish("group/gone", "hello?").await, 0x87);
    assert_eq!(alice.publish("group/team", "t4").await, 0);
    let t4 = bob.message("group/team", |_| true).await;
    assert_eq!(t4["seq"], 4);
    let members = alice.ok("group.members", json!({ "group": "team" })).await;
    let mut ids: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["alice", "bob"]);
}
