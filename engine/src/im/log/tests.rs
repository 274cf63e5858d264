//! The message log's tests: ranges, limits, a full disk, dedup, reopen, segments, torn and
//! corrupt records, concurrent appends.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::*;

fn envelope(conv: &str, seq: u64) -> Vec<u8> {
    format!(
        "{{\"conv\":\"{conv}\",\"seq\":{seq},\"body\":\"{}\"}}",
        "x".repeat(seq as usize % 50)
    )
    .into_bytes()
}

fn fill(log: &MessageLog, conv: &str, n: u64) {
    for seq in log.last_seq(conv) + 1..=log.last_seq(conv) + n {
        log.append(conv, seq, None, &envelope(conv, seq)).unwrap();
    }
}

fn seqs(page: &[(u64, Vec<u8>)]) -> Vec<u64> {
    page.iter().map(|(seq, _)| *seq).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Every message of `conv` from 1 to `n` reads back as written.
fn check_all(log: &MessageLog, conv: &str, n: u64) {
    assert_eq!(log.last_seq(conv), n, "{conv}");
    let page = log.read(conv, 1, u64::MAX, usize::MAX, false).unwrap();
    assert_eq!(page.len() as u64, n, "{conv}");
    for (i, (seq, env)) in page.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(env, &envelope(conv, *seq), "{conv}#{seq}");
    }
}

#[test]
fn shareable_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<MessageLog>();
}

#[test]
fn append_read_get_ranges_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let log = MessageLog::open(dir.path()).unwrap();
    assert_eq!(log.last_seq("a"), 0);
    assert!(log.read("a", 1, 10, 10, false).unwrap().is_empty());
    fill(&log, "a", 10);
    fill(&log, "b", 3);
    assert_eq!(log.last_seq("a"), 10);
    assert_eq!(log.stats(), (2, 13));

    let page = log.read("a", 3, 7, 100, false).unwrap();
    assert_eq!(seqs(&page), [3, 4, 5, 6, 7]);
    assert_eq!(page[0].1, envelope("a", 3));
    assert_eq!(seqs(&log.read("a", 3, 7, 2, false).unwrap()), [3, 4]);
    assert_eq!(seqs(&log.read("a", 3, 7, 2, true).unwrap()), [7, 6]);
    assert_eq!(
        seqs(&log.read("a", 0, u64::MAX, 3, true).unwrap()),
        [10, 9, 8]
    );
    assert_eq!(seqs(&log.read("a", 9, 50, 10, false).unwrap()), [9, 10]);
    assert!(log.read("a", 11, 20, 10, false).unwrap().is_empty());
    assert!(log.read("a", 5, 4, 10, false).unwrap().is_empty());
    assert!(log.read("a", 1, 10, 0, false).unwrap().is_empty());

    assert_eq!(log.get("b", 2).unwrap(), Some(envelope("b", 2)));
    assert_eq!(log.get("b", 4).unwrap(), None);
    assert_eq!(log.get("b", 0).unwrap(), None);
    assert_eq!(log.get("c", 1).unwrap(), None);

    // The same answers once the records are on disk.
    log.sync().unwrap();
    assert_eq!(seqs(&log.read("a", 3, 7, 2, true).unwrap()), [7, 6]);
    check_all(&log, "a", 10);
    check_all(&log, "b", 3);
}

#[test]
fn a_full_disk_delays_durability_and_loses_nothing() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let log = MessageLog::open(dir.path()).unwrap();
    fill(&log, "a", 5);
    log.sync().unwrap();
    log.refuse_writes.store(true, Relaxed);
    fill(&log, "a", 5);
    // Not durable, and said so; still readable.
    assert!(log.sync().is_err());
    assert!(log.sync().is_err());
    check_all(&log, "a", 10);
    // Memory stays bounded: past the limit, appends are refused with a clear error.
    let big = vec![b'x'; 1 << 20];
    let refused = (11..200)
        .map(|seq| log.append("b", seq - 10, None, &big))
        .find_map(Result::err)
        .expect("appends refused once the unwritten bytes pass the limit");
    assert!(
        refused.to_string().contains("the disk refuses writes"),
        "{refused}"
    );
    let appended_b = log.last_seq("b");
    assert!(appended_b >= 60, "{appended_b}");
    // Space again: the next sync writes everything, and a reopened log has it all.
    log.refuse_writes.store(false, Relaxed);
    log.sync().unwrap();
    fill(&log, "a", 2);
    log.sync().unwrap();
    drop(log);
    let log = MessageLog::open(dir.path()).unwrap();
    check_all(&log, "a", 12);
    assert_eq!(log.last_seq("b"), appended_b);
    assert_eq!(log.get("b", appended_b).unwrap(), Some(big));
}

#[test]
fn non_contiguous_seq_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = MessageLog::open(dir.path()).unwrap();
    for bad in [0, 2] {
        let err = log.append("a", bad, None, b"{}").unwrap_err();
        assert!(
            matches!(err, LogError::OutOfOrder { expected: 1, got, .. } if got == bad),
            "{err}"
        );
    }
    fill(&log, "a", 2);
    for bad in [1, 2, 4] {
        assert!(matches!(
            log.append("a", bad, None, b"{}"),
            Err(LogError::OutOfOrder { expected: 3, .. })
        ));
    }
    assert_eq!(log.stats(), (1, 2));
    log.append("a", 3, None, b"{}").unwrap();
    let err = log
        .append("a", 4, None, &vec![0; MAX_ENVELOPE_BYTES + 1])
        .unwrap_err();
    assert!(matches!(err, LogError::TooLarge(_)), "{err}");
    assert_eq!(log.last_seq("a"), 3);
}

#[test]
fn dedup_found_and_rebuilt_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = MessageLog::open(dir.path()).unwrap();
        log.append("a", 1, Some(("alice", "c1")), b"{\"n\":1}")
            .unwrap();
        log.append("a", 2, None, b"{\"n\":2}").unwrap();
        log.append("a", 3, Some(("bob", "c1")), b"{\"n\":3}")
            .unwrap();
        log.append("b", 1, Some(("alice", "c1")), b"{\"n\":4}")
            .unwrap();
        log.append("b", 2, Some(("alice", "")), b"{\"n\":5}")
            .unwrap();
        assert_eq!(log.find_dedup("a", "alice", "c1"), Some(1));
        assert_eq!(log.find_dedup("a", "bob", "c1"), Some(3));
        assert_eq!(log.find_dedup("b", "alice", "c1"), Some(1));
        assert_eq!(log.find_dedup("a", "alice", "c2"), None);
        assert_eq!(log.find_dedup("b", "alice", ""), None);
        assert_eq!(log.find_dedup("c", "alice", "c1"), None);
    }
    let log = MessageLog::open(dir.path()).unwrap();
    assert_eq!(log.stats(), (2, 5));
    assert_eq!(log.last_seq("a"), 3);
    assert_eq!(log.last_seq("b"), 2);
    assert_eq!(log.get("a", 3).unwrap().unwrap(), b"{\"n\":3}");
    // From disk this time.
    assert_eq!(log.find_dedup("a", "alice", "c1"), Some(1));
    assert_eq!(log.find_dedup("a", "bob", "c1"), Some(3));
    assert_eq!(log.find_dedup("b", "alice", "c1"), Some(1));
    assert_eq!(log.find_dedup("a", "alice", "c2"), None);
    log.append("a", 4, Some(("alice", "c2")), b"{}").unwrap();
    assert_eq!(log.find_dedup("a", "alice", "c2"), Some(4));
}

#[test]
fn dedup_keeps_only_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = MessageLog::open_inner(dir.path(), DEFAULT_SEGMENT_BYTES, 3).unwrap();
        for seq in 1..=5 {
            let cid = format!("c{seq}");
            log.append("a", seq, Some(("alice", &cid)), b"{}").unwrap();
        }
        assert_eq!(log.find_dedup("a", "alice", "c2"), None);
        assert_eq!(log.find_dedup("a", "alice", "c3"), Some(3));
        assert_eq!(log.find_dedup("a", "alice", "c5"), Some(5));
    }
    let log = MessageLog::open_inner(dir.path(), DEFAULT_SEGMENT_BYTES, 3).unwrap();
    assert_eq!(log.find_dedup("a", "alice", "c2"), None);
    assert_eq!(log.find_dedup("a", "alice", "c3"), Some(3));
    assert_eq!(log.dedup_len(), 3);
}

#[test]
fn reopen_rebuilds_the_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = MessageLog::open(dir.path()).unwrap();
        for round in 0..3 {
            for conv in ["a", "b", "c"] {
                fill(&log, conv, 7 + round);
            }
        }
        log.sync().unwrap();
    }
    let log = MessageLog::open(dir.path()).unwrap();
    assert_eq!(log.stats(), (3, 3 * (7 + 8 + 9)));
    for conv in ["a", "b", "c"] {
        check_all(&log, conv, 24);
    }
    fill(&log, "a", 1);
    check_all(&log, "a", 25);
}

#[test]
fn unsynced_records_are_readable_including_past_the_write_behind() {
    let dir = tempfile::tempdir().unwrap();
    let log = MessageLog::open(dir.path()).unwrap();
    fill(&log, "a", 5);
    check_all(&log, "a", 5);
    assert_eq!(fs::metadata(&segments(dir.path())[0]).unwrap().len(), 0);
    // Past 1 MiB the buffer goes to the file without a sync; everything stays readable.
    let big = vec![b'y'; 4000];
    for seq in 6..=600 {
        log.append("a", seq, None, &big).unwrap();
    }
    assert!(fs::metadata(&segments(dir.path())[0]).unwrap().len() >= WRITE_BEHIND_BYTES as u64);
    assert_eq!(log.get("a", 3).unwrap(), Some(envelope("a", 3)));
    assert_eq!(log.read("a", 6, 600, 1000, true).unwrap().len(), 595);
    assert_eq!(log.get("a", 600).unwrap(), Some(big.clone()));
    log.sync().unwrap();
    drop(log);
    let log = MessageLog::open(dir.path()).unwrap();
    assert_eq!(log.last_seq("a"), 600);
    assert_eq!(log.get("a", 300).unwrap(), Some(big));
}

#[test]
fn segments_roll_over() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = MessageLog::open_with(dir.path(), 1000).unwrap();
        for _ in 0..20 {
            fill(&log, "a", 3);
            fill(&log, "b", 2);
            // Reads across sealed segments, queued chunks and the buffer.
            let n = log.last_seq("a");
            check_all(&log, "a", n);
        }
        log.sync().unwrap();
        check_all(&log, "a", 60);
        check_all(&log, "b", 40);
    }
    let files = segments(dir.path());
    assert!(files.len() > 5, "{} segments", files.len());
    assert!(files[0].ends_with("000000000000.log"));
    for file in &files[..files.len() - 1] {
        assert!(fs::metadata(file).unwrap().len() <= 1000);
    }
    let log = MessageLog::open_with(dir.path(), 1000).unwrap();
    check_all(&log, "a", 60);
    check_all(&log, "b", 40);
    fill(&log, "a", 30);
    drop(log);
    let log = MessageLog::open_with(dir.path(), 1000).unwrap();
    check_all(&log, "a", 90);
    // A record larger than a segment gets one of its own.
    log.append("b", 41, None, &vec![b'z'; 5000]).unwrap();
    fill(&log, "b", 1);
    log.sync().unwrap();
    drop(log);
    let log = MessageLog::open_with(dir.path(), 1000).unwrap();
    assert_eq!(log.get("b", 41).unwrap().unwrap().len(), 5000);
    assert_eq!(log.last_seq("b"), 42);
}

#[test]
fn torn_tail_is_cut_and_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = MessageLog::open(dir.path()).unwrap();
        log.append("a", 1, None, &envelope("a", 1)).unwrap();
        log.append("a", 2, Some(("alice", "c2")), &envelope("a", 2))
            .unwrap();
        log.append("a", 3, Some(("alice", "c3")), &envelope("a", 3))
            .unwrap();
        log.sync().unwrap();
    }
    let path = &segments(dir.path())[0];
    let len = fs::metadata(path).unwrap().len();
    // Cut the last record in the middle, then add garbage after it.
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len - 5).unwrap();
    let mut file = OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(&[0xAB; 37]).unwrap();
    drop(file);

    let log = MessageLog::open(dir.path()).unwrap();
    assert_eq!(log.last_seq("a"), 2);
    assert_eq!(log.find_dedup("a", "alice", "c2"), Some(2));
    assert_eq!(log.find_dedup("a", "alice", "c3"), None);
    fill(&log, "a", 2);
    log.sync().unwrap();
    drop(log);
    let log = MessageLog::open(dir.path()).unwrap();
    check_all(&log, "a", 4);
    drop(log);

    // A huge length in the last header is torn too.
    let mut file = OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(&u32::MAX.to_le_bytes()).unwrap();
    file.write_all(&[1, 2, 3, 4, 5, 6]).unwrap();
    drop(file);
    let log = MessageLog::open(dir.path()).unwrap();
    check_all(&log, "a", 4);
}

#[test]
fn corruption_before_the_last_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = MessageLog::open_with(dir.path(), 500).unwrap();
        fill(&log, "a", 40);
    }
    let files = segments(dir.path());
    assert!(files.len() >= 3);
    let mut bytes = fs::read(&files[1]).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    fs::write(&files[1], &bytes).unwrap();
    let err = MessageLog::open_with(dir.path(), 500).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LogError::Corrupt(_)), "{text}");
    assert!(
        text.contains("000000000001.log") && text.contains("offset"),
        "{text}"
    );

    // A missing segment is an error too.
    fs::remove_file(&files[1]).unwrap();
    let err = MessageLog::open_with(dir.path(), 500).unwrap_err();
    assert!(
        err.to_string().contains("000000000001.log is missing"),
        "{err}"
    );
}

#[test]
fn concurrent_appends_and_syncs_survive_a_reopen() {
    const THREADS: usize = 6;
    const PER_THREAD: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Arc::new(MessageLog::open_with(dir.path(), 256 << 10).unwrap());
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let conv = format!("conv{t}");
                    for seq in 1..=PER_THREAD {
                        let cid = format!("m{seq}");
                        log.append(&conv, seq, Some(("p", &cid)), &envelope(&conv, seq))
                            .unwrap();
                        if seq % 500 == 0 {
                            log.sync().unwrap();
                            assert_eq!(
                                log.get(&conv, seq / 2).unwrap(),
                                Some(envelope(&conv, seq / 2))
                            );
                        }
                    }
                })
            })
            .collect();
        let syncer = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for _ in 0..200 {
                    log.sync().unwrap();
                    std::thread::yield_now();
                }
            })
        };
        // Reads race the appends, the write-behind and the rollovers.
        let reader = {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for round in 0..2000u64 {
                    let conv = format!("conv{}", round as usize % THREADS);
                    let last = log.last_seq(&conv);
                    let page = log.read(&conv, 1, last, 20, true).unwrap();
                    assert_eq!(page.len() as u64, last.min(20));
                    for (seq, env) in page {
                        assert_eq!(env, envelope(&conv, seq));
                    }
                }
            })
        };
        for worker in workers {
            worker.join().unwrap();
        }
        syncer.join().unwrap();
        reader.join().unwrap();
        log.sync().unwrap();
    }
    let log = MessageLog::open_with(dir.path(), 256 << 10).unwrap();
    assert_eq!(log.stats(), (THREADS, THREADS as u64 * PER_THREAD));
    for t in 0..THREADS {
        let conv = format!("conv{t}");
        check_all(&log, &conv, PER_THREAD);
        assert_eq!(log.find_dedup(&conv, "p", "m77"), Some(77));
    }
}
