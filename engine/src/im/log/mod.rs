//! The message log: IM messages in append-only segment files with an in-memory index, in place of
//! one store write per message.
//!
//! **Files.** `dir/NNNNNNNNNNNN.log`, numbered without gaps; appends go to the newest segment,
//! and a new one starts when the next record would take the current one past the segment size
//! (64 MiB by default; a record larger than that gets a segment of its own). Segments are never
//! deleted (yet).
//!
//! **Record.** `[u32 len][u32 crc32 of the body][body]`, little-endian, where the body is a kind
//! byte (1 = message), the conversation id (u16 length + bytes), `seq` (u64), the sender and the
//! client's message id (each u16 length + bytes, both empty when the message has no dedup key),
//! then the envelope (the rest, at most [`MAX_ENVELOPE_BYTES`]).
//!
//! **Durability.** [`MessageLog::append`] copies the record into an in-memory buffer (no syscall);
//! the message is readable at once ([`read`](MessageLog::read), [`last_seq`](MessageLog::last_seq),
//! [`find_dedup`](MessageLog::find_dedup) see it) and *durable* once a later
//! [`sync`](MessageLog::sync) has returned `Ok`. Past 1 MiB of unsynced records an append hands the
//! buffer to the disk (written, not synced) so memory stays bounded. One writer at a time writes
//! buffers in append order; a segment is written and synced in full before the next one is
//! created, so only the newest segment can end with a partial record. A write the disk refuses
//! (a full disk) fails that sync and is tried again, at the same offset, by the next one; the
//! records stay readable meanwhile, and appends are refused once 64 MiB wait to be written. A
//! failed fsync is final (what reached the disk is then unknown): the log refuses every later
//! append and sync until it is reopened. Dropping the log syncs it.
//!
//! **Crash recovery.** [`MessageLog::open`] reads every segment and checks every record. A torn or
//! corrupt record at the end of the newest segment (a crash during a write) is cut off: the file is
//! truncated to the last whole record, with a warning. Everything cut was never acknowledged by a
//! `sync`. A bad record anywhere else, a missing segment or a gap in a conversation's `seq` is an
//! error ([`LogError::Corrupt`] names the file and the offset).
//!
//! **Memory.** The index holds, per conversation, its first `seq` and the packed position
//! (segment, offset) of each message: 8 bytes per message (up to twice that while a vector grows),
//! plus about 100 bytes and the id per conversation. Reads of records already written go to the
//! segment file with `pread`, outside the lock.
//!
//! **Dedup bound.** The client's message ids are remembered for the newest 1,000,000 messages that
//! carry one ([`DEDUP_CAPACITY`]; older ones are forgotten first in, first out), rebuilt from the
//! log at open. The table keeps a keyed 64-bit hash of (conversation, sender, cid) and the `seq`,
//! about 50 bytes an entry (about 50 MB when full); a hit is checked against the stored record, so
//! a hash collision can at worst miss a duplicate, never merge two different messages. An empty
//! cid is no cid.
//!
//! **Where.** `record.rs`: the record format (parse, encode, positions, reading one from a
//! file); `segments.rs`: the segment files (names, listing, creating); `index.rs`: the
//! in-memory index (`Conv`) and the dedup table (`Dedup`); `tail.rs`: the records not yet
//! written (`Tail`, `Chunk`) and the writer's state (`Writer`); `open.rs`: opening and crash
//! recovery; `write.rs`: append and sync; `read.rs`: reads, dedup lookups, stats.

mod index;
mod open;
mod read;
mod record;
mod segments;
mod tail;
#[cfg(test)]
mod tests;
mod write;

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use crate::store::StoreError;

use index::{Conv, Dedup};
use segments::segment_name;
use tail::{Tail, Writer};

/// A new segment starts when the next record would take the current one past this size.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// How many client message ids (the newest) [`MessageLog::find_dedup`] remembers.
pub const DEDUP_CAPACITY: usize = 1_000_000;
/// The largest envelope a record holds.
pub const MAX_ENVELOPE_BYTES: usize = 16 << 20;

/// Unsynced bytes past which an append hands the buffer to the disk.
const WRITE_BEHIND_BYTES: usize = 1 << 20;
/// Records appended but not written past which appends are refused: the disk has been refusing
/// writes (full), and memory must not grow without bound meanwhile.
const MAX_UNWRITTEN_BYTES: u64 = 64 << 20;
/// A written buffer is kept for reuse if it is no larger than this.
const SPARE_MAX_BYTES: usize = 4 * WRITE_BEHIND_BYTES;
const HEADER: usize = 8;
const KIND_MESSAGE: u8 = 1;
/// A body with empty strings and an empty envelope.
const MIN_BODY: usize = 1 + 2 + 8 + 2 + 2;
const MAX_BODY: usize = MIN_BODY + 3 * u16::MAX as usize + MAX_ENVELOPE_BYTES;
/// Bytes read at once for a record on disk: most records fit, the rest take a second read.
const READ_GUESS: usize = 1024;
/// A position packs the segment index (high 24 bits) and the offset in it (low 40 bits).
const OFFSET_BITS: u32 = 40;
const OFFSET_MASK: u64 = (1 << OFFSET_BITS) - 1;
const MAX_SEGMENTS: usize = 1 << (64 - OFFSET_BITS);
/// Segment sizes are clamped below this so that every offset fits in its 40 bits.
const MAX_SEGMENT_BYTES: u64 = 1 << 39;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Why the log refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The disk or the file system refused (full disk, permissions, I/O error).
    #[error("message log I/O error: {0}")]
    Io(#[from] io::Error),
    /// A segment holds something this version cannot read, or is missing.
    #[error("message log is corrupt: {0}")]
    Corrupt(String),
    /// An append whose `seq` is not the conversation's next one.
    #[error("conversation {conv}: seq {got} refused, the next is {expected}")]
    OutOfOrder {
        conv: String,
        expected: u64,
        got: u64,
    },
    /// An id or an envelope is larger than a record can hold.
    #[error("message log record refused: {0}")]
    TooLarge(String),
}

impl From<LogError> for StoreError {
    fn from(err: LogError) -> Self {
        match err {
            LogError::Io(err) => StoreError::Io(err),
            LogError::Corrupt(what) => StoreError::Corrupt(what),
            other => StoreError::Backend(other.to_string()),
        }
    }
}

/// The message log. `Send + Sync`: share it as `Arc<MessageLog>`.
pub struct MessageLog {
    dir: PathBuf,
    /// The number in the name of the first segment (index 0).
    first_number: u64,
    segment_bytes: u64,
    dedup_hasher: foldhash::quality::RandomState,
    /// The index and the unwritten records: every append and every read takes it briefly.
    state: Mutex<State>,
    /// The one writer of the files; syncs queue here.
    writer: Mutex<Writer>,
    /// Tests: make every write fail, as a full disk would.
    #[cfg(test)]
    refuse_writes: std::sync::atomic::AtomicBool,
}

struct State {
    convs: FastMap<Box<str>, Conv>,
    messages: u64,
    dedup: Dedup,
    tail: Tail,
    /// A write or an fsync failed: the log refuses appends and syncs.
    broken: Option<(io::ErrorKind, String)>,
}

impl MessageLog {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn segment_path(&self, seg: u32) -> PathBuf {
        self.dir
            .join(segment_name(self.first_number + u64::from(seg)))
    }

    fn dedup_hash(&self, conv: &str, from: &str, cid: &str) -> u64 {
        self.dedup_hasher
            .hash_one((conv.as_bytes(), from.as_bytes(), cid.as_bytes()))
    }
}

#[cfg(test)]
impl MessageLog {
    fn dedup_len(&self) -> usize {
        self.state().dedup.map.len()
    }
}

impl fmt::Debug for MessageLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (conversations, messages) = self.stats();
        f.debug_struct("MessageLog")
            .field("dir", &self.dir)
            .field("conversations", &conversations)
            .field("messages", &messages)
            .finish_non_exhaustive()
    }
}

impl Drop for MessageLog {
    fn drop(&mut self) {
        if let Err(err) = self.sync() {
            tracing::warn!(cause = %err, "message log not synced at close");
        }
    }
}
