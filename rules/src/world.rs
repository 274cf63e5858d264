//! What a rule can ask about the world ([`World`]: states, owners, links, friends, members,
//! presence), read-only. [`EngineWorld`] answers from the engine's graph and things (what the daemon
//! uses); [`FolderWorld`] answers from
//! what a rules folder declares, which is what `check` knows without a broker.

use std::collections::{BTreeMap, BTreeSet};

use mqtter_engine::accounts::AccountKind;
use mqtter_engine::definitions::{Definitions, RelationDef};
use mqtter_engine::graph::{Access, Graph};
use mqtter_engine::im::Im;
use mqtter_engine::things::Things;
use serde_json::Value;

/// Read-only questions a rule's script can ask.
pub trait World: Send + Sync {
    /// Is there an account (person or thing) with this id?
    fn account_exists(&self, id: &str) -> bool;
    fn is_thing(&self, id: &str) -> bool;
    fn group_exists(&self, id: &str) -> bool;
    /// The last state a thing reported.
    fn state(&self, thing: &str) -> Option<Value>;
    /// The person a thing is bound to (its owner).
    fn owner_of(&self, thing: &str) -> Option<String>;
    /// The things bound to a person (owned or shared with it).
    fn bound_to(&self, person: &str) -> Vec<String>;
    /// The things linked with a thing.
    fn linked(&self, thing: &str) -> Vec<String>;
    fn friends(&self, person: &str) -> Vec<String>;
    /// A group's members, owner included.
    fn members(&self, group: &str) -> Vec<String>;
    /// `online`, `away` or `offline`.
    fn presence(&self, account: &str) -> String;
}

/// The world a folder declares: accounts, groups, friendships, bindings and links (no states,
/// everyone offline).
#[derive(Debug, Default, Clone)]
pub struct FolderWorld {
    persons: BTreeSet<String>,
    things: BTreeSet<String>,
    groups: BTreeMap<String, BTreeSet<String>>,
    friends: BTreeMap<String, BTreeSet<String>>,
    owners: BTreeMap<String, String>,
    /// The things shared with each person (any rights).
    shared: BTreeMap<String, BTreeSet<String>>,
    links: BTreeMap<String, BTreeSet<String>>,
}

impl FolderWorld {
    pub fn add(&mut self, defs: &Definitions) {
        self.persons
            .extend(defs.persons.iter().map(|p| p.id.clone()));
        self.things.extend(defs.things.iter().map(|t| t.id.clone()));
        for group in &defs.groups {
            let members = self.groups.entry(group.id.clone()).or_default();
            members.insert(group.owner.clone());
            members.extend(group.members.iter().cloned());
        }
        for relation in &defs.relations {
            match relation {
                RelationDef::Friends { friends: [a, b] } => {
                    self.friends.entry(a.clone()).or_default().insert(b.clone());
                    self.friends.entry(b.clone()).or_default().insert(a.clone());
                }
                RelationDef::Bind { bind, to } => {
                    self.owners.insert(bind.clone(), to.clone());
                }
                RelationDef::Share { share, with, .. } => {
                    let things = self.shared.entry(with.clone()).or_default();
                    things.insert(share.clone());
                }
                RelationDef::Link { link: [a, b] } => {
                    self.links.entry(a.clone()).or_default().insert(b.clone());
                    self.links.entry(b.clone()).or_default().insert(a.clone());
                }
            }
        }
    }
}

fn list(set: Option<&BTreeSet<String>>) -> Vec<String> {
    set.map(|s| s.iter().cloned().collect()).unwrap_or_default()
}

impl World for FolderWorld {
    fn account_exists(&self, id: &str) -> bool {
        self.persons.contains(id) || self.things.contains(id)
    }
    fn is_thing(&self, id: &str) -> bool {
        self.things.contains(id)
    }
    fn group_exists(&self, id: &str) -> bool {
        self.groups.contains_key(id)
    }
    fn state(&self, _thing: &str) -> Option<Value> {
        None
    }
    fn owner_of(&self, thing: &str) -> Option<String> {
        self.owners.get(thing).cloned()
    }
    fn bound_to(&self, person: &str) -> Vec<String> {
        let owned = self.owners.iter().filter(|(_, p)| *p == person);
        let mut things: BTreeSet<String> = owned.map(|(t, _)| t.clone()).collect();
        things.extend(list(self.shared.get(person)));
        things.into_iter().collect()
    }
    fn linked(&self, thing: &str) -> Vec<String> {
        list(self.links.get(thing))
    }
    fn friends(&self, person: &str) -> Vec<String> {
        list(self.friends.get(person))
    }
    fn members(&self, group: &str) -> Vec<String> {
        list(self.groups.get(group))
    }
    fn presence(&self, _account: &str) -> String {
        "offline".into()
    }
}

/// The daemon's world: the engine's graph (accounts, groups, friends, owners, links), the things'
/// states, and presence as the daemon knows it. `H` is whatever holds the engine's parts (the
/// daemon's broker, or an `Im` alone); the functions reach them, so this crate never names `H`.
/// It is held weakly (the daemon holds the rules engine, not the reverse): once it is gone, every
/// query answers "nothing".
pub struct EngineWorld<H> {
    holder: std::sync::Weak<H>,
    im: fn(&H) -> &Im,
    things: Option<fn(&H) -> &Things>,
    presence: fn(&H, &str) -> String,
}

impl<H> EngineWorld<H> {
    pub fn new(
        holder: std::sync::Weak<H>,
        im: fn(&H) -> &Im,
        things: Option<fn(&H) -> &Things>,
        presence: fn(&H, &str) -> String,
    ) -> Self {
        Self {
            holder,
            im,
            things,
            presence,
        }
    }

    fn with_graph<T: Default>(&self, f: impl FnOnce(&Graph) -> T) -> T {
        match self.holder.upgrade() {
            Some(holder) => (self.im)(&holder).with_graph(f),
            None => T::default(),
        }
    }
}

impl<H: Send + Sync> World for EngineWorld<H> {
    fn account_exists(&self, id: &str) -> bool {
        self.with_graph(|g| g.account_kind(id).is_some())
    }
    fn is_thing(&self, id: &str) -> bool {
        self.with_graph(|g| g.account_kind(id) == Some(AccountKind::Thing))
    }
    fn group_exists(&self, id: &str) -> bool {
        self.with_graph(|g| g.has_group(id))
    }
    fn state(&self, thing: &str) -> Option<Value> {
        let holder = self.holder.upgrade()?;
        let doc = (self.things?)(&holder).current_state(thing).ok()?;
        (doc.version > 0).then_some(doc.state)
    }
    fn owner_of(&self, thing: &str) -> Option<String> {
        self.with_graph(|g| g.owner_of(thing))
    }
    fn bound_to(&self, person: &str) -> Vec<String> {
        self.with_graph(|g| {
            let owned = g.things_of(person).into_iter();
            owned
                .filter(|(_, access)| *access == Access::Owner)
                .map(|(thing, _)| thing)
                .collect()
        })
    }
    fn linked(&self, thing: &str) -> Vec<String> {
        self.with_graph(|g| g.links_of(thing))
    }
    fn friends(&self, person: &str) -> Vec<String> {
        self.with_graph(|g| g.friends(person))
    }
    fn members(&self, group: &str) -> Vec<String> {
        self.with_graph(|g| g.members(group).into_iter().map(|(m, _)| m).collect())
    }
    fn presence(&self, account: &str) -> String {
        match self.holder.upgrade() {
            Some(holder) => (self.presence)(&holder, account),
            None => "offline".into(),
        }
    }
}
