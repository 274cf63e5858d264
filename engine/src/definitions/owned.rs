//! Definitions owned by their files (docs/DEFINITIONS.md, "Who owns what"): each file's
//! declarations (accounts, groups, members, friendships, bindings, shares, links), a durable
//! record per file of the ones it applied (the ledger, in the store's `Meta` space), and
//! [`sync`], which brings the world in line with the folder: a declaration no file makes any
//! more is withdrawn, a new or changed one is applied, one already recorded unchanged is left
//! alone (so that what clients did to it at runtime stands, across reloads and restarts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{AccountDef, Definitions, Diagnostic, GroupDef, RelationDef};
use crate::accounts::{AccountKind, Accounts};
use crate::graph::{Origin, Relation, Rights};
use crate::im::{self, Im, PersonSettings};
use crate::store::{Batch, Space, Store};
use crate::things::{self, Things};

/// One thing a file declares, as the ledger names it. The order of the variants is the order
/// declarations are applied in (accounts before the relations that name them); withdrawals go
/// in the reverse order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Declaration {
    Person {
        id: String,
    },
    Thing {
        id: String,
    },
    Group {
        id: String,
    },
    Member {
        group: String,
        member: String,
    },
    /// `a` < `b`.
    Friends {
        a: String,
        b: String,
    },
    Bind {
        thing: String,
        to: String,
    },
    Share {
        thing: String,
        with: String,
    },
    /// `a` < `b`.
    Link {
        a: String,
        b: String,
    },
}

impl Declaration {
    /// A relation of the things world (applied through it).
    pub fn of_things(&self) -> bool {
        matches!(
            self,
            Declaration::Bind { .. } | Declaration::Share { .. } | Declaration::Link { .. }
        )
    }

    /// Its place in the order declarations are applied in (the variants' order).
    pub(super) fn rank(&self) -> u8 {
        match self {
            Declaration::Person { .. } => 0,
            Declaration::Thing { .. } => 1,
            Declaration::Group { .. } => 2,
            Declaration::Member { .. } => 3,
            Declaration::Friends { .. } => 4,
            Declaration::Bind { .. } => 5,
            Declaration::Share { .. } => 6,
            Declaration::Link { .. } => 7,
        }
    }
}

impl std::fmt::Display for Declaration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Declaration::Person { id } => write!(f, "person {id}"),
            Declaration::Thing { id } => write!(f, "thing {id}"),
            Declaration::Group { id } => write!(f, "group {id}"),
            Declaration::Member { group, member } => write!(f, "member {member} of {group}"),
            Declaration::Friends { a, b } => write!(f, "friends {a}, {b}"),
            Declaration::Bind { thing, to } => write!(f, "bind {thing} to {to}"),
            Declaration::Share { thing, with } => write!(f, "share {thing} with {with}"),
            Declaration::Link { a, b } => write!(f, "link {a}, {b}"),
        }
    }
}

/// What applying a declaration needs besides its name.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Account(&'a AccountDef, AccountKind),
    Group(&'a GroupDef),
    Plain,
    Share(Rights),
}

impl Source<'_> {
    /// Changes when the declaration's content does (a new secret, other rights): then it is
    /// applied again. CRC-32 of its fields: a change detector, not a secret.
    fn fingerprint(&self) -> u32 {
        let text = match self {
            Source::Account(def, _) => format!(
                "{:?}|{:?}|{}",
                def.password, def.password_hash, def.auto_accept
            ),
            Source::Group(def) => format!("{}|{:?}|{}", def.owner, def.name, def.open),
            Source::Plain => String::new(),
            Source::Share(rights) => rights.as_str().to_owned(),
        };
        crc32fast::hash(text.as_bytes())
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// Every declaration of one file, in the file's order.
pub fn declarations(defs: &Definitions) -> Vec<(Declaration, Source<'_>)> {
    let mut out = Vec::new();
    for def in &defs.persons {
        let id = def.id.clone();
        out.push((
            Declaration::Person { id },
            Source::Account(def, AccountKind::Person),
        ));
    }
    for def in &defs.things {
        let id = def.id.clone();
        out.push((
            Declaration::Thing { id },
            Source::Account(def, AccountKind::Thing),
        ));
    }
    for group in &defs.groups {
        out.push((
            Declaration::Group {
                id: group.id.clone(),
            },
            Source::Group(group),
        ));
        for member in &group.members {
            let (group_id, member) = (group.id.clone(), member.clone());
            out.push((
                Declaration::Member {
                    group: group_id,
                    member,
                },
                Source::Group(group),
            ));
        }
    }
    for relation in &defs.relations {
        out.push(match relation {
            RelationDef::Friends { friends: [a, b] } => {
                let (a, b) = pair(a, b);
                (Declaration::Friends { a, b }, Source::Plain)
            }
            RelationDef::Bind { bind, to } => (
                Declaration::Bind {
                    thing: bind.clone(),
                    to: to.clone(),
                },
                Source::Plain,
            ),
            RelationDef::Share {
                share,
                with,
                rights,
            } => (
                Declaration::Share {
                    thing: share.clone(),
                    with: with.clone(),
                },
                Source::Share(*rights),
            ),
            RelationDef::Link { link: [a, b] } => {
                let (a, b) = pair(a, b);
                (Declaration::Link { a, b }, Source::Plain)
            }
        });
    }
    out
}

/// Where the definitions are applied.
pub struct Targets<'a> {
    pub accounts: &'a Accounts,
    pub im: &'a Im,
    /// The things world (bindings, shares, links); without it those are reported.
    pub things: Option<&'a Things>,
}

/// The effects of applying or withdrawing, for the broker to carry out.
#[derive(Debug, Default)]
pub struct Effects {
    pub im: Vec<im::Effect>,
    pub things: Vec<things::Effect>,
    /// Accounts removed (withdrawn persons and things): the broker ends their connections.
    pub removed_accounts: Vec<String>,
}

/// Apply one declaration (as a file makes it: origin `File`).
pub fn apply_one(
    declaration: &Declaration,
    source: Source<'_>,
    to: &Targets<'_>,
    now: u64,
    effects: &mut Effects,
) -> Result<(), String> {
    let things = || {
        to.things
            .ok_or_else(|| "the things world is not running".to_owned())
    };
    match (declaration, source) {
        (Declaration::Person { id } | Declaration::Thing { id }, Source::Account(def, kind)) => {
            let result = match (&def.password_hash, &def.password) {
                (Some(hash), _) => to.accounts.define(id, kind, hash, now),
                (None, Some(password)) => to.accounts.define_with_password(id, kind, password, now),
                // No secret: an account that cannot log in (one a rule acts as).
                (None, None) => to.accounts.define_without_login(id, kind, now),
            };
            result.map_err(|err| format!("{id}: {err}"))?;
            to.im.account_added(id, kind);
            if kind == AccountKind::Person {
                let settings = PersonSettings {
                    auto_accept: def.auto_accept,
                };
                to.im
                    .set_settings(id, settings)
                    .map_err(|err| format!("{id}: {err}"))?;
            }
            Ok(())
        }
        (Declaration::Group { id }, Source::Group(def)) => {
            let done = to
                .im
                .define_group(id, &def.owner, &[], def.name.as_deref(), def.open, now);
            effects
                .im
                .extend(done.map_err(|err| format!("group {id}: {err}"))?);
            Ok(())
        }
        (Declaration::Member { group, member }, Source::Group(def)) => {
            let members = [member.clone()];
            let done = to.im.define_group(
                group,
                &def.owner,
                &members,
                def.name.as_deref(),
                def.open,
                now,
            );
            effects
                .im
                .extend(done.map_err(|err| format!("group {group}: {err}"))?);
            Ok(())
        }
        (Declaration::Friends { a, b }, _) => {
            let done = to.im.define_friends(a, b, now);
            effects
                .im
                .extend(done.map_err(|err| format!("{declaration}: {err}"))?);
            Ok(())
        }
        (declaration, source) if declaration.of_things() => {
            let done = apply_to_things(declaration, source, things()?, now)?;
            effects.things.extend(done);
            Ok(())
        }
        (declaration, _) => Err(format!("{declaration}: not declared by its file")),
    }
}

/// Apply a things relation (bind, share, link) through the things world.
pub fn apply_to_things(
    declaration: &Declaration,
    source: Source<'_>,
    things: &Things,
    now: u64,
) -> Result<Vec<things::Effect>, String> {
    let done = match (declaration, source) {
        (Declaration::Bind { thing, to }, _) => things.define_owner(thing, to, now),
        (Declaration::Share { thing, with }, Source::Share(rights)) => {
            things.define_share(thing, with, rights, now)
        }
        (Declaration::Link { a, b }, _) => things.define_link(a, b, now),
        _ => return Err(format!("{declaration}: not a things relation")),
    };
    done.map_err(|err| format!("{declaration}: {err}"))
}

/// Withdraw a declaration no file makes any more: what it made goes (relations into the
/// recycle bin of the person named first, where they have one), unless clients made it again
/// at runtime (its origin is no longer `File`), which is kept.
pub fn withdraw_one(
    declaration: &Declaration,
    to: &Targets<'_>,
    now: u64,
    effects: &mut Effects,
) -> Result<(), String> {
    let from_file = |a: &str, b: &str, tag: &str| {
        to.im.with_graph(|g| {
            g.get(a, b, tag)
                .is_some_and(|r| r.origin() == Some(Origin::File))
        })
    };
    let failed = |err: &dyn std::fmt::Display| format!("withdrawing {declaration}: {err}");
    match declaration {
        Declaration::Link { a, b } => {
            if let Some(things) = to.things {
                let done = things.withdraw_link(a, b, now).map_err(|e| failed(&e))?;
                effects.things.extend(done);
            }
        }
        Declaration::Share {
            thing,
            with: person,
        }
        | Declaration::Bind { thing, to: person } => {
            let tag = match declaration {
                Declaration::Share { .. } => "share",
                _ => "owner",
            };
            if let Some(things) = to.things
                && from_file(person, thing, tag)
            {
                let done = things
                    .unbind(person, thing, None, now)
                    .map_err(|e| failed(&e))?;
                effects.things.extend(done);
            }
        }
        Declaration::Friends { a, b } => {
            if from_file(a, b, "friend") {
                let done = to
                    .im
                    .friend_remove(a, b, None, now)
                    .map_err(|e| failed(&e))?;
                effects.im.extend(done);
            }
        }
        Declaration::Member { group, member } => {
            let plain_member = to.im.with_graph(|g| {
                matches!(
                    g.get(member, group, "member"),
                    Some(Relation::Member { role, origin: Origin::File, .. })
                        if *role != crate::graph::Role::Owner
                )
            });
            if plain_member {
                let done = to
                    .im
                    .group_leave(member, group, None, now)
                    .map_err(|e| failed(&e))?;
                effects.im.extend(done);
            }
        }
        Declaration::Group { id } => {
            if let Some(record) = to.im.group(id)
                && record.origin == Origin::File
            {
                let done = to
                    .im
                    .group_dissolve(&record.owner, id, now)
                    .map_err(|e| failed(&e))?;
                effects.im.extend(done);
            }
        }
        Declaration::Person { id } | Declaration::Thing { id } => {
            if to.accounts.get(id).map_err(|e| failed(&e))?.is_some() {
                to.accounts.remove(id).map_err(|e| failed(&e))?;
                effects.removed_accounts.push(id.clone());
            }
        }
    }
    Ok(())
}

/// A file of the folder as [`sync`] sees it.
pub struct FolderFile<'a> {
    pub file: PathBuf,
    /// Its definitions in force; `None` when it has never loaded (it fails now and had no good
    /// version in this run): what its record says stays applied, untouched.
    pub definitions: Option<&'a Definitions>,
}

/// What a [`sync`] did.
#[derive(Debug, Default)]
pub struct Synced {
    pub effects: Effects,
    pub applied: usize,
    pub withdrawn: usize,
    /// Declarations that could not be applied or withdrawn (tried again at the next sync).
    pub diagnostics: Vec<Diagnostic>,
}

const LEDGER: &str = "definitions\0";

/// The ledger's name of a file: its name in the folder.
fn ledger_name(file: &Path) -> String {
    file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

type Record = Vec<(Declaration, u32)>;

fn read_ledger(store: &dyn Store) -> BTreeMap<String, Record> {
    let mut ledger = BTreeMap::new();
    match store.scan_prefix(Space::Meta, LEDGER.as_bytes()) {
        Ok(pairs) => {
            for (key, value) in pairs {
                let name = String::from_utf8_lossy(&key[LEDGER.len()..]).into_owned();
                match serde_json::from_slice::<Record>(&value) {
                    Ok(record) => {
                        ledger.insert(name, record);
                    }
                    Err(err) => {
                        tracing::warn!(file = name, cause = %err, "unreadable definitions record skipped")
                    }
                }
            }
        }
        Err(err) => tracing::error!(cause = %err, "cannot read the definitions records"),
    }
    ledger
}

/// Bring the world in line with the folder's files (docs/DEFINITIONS.md, "Who owns what"):
/// every declaration recorded for some file and made by none any more is withdrawn (first,
/// in reverse order); every declaration that is new, or whose content changed, is applied; one
/// recorded unchanged is not applied again. Then each file's record is the declarations of it
/// that hold (a failed one is left out, to be tried again); a file no longer in the folder
/// loses its record.
pub fn sync(folder: &[FolderFile<'_>], store: &dyn Store, to: &Targets<'_>, now: u64) -> Synced {
    let old = read_ledger(store);
    let mut synced = Synced::default();
    let mut recorded: BTreeMap<&Declaration, u32> = BTreeMap::new();
    let mut recorded_by: BTreeMap<&Declaration, &str> = BTreeMap::new();
    for (name, record) in &old {
        for (declaration, fingerprint) in record {
            recorded.insert(declaration, *fingerprint);
            recorded_by.insert(declaration, name);
        }
    }
    // What the folder declares now: a failing file that never loaded declares what its record
    // says (kept as is).
    let mut declared: BTreeMap<Declaration, (u32, Option<Source<'_>>, &Path)> = BTreeMap::new();
    for f in folder {
        match f.definitions {
            Some(defs) => {
                for (declaration, source) in declarations(defs) {
                    let fingerprint = source.fingerprint();
                    declared
                        .entry(declaration)
                        .or_insert((fingerprint, Some(source), &f.file));
                }
            }
            None => {
                for (declaration, fingerprint) in
                    old.get(&ledger_name(&f.file)).into_iter().flatten()
                {
                    declared
                        .entry(declaration.clone())
                        .or_insert((*fingerprint, None, &f.file));
                }
            }
        }
    }
    let mut problem = |file: &Path, message: String| {
        synced.diagnostics.push(Diagnostic {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message,
        });
    };
    for declaration in recorded.keys().rev() {
        if declared.contains_key(*declaration) {
            continue;
        }
        let file = PathBuf::from(recorded_by.get(declaration).copied().unwrap_or_default());
        match withdraw_one(declaration, to, now, &mut synced.effects) {
            Ok(()) => synced.withdrawn += 1,
            Err(message) => problem(&file, message),
        }
    }
    let mut holds: BTreeMap<&Declaration, u32> = BTreeMap::new();
    for (declaration, (fingerprint, source, file)) in &declared {
        let unchanged = recorded.get(declaration) == Some(fingerprint);
        let result = match source {
            _ if unchanged => Ok(()),
            // A failing file's recorded declaration: left as it is.
            None => Ok(()),
            Some(source) => apply_one(declaration, *source, to, now, &mut synced.effects)
                .map(|()| synced.applied += 1),
        };
        match result {
            Ok(()) => {
                holds.insert(declaration, *fingerprint);
            }
            Err(message) => problem(file, message),
        }
    }
    let mut batch = Batch::new();
    for name in old.keys() {
        if !folder.iter().any(|f| ledger_name(&f.file) == *name) {
            batch.remove(Space::Meta, format!("{LEDGER}{name}").into_bytes());
        }
    }
    for f in folder {
        let name = ledger_name(&f.file);
        let record: Record = match f.definitions {
            Some(defs) => declarations(defs)
                .into_iter()
                .filter_map(|(d, _)| holds.get(&d).map(|fp| (d, *fp)))
                .collect(),
            None => old.get(&name).cloned().unwrap_or_default(),
        };
        match serde_json::to_vec(&record) {
            Ok(bytes) => batch.put(Space::Meta, format!("{LEDGER}{name}").into_bytes(), bytes),
            Err(err) => {
                tracing::error!(file = name, cause = %err, "cannot encode a definitions record")
            }
        }
    }
    if let Err(err) = store.apply(batch).and_then(|()| store.flush()) {
        tracing::error!(cause = %err, "cannot save the definitions records");
    }
    synced
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::parse;
    use super::*;
    use crate::events::RelationChange;
    use crate::im::{ImConfig, MessageLog};

    struct World {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        accounts: Accounts,
        im: Im,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::SledStore::open(dir.path()).unwrap());
        let log = Arc::new(MessageLog::open(&dir.path().join("messages")).unwrap());
        let im = Im::open(store.clone(), log, ImConfig::default()).unwrap();
        let accounts = Accounts::new(store.clone());
        World {
            _dir: dir,
            store,
            accounts,
            im,
        }
    }

    const PEOPLE: &str = "persons:\n  - { id: alice, password: a }\n  - { id: bob, password: b }\n  - { id: carol, password: c }\n";

    impl World {
        /// Sync one file `home.yaml` with `text` (`None`: it fails to load).
        fn sync(&self, text: Option<&str>, now: u64) -> Synced {
            let defs = text.map(|t| parse(Path::new("home.yaml"), t).unwrap());
            let folder = [FolderFile {
                file: PathBuf::from("/rules/home.yaml"),
                definitions: defs.as_ref(),
            }];
            self.sync_folder(&folder, now)
        }

        fn sync_folder(&self, folder: &[FolderFile<'_>], now: u64) -> Synced {
            let to = Targets {
                accounts: &self.accounts,
                im: &self.im,
                things: None,
            };
            sync(folder, &*self.store, &to, now)
        }

        fn friends(&self, a: &str, b: &str) -> bool {
            self.im.with_graph(|g| g.are_friends(a, b))
        }
    }

    #[test]
    fn a_file_owns_what_it_declares() {
        let w = world();
        let v1 = format!(
            "{PEOPLE}groups: [{{ id: family, owner: alice, members: [bob] }}]\nrelations: [{{ friends: [alice, bob] }}]\n"
        );
        let synced = w.sync(Some(&v1), 1);
        assert!(synced.diagnostics.is_empty(), "{:?}", synced.diagnostics);
        assert!(w.friends("alice", "bob"));
        // Applied again unchanged: nothing is done.
        let again = w.sync(Some(&v1), 2);
        assert_eq!((again.applied, again.withdrawn), (0, 0));

        // The friendship goes from the file: it goes into alice's recycle bin; carol joins.
        let v2 =
            format!("{PEOPLE}groups: [{{ id: family, owner: alice, members: [bob, carol] }}]\n");
        let synced = w.sync(Some(&v2), 3);
        assert!(!w.friends("alice", "bob"));
        assert_eq!(w.im.recycle_list("alice", 3).unwrap().len(), 1);
        assert!(
            synced.effects.im.iter().any(|e| matches!(e,
            im::Effect::Related(RelationChange::MemberJoined { member, .. }) if member == "carol"))
        );
        w.im.friend_restore("alice", "bob", 4).unwrap();
        assert!(w.friends("alice", "bob"), "restorable from the bin");

        // A file that fails keeps what its record says; a runtime leave is not undone.
        w.im.group_leave("bob", "family", None, 5).unwrap();
        let failing = w.sync(None, 6);
        assert_eq!((failing.applied, failing.withdrawn), (0, 0));
        w.sync(Some(&v2), 7);
        assert!(w.im.with_graph(|g| g.role("bob", "family").is_none()));
        assert!(w.im.with_graph(|g| g.role("carol", "family").is_some()));

        // The file removed: its group dissolved, its accounts removed.
        let synced = w.sync_folder(&[], 8);
        assert!(synced.diagnostics.is_empty(), "{:?}", synced.diagnostics);
        assert!(w.im.group("family").is_none());
        assert!(w.accounts.get("carol").unwrap().is_none());
    }

    #[test]
    fn a_declaration_moved_to_another_file_is_not_applied_again() {
        let w = world();
        let a = parse(
            Path::new("a.yaml"),
            &format!("{PEOPLE}relations: [{{ friends: [alice, bob] }}]\n"),
        )
        .unwrap();
        let b = parse(
            Path::new("b.yaml"),
            "relations: [{ friends: [bob, alice] }]\n",
        )
        .unwrap();
        let people = parse(Path::new("a.yaml"), PEOPLE).unwrap();
        let file = |name: &str, defs| FolderFile {
            file: PathBuf::from(name),
            definitions: Some(defs),
        };
        w.sync_folder(&[file("a.yaml", &a)], 1);
        w.im.friend_remove("alice", "bob", None, 2).unwrap();
        let moved = w.sync_folder(&[file("a.yaml", &people), file("b.yaml", &b)], 3);
        assert_eq!((moved.applied, moved.withdrawn), (0, 0), "{moved:?}");
        assert!(!w.friends("alice", "bob"));
    }
}
