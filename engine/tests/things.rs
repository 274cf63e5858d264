//! The things world on the real store: a crash (the process ends without closing its store)
//! loses only what was never flushed and never replays an answered or timed-out command; and a
//! chain with no rules keeps one id, with rising hops, from a person through two linked things
//! and back.

use std::path::Path;
use std::sync::Arc;

use mqtter_engine::accounts::{AccountKind, Accounts};
use mqtter_engine::im::{Im, ImConfig, MessageLog};
use mqtter_engine::things::{AckRequest, CommandRequest, Effect, Sent, Things, ThingsConfig};
use mqtter_engine::{SledStore, Store};
use serde_json::{Value, json};

struct World {
    store: Arc<dyn Store>,
    things: Things,
}

/// Open the store in `dir` (retrying while a dropped one still lets go of its files).
fn open(dir: &Path) -> World {
    let mut store = SledStore::open(dir);
    for _ in 0..100 {
        if store.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        store = SledStore::open(dir);
    }
    let store: Arc<dyn Store> = Arc::new(store.unwrap());
    let accounts = Accounts::new(store.clone());
    for (id, kind) in [
        ("alice", AccountKind::Person),
        ("door", AccountKind::Thing),
        ("lamp", AccountKind::Thing),
    ] {
        if accounts.get(id).unwrap().is_none() {
            accounts.add(id, kind, "secret", 1).unwrap();
        }
    }
    let log = Arc::new(MessageLog::open(&dir.join("messages")).unwrap());
    let im = Arc::new(Im::open(store.clone(), log, ImConfig::default()).unwrap());
    let things = Things::open(store.clone(), im, ThingsConfig::default()).unwrap();
    World { store, things }
}

fn command(t: &Things, from: &str, thing: &str, body: Value, now: u64) -> Sent {
    let req =
        CommandRequest::from_payload(from, thing, body.to_string().as_bytes(), 65536).unwrap();
    t.command(req, now).unwrap().0
}

fn ack(t: &Things, thing: &str, id: &str, now: u64) -> Vec<Effect> {
    let answer = AckRequest {
        id: id.to_owned(),
        ok: true,
        result: json!("done"),
    };
    t.ack(thing, answer, now).unwrap()
}

fn kinds_and_ids(entries: &[Value]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or("").to_owned(),
                e["id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Run in a child process by `a_crash_loses_nothing_flushed_and_replays_nothing_closed`: the
/// first part is made durable, the rest only with `MQTTER_THINGS_FLUSH=1`; then the process
/// ends without closing its store, as a crash would.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("MQTTER_THINGS_CRASH") else {
        return;
    };
    let w = open(Path::new(&dir));
    let t = &w.things;
    let claim = t.claim_code("door", None, 1_000).unwrap();
    t.bind("alice", &claim.code, 1_000).unwrap();
    // door is offline: three commands queue; c3's ttl is one second.
    for n in 1..=3 {
        let ttl = if n == 3 { 1 } else { 60 };
        let sent = command(t, "alice", "door", json!({ "n": n, "ttl": ttl }), 2_000);
        assert!(matches!(sent, Sent::Queued { .. }));
    }
    t.publish_state("door", br#"{"open":true}"#, false, None, 2_000)
        .unwrap();
    t.connected("door", 5_000).unwrap();
    let (queued, _) = t.take_queued("door", 1, 5_000).unwrap();
    assert_eq!(queued.len(), 2, "c1 and c2 given, c3 timed out");
    // The device acknowledges both PUBLISHes: handed over.
    for cmd in &queued {
        assert!(t.handed_over("door", cmd.seq).unwrap());
    }
    ack(t, "door", "thing:door#1", 6_000);
    w.store.flush().unwrap();
    // Not durable unless flushed below.
    ack(t, "door", "thing:door#2", 6_200);
    t.disconnected("door", 6_500).unwrap();
    let sent = command(t, "alice", "door", json!({ "n": 4 }), 7_000);
    assert!(matches!(sent, Sent::Queued { .. }));
    t.publish_state("door", br#"{"open":false}"#, false, None, 7_000)
        .unwrap();
    if std::env::var("MQTTER_THINGS_FLUSH").as_deref() == Ok("1") {
        w.store.flush().unwrap();
    }
    std::process::exit(0);
}

/// What `take_queued` gives door's device at `now`, as the envelopes it receives.
fn taken(t: &Things, now: u64) -> (Vec<Value>, Vec<Effect>) {
    let (queued, effects) = t.take_queued("door", 1, now).unwrap();
    (queued.iter().map(|c| c.envelope()).collect(), effects)
}

fn crash(flush: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("MQTTER_THINGS_CRASH", dir.path())
        .env("MQTTER_THINGS_FLUSH", if flush { "1" } else { "0" })
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the child failed: {status}");
    dir
}

#[test]
fn a_crash_loses_nothing_flushed_and_replays_nothing_closed() {
    // Ended after the first flush: what came after it (the answer to c2, c4, the second
    // state) may or may not have reached the disk (sled writes each batch out at once, without
    // a sync), but each is there whole or not at all; what was flushed is all there.
    let dir = crash(false);
    let w = open(dir.path());
    let t = &w.things;
    let open_ids: Vec<String> = t
        .open_commands("door")
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    for closed in ["thing:door#1", "thing:door#3"] {
        assert!(!open_ids.iter().any(|id| id == closed), "{closed} reopened");
    }
    let c2_open = open_ids.iter().any(|id| id == "thing:door#2");
    let c4_there = open_ids.iter().any(|id| id == "thing:door#5");
    let state = t.current_state("door").unwrap();
    match state.version {
        1 => assert_eq!(state.state, json!({"open": true})),
        2 => assert_eq!(state.state, json!({"open": false})),
        v => panic!("state version {v}"),
    }
    let feed = t.feed_after("alice", 0, 100).unwrap();
    let mut expected = vec![
        ("cmd.timeout".to_string(), "thing:door#3".to_string()),
        ("cmd.ack".to_string(), "thing:door#1".to_string()),
    ];
    if !c2_open {
        expected.push(("cmd.ack".to_string(), "thing:door#2".to_string()));
    }
    assert_eq!(kinds_and_ids(&feed), expected);
    // Handed over before the crash: never again. Only c4, if it is there, is still queued.
    let (queued, effects) = taken(t, 8_000);
    let expected: Vec<(String, String)> = if c4_there {
        vec![("cmd".to_string(), "thing:door#5".to_string())]
    } else {
        Vec::new()
    };
    assert_eq!(kinds_and_ids(&queued), expected);
    assert!(effects.is_empty());
    // What is open times out once; what was answered or timed out never again.
    let effects = t.sweep(70_000).unwrap();
    assert_eq!(
        effects.len(),
        usize::from(c2_open) + usize::from(c4_there),
        "{effects:?}"
    );
    assert!(t.sweep(80_000).unwrap().is_empty());
    let audit = t.audit("alice", "door", None, None).unwrap();
    let outcomes: Vec<(u64, String)> = audit
        .entries
        .iter()
        .map(|e| {
            (
                e.seq,
                e.to_json()["result"]["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Seq 4 was the first state change, seq 6 the second: not in the audit of commands.
    let mut expected = Vec::new();
    if c4_there {
        expected.push((5, "timeout".to_string()));
    }
    let c2 = if c2_open { "timeout" } else { "acked" };
    expected.extend([
        (3, "timeout".to_string()),
        (2, c2.to_string()),
        (1, "acked".to_string()),
    ]);
    assert_eq!(outcomes, expected);
    drop(w);

    // Flushed: everything is there; c4 is handed over once, across another reopen.
    let dir = crash(true);
    let w = open(dir.path());
    let t = &w.things;
    let state = t.current_state("door").unwrap();
    assert_eq!((state.version, state.state), (2, json!({"open": false})));
    let open_ids: Vec<String> = t
        .open_commands("door")
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(open_ids, ["thing:door#5"]);
    let (queued, _) = taken(t, 8_000);
    assert_eq!(
        kinds_and_ids(&queued),
        [("cmd".to_string(), "thing:door#5".to_string())]
    );
    assert_eq!(queued[0]["body"], json!({"n": 4}));
    assert!(t.handed_over("door", 5).unwrap());
    w.store.flush().unwrap();
    drop(w);
    let w = open(dir.path());
    let t = &w.things;
    assert!(t.take_queued("door", 1, 9_000).unwrap().0.is_empty());
    assert!(
        t.ack(
            "door",
            AckRequest {
                id: "thing:door#2".into(),
                ok: true,
                result: Value::Null
            },
            9_000
        )
        .is_err(),
        "answered before the crash"
    );
    let effects = t.sweep(70_000).unwrap();
    let timed_out: Vec<&Value> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Feed { envelope, .. } => Some(&envelope["id"]),
            _ => None,
        })
        .collect();
    assert_eq!(timed_out, [&json!("thing:door#5")]);
}

fn feed_of<'a>(effects: &'a [Effect], to: &str) -> Vec<&'a Value> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Feed {
                to: t, envelope, ..
            } if t == to => Some(envelope),
            _ => None,
        })
        .collect()
}

#[test]
fn a_chain_keeps_its_id_with_rising_hops_through_linked_things() {
    let dir = tempfile::tempdir().unwrap();
    let w = open(dir.path());
    let t = &w.things;
    for thing in ["door", "lamp"] {
        let claim = t.claim_code(thing, None, 1).unwrap();
        t.bind("alice", &claim.code, 1).unwrap();
        t.connected(thing, 2).unwrap();
    }
    t.link("alice", "door", "lamp", 3).unwrap();
    // alice -> door
    let req = CommandRequest::from_payload("alice", "door", br#"{"ring":true}"#, 65536).unwrap();
    let (sent, effects) = t.command(req, 10).unwrap();
    let Effect::Command {
        envelope: to_door, ..
    } = &effects[0]
    else {
        panic!("{effects:?}")
    };
    assert_eq!(to_door["chain"], json!({"id": sent.id(), "hop": 0}));
    // door -> lamp, continuing the chain it was given.
    let payload = json!({ "on": true, "chain": to_door["chain"] }).to_string();
    let req = CommandRequest::from_payload("door", "lamp", payload.as_bytes(), 65536).unwrap();
    let (to_lamp_sent, effects) = t.command(req, 11).unwrap();
    let Effect::Command {
        envelope: to_lamp, ..
    } = &effects[0]
    else {
        panic!("{effects:?}")
    };
    assert_eq!(to_lamp["from"], "door");
    assert_eq!(to_lamp["chain"], json!({"id": sent.id(), "hop": 1}));
    // lamp's event, naming the command it follows from, reaches alice's feed and door's
    // subscription.
    let payload = json!({ "lit": true, "cmd": to_lamp_sent.id() }).to_string();
    let (event, effects) = t
        .publish_event("lamp", payload.as_bytes(), None, 12)
        .unwrap();
    assert_eq!(event["chain"], json!({"id": sent.id(), "hop": 2}));
    assert_eq!(event["body"], json!({"lit": true}));
    assert_eq!(feed_of(&effects, "alice")[0]["chain"]["hop"], 2);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Publish { topic, .. } if topic == "thing/lamp/event"))
    );
    assert!(t.may_view("door", "lamp"));
    // The answers go back along the chain.
    let effects = ack(t, "lamp", to_lamp_sent.id(), 13);
    let to_door_feed = feed_of(&effects, "door");
    assert_eq!(to_door_feed[0]["type"], "cmd.ack");
    assert_eq!(to_door_feed[0]["chain"], json!({"id": sent.id(), "hop": 2}));
    let effects = ack(t, "door", sent.id(), 14);
    assert_eq!(
        feed_of(&effects, "alice")[0]["chain"],
        json!({"id": sent.id(), "hop": 1})
    );
    // Unlinked: neither commands nor sees the other any more.
    t.unlink("alice", "lamp", "door", 15).unwrap();
    let req = CommandRequest::from_payload("door", "lamp", b"{}", 65536).unwrap();
    assert_eq!(t.command(req, 16).unwrap_err().code(), "not_authorized");
    assert!(!t.may_view("door", "lamp") && !t.may_view("lamp", "door"));
    // The audit of lamp says who commanded it, through which chain, and the result.
    let audit = t.audit("alice", "lamp", None, None).unwrap();
    let newest = audit.entries[0].to_json();
    assert_eq!(newest["from"], "door");
    assert_eq!(newest["result"]["kind"], "refused");
    let first = audit.entries.last().unwrap().to_json();
    assert_eq!(first["from"], "door");
    assert_eq!(first["chain"], json!({"id": sent.id(), "hop": 1}));
    assert_eq!(first["result"]["kind"], "acked");
    assert_eq!(first["result"]["result"], "done");
}
