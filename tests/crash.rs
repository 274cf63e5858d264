//! The crash test: the daemon is killed with SIGKILL while a client streams QoS 1 (or QoS 2)
//! messages to a persistent subscriber's topic. After a restart on the same store, every message
//! the broker acknowledged reaches the subscriber (duplicates allowed for QoS 1, none missing),
//! and acknowledged retained messages are still retained.
//!
//! With `durability = "sync"` (the default) an acknowledgement means "durable": that is the
//! promise under test.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::im::{World, friends, password, persons};
use crate::common::raw::{self, Client, Connect, PUBACK, PUBCOMP, PUBREC};
use crate::common::{
    Daemon, WAIT, eventually, nothing_comes_before_a_later_message, offline_subscriber,
};

/// Room for everything the streamer can send before the kill.
const CONFIG: &str = "[limits]\nmax_queued = 1000000\n";

/// Unacknowledged PUBLISHes the streamer keeps in flight.
const WINDOW: usize = 16;

/// Acknowledged messages to wait for before the kill.
const BEFORE_KILL: usize = 300;

/// Connect with `connect`, then publish messages numbered 0, 1, 2, ... (the payload is the
/// number, padded with spaces to `width` bytes) at `qos` on `topic`, keeping `WINDOW` in flight,
/// until the connection breaks. Returns the numbers the broker acknowledged (PUBACK, or PUBREC
/// for QoS 2, with a success code); `progress` counts them.
pub fn stream_until_broken(
    addr: SocketAddr,
    connect: &Connect,
    qos: u8,
    topic: &str,
    width: usize,
    progress: Arc<AtomicUsize>,
) -> BTreeSet<u32> {
    let v5 = connect.v5;
    let mut client = Client::session(addr, connect);
    let mut in_flight: HashMap<u16, u32> = HashMap::new();
    let mut acked = BTreeSet::new();
    let mut seq = 0u32;
    loop {
        while in_flight.len() < WINDOW {
            let id = (seq % 65535) as u16 + 1;
            let payload = format!("{seq:<width$}");
            let packet = raw::publish(v5, topic, qos, false, id, payload.as_bytes());
            if client.send(&packet).is_err() {
                return acked;
            }
            in_flight.insert(id, seq);
            seq += 1;
        }
        let packet = match client.recv_within(WAIT) {
            Ok(Some(packet)) => packet,
            Ok(None) => return acked,
            Err(()) => panic!("no acknowledgement within {WAIT:?}"),
        };
        match packet.kind {
            PUBACK | PUBREC => {
                let id = packet.packet_id();
                let n = in_flight[&id];
                if packet.code() < 0x80 {
                    acked.insert(n);
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                if packet.kind == PUBACK || packet.code() >= 0x80 {
                    in_flight.remove(&id);
                } else if client.send(&raw::ack(raw::PUBREL, id)).is_err() {
                    return acked;
                }
            }
            PUBCOMP => {
                in_flight.remove(&packet.packet_id());
            }
            _ => {}
        }
    }
}

/// Stream to `topic` in a thread (connected with `connect`), wait for `BEFORE_KILL`
/// acknowledgements, SIGKILL the daemon mid-stream, and return what was acknowledged.
fn stream_and_kill(
    daemon: &mut Daemon,
    connect: Connect,
    qos: u8,
    topic: &'static str,
) -> BTreeSet<u32> {
    let progress = Arc::new(AtomicUsize::new(0));
    let addr = daemon.mqtt;
    let counter = progress.clone();
    let streamer =
        std::thread::spawn(move || stream_until_broken(addr, &connect, qos, topic, 0, counter));
    eventually("acknowledged messages before the kill", || {
        progress.load(Ordering::Relaxed) >= BEFORE_KILL || streamer.is_finished()
    });
    daemon.kill();
    let acked = streamer.join().expect("streamer");
    assert!(
        acked.len() >= BEFORE_KILL,
        "the stream broke before the kill: {} acknowledged",
        acked.len()
    );
    acked
}

/// Reconnect the persistent session and read until every acknowledged number has arrived.
/// Returns how many times each number arrived.
pub fn receive_all(
    daemon: &Daemon,
    connect: &Connect,
    acked: &BTreeSet<u32>,
) -> HashMap<u32, usize> {
    let (mut sub, connack) = Client::connect(daemon.mqtt, connect);
    assert_eq!(connack.code(), 0);
    // The session survived the crash [MQTT-3.2.2-2].
    assert!(connack.session_present(), "session lost in the crash");
    let mut seen: HashMap<u32, usize> = HashMap::new();
    let mut missing = acked.len();
    while missing > 0 {
        let Some(msg) = sub.next_publish_within(WAIT) else {
            let lost: Vec<u32> = acked
                .iter()
                .filter(|n| !seen.contains_key(n))
                .copied()
                .collect();
            panic!(
                "{} acknowledged messages lost in the crash (of {}), e.g. {:?}",
                lost.len(),
                acked.len(),
                &lost[..lost.len().min(10)]
            );
        };
        let n: u32 = msg.payload_str().trim_end().parse().expect("a number");
        let count = seen.entry(n).or_default();
        *count += 1;
        if *count == 1 && acked.contains(&n) {
            missing -= 1;
        }
    }
    seen
}

/// v3.1.1: the subscriber (clean session 0) is offline while the stream runs [MQTT-3.1.2-5];
/// its queue must survive the crash.
#[test]
fn acknowledged_qos1_messages_survive_sigkill_for_an_offline_subscriber() {
    let mut daemon = Daemon::start_with(&["--allow-anonymous"], Some(CONFIG));
    let session = Connect::v3("keeper").clean(false);
    let mut sub = Client::session(daemon.mqtt, &session);
    assert_eq!(sub.subscribe(&[("crash/offline", 1)]), [1]);
    sub.disconnect();

    let acked = stream_and_kill(&mut daemon, Connect::v3("streamer"), 1, "crash/offline");
    daemon.restart();
    receive_all(&daemon, &session, &acked);
}

/// v5: the subscriber stays connected but never reads, so messages pile up in flight (sent,
/// unacknowledged) and in its queue; both must survive the crash and be sent again
/// [MQTT-4.4.0-1].
#[test]
fn acknowledged_qos1_messages_survive_sigkill_for_a_stalled_subscriber() {
    let mut daemon = Daemon::start_with(&["--allow-anonymous"], Some(CONFIG));
    let mut sub = Client::session(daemon.mqtt, &Connect::v5("stalled").session_expiry(300));
    assert_eq!(sub.subscribe(&[("crash/stalled", 1)]), [1]);

    let acked = stream_and_kill(&mut daemon, Connect::v5("streamer"), 1, "crash/stalled");
    drop(sub);
    daemon.restart();
    let session = Connect::v5("stalled").clean(false).session_expiry(300);
    receive_all(&daemon, &session, &acked);
}

/// QoS 2 end to end: every message whose PUBREC the publisher got arrives exactly once after
/// the crash [MQTT-4.3.3-1].
#[test]
fn acknowledged_qos2_messages_survive_sigkill_exactly_once() {
    let mut daemon = Daemon::start_with(&["--allow-anonymous"], Some(CONFIG));
    let session = Connect::v3("keeper2").clean(false);
    let mut sub = Client::session(daemon.mqtt, &session);
    assert_eq!(sub.subscribe(&[("crash/qos2", 2)]), [2]);
    sub.disconnect();

    let acked = stream_and_kill(&mut daemon, Connect::v3("streamer"), 2, "crash/qos2");
    daemon.restart();
    let seen = receive_all(&daemon, &session, &acked);
    let twice: Vec<u32> = seen
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(n, _)| *n)
        .collect();
    assert!(
        twice.is_empty(),
        "QoS 2 messages delivered twice: {twice:?}"
    );
}

/// A retained QoS 1 message acknowledged before the SIGKILL is retained after the restart, and
/// so is the clearing of another [MQTT-3.3.1-5] [MQTT-3.3.1-10].
#[test]
fn acknowledged_retained_messages_survive_sigkill() {
    let mut daemon = Daemon::start();
    let mut publisher = Client::session(daemon.mqtt, &Connect::v3("retainer"));
    assert_eq!(publisher.publish("crash/kept/old", 1, true, b"to clear"), 0);
    for i in 0..20 {
        let topic = format!("crash/kept/{i}");
        assert_eq!(
            publisher.publish(&topic, 1, true, format!("value {i}").as_bytes()),
            0
        );
    }
    assert_eq!(publisher.publish("crash/kept/old", 1, true, b""), 0);
    daemon.kill();
    drop(publisher);
    daemon.restart();

    let mut sub = Client::session(daemon.mqtt, &Connect::v3("reader"));
    assert_eq!(sub.subscribe(&[("crash/kept/#", 1)]), [1]);
    let mut got: HashMap<String, String> = HashMap::new();
    while got.len() < 20 {
        let msg = sub.next_publish();
        assert!(msg.retain, "RETAIN=1 on a retained message [MQTT-3.3.1-8]");
        assert_ne!(
            msg.topic, "crash/kept/old",
            "a cleared retained message came back"
        );
        got.insert(msg.topic.clone(), msg.payload_str().to_owned());
    }
    for i in 0..20 {
        assert_eq!(got[&format!("crash/kept/{i}")], format!("value {i}"));
    }
    // Nothing else is retained under the filter (the cleared topic stays cleared).
    let mut marker = Client::session(daemon.mqtt, &Connect::v3("marker"));
    marker.publish("crash/kept/zz-marker", 1, false, b"end");
    let next = sub.next_publish();
    assert_eq!(next.topic, "crash/kept/zz-marker");
}

/// Kill the daemon after a durable write (a retained QoS 1 message), then restart it: the
/// write's acknowledgement means every earlier write (a stored will, say) was durable too.
fn crash_after_a_durable_write(daemon: &mut Daemon) {
    let mut marker = Client::session(daemon.mqtt, &Connect::v3("marker"));
    assert_eq!(marker.publish("crash/marker", 1, true, b"flushed"), 0);
    daemon.kill();
    daemon.restart();
}

/// A client connected with a will when the broker crashes closed its connection abnormally: its
/// will is published after the restart [MQTT-3.1.2-8]. A client that connected without one, or
/// left with a normal DISCONNECT, leaves none behind.
#[test]
fn wills_of_clients_connected_at_the_crash_are_published_after_the_restart() {
    let mut daemon = Daemon::start();
    let session = offline_subscriber(daemon.mqtt, "will-watcher", "crash/will/#");

    let _dying = Client::session(
        daemon.mqtt,
        &Connect::v3("dying").will("crash/will/dying", b"gone in the crash", 1, false),
    );
    let polite = Client::session(
        daemon.mqtt,
        &Connect::v3("polite").will("crash/will/polite", b"never sent", 1, false),
    );
    polite.disconnect();
    crash_after_a_durable_write(&mut daemon);
    let mut watcher = Client::session(daemon.mqtt, &session);
    let will = watcher
        .next_publish_within(WAIT)
        .expect("the will after the restart");
    assert_eq!(will.topic, "crash/will/dying");
    assert_eq!(will.payload_str(), "gone in the crash");
    // Nothing else: the polite client's will was dropped with its DISCONNECT.
    nothing_comes_before_a_later_message(daemon.mqtt, &mut watcher, "crash/will/after");
}

/// v5: a client whose connection broke had its will waiting for its Will Delay Interval when the
/// broker crashed: the will was accepted, so it is not lost; it goes out after the restart (the
/// client has not come back) [MQTT-3.1.3-9].
#[test]
fn a_delayed_will_waiting_at_the_crash_is_published_after_the_restart() {
    let mut daemon = Daemon::start();
    let session = offline_subscriber(daemon.mqtt, "delay-watcher", "crash/late-will");

    let broken = Client::session(
        daemon.mqtt,
        &Connect::v5("broken")
            .session_expiry(60)
            .will("crash/late-will", b"gone a while ago", 1, false)
            .will_delay(3),
    );
    drop(broken); // no DISCONNECT: the will waits for its delay
    crash_after_a_durable_write(&mut daemon);
    let mut watcher = Client::session(daemon.mqtt, &session);
    let will = watcher
        .next_publish_within(WAIT)
        .expect("the delayed will after the restart");
    assert_eq!(will.topic, "crash/late-will");
    assert_eq!(will.payload_str(), "gone a while ago");
}

/// A QoS 2 message sent to a persistent subscriber that had not answered yet when the broker
/// crashed is sent again after the restart with DUP and the same packet id, so a client that
/// already has it knows it is the same message, not a new one [MQTT-4.3.3-9], [MQTT-4.4.0-1].
#[test]
fn a_qos2_message_in_flight_at_the_crash_keeps_its_packet_id() {
    let mut daemon = Daemon::start();
    let session = Connect::v3("q2-keeper").clean(false);
    let mut sub = Client::session(daemon.mqtt, &session);
    assert_eq!(sub.subscribe(&[("crash/q2", 2)]), [2]);
    let mut publisher = Client::session(daemon.mqtt, &Connect::v3("q2-pub"));
    assert_eq!(publisher.publish("crash/q2", 2, false, b"once"), 0);
    // Received and not answered (no PUBREC).
    let first = unanswered_publish(&mut sub);
    assert_eq!((first.qos, first.dup), (2, false));
    // A durable write after the send: its acknowledgement means the send's record is durable.
    assert_eq!(publisher.publish("crash/q2-marker", 1, true, b"flushed"), 0);

    let mut sub = resume_after_a_crash(&mut daemon, &session);
    let again = unanswered_publish(&mut sub);
    assert_eq!(again.payload, b"once");
    assert!(again.dup, "a resend carries DUP");
    assert_eq!(
        again.packet_id, first.packet_id,
        "a resend keeps its packet id"
    );
}

/// A QoS 2 message sent to a persistent subscriber keeps its packet id across a crash even when
/// the record of its sending was not yet stored: the id follows from the message's place in the
/// session's queue, so a client that already has it recognises the resend [MQTT-4.3.3-9]. Other
/// messages went first, so a fresh numbering would give another id; the message is queued
/// (and stored) while the subscriber is away and sent when it is back, and nothing flushes the
/// store after that (a periodic flush every ten minutes).
#[test]
fn a_qos2_message_keeps_its_packet_id_even_if_its_sending_was_not_stored() {
    let mut daemon = daemon_without_periodic_flush();
    let session = Connect::v3("q2-numbered").clean(false);
    let mut sub = Client::session(daemon.mqtt, &session);
    assert_eq!(sub.subscribe(&[("crash/q2n", 2)]), [2]);
    let mut publisher = Client::session(daemon.mqtt, &Connect::v3("q2n-pub"));
    for n in 0..3 {
        assert_eq!(publisher.publish("crash/q2n", 1, false, b"before"), 0);
        assert_eq!(sub.next_publish().payload, b"before", "message {n}");
    }
    sub.disconnect();
    assert_eq!(publisher.publish("crash/q2n", 2, false, b"once"), 0);
    let mut sub = Client::session(daemon.mqtt, &session);
    let first = unanswered_publish(&mut sub);
    assert_eq!((first.qos, first.payload.as_slice()), (2, &b"once"[..]));

    let mut sub = resume_after_a_crash(&mut daemon, &session);
    let again = unanswered_publish(&mut sub);
    assert_eq!(again.payload, b"once");
    assert_eq!(
        again.packet_id, first.packet_id,
        "a resend keeps its packet id"
    );
}

/// A subscriber that answered a QoS 2 message with PUBREC gets the PUBREL only once the release
/// is stored, so a crash after it resends the PUBREL, never the PUBLISH, which the client would
/// take for a new message after completing the flow [MQTT-4.3.3-9], [MQTT-4.4.0-1]. Nothing else
/// flushes the store here (a periodic flush every ten minutes).
#[test]
fn a_released_qos2_message_is_released_again_after_a_crash_not_sent_again() {
    let mut daemon = daemon_without_periodic_flush();
    let session = Connect::v3("q2-releaser").clean(false);
    let mut sub = Client::session(daemon.mqtt, &session);
    assert_eq!(sub.subscribe(&[("crash/q2r", 2)]), [2]);
    let mut publisher = Client::session(daemon.mqtt, &Connect::v3("q2r-pub"));
    assert_eq!(publisher.publish("crash/q2r", 2, false, b"once"), 0);
    let id = unanswered_publish(&mut sub).packet_id;
    sub.send(&raw::ack(PUBREC, id)).expect("send PUBREC");
    let release = sub.recv_kind(raw::PUBREL);
    assert_eq!(release.packet_id(), id);

    let mut sub = resume_after_a_crash(&mut daemon, &session);
    let next = sub.recv().expect("the PUBREL again");
    assert_eq!(
        (next.kind, next.packet_id()),
        (raw::PUBREL, id),
        "expected the PUBREL again, got {next:?}"
    );
}

/// A daemon whose store is flushed only when someone waits for it (the periodic flush comes
/// every ten minutes): what no acknowledgement waited for is not durable at a crash.
fn daemon_without_periodic_flush() -> Daemon {
    Daemon::start_with(&["--allow-anonymous"], Some("flush_interval_ms = 600000\n"))
}

/// The next PUBLISH `client` receives, decoded, not acknowledged.
fn unanswered_publish(client: &mut Client) -> raw::Publish {
    let packet = client.recv_kind(raw::PUBLISH);
    client.decode_publish(&packet)
}

/// SIGKILL, restart, and connect `session` again, which must be resumed.
fn resume_after_a_crash(daemon: &mut Daemon, session: &Connect) -> Client {
    daemon.kill();
    daemon.restart();
    let (client, connack) = Client::connect(daemon.mqtt, session);
    assert!(connack.session_present(), "the session was lost");
    client
}

/// The publisher's end of a QoS 2 flow after its PUBREC: PUBREL, then PUBCOMP.
fn release(publisher: &mut Client, id: u16) {
    publisher
        .send(&raw::ack(raw::PUBREL, id))
        .expect("send PUBREL");
    assert_eq!(publisher.recv_kind(PUBCOMP).packet_id(), id);
}

/// A QoS 2 flow from a publisher with a persistent session whose id was stored while in flight
/// (here by a SUBSCRIBE) and completed after: if the broker restarts before the completion is
/// stored, the id comes back. A new PUBLISH with that id (DUP = 0: not a resend) is then a new
/// message, delivered, not swallowed as a resend [MQTT-3.3.1-1], [MQTT-4.3.3-9].
#[test]
fn a_reused_qos2_packet_id_after_a_crash_is_a_new_message() {
    let mut daemon = Daemon::start();
    let watcher = offline_subscriber(daemon.mqtt, "q2-reuse-watcher", "crash/reuse");
    let session = Connect::v3("q2-reuser").clean(false);
    let mut publisher = Client::session(daemon.mqtt, &session);
    const ID: u16 = 5;
    let first = raw::publish(false, "crash/reuse", 2, false, ID, b"first");
    publisher.send(&first).expect("send PUBLISH");
    assert_eq!(publisher.recv_kind(PUBREC).packet_id(), ID);
    // The session record is written with the flow still open.
    assert_eq!(publisher.subscribe(&[("crash/other", 1)]), [1]);
    release(&mut publisher, ID);
    crash_after_a_durable_write(&mut daemon);

    let mut publisher = Client::session(daemon.mqtt, &session);
    let second = raw::publish(false, "crash/reuse", 2, false, ID, b"second");
    publisher.send(&second).expect("send PUBLISH");
    assert_eq!(publisher.recv_kind(PUBREC).packet_id(), ID);
    release(&mut publisher, ID);

    let mut watcher = Client::session(daemon.mqtt, &watcher);
    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        let msg = watcher
            .next_publish_within(WAIT)
            .unwrap_or_else(|| panic!("only {payloads:?} arrived"));
        payloads.push(msg.payload_str().to_owned());
    }
    assert_eq!(payloads, ["first", "second"]);
}

/// A publisher with a persistent session whose QoS 2 PUBLISH was routed, but whose PUBREC it
/// did not get before the broker crashed, sends it again (DUP) after the restart: the broker
/// stored the open flow's id with the routing, so it acknowledges the resend and does not
/// deliver the message twice [MQTT-4.3.3-9].
#[test]
fn a_qos2_resend_after_a_crash_is_not_delivered_twice() {
    let mut daemon = Daemon::start();
    let watcher = offline_subscriber(daemon.mqtt, "q2-resend-watcher", "crash/resend");
    let session = Connect::v3("q2-resender").clean(false);
    let mut publisher = Client::session(daemon.mqtt, &session);
    const ID: u16 = 7;
    publisher
        .send(&raw::publish(false, "crash/resend", 2, false, ID, b"once"))
        .expect("send PUBLISH");
    // The PUBREC means the routing is durable; the client acts as if it had not arrived.
    assert_eq!(publisher.recv_kind(PUBREC).packet_id(), ID);

    daemon.kill();
    daemon.restart();
    let mut publisher = Client::session(daemon.mqtt, &session);
    let mut resend = raw::publish(false, "crash/resend", 2, false, ID, b"once");
    resend[0] |= 0x08; // DUP
    publisher.send(&resend).expect("send the PUBLISH again");
    assert_eq!(publisher.recv_kind(PUBREC).packet_id(), ID);
    release(&mut publisher, ID);

    let mut watcher = Client::session(daemon.mqtt, &watcher);
    assert_eq!(watcher.next_publish().payload_str(), "once");
    nothing_comes_before_a_later_message(daemon.mqtt, &mut watcher, "crash/resend");
}

/// IM direct messages streamed at QoS 1 while the daemon is killed: after the restart the
/// recipient's sync replays every message whose PUBACK the sender got, in one unbroken run of
/// `seq` from 1 (the message log recovers to a consistent end, whatever the kill cut).
#[test]
fn acknowledged_im_messages_survive_sigkill() {
    let yaml = persons(&["alice", "bob"]) + friends(&[("alice", "bob")]).as_str();
    let mut world = World::with(&yaml, "[im]\nsync_max_per_conv = 1000000\n");
    let alice = Connect::v5("alice:streamer").login("alice", &password("alice"));
    let acked = stream_and_kill(&mut world.daemon, alice, 1, "person/bob/inbox");
    world.daemon.restart();

    let bob = Connect::v3("bob:reader").login("bob", &password("bob"));
    let mut bob = Client::session(world.daemon.mqtt, &bob);
    assert_replayed_unbroken(&mut bob, &acked);
}

/// Read `reader`'s sync up to `sync.done`: every number in `acked` must be among the text bodies
/// of the replayed messages, whose `seq` must run 1, 2, 3, ... without a gap or a repeat.
pub fn assert_replayed_unbroken(reader: &mut Client, acked: &BTreeSet<u32>) {
    let mut seqs = Vec::new();
    let mut numbers = BTreeSet::new();
    loop {
        let msg = reader
            .next_publish_within(WAIT)
            .expect("the sync, up to sync.done");
        let envelope: serde_json::Value =
            serde_json::from_slice(&msg.payload).expect("a JSON envelope");
        match envelope["type"].as_str() {
            Some("msg") => {
                seqs.push(envelope["seq"].as_u64().expect("a seq"));
                let text = envelope["body"]["text"].as_str().expect("a text body");
                numbers.insert(text.trim_end().parse::<u32>().expect("a number"));
            }
            Some("sync.done") => break,
            _ => {}
        }
    }
    let lost: Vec<&u32> = acked.difference(&numbers).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost (of {}), e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "the replayed seqs are not 1, 2, 3, ...");
}
