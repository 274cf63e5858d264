//! Direct channels between friends' devices (docs/PROTOCOL.md 6.1, docs/CLIENT.md): the
//! negotiation through the server (`direct.open`: friends only, a token for both sides, the
//! offer on the peer's inbox) and the upload of what was said over a channel
//! (`direct.upload`: stored once, in order, the peer's messages only with the peer's MAC); then
//! the client library's channels: 100 messages the broker never sees, uploaded once in order
//! and synced to a third device; wrong and expired tokens refused on both sides; a cut path
//! falling back to the server without loss or duplicate.

use mqtter_client::p2p::Offer;
use mqtter_client::p2p::wire::{self, Frame};
use mqtter_client::{Client, ConvId, Error, Event, Range, Target};
use mqtter_engine::im::direct::{hex, message_mac, unhex};
use serde_json::{Value, json};

use crate::common::WAIT;
use crate::common::im::{World, friends, persons};
use crate::common::person::person;
use crate::common::proxy::Proxy;

fn to(p: &str) -> Target {
    Target::Person(p.into())
}

fn refused_code(result: Result<Value, Error>) -> String {
    match result {
        Err(Error::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn open(client: &Client, peer: &str) -> Result<Value, Error> {
    client
        .request(
            "direct.open",
            json!({ "peer": peer, "addr": "127.0.0.1:40000" }),
        )
        .await
}

fn world() -> World {
    let yaml = format!(
        "{}{}",
        persons(&["alice", "bob", "carol", "dave", "erin"]),
        friends(&[("alice", "bob"), ("alice", "dave"), ("alice", "erin")])
    );
    World::with(&yaml, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_is_negotiated_between_online_friends_only() {
    let world = world();
    let dir = tempfile::tempdir().unwrap();
    let (alice, _a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let (_bob, mut b) = person(world.port(), "bob", "phone", dir.path()).await;
    let (_bob_tablet, mut bt) = person(world.port(), "bob", "tablet", dir.path()).await;
    let (_carol, _c) = person(world.port(), "carol", "phone", dir.path()).await;
    let (erin, _e) = person(world.port(), "erin", "phone", dir.path()).await;
    erin.block("alice").await.unwrap();

    let answer = alice
        .request(
            "direct.open",
            json!({ "peer": "bob", "addr": "127.0.0.1:40000", "device": "phone" }),
        )
        .await
        .unwrap();
    let token = answer["token"].as_str().unwrap();
    assert_eq!(unhex(token).map(|t| t.len()), Some(32), "{answer}");
    assert_eq!(answer["peer_device"], "bob:phone");
    assert_eq!(answer["lifetime_ms"], 30_000);
    assert!(answer["expires_at"].as_u64().unwrap() > 0);
    let offer = b.notice("direct.offer").await;
    assert_eq!(offer.field("channel"), answer["channel"].as_str());
    assert_eq!(offer.field("token"), Some(token));
    assert_eq!(offer.field("from"), Some("alice"));
    assert_eq!(offer.field("from_device"), Some("alice:laptop"));
    assert_eq!(offer.field("device"), Some("bob:phone"));
    assert_eq!(offer.field("addr"), Some("127.0.0.1:40000"));
    assert_eq!(offer.body["expires_at"], answer["expires_at"]);
    assert_ne!(
        offer.field("key"),
        answer["key"].as_str(),
        "each side signs with a key of its own"
    );

    // Without a device named, the peer's newest device gets the offer.
    let answer = open(&alice, "bob").await.unwrap();
    assert_eq!(answer["peer_device"], "bob:tablet");
    let offer = bt.notice("direct.offer").await;
    assert_eq!(offer.field("channel"), answer["channel"].as_str());

    // Refused: not friends, blocked, offline, oneself, no such person, a bad address.
    assert_eq!(refused_code(open(&alice, "carol").await), "not_authorized");
    assert_eq!(refused_code(open(&alice, "erin").await), "not_authorized");
    assert_eq!(refused_code(open(&alice, "dave").await), "offline");
    assert_eq!(refused_code(open(&alice, "alice").await), "not_authorized");
    assert_eq!(refused_code(open(&alice, "nobody").await), "not_found");
    for addr in ["nowhere", "0.0.0.0:4000", "127.0.0.1:0", ""] {
        let result = alice
            .request("direct.open", json!({ "peer": "bob", "addr": addr }))
            .await;
        assert_eq!(refused_code(result), "invalid", "{addr:?}");
    }
    let result = alice
        .request(
            "direct.open",
            json!({ "peer": "bob", "addr": "127.0.0.1:4000", "device": "laptop" }),
        )
        .await;
    assert_eq!(refused_code(result), "offline");
}

/// An upload message of `from`, signed with `key` (hex) when given.
fn said(from: &str, cid: &str, text: &str, signed: Option<(&str, &str)>) -> Value {
    let body = json!({ "text": text }).to_string();
    let mut m = json!({ "from": from, "cid": cid, "body": body });
    if let Some((channel, key)) = signed {
        let key = unhex(key).unwrap();
        m["channel"] = json!(channel);
        m["mac"] = json!(hex(&message_mac(&key, channel, cid, &body)));
    }
    m
}

async fn upload(client: &Client, peer: &str, messages: Vec<Value>) -> Result<Value, Error> {
    client
        .request(
            "direct.upload",
            json!({ "peer": peer, "messages": messages }),
        )
        .await
}

fn seqs(answer: &Value) -> Vec<(u64, bool)> {
    answer["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["duplicate"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_stored_once_in_order_and_needs_the_peers_mac() {
    let world = world();
    let dir = tempfile::tempdir().unwrap();
    let (alice, _a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let (bob, mut b) = person(world.port(), "bob", "phone", dir.path()).await;
    let answer = open(&alice, "bob").await.unwrap();
    let channel = answer["channel"].as_str().unwrap().to_owned();
    let alice_key = answer["key"].as_str().unwrap().to_owned();
    let offer = b.notice("direct.offer").await;
    let bob_key = offer.field("key").unwrap().to_owned();

    // A message in bob's name without his MAC, or with alice's, or of another channel: the
    // whole upload is refused and nothing is stored.
    for forged in [
        said("bob", "b-1", "forged", None),
        said("bob", "b-1", "forged", Some((&channel, &alice_key))),
        said("bob", "b-1", "forged", Some(("another", &bob_key))),
    ] {
        let result = upload(
            &alice,
            "bob",
            vec![said("alice", "a-1", "hi", None), forged],
        )
        .await;
        assert!(
            matches!(&result, Err(Error::Refused { code, .. }) if code == "not_authorized" || code == "invalid"),
            "{result:?}"
        );
    }
    let conv = ConvId::direct("alice", "bob");
    let page = alice.history(&conv, Range::Newest, 10).await.unwrap();
    assert!(page.messages.is_empty(), "{page:?}");
    assert_eq!(
        refused_code(upload(&alice, "bob", vec![said("carol", "c-1", "x", None)]).await),
        "invalid"
    );

    // The conversation as it was said: alice, bob (signed by bob), alice.
    let transcript = vec![
        said("alice", "a-1", "hi", None),
        said("bob", "b-1", "hello", Some((&channel, &bob_key))),
        said("alice", "a-2", "how are you?", None),
    ];
    let first = upload(&alice, "bob", transcript.clone()).await.unwrap();
    assert_eq!(seqs(&first), [(1, false), (2, false), (3, false)]);
    // Again, and by the other side: nothing stored twice (bob's own message needs no MAC).
    let again = upload(&alice, "bob", transcript).await.unwrap();
    assert_eq!(seqs(&again), [(1, true), (2, true), (3, true)]);
    let by_bob = upload(
        &bob,
        "alice",
        vec![
            said("alice", "a-2", "how are you?", Some((&channel, &alice_key))),
            said("bob", "b-1", "hello", None),
        ],
    )
    .await
    .unwrap();
    assert_eq!(seqs(&by_bob), [(3, true), (2, true)]);

    let page = bob.history(&conv, Range::Newest, 10).await.unwrap();
    let texts: Vec<(u64, &str, &str)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.from.as_str(), m.text().unwrap()))
        .collect();
    assert_eq!(
        texts,
        [
            (1, "alice", "hi"),
            (2, "bob", "hello"),
            (3, "alice", "how are you?")
        ]
    );
    // Delivered like messages sent now: bob's device got the three once each.
    let got = b.messages(3).await;
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3],
        "{got:?}"
    );
    assert_eq!(got[1].cid.as_deref(), Some("b-1"));
}

// ---- the client library's direct channels ----

/// PUBLISH packets the broker has received so far (`/metrics`).
fn publishes_received(world: &World) -> f64 {
    let addr = world.daemon.metrics.expect("metrics_listen is set");
    crate::metrics::scrape(addr)["mqtter_publish_received_total"]
}

/// Wait (bounded by `WAIT`) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn opened(events: &mut crate::common::person::Events, peer: &str) {
    events
        .next(&format!("a channel to {peer}"), |e| {
            matches!(e, Event::DirectOpened { peer: p } if p == peer).then_some(())
        })
        .await;
}

async fn closed(events: &mut crate::common::person::Events, peer: &str) -> String {
    events
        .next(&format!("the end of the channel to {peer}"), |e| match e {
            Event::DirectClosed { peer: p, reason } if p == peer => Some(reason.clone()),
            _ => None,
        })
        .await
}

fn with_metrics() -> World {
    let yaml = format!(
        "{}{}",
        persons(&["alice", "bob"]),
        friends(&[("alice", "bob")])
    );
    World::with(&yaml, "metrics_listen = \"127.0.0.1:0\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_messages_go_direct_then_are_stored_once_in_order() {
    let world = with_metrics();
    let dir = tempfile::tempdir().unwrap();
    let (alice, mut a) = person(world.port(), "alice", "laptop", dir.path()).await;
    let (bob, mut b) = person(world.port(), "bob", "phone", dir.path()).await;
    alice.open_direct("bob").await.unwrap();
    opened(&mut a, "bob").await;
    opened(&mut b, "alice").await;
    assert!(alice.direct().is_open("bob") && bob.direct().is_open("alice"));

    // A conversation, each answering the other: 100 messages, none through the broker.
    let before = publishes_received(&world);
    let mut said = Vec::new();
    for i in 0..50 {
        let text = format!("alice {i}");
        alice.send_text(&to("bob"), &text).await.unwrap();
        let m = b.message().await;
        assert_eq!(
            (m.from.as_str(), m.text(), m.seq),
            ("alice", Some(&*text), 0)
        );
        said.push(text);
        let text = format!("bob {i}");
        bob.send_text(&to("alice"), &text).await.unwrap();
        let m = a.message().await;
        assert_eq!((m.from.as_str(), m.text(), m.seq), ("bob", Some(&*text), 0));
        said.push(text);
    }
    assert_eq!(
        publishes_received(&world),
        before,
        "the broker saw no PUBLISH while the channel carried the messages"
    );
    let conv = ConvId::direct("alice", "bob");
    assert_eq!(alice.direct().pending("bob").unwrap().len(), 100);
    assert_eq!(bob.direct().pending("alice").unwrap().len(), 100);
    let transcript = mqtter_client::p2p::pending::list(alice.cache(), &conv).unwrap();
    assert_eq!(transcript.len(), 100);

    // Closing uploads on both sides: the first stores, the second finds everything there.
    alice.direct().close("bob").await;
    closed(&mut a, "bob").await;
    closed(&mut b, "alice").await;
    until("both sides uploaded", || {
        alice.direct().pending("bob").unwrap().is_empty()
            && bob.direct().pending("alice").unwrap().is_empty()
    })
    .await;
    let page = alice.history(&conv, Range::After(0), 100).await.unwrap();
    assert_eq!(page.last_seq, 100, "stored once each");
    let texts: Vec<&str> = page.messages.iter().map(|m| m.text().unwrap()).collect();
    assert_eq!(texts, said, "in the order they were said");

    // Uploading the same again stores nothing.
    let again: Vec<Value> = transcript
        .iter()
        .map(|s| json!({"from": s.from, "cid": s.cid, "body": s.body, "channel": s.channel, "mac": s.mac}))
        .collect();
    let answer = upload(&bob, "alice", again).await.unwrap();
    assert!(seqs(&answer).iter().all(|(_, duplicate)| *duplicate));
    assert_eq!(
        seqs(&answer).iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=100).collect::<Vec<_>>()
    );

    // Each side's cache holds the conversation with its seqs, and neither was told again.
    until("the caches hold the stamped copies", || {
        alice.cache().count(&conv).unwrap() == 100 && bob.cache().count(&conv).unwrap() == 100
    })
    .await;
    alice
        .send_text(&to("bob"), "through the server")
        .await
        .unwrap();
    let m = b.message().await;
    assert_eq!((m.seq, m.text()), (101, Some("through the server")));
    assert!(
        b.all_messages().iter().all(|m| m.seq == 0 || m.seq == 101),
        "the stamped copies were not yielded again"
    );

    // A third device of alice gets all of it, in order, as missed messages.
    let (_tablet, t) = person(world.port(), "alice", "tablet", dir.path()).await;
    let synced = t.all_messages();
    let texts: Vec<&str> = synced.iter().map(|m| m.text().unwrap()).collect();
    assert_eq!(&texts[..100], &said[..]);
    assert_eq!(
        synced.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=101).collect::<Vec<_>>()
    );
}

/// alice and bob, friends, on a daemon with `extra` configuration; bob dials only when told.
async fn manual_bob(
    extra: &str,
    dir: &std::path::Path,
) -> (World, Client, Client, crate::common::person::Events) {
    let yaml = format!(
        "{}{}",
        persons(&["alice", "bob"]),
        friends(&[("alice", "bob")])
    );
    let world = World::with(&yaml, extra);
    let (alice, _a) = person(world.port(), "alice", "laptop", dir).await;
    let mut opts = crate::common::person::options(world.port(), "bob", "phone").cache_dir(dir);
    opts.direct_auto_accept = false;
    let (bob, b) = crate::common::person::connect(opts).await;
    (world, alice, bob, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_expired_token_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (_world, alice, bob, mut b) = manual_bob("", dir.path()).await;

    let opener = alice.clone();
    let opening = tokio::spawn(async move { opener.open_direct("bob").await });
    let offer = Offer::from_json(&b.notice("direct.offer").await.body).unwrap();
    assert_eq!(offer.lifetime_ms, 30_000);
    // A dialer without the token: alice's listener refuses it.
    let mut s = tokio::net::TcpStream::connect(&offer.addr).await.unwrap();
    let hello = Frame::Hello {
        channel: offer.channel.clone(),
        device: offer.device.clone(),
        nonce: "n1".into(),
    };
    wire::write(&mut s, &hello).await.unwrap();
    let challenge = wire::read(&mut s).await.unwrap();
    assert!(
        matches!(challenge, Some(Frame::Challenge { .. })),
        "{challenge:?}"
    );
    wire::write(
        &mut s,
        &Frame::Auth {
            proof: hex(&[0; 32]),
        },
    )
    .await
    .unwrap();
    match wire::read(&mut s).await.unwrap() {
        Some(Frame::Refused { reason }) => assert!(reason.contains("wrong token"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // With a wrong token, bob refuses alice's listener (it proves a token bob does not have).
    let mut wrong = offer.clone();
    wrong.token = hex(&[7u8; 32]);
    let refused = bob.direct().accept(&wrong).await.unwrap_err().to_string();
    assert!(refused.contains("does not hold the token"), "{refused}");
    // Neither used the right token up.
    bob.direct().accept(&offer).await.unwrap();
    opening.await.unwrap().unwrap();
    assert!(alice.direct().is_open("bob"));
    let again = bob.direct().accept(&offer).await.unwrap_err().to_string();
    assert!(again.contains("used already"), "{again}");
    alice.direct().close("bob").await;

    // Past its lifetime a token opens nothing (a daemon with a short one).
    let dir = tempfile::tempdir().unwrap();
    let (_short, alice, bob, mut b) = manual_bob("[im]\ndirect_token_ms = 300\n", dir.path()).await;
    let opener = alice.clone();
    let opening = tokio::spawn(async move { opener.open_direct("bob").await });
    let offer = Offer::from_json(&b.notice("direct.offer").await.body).unwrap();
    assert_eq!(offer.lifetime_ms, 300);
    tokio::time::sleep(std::time::Duration::from_millis(offer.lifetime_ms + 200)).await;
    let expired = bob.direct().accept(&offer).await.unwrap_err().to_string();
    assert!(expired.contains("expired"), "{expired}");
    opening.abort();
    // The dialer refuses a listener that cannot prove the token.
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut forged = offer.clone();
    forged.addr = fake.local_addr().unwrap().to_string();
    let impostor = tokio::spawn(async move {
        let (mut s, _) = fake.accept().await.unwrap();
        let hello = wire::read(&mut s).await.unwrap();
        assert!(matches!(hello, Some(Frame::Hello { .. })), "{hello:?}");
        let challenge = Frame::Challenge {
            proof: hex(&[0; 32]),
            nonce: "n".into(),
        };
        wire::write(&mut s, &challenge).await.unwrap();
        wire::read(&mut s).await.unwrap()
    });
    let refused = bob.direct().accept(&forged).await.unwrap_err().to_string();
    assert!(refused.contains("does not hold the token"), "{refused}");
    assert!(
        matches!(impostor.await.unwrap(), Some(Frame::Refused { .. })),
        "the impostor was told"
    );
    assert!(!bob.direct().is_open("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_direct_path_falls_back_to_the_server_without_loss_or_duplicate() {
    let world = with_metrics();
    let dir = tempfile::tempdir().unwrap();
    // alice tells bob to dial a proxy in front of her listener, which the test cuts.
    let proxy = Proxy::start("127.0.0.1:9".parse().unwrap()).await;
    let mut opts =
        crate::common::person::options(world.port(), "alice", "laptop").cache_dir(dir.path());
    opts.direct_advertise = Some(proxy.addr.to_string());
    let (alice, mut a) = crate::common::person::connect(opts).await;
    let (bob, mut b) = person(world.port(), "bob", "phone", dir.path()).await;
    proxy.retarget(alice.direct().listen_addr().await.unwrap());
    alice.open_direct("bob").await.unwrap();
    opened(&mut b, "alice").await;

    for i in 0..20 {
        alice.send_text(&to("bob"), &format!("m{i}")).await.unwrap();
    }
    // The rest is sent while the path is cut under it.
    let sender = alice.clone();
    let sending = tokio::spawn(async move {
        for i in 20..60 {
            sender
                .send_text(&to("bob"), &format!("m{i}"))
                .await
                .unwrap();
        }
    });
    b.next("m25 over the channel", |e| {
        matches!(e, Event::Message(m) if m.text() == Some("m25")).then_some(())
    })
    .await;
    proxy.cut();
    sending.await.unwrap();
    let reason = closed(&mut a, "bob").await;
    assert_ne!(reason, "closed", "the path failed under the channel");
    assert!(!alice.direct().is_open("bob"));

    // Everything is stored once, in the order sent; bob saw each once.
    let conv = ConvId::direct("alice", "bob");
    until("every message stored", || {
        alice.direct().pending("bob").unwrap().is_empty()
    })
    .await;
    let page = bob.history(&conv, Range::After(0), 100).await.unwrap();
    let texts: Vec<String> = page
        .messages
        .iter()
        .map(|m| m.text().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, want);
    alice.send_text(&to("bob"), "last").await.unwrap();
    b.next("the last message", |e| {
        matches!(e, Event::Message(m) if m.text() == Some("last")).then_some(())
    })
    .await;
    let mut seen: Vec<String> = b
        .all_messages()
        .iter()
        .map(|m| m.text().unwrap().to_owned())
        .collect();
    assert_eq!(seen.pop().as_deref(), Some("last"));
    assert_eq!(seen, want, "each once, none lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_said_while_the_server_was_unreachable_is_uploaded_when_back() {
    let yaml = format!(
        "{}{}",
        persons(&["alice", "bob"]),
        friends(&[("alice", "bob")])
    );
    let world = World::with(&yaml, "");
    let dir = tempfile::tempdir().unwrap();
    // Both reach the server through a proxy the test can point at nothing.
    let server = Proxy::start(format!("127.0.0.1:{}", world.port()).parse().unwrap()).await;
    let options = |account: &str, device: &str| {
        let mut opts =
            crate::common::person::options(server.port(), account, device).cache_dir(dir.path());
        opts.request_timeout = std::time::Duration::from_secs(2);
        opts
    };
    let (alice, mut a) = crate::common::person::connect(options("alice", "laptop")).await;
    let (bob, mut b) = crate::common::person::connect(options("bob", "phone")).await;
    alice.open_direct("bob").await.unwrap();
    opened(&mut b, "alice").await;

    server.retarget("127.0.0.1:9".parse().unwrap());
    server.cut();
    for e in [&mut a, &mut b] {
        e.next("the server gone", |e| {
            matches!(e, Event::Disconnected { .. }).then_some(())
        })
        .await;
    }
    // The channel does not need the server.
    let mut said = Vec::new();
    for i in 0..5 {
        for (from, client, events) in [("alice", &alice, &mut b), ("bob", &bob, &mut a)] {
            let text = format!("{from} {i}");
            let peer = if from == "alice" { "bob" } else { "alice" };
            client.send_text(&to(peer), &text).await.unwrap();
            let m = events.message().await;
            assert_eq!(m.text(), Some(&*text));
            said.push(text);
        }
    }
    // Closed while neither can reach the server: kept on both sides.
    alice.direct().close("bob").await;
    closed(&mut b, "alice").await;
    assert_eq!(alice.direct().pending("bob").unwrap().len(), 10);
    assert_eq!(bob.direct().pending("alice").unwrap().len(), 10);

    // Back online: each uploads after its sync; stored once, in the order said.
    server.retarget(format!("127.0.0.1:{}", world.port()).parse().unwrap());
    a.synced().await;
    b.synced().await;
    until("both uploaded", || {
        alice.direct().pending("bob").unwrap().is_empty()
            && bob.direct().pending("alice").unwrap().is_empty()
    })
    .await;
    let conv = ConvId::direct("alice", "bob");
    let page = alice.history(&conv, Range::After(0), 100).await.unwrap();
    let texts: Vec<&str> = page.messages.iter().map(|m| m.text().unwrap()).collect();
    assert_eq!(texts, said);
    assert_eq!(page.last_seq, 10);
}
