//! `mqtter sim`: scenarios run by the real binary (each in a process of its own, since the
//! virtual clock is one per process), as a user's CI runs them: the examples' scenarios pass,
//! a wrong expectation fails with a message that points at the rule.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::Daemon;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `mqtter sim ARGS`: success, and stdout + stderr.
fn sim(args: &[&str]) -> (bool, String) {
    let out = Command::new(Daemon::binary())
        .arg("sim")
        .args(args)
        .current_dir(root())
        .output()
        .expect("mqtter sim runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned()
        + String::from_utf8_lossy(&out.stderr).as_ref();
    (out.status.success(), text)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn every_example_scenario_passes_in_process() {
    let junit = tempfile::NamedTempFile::new().unwrap();
    let examples = root().join("examples");
    let (ok, text) = sim(&["--junit", path(junit.path()), path(&examples)]);
    assert!(ok, "{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    let xml = std::fs::read_to_string(junit.path()).unwrap();
    assert!(xml.contains("<testsuites name=\"mqtter sim\""), "{xml}");
    assert!(xml.contains("failures=\"0\""), "{xml}");
}

#[test]
fn a_wrong_expectation_fails_and_points_at_the_rule() {
    let file = root().join("tests/scenarios/wrong-light.sim.yaml");
    let (ok, text) = sim(&["--timeout", "1s", path(&file)]);
    assert!(!ok, "{text}");
    assert!(text.contains("FAIL"), "{text}");
    assert!(
        text.contains("expected a chain: door-opens-light-on@0"),
        "{text}"
    );
    assert!(
        text.contains("rule door-opens-light-on matched 1 time(s) but its `if` was false"),
        "{text}"
    );
    assert!(text.contains("1 passed, 1 failed"), "{text}");
}

#[test]
fn a_scenario_that_does_not_parse_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.sim.yaml");
    std::fs::write(&file, "name: bad\nsteps:\n  - advance: 1m\n    bogus: 1\n").unwrap();
    let (ok, text) = sim(&[path(&file)]);
    assert!(!ok, "{text}");
    assert!(text.contains("bad.sim.yaml:4:"), "{text}");
    assert!(text.contains("bogus"), "{text}");
}

/// A copy of an example's rules folder (without its scenarios) in `into`, so that a daemon
/// started on it never writes into `examples/`.
fn copy_rules(example: &str, into: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.is_dir() {
                if entry.file_name() != "scenarios" {
                    copy(&path, &to.join(entry.file_name()));
                }
            } else {
                std::fs::copy(&path, to.join(entry.file_name())).unwrap();
            }
        }
    }
    let to = into.join("rules");
    copy(&root().join("examples").join(example), &to);
    to
}

/// A daemon of its own, anonymous clients refused, running the smart home's rules.
fn smart_home_daemon(dir: &Path) -> Daemon {
    let rules = copy_rules("smart-home", dir);
    Daemon::start_with(&[], Some(&format!("rules_dir = {:?}\n", rules)))
}

#[test]
fn external_mode_passes_the_smart_home_scenarios_against_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = smart_home_daemon(dir.path());
    let broker = format!("mqtt://127.0.0.1:{}", daemon.port());
    let scenarios = root().join("examples/smart-home/scenarios");
    let (ok, text) = sim(&[
        "--broker",
        &broker,
        "-u",
        "home",
        "-P",
        "home-pw",
        path(&scenarios),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    // What runs in real time ran: a person -> person -> thing chain and the family's one.
    assert!(
        text.contains("ok     5. expect_chain bob-is-cold@0"),
        "{text}"
    );
    assert!(
        text.contains("ok     7. expect_chain leaving-home@0"),
        "{text}"
    );
    assert!(
        text.contains("ok     6. expect_state heater {\"mode\":\"eco\"}"),
        "{text}"
    );
    // What needs the virtual clock is skipped, saying why.
    assert!(
        text.contains("skip      in external mode: `start` sets the virtual clock"),
        "{text}"
    );
    assert!(text.contains("3 skipped)"), "{text}");
}

#[test]
fn external_mode_refuses_what_real_time_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = smart_home_daemon(dir.path());
    let broker = format!("mqtt://127.0.0.1:{}", daemon.port());
    let scenarios = dir.path().join("scenarios");
    std::fs::create_dir_all(&scenarios).unwrap();
    let rules = path(&dir.path().join("rules")).to_owned();
    std::fs::write(
        scenarios.join("hour.sim.yaml"),
        format!(
            "rules: {rules:?}\nactors:\n  - thing: heater\nsteps:\n  - advance: 1h\n  \
             - expect_none: {{ actor: heater, type: cmd, for: 2m }}\n  \
             - expect: {{ actor: heater, type: cmd, within: 1d }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        scenarios.join("edit.sim.yaml"),
        format!(
            "rules: {rules:?}\nsteps:\n  - edit: {{ file: home.yaml, replace: \"18\", with: \"20\" }}\n"
        ),
    )
    .unwrap();
    let (ok, text) = sim(&[
        "--broker",
        &broker,
        "-u",
        "home",
        "-P",
        "home-pw",
        path(&scenarios),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("FAIL   1. advance 1h\n          1h: in external mode time is real"),
        "{text}"
    );
    assert!(text.contains("2m: in external mode"), "{text}");
    assert!(text.contains("24h: in external mode"), "{text}");
    assert!(text.contains("at most --max-advance 30s"), "{text}");
    assert!(
        text.contains("skip      in external mode: an `edit` step changes rule files"),
        "{text}"
    );
    assert!(
        text.contains("0 passed, 3 failed (2 scenarios, 1 failing, 1 skipped)"),
        "{text}"
    );
    // The daemon's rules folder was not touched.
    let home = std::fs::read_to_string(dir.path().join("rules/home.yaml")).unwrap();
    assert!(home.contains("hour() >= 18"), "{home}");
}

#[test]
fn a_thing_script_that_does_not_compile_names_the_thing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad-script.sim.yaml");
    std::fs::write(
        &file,
        "actors:\n  - thing: lamp\n    on_command:\n      - do: '#{ ack: \"ok\" '\nsteps:\n  - advance: 1s\n",
    )
    .unwrap();
    let (ok, text) = sim(&[path(&file)]);
    assert!(!ok, "{text}");
    assert!(text.contains("cannot start: thing lamp: "), "{text}");
}

#[test]
fn record_then_replay_against_the_same_and_a_changed_rules_folder() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let daemon = smart_home_daemon(dir.path());
    let rules = dir.path().join("rules");
    let broker = format!("mqtt://127.0.0.1:{}", daemon.port());
    let recording = dir.path().join("recorded.sim.yaml");
    let mut recorder = Command::new(Daemon::binary())
        .args(["sim", "record", "--broker", &broker, "-u", "alice", "-P"])
        .args(["alice-pw", "--topics", "thing/#,sensors/#", "--out"])
        .arg(&recording)
        .arg("--rules")
        .arg(&rules)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mqtter sim record runs");
    let mut out = std::io::BufReader::new(recorder.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("recording ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the recorder ended");
    }
    assert!(line.contains("thing/hall-light/state"), "{line}");
    // The traffic: the hall light goes off, then on (a rule tells alice), a sensor reports.
    let traffic = dir.path().join("traffic.sim.yaml");
    std::fs::write(
        &traffic,
        format!(
            "rules: {:?}\nactors:\n  - person: alice\n  - thing: hall-light\n  \
             - thing: door\n    on_command: [{{ ack: \"error: jammed\" }}]\nsteps:\n  \
             - publish: {{ as: hall-light, state: {{ on: false }} }}\n  \
             - publish: {{ as: hall-light, state: {{ on: true }} }}\n  \
             - expect: {{ actor: alice, type: notice }}\n  \
             - publish: {{ as: hall-light, topic: sensors/hall, payload: {{ t: 21 }} }}\n  \
             - command: {{ as: alice, thing: door, body: {{ open: false }} }}\n  \
             - expect: {{ actor: alice, type: cmd.ack }}\n",
            path(&rules)
        ),
    )
    .unwrap();
    let args = ["--broker", &broker, "-u", "home", "-P", "home-pw"];
    let (ok, text) = sim(&[&args[..], &[path(&traffic)]].concat());
    assert!(ok, "{text}");
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(recorder.id() as libc::pid_t, libc::SIGINT) };
    assert!(recorder.wait().unwrap().success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(rest.contains("recorded "), "{rest}");
    let skeleton = std::fs::read_to_string(&recording).unwrap();
    for want in [
        r#"{"publish":{"as":"hall-light","state":{"on":true}}}"#,
        r#"{"expect":{"actor":"alice","text":"The hall light is on: the door opened.","type":"notice"}}"#,
        r#"{"expect_chain":["light-on-tells-owner@0"]}"#,
        r#"{"publish":{"payload":{"t":21},"topic":"sensors/hall"}}"#,
        r#"{"expect_fired":{"light-on-tells-owner":1}}"#,
        // A person's command, from the door's audit, and how the door answered it.
        r#"{"command":{"as":"alice","body":{"open":false},"thing":"door"}}"#,
        r#"{"on_command":[{"ack":"error: jammed","match":{"open":false}},{}],"thing":"door"}"#,
    ] {
        assert!(skeleton.contains(want), "{want} in:\n{skeleton}");
    }

    // Replayed in-process against the same rules: what the rules did then, they do now.
    let (ok, text) = sim(&[path(&recording)]);
    assert!(ok, "{skeleton}\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");

    // Against a changed folder: the light's rule no longer fires, a new rule does.
    let changed = dir.path().join("changed");
    std::fs::create_dir_all(&changed).unwrap();
    let home = std::fs::read_to_string(rules.join("home.yaml")).unwrap();
    let home = home
        .replace(
            "when: { state: hall-light, changed: on, to: true }",
            "when: { state: hall-light, changed: on, to: true }\n    if: 'false'",
        )
        .replacen(
            "rules:\n",
            "rules:\n  - id: sensor-seen\n    when: { topic: \"sensors/#\" }\n    do: 'log(\"seen\")'\n",
            1,
        );
    std::fs::write(changed.join("home.yaml"), home).unwrap();
    std::fs::copy(rules.join("leaving.rhai"), changed.join("leaving.rhai")).unwrap();
    let (ok, text) = sim(&[
        "--timeout",
        "1s",
        "--rules",
        path(&changed),
        path(&recording),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("rule light-on-tells-owner: expected to fire 1 time(s), fired 0"),
        "{text}"
    );
    assert!(
        text.contains(
            "rule sensor-seen: expected to fire 0 time(s), fired 1 (not expected to fire at all)"
        ),
        "{text}"
    );
}

#[test]
fn a_refused_publish_fails_its_step_with_the_reason_code() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("refused.sim.yaml");
    let rules = root().join("examples/smart-home");
    std::fs::write(
        &file,
        format!(
            "rules: {:?}\nactors:\n  - person: bob\nsteps:\n  \
             - command: {{ as: bob, thing: door, body: {{ open: true }} }}\n",
            path(&rules)
        ),
    )
    .unwrap();
    let (ok, text) = sim(&[path(&file)]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("the broker refused the PUBLISH on thing/door/cmd: reason code 0x87"),
        "{text}"
    );
}

#[test]
fn accounts_no_definition_names_are_made_and_take_part() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("new-accounts.sim.yaml");
    std::fs::write(
        &file,
        "actors:\n  - person: carol\n  - thing: lamp\n    state: { on: false }\nsteps:\n  \
         - publish: { as: lamp, state: { on: true } }\n  \
         - expect_state: { thing: lamp, state: { on: true } }\n  \
         - disconnect: carol\n  - connect: carol\n",
    )
    .unwrap();
    let (ok, text) = sim(&["--timeout", "1s", path(&file)]);
    assert!(ok, "{text}");
    assert!(text.contains("4 passed, 0 failed"), "{text}");
}
