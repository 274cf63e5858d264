//! Friendship: requests (a SUBSCRIBE to a person's status, or `friend.request`), acceptance,
//! rejection, removal into the recycle bin and restoration, blocking.

use serde_json::json;

use super::envelope::notice;
use super::recycle::RecycleKind;
use super::{Effect, Im, ImError, ImResult};
use crate::events::RelationChange;
use crate::graph::{Origin, Relation};
use crate::store::Batch;

/// Where a friend request left the two persons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendState {
    Friends,
    Pending,
}

pub(super) fn became_friends(
    a: &str,
    b: &str,
    now: u64,
    restored: bool,
    effects: &mut Vec<Effect>,
) {
    effects.push(Effect::Related(RelationChange::FriendAdded {
        a: a.to_owned(),
        b: b.to_owned(),
    }));
    for (me, peer) in [(a, b), (b, a)] {
        effects.push(Effect::Notify {
            to: me.to_owned(),
            envelope: notice(
                "friend.added",
                now,
                json!({ "peer": peer, "restored": restored }),
            ),
        });
    }
}

fn no_longer_friends(a: &str, b: &str, by: &str, now: u64, kind: &str, effects: &mut Vec<Effect>) {
    effects.push(Effect::Related(RelationChange::FriendRemoved {
        a: a.to_owned(),
        b: b.to_owned(),
    }));
    for (me, peer) in [(a, b), (b, a)] {
        effects.push(Effect::Notify {
            to: me.to_owned(),
            envelope: notice(kind, now, json!({ "peer": peer, "by": by })),
        });
    }
}

impl Im {
    /// `p` asks `q` to be friends.
    pub fn friend_request(
        &self,
        p: &str,
        q: &str,
        now: u64,
    ) -> ImResult<(FriendState, Vec<Effect>)> {
        let _guard = self.relations_lock();
        self.require_person(p)?;
        self.require_person(q)?;
        if p == q {
            return Err(ImError::Invalid("a person cannot befriend themself".into()));
        }
        if self.graph().blocked_between(p, q) {
            return Err(ImError::NotAuthorized(format!("{q} cannot be asked")));
        }
        let mut effects = Vec::new();
        if self.graph().are_friends(p, q) {
            effects.push(Effect::ShowPresence {
                to: p.to_owned(),
                of: q.to_owned(),
            });
            return Ok((FriendState::Friends, effects));
        }
        let mut batch = Batch::new();
        // A friendship p removed comes back as it was, without a new approval.
        if let Some(entry) = self.bin_take(&mut batch, p, RecycleKind::Friend, q, now)? {
            self.put_relation(&mut batch, p, q, entry.relation);
            self.store.apply(batch)?;
            became_friends(p, q, now, true, &mut effects);
            return Ok((FriendState::Friends, effects));
        }
        let asked_back = self.graph().get(q, p, "freq").is_some();
        if asked_back || self.settings_of(q).auto_accept {
            self.drop_relation(&mut batch, q, p, "freq");
            self.drop_relation(&mut batch, p, q, "freq");
            self.put_relation(
                &mut batch,
                p,
                q,
                Relation::Friend {
                    since: now,
                    origin: Origin::Runtime,
                },
            );
            self.store.apply(batch)?;
            became_friends(p, q, now, false, &mut effects);
            return Ok((FriendState::Friends, effects));
        }
        let already = self.graph().get(p, q, "freq").is_some();
        if !already {
            self.put_relation(
                &mut batch,
                p,
                q,
                Relation::FriendRequest {
                    at: now,
                    origin: Origin::Runtime,
                },
            );
            self.store.apply(batch)?;
            effects.push(Effect::Notify {
                to: q.to_owned(),
                envelope: notice("friend.request", now, json!({ "from": p })),
            });
        }
        effects.push(Effect::Notify {
            to: p.to_owned(),
            envelope: notice("friend.pending", now, json!({ "peer": q })),
        });
        Ok((FriendState::Pending, effects))
    }

    /// `q` accepts the request `p` sent.
    pub fn friend_accept(&self, q: &str, p: &str, now: u64) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        if self.graph().are_friends(p, q) {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        if self.drop_relation(&mut batch, p, q, "freq").is_none() {
            return Err(ImError::NotFound(format!("no friend request from {p}")));
        }
        self.drop_relation(&mut batch, q, p, "freq");
        self.put_relation(
            &mut batch,
            p,
            q,
            Relation::Friend {
                since: now,
                origin: Origin::Runtime,
            },
        );
        self.store.apply(batch)?;
        let mut effects = Vec::new();
        became_friends(p, q, now, false, &mut effects);
        Ok(effects)
    }

    /// `q` turns down the request `p` sent.
    pub fn friend_reject(&self, q: &str, p: &str, now: u64) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        let mut batch = Batch::new();
        if self.drop_relation(&mut batch, p, q, "freq").is_none() {
            return Err(ImError::NotFound(format!("no friend request from {p}")));
        }
        self.store.apply(batch)?;
        Ok(vec![Effect::Notify {
            to: p.to_owned(),
            envelope: notice("friend.rejected", now, json!({ "peer": q })),
        }])
    }

    /// `p` unfriends `q` (or withdraws a pending request). The friendship goes to `p`'s recycle
    /// bin for `retain_secs` (default and cap from the configuration).
    pub fn friend_remove(
        &self,
        p: &str,
        q: &str,
        retain_secs: Option<u64>,
        now: u64,
    ) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        let mut batch = Batch::new();
        let mut effects = Vec::new();
        match self.drop_relation(&mut batch, p, q, "friend") {
            Some(relation) => {
                self.bin_put(
                    &mut batch,
                    p,
                    RecycleKind::Friend,
                    q,
                    relation,
                    retain_secs,
                    now,
                );
                no_longer_friends(p, q, p, now, "friend.removed", &mut effects);
            }
            None => {
                if self.drop_relation(&mut batch, p, q, "freq").is_none() {
                    return Err(ImError::NotFound(format!("{q} is not a friend")));
                }
                effects.push(Effect::Notify {
                    to: q.to_owned(),
                    envelope: notice("friend.withdrawn", now, json!({ "peer": p })),
                });
            }
        }
        self.store.apply(batch)?;
        Ok(effects)
    }

    /// Bring back a friendship `p` removed, before its retention ended.
    pub fn friend_restore(&self, p: &str, q: &str, now: u64) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        if self.graph().blocked_between(p, q) {
            return Err(ImError::NotAuthorized(format!("{q} is blocked")));
        }
        let mut batch = Batch::new();
        let Some(entry) = self.bin_take(&mut batch, p, RecycleKind::Friend, q, now)? else {
            self.store.apply(batch)?;
            return Err(Self::expired_or_missing(&format!("friendship with {q}")));
        };
        self.put_relation(&mut batch, p, q, entry.relation);
        self.store.apply(batch)?;
        let mut effects = Vec::new();
        became_friends(p, q, now, true, &mut effects);
        Ok(effects)
    }

    /// `p` blocks `q`: no messages, requests or presence between them. A friendship ends (into
    /// `p`'s recycle bin), pending requests go.
    pub fn block(&self, p: &str, q: &str, now: u64) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        self.require_person(q)?;
        if p == q {
            return Err(ImError::Invalid("a person cannot block themself".into()));
        }
        let mut batch = Batch::new();
        let mut effects = Vec::new();
        if let Some(relation) = self.drop_relation(&mut batch, p, q, "friend") {
            self.bin_put(&mut batch, p, RecycleKind::Friend, q, relation, None, now);
            effects.push(Effect::Related(RelationChange::FriendRemoved {
                a: p.to_owned(),
                b: q.to_owned(),
            }));
        }
        self.drop_relation(&mut batch, p, q, "freq");
        self.drop_relation(&mut batch, q, p, "freq");
        self.put_relation(&mut batch, p, q, Relation::Block { at: now });
        self.store.apply(batch)?;
        effects.push(Effect::Notify {
            to: p.to_owned(),
            envelope: notice("blocked", now, json!({ "peer": q })),
        });
        Ok(effects)
    }

    pub fn unblock(&self, p: &str, q: &str, now: u64) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        let mut batch = Batch::new();
        if self.drop_relation(&mut batch, p, q, "block").is_none() {
            return Err(ImError::NotFound(format!("{q} is not blocked")));
        }
        self.store.apply(batch)?;
        Ok(vec![Effect::Notify {
            to: p.to_owned(),
            envelope: notice("unblocked", now, json!({ "peer": q })),
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{im_with, notices};
    use super::*;

    #[test]
    fn mutual_requests_make_friends() {
        let (_dir, im) = im_with(&["a", "b"]);
        let (state, effects) = im.friend_request("a", "b", 1).unwrap();
        assert_eq!(state, FriendState::Pending);
        assert_eq!(notices(&effects, "b"), ["friend.request"]);
        assert_eq!(notices(&effects, "a"), ["friend.pending"]);
        let (state, effects) = im.friend_request("b", "a", 2).unwrap();
        assert_eq!(state, FriendState::Friends);
        assert_eq!(notices(&effects, "a"), ["friend.added"]);
        assert_eq!(notices(&effects, "b"), ["friend.added"]);
        assert!(im.graph().are_friends("a", "b"));
        assert!(im.graph().requests_in("a").is_empty());
    }

    #[test]
    fn remove_restore_and_expiry() {
        let (_dir, im) = im_with(&["a", "b"]);
        im.friend_request("a", "b", 1).unwrap();
        im.friend_accept("b", "a", 2).unwrap();
        im.friend_remove("a", "b", Some(10), 1_000).unwrap();
        assert!(!im.graph().are_friends("a", "b"));
        assert_eq!(im.recycle_list("a", 1_000).unwrap().len(), 1);
        im.friend_restore("a", "b", 5_000).unwrap();
        assert!(im.graph().are_friends("a", "b"));
        // Remove again; after the retention, restoring fails and the entry is purged.
        im.friend_remove("a", "b", Some(10), 20_000).unwrap();
        assert!(im.friend_restore("a", "b", 31_000).is_err());
        im.friend_remove("a", "b", Some(1), 40_000).ok();
        assert_eq!(im.purge(100_000).unwrap(), 0);
        assert!(im.recycle_list("a", 100_000).unwrap().is_empty());
    }

    #[test]
    fn blocks_stop_requests() {
        let (_dir, im) = im_with(&["a", "b"]);
        im.block("b", "a", 1).unwrap();
        assert!(matches!(
            im.friend_request("a", "b", 2),
            Err(ImError::NotAuthorized(_))
        ));
        im.unblock("b", "a", 3).unwrap();
        assert!(im.friend_request("a", "b", 4).is_ok());
        assert!(im.friend_request("a", "nobody", 4).is_err());
    }
}
