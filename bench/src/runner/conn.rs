//! The load generator's connections: opening them (from spread loopback sources), logging in,
//! waiting for acknowledgements, and closing them.

use super::*;

/// Source address for connection `i` of `total`: spread over 127.0.0.1..127.0.0.k when one
/// address would run out of ephemeral ports.
pub(super) fn source_for(broker: SocketAddr, i: usize, total: usize) -> Option<IpAddr> {
    if total <= CONNS_PER_SOURCE || !broker.is_ipv4() {
        return None;
    }
    let k = total.div_ceil(CONNS_PER_SOURCE).min(254);
    let host = 1 + (i % k) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)))
}

pub(super) async fn read_some(stream: &mut TcpStream, rb: &mut ReadBuf) -> anyhow::Result<()> {
    let n = stream.read(rb.spare()).await?;
    if n == 0 {
        bail!("connection closed by the broker");
    }
    rb.filled(n);
    Ok(())
}

/// Reads until CONNACK (or SUBACK with `want_suback`), failing on a refusal.
pub(super) async fn await_ack(
    stream: &mut TcpStream,
    rb: &mut ReadBuf,
    want_suback: bool,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    loop {
        while let Some((frame, used)) = packets::parse_frame(rb.data())? {
            let done = match frame {
                Frame::ConnAck { code, .. } if !want_suback => {
                    if code != 0 {
                        bail!("CONNACK refused with return code {code}");
                    }
                    true
                }
                Frame::SubAck { codes, .. } if want_suback => {
                    if codes.iter().any(|&c| c & 0x80 != 0) {
                        bail!("SUBACK refused the subscription");
                    }
                    true
                }
                _ => false,
            };
            rb.consume(used);
            if done {
                return Ok(());
            }
        }
        timeout_at(deadline, read_some(stream, rb))
            .await
            .map_err(|_| anyhow!("timed out waiting for the broker"))??;
    }
}

/// Reads (acknowledging every QoS 1 PUBLISH) until the `sync.done` envelope a person's device
/// gets after CONNACK. Returns the envelope's bytes and how many bench messages (stamped by
/// [`PublishTemplate::im`]) came before it.
pub(super) async fn await_sync_done(
    stream: &mut TcpStream,
    rb: &mut ReadBuf,
    deadline: tokio::time::Instant,
) -> anyhow::Result<(Vec<u8>, u64)> {
    let mut acks: Vec<u8> = Vec::new();
    let mut stamped = 0u64;
    loop {
        let mut done = None;
        while let Some((frame, used)) = packets::parse_frame(rb.data())? {
            if let Frame::Publish {
                qos,
                packet_id,
                payload,
                ..
            } = frame
            {
                if let (1, Some(id)) = (qos, packet_id) {
                    acks.extend_from_slice(&packets::puback(id));
                }
                if packets::im_stamp(payload).is_some() {
                    stamped += 1;
                } else if packets::find(payload, b"\"sync.done\"").is_some() {
                    done = Some(payload.to_vec());
                }
            }
            rb.consume(used);
            if done.is_some() {
                break;
            }
        }
        if !acks.is_empty() {
            timeout_at(deadline, stream.write_all(&acks))
                .await
                .map_err(|_| anyhow!("timed out acknowledging the sync"))??;
            acks.clear();
        }
        if let Some(envelope) = done {
            return Ok((envelope, stamped));
        }
        timeout_at(deadline, read_some(stream, rb))
            .await
            .map_err(|_| anyhow!("timed out waiting for sync.done"))??;
    }
}

/// Connects, sends CONNECT and waits for a successful CONNACK.
pub(super) async fn open(
    cfg: &RunConfig,
    client_id: &str,
    source: Option<IpAddr>,
    buf: usize,
    deadline: tokio::time::Instant,
) -> anyhow::Result<(TcpStream, ReadBuf)> {
    open_as(cfg, client_id, None, source, buf, deadline).await
}

/// [`open`] as a person of the IM world when `account` is given: logs in with username and
/// client id = the account, then waits for the `sync.done` that follows CONNACK.
pub(super) async fn open_as(
    cfg: &RunConfig,
    client_id: &str,
    account: Option<&str>,
    source: Option<IpAddr>,
    buf: usize,
    deadline: tokio::time::Instant,
) -> anyhow::Result<(TcpStream, ReadBuf)> {
    let (mut stream, mut rb) = login(cfg, client_id, account, source, buf, deadline).await?;
    if account.is_some() {
        await_sync_done(&mut stream, &mut rb, deadline).await?;
    }
    Ok((stream, rb))
}

/// Connects, sends CONNECT (with the account's credentials, if any) and waits for a
/// successful CONNACK.
pub(super) async fn login(
    cfg: &RunConfig,
    client_id: &str,
    account: Option<&str>,
    source: Option<IpAddr>,
    buf: usize,
    deadline: tokio::time::Instant,
) -> anyhow::Result<(TcpStream, ReadBuf)> {
    let connect = async {
        match source {
            None => TcpStream::connect(cfg.broker).await,
            Some(ip) => {
                let sock = if ip.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                sock.set_reuseaddr(true)?;
                sock.bind(SocketAddr::new(ip, 0))?;
                sock.connect(cfg.broker).await
            }
        }
    };
    let mut stream = timeout_at(deadline, connect)
        .await
        .map_err(|_| anyhow!("timed out connecting to {}", cfg.broker))?
        .with_context(|| format!("cannot connect to {}", cfg.broker))?;
    stream.set_nodelay(true)?;
    let login = account.map(|a| (a, IM_PASSWORD));
    let hello = packets::connect_as(client_id, cfg.keep_alive, login)?;
    timeout_at(deadline, stream.write_all(&hello))
        .await
        .map_err(|_| anyhow!("timed out sending CONNECT"))??;
    let mut rb = ReadBuf::new(buf);
    await_ack(&mut stream, &mut rb, false, deadline).await?;
    Ok((stream, rb))
}

/// Runs `f(0..n)` with at most `concurrency` calls in flight, on that many worker tasks,
/// and returns the outputs in index order. The first error aborts the rest.
pub(super) async fn parallel<T, F, Fut>(
    n: usize,
    concurrency: usize,
    f: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send,
{
    let workers = concurrency.clamp(1, n.max(1));
    let f = Arc::new(f);
    let mut set = JoinSet::new();
    for w in 0..workers {
        let f = Arc::clone(&f);
        set.spawn(async move {
            let mut out = Vec::with_capacity(n / workers + 1);
            let mut i = w;
            while i < n {
                let v = f(i).await.with_context(|| format!("connection {i}"))?;
                out.push((i, v));
                i += workers;
            }
            anyhow::Ok(out)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        all.extend(joined??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, v)| v).collect())
}

/// Reads and discards until the broker closes the connection (or an error).
pub(super) async fn until_closed(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// Best-effort DISCONNECT, then a short wait for the broker to close first, so that the
/// TIME_WAIT state lands on its side and not on this side's ephemeral ports.
pub(super) async fn close(mut stream: TcpStream) {
    let sent = timeout(
        Duration::from_millis(200),
        stream.write_all(&packets::disconnect()),
    )
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = timeout(Duration::from_millis(500), until_closed(&mut stream)).await;
    }
}

/// Waits until the watch value is `true` (or its sender is gone).
pub(super) async fn flagged(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
