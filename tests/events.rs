//! The event seam on the real daemon: a consumer added to `Broker::events` sees, for a scripted
//! session of real clients, each plain publish, IM message (direct and group), presence change
//! and relation change once, with the account and kind that caused it and its chain; and an
//! action of `BrokerActions` enters as a PUBLISH of the named account, one hop further.
//!
//! The daemon runs in-process here (the library's `Broker::open` and `run`, as `mqtter serve`
//! does, on 127.0.0.1:0): a consumer is a Rust value, which a separate process cannot be given.

use std::sync::Arc;

use mqtter::actions::BrokerActions;
use mqtter::{Broker, Config, Listeners};
use mqtter_engine::events::{
    ActionPublish, Actions, ActorKind, Chain, Event, EventData, EventSink, Interest,
    PresenceStatus, RelationChange,
};
use mqtter_engine::{SledStore, Store, definitions};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::common::WAIT;
use crate::common::im::{Peer, conv, persons};

/// Wants every event and passes it on to the test.
struct Recorder(mpsc::UnboundedSender<Event>);

impl EventSink for Recorder {
    fn interest(&self) -> Interest {
        Interest::ALL
    }
    fn on_event(&self, event: &Arc<Event>) {
        let _ = self.0.send(Event::clone(event));
    }
}

/// The daemon in this process, with a recorder on its event seam.
struct InProcess {
    broker: Arc<Broker>,
    port: u16,
    events: mpsc::UnboundedReceiver<Event>,
    /// Every event received so far.
    seen: Vec<Event>,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(definitions_yaml: &str) -> InProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = Config {
            data: dir.path().join("data"),
            ..Config::default()
        };
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&config.data).expect("store"));
        let broker = Broker::open(config, store).expect("open the broker");
        // As `mqtter serve` applies its folder's definitions files, for this one file.
        let file = std::path::Path::new("world.yaml");
        let parsed = definitions::parse(file, definitions_yaml).expect("definitions");
        let mut report = definitions::Report::default();
        definitions::apply(
            file,
            &parsed,
            &broker.accounts,
            &broker.gate.im,
            1,
            &mut report,
        );
        assert!(report.diagnostics.is_empty(), "{:?}", report.diagnostics);
        let (tx, events) = mpsc::unbounded_channel();
        broker.events.add_sink(Arc::new(Recorder(tx)));
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(mqtter::run(
            broker.clone(),
            Listeners {
                tcp,
                ws: None,
                metrics: None,
            },
            async move {
                let _ = stopped.await;
            },
        ));
        InProcess {
            broker,
            port,
            events,
            seen: Vec::new(),
            stop: Some(stop),
            served: Some(served),
            _dir: dir,
        }
    }

    /// Wait for an event that `pred` accepts (among those seen so far or arriving).
    async fn wait(&mut self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        if let Some(found) = self.seen.iter().find(|e| pred(e)) {
            return found.clone();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => {
                    self.seen.push(event.clone());
                    if pred(&event) {
                        return event;
                    }
                }
                Ok(None) => panic!("the event seam closed waiting for {what}"),
                Err(_) => panic!("no {what} within {WAIT:?}; seen: {:#?}", self.seen),
            }
        }
    }

    /// How many of the events seen so far `pred` accepts.
    fn count(&mut self, pred: impl Fn(&Event) -> bool) -> usize {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
        self.seen.iter().filter(|e| pred(e)).count()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            served.await.unwrap().unwrap();
        }
    }
}

fn by(event: &Event, account: &str, kind: ActorKind) -> bool {
    event.actor.account.as_deref() == Some(account) && event.actor.kind == kind
}

fn presence(event: &Event, who: &str, status: PresenceStatus) -> bool {
    matches!(&event.data, EventData::Presence { account, status: s, .. }
        if account == who && *s == status)
}

fn relation(event: &Event, change: &RelationChange) -> bool {
    matches!(&event.data, EventData::Relation(c) if c == change)
}

fn im_message(event: &Event, conversation: &str, seq: u64) -> bool {
    matches!(&event.data, EventData::ImMessage(m) if m.conv == conversation && m.seq == seq)
}

fn plain(event: &Event, topic: &str) -> bool {
    matches!(&event.data, EventData::Publish(p) if p.topic == topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_sees_each_kind_once_with_its_account_kind_and_chain() {
    let yaml = format!(
        "{}groups:\n  - {{ id: club, owner: alice, members: [bob] }}\n",
        persons(&["alice", "bob"])
    );
    let mut daemon = InProcess::start(&yaml).await;
    let port = daemon.port;

    // Presence: each person coming online.
    let mut alice = Peer::connect(port, "alice", true, 30).await;
    let mut bob = Peer::connect(port, "bob", false, 30).await;
    for who in ["alice", "bob"] {
        let online = daemon
            .wait("online", |e| presence(e, who, PresenceStatus::Online))
            .await;
        assert!(by(&online, who, ActorKind::Person), "{online:?}");
        assert_eq!(online.chain.hop, 0);
    }

    // A plain PUBLISH, with its payload bytes, QoS and user properties.
    assert_eq!(bob.subscribe("plain/news").await, 1);
    let props = crate::common::im::with_user(&[("k", "v")]);
    assert!(alice.publish_with("plain/news", "extra", props).await < 0x80);
    let news = daemon.wait("a publish", |e| plain(e, "plain/news")).await;
    assert!(by(&news, "alice", ActorKind::Person), "{news:?}");
    let EventData::Publish(p) = &news.data else {
        unreachable!()
    };
    assert_eq!((&p.payload[..], p.qos, p.retain), (&b"extra"[..], 1, false));
    assert!(p.user_properties.contains(&("k".into(), "v".into())));
    assert_eq!(news.chain.hop, 0);
    assert!(news.chain.id.starts_with("mqtt:alice#"), "{:?}", news.chain);

    // Friends by SUBSCRIBE: the change is bob's (his SUBSCRIBE answered alice's request).
    assert!(alice.subscribe("person/bob/status").await <= 1);
    bob.notice("friend.request").await;
    assert!(bob.subscribe("person/alice/status").await <= 1);
    alice.notice("friend.added").await;
    let added = RelationChange::FriendAdded {
        a: "bob".into(),
        b: "alice".into(),
    };
    let friended = daemon.wait("friend added", |e| relation(e, &added)).await;
    assert!(by(&friended, "bob", ActorKind::Person), "{friended:?}");

    // An IM direct message: its chain is its own id.
    let direct = conv("alice", "bob");
    assert!(alice.publish("person/bob/inbox", "hi bob").await < 0x80);
    bob.message("person/bob/inbox", |m| m["body"]["text"] == "hi bob")
        .await;
    let hi = daemon
        .wait("a direct message", |e| im_message(e, &direct, 1))
        .await;
    assert!(by(&hi, "alice", ActorKind::Person), "{hi:?}");
    assert_eq!(hi.chain, Chain::start(format!("{direct}#1")));
    let EventData::ImMessage(m) = &hi.data else {
        unreachable!()
    };
    assert_eq!((m.from.as_str(), m.to.as_str()), ("alice", "bob"));
    assert_eq!(&m.body[..], br#"{"text":"hi bob"}"#);

    // A group message.
    assert!(bob.publish("group/club", "hi club").await < 0x80);
    let club = daemon
        .wait("a group message", |e| im_message(e, "group:club", 1))
        .await;
    assert!(by(&club, "bob", ActorKind::Person), "{club:?}");
    assert_eq!(club.chain, Chain::start("group:club#1"));

    // An action as alice answers the direct message: a real IM message one hop further.
    let actions = BrokerActions::new(&daemon.broker);
    actions
        .publish(ActionPublish {
            account: "alice".into(),
            topic: "person/bob/inbox".into(),
            payload: "an answer".into(),
            qos: 1,
            retain: false,
            chain: hi.chain.clone(),
        })
        .expect("the action is allowed");
    let answer = bob
        .message("person/bob/inbox", |m| m["body"]["text"] == "an answer")
        .await;
    assert_eq!(
        answer["chain"],
        json!({ "id": format!("{direct}#1"), "hop": 1 })
    );
    let acted = daemon
        .wait("the action's message", |e| im_message(e, &direct, 2))
        .await;
    assert!(by(&acted, "alice", ActorKind::Rule), "{acted:?}");
    assert_eq!(acted.chain.hop, 1);
    // A plain one, through the ACL and the router like a client's.
    actions
        .publish(ActionPublish {
            account: "alice".into(),
            topic: "plain/news".into(),
            payload: "from a rule".into(),
            qos: 0,
            retain: false,
            chain: news.chain.clone(),
        })
        .expect("the action is allowed");
    bob.wait_msg("the action's publish", |m| &m.payload[..] == b"from a rule")
        .await;
    let ruled = daemon
        .wait(
            "the action's publish",
            |e| matches!(&e.data, EventData::Publish(p) if &p.payload[..] == b"from a rule"),
        )
        .await;
    assert!(by(&ruled, "alice", ActorKind::Rule), "{ruled:?}");
    assert_eq!(
        (ruled.chain.id.clone(), ruled.chain.hop),
        (news.chain.id.clone(), 1)
    );
    // A person who is not a friend cannot be written to by an action either.
    let refused = actions.publish(ActionPublish {
        account: "alice".into(),
        topic: "person/nobody/inbox".into(),
        payload: "x".into(),
        qos: 1,
        retain: false,
        chain: Chain::start("t"),
    });
    assert!(refused.is_err(), "{refused:?}");

    // Unfriending is alice's change.
    assert!(alice.unsubscribe("person/bob/status").await.is_some());
    let removed = RelationChange::FriendRemoved {
        a: "alice".into(),
        b: "bob".into(),
    };
    let unfriended = daemon
        .wait("friend removed", |e| relation(e, &removed))
        .await;
    assert!(
        by(&unfriended, "alice", ActorKind::Person),
        "{unfriended:?}"
    );

    // Offline when the last device goes.
    bob.disconnect().await;
    let offline = daemon
        .wait("offline", |e| presence(e, "bob", PresenceStatus::Offline))
        .await;
    assert!(by(&offline, "bob", ActorKind::Person), "{offline:?}");

    // Each once.
    assert_eq!(daemon.count(|e| plain(e, "plain/news")), 2);
    assert_eq!(daemon.count(|e| im_message(e, &direct, 1)), 1);
    assert_eq!(daemon.count(|e| im_message(e, "group:club", 1)), 1);
    assert_eq!(daemon.count(|e| relation(e, &added)), 1);
    assert_eq!(daemon.count(|e| relation(e, &removed)), 1);
    for who in ["alice", "bob"] {
        assert_eq!(
            daemon.count(|e| presence(e, who, PresenceStatus::Online)),
            1,
            "{who} online"
        );
    }
    assert_eq!(
        daemon.count(|e| presence(e, "bob", PresenceStatus::Offline)),
        1
    );
    drop(alice);
    daemon.stop().await;
}
