//! Mutated packets: well-formed v3.1.1 and v5 packet sequences with random bytes flipped,
//! replaced, inserted, cut or repeated, sent by many clients in turn. Whatever the bytes, the
//! broker must keep running and keep serving well-behaved clients: bad input ends at most the
//! connection that sent it [MQTT-4.13.1-1]. The cases come from fixed seeds (the case number),
//! so a failure names the cases that reproduce it.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::im::{World, friends, persons};
use crate::common::raw::{self, Client, Connect, PUBREL};
use crate::common::{Daemon, WAIT};

/// Cases per run (each is one connection); `MQTTER_FUZZ_CASES` asks for more, for a longer
/// search than the suite's.
const CASES: u64 = 400;

/// A sentinel round trip after this many cases.
const CHECK_EVERY: u64 = 50;

/// A well-formed sequence for case `case`: a CONNECT (sometimes with a will, credentials or
/// v5 properties) and the packets a busy client sends.
fn valid_sequence(rng: &mut StdRng, case: u64) -> Vec<u8> {
    let v5 = rng.random_bool(0.5);
    let id = format!("fuzz-{case}");
    let mut connect = if v5 {
        Connect::v5(&id).session_expiry(rng.random_range(0..120))
    } else {
        Connect::v3(&id)
    };
    connect = connect.clean(rng.random_bool(0.7));
    if rng.random_bool(0.3) {
        connect = connect.will("fuzz/will", b"gone", rng.random_range(0..3), false);
        if v5 && rng.random_bool(0.5) {
            connect = connect.will_delay(rng.random_range(0..3));
        }
    }
    if rng.random_bool(0.2) {
        connect = connect.login("nobody", "wrong");
    }
    let mut bytes = connect.encode();
    let topics = [
        "fuzz/a",
        "fuzz/b/c",
        "fuzz/+/c",
        "fuzz/#",
        "$SYS/broker/uptime",
        "person/p/inbox",
        "$im/friends",
        "",
    ];
    for _ in 0..rng.random_range(1..6) {
        let topic = topics[rng.random_range(0..topics.len())];
        let packet_id = rng.random_range(1..5);
        let packet = match rng.random_range(0..6) {
            0 => raw::subscribe(v5, packet_id, &[(topic, rng.random_range(0..3))]),
            1 => raw::ack(PUBREL, packet_id),
            2 => raw::frame(0xC0, &[]), // PINGREQ
            3 => raw::unsubscribe(v5, packet_id, topic),
            _ => {
                let payload: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
                raw::publish(
                    v5,
                    topic,
                    rng.random_range(0..3),
                    rng.random_bool(0.2),
                    packet_id,
                    &payload,
                )
            }
        };
        bytes.extend(packet);
    }
    if rng.random_bool(0.3) {
        bytes.extend(raw::disconnect());
    }
    bytes
}

/// Damage `bytes` in one to four places. Half the time the CONNECT is left whole, so that the
/// damage reaches what is parsed after it.
fn mutate(rng: &mut StdRng, bytes: &mut Vec<u8>) {
    let protected = if rng.random_bool(0.5) {
        let (len, used) = raw::read_varint(&bytes[1..]);
        (1 + used + len).min(bytes.len() - 1)
    } else {
        0
    };
    damage(rng, bytes, protected);
}

/// Damage `bytes` from `from` on in one to four places: a bit flipped, a byte replaced, junk
/// inserted, the rest cut off, a piece repeated.
fn damage(rng: &mut StdRng, bytes: &mut Vec<u8>, from: usize) {
    for _ in 0..rng.random_range(1..5) {
        if bytes.len() <= from {
            return;
        }
        let at = rng.random_range(from..bytes.len());
        match rng.random_range(0..5) {
            0 => bytes[at] ^= 1 << rng.random_range(0..8),
            1 => bytes[at] = rng.random(),
            2 => {
                let junk: Vec<u8> = (0..rng.random_range(1..8)).map(|_| rng.random()).collect();
                bytes.splice(at..at, junk);
            }
            3 => bytes.truncate(at.max(from + 1)),
            _ => {
                let end = (at + rng.random_range(1..16)).min(bytes.len());
                let piece = bytes[at..end].to_vec();
                bytes.splice(at..at, piece);
            }
        }
    }
}

/// A subscriber and a publisher on a topic no case uses: one round trip proves the broker
/// still routes.
struct Sentinel {
    sub: Client,
    publisher: Client,
    round: u32,
}

impl Sentinel {
    fn new(daemon: &Daemon) -> Sentinel {
        let mut sub = Client::session(daemon.mqtt, &Connect::v5("sentinel-sub"));
        assert_eq!(sub.subscribe(&[("sentinel/alive", 1)]), [1]);
        let publisher = Client::session(daemon.mqtt, &Connect::v3("sentinel-pub"));
        Sentinel {
            sub,
            publisher,
            round: 0,
        }
    }

    fn check(&mut self, after: &str) {
        self.round += 1;
        let payload = format!("round {}", self.round);
        assert_eq!(
            self.publisher
                .publish("sentinel/alive", 1, false, payload.as_bytes()),
            0,
            "the sentinel's PUBLISH was not acknowledged after {after}"
        );
        let got = self
            .sub
            .next_publish_within(WAIT)
            .unwrap_or_else(|| panic!("the broker stopped routing after {after}"));
        assert_eq!(got.payload_str(), payload, "after {after}");
    }
}

/// Send the case's bytes and let the connection go (closed at once, or left open a moment
/// for half the cases, so that the broker also meets damage on live connections).
fn send_case(daemon: &Daemon, bytes: &[u8], linger: bool) {
    let Ok(mut stream) = TcpStream::connect(daemon.mqtt) else {
        panic!("the broker stopped accepting connections");
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = stream.write_all(bytes);
    if linger {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
        let _ = std::io::Read::read(&mut stream, &mut [0u8; 512]);
    }
    let _ = stream.shutdown(Shutdown::Both);
}

#[test]
fn mutated_packets_never_stop_the_broker() {
    let mut daemon = Daemon::start();
    let mut sentinel = Sentinel::new(&daemon);
    let cases = std::env::var("MQTTER_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    for case in 0..cases {
        let mut rng = StdRng::seed_from_u64(case);
        let mut bytes = valid_sequence(&mut rng, case);
        mutate(&mut rng, &mut bytes);
        send_case(&daemon, &bytes, rng.random_bool(0.5));
        if (case + 1) % CHECK_EVERY == 0 {
            sentinel.check(&format!("cases up to {case} (seed = case number)"));
        }
    }
    assert!(daemon.is_running(), "the daemon exited");
    sentinel.check("all cases");
}

/// IM payloads a person sends: message bodies and requests, whole (then damaged or not).
const IM_BODIES: &[&str] = &[
    r#"{"text":"hi","cid":"c-1"}"#,
    r#"{"text":"hello","attachments":[{"kind":"image","size":12}]}"#,
    "plain text",
    r#"{"text":"in a meeting"}"#,
    r#"{"id":"r1","op":"friend.request","peer":"carol"}"#,
    r#"{"id":"r2","op":"friend.remove","peer":"bob","retain_secs":5}"#,
    r#"{"id":"r3","op":"friend.restore","peer":"bob"}"#,
    r#"{"id":"r4","op":"block","peer":"carol"}"#,
    r#"{"id":"r5","op":"group.create","group":"g2","open":true}"#,
    r#"{"id":"r6","op":"group.invite","group":"family","member":"carol"}"#,
    r#"{"id":"r7","op":"group.kick","group":"family","member":"bob"}"#,
    r#"{"id":"r8","op":"history","conv":"person:alice|person:bob","limit":5}"#,
    r#"{"id":"r9","op":"receipt","conv":"group:family","seq":1,"kind":"read"}"#,
    r#"{"id":"r10","op":"group.members","group":"family"}"#,
    r#"{"id":"r11","op":"directory.search","q":"a"}"#,
    r#"{"id":"r12","op":"recycle.list"}"#,
];

/// An IM sequence: a person's device logs in (the CONNECT stays whole) and sends messages,
/// requests, friend requests (SUBSCRIBE) and unfriendings (UNSUBSCRIBE), some of whose JSON
/// bodies are damaged before framing.
fn im_sequence(rng: &mut StdRng, case: u64) -> (Vec<u8>, usize) {
    let v5 = rng.random_bool(0.5);
    let person = ["alice", "bob", "carol"][rng.random_range(0..3)];
    let client_id = format!("{person}:fuzz{case}");
    let connect = if v5 {
        Connect::v5(&client_id)
    } else {
        Connect::v3(&client_id)
    };
    let mut bytes = connect
        .clean(rng.random_bool(0.5))
        .login(person, &format!("{person}-pw"))
        .encode();
    let connect_len = bytes.len();
    let topics = [
        "person/alice/inbox",
        "person/bob/inbox",
        "person/carol/inbox",
        "person/alice/status",
        "group/family",
        "$im/req",
        "$im/nothing",
    ];
    for _ in 0..rng.random_range(1..6) {
        let topic = topics[rng.random_range(0..topics.len())];
        let packet_id = rng.random_range(1..5);
        let packet = match rng.random_range(0..5) {
            0 => raw::subscribe(v5, packet_id, &[(&topic.replace("inbox", "status"), 1)]),
            // UNSUBSCRIBE: unfriend, leave
            1 => raw::unsubscribe(v5, packet_id, &topic.replace("inbox", "status")),
            _ => {
                let mut body = IM_BODIES[rng.random_range(0..IM_BODIES.len())]
                    .as_bytes()
                    .to_vec();
                if rng.random_bool(0.5) && !body.is_empty() {
                    damage(rng, &mut body, 0);
                }
                raw::publish(v5, topic, rng.random_range(0..3), false, packet_id, &body)
            }
        };
        bytes.extend(packet);
    }
    (bytes, connect_len)
}

/// Persons who are fuzzed (alice, bob and carol, with a group) and two who are not (dave and
/// erin): the cases cannot change dave and erin's friendship, so a direct message between them
/// proves the IM world still works.
#[test]
fn mutated_im_traffic_never_stops_the_broker() {
    let yaml = persons(&["alice", "bob", "carol", "dave", "erin"])
        + friends(&[("alice", "bob"), ("dave", "erin")]).as_str()
        + "groups:\n  - { id: family, owner: alice, members: [bob] }\n";
    let world = World::with(&yaml, "");
    let daemon = &world.daemon;
    let mut erin = Client::session(
        daemon.mqtt,
        &Connect::v5("erin:sentinel").login("erin", "erin-pw"),
    );
    let mut dave = Client::session(
        daemon.mqtt,
        &Connect::v3("dave:sentinel").login("dave", "dave-pw"),
    );
    let mut check = |after: &str, round: u64| {
        let text = format!("round {round}");
        let body = format!(r#"{{"text":"{text}"}}"#);
        assert_eq!(
            dave.publish("person/erin/inbox", 1, false, body.as_bytes()),
            0,
            "dave's message was not acknowledged after {after}"
        );
        loop {
            let got = erin
                .next_publish_within(WAIT)
                .unwrap_or_else(|| panic!("erin got nothing after {after}"));
            if got.topic == "person/erin/inbox" && got.payload_str().contains(&text) {
                break;
            }
        }
    };
    check("the start", 0);
    let cases = std::env::var("MQTTER_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    for case in 0..cases {
        let mut rng = StdRng::seed_from_u64(case);
        let (mut bytes, connect_len) = im_sequence(&mut rng, case);
        if rng.random_bool(0.3) {
            let mut rest = bytes.split_off(connect_len);
            damage(&mut rng, &mut rest, 0);
            bytes.extend(rest);
        }
        send_case(daemon, &bytes, rng.random_bool(0.5));
        if (case + 1) % CHECK_EVERY == 0 {
            check(
                &format!("IM cases up to {case} (seed = case number)"),
                case + 1,
            );
        }
    }
    check("all IM cases", cases + 1);
}
