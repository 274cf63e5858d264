//! `mqtter check DIR`: the rules folder checked by the real binary, as a user's CI runs it.

use std::process::Command;

use crate::common::Daemon;

fn check(dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(Daemon::binary())
        .arg("check")
        .arg(dir)
        .output()
        .expect("mqtter check runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned()
        + String::from_utf8_lossy(&out.stderr).as_ref();
    (out.status.success(), text)
}

#[test]
fn the_examples_pass_the_check() {
    for example in ["smart-home", "factory"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(example);
        let (ok, text) = check(&dir);
        assert!(ok, "{example}: {text}");
        assert!(text.contains(": 0 errors, 0 warnings"), "{example}: {text}");
    }
}

#[test]
fn a_bad_folder_fails_with_line_column_and_snippet() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hall.yaml"),
        "rules:\n  - id: hall\n    when: { topic: door }\n    do: 'publish(\"a\" 1)'\n",
    )
    .unwrap();
    let (ok, text) = check(dir.path());
    assert!(!ok, "{text}");
    assert!(text.contains("hall.yaml:4:22: "), "{text}");
    assert!(text.contains("4 |     do: 'publish(\"a\" 1)'"), "{text}");
    assert!(text.contains("1 errors"), "{text}");
    // Warnings alone pass.
    std::fs::write(
        dir.path().join("hall.yaml"),
        "rules:\n  - id: hall\n    when: { topic: door }\n    do: 'log(1)'\n    as: nobody\n",
    )
    .unwrap();
    let (ok, text) = check(dir.path());
    assert!(ok, "{text}");
    assert!(text.contains("warning: "), "{text}");
}
