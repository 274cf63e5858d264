//! The things world (docs/THINGS.md): claim codes, bindings (an owner, shares with `control` or
//! `view` rights, follow requests the owner approves), links between things, commands with
//! acknowledgement and timeout, versioned state documents, events, presence, the audit and each
//! account's feed. No network, no MQTT: every operation takes `now` (ms since the epoch) and
//! returns what the broker must do as [`Effect`]s.
//!
//! The store is the source of truth: bindings and links are relations of the graph (kept by
//! [`Im`], rebuilt from `Space::Relations` at start), commands live in `Space::Commands`, state
//! documents, claim codes and feeds in `Space::Things`, the audit in `Space::Audit`. What is in
//! memory (the deadlines of open commands, who is online, which commands are on their way to a
//! device) is rebuilt or starts empty at
//! [`Things::open`]. Every operation applies its writes in one batch: visible at once, durable
//! after the next flush (the broker acknowledges after it).

mod audit;
mod bindings;
mod claim;
mod commands;
mod feed;
mod handover;
mod links;
mod payload;
mod state;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::accounts::AccountKind;
use crate::graph::{Access, Graph};
use crate::im::{Im, ImError};
use crate::store::{Space, Store, StoreError};

pub use audit::{AuditEntry, AuditPage, Outcome};
pub use bindings::FollowState;
pub use claim::Claim;
pub use commands::{Command, Reply, Sent};
pub use handover::EFFECT_HOLDER;
pub use payload::{AckRequest, CommandRequest};
pub use state::{StateDoc, merge_patch, merge_patch_diff};

/// Limits and defaults of the things world (the daemon's `[things]` configuration).
#[derive(Debug, Clone)]
pub struct ThingsConfig {
    /// A command's ttl when its sender gives none, in seconds.
    pub cmd_ttl_default_secs: u64,
    /// The longest ttl a sender may ask for, in seconds; also how long a `cid` is remembered.
    pub cmd_ttl_max_secs: u64,
    pub claim_ttl_default_secs: u64,
    pub claim_ttl_max_secs: u64,
    /// Open commands (queued or delivered, unanswered) per thing.
    pub max_queued_cmds: usize,
    /// Largest command or event body, in bytes.
    pub max_body_bytes: usize,
    /// Largest state document after a merge, in bytes.
    pub max_state_bytes: usize,
    /// The highest chain hop accepted.
    pub max_hops: u32,
    /// Feed entries kept per account.
    pub feed_max: u64,
    /// Feed entries a device never seen before gets at its first sync.
    pub sync_max_feed: usize,
    /// Audit entries kept per thing.
    pub audit_max: u64,
    /// Largest audit page.
    pub audit_page_max: usize,
}

impl Default for ThingsConfig {
    fn default() -> Self {
        Self {
            cmd_ttl_default_secs: 30,
            cmd_ttl_max_secs: 3600,
            claim_ttl_default_secs: 600,
            claim_ttl_max_secs: 3600,
            max_queued_cmds: 1000,
            max_body_bytes: 64 * 1024,
            max_state_bytes: 64 * 1024,
            max_hops: 16,
            feed_max: 1000,
            sync_max_feed: 100,
            audit_max: 10_000,
            audit_page_max: 100,
        }
    }
}

/// A chain: what a command, state change, event or answer follows from (docs/THINGS.md section 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub id: String,
    pub hop: u32,
}

impl Chain {
    pub fn to_json(&self) -> Value {
        json!({ "id": self.id, "hop": self.hop })
    }

    /// A chain from a JSON `{"id": "...", "hop": N}`.
    pub fn from_json(value: &Value) -> Option<Chain> {
        Some(Chain {
            id: value.get("id")?.as_str()?.to_owned(),
            hop: u32::try_from(value.get("hop").and_then(Value::as_u64).unwrap_or(0)).ok()?,
        })
    }
}

/// What the broker must do after an operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Hand a stamped `cmd` envelope (the thing's command `seq`) to the thing's online devices
    /// on `thing/T/cmd` (QoS 1; v5: Response Topic `thing/T/ack`, Correlation Data the command
    /// id). The command is held for the effect ([`EFFECT_HOLDER`]) until the broker lets go
    /// with [`Things::handed_back`] (see `handover.rs`).
    Command {
        thing: String,
        seq: u64,
        envelope: Value,
    },
    /// Deliver `envelope` to every online device of `to` on its inbox; it is kept in `to`'s feed
    /// under `seq` for the devices that are offline (their next sync).
    Feed {
        to: String,
        seq: u64,
        envelope: Value,
    },
    /// A live notice to every online device of `to` on its inbox (not kept).
    Notify { to: String, envelope: Value },
    /// The answer to a v5 request: publish `envelope` to `topic` with `correlation`.
    Respond {
        topic: String,
        correlation: Option<Vec<u8>>,
        envelope: Value,
    },
    /// Publish `envelope` on `topic` (`thing/T/state`, `thing/T/status` retained; `thing/T/event`
    /// not) to the subscribers who may see the thing.
    Publish {
        topic: String,
        envelope: Value,
        retain: bool,
    },
    /// `account` may now see `thing` (state, status, events): its subscriptions there are in force
    /// and it gets the current state and presence at once.
    Grant { account: String, thing: String },
    /// `account` may no longer see `thing`: its subscriptions there end at once.
    Revoke { account: String, thing: String },
}

/// Why a things operation was refused. `code()` is what clients see.
#[derive(Debug, thiserror::Error)]
pub enum ThingError {
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
    #[error("no such claim code (wrong, or already used)")]
    WrongCode,
    #[error("the claim code expired at {at} (ms since the epoch); ask the thing for a new one")]
    CodeExpired { at: u64 },
    #[error("{0}")]
    QueueFull(String),
    #[error("chain hop {hop} is over the limit of {max}")]
    ChainTooLong { hop: u32, max: u32 },
    #[error("storage failed: {0}")]
    Store(#[from] StoreError),
}

impl ThingError {
    /// The stable error code of the wire protocol (docs/THINGS.md section 4).
    pub fn code(&self) -> &'static str {
        match self {
            ThingError::NotFound(_) => "not_found",
            ThingError::NotAuthorized(_) => "not_authorized",
            ThingError::Invalid(_) => "invalid",
            ThingError::Conflict(_) => "conflict",
            ThingError::TooLarge(_) => "too_large",
            ThingError::WrongCode => "wrong_code",
            ThingError::CodeExpired { .. } => "code_expired",
            ThingError::QueueFull(_) => "queue_full",
            ThingError::ChainTooLong { .. } => "chain_too_long",
            ThingError::Store(_) => "storage",
        }
    }
}

impl From<ImError> for ThingError {
    fn from(err: ImError) -> Self {
        match err {
            ImError::NotFound(m) => ThingError::NotFound(m),
            ImError::NotAuthorized(m) => ThingError::NotAuthorized(m),
            ImError::Invalid(m) => ThingError::Invalid(m),
            ImError::Conflict(m) | ImError::Offline(m) => ThingError::Conflict(m),
            ImError::TooLarge(m) => ThingError::TooLarge(m),
            ImError::Store(e) => ThingError::Store(e),
        }
    }
}

pub type ThingResult<T> = Result<T, ThingError>;

/// The things world.
pub struct Things {
    store: Arc<dyn Store>,
    im: Arc<Im>,
    config: ThingsConfig,
    /// Binding and link changes read then write the graph: one at a time (they are rare).
    relations: Mutex<()>,
    /// A thing's commands, answers, state and events happen under its lock (striped by id).
    thing_locks: Vec<Mutex<()>>,
    /// Open commands by deadline: (expires, thing, seq).
    deadlines: Mutex<BTreeSet<(u64, String, u64)>>,
    /// Commands on their way to a device of their thing (queued on its session, not yet
    /// acknowledged): how many sessions hold each. Not handed over again while held.
    handing: Mutex<handover::Handing>,
    /// Connected devices per thing.
    online: Mutex<HashMap<String, usize>>,
    /// The last feed number given per account (loaded from the store on first use).
    feed_seqs: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Things {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Things")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A store key: `parts` separated by NUL, then NUL and `seq` big-endian (so keys sort by `seq`).
pub(crate) fn seq_key(parts: &[&str], seq: u64) -> Vec<u8> {
    let mut k = crate::im::key(parts);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The `seq` at the end of a key made by [`seq_key`].
pub(crate) fn seq_of(key: &[u8]) -> Option<u64> {
    let tail = key.get(key.len().checked_sub(8)?..)?;
    <[u8; 8]>::try_from(tail).ok().map(u64::from_be_bytes)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    postcard::from_bytes(bytes).ok()
}

/// `{"type": kind, "ts": now, ...fields}`.
fn notice(kind: &str, now: u64, fields: Value) -> Value {
    crate::im::notice(kind, now, fields)
}

/// The id of a thing's `seq`-th command, state change or event.
pub fn item_id(thing: &str, seq: u64) -> String {
    format!("thing:{thing}#{seq}")
}

impl Things {
    /// Build the things world over the store and the IM world (whose graph holds the bindings
    /// and links). Open commands are found again in the store; nobody is online yet.
    pub fn open(
        store: Arc<dyn Store>,
        im: Arc<Im>,
        config: ThingsConfig,
    ) -> Result<Self, StoreError> {
        let mut deadlines = BTreeSet::new();
        for (k, v) in store.scan_prefix(Space::Commands, &commands::open_prefix_all())? {
            match (decode::<Command>(&v), seq_of(&k)) {
                (Some(cmd), Some(seq)) => {
                    deadlines.insert((cmd.expires, cmd.thing, seq));
                }
                _ => tracing::warn!("unreadable queued command skipped"),
            }
        }
        tracing::info!(open_commands = deadlines.len(), "things world loaded");
        Ok(Self {
            store,
            im,
            config,
            relations: Mutex::new(()),
            thing_locks: (0..64).map(|_| Mutex::new(())).collect(),
            deadlines: Mutex::new(deadlines),
            handing: Mutex::new(Default::default()),
            online: Mutex::new(HashMap::new()),
            feed_seqs: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &ThingsConfig {
        &self.config
    }

    fn graph(&self) -> std::sync::RwLockReadGuard<'_, Graph> {
        self.im.graph()
    }

    fn thing_lock(&self, thing: &str) -> MutexGuard<'_, ()> {
        let hash = thing.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        lock(&self.thing_locks[(hash % self.thing_locks.len() as u64) as usize])
    }

    pub fn is_thing(&self, id: &str) -> bool {
        self.graph().account_kind(id) == Some(AccountKind::Thing)
    }

    fn require_thing(&self, id: &str) -> ThingResult<()> {
        if self.is_thing(id) {
            Ok(())
        } else {
            Err(ThingError::NotFound(format!("no thing {id}")))
        }
    }

    /// What `who` (a person or a thing) may do with `thing`; `None`: nothing.
    pub fn access(&self, who: &str, thing: &str) -> Option<Access> {
        if who == thing && self.is_thing(thing) {
            return Some(Access::Itself);
        }
        self.graph().access(who, thing)
    }

    /// May `who` command `thing`? The owner, a `control` share and a linked thing may.
    pub fn may_command(&self, who: &str, thing: &str) -> bool {
        self.access(who, thing).is_some_and(Access::may_command)
    }

    /// May `who` see `thing`'s state, events and presence? Anyone with access may.
    pub fn may_view(&self, who: &str, thing: &str) -> bool {
        self.access(who, thing).is_some()
    }

    /// The persons bound to `thing` (owner and shares of any right).
    fn bound_persons(&self, thing: &str) -> Vec<String> {
        let graph = self.graph();
        let mut out: Vec<String> = graph.owner_of(thing).into_iter().collect();
        out.extend(graph.shares_of(thing).into_iter().map(|(p, _)| p));
        out
    }

    /// The chain of something new with id `own`: continue `given` (hop + 1), or start one.
    fn continue_chain(&self, given: Option<Chain>, own: &str) -> ThingResult<Chain> {
        match given {
            Some(chain) => {
                let hop = chain.hop.saturating_add(1);
                if hop > self.config.max_hops {
                    return Err(ThingError::ChainTooLong {
                        hop,
                        max: self.config.max_hops,
                    });
                }
                Ok(Chain { id: chain.id, hop })
            }
            None => Ok(Chain {
                id: own.to_owned(),
                hop: 0,
            }),
        }
    }

    /// A number stored big-endian under `key` in `Space::Things`.
    fn get_u64(&self, key: &[u8]) -> ThingResult<Option<u64>> {
        Ok(self
            .store
            .get(Space::Things, key)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes))
    }

    /// The next item number of `thing` (commands, state changes, events), written into `batch`.
    fn next_seq(&self, batch: &mut crate::store::Batch, thing: &str) -> ThingResult<u64> {
        let k = crate::im::key(&["seq", thing]);
        let seq = self.get_u64(&k)?.unwrap_or(0) + 1;
        batch.put(Space::Things, k, seq.to_be_bytes().to_vec());
        Ok(seq)
    }

    /// Delete what is no longer needed: claim codes a day past their expiry, `cid`s older than
    /// `cmd_ttl_max`. Returns how many entries went. (The recycle bin is purged by `Im::purge`.)
    pub fn purge(&self, now: u64) -> ThingResult<usize> {
        let mut purged = claim::purge_claims(self, now)?;
        purged += commands::purge_dedup(self, now)?;
        Ok(purged)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::SledStore;
    use crate::im::{ImConfig, MessageLog};

    pub struct World {
        pub _dir: tempfile::TempDir,
        pub im: Arc<Im>,
        pub things: Things,
    }

    /// A world on a real store in a temp folder, with these persons and things.
    pub fn world(persons: &[&str], things: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (im, things_world) = open_in(dir.path(), ThingsConfig::default());
        for p in persons {
            im.account_added(p, AccountKind::Person);
        }
        for t in things {
            im.account_added(t, AccountKind::Thing);
        }
        World {
            _dir: dir,
            im,
            things: things_world,
        }
    }

    pub fn open_in(path: &std::path::Path, config: ThingsConfig) -> (Arc<Im>, Things) {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(path).unwrap());
        let log = Arc::new(MessageLog::open(&path.join("messages")).unwrap());
        let im = Arc::new(Im::open(store.clone(), log, ImConfig::default()).unwrap());
        let things = Things::open(store, im.clone(), config).unwrap();
        (im, things)
    }

    #[test]
    fn the_things_world_is_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Things>();
        let w = world(&["alice"], &["door"]);
        assert_eq!(w.things.access("door", "door"), Some(Access::Itself));
        assert!(w.things.may_view("door", "door") && !w.things.may_command("door", "door"));
        assert_eq!(w.things.access("alice", "door"), None);
    }

    /// The `type`s of the envelopes `effects` send to `to` (notices and feed entries).
    pub fn sent_to(effects: &[Effect], to: &str) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Notify { to: t, envelope }
                | Effect::Feed {
                    to: t, envelope, ..
                } if t == to => envelope
                    .get("type")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                _ => None,
            })
            .collect()
    }

    /// Claim `thing` for `person` with a fresh code.
    pub fn claim(things: &Things, thing: &str, person: &str, now: u64) {
        let claim = things.claim_code(thing, None, now).unwrap();
        things.bind(person, &claim.code, now).unwrap();
    }
}
