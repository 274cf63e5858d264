//! MQTTER's domain core: the durable `Store` every other part writes through.
//!
//! # Layout
//! - [`store`]: the `Store` trait, the key spaces and the atomic `Batch`, with the durability rule.
//! - [`sled_store`]: the sled implementation of `Store` (the single-machine backend).
//! - [`commit`]: `GroupCommit`, which lets many writers wait for one `flush` together.
//! - [`graph`]: the relationship graph; [`im`]: the persons' IM world; [`things`]: the things
//!   world (bindings, links, commands, state), over the same graph.
//!
//! **Architecture Invariant:** this crate knows nothing about MQTT or the network; it does I/O only
//! through `Store`. The relationship graph and the IM domain will live here too (later stages).

pub mod accounts;
pub mod commit;
pub mod definitions;
pub mod graph;
pub mod im;
pub mod sled_store;
pub mod store;
pub mod things;

pub use commit::GroupCommit;
pub use sled_store::SledStore;
pub use store::{Batch, Op, Pairs, Space, Store, StoreError};
