//! This device's own messages: the server sends them to the account's other devices only, so
//! this one learns their `seq` from the gap they leave in the conversation.

use serde_json::Value;
use tokio::time::Instant;
use tracing::warn;

use super::Core;
use super::gaps::Gap;
use crate::types::{ConvId, Message};

/// A message this device sent: the server sends it to the account's other devices only, so
/// this one learns its `seq` from the gap it leaves in the conversation.
pub(super) struct Own {
    pub(super) cid: String,
    pub(super) to: String,
    pub(super) body: Value,
    /// When the server acknowledged it (ms since the epoch); `None` while in flight.
    pub(super) acked: Option<u64>,
}

impl Core {
    /// An own message of `conv` was acknowledged or refused: a gap waiting for it decides.
    pub(super) async fn own_settled(&mut self, conv: &ConvId) {
        let waiting = self.gaps.get(conv).is_some_and(|g| g.waiting_own);
        if !waiting || self.own_in_flight(conv) {
            return;
        }
        let gap = self.gaps.remove(conv).expect("present");
        let need = gap.until.map_or(0, |u| u.saturating_sub(gap.after));
        if self.explain_with_own(conv, gap.after, need) {
            self.release(gap).await;
        } else {
            self.gaps.insert(
                conv.clone(),
                Gap {
                    waiting_own: false,
                    ..gap
                },
            );
            self.fetch(conv).await;
        }
    }

    pub(super) fn own_in_flight(&self, conv: &ConvId) -> bool {
        self.own
            .get(conv)
            .is_some_and(|o| o.values().any(|o| o.acked.is_none()))
    }

    /// If exactly `need` own messages of `conv` are acknowledged and unseen, they are the gap
    /// after `after` (one connection's PUBLISHes are stamped in order): cache them with their
    /// `seq`s (their `ts` is the acknowledgement's, close to the server's) and say so.
    pub(super) fn explain_with_own(&mut self, conv: &ConvId, after: u64, need: u64) -> bool {
        let Some(own) = self.own.get_mut(conv) else {
            return need == 0;
        };
        let acked: Vec<u64> = own
            .iter()
            .filter(|(_, o)| o.acked.is_some())
            .map(|(k, _)| *k)
            .collect();
        if need == 0 || acked.len() as u64 != need {
            return false;
        }
        let mut messages = Vec::new();
        for (i, key) in acked.into_iter().enumerate() {
            let o = own.remove(&key).expect("present");
            let seq = after + 1 + i as u64;
            let id = format!("{conv}#{seq}");
            messages.push(Message {
                id: id.clone(),
                conv: conv.clone(),
                seq,
                from: self.opts.account.clone(),
                to: o.to,
                ts: o.acked.unwrap_or_default(),
                cid: Some(o.cid),
                body: o.body,
                chain: crate::types::Chain { id, hop: 0 },
            });
        }
        if let Err(err) = self.cache.put(&messages) {
            warn!(%err, "history cache write failed");
        }
        self.dirty_since.get_or_insert_with(Instant::now);
        true
    }
}
