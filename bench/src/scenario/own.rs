//! The scenarios that run on a daemon of the bench's own (`rules-*`, `things-roundtrip`): the
//! accounts and topics they use, and the rules folder and configuration the daemon starts with.

use super::{ConnectionPlan, IM_PASSWORD_HASH, Scenario};

/// The topics of the rules scenarios' plain messages (each scenario has a daemon of its own).
pub const RULES_PREFIX: &str = "mqtter-bench/rules";

/// The topic of pair `i` of `rules-0` and `rules-1000`.
pub fn rules_pair_topic(i: usize) -> String {
    format!("{RULES_PREFIX}/pair/{i}")
}

/// The topic of publisher `i` of `rules-reload`.
pub fn reload_event_topic(i: usize) -> String {
    format!("{RULES_PREFIX}/ev/{i}")
}

/// The person and the things A and B of chain `c` of `rules-chain`.
pub fn chain_accounts(c: usize) -> (String, String, String) {
    (
        format!("mqb-c{c}p"),
        format!("mqb-c{c}a"),
        format!("mqb-c{c}b"),
    )
}

/// The person and the thing of round trip `t` of `things-roundtrip`.
pub fn roundtrip_accounts(t: usize) -> (String, String) {
    (format!("mqb-t{t}p"), format!("mqb-t{t}"))
}

/// What a daemon of the bench's own starts with: the files of its rules folder (name, text)
/// and the configuration lines besides `rules_dir` and `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnFolder {
    pub files: Vec<(String, String)>,
    pub config: String,
}

/// The rules file `rules-reload` writes at its `version`-th load: `rules` rules in files of
/// at most 100, rule `k` forwarding what arrives on publisher `k`'s topic to
/// `seen/v<version>/<k>`, so that every event is counted once, whichever version ran it.
pub fn reload_files(rules: usize, version: usize) -> Vec<(String, String)> {
    let per_file = 100;
    (0..rules.div_ceil(per_file))
        .map(|f| {
            let mut text = format!("# Written by `mqtter bench --scenario rules-reload`, version {version}.\nrules:\n");
            for k in f * per_file..((f + 1) * per_file).min(rules) {
                text.push_str(&format!(
                    "  - id: fwd-{k}\n    when: {{ topic: \"{}\" }}\n    mode: parallel\n    do: 'publish(\"{RULES_PREFIX}/seen/v{version}/{k}\", event.text, #{{ qos: 1 }})'\n",
                    reload_event_topic(k)
                ));
            }
            (format!("rules-{f:02}.yaml"), text)
        })
        .collect()
}

/// The folder and configuration of a scenario that runs on a daemon of the bench's own
/// ([`Scenario::own_daemon`]); `None` for the others.
///
/// - `rules-0`: no rules; `rules-1000`: 1,000 rules on topic filters (a third literal, a third
///   with `+`, a third with `#`), of which exactly one matches each pair's topic; the matching
///   rules read the event's topic and do nothing else, so the figure is the engine's cost per
///   event, not a script's.
/// - `rules-chain`: per chain a person, things A and B bound to it and linked, a rule on a
///   command to A that commands B as A, and one on a command to B that notifies the person
///   with the first command's send time.
/// - `rules-reload`: [`reload_files`] version 0.
/// - `things-roundtrip`: per round trip a person and a thing bound to it.
///
/// The matching rules run in `mode: parallel` (the events are independent; the default,
/// `single`, skips a trigger while the rule runs). Anonymous clients are allowed (the plain
/// pairs); persons and things have the bench's password ([`IM_PASSWORD_HASH`]).
pub fn own_folder(sc: &Scenario) -> Option<OwnFolder> {
    let mut persons: Vec<String> = vec!["rules".to_string()];
    let mut things: Vec<String> = Vec::new();
    let mut relations = String::new();
    let mut rules = String::new();
    let mut files = Vec::new();
    match sc.plan {
        ConnectionPlan::RulesPairs { pairs, rules: n } => {
            for k in 0..n {
                let filter = if k < pairs {
                    rules_pair_topic(k)
                } else {
                    match k % 3 {
                        0 => rules_pair_topic(k),
                        1 => format!("{RULES_PREFIX}/+/{k}/x"),
                        _ => format!("{RULES_PREFIX}/other/{k}/#"),
                    }
                };
                rules.push_str(&format!(
                    "  - {{ id: r{k}, when: {{ topic: \"{filter}\" }}, mode: parallel, do: 'let topic = event.topic;' }}\n"
                ));
            }
        }
        ConnectionPlan::RulesChain { chains } => {
            for c in 0..chains {
                let (p, a, b) = chain_accounts(c);
                persons.push(p.clone());
                things.push(a.clone());
                things.push(b.clone());
                relations.push_str(&format!(
                    "  - {{ bind: {a}, to: {p} }}\n  - {{ bind: {b}, to: {p} }}\n  - {{ link: [{a}, {b}] }}\n"
                ));
                rules.push_str(&format!(
                    "  - id: chain-{c}-a\n    when: {{ command: {a} }}\n    as: {a}\n    mode: parallel\n    do: 'command(\"{b}\", #{{ mqb: event.command.mqb }})'\n\
                     \x20 - id: chain-{c}-b\n    when: {{ command: {b} }}\n    as: {b}\n    mode: parallel\n    do: 'notify(\"{p}\", #{{ type: \"bench.chain\", mqb: event.command.mqb }})'\n"
                ));
            }
        }
        ConnectionPlan::RulesReload { rules: n, .. } => files = reload_files(n, 0),
        ConnectionPlan::ThingsRoundtrip { things: n } => {
            for t in 0..n {
                let (p, thing) = roundtrip_accounts(t);
                persons.push(p.clone());
                things.push(thing.clone());
                relations.push_str(&format!("  - {{ bind: {thing}, to: {p} }}\n"));
            }
        }
        _ => return None,
    }
    let mut defs = String::from(
        "# Written by `mqtter bench` for a daemon of its own. The password hash uses the\n\
         # smallest argon2 parameters: benchmarks only.\npersons:\n",
    );
    for p in &persons {
        defs.push_str(&format!(
            "  - {{ id: {p}, password_hash: \"{IM_PASSWORD_HASH}\" }}\n"
        ));
    }
    if !things.is_empty() {
        defs.push_str("things:\n");
        for t in &things {
            defs.push_str(&format!(
                "  - {{ id: {t}, password_hash: \"{IM_PASSWORD_HASH}\" }}\n"
            ));
        }
    }
    if !relations.is_empty() {
        defs.push_str("relations:\n");
        defs.push_str(&relations);
    }
    if !rules.is_empty() {
        defs.push_str("rules:\n");
        defs.push_str(&rules);
    }
    files.push(("bench.yaml".to_string(), defs));
    Some(OwnFolder {
        files,
        // The rules' status often, so that the bench reads its final counts soon.
        config: "allow_anonymous = true\n[rules]\npublish_interval_ms = 100\n".to_string(),
    })
}
