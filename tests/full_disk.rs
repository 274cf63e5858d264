//! A full disk: the daemon runs under a file size limit (RLIMIT_FSIZE), so that its store's
//! writes fail with EFBIG as they would on a full disk, and so do the writes of its log (a file
//! already past the limit). It must acknowledge nothing it could not store, keep running and
//! count the failures, and after a restart with room again, every message it acknowledged must
//! be there.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use crate::common::im::{friends, password, persons};
use crate::common::raw::{Client, Connect};
use crate::common::{Daemon, WAIT, offline_subscriber};
use crate::crash::{assert_replayed_unbroken, receive_all, stream_until_broken};

/// Small enough to fill in about a thousand messages, large enough for the daemon to start.
const FILE_SIZE_LIMIT: u64 = 1 << 20;

/// Bytes per message: about a thousand fill the limit.
const WIDTH: usize = 1000;

/// Room for every message in the subscriber's queue; `$SYS` every second.
const CONFIG: &str = "sys_interval = 1\n[limits]\nmax_queued = 1000000\n";

/// v5 QoS 1 to an offline persistent subscriber until the store cannot write: the publisher is
/// disconnected without acknowledgements for what was not stored (a v5 client is told 0x80),
/// the daemon keeps serving and reports `$SYS/broker/store/errors`, and after a restart every
/// acknowledged message reaches the subscriber [MQTT-4.3.2-2] (the broker owns a message once it
/// has sent PUBACK).
#[test]
fn a_full_disk_acknowledges_nothing_it_could_not_store() {
    let mut daemon =
        Daemon::start_on_a_full_disk(FILE_SIZE_LIMIT, &["--allow-anonymous"], Some(CONFIG));
    let session = offline_subscriber(daemon.mqtt, "disk-keeper", "disk/full");

    let progress = Arc::new(AtomicUsize::new(0));
    let acked = stream_until_broken(
        daemon.mqtt,
        &Connect::v5("streamer"),
        1,
        "disk/full",
        WIDTH,
        progress,
    );
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the disk filled"
    );
    assert!(daemon.is_running(), "the daemon died of the full disk");

    // Still serving, and saying what went wrong.
    let mut watcher = Client::session(daemon.mqtt, &Connect::v3("disk-watcher"));
    assert_eq!(watcher.subscribe(&[("$SYS/broker/store/errors", 0)]), [0]);
    let errors = loop {
        let msg = watcher
            .next_publish_within(WAIT)
            .expect("$SYS/broker/store/errors");
        let errors: u64 = msg.payload_str().parse().expect("a count");
        if errors > 0 {
            break errors;
        }
    };
    assert!(errors > 0);

    // Room again: what was acknowledged is all there.
    daemon.file_size_limit = None;
    daemon.log_file = None;
    daemon.restart();
    receive_all(&daemon, &session, &acked);
}

/// The same for IM direct messages, which go to the message log: the sender is disconnected
/// without acknowledgements once the log cannot write, the daemon keeps serving, and after a
/// restart with room the recipient's sync replays every acknowledged message, `seq` unbroken.
#[test]
fn a_full_disk_acknowledges_no_im_message_it_could_not_store() {
    let rules = tempfile::tempdir().expect("definitions dir");
    let yaml = persons(&["alice", "bob"]) + friends(&[("alice", "bob")]).as_str();
    std::fs::write(rules.path().join("world.yaml"), yaml).expect("write definitions");
    let config = format!(
        "rules_dir = {:?}\n[im]\nsync_max_per_conv = 1000000\n",
        rules.path().display().to_string()
    );
    let mut daemon = Daemon::start_on_a_full_disk(FILE_SIZE_LIMIT, &[], Some(&config));

    let alice = Connect::v5("alice:streamer").login("alice", &password("alice"));
    let progress = Arc::new(AtomicUsize::new(0));
    let acked = stream_until_broken(daemon.mqtt, &alice, 1, "person/bob/inbox", WIDTH, progress);
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the disk filled"
    );
    assert!(daemon.is_running(), "the daemon died of the full disk");

    daemon.file_size_limit = None;
    daemon.log_file = None;
    daemon.restart();
    let bob = Connect::v3("bob:reader").login("bob", &password("bob"));
    let mut bob = Client::session(daemon.mqtt, &bob);
    assert_replayed_unbroken(&mut bob, &acked);
}

/// With `on_store_failure = "stop"` the daemon stops at the first failed write (exit status 1),
/// so that a supervisor restarts it, which is how it recovers once there is room; what it
/// acknowledged is there after the restart.
#[test]
fn a_full_disk_stops_the_daemon_when_configured_to() {
    let config = format!("on_store_failure = \"stop\"\n{CONFIG}");
    let mut daemon =
        Daemon::start_on_a_full_disk(FILE_SIZE_LIMIT, &["--allow-anonymous"], Some(&config));
    let session = offline_subscriber(daemon.mqtt, "stop-keeper", "disk/stop");
    let progress = Arc::new(AtomicUsize::new(0));
    let streamer = Connect::v3("streamer");
    let acked = stream_until_broken(daemon.mqtt, &streamer, 1, "disk/stop", WIDTH, progress);
    let status = daemon.wait_for_exit("after the store failed");
    assert_eq!(status.code(), Some(1), "exit status {status}");

    daemon.file_size_limit = None;
    daemon.log_file = None;
    daemon.restart();
    receive_all(&daemon, &session, &acked);
}
