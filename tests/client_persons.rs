//! The client library against the real daemon: every person flow through the typed API
//! (friends, block, the recycle bin, direct and group messages, receipts, history, presence,
//! groups and their admin operations).

use mqtter_client::{ConvId, Error, Event, FriendState, Range, ReceiptKind, Role, Target};
use serde_json::json;

use crate::common::im::{World, friends, persons};
use crate::common::person::person;

fn to(p: &str) -> Target {
    Target::Person(p.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_message_receipts_presence_and_history() {
    let world = World::with(&persons(&["alice", "bob"]), "");
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let (bob, mut b) = person(world.port(), "bob", "phone", dir.path()).await;

    // Not friends yet: a message is refused, and nothing is lost on either side.
    let refused = alice.send_text(&to("bob"), "too early").await;
    assert!(matches!(refused, Err(Error::Rejected(0x87))), "{refused:?}");

    assert_eq!(
        alice.friend_request("bob").await.unwrap(),
        FriendState::Pending
    );
    let request = b.notice("friend.request").await;
    assert_eq!(request.field("from"), Some("alice"));
    assert_eq!(bob.roster().requests.incoming, ["alice"]);
    bob.friend_accept("alice").await.unwrap();
    a.notice("friend.added").await;
    b.notice("friend.added").await;
    assert!(alice.roster().friends.iter().any(|f| f.id == "bob"));

    for i in 0..5 {
        let sent = alice
            .send_text(&to("bob"), &format!("hi {i}"))
            .await
            .unwrap();
        assert_eq!(sent.conv, ConvId::direct("alice", "bob"));
    }
    let got = b.messages(5).await;
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(got[0].text(), Some("hi 0"));
    assert_eq!(got[0].from, "alice");
    assert!(
        got[0].cid.is_some(),
        "the library gives every message a cid"
    );

    // A retry with the same cid is stored once.
    let cid = alice.new_cid();
    for _ in 0..2 {
        alice
            .send_with_cid(&to("bob"), json!({"text": "once"}), cid.clone())
            .await
            .unwrap();
    }
    alice.send_text(&to("bob"), "after").await.unwrap();
    let next = b.messages(2).await;
    assert_eq!(
        next.iter()
            .map(|m| (m.seq, m.text().unwrap()))
            .collect::<Vec<_>>(),
        [(6, "once"), (7, "after")]
    );

    // Receipts.
    let conv = ConvId::direct("alice", "bob");
    bob.receipt(&conv, 7, ReceiptKind::Read).await.unwrap();
    let receipt = a
        .next("a receipt", |e| match e {
            Event::Receipt(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (receipt.seq, receipt.kind.as_str(), receipt.by.as_str()),
        (7, "read", "bob")
    );

    // Presence and status text.
    bob.set_status_text("in a meeting").unwrap();
    bob.set_presence("away").unwrap();
    let away = a
        .next("bob away", |e| match e {
            Event::Presence(p) if p.id == "bob" && p.presence == "away" => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(away.text.as_deref(), Some("in a meeting"));
    assert_eq!(
        alice
            .roster()
            .friends
            .iter()
            .find(|f| f.id == "bob")
            .unwrap()
            .presence,
        "away"
    );

    // History from the server, by page; and the same from the cache.
    let newest = alice.history(&conv, Range::Newest, 3).await.unwrap();
    assert_eq!(
        newest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [5, 6, 7]
    );
    assert_eq!(newest.last_seq, 7);
    let before = alice.history(&conv, Range::Before(5), 2).await.unwrap();
    assert_eq!(
        before.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [3, 4]
    );
    let after = alice.history(&conv, Range::After(5), 10).await.unwrap();
    assert_eq!(
        after.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [6, 7]
    );
    let cached = bob.cached_history(&conv, Range::Newest, 100).unwrap();
    assert_eq!(
        cached.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );

    // Search.
    let (found, _) = alice.search("bo").await.unwrap();
    assert_eq!(found, ["bob"]);
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfriend_into_the_bin_restore_block_and_reject() {
    let yaml = format!(
        "{}{}",
        persons(&["alice", "bob", "carol"]),
        friends(&[("alice", "bob")])
    );
    let world = World::with(&yaml, "");
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let (bob, mut b) = person(world.port(), "bob", "phone", dir.path()).await;
    let (carol, mut c) = person(world.port(), "carol", "phone", dir.path()).await;

    alice.friend_remove("bob", Some(600)).await.unwrap();
    b.notice("friend.removed").await;
    let bin = alice.recycle_list().await.unwrap();
    assert_eq!(bin.len(), 1);
    assert_eq!(
        (bin[0].kind.as_str(), bin[0].peer.as_str()),
        ("friend", "bob")
    );
    assert!(bin[0].expires_at > bin[0].removed_at);
    assert!(matches!(
        bob.send_text(&to("alice"), "still there?").await,
        Err(Error::Rejected(0x87))
    ));
    alice.friend_restore("bob").await.unwrap();
    a.notice("friend.added").await;
    bob.send_text(&to("alice"), "back").await.unwrap();
    assert_eq!(a.message().await.text(), Some("back"));
    assert!(alice.recycle_list().await.unwrap().is_empty());
    let err = alice.friend_restore("bob").await.unwrap_err();
    assert_eq!(err.code(), Some("not_found"));

    // Block: the friendship ends, and bob can neither message nor ask again.
    alice.block("bob").await.unwrap();
    assert!(matches!(
        bob.send_text(&to("alice"), "hello?").await,
        Err(Error::Rejected(0x87))
    ));
    assert!(bob.friend_request("alice").await.is_err());
    alice.unblock("bob").await.unwrap();

    // Reject.
    carol.friend_request("alice").await.unwrap();
    a.notice("friend.request").await;
    alice.friend_reject("carol").await.unwrap();
    c.notice("friend.rejected").await;
    assert!(matches!(
        carol.send_text(&to("alice"), "please").await,
        Err(Error::Rejected(0x87))
    ));
    for client in [alice, bob, carol] {
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_and_their_admin_operations() {
    let world = World::with(&persons(&["alice", "bob", "carol"]), "");
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let (bob, mut b) = person(world.port(), "bob", "phone", dir.path()).await;
    let (carol, mut c) = person(world.port(), "carol", "phone", dir.path()).await;
    let family = Target::Group("family".into());
    let conv = ConvId::group("family");

    alice
        .group_create("family", Some("The family"), false)
        .await
        .unwrap();
    assert_eq!(
        alice
            .group_create("family", None, false)
            .await
            .unwrap_err()
            .code(),
        Some("conflict")
    );
    // bob is invited, then joins.
    alice.group_invite("family", "bob").await.unwrap();
    assert_eq!(
        b.notice("group.invited").await.field("group"),
        Some("family")
    );
    bob.group_join("family").await.unwrap();
    b.notice("group.joined").await;
    // carol asks to join a closed group; the owner lets her in.
    carol.group_join("family").await.unwrap();
    c.notice("group.pending").await;
    let asked = a.notice("group.join_request").await;
    assert_eq!(asked.field("from"), Some("carol"));
    alice.group_invite("family", "carol").await.unwrap();
    c.next("carol joined", |e| match e {
        Event::Notice(n) if n.kind == "group.joined" && n.field("member") == Some("carol") => {
            Some(())
        }
        _ => None,
    })
    .await;

    alice
        .group_set_role("family", "carol", Role::Admin)
        .await
        .unwrap();
    let mut members = alice.group_members("family").await.unwrap();
    members.sort_by(|x, y| x.id.cmp(&y.id));
    let roles: Vec<(&str, Role)> = members.iter().map(|m| (m.id.as_str(), m.role)).collect();
    assert_eq!(
        roles,
        [
            ("alice", Role::Owner),
            ("bob", Role::Member),
            ("carol", Role::Admin)
        ]
    );
    assert_eq!(
        bob.group_set_role("family", "carol", Role::Member)
            .await
            .unwrap_err()
            .code(),
        Some("not_authorized")
    );

    // One order for every member.
    for (who, text) in [(&alice, "dinner?"), (&bob, "yes"), (&carol, "at 8")] {
        who.send_text(&family, text).await.unwrap();
    }
    let texts = |ms: Vec<mqtter_client::Message>| {
        ms.iter()
            .map(|m| (m.seq, m.text().unwrap().to_owned()))
            .collect::<Vec<_>>()
    };
    let b_got = texts(b.messages(2).await);
    let c_got = texts(c.messages(2).await);
    let a_got = texts(a.messages(2).await);
    assert_eq!(b_got, [(1, "dinner?".to_owned()), (3, "at 8".to_owned())]);
    assert_eq!(c_got, [(1, "dinner?".to_owned()), (2, "yes".to_owned())]);
    assert_eq!(a_got, [(2, "yes".to_owned()), (3, "at 8".to_owned())]);
    // A device is not sent its own messages; the gap they leave is known to be them, so
    // nothing is fetched, and the cache has the whole conversation.
    assert_eq!(bob.stats().fetched(), 0);
    let cached = bob.cached_history(&conv, Range::Newest, 10).unwrap();
    assert_eq!(
        cached
            .iter()
            .map(|m| (m.seq, m.from.as_str()))
            .collect::<Vec<_>>(),
        [(1, "alice"), (2, "bob"), (3, "carol")]
    );
    assert_eq!(cached[1].text(), Some("yes"));
    let page = carol.history(&conv, Range::Newest, 10).await.unwrap();
    assert_eq!(page.messages.len(), 3);

    // Leave into the bin and come back; the admin kicks; the owner dissolves.
    bob.group_leave("family", Some(600)).await.unwrap();
    a.notice("group.left").await;
    assert!(bob.send_text(&family, "ghost").await.is_err());
    assert_eq!(bob.recycle_list().await.unwrap()[0].kind, "group");
    bob.group_restore("family").await.unwrap();
    bob.send_text(&family, "back").await.unwrap();
    carol.group_kick("family", "bob").await.unwrap();
    b.notice("group.kicked").await;
    alice.group_dissolve("family").await.unwrap();
    c.notice("group.dissolved").await;
    assert!(carol.send_text(&family, "anyone?").await.is_err());
    for client in [alice, bob, carol] {
        client.close().await;
    }
}
