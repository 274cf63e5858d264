//! The free-space limit (`[store] disk_free_limit`) on the real daemon: the limit is set a wide
//! margin below the free space of the filesystem the data folder is on, then a ballast file
//! (allocated, not sparse) in that filesystem takes the free space below it. Then the daemon
//! refuses new durable work (v5 PUBACK / PUBREC 0x97, v3: the connection closes without an
//! acknowledgement), says so in `$SYS` and the log, serves what needs no disk, and accepts again
//! by itself once the ballast is gone. What it refused was never delivered; what it acknowledged
//! is all there. (A full disk itself is `full_disk.rs`.)

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::common::im::{World, friends, password, persons};
use crate::common::raw::{self, Client, Connect, PUBACK};
use crate::common::{WAIT, offline_subscriber};

/// Free space may move by the margin while the test runs (other builds and tests on the machine)
/// without changing its outcome: the limit is this far below the free space, and the ballast
/// takes twice as much. A quarter of the free space, at most 8 GiB.
fn margin(free: u64) -> u64 {
    (free / 4).min(8 << 30)
}

fn free_space(path: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs fills the zeroed struct given from a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) }, 0);
    stat.f_bavail as u64 * stat.f_frsize as u64
}

/// A file of `bytes` whose blocks are allocated (the free space drops at once).
fn ballast(path: &Path, bytes: u64) -> File {
    let file = File::create(path).expect("create the ballast");
    // SAFETY: fallocate on the descriptor of a file this function owns.
    let done = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    assert_eq!(done, 0, "fallocate: {}", std::io::Error::last_os_error());
    file
}

/// Wait until `$SYS/broker/store/disk_low` says `want`.
fn until_disk_low_is(mqtt: std::net::SocketAddr, want: &str) {
    let mut watcher = Client::session(mqtt, &Connect::v3("disk-watcher"));
    assert_eq!(watcher.subscribe(&[("$SYS/broker/store/disk_low", 0)]), [0]);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let msg = watcher
            .next_publish_within(left)
            .unwrap_or_else(|| panic!("$SYS/broker/store/disk_low did not become {want}"));
        if msg.payload_str() == want {
            break;
        }
    }
    watcher.disconnect();
}

#[test]
fn below_the_free_space_limit_durable_work_waits_for_room() {
    let tmp = std::env::temp_dir();
    let free = free_space(&tmp);
    assert!(
        free > 1 << 30,
        "the test needs 1 GiB free, not {free} bytes"
    );
    let margin = margin(free);
    let limit = free - margin;
    let extra = format!(
        "allow_anonymous = true\nsys_interval = 1\n[store]\ndisk_free_limit = \"{limit}\"\n\
         disk_check_interval_ms = 200\n"
    );
    let mut world = World::with(
        &(persons(&["alice", "bob"]) + friends(&[("alice", "bob")]).as_str()),
        &extra,
    );
    let log = world.daemon.data.with_file_name("daemon.log");
    world.daemon.log_file = Some(log.clone());
    world.daemon.restart();
    let mqtt = world.daemon.mqtt;
    let keeper = offline_subscriber(mqtt, "disk-keeper", "disk/low");
    let mut v5 = Client::session(mqtt, &Connect::v5("disk-v5"));
    assert_eq!(v5.publish("disk/low", 1, false, b"before"), 0);
    let mut alice = Client::session(
        mqtt,
        &Connect::v5("alice:disk").login("alice", &password("alice")),
    );
    assert_eq!(alice.publish("person/bob/inbox", 1, false, b"before"), 0);

    // The ballast takes the free space below the limit.
    let ballast_path = world.daemon.data.with_file_name("ballast");
    let weight = ballast(&ballast_path, 2 * margin);
    until_disk_low_is(mqtt, "1");
    // v5: refused with Quota exceeded, at QoS 1 and 2, IM messages too.
    assert_eq!(v5.publish("disk/low", 1, false, b"refused"), 0x97);
    assert_eq!(v5.publish("disk/low", 2, false, b"refused"), 0x97);
    assert_eq!(v5.publish("disk/kept", 1, true, b"refused"), 0x97);
    assert_eq!(
        alice.publish("person/bob/inbox", 1, false, b"refused"),
        0x97
    );
    // What needs no disk is served: QoS 1 to no persistent session, QoS 0.
    assert_eq!(v5.publish("disk/nobody", 1, false, b"fine"), 0x10);
    assert_eq!(v5.publish("disk/low", 0, false, b"qos 0"), 0);
    // v3 cannot be told: the connection closes without an acknowledgement, so the client
    // sends it again once connected again.
    let mut v3 = Client::session(mqtt, &Connect::v3("disk-v3"));
    v3.send(&raw::publish(false, "disk/low", 1, false, 1, b"refused"))
        .unwrap();
    let seen = v3.expect_closed();
    assert!(
        seen.iter().all(|p| p.kind != PUBACK),
        "a v3 PUBLISH was acknowledged below the limit: {seen:?}"
    );

    // Room again: accepted again, by itself.
    drop(weight);
    std::fs::remove_file(&ballast_path).expect("remove the ballast");
    until_disk_low_is(mqtt, "0");
    assert_eq!(v5.publish("disk/low", 1, false, b"after"), 0);
    assert_eq!(alice.publish("person/bob/inbox", 1, false, b"after"), 0);
    let mut v3 = Client::session(mqtt, &Connect::v3("disk-v3"));
    assert_eq!(v3.publish("disk/low", 1, false, b"v3 after"), 0);

    let mut keeper = Client::session(mqtt, &keeper);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(keeper.next_publish().payload_str().to_owned());
    }
    assert_eq!(got, ["before", "after", "v3 after"]);
    crate::common::nothing_comes_before_a_later_message(mqtt, &mut keeper, "disk/low");

    let log = std::fs::read_to_string(&log).expect("the daemon's log");
    assert!(log.contains("below disk_free_limit"), "{log}");
    assert!(log.contains("above disk_free_limit again"), "{log}");
}
