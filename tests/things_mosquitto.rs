//! The things world with nothing but Mosquitto's command-line clients, as a new user following
//! docs/PROTOCOL.md section 10 would drive it: a thing asks for a claim code (`mosquitto_rr` on
//! `$things/req`), a person binds it (`mosquitto_pub` with a Response Topic, `mosquitto_sub` on it), commands it with `mosquitto_pub`, the thing's
//! `mosquitto_sub` receives the command and its `mosquitto_pub` acknowledges it, the person's
//! inbox gets `cmd.ack`; the owner shares it with control rights and links it to another thing,
//! and both the share holder and the linked thing command it.

use serde_json::{Value, json};

use crate::common::im::{World, persons};
use crate::common::mosquitto::{Sub, mosquitto_pub, mosquitto_rr};

const WORLD: &str = r#"
things:
  - { id: lamp, secret: lamp-pw }
  - { id: door, secret: door-pw }
relations:
  - { bind: door, to: dana }
"#;

/// The `res` envelope in `line` (a payload), insisting on `ok`.
fn ok(body: &Value, line: &str) -> Value {
    let res: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(res["type"], "res", "{res}");
    assert_eq!(res["ok"], true, "{body} answered {res}");
    res
}

/// A thing's request with `mosquitto_rr`, which prints the first message it gets: a thing owed
/// nothing is sent nothing at CONNECT (docs/PROTOCOL.md 10.3.5), so that is the answer.
fn thing_request(world: &World, thing: &str, body: Value) -> Value {
    let password = format!("{thing}-pw");
    let client = format!("{thing}:rr");
    let reply = format!("replies/{thing}");
    let line = mosquitto_rr(
        &world.daemon,
        &[
            "-u",
            thing,
            "-P",
            &password,
            "-i",
            &client,
            "-t",
            "$things/req",
            "-e",
            &reply,
            "-m",
            &body.to_string(),
        ],
    );
    ok(&body, &line)
}

/// A person's request: `mosquitto_sub` on a reply topic (connected with `im-sync: false`: no
/// sync), `mosquitto_pub` with that Response Topic. The answer is the line on the reply topic:
/// a device of the person also gets the notices the request causes (`thing.bound`, ...) on its
/// inbox, whether it subscribed or not, and they may come first.
fn person_request(world: &World, person: &str, body: Value) -> Value {
    let password = format!("{person}-pw");
    let reply = format!("replies/{person}");
    let listener = format!("{person}:replies");
    let mut replies = Sub::start(
        &world.daemon,
        &[
            "-V",
            "mqttv5",
            "-u",
            person,
            "-P",
            &password,
            "-i",
            &listener,
            "-D",
            "connect",
            "user-property",
            "im-sync",
            "false",
            "-t",
            &reply,
            "-F",
            "%t %p",
        ],
    );
    let client = format!("{person}:pub");
    mosquitto_pub(
        &world.daemon,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            person,
            "-P",
            &password,
            "-i",
            &client,
            "-D",
            "publish",
            "response-topic",
            &reply,
            "-t",
            "$things/req",
            "-m",
            &body.to_string(),
        ],
    );
    let prefix = format!("{reply} ");
    let line = replies.next_line(|line| line.starts_with(&prefix));
    ok(&body, &line[prefix.len()..])
}

/// A device's `mosquitto_sub` (MQTT 5) on `topic`, printing payloads only.
fn device(world: &World, user: &str, client: &str, topic: &str) -> Sub {
    let password = format!("{user}-pw");
    Sub::start(
        &world.daemon,
        &[
            "-V", "mqttv5", "-q", "1", "-u", user, "-P", &password, "-i", client, "-t", topic,
            "-F", "%p",
        ],
    )
}

/// Publish a command or an answer with `mosquitto_pub` (MQTT 5, QoS 1).
fn publish(world: &World, user: &str, topic: &str, body: &Value) {
    let password = format!("{user}-pw");
    let client = format!("{user}:pub");
    mosquitto_pub(
        &world.daemon,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-u",
            user,
            "-P",
            &password,
            "-i",
            &client,
            "-t",
            topic,
            "-m",
            &body.to_string(),
        ],
    );
}

#[test]
fn a_thing_is_claimed_commanded_shared_and_linked_with_mosquitto_clients() {
    let world = World::with(&(persons(&["dana", "erin"]) + WORLD), "");

    // The lamp asks for a claim code; dana binds it with the code.
    let code = thing_request(
        &world,
        "lamp",
        json!({"id": "c1", "op": "thing.claim_code"}),
    );
    let code = code["code"].as_str().expect("a code").to_owned();
    let bound = person_request(
        &world,
        "dana",
        json!({"id": "b1", "op": "thing.bind", "code": code}),
    );
    assert_eq!(bound["thing"], "lamp", "{bound}");

    // The lamp's device listens for commands; dana's device for her inbox.
    let mut lamp = device(&world, "lamp", "lamp", "thing/lamp/cmd");
    let mut dana = device(&world, "dana", "dana:inbox", "person/dana/inbox");

    // dana commands the lamp; the lamp receives it, stamped, and acknowledges it.
    publish(
        &world,
        "dana",
        "thing/lamp/cmd",
        &json!({"on": true, "ttl": 60}),
    );
    let cmd = lamp.next_json(|c| c["type"] == "cmd");
    assert_eq!(cmd["from"], "dana", "{cmd}");
    assert_eq!(cmd["body"], json!({"on": true}), "{cmd}");
    let id = cmd["id"].as_str().expect("a command id").to_owned();
    publish(
        &world,
        "lamp",
        "thing/lamp/ack",
        &json!({"id": id, "result": {"on": true}}),
    );
    let ack = dana.next_json(|e| e["type"] == "cmd.ack");
    assert_eq!(ack["id"], id.as_str(), "{ack}");
    assert_eq!(ack["result"], json!({"on": true}), "{ack}");

    // Shared with erin, with control rights: erin's command reaches the lamp.
    person_request(
        &world,
        "dana",
        json!({"id": "s1", "op": "thing.share", "thing": "lamp", "person": "erin", "rights": "control"}),
    );
    publish(&world, "erin", "thing/lamp/cmd", &json!({"on": false}));
    let cmd = lamp.next_json(|c| c["type"] == "cmd");
    assert_eq!(cmd["from"], "erin", "{cmd}");

    // dana owns both things: linked, the door commands the lamp.
    person_request(
        &world,
        "dana",
        json!({"id": "l1", "op": "thing.link", "things": ["door", "lamp"]}),
    );
    publish(&world, "door", "thing/lamp/cmd", &json!({"on": true}));
    let cmd = lamp.next_json(|c| c["type"] == "cmd");
    assert_eq!(cmd["from"], "door", "{cmd}");
    assert_eq!(cmd["body"], json!({"on": true}), "{cmd}");
}
