//! Groups: create, invite, join (a SUBSCRIBE to `group/G`, open or invited or approved), kick,
//! roles, leave into the recycle bin and restore, dissolve.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::envelope::notice;
use super::recycle::RecycleKind;
use super::{Effect, Im, ImError, ImResult, encode};
use crate::events::RelationChange;
use crate::graph::{Origin, Relation, Role};
use crate::store::{Batch, Space};

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    /// Anyone may join by SUBSCRIBE without an invitation.
    pub open: bool,
    pub owner: String,
    pub created: u64,
    pub origin: Origin,
}

/// Where a join left the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinState {
    Joined,
    Pending,
}

impl Im {
    pub fn group(&self, id: &str) -> Option<GroupRecord> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn require_role(&self, account: &str, group: &str, at_least: Role) -> ImResult<Role> {
        if self.group(group).is_none() {
            return Err(ImError::NotFound(format!("no group {group}")));
        }
        match self.graph().role(account, group) {
            Some(role) if role >= at_least => Ok(role),
            _ => Err(ImError::NotAuthorized(format!(
                "needs the {} role in {group}",
                at_least.as_str()
            ))),
        }
    }

    /// Notify every member of `group` (after a change).
    fn tell_members(
        &self,
        group: &str,
        kind: &str,
        now: u64,
        fields: serde_json::Value,
        effects: &mut Vec<Effect>,
    ) {
        for (member, _) in self.graph().members(group) {
            effects.push(Effect::Notify {
                to: member,
                envelope: notice(kind, now, fields.clone()),
            });
        }
    }

    fn add_member(
        &self,
        batch: &mut Batch,
        account: &str,
        group: &str,
        relation: Relation,
        now: u64,
        effects: &mut Vec<Effect>,
    ) {
        self.drop_relation(batch, account, group, "invite");
        self.drop_relation(batch, account, group, "join");
        let role = match &relation {
            Relation::Member { role, .. } => role.as_str(),
            _ => "member",
        };
        self.put_relation(batch, account, group, relation);
        // A new member's devices start from now: what was said before is history (pageable
        // with `history`), not missed messages.
        let conv = super::conv_group(group);
        let last = self.last_seq(&conv).unwrap_or(0);
        batch.put(
            Space::Cursors,
            super::key(&["a", account, &conv]),
            last.to_be_bytes().to_vec(),
        );
        effects.push(Effect::Related(RelationChange::MemberJoined {
            group: group.to_owned(),
            member: account.to_owned(),
        }));
        self.tell_members(
            group,
            "group.joined",
            now,
            json!({ "group": group, "member": account, "role": role }),
            effects,
        );
    }

    /// `owner` creates `group`.
    pub fn group_create(
        &self,
        owner: &str,
        group: &str,
        name: Option<&str>,
        open: bool,
        now: u64,
    ) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        Self::check_id(group)?;
        self.require_person(owner)?;
        if self.group(group).is_some() || self.graph().account_kind(group).is_some() {
            return Err(ImError::Conflict(format!("{group} is taken")));
        }
        let record = GroupRecord {
            name: name.unwrap_or(group).to_owned(),
            open,
            owner: owner.to_owned(),
            created: now,
            origin: Origin::Runtime,
        };
        self.create_group(record, group, owner, now)
    }

    fn create_group(
        &self,
        record: GroupRecord,
        group: &str,
        owner: &str,
        now: u64,
    ) -> ImResult<Vec<Effect>> {
        let mut batch = Batch::new();
        batch.put(Space::Groups, group.as_bytes().to_vec(), encode(&record));
        self.graph_mut().add_group(group);
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(group.to_owned(), record.clone());
        let mut effects = Vec::new();
        let relation = Relation::Member {
            role: Role::Owner,
            since: now,
            origin: record.origin,
        };
        self.add_member(&mut batch, owner, group, relation, now, &mut effects);
        self.store.apply(batch)?;
        Ok(effects)
    }

    /// A group from a definitions file: created if missing, members added if missing; the
    /// effects (a member joined, told to the members).
    pub fn define_group(
        &self,
        group: &str,
        owner: &str,
        members: &[String],
        name: Option<&str>,
        open: bool,
        now: u64,
    ) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        Self::check_id(group)?;
        self.require_person(owner)?;
        let mut effects = Vec::new();
        if self.group(group).is_none() {
            let record = GroupRecord {
                name: name.unwrap_or(group).to_owned(),
                open,
                owner: owner.to_owned(),
                created: now,
                origin: Origin::File,
            };
            effects = self.create_group(record, group, owner, now)?;
        }
        let mut batch = Batch::new();
        for member in members {
            self.require_person(member)?;
            if self.graph().role(member, group).is_none() {
                let relation = Relation::Member {
                    role: Role::Member,
                    since: now,
                    origin: Origin::File,
                };
                self.add_member(&mut batch, member, group, relation, now, &mut effects);
            }
        }
        self.store.apply(batch)?;
        Ok(effects)
    }

    /// `account` asks to join `group` (a SUBSCRIBE by a non-member, or a new SUBSCRIBE after
    /// leaving: then the membership comes back from the recycle bin as it was).
    pub fn group_join(
        &self,
        account: &str,
        group: &str,
        now: u64,
    ) -> ImResult<(JoinState, Vec<Effect>)> {
        let _guard = self.relations_lock();
        let Some(record) = self.group(group) else {
            return Err(ImError::NotFound(format!("no group {group}")));
        };
        let mut effects = Vec::new();
        if self.graph().role(account, group).is_some() {
            // Already a member: nothing changes.
            return Ok((JoinState::Joined, effects));
        }
        let mut batch = Batch::new();
        if let Some(entry) = self.bin_take(&mut batch, account, RecycleKind::Group, group, now)? {
            self.add_member(
                &mut batch,
                account,
                group,
                entry.relation,
                now,
                &mut effects,
            );
            self.store.apply(batch)?;
            return Ok((JoinState::Joined, effects));
        }
        if record.open || self.graph().is_invited(account, group) {
            let relation = Relation::Member {
                role: Role::Member,
                since: now,
                origin: Origin::Runtime,
            };
            self.add_member(&mut batch, account, group, relation, now, &mut effects);
            self.store.apply(batch)?;
            return Ok((JoinState::Joined, effects));
        }
        if self.graph().get(account, group, "join").is_none() {
            self.put_relation(
                &mut batch,
                account,
                group,
                Relation::JoinRequest { at: now },
            );
            self.store.apply(batch)?;
            for (member, role) in self.graph().members(group) {
                if role >= Role::Admin {
                    effects.push(Effect::Notify {
                        to: member,
                        envelope: notice(
                            "group.join_request",
                            now,
                            json!({ "group": group, "from": account }),
                        ),
                    });
                }
            }
        }
        effects.push(Effect::Notify {
            to: account.to_owned(),
            envelope: notice("group.pending", now, json!({ "group": group })),
        });
        Ok((JoinState::Pending, effects))
    }

    /// An admin invites `member`; a member who already asked to join is in at once.
    pub fn group_invite(
        &self,
        admin: &str,
        group: &str,
        member: &str,
        now: u64,
    ) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        self.require_role(admin, group, Role::Admin)?;
        self.require_person(member)?;
        if self.graph().blocked_between(admin, member) {
            return Err(ImError::NotAuthorized(format!(
                "{member} cannot be invited"
            )));
        }
        let mut batch = Batch::new();
        let mut effects = Vec::new();
        if self.graph().role(member, group).is_some() {
            return Ok(effects);
        }
        if self.graph().get(member, group, "join").is_some() {
            let relation = Relation::Member {
                role: Role::Member,
                since: now,
                origin: Origin::Runtime,
            };
            self.add_member(&mut batch, member, group, relation, now, &mut effects);
        } else {
            self.put_relation(
                &mut batch,
                member,
                group,
                Relation::Invite {
                    by: admin.to_owned(),
                    at: now,
                },
            );
            effects.push(Effect::Notify {
                to: member.to_owned(),
                envelope: notice("group.invited", now, json!({ "group": group, "by": admin })),
            });
        }
        self.store.apply(batch)?;
        Ok(effects)
    }

    /// An admin removes `member` (an owner can remove admins; nobody removes the owner).
    pub fn group_kick(
        &self,
        admin: &str,
        group: &str,
        member: &str,
        now: u64,
    ) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        let my_role = self.require_role(admin, group, Role::Admin)?;
        let Some(their_role) = self.graph().role(member, group) else {
            return Err(ImError::NotFound(format!("{member} is not in {group}")));
        };
        if their_role >= my_role {
            return Err(ImError::NotAuthorized(format!(
                "cannot remove a {}",
                their_role.as_str()
            )));
        }
        let mut effects = Vec::new();
        self.tell_members(
            group,
            "group.kicked",
            now,
            json!({ "group": group, "member": member, "by": admin }),
            &mut effects,
        );
        let mut batch = Batch::new();
        self.drop_relation(&mut batch, member, group, "member");
        self.store.apply(batch)?;
        effects.push(Effect::Related(RelationChange::MemberLeft {
            group: group.to_owned(),
            member: member.to_owned(),
        }));
        Ok(effects)
    }

    /// The owner makes `member` an admin or a member.
    pub fn group_set_role(
        &self,
        owner: &str,
        group: &str,
        member: &str,
        role: Role,
        now: u64,
    ) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        self.require_role(owner, group, Role::Owner)?;
        if role == Role::Owner {
            return Err(ImError::Invalid("a group has one owner".into()));
        }
        let Some(Relation::Member {
            since,
            origin,
            role: current,
        }) = self.graph().get(member, group, "member").cloned()
        else {
            return Err(ImError::NotFound(format!("{member} is not in {group}")));
        };
        if current == Role::Owner {
            return Err(ImError::Invalid("the owner's role cannot change".into()));
        }
        let mut batch = Batch::new();
        self.put_relation(
            &mut batch,
            member,
            group,
            Relation::Member {
                role,
                since,
                origin,
            },
        );
        self.store.apply(batch)?;
        let mut effects = Vec::new();
        self.tell_members(
            group,
            "group.role",
            now,
            json!({ "group": group, "member": member, "role": role.as_str() }),
            &mut effects,
        );
        Ok(effects)
    }

    /// `account` leaves (UNSUBSCRIBE or `group.leave`): into its recycle bin. The owner cannot
    /// leave (dissolve instead).
    pub fn group_leave(
        &self,
        account: &str,
        group: &str,
        retain_secs: Option<u64>,
        now: u64,
    ) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        let role = self.require_role(account, group, Role::Member)?;
        if role == Role::Owner {
            return Err(ImError::Invalid(
                "the owner cannot leave; dissolve the group instead".into(),
            ));
        }
        let mut batch = Batch::new();
        let Some(relation) = self.drop_relation(&mut batch, account, group, "member") else {
            return Err(ImError::NotFound(format!("{account} is not in {group}")));
        };
        self.bin_put(
            &mut batch,
            account,
            RecycleKind::Group,
            group,
            relation,
            retain_secs,
            now,
        );
        self.store.apply(batch)?;
        let mut effects = vec![Effect::Related(RelationChange::MemberLeft {
            group: group.to_owned(),
            member: account.to_owned(),
        })];
        self.tell_members(
            group,
            "group.left",
            now,
            json!({ "group": group, "member": account }),
            &mut effects,
        );
        effects.push(Effect::Notify {
            to: account.to_owned(),
            envelope: notice(
                "group.left",
                now,
                json!({ "group": group, "member": account }),
            ),
        });
        Ok(effects)
    }

    /// Rejoin a group left before its retention ended, with the same role.
    pub fn group_restore(&self, account: &str, group: &str, now: u64) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        if self.group(group).is_none() {
            return Err(ImError::NotFound(format!("no group {group}")));
        }
        let mut batch = Batch::new();
        let Some(entry) = self.bin_take(&mut batch, account, RecycleKind::Group, group, now)?
        else {
            self.store.apply(batch)?;
            return Err(Self::expired_or_missing(&format!("membership of {group}")));
        };
        let mut effects = Vec::new();
        self.add_member(
            &mut batch,
            account,
            group,
            entry.relation,
            now,
            &mut effects,
        );
        self.store.apply(batch)?;
        Ok(effects)
    }

    /// The owner dissolves the group: members are told, the topic is refused afterwards.
    pub fn group_dissolve(&self, owner: &str, group: &str, now: u64) -> ImResult<Vec<Effect>> {
        let _guard = self.relations_lock();
        self.require_role(owner, group, Role::Owner)?;
        let mut effects = Vec::new();
        let mut batch = Batch::new();
        for (member, _) in self.graph().members(group) {
            effects.push(Effect::Related(RelationChange::MemberLeft {
                group: group.to_owned(),
                member: member.clone(),
            }));
            effects.push(Effect::Notify {
                to: member.clone(),
                envelope: notice(
                    "group.dissolved",
                    now,
                    json!({ "group": group, "by": owner }),
                ),
            });
            batch.remove(Space::Relations, super::key(&["member", &member, group]));
        }
        for requester in self.graph().join_requests(group) {
            batch.remove(Space::Relations, super::key(&["join", &requester, group]));
        }
        batch.remove(Space::Groups, group.as_bytes().to_vec());
        self.graph_mut().remove_group(group);
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(group);
        self.store.apply(batch)?;
        Ok(effects)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{im_with, notices};
    use super::*;

    #[test]
    fn invite_join_kick_leave_restore_dissolve() {
        let (_dir, im) = im_with(&["a", "b", "c"]);
        im.group_create("a", "g", Some("G"), false, 1).unwrap();
        let effects = im.group_invite("a", "g", "b", 2).unwrap();
        assert_eq!(notices(&effects, "b"), ["group.invited"]);
        let (state, _) = im.group_join("b", "g", 3).unwrap();
        assert_eq!(state, JoinState::Joined);
        let (state, effects) = im.group_join("c", "g", 4).unwrap();
        assert_eq!(state, JoinState::Pending);
        assert_eq!(notices(&effects, "a"), ["group.join_request"]);
        im.group_invite("a", "g", "c", 5).unwrap();
        assert_eq!(im.graph().members("g").len(), 3);
        assert!(
            im.group_kick("b", "g", "c", 6).is_err(),
            "a member cannot kick"
        );
        im.group_set_role("a", "g", "b", Role::Admin, 7).unwrap();
        im.group_kick("b", "g", "c", 8).unwrap();
        assert_eq!(im.graph().members("g").len(), 2);
        im.group_leave("b", "g", None, 9).unwrap();
        assert!(im.graph().role("b", "g").is_none());
        im.group_restore("b", "g", 10).unwrap();
        assert_eq!(
            im.graph().role("b", "g"),
            Some(Role::Admin),
            "restored as it was"
        );
        assert!(
            im.group_leave("a", "g", None, 11).is_err(),
            "the owner cannot leave"
        );
        let effects = im.group_dissolve("a", "g", 12).unwrap();
        assert_eq!(notices(&effects, "b"), ["group.dissolved"]);
        assert!(im.group("g").is_none());
        assert!(im.group_join("b", "g", 13).is_err());
    }

    #[test]
    fn a_new_member_misses_nothing_said_before_it_joined() {
        let (_dir, im) = im_with(&["a", "b"]);
        im.group_create("a", "g", None, true, 1).unwrap();
        let conv = crate::im::conv_group("g");
        for _ in 0..3 {
            im.append(&conv, "a", "g", br#"{"text":"x"}"#, None, None, 2)
                .unwrap();
        }
        im.group_join("b", "g", 3).unwrap();
        assert!(
            im.missed("b", "b")
                .unwrap()
                .iter()
                .all(|m| m.messages.is_empty())
        );
        im.append(&conv, "a", "g", br#"{"text":"y"}"#, None, None, 4)
            .unwrap();
        let missed = im.missed("b", "b").unwrap();
        assert_eq!(missed[0].messages.len(), 1);
        assert_eq!(im.history("b", &conv, None, None, 10).unwrap().len(), 4);
    }
}
