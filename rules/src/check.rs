//! `check`: validates a rules folder without a broker, with the same loader the daemon uses:
//! every diagnostic, the accounts, things and groups a rule names that nothing declares, and
//! the loops a rule set can run into (which rule's actions can fire which rule's triggers: the
//! cycles of that graph, found with petgraph).

use std::path::Path;

use petgraph::graph::DiGraph;

use crate::diagnostic::{Diagnostic, Severity};
use crate::events::ActorKind;
use crate::index::filter_matches;
use crate::loader::{LoadConfig, load_dir};
use crate::model::{By, Rule, Trigger};
use crate::world::{FolderWorld, World};

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub diagnostics: Vec<Diagnostic>,
    pub files: usize,
    pub rules: usize,
}

impl CheckReport {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }

    /// Every diagnostic with its snippet, then a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            out.push_str(&d.render());
            out.push_str("\n\n");
        }
        out.push_str(&format!(
            "{} files, {} rules: {} errors, {} warnings\n",
            self.files,
            self.rules,
            self.errors(),
            self.warnings()
        ));
        out
    }
}

/// Check the folder `dir`.
pub fn check_dir(dir: &Path, config: &LoadConfig) -> CheckReport {
    let engine = crate::loader::compiler();
    let loaded = load_dir(dir, &engine, config);
    let mut world = FolderWorld::default();
    for file in loaded.files.values().flatten() {
        world.add(&file.definitions);
    }
    let rules: Vec<Rule> = loaded.rules().cloned().collect();
    let mut diagnostics = loaded.diagnostics;
    diagnostics.extend(references(&rules, &world));
    diagnostics.extend(loop_warnings(&rules));
    CheckReport {
        diagnostics,
        files: loaded.files.len(),
        rules: rules.len(),
    }
}

/// The names rules use that `world` does not know: errors, except the account a rule acts as
/// (a warning: the daemon may have it from `mqtter account add`).
pub fn references<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
    world: &dyn World,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for rule in rules {
        let mut unknown = |what: &str, name: &str, severity: Severity| {
            let message = format!("rule `{}`: unknown {what} `{name}`", rule.id);
            out.push(Diagnostic {
                severity,
                ..Diagnostic::error(&rule.file, rule.line, 1, message)
            });
        };
        let thing = |name: &str| world.is_thing(name);
        let account = |name: &str| world.account_exists(name);
        let group_or_account = |name: &str| world.group_exists(name) || world.account_exists(name);
        for trigger in &rule.triggers {
            if let Trigger::Topic { by, .. } | Trigger::Im { by, .. } = trigger
                && let Some(a) = &by.account
                && !account(a)
            {
                unknown("account", a, Severity::Error);
            }
            let (what, name, known): (&str, &str, bool) = match trigger {
                Trigger::State { thing: t, .. }
                | Trigger::Command { thing: t }
                | Trigger::Ack { thing: t }
                | Trigger::Timeout { thing: t } => ("thing", t, thing(t)),
                Trigger::Presence { account: a, .. } => ("account", a, a == "*" || account(a)),
                Trigger::Im { to, .. } => {
                    ("person or group", to, to == "*" || group_or_account(to))
                }
                Trigger::Relation { of: Some(of), .. } => {
                    ("account or group", of, group_or_account(of))
                }
                _ => continue,
            };
            if !known {
                unknown(what, name, Severity::Error);
            }
        }
        for call in &rule.calls {
            let Some(name) = call.target.as_deref() else {
                continue;
            };
            let (what, known) = match call.name.as_str() {
                "command" | "state" | "owner_of" | "linked" => ("thing", thing(name)),
                "notify" | "friends" | "bound_to" | "presence" => ("account", account(name)),
                "members" => ("group", world.group_exists(name)),
                _ => continue,
            };
            if !known {
                unknown(what, name, Severity::Error);
            }
        }
        if !account(&rule.options.account) {
            let message = format!(
                "rule `{}` acts as `{}`, which is no account: what it does will be refused \
                 (declare `{}` in a file of the folder, or name another account with `as:`)",
                rule.id, rule.options.account, rule.options.account
            );
            out.push(Diagnostic {
                severity: Severity::Warning,
                ..Diagnostic::error(&rule.file, rule.line, 1, message)
            });
        }
    }
    out
}

/// Does a trigger's `by`/`kind` accept what rule `from` publishes (as its account, kind rule)?
fn by_rule(by: &By, from: &Rule) -> bool {
    by.account
        .as_ref()
        .is_none_or(|a| **a == *from.options.account)
        && by.kind.is_none_or(|k| k == ActorKind::Rule)
}

/// Can an action of `from` fire a trigger of `to`?
fn can_fire(from: &Rule, to: &Rule) -> bool {
    to.triggers.iter().any(|trigger| {
        from.calls.iter().any(|call| {
            let Some(target) = call.target.as_deref() else {
                return false;
            };
            match (call.name.as_str(), trigger) {
                ("publish", Trigger::Topic { filter, by }) => {
                    filter_matches(filter, target) && by_rule(by, from)
                }
                ("publish", Trigger::Im { to, by }) => {
                    (target == format!("person/{to}/inbox")
                        || target == format!("group/{to}")
                        || (to == "*"
                            && (target.starts_with("person/") || target.starts_with("group/"))))
                        && by_rule(by, from)
                }
                // A command reaches the thing, which acknowledges it (or not) and reports
                // its new state: each can fire a rule.
                (
                    "command",
                    Trigger::Command { thing }
                    | Trigger::Ack { thing }
                    | Trigger::Timeout { thing }
                    | Trigger::State { thing, .. },
                ) => thing == target,
                ("after", Trigger::Timer { name }) => name == target,
                _ => false,
            }
        })
    })
}

/// A warning for every cycle of "can fire" between rules (a rule that fires itself included).
pub fn loop_warnings(rules: &[Rule]) -> Vec<Diagnostic> {
    let mut graph = DiGraph::<usize, ()>::new();
    let nodes: Vec<_> = (0..rules.len()).map(|i| graph.add_node(i)).collect();
    for (i, a) in rules.iter().enumerate() {
        for (j, b) in rules.iter().enumerate() {
            if a.options.enabled && b.options.enabled && can_fire(a, b) {
                graph.add_edge(nodes[i], nodes[j], ());
            }
        }
    }
    let mut out = Vec::new();
    for scc in petgraph::algo::tarjan_scc(&graph) {
        let cyclic = scc.len() > 1 || graph.contains_edge(scc[0], scc[0]);
        if !cyclic {
            continue;
        }
        let mut members: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
        members.sort_unstable();
        let names: Vec<String> = members.iter().map(|i| rules[*i].id.0.to_string()).collect();
        let first = &rules[members[0]];
        out.push(Diagnostic::warning(
            &first.file,
            first.line,
            1,
            format!(
                "rules can fire each other in a loop: {} -> {} (a chain stops at rules.max_hops)",
                names.join(" -> "),
                names[0]
            ),
        ));
    }
    out
}
