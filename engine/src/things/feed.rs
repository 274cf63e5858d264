//! Each account's feed: the `cmd.ack`, `cmd.timeout` and `event` envelopes addressed to it,
//! numbered, kept (the newest `feed_max`) for the devices that were offline, and replayed at
//! their next sync after what each device (client id) last received.

use serde_json::{Value, json};

use super::{Effect, ThingResult, Things, lock, seq_key, seq_of};
use crate::im::key;
use crate::store::{Batch, Space};

fn feed_key(account: &str, seq: u64) -> Vec<u8> {
    seq_key(&["feed", account], seq)
}

impl Things {
    /// The last feed number stored for `account` (0: none). The newest entry is never trimmed,
    /// so the last key says it.
    fn feed_last_stored(&self, account: &str) -> ThingResult<u64> {
        let last = self.store.scan_range(
            Space::Things,
            &feed_key(account, 0),
            &feed_key(account, u64::MAX),
            1,
            true,
        )?;
        Ok(last.first().and_then(|(k, _)| seq_of(k)).unwrap_or(0))
    }

    /// Number `envelope` for `to`'s feed and write it into `batch`; the effect delivers it live.
    pub(super) fn feed_push(
        &self,
        batch: &mut Batch,
        to: &str,
        mut envelope: Value,
    ) -> ThingResult<Effect> {
        let seq = {
            let mut seqs = lock(&self.feed_seqs);
            let last = match seqs.get(to) {
                Some(last) => *last,
                None => self.feed_last_stored(to)?,
            };
            seqs.insert(to.to_owned(), last + 1);
            last + 1
        };
        envelope["feed"] = json!(seq);
        batch.put(Space::Things, feed_key(to, seq), envelope.to_string());
        if seq > self.config.feed_max {
            batch.remove(Space::Things, feed_key(to, seq - self.config.feed_max));
        }
        Ok(Effect::Feed {
            to: to.to_owned(),
            seq,
            envelope,
        })
    }

    /// The newest feed number of `account` (0: none yet).
    pub fn feed_last(&self, account: &str) -> ThingResult<u64> {
        if let Some(last) = lock(&self.feed_seqs).get(account) {
            return Ok(*last);
        }
        self.feed_last_stored(account)
    }

    /// Up to `limit` entries of `account`'s feed after `after`, oldest first.
    pub fn feed_after(&self, account: &str, after: u64, limit: usize) -> ThingResult<Vec<Value>> {
        Ok(self
            .store
            .scan_range(
                Space::Things,
                &feed_key(account, after.saturating_add(1)),
                &feed_key(account, u64::MAX),
                limit,
                false,
            )?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect())
    }

    /// What device `client` of `account` gets at its sync: every entry after the last one it
    /// received (a device never seen before: the newest `sync_max_feed`), oldest first.
    pub fn feed_sync(&self, client: &str, account: &str) -> ThingResult<Vec<Value>> {
        let after = match self.feed_cursor(client)? {
            Some(cursor) => cursor,
            None => self
                .feed_last(account)?
                .saturating_sub(self.config.sync_max_feed as u64),
        };
        let limit = usize::try_from(self.config.feed_max).unwrap_or(usize::MAX);
        self.feed_after(account, after, limit)
    }

    pub fn feed_cursor(&self, client: &str) -> ThingResult<Option<u64>> {
        self.get_u64(&key(&["fcur", client]))
    }

    /// Device `client` has received (acknowledged) its feed up to `seq` (kept when higher than
    /// before).
    pub fn feed_received(&self, client: &str, seq: u64) -> ThingResult<()> {
        if self.feed_cursor(client)?.is_some_and(|c| c >= seq) {
            return Ok(());
        }
        self.feed_set_cursor(client, seq)
    }

    /// Device `client` did not receive what came after `seq` (its connection ended with it
    /// unacknowledged): its next sync starts there (kept when lower than before).
    pub fn feed_rewind(&self, client: &str, seq: u64) -> ThingResult<()> {
        if self.feed_cursor(client)?.is_some_and(|c| c <= seq) {
            return Ok(());
        }
        self.feed_set_cursor(client, seq)
    }

    fn feed_set_cursor(&self, client: &str, seq: u64) -> ThingResult<()> {
        let mut batch = Batch::new();
        batch.put(
            Space::Things,
            key(&["fcur", client]),
            seq.to_be_bytes().to_vec(),
        );
        self.store.apply(batch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::world;
    use super::*;

    #[test]
    fn feeds_number_keep_and_replay_after_each_devices_cursor() {
        let w = world(&["alice"], &[]);
        let t = &w.things;
        for n in 1..=3 {
            let mut batch = Batch::new();
            let effect = t.feed_push(&mut batch, "alice", json!({ "n": n })).unwrap();
            assert!(matches!(effect, Effect::Feed { seq, .. } if seq == n));
            t.store.apply(batch).unwrap();
        }
        assert_eq!(t.feed_last("alice").unwrap(), 3);
        // A new device gets the newest; one that received 2 gets 3 only.
        assert_eq!(t.feed_sync("alice:phone", "alice").unwrap().len(), 3);
        t.feed_received("alice:phone", 2).unwrap();
        t.feed_received("alice:phone", 1).unwrap();
        let missed = t.feed_sync("alice:phone", "alice").unwrap();
        assert_eq!(missed, [json!({ "n": 3, "feed": 3 })]);
        assert!(t.feed_after("bob", 0, 10).unwrap().is_empty());
    }
}
