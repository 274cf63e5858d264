//! Benchmark scenarios as plain data: who connects, who publishes where, and how fast.
//!
//! The runner only understands [`Topology`] and [`LoadShape`]; adding a scenario means adding
//! data here, not changing the engine. The IM scenarios (`im-*`) also name the accounts,
//! friendships and group they need; [`im_definitions`] writes them as a definitions file for
//! `rules_dir` (docs/DEFINITIONS.md), so that a broker started with it has them. The catalogue of
//! built-in scenarios is `catalogue`; what the scenarios on a daemon of their own need, `own`.

mod catalogue;
mod own;

pub use catalogue::{Sizes, builtin, builtin_im, builtin_own, builtin_sustain, select};
pub use own::{
    OwnFolder, RULES_PREFIX, chain_accounts, own_folder, reload_event_topic, reload_files,
    roundtrip_accounts, rules_pair_topic,
};

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
    /// IM world: `pairs` pairs of friends (persons); in each pair one sends direct messages to
    /// the other (`person/<peer>/inbox`).
    ImDirect { pairs: usize },
    /// IM world: one group of `members` persons; one member sends to `group/<id>`, every other
    /// member receives.
    ImGroup { members: usize },
    /// IM world: a person is offline while a friend sends it the scenario's messages; then it
    /// reconnects, and the figure is the time from its CONNECT to `sync.done`.
    ImReconnect,
    /// A daemon of the bench's own on a rules folder of `rules` rules (see [`own_folder`]):
    /// `pairs` plain pairs as [`ConnectionPlan::Pairs`], each message matched by exactly one
    /// rule when there are any.
    RulesPairs { pairs: usize, rules: usize },
    /// A daemon of the bench's own: `chains` persons, each with two linked things A and B and
    /// two rules; a person's command to A makes A command B (a rule), and B's command notifies
    /// the person (a rule): person -> thing -> thing -> person.
    RulesChain { chains: usize },
    /// A daemon of the bench's own on a folder of `rules` rules that it rewrites `reloads`
    /// times while `publishers` plain publishers send events that a rule forwards.
    RulesReload {
        rules: usize,
        publishers: usize,
        reloads: usize,
    },
    /// A daemon of the bench's own: `things` things, each owned by a person of its own who
    /// commands it and waits for the `cmd.ack` before the next command.
    ThingsRoundtrip { things: usize },
}

/// The world a scenario runs in: plain MQTT (anonymous clients, SUBSCRIBE), or the IM world
/// (persons log in, get `sync` ... `sync.done` after CONNACK, and receive JSON envelopes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    Mqtt,
    Im,
    /// Plain MQTT connections (anonymous) whose payloads are JSON carrying the send time as
    /// the IM world's do, so that a rule can pass them on (`rules-reload`).
    Json,
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
    /// Every publisher sends as fast as the broker takes them for `seconds` seconds (no fixed
    /// count); what the broker accepted (QoS 1: acknowledged) is what must arrive.
    Sustain { seconds: f64 },
}

/// The message count a sustained publisher stands for in a topology: more than it can send.
pub const SUSTAIN_NOMINAL: u64 = 1 << 40;

impl LoadShape {
    /// Total PUBLISH packets this shape sends.
    pub fn total_messages(&self) -> u64 {
        match *self {
            LoadShape::Saturate { messages } => messages,
            LoadShape::Rate { per_sec, seconds } => (per_sec as f64 * seconds).round() as u64,
            LoadShape::Sustain { .. } => SUSTAIN_NOMINAL,
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            LoadShape::Saturate { messages } => format!("saturate, {messages} messages"),
            LoadShape::Rate { per_sec, seconds } => format!("{per_sec} msg/s for {seconds} s"),
            LoadShape::Sustain { seconds } => format!("sustained for {seconds} s"),
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

impl Scenario {
    pub fn world(&self) -> World {
        match self.plan {
            ConnectionPlan::ImDirect { .. }
            | ConnectionPlan::ImGroup { .. }
            | ConnectionPlan::ImReconnect
            | ConnectionPlan::RulesChain { .. }
            | ConnectionPlan::ThingsRoundtrip { .. } => World::Im,
            ConnectionPlan::RulesReload { .. } => World::Json,
            _ => World::Mqtt,
        }
    }

    /// Whether the bench starts a daemon of its own for this scenario, on the folder
    /// [`own_folder`] writes (the rules and things scenarios), instead of using `--broker`.
    pub fn own_daemon(&self) -> bool {
        matches!(
            self.plan,
            ConnectionPlan::RulesPairs { .. }
                | ConnectionPlan::RulesChain { .. }
                | ConnectionPlan::RulesReload { .. }
                | ConnectionPlan::ThingsRoundtrip { .. }
        )
    }
}

/// A publisher: its topic, how many messages it sends, and the person it logs in as (IM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherSpec {
    pub topic: String,
    pub messages: u64,
    pub account: Option<String>,
}

/// A subscriber: its filter (none in the IM world, where the graph decides what arrives), how
/// many deliveries it should see, and the person it logs in as (IM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberSpec {
    pub filter: Option<String>,
    pub expected: u64,
    pub account: Option<String>,
}

/// The password of every bench person.
pub const IM_PASSWORD: &str = "mqtter-bench";
/// An argon2id hash of [`IM_PASSWORD`] with the smallest parameters (8 KiB, 1 pass): the broker
/// verifies thousands of bench logins in milliseconds instead of minutes. Only for benchmarks.
pub const IM_PASSWORD_HASH: &str =
    "$argon2id$v=19$m=8,t=1,p=1$bXF0dGVyYmVuY2hzYWx0$S/JxgQXtozbIowfwEsLWkxeH1CPScidwxlWVADW7jSI";
/// The group of `im-group`.
pub const IM_GROUP: &str = "mqb-group";

/// Sender and receiver of direct-message pair `i`.
pub fn im_direct_pair(i: usize) -> (String, String) {
    (format!("mqb-d{i}a"), format!("mqb-d{i}b"))
}

/// Member `i` of the bench group; member 0 (the owner) sends.
pub fn im_member(i: usize) -> String {
    format!("mqb-g{i}")
}

/// Sender and receiver of `im-reconnect`.
pub fn im_reconnect_pair() -> (String, String) {
    ("mqb-r-sender".to_string(), "mqb-r-receiver".to_string())
}

/// The definitions file (YAML) declaring every person, friendship and group the IM scenarios
/// among `scenarios` use.
pub fn im_definitions(scenarios: &[Scenario]) -> String {
    let mut persons: Vec<String> = Vec::new();
    let mut friends: Vec<(String, String)> = Vec::new();
    let mut groups = String::new();
    for sc in scenarios {
        match sc.plan {
            ConnectionPlan::ImDirect { pairs } => {
                for i in 0..pairs {
                    let (a, b) = im_direct_pair(i);
                    persons.push(a.clone());
                    persons.push(b.clone());
                    friends.push((a, b));
                }
            }
            ConnectionPlan::ImGroup { members } => {
                let members: Vec<String> = (0..members.max(2)).map(im_member).collect();
                persons.extend(members.iter().cloned());
                groups.push_str(&format!(
                    "  - {{ id: {IM_GROUP}, owner: {}, members: [{}], name: \"bench\" }}\n",
                    members[0],
                    members[1..].join(", ")
                ));
            }
            ConnectionPlan::ImReconnect => {
                let (a, b) = im_reconnect_pair();
                persons.push(a.clone());
                persons.push(b.clone());
                friends.push((a, b));
            }
            _ => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    persons.retain(|p| seen.insert(p.clone()));
    let mut out = String::from(
        "# Written by `mqtter bench --im-setup`: the persons, friendships and group of the IM\n\
         # scenarios. The password hash uses the smallest argon2 parameters: benchmarks only.\n",
    );
    out.push_str("persons:\n");
    for p in &persons {
        out.push_str(&format!(
            "  - {{ id: {p}, password_hash: \"{IM_PASSWORD_HASH}\" }}\n"
        ));
    }
    if !groups.is_empty() {
        out.push_str("groups:\n");
        out.push_str(&groups);
    }
    if !friends.is_empty() {
        out.push_str("relations:\n");
        for (a, b) in &friends {
            out.push_str(&format!("  - {{ friends: [{a}, {b}] }}\n"));
        }
    }
    out
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
    /// Publishers and subscribers of this scenario, with topics under `prefix` (plain MQTT).
    pub fn topology(&self, prefix: &str) -> Topology {
        let total = self.load.total_messages();
        let mut topo = Topology::default();
        let plain_pub = |topic: String, messages: u64| PublisherSpec {
            topic,
            messages,
            account: None,
        };
        let plain_sub = |filter: String| SubscriberSpec {
            filter: Some(filter),
            expected: 0,
            account: None,
        };
        match self.plan {
            ConnectionPlan::Pairs { n } => {
                for i in 0..n {
                    let topic = format!("{prefix}/pair/{i}");
                    topo.publishers
                        .push(plain_pub(topic.clone(), split(total, n, i)));
                    topo.subscribers.push(plain_sub(topic));
                }
            }
            ConnectionPlan::FanOut { subscribers } => {
                let topic = format!("{prefix}/fanout");
                topo.publishers.push(plain_pub(topic.clone(), total));
                for _ in 0..subscribers {
                    topo.subscribers.push(plain_sub(topic.clone()));
                }
            }
            ConnectionPlan::FanIn { publishers } => {
                for i in 0..publishers {
                    topo.publishers.push(plain_pub(
                        format!("{prefix}/fanin/{i}"),
                        split(total, publishers, i),
                    ));
                }
                topo.subscribers
                    .push(plain_sub(format!("{prefix}/fanin/+")));
            }
            ConnectionPlan::Idle { connections } => topo.idle = connections,
            ConnectionPlan::ImDirect { pairs } => {
                for i in 0..pairs {
                    let (a, b) = im_direct_pair(i);
                    let messages = split(total, pairs, i);
                    topo.publishers.push(PublisherSpec {
                        topic: format!("person/{b}/inbox"),
                        messages,
                        account: Some(a),
                    });
                    topo.subscribers.push(SubscriberSpec {
                        filter: None,
                        expected: messages,
                        account: Some(b),
                    });
                }
            }
            ConnectionPlan::ImGroup { members } => {
                topo.publishers.push(PublisherSpec {
                    topic: format!("group/{IM_GROUP}"),
                    messages: total,
                    account: Some(im_member(0)),
                });
                for i in 1..members.max(2) {
                    topo.subscribers.push(SubscriberSpec {
                        filter: None,
                        expected: total,
                        account: Some(im_member(i)),
                    });
                }
            }
            // Run by its own sequence (`runner::run_im_reconnect`).
            ConnectionPlan::ImReconnect => {}
            ConnectionPlan::RulesPairs { pairs, .. } => {
                for i in 0..pairs {
                    let topic = rules_pair_topic(i);
                    topo.publishers
                        .push(plain_pub(topic.clone(), split(total, pairs, i)));
                    topo.subscribers.push(plain_sub(topic));
                }
            }
            ConnectionPlan::RulesReload { publishers, .. } => {
                for i in 0..publishers {
                    topo.publishers.push(plain_pub(
                        reload_event_topic(i),
                        split(total, publishers, i),
                    ));
                }
                topo.subscribers.push(SubscriberSpec {
                    filter: Some(format!("{RULES_PREFIX}/seen/#")),
                    expected: total,
                    account: None,
                });
            }
            // Run by their own sequence (`runner::rules::run_commands`): see `commands`.
            ConnectionPlan::RulesChain { .. } | ConnectionPlan::ThingsRoundtrip { .. } => {}
        }
        topo.publishers.retain(|p| p.messages > 0);
        if self.world() == World::Mqtt {
            for s in &mut topo.subscribers {
                let filter = s.filter.as_deref().unwrap_or_default();
                s.expected = topo
                    .publishers
                    .iter()
                    .filter(|p| topic_matches(filter, &p.topic))
                    .map(|p| p.messages)
                    .sum();
            }
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
            ConnectionPlan::ImDirect { pairs } => 2 * pairs,
            ConnectionPlan::ImGroup { members } => members.max(2),
            ConnectionPlan::ImReconnect => 2,
            ConnectionPlan::RulesPairs { pairs, .. } => 2 * pairs,
            ConnectionPlan::RulesChain { chains } => 3 * chains,
            // The publishers, the subscriber to what the rules forward, the status watcher.
            ConnectionPlan::RulesReload { publishers, .. } => publishers + 2,
            ConnectionPlan::ThingsRoundtrip { things } => 2 * things,
        }
    }

    /// The persons who command and the things that answer, for the scenarios that command
    /// things (`rules-chain`, `things-roundtrip`); empty for the others.
    pub fn commands(&self) -> Commands {
        let total = self.load.total_messages();
        let mut out = Commands::default();
        match self.plan {
            ConnectionPlan::RulesChain { chains } => {
                for c in 0..chains {
                    let (person, a, b) = chain_accounts(c);
                    out.commanders.push(CommanderSpec {
                        account: person,
                        topic: format!("thing/{a}/cmd"),
                        messages: split(total, chains, c),
                        window: None,
                    });
                    out.things.push(ThingSpec {
                        account: a,
                        echo: false,
                    });
                    out.things.push(ThingSpec {
                        account: b,
                        echo: false,
                    });
                }
            }
            ConnectionPlan::ThingsRoundtrip { things } => {
                for t in 0..things {
                    let (person, thing) = roundtrip_accounts(t);
                    out.commanders.push(CommanderSpec {
                        account: person,
                        topic: format!("thing/{thing}/cmd"),
                        messages: split(total, things, t),
                        window: Some(1),
                    });
                    out.things.push(ThingSpec {
                        account: thing,
                        echo: true,
                    });
                }
            }
            _ => {}
        }
        out
    }
}

/// A person who sends commands on one topic and counts what comes back stamped: for each
/// command, one envelope carrying its send time (a `cmd.ack` whose result echoes it, or a
/// rule's notice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommanderSpec {
    pub account: String,
    pub topic: String,
    pub messages: u64,
    /// Round trips in flight at most (sent, their envelope not back yet); `None`: as the load
    /// shape says (a fixed rate).
    pub window: Option<u64>,
}

/// A thing that acknowledges every command it gets; with `echo`, its result carries the
/// command's send time back to the commander.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThingSpec {
    pub account: String,
    pub echo: bool,
}

/// The commanders and things of a scenario that commands things.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Commands {
    pub commanders: Vec<CommanderSpec>,
    pub things: Vec<ThingSpec>,
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
    fn im_topologies_and_definitions() {
        let all = builtin_im(&Sizes {
            connections: Some(3),
            messages: Some(10),
            ..sizes()
        });
        let direct = all[0].topology("ignored");
        assert_eq!(all[0].world(), World::Im);
        assert_eq!(direct.publishers.len(), 3);
        assert_eq!(direct.publishers[0].topic, "person/mqb-d0b/inbox");
        assert_eq!(direct.publishers[0].account.as_deref(), Some("mqb-d0a"));
        assert_eq!(direct.subscribers[0].account.as_deref(), Some("mqb-d0b"));
        assert_eq!(direct.subscribers[0].filter, None);
        assert_eq!(direct.expected_total(), 10);
        // Each IM scenario is followed by its plain reference, with the same load.
        assert_eq!(all[1].name, "im-direct-ref");
        assert_eq!(all[1].world(), World::Mqtt);
        assert_eq!(all[1].plan, ConnectionPlan::Pairs { n: 3 });
        assert_eq!(all[1].load, all[0].load);
        let group = all[2].topology("ignored");
        assert_eq!(group.publishers[0].topic, "group/mqb-group");
        assert_eq!(group.subscribers.len(), 2);
        assert_eq!(all[3].name, "im-group-ref");
        assert_eq!(all[3].plan, ConnectionPlan::FanOut { subscribers: 2 });
        assert_eq!(
            all[3].topology("x").expected_total(),
            group.expected_total()
        );
        assert_eq!(group.expected_total(), 20);
        assert_eq!(all[2].connection_count(), 3);
        let yaml = im_definitions(&all);
        assert!(
            yaml.contains("  - { id: mqb-d2b, password_hash: \"$argon2id$"),
            "{yaml}"
        );
        assert!(
            yaml.contains("  - { friends: [mqb-d0a, mqb-d0b] }"),
            "{yaml}"
        );
        assert!(
            yaml.contains("  - { friends: [mqb-r-sender, mqb-r-receiver] }"),
            "{yaml}"
        );
        assert!(
            yaml.contains(
                "  - { id: mqb-group, owner: mqb-g0, members: [mqb-g1, mqb-g2], name: \"bench\" }"
            ),
            "{yaml}"
        );
        assert_eq!(yaml.matches("password_hash").count(), 3 * 2 + 3 + 2);
        let sel = select(all, &["im".into()]).unwrap();
        assert_eq!(sel.len(), 5);
    }

    #[test]
    fn own_daemon_scenarios_and_their_folders() {
        let all = builtin_own(&sizes(), None);
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "rules-0",
                "rules-1000",
                "rules-chain",
                "rules-reload",
                "things-roundtrip"
            ]
        );
        assert!(all.iter().all(Scenario::own_daemon));
        // Exactly one of the 1,000 rules matches each pair's topic.
        let folder = own_folder(&all[1]).unwrap();
        let text = &folder.files[0].1;
        let filters: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split("topic: \"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(filters.len(), 1000);
        for i in 0..10 {
            let topic = rules_pair_topic(i);
            let hits = filters.iter().filter(|f| topic_matches(f, &topic)).count();
            assert_eq!(hits, 1, "{topic}");
        }
        assert!(
            !own_folder(&all[0]).unwrap().files[0]
                .1
                .contains("rules:\n  -")
        );
        // The chain: a person and two linked things per chain, two rules.
        let chain = own_folder(&all[2]).unwrap().files[0].1.clone();
        assert!(
            chain.contains("  - { link: [mqb-c9a, mqb-c9b] }"),
            "{chain}"
        );
        assert_eq!(chain.matches("  - id: chain-").count(), 20, "{chain}");
        let cmds = all[2].commands();
        assert_eq!(cmds.commanders.len(), 10);
        assert_eq!(cmds.commanders[0].topic, "thing/mqb-c0a/cmd");
        assert_eq!(cmds.things.len(), 20);
        // The reload folder: 10 files of 100 rules, each version forwarding elsewhere.
        let files = reload_files(1000, 3);
        assert_eq!(files.len(), 10);
        assert_eq!(files[9].1.matches("  - id: fwd-").count(), 100);
        assert!(files[0].1.contains("mqtter-bench/rules/seen/v3/0"));
        let trips = all[4].commands();
        assert_eq!(trips.commanders.len(), 1000);
        assert!(trips.things.iter().all(|t| t.echo));
        assert_eq!(trips.commanders[0].window, Some(1));
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
        assert_eq!(select(all.clone(), &[]).unwrap().len(), 9);
        let mut with_im = all;
        with_im.extend(builtin_im(&sizes()));
        assert_eq!(select(with_im.clone(), &[]).unwrap().len(), 9);
        // `im` is the IM scenarios and their plain references.
        assert_eq!(select(with_im, &["im".into()]).unwrap().len(), 5);
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
