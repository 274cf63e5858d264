//! `Connected`: what the IM world keeps per connection of a person's device (the connection
//! holds it, the gate reads and updates it): the device, the highest `seq` sent per
//! conversation (saved as cursors when the device leaves), the friend requests to withdraw at
//! the end, and the person last written to.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Device, Gate, LastPeer};
use crate::message::Stamp;

/// A person's device, connected.
#[derive(Debug)]
pub struct Connected {
    pub device: Device,
    /// The last IM sequence number sent per conversation (saved as cursors at the end).
    cursors: HashMap<Arc<str>, u64, foldhash::fast::RandomState>,
    /// Friend requests made with `im-temporary`, withdrawn at the end if still pending.
    temporary: Vec<String>,
    /// The person this device last sent a direct message to (see `LastPeer`).
    pub last_peer: LastPeer,
}

impl Connected {
    pub fn new(device: Device) -> Self {
        Self {
            device,
            cursors: HashMap::default(),
            temporary: Vec::new(),
            last_peer: LastPeer::default(),
        }
    }

    /// A message of a conversation is about to be sent: `true` when it was sent already (it was
    /// both in the sync and live), else it is remembered as sent.
    pub fn already_sent(&mut self, stamp: &Stamp) -> bool {
        // One lookup for a known conversation; `conv` is cloned only for a new one (it is shared
        // by every recipient of the message, and cloning it per delivery contends on its count).
        match self.cursors.get_mut(&*stamp.conv) {
            Some(cursor) if stamp.seq <= *cursor => true,
            Some(cursor) => {
                *cursor = stamp.seq;
                false
            }
            None => {
                self.cursors.insert(stamp.conv.clone(), stamp.seq);
                false
            }
        }
    }

    /// A friend request made with `im-temporary` to `filter` (`person/Q/status`) was granted.
    pub fn requested_temporarily(&mut self, filter: &str) {
        if let Some(peer) = filter
            .strip_prefix("person/")
            .and_then(|t| t.strip_suffix("/status"))
        {
            self.temporary.push(peer.to_owned());
        }
    }
}

impl Gate {
    /// A device leaves the IM world: `unacked` (sent but not acknowledged, taken back out of its
    /// session) is owed again, so the cursors go back before it; temporary requests still pending
    /// are withdrawn; the cursors are saved and the device goes offline.
    pub fn leave(&self, mut connected: Connected, unacked: Vec<Stamp>, now: u64) {
        for stamp in unacked {
            if let Some(cursor) = connected.cursors.get_mut(&stamp.conv) {
                *cursor = (*cursor).min(stamp.seq.saturating_sub(1));
            }
        }
        let cursors: Vec<(String, u64)> = connected
            .cursors
            .iter()
            .map(|(conv, seq)| (conv.to_string(), *seq))
            .collect();
        let device = &connected.device;
        self.withdraw_temporary(&device.account, &connected.temporary, now);
        self.disconnect(device, &cursors, now);
    }
}
