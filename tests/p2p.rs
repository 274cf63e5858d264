//! Direct channels between friends' devices (docs/PROTOCOL.md 6.1, docs/CLIENT.md): the
//! negotiation through the server (`direct.open`: friends only, a token for both sides, the
//! offer on the peer's inbox) and the upload of what was said over a channel
//! (`direct.upload`: stored once, in order, the peer's messages only with the peer's MAC).

use mqtter_client::{Client, ConvId, Error, Range};
use mqtter_engine::im::direct::{hex, message_mac, unhex};
use serde_json::{Value, json};

use crate::common::im::{World, friends, persons};
use crate::common::person::person;

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
