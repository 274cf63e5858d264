//! Password checks under load: a storm of concurrent CONNECTs with wrong passwords is answered
//! (bad password or Server busy), keeps the daemon's memory bounded, is counted in `$SYS`, and
//! does not lock the account's owner out.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::raw::{Client, Connect};
use crate::common::{Daemon, run_cli};

/// The storm: this many CONNECTs at once.
const STORM: usize = 1000;
/// The daemon's peak resident memory stays under this during the storm. Unbounded, each
/// concurrent check held about 19 MiB: 100 of them took 0.7 to 1.6 GB.
const PEAK_RSS_BOUND: u64 = 160 * 1024 * 1024;

/// A thing account `name` with `password`, added before the daemon opens the store.
fn add_account(data: &std::path::Path, name: &str, password: &str) {
    let data = data.to_str().expect("UTF-8 path");
    let args = [
        "account",
        "add",
        name,
        "--kind",
        "thing",
        "--password",
        password,
        "--data",
        data,
    ];
    let out = run_cli(&args, None);
    assert!(
        out.status.success(),
        "account add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A field of /proc/PID/status, in bytes (`VmHWM`, `VmRSS`).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

/// `count` CONNECTs naming `alice` with a wrong password, all sent before any answer is read;
/// the CONNACK codes.
fn wrong_passwords(mqtt: SocketAddr, count: usize, v5: bool) -> Vec<u8> {
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("guess-{v5}-{i}");
        let connect = if v5 {
            Connect::v5(&id)
        } else {
            Connect::v3(&id)
        };
        let mut client = Client::open(mqtt);
        client
            .send(&connect.login("alice", &format!("guess {i}")).encode())
            .expect("send CONNECT");
        clients.push(client);
    }
    clients
        .iter_mut()
        .map(|client| client.recv().expect("a CONNACK").code())
        .collect()
}

/// [MQTT-3.2.2-5]-style refusals under a storm: every wrong password gets its answer (v5 0x86
/// Bad user name or password, or 0x89 Server busy; v3 0x04, or 0x03 Server unavailable), the
/// daemon's peak RSS stays under `PEAK_RSS_BOUND`, `$SYS` counts both kinds, and the right
/// password still gets in (after at most the capped delay of the address that failed).
#[test]
fn a_storm_of_wrong_passwords_is_bounded_and_the_owner_still_gets_in() {
    let daemon = Daemon::start_prepared(
        &[],
        Some("allow_anonymous = false\nsys_interval = 1\n"),
        |data| add_account(data, "alice", "wonderland"),
    );
    let pid = daemon.pid().expect("the daemon's pid");
    let before = proc_status_bytes(pid, "VmHWM");

    let mqtt = daemon.mqtt;
    let storms: Vec<_> = (0..10)
        .map(|i| {
            std::thread::spawn(move || (i % 2 == 1, wrong_passwords(mqtt, STORM / 10, i % 2 == 1)))
        })
        .collect();
    let mut answers = Vec::new();
    for storm in storms {
        let (v5, codes) = storm.join().expect("a storm thread");
        let (bad, busy) = if v5 { (0x86, 0x89) } else { (0x04, 0x03) };
        for code in codes {
            assert!(code == bad || code == busy, "CONNACK {code:#x} (v5: {v5})");
            answers.push(code == busy);
        }
    }
    assert_eq!(answers.len(), STORM);
    let busy = answers.iter().filter(|b| **b).count() as u64;
    let peak = proc_status_bytes(pid, "VmHWM");
    assert!(
        peak < PEAK_RSS_BOUND,
        "peak RSS {} MiB (before the storm {} MiB)",
        peak >> 20,
        before >> 20
    );

    // The owner gets in, and sees the storm in $SYS.
    let owner = Connect::v5("alice-owner").login("alice", "wonderland");
    let mut alice = Client::session(daemon.mqtt, &owner);
    assert_eq!(alice.subscribe(&[("$SYS/broker/auth/+", 0)]), [0]);
    // Retained values may be from before the storm's end: the next interval brings the last.
    let mut seen = std::collections::HashMap::new();
    let deadline = std::time::Instant::now() + crate::common::WAIT;
    let counted = |seen: &std::collections::HashMap<String, u64>| {
        seen.get("$SYS/broker/auth/busy").copied().unwrap_or(0)
            + seen.get("$SYS/broker/auth/failures").copied().unwrap_or(0)
    };
    while counted(&seen) < STORM as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "$SYS counted {seen:?}"
        );
        if let Some(msg) = alice.next_publish_within(Duration::from_secs(2)) {
            seen.insert(msg.topic.clone(), msg.payload_str().parse::<u64>().unwrap());
        }
    }
    assert_eq!(seen["$SYS/broker/auth/busy"], busy, "{seen:?}");
    assert_eq!(seen["$SYS/broker/auth/failures"], STORM as u64 - busy);
    alice.disconnect();
    // A success clears the address: the next CONNECT is checked at once.
    Client::session(daemon.mqtt, &owner).disconnect();
}
