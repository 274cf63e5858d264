//! The hand-over of a command to a device of its thing.
//!
//! A command is *handed over* when a device of its thing has acknowledged the PUBLISH that
//! carried it (its PUBACK): [`Things::handed_over`] writes that (`delivered`, and the audit's
//! `delivered`, in one batch), and from then on it is never given to a device again. Until
//! then it stays open and undelivered. While it is on its way to a connection (queued on its
//! session or in flight) that connection *holds* it (by its token) and no CONNECT of another
//! device is given it; when the last holder lets it go unacknowledged (the connection ended:
//! [`Things::release`]) it goes to the thing's devices online then, or waits for the next
//! CONNECT. After a crash nothing is held: a command whose PUBACK was not yet durable is given
//! again, the same command with the same `id` (at least once: a thing dedups by `id`,
//! docs/PROTOCOL.md section 10.8).

use std::collections::{BTreeMap, HashMap};

use super::commands::{open_key, open_prefix};
use super::{Command, Effect, Outcome, ThingResult, Things, decode, encode, lock};
use crate::store::{Batch, Space};

/// The holder that an `Effect::Command` stands for until the broker has given the command to
/// the devices online (their connections hold it then) and lets go with
/// [`Things::handed_back`].
pub const EFFECT_HOLDER: u64 = 0;

/// Who holds which command on its way: thing -> command seq -> holders (connection tokens).
#[derive(Debug, Default)]
pub(super) struct Handing(HashMap<String, BTreeMap<u64, Vec<u64>>>);

impl Handing {
    fn hold(&mut self, thing: &str, seq: u64, holder: u64) {
        let holders = self
            .0
            .entry(thing.to_owned())
            .or_default()
            .entry(seq)
            .or_default();
        if !holders.contains(&holder) {
            holders.push(holder);
        }
    }

    fn is_held(&self, thing: &str, seq: u64) -> bool {
        self.0
            .get(thing)
            .is_some_and(|cmds| cmds.contains_key(&seq))
    }

    /// `holder` lets `seq` go: `true` when nobody holds it any more (and somebody did).
    fn let_go(&mut self, thing: &str, seq: u64, holder: u64) -> bool {
        let Some(cmds) = self.0.get_mut(thing) else {
            return false;
        };
        let Some(holders) = cmds.get_mut(&seq) else {
            return false;
        };
        holders.retain(|h| *h != holder);
        let free = holders.is_empty();
        if free {
            cmds.remove(&seq);
            if cmds.is_empty() {
                self.0.remove(thing);
            }
        }
        free
    }

    /// The commands of `thing` that `holder` holds.
    fn held_by(&self, thing: &str, holder: u64) -> Vec<u64> {
        self.0.get(thing).map_or_else(Vec::new, |cmds| {
            cmds.iter()
                .filter(|(_, holders)| holders.contains(&holder))
                .map(|(seq, _)| *seq)
                .collect()
        })
    }

    fn remove(&mut self, thing: &str, seq: u64) {
        if let Some(cmds) = self.0.get_mut(thing) {
            cmds.remove(&seq);
            if cmds.is_empty() {
                self.0.remove(thing);
            }
        }
    }
}

impl Things {
    pub(super) fn hold(&self, thing: &str, seq: u64, holder: u64) {
        lock(&self.handing).hold(thing, seq, holder);
    }

    /// The command is closed (answered, timed out): nobody holds it.
    pub(super) fn unhold(&self, thing: &str, seq: u64) {
        lock(&self.handing).remove(thing, seq);
    }

    /// At a device's CONNECT (its connection's token `holder`): the commands queued for
    /// `thing` within their ttl, oldest first, held by that connection from now on; those
    /// whose ttl passed time out here. A command handed over already, or held by another
    /// connection, is not given.
    pub fn take_queued(
        &self,
        thing: &str,
        holder: u64,
        now: u64,
    ) -> ThingResult<(Vec<Command>, Vec<Effect>)> {
        let _guard = self.thing_lock(thing);
        let mut batch = Batch::new();
        let mut taken = Vec::new();
        let mut effects = Vec::new();
        let mut closed = Vec::new();
        for (k, v) in self
            .store
            .scan_prefix(Space::Commands, &open_prefix(thing))?
        {
            let Some(cmd) = decode::<Command>(&v) else {
                continue;
            };
            if cmd.delivered || lock(&self.handing).is_held(thing, cmd.seq) {
                continue;
            }
            if cmd.expires <= now {
                batch.remove(Space::Commands, k);
                effects.extend(self.timed_out(&mut batch, &cmd, now)?);
                closed.push((cmd.expires, cmd.seq));
                continue;
            }
            taken.push(cmd);
        }
        self.store.apply(batch)?;
        for cmd in &taken {
            self.hold(thing, cmd.seq, holder);
        }
        let mut deadlines = lock(&self.deadlines);
        for (expires, seq) in closed {
            deadlines.remove(&(expires, thing.to_owned(), seq));
        }
        Ok((taken, effects))
    }

    /// The connection `holder` has command `seq` of `thing` on its way (the broker queued it
    /// on its session): no other connection is given it meanwhile.
    pub fn sending(&self, thing: &str, seq: u64, holder: u64) {
        self.hold(thing, seq, holder);
    }

    /// `holder` lets command `seq` of `thing` go unacknowledged. When nobody holds it any
    /// more and it is still open, undelivered and within its ttl, it is returned: the broker
    /// gives it to the thing's devices online now (through [`Things::sending`]); with none, it
    /// waits for the next CONNECT.
    pub fn handed_back(
        &self,
        thing: &str,
        seq: u64,
        holder: u64,
        now: u64,
    ) -> ThingResult<Option<Command>> {
        let _guard = self.thing_lock(thing);
        if !lock(&self.handing).let_go(thing, seq, holder) {
            return Ok(None);
        }
        Ok(self
            .store
            .get(Space::Commands, &open_key(thing, seq))?
            .and_then(|v| decode::<Command>(&v))
            .filter(|cmd| !cmd.delivered && cmd.expires > now))
    }

    /// The connection `holder` of `thing` ended: every command it held unacknowledged is let
    /// go (see [`Things::handed_back`]); returned, oldest first, are those to give again now.
    pub fn release(&self, thing: &str, holder: u64, now: u64) -> ThingResult<Vec<Command>> {
        let held = lock(&self.handing).held_by(thing, holder);
        let mut again = Vec::new();
        for seq in held {
            again.extend(self.handed_back(thing, seq, holder, now)?);
        }
        Ok(again)
    }

    /// A device of `thing` acknowledged (PUBACK) the PUBLISH of its command `seq`: handed
    /// over, written in one batch with the audit's `delivered`; never given again. `true` when
    /// this wrote something (the first acknowledgement of an open command).
    pub fn handed_over(&self, thing: &str, seq: u64) -> ThingResult<bool> {
        let _guard = self.thing_lock(thing);
        self.unhold(thing, seq);
        let k = open_key(thing, seq);
        let Some(mut cmd) = self
            .store
            .get(Space::Commands, &k)?
            .and_then(|v| decode::<Command>(&v))
        else {
            return Ok(false);
        };
        if cmd.delivered {
            return Ok(false);
        }
        cmd.delivered = true;
        let mut batch = Batch::new();
        batch.put(Space::Commands, k, encode(&cmd));
        self.audit_update(&mut batch, thing, seq, |e| {
            e.outcome = Outcome::Pending { delivered: true };
        })?;
        self.store.apply(batch)?;
        Ok(true)
    }
}
