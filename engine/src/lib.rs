//! MQTTER's domain core, without a network: the durable `Store` every other part writes
//! through, accounts, the relationship graph, the IM domain, the definitions' parsing, and the
//! event seam between the daemon and the rules engine.
//!
//! # Layout
//! - [`store`]: the `Store` trait, the key spaces and the atomic `Batch`, with the durability rule.
//! - [`fjall_store`], [`redb_store`], [`sled_store`]: the backends; [`open`] picks one for a data
//!   folder (and migrates a folder of an older version).
//! - [`staged`]: `Staged`, which takes the backend's waiting off the callers' threads;
//!   [`watch`] logs store calls that take too long; [`hang`] is a store stuck on demand (tests).
//! - [`clock`]: the process's clock, the system's or a virtual one a simulator advances.
//! - [`commit`]: `GroupCommit`, which lets many writers wait for one `flush` together.
//! - [`accounts`]: persons and things with argon2 password hashes.
//! - [`graph`]: the relationship graph (friends, blocks, groups and their members).
//! - [`im`]: the IM domain (friends, groups, conversations, the message log), returning effects.
//! - [`things`]: the things world (bindings, links, commands, state), over the same graph.
//! - [`definitions`]: parsing and applying the YAML definitions (files are read by `mqtter-rules`).
//! - [`events`]: `Event`, `EventSink`, `Events` (the seam every source emits through), `Actions`.
//!
//! **Architecture Invariant:** this crate knows nothing about MQTT or the network; it does I/O only
//! through `Store` and the IM `MessageLog`, and takes `now` as a parameter where time matters.

pub mod accounts;
pub mod clock;
pub mod commit;
pub mod definitions;
pub mod events;
pub mod fjall_store;
pub mod graph;
pub mod hang;
pub mod im;
pub mod open;
pub mod redb_store;
pub mod sled_store;
pub mod staged;
pub mod store;
pub mod things;
mod unflushed;
pub mod watch;

pub use commit::GroupCommit;
pub use fjall_store::FjallStore;
pub use open::Engine;
pub use redb_store::RedbStore;
pub use sled_store::SledStore;
pub use staged::Staged;
pub use store::{Batch, Op, Pairs, Space, Store, StoreError};
