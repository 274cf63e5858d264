//! A scenario's expectations: what a step waits for (a message seen, none seen, a chain, a
//! thing's state, the rules that fired), and how a failure is told, with the chains seen.

use std::collections::BTreeMap;

use super::*;

impl Runner {
    pub(super) async fn expect(&mut self, want: &Expect) -> Outcome {
        if let Err(err) = self.check_source(want) {
            return Err(lines(err));
        }
        let log = self.log.clone();
        let count = want.count.unwrap_or(1).max(1);
        let found = self
            .wait_until(want.within.as_deref(), async |_| log.take(want, count))
            .await
            .map_err(lines)?;
        if found.is_some() {
            return Ok(());
        }
        let mut out = vec![format!("expected: {}", describe_want(want))];
        if count > 1 {
            out[0] = format!(
                "expected {count} messages: {} (only {} arrived)",
                describe_want(want),
                self.log.available(want)
            );
        }
        if let Some(within) = &want.within {
            out[0].push_str(&format!(" within {within} (virtual)"));
        }
        let instead = self.log.unmatched_at(want);
        if instead.is_empty() {
            out.push("instead: nothing arrived there".into());
        } else {
            out.push("instead, there arrived:".into());
            for entry in instead.iter().rev().take(8).rev() {
                out.push(format!("  {}", log::show(entry)));
            }
        }
        out.extend(self.recent_chains());
        Err(out)
    }

    pub(super) async fn expect_none(&mut self, want: &Expect) -> Outcome {
        if let Err(err) = self.check_source(want) {
            return Err(lines(err));
        }
        let mark = self.log.count();
        let during = want
            .during
            .as_deref()
            .map(scenario::duration)
            .transpose()
            .map_err(lines)?
            .unwrap_or_default();
        if !during.is_zero() {
            if let Err(err) = self.target.check_advance(during) {
                return Err(lines(err));
            }
            self.quiet().await;
            let chunk = (during / 10).max(Duration::from_millis(1));
            let mut advanced = Duration::ZERO;
            while advanced < during {
                let by = chunk.min(during - advanced);
                if let Err(err) = self.target.advance(by).await {
                    return Err(lines(err));
                }
                advanced += by;
            }
        }
        self.quiet().await;
        let arrived = self.log.matching_since(want, mark);
        if arrived.is_empty() {
            return Ok(());
        }
        let mut out = vec![format!("expected nothing like: {}", describe_want(want))];
        out.push("but there arrived:".into());
        for entry in arrived.iter().take(8) {
            out.push(format!("  {}", log::show(entry)));
        }
        out.extend(self.recent_chains());
        Err(out)
    }

    pub(super) async fn expect_chain(&mut self, want: &ExpectChain) -> Outcome {
        let links = want.links();
        let known = self.target.rule_ids();
        let unknown: Vec<&String> = links
            .iter()
            .map(|(rule, _)| rule)
            .filter(|rule| !known.contains(rule))
            .collect();
        if !unknown.is_empty() {
            return fail(format!(
                "no rule {} is loaded (loaded: {})",
                unknown
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                known.join(", ")
            ));
        }
        let found = self
            .wait_until(want.within(), async |runner| {
                let chains = chain::chains(runner.target.traces(), &runner.used_chains);
                chains
                    .into_iter()
                    .find(|c| chain::fits(c, &links))
                    .map(|c| c.id)
            })
            .await
            .map_err(lines)?;
        if let Some(id) = found {
            self.used_chains.insert(id);
            return Ok(());
        }
        let mut out = vec![format!("expected a chain: {}", chain::describe(&links))];
        let chains = chain::chains(self.target.traces(), &self.used_chains);
        if chains.is_empty() {
            out.push("instead: no rule ran in a chain not matched before".into());
        } else {
            out.push("instead, these chains ran:".into());
            for c in chains.iter().rev().take(6).rev() {
                out.extend(
                    c.runs
                        .is_empty()
                        .then(Vec::new)
                        .unwrap_or_else(|| chain::show(c)),
                );
            }
        }
        // Which expected rule never ran: point at it.
        let traces = self.target.traces();
        for (rule, _) in &links {
            let runs: Vec<_> = traces.iter().filter(|(r, _)| r == rule).collect();
            if runs.is_empty() {
                out.push(format!(
                    "rule {rule} did not fire: no event matched its trigger"
                ));
            } else if runs.iter().all(|(_, t)| t.condition == Some(false)) {
                out.push(format!(
                    "rule {rule} matched {} time(s) but its `if` was false each time",
                    runs.len()
                ));
            }
        }
        Err(out)
    }

    pub(super) async fn expect_state(&mut self, want: &ExpectState) -> Outcome {
        let mut last = Value::Null;
        let found = self
            .wait_until(want.within.as_deref(), async |runner| {
                match runner.target.state(&want.thing, &runner.things).await {
                    Ok(state) => {
                        let fits = log::contains(&state, &want.state);
                        last = state;
                        fits.then_some(())
                    }
                    Err(_) => None,
                }
            })
            .await
            .map_err(lines)?;
        if found.is_some() {
            return Ok(());
        }
        if let Err(err) = self.target.state(&want.thing, &self.things).await {
            return fail(format!("cannot read {}'s state: {err:#}", want.thing));
        }
        let mut out = vec![
            format!("expected {}'s state to contain {}", want.thing, want.state),
            format!("instead it is {last}"),
        ];
        out.extend(self.recent_chains());
        Err(out)
    }

    /// Each rule ran as often as `want` says (a rule not named: never), counting the runs of
    /// this scenario (a false `if` or a skip is not a run).
    pub(super) async fn expect_fired(&mut self, want: &BTreeMap<String, u64>) -> Outcome {
        self.quiet().await;
        let mut fired: BTreeMap<String, u64> = BTreeMap::new();
        for (rule, trace) in self.target.traces() {
            if chain::ran(&trace) && !self.before.contains(&*trace.chain) {
                *fired.entry(rule).or_default() += 1;
            }
        }
        let known = self.target.rule_ids();
        let rules: std::collections::BTreeSet<&String> = want.keys().chain(fired.keys()).collect();
        let mut out = Vec::new();
        for rule in rules {
            let expected = want.get(rule).copied().unwrap_or(0);
            let ran = fired.get(rule).copied().unwrap_or(0);
            if expected == ran {
                continue;
            }
            let mut line = format!("rule {rule}: expected to fire {expected} time(s), fired {ran}");
            if !known.contains(rule) {
                line.push_str(" (no rule of that id is loaded)");
            } else if !want.contains_key(rule) {
                line.push_str(" (not expected to fire at all)");
            }
            out.push(line);
        }
        if out.is_empty() {
            return Ok(());
        }
        out.extend(self.recent_chains());
        Err(out)
    }

    fn check_source(&self, want: &Expect) -> anyhow::Result<()> {
        match (&want.actor, &want.topic) {
            (Some(_), Some(_)) => bail!("expect names `actor` or `topic`, not both"),
            (None, None) => bail!("expect needs `actor` (an inbox) or `topic` (plain topics)"),
            (Some(actor), None)
                if !self.persons.contains_key(actor) && !self.things.contains_key(actor) =>
            {
                bail!("no actor {actor}")
            }
            _ => Ok(()),
        }
    }

    /// The last chains not matched by an `expect_chain` (for a failure's output).
    fn recent_chains(&self) -> Vec<String> {
        let chains = chain::chains(self.target.traces(), &self.used_chains);
        let mut out = Vec::new();
        let recent: Vec<_> = chains.iter().rev().take(4).collect();
        if recent.is_empty() {
            out.push("no rule ran (in a chain not matched before)".into());
            return out;
        }
        out.push("what the rules did:".into());
        for c in recent.into_iter().rev() {
            out.extend(chain::show(c));
        }
        out
    }
}

fn describe_want(want: &Expect) -> String {
    let mut parts = Vec::new();
    match (&want.actor, &want.topic) {
        (Some(actor), _) => parts.push(format!("at {actor}")),
        (None, Some(topic)) => parts.push(format!("on {topic}")),
        _ => {}
    }
    if let Some(kind) = &want.kind {
        parts.push(format!("type {kind}"));
    }
    if let Some(from) = &want.from {
        parts.push(format!("from {from}"));
    }
    if let Some(text) = &want.text {
        parts.push(format!("text {text:?}"));
    }
    if let Some(body) = &want.body {
        parts.push(format!("body {body}"));
    }
    if let Some(payload) = &want.payload {
        parts.push(format!("payload {payload}"));
    }
    if let Some(envelope) = &want.envelope {
        parts.push(format!("envelope {envelope}"));
    }
    parts.join(", ")
}

pub(super) fn describe_expect(kind: &str, want: &Expect) -> String {
    let mut text = format!("{kind} {}", describe_want(want));
    if let Some(count) = want.count {
        text.push_str(&format!(" x{count}"));
    }
    if let Some(within) = &want.within {
        text.push_str(&format!(" within {within}"));
    }
    if let Some(during) = &want.during {
        text.push_str(&format!(" for {during}"));
    }
    text
}
