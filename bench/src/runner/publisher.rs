//! A publisher of a messaging scenario: sends at its load shape, in batches, and counts acknowledgements.

use super::*;

pub(super) struct PubOutcome {
    pub(super) sent: u64,
    /// PUBACKs received.
    pub(super) acked: u64,
    /// Deliveries owed for what the broker accepted: each message acknowledged (QoS 1) or
    /// written (QoS 0), once per matching subscriber.
    pub(super) owed: u64,
    pub(super) first_ns: Option<u64>,
    pub(super) error: Option<String>,
}

pub(super) struct Publisher {
    pub(super) stream: TcpStream,
    pub(super) rb: ReadBuf,
    pub(super) template: PublishTemplate,
    pub(super) qos: u8,
    pub(super) messages: u64,
    /// Messages per second for this publisher, `None` to saturate.
    pub(super) rate: Option<f64>,
    /// Sustained load: stop sending after this long (and wait for the acknowledgements).
    pub(super) sustain: Option<Duration>,
    /// Subscribers that match this publisher's topic.
    pub(super) fanout: u64,
    pub(super) window: u64,
    pub(super) epoch: Instant,
    pub(super) start: watch::Receiver<bool>,
    pub(super) stop: watch::Receiver<bool>,
    /// PUBACKs owed for QoS 1 PUBLISHes the broker sent this client (IM presence, notices).
    pub(super) owed: Vec<u8>,
}

impl Publisher {
    pub(super) async fn run(mut self) -> PubOutcome {
        let mut out = PubOutcome {
            sent: 0,
            acked: 0,
            owed: 0,
            first_ns: None,
            error: None,
        };
        if let Err(e) = self.send(&mut out).await {
            out.error = Some(format!("{e:#}"));
        }
        let accepted = if self.qos == 0 { out.sent } else { out.acked };
        out.owed = accepted * self.fanout;
        close(self.stream).await;
        out
    }

    /// Reads whatever PUBACKs are buffered without waiting; returns how many arrived.
    pub(super) fn take_acks(&mut self) -> anyhow::Result<u64> {
        let mut acks = 0;
        loop {
            match self.stream.try_read(self.rb.spare()) {
                Ok(0) => bail!("connection closed by the broker"),
                Ok(n) => self.rb.filled(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
            while let Some((frame, used)) = packets::parse_frame(self.rb.data())? {
                match frame {
                    Frame::PubAck { .. } => acks += 1,
                    Frame::Publish {
                        qos: 1,
                        packet_id: Some(id),
                        ..
                    } => self.owed.extend_from_slice(&packets::puback(id)),
                    _ => {}
                }
                self.rb.consume(used);
            }
        }
        Ok(acks)
    }

    pub(super) async fn send(&mut self, out: &mut PubOutcome) -> anyhow::Result<()> {
        tokio::select! {
            biased;
            _ = flagged(&mut self.stop) => return Ok(()),
            _ = flagged(&mut self.start) => {}
        }
        let started = tokio::time::Instant::now();
        let until = self.sustain.map(|d| started + d);
        let mut wbuf = Vec::with_capacity(self.template.len() * BATCH as usize);
        let mut inflight = 0u64;
        let mut next_id: u16 = 1;
        loop {
            if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
                // Sustained load: no more new messages; the loop waits for the last PUBACKs.
                self.messages = out.sent;
            }
            if out.sent == self.messages && inflight == 0 {
                return Ok(());
            }
            let mut allowed = self.messages - out.sent;
            if let Some(rate) = self.rate {
                let due = (started.elapsed().as_secs_f64() * rate).floor() as u64 + 1;
                allowed = allowed.min(due.saturating_sub(out.sent));
            }
            if self.qos > 0 {
                allowed = allowed.min(self.window.saturating_sub(inflight));
            }
            allowed = allowed.min(BATCH);
            if allowed > 0 {
                wbuf.clear();
                wbuf.append(&mut self.owed);
                let now = ns_since(self.epoch);
                out.first_ns.get_or_insert(now);
                for _ in 0..allowed {
                    self.template.append(&mut wbuf, next_id, now);
                    next_id = next_id.checked_add(1).unwrap_or(1);
                }
                tokio::select! {
                    biased;
                    _ = flagged(&mut self.stop) => return Ok(()),
                    r = self.stream.write_all(&wbuf) => r?,
                }
                out.sent += allowed;
                if self.qos > 0 {
                    inflight += allowed;
                    let acked = self.take_acks()?;
                    out.acked += acked;
                    inflight = inflight.saturating_sub(acked);
                }
                continue;
            }
            let window_open = self.qos == 0 || inflight < self.window;
            let wake = match self.rate {
                Some(rate) if out.sent < self.messages && window_open => {
                    Duration::try_from_secs_f64(out.sent as f64 / rate)
                        .ok()
                        .and_then(|d| started.checked_add(d))
                }
                _ => None,
            };
            let wait_acks = self.qos > 0 && inflight > 0;
            if !self.owed.is_empty() {
                let owed = std::mem::take(&mut self.owed);
                tokio::select! {
                    biased;
                    _ = flagged(&mut self.stop) => return Ok(()),
                    r = self.stream.write_all(&owed) => r?,
                }
            }
            tokio::select! {
                biased;
                _ = flagged(&mut self.stop) => return Ok(()),
                r = self.stream.readable(), if wait_acks => {
                    r?;
                    let acked = self.take_acks()?;
                    out.acked += acked;
                    inflight = inflight.saturating_sub(acked);
                }
                _ = sleep_until(wake.unwrap_or(started)), if wake.is_some() => {}
                else => return Ok(()),
            }
        }
    }
}
