//! Store contract tests, written once and run against every backend.

use std::sync::Arc;

use mqtter_engine::{Batch, SledStore, Space, Store};

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
