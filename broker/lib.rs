//! MQTTER: an MQTT 3.1.1 / 5.0 broker and an IM server for persons (things and the rules engine
//! follow). This crate is the daemon: everything that knows MQTT and the network.
//!
//! # Layout
//! - [`daemon`]: the daemon as a library call: bind (store, listeners, definitions, rules), run.
//! - [`server`]: listeners (TCP, WebSocket), background tasks, graceful shutdown.
//! - [`connection`]: one client connection: CONNECT handshake and the packet loop.
//! - [`parking`]: the parking lot where idle connections wait without a task.
//! - [`wire`]: ntex-mqtt's v3.1.1 and v5 codecs behind one version-neutral interface.
//! - [`broker`]: the shared state and the publish path of plain MQTT (the IM world's is [`im`]).
//! - [`session`]: a client's session: subscriptions, queue, in-flight messages.
//! - [`router`]: the subscription trie, shared subscriptions, overlap aggregation.
//! - [`topic`]: topic name and filter validation and matching.
//! - [`message`]: the version-neutral message model and its stored form.
//! - [`persist`]: how sessions, queues and retained messages are laid out in the store.
//! - [`store_bench`]: `mqtter bench-store`, the store's stress test.
//! - [`on_disk`]: which clients have wills and sessions in the store (the others never read it).
//! - [`auth`]: accounts (argon2) and the ACL for plain topics.
//! - [`logins`]: password checks, bounded in number and slowed down after failures.
//! - [`identity`]: who a client id and its session belong to.
//! - [`config`]: the TOML configuration and its commented defaults.
//! - [`disk`]: the free-space limit of the data folder's filesystem.
//! - [`metrics`]: the broker's counters.
//! - [`sys`]: `$SYS/broker/...`, which publishes them.
//! - [`prometheus`]: the `/metrics` endpoint (Prometheus text format).
//! - [`counted_store`]: the `Store` wrapper that counts failed writes.
//! - [`worlds`]: the interface between the connection layer and the worlds (`World`, `Member`),
//!   and which world a topic belongs to.
//! - [`im`]: the IM gate: `person/`, `group/`, `$im/` authorised by the graph, presence, sync.
//! - [`things`]: the things world: `thing/`, `$things/`: claims, bindings, commands, state, links.
//! - [`actions`]: the daemon's `mqtter_engine::events::Actions` (what the rules engine does).
//! - [`automation`]: the rules engine in the daemon, and its `$SYS/mqtter/rules/...` topics.
//! - [`sim`]: `mqtter sim`, scenarios run against a rules folder on a virtual clock.
//! - [`rules_cli`]: `mqtter rules list` and `mqtter rules trace`, read from a running daemon.
//! - [`chat`]: `mqtter chat`, the terminal client for a person (on `mqtter-client`).
//! - [`thing_cli`]: `mqtter thing`, a virtual thing from a reflex file.
//! - [`login_args`]: how those two log in; [`signals`]: SIGINT and SIGTERM.

pub mod actions;
pub mod auth;
pub mod automation;
pub mod broker;
pub mod chat;
pub mod config;
pub mod connection;
pub mod counted_store;
pub mod daemon;
pub mod disk;
pub mod identity;
pub mod im;
pub mod login_args;
pub mod logins;
pub mod message;
pub mod metrics;
pub mod on_disk;
pub mod parking;
pub mod persist;
pub mod prometheus;
pub mod router;
pub mod rules_cli;
pub mod server;
pub mod session;
pub mod signals;
pub mod sim;
pub mod store_bench;
pub mod sys;
pub mod thing_cli;
pub mod things;
pub mod topic;
pub mod wire;
pub mod worlds;

#[cfg(test)]
mod layering;

/// mimalloc rather than the system allocator: messages, deliveries and the store allocate on
/// every hop, and glibc's malloc and free were about a sixth of a worker's time under load.
/// The feature `system-allocator` builds with the system's instead, for heap profilers that
/// see malloc only (heaptrack: docs/BENCHMARKS.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(target_os = "linux")]
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_arena_eager_commit` (option 4 of the mimalloc 3 that libmimalloc-sys 0.1.49
/// builds): off, as with `MIMALLOC_ARENA_EAGER_COMMIT=0`. Committed eagerly, the store's large
/// zeroed tables became resident at start: 48 MiB instead of 9 MiB for an empty broker.
#[cfg(target_os = "linux")]
extern "C" fn lazy_arena_commit() {
    // SAFETY: sets a plain option of the allocator; callable at any time, also before `main`.
    unsafe { mi_option_set(4, 0) };
}

/// Runs before `main` (and before the store's first large allocation).
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static LAZY_ARENA_COMMIT: extern "C" fn() = lazy_arena_commit;

pub use broker::Broker;
pub use config::Config;
pub use server::{Listeners, run};
