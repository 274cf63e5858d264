//! Bindings: shares (`control`/`view`), follow requests the owner answers, unbinding into the
//! recycle bin and restoring. All are relations of the graph (`Relation::Owner`, `Share`,
//! `FollowRequest`); claim codes are in `claim`, links in `links`.

use serde_json::json;

use super::{Effect, ThingError, ThingResult, Things, lock, notice};
use crate::graph::{Origin, Relation, Rights};
use crate::im::RecycleKind;
use crate::store::Batch;

/// Where a follow request left the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowState {
    /// The person may see the thing (already, or restored from the recycle bin).
    Following,
    /// Waiting for the owner.
    Pending,
}

impl Things {
    pub(super) fn require_person(&self, id: &str) -> ThingResult<()> {
        if self.im.is_person(id) {
            Ok(())
        } else {
            Err(ThingError::NotFound(format!("no person {id}")))
        }
    }

    pub(super) fn require_owner(&self, person: &str, thing: &str) -> ThingResult<()> {
        self.require_thing(thing)?;
        if self.graph().owner_of(thing).as_deref() == Some(person) {
            Ok(())
        } else {
            Err(ThingError::NotAuthorized(format!(
                "only the owner of {thing} may do this"
            )))
        }
    }

    pub(super) fn set_owner(
        &self,
        batch: &mut Batch,
        person: &str,
        thing: &str,
        relation: Relation,
        restored: bool,
        now: u64,
    ) -> Vec<Effect> {
        self.im.put_relation(batch, person, thing, relation);
        let fields = json!({ "thing": thing, "owner": person, "restored": restored });
        vec![
            Effect::Grant {
                account: person.to_owned(),
                thing: thing.to_owned(),
            },
            Effect::Notify {
                to: person.to_owned(),
                envelope: notice("thing.bound", now, fields.clone()),
            },
            Effect::Notify {
                to: thing.to_owned(),
                envelope: notice("thing.bound", now, fields),
            },
        ]
    }

    /// A binding from a definitions file: made (again) unless the thing has another owner.
    pub fn define_owner(&self, thing: &str, person: &str, now: u64) -> ThingResult<Vec<Effect>> {
        let _guard = lock(&self.relations);
        self.require_person(person)?;
        self.require_thing(thing)?;
        match self.graph().owner_of(thing) {
            Some(owner) if owner == person => return Ok(Vec::new()),
            Some(owner) => {
                return Err(ThingError::Conflict(format!(
                    "{thing} is bound to {owner} (at runtime); not changed"
                )));
            }
            None => {}
        }
        let mut batch = Batch::new();
        let relation = Relation::Owner {
            since: now,
            origin: Origin::File,
        };
        let effects = self.set_owner(&mut batch, person, thing, relation, false, now);
        self.store.apply(batch)?;
        Ok(effects)
    }

    /// Remove the relation of `tag` kind from `a` to `b` into `batch`; `missing` says why not.
    pub(super) fn take_relation(
        &self,
        batch: &mut Batch,
        a: &str,
        b: &str,
        tag: &str,
        missing: impl FnOnce() -> String,
    ) -> ThingResult<Relation> {
        self.im
            .drop_relation(batch, a, b, tag)
            .ok_or_else(|| ThingError::NotFound(missing()))
    }

    /// Give `person` a new share of `thing` (a follow request it had is answered by it).
    fn new_share(
        &self,
        person: &str,
        thing: &str,
        rights: Rights,
        origin: Origin,
        by: &str,
        now: u64,
    ) -> ThingResult<Vec<Effect>> {
        let mut batch = Batch::new();
        let relation = Relation::Share {
            rights,
            since: now,
            origin,
            by: by.to_owned(),
        };
        let effects = self.put_share(&mut batch, person, thing, relation, now);
        self.store.apply(batch)?;
        Ok(effects)
    }

    fn put_share(
        &self,
        batch: &mut Batch,
        person: &str,
        thing: &str,
        relation: Relation,
        now: u64,
    ) -> Vec<Effect> {
        let (rights, by) = match &relation {
            Relation::Share { rights, by, .. } => (*rights, by.clone()),
            _ => (Rights::View, String::new()),
        };
        self.im.drop_relation(batch, person, thing, "follow");
        self.im.put_relation(batch, person, thing, relation);
        vec![
            Effect::Grant {
                account: person.to_owned(),
                thing: thing.to_owned(),
            },
            Effect::Notify {
                to: person.to_owned(),
                envelope: notice(
                    "thing.shared",
                    now,
                    json!({ "thing": thing, "rights": rights.as_str(), "by": by }),
                ),
            },
        ]
    }

    /// The owner shares `thing` with `person` (or changes the rights of a share).
    pub fn share(
        &self,
        owner: &str,
        thing: &str,
        person: &str,
        rights: Rights,
        now: u64,
    ) -> ThingResult<Vec<Effect>> {
        let _guard = lock(&self.relations);
        self.require_owner(owner, thing)?;
        self.require_person(person)?;
        if person == owner {
            return Err(ThingError::Invalid(
                "the owner has every right already".into(),
            ));
        }
        self.new_share(person, thing, rights, Origin::Runtime, owner, now)
    }

    /// A share from a definitions file (given by the thing's owner then).
    pub fn define_share(
        &self,
        thing: &str,
        person: &str,
        rights: Rights,
        now: u64,
    ) -> ThingResult<Vec<Effect>> {
        let _guard = lock(&self.relations);
        self.require_thing(thing)?;
        self.require_person(person)?;
        let Some(owner) = self.graph().owner_of(thing) else {
            return Err(ThingError::Conflict(format!(
                "{thing} has no owner to share it"
            )));
        };
        if owner == person {
            return Ok(Vec::new());
        }
        self.new_share(person, thing, rights, Origin::File, &owner, now)
    }

    fn unshared(thing: &str, person: &str, by: &str, now: u64, effects: &mut Vec<Effect>) {
        effects.push(Effect::Revoke {
            account: person.to_owned(),
            thing: thing.to_owned(),
        });
        effects.push(Effect::Notify {
            to: person.to_owned(),
            envelope: notice("thing.unshared", now, json!({ "thing": thing, "by": by })),
        });
    }

    /// The owner of `thing` removes the relation `tag` from `person` to it, durably (applied
    /// to the store); `missing` says why when there is none.
    fn owner_removes(
        &self,
        owner: &str,
        person: &str,
        thing: &str,
        tag: &str,
        missing: impl FnOnce() -> String,
    ) -> ThingResult<()> {
        let _guard = lock(&self.relations);
        self.require_owner(owner, thing)?;
        let mut batch = Batch::new();
        self.take_relation(&mut batch, person, thing, tag, missing)?;
        self.store.apply(batch)?;
        Ok(())
    }

    /// The owner ends a share at once (not into a recycle bin: the holder did not remove it).
    pub fn unshare(
        &self,
        owner: &str,
        thing: &str,
        person: &str,
        now: u64,
    ) -> ThingResult<Vec<Effect>> {
        self.owner_removes(owner, person, thing, "share", || {
            format!("{thing} is not shared with {person}")
        })?;
        let mut effects = Vec::new();
        Self::unshared(thing, person, owner, now, &mut effects);
        Ok(effects)
    }

    /// `who` asks to see `thing` (a SUBSCRIBE to `thing/T/state`). A person with no rights asks
    /// the owner; a binding in the person's recycle bin comes back as it was. A thing may see
    /// only itself and the things it is linked with.
    pub fn follow(
        &self,
        who: &str,
        thing: &str,
        now: u64,
    ) -> ThingResult<(FollowState, Vec<Effect>)> {
        self.require_thing(thing)?;
        if self.may_view(who, thing) {
            let grant = Effect::Grant {
                account: who.to_owned(),
                thing: thing.to_owned(),
            };
            return Ok((FollowState::Following, vec![grant]));
        }
        if self.is_thing(who) {
            return Err(ThingError::NotAuthorized(format!(
                "{who} is not linked with {thing}"
            )));
        }
        self.require_person(who)?;
        let restored = self.restore_binding(who, thing, now);
        if let Ok(effects) = restored {
            return Ok((FollowState::Following, effects));
        }
        let _guard = lock(&self.relations);
        let Some(owner) = self.graph().owner_of(thing) else {
            return Err(ThingError::NotAuthorized(format!(
                "{thing} has no owner to ask"
            )));
        };
        let mut effects = Vec::new();
        if self.graph().get(who, thing, "follow").is_none() {
            let mut batch = Batch::new();
            self.im
                .put_relation(&mut batch, who, thing, Relation::FollowRequest { at: now });
            self.store.apply(batch)?;
            effects.push(Effect::Notify {
                to: owner,
                envelope: notice(
                    "thing.follow_request",
                    now,
                    json!({ "thing": thing, "from": who }),
                ),
            });
        }
        effects.push(Effect::Notify {
            to: who.to_owned(),
            envelope: notice("thing.follow_pending", now, json!({ "thing": thing })),
        });
        Ok((FollowState::Pending, effects))
    }

    /// The owner approves `person`'s follow request: a `view` share.
    pub fn follow_accept(
        &self,
        owner: &str,
        thing: &str,
        person: &str,
        now: u64,
    ) -> ThingResult<Vec<Effect>> {
        let _guard = lock(&self.relations);
        self.require_owner(owner, thing)?;
        if self.graph().get(person, thing, "follow").is_none() {
            return Err(ThingError::NotFound(format!(
                "no follow request from {person}"
            )));
        }
        self.new_share(person, thing, Rights::View, Origin::Runtime, owner, now)
    }

    pub fn follow_reject(
        &self,
        owner: &str,
        thing: &str,
        person: &str,
        now: u64,
    ) -> ThingResult<Vec<Effect>> {
        self.owner_removes(owner, person, thing, "follow", || {
            format!("no follow request from {person}")
        })?;
        Ok(vec![Effect::Notify {
            to: person.to_owned(),
            envelope: notice("thing.follow_rejected", now, json!({ "thing": thing })),
        }])
    }

    /// `person` unbinds `thing` (an UNSUBSCRIBE of `thing/T/state`): its ownership or share goes
    /// to its recycle bin for `retain_secs` (the friendships' default and cap). When the owner
    /// unbinds, the thing's shares, follow requests and links end too. A pending follow request
    /// is withdrawn instead.
    pub fn unbind(
        &self,
        person: &str,
        thing: &str,
        retain_secs: Option<u64>,
        now: u64,
    ) -> ThingResult<Vec<Effect>> {
        let _guard = lock(&self.relations);
        self.require_thing(thing)?;
        let mut batch = Batch::new();
        let mut effects = Vec::new();
        if let Some(relation) = self.im.drop_relation(&mut batch, person, thing, "owner") {
            self.im.bin_put(
                &mut batch,
                person,
                RecycleKind::Binding,
                thing,
                relation,
                retain_secs,
                now,
            );
            let (shares, requests, links) = {
                let graph = self.graph();
                (
                    graph.shares_of(thing),
                    graph.follow_requests(thing),
                    graph.links_of(thing),
                )
            };
            for (holder, _) in shares {
                self.im.drop_relation(&mut batch, &holder, thing, "share");
                Self::unshared(thing, &holder, person, now, &mut effects);
            }
            for asker in requests {
                self.im.drop_relation(&mut batch, &asker, thing, "follow");
                effects.push(Effect::Notify {
                    to: asker,
                    envelope: notice("thing.follow_rejected", now, json!({ "thing": thing })),
                });
            }
            for peer in links {
                self.im.drop_relation(&mut batch, thing, &peer, "link");
                Self::link_effects(thing, &peer, person, false, now, &mut effects);
            }
            let fields = json!({ "thing": thing, "owner": person });
            effects.push(Effect::Revoke {
                account: person.to_owned(),
                thing: thing.to_owned(),
            });
            for to in [person, thing] {
                effects.push(Effect::Notify {
                    to: to.to_owned(),
                    envelope: notice("thing.unbound", now, fields.clone()),
                });
            }
        } else if let Some(relation) = self.im.drop_relation(&mut batch, person, thing, "share") {
            self.im.bin_put(
                &mut batch,
                person,
                RecycleKind::Binding,
                thing,
                relation,
                retain_secs,
                now,
            );
            effects.push(Effect::Revoke {
                account: person.to_owned(),
                thing: thing.to_owned(),
            });
            let fields = json!({ "thing": thing, "person": person });
            let owner = self.graph().owner_of(thing);
            for to in std::iter::once(person.to_owned()).chain(owner) {
                effects.push(Effect::Notify {
                    to,
                    envelope: notice("thing.unbound", now, fields.clone()),
                });
            }
        } else if self
            .im
            .drop_relation(&mut batch, person, thing, "follow")
            .is_some()
        {
            if let Some(owner) = self.graph().owner_of(thing) {
                effects.push(Effect::Notify {
                    to: owner,
                    envelope: notice(
                        "thing.follow_withdrawn",
                        now,
                        json!({ "thing": thing, "from": person }),
                    ),
                });
            }
        } else {
            return Err(ThingError::NotFound(format!(
                "{person} is not bound to {thing}"
            )));
        }
        self.store.apply(batch)?;
        Ok(effects)
    }

    /// Bring back a binding `person` removed, before its retention ended: an ownership if the
    /// thing has no owner now, a share if the one who gave it still owns the thing.
    pub fn restore(&self, person: &str, thing: &str, now: u64) -> ThingResult<Vec<Effect>> {
        self.require_thing(thing)?;
        self.restore_binding(person, thing, now)
    }

    fn restore_binding(&self, person: &str, thing: &str, now: u64) -> ThingResult<Vec<Effect>> {
        let _guard = lock(&self.relations);
        let owner = self.graph().owner_of(thing);
        let mut batch = Batch::new();
        // Taken out in `batch`, applied only if the restore goes through.
        let Some(entry) = self
            .im
            .bin_take(&mut batch, person, RecycleKind::Binding, thing, now)?
        else {
            return Err(ThingError::NotFound(format!(
                "the binding to {thing} is not in the recycle bin (never removed, or its retention has ended)"
            )));
        };
        let effects = match entry.relation {
            relation @ Relation::Owner { .. } => {
                if let Some(owner) = owner {
                    return Err(ThingError::Conflict(format!(
                        "{thing} is bound to {owner} now"
                    )));
                }
                self.set_owner(&mut batch, person, thing, relation, true, now)
            }
            relation @ Relation::Share { .. } => {
                let Relation::Share { by, .. } = &relation else {
                    unreachable!("matched a share")
                };
                if owner.as_deref() != Some(by.as_str()) {
                    return Err(ThingError::Conflict(format!(
                        "{by}, who shared {thing}, no longer owns it"
                    )));
                }
                self.put_share(&mut batch, person, thing, relation, now)
            }
            _ => return Err(ThingError::NotFound(format!("no binding to {thing}"))),
        };
        self.store.apply(batch)?;
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{claim, sent_to, world};
    use super::*;
    use crate::graph::Access;

    #[test]
    fn shares_give_control_or_view_and_the_owner_alone_shares() {
        let w = world(&["alice", "bob", "carol"], &["door"]);
        let t = &w.things;
        claim(t, "door", "alice", 1);
        assert!(t.share("bob", "door", "carol", Rights::View, 2).is_err());
        let effects = t.share("alice", "door", "bob", Rights::View, 2).unwrap();
        assert_eq!(sent_to(&effects, "bob"), ["thing.shared"]);
        assert!(t.may_view("bob", "door"));
        assert!(!t.may_command("bob", "door"));
        t.share("alice", "door", "bob", Rights::Control, 3).unwrap();
        assert!(t.may_command("bob", "door"));
        assert!(!t.may_view("carol", "door"));
        let effects = t.unshare("alice", "door", "bob", 4).unwrap();
        assert!(effects.contains(&Effect::Revoke {
            account: "bob".into(),
            thing: "door".into()
        }));
        assert!(!t.may_view("bob", "door"));
        assert!(t.unshare("alice", "door", "bob", 5).is_err());
    }

    #[test]
    fn a_follow_request_waits_for_the_owner() {
        let w = world(&["alice", "bob", "carol"], &["door"]);
        let t = &w.things;
        // No owner to ask.
        assert!(t.follow("bob", "door", 1).is_err());
        claim(t, "door", "alice", 1);
        let (state, effects) = t.follow("bob", "door", 2).unwrap();
        assert_eq!(state, FollowState::Pending);
        assert_eq!(sent_to(&effects, "alice"), ["thing.follow_request"]);
        assert_eq!(sent_to(&effects, "bob"), ["thing.follow_pending"]);
        assert!(!t.may_view("bob", "door"));
        assert_eq!(w.im.with_graph(|g| g.follow_requests("door")), ["bob"]);
        assert!(t.follow_accept("bob", "door", "bob", 3).is_err());
        t.follow_accept("alice", "door", "bob", 3).unwrap();
        assert_eq!(t.access("bob", "door"), Some(Access::View));
        let (state, _) = t.follow("bob", "door", 4).unwrap();
        assert_eq!(state, FollowState::Following);
        // Rejected: nothing granted.
        t.follow("carol", "door", 5).unwrap();
        let effects = t.follow_reject("alice", "door", "carol", 6).unwrap();
        assert_eq!(sent_to(&effects, "carol"), ["thing.follow_rejected"]);
        assert!(!t.may_view("carol", "door"));
        // Withdrawn by an UNSUBSCRIBE.
        t.follow("carol", "door", 7).unwrap();
        let effects = t.unbind("carol", "door", None, 8).unwrap();
        assert_eq!(sent_to(&effects, "alice"), ["thing.follow_withdrawn"]);
        assert!(w.im.with_graph(|g| g.follow_requests("door")).is_empty());
    }

    #[test]
    fn unbind_goes_to_the_recycle_bin_and_restores() {
        let w = world(&["alice", "bob"], &["door", "lamp"]);
        let t = &w.things;
        claim(t, "door", "alice", 1);
        claim(t, "lamp", "alice", 1);
        t.share("alice", "door", "bob", Rights::Control, 2).unwrap();
        t.link("alice", "door", "lamp", 3).unwrap();
        // A share holder unbinds: into bob's bin, and back by a new follow.
        t.unbind("bob", "door", Some(60), 10_000).unwrap();
        assert!(!t.may_view("bob", "door"));
        let bin = w.im.recycle_list("bob", 10_000).unwrap();
        assert_eq!(bin.len(), 1);
        assert_eq!(bin[0].kind, RecycleKind::Binding);
        let (state, _) = t.follow("bob", "door", 20_000).unwrap();
        assert_eq!(state, FollowState::Following);
        assert!(t.may_command("bob", "door"), "restored as it was");
        // The owner unbinds: shares and links end; restoring brings back the ownership only.
        let effects = t.unbind("alice", "door", Some(60), 30_000).unwrap();
        assert_eq!(sent_to(&effects, "bob"), ["thing.unshared"]);
        assert_eq!(sent_to(&effects, "lamp"), ["thing.unlinked"]);
        assert_eq!(
            sent_to(&effects, "door"),
            ["thing.unlinked", "thing.unbound"]
        );
        assert_eq!(t.access("alice", "door"), None);
        assert!(!t.may_command("lamp", "door"));
        assert!(!t.may_view("bob", "door"));
        t.restore("alice", "door", 40_000).unwrap();
        assert_eq!(t.access("alice", "door"), Some(Access::Owner));
        assert!(!t.may_view("bob", "door"));
        assert!(w.im.recycle_list("alice", 40_000).unwrap().is_empty());
        // After the retention: gone.
        t.unbind("alice", "door", Some(1), 50_000).unwrap();
        assert!(matches!(
            t.restore("alice", "door", 52_000),
            Err(ThingError::NotFound(_))
        ));
        // Someone else claimed it meanwhile: no restore.
        t.unbind("alice", "lamp", None, 60_000).unwrap();
        claim(t, "lamp", "bob", 61_000);
        assert!(matches!(
            t.restore("alice", "lamp", 62_000),
            Err(ThingError::Conflict(_))
        ));
        assert!(t.unbind("alice", "lamp", None, 63_000).is_err());
    }
}
