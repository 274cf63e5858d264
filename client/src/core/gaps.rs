//! Receiving messages: dedup against the cache, gap filling with `history` (also the sync's
//! `more`), release in `seq` order, and the sync's completion.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::warn;

use super::Core;
use crate::error::Result;
use crate::types::{ConvId, Event, Message};

/// How many messages one gap-filling `history` request asks for (the server's most).
pub(super) const PAGE: u64 = 100;

/// A gap being filled: what waits behind it.
pub(super) struct Gap {
    /// Fetch after this `seq` next.
    pub(super) after: u64,
    /// Fill up to here at least (the first held message's `seq` - 1), or, for a sync's `more`,
    /// until the server has nothing more.
    pub(super) until: Option<u64>,
    pub(super) held: Vec<Message>,
    /// Counts against the sync's completion.
    pub(super) in_sync: bool,
    /// Waiting for this device's own messages in flight, which may be what the gap is.
    pub(super) waiting_own: bool,
}

impl Core {
    /// A message from the server (or a direct channel): dedup, gap check, cache, yield.
    pub(super) async fn on_message(&mut self, m: Message) {
        if let Some(gap) = self.gaps.get_mut(&m.conv) {
            gap.held.push(m);
            return;
        }
        match self.cache.has(&m.conv, m.seq) {
            Ok(true) => {
                self.view.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(false) => {}
            Err(err) => warn!(%err, "history cache read failed"),
        }
        let mark = self.cache.mark(&m.conv).ok().flatten();
        if let Some(mark) = mark
            && m.seq > mark + 1
        {
            let conv = m.conv.clone();
            let need = m.seq - mark - 1;
            if !self.own_in_flight(&conv) && self.explain_with_own(&conv, mark, need) {
                self.accept(m);
                return;
            }
            let waiting_own = self.own_in_flight(&conv);
            self.gaps.insert(
                conv.clone(),
                Gap {
                    after: mark,
                    until: Some(m.seq - 1),
                    held: vec![m],
                    in_sync: false,
                    waiting_own,
                },
            );
            if !waiting_own {
                self.fetch(&conv).await;
            }
            return;
        }
        self.accept(m);
    }

    /// What waited behind a filled gap goes through the checks again, in order.
    pub(super) async fn release(&mut self, gap: Gap) {
        let in_sync = gap.in_sync;
        let mut held = gap.held;
        held.sort_by_key(|m| m.seq);
        for m in held {
            Box::pin(self.on_message(m)).await;
        }
        if in_sync {
            self.maybe_synced();
        }
    }

    /// Cache and yield a message known to be next.
    pub(super) fn accept(&mut self, m: Message) {
        let mine = m.from == self.opts.account
            && m.cid.as_ref().is_some_and(|cid| {
                let own = self.own.get_mut(&m.conv);
                own.and_then(|own| {
                    let key = own.iter().find(|(_, o)| o.cid == *cid).map(|(k, _)| *k)?;
                    own.remove(&key)
                })
                .is_some()
            });
        // Had over a direct channel already: cached now with its `seq`, not yielded again.
        let mine = mine || crate::p2p::seen_directly(&self.cache, &m);
        match self.cache.put(std::slice::from_ref(&m)) {
            Ok(fresh) if fresh.is_empty() => {
                self.view.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
            Err(err) => warn!(%err, "history cache write failed"),
        }
        self.dirty_since.get_or_insert_with(Instant::now);
        if mine {
            // The sending device is not sent its own messages live; it is not told of them here
            // either.
            return;
        }
        self.view.stats.received.fetch_add(1, Ordering::Relaxed);
        self.emit(Event::Message(m));
    }

    pub(super) async fn fetch(&mut self, conv: &ConvId) {
        let Some(gap) = self.gaps.get(conv) else {
            return;
        };
        let request =
            json!({"op": "history", "conv": conv.as_str(), "after": gap.after, "limit": PAGE});
        let deadline = Instant::now() + self.opts.request_timeout;
        self.push_request("$im/req", request, None, Some(conv.clone()), deadline)
            .await;
    }

    pub(super) async fn on_page(&mut self, conv: ConvId, page: Result<Value>) {
        let messages: Vec<Message> = match &page {
            Ok(res) => res
                .get("messages")
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .unwrap_or_default(),
            Err(err) => {
                warn!(%err, %conv, "a gap could not be fetched");
                Vec::new()
            }
        };
        let last_seq = page
            .as_ref()
            .ok()
            .and_then(|r| r.get("last_seq"))
            .and_then(Value::as_u64);
        let Some(mut gap) = self.gaps.remove(&conv) else {
            return;
        };
        let full = messages.len() as u64 >= PAGE;
        for m in messages {
            gap.after = gap.after.max(m.seq);
            if self.cache.has(&m.conv, m.seq).unwrap_or(false) {
                continue;
            }
            self.view.stats.fetched.fetch_add(1, Ordering::Relaxed);
            self.accept(m);
        }
        let wanted = match gap.until {
            Some(until) => gap.after < until,
            None => last_seq.is_some_and(|l| gap.after < l),
        };
        if page.is_ok() && full && wanted {
            self.gaps.insert(conv.clone(), gap);
            self.fetch(&conv).await;
            return;
        }
        self.release(gap).await;
    }

    pub(super) fn maybe_synced(&mut self) {
        if self.syncing && self.sync_done_seen && !self.gaps.values().any(|g| g.in_sync) {
            self.syncing = false;
            self.sync_cache();
            self.emit(Event::Synced);
            let _ = self.direct.send(crate::p2p::Hook::Synced);
        }
    }
}
