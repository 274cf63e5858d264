//! The worlds a topic belongs to, and the one small interface through which the connection
//! layer hands them its packets.
//!
//! Plain MQTT topics go through the router, `$SYS` is the broker's own (read through the
//! router, never written by a client), and every other topic belongs to one [`World`] (the IM
//! world: `person/`, `group/`, `$im/`; the things world: `thing/`, `$things/`). A world owns
//! its topics: it authorises, stamps, stores and delivers what is published there, and keeps
//! its per-connection state in a [`Member`] that the connection holds without knowing what is
//! in it. Adding a world is one entry in `Broker::worlds`; the connection layer does not change.

use std::sync::Arc;

use ntex_bytes::{ByteString, Bytes};

use crate::message::{Message, MessageProps, QoS, Receipt, Stamp};
use crate::session::Session;

/// A PUBLISH on one of a world's topics.
#[derive(Debug)]
pub struct Publish<'a> {
    pub topic: &'a str,
    pub payload: Bytes,
    pub qos: QoS,
    pub props: Option<&'a MessageProps>,
    /// Sent by the rules engine as the member's account (an action), not by a client.
    pub by_rule: bool,
}

/// What the connection answers a PUBLISH on a world's topic with.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The v5 reason code (a v3 client is acknowledged with success whatever it is: it cannot
    /// be refused a PUBLISH; the world tells it why on its inbox).
    pub code: u8,
    /// The acknowledgement waits until what the PUBLISH wrote is durable.
    pub needs_flush: bool,
    /// What the PUBLISH should have written could not be: it must not be acknowledged (the
    /// connection closes without an answer, so the client sends it again).
    pub storage_failed: bool,
    /// Messages on plain topics (answers to a v5 Response Topic): the caller publishes them on
    /// the plain publish path (a world does not route plain topics).
    pub answers: Vec<Arc<Message>>,
}

impl Outcome {
    pub fn code(code: u8) -> Self {
        Self {
            code,
            needs_flush: false,
            storage_failed: false,
            answers: Vec::new(),
        }
    }

    /// Not stored: not acknowledged.
    pub fn storage_failed() -> Self {
        Self {
            storage_failed: true,
            ..Self::code(crate::wire::reason::UNSPECIFIED)
        }
    }
}

/// A client that has just been accepted (its CONNACK is written), as the worlds see it.
#[derive(Debug)]
pub struct Joining<'a> {
    /// The connection's generation: unique per connection, even for one client id.
    pub token: u64,
    /// The authenticated account; `None` for an anonymous client.
    pub account: Option<&'a str>,
    pub client_id: &'a Arc<str>,
    pub session: &'a Arc<Session>,
    pub v5: bool,
    /// The CONNECT's v5 user properties.
    pub user_properties: &'a [(ByteString, ByteString)],
}

/// A world: the topics it owns, and how a connection becomes one of its members.
pub trait World: Send + Sync {
    /// Does this topic name or filter belong to the world?
    fn owns(&self, topic: &str) -> bool;

    /// A client connected: its state in this world when its account lives here (`None`
    /// otherwise: its packets on the world's topics are refused). Whatever the world sends
    /// right after the CONNACK (a sync) is queued on the session here.
    fn join(self: Arc<Self>, client: &Joining<'_>, now: u64) -> Option<Box<dyn Member>>;
}

/// A world's state of one connection, held by the connection. Every method runs on the
/// connection's task.
pub trait Member: Send {
    /// A PUBLISH on one of the world's topics.
    fn publish(&mut self, p: Publish<'_>, now: u64) -> Outcome;

    /// A SUBSCRIBE to one of the world's filters (not a shared one): the SUBACK's v5 code.
    fn subscribe(
        &mut self,
        filter: &str,
        qos: u8,
        user_properties: &[(ByteString, ByteString)],
        now: u64,
    ) -> u8;

    /// An UNSUBSCRIBE of one of the world's filters: the UNSUBACK's v5 code.
    fn unsubscribe(
        &mut self,
        filter: &str,
        user_properties: &[(ByteString, ByteString)],
        now: u64,
    ) -> u8;

    /// A PUBLISH from the client, on any topic: it is active.
    fn active(&mut self, _now: u64) {}

    /// A PINGREQ.
    fn ping(&mut self, _now: u64) {}

    /// A stamped message is about to be written to the client: `true` when it was sent
    /// already (and must be skipped).
    fn already_sent(&mut self, _stamp: &Stamp) -> bool {
        false
    }

    /// The client acknowledged (PUBACK) a message whose `receipt` a world asked for (every
    /// member is told; each knows its own).
    fn acknowledged(&mut self, _receipt: Receipt, _now: u64) {}

    /// The connection ended. `taken_over`: its session now belongs to a newer connection,
    /// which delivers what is still queued.
    fn leave(self: Box<Self>, taken_over: bool, now: u64);
}

/// Where a topic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Plain,
    Sys,
    /// The world at this index of `Broker::worlds`.
    World(usize),
}

impl Route {
    pub fn of(worlds: &[Arc<dyn World>], topic: &str) -> Route {
        if let Some(at) = worlds.iter().position(|w| w.owns(topic)) {
            Route::World(at)
        } else if topic.starts_with("$SYS") {
            Route::Sys
        } else {
            Route::Plain
        }
    }
}

/// The members a connection holds, by the index of their world.
#[derive(Default)]
pub struct Members(smallvec::SmallVec<[(usize, Box<dyn Member>); 2]>);

impl Members {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, world: usize, member: Box<dyn Member>) {
        self.0.push((world, member));
    }

    /// The member of world `world`, if the connection is one.
    pub fn of(&mut self, world: usize) -> Option<&mut (dyn Member + 'static)> {
        self.0
            .iter_mut()
            .find(|(w, _)| *w == world)
            .map(|(_, m)| &mut **m)
    }

    pub fn each(&mut self) -> impl Iterator<Item = &mut (dyn Member + 'static)> {
        self.0.iter_mut().map(|(_, m)| &mut **m)
    }

    /// Take them all out (at the end of the connection).
    pub fn take(&mut self) -> impl Iterator<Item = Box<dyn Member>> {
        std::mem::take(&mut self.0).into_iter().map(|(_, m)| m)
    }
}
