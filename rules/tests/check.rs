//! `check` on good and bad folders: the diagnostics a user sees, with file, line and column.

use std::path::Path;

use mqtter_rules::{CheckReport, LoadConfig, Severity, check_dir};

const HOME: &str = r#"
persons: [{ id: alice, password: a }, { id: bob, password: b }, { id: rules, password: r }]
things:  [{ id: door, secret: d }, { id: hall-light, secret: h }]
groups:  [{ id: family, owner: alice, members: [bob] }]
relations:
  - { bind: door, to: alice }
  - { link: [door, hall-light] }
  - { friends: [alice, bob] }
rules:
  - id: door-opens-light-on
    when: { state: door, changed: open, to: true }
    do: 'command("hall-light", #{ on: true })'
  - id: light-on-tells-owner
    when: { state: hall-light, changed: on }
    script: tell-owner.rhai
"#;

const TELL_OWNER: &str = r#"// The hall light changed: tell the door's owner.
notify(owner_of("door"), "hall light is " + event.state.on);
"#;

/// A folder of `files` (name, text), checked.
fn check(files: &[(&str, &str)]) -> CheckReport {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let mut report = check_dir(dir.path(), &LoadConfig::default());
    // Paths relative to the folder, so that expectations read as a user sees them.
    for d in &mut report.diagnostics {
        d.file = d
            .file
            .strip_prefix(dir.path())
            .unwrap_or(&d.file)
            .to_owned();
    }
    report
}

/// The one error of `report` (or its one warning if it has no error), as
/// `error: file:line:column: message`.
fn only(report: &CheckReport) -> String {
    let errors: Vec<_> = report.diagnostics.iter().filter(|d| d.is_error()).collect();
    let list = if errors.is_empty() {
        report.diagnostics.iter().collect()
    } else {
        errors
    };
    assert_eq!(list.len(), 1, "{}", report.render());
    list[0].to_string()
}

#[test]
fn a_good_folder_has_nothing_to_say() {
    let report = check(&[("home.yaml", HOME), ("tell-owner.rhai", TELL_OWNER)]);
    assert!(report.diagnostics.is_empty(), "{}", report.render());
    assert_eq!((report.files, report.rules), (1, 2));
}

#[test]
fn a_misspelt_key_names_its_line_and_column() {
    let text = "rules:\n  - id: a\n    wen: { topic: x }\n    do: 'log(1)'\n";
    let report = check(&[("a.yaml", text)]);
    let d = only(&report);
    assert!(d.starts_with("error: a.yaml:3:5: "), "{d}");
    assert!(d.contains("wen"), "{d}");
    let snippet = report.diagnostics[0].snippet.as_deref().unwrap();
    assert!(snippet.contains("3 |     wen: { topic: x }"), "{snippet}");
}

#[test]
fn a_bad_trigger_says_what_it_expects() {
    for (when, expected) in [
        ("{ topc: x }", "unknown field `topc`"),
        ("{ topic: 'a/#/b' }", "not a valid topic filter"),
        ("{ topic: a, state: b }", "not topic and state"),
        ("{ cron: 'not cron' }", "cron `not cron`"),
        ("{ every: soon }", "every `soon`"),
        ("{ relation: befriended }", "friend_added"),
        ("{ presence: alice, to: asleep }", "online, away or offline"),
        (
            "{ topic: a, changed: x }",
            "`changed` does not go with `topic`",
        ),
    ] {
        let text = format!("rules:\n  - id: a\n    when: {when}\n    do: 'log(1)'\n");
        let d = only(&check(&[("a.yaml", &text)]));
        assert!(
            d.starts_with("error: a.yaml:3:11: trigger: "),
            "{when}: {d}"
        );
        assert!(d.contains(expected), "{when}: {d}");
    }
}

#[test]
fn a_rhai_error_inline_points_into_the_yaml() {
    let text = "rules:\n  - id: a\n    when: { topic: x }\n    do: 'publish(\"a\" 1)'\n";
    let report = check(&[("a.yaml", text)]);
    let d = only(&report);
    // The column of the `1` the parser did not expect, counted in the YAML line.
    assert!(d.starts_with("error: a.yaml:4:22: "), "{d}");
    let text =
        "rules:\n  - id: a\n    when: { topic: x }\n    do: |\n      log(1);\n      let = 2;\n";
    let d = only(&check(&[("a.yaml", text)]));
    assert!(d.starts_with("error: a.yaml:6:11: "), "{d}");
    let text = "rules:\n  - id: a\n    when: { topic: x }\n    if: '1 +'\n    do: 'log(1)'\n";
    let d = only(&check(&[("a.yaml", text)]));
    assert!(d.starts_with("error: a.yaml:4:"), "{d}");
}

#[test]
fn a_rhai_error_in_a_script_file_names_that_file() {
    let yaml = "rules:\n  - id: a\n    when: { topic: x }\n    script: a.rhai\n";
    let d = only(&check(&[
        ("a.yaml", yaml),
        ("a.rhai", "log(1);\nlet x = ;\n"),
    ]));
    assert!(d.starts_with("error: a.rhai:2:9: "), "{d}");
    let d = only(&check(&[("a.yaml", yaml)]));
    assert!(d.starts_with("error: a.yaml:4:13: "), "{d}");
    assert!(d.contains("a.rhai"), "{d}");
    let yaml = "rules:\n  - id: a\n    when: { topic: x }\n    script: ../a.rhai\n";
    let d = only(&check(&[("a.yaml", yaml)]));
    assert!(d.contains("inside the rules folder"), "{d}");
}

#[test]
fn unknown_things_and_accounts_are_errors() {
    let text = r#"
persons: [{ id: rules, password: r }]
rules:
  - id: a
    when: { state: dor }
    do: 'command("lamp", #{ on: true }); notify("carol", "x")'
"#;
    let report = check(&[("a.yaml", text)]);
    let all: Vec<String> = report.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(report.errors(), 3, "{all:#?}");
    for name in ["thing `dor`", "thing `lamp`", "account `carol`"] {
        assert!(
            all.iter()
                .any(|d| d.contains(name) && d.contains("a.yaml:4:")),
            "{name}: {all:#?}"
        );
    }
}

#[test]
fn the_acting_account_unknown_is_a_warning() {
    let text = "rules:\n  - id: a\n    when: { topic: x }\n    do: 'log(1)'\n    as: robot\n";
    let report = check(&[("a.yaml", text)]);
    assert_eq!(report.errors(), 0);
    assert_eq!(report.diagnostics[0].severity, Severity::Warning);
    assert!(only(&report).contains("`robot`"));
}

#[test]
fn a_loop_between_rules_is_a_warning() {
    let text = r#"
persons: [{ id: rules, password: r }]
things: [{ id: a, secret: a }, { id: b, secret: b }]
rules:
  - id: ping
    when: { topic: "ping/+" }
    do: 'publish("pong/1", "x")'
  - id: pong
    when: { topic: "pong/#" }
    do: 'publish("ping/1", "x")'
  - id: a-moves-b
    when: { state: a }
    do: 'command("b", #{ move: true })'
  - id: b-moves-a
    when: { state: b, changed: pos }
    do: 'command("a", #{ move: true })'
  - id: not-a-loop
    when: { topic: "ping/+", kind: person }
    do: 'publish("pong/2", "x")'
  - id: rearms-itself
    when: { timer: tick }
    do: 'after(1000, "tick", #{})'
"#;
    let report = check(&[("a.yaml", text)]);
    let all: Vec<String> = report.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(report.errors(), 0, "{all:#?}");
    assert_eq!(report.warnings(), 3, "{all:#?}");
    assert!(
        all.iter().any(|d| d.contains("ping -> pong -> ping")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|d| d.contains("a-moves-b -> b-moves-a -> a-moves-b")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|d| d.contains("rearms-itself -> rearms-itself")),
        "{all:#?}"
    );
    assert!(!all.iter().any(|d| d.contains("not-a-loop")), "{all:#?}");
}

#[test]
fn a_rule_id_twice_is_an_error_in_the_later_file() {
    let rule = "rules:\n  - id: same\n    when: { topic: x }\n    do: 'log(1)'\n";
    let report = check(&[("a.yaml", rule), ("b.yaml", rule)]);
    let d = only(&report);
    assert!(
        d.starts_with("error: b.yaml:2:1: rule `same` is already defined in"),
        "{d}"
    );
    let twice = format!("{rule}  - id: same\n    when: {{ topic: y }}\n    do: 'log(2)'\n");
    let d = only(&check(&[("a.yaml", &twice)]));
    assert!(d.contains("already defined at line 2"), "{d}");
}

#[test]
fn a_folder_that_is_not_there_is_an_error() {
    let report = check_dir(Path::new("/nonexistent/rules"), &LoadConfig::default());
    assert_eq!(report.errors(), 1);
}

#[test]
fn the_examples_pass() {
    for example in ["smart-home", "factory"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(example);
        let report = check_dir(&dir, &LoadConfig::default());
        assert!(
            report.diagnostics.is_empty(),
            "{example}: {}",
            report.render()
        );
        assert!(report.rules >= 5, "{example}: {}", report.render());
    }
}
