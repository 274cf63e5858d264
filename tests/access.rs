//! Accounts and access control: `mqtter account ...` on the store, who may connect (anonymous,
//! bad and right passwords, in both protocol versions), the topic ACL with `%u` and `%c`
//! placeholders, and the `max_connections` limit.

use std::path::Path;

use crate::common::raw::{Client, Connect};
use crate::common::{Daemon, eventually, run_cli};

/// `mqtter account ARGS --data DATA` (with `stdin`); (success, stdout, stderr).
fn account(data: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let data = data.to_str().expect("UTF-8 path");
    let mut all = vec!["account"];
    all.extend_from_slice(args);
    all.extend(["--data", data]);
    let out = run_cli(&all, stdin);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Add accounts (name, password) before the daemon opens the store: things, which live in the
/// plain MQTT world only (a person's device also receives its IM inbox unasked).
fn add_accounts(data: &Path, accounts: &[(&str, &str)]) {
    for (name, password) in accounts {
        let args = ["add", name, "--kind", "thing", "--password", password];
        let (ok, _, err) = account(data, &args, None);
        assert!(ok, "account add {name}: {err}");
    }
}

/// The CONNACK code for `connect`, and the connection closed after a refusal [MQTT-3.2.2-5].
fn connack_code(daemon: &Daemon, connect: &Connect) -> u8 {
    let (mut client, connack) = Client::connect(daemon.mqtt, connect);
    let code = connack.code();
    if code != 0 {
        assert!(
            client.expect_closed().is_empty(),
            "nothing may follow a refusing CONNACK"
        );
    }
    code
}

#[test]
fn account_commands_manage_the_store() {
    let daemon = Daemon::start_prepared(&[], None, |data| {
        let (ok, out, err) = account(data, &["add", "alice", "--password", "first"], None);
        assert!(ok, "add alice: {err}");
        assert!(out.contains("alice"), "{out}");
        // The password from stdin.
        let (ok, _, err) = account(data, &["add", "door", "--kind", "thing"], Some("s3cret\n"));
        assert!(ok, "add door from stdin: {err}");
        let (ok, _, err) = account(data, &["add", "carol", "--password", "gone"], None);
        assert!(ok, "add carol: {err}");

        // Clear errors, non-zero exits.
        let (ok, _, err) = account(data, &["add", "alice", "--password", "again"], None);
        assert!(!ok, "a second alice was added");
        assert!(err.contains("alice") && err.contains("exists"), "{err}");
        let (ok, _, err) = account(data, &["add", "bad/name", "--password", "x"], None);
        assert!(!ok && err.contains("bad/name"), "{err}");
        let (ok, _, err) = account(data, &["add", "nopass"], Some(""));
        assert!(!ok && err.contains("password"), "{err}");

        let (ok, _, err) = account(data, &["passwd", "alice", "--password", "second"], None);
        assert!(ok, "passwd alice: {err}");
        let (ok, _, err) = account(data, &["remove", "carol"], None);
        assert!(ok, "remove carol: {err}");
        let (ok, _, err) = account(data, &["remove", "carol"], None);
        assert!(
            !ok && err.contains("carol"),
            "removing a missing account: {err}"
        );
        let (ok, _, err) = account(data, &["passwd", "nobody", "--password", "x"], None);
        assert!(!ok && err.contains("nobody"), "{err}");

        let (ok, out, err) = account(data, &["list"], None);
        assert!(ok, "list: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "list: {out}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("alice") && l.contains("Person")),
            "{out}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("door") && l.contains("Thing")),
            "{out}"
        );
    });

    // What the commands did is what the daemon enforces.
    for v5 in [false, true] {
        let connect = |user: &str, password: &str| {
            let c = if v5 {
                Connect::v5("cli")
            } else {
                Connect::v3("cli")
            };
            c.login(user, password)
        };
        assert_eq!(connack_code(&daemon, &connect("alice", "second")), 0);
        assert_eq!(connack_code(&daemon, &connect("door", "s3cret")), 0);
        let refused = if v5 { 0x86 } else { 0x04 };
        assert_eq!(connack_code(&daemon, &connect("alice", "first")), refused);
        assert_eq!(connack_code(&daemon, &connect("carol", "gone")), refused);
    }
}

/// With `allow_anonymous = false`: no username is "not authorized" (v3 0x05, v5 0x87); a bad
/// password or an unknown account is "bad user name or password" (v3 0x04, v5 0x86); the right
/// password is accepted.
#[test]
fn who_may_connect() {
    let daemon = Daemon::start_prepared(&[], Some("allow_anonymous = false\n"), |data| {
        add_accounts(data, &[("alice", "wonderland")]);
    });
    for v5 in [false, true] {
        let base = || {
            if v5 {
                Connect::v5("who")
            } else {
                Connect::v3("who")
            }
        };
        let (not_authorized, bad_login) = if v5 { (0x87, 0x86) } else { (0x05, 0x04) };
        assert_eq!(connack_code(&daemon, &base()), not_authorized, "anonymous");
        assert_eq!(
            connack_code(&daemon, &base().login("alice", "looking-glass")),
            bad_login,
            "wrong password"
        );
        assert_eq!(
            connack_code(&daemon, &base().login("mallory", "wonderland")),
            bad_login,
            "unknown account"
        );
        assert_eq!(
            connack_code(&daemon, &base().username("alice")),
            bad_login,
            "username without password"
        );
        assert_eq!(
            connack_code(&daemon, &base().login("alice", "wonderland")),
            0,
            "right password"
        );
    }
}

const ACL: &str = r##"
allow_anonymous = false

[[acl]]
account = "*"
topic = "devices/%u/#"
access = "readwrite"

[[acl]]
account = "*"
topic = "clients/%c/#"
access = "readwrite"

[[acl]]
account = "*"
topic = "devices/+/secret"
access = "deny"

[[acl]]
account = "auditor"
topic = "#"
access = "read"
"##;

/// ACL rules with `%u` and `%c`: allowed publishes are delivered, denied ones are not (v5
/// PUBACK 0x87), denied subscriptions get SUBACK 0x80 (v3) or 0x87 (v5), a deny rule wins.
#[test]
fn acl_rules_decide_publish_and_subscribe() {
    let daemon = Daemon::start_prepared(&[], Some(ACL), |data| {
        add_accounts(data, &[("alice", "a"), ("bob", "b"), ("auditor", "c")]);
    });
    let mut auditor = Client::session(daemon.mqtt, &Connect::v5("audit").login("auditor", "c"));
    assert_eq!(
        auditor.subscribe(&[("devices/#", 1), ("clients/#", 1)]),
        [1, 1]
    );
    // The auditor reads everything but writes only under devices/auditor/.
    assert_eq!(auditor.publish("elsewhere/x", 1, false, b"no"), 0x87);

    let mut alice = Client::session(daemon.mqtt, &Connect::v5("cam-7").login("alice", "a"));
    let mut bob = Client::session(daemon.mqtt, &Connect::v3("bob-phone").login("bob", "b"));

    // Subscriptions: own subtree yes, another's no; v5 0x87, v3 0x80.
    assert_eq!(
        alice.subscribe(&[("devices/alice/#", 1), ("devices/bob/#", 1)]),
        [1, 0x87]
    );
    assert_eq!(
        bob.subscribe(&[("devices/alice/#", 1), ("devices/bob/+", 0)]),
        [0x80, 0]
    );
    // A filter wider than what is allowed is refused.
    assert_eq!(alice.subscribe(&[("devices/#", 0)]), [0x87]);

    // Denied publishes are acknowledged as refused (v5) and reach nobody; allowed ones arrive.
    assert_eq!(alice.publish("devices/bob/door", 1, false, b"open"), 0x87);
    assert_eq!(
        alice.publish("devices/alice/secret", 1, false, b"deny wins"),
        0x87
    );
    assert_eq!(
        alice.publish("clients/other/status", 1, false, b"not me"),
        0x87
    );
    assert_eq!(bob.publish("devices/alice/temp", 1, false, b"forged"), 0);
    assert_eq!(alice.publish("devices/alice/temp", 1, false, b"21"), 0);
    assert_eq!(
        alice.publish("clients/cam-7/status", 1, false, b"online"),
        0
    );
    assert_eq!(bob.publish("devices/bob/lock", 0, false, b"locked"), 0);

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let msg = auditor.next_publish();
        seen.push(format!("{} {}", msg.topic, msg.payload_str()));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "clients/cam-7/status online",
            "devices/alice/temp 21",
            "devices/bob/lock locked"
        ],
        "only the allowed publishes arrive"
    );
    // Alice's own subscription got her message, not bob's forgery.
    let msg = alice.next_publish();
    assert_eq!(
        (msg.topic.as_str(), msg.payload_str()),
        ("devices/alice/temp", "21")
    );
    let msg = bob.next_publish();
    assert_eq!(
        (msg.topic.as_str(), msg.payload_str()),
        ("devices/bob/lock", "locked")
    );
}

/// `max_connections` refuses the extra client (v3 0x03 Server unavailable, v5 0x97 Quota
/// exceeded) and accepts one again once a place is free.
#[test]
fn max_connections_refuses_the_extra_client() {
    let daemon = Daemon::start_with(
        &["--allow-anonymous"],
        Some("[limits]\nmax_connections = 2\n"),
    );
    let first = Client::session(daemon.mqtt, &Connect::v3("one"));
    let mut second = Client::session(daemon.mqtt, &Connect::v5("two"));
    assert_eq!(connack_code(&daemon, &Connect::v3("three")), 0x03);
    assert_eq!(connack_code(&daemon, &Connect::v5("three")), 0x97);
    // The two connected clients are still served.
    assert_eq!(second.subscribe(&[("still/#", 0)]), [0]);

    first.disconnect();
    let mut accepted = None;
    eventually("a place frees up", || {
        let (client, connack) = Client::connect(daemon.mqtt, &Connect::v3("three"));
        let ok = connack.code() == 0;
        if ok {
            accepted = Some(client);
        }
        ok
    });
    assert!(accepted.is_some());
}
