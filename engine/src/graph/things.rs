//! The things world's side of the graph: the rights of shares, what an account may do with a
//! thing, and the queries over owners, shares, follow requests and links.

use petgraph::Direction;
use petgraph::visit::EdgeRef;
use serde::{Deserialize, Serialize};

use super::{Graph, Relation};

/// The rights a share of a thing gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rights {
    /// See state, events and presence.
    View,
    /// Also command.
    Control,
}

impl Rights {
    pub fn as_str(self) -> &'static str {
        match self {
            Rights::View => "view",
            Rights::Control => "control",
        }
    }

    pub fn parse(s: &str) -> Option<Rights> {
        match s {
            "view" => Some(Rights::View),
            "control" => Some(Rights::Control),
            _ => None,
        }
    }
}

/// What an account may do with a thing, from the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Owner,
    Control,
    View,
    /// A thing linked with it.
    Linked,
    /// The thing itself.
    Itself,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Owner => "owner",
            Access::Control => "control",
            Access::View => "view",
            Access::Linked => "linked",
            Access::Itself => "itself",
        }
    }

    /// Owners, `control` shares and linked things may command.
    pub fn may_command(self) -> bool {
        matches!(self, Access::Owner | Access::Control | Access::Linked)
    }
}

impl Graph {
    /// The owner of thing `thing`.
    pub fn owner_of(&self, thing: &str) -> Option<String> {
        self.neighbours(thing, false, Direction::Incoming, "owner")
            .into_iter()
            .next()
    }

    /// The persons `thing` is shared with, and their rights.
    pub fn shares_of(&self, thing: &str) -> Vec<(String, Rights)> {
        let Some(index) = self.node(thing, false) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Rights)> = self
            .graph
            .edges_directed(index, Direction::Incoming)
            .filter_map(|e| match e.weight() {
                Relation::Share { rights, .. } => {
                    Some((self.id_of(e.source()).to_owned(), *rights))
                }
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Persons waiting for the owner of `thing` to answer their follow request.
    pub fn follow_requests(&self, thing: &str) -> Vec<String> {
        self.neighbours(thing, false, Direction::Incoming, "follow")
    }

    /// The things `thing` is linked with.
    pub fn links_of(&self, thing: &str) -> Vec<String> {
        let mut out = self.neighbours(thing, false, Direction::Outgoing, "link");
        out.extend(self.neighbours(thing, false, Direction::Incoming, "link"));
        out.sort();
        out
    }

    /// The things person `person` owns or has a share of, with its access.
    pub fn things_of(&self, person: &str) -> Vec<(String, Access)> {
        let Some(index) = self.node(person, false) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Access)> = self
            .graph
            .edges_directed(index, Direction::Outgoing)
            .filter_map(|e| {
                let access = match e.weight() {
                    Relation::Owner { .. } => Access::Owner,
                    Relation::Share {
                        rights: Rights::Control,
                        ..
                    } => Access::Control,
                    Relation::Share { .. } => Access::View,
                    _ => return None,
                };
                Some((self.id_of(e.target()).to_owned(), access))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// What `who` may do with `thing` by the edges between them (not "itself").
    pub fn access(&self, who: &str, thing: &str) -> Option<Access> {
        let (Some(from), Some(to)) = (self.node(who, false), self.node(thing, false)) else {
            return None;
        };
        let mut best = None;
        for edge in self
            .graph
            .edges_connecting(from, to)
            .chain(self.graph.edges_connecting(to, from))
        {
            let access = match edge.weight() {
                Relation::Owner { .. } if edge.source() == from => Access::Owner,
                Relation::Share {
                    rights: Rights::Control,
                    ..
                } if edge.source() == from => Access::Control,
                Relation::Share { .. } if edge.source() == from => Access::View,
                Relation::Link { .. } => Access::Linked,
                _ => continue,
            };
            if best.is_none_or(|b: Access| rank(access) > rank(b)) {
                best = Some(access);
            }
        }
        best
    }
}

fn rank(access: Access) -> u8 {
    match access {
        Access::View => 0,
        Access::Linked => 1,
        Access::Control => 2,
        Access::Owner => 3,
        Access::Itself => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::super::Origin;
    use super::*;
    use crate::accounts::AccountKind;

    fn graph() -> Graph {
        let mut g = Graph::default();
        for id in ["alice", "bob", "carol"] {
            g.add_account(id, AccountKind::Person);
        }
        g
    }

    #[test]
    fn things_have_an_owner_shares_and_symmetric_links() {
        let mut g = graph();
        for id in ["door", "lamp"] {
            g.add_account(id, AccountKind::Thing);
        }
        let owner = Relation::Owner {
            since: 1,
            origin: Origin::Runtime,
        };
        g.set("alice", "door", owner.clone());
        g.set("alice", "lamp", owner);
        g.set(
            "bob",
            "door",
            Relation::Share {
                rights: Rights::View,
                since: 2,
                origin: Origin::Runtime,
                by: "alice".into(),
            },
        );
        g.set("carol", "door", Relation::FollowRequest { at: 3 });
        g.set(
            "lamp",
            "door",
            Relation::Link {
                since: 4,
                origin: Origin::File,
            },
        );
        assert_eq!(g.owner_of("door").as_deref(), Some("alice"));
        assert_eq!(g.shares_of("door"), [("bob".to_string(), Rights::View)]);
        assert_eq!(g.follow_requests("door"), ["carol"]);
        assert_eq!(g.links_of("door"), ["lamp"]);
        assert_eq!(g.links_of("lamp"), ["door"]);
        assert!(g.get("lamp", "door", "link").is_some() && g.get("door", "lamp", "link").is_some());
        assert_eq!(g.access("alice", "door"), Some(Access::Owner));
        assert_eq!(g.access("bob", "door"), Some(Access::View));
        assert_eq!(g.access("door", "lamp"), Some(Access::Linked));
        assert_eq!(g.access("door", "alice"), None, "owning is one way");
        assert_eq!(g.access("carol", "door"), None);
        assert_eq!(
            g.things_of("alice"),
            [
                ("door".to_string(), Access::Owner),
                ("lamp".to_string(), Access::Owner)
            ]
        );
        assert!(g.unset("door", "lamp", "link").is_some());
        assert!(g.links_of("lamp").is_empty());
    }
}
