//! Benchmark scenarios as plain data: who connects, who publishes where, and how fast.
//!
//! The runner only understands [`Topology`] and [`LoadShape`]; adding a scenario means adding
//! data here, not changing the engine.

/// Which connections a scenario opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionPlan {
    /// `n` publishers each on its own topic, and one subscriber per topic.
    Pairs { n: usize },
    /// One publisher, `subscribers` subscribers on the same topic.
    FanOut { subscribers: usize },
    /// `publishers` publishers on their own topics, one subscriber on a wildcard over them.
    FanIn { publishers: usize },
    /// `connections` connections that only connect and stay idle.
    Idle { connections: usize },
}

/// How the publishers send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LoadShape {
    /// Send `messages` PUBLISH packets in total (split over the publishers) as fast as the
    /// broker takes them.
    Saturate { messages: u64 },
    /// Send `per_sec` PUBLISH packets per second in total (split over the publishers) for
    /// `seconds` seconds.
    Rate { per_sec: u64, seconds: f64 },
}

impl LoadShape {
    /// Total PUBLISH packets this shape sends.
    pub fn total_messages(&self) -> u64 {
        match *self {
            LoadShape::Saturate { messages } => messages,
            LoadShape::Rate { per_sec, seconds } => (per_sec as f64 * seconds).round() as u64,
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            LoadShape::Saturate { messages } => format!("saturate, {messages} messages"),
            LoadShape::Rate { per_sec, seconds } => format!("{per_sec} msg/s for {seconds} s"),
        }
    }
}

/// One benchmark scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    /// Group the scenario belongs to (`pairs`, `fanout`, ...), selectable as a whole.
    pub group: &'static str,
    pub plan: ConnectionPlan,
    pub load: LoadShape,
    pub qos: u8,
}

/// A publisher: its topic and how many messages it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherSpec {
    pub topic: String,
    pub messages: u64,
}

/// A subscriber: its filter and how many deliveries it should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberSpec {
    pub filter: String,
    pub expected: u64,
}

/// Concrete connections of a scenario, derived from its plan and load.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    pub publishers: Vec<PublisherSpec>,
    pub subscribers: Vec<SubscriberSpec>,
    /// Connections that do nothing after CONNACK.
    pub idle: usize,
}

impl Topology {
    /// Deliveries expected over all subscribers.
    pub fn expected_total(&self) -> u64 {
        self.subscribers.iter().map(|s| s.expected).sum()
    }

    pub fn published_total(&self) -> u64 {
        self.publishers.iter().map(|p| p.messages).sum()
    }
}

/// Whether an MQTT topic filter (with `+` and `#`) matches a topic name.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Splits `total` into `parts` shares that differ by at most one.
fn split(total: u64, parts: usize, i: usize) -> u64 {
    let parts = parts.max(1) as u64;
    let i = i as u64;
    total / parts + u64::from(i < total % parts)
}

impl Scenario {
    /// Publishers and subscribers of this scenario, with topics under `prefix`.
    pub fn topology(&self, prefix: &str) -> Topology {
        let total = self.load.total_messages();
        let mut topo = Topology::default();
        match self.plan {
            ConnectionPlan::Pairs { n } => {
                for i in 0..n {
                    let topic = format!("{prefix}/pair/{i}");
                    topo.publishers.push(PublisherSpec {
                        topic: topic.clone(),
                        messages: split(total, n, i),
                    });
                    topo.subscribers.push(SubscriberSpec {
                        filter: topic,
                        expected: 0,
                    });
                }
            }
            ConnectionPlan::FanOut { subscribers } => {
                let topic = format!("{prefix}/fanout");
                topo.publishers.push(PublisherSpec {
                    topic: topic.clone(),
                    messages: total,
                });
                for _ in 0..subscribers {
                    topo.subscribers.push(SubscriberSpec {
                        filter: topic.clone(),
                        expected: 0,
                    });
                }
            }
            ConnectionPlan::FanIn { publishers } => {
                for i in 0..publishers {
                    topo.publishers.push(PublisherSpec {
                        topic: format!("{prefix}/fanin/{i}"),
                        messages: split(total, publishers, i),
                    });
                }
                topo.subscribers.push(SubscriberSpec {
                    filter: format!("{prefix}/fanin/+"),
                    expected: 0,
                });
            }
            ConnectionPlan::Idle { connections } => topo.idle = connections,
        }
        topo.publishers.retain(|p| p.messages > 0);
        for s in &mut topo.subscribers {
            s.expected = topo
                .publishers
                .iter()
                .filter(|p| topic_matches(&s.filter, &p.topic))
                .map(|p| p.messages)
                .sum();
        }
        topo
    }

    /// Total connections the scenario opens.
    pub fn connection_count(&self) -> usize {
        match self.plan {
            ConnectionPlan::Pairs { n } => 2 * n,
            ConnectionPlan::FanOut { subscribers } => subscribers + 1,
            ConnectionPlan::FanIn { publishers } => publishers + 1,
            ConnectionPlan::Idle { connections } => connections,
        }
    }
}

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

/// The plain-MQTT scenarios, in the order they run.
pub fn builtin(s: &Sizes) -> Vec<Scenario> {
    let q = s.quick;
    let conns = |full: usize, quick: usize| s.connections.unwrap_or(if q { quick } else { full });
    let msgs = |full: u64, quick: u64| s.messages.unwrap_or(if q { quick } else { full });
    let pairs = conns(10, 2);
    // `conns` runs first: the broker's memory is measured best before other scenarios have
    // grown (and freed) its heap.
    let mut out = vec![Scenario {
        name: "conns".to_string(),
        group: "conns",
        plan: ConnectionPlan::Idle {
            connections: conns(10_000, 200),
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
                messages: msgs(200_000, 2_000),
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
                subscribers: conns(1000, 20),
            },
            load: LoadShape::Saturate {
                messages: msgs(200, 50),
            },
            qos,
        });
    }
    for qos in [0u8, 1] {
        out.push(Scenario {
            name: format!("fanin-qos{qos}"),
            group: "fanin",
            plan: ConnectionPlan::FanIn {
                publishers: conns(1000, 20),
            },
            load: LoadShape::Saturate {
                messages: msgs(200_000, 2_000),
            },
            qos,
        });
    }
    out
}

/// Picks scenarios by exact name or group name; an empty selection means all of them.
pub fn select(all: Vec<Scenario>, names: &[String]) -> anyhow::Result<Vec<Scenario>> {
    if names.is_empty() {
        return Ok(all);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> Sizes {
        Sizes {
            connections: None,
            messages: None,
            rate: 1000,
            seconds: 2.0,
            quick: false,
        }
    }

    #[test]
    fn topic_matching() {
        assert!(topic_matches("a/b", "a/b"));
        assert!(!topic_matches("a/b", "a/c"));
        assert!(topic_matches("a/+", "a/b"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "a"));
        assert!(!topic_matches("a/b/c", "a/b"));
    }

    #[test]
    fn split_is_even() {
        let shares: Vec<u64> = (0..3).map(|i| split(10, 3, i)).collect();
        assert_eq!(shares, vec![4, 3, 3]);
        assert_eq!(split(5, 0, 0), 5);
    }

    #[test]
    fn pairs_topology() {
        let s = Scenario {
            name: "p".into(),
            group: "pairs",
            plan: ConnectionPlan::Pairs { n: 3 },
            load: LoadShape::Saturate { messages: 10 },
            qos: 0,
        };
        let t = s.topology("x");
        assert_eq!(t.publishers.len(), 3);
        assert_eq!(t.subscribers.len(), 3);
        assert_eq!(t.subscribers[0].expected, 4);
        assert_eq!(t.subscribers[2].expected, 3);
        assert_eq!(t.expected_total(), 10);
        assert_eq!(t.published_total(), 10);
        assert_eq!(s.connection_count(), 6);
    }

    #[test]
    fn fan_topologies() {
        let out = Scenario {
            name: "o".into(),
            group: "fanout",
            plan: ConnectionPlan::FanOut { subscribers: 5 },
            load: LoadShape::Saturate { messages: 7 },
            qos: 1,
        }
        .topology("x");
        assert_eq!(out.expected_total(), 35);
        let inn = Scenario {
            name: "i".into(),
            group: "fanin",
            plan: ConnectionPlan::FanIn { publishers: 4 },
            load: LoadShape::Rate {
                per_sec: 10,
                seconds: 1.5,
            },
            qos: 0,
        }
        .topology("x");
        assert_eq!(inn.published_total(), 15);
        assert_eq!(inn.subscribers.len(), 1);
        assert_eq!(inn.subscribers[0].expected, 15);
    }

    #[test]
    fn builtin_and_selection() {
        let all = builtin(&sizes());
        assert_eq!(all.len(), 9);
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"pairs-qos1-rate"));
        let sel = select(all.clone(), &["fanout".into(), "conns".into()]).unwrap();
        let names: Vec<&str> = sel.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["conns", "fanout-qos0", "fanout-qos1"]);
        let err = select(all.clone(), &["nope".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("known: conns, pairs, pairs-qos0,"), "{err}");
        assert_eq!(select(all, &[]).unwrap().len(), 9);
        let quick = builtin(&Sizes {
            quick: true,
            connections: Some(7),
            ..sizes()
        });
        assert_eq!(quick[0].plan, ConnectionPlan::Idle { connections: 7 });
        assert_eq!(quick[1].plan, ConnectionPlan::Pairs { n: 7 });
        assert_eq!(quick[1].load, LoadShape::Saturate { messages: 2_000 });
    }
}
