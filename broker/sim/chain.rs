//! Chains from the rules engine's traces: the runs of one chain id, in hop order, matched
//! against an `expect_chain`, and shown (rule, trigger, event, `if`, actions, outcome, hop) when
//! a step fails.

use std::collections::{BTreeMap, HashSet};

use mqtter_rules::stats::{Outcome, Trace};

/// The runs of one chain.
pub struct Chain {
    pub id: String,
    /// (rule, trace), by hop then time.
    pub runs: Vec<(String, Trace)>,
}

impl Chain {
    /// The runs that ran (not skipped, not a false `if`).
    pub fn ran(&self) -> Vec<(&str, u32)> {
        self.runs
            .iter()
            .filter(|(_, t)| ran(t))
            .map(|(rule, t)| (rule.as_str(), t.hop))
            .collect()
    }
}

pub fn ran(trace: &Trace) -> bool {
    !matches!(trace.outcome, Outcome::Skipped(_)) && trace.condition != Some(false)
}

/// The chains of `traces` not in `used`, oldest first (by their first run).
pub fn chains(traces: Vec<(String, Trace)>, used: &HashSet<String>) -> Vec<Chain> {
    let mut by_id: BTreeMap<String, Vec<(String, Trace)>> = BTreeMap::new();
    for (rule, trace) in traces {
        if !used.contains(&*trace.chain) {
            by_id
                .entry(trace.chain.to_string())
                .or_default()
                .push((rule, trace));
        }
    }
    let mut chains: Vec<Chain> = by_id
        .into_iter()
        .map(|(id, mut runs)| {
            runs.sort_by(|a, b| (a.1.hop, a.1.at, &a.0).cmp(&(b.1.hop, b.1.at, &b.0)));
            Chain { id, runs }
        })
        .collect();
    chains.sort_by_key(|c| c.runs.iter().map(|(_, t)| t.at).min().unwrap_or(0));
    chains
}

/// Whether the chain ran exactly `want` (rule ids in hop order; a hop, where given, must be
/// the run's). Runs at the same hop may come in either order.
pub fn fits(chain: &Chain, want: &[(String, Option<u32>)]) -> bool {
    let ran = chain.ran();
    if ran.len() != want.len() {
        return false;
    }
    let mut left: Vec<Option<(&str, u32)>> = ran.into_iter().map(Some).collect();
    let mut last_hop = 0;
    for (rule, hop) in want {
        // The first run still unmatched with this rule (and hop), not before the hop reached.
        let found = left.iter().position(|r| {
            r.is_some_and(|(r_rule, r_hop)| {
                r_rule == rule && hop.is_none_or(|h| h == r_hop) && r_hop >= last_hop
            })
        });
        match found {
            Some(i) => {
                last_hop = left[i].map_or(0, |(_, h)| h);
                left[i] = None;
            }
            None => return false,
        }
    }
    true
}

/// `rule@hop` for each run that ran.
pub fn describe(want: &[(String, Option<u32>)]) -> String {
    want.iter()
        .map(|(rule, hop)| match hop {
            Some(h) => format!("{rule}@{h}"),
            None => rule.clone(),
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// The lines that show a chain's runs.
pub fn show(chain: &Chain) -> Vec<String> {
    let mut lines = vec![format!("chain {}:", chain.id)];
    for (rule, t) in &chain.runs {
        let condition = match t.condition {
            Some(true) => " if=true",
            Some(false) => " if=false",
            None => "",
        };
        let outcome = match &t.outcome {
            Outcome::Ok if t.condition == Some(false) => "not run".to_owned(),
            Outcome::Ok => "ok".to_owned(),
            Outcome::Failed(why) => format!("FAILED: {why}"),
            Outcome::Stopped(why) => format!("STOPPED: {why}"),
            Outcome::Skipped(why) => format!("skipped: {why}"),
        };
        lines.push(format!(
            "  hop {} {rule}: {} on {}{condition} -> {outcome}",
            t.hop, t.trigger, t.event
        ));
        for action in &t.actions {
            lines.push(format!("      {action}"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(chain: &str, hop: u32, at: u64, condition: Option<bool>) -> Trace {
        Trace {
            at,
            trigger: "t".into(),
            event: "e".into(),
            chain: chain.into(),
            hop,
            condition,
            actions: vec![],
            micros: 1,
            outcome: Outcome::Ok,
        }
    }

    #[test]
    fn a_chain_fits_its_rules_in_hop_order() {
        let traces = vec![
            ("b".to_owned(), trace("c1", 2, 5, None)),
            ("a".to_owned(), trace("c1", 0, 1, Some(true))),
            ("x".to_owned(), trace("c1", 1, 2, Some(false))),
            ("z".to_owned(), trace("c2", 0, 9, None)),
        ];
        let found = chains(traces, &HashSet::new());
        assert_eq!(found.len(), 2);
        let want = |list: &[(&str, Option<u32>)]| {
            list.iter()
                .map(|(r, h)| (r.to_string(), *h))
                .collect::<Vec<_>>()
        };
        assert!(fits(&found[0], &want(&[("a", Some(0)), ("b", Some(2))])));
        assert!(fits(&found[0], &want(&[("a", None), ("b", None)])));
        assert!(!fits(&found[0], &want(&[("b", None), ("a", None)])));
        assert!(!fits(&found[0], &want(&[("a", Some(0)), ("b", Some(1))])));
        assert!(!fits(&found[0], &want(&[("a", None)])));
    }
}
