//! Client ids owned by their accounts: `ACCOUNT` and `ACCOUNT:*` are refused (v5 0x85, v3 0x02)
//! to anonymous clients and to other accounts, with `allow_anonymous = true`, so that none can
//! take over an account's device, resume or end its session, or cancel or trigger its will; and a
//! session outside any account's namespace stays its maker's. Over TCP and WebSocket, v3 and v5.

use crate::common::im::{World, persons};
use crate::common::raw::{self, CONNACK, Connect, PINGRESP, PUBLISH};
use crate::common::ws::RawWs;
use crate::common::{Daemon, nothing_comes_before_a_later_message, run_cli};

/// bob and alice are persons; anyone may connect anonymously.
fn world() -> World {
    World::with(&persons(&["bob", "alice"]), "allow_anonymous = true\n")
}

/// One MQTT connection over TCP or WebSocket, packets in and out.
enum Link {
    Tcp(raw::Client),
    Ws(RawWs),
}

impl Link {
    /// Connect with `connect`; the connection and its CONNACK.
    fn connect(daemon: &Daemon, ws: bool, connect: &Connect) -> (Link, raw::Packet) {
        let (link, connack) = if ws {
            let addr = daemon.ws.expect("a WebSocket listener");
            let (mut ws, head) = RawWs::upgrade(addr, &daemon.ws_path, Some("mqtt"));
            assert!(head.starts_with("HTTP/1.1 101"), "response: {head}");
            ws.send_frame(0x2, &connect.encode());
            let connack = ws.recv_mqtt();
            (Link::Ws(ws), connack)
        } else {
            let (client, connack) = raw::Client::connect(daemon.mqtt, connect);
            (Link::Tcp(client), connack)
        };
        assert_eq!(connack.kind, CONNACK);
        (link, connack)
    }

    fn send(&mut self, bytes: &[u8]) {
        match self {
            Link::Tcp(client) => client.send(bytes).expect("send"),
            Link::Ws(ws) => ws.send_frame(0x2, bytes),
        }
    }

    fn recv(&mut self) -> raw::Packet {
        match self {
            Link::Tcp(client) => client.recv().expect("a packet, not a closed connection"),
            Link::Ws(ws) => ws.recv_mqtt(),
        }
    }

    /// The next packet that is not part of a person's IM sync or presence.
    fn recv_plain(&mut self) -> raw::Packet {
        loop {
            let packet = self.recv();
            if !(packet.kind == PUBLISH && is_im(&packet)) {
                return packet;
            }
        }
    }

    /// The connection still works and was told nothing (no DISCONNECT): a PINGREQ is answered.
    fn still_served(&mut self, what: &str) {
        self.send(&[0xC0, 0x00]);
        assert_eq!(self.recv_plain().kind, PINGRESP, "{what}");
    }
}

/// A PUBLISH on `person/...` (the IM sync and presence a person's device gets after CONNACK).
fn is_im(publish: &raw::Packet) -> bool {
    let len = usize::from(u16::from_be_bytes([publish.body[0], publish.body[1]]));
    publish.body[2..2 + len].starts_with(b"person/")
}

/// The refusal code for a client id that is not this client's: v5 0x85, v3 0x02.
fn refused(v5: bool) -> u8 {
    if v5 { 0x85 } else { 0x02 }
}

fn connect(v5: bool, client_id: &str) -> Connect {
    if v5 {
        Connect::v5(client_id)
    } else {
        Connect::v3(client_id)
    }
}

/// A persistent session's CONNECT (v5: with an expiry of an hour).
fn persistent(v5: bool, client_id: &str) -> Connect {
    let c = connect(v5, client_id).clean(false);
    if v5 { c.session_expiry(3600) } else { c }
}

/// The ways of not being bob: no username, a username that is no account (anonymous with
/// `allow_anonymous`), and another account.
fn impostors(c: Connect) -> [Connect; 3] {
    [
        c.clone(),
        c.clone().login("nobody", "x"),
        c.login("alice", "alice-pw"),
    ]
}

/// An account's own client id is refused to anonymous clients [MQTT-3.1.3-5 lets the server
/// refuse a client id], and bob's connection on it is not taken over [MQTT-3.1.4-3 is not
/// reached]: it still gets no DISCONNECT and is served.
#[test]
fn an_accounts_device_cannot_be_taken_over() {
    let world = world();
    for ws in [false, true] {
        for v5 in [false, true] {
            for id in ["bob", "bob:phone"] {
                let (mut bob, connack) =
                    Link::connect(&world.daemon, ws, &connect(v5, id).login("bob", "bob-pw"));
                assert_eq!(connack.code(), 0);
                for impostor in impostors(connect(v5, id)) {
                    let (_, connack) = Link::connect(&world.daemon, ws, &impostor);
                    assert_eq!(
                        connack.code(),
                        refused(v5),
                        "ws={ws} v5={v5} {id} as {:?}",
                        impostor.username
                    );
                }
                bob.still_served(&format!("ws={ws} v5={v5} {id}: bob is still connected"));
            }
        }
    }
    // Ids outside every account's namespace stay open to anonymous clients (the interop suite's).
    let (_, connack) = Link::connect(&world.daemon, false, &Connect::v3("myclientid"));
    assert_eq!(connack.code(), 0);
    let (_, connack) = Link::connect(&world.daemon, true, &Connect::v5("bobby:phone"));
    assert_eq!(connack.code(), 0);
}

/// bob's persistent session cannot be resumed by anyone else (its queued message stays his), nor
/// ended by a clean start.
#[test]
fn an_accounts_persistent_session_cannot_be_resumed_or_ended_by_others() {
    let world = world();
    let mqtt = world.daemon.mqtt;
    for ws in [false, true] {
        for v5 in [false, true] {
            let id = format!("bob:persist-{ws}-{v5}");
            let topic = format!("plain/{ws}/{v5}");
            let mine = persistent(v5, &id).login("bob", "bob-pw");
            let mut bob = raw::Client::session(mqtt, &mine);
            assert_eq!(bob.subscribe(&[(&topic, 1)]), [1]);
            bob.disconnect();
            let mut publisher = raw::Client::session(mqtt, &Connect::v3("plain-publisher"));
            assert_eq!(publisher.publish(&topic, 1, false, b"for bob"), 0);
            publisher.disconnect();

            for impostor in impostors(persistent(v5, &id))
                .into_iter()
                .chain(impostors(connect(v5, &id)))
            {
                let (_, connack) = Link::connect(&world.daemon, ws, &impostor);
                assert_eq!(connack.code(), refused(v5), "ws={ws} v5={v5} {impostor:?}");
            }
            let (mut bob, connack) = Link::connect(&world.daemon, ws, &mine);
            assert_eq!(connack.code(), 0);
            assert!(connack.session_present(), "ws={ws} v5={v5}: bob's session");
            let publish = bob.recv_plain();
            assert_eq!(publish.kind, PUBLISH, "ws={ws} v5={v5}");
            assert!(publish.body.ends_with(b"for bob"), "{publish:?}");
        }
    }
}

/// A refused client changes nothing about the will of the id it asked for: bob's will is not
/// published by the attempt, a delayed will of bob is not cancelled [MQTT-3.1.3-9 applies to
/// bob's own connections only], and the impostor's own will never goes out.
#[test]
fn the_will_of_an_accounts_device_stays_its_own() {
    let world = world();
    let mqtt = world.daemon.mqtt;
    let mut watcher = raw::Client::session(mqtt, &Connect::v3("will-watcher"));
    assert_eq!(watcher.subscribe(&[("will/#", 1)]), [1]);
    for ws in [false, true] {
        for v5 in [false, true] {
            let id = format!("bob:will-{ws}-{v5}");
            let topic = format!("will/{ws}/{v5}");
            let mut mine =
                connect(v5, &id)
                    .login("bob", "bob-pw")
                    .will(&topic, b"bob is gone", 1, false);
            if v5 {
                mine = mine.session_expiry(60).will_delay(2);
            }
            let (mut bob, connack) = Link::connect(&world.daemon, ws, &mine);
            assert_eq!(connack.code(), 0);
            for impostor in impostors(connect(v5, &id).will("will/impostor", b"fake", 1, false)) {
                let (_, connack) = Link::connect(&world.daemon, ws, &impostor);
                assert_eq!(connack.code(), refused(v5));
            }
            bob.still_served("bob is still connected");
            nothing_comes_before_a_later_message(mqtt, &mut watcher, "will/later");

            // bob's connection drops without a DISCONNECT; an impostor's attempt while a v5 will
            // waits for its delay does not cancel it.
            drop(bob);
            for impostor in impostors(connect(v5, &id)) {
                let (_, connack) = Link::connect(&world.daemon, ws, &impostor);
                assert_eq!(connack.code(), refused(v5));
            }
            let will = watcher.next_publish();
            assert_eq!(
                (will.topic.as_str(), will.payload_str()),
                (topic.as_str(), "bob is gone"),
                "ws={ws} v5={v5}"
            );
        }
    }
}

/// A session outside every namespace belongs to whoever made it: an anonymous client cannot take
/// over or resume alice's, alice cannot resume an anonymous one, also after a restart (the holder
/// is stored with the session).
#[test]
fn a_session_stays_with_the_identity_that_made_it() {
    let mut world = world();
    for v5 in [false, true] {
        let alices = persistent(v5, &format!("shared-a-{v5}")).login("alice", "alice-pw");
        let anons = persistent(v5, &format!("shared-n-{v5}"));
        raw::Client::session(world.daemon.mqtt, &alices).disconnect();
        raw::Client::session(world.daemon.mqtt, &anons).disconnect();
    }
    for round in ["before the restart", "after the restart"] {
        for v5 in [false, true] {
            let alices = persistent(v5, &format!("shared-a-{v5}"));
            let anons = persistent(v5, &format!("shared-n-{v5}"));
            let (_, connack) = Link::connect(&world.daemon, false, &alices);
            assert_eq!(connack.code(), refused(v5), "{round}: anonymous on alice's");
            let (_, connack) = Link::connect(&world.daemon, true, &alices.clone().clean(true));
            assert_eq!(
                connack.code(),
                refused(v5),
                "{round}: anonymous ends alice's"
            );
            let (_, connack) = Link::connect(
                &world.daemon,
                false,
                &anons.clone().login("alice", "alice-pw"),
            );
            assert_eq!(
                connack.code(),
                refused(v5),
                "{round}: alice on an anonymous one"
            );
            for (c, who) in [
                (alices.login("alice", "alice-pw"), "alice"),
                (anons, "anon"),
            ] {
                let (link, connack) = Link::connect(&world.daemon, false, &c);
                assert_eq!(connack.code(), 0, "{round}: {who} on its own");
                assert!(connack.session_present(), "{round}: {who} resumes");
                if let Link::Tcp(client) = link {
                    client.disconnect();
                }
            }
        }
        // A graceful stop: the sessions' last changes are flushed.
        assert!(world.daemon.terminate().success());
        world.daemon.restart();
    }
}

/// `mqtter account add` refuses a name whose namespace holds anonymous sessions: the account
/// would take their client ids away. A definitions file, which cannot be refused, wins the
/// namespace: the old session is ended, never resumed by the account.
#[test]
fn a_new_account_never_gets_an_anonymous_session() {
    let mut daemon = Daemon::start_with(&["--allow-anonymous"], Some(""));
    let session = persistent(true, "carol:x");
    let mut carol = raw::Client::session(daemon.mqtt, &session);
    assert_eq!(carol.subscribe(&[("plain/carol", 1)]), [1]);
    carol.disconnect();
    let mut publisher = raw::Client::session(daemon.mqtt, &Connect::v3("p"));
    assert_eq!(
        publisher.publish("plain/carol", 1, false, b"anonymous's"),
        0
    );
    publisher.disconnect();
    assert!(daemon.terminate().success());

    let data = daemon.data_dir().display().to_string();
    let add = |name: &str| {
        run_cli(
            &["account", "add", name, "--password", "pw", "--data", &data],
            None,
        )
    };
    let out = add("carol");
    assert!(!out.status.success(), "carol was added");
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("carol:x"), "{why}");
    assert!(add("dave").status.success());
    assert!(add("carolyn").status.success());

    // The same name from a definitions file.
    let rules = tempfile::tempdir().expect("definitions dir");
    std::fs::write(rules.path().join("w.yaml"), persons(&["carol"])).unwrap();
    daemon.rewrite_config(&format!(
        "rules_dir = {:?}\n",
        rules.path().display().to_string()
    ));
    daemon.restart();
    let (_, connack) = raw::Client::connect(daemon.mqtt, &session);
    assert_eq!(connack.code(), 0x85, "the anonymous client is refused now");
    let (mut carol, connack) =
        raw::Client::connect(daemon.mqtt, &session.clone().login("carol", "carol-pw"));
    assert_eq!(connack.code(), 0);
    assert!(
        !connack.session_present(),
        "carol got the anonymous session"
    );
    assert_eq!(carol.subscribe(&[("plain/other", 1)]), [1]);
    let mut publisher = raw::Client::session(daemon.mqtt, &Connect::v3("p"));
    assert_eq!(publisher.publish("plain/other", 1, false, b"later"), 0);
    let first = loop {
        let publish = carol.next_publish();
        if !publish.topic.starts_with("person/") {
            break publish;
        }
    };
    assert_eq!(
        (first.topic.as_str(), first.payload_str()),
        ("plain/other", "later"),
        "something came before the later message"
    );
}
