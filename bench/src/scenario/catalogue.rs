//! The built-in scenarios, sized by the command line, and the selection of those to run.

use super::*;

/// Sizes used to build the built-in scenarios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    /// Overrides every plan's connection count when set.
    pub connections: Option<usize>,
    /// Overrides every saturating scenario's message count when set.
    pub messages: Option<u64>,
    pub rate: u64,
    pub seconds: f64,
    pub quick: bool,
}

impl Sizes {
    /// A plan's connections: `--connections`, else `full` (`quick` with `--quick`).
    fn conns(&self, full: usize, quick: usize) -> usize {
        self.connections
            .unwrap_or(if self.quick { quick } else { full })
    }

    /// A saturating load's messages: `--messages`, else `full` (`quick` with `--quick`).
    fn msgs(&self, full: u64, quick: u64) -> u64 {
        self.messages
            .unwrap_or(if self.quick { quick } else { full })
    }
}

/// The plain-MQTT scenarios, in the order they run.
pub fn builtin(s: &Sizes) -> Vec<Scenario> {
    let pairs = s.conns(10, 2);
    // `conns` runs first: the broker's memory is measured best before other scenarios have
    // grown (and freed) its heap.
    let mut out = vec![Scenario {
        name: "conns".to_string(),
        group: "conns",
        plan: ConnectionPlan::Idle {
            connections: s.conns(10_000, 200),
        },
        load: LoadShape::Saturate { messages: 0 },
        qos: 0,
    }];
    for qos in [0u8, 1] {
        out.push(Scenario {
            name: format!("pairs-qos{qos}"),
            group: "pairs",
            plan: ConnectionPlan::Pairs { n: pairs },
            load: LoadShape::Saturate {
                messages: s.msgs(200_000, 2_000),
            },
            qos,
        });
    }
    for qos in [0u8, 1] {
        out.push(Scenario {
            name: format!("pairs-qos{qos}-rate"),
            group: "pairs",
            plan: ConnectionPlan::Pairs { n: pairs },
            load: LoadShape::Rate {
                per_sec: s.rate,
                seconds: s.seconds,
            },
            qos,
        });
    }
    for qos in [0u8, 1] {
        out.push(Scenario {
            name: format!("fanout-qos{qos}"),
            group: "fanout",
            plan: ConnectionPlan::FanOut {
                subscribers: s.conns(1000, 20),
            },
            load: LoadShape::Saturate {
                messages: s.msgs(200, 50),
            },
            qos,
        });
    }
    for qos in [0u8, 1] {
        out.push(Scenario {
            name: format!("fanin-qos{qos}"),
            group: "fanin",
            plan: ConnectionPlan::FanIn {
                publishers: s.conns(1000, 20),
            },
            load: LoadShape::Saturate {
                messages: s.msgs(200_000, 2_000),
            },
            qos,
        });
    }
    out
}

/// The sustained-load scenarios (`--scenario sustain`, not in the default selection): 2 and 10
/// publisher/subscriber pairs and a 1 -> 8 fan-out, QoS 0 and 1, each publisher sending as fast
/// as the broker takes its messages for `--seconds`. Meant for a broker with its default queue
/// limits: `lost` is what it accepted (QoS 1: acknowledged) and did not deliver.
pub fn builtin_sustain(s: &Sizes) -> Vec<Scenario> {
    let shapes = [
        ("pairs2", ConnectionPlan::Pairs { n: 2 }),
        ("pairs10", ConnectionPlan::Pairs { n: 10 }),
        ("fanout8", ConnectionPlan::FanOut { subscribers: 8 }),
    ];
    let mut out = Vec::new();
    for (shape, plan) in shapes {
        for qos in [0u8, 1] {
            out.push(Scenario {
                name: format!("sustain-{shape}-qos{qos}"),
                group: "sustain",
                plan: plan.clone(),
                load: LoadShape::Sustain { seconds: s.seconds },
                qos,
            });
        }
    }
    out
}

/// The IM scenarios (MQTTER only: they need the accounts of [`im_definitions`]), QoS 1 as
/// persons' clients use it. Not part of the default selection; `--scenario im` runs them.
pub fn builtin_im(s: &Sizes) -> Vec<Scenario> {
    // Each IM scenario is followed by its reference: the same connections and load in plain
    // MQTT (anonymous clients, the plain payload), so that the ratio of the two is the cost of
    // the IM world (gate, stamping, storage, the envelope) and nothing else. 400 messages per
    // pair and 1,000 group messages keep the ramp-up (the first windows in flight) a small
    // part of the time.
    let direct_pairs = s.conns(1000, 20);
    let direct_load = LoadShape::Saturate {
        messages: s.msgs(400_000, 2_000),
    };
    let members = s.conns(1000, 20);
    let group_load = LoadShape::Saturate {
        messages: s.msgs(1_000, 50),
    };
    vec![
        Scenario {
            name: "im-direct".to_string(),
            group: "im",
            plan: ConnectionPlan::ImDirect {
                pairs: direct_pairs,
            },
            load: direct_load,
            qos: 1,
        },
        Scenario {
            name: "im-direct-ref".to_string(),
            group: "im",
            plan: ConnectionPlan::Pairs { n: direct_pairs },
            load: direct_load,
            qos: 1,
        },
        Scenario {
            name: "im-group".to_string(),
            group: "im",
            plan: ConnectionPlan::ImGroup { members },
            load: group_load,
            qos: 1,
        },
        Scenario {
            name: "im-group-ref".to_string(),
            group: "im",
            // The group's sender is a member: `members - 1` receive.
            plan: ConnectionPlan::FanOut {
                subscribers: members.saturating_sub(1).max(1),
            },
            load: group_load,
            qos: 1,
        },
        Scenario {
            name: "im-reconnect".to_string(),
            group: "im",
            plan: ConnectionPlan::ImReconnect,
            load: LoadShape::Saturate {
                messages: s.msgs(100_000, 2_000),
            },
            qos: 1,
        },
    ]
}

/// The scenarios on a daemon of the bench's own (not in the default selection): `rules`
/// (`rules-0`, `rules-1000`, `rules-chain`, `rules-reload`) and `things` (`things-roundtrip`).
/// `rate` is `--rate` when given (the fixed-rate ones have their own defaults).
pub fn builtin_own(s: &Sizes, rate: Option<u64>) -> Vec<Scenario> {
    let q = s.quick;
    let pairs = s.conns(10, 2);
    let pairs_load = LoadShape::Saturate {
        messages: s.msgs(200_000, 2_000),
    };
    let mut out: Vec<Scenario> = [0usize, 1000]
        .into_iter()
        .map(|rules| Scenario {
            name: format!("rules-{rules}"),
            group: "rules",
            plan: ConnectionPlan::RulesPairs { pairs, rules },
            load: pairs_load,
            qos: 1,
        })
        .collect();
    out.push(Scenario {
        name: "rules-chain".to_string(),
        group: "rules",
        plan: ConnectionPlan::RulesChain {
            chains: s.conns(10, 2),
        },
        load: LoadShape::Rate {
            per_sec: rate.unwrap_or(if q { 200 } else { 1_000 }),
            seconds: s.seconds,
        },
        qos: 1,
    });
    out.push(Scenario {
        name: "rules-reload".to_string(),
        group: "rules",
        plan: ConnectionPlan::RulesReload {
            rules: 1000,
            publishers: s.conns(10, 2),
            reloads: if q { 3 } else { 10 },
        },
        load: LoadShape::Rate {
            per_sec: rate.unwrap_or(if q { 500 } else { 2_000 }),
            seconds: s.seconds,
        },
        qos: 1,
    });
    out.push(Scenario {
        name: "things-roundtrip".to_string(),
        group: "things",
        plan: ConnectionPlan::ThingsRoundtrip {
            things: s.conns(1000, 20),
        },
        load: LoadShape::Saturate {
            messages: s.msgs(100_000, 400),
        },
        qos: 1,
    });
    out
}

/// Picks scenarios by exact name or group name; an empty selection means every plain-MQTT
/// scenario of fixed size (the `im` group, with its plain references, `sustain`, `rules` and
/// `things` run only when named).
pub fn select(all: Vec<Scenario>, names: &[String]) -> anyhow::Result<Vec<Scenario>> {
    if names.is_empty() {
        return Ok(all
            .into_iter()
            .filter(|s| !["im", "sustain", "rules", "things"].contains(&s.group))
            .collect());
    }
    for n in names {
        if !all.iter().any(|s| s.name == *n || s.group == n.as_str()) {
            let mut known: Vec<&str> = Vec::new();
            for s in &all {
                for k in [s.group, s.name.as_str()] {
                    if !known.contains(&k) {
                        known.push(k);
                    }
                }
            }
            anyhow::bail!("unknown scenario {n:?}; known: {}", known.join(", "));
        }
    }
    Ok(all
        .into_iter()
        .filter(|s| names.iter().any(|n| s.name == *n || s.group == n.as_str()))
        .collect())
}
