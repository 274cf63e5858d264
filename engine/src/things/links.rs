//! Links between things: the owner of both (or a definitions file) links them; each may then
//! command the other and sees the other's state, events and presence. Unlinking, by the owner
//! of either, revokes at once.

use serde_json::json;

use super::{Effect, ThingError, ThingResult, Things, lock, notice};
use crate::graph::{Origin, Relation};
use crate::store::Batch;

impl Things {
    /// Both things of a link made (`on`) or ended: what each may now see, and a notice.
    pub(super) fn link_effects(
        a: &str,
        b: &str,
        by: &str,
        on: bool,
        now: u64,
        effects: &mut Vec<Effect>,
    ) {
        let kind = if on { "thing.linked" } else { "thing.unlinked" };
        for (me, peer) in [(a, b), (b, a)] {
            let (account, thing) = (me.to_owned(), peer.to_owned());
            effects.push(if on {
                Effect::Grant { account, thing }
            } else {
                Effect::Revoke { account, thing }
            });
            effects.push(Effect::Notify {
                to: me.to_owned(),
                envelope: notice(kind, now, json!({ "peer": peer, "by": by })),
            });
        }
    }

    fn put_link(
        &self,
        by: &str,
        a: &str,
        b: &str,
        origin: Origin,
        now: u64,
    ) -> ThingResult<Vec<Effect>> {
        if a == b {
            return Err(ThingError::Invalid(
                "a thing cannot be linked to itself".into(),
            ));
        }
        let mut effects = Vec::new();
        if self.graph().get(a, b, "link").is_some() {
            return Ok(effects);
        }
        let mut batch = Batch::new();
        self.im
            .put_relation(&mut batch, a, b, Relation::Link { since: now, origin });
        self.store.apply(batch)?;
        Self::link_effects(a, b, by, true, now, &mut effects);
        if self.im.is_person(by) {
            effects.push(Effect::Notify {
                to: by.to_owned(),
                envelope: notice("thing.linked", now, json!({ "things": [a, b] })),
            });
        }
        Ok(effects)
    }

    /// The owner of both things links them: each may command the other and sees the other's
    /// state, events and presence.
    pub fn link(&self, owner: &str, a: &str, b: &str, now: u64) -> ThingResult<Vec<Effect>> {
        let _guard = lock(&self.relations);
        self.require_owner(owner, a)?;
        self.require_owner(owner, b)?;
        self.put_link(owner, a, b, Origin::Runtime, now)
    }

    /// A link from a definitions file (no owner needed).
    pub fn define_link(&self, a: &str, b: &str, now: u64) -> ThingResult<Vec<Effect>> {
        let _guard = lock(&self.relations);
        self.require_thing(a)?;
        self.require_thing(b)?;
        self.put_link("definitions", a, b, Origin::File, now)
    }

    /// A link a definitions file declared and no longer does: ended (links have no recycle
    /// bin), unless the link there now was made at runtime by an owner.
    pub fn withdraw_link(&self, a: &str, b: &str, now: u64) -> ThingResult<Vec<Effect>> {
        let _guard = lock(&self.relations);
        let from_file = self
            .graph()
            .get(a, b, "link")
            .is_some_and(|r| r.origin() == Some(Origin::File));
        let mut effects = Vec::new();
        if from_file {
            let mut batch = Batch::new();
            self.take_relation(&mut batch, a, b, "link", || {
                format!("{a} and {b} are not linked")
            })?;
            self.store.apply(batch)?;
            Self::link_effects(a, b, "definitions", false, now, &mut effects);
        }
        Ok(effects)
    }

    /// The owner of either thing unlinks them; it takes effect at once, on open subscriptions too.
    pub fn unlink(&self, owner: &str, a: &str, b: &str, now: u64) -> ThingResult<Vec<Effect>> {
        let _guard = lock(&self.relations);
        self.require_thing(a)?;
        self.require_thing(b)?;
        if self.require_owner(owner, a).is_err() {
            self.require_owner(owner, b)?;
        }
        let mut batch = Batch::new();
        self.take_relation(&mut batch, a, b, "link", || {
            format!("{a} and {b} are not linked")
        })?;
        self.store.apply(batch)?;
        let mut effects = Vec::new();
        Self::link_effects(a, b, owner, false, now, &mut effects);
        effects.push(Effect::Notify {
            to: owner.to_owned(),
            envelope: notice("thing.unlinked", now, json!({ "things": [a, b] })),
        });
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{claim, sent_to, world};
    use super::*;
    use crate::graph::Access;

    #[test]
    fn links_need_the_owner_of_both_and_unlinking_revokes() {
        let w = world(&["alice", "bob"], &["door", "lamp", "fan"]);
        let t = &w.things;
        claim(t, "door", "alice", 1);
        claim(t, "lamp", "alice", 1);
        claim(t, "fan", "bob", 1);
        assert!(t.link("alice", "door", "fan", 2).is_err());
        assert!(t.link("alice", "door", "door", 2).is_err());
        let effects = t.link("alice", "lamp", "door", 2).unwrap();
        assert_eq!(sent_to(&effects, "door"), ["thing.linked"]);
        assert_eq!(sent_to(&effects, "lamp"), ["thing.linked"]);
        assert!(t.may_command("door", "lamp") && t.may_command("lamp", "door"));
        assert_eq!(t.access("door", "lamp"), Some(Access::Linked));
        assert_eq!(w.im.with_graph(|g| g.links_of("door")), ["lamp"]);
        assert!(!t.may_view("fan", "door"));
        assert!(t.follow("fan", "door", 3).is_err());
        assert!(t.unlink("bob", "door", "lamp", 3).is_err());
        let effects = t.unlink("alice", "door", "lamp", 3).unwrap();
        for (account, thing) in [("door", "lamp"), ("lamp", "door")] {
            assert!(effects.contains(&Effect::Revoke {
                account: account.into(),
                thing: thing.into()
            }));
        }
        assert!(!t.may_command("door", "lamp") && !t.may_view("lamp", "door"));
        assert!(t.unlink("alice", "door", "lamp", 4).is_err());
    }
}
