//! Timers: `after(ms, name, data)` (a named, delayed event; setting a name again replaces it,
//! `cancel(name)` removes it), debounced runs and schedules (`cron`, `every`), all on one
//! thread that sleeps until the next one is due.
//!
//! **Durability.** An `after` is written to the store (space `Timers`, by name) and flushed before
//! `after` returns, and removed once the rules it fired have run (their actions staged before
//! the removal, so the removal's flush makes them durable too) or when it is cancelled: a timer
//! set before a crash or a restart fires after it (at once if it fell due meanwhile), and one
//! whose run a crash cut short fires again (at least once). Debounced runs and schedules are
//! not stored: schedules are computed again from the rules at start.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Condvar, Mutex};

use mqtter_engine::clock::Alarm;
use mqtter_engine::{Batch, Space, Store};
use serde_json::{Value, json};

use crate::events::Chain;
use crate::exec::Job;
use crate::index::Hit;

/// What a timer does when it is due.
pub(crate) enum Item {
    /// A rule's `after`: the `Tick` event `name` (with `data`) as `account`, in `chain`.
    After {
        name: String,
        /// Which setting of `name` this is: a run that sets `name` again must not have its new
        /// record removed when the old one's run ends.
        id: u64,
        account: String,
        chain: Chain,
        data: Value,
    },
    /// A debounced run: runs if no newer event came for the rule in the meantime.
    Debounce { job: Job, seq: u64 },
    /// A schedule of the rule set `generation`.
    Schedule { generation: u64, hit: Hit },
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    items: HashMap<u64, Item>,
    /// The pending `after` of each name.
    named: HashMap<String, u64>,
    next: u64,
    stopped: bool,
}

pub(crate) struct Timers {
    state: Mutex<State>,
    wake: Condvar,
    /// The next deadline, on the process's clock (a virtual clock stops at it when advanced).
    alarm: Alarm,
    /// Where `after` timers are kept across restarts.
    store: Option<std::sync::Arc<dyn Store>>,
    /// Held while a named timer's record changes in the store: a fired timer's "remove it
    /// unless it was set again" must not interleave with a new `set` of the name (it removed
    /// the new record, and the timer was lost at a crash).
    records: Mutex<()>,
}

impl Timers {
    pub fn new(store: Option<std::sync::Arc<dyn Store>>) -> Self {
        // Settings' ids are unique across restarts too (a restored record keeps its id): they
        // count on from the start's time in microseconds.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        Self {
            state: Mutex::new(State {
                next: start,
                ..State::default()
            }),
            wake: Condvar::new(),
            alarm: mqtter_engine::clock::clock().alarm(),
            store,
            records: Mutex::new(()),
        }
    }

    /// The `after` timers the store holds (set before the last stop), back on the heap.
    pub fn restore(&self) -> Result<usize, String> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let pairs = store
            .scan_prefix(Space::Timers, b"")
            .map_err(|e| e.to_string())?;
        let mut restored = 0;
        for (key, value) in pairs {
            let name = String::from_utf8_lossy(&key).into_owned();
            let Ok(v) = serde_json::from_slice::<Value>(&value) else {
                tracing::warn!(timer = %name, "rules: a stored timer does not parse; dropped");
                continue;
            };
            let chain = Chain {
                id: v["chain"].as_str().unwrap_or(&name).into(),
                hop: v["hop"]
                    .as_u64()
                    .and_then(|h| u32::try_from(h).ok())
                    .unwrap_or(0),
            };
            let item = Item::After {
                name,
                id: v["id"].as_u64().unwrap_or(0),
                account: v["account"].as_str().unwrap_or_default().to_owned(),
                chain,
                data: v["data"].clone(),
            };
            self.push(v["due"].as_u64().unwrap_or(0), item);
            restored += 1;
        }
        Ok(restored)
    }

    fn write(&self, batch: Batch) -> Result<(), String> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        store.apply(batch).map_err(|e| e.to_string())?;
        store.flush().map_err(|e| e.to_string())
    }

    /// The rules an `after` timer fired have run (or none could): its record (setting `id`)
    /// leaves the store, unless the name was set again meanwhile.
    pub fn fired(&self, name: &str, id: u64) {
        let _records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = &self.store {
            let current = store
                .get(Space::Timers, name.as_bytes())
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice::<Value>(&v).ok());
            if current.is_some_and(|v| v["id"].as_u64().unwrap_or(0) != id) {
                return;
            }
        }
        self.remove(name);
    }

    fn remove(&self, name: &str) {
        let mut batch = Batch::new();
        batch.remove(Space::Timers, name.as_bytes());
        if let Err(err) = self.write(batch) {
            tracing::warn!(timer = %name, "rules: cannot remove a fired timer: {err}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, due: u64, item: Item) {
        let mut state = self.lock();
        state.next += 1;
        let seq = state.next;
        if let Item::After { name, .. } = &item
            && let Some(old) = state.named.insert(name.clone(), seq)
        {
            state.items.remove(&old);
        }
        state.items.insert(seq, item);
        state.heap.push(Reverse((due, seq)));
        self.alarm.earlier(due);
        drop(state);
        self.wake.notify_one();
    }

    /// Set (or replace) the `after` timer `name`.
    pub fn set(
        &self,
        _rule: &str,
        name: &str,
        due: u64,
        account: String,
        chain: Chain,
        data: Value,
    ) -> Result<(), String> {
        if name.is_empty() || name.len() > 200 {
            return Err("a timer's name is 1 to 200 characters".into());
        }
        let id = {
            let mut state = self.lock();
            state.next += 1;
            state.next
        };
        let stored = json!({
            "due": due, "account": account, "chain": &*chain.id, "hop": chain.hop, "data": data,
            "id": id,
        });
        let mut batch = Batch::new();
        batch.put(Space::Timers, name.as_bytes(), stored.to_string());
        // The record and the pending timer change together: two settings of one name at once
        // (a `mode: parallel` rule, two rules sharing a name) otherwise could leave one in the
        // store and the other pending, and the stored one fired again after a restart.
        let _records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        self.write(batch)?;
        self.push(
            due,
            Item::After {
                name: name.to_owned(),
                id,
                account,
                chain,
                data,
            },
        );
        Ok(())
    }

    /// Remove the `after` timer `name`; was there one?
    pub fn cancel(&self, _rule: &str, name: &str) -> bool {
        let found = {
            let mut state = self.lock();
            match state.named.remove(name) {
                Some(seq) => state.items.remove(&seq).is_some(),
                None => false,
            }
        };
        if found {
            let _records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            self.remove(name);
        }
        found
    }

    /// How many timers are pending.
    pub fn pending(&self) -> usize {
        self.lock().items.len()
    }

    pub fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
    }

    /// Wait for the next due items (`None`: stopped). `now` gives the current time in ms (the
    /// process's clock, which the alarm waits on).
    pub fn next_due(&self, now: impl Fn() -> u64) -> Option<Vec<Item>> {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return None;
            }
            let t = now();
            let mut due = Vec::new();
            while let Some(Reverse((at, seq))) = state.heap.peek().copied() {
                if at > t {
                    break;
                }
                state.heap.pop();
                if let Some(item) = state.items.remove(&seq) {
                    if let Item::After { name, .. } = &item
                        && state.named.get(name) == Some(&seq)
                    {
                        state.named.remove(name);
                    }
                    due.push(item);
                }
            }
            if !due.is_empty() {
                return Some(due);
            }
            let next = state.heap.peek().map(|Reverse((at, _))| *at);
            state = self.alarm.wait(&self.wake, state, next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use mqtter_engine::store::{Pairs, StoreError};

    /// The setting that the store holds for `name` and the one pending in memory.
    fn settings(timers: &Timers, store: &dyn Store, name: &str) -> (u64, u64) {
        let stored = store
            .get(Space::Timers, name.as_bytes())
            .expect("read the store")
            .expect("a record");
        let stored: Value = serde_json::from_slice(&stored).expect("a record's JSON");
        let state = timers.lock();
        let pending = match &state.items[&state.named[name]] {
            Item::After { id, .. } => *id,
            _ => unreachable!("a named timer is an `after`"),
        };
        (stored["id"].as_u64().expect("an id"), pending)
    }

    /// A store whose flush returns at once: the settings' writes then take microseconds, not
    /// an fsync each, and settings racing each other interleave as they would on a fast disk.
    #[derive(Debug)]
    struct Unsynced(mqtter_engine::RedbStore);

    impl Store for Unsynced {
        fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.0.get(space, key)
        }
        fn apply(&self, batch: Batch) -> Result<(), StoreError> {
            self.0.apply(batch)
        }
        fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Pairs, StoreError> {
            self.0.scan_prefix(space, prefix)
        }
        fn scan_range(
            &self,
            space: Space,
            from: &[u8],
            to: &[u8],
            limit: usize,
            reverse: bool,
        ) -> Result<Pairs, StoreError> {
            self.0.scan_range(space, from, to, limit, reverse)
        }
        fn flush(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn size_on_disk(&self) -> u64 {
            self.0.size_on_disk()
        }
    }

    /// Settings of one name at once (a `mode: parallel` rule, two rules sharing a name): the
    /// setting the store keeps is the one pending, so a restart does not fire another.
    #[test]
    fn settings_of_one_name_at_once_leave_the_store_and_memory_agreeing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(Unsynced(
            mqtter_engine::RedbStore::open(dir.path().join("timers.redb")).expect("open"),
        ));
        let timers = Arc::new(Timers::new(Some(store.clone())));
        for round in 0..200 {
            let name = format!("wake-{round}");
            let setters: Vec<_> = (0..4)
                .map(|_| {
                    let (timers, name) = (timers.clone(), name.clone());
                    std::thread::spawn(move || {
                        let chain = Chain::start("c");
                        timers.set("r", &name, u64::MAX / 2, "a".into(), chain, Value::Null)
                    })
                })
                .collect();
            for setter in setters {
                setter.join().expect("a setter").expect("set");
            }
            let (stored, pending) = settings(&timers, &*store, &name);
            assert_eq!(
                stored, pending,
                "round {round}: the store and memory disagree"
            );
        }
        assert_eq!(timers.pending(), 200);
    }
}
