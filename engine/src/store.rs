//! The `Store` trait: a small, namespaced, ordered key-value store with atomic batches.
//!
//! **Durability rule.** A write made with [`Store::apply`] is visible to readers at once, and is
//! *durable* (survives a crash or a power cut) once a later call to [`Store::flush`] has returned
//! `Ok`. Callers that must not lose a write (a QoS 1/2 message the broker is about to acknowledge)
//! apply it, then wait for a flush, usually through [`crate::GroupCommit`] so that one flush serves
//! many writers. A batch is atomic: after a crash either all of its operations are there or none.
//!
//! The trait is deliberately a key-value shape (spaces, byte keys, prefix scans): it maps onto any
//! ordered store (sled today; a replicated store later) without the callers changing.

use std::fmt;

/// Key-value pairs as a scan returns them, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A key space: one sled tree, one column family or one table in another backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// MQTT session records, by client id.
    Sessions,
    /// Messages owed to persistent sessions, by client id + sequence number.
    Queue,
    /// Retained messages, by topic.
    Retained,
    /// Accounts (persons and things) with their password hashes, by account id.
    Accounts,
    /// Small facts about the store itself (format version, counters).
    Meta,
    /// Relations of the graph, by kind + endpoints.
    Relations,
    /// Groups, by group id.
    Groups,
    /// The recycle bin: removed relations restorable until they expire, by owner + kind + peer.
    Recycle,
    /// No longer written (conversations' last sequence numbers): the message log knows them;
    /// entries of older versions are removed at start.
    Conversations,
    /// No longer written (IM messages): they live in the message log (`im::MessageLog`);
    /// entries of older versions move there at start.
    Messages,
    /// No longer written (client message ids): the message log keeps them.
    Dedup,
    /// Delivery and read cursors, by client id or account + conversation.
    Cursors,
    /// No longer written (the direct conversations of an account): derived from the message log.
    Inboxes,
    /// Last wills of connected clients, by client id (published after a crash).
    Wills,
    /// The things world: state documents, claim codes, item counters, feeds and their cursors.
    Things,
    /// Open commands to things (queued or delivered, unanswered) and the `cid`s seen.
    Commands,
    /// Each thing's audit of commands, by thing + sequence number.
    Audit,
    /// The rules engine's pending `after` timers, by name.
    Timers,
}

impl Space {
    /// Every space, in a fixed order (backends open them all at start).
    pub const ALL: [Space; 18] = [
        Space::Sessions,
        Space::Queue,
        Space::Retained,
        Space::Accounts,
        Space::Meta,
        Space::Relations,
        Space::Groups,
        Space::Recycle,
        Space::Conversations,
        Space::Messages,
        Space::Dedup,
        Space::Cursors,
        Space::Inboxes,
        Space::Wills,
        Space::Things,
        Space::Commands,
        Space::Audit,
        Space::Timers,
    ];

    /// The stable one-byte tag of the space on disk. Never reuse or renumber a tag.
    pub fn tag(self) -> u8 {
        match self {
            Space::Sessions => 0,
            Space::Queue => 1,
            Space::Retained => 2,
            Space::Accounts => 3,
            Space::Meta => 4,
            Space::Relations => 5,
            Space::Groups => 6,
            Space::Recycle => 7,
            Space::Conversations => 8,
            Space::Messages => 9,
            Space::Dedup => 10,
            Space::Cursors => 11,
            Space::Inboxes => 12,
            Space::Wills => 13,
            Space::Things => 14,
            Space::Commands => 15,
            Space::Audit => 16,
            Space::Timers => 17,
        }
    }

    /// The stable name of the space on disk.
    pub fn name(self) -> &'static str {
        match self {
            Space::Sessions => "sessions",
            Space::Queue => "queue",
            Space::Retained => "retained",
            Space::Accounts => "accounts",
            Space::Meta => "meta",
            Space::Relations => "relations",
            Space::Groups => "groups",
            Space::Recycle => "recycle",
            Space::Conversations => "conversations",
            Space::Messages => "messages",
            Space::Dedup => "dedup",
            Space::Cursors => "cursors",
            Space::Inboxes => "inboxes",
            Space::Wills => "wills",
            Space::Things => "things",
            Space::Commands => "commands",
            Space::Audit => "audit",
            Space::Timers => "timers",
        }
    }
}

/// `key` behind the one-byte tag of `space`: the key of backends that keep every space in one
/// tree (sled, fjall).
pub(crate) fn prefixed(space: Space, key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(key.len() + 1);
    full.push(space.tag());
    full.extend_from_slice(key);
    full
}

/// One write in a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        space: Space,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Remove {
        space: Space,
        key: Vec<u8>,
    },
}

/// Writes applied together, atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put {
            space,
            key: key.into(),
            value: value.into(),
        });
    }

    pub fn remove(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Remove {
            space,
            key: key.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }
}

/// What can go wrong in a store. Every variant carries enough to tell the user what happened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk or the file system refused (full disk, permissions, I/O error).
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The stored data is not what this version can read.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The data folder is not one this configuration may open (another engine wrote it).
    #[error("{0}")]
    Refused(String),
    /// The backend failed in another way.
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// The store every durable fact of MQTTER goes through. See the module doc for the durability rule.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// The value under `key`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Apply every operation of `batch` atomically. Visible at once; durable after the next flush.
    fn apply(&self, batch: Batch) -> Result<(), StoreError>;

    /// Every pair whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, space: Space, prefix: &[u8]) -> Result<Pairs, StoreError>;

    /// Up to `limit` pairs with `from <= key < to`, in key order, or in reverse key order (from
    /// the end of the range) when `reverse`.
    fn scan_range(
        &self,
        space: Space,
        from: &[u8],
        to: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Pairs, StoreError>;

    /// Make everything applied before this call durable.
    fn flush(&self) -> Result<(), StoreError>;

    /// Bytes the store uses on disk (an estimate), for `$SYS` and benchmarks.
    fn size_on_disk(&self) -> u64;
}
