//! The IM domain for persons: friends, blocks, groups, the recycle bin, conversations with
//! per-conversation sequence numbers, cursors and receipts. No network: every operation takes
//! `now` (ms since the epoch) and returns what the broker must do as [`Effect`]s.
//!
//! The store is the source of truth for relations, groups and cursors, the [`MessageLog`] for
//! messages; the [`Graph`] and the small caches here are rebuilt from them at start
//! ([`Im::open`]).

mod conversations;
pub mod direct;
mod envelope;
mod friends;
mod groups;
pub mod log;
mod recycle;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::accounts::{AccountId, AccountKind, AccountRecord};
use crate::events::RelationChange;
use crate::graph::{Graph, Origin, Relation};
use crate::store::{Batch, Space, Store, StoreError};

pub use conversations::{Missed, Stamped, conv_direct, conv_group};
pub use direct::DirectKeys;
pub use envelope::{Body, notice, parse_body, res};
pub use friends::FriendState;
pub use groups::{GroupRecord, JoinState};
pub use log::{LogError, MessageLog};
pub use recycle::{RecycleEntry, RecycleKind};

/// Limits and defaults of the IM world (from the daemon's `[im]` configuration).
#[derive(Debug, Clone)]
pub struct ImConfig {
    /// Retention in the recycle bin when the client names none, in seconds.
    pub recycle_default_secs: u64,
    /// The most a client may ask for, in seconds.
    pub recycle_max_secs: u64,
    /// Largest message body, in bytes.
    pub max_body_bytes: usize,
    /// Missed messages replayed per conversation at CONNECT; past it the client pages with `history`.
    pub sync_max_per_conv: usize,
    /// Largest `history` page.
    pub history_max: usize,
}

impl Default for ImConfig {
    fn default() -> Self {
        Self {
            recycle_default_secs: 7 * 24 * 3600,
            recycle_max_secs: 30 * 24 * 3600,
            max_body_bytes: 64 * 1024,
            sync_max_per_conv: 1000,
            history_max: 100,
        }
    }
}

/// What the broker must do after an operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Deliver a notice envelope to every online device of an account (its inbox).
    Notify { to: String, envelope: Value },
    /// The relationship graph changed: the broker shows new friends each other's presence and
    /// emits the change as an event.
    Related(RelationChange),
    /// `to` asked again for what it already has (a friend's status): show it `of`'s presence.
    ShowPresence { to: String, of: String },
}

/// Why an IM operation was refused. `code()` is what clients see.
#[derive(Debug, thiserror::Error)]
pub enum ImError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotAuthorized(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    /// The person asked for is not online (a direct channel needs both sides there).
    #[error("{0}")]
    Offline(String),
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

impl ImError {
    /// The stable error code of the wire protocol (docs/PROTOCOL.md).
    pub fn code(&self) -> &'static str {
        match self {
            ImError::NotFound(_) => "not_found",
            ImError::NotAuthorized(_) => "not_authorized",
            ImError::Invalid(_) => "invalid",
            ImError::Conflict(_) => "conflict",
            ImError::TooLarge(_) => "too_large",
            ImError::Offline(_) => "offline",
            ImError::Store(_) => "storage",
        }
    }
}

pub type ImResult<T> = Result<T, ImError>;

/// Per-person settings from the definitions files.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PersonSettings {
    /// Accept every friend request at once.
    pub auto_accept: bool,
}

/// The IM world.
pub struct Im {
    store: Arc<dyn Store>,
    config: ImConfig,
    graph: RwLock<Graph>,
    groups: RwLock<HashMap<String, GroupRecord>>,
    settings: RwLock<HashMap<String, PersonSettings>>,
    /// The messages of every conversation (see [`MessageLog`]).
    log: Arc<MessageLog>,
    /// Each person's direct conversations (derived from the log).
    direct_convs: Mutex<HashMap<String, Vec<String>>>,
    /// Stamping, storing and fanning out one conversation's messages happen under its lock, so
    /// every member sees the same order.
    conv_locks: Vec<Mutex<()>>,
    /// Relation changes read then write the graph: one at a time (they are rare).
    relations: Mutex<()>,
    /// Bumped whenever the graph may change (see [`Im::graph_version`]).
    graph_version: AtomicU64,
    /// The keys of direct channels' messages (see [`direct`]).
    direct_keys: DirectKeys,
}

impl std::fmt::Debug for Im {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Im")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A store key from parts separated by NUL (ids never contain NUL).
pub(crate) fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    postcard::from_bytes(bytes).ok()
}

fn relation_key(tag: &str, a: &str, b: &str) -> Vec<u8> {
    let (a, b) = if crate::graph::symmetric(tag) && a > b {
        (b, a)
    } else {
        (a, b)
    };
    key(&[tag, a, b])
}

impl Im {
    /// Build the IM world from the store (accounts, groups, relations) and the message log.
    /// Messages that an earlier version kept in the store move to the log first.
    pub fn open(
        store: Arc<dyn Store>,
        log: Arc<MessageLog>,
        config: ImConfig,
    ) -> Result<Self, StoreError> {
        conversations::move_stored_messages(&*store, &log)?;
        let direct_convs = Mutex::new(conversations::direct_conversations(&log));
        let mut graph = Graph::default();
        for (id, value) in store.scan_prefix(Space::Accounts, b"")? {
            let id = String::from_utf8_lossy(&id).into_owned();
            match decode::<AccountRecord>(&value) {
                Some(record) => graph.add_account(&id, record.kind),
                None => tracing::warn!(account = id, "unreadable account skipped"),
            }
        }
        let mut groups = HashMap::new();
        for (id, value) in store.scan_prefix(Space::Groups, b"")? {
            let id = String::from_utf8_lossy(&id).into_owned();
            if let Some(record) = decode::<GroupRecord>(&value) {
                graph.add_group(&id);
                groups.insert(id, record);
            }
        }
        let mut loaded = 0;
        for (k, value) in store.scan_prefix(Space::Relations, b"")? {
            let parts: Vec<String> = k
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let (Some(a), Some(b), Some(relation)) =
                (parts.get(1), parts.get(2), decode::<Relation>(&value))
            else {
                continue;
            };
            if graph.set(a, b, relation) {
                loaded += 1;
            }
        }
        let mut settings = HashMap::new();
        for (id, value) in store.scan_prefix(Space::Meta, b"settings\0")? {
            let id = String::from_utf8_lossy(&id["settings\0".len()..]).into_owned();
            if let Some(s) = decode::<PersonSettings>(&value) {
                settings.insert(id, s);
            }
        }
        tracing::info!(
            relations = loaded,
            groups = groups.len(),
            "relationship graph loaded"
        );
        let direct_keys = DirectKeys::load(&*store)?;
        Ok(Self {
            store,
            config,
            graph: RwLock::new(graph),
            groups: RwLock::new(groups),
            settings: RwLock::new(settings),
            log,
            direct_convs,
            conv_locks: (0..64).map(|_| Mutex::new(())).collect(),
            relations: Mutex::new(()),
            graph_version: AtomicU64::new(0),
            direct_keys,
        })
    }

    /// The keys of direct channels' messages.
    pub fn direct_keys(&self) -> &DirectKeys {
        &self.direct_keys
    }

    pub fn config(&self) -> &ImConfig {
        &self.config
    }

    pub(crate) fn graph(&self) -> RwLockReadGuard<'_, Graph> {
        self.graph.read().unwrap_or_else(|p| p.into_inner())
    }

    fn relations_lock(&self) -> MutexGuard<'_, ()> {
        self.relations.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn graph_mut(&self) -> RwLockWriteGuard<'_, Graph> {
        let guard = self.graph.write().unwrap_or_else(|p| p.into_inner());
        // Bumped while the write lock is held: whoever reads the version under a read lock
        // sees the graph that version names.
        self.graph_version.fetch_add(1, Ordering::Release);
        guard
    }

    /// Changes whenever the graph may have changed: lets the broker cache what it derives from
    /// it (a group's member sessions) and notice when to derive it again.
    pub fn graph_version(&self) -> u64 {
        self.graph_version.load(Ordering::Acquire)
    }

    fn direct_convs(&self) -> MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.direct_convs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The message log, to make it durable (the broker's flushes sync it with the store).
    pub fn log(&self) -> &Arc<MessageLog> {
        &self.log
    }

    /// Read access to the graph for the broker's authorisation checks.
    pub fn with_graph<T>(&self, f: impl FnOnce(&Graph) -> T) -> T {
        f(&self.graph())
    }

    /// An account was added (by the CLI, a definitions file) while running.
    pub fn account_added(&self, id: &str, kind: AccountKind) {
        self.graph_mut().add_account(id, kind);
    }

    pub fn is_person(&self, id: &str) -> bool {
        self.graph().account_kind(id) == Some(AccountKind::Person)
    }

    pub fn set_settings(&self, id: &str, settings: PersonSettings) -> ImResult<()> {
        let mut batch = Batch::new();
        batch.put(Space::Meta, key(&["settings", id]), encode(&settings));
        self.store.apply(batch)?;
        self.settings
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), settings);
        Ok(())
    }

    fn settings_of(&self, id: &str) -> PersonSettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
            .unwrap_or_default()
    }

    /// Write a relation to the store and the graph.
    pub(crate) fn put_relation(&self, batch: &mut Batch, a: &str, b: &str, relation: Relation) {
        batch.put(
            Space::Relations,
            relation_key(relation.tag(), a, b),
            encode(&relation),
        );
        self.graph_mut().set(a, b, relation);
    }

    /// Remove a relation from the store and the graph; returns it.
    pub(crate) fn drop_relation(
        &self,
        batch: &mut Batch,
        a: &str,
        b: &str,
        tag: &str,
    ) -> Option<Relation> {
        let removed = self.graph_mut().unset(a, b, tag);
        if removed.is_some() {
            batch.remove(Space::Relations, relation_key(tag, a, b));
        }
        removed
    }

    fn require_person(&self, id: &str) -> ImResult<()> {
        if self.is_person(id) {
            Ok(())
        } else {
            Err(ImError::NotFound(format!("no person {id}")))
        }
    }

    /// A friendship from a definitions file (origin `File`, so that withdrawing it from the
    /// file can tell it from one the persons made); the effects of a new one.
    pub fn define_friends(&self, a: &str, b: &str, now: u64) -> ImResult<Vec<Effect>> {
        self.require_person(a)?;
        self.require_person(b)?;
        if a == b {
            return Err(ImError::Invalid("a person cannot befriend themself".into()));
        }
        let _guard = self.relations_lock();
        let mut batch = Batch::new();
        let mut effects = Vec::new();
        if !self.graph().are_friends(a, b) {
            friends::became_friends(a, b, now, false, &mut effects);
            self.drop_relation(&mut batch, a, b, "freq");
            self.drop_relation(&mut batch, b, a, "freq");
            self.put_relation(
                &mut batch,
                a,
                b,
                Relation::Friend {
                    since: now,
                    origin: Origin::File,
                },
            );
        }
        self.store.apply(batch)?;
        Ok(effects)
    }

    /// Remember when an account was last seen (at DISCONNECT).
    pub fn set_last_seen(&self, account: &str, ts: u64) -> ImResult<()> {
        let mut batch = Batch::new();
        batch.put(
            Space::Meta,
            key(&["seen", account]),
            ts.to_be_bytes().to_vec(),
        );
        self.store.apply(batch)?;
        Ok(())
    }

    pub fn last_seen(&self, account: &str) -> Option<u64> {
        let value = self
            .store
            .get(Space::Meta, &key(&["seen", account]))
            .ok()??;
        <[u8; 8]>::try_from(value.as_slice())
            .ok()
            .map(u64::from_be_bytes)
    }

    /// Check an id for a new group or account.
    pub fn check_id(id: &str) -> ImResult<()> {
        AccountId::parse(id)
            .map(|_| ())
            .map_err(|e| ImError::Invalid(e.to_string()))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::SledStore;

    pub fn im_with(persons: &[&str]) -> (tempfile::TempDir, Im) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let log = Arc::new(MessageLog::open(&dir.path().join("messages")).unwrap());
        let im = Im::open(store, log, ImConfig::default()).unwrap();
        for p in persons {
            im.account_added(p, AccountKind::Person);
        }
        (dir, im)
    }

    pub fn notices(effects: &[Effect], to: &str) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Notify { to: t, envelope } if t == to => envelope
                    .get("type")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                _ => None,
            })
            .collect()
    }
}
