//! Appending and syncing: records into the tail, chunks written by the one writer, fsync,
//! a refused write tried again, a failed fsync final.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::record::{check_len, pack, put_str};
use super::segments::create_segment;
use super::tail::Writer;
use super::*;

impl MessageLog {
    /// Append one message of `conv`; `seq` must be [`last_seq`](Self::last_seq)` + 1` (the
    /// caller serialises a conversation's appends). `dedup` is `(from, cid)` when the client gave
    /// a message id. Readable when this returns; durable after the next [`sync`](Self::sync).
    pub fn append(
        &self,
        conv: &str,
        seq: u64,
        dedup: Option<(&str, &str)>,
        envelope: &[u8],
    ) -> Result<(), LogError> {
        let dedup = dedup.filter(|(_, cid)| !cid.is_empty());
        let (from, cid) = dedup.unwrap_or(("", ""));
        check_len("the conversation id", conv)?;
        check_len("the sender", from)?;
        check_len("the message id", cid)?;
        if envelope.len() > MAX_ENVELOPE_BYTES {
            return Err(LogError::TooLarge(format!(
                "the envelope is {} bytes; the limit is {MAX_ENVELOPE_BYTES}",
                envelope.len()
            )));
        }
        let body_len = MIN_BODY + conv.len() + from.len() + cid.len() + envelope.len();
        let dedup_hash = dedup.map(|(from, cid)| self.dedup_hash(conv, from, cid));

        let write_through = {
            let mut guard = self.state();
            let State {
                convs,
                messages,
                dedup,
                tail,
                broken,
            } = &mut *guard;
            if let Some((kind, why)) = broken {
                return Err(LogError::Io(io::Error::new(*kind, why.clone())));
            }
            if tail.queued_bytes + tail.pending.len() as u64 > MAX_UNWRITTEN_BYTES {
                return Err(LogError::Io(io::Error::other(format!(
                    "{} MiB of messages are waiting to be written to {}: the disk refuses \
                     writes (full?)",
                    MAX_UNWRITTEN_BYTES >> 20,
                    self.dir.display()
                ))));
            }
            let entry = convs.get_mut(conv);
            let expected = entry.as_ref().map_or(1, |c| c.next_seq());
            if seq != expected {
                return Err(LogError::OutOfOrder {
                    conv: conv.to_owned(),
                    expected,
                    got: seq,
                });
            }
            let chunk = tail.make_room(HEADER + body_len, self.segment_bytes)?;
            let off = tail.pending_start + tail.pending.len() as u64;
            let buf = &mut tail.pending;
            buf.reserve(HEADER + body_len);
            let start = buf.len();
            buf.extend_from_slice(&(body_len as u32).to_le_bytes());
            buf.extend_from_slice(&[0; 4]);
            buf.push(KIND_MESSAGE);
            put_str(buf, conv.as_bytes());
            buf.extend_from_slice(&seq.to_le_bytes());
            put_str(buf, from.as_bytes());
            put_str(buf, cid.as_bytes());
            buf.extend_from_slice(envelope);
            let crc = crc32fast::hash(&buf[start + HEADER..]);
            buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());

            let pos = pack(tail.seg, off);
            match entry {
                Some(c) => c.positions.push(pos),
                None => {
                    convs.insert(
                        conv.into(),
                        Conv {
                            first: seq,
                            positions: vec![pos],
                        },
                    );
                }
            }
            *messages += 1;
            if let Some(hash) = dedup_hash {
                dedup.insert(hash, seq);
            }
            chunk
        };
        // The record is in: a failed write surfaces at the next sync (and refuses later appends).
        if let Some(id) = write_through {
            let _ = self.write_chunks(&mut self.writer(), id + 1);
        }
        Ok(())
    }

    /// Write the buffered records and fsync: everything appended before this call is durable when
    /// it returns `Ok`. Appends go on meanwhile; concurrent syncs queue, and one that finds its
    /// records already made durable by another returns at once.
    pub fn sync(&self) -> Result<(), LogError> {
        let target = {
            let mut st = self.state();
            if let Some((kind, why)) = &st.broken {
                return Err(LogError::Io(io::Error::new(*kind, why.clone())));
            }
            if !st.tail.pending.is_empty() {
                st.tail.hand_off(false);
            }
            st.tail.next_chunk
        };
        let mut w = self.writer();
        if w.durable_through >= target {
            return Ok(());
        }
        self.write_chunks(&mut w, target)?;
        if w.unsynced {
            let seg = w.seg;
            w.file.sync_data().map_err(|e| self.fail("sync", seg, e))?;
            w.unsynced = false;
        }
        w.durable_through = w.written_through.max(target);
        Ok(())
    }

    /// Write every queued chunk with an id below `target`, in order; seal segments on the way.
    pub(super) fn write_chunks(&self, w: &mut Writer, target: u64) -> Result<(), LogError> {
        loop {
            let (id, seg, start, data, seal) = {
                let st = self.state();
                if let Some((kind, why)) = &st.broken {
                    return Err(LogError::Io(io::Error::new(*kind, why.clone())));
                }
                match st.tail.queue.front() {
                    Some(c) if c.id < target => (c.id, c.seg, c.start, Arc::clone(&c.data), c.seal),
                    _ => return Ok(()),
                }
            };
            if seg != w.seg {
                return Err(self.fail(
                    "write",
                    seg,
                    io::Error::other(format!("chunk for segment {seg} while writing {}", w.seg)),
                ));
            }
            if !data.is_empty() {
                // A refused write (a full disk) is tried again by the next sync, at the same
                // offset: the chunk stays queued, and the records stay readable meanwhile.
                self.write_at(&w.file, &data, start)
                    .map_err(|e| self.retry_later("write", seg, e))?;
                w.unsynced = true;
            }
            let mut next = None;
            if seal {
                if w.unsynced {
                    w.file.sync_data().map_err(|e| self.fail("sync", seg, e))?;
                    w.unsynced = false;
                }
                let number = self.first_number + u64::from(seg) + 1;
                let file = create_segment(&self.dir, number).map_err(|e| {
                    let e = match e {
                        LogError::Io(e) => e,
                        other => io::Error::other(other.to_string()),
                    };
                    self.retry_later("create the segment after", seg, e)
                })?;
                next = Some(file);
            }
            {
                let mut st = self.state();
                if let Some(done) = st.tail.queue.pop_front() {
                    st.tail.queued_bytes -= done.data.len() as u64;
                }
                if let Some(file) = &next {
                    st.tail.files.push(Arc::clone(file));
                }
                if let Ok(mut buf) = Arc::try_unwrap(data)
                    && buf.capacity() <= SPARE_MAX_BYTES
                    && buf.capacity() > st.tail.spare.capacity()
                {
                    buf.clear();
                    st.tail.spare = buf;
                }
            }
            w.written_through = id + 1;
            if let Some(file) = next {
                w.file = file;
                w.seg = seg + 1;
                // Every earlier chunk is in a sealed (synced) segment.
                w.durable_through = id + 1;
            }
        }
    }

    pub(super) fn write_at(&self, file: &File, data: &[u8], at: u64) -> io::Result<()> {
        #[cfg(test)]
        if self
            .refuse_writes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(io::Error::other("no space left on device (test)"));
        }
        file.write_all_at(data, at)
    }

    /// A write the disk refused: nothing is lost (the chunk stays queued and the next sync tries
    /// again), but nothing after it is durable until then.
    pub(super) fn retry_later(&self, what: &str, seg: u32, err: io::Error) -> LogError {
        let path = self.segment_path(seg);
        let why = format!("{what} {}: {err}", path.display());
        tracing::error!(cause = %why, "message log write refused; the next sync tries again");
        LogError::Io(io::Error::new(err.kind(), why))
    }

    /// Record a failed fsync: what reached the disk is unknown, so the log refuses appends and
    /// syncs from now on.
    pub(super) fn fail(&self, what: &str, seg: u32, err: io::Error) -> LogError {
        let path = self.segment_path(seg);
        let why = format!("{what} {}: {err}", path.display());
        tracing::error!(cause = %why, "message log failed; it refuses writes until reopened");
        let mut st = self.state();
        if st.broken.is_none() {
            st.broken = Some((err.kind(), why.clone()));
        }
        LogError::Io(io::Error::new(err.kind(), why))
    }
}
