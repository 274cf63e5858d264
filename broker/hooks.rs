//! Hooks on the publish path: the seam where the rules engine (a later stage) plugs in.

use crate::message::Message;

/// Sees every message after it has been routed. Must be quick and must not block: a hook that
/// has real work to do (running scripts) queues it for its own threads.
pub trait PublishHook: Send + Sync {
    fn on_publish(&self, msg: &Message);
}
