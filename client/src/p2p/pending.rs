//! What was said over direct channels and is not yet stored by the server: kept in the device's
//! cache (its own table), in the order it was said, until the server has it with a `seq`.
//!
//! An entry leaves when the server's stamped copy reaches this device ([`take`], from the
//! core's receiving path), or when an upload's answer says the server has it ([`settle`]).

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::types::{Chain, ConvId, Message};

/// `(conv, n)` → a [`Said`] as JSON; `n` rises in the order things were said on this device.
const PENDING: TableDefinition<'static, (&str, u64), &str> = TableDefinition::new("direct_pending");

fn err(e: impl std::fmt::Display) -> Error {
    Error::Cache(e.to_string())
}

/// One message said over a direct channel, as it is uploaded (docs/PROTOCOL.md 6.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Said {
    pub channel: String,
    pub from: String,
    pub to: String,
    pub cid: String,
    /// The sender's time (ms since the epoch).
    pub ts: u64,
    /// The body's JSON text, byte for byte as said (the MAC covers it).
    pub body: String,
    pub mac: String,
}

impl Said {
    /// As a message of the event stream: no `seq` yet (0) until the server stamps it.
    pub fn message(&self, conv: &ConvId) -> Message {
        self.stamped(conv, 0)
    }

    /// As the message the server stored with `seq`.
    pub fn stamped(&self, conv: &ConvId, seq: u64) -> Message {
        let id = if seq == 0 {
            format!("direct:{}:{}", self.channel, self.cid)
        } else {
            format!("{conv}#{seq}")
        };
        Message {
            id: id.clone(),
            conv: conv.clone(),
            seq,
            from: self.from.clone(),
            to: self.to.clone(),
            ts: self.ts,
            cid: Some(self.cid.clone()),
            body: serde_json::from_str(&self.body).unwrap_or_default(),
            chain: Chain { id, hop: 0 },
        }
    }
}

/// Keep `said`, unless a message of its sender with its `cid` is kept already (`false`).
pub fn add(cache: &Cache, conv: &ConvId, said: &Said) -> Result<bool> {
    let tx = cache.db.begin_write().map_err(err)?;
    {
        let mut table = tx.open_table(PENDING).map_err(err)?;
        let c = conv.as_str();
        let mut next = 1;
        for item in table.range((c, 0)..=(c, u64::MAX)).map_err(err)? {
            let (k, v) = item.map_err(err)?;
            next = k.value().1 + 1;
            if let Ok(old) = serde_json::from_str::<Said>(v.value())
                && old.from == said.from
                && old.cid == said.cid
            {
                return Ok(false);
            }
        }
        let json = serde_json::to_string(said).map_err(err)?;
        table.insert((c, next), json.as_str()).map_err(err)?;
    }
    tx.commit().map_err(err)?;
    Ok(true)
}

/// What is kept for `conv`, in the order it was said.
pub fn list(cache: &Cache, conv: &ConvId) -> Result<Vec<Said>> {
    let tx = cache.db.begin_read().map_err(err)?;
    let table = tx.open_table(PENDING).map_err(err)?;
    let c = conv.as_str();
    let mut out = Vec::new();
    for item in table.range((c, 0)..=(c, u64::MAX)).map_err(err)? {
        let (_, v) = item.map_err(err)?;
        out.push(serde_json::from_str(v.value()).map_err(err)?);
    }
    Ok(out)
}

/// The conversations with something kept.
pub fn conversations(cache: &Cache) -> Result<Vec<ConvId>> {
    let tx = cache.db.begin_read().map_err(err)?;
    let table = tx.open_table(PENDING).map_err(err)?;
    let mut out: Vec<ConvId> = Vec::new();
    for item in table.iter().map_err(err)? {
        let (k, _) = item.map_err(err)?;
        let conv = k.value().0;
        if out.last().is_none_or(|last| last.as_str() != conv) {
            out.push(ConvId(conv.to_owned()));
        }
    }
    Ok(out)
}

/// The key and entry of `from`'s `cid` in `conv`.
fn find(
    table: &impl ReadableTable<(&'static str, u64), &'static str>,
    conv: &ConvId,
    from: &str,
    cid: &str,
) -> Result<Option<(u64, Said)>> {
    let c = conv.as_str();
    for item in table.range((c, 0)..=(c, u64::MAX)).map_err(err)? {
        let (k, v) = item.map_err(err)?;
        if let Ok(said) = serde_json::from_str::<Said>(v.value())
            && said.from == from
            && said.cid == cid
        {
            return Ok(Some((k.value().1, said)));
        }
    }
    Ok(None)
}

/// Remove and return the entry of `from`'s `cid` in `conv`, if one is kept. Looked up first
/// without writing: every message from the server asks.
pub fn take(cache: &Cache, conv: &ConvId, from: &str, cid: &str) -> Result<Option<Said>> {
    {
        let tx = cache.db.begin_read().map_err(err)?;
        let table = tx.open_table(PENDING).map_err(err)?;
        if find(&table, conv, from, cid)?.is_none() {
            return Ok(None);
        }
    }
    let mut tx = cache.db.begin_write().map_err(err)?;
    // Durable with the cache's next sync; lost in a crash, the entry is uploaded once more and
    // the server answers that it has it.
    tx.set_durability(redb::Durability::None).map_err(err)?;
    let found = {
        let mut table = tx.open_table(PENDING).map_err(err)?;
        let found = find(&table, conv, from, cid)?;
        if let Some((n, _)) = &found {
            table.remove((conv.as_str(), *n)).map_err(err)?;
        }
        found.map(|(_, said)| said)
    };
    tx.commit().map_err(err)?;
    Ok(found)
}

/// The server has these `(from, cid, seq)`: into the history cache with their `seq`, out of
/// the pending table.
pub fn settle(cache: &Cache, conv: &ConvId, stored: &[(String, String, u64)]) -> Result<()> {
    let mut messages = Vec::new();
    for (from, cid, seq) in stored {
        if let Some(said) = take(cache, conv, from, cid)?
            && *seq > 0
        {
            messages.push(said.stamped(conv, *seq));
        }
    }
    cache.put(&messages)?;
    Ok(())
}

/// Create the table (a cache opened by an older version has none).
pub fn init(cache: &Cache) -> Result<()> {
    let tx = cache.db.begin_write().map_err(err)?;
    tx.open_table(PENDING).map_err(err)?;
    tx.commit().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(from: &str, cid: &str) -> Said {
        Said {
            channel: "ch".into(),
            from: from.into(),
            to: "x".into(),
            cid: cid.into(),
            ts: 1,
            body: r#"{"text":"hi"}"#.into(),
            mac: String::new(),
        }
    }

    #[test]
    fn kept_in_order_once_and_taken_by_sender_and_cid() {
        let cache = Cache::in_memory().unwrap();
        init(&cache).unwrap();
        let conv = ConvId::direct("alice", "bob");
        assert!(add(&cache, &conv, &said("alice", "a1")).unwrap());
        assert!(add(&cache, &conv, &said("bob", "a1")).unwrap());
        assert!(add(&cache, &conv, &said("alice", "a2")).unwrap());
        assert!(!add(&cache, &conv, &said("alice", "a1")).unwrap(), "once");
        let cids: Vec<(String, String)> = list(&cache, &conv)
            .unwrap()
            .into_iter()
            .map(|s| (s.from, s.cid))
            .collect();
        assert_eq!(
            cids,
            [
                ("alice".into(), "a1".into()),
                ("bob".into(), "a1".into()),
                ("alice".into(), "a2".into())
            ]
        );
        assert_eq!(conversations(&cache).unwrap(), std::slice::from_ref(&conv));
        assert!(take(&cache, &conv, "bob", "a1").unwrap().is_some());
        assert!(take(&cache, &conv, "bob", "a1").unwrap().is_none());
        settle(&cache, &conv, &[("alice".into(), "a2".into(), 7)]).unwrap();
        assert!(cache.has(&conv, 7).unwrap());
        assert_eq!(list(&cache, &conv).unwrap().len(), 1);
    }
}
