//! The client library's things API against the real daemon: every flow of the things world
//! (claim, bind, command with ack and timeout, queueing for an offline thing, refusals, shares,
//! state documents, follow requests, links, unbind and restore, chains, the audit) through
//! [`mqtter_client::ThingClient`] and the person's calls on [`mqtter_client::Client`].

use std::time::Duration;

use mqtter_client::{
    Access, Ack, CommandOptions, Error, FollowState, Outcome, Rights, ThingClient,
};
use serde_json::json;

use crate::common::im::World;
use crate::common::person::{options, person};
use crate::common::thing::{thing, world_yaml};

fn ttl(secs: u64) -> CommandOptions {
    CommandOptions::ttl(Duration::from_secs(secs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_bind_command_ack_and_the_list_of_things() {
    let world = World::with(&world_yaml(&["alice", "bob"], &["lamp"], &[]), "");
    let dir = tempfile::tempdir().unwrap();
    let (lamp, mut l) = thing(world.port(), "lamp").await;
    let code = lamp.claim_code(Some(60)).await.unwrap();
    assert!(code.expires_at > 0);

    let (alice, mut a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let wrong = alice.bind("NOPE").await;
    assert_eq!(wrong.unwrap_err().code(), Some("wrong_code"));
    assert_eq!(alice.bind(&code.code).await.unwrap(), "lamp");
    a.notice("thing.bound").await;
    assert_eq!(alice.roster().things[0].access, Access::Owner);
    // A code works once.
    let (bob, _b) = person(world.port(), "bob", "phone", dir.path()).await;
    assert_eq!(
        bob.bind(&code.code).await.unwrap_err().code(),
        Some("wrong_code")
    );
    // Owned now: no new code.
    assert_eq!(
        lamp.claim_code(None).await.unwrap_err().code(),
        Some("conflict")
    );

    // Command -> the thing's handler acks -> the commander gets the outcome.
    let handler = tokio::spawn(async move {
        let cmd = l.command().await;
        assert_eq!(cmd.from, "alice");
        assert_eq!(cmd.body, json!({"on": true}));
        lamp.ack(&cmd, Ack::ok(json!({"on": true}))).await.unwrap();
        lamp.report_state_after(&cmd.id, json!({"on": true}))
            .await
            .unwrap();
        // A second answer is refused and changes nothing.
        let again = lamp.ack(&cmd, Ack::ok(json!(null))).await;
        assert!(matches!(again, Err(Error::Rejected(0x80))), "{again:?}");
        (lamp, l, cmd.id)
    });
    let outcome = alice
        .command_wait("lamp", json!({"on": true}), ttl(30))
        .await
        .unwrap();
    let Outcome::Acked(ack) = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(ack.ok);
    assert_eq!(ack.result, json!({"on": true}));
    assert_eq!(ack.thing, "lamp");
    let (lamp, _l, id) = handler.await.unwrap();
    assert_eq!(outcome.id(), id);
    assert_eq!(ack.chain.id, id);
    assert_eq!(ack.chain.hop, 1);
    // The same outcome is on the stream too.
    assert_eq!(a.ack().await.id, id);

    // The state document, and the list of things with it.
    let state = alice.thing_state("lamp").await.unwrap();
    assert_eq!(state.state, json!({"on": true}));
    assert_eq!(state.version, 1);
    let things = alice.things().await.unwrap();
    assert_eq!(things.len(), 1);
    assert_eq!(things[0].id, "lamp");
    assert_eq!(things[0].access, Access::Owner);
    assert_eq!(things[0].presence, "online");
    assert_eq!(things[0].state, json!({"on": true}));

    // At the next CONNECT the list comes after the sync, and the feed has nothing new.
    alice.close().await;
    drop(alice);
    let (alice, mut a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let listed = a.things().await;
    assert_eq!(listed[0].id, "lamp");
    a.feed_done().await;
    assert!(
        a.seen
            .iter()
            .all(|e| !matches!(e, mqtter_client::Event::CommandAck(_)))
    );
    assert_eq!(alice.roster().things[0].version, 1);

    // Without rights: refused (0x87) and never delivered.
    let refused = bob.command("lamp", json!({"on": false}), ttl(5)).await;
    assert!(matches!(refused, Err(Error::Rejected(0x87))), "{refused:?}");
    // Not an object: refused by the library itself.
    assert!(matches!(
        alice.command("lamp", json!([1]), ttl(5)).await,
        Err(Error::Protocol(_))
    ));
    let audit = alice.audit("lamp", None, None).await.unwrap();
    assert_eq!(audit.entries.len(), 2, "{:?}", audit.entries);
    assert_eq!(audit.entries[0].kind(), "refused");
    assert_eq!(audit.entries[0].from, "bob");
    assert_eq!(audit.entries[1].kind(), "acked");
    assert_eq!(audit.entries[1].id.as_deref(), Some(id.as_str()));
    // Only the owner reads the audit.
    assert_eq!(
        bob.audit("lamp", None, None).await.unwrap_err().code(),
        Some("not_authorized")
    );
    lamp.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_for_an_offline_thing_delivered_once_and_a_timeout_reaches_an_offline_commander() {
    let world = World::with(
        &world_yaml(&["alice"], &["door"], &["{ bind: door, to: alice }"]),
        "[things]\nsweep_interval_ms = 50\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let (alice, _a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let (phone, mut p) = person(world.port(), "alice", "phone", dir.path()).await;
    // door is offline: both are queued.
    let long = alice
        .command("door", json!({"n": 1}), ttl(120))
        .await
        .unwrap();
    let short = alice
        .command("door", json!({"n": 2}), ttl(1))
        .await
        .unwrap();
    alice.close().await;
    drop(alice);
    // The phone sees the short one time out (queued, never delivered) while the laptop is away.
    let timeout = p.timeout().await;
    assert_eq!(timeout.cid.as_deref(), Some(short.cid.as_str()));
    assert!(!timeout.delivered);

    // The thing connects: only the command within its ttl is delivered, once.
    let (door, mut d) = thing(world.port(), "door").await;
    let cmd = d.command().await;
    assert_eq!(cmd.cid.as_deref(), Some(long.cid.as_str()));
    assert_eq!(cmd.body, json!({"n": 1}));
    door.ack(&cmd, Ack::error("jammed")).await.unwrap();
    assert_eq!(d.all_commands().len(), 1);
    door.close().await;
    let (door, d) = thing(world.port(), "door").await;
    assert!(d.all_commands().is_empty(), "handed over once");

    // The laptop, offline meanwhile, gets both outcomes at its next sync, then feed.done.
    let (_alice, mut a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let timeout = a.timeout().await;
    assert_eq!(timeout.cid.as_deref(), Some(short.cid.as_str()));
    let ack = a.ack().await;
    assert_eq!(ack.cid.as_deref(), Some(long.cid.as_str()));
    assert!(!ack.ok);
    assert_eq!(ack.result, json!({"error": "jammed"}));
    a.feed_done().await;
    drop(phone);
    door.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_command_times_out_after_its_ttl() {
    let world = World::with(
        &world_yaml(&["alice"], &["door"], &["{ bind: door, to: alice }"]),
        "[things]\nsweep_interval_ms = 50\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let (alice, _a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let (_door, mut d) = thing(world.port(), "door").await;
    let outcome = alice
        .command_wait("door", json!({"open": true}), ttl(1))
        .await
        .unwrap();
    let Outcome::TimedOut(timeout) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(timeout.delivered, "the thing had it, and did not answer");
    assert_eq!(d.command().await.id, timeout.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_merges_a_view_share_watches_and_cannot_command_a_follower_is_approved() {
    let world = World::with(
        &world_yaml(
            &["alice", "bob", "carol"],
            &["meter"],
            &["{ bind: meter, to: alice }"],
        ),
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let (meter, _m) = thing(world.port(), "meter").await;
    meter
        .report_state(json!({"kwh": 1, "unit": "kWh"}))
        .await
        .unwrap();
    meter.report_state(json!({"kwh": 2})).await.unwrap();
    let (alice, _a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let doc = alice.thing_state("meter").await.unwrap();
    assert_eq!(doc.version, 2);
    assert_eq!(doc.state, json!({"kwh": 2, "unit": "kWh"}));

    // A view share: the current document at once on watching, then each change.
    let (bob, mut b) = person(world.port(), "bob", "phone", dir.path()).await;
    alice.share("meter", "bob", Rights::View).await.unwrap();
    b.notice("thing.shared").await;
    assert_eq!(bob.roster().things[0].access, Access::View);
    assert!(bob.watch("meter").await.unwrap().iter().all(|c| *c < 0x80));
    let now = b.state("meter").await;
    assert_eq!(now.version, 2);
    assert_eq!(now.state, json!({"kwh": 2, "unit": "kWh"}));
    meter.report_state(json!({"unit": null})).await.unwrap();
    let next = b.state("meter").await;
    assert_eq!(next.version, 3, "{:#?}", b.seen);
    assert_eq!(next.changed, json!({"unit": null}));
    assert_eq!(next.state, json!({"kwh": 2}));
    // view cannot command.
    let refused = bob.command("meter", json!({"reset": true}), ttl(5)).await;
    assert!(matches!(refused, Err(Error::Rejected(0x87))), "{refused:?}");
    // Events reach the bound persons' feeds.
    meter.event(json!({"kind": "peak"})).await.unwrap();
    assert_eq!(b.thing_event("meter").await.body, json!({"kind": "peak"}));

    // carol asks to follow; alice accepts; carol then sees the document.
    let (carol, mut c) = person(world.port(), "carol", "tab", dir.path()).await;
    assert_eq!(carol.follow("meter").await.unwrap(), FollowState::Pending);
    c.notice("thing.follow_pending").await;
    alice.follow_accept("meter", "carol").await.unwrap();
    c.notice("thing.shared").await;
    carol.watch("meter").await.unwrap();
    assert_eq!(c.state("meter").await.version, 3);
    assert_eq!(carol.follow("meter").await.unwrap(), FollowState::Following);

    // Unshare ends it at once.
    alice.unshare("meter", "bob").await.unwrap();
    b.notice("thing.unshared").await;
    assert!(bob.roster().things.is_empty());
    assert_eq!(
        bob.thing_state("meter").await.unwrap_err().code(),
        Some("not_authorized")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbind_goes_to_the_recycle_bin_and_restore_brings_it_back() {
    let world = World::with(
        &world_yaml(&["alice"], &["lamp"], &["{ bind: lamp, to: alice }"]),
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut a) = person(world.port(), "alice", "laptop", dir.path()).await;
    assert_eq!(a.things().await.len(), 1);
    alice.unbind("lamp", Some(3600)).await.unwrap();
    a.notice("thing.unbound").await;
    assert!(alice.roster().things.is_empty());
    let bin = alice.recycle_list().await.unwrap();
    assert!(
        bin.iter().any(|e| e.kind == "binding" && e.peer == "lamp"),
        "{bin:?}"
    );
    assert!(alice.things().await.unwrap().is_empty());
    alice.thing_restore("lamp").await.unwrap();
    let bound = a.notice("thing.bound").await;
    assert_eq!(bound.body["restored"], true);
    assert_eq!(alice.things().await.unwrap()[0].access, Access::Owner);
    assert_eq!(alice.roster().things[0].id, "lamp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_things_command_each_other_along_one_chain_and_unlink_revokes() {
    let world = World::with(
        &world_yaml(
            &["alice"],
            &["switch", "bulb"],
            &["{ bind: switch, to: alice }", "{ bind: bulb, to: alice }"],
        ),
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let (switch, mut s) = thing(world.port(), "switch").await;
    let (bulb, mut b) = thing(world.port(), "bulb").await;
    alice.link("switch", "bulb").await.unwrap();
    s.notice("thing.linked").await;
    assert!(
        switch
            .watch("bulb")
            .await
            .unwrap()
            .iter()
            .all(|c| *c < 0x80)
    );

    // person -> switch; switch -> bulb continuing the chain; bulb's event names the command.
    let given = alice
        .command("switch", json!({"press": true}), ttl(30))
        .await
        .unwrap();
    let press = s.command().await;
    assert_eq!(press.cid.as_deref(), Some(given.cid.as_str()));
    let relay = CommandOptions {
        chain: Some(press.chain.clone()),
        ..ttl(30)
    };
    let waiting = {
        let switch = switch.clone();
        tokio::spawn(async move {
            switch
                .command_wait("bulb", json!({"on": true}), relay)
                .await
        })
    };
    let on = b.command().await;
    assert_eq!(on.from, "switch");
    assert_eq!(on.chain.id, press.id);
    assert_eq!(on.chain.hop, 1);
    bulb.ack(&on, Ack::ok(json!(null))).await.unwrap();
    bulb.event_after(&on.id, json!({"lit": true}))
        .await
        .unwrap();
    let outcome = waiting.await.unwrap().unwrap();
    assert!(matches!(&outcome, Outcome::Acked(ack) if ack.ok));
    switch.ack(&press, Ack::ok(json!(null))).await.unwrap();
    // The switch (watching) and alice (the owner's feed) see bulb's event, one chain, hop 2.
    let seen = s.thing_event("bulb").await;
    assert_eq!(seen.body, json!({"lit": true}));
    let fed = a.thing_event("bulb").await;
    assert_eq!(fed.chain.id, press.id);
    assert_eq!(fed.chain.hop, 2);

    // Unlinked: neither commands the other any more.
    alice.unlink("switch", "bulb").await.unwrap();
    b.notice("thing.unlinked").await;
    let refused = bulb.command("switch", json!({}), ttl(5)).await;
    assert!(matches!(refused, Err(Error::Rejected(0x87))), "{refused:?}");
    let refused = switch.command("bulb", json!({}), ttl(5)).await;
    assert!(matches!(refused, Err(Error::Rejected(0x87))), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thing_with_a_wrong_secret_is_refused() {
    let world = World::with(&world_yaml(&["alice"], &["lamp"], &[]), "");
    let mut opts = options(world.port(), "lamp", "dev");
    opts.password = "wrong".into();
    let refused = ThingClient::connect(opts).await.err();
    assert!(matches!(refused, Some(Error::Connect(_))), "{refused:?}");
    let (lamp, _l) = thing(world.port(), "lamp").await;
    assert_eq!(lamp.id(), "lamp");
}
