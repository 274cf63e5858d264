//! Definitions: the YAML of the watched folder's files declaring persons, things, groups and
//! relations (docs/DEFINITIONS.md), parsed ([`parse`]) and applied ([`apply`]). Reading the folder
//! is the rules crate's (`mqtter_rules::definitions`). Loading never stops at a bad file: each
//! file is parsed on its own, and a file that fails is reported (file, line, column, message)
//! and skipped.
//!
//! What a file declares is added to what runtime created; runtime relations are never removed by
//! a file. `rules:` are the rules engine's (the `rules` crate loads them from the same files). The
//! things relations (`bind`, `share`, `link`) are applied by [`apply_things`], through the things
//! world; [`apply`] alone counts them as not applied.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::accounts::{AccountKind, Accounts};
use crate::graph::Rights;
use crate::im::{Im, PersonSettings};
use crate::things::{Effect, Things};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definitions {
    #[serde(default)]
    pub persons: Vec<AccountDef>,
    #[serde(default)]
    pub things: Vec<AccountDef>,
    #[serde(default)]
    pub groups: Vec<GroupDef>,
    #[serde(default)]
    pub relations: Vec<RelationDef>,
    /// Rules (the rules engine's stage): kept as YAML, not applied here.
    #[serde(default)]
    pub rules: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountDef {
    pub id: String,
    /// A plain secret (fine for examples; prefer `password_hash`).
    #[serde(default, alias = "secret")]
    pub password: Option<String>,
    /// An argon2 PHC string (`mqtter account add` makes one; `$argon2id$...`).
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub auto_accept: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDef {
    pub id: String,
    pub owner: String,
    #[serde(default)]
    pub members: Vec<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub open: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RelationDef {
    Friends {
        friends: [String; 2],
    },
    Bind {
        bind: String,
        to: String,
    },
    Share {
        share: String,
        with: String,
        #[serde(default = "control")]
        rights: Rights,
    },
    Link {
        link: [String; 2],
    },
}

fn control() -> Rights {
    Rights::Control
}

/// A problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// What a load did.
#[derive(Debug, Default)]
pub struct Report {
    pub files: Vec<PathBuf>,
    pub diagnostics: Vec<Diagnostic>,
    /// Things relations (bind, share, link) accepted by `apply` and left to `apply_things`
    /// (0 once that has run; `rules:` entries are the rules engine's and not counted here).
    pub not_applied: usize,
}

/// Parse one file's text.
pub fn parse(file: &Path, text: &str) -> Result<Definitions, Diagnostic> {
    serde_saphyr::from_str::<Definitions>(text).map_err(|err| {
        let location = err.location();
        Diagnostic {
            file: file.to_owned(),
            line: location.map_or(0, |l| l.line()),
            column: location.map_or(0, |l| l.column()),
            message: err.to_string(),
        }
    })
}

/// Apply one file's definitions to the accounts and the IM world; what fails is reported in
/// `report` and the rest applied. (Reading the files is the rules crate's: it owns the folder.)
pub fn apply(
    file: &Path,
    defs: &Definitions,
    accounts: &Accounts,
    im: &Im,
    now: u64,
    report: &mut Report,
) {
    let mut fail = |message: String| {
        report.diagnostics.push(Diagnostic {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message,
        });
    };
    for (kind, list) in [
        (AccountKind::Person, &defs.persons),
        (AccountKind::Thing, &defs.things),
    ] {
        for def in list {
            let result = match (&def.password_hash, &def.password) {
                (Some(hash), _) => accounts.define(&def.id, kind, hash, now),
                (None, Some(password)) => {
                    accounts.define_with_password(&def.id, kind, password, now)
                }
                (None, None) => {
                    fail(format!("{} needs a password or a password_hash", def.id));
                    continue;
                }
            };
            match result {
                Ok(()) => {
                    im.account_added(&def.id, kind);
                    if def.auto_accept
                        && let Err(err) =
                            im.set_settings(&def.id, PersonSettings { auto_accept: true })
                    {
                        fail(format!("{}: {err}", def.id));
                    }
                }
                Err(err) => fail(format!("{}: {err}", def.id)),
            }
        }
    }
    for group in &defs.groups {
        if let Err(err) = im.define_group(
            &group.id,
            &group.owner,
            &group.members,
            group.name.as_deref(),
            group.open,
            now,
        ) {
            fail(format!("group {}: {err}", group.id));
        }
    }
    for relation in &defs.relations {
        match relation {
            RelationDef::Friends { friends: [a, b] } => {
                if let Err(err) = im.define_friends(a, b, now) {
                    fail(format!("friends {a}, {b}: {err}"));
                }
            }
            RelationDef::Bind { .. } | RelationDef::Share { .. } | RelationDef::Link { .. } => {
                report.not_applied += 1
            }
        }
    }
}

/// Apply one file's things relations through the things world: owners first, then shares (given
/// by the owner), then links (no owner needed). Call it after [`apply`], which counted them as not
/// applied: each handled here (applied or reported) is taken off that count. What fails is
/// reported and the rest applied; the effects are for the broker to carry out.
pub fn apply_things(
    file: &Path,
    defs: &Definitions,
    things: &Things,
    now: u64,
    report: &mut Report,
) -> Vec<Effect> {
    let mut effects = Vec::new();
    for pass in 0..3 {
        for relation in &defs.relations {
            let (what, result) = match (pass, relation) {
                (0, RelationDef::Bind { bind, to }) => (
                    format!("bind {bind} to {to}"),
                    things.define_owner(bind, to, now),
                ),
                (
                    1,
                    RelationDef::Share {
                        share,
                        with,
                        rights,
                    },
                ) => (
                    format!("share {share} with {with}"),
                    things.define_share(share, with, *rights, now),
                ),
                (2, RelationDef::Link { link: [a, b] }) => {
                    (format!("link {a}, {b}"), things.define_link(a, b, now))
                }
                _ => continue,
            };
            report.not_applied = report.not_applied.saturating_sub(1);
            match result {
                Ok(done) => effects.extend(done),
                Err(err) => report.diagnostics.push(Diagnostic {
                    file: file.to_owned(),
                    line: 0,
                    column: 0,
                    message: format!("{what}: {err}"),
                }),
            }
        }
    }
    effects
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_yaml_names_line_and_column() {
        let err = parse(Path::new("x.yaml"), "persons:\n  - { id: a, pasword: x }\n").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        assert!(err.message.contains("pasword"), "{err}");
        let err = parse(Path::new("x.yaml"), "persons: [\n").unwrap_err();
        assert!(err.line >= 1, "{err}");
    }

    #[test]
    fn the_design_example_parses() {
        let text = r#"
persons: [{ id: alice, password: "pw" }]
things:  [{ id: door, secret: "s" }, { id: hall-light, secret: "t" }]
groups:  [{ id: family, owner: alice, members: [bob] }]
relations:
  - { bind: door, to: alice }
  - { link: [door, hall-light] }
  - { friends: [alice, bob] }
rules:
  - id: door-opens-light-on
    when: { state: door, changed: open, to: true }
    do: 'command("hall-light", #{ on: true })'
"#;
        let defs = parse(Path::new("home.yaml"), text).unwrap();
        assert_eq!(defs.persons.len(), 1);
        assert_eq!(defs.things.len(), 2);
        assert_eq!(defs.relations.len(), 3);
        assert_eq!(defs.rules.len(), 1);
    }

    #[test]
    fn things_relations_are_applied_through_the_things_world() {
        use crate::graph::Access;
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn crate::Store> =
            std::sync::Arc::new(crate::SledStore::open(dir.path()).unwrap());
        let log =
            std::sync::Arc::new(crate::im::MessageLog::open(&dir.path().join("messages")).unwrap());
        let im = std::sync::Arc::new(
            Im::open(store.clone(), log, crate::im::ImConfig::default()).unwrap(),
        );
        let things = Things::open(store.clone(), im.clone(), Default::default()).unwrap();
        let accounts = Accounts::new(store);
        let text = r#"
persons: [{ id: alice, password: "a" }, { id: bob, password: "b" }, { id: carol, password: "c" }]
things:  [{ id: door, secret: "s" }, { id: lamp, secret: "t" }]
relations:
  - { link: [door, lamp] }
  - { share: door, with: bob }
  - { share: door, with: carol, rights: view }
  - { bind: door, to: alice }
  - { bind: lamp, to: nobody }
"#;
        let file = Path::new("home.yaml");
        let defs = parse(file, text).unwrap();
        let mut report = Report::default();
        apply(file, &defs, &accounts, &im, 1, &mut report);
        assert_eq!(report.not_applied, 5);
        let effects = apply_things(file, &defs, &things, 1, &mut report);
        assert_eq!(report.not_applied, 0);
        assert_eq!(report.diagnostics.len(), 1, "{:?}", report.diagnostics);
        assert!(
            report.diagnostics[0]
                .message
                .contains("bind lamp to nobody")
        );
        assert!(!effects.is_empty());
        assert_eq!(things.access("alice", "door"), Some(Access::Owner));
        assert_eq!(things.access("bob", "door"), Some(Access::Control));
        assert_eq!(things.access("carol", "door"), Some(Access::View));
        assert_eq!(things.access("door", "lamp"), Some(Access::Linked));
        // Applied again at the next start: nothing changes, nothing fails.
        apply_things(file, &defs, &things, 2, &mut Report::default());
        assert_eq!(things.access("bob", "door"), Some(Access::Control));
        // A binding made at runtime to someone else is kept, and said so.
        let bad = parse(file, "relations: [{ bind: door, to: bob }]\n").unwrap();
        let mut report = Report::default();
        apply_things(file, &bad, &things, 3, &mut report);
        assert!(report.diagnostics[0].message.contains("bound to alice"));
        assert!(
            parse(
                file,
                "relations: [{ share: door, with: bob, rights: all }]\n"
            )
            .is_err()
        );
    }
}
