//! Client helpers for the protocol tests: rumqttc v3.1.1 and v5 clients whose events are read
//! from a channel (a test waits for what it expects, bounded by `WAIT`), and a raw packet client
//! over a tokio `TcpStream` for what a client library will not do (resend a PUBLISH with the same
//! id, stay silent, leave deliveries unacknowledged). The raw client writes and reads packets
//! with rumqttc's own packet codecs, so a test states packets as structs, not bytes.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::common::{Daemon, WAIT};

/// How long a test watches for something that must *not* happen when no later message can
/// serve as a marker. Only a broken broker can fail such a check; a slow one cannot.
pub const QUIET: Duration = Duration::from_millis(700);

/// The events of one rumqttc event loop, polled by a task until its first error (no
/// reconnection). Events a wait skips are kept for later waits. Dropping it stops the task and
/// with it the TCP connection, without a DISCONNECT: an abnormal close.
pub struct Events<E> {
    rx: mpsc::UnboundedReceiver<Result<E, String>>,
    pending: VecDeque<E>,
    task: tokio::task::AbortHandle,
}

impl<E> Drop for Events<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<E: Debug> Events<E> {
    /// Wait for the first event `pick` accepts, within `wait`; `None` when none came in time.
    /// Panics if the connection ends first.
    pub async fn wait_for_within<T>(
        &mut self,
        wait: Duration,
        what: &str,
        mut pick: impl FnMut(&E) -> Option<T>,
    ) -> Option<T> {
        if let Some(i) = self.pending.iter().position(|e| pick(e).is_some()) {
            let event = self.pending.remove(i).expect("position is in range");
            return pick(&event);
        }
        let deadline = Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return None,
                Ok(None) => panic!("event loop gone while waiting for {what}"),
                Ok(Some(Err(err))) => {
                    panic!(
                        "connection ended while waiting for {what}: {err}; unread: {:?}",
                        self.pending
                    )
                }
                Ok(Some(Ok(event))) => match pick(&event) {
                    Some(found) => return Some(found),
                    None => self.pending.push_back(event),
                },
            }
        }
    }

    /// Wait for the first event `pick` accepts. Panics after `WAIT` or if the connection ends.
    pub async fn wait_for<T>(&mut self, what: &str, pick: impl FnMut(&E) -> Option<T>) -> T {
        match self.wait_for_within(WAIT, what, pick).await {
            Some(found) => found,
            None => panic!(
                "nothing like {what} within {WAIT:?}; unread: {:?}",
                self.pending
            ),
        }
    }

    /// Wait until the connection ends; the error it ended with. Unread events are kept.
    pub async fn closed(&mut self) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!("connection still open after {WAIT:?}"),
                Ok(None) => return "event loop gone".into(),
                Ok(Some(Err(err))) => return err,
                Ok(Some(Ok(event))) => self.pending.push_back(event),
            }
        }
    }

    /// Events received so far and not taken by a wait.
    pub fn unread(&self) -> &VecDeque<E> {
        &self.pending
    }
}

/// rumqttc's v3.1.1 client.
pub mod v3 {
    use super::*;
    pub use rumqttc::{
        AsyncClient, ConnAck, ConnectReturnCode, Event, LastWill, MqttOptions, Outgoing, Packet,
        Publish, QoS, SubscribeReasonCode,
    };

    /// Options for `id` on the daemon, keepalive 30 s (nothing in a test waits that long).
    pub fn options(daemon: &Daemon, id: &str) -> MqttOptions {
        let mut opts = MqttOptions::new(id, "127.0.0.1", daemon.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts
    }

    pub struct Client {
        pub client: AsyncClient,
        pub events: Events<Event>,
        pub connack: ConnAck,
    }

    /// Connect and wait for a successful CONNACK.
    pub async fn connect(opts: MqttOptions) -> Client {
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await.map_err(|e| e.to_string());
                let stop = event.is_err();
                if tx.send(event).is_err() || stop {
                    break;
                }
            }
        })
        .abort_handle();
        let mut events = Events {
            rx,
            pending: VecDeque::new(),
            task,
        };
        let connack = events
            .wait_for("CONNACK", |e| match e {
                Event::Incoming(Packet::ConnAck(c)) => Some(c.clone()),
                _ => None,
            })
            .await;
        assert_eq!(connack.code, ConnectReturnCode::Success);
        Client {
            client,
            events,
            connack,
        }
    }

    impl Client {
        /// SUBSCRIBE one filter; the SUBACK's return code.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
            self.client.subscribe(filter, qos).await.unwrap();
            self.events
                .wait_for("SUBACK", |e| match e {
                    Event::Incoming(Packet::SubAck(s)) => Some(s.return_codes[0]),
                    _ => None,
                })
                .await
        }

        /// PUBLISH and wait until the broker has taken it: its PUBACK (QoS 1) or PUBCOMP
        /// (QoS 2); for QoS 0, until it is written.
        pub async fn publish(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            self.client
                .publish(topic, qos, retain, payload)
                .await
                .unwrap();
            let pkid = self
                .events
                .wait_for("the PUBLISH going out", |e| match e {
                    Event::Outgoing(Outgoing::Publish(id)) => Some(*id),
                    _ => None,
                })
                .await;
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.events
                        .wait_for("PUBACK", |e| match e {
                            Event::Incoming(Packet::PubAck(a)) if a.pkid == pkid => Some(()),
                            _ => None,
                        })
                        .await
                }
                QoS::ExactlyOnce => {
                    self.events
                        .wait_for("PUBCOMP", |e| match e {
                            Event::Incoming(Packet::PubComp(a)) if a.pkid == pkid => Some(()),
                            _ => None,
                        })
                        .await
                }
            }
        }

        /// The next PUBLISH delivered to this client.
        pub async fn next_publish(&mut self) -> Publish {
            self.events
                .wait_for("a PUBLISH", |e| match e {
                    Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
                    _ => None,
                })
                .await
        }

        /// The next PUBLISH within `wait`, if any.
        pub async fn publish_within(&mut self, wait: Duration) -> Option<Publish> {
            self.events
                .wait_for_within(wait, "a PUBLISH", |e| match e {
                    Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
                    _ => None,
                })
                .await
        }

        /// DISCONNECT (a normal close) and wait until the broker has closed the connection.
        pub async fn disconnect(mut self) {
            self.client.disconnect().await.unwrap();
            self.events
                .wait_for("DISCONNECT going out", |e| {
                    matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
                })
                .await;
            self.events.closed().await;
        }
    }
}

/// rumqttc's v5 client.
pub mod v5 {
    use super::*;
    pub use rumqttc::Outgoing;
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Filter, LastWill, LastWillProperties, Packet, PubAckReason,
        Publish, PublishProperties, RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
    };
    pub use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    /// Options for `id` on the daemon, keepalive 30 s.
    pub fn options(daemon: &Daemon, id: &str) -> MqttOptions {
        let mut opts = MqttOptions::new(id, "127.0.0.1", daemon.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts
    }

    pub struct Client {
        pub client: AsyncClient,
        pub events: Events<Event>,
        pub connack: ConnAck,
    }

    /// Connect and wait for a successful CONNACK.
    pub async fn connect(opts: MqttOptions) -> Client {
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await.map_err(|e| e.to_string());
                let stop = event.is_err();
                if tx.send(event).is_err() || stop {
                    break;
                }
            }
        })
        .abort_handle();
        let mut events = Events {
            rx,
            pending: VecDeque::new(),
            task,
        };
        let connack = events
            .wait_for("CONNACK", |e| match e {
                Event::Incoming(Packet::ConnAck(c)) => Some(c.clone()),
                _ => None,
            })
            .await;
        assert_eq!(connack.code, ConnectReturnCode::Success);
        Client {
            client,
            events,
            connack,
        }
    }

    impl Client {
        /// SUBSCRIBE with full options; the SUBACK's reason codes.
        pub async fn subscribe_filter(
            &mut self,
            filter: Filter,
            props: Option<SubscribeProperties>,
        ) -> SubscribeReasonCode {
            match props {
                Some(props) => self
                    .client
                    .subscribe_many_with_properties([filter], props)
                    .await
                    .unwrap(),
                None => self.client.subscribe_many([filter]).await.unwrap(),
            }
            self.events
                .wait_for("SUBACK", |e| match e {
                    Event::Incoming(Packet::SubAck(s)) => Some(s.return_codes[0]),
                    _ => None,
                })
                .await
        }

        /// SUBSCRIBE one filter with default options; the SUBACK's reason code.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
            self.subscribe_filter(Filter::new(filter, qos), None).await
        }

        /// PUBLISH and wait until the broker has taken it (PUBACK, PUBCOMP, or written for
        /// QoS 0); the PUBACK's or PUBREC's reason code (0 for QoS 0).
        pub async fn publish_with(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
            props: Option<PublishProperties>,
        ) -> u8 {
            let payload: Vec<u8> = payload.into();
            match props {
                Some(props) => self
                    .client
                    .publish_with_properties(topic, qos, retain, payload, props)
                    .await
                    .unwrap(),
                None => self
                    .client
                    .publish(topic, qos, retain, payload)
                    .await
                    .unwrap(),
            }
            let pkid = self
                .events
                .wait_for("the PUBLISH going out", |e| match e {
                    Event::Outgoing(Outgoing::Publish(id)) => Some(*id),
                    _ => None,
                })
                .await;
            match qos {
                QoS::AtMostOnce => 0,
                QoS::AtLeastOnce => {
                    self.events
                        .wait_for("PUBACK", |e| match e {
                            Event::Incoming(Packet::PubAck(a)) if a.pkid == pkid => {
                                Some(puback_code(&a.reason))
                            }
                            _ => None,
                        })
                        .await
                }
                QoS::ExactlyOnce => {
                    let code = self
                        .events
                        .wait_for("PUBREC", |e| match e {
                            Event::Incoming(Packet::PubRec(r)) if r.pkid == pkid => Some(r.reason),
                            _ => None,
                        })
                        .await;
                    self.events
                        .wait_for("PUBCOMP", |e| match e {
                            Event::Incoming(Packet::PubComp(c)) if c.pkid == pkid => Some(()),
                            _ => None,
                        })
                        .await;
                    use rumqttc::v5::mqttbytes::v5::PubRecReason as R;
                    match code {
                        R::Success => 0x00,
                        R::NoMatchingSubscribers => 0x10,
                        other => panic!("PUBREC refused: {other:?}"),
                    }
                }
            }
        }

        /// PUBLISH without properties; see `publish_with`.
        pub async fn publish(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) -> u8 {
            self.publish_with(topic, qos, retain, payload, None).await
        }

        /// The next PUBLISH delivered to this client (its topic as sent: empty when the broker
        /// used a topic alias).
        pub async fn next_publish(&mut self) -> Publish {
            self.events
                .wait_for("a PUBLISH", |e| match e {
                    Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
                    _ => None,
                })
                .await
        }

        /// The next PUBLISH within `wait`, if any.
        pub async fn publish_within(&mut self, wait: Duration) -> Option<Publish> {
            self.events
                .wait_for_within(wait, "a PUBLISH", |e| match e {
                    Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
                    _ => None,
                })
                .await
        }

        /// DISCONNECT (reason 0) and wait until the broker has closed the connection.
        pub async fn disconnect(mut self) {
            self.client.disconnect().await.unwrap();
            self.events
                .wait_for("DISCONNECT going out", |e| {
                    matches!(e, Event::Outgoing(Outgoing::Disconnect)).then_some(())
                })
                .await;
            self.events.closed().await;
        }
    }

    pub fn puback_code(reason: &PubAckReason) -> u8 {
        match reason {
            PubAckReason::Success => 0x00,
            PubAckReason::NoMatchingSubscribers => 0x10,
            PubAckReason::UnspecifiedError => 0x80,
            PubAckReason::ImplementationSpecificError => 0x83,
            PubAckReason::NotAuthorized => 0x87,
            PubAckReason::TopicNameInvalid => 0x90,
            PubAckReason::PacketIdentifierInUse => 0x91,
            PubAckReason::QuotaExceeded => 0x97,
            PubAckReason::PayloadFormatInvalid => 0x99,
        }
    }

    /// The topic of a received PUBLISH as text.
    pub fn topic(p: &Publish) -> String {
        String::from_utf8(p.topic.to_vec()).expect("UTF-8 topic")
    }
}

/// A raw MQTT connection: exactly the packets a test builds go out, and every packet the broker
/// sends comes back decoded, in order.
pub mod raw {
    use super::*;

    /// rumqttc's v3.1.1 packets.
    pub use rumqttc::mqttbytes::v4 as p3;
    /// rumqttc's v5 packets.
    pub use rumqttc::v5::mqttbytes::v5 as p5;

    /// A packet type the raw client can write and read.
    pub trait Wire: Sized + Debug {
        /// The next whole packet in `buf`, `None` when more bytes are needed.
        fn decode(buf: &mut BytesMut) -> Result<Option<Self>, String>;
        fn encode(&self, buf: &mut BytesMut);
    }

    impl Wire for p3::Packet {
        fn decode(buf: &mut BytesMut) -> Result<Option<Self>, String> {
            match p3::Packet::read(buf, 1 << 24) {
                Ok(packet) => Ok(Some(packet)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(err) => Err(format!("{err:?}")),
            }
        }

        fn encode(&self, buf: &mut BytesMut) {
            self.write(buf, 1 << 24).expect("encode a v3.1.1 packet");
        }
    }

    impl Wire for p5::Packet {
        fn decode(buf: &mut BytesMut) -> Result<Option<Self>, String> {
            // rumqttc reads a DISCONNECT without a reason code as an error: it is reason 0.
            if buf.len() >= 2 && buf[0] == 0xE0 && buf[1] == 0 {
                let _ = buf.split_to(2);
                return Ok(Some(p5::Packet::Disconnect(p5::Disconnect::new(
                    p5::DisconnectReasonCode::NormalDisconnection,
                ))));
            }
            match p5::Packet::read(buf, Some(1 << 24)) {
                Ok(packet) => Ok(Some(packet)),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(err) => Err(format!("{err:?}")),
            }
        }

        fn encode(&self, buf: &mut BytesMut) {
            self.write(buf, None).expect("encode a v5 packet");
        }
    }

    pub struct Raw<P> {
        stream: TcpStream,
        buf: BytesMut,
        _packets: PhantomData<P>,
    }

    pub type Raw3 = Raw<p3::Packet>;
    pub type Raw5 = Raw<p5::Packet>;

    impl<P: Wire> Raw<P> {
        /// Open a TCP connection; nothing is sent yet.
        pub async fn open(addr: SocketAddr) -> Self {
            let stream = TcpStream::connect(addr)
                .await
                .expect("connect to the daemon");
            stream.set_nodelay(true).unwrap();
            Raw {
                stream,
                buf: BytesMut::new(),
                _packets: PhantomData,
            }
        }

        pub async fn send(&mut self, packet: P) {
            let mut out = BytesMut::new();
            packet.encode(&mut out);
            self.stream.write_all(&out).await.expect("write a packet");
        }

        /// The next packet within `wait`: `Ok(None)` when the broker closed the connection,
        /// `Err(())` when nothing came in time.
        pub async fn recv_within(&mut self, wait: Duration) -> Result<Option<P>, ()> {
            let deadline = Instant::now() + wait;
            loop {
                if let Some(packet) =
                    P::decode(&mut self.buf).unwrap_or_else(|e| panic!("undecodable: {e}"))
                {
                    return Ok(Some(packet));
                }
                match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                    Err(_) => return Err(()),
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                    Ok(Ok(_)) => {}
                }
            }
        }

        /// The next packet. Panics when the connection closes or after `WAIT`.
        pub async fn recv(&mut self) -> P {
            match self.recv_within(WAIT).await {
                Ok(Some(packet)) => packet,
                Ok(None) => panic!("the broker closed the connection"),
                Err(()) => panic!("no packet from the broker within {WAIT:?}"),
            }
        }

        /// Read until the broker closes the connection; what it sent before.
        pub async fn expect_closed(&mut self) -> Vec<P> {
            let mut seen = Vec::new();
            loop {
                match self.recv_within(WAIT).await {
                    Ok(Some(packet)) => seen.push(packet),
                    Ok(None) => return seen,
                    Err(()) => panic!("connection still open after {WAIT:?}; got {seen:?}"),
                }
            }
        }
    }

    impl Raw3 {
        /// SUBSCRIBE one filter with packet id `pkid`; the SUBACK.
        pub async fn subscribe(
            &mut self,
            pkid: u16,
            filter: &str,
            qos: rumqttc::QoS,
        ) -> p3::SubAck {
            let mut subscribe = p3::Subscribe::new(filter, qos);
            subscribe.pkid = pkid;
            self.send(p3::Packet::Subscribe(subscribe)).await;
            match self.recv().await {
                p3::Packet::SubAck(ack) if ack.pkid == pkid => ack,
                other => panic!("expected SUBACK {pkid}, got {other:?}"),
            }
        }
    }

    impl Raw5 {
        /// SUBSCRIBE with packet id `pkid`; the SUBACK.
        pub async fn subscribe(
            &mut self,
            pkid: u16,
            filters: Vec<p5::Filter>,
            props: Option<p5::SubscribeProperties>,
        ) -> p5::SubAck {
            let mut subscribe = p5::Subscribe::new_many(filters, props);
            subscribe.pkid = pkid;
            self.send(p5::Packet::Subscribe(subscribe)).await;
            match self.recv().await {
                p5::Packet::SubAck(ack) if ack.pkid == pkid => ack,
                other => panic!("expected SUBACK {pkid}, got {other:?}"),
            }
        }
    }

    /// A v3.1.1 CONNECT for `id` (clean session, keepalive 0 unless changed).
    pub fn connect3(id: &str) -> p3::Connect {
        let mut connect = p3::Connect::new(id);
        connect.keep_alive = 0;
        connect
    }

    /// Open, CONNECT, and return the CONNACK.
    pub async fn open3(addr: SocketAddr, connect: p3::Connect) -> (Raw3, p3::ConnAck) {
        let mut raw = Raw3::open(addr).await;
        raw.send(p3::Packet::Connect(connect)).await;
        match raw.recv().await {
            p3::Packet::ConnAck(ack) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A v5 CONNECT for `id` (clean start, keepalive 0, no properties).
    pub fn connect5(id: &str) -> p5::Connect {
        p5::Connect {
            keep_alive: 0,
            client_id: id.into(),
            clean_start: true,
            properties: None,
        }
    }

    /// Open, CONNECT (with an optional will), and return the CONNACK.
    pub async fn open5(
        addr: SocketAddr,
        connect: p5::Connect,
        will: Option<p5::LastWill>,
    ) -> (Raw5, p5::ConnAck) {
        let mut raw = Raw5::open(addr).await;
        raw.send(p5::Packet::Connect(connect, will, None)).await;
        match raw.recv().await {
            p5::Packet::ConnAck(ack) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A v3.1.1 PUBLISH with its id and DUP flag as given.
    pub fn publish3(
        topic: &str,
        qos: rumqttc::QoS,
        pkid: u16,
        dup: bool,
        payload: &[u8],
    ) -> p3::Packet {
        let mut publish = p3::Publish::new(topic, qos, payload.to_vec());
        publish.pkid = pkid;
        publish.dup = dup;
        p3::Packet::Publish(publish)
    }
}
