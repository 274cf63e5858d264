//! The local history cache: every message a device received, per conversation and `seq`, in
//! one redb file per device, so that history shows offline and a reconnect fetches only the gap.
//!
//! Besides the messages, each conversation has a **mark**: the highest `seq` up to which the
//! cache holds the conversation without a gap, counted from the first message it saw (a member
//! who joined a group late starts there). A write is visible at once and durable after the next
//! [`Cache::sync`] (the client syncs when a sync ends, when the connection drops, at shutdown,
//! and at most a second after any write); a crash loses at most the last second, and the next
//! message's `seq` shows the gap, which the client then fetches with `history`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::types::{ConvId, Message, Range};

/// `(conv, seq)` → the message's envelope as JSON.
const MESSAGES: TableDefinition<'static, (&str, u64), &str> = TableDefinition::new("messages");
/// `conv` → the mark.
const MARKS: TableDefinition<'static, &str, u64> = TableDefinition::new("marks");

fn err(e: impl std::fmt::Display) -> Error {
    Error::Cache(e.to_string())
}

/// A device's cache. Cheap to clone (one shared database).
#[derive(Clone)]
pub struct Cache {
    pub(crate) db: Arc<Database>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cache")
    }
}

impl Cache {
    /// The file of `account:device`'s cache in `dir`.
    pub fn file(dir: &Path, account: &str, device: &str) -> PathBuf {
        dir.join(format!("{account}@{device}.redb"))
    }

    /// Open (or create) the cache of `account:device` in `dir`. Only one process may have it
    /// open at a time (redb locks the file).
    pub fn open(dir: &Path, account: &str, device: &str) -> Result<Cache> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(Self::file(dir, account, device)).map_err(err)?;
        Self::init(db)
    }

    /// A cache that lives in memory only (for devices without a folder, e.g. simulated ones).
    pub fn in_memory() -> Result<Cache> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(err)?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<Cache> {
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(MESSAGES).map_err(err)?;
        tx.open_table(MARKS).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Cache { db: Arc::new(db) })
    }

    /// Store messages (a message already there is left as it is); returns those that were new.
    /// Marks are advanced over what is now contiguous.
    pub fn put(&self, messages: &[Message]) -> Result<Vec<Message>> {
        let mut fresh = Vec::new();
        let mut tx = self.db.begin_write().map_err(err)?;
        tx.set_durability(Durability::None).map_err(err)?;
        {
            let mut table = tx.open_table(MESSAGES).map_err(err)?;
            let mut marks = tx.open_table(MARKS).map_err(err)?;
            for m in messages {
                let key = (m.conv.as_str(), m.seq);
                if table.get(key).map_err(err)?.is_some() {
                    continue;
                }
                let json = serde_json::to_string(m).map_err(err)?;
                table.insert(key, json.as_str()).map_err(err)?;
                fresh.push(m.clone());
                let conv = m.conv.as_str();
                let mark = marks.get(conv).map_err(err)?.map(|v| v.value());
                let mut mark = match mark {
                    // The first message seen of a conversation starts it.
                    None => m.seq,
                    Some(mark) => mark,
                };
                while table.get((conv, mark + 1)).map_err(err)?.is_some() {
                    mark += 1;
                }
                marks.insert(conv, mark).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(fresh)
    }

    /// Make every write so far durable.
    pub fn sync(&self) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(err)?;
        tx.set_durability(Durability::Immediate).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Whether `(conv, seq)` is cached.
    pub fn has(&self, conv: &ConvId, seq: u64) -> Result<bool> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(MESSAGES).map_err(err)?;
        Ok(table.get((conv.as_str(), seq)).map_err(err)?.is_some())
    }

    /// The conversation's mark, `None` when nothing of it is cached.
    pub fn mark(&self, conv: &ConvId) -> Result<Option<u64>> {
        let tx = self.db.begin_read().map_err(err)?;
        let marks = tx.open_table(MARKS).map_err(err)?;
        Ok(marks.get(conv.as_str()).map_err(err)?.map(|v| v.value()))
    }

    /// Every cached conversation with its mark.
    pub fn conversations(&self) -> Result<Vec<(ConvId, u64)>> {
        let tx = self.db.begin_read().map_err(err)?;
        let marks = tx.open_table(MARKS).map_err(err)?;
        let mut out = Vec::new();
        for item in marks.iter().map_err(err)? {
            let (k, v) = item.map_err(err)?;
            out.push((ConvId(k.value().to_owned()), v.value()));
        }
        Ok(out)
    }

    /// A page of cached history, ascending by `seq`, at most `limit` messages.
    pub fn history(&self, conv: &ConvId, range: Range, limit: usize) -> Result<Vec<Message>> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(MESSAGES).map_err(err)?;
        let c = conv.as_str();
        let parse = |json: &str| serde_json::from_str::<Message>(json).map_err(err);
        let mut out = Vec::new();
        match range {
            Range::After(after) => {
                for item in table
                    .range((c, after.saturating_add(1))..=(c, u64::MAX))
                    .map_err(err)?
                    .take(limit)
                {
                    out.push(parse(item.map_err(err)?.1.value())?);
                }
            }
            Range::Before(_) | Range::Newest => {
                let end = match range {
                    Range::Before(before) => before,
                    _ => u64::MAX,
                };
                for item in table
                    .range((c, 0)..(c, end))
                    .map_err(err)?
                    .rev()
                    .take(limit)
                {
                    out.push(parse(item.map_err(err)?.1.value())?);
                }
                out.reverse();
            }
        }
        Ok(out)
    }

    /// How many messages of `conv` are cached.
    pub fn count(&self, conv: &ConvId) -> Result<usize> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(MESSAGES).map_err(err)?;
        let c = conv.as_str();
        Ok(table.range((c, 0)..=(c, u64::MAX)).map_err(err)?.count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(conv: &ConvId, seq: u64) -> Message {
        Message {
            id: format!("{conv}#{seq}"),
            conv: conv.clone(),
            seq,
            from: "alice".into(),
            to: "bob".into(),
            ts: seq,
            cid: None,
            body: json!({ "text": seq.to_string() }),
            chain: Default::default(),
        }
    }

    #[test]
    fn marks_follow_what_is_contiguous_and_pages_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let conv = ConvId::direct("alice", "bob");
        {
            let cache = Cache::open(dir.path(), "bob", "phone").unwrap();
            assert_eq!(cache.put(&[msg(&conv, 3), msg(&conv, 4)]).unwrap().len(), 2);
            assert_eq!(cache.mark(&conv).unwrap(), Some(4));
            cache.put(&[msg(&conv, 6)]).unwrap();
            assert_eq!(cache.mark(&conv).unwrap(), Some(4));
            assert!(
                cache.put(&[msg(&conv, 4)]).unwrap().is_empty(),
                "no duplicate"
            );
            cache.put(&[msg(&conv, 5)]).unwrap();
            assert_eq!(cache.mark(&conv).unwrap(), Some(6));
            cache.sync().unwrap();
        }
        let cache = Cache::open(dir.path(), "bob", "phone").unwrap();
        let seqs = |v: Vec<Message>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(cache.history(&conv, Range::Newest, 2).unwrap()),
            [5, 6]
        );
        assert_eq!(
            seqs(cache.history(&conv, Range::Before(5), 10).unwrap()),
            [3, 4]
        );
        assert_eq!(
            seqs(cache.history(&conv, Range::After(3), 2).unwrap()),
            [4, 5]
        );
        assert_eq!(cache.count(&conv).unwrap(), 4);
        let other = ConvId::group("g");
        assert!(cache.history(&other, Range::Newest, 10).unwrap().is_empty());
    }
}
