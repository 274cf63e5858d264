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
