//! Reading: a conversation's last `seq`, ranges and single messages (from memory or with one
//! `pread`), dedup lookups checked against the stored record, stats.

use std::fs::File;
use std::sync::Arc;

use super::record::{Record, parse, read_record, unpack};
use super::segments::io_error;
use super::tail::Tail;
use super::*;

/// A message to read: copied while the lock was held, or on disk.
pub(super) enum Fetch {
    Ready(u64, Vec<u8>),
    Disk { seq: u64, file: Arc<File>, pos: u64 },
}

impl MessageLog {
    /// The highest seq stored for `conv`, 0 if none.
    pub fn last_seq(&self, conv: &str) -> u64 {
        self.state().convs.get(conv).map_or(0, |c| c.next_seq() - 1)
    }

    /// Messages of `conv` with `from <= seq <= to`, ascending, at most `limit`; if
    /// `newest_first`, the newest `limit` of that range, in descending order.
    pub fn read(
        &self,
        conv: &str,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let fetches = {
            let st = self.state();
            let Some(c) = st.convs.get(conv) else {
                return Ok(Vec::new());
            };
            let lo = from.max(c.first);
            let hi = to.min(c.next_seq() - 1);
            if limit == 0 || c.positions.is_empty() || lo > hi {
                return Ok(Vec::new());
            }
            let count = (hi - lo).saturating_add(1).min(limit as u64);
            let mut fetches = Vec::with_capacity(count as usize);
            for i in 0..count {
                let seq = if newest_first { hi - i } else { lo + i };
                let pos = c.position(seq).ok_or_else(|| {
                    LogError::Corrupt(format!("{conv} seq {seq} is missing from the index"))
                })?;
                fetches.push(self.fetch(&st.tail, conv, seq, pos)?);
            }
            fetches
        };
        fetches
            .into_iter()
            .map(|fetch| match fetch {
                Fetch::Ready(seq, envelope) => Ok((seq, envelope)),
                Fetch::Disk { seq, file, pos } => {
                    let bytes = self.read_disk(&file, pos)?;
                    let envelope = self.checked(&bytes, conv, seq, pos)?.envelope.to_vec();
                    Ok((seq, envelope))
                }
            })
            .collect()
    }

    /// One message of `conv`.
    pub fn get(&self, conv: &str, seq: u64) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self
            .read(conv, seq, seq, 1, false)?
            .pop()
            .map(|(_, envelope)| envelope))
    }

    /// The envelope of `conv`'s `seq` at `pos`: copied now if still in memory, else where to
    /// read it.
    pub(super) fn fetch(
        &self,
        tail: &Tail,
        conv: &str,
        seq: u64,
        pos: u64,
    ) -> Result<Fetch, LogError> {
        let (seg, off) = unpack(pos);
        if let Some(bytes) = tail.in_memory(seg, off) {
            let envelope = self.checked(bytes, conv, seq, pos)?.envelope.to_vec();
            return Ok(Fetch::Ready(seq, envelope));
        }
        let file = tail.files.get(seg as usize).cloned().ok_or_else(|| {
            LogError::Corrupt(format!(
                "{conv} seq {seq} is in segment {seg}, which has no file"
            ))
        })?;
        Ok(Fetch::Disk { seq, file, pos })
    }

    pub(super) fn read_disk(&self, file: &File, pos: u64) -> Result<Vec<u8>, LogError> {
        let (seg, off) = unpack(pos);
        read_record(file, off).map_err(|e| {
            let path = self.segment_path(seg);
            if e.kind() == io::ErrorKind::UnexpectedEof {
                LogError::Corrupt(format!(
                    "{} at offset {off}: the record runs past the end of the file",
                    path.display()
                ))
            } else {
                io_error("read", &path, e)
            }
        })
    }

    /// Parse the record at the start of `bytes` and check it is `conv`'s `seq`.
    pub(super) fn checked<'a>(
        &self,
        bytes: &'a [u8],
        conv: &str,
        seq: u64,
        pos: u64,
    ) -> Result<Record<'a>, LogError> {
        let (seg, off) = unpack(pos);
        let at = || format!("{} at offset {off}", self.segment_path(seg).display());
        let (record, _) =
            parse(bytes).map_err(|why| LogError::Corrupt(format!("{}: {why}", at())))?;
        if record.conv != conv.as_bytes() || record.seq != seq {
            return Err(LogError::Corrupt(format!(
                "{}: holds {}#{}, the index expected {conv}#{seq}",
                at(),
                String::from_utf8_lossy(record.conv),
                record.seq
            )));
        }
        Ok(record)
    }

    /// The seq stored earlier with this `(conv, from, cid)`, if still remembered (see the module
    /// doc for the bound). An unreadable record counts as not remembered (with a warning).
    pub fn find_dedup(&self, conv: &str, from: &str, cid: &str) -> Option<u64> {
        if cid.is_empty() {
            return None;
        }
        let hash = self.dedup_hash(conv, from, cid);
        let same = |r: &Record<'_>| r.from == from.as_bytes() && r.cid == cid.as_bytes();
        let (seq, fetch) = {
            let st = self.state();
            let seq = *st.dedup.map.get(&hash)?;
            let pos = st.convs.get(conv)?.position(seq)?;
            let (seg, off) = unpack(pos);
            if let Some(bytes) = st.tail.in_memory(seg, off) {
                return match self.checked(bytes, conv, seq, pos) {
                    Ok(record) => same(&record).then_some(seq),
                    Err(err) => {
                        tracing::warn!(cause = %err, "message log dedup check failed");
                        None
                    }
                };
            }
            (seq, (st.tail.files.get(seg as usize).cloned(), pos))
        };
        let (Some(file), pos) = fetch else {
            return None;
        };
        match self
            .read_disk(&file, pos)
            .and_then(|bytes| self.checked(&bytes, conv, seq, pos).map(|r| same(&r)))
        {
            Ok(same) => same.then_some(seq),
            Err(err) => {
                tracing::warn!(cause = %err, "message log dedup check failed");
                None
            }
        }
    }

    /// The id of every conversation with a message.
    pub fn conversations(&self) -> Vec<String> {
        self.state().convs.keys().map(|c| c.to_string()).collect()
    }

    /// Number of conversations and of messages.
    pub fn stats(&self) -> (usize, u64) {
        let st = self.state();
        (st.convs.len(), st.messages)
    }
}
