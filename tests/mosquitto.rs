//! Interoperability with Mosquitto's command-line clients (`mosquitto_pub`, `mosquitto_sub`, from
//! the Debian package mosquitto-clients): QoS 0/1/2, retained messages, wills, persistent
//! sessions, MQTT 3.1.1 and 5.0, and messages crossing between the two versions.
//!
//! `mosquitto_sub` runs with `-d` so that the test sees its SUBACK before publishing, under
//! `stdbuf -oL` so that its lines arrive as they are printed, and with `-W` so it never outlives
//! a failed test by long.

use crate::common::Daemon;
use crate::common::mosquitto::{Msg, Sub, mosquitto_pub, mosquitto_sub_once};

fn msg(topic: &str, qos: u64, retain: bool, payload: &str) -> Msg {
    Msg {
        topic: topic.into(),
        qos,
        retain,
        payload: payload.into(),
    }
}

/// Publish at QoS 0, 1 and 2 to a QoS 2 subscription, then at QoS 2 to a QoS 1 subscription:
/// each arrives once, at the lower of the published and the granted QoS.
fn qos_levels(version: &str) {
    let daemon = Daemon::start();
    let sub = Sub::start(&daemon, &["-V", version, "-t", "q/#", "-q", "2", "-C", "3"]);
    for qos in ["0", "1", "2"] {
        let topic = format!("q/{qos}");
        mosquitto_pub(
            &daemon,
            &[
                "-V",
                version,
                "-t",
                &topic,
                "-q",
                qos,
                "-m",
                &format!("at qos {qos}"),
            ],
        );
    }
    let mut got = sub.messages(3);
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        got,
        vec![
            msg("q/0", 0, false, "at qos 0"),
            msg("q/1", 1, false, "at qos 1"),
            msg("q/2", 2, false, "at qos 2"),
        ]
    );

    // The QoS delivered is the minimum of the published and the granted QoS.
    let sub = Sub::start(
        &daemon,
        &["-V", version, "-t", "low/#", "-q", "1", "-C", "1"],
    );
    mosquitto_pub(
        &daemon,
        &["-V", version, "-t", "low/x", "-q", "2", "-m", "downgraded"],
    );
    assert_eq!(sub.messages(1), vec![msg("low/x", 1, false, "downgraded")]);
}

#[test]
fn qos_0_1_2_with_mqtt_v311() {
    qos_levels("mqttv311");
}

#[test]
fn qos_0_1_2_with_mqtt_v5() {
    qos_levels("mqttv5");
}

/// Retained messages reach later subscribers with RETAIN=1 [MQTT-3.3.1-8], live ones arrive
/// with RETAIN=0 [MQTT-3.3.1-9], and an empty retained message clears the topic [MQTT-3.3.1-10].
fn retained(version: &str) {
    let daemon = Daemon::start();
    mosquitto_pub(
        &daemon,
        &[
            "-V",
            version,
            "-t",
            "r/kitchen",
            "-q",
            "1",
            "-r",
            "-m",
            "21.5",
        ],
    );
    mosquitto_pub(
        &daemon,
        &["-V", version, "-t", "r/hall", "-q", "0", "-r", "-m", "19.0"],
    );
    mosquitto_pub(
        &daemon,
        &["-V", version, "-t", "r/attic", "-q", "1", "-r", "-m", "old"],
    );
    mosquitto_pub(
        &daemon,
        &["-V", version, "-t", "r/attic", "-q", "1", "-r", "-n"],
    );

    // A new subscriber gets what is retained, and only that, then the live message.
    let sub = Sub::start(&daemon, &["-V", version, "-t", "r/#", "-q", "1", "-C", "3"]);
    mosquitto_pub(
        &daemon,
        &["-V", version, "-t", "r/live", "-q", "1", "-r", "-m", "now"],
    );
    let got = sub.messages(3);
    let mut retained: Vec<Msg> = got[..2].to_vec();
    retained.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        retained,
        vec![
            msg("r/hall", 0, true, "19.0"),
            msg("r/kitchen", 1, true, "21.5")
        ],
        "the cleared topic r/attic must not be delivered"
    );
    // A live delivery has RETAIN=0 (v5 without Retain As Published: [MQTT-3.3.1-12]).
    assert_eq!(got[2], msg("r/live", 1, false, "now"));

    // The live message was retained too.
    let sub = Sub::start(
        &daemon,
        &["-V", version, "-t", "r/live", "-q", "1", "-C", "1"],
    );
    assert_eq!(sub.messages(1), vec![msg("r/live", 1, true, "now")]);
}

#[test]
fn retained_messages_with_mqtt_v311() {
    retained("mqttv311");
}

#[test]
fn retained_messages_with_mqtt_v5() {
    retained("mqttv5");
}

/// A client killed without DISCONNECT has its will published [MQTT-3.1.2-8].
fn will_on_sigkill(version: &str) {
    let daemon = Daemon::start();
    let watcher = Sub::start(
        &daemon,
        &["-V", version, "-t", "wills/#", "-q", "1", "-C", "1"],
    );
    let victim = Sub::start(
        &daemon,
        &[
            "-V",
            version,
            "-i",
            "victim",
            "-t",
            "elsewhere",
            "--will-topic",
            "wills/victim",
            "--will-payload",
            "victim is gone",
            "--will-qos",
            "1",
        ],
    );
    victim.kill();
    assert_eq!(
        watcher.messages(1),
        vec![msg("wills/victim", 1, false, "victim is gone")]
    );
}

#[test]
fn will_of_a_killed_v311_client() {
    will_on_sigkill("mqttv311");
}

#[test]
fn will_of_a_killed_v5_client() {
    will_on_sigkill("mqttv5");
}

/// A client that disconnects properly has no will published [MQTT-3.1.2-10]: after it leaves,
/// the watcher's next message is a later, ordinary one.
#[test]
fn no_will_after_a_clean_disconnect() {
    let daemon = Daemon::start();
    let watcher = Sub::start(&daemon, &["-t", "wills/#", "-q", "1", "-C", "1"]);
    mosquitto_sub_once(
        &daemon,
        &[
            "-t",
            "elsewhere",
            "-E",
            "--will-topic",
            "wills/polite",
            "--will-payload",
            "no",
        ],
    );
    mosquitto_pub(&daemon, &["-t", "wills/marker", "-q", "1", "-m", "after"]);
    assert_eq!(
        watcher.messages(1),
        vec![msg("wills/marker", 1, false, "after")]
    );
}

/// Messages cross protocol versions: a v5 publisher reaches a v3.1.1 subscriber and back.
#[test]
fn messages_cross_protocol_versions() {
    let daemon = Daemon::start();
    let old = Sub::start(
        &daemon,
        &["-V", "mqttv311", "-t", "x/from5", "-q", "2", "-C", "1"],
    );
    let new = Sub::start(
        &daemon,
        &["-V", "mqttv5", "-t", "x/from3", "-q", "2", "-C", "1"],
    );
    mosquitto_pub(
        &daemon,
        &[
            "-V",
            "mqttv5",
            "-t",
            "x/from5",
            "-q",
            "2",
            "-m",
            "hello v3",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
        ],
    );
    mosquitto_pub(
        &daemon,
        &[
            "-V", "mqttv311", "-t", "x/from3", "-q", "2", "-m", "hello v5",
        ],
    );
    assert_eq!(old.messages(1), vec![msg("x/from5", 2, false, "hello v3")]);
    assert_eq!(new.messages(1), vec![msg("x/from3", 2, false, "hello v5")]);

    // Retained across versions: stored from v5, read by v3.1.1.
    mosquitto_pub(
        &daemon,
        &[
            "-V", "mqttv5", "-t", "x/kept", "-q", "1", "-r", "-m", "kept",
        ],
    );
    let old = Sub::start(
        &daemon,
        &["-V", "mqttv311", "-t", "x/kept", "-q", "1", "-C", "1"],
    );
    assert_eq!(old.messages(1), vec![msg("x/kept", 1, true, "kept")]);
}

/// v5 properties pass through the broker unchanged (user properties, content type, response
/// topic) [MQTT-3.3.2-15] [MQTT-3.3.2-17] [MQTT-3.3.2-20].
#[test]
fn v5_properties_reach_the_subscriber() {
    let daemon = Daemon::start();
    let sub = Sub::start(
        &daemon,
        &[
            "-V",
            "mqttv5",
            "-t",
            "props",
            "-q",
            "1",
            "-C",
            "1",
            "-F",
            "%P|%C|%R|%p",
        ],
    );
    mosquitto_pub(
        &daemon,
        &[
            "-V",
            "mqttv5",
            "-t",
            "props",
            "-q",
            "1",
            "-m",
            "body",
            "-D",
            "publish",
            "user-property",
            "color",
            "blue",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "response-topic",
            "replies/here",
        ],
    );
    assert_eq!(
        sub.lines(1),
        vec!["color:blue|text/plain|replies/here|body".to_string()]
    );
}

/// A persistent session keeps its subscription and queues QoS 1/2 messages while the client is
/// away [MQTT-3.1.2-4] [MQTT-3.1.2-5].
fn offline_queue(version: &str) {
    let daemon = Daemon::start();
    let session: &[&str] = if version == "mqttv5" {
        &[
            "-V", "mqttv5", "-c", "-x", "300", "-i", "sleeper", "-q", "2", "-t", "inbox/#",
        ]
    } else {
        &[
            "-V", "mqttv311", "-c", "-i", "sleeper", "-q", "2", "-t", "inbox/#",
        ]
    };
    let mut first: Vec<&str> = session.to_vec();
    first.push("-E");
    mosquitto_sub_once(&daemon, &first);
    for (qos, text) in [("1", "one"), ("2", "two"), ("1", "three")] {
        mosquitto_pub(
            &daemon,
            &["-V", version, "-t", "inbox/mail", "-q", qos, "-m", text],
        );
    }
    let mut again: Vec<&str> = session.to_vec();
    again.extend(["-C", "3"]);
    let sub = Sub::spawn(&daemon, &again);
    // Sorted: libmosquitto hands a QoS 2 message to the application only at PUBREL, so the
    // printed order may differ from the order the broker sent.
    let mut got: Vec<String> = sub.messages(3).into_iter().map(|m| m.payload).collect();
    got.sort();
    assert_eq!(got, ["one", "three", "two"]);
}

#[test]
fn offline_messages_are_queued_with_mqtt_v311() {
    offline_queue("mqttv311");
}

#[test]
fn offline_messages_are_queued_with_mqtt_v5() {
    offline_queue("mqttv5");
}

/// A large payload (300 kB, many TCP segments) arrives whole, in both protocol versions.
#[test]
fn a_large_payload_arrives_whole() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.bin");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&file, &payload).unwrap();
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    let file = file.to_str().unwrap();
    for version in ["mqttv311", "mqttv5"] {
        let sub = Sub::start(
            &daemon,
            &["-V", version, "-t", "big", "-q", "1", "-C", "1", "-F", "%x"],
        );
        mosquitto_pub(
            &daemon,
            &["-V", version, "-t", "big", "-q", "1", "-f", file],
        );
        let got = sub.lines(1);
        assert_eq!(
            got[0].len(),
            hex.len(),
            "payload length differs ({version})"
        );
        assert!(got[0] == hex, "payload differs ({version})");
    }
}
