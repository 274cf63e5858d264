//! Store contract tests, written once and run against every backend.

use std::sync::Arc;
use std::time::Duration;

use mqtter_engine::hang::HangWhile;
use mqtter_engine::open::{Engine, open};
use mqtter_engine::{Batch, FjallStore, RedbStore, SledStore, Space, Staged, Store};

/// The contract every backend must keep; `reopen` gives a fresh handle on the same data.
fn check_contract(store: Arc<dyn Store>, reopen: impl Fn() -> Arc<dyn Store>) {
    let mut batch = Batch::new();
    batch.put(Space::Sessions, b"c1".to_vec(), b"s1".to_vec());
    batch.put(Space::Queue, b"c1/0001".to_vec(), b"m1".to_vec());
    batch.put(Space::Queue, b"c1/0002".to_vec(), b"m2".to_vec());
    batch.put(Space::Queue, b"c2/0001".to_vec(), b"other".to_vec());
    store.apply(batch).unwrap();

    // Visible at once, scans are ordered and bounded by the prefix.
    assert_eq!(
        store.get(Space::Sessions, b"c1").unwrap(),
        Some(b"s1".to_vec())
    );
    let scanned = store.scan_prefix(Space::Queue, b"c1/").unwrap();
    assert_eq!(
        scanned
            .iter()
            .map(|(_, v)| v.as_slice())
            .collect::<Vec<_>>(),
        [b"m1", b"m2"]
    );
    // Spaces are separate.
    assert_eq!(store.get(Space::Retained, b"c1").unwrap(), None);

    let mut batch = Batch::new();
    batch.remove(Space::Queue, b"c1/0001".to_vec());
    store.apply(batch).unwrap();
    // Ranges: half-open, limited, both directions.
    let mut batch = Batch::new();
    for i in 0u8..5 {
        batch.put(Space::Messages, vec![b'c', i], vec![i]);
    }
    store.apply(batch).unwrap();
    let forward = store
        .scan_range(Space::Messages, &[b'c', 1], &[b'c', 4], 2, false)
        .unwrap();
    assert_eq!(
        forward.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(),
        [1, 2]
    );
    let backward = store
        .scan_range(Space::Messages, &[b'c', 0], &[b'c', 4], 2, true)
        .unwrap();
    assert_eq!(
        backward.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(),
        [3, 2]
    );

    store.flush().unwrap();
    drop(store);

    // Durable after flush: a new handle sees exactly the flushed state.
    let store = reopen();
    assert_eq!(store.scan_prefix(Space::Queue, b"c1/").unwrap().len(), 1);
    assert_eq!(
        store.get(Space::Queue, b"c2/0001").unwrap(),
        Some(b"other".to_vec())
    );
}

#[test]
fn sled_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&path).unwrap());
    check_contract(store, move || Arc::new(SledStore::open(&path).unwrap()));
}

#[test]
fn fjall_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let store: Arc<dyn Store> = Arc::new(FjallStore::open(&path).unwrap());
    check_contract(store, move || Arc::new(FjallStore::open(&path).unwrap()));
}

#[test]
fn redb_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
    check_contract(store, move || Arc::new(RedbStore::open(&path).unwrap()));
}

/// The writer thread lets go of the backend shortly after the last handle is dropped.
fn reopen_when_free<S>(open: impl Fn() -> Result<S, mqtter_engine::StoreError>) -> S {
    for _ in 0..200 {
        if let Ok(store) = open() {
            return store;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    open().unwrap()
}

#[test]
fn staged_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let staged = |path: &std::path::Path| -> Arc<dyn Store> {
        let inner = reopen_when_free(|| FjallStore::open(path));
        Arc::new(Staged::new(Arc::new(inner), Duration::from_secs(1)).unwrap())
    };
    check_contract(staged(&path), move || staged(&path));
}

#[test]
fn staged_writes_are_visible_while_the_backend_is_stuck_and_durable_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("hang");
    let inner: Arc<dyn Store> = Arc::new(FjallStore::open(dir.path().join("fjall")).unwrap());
    let mut batch = Batch::new();
    batch.put(Space::Queue, b"a/1".to_vec(), b"stored".to_vec());
    batch.put(Space::Queue, b"a/2".to_vec(), b"stored".to_vec());
    batch.put(Space::Queue, b"a/3".to_vec(), b"stored".to_vec());
    inner.apply(batch).unwrap();
    std::fs::write(&marker, b"").unwrap();
    let hung: Arc<dyn Store> = Arc::new(HangWhile::new(inner, marker.clone()));
    let store = Arc::new(Staged::new(hung, Duration::from_millis(100)).unwrap());

    // Writes return at once and are seen by reads of the overlay.
    let mut batch = Batch::new();
    batch.put(Space::Queue, b"a/0".to_vec(), b"new".to_vec());
    batch.remove(Space::Queue, b"a/2".to_vec());
    batch.put(Space::Wills, b"c".to_vec(), b"w".to_vec());
    store.apply(batch).unwrap();
    assert_eq!(store.get(Space::Wills, b"c").unwrap(), Some(b"w".to_vec()));

    // A flush waits for the backend.
    let flushing = {
        let store = store.clone();
        std::thread::spawn(move || store.flush())
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !flushing.is_finished(),
        "a flush returned while the store was stuck"
    );
    std::fs::remove_file(&marker).unwrap();
    flushing.join().unwrap().unwrap();

    // Scans lay the staged writes over the stored pairs, in both directions and with limits.
    let keys = |pairs: mqtter_engine::Pairs| -> Vec<Vec<u8>> {
        pairs.into_iter().map(|(k, _)| k).collect()
    };
    let mut batch = Batch::new();
    batch.remove(Space::Queue, b"a/1".to_vec());
    batch.put(Space::Queue, b"a/4".to_vec(), b"new".to_vec());
    store.apply(batch).unwrap();
    assert_eq!(
        keys(store.scan_prefix(Space::Queue, b"a/").unwrap()),
        [b"a/0".to_vec(), b"a/3".to_vec(), b"a/4".to_vec()]
    );
    assert_eq!(
        keys(
            store
                .scan_range(Space::Queue, b"a/", b"a/9", 2, false)
                .unwrap()
        ),
        [b"a/0".to_vec(), b"a/3".to_vec()]
    );
    assert_eq!(
        keys(
            store
                .scan_range(Space::Queue, b"a/", b"a/4", 2, true)
                .unwrap()
        ),
        [b"a/3".to_vec(), b"a/0".to_vec()]
    );
    assert_eq!(store.get(Space::Queue, b"a/1").unwrap(), None);
}

#[test]
fn a_folder_of_an_older_version_is_migrated_and_another_engines_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sled = SledStore::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        batch.put(Space::Retained, b"t".to_vec(), b"r".to_vec());
        batch.put(Space::Accounts, b"ann".to_vec(), b"hash".to_vec());
        sled.apply(batch).unwrap();
        sled.flush().unwrap();
    }
    let store = reopen_when_free(|| open(dir.path(), Engine::Fjall));
    assert_eq!(
        store.get(Space::Retained, b"t").unwrap(),
        Some(b"r".to_vec())
    );
    assert_eq!(
        store.get(Space::Accounts, b"ann").unwrap(),
        Some(b"hash".to_vec())
    );
    drop(store);
    assert!(dir.path().join("sled-migrated").join("conf").exists());
    assert!(!dir.path().join("conf").exists());

    let refused = open(dir.path(), Engine::Redb).unwrap_err().to_string();
    assert!(
        refused.contains("holds a fjall store") && refused.contains("engine = \"fjall\""),
        "{refused}"
    );
    let reopened = reopen_when_free(|| open(dir.path(), Engine::Fjall));
    assert_eq!(
        reopened.get(Space::Retained, b"t").unwrap(),
        Some(b"r".to_vec())
    );
}
