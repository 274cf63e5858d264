//! The things world of docs/PROTOCOL.md section 10, typed: [`ThingClient`] for a thing's device
//! (commands to answer, state, events, claim codes, linked things) and the person's side on
//! [`crate::Client`] (bind, list, share, follow, link, command with a ttl and its outcome,
//! state, the audit).
//!
//! # Layout
//! - `types.rs`: the envelopes and answers ([`Command`], [`CommandAck`], [`CommandTimeout`],
//!   [`ThingState`], [`ThingEvent`], [`ThingEntry`], [`AuditEntry`], ...).
//! - `person.rs`: the person's calls (`impl Client`), commands and their outcome.
//! - `device.rs`: [`ThingClient`].
//!
//! How the envelopes reach the stream (each command and feed entry once) is `core/things.rs`.

mod device;
mod person;
mod types;

pub use device::ThingClient;
pub use person::CommandOptions;
pub use types::{
    Access, Ack, AuditEntry, AuditPage, ClaimCode, Command, CommandAck, CommandTimeout, Commanded,
    FollowState, Outcome, Rights, ThingEntry, ThingEvent, ThingState,
};
