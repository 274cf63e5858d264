//! Definitions: the YAML of the watched folder's files declaring persons, things, groups and
//! relations (docs/DEFINITIONS.md), parsed ([`parse`]) and applied ([`apply`]). Reading the folder
//! is the rules crate's (`mqtter_rules::definitions`). Loading never stops at a bad file: each
//! file is parsed on its own, and a file that fails is reported (file, line, column, message)
//! and skipped.
//!
//! A running daemon keeps what the files declare in line with them through [`sync`] (module
//! `owned`: each file owns its declarations; removing one from the file withdraws it). [`apply`]
//! and [`apply_things`] apply a file's declarations once, without that record. `rules:` are the
//! rules engine's (the `rules` crate loads them from the same files).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::accounts::Accounts;
use crate::graph::Rights;
use crate::im::Im;
use crate::things::{Effect, Things};

mod owned;

pub use owned::{
    Declaration, Effects, FolderFile, Source, Synced, Targets, apply_one, apply_to_things,
    declarations, sync, withdraw_one,
};

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

/// Apply one file's definitions to the accounts and the IM world, all of them (no ledger: see
/// [`sync`] for what a running daemon does); what fails is reported in `report` and the rest
/// applied. The things relations are counted as not applied ([`apply_things`] applies them).
pub fn apply(
    file: &Path,
    defs: &Definitions,
    accounts: &Accounts,
    im: &Im,
    now: u64,
    report: &mut Report,
) {
    let to = Targets {
        accounts,
        im,
        things: None,
    };
    let mut effects = Effects::default();
    for (declaration, source) in declarations(defs) {
        if declaration.of_things() {
            report.not_applied += 1;
        } else if let Err(message) = apply_one(&declaration, source, &to, now, &mut effects) {
            report.diagnostics.push(Diagnostic::in_file(file, message));
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
    let mut relations: Vec<_> = declarations(defs)
        .into_iter()
        .filter(|(d, _)| d.of_things())
        .collect();
    relations.sort_by_key(|(d, _)| d.rank());
    let mut effects = Vec::new();
    for (declaration, source) in relations {
        report.not_applied = report.not_applied.saturating_sub(1);
        match apply_to_things(&declaration, source, things, now) {
            Ok(done) => effects.extend(done),
            Err(message) => report.diagnostics.push(Diagnostic::in_file(file, message)),
        }
    }
    effects
}

impl Diagnostic {
    /// A problem of a file as a whole (no line or column).
    pub fn in_file(file: &Path, message: String) -> Self {
        Diagnostic {
            file: file.to_owned(),
            line: 0,
            column: 0,
            message,
        }
    }
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
