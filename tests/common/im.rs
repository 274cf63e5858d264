//! The IM world for end-to-end tests: a daemon started on definitions files, and person clients
//! (rumqttc v3.1.1 and v5) that record every packet the broker sends them, for the test to wait
//! on, in arrival order.
//!
//! Persons made by [`persons`] have the password `<id>-pw`; a client id is `<account>` or
//! `<account>:<device>`, and [`Peer`] logs in as the account the client id names.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5 as p5;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Daemon, WAIT};

/// A daemon on a definitions folder.
pub struct World {
    pub daemon: Daemon,
    /// The definitions folder (`rules_dir`).
    pub rules: tempfile::TempDir,
}

impl World {
    /// Write each `(file name, YAML)` into a fresh definitions folder and start the daemon on it,
    /// with `extra` appended to the configuration (e.g. `"[im]\naway_after = 1\n"`).
    pub fn start(files: &[(&str, &str)], extra: &str) -> World {
        let rules = tempfile::tempdir().expect("definitions dir");
        for (name, body) in files {
            std::fs::write(rules.path().join(name), body).expect("write a definitions file");
        }
        let config = format!(
            "rules_dir = {:?}\n{extra}",
            rules.path().display().to_string()
        );
        let daemon = Daemon::start_with(&[], Some(&config));
        World { daemon, rules }
    }

    /// One definitions file.
    pub fn with(yaml: &str, extra: &str) -> World {
        Self::start(&[("world.yaml", yaml)], extra)
    }

    pub fn port(&self) -> u16 {
        self.daemon.port()
    }

    pub async fn v3(&self, client_id: &str) -> Peer {
        Peer::connect(self.port(), client_id, false, 30).await
    }

    pub async fn v5(&self, client_id: &str) -> Peer {
        Peer::connect(self.port(), client_id, true, 30).await
    }
}

/// The `persons:` section for these ids, each with the password `<id>-pw`.
pub fn persons(ids: &[&str]) -> String {
    let mut yaml = String::from("persons:\n");
    for id in ids {
        yaml.push_str(&format!("  - {{ id: {id}, password: {id}-pw }}\n"));
    }
    yaml
}

/// A `relations:` section making each pair friends.
pub fn friends(pairs: &[(&str, &str)]) -> String {
    let mut yaml = String::from("relations:\n");
    for (a, b) in pairs {
        yaml.push_str(&format!("  - {{ friends: [{a}, {b}] }}\n"));
    }
    yaml
}

pub fn password(account: &str) -> String {
    format!("{account}-pw")
}

/// The conversation id of two persons.
pub fn conv(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("person:{x}|person:{y}")
}

/// A PUBLISH received.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Bytes,
    /// The payload as JSON (`Null` when it is not).
    pub json: Value,
    pub retain: bool,
    pub correlation: Option<Bytes>,
}

impl Msg {
    pub fn kind(&self) -> &str {
        self.json["type"].as_str().unwrap_or_default()
    }
}

/// What the broker sent a client.
#[derive(Debug, Clone)]
pub enum Ev {
    Publish(Msg),
    /// The reason code (always 0 for v3.1.1).
    PubAck(u8),
    SubAck(Vec<u8>),
    /// The reason codes (none for v3.1.1).
    UnsubAck(Vec<u8>),
    Disconnect(String),
    /// The connection ended (the event loop's error).
    Closed(String),
}

impl Ev {
    pub fn publish(&self) -> Option<&Msg> {
        match self {
            Ev::Publish(m) => Some(m),
            _ => None,
        }
    }
}

enum Client {
    V3(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A connected person's device.
pub struct Peer {
    pub client_id: String,
    pub account: String,
    client: Client,
    rx: mpsc::UnboundedReceiver<Ev>,
    /// Every event so far, and whether a `wait` has taken it.
    events: Vec<(Ev, bool)>,
    task: tokio::task::JoinHandle<()>,
    next_request: u32,
    /// The account is a thing: its inbox is `thing/T/inbox` (see [`Peer::thing`]).
    is_thing: bool,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn v5_puback(reason: &p5::PubAckReason) -> u8 {
    use p5::PubAckReason::*;
    match reason {
        Success => 0,
        NoMatchingSubscribers => 0x10,
        UnspecifiedError => 0x80,
        ImplementationSpecificError => 0x83,
        NotAuthorized => 0x87,
        TopicNameInvalid => 0x90,
        PacketIdentifierInUse => 0x91,
        QuotaExceeded => 0x97,
        PayloadFormatInvalid => 0x99,
    }
}

fn v5_suback(code: &p5::SubscribeReasonCode) -> u8 {
    use p5::SubscribeReasonCode::*;
    match code {
        Success(qos) => *qos as u8,
        Failure | Unspecified => 0x80,
        ImplementationSpecific => 0x83,
        NotAuthorized => 0x87,
        TopicFilterInvalid => 0x8F,
        PkidInUse => 0x91,
        QuotaExceeded => 0x97,
        SharedSubscriptionsNotSupported => 0x9E,
        SubscriptionIdNotSupported => 0xA1,
        WildcardSubscriptionsNotSupported => 0xA2,
    }
}

fn v5_unsuback(code: &p5::UnsubAckReason) -> u8 {
    use p5::UnsubAckReason::*;
    match code {
        Success => 0,
        NoSubscriptionExisted => 0x11,
        UnspecifiedError => 0x80,
        ImplementationSpecificError => 0x83,
        NotAuthorized => 0x87,
        TopicFilterInvalid => 0x8F,
        PacketIdentifierInUse => 0x91,
    }
}

fn msg(topic: &[u8], payload: Bytes, retain: bool, correlation: Option<Bytes>) -> Msg {
    Msg {
        topic: String::from_utf8_lossy(topic).into_owned(),
        json: serde_json::from_slice(&payload).unwrap_or(Value::Null),
        payload,
        retain,
        correlation,
    }
}

fn from_v3(packet: rumqttc::Packet) -> Option<Ev> {
    use rumqttc::Packet;
    Some(match packet {
        Packet::Publish(p) => Ev::Publish(msg(p.topic.as_bytes(), p.payload, p.retain, None)),
        Packet::PubAck(_) => Ev::PubAck(0),
        Packet::SubAck(s) => Ev::SubAck(
            s.return_codes
                .iter()
                .map(|c| match c {
                    rumqttc::SubscribeReasonCode::Success(q) => *q as u8,
                    rumqttc::SubscribeReasonCode::Failure => 0x80,
                })
                .collect(),
        ),
        Packet::UnsubAck(_) => Ev::UnsubAck(Vec::new()),
        Packet::Disconnect => Ev::Disconnect("disconnect".into()),
        _ => return None,
    })
}

fn from_v5(packet: p5::Packet) -> Option<Ev> {
    use p5::Packet;
    Some(match packet {
        Packet::Publish(p) => {
            let correlation = p.properties.and_then(|p| p.correlation_data);
            Ev::Publish(msg(&p.topic, p.payload, p.retain, correlation))
        }
        Packet::PubAck(a) => Ev::PubAck(v5_puback(&a.reason)),
        Packet::SubAck(s) => Ev::SubAck(s.return_codes.iter().map(v5_suback).collect()),
        Packet::UnsubAck(u) => Ev::UnsubAck(u.reasons.iter().map(v5_unsuback).collect()),
        Packet::Disconnect(d) => Ev::Disconnect(format!("{:?}", d.reason_code)),
        _ => return None,
    })
}

/// How a [`Peer`] connects.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub v5: bool,
    /// Seconds (v5: at least 5, rumqttc's floor).
    pub keep_alive: u64,
    /// Clean session (v3) / clean start with no session expiry (v5); else a persistent session.
    pub clean: bool,
    /// Leave incoming QoS 1 PUBLISHes unacknowledged.
    pub manual_acks: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            v5: false,
            keep_alive: 30,
            clean: true,
            manual_acks: false,
        }
    }
}

impl Peer {
    /// Connect as the account `client_id` names (clean session), and wait for the CONNACK.
    pub async fn connect(port: u16, client_id: &str, v5: bool, keep_alive: u64) -> Peer {
        let opts = Opts {
            v5,
            keep_alive,
            ..Opts::default()
        };
        Self::connect_with(port, client_id, opts).await
    }

    /// Connect with `opts` as the account `client_id` names, and wait for the CONNACK.
    pub async fn connect_with(port: u16, client_id: &str, o: Opts) -> Peer {
        let Opts {
            v5,
            keep_alive,
            clean,
            manual_acks,
        } = o;
        let account = client_id.split(':').next().unwrap_or_default().to_owned();
        let (tx, rx) = mpsc::unbounded_channel();
        let (connected_tx, connected_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let (client, task) = if v5 {
            let mut opts = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", port);
            opts.set_credentials(account.clone(), password(&account));
            opts.set_clean_start(clean);
            if !clean {
                opts.set_session_expiry_interval(Some(3600));
            }
            opts.set_manual_acks(manual_acks);
            opts.set_keep_alive(Duration::from_secs(keep_alive.max(5)));
            let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 512);
            let task = tokio::spawn(async move {
                let mut connected = Some(connected_tx);
                loop {
                    match el.poll().await {
                        Ok(rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(_))) => {
                            if let Some(c) = connected.take() {
                                let _ = c.send(Ok(()));
                            }
                        }
                        Ok(rumqttc::v5::Event::Incoming(packet)) => {
                            if let Some(ev) = from_v5(packet)
                                && tx.send(ev).is_err()
                            {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(err) => {
                            if let Some(c) = connected.take() {
                                let _ = c.send(Err(err.to_string()));
                            }
                            let _ = tx.send(Ev::Closed(err.to_string()));
                            return;
                        }
                    }
                }
            });
            (Client::V5(client), task)
        } else {
            let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
            opts.set_credentials(account.clone(), password(&account));
            opts.set_clean_session(clean);
            opts.set_manual_acks(manual_acks);
            opts.set_keep_alive(Duration::from_secs(keep_alive));
            opts.set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut el) = rumqttc::AsyncClient::new(opts, 512);
            let task = tokio::spawn(async move {
                let mut connected = Some(connected_tx);
                loop {
                    match el.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                            if let Some(c) = connected.take() {
                                let _ = c.send(Ok(()));
                            }
                        }
                        Ok(rumqttc::Event::Incoming(packet)) => {
                            if let Some(ev) = from_v3(packet)
                                && tx.send(ev).is_err()
                            {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(err) => {
                            if let Some(c) = connected.take() {
                                let _ = c.send(Err(err.to_string()));
                            }
                            let _ = tx.send(Ev::Closed(err.to_string()));
                            return;
                        }
                    }
                }
            });
            (Client::V3(client), task)
        };
        match tokio::time::timeout(WAIT, connected_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => panic!("{client_id} could not connect: {err}"),
            other => panic!("{client_id}: no CONNACK within the wait ({other:?})"),
        }
        Peer {
            client_id: client_id.to_owned(),
            account,
            client,
            rx,
            events: Vec::new(),
            task,
            next_request: 0,
            is_thing: false,
        }
    }

    pub fn is_v5(&self) -> bool {
        matches!(self.client, Client::V5(_))
    }

    pub fn inbox_topic(&self) -> String {
        if self.is_thing {
            format!("thing/{}/inbox", self.account)
        } else {
            format!("person/{}/inbox", self.account)
        }
    }

    /// This peer is a thing's device (its inbox is `thing/T/inbox`).
    pub fn thing(mut self) -> Self {
        self.is_thing = true;
        self
    }

    /// Take what has arrived so far without waiting.
    fn pull(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.events.push((ev, false));
        }
    }

    /// The first event not yet taken that `pred` accepts (waiting up to `WAIT`); it is taken.
    pub async fn wait(&mut self, what: &str, mut pred: impl FnMut(&Ev) -> bool) -> Ev {
        let deadline = Instant::now() + WAIT;
        let mut from = 0;
        loop {
            self.pull();
            for (ev, taken) in self.events[from..].iter_mut() {
                if !*taken && pred(ev) {
                    *taken = true;
                    return ev.clone();
                }
            }
            from = self.events.len();
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => self.events.push((ev, false)),
                Ok(None) => panic!("{}: event loop gone waiting for {what}", self.client_id),
                Err(_) => panic!(
                    "{}: no {what} within {WAIT:?}; received: {:#?}",
                    self.client_id,
                    self.events.iter().map(|(e, _)| e).collect::<Vec<_>>()
                ),
            }
        }
    }

    /// The next PUBLISH (not yet taken) that `pred` accepts.
    pub async fn wait_msg(&mut self, what: &str, mut pred: impl FnMut(&Msg) -> bool) -> Msg {
        match self
            .wait(what, |ev| ev.publish().is_some_and(&mut pred))
            .await
        {
            Ev::Publish(m) => m,
            _ => unreachable!(),
        }
    }

    /// The next notice of this `type` on the own inbox.
    pub async fn notice(&mut self, kind: &str) -> Value {
        self.notice_where(kind, |_| true).await
    }

    /// The next notice of this `type` on the own inbox that `pred` accepts.
    pub async fn notice_where(&mut self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let inbox = self.inbox_topic();
        self.wait_msg(&format!("notice {kind:?}"), |m| {
            m.topic == inbox && m.kind() == kind && pred(&m.json)
        })
        .await
        .json
    }

    /// The next `msg` envelope on `topic` that `pred` accepts.
    pub async fn message(&mut self, topic: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_msg(&format!("a message on {topic}"), |m| {
            m.topic == topic && m.kind() == "msg" && pred(&m.json)
        })
        .await
        .json
    }

    /// The next presence of `who` (on `person/<who>/status`) that says `presence`.
    pub async fn presence(&mut self, who: &str, presence: &str) -> Value {
        let topic = format!("person/{who}/status");
        self.wait_msg(&format!("{who} {presence}"), |m| {
            m.topic == topic && m.json["presence"] == presence
        })
        .await
        .json
    }

    /// The payload, as text, of the next PUBLISH on `topic`.
    pub async fn text_on(&mut self, topic: &str) -> String {
        let m = self
            .wait_msg(&format!("a message on {topic}"), |m| m.topic == topic)
            .await;
        String::from_utf8_lossy(&m.payload).into_owned()
    }

    /// Every PUBLISH received so far (taken or not), in arrival order.
    pub fn received(&mut self) -> Vec<Msg> {
        self.pull();
        self.events
            .iter()
            .filter_map(|(e, _)| e.publish().cloned())
            .collect()
    }

    /// The JSON of every PUBLISH received so far on `topic`, in arrival order.
    pub fn received_on(&mut self, topic: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.json)
            .collect()
    }

    /// PUBLISH at QoS 1 without waiting for the PUBACK.
    pub async fn send(&self, topic: &str, payload: impl Into<Bytes>) {
        self.send_with(topic, payload, p5::PublishProperties::default())
            .await
    }

    /// PUBLISH at QoS 1 with v5 properties (ignored by v3), without waiting.
    pub async fn send_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        props: p5::PublishProperties,
    ) {
        let payload: Bytes = payload.into();
        match &self.client {
            Client::V3(c) => c
                .publish_bytes(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .expect("queue a PUBLISH"),
            Client::V5(c) => c
                .publish_bytes_with_properties(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                    props,
                )
                .await
                .expect("queue a PUBLISH"),
        }
    }

    /// The next PUBACK's reason code.
    pub async fn puback(&mut self) -> u8 {
        match self.wait("a PUBACK", |e| matches!(e, Ev::PubAck(_))).await {
            Ev::PubAck(code) => code,
            _ => unreachable!(),
        }
    }

    /// PUBLISH at QoS 1 and return the PUBACK's reason code (one PUBLISH in flight at a time).
    pub async fn publish(&mut self, topic: &str, payload: impl Into<Bytes>) -> u8 {
        self.send(topic, payload).await;
        self.puback().await
    }

    /// As `publish`, with v5 properties.
    pub async fn publish_with(
        &mut self,
        topic: &str,
        payload: impl Into<Bytes>,
        props: p5::PublishProperties,
    ) -> u8 {
        self.send_with(topic, payload, props).await;
        self.puback().await
    }

    /// SUBSCRIBE one filter (QoS 1) and return the SUBACK's code.
    pub async fn subscribe(&mut self, filter: &str) -> u8 {
        self.subscribe_with(filter, Vec::new()).await
    }

    /// SUBSCRIBE with v5 user properties (ignored by v3).
    pub async fn subscribe_with(&mut self, filter: &str, user: Vec<(String, String)>) -> u8 {
        match &self.client {
            Client::V3(c) => c
                .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .await
                .expect("queue a SUBSCRIBE"),
            Client::V5(c) => c
                .subscribe_with_properties(
                    filter,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    p5::SubscribeProperties {
                        id: None,
                        user_properties: user,
                    },
                )
                .await
                .expect("queue a SUBSCRIBE"),
        }
        match self.wait("a SUBACK", |e| matches!(e, Ev::SubAck(_))).await {
            Ev::SubAck(codes) => codes[0],
            _ => unreachable!(),
        }
    }

    /// UNSUBSCRIBE one filter; the v5 reason code (`None` for v3, whose UNSUBACK has none).
    pub async fn unsubscribe(&mut self, filter: &str) -> Option<u8> {
        self.unsubscribe_with(filter, Vec::new()).await
    }

    /// UNSUBSCRIBE with v5 user properties (ignored by v3).
    pub async fn unsubscribe_with(
        &mut self,
        filter: &str,
        user: Vec<(String, String)>,
    ) -> Option<u8> {
        match &self.client {
            Client::V3(c) => c.unsubscribe(filter).await.expect("queue an UNSUBSCRIBE"),
            Client::V5(c) => c
                .unsubscribe_with_properties(
                    filter,
                    p5::UnsubscribeProperties {
                        user_properties: user,
                    },
                )
                .await
                .expect("queue an UNSUBSCRIBE"),
        }
        match self
            .wait("an UNSUBACK", |e| matches!(e, Ev::UnsubAck(_)))
            .await
        {
            Ev::UnsubAck(codes) => codes.first().copied(),
            _ => unreachable!(),
        }
    }

    /// A `$im/req` request answered on the inbox: `op` and its arguments; an `id` is added.
    /// Returns the `res` envelope.
    pub async fn request(&mut self, op: &str, args: Value) -> Value {
        self.request_on("$im/req", op, args).await
    }

    /// As `request`, on another request topic (`$things/req`).
    pub async fn request_on(&mut self, topic: &str, op: &str, args: Value) -> Value {
        self.next_request += 1;
        let id = format!("{}-{}", self.client_id, self.next_request);
        let mut request = json!({ "id": id, "op": op });
        if let Value::Object(args) = args {
            request.as_object_mut().unwrap().extend(args);
        }
        let code = self.publish(topic, request.to_string()).await;
        assert_eq!(
            code, 0,
            "{}: PUBACK of the request {request}",
            self.client_id
        );
        self.notice_where("res", |res| res["id"] == id).await
    }

    /// As `request`, insisting on `ok: true`.
    pub async fn ok(&mut self, op: &str, args: Value) -> Value {
        let res = self.request(op, args.clone()).await;
        assert_eq!(
            res["ok"], true,
            "{}: {op} {args} answered {res}",
            self.client_id
        );
        res
    }

    /// As `request`, insisting on a refusal; returns the error code.
    pub async fn refused(&mut self, op: &str, args: Value) -> String {
        let res = self.request(op, args.clone()).await;
        assert_eq!(
            res["ok"], false,
            "{}: {op} {args} answered {res}",
            self.client_id
        );
        res["error"]["code"].as_str().unwrap_or_default().to_owned()
    }

    /// Wait for the `sync` ... `sync.done` that follows CONNECT: the roster, the replayed
    /// messages, and `sync.done`.
    pub async fn sync(&mut self) -> (Value, Vec<Value>, Value) {
        let roster = self.notice("sync").await;
        let done = self.notice("sync.done").await;
        let inbox = self.inbox_topic();
        let all = self.received_on(&inbox);
        let start = all.iter().position(|v| v["type"] == "sync").unwrap();
        let end = all.iter().position(|v| v["type"] == "sync.done").unwrap();
        (roster, all[start + 1..end].to_vec(), done)
    }

    /// DISCONNECT and wait until the connection is closed.
    pub async fn disconnect(mut self) {
        match &self.client {
            Client::V3(c) => c.disconnect().await.expect("queue a DISCONNECT"),
            Client::V5(c) => c.disconnect().await.expect("queue a DISCONNECT"),
        }
        self.wait("the end of the connection", |e| matches!(e, Ev::Closed(_)))
            .await;
    }
}

/// v5 user properties.
pub fn user(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// v5 PUBLISH properties with these user properties.
pub fn with_user(pairs: &[(&str, &str)]) -> p5::PublishProperties {
    p5::PublishProperties {
        user_properties: user(pairs),
        ..Default::default()
    }
}

/// Make two connected persons friends at runtime (each SUBSCRIBEs to the other's status).
pub async fn make_friends(a: &mut Peer, b: &mut Peer) {
    assert!(a.subscribe(&format!("person/{}/status", b.account)).await <= 1);
    b.notice("friend.request").await;
    assert!(b.subscribe(&format!("person/{}/status", a.account)).await <= 1);
    a.notice("friend.added").await;
    b.notice("friend.added").await;
}
