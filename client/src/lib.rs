//! MQTTER's client library for persons and things: the IM and things worlds of docs/PROTOCOL.md
//! over MQTT 5, typed.
//!
//! # Layout
//! - `options.rs`: [`Options`] (server, account, device, cache folder, backoff).
//! - `types.rs`: the protocol's shapes ([`Message`], [`Roster`], [`Presence`], [`Receipt`],
//!   [`Notice`]) and [`Event`], what the stream yields.
//! - `client.rs`: [`Client`] (every operation, async) and [`EventStream`].
//! - `core/`: the one task that owns the connection's state, a file per concept: the pump
//!   (rumqttc's event loop with backoff), the connection's packets, the outbox (each PUBLISH
//!   kept until acknowledged or answered, resent across reconnects), own messages, what
//!   arrives, dedup and gap filling, the roster snapshot.
//! - `things/`: the things world: [`ThingClient`] (a thing's device) and the person's calls on
//!   [`Client`] (bind, share, follow, link, command with its outcome, state, the audit).
//! - `reflex/`: [`Reflex`], a virtual thing from a YAML/Rhai file, run on a caller's timer.
//! - `cache.rs`: [`Cache`], the local history cache (redb, one file per device).
//! - `p2p.rs` and `p2p/`: [`p2p::Direct`], direct channels between friends' devices
//!   (negotiated through the server, a TCP connection it never sees, uploaded afterwards).
//!
//! The library talks MQTT only: it depends on no daemon code. docs/CLIENT.md has an example per
//! flow; `tests/client_persons.rs` and
//! `tests/client_resume.rs` use every flow against the real daemon, `tests/client_things.rs`
//! the things flows.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mqtter_client::Error> {
//! use mqtter_client::{Client, Event, Options, Target};
//! let opts = Options::new("127.0.0.1", 1883, "alice", "secret", "laptop");
//! let (alice, mut events) = Client::connect(opts).await?;
//! alice.send_text(&Target::Person("bob".into()), "hi").await?;
//! while let Some(event) = events.next().await {
//!     if let Event::Message(m) = event {
//!         println!("{}: {}", m.from, m.text().unwrap_or_default());
//!     }
//! }
//! # Ok(()) }
//! ```

mod cache;
mod client;
mod core;
mod error;
mod options;
pub mod p2p;
pub mod reflex;
pub mod things;
mod types;

pub use cache::Cache;
pub use client::{Client, EventStream, Sent};
pub use core::Stats;
pub use error::{Error, Result};
pub use options::{Backoff, Options};
pub use reflex::{RealTime, Reflex, ReflexAction, ReflexError, ReflexReport, ReflexTimer};
pub use things::{
    Access, Ack, AuditEntry, AuditPage, ClaimCode, Command, CommandAck, CommandOptions,
    CommandTimeout, Commanded, FollowState, Outcome, Rights, ThingClient, ThingEntry, ThingEvent,
    ThingState,
};
pub use types::{
    Chain, ConvId, Event, Friend, FriendState, GroupEntry, Member, Message, Notice, Page, Presence,
    Range, Receipt, ReceiptKind, RecycleEntry, Requests, Role, Roster, Target,
};
