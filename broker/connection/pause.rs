//! Backpressure on a publisher: when a PUBLISH found an online subscriber's queue full, it is
//! queued there beyond the bound and its publisher is held back until every such queue is at
//! most half full again. Meanwhile the connection reads no further PUBLISH (and at most
//! `READ_LIMIT` bytes), holds that PUBLISH's PUBACK/PUBREC, and still drains its own session and
//! handles the acknowledgements and pings its client sends (cut out of the unread input), so
//! that two clients publishing to each other, or a client subscribed to its own publications,
//! do not wait on each other. A publisher held back for `slow_subscriber_timeout` makes the
//! subscribers still full "slow" (`Session::slow`): disconnected, or shedding load.

use super::*;

use crate::config::SlowSubscriber;

/// Input a held-back connection still reads, to find the client's acknowledgements in it.
pub(super) const READ_LIMIT: usize = 64 * 1024;

/// A publisher held back (see the module doc).
pub(super) struct Pause {
    /// The sessions still without room.
    full: Vec<Arc<Session>>,
    /// The acknowledgements of the PUBLISH that found them full, and whether each waits for a
    /// flush.
    acks: Vec<(HeldAck, bool)>,
    /// When it started (`mono_ms`), for `slow_subscriber_timeout`.
    since: u64,
    /// Bytes at the start of the unread input known to hold no acknowledgement.
    scanned: usize,
}

impl Pause {
    /// When the subscribers still full count as slow (`mono_ms`).
    pub(super) fn stuck_at(&self, broker: &Broker) -> u64 {
        let secs = broker.config.limits.slow_subscriber_timeout.max(1);
        self.since.saturating_add(secs.saturating_mul(1000))
    }

    /// Ready once every session has room; registers the task's waker with the others.
    pub(super) fn poll_room(
        &mut self,
        broker: &Broker,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        self.full
            .retain(|session| !session.has_room(&broker.limits, cx.waker()));
        if self.full.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Conn {
    pub(super) fn is_held(&self) -> bool {
        self.flow.as_ref().is_some_and(|f| f.pause.is_some())
    }

    fn pause_mut(&mut self) -> Option<&mut Pause> {
        self.flow.as_mut().and_then(|f| f.pause.as_mut())
    }

    /// The PUBLISH just routed found these sessions full: hold the publisher back.
    pub(super) fn hold_back(&mut self, full: Vec<Arc<Session>>) {
        if full.is_empty() {
            return;
        }
        self.flow_mut().pause = Some(Pause {
            full,
            acks: Vec::new(),
            since: mono_ms(),
            scanned: 0,
        });
    }

    /// The PUBACK/PUBREC of a routed PUBLISH: held while the publisher is held back.
    pub(super) fn ack_publish(&mut self, wire: &mut wire::Wire, ack: HeldAck, needs_flush: bool) {
        match self.pause_mut() {
            Some(pause) => pause.acks.push((ack, needs_flush)),
            None => self.hold_or_write(wire, ack, needs_flush),
        }
    }

    /// Input while held back: handle the acknowledgements and pings in it, leave the rest.
    pub(super) fn on_held_input<S>(
        &mut self,
        io: &mut Io<S>,
        wire: &mut wire::Wire,
    ) -> Option<End> {
        let pause = self.flow.as_mut().and_then(|f| f.pause.as_mut())?;
        let mut acks = take_acks(&mut io.buf, &mut pause.scanned);
        if acks.is_empty() {
            return None;
        }
        let ended = self.on_packets(&mut acks, wire);
        if ended.is_none() {
            self.start_waiting();
        }
        ended
    }

    /// Every full session has room: write the held acknowledgements and go on with the input.
    pub(super) fn resume<S>(&mut self, io: &mut Io<S>, wire: &mut wire::Wire) -> Option<End> {
        let pause = self.flow.as_mut().and_then(|f| f.pause.take())?;
        for (ack, needs_flush) in pause.acks {
            self.hold_or_write(wire, ack, needs_flush);
        }
        self.on_input(io, wire)
    }

    /// Held back for `slow_subscriber_timeout`: the subscribers still full are slow.
    pub(super) fn on_stuck(&mut self) {
        let broker = self.broker.clone();
        let publisher = self.session.client_id.clone();
        let Some(pause) = self.pause_mut() else {
            return;
        };
        let limits = &broker.config.limits;
        let disconnect = limits.slow_subscriber == SlowSubscriber::Disconnect;
        for session in &pause.full {
            if session.slow(&broker.limits, disconnect) {
                broker
                    .metrics
                    .slow_subscribers
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    client_id = %session.client_id,
                    %publisher,
                    policy = ?limits.slow_subscriber,
                    "slow subscriber: its queue stayed full for {} s",
                    limits.slow_subscriber_timeout.max(1)
                );
            }
        }
        // Their answer (an eviction, or shedding) gives room; if not, wait as long again.
        pause.since = mono_ms();
    }
}

/// Cut the whole PUBACK, PUBREC, PUBCOMP and PINGREQ packets out of `buf` from `*from` on, in
/// one pass; `*from` moves past the whole packets left (PUBLISHes, and anything else, which
/// waits for its turn). A client's acknowledgements of what it was sent are independent of
/// the PUBLISHes it sends, so they may be handled first.
fn take_acks(buf: &mut BytesMut, from: &mut usize) -> BytesMut {
    let mut acks = BytesMut::new();
    let (mut read, mut write) = (*from, *from);
    while let Some(len) = frame_len(&buf[read..]) {
        if matches!(buf[read] >> 4, 4 | 5 | 7 | 12) {
            acks.extend_from_slice(&buf[read..read + len]);
        } else {
            buf.copy_within(read..read + len, write);
            write += len;
        }
        read += len;
    }
    if read != write {
        let total = buf.len();
        buf.copy_within(read..total, write);
        buf.truncate(total - (read - write));
    }
    *from = write;
    acks
}

/// The length of the whole packet at the start of `bytes`, if all of it is there. A malformed
/// remaining length is left for the decoder.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for i in 1..5 {
        let b = *bytes.get(i)?;
        remaining |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            let total = 1 + i + remaining;
            return (bytes.len() >= total).then_some(total);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_are_cut_out_and_the_rest_keeps_its_order() {
        let publish = [0x30, 3, 0, 1, b't'];
        let puback = [0x40, 2, 0, 7];
        let pingreq = [0xC0, 0];
        let subscribe = [0x82, 2, 0, 9];
        let mut bytes = Vec::new();
        for part in [
            &publish[..],
            &puback,
            &subscribe,
            &pingreq,
            &publish,
            &puback,
        ] {
            bytes.extend_from_slice(part);
        }
        bytes.extend_from_slice(&[0x40, 2, 0]); // an incomplete PUBACK stays
        let mut buf = BytesMut::from(&bytes[..]);
        let mut from = 0;
        let acks = take_acks(&mut buf, &mut from);
        let mut expected_acks = Vec::new();
        expected_acks.extend_from_slice(&puback);
        expected_acks.extend_from_slice(&pingreq);
        expected_acks.extend_from_slice(&puback);
        assert_eq!(&acks[..], &expected_acks[..]);
        let mut rest = Vec::new();
        for part in [&publish[..], &subscribe, &publish, &[0x40, 2, 0]] {
            rest.extend_from_slice(part);
        }
        assert_eq!(&buf[..], &rest[..]);
        assert_eq!(from, publish.len() * 2 + subscribe.len());
        // The rest of the PUBACK arrives: found from where the scan stopped.
        buf.extend_from_slice(&[7]);
        let acks = take_acks(&mut buf, &mut from);
        assert_eq!(&acks[..], &puback[..]);
        assert_eq!(buf.len(), from);
    }

    #[test]
    fn frame_lengths() {
        assert_eq!(frame_len(&[0x40, 2, 0, 1]), Some(4));
        assert_eq!(frame_len(&[0x40, 2, 0]), None);
        assert_eq!(frame_len(&[0x30]), None);
        let mut long = vec![0x30, 0x80, 0x01];
        long.resize(3 + 128, 0);
        assert_eq!(frame_len(&long), Some(131));
        assert_eq!(frame_len(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0]), None);
    }
}
