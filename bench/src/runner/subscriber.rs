//! A subscriber of a messaging scenario: counts deliveries and their latency.

use super::*;

pub(super) struct SubOutcome {
    pub(super) received: u64,
    pub(super) last_ns: Option<u64>,
    pub(super) latency: Histogram,
    pub(super) error: Option<String>,
}

pub(super) struct Subscriber {
    pub(super) stream: TcpStream,
    pub(super) rb: ReadBuf,
    pub(super) world: World,
    pub(super) expected: u64,
    pub(super) epoch: Instant,
    pub(super) delivered: Arc<AtomicU64>,
    pub(super) stop: watch::Receiver<bool>,
}

impl Subscriber {
    pub(super) async fn run(mut self) -> SubOutcome {
        let mut out = SubOutcome {
            received: 0,
            last_ns: None,
            latency: Histogram::new(),
            error: None,
        };
        if let Err(e) = self.receive(&mut out).await {
            out.error = Some(format!("{e:#}"));
        }
        close(self.stream).await;
        out
    }

    pub(super) async fn receive(&mut self, out: &mut SubOutcome) -> anyhow::Result<()> {
        let mut acks: Vec<u8> = Vec::with_capacity(1024);
        // Bytes already buffered during the handshake are parsed before the first read.
        let mut pending = !self.rb.data().is_empty();
        // JSON (forwarded by rules): read on until stopped, so that a duplicate is counted.
        while out.received < self.expected || self.world == World::Json {
            if !pending {
                let n = tokio::select! {
                    biased;
                    _ = flagged(&mut self.stop) => return Ok(()),
                    r = self.stream.read(self.rb.spare()) => r?,
                };
                if n == 0 {
                    bail!("connection closed by the broker");
                }
                self.rb.filled(n);
            }
            pending = false;
            let now = ns_since(self.epoch);
            let mut batch = 0u64;
            loop {
                let (used, publish) = match packets::parse_frame(self.rb.data())? {
                    None => break,
                    Some((
                        Frame::Publish {
                            qos,
                            packet_id,
                            payload,
                            ..
                        },
                        used,
                    )) => {
                        // Plain MQTT: every PUBLISH counts. IM: only the bench's messages
                        // (presence and notices arrive on the same connection).
                        let counted = match self.world {
                            World::Mqtt => Some(packets::payload_stamp(payload)),
                            World::Im | World::Json => packets::im_stamp(payload).map(Some),
                        };
                        (used, Some((qos, packet_id, counted)))
                    }
                    Some((_, used)) => (used, None),
                };
                self.rb.consume(used);
                if let Some((qos, packet_id, counted)) = publish {
                    if let (1, Some(id)) = (qos, packet_id) {
                        acks.extend_from_slice(&packets::puback(id));
                    }
                    if let Some(stamp) = counted {
                        batch += 1;
                        if let Some(stamp) = stamp {
                            out.latency.record(now.saturating_sub(stamp));
                        }
                    }
                }
            }
            if batch > 0 {
                out.received += batch;
                out.last_ns = Some(now);
                self.delivered.fetch_add(batch, Ordering::Relaxed);
            }
            if !acks.is_empty() {
                tokio::select! {
                    biased;
                    _ = flagged(&mut self.stop) => return Ok(()),
                    r = self.stream.write_all(&acks) => r?,
                }
                acks.clear();
            }
        }
        Ok(())
    }
}
