//! `Connected`: what the IM world keeps per connection of a person's device (the connection
//! holds it, the gate reads and updates it): the device, the highest `seq` sent per
//! conversation (saved as cursors when the device leaves), the friend requests to withdraw at
//! the end, and the person last written to. It is the IM world's `Member`: the connection hands
//! it its packets on IM topics; `Gate`, the IM `World`, makes one for every person's device.

use std::collections::HashMap;
use std::sync::Arc;

use ntex_bytes::ByteString;

use super::{Device, Gate, LastPeer, is_im_topic};
use crate::message::Stamp;
use crate::worlds::{Joining, Member, Outcome, Publish, World};

/// A person's device, connected.
#[derive(Debug)]
pub struct Connected {
    gate: Arc<Gate>,
    pub device: Device,
    /// The last IM sequence number sent per conversation (saved as cursors at the end).
    cursors: HashMap<Arc<str>, u64, foldhash::fast::RandomState>,
    /// Friend requests made with `im-temporary`, withdrawn at the end if still pending.
    temporary: Vec<String>,
    /// The person this device last sent a direct message to (see `LastPeer`).
    pub last_peer: LastPeer,
}

impl Connected {
    pub fn new(gate: Arc<Gate>, device: Device) -> Self {
        Self {
            gate,
            device,
            cursors: HashMap::default(),
            temporary: Vec::new(),
            last_peer: LastPeer::default(),
        }
    }

    /// A message of a conversation is about to be sent: `true` when it was sent already (it was
    /// both in the sync and live), else it is remembered as sent.
    fn seen(&mut self, stamp: &Stamp) -> bool {
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

fn user_property<'a>(props: &'a [(ByteString, ByteString)], name: &str) -> Option<&'a str> {
    props.iter().find(|(k, _)| &**k == name).map(|(_, v)| &**v)
}

impl World for Gate {
    fn owns(&self, topic: &str) -> bool {
        is_im_topic(topic)
    }

    /// A person's device joins: after the CONNACK, the roster, every missed message,
    /// `sync.done` (see `Gate::connect`). Other clients are no members.
    fn join(self: Arc<Self>, client: &Joining<'_>, now: u64) -> Option<Box<dyn Member>> {
        let account = client.account.filter(|a| self.im.is_person(a))?;
        let device = Device {
            token: client.token,
            account: Arc::from(account),
            client_id: client.client_id.clone(),
            session: client.session.clone(),
            v5: client.v5,
            sync: user_property(client.user_properties, "im-sync") != Some("false"),
        };
        self.connect(device.clone(), now);
        Some(Box::new(Connected::new(self, device)))
    }
}

impl Member for Connected {
    fn publish(&mut self, p: Publish<'_>, now: u64) -> Outcome {
        self.gate
            .publish(Some(&self.device), p, now, Some(&mut self.last_peer))
    }

    fn subscribe(
        &mut self,
        filter: &str,
        qos: u8,
        user_properties: &[(ByteString, ByteString)],
        now: u64,
    ) -> u8 {
        let code = self.gate.subscribe(Some(&self.device), filter, qos, now);
        if code < 0x80 && user_property(user_properties, "im-temporary") == Some("true") {
            self.requested_temporarily(filter);
        }
        code
    }

    fn unsubscribe(
        &mut self,
        filter: &str,
        user_properties: &[(ByteString, ByteString)],
        now: u64,
    ) -> u8 {
        let retain_secs =
            user_property(user_properties, "im-retain-secs").and_then(|v| v.parse::<u64>().ok());
        self.gate
            .unsubscribe(Some(&self.device), filter, retain_secs, now)
    }

    fn active(&mut self, now: u64) {
        self.gate.activity(&self.device.account, now);
    }

    fn ping(&mut self, now: u64) {
        self.gate.ping(&self.device.account, now);
    }

    fn already_sent(&mut self, stamp: &Stamp) -> bool {
        self.seen(stamp)
    }

    /// The device leaves the IM world: what was sent but not acknowledged is taken back out of
    /// its session and owed again, so the cursors go back before it (unless a newer connection
    /// took the session over: it delivers them); temporary requests still pending are
    /// withdrawn; the cursors are saved and the device goes offline.
    fn leave(self: Box<Self>, taken_over: bool, now: u64) {
        let mut connected = *self;
        let unacked = if taken_over {
            Vec::new()
        } else {
            connected.device.session.take_im_unacked()
        };
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
        connected
            .gate
            .withdraw_temporary(&device.account, &connected.temporary, now);
        connected.gate.disconnect(device, &cursors, now);
    }
}
