//! The engine of the load generator: opens connections, drives publishers and subscribers
//! over raw TCP, and measures deliveries, latency, setup rate and broker memory.
//!
//! Publishers and subscribers get one task each; idle connections are opened by a small
//! pool of worker tasks and then held together in one vector. Every loop is bounded by a
//! message count and by the scenario deadline.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout, timeout_at};

use super::packets::{self, Frame, PublishTemplate, ReadBuf};
use super::scenario::{
    IM_PASSWORD, LoadShape, PublisherSpec, Scenario, SubscriberSpec, Topology, World,
};
use super::stats::Histogram;

mod conn;
mod process;
mod publisher;
pub mod rules;
mod subscriber;

use conn::*;
use process::check_fd_limit;
pub use process::{parse_cpu_secs, parse_vm_rss, read_cpu_secs, read_rss};
use publisher::*;
use subscriber::*;

/// At most this many PUBLISH packets go into one write.
const BATCH: u64 = 64;
/// Read buffer of an active connection (grows if a packet does not fit).
const ACTIVE_BUF: usize = 16 * 1024;
/// Connections above this count are spread over several loopback source addresses.
const CONNS_PER_SOURCE: usize = 20_000;

/// Settings shared by all scenarios of one run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub broker: SocketAddr,
    pub payload_size: usize,
    /// Upper bound for one scenario, setup included.
    pub timeout: Duration,
    /// How long deliveries may stall after the publishers finished before the rest counts
    /// as lost.
    pub drain: Duration,
    pub broker_pid: Option<u32>,
    /// Connection handshakes in flight at once.
    pub connect_concurrency: usize,
    /// Unacknowledged QoS 1 PUBLISH packets per publisher.
    pub window: u64,
    pub keep_alive: u16,
    /// Unique per run, used in client ids and topics.
    pub run_id: String,
    /// Wait after the last idle connection before reading the broker's memory.
    pub settle: Duration,
}

/// Raw figures of one scenario.
#[derive(Debug, Default)]
pub struct Measured {
    pub connections: usize,
    pub published: u64,
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries owed for what the broker accepted (sustained load: the expected ones).
    pub owed: u64,
    /// First publish to last delivery.
    pub seconds: f64,
    pub latency: Histogram,
    /// Time to get every idle connection's CONNACK.
    pub setup_seconds: Option<f64>,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub timed_out: bool,
    /// Errors of single connections, the scenario still produced figures.
    pub errors: Vec<String>,
    /// CPU seconds of a daemon the scenario started itself, during its load.
    pub broker_cpu_secs: Option<f64>,
    /// Events the rules engine of such a daemon routed (its status), when it has one.
    pub rule_events: Option<u64>,
    /// The reloads of `rules-reload`.
    pub reloads: Vec<rules::ReloadTiming>,
    /// The first publish and the last delivery (ns since the scenario's start), as the
    /// commanders of the things scenarios report them.
    pub first_ns: Option<u64>,
    pub last_ns: Option<u64>,
}

impl Measured {
    /// Adds a finished publisher's figures; `first_ns` tracks the earliest publish.
    fn absorb_publisher(&mut self, o: PubOutcome, first_ns: &mut Option<u64>) {
        self.published += o.sent;
        self.owed += o.owed;
        if let Some(f) = o.first_ns {
            *first_ns = Some(first_ns.map_or(f, |x| x.min(f)));
        }
        if let Some(e) = o.error {
            self.errors.push(format!("publisher: {e}"));
        }
    }
}

/// Nanoseconds since `epoch`.
fn ns_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Resolves `addr` and refuses anything that is not a loopback address.
pub async fn resolve_loopback(addr: &str) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve broker address {addr:?}"))?
        .collect();
    let Some(first) = addrs.first().copied() else {
        bail!("broker address {addr:?} resolves to nothing");
    };
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        bail!(
            "broker address {addr:?} resolves to {bad}, which is not loopback; the load generator only targets this machine"
        );
    }
    Ok(first)
}

/// Opens and closes one connection to check that an MQTT broker answers.
pub async fn probe(cfg: &RunConfig) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let id = format!("mqb-{}-probe", cfg.run_id);
    let (stream, _) = open(cfg, &id, None, 64, deadline).await?;
    close(stream).await;
    Ok(())
}

fn client_id(cfg: &RunConfig, role: &str, scenario: &str, i: usize) -> String {
    format!("mqb-{}-{scenario}-{role}{i}", cfg.run_id)
}

/// Runs a scenario with publishers and subscribers.
pub async fn run_messaging(
    cfg: &Arc<RunConfig>,
    sc: &Scenario,
    topo: Topology,
) -> anyhow::Result<Measured> {
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    let epoch = Instant::now();
    let qos = sc.qos;
    let mut m = Measured {
        connections: topo.publishers.len() + topo.subscribers.len(),
        expected: topo.expected_total(),
        ..Measured::default()
    };
    check_fd_limit(m.connections)?;

    let subs: Arc<Vec<SubscriberSpec>> = Arc::new(topo.subscribers);
    let pubs: Arc<Vec<PublisherSpec>> = Arc::new(topo.publishers);

    // Subscribers first, each with its SUBACK, so no message can miss them.
    let sub_conns = {
        let cfg = Arc::clone(cfg);
        let subs = Arc::clone(&subs);
        let name = sc.name.clone();
        parallel(subs.len(), cfg.connect_concurrency, move |i| {
            let cfg = Arc::clone(&cfg);
            let subs = Arc::clone(&subs);
            let spec = subs[i].clone();
            let id = spec
                .account
                .clone()
                .unwrap_or_else(|| client_id(&cfg, "s", &name, i));
            async move {
                let account = spec.account.as_deref();
                let (mut stream, mut rb) =
                    open_as(&cfg, &id, account, None, ACTIVE_BUF, deadline).await?;
                if let Some(filter) = &spec.filter {
                    let sub = packets::subscribe(1, filter, qos)?;
                    timeout_at(deadline, stream.write_all(&sub))
                        .await
                        .map_err(|_| anyhow!("timed out sending SUBSCRIBE"))??;
                    await_ack(&mut stream, &mut rb, true, deadline).await?;
                }
                Ok((stream, rb))
            }
        })
        .await
        .context("setting up subscribers")?
    };
    let pub_conns = {
        let cfg = Arc::clone(cfg);
        let pubs = Arc::clone(&pubs);
        let name = sc.name.clone();
        parallel(pubs.len(), cfg.connect_concurrency, move |i| {
            let cfg = Arc::clone(&cfg);
            let account = pubs[i].account.clone();
            let id = account
                .clone()
                .unwrap_or_else(|| client_id(&cfg, "p", &name, i));
            async move { open_as(&cfg, &id, account.as_deref(), None, 4096, deadline).await }
        })
        .await
        .context("setting up publishers")?
    };

    let delivered = Arc::new(AtomicU64::new(0));
    let (start_tx, start_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut sub_tasks = JoinSet::new();
    for ((stream, rb), spec) in sub_conns.into_iter().zip(subs.iter()) {
        let s = Subscriber {
            stream,
            rb,
            world: sc.world(),
            expected: spec.expected,
            epoch,
            delivered: Arc::clone(&delivered),
            stop: stop_rx.clone(),
        };
        sub_tasks.spawn(s.run());
    }
    let sustain = match sc.load {
        LoadShape::Sustain { seconds } => Some(Duration::from_secs_f64(seconds)),
        _ => None,
    };
    let per_pub_rate = match sc.load {
        LoadShape::Saturate { .. } | LoadShape::Sustain { .. } => None,
        LoadShape::Rate { per_sec, .. } => {
            Some((per_sec as f64 / pubs.len().max(1) as f64).max(1e-3))
        }
    };
    let mut pub_tasks = JoinSet::new();
    for ((stream, rb), spec) in pub_conns.into_iter().zip(pubs.iter()) {
        let p = Publisher {
            stream,
            rb,
            template: match sc.world() {
                World::Mqtt => PublishTemplate::new(&spec.topic, qos, cfg.payload_size)?,
                World::Im | World::Json => PublishTemplate::im(&spec.topic, qos, cfg.payload_size)?,
            },
            qos,
            messages: spec.messages,
            rate: per_pub_rate,
            sustain,
            fanout: subs
                .iter()
                .filter(|s| {
                    s.filter
                        .as_deref()
                        .is_some_and(|f| super::scenario::topic_matches(f, &spec.topic))
                })
                .count() as u64,
            window: cfg.window.max(1),
            epoch,
            start: start_rx.clone(),
            stop: stop_rx.clone(),
            owed: Vec::new(),
        };
        pub_tasks.spawn(p.run());
    }

    let _ = start_tx.send(true);
    let mut first_ns: Option<u64> = None;
    loop {
        match timeout_at(deadline, pub_tasks.join_next()).await {
            Err(_) => {
                m.timed_out = true;
                break;
            }
            Ok(None) => break,
            Ok(Some(joined)) => {
                m.absorb_publisher(joined.context("publisher task failed")?, &mut first_ns);
            }
        }
    }

    if sustain.is_some() {
        // What must arrive is what the broker accepted.
        m.expected = m.owed;
    }
    // Wait for the deliveries while they keep coming.
    let mut seen = delivered.load(Ordering::Relaxed);
    let mut progress_at = tokio::time::Instant::now();
    while !m.timed_out && seen < m.expected && !sub_tasks.is_empty() {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            m.timed_out = true;
            break;
        }
        if now.duration_since(progress_at) >= cfg.drain {
            break;
        }
        sleep(Duration::from_millis(10)).await;
        let d = delivered.load(Ordering::Relaxed);
        if d != seen {
            seen = d;
            progress_at = tokio::time::Instant::now();
        }
    }
    if sc.world() == World::Json && !m.timed_out {
        // What a rule forwards twice would come now: counted, as more than expected.
        sleep(cfg.drain / 2).await;
    }
    let _ = stop_tx.send(true);

    let mut last_ns: Option<u64> = None;
    while let Some(joined) = pub_tasks.join_next().await {
        m.absorb_publisher(joined.context("publisher task failed")?, &mut first_ns);
    }
    while let Some(joined) = sub_tasks.join_next().await {
        let o = joined.context("subscriber task failed")?;
        m.delivered += o.received;
        m.latency.merge(&o.latency);
        if let Some(l) = o.last_ns {
            last_ns = Some(last_ns.map_or(l, |x| x.max(l)));
        }
        if let Some(e) = o.error {
            m.errors.push(format!("subscriber: {e}"));
        }
    }
    if let (Some(f), Some(l)) = (first_ns, last_ns) {
        m.seconds = l.saturating_sub(f) as f64 / 1e9;
    }
    Ok(m)
}

/// Runs `im-reconnect`: the receiver connects once (so the broker knows how far it got) and
/// leaves; its friend sends it the scenario's messages (QoS 1, each acknowledged once durable);
/// the receiver reconnects. The figure is the time from its TCP connect to `sync.done`, with
/// every missed message read and acknowledged on the way.
pub async fn run_im_reconnect(cfg: &Arc<RunConfig>, sc: &Scenario) -> anyhow::Result<Measured> {
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    let epoch = Instant::now();
    let (sender, receiver) = super::scenario::im_reconnect_pair();
    let missed = sc.load.total_messages();
    let mut m = Measured {
        connections: 2,
        expected: missed,
        ..Measured::default()
    };
    // 1. The receiver is up to date and goes offline.
    let (stream, _) = open_as(cfg, &receiver, Some(&receiver), None, 4096, deadline)
        .await
        .context("first connect of the receiver")?;
    close(stream).await;
    // 2. Its friend sends while it is away.
    let (stream, rb) = open_as(cfg, &sender, Some(&sender), None, 4096, deadline)
        .await
        .context("connecting the sender")?;
    let (start_tx, start_rx) = watch::channel(true);
    let (_stop_tx, stop_rx) = watch::channel(false);
    let publisher = Publisher {
        stream,
        rb,
        template: PublishTemplate::im(&format!("person/{receiver}/inbox"), 1, cfg.payload_size)?,
        qos: 1,
        messages: missed,
        rate: None,
        sustain: None,
        fanout: 1,
        window: cfg.window.max(1),
        epoch,
        start: start_rx,
        stop: stop_rx,
        owed: Vec::new(),
    };
    let sent = timeout_at(deadline, publisher.run())
        .await
        .map_err(|_| anyhow!("timed out sending the messages to be missed"))?;
    drop(start_tx);
    m.published = sent.sent;
    if let Some(e) = sent.error {
        bail!("sender: {e}");
    }
    // 3. The receiver comes back: time to `sync.done`, every missed message on the way.
    let started = Instant::now();
    let (mut stream, mut rb) = login(cfg, &receiver, Some(&receiver), None, ACTIVE_BUF, deadline)
        .await
        .context("reconnecting the receiver")?;
    let (done, got) = await_sync_done(&mut stream, &mut rb, deadline)
        .await
        .context("reading the missed messages")?;
    m.seconds = started.elapsed().as_secs_f64();
    m.delivered = got;
    if packets::find(&done, b"\"after\"").is_some() {
        m.errors.push(format!(
            "sync.done left messages to page with `history` ({}); raise im.sync_max_per_conv",
            String::from_utf8_lossy(&done)
        ));
    }
    close(stream).await;
    Ok(m)
}

/// Runs a scenario of idle connections: setup rate and broker memory per connection.
pub async fn run_idle(cfg: &Arc<RunConfig>, sc: &Scenario, n: usize) -> anyhow::Result<Measured> {
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    check_fd_limit(n)?;
    let mut m = Measured {
        connections: n,
        ..Measured::default()
    };
    if let Some(pid) = cfg.broker_pid {
        m.rss_before = Some(read_rss(pid)?);
    }
    let broker = cfg.broker;
    let started = Instant::now();
    let conns = {
        let cfg = Arc::clone(cfg);
        let name = sc.name.clone();
        parallel(n, cfg.connect_concurrency, move |i| {
            let cfg = Arc::clone(&cfg);
            let id = client_id(&cfg, "c", &name, i);
            async move {
                let (stream, _) = open(&cfg, &id, source_for(broker, i, n), 64, deadline).await?;
                Ok(stream)
            }
        })
        .await
        .with_context(|| format!("opening {n} idle connections"))?
    };
    m.setup_seconds = Some(started.elapsed().as_secs_f64());
    if let Some(pid) = cfg.broker_pid {
        sleep(cfg.settle).await;
        m.rss_after = Some(read_rss(pid)?);
    }
    let bye = packets::disconnect();
    for s in &conns {
        let _ = s.try_write(&bye);
    }
    let closing = async {
        for mut s in conns {
            until_closed(&mut s).await;
        }
    };
    let _ = timeout(Duration::from_secs(3), closing).await;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_parsing() {
        let status = "Name:\tmosquitto\nVmPeak:\t   20000 kB\nVmRSS:\t    7340 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(7340 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert_eq!(parse_vm_rss("VmRSS: lots kB\n"), None);
    }

    #[test]
    fn cpu_time_parsing() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(parse_cpu_secs(stat), Some(3.25));
        assert_eq!(parse_cpu_secs("1234 (x) S 1"), None);
        assert!(read_cpu_secs(None).is_some());
    }

    #[test]
    fn own_rss_is_readable() {
        let rss = read_rss(std::process::id()).unwrap();
        assert!(rss > 0);
    }

    #[test]
    fn sources_spread_only_when_needed() {
        let b: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        assert_eq!(source_for(b, 5, 10_000), None);
        let ips: Vec<_> = (0..4).map(|i| source_for(b, i, 50_000)).collect();
        let ip = |h| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, h)));
        assert_eq!(ips, vec![ip(1), ip(2), ip(3), ip(1)]);
        let v6: SocketAddr = "[::1]:1883".parse().unwrap();
        assert_eq!(source_for(v6, 1, 50_000), None);
    }

    /// A stand-in broker that answers each CONNECT with a CONNACK and records the peer.
    async fn fake_broker() -> (SocketAddr, tokio::sync::mpsc::Receiver<SocketAddr>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((mut s, peer)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    let mut have = 0;
                    loop {
                        let n = s.read(&mut buf[have..]).await.unwrap();
                        assert!(n > 0);
                        have += n;
                        if let Some((_, used)) = packets::parse_frame(&buf[..have]).unwrap() {
                            assert_eq!(buf[0], packets::CONNECT);
                            assert_eq!(used, have);
                            break;
                        }
                    }
                    s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
                    let _ = tx.try_send(peer);
                    // Close when the client sends DISCONNECT.
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        (addr, rx)
    }

    fn test_config(broker: SocketAddr) -> RunConfig {
        RunConfig {
            broker,
            payload_size: 64,
            timeout: Duration::from_secs(5),
            drain: Duration::from_millis(100),
            broker_pid: None,
            connect_concurrency: 4,
            window: 8,
            keep_alive: 60,
            run_id: "test".into(),
            settle: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn open_binds_the_given_loopback_source() {
        let (addr, mut peers) = fake_broker().await;
        let cfg = test_config(addr);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
        let (stream, _) = open(&cfg, "c1", Some(src), 64, deadline).await.unwrap();
        assert_eq!(peers.recv().await.unwrap().ip(), src);
        close(stream).await;
        probe(&cfg).await.unwrap();
        assert_eq!(
            peers.recv().await.unwrap().ip(),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
    }

    #[tokio::test]
    async fn idle_scenario_against_stand_in() {
        let (addr, _peers) = fake_broker().await;
        let cfg = Arc::new(test_config(addr));
        let sc = Scenario {
            name: "conns".into(),
            group: "conns",
            plan: super::super::scenario::ConnectionPlan::Idle { connections: 20 },
            load: LoadShape::Saturate { messages: 0 },
            qos: 0,
        };
        let m = run_idle(&cfg, &sc, 20).await.unwrap();
        assert_eq!(m.connections, 20);
        assert!(m.setup_seconds.unwrap() > 0.0);
        assert_eq!(m.rss_before, None);
    }

    type Routes =
        Arc<std::sync::Mutex<Vec<(String, u8, tokio::sync::mpsc::UnboundedSender<Vec<u8>>)>>>;

    /// Decodes the filter and QoS of a single-filter SUBSCRIBE packet.
    fn subscribe_filter(packet: &[u8]) -> (String, u8) {
        let (_, vlen) = packets::decode_remaining_length(&packet[1..])
            .unwrap()
            .unwrap();
        let body = &packet[1 + vlen..];
        let flen = usize::from(u16::from_be_bytes([body[2], body[3]]));
        let filter = String::from_utf8(body[4..4 + flen].to_vec()).unwrap();
        (filter, body[4 + flen])
    }

    async fn stand_in_connection(s: TcpStream, routes: Routes) {
        let (mut rd, mut wr) = s.into_split();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            // An empty buffer asks to close the connection.
            while let Some(b) = rx.recv().await {
                if b.is_empty() || wr.write_all(&b).await.is_err() {
                    break;
                }
            }
        });
        let mut rb = ReadBuf::new(4096);
        loop {
            match rd.read(rb.spare()).await {
                Ok(0) | Err(_) => return,
                Ok(n) => rb.filled(n),
            }
            while let Some((frame, used)) = packets::parse_frame(rb.data()).unwrap() {
                match frame {
                    Frame::Other { first_byte: 0x10 } => {
                        let _ = tx.send(vec![0x20, 0x02, 0x00, 0x00]);
                    }
                    Frame::Other { first_byte: 0x82 } => {
                        let (filter, qos) = subscribe_filter(&rb.data()[..used]);
                        let pid = [rb.data()[2], rb.data()[3]];
                        routes.lock().unwrap().push((filter, qos, tx.clone()));
                        let _ = tx.send(vec![0x90, 0x03, pid[0], pid[1], qos]);
                    }
                    Frame::Other { first_byte: 0xE0 } => {
                        let _ = tx.send(Vec::new());
                        return;
                    }
                    Frame::Publish {
                        qos,
                        topic,
                        packet_id,
                        payload,
                        ..
                    } => {
                        let topic = std::str::from_utf8(topic).unwrap();
                        for (filter, sub_qos, out) in routes.lock().unwrap().iter() {
                            if super::super::scenario::topic_matches(filter, topic) {
                                let q = qos.min(*sub_qos);
                                let t = PublishTemplate::new(topic, q, payload.len()).unwrap();
                                let mut bytes = Vec::new();
                                t.append(&mut bytes, 1, 0);
                                let p = bytes.len() - payload.len();
                                bytes[p..].copy_from_slice(payload);
                                let _ = out.send(bytes);
                            }
                        }
                        if let Some(id) = packet_id {
                            let _ = tx.send(packets::puback(id).to_vec());
                        }
                    }
                    _ => {}
                }
                rb.consume(used);
            }
        }
    }

    /// A stand-in broker that routes PUBLISH packets to matching subscriptions.
    async fn routing_broker() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes: Routes = Arc::default();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(stand_in_connection(s, Arc::clone(&routes)));
            }
        });
        addr
    }

    #[tokio::test]
    async fn messaging_scenarios_against_stand_in() {
        use super::super::scenario::ConnectionPlan;
        let addr = routing_broker().await;
        let cfg = Arc::new(test_config(addr));
        let plans = [
            ConnectionPlan::Pairs { n: 3 },
            ConnectionPlan::FanOut { subscribers: 4 },
            ConnectionPlan::FanIn { publishers: 4 },
        ];
        let loads = [
            LoadShape::Saturate { messages: 300 },
            LoadShape::Rate {
                per_sec: 500,
                seconds: 0.2,
            },
        ];
        for plan in &plans {
            for load in loads {
                for qos in [0, 1] {
                    let sc = Scenario {
                        name: "t".into(),
                        group: "t",
                        plan: plan.clone(),
                        load,
                        qos,
                    };
                    let prefix = format!("t/{plan:?}/{qos}/{}", load.describe());
                    let topo = sc.topology(&prefix);
                    let m = run_messaging(&cfg, &sc, topo).await.unwrap();
                    let what = format!("{plan:?} {load:?} qos {qos}");
                    assert!(m.errors.is_empty(), "{what}: {:?}", m.errors);
                    assert!(!m.timed_out, "{what}");
                    assert_eq!(m.published, load.total_messages(), "{what}");
                    assert_eq!(m.delivered, m.expected, "{what}");
                    assert_eq!(m.latency.count(), m.delivered, "{what}");
                    assert!(m.seconds > 0.0, "{what}");
                    if matches!(load, LoadShape::Rate { .. }) {
                        assert!(m.seconds >= 0.15, "{what}: {}", m.seconds);
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn refused_connack_is_an_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            s.write_all(&[0x20, 0x02, 0x00, 0x05]).await.unwrap();
        });
        let err = probe(&test_config(addr)).await.unwrap_err();
        assert!(format!("{err:#}").contains("return code 5"), "{err:#}");
    }

    #[tokio::test]
    async fn only_loopback_is_accepted() {
        assert!(resolve_loopback("127.0.0.1:1883").await.is_ok());
        assert!(resolve_loopback("[::1]:1883").await.is_ok());
        assert!(resolve_loopback("10.0.0.1:1883").await.is_err());
        assert!(resolve_loopback("192.168.1.1:1883").await.is_err());
    }
}
