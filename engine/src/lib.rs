//! MQTTER's domain core: the durable `Store` every other part writes through.
//!
//! # Layout
//! - [`store`]: the `Store` trait, the key spaces and the atomic `Batch`, with the durability rule.
//! - [`fjall_store`], [`redb_store`], [`sled_store`]: the backends; [`open`] picks one for a data
//!   folder (and migrates a folder of an older version).
//! - [`staged`]: `Staged`, which takes the backend's waiting off the callers' threads;
//!   [`watch`] logs store calls that take too long; [`hang`] is a store stuck on demand (tests).
//! - [`commit`]: `GroupCommit`, which lets many writers wait for one `flush` together.
//! - [`graph`]: the relationship graph; [`im`]: the persons' IM world; [`things`]: the things
//!   world (bindings, links, commands, state), over the same graph.
//!
//! **Architecture Invariant:** this crate knows nothing about MQTT or the network; it does I/O only
//! through `Store`. The relationship graph and the IM domain will live here too (later stages).

pub mod accounts;
pub mod commit;
pub mod definitions;
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
pub mod watch;

pub use commit::GroupCommit;
pub use fjall_store::FjallStore;
pub use open::Engine;
pub use redb_store::RedbStore;
pub use sled_store::SledStore;
pub use staged::Staged;
pub use store::{Batch, Op, Pairs, Space, Store, StoreError};
