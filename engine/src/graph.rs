//! The relationship graph: accounts and groups as nodes, typed relations as edges (friendships,
//! memberships, and the things world's bindings, shares, follow requests and links), in a petgraph
//! `StableGraph` for queries. The store is the source of truth (`Space::Relations`,
//! `Space::Groups`); the graph is rebuilt from it at start and kept in step by `crate::im`.

use std::collections::HashMap;

use petgraph::Direction;
use petgraph::stable_graph::{EdgeIndex, NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;
use serde::{Deserialize, Serialize};

use crate::accounts::AccountKind;

mod things;

pub use things::{Access, Rights};

/// Where a relation came from: a definitions file or a runtime action (a packet, a request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    File,
    Runtime,
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }
}

/// Relations stored once between two accounts, from the smaller id to the larger.
pub fn symmetric(tag: &str) -> bool {
    tag == "friend" || tag == "link"
}

/// A node of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Account { id: String, kind: AccountKind },
    Group { id: String },
}

/// The kinds of relation, each with its origin and time (ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Relation {
    /// `from` asked `to` to be friends; waiting for an answer. Directed.
    FriendRequest { at: u64, origin: Origin },
    /// Accepted friendship. Stored once, from the smaller id to the larger.
    Friend { since: u64, origin: Origin },
    /// `from` blocks `to`. Directed.
    Block { at: u64 },
    /// Account `from` is a member of group `to`.
    Member {
        role: Role,
        since: u64,
        origin: Origin,
    },
    /// Account `from` asked to join group `to`.
    JoinRequest { at: u64 },
    /// Account `from` is invited into group `to` by `by`.
    Invite { by: String, at: u64 },
    /// Person `from` owns thing `to`.
    Owner { since: u64, origin: Origin },
    /// Person `from` may use thing `to` with `rights`, given by its owner `by`.
    Share {
        rights: Rights,
        since: u64,
        origin: Origin,
        by: String,
    },
    /// Person `from` asked to follow thing `to`; waiting for the owner.
    FollowRequest { at: u64 },
    /// Things `from` and `to` are linked. Stored once, from the smaller id to the larger.
    Link { since: u64, origin: Origin },
}

/// A short stable tag per relation kind, used in store keys.
impl Relation {
    pub fn tag(&self) -> &'static str {
        match self {
            Relation::FriendRequest { .. } => "freq",
            Relation::Friend { .. } => "friend",
            Relation::Block { .. } => "block",
            Relation::Member { .. } => "member",
            Relation::JoinRequest { .. } => "join",
            Relation::Invite { .. } => "invite",
            Relation::Owner { .. } => "owner",
            Relation::Share { .. } => "share",
            Relation::FollowRequest { .. } => "follow",
            Relation::Link { .. } => "link",
        }
    }

    /// Where the relation came from, for the kinds that record it.
    pub fn origin(&self) -> Option<Origin> {
        match self {
            Relation::FriendRequest { origin, .. }
            | Relation::Friend { origin, .. }
            | Relation::Member { origin, .. }
            | Relation::Owner { origin, .. }
            | Relation::Share { origin, .. }
            | Relation::Link { origin, .. } => Some(*origin),
            Relation::Block { .. }
            | Relation::JoinRequest { .. }
            | Relation::Invite { .. }
            | Relation::FollowRequest { .. } => None,
        }
    }
}

/// The graph with an index from ids to nodes.
#[derive(Debug, Default)]
pub struct Graph {
    graph: StableGraph<Node, Relation>,
    /// Looked up for every IM message: foldhash, a fraction of SipHash's cost on short ids (the
    /// registry's, not a client's choice).
    accounts: HashMap<String, NodeIndex, foldhash::fast::RandomState>,
    groups: HashMap<String, NodeIndex, foldhash::fast::RandomState>,
}

/// May one person send another a direct message?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectCheck {
    Allowed,
    /// The recipient is not an account.
    NoSuchAccount,
    /// Not friends, or one blocks the other.
    Refused,
}

impl Graph {
    pub fn add_account(&mut self, id: &str, kind: AccountKind) {
        if !self.accounts.contains_key(id) {
            let index = self.graph.add_node(Node::Account {
                id: id.to_owned(),
                kind,
            });
            self.accounts.insert(id.to_owned(), index);
        }
    }

    pub fn remove_account(&mut self, id: &str) {
        if let Some(index) = self.accounts.remove(id) {
            self.graph.remove_node(index);
        }
    }

    pub fn account_kind(&self, id: &str) -> Option<AccountKind> {
        match self
            .accounts
            .get(id)
            .and_then(|i| self.graph.node_weight(*i))
        {
            Some(Node::Account { kind, .. }) => Some(*kind),
            _ => None,
        }
    }

    pub fn has_group(&self, id: &str) -> bool {
        self.groups.contains_key(id)
    }

    pub fn add_group(&mut self, id: &str) {
        if !self.groups.contains_key(id) {
            let index = self.graph.add_node(Node::Group { id: id.to_owned() });
            self.groups.insert(id.to_owned(), index);
        }
    }

    pub fn remove_group(&mut self, id: &str) {
        if let Some(index) = self.groups.remove(id) {
            self.graph.remove_node(index);
        }
    }

    fn node(&self, id: &str, group: bool) -> Option<NodeIndex> {
        if group {
            self.groups.get(id).copied()
        } else {
            self.accounts.get(id).copied()
        }
    }

    fn id_of(&self, index: NodeIndex) -> &str {
        match self.graph.node_weight(index) {
            Some(Node::Account { id, .. }) | Some(Node::Group { id }) => id,
            None => "",
        }
    }

    fn find(&self, from: NodeIndex, to: NodeIndex, tag: &str) -> Option<EdgeIndex> {
        self.graph
            .edges_connecting(from, to)
            .find(|e| e.weight().tag() == tag)
            .map(|e| e.id())
    }

    /// The endpoints a relation is stored between (friendship: smaller id first).
    fn ends(&self, a: &str, b: &str, relation: &Relation) -> Option<(NodeIndex, NodeIndex)> {
        let to_group = matches!(
            relation,
            Relation::Member { .. } | Relation::JoinRequest { .. } | Relation::Invite { .. }
        );
        let (a, b) = if symmetric(relation.tag()) && a > b {
            (b, a)
        } else {
            (a, b)
        };
        Some((self.node(a, false)?, self.node(b, to_group)?))
    }

    /// Set (insert or replace) a relation. `false` when an endpoint is unknown.
    pub fn set(&mut self, a: &str, b: &str, relation: Relation) -> bool {
        let Some((from, to)) = self.ends(a, b, &relation) else {
            return false;
        };
        match self.find(from, to, relation.tag()) {
            Some(edge) => {
                if let Some(weight) = self.graph.edge_weight_mut(edge) {
                    *weight = relation;
                }
            }
            None => {
                self.graph.add_edge(from, to, relation);
            }
        }
        true
    }

    /// Remove the relation of `tag` kind between `a` and `b`; returns it.
    pub fn unset(&mut self, a: &str, b: &str, tag: &str) -> Option<Relation> {
        let to_group = matches!(tag, "member" | "join" | "invite");
        let (a, b) = if symmetric(tag) && a > b {
            (b, a)
        } else {
            (a, b)
        };
        let from = self.node(a, false)?;
        let to = self.node(b, to_group)?;
        let edge = self.find(from, to, tag)?;
        self.graph.remove_edge(edge)
    }

    /// The relation of `tag` kind from `a` to `b` (friendship in either order).
    pub fn get(&self, a: &str, b: &str, tag: &str) -> Option<&Relation> {
        let to_group = matches!(tag, "member" | "join" | "invite");
        let (a, b) = if symmetric(tag) && a > b {
            (b, a)
        } else {
            (a, b)
        };
        let edge = self.find(self.node(a, false)?, self.node(b, to_group)?, tag)?;
        self.graph.edge_weight(edge)
    }

    pub fn are_friends(&self, a: &str, b: &str) -> bool {
        self.get(a, b, "friend").is_some()
    }

    /// Friends and neither blocks the other: the relations between the two, read in one pass.
    pub fn direct_check(&self, from: &str, to: &str) -> DirectCheck {
        let Some(to) = self.node(to, false) else {
            return DirectCheck::NoSuchAccount;
        };
        let Some(from) = self.node(from, false) else {
            return DirectCheck::Refused;
        };
        let mut friends = false;
        let between = self
            .graph
            .edges_connecting(from, to)
            .chain(self.graph.edges_connecting(to, from));
        for edge in between {
            match edge.weight() {
                Relation::Block { .. } => return DirectCheck::Refused,
                Relation::Friend { .. } => friends = true,
                _ => {}
            }
        }
        if friends {
            DirectCheck::Allowed
        } else {
            DirectCheck::Refused
        }
    }

    /// Does either block the other?
    pub fn blocked_between(&self, a: &str, b: &str) -> bool {
        self.get(a, b, "block").is_some() || self.get(b, a, "block").is_some()
    }

    fn neighbours(&self, id: &str, group: bool, dir: Direction, tag: &str) -> Vec<String> {
        let Some(index) = self.node(id, group) else {
            return Vec::new();
        };
        let mut out: Vec<String> = self
            .graph
            .edges_directed(index, dir)
            .filter(|e| e.weight().tag() == tag)
            .map(|e| {
                let other = if dir == Direction::Outgoing {
                    e.target()
                } else {
                    e.source()
                };
                self.id_of(other).to_owned()
            })
            .collect();
        out.sort();
        out
    }

    pub fn friends(&self, id: &str) -> Vec<String> {
        let mut out = self.neighbours(id, false, Direction::Outgoing, "friend");
        out.extend(self.neighbours(id, false, Direction::Incoming, "friend"));
        out.sort();
        out
    }

    /// Friend requests `id` has received and not answered.
    pub fn requests_in(&self, id: &str) -> Vec<String> {
        self.neighbours(id, false, Direction::Incoming, "freq")
    }

    /// Friend requests `id` has sent and that wait.
    pub fn requests_out(&self, id: &str) -> Vec<String> {
        self.neighbours(id, false, Direction::Outgoing, "freq")
    }

    pub fn blocked_by(&self, id: &str) -> Vec<String> {
        self.neighbours(id, false, Direction::Outgoing, "block")
    }

    /// Groups of `id` with its role.
    pub fn groups_of(&self, id: &str) -> Vec<(String, Role)> {
        let Some(index) = self.node(id, false) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Role)> = self
            .graph
            .edges_directed(index, Direction::Outgoing)
            .filter_map(|e| match e.weight() {
                Relation::Member { role, .. } => Some((self.id_of(e.target()).to_owned(), *role)),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Calls `f` with every member of group `id` (any role), in no particular order: a group
    /// message's fan-out, without building and sorting the member list for every message.
    pub fn for_each_member(&self, id: &str, mut f: impl FnMut(&str)) {
        let Some(index) = self.node(id, true) else {
            return;
        };
        for edge in self.graph.edges_directed(index, Direction::Incoming) {
            if let Relation::Member { .. } = edge.weight() {
                f(self.id_of(edge.source()));
            }
        }
    }

    /// Members of group `id` with their roles.
    pub fn members(&self, id: &str) -> Vec<(String, Role)> {
        let Some(index) = self.node(id, true) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Role)> = self
            .graph
            .edges_directed(index, Direction::Incoming)
            .filter_map(|e| match e.weight() {
                Relation::Member { role, .. } => Some((self.id_of(e.source()).to_owned(), *role)),
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    pub fn role(&self, account: &str, group: &str) -> Option<Role> {
        match self.get(account, group, "member") {
            Some(Relation::Member { role, .. }) => Some(*role),
            _ => None,
        }
    }

    pub fn join_requests(&self, group: &str) -> Vec<String> {
        self.neighbours(group, true, Direction::Incoming, "join")
    }

    pub fn is_invited(&self, account: &str, group: &str) -> bool {
        self.get(account, group, "invite").is_some()
    }

    /// Account ids containing `query` (case-insensitive), persons only, at most `limit`.
    pub fn search_persons(&self, query: &str, limit: usize) -> Vec<String> {
        let query = query.to_lowercase();
        let mut out: Vec<String> = self
            .accounts
            .iter()
            .filter(|(id, index)| {
                id.to_lowercase().contains(&query)
                    && matches!(
                        self.graph.node_weight(**index),
                        Some(Node::Account {
                            kind: AccountKind::Person,
                            ..
                        })
                    )
            })
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out.truncate(limit);
        out
    }

    pub fn group_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = self.groups.keys().cloned().collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Graph {
        let mut g = Graph::default();
        for id in ["alice", "bob", "carol"] {
            g.add_account(id, AccountKind::Person);
        }
        g.add_group("family");
        g
    }

    #[test]
    fn direct_messages_need_a_friendship_and_no_block() {
        let mut g = graph();
        assert_eq!(g.direct_check("alice", "bob"), DirectCheck::Refused);
        assert_eq!(
            g.direct_check("alice", "nobody"),
            DirectCheck::NoSuchAccount
        );
        let friend = Relation::Friend {
            since: 1,
            origin: Origin::Runtime,
        };
        g.set("bob", "alice", friend);
        assert_eq!(g.direct_check("alice", "bob"), DirectCheck::Allowed);
        assert_eq!(g.direct_check("bob", "alice"), DirectCheck::Allowed);
        assert_eq!(g.direct_check("carol", "bob"), DirectCheck::Refused);
        // A block either way refuses both ways.
        g.set("bob", "alice", Relation::Block { at: 2 });
        assert_eq!(g.direct_check("alice", "bob"), DirectCheck::Refused);
        assert_eq!(g.direct_check("bob", "alice"), DirectCheck::Refused);
        g.unset("bob", "alice", "block");
        g.set("alice", "bob", Relation::Block { at: 3 });
        assert_eq!(g.direct_check("bob", "alice"), DirectCheck::Refused);
    }

    #[test]
    fn friendship_is_symmetric_and_requests_are_directed() {
        let mut g = graph();
        g.set(
            "bob",
            "alice",
            Relation::FriendRequest {
                at: 1,
                origin: Origin::Runtime,
            },
        );
        assert_eq!(g.requests_in("alice"), ["bob"]);
        assert_eq!(g.requests_out("bob"), ["alice"]);
        assert!(g.unset("bob", "alice", "freq").is_some());
        g.set(
            "bob",
            "alice",
            Relation::Friend {
                since: 2,
                origin: Origin::Runtime,
            },
        );
        assert!(g.are_friends("alice", "bob"));
        assert!(g.are_friends("bob", "alice"));
        assert_eq!(g.friends("alice"), ["bob"]);
        assert_eq!(g.friends("bob"), ["alice"]);
        assert!(!g.are_friends("alice", "carol"));
        assert!(g.unset("alice", "bob", "friend").is_some());
        assert!(g.friends("bob").is_empty());
    }

    #[test]
    fn groups_roles_and_blocks() {
        let mut g = graph();
        g.set(
            "alice",
            "family",
            Relation::Member {
                role: Role::Owner,
                since: 1,
                origin: Origin::File,
            },
        );
        g.set(
            "bob",
            "family",
            Relation::Member {
                role: Role::Member,
                since: 1,
                origin: Origin::File,
            },
        );
        assert_eq!(g.members("family").len(), 2);
        assert_eq!(g.role("alice", "family"), Some(Role::Owner));
        assert_eq!(g.groups_of("bob"), [("family".to_string(), Role::Member)]);
        g.set("carol", "alice", Relation::Block { at: 3 });
        assert!(g.blocked_between("alice", "carol"));
        assert!(!g.set("nobody", "alice", Relation::Block { at: 3 }));
        g.remove_group("family");
        assert!(g.groups_of("bob").is_empty());
        assert_eq!(g.search_persons("AL", 10), ["alice"]);
    }
}
