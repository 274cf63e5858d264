//! The records not yet written (`Tail`: the buffer appended to, the chunks handed to the
//! writer, the segment files) and the writer's state (`Writer`).

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;

use super::{LogError, MAX_SEGMENTS, WRITE_BEHIND_BYTES};

/// Where the records not yet written live, and the segment files.
pub(super) struct Tail {
    /// The segment appended to.
    pub(super) seg: u32,
    /// The offset in `seg` where `pending` starts.
    pub(super) pending_start: u64,
    /// Records appended since the last hand-off to the writer.
    pub(super) pending: Vec<u8>,
    /// A written buffer kept for reuse.
    pub(super) spare: Vec<u8>,
    /// Buffers handed to the writer, oldest first; each leaves once written.
    pub(super) queue: VecDeque<Chunk>,
    /// Bytes in `queue`.
    pub(super) queued_bytes: u64,
    pub(super) next_chunk: u64,
    /// Every segment file created so far (the one appended to may not exist yet after a
    /// rollover: the writer creates it once the previous one is sealed).
    pub(super) files: Vec<Arc<File>>,
}

pub(super) struct Chunk {
    pub(super) id: u64,
    pub(super) seg: u32,
    pub(super) start: u64,
    pub(super) data: Arc<Vec<u8>>,
    /// The last bytes of `seg`: once written, sync it and create the next segment.
    pub(super) seal: bool,
}

impl Tail {
    /// Make room for a record of `len` bytes: start a new segment or hand the buffer to the
    /// writer when due. Returns the chunk to write through once the lock is released.
    pub(super) fn make_room(
        &mut self,
        len: usize,
        segment_bytes: u64,
    ) -> Result<Option<u64>, LogError> {
        let size = self.pending_start + self.pending.len() as u64;
        if size > 0 && size + len as u64 > segment_bytes {
            if self.seg as usize + 1 >= MAX_SEGMENTS {
                return Err(LogError::TooLarge(format!(
                    "the log has reached its limit of {MAX_SEGMENTS} segments"
                )));
            }
            let id = self.hand_off(true);
            self.seg += 1;
            self.pending_start = 0;
            return Ok(Some(id));
        }
        if self.pending.len() >= WRITE_BEHIND_BYTES {
            return Ok(Some(self.hand_off(false)));
        }
        Ok(None)
    }

    /// Move `pending` to the writer's queue; returns the chunk's id.
    pub(super) fn hand_off(&mut self, seal: bool) -> u64 {
        let data = std::mem::replace(&mut self.pending, std::mem::take(&mut self.spare));
        let start = self.pending_start;
        self.pending_start += data.len() as u64;
        let id = self.next_chunk;
        self.next_chunk += 1;
        self.queued_bytes += data.len() as u64;
        self.queue.push_back(Chunk {
            id,
            seg: self.seg,
            start,
            data: Arc::new(data),
            seal,
        });
        id
    }

    /// The bytes from `off` in `seg` if they are still in memory.
    pub(super) fn in_memory(&self, seg: u32, off: u64) -> Option<&[u8]> {
        if seg == self.seg && off >= self.pending_start {
            return self
                .pending
                .get(usize::try_from(off - self.pending_start).ok()?..);
        }
        let chunk = self
            .queue
            .iter()
            .find(|c| c.seg == seg && off >= c.start && off < c.start + c.data.len() as u64)?;
        chunk.data.get(usize::try_from(off - chunk.start).ok()?..)
    }
}

/// Behind `MessageLog::writer`.
pub(super) struct Writer {
    /// The segment being written and its file.
    pub(super) seg: u32,
    pub(super) file: Arc<File>,
    /// Written since its last fsync.
    pub(super) unsynced: bool,
    /// Every chunk with a smaller id is written.
    pub(super) written_through: u64,
    /// Every chunk with a smaller id is written and synced.
    pub(super) durable_through: u64,
}
