//! The roster snapshot the handles read, kept current by the notices that change it.

use serde_json::Value;

use super::Core;
use crate::things::{Access, ThingEntry};

impl Core {
    /// Keep the roster snapshot current with the notices that change it.
    pub(super) fn track_roster(&self, kind: &str, json: &Value) {
        let field = |n: &str| json.get(n).and_then(Value::as_str).map(str::to_owned);
        let mut roster = self.view.roster.lock().unwrap_or_else(|e| e.into_inner());
        let me = self.opts.account.as_str();
        match kind {
            "friend.added" => {
                if let Some(peer) = field("peer") {
                    roster.requests.incoming.retain(|p| *p != peer);
                    roster.requests.outgoing.retain(|p| *p != peer);
                    if !roster.friends.iter().any(|f| f.id == peer) {
                        roster.friends.push(crate::types::Friend {
                            id: peer,
                            presence: "offline".into(),
                            last_seen: None,
                            text: None,
                        });
                    }
                }
            }
            "friend.removed" | "blocked" => {
                if let Some(peer) = field("peer") {
                    roster.friends.retain(|f| f.id != peer);
                }
            }
            "friend.request" => {
                if let Some(from) = field("from")
                    && !roster.requests.incoming.contains(&from)
                {
                    roster.requests.incoming.push(from);
                }
            }
            "friend.pending" => {
                if let Some(peer) = field("peer")
                    && !roster.requests.outgoing.contains(&peer)
                {
                    roster.requests.outgoing.push(peer);
                }
            }
            "friend.rejected" | "friend.withdrawn" => {
                if let Some(peer) = field("peer").or_else(|| field("from")) {
                    roster.requests.incoming.retain(|p| *p != peer);
                    roster.requests.outgoing.retain(|p| *p != peer);
                }
            }
            "group.joined" => {
                if let (Some(group), Some(member)) = (field("group"), field("member"))
                    && member == self.opts.account
                    && !roster.groups.iter().any(|g| g.id == group)
                {
                    roster.groups.push(crate::types::GroupEntry {
                        id: group,
                        name: String::new(),
                        role: field("role").unwrap_or_else(|| "member".into()),
                        last_seq: 0,
                        unread: 0,
                        join_requests: Vec::new(),
                    });
                }
            }
            "group.left" | "group.kicked" => {
                if let (Some(group), Some(member)) = (field("group"), field("member"))
                    && member == self.opts.account
                {
                    roster.groups.retain(|g| g.id != group);
                }
            }
            "thing.bound" | "thing.shared" => {
                let access = match (kind, field("rights").as_deref()) {
                    ("thing.bound", _) if field("owner").as_deref() == Some(me) => Access::Owner,
                    ("thing.shared", Some("view")) => Access::View,
                    ("thing.shared", _) => Access::Control,
                    _ => return,
                };
                if let Some(thing) = field("thing") {
                    match roster.things.iter_mut().find(|t| t.id == thing) {
                        Some(t) => t.access = access,
                        None => roster.things.push(ThingEntry {
                            id: thing,
                            access,
                            presence: "offline".into(),
                            last_seen: None,
                            version: 0,
                            state: Value::Null,
                            follow_requests: Vec::new(),
                            links: Vec::new(),
                        }),
                    }
                }
            }
            "thing.unbound" | "thing.unshared" => {
                let mine = kind == "thing.unshared"
                    || field("owner").as_deref() == Some(me)
                    || field("person").as_deref() == Some(me);
                if let Some(thing) = field("thing")
                    && mine
                {
                    roster.things.retain(|t| t.id != thing);
                }
            }
            "group.dissolved" => {
                if let Some(group) = field("group") {
                    roster.groups.retain(|g| g.id != group);
                }
            }
            _ => {}
        }
    }
}
