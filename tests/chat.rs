//! `mqtter chat` and `mqtter thing` as a user runs them: the built binary against the real
//! daemon, commands written to its stdin, its stdout read line by line. Two persons become
//! friends and chat (and over a direct channel), a group message reaches a member, two persons
//! command a `mqtter thing` and see its answers, history is listed, and bad input gets a clear
//! line while the client goes on and ends with status 0 at the end of its input.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use crate::common::im::{World, friends, persons};
use crate::common::proxy::Proxy;
use crate::common::thing::world_yaml;
use crate::common::{Daemon, WAIT};

/// A running `mqtter chat` or `mqtter thing`: its stdin, and its stdout's lines as they come.
/// Dropping it kills the process.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(Daemon::binary());
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .env_remove("MQTTER_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().expect("start mqtter");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Proc {
            name: name.to_owned(),
            child,
            stdin,
            lines,
            seen: Vec::new(),
        }
    }

    /// `mqtter chat` as `user` (password `<user>-pw`), its cache in `cache`.
    fn chat(port: u16, user: &str, cache: &Path) -> Proc {
        Proc::chat_on(port, user, "chat", cache)
    }

    /// As `chat`, as the device `device`.
    fn chat_on(port: u16, user: &str, device: &str, cache: &Path) -> Proc {
        let broker = format!("mqtt://127.0.0.1:{port}");
        let password = format!("{user}-pw");
        let cache = cache.join(user).display().to_string();
        Proc::start(
            &format!("{user}:{device}"),
            &[
                "chat", "--broker", &broker, "-u", user, "-P", &password, "--cache", &cache,
                "--device", device,
            ],
            &[],
        )
    }

    /// `mqtter thing FILE`, the account from the file, the password from the environment.
    fn thing(port: u16, file: &Path, password: &str) -> Proc {
        let broker = format!("mqtt://127.0.0.1:{port}");
        let file = file.display().to_string();
        Proc::start(
            "thing",
            &["thing", &file, "--broker", &broker],
            &[("MQTTER_PASSWORD", password)],
        )
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to the client");
        stdin.flush().expect("flush");
    }

    /// The next line (after those already matched) that contains `needle`, within `WAIT`.
    fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "{}: no line with {needle:?} within {WAIT:?}; its output:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Close stdin and wait for the end: its status and every line it printed.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not end within {WAIT:?} after its input ended; its output:\n{}",
                self.name,
                self.seen.join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }

    /// SIGTERM, then as `finish`.
    fn terminate(self) -> (ExitStatus, Vec<String>) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        self.finish()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_persons_become_friends_chat_and_talk_over_a_direct_channel() {
    let world = World::with(&persons(&["alice", "bob"]), "");
    let cache = tempfile::tempdir().unwrap();
    let mut alice = Proc::chat(world.port(), "alice", cache.path());
    let mut bob = Proc::chat(world.port(), "bob", cache.path());
    alice.expect("no friends yet");
    alice.expect("* ready as alice");
    bob.expect("* ready as bob");

    alice.send("/add bob");
    alice.expect("* friend request sent to bob");
    bob.expect("* friend request from alice (/accept alice or /reject alice)");
    bob.send("/accept alice");
    bob.expect("* accepted alice's friend request");
    alice.expect("* bob is now your friend");

    alice.send("/msg bob hi");
    alice.expect("-> bob: hi");
    assert_eq!(bob.expect("<alice>"), "<alice> hi");

    bob.send("/to alice");
    bob.expect("* plain lines now go to alice");
    bob.send("hello alice");
    bob.expect("-> alice: hello alice");
    assert_eq!(alice.expect("<bob>"), "<bob> hello alice");
    bob.send("/read alice");
    bob.expect("* marked alice read up to #2");
    alice.expect("* bob read #2");

    alice.send("/p2p bob");
    alice.expect("* direct channel with bob open");
    bob.expect("* direct channel with alice open");
    alice.send("/msg bob psst");
    alice.expect("-> bob: psst (direct)");
    assert_eq!(bob.expect("<alice>"), "<alice> psst (direct)");
    // Not on the server yet: the history lists it after what the server has.
    alice.send("/history bob");
    alice.expect("* history with bob (3 messages, 1 said directly, not uploaded yet)");
    alice.expect("<alice> hi");
    alice.expect("<bob> hello alice");
    assert!(alice.expect("psst").starts_with("  #- "));

    let (status, lines) = bob.finish();
    assert!(status.success(), "bob's chat ended with {status}");
    assert!(
        lines.iter().all(|l| !l.contains('\x1b')),
        "colours on a pipe: {lines:#?}"
    );
    alice.expect("* bob is offline");
    let (status, _) = alice.finish();
    assert!(status.success(), "alice's chat ended with {status}");
}

#[test]
fn a_group_message_reaches_a_members_chat() {
    let yaml = format!(
        "{}groups:\n  - {{ id: family, owner: alice, members: [bob], name: \"The family\" }}\n",
        persons(&["alice", "bob"])
    );
    let world = World::with(&yaml, "");
    let cache = tempfile::tempdir().unwrap();
    let mut alice = Proc::chat(world.port(), "alice", cache.path());
    let mut bob = Proc::chat(world.port(), "bob", cache.path());
    alice.expect("* groups: family (owner)");
    alice.expect("* ready as alice");
    bob.expect("* groups: family (member)");
    bob.expect("* ready as bob");

    alice.send("/group family dinner at 7?");
    alice.expect("-> group family: dinner at 7?");
    assert_eq!(bob.expect("<alice>"), "[family] <alice> dinner at 7?");
    bob.send("/to group family");
    bob.send("yes!");
    assert_eq!(alice.expect("<bob>"), "[family] <bob> yes!");
    bob.send("/groups");
    bob.expect("  family \"The family\" (member)");
    bob.send("/history group family");
    bob.expect("* history with group family (2 messages)");
    bob.expect("<alice> dinner at 7?");
    bob.expect("<bob> yes!");

    // What alice says from her phone shows on her other device, with where it went.
    let mut phone = Proc::chat_on(world.port(), "alice", "phone", cache.path());
    phone.expect("* ready as alice");
    phone.send("/group family from my phone");
    phone.expect("-> group family: from my phone");
    assert_eq!(
        alice.expect("from my phone"),
        "[family] <alice> from my phone"
    );
    assert!(phone.finish().0.success());
    assert!(alice.finish().0.success());
    assert!(bob.finish().0.success());
}

#[test]
fn a_person_commands_a_thing_that_mqtter_thing_runs() {
    let world = World::with(
        &world_yaml(
            &["alice", "bob"],
            &["lamp"],
            &["{ bind: lamp, to: alice }", "{ share: lamp, with: bob }"],
        ),
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let reflex = dir.path().join("lamp.yaml");
    std::fs::write(
        &reflex,
        "thing: lamp\nstate: { on: false }\non_command:\n  - match: { on: true }\n    ack: ok\n    state: { on: true }\n    event: { kind: switched }\n",
    )
    .unwrap();
    let mut lamp = Proc::thing(world.port(), &reflex, "lamp-pw");
    lamp.expect("connected as lamp to 127.0.0.1:");
    lamp.expect("state {\"on\":false}");

    let mut alice = Proc::chat(world.port(), "alice", dir.path());
    alice.expect("* things: lamp (owner, online)");
    alice.expect("* ready as alice");
    alice.send("/cmd lamp {\"on\":true}");
    alice.expect("* lamp answered ok");
    let received = lamp.expect("command thing:lamp#");
    assert!(
        received.ends_with(" from alice: {\"on\":true}"),
        "{received}"
    );
    lamp.expect("ack thing:lamp#");
    lamp.expect("state {\"on\":true}");
    lamp.expect("event {\"kind\":\"switched\"}");
    alice.expect("* lamp event: {\"kind\":\"switched\"}");

    // A command the reflex has no entry for is answered with an error; the chat goes on.
    alice.send("/cmd lamp {\"blink\":3}");
    alice.expect("! lamp answered error: unsupported");
    lamp.expect("ack thing:lamp#");
    alice.send("/cmd toaster {\"on\":true}");
    alice.expect("! toaster: command refused");
    alice.send("/things");
    alice.expect("  lamp (owner, online) {\"on\":true}");

    // Shared with bob: he commands it too.
    let mut bob = Proc::chat(world.port(), "bob", dir.path());
    bob.expect("* things: lamp (control, online) {\"on\":true}");
    bob.expect("* ready as bob");
    bob.send("/cmd lamp {\"on\":true}");
    bob.expect("* lamp answered ok");
    let received = lamp.expect("command thing:lamp#");
    assert!(received.ends_with(" from bob: {\"on\":true}"), "{received}");
    assert!(bob.finish().0.success());

    let (status, lines) = lamp.terminate();
    assert!(status.success(), "mqtter thing ended with {status}");
    assert_eq!(lines.last().map(String::as_str), Some("stopped"));
    alice.expect("* lamp is offline");
    assert!(alice.finish().0.success());

    // A reflex file with a mistake: where it is, status 1, nothing run.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "thing: lamp\non_command:\n  - ack: maybe\n").unwrap();
    let bad = bad.display().to_string();
    let out = crate::common::run_cli(&["thing", &bad, "-P", "lamp-pw"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:3:10: "), "{err}");
}

#[test]
fn history_lists_earlier_messages_and_unread_counts_show_at_connect() {
    let yaml = format!(
        "{}{}",
        persons(&["alice", "bob"]),
        friends(&[("alice", "bob")])
    );
    let world = World::with(&yaml, "");
    let cache = tempfile::tempdir().unwrap();
    // Sent from a script, before the chat is even synced: `/quit` (and the end of the input)
    // wait for both to be stored.
    let mut alice = Proc::chat(world.port(), "alice", cache.path());
    alice.send("/msg bob first");
    alice.send("/msg bob second");
    alice.send("/quit");
    let (status, lines) = alice.finish();
    assert!(status.success());
    assert!(lines.iter().any(|l| l == "-> bob: second"), "{lines:#?}");

    let mut bob = Proc::chat(world.port(), "bob", cache.path());
    bob.expect("* friends: alice (");
    bob.expect("* unread: alice 2");
    bob.expect("* ready as bob");
    bob.send("/history alice");
    bob.expect("* history with alice (2 messages)");
    assert!(bob.expect("<alice>").ends_with("<alice> first"));
    assert!(bob.expect("<alice>").ends_with("<alice> second"));
    bob.send("/friends");
    let line = bob.expect("  alice ");
    assert!(line.ends_with(", 2 unread"), "{line}");
    bob.send("/read alice");
    bob.expect("* marked alice read up to #2");
    bob.send("/friends");
    let line = bob.expect("  alice ");
    assert!(!line.contains("unread"), "{line}");
    assert!(bob.finish().0.success());
}

#[test]
fn bad_input_gets_a_clear_line_and_the_chat_goes_on() {
    let world = World::with(&persons(&["alice"]), "");
    let cache = tempfile::tempdir().unwrap();
    let mut alice = Proc::chat(world.port(), "alice", cache.path());
    alice.expect("* ready as alice");
    alice.send("/frobnicate");
    alice.expect("! unknown command /frobnicate (try /help)");
    alice.send("/cmd lamp {\"on\": tru}");
    alice.expect("! /cmd lamp: bad JSON (");
    alice.send("/cmd lamp [1, 2]");
    alice.expect("! /cmd lamp: a command is a JSON object");
    alice.send("/msg nobody hi");
    alice.expect("! nobody is not your friend (/add nobody asks them)");
    alice.send("/add nobody");
    alice.expect("! cannot add nobody:");
    alice.send("hello?");
    alice.expect("! no conversation chosen");
    alice.send("/help");
    alice.expect("  /cmd THING JSON");
    let (status, lines) = alice.finish();
    assert!(status.success(), "ended with {status}: {lines:#?}");

    // Without a password and without a terminal: a clear error, status 1.
    let broker = format!("mqtt://127.0.0.1:{}", world.port());
    let cache = cache.path().join("cli").display().to_string();
    let out = crate::common::run_cli(
        &[
            "chat", "--broker", &broker, "-u", "alice", "--cache", &cache,
        ],
        Some(""),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no password for alice"), "{err}");
    // A wrong password: the first connection fails, status 1.
    let out = crate::common::run_cli(
        &[
            "chat", "--broker", &broker, "-u", "alice", "-P", "nope", "--cache", &cache,
        ],
        Some(""),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not connect"), "{err}");
}

#[test]
fn a_lost_connection_is_said_and_both_clients_carry_on_after_it() {
    let world = World::with(
        &format!(
            "{}relations:\n  - {{ friends: [alice, bob] }}\n  - {{ bind: lamp, to: alice }}\n",
            world_yaml(&["alice", "bob"], &["lamp"], &[])
        ),
        "",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let proxy = runtime.block_on(Proxy::start(world.daemon.mqtt));
    let dir = tempfile::tempdir().unwrap();
    let reflex = dir.path().join("lamp.yaml");
    std::fs::write(&reflex, "thing: lamp\non_command:\n  - ack: ok\n").unwrap();
    let mut lamp = Proc::thing(proxy.port(), &reflex, "lamp-pw");
    lamp.expect("connected as lamp");
    let mut alice = Proc::chat(world.port(), "alice", dir.path());
    let mut bob = Proc::chat(proxy.port(), "bob", dir.path());
    alice.expect("* ready as alice");
    bob.expect("* ready as bob");

    proxy.cut();
    bob.expect("! connection lost (");
    lamp.expect("disconnected (");
    // Sent while bob may be away: it comes live or in the sync of his reconnect, and is
    // printed either way.
    alice.send("/msg bob are you there?");
    alice.expect("-> bob: are you there?");
    bob.expect("* reconnected");
    assert_eq!(bob.expect("<alice>"), "<alice> are you there?");
    bob.send("/msg alice yes");
    assert_eq!(alice.expect("<bob>"), "<bob> yes");
    // The thing is back too: a command reaches it and is answered.
    alice.send("/cmd lamp {\"on\":true}");
    alice.expect("* lamp answered ok");
    assert!(
        lamp.expect("command thing:lamp#")
            .ends_with("from alice: {\"on\":true}")
    );
    assert!(alice.finish().0.success());
    assert!(bob.finish().0.success());
}
