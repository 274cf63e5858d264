//! The store's engines as an operator meets them: `[store] engine` picks one, a data folder
//! written by an older version (sled's files, no `store-engine` file) is migrated at start with
//! nothing lost, and a folder is never opened with another engine than the one that wrote it.

use crate::common::raw::{Client, Connect};
use crate::common::{Daemon, run_cli};

/// What a daemon keeps across a restart: a retained message and a persistent session's queue.
fn store_some(daemon: &Daemon) {
    let mut sleeper = Client::session(daemon.mqtt, &Connect::v3("sleeper").clean(false));
    assert_eq!(sleeper.subscribe(&[("mail/#", 1)]), [1]);
    sleeper.disconnect();
    let mut publisher = Client::session(daemon.mqtt, &Connect::v3("publisher"));
    assert_eq!(publisher.publish("kept/one", 1, true, b"retained"), 0);
    assert_eq!(publisher.publish("mail/box", 1, false, b"letter"), 0);
}

fn find_retained(daemon: &Daemon) {
    let mut reader = Client::session(daemon.mqtt, &Connect::v3("reader"));
    assert_eq!(reader.subscribe(&[("kept/#", 1)]), [1]);
    let msg = reader.next_publish();
    assert_eq!(
        (msg.topic.as_str(), msg.payload_str()),
        ("kept/one", "retained")
    );
}

/// The retained message and the queued one are there (the queued one is then acknowledged).
fn find_kept(daemon: &Daemon) {
    find_retained(daemon);
    let (mut sleeper, connack) = Client::connect(daemon.mqtt, &Connect::v3("sleeper").clean(false));
    assert!(connack.session_present(), "the persistent session was lost");
    let msg = sleeper.next_publish();
    assert_eq!(
        (msg.topic.as_str(), msg.payload_str()),
        ("mail/box", "letter")
    );
}

#[test]
fn every_engine_keeps_what_it_acknowledged_across_a_restart() {
    for engine in ["fjall", "redb", "sled"] {
        let config = format!("[store]\nengine = \"{engine}\"\n");
        let mut daemon = Daemon::start_with(&["--allow-anonymous"], Some(&config));
        store_some(&daemon);
        let status = daemon.terminate();
        assert!(status.success(), "{engine}: exit status {status}");
        daemon.restart();
        find_kept(&daemon);
        let named = std::fs::read_to_string(daemon.data.join("store-engine")).unwrap();
        assert_eq!(named.trim(), engine);
    }
}

#[test]
fn a_folder_of_an_older_version_is_migrated_and_another_engines_folder_is_refused() {
    let mut daemon =
        Daemon::start_with(&["--allow-anonymous"], Some("[store]\nengine = \"sled\"\n"));
    store_some(&daemon);
    assert!(daemon.terminate().success());
    // Versions before the choice of engines wrote sled's files and no store-engine file.
    std::fs::remove_file(daemon.data.join("store-engine")).unwrap();

    daemon.rewrite_config("");
    daemon.restart();
    find_kept(&daemon);
    assert!(daemon.terminate().success());
    let named = std::fs::read_to_string(daemon.data.join("store-engine")).unwrap();
    assert_eq!(named.trim(), "redb", "the default engine");
    assert!(daemon.data.join("sled-migrated").join("conf").exists());
    assert!(!daemon.data.join("conf").exists());

    // The folder is redb's now: asking for another engine is refused, before listening.
    let config = daemon.data.with_file_name("fjall.toml");
    std::fs::write(&config, "[store]\nengine = \"fjall\"\n").unwrap();
    let out = run_cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ws-listen",
            "",
            "--data",
            daemon.data.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("holds a redb store") && said.contains("set engine = \"redb\""),
        "{said}"
    );
    daemon.restart();
    find_retained(&daemon);
}
