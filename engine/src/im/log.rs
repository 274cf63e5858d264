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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::store::StoreError;

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

/// One conversation's messages: `first`, `first + 1`, ... at these packed positions.
struct Conv {
    first: u64,
    positions: Vec<u64>,
}

impl Conv {
    fn next_seq(&self) -> u64 {
        self.first + self.positions.len() as u64
    }

    fn position(&self, seq: u64) -> Option<u64> {
        let index = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.positions.get(index).copied()
    }
}

/// The newest client message ids: keyed hash of (conv, from, cid) → seq, evicted in insertion
/// order.
struct Dedup {
    map: FastMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
    capacity: usize,
}

impl Dedup {
    fn insert(&mut self, hash: u64, seq: u64) {
        if self.capacity == 0 {
            return;
        }
        self.map.insert(hash, seq);
        self.order.push_back((hash, seq));
        while self.order.len() > self.capacity {
            // An entry overwritten since (same key stored again) stays.
            if let Some((hash, seq)) = self.order.pop_front()
                && self.map.get(&hash) == Some(&seq)
            {
                self.map.remove(&hash);
            }
        }
    }
}

/// Where the records not yet written live, and the segment files.
struct Tail {
    /// The segment appended to.
    seg: u32,
    /// The offset in `seg` where `pending` starts.
    pending_start: u64,
    /// Records appended since the last hand-off to the writer.
    pending: Vec<u8>,
    /// A written buffer kept for reuse.
    spare: Vec<u8>,
    /// Buffers handed to the writer, oldest first; each leaves once written.
    queue: VecDeque<Chunk>,
    /// Bytes in `queue`.
    queued_bytes: u64,
    next_chunk: u64,
    /// Every segment file created so far (the one appended to may not exist yet after a
    /// rollover: the writer creates it once the previous one is sealed).
    files: Vec<Arc<File>>,
}

struct Chunk {
    id: u64,
    seg: u32,
    start: u64,
    data: Arc<Vec<u8>>,
    /// The last bytes of `seg`: once written, sync it and create the next segment.
    seal: bool,
}

impl Tail {
    /// Make room for a record of `len` bytes: start a new segment or hand the buffer to the
    /// writer when due. Returns the chunk to write through once the lock is released.
    fn make_room(&mut self, len: usize, segment_bytes: u64) -> Result<Option<u64>, LogError> {
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
    fn hand_off(&mut self, seal: bool) -> u64 {
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
    fn in_memory(&self, seg: u32, off: u64) -> Option<&[u8]> {
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
struct Writer {
    /// The segment being written and its file.
    seg: u32,
    file: Arc<File>,
    /// Written since its last fsync.
    unsynced: bool,
    /// Every chunk with a smaller id is written.
    written_through: u64,
    /// Every chunk with a smaller id is written and synced.
    durable_through: u64,
}

/// A record as parsed; the strings are bytes as stored.
struct Record<'a> {
    conv: &'a [u8],
    seq: u64,
    from: &'a [u8],
    cid: &'a [u8],
    envelope: &'a [u8],
}

/// A message to read: copied while the lock was held, or on disk.
enum Fetch {
    Ready(u64, Vec<u8>),
    Disk { seq: u64, file: Arc<File>, pos: u64 },
}

fn pack(seg: u32, off: u64) -> u64 {
    (u64::from(seg) << OFFSET_BITS) | off
}

fn unpack(pos: u64) -> (u32, u64) {
    ((pos >> OFFSET_BITS) as u32, pos & OFFSET_MASK)
}

fn segment_name(number: u64) -> String {
    format!("{number:012}.log")
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    let (head, rest) = bytes
        .split_at_checked(n)
        .ok_or_else(|| format!("a field of {n} bytes runs past the end of the record"))?;
    *bytes = rest;
    Ok(head)
}

fn take_str<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = u16::from_le_bytes([take(bytes, 1)?[0], take(bytes, 1)?[0]]);
    take(bytes, usize::from(len))
}

/// The record at the start of `bytes` and its length, or why there is none.
fn parse(bytes: &[u8]) -> Result<(Record<'_>, usize), String> {
    let Some((header, rest)) = bytes.split_at_checked(HEADER) else {
        return Err(format!(
            "{} bytes left, less than a record header",
            bytes.len()
        ));
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(MIN_BODY..=MAX_BODY).contains(&len) {
        return Err(format!("record length {len} is out of bounds"));
    }
    let Some(body) = rest.get(..len) else {
        return Err(format!(
            "a record of {len} bytes runs past the end ({} bytes left)",
            rest.len()
        ));
    };
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    let mut r = body;
    let kind = take(&mut r, 1)?[0];
    if kind != KIND_MESSAGE {
        return Err(format!("unknown record kind {kind}"));
    }
    let conv = take_str(&mut r)?;
    let mut seq = [0; 8];
    seq.copy_from_slice(take(&mut r, 8)?);
    let from = take_str(&mut r)?;
    let cid = take_str(&mut r)?;
    let record = Record {
        conv,
        seq: u64::from_le_bytes(seq),
        from,
        cid,
        envelope: r,
    };
    Ok((record, HEADER + len))
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    // Lengths are checked by the caller.
    buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
    buf.extend_from_slice(s);
}

fn check_len(what: &str, s: &str) -> Result<(), LogError> {
    if s.len() > usize::from(u16::MAX) {
        return Err(LogError::TooLarge(format!(
            "{what} is {} bytes; the limit is {}",
            s.len(),
            u16::MAX
        )));
    }
    Ok(())
}

/// The numbers of the segment files in `dir`, in order, checked for gaps.
fn segment_numbers(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_error("list", dir, e))? {
        let entry = entry.map_err(|e| io_error("list", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if stem.len() == 12
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(number) = stem.parse::<u64>()
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    for pair in numbers.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(LogError::Corrupt(format!(
                "{}: segment {} is missing",
                dir.display(),
                segment_name(pair[0] + 1)
            )));
        }
    }
    if numbers.len() > MAX_SEGMENTS {
        return Err(LogError::Corrupt(format!(
            "{}: {} segments, more than the {MAX_SEGMENTS} a log can have",
            dir.display(),
            numbers.len()
        )));
    }
    Ok(numbers)
}

fn io_error(what: &str, path: &Path, err: io::Error) -> LogError {
    LogError::Io(io::Error::new(
        err.kind(),
        format!("{what} {}: {err}", path.display()),
    ))
}

/// Create a new, empty segment file and make its name durable.
fn create_segment(dir: &Path, number: u64) -> Result<Arc<File>, LogError> {
    let path = dir.join(segment_name(number));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io_error("create", &path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync the directory", dir, e))?;
    Ok(Arc::new(file))
}

/// Read the whole record at `off` of `file` (one `pread` for most records).
fn read_record(file: &File, off: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; READ_GUESS];
    let mut got = 0;
    while got < HEADER {
        let n = file.read_at(&mut buf[got..], off + got as u64)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_BODY {
        // `parse` reports the bad length.
        buf.truncate(HEADER);
        return Ok(buf);
    }
    let total = HEADER + len;
    if got < total {
        buf.resize(total, 0);
        file.read_exact_at(&mut buf[got..], off + got as u64)?;
    }
    buf.truncate(total);
    Ok(buf)
}

impl MessageLog {
    /// Open or create the log in `dir` with the default segment size.
    pub fn open(dir: &Path) -> Result<MessageLog, LogError> {
        Self::open_with(dir, DEFAULT_SEGMENT_BYTES)
    }

    /// Open or create the log in `dir`; a new segment starts past `segment_bytes`. Reads every
    /// segment and rebuilds the index and the dedup table; cuts a torn record at the end of the
    /// newest segment (see the module doc).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<MessageLog, LogError> {
        Self::open_inner(dir, segment_bytes, DEDUP_CAPACITY)
    }

    fn open_inner(
        dir: &Path,
        segment_bytes: u64,
        dedup_capacity: usize,
    ) -> Result<MessageLog, LogError> {
        fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let numbers = segment_numbers(dir)?;
        let dedup_hasher = foldhash::quality::RandomState::default();
        let mut convs: FastMap<Box<str>, Conv> = FastMap::default();
        let mut dedup = Dedup {
            map: FastMap::default(),
            order: VecDeque::new(),
            capacity: dedup_capacity,
        };
        let mut messages = 0u64;
        let mut files = Vec::with_capacity(numbers.len().max(1));
        let mut tail_len = 0u64;
        for (index, &number) in numbers.iter().enumerate() {
            let path = dir.join(segment_name(number));
            let last = index + 1 == numbers.len();
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_error("open", &path, e))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| io_error("read", &path, e))?;
            let mut off = 0;
            while off < bytes.len() {
                let (record, len) = match parse(&bytes[off..]) {
                    Ok(parsed) => parsed,
                    Err(why) if last => {
                        tracing::warn!(
                            file = %path.display(),
                            offset = off,
                            cut = bytes.len() - off,
                            reason = why,
                            "torn record at the end of the message log cut off"
                        );
                        file.set_len(off as u64)
                            .and_then(|()| file.sync_all())
                            .map_err(|e| io_error("truncate", &path, e))?;
                        break;
                    }
                    Err(why) => {
                        return Err(LogError::Corrupt(format!(
                            "{} at offset {off}: {why}",
                            path.display()
                        )));
                    }
                };
                let corrupt = |why: String| {
                    LogError::Corrupt(format!("{} at offset {off}: {why}", path.display()))
                };
                let conv = std::str::from_utf8(record.conv)
                    .map_err(|_| corrupt("the conversation id is not UTF-8".into()))?;
                let pos = pack(index as u32, off as u64);
                match convs.get_mut(conv) {
                    Some(c) if c.next_seq() == record.seq => c.positions.push(pos),
                    Some(c) => {
                        return Err(corrupt(format!(
                            "{conv} seq {} follows seq {}",
                            record.seq,
                            c.next_seq() - 1
                        )));
                    }
                    None if record.seq == 0 => return Err(corrupt(format!("{conv} seq 0"))),
                    None => {
                        convs.insert(
                            conv.into(),
                            Conv {
                                first: record.seq,
                                positions: vec![pos],
                            },
                        );
                    }
                }
                messages += 1;
                if !record.cid.is_empty() {
                    let hash = dedup_hasher.hash_one((record.conv, record.from, record.cid));
                    dedup.insert(hash, record.seq);
                }
                off += len;
            }
            if last {
                // Records a crashed process wrote may still be only in the page cache.
                file.sync_data().map_err(|e| io_error("sync", &path, e))?;
                tail_len = off as u64;
            }
            files.push(Arc::new(file));
        }
        let first_number = numbers.first().copied().unwrap_or(0);
        if files.is_empty() {
            files.push(create_segment(dir, first_number)?);
        }
        for conv in convs.values_mut() {
            conv.positions.shrink_to_fit();
        }
        let seg = (files.len() - 1) as u32;
        let file = Arc::clone(&files[files.len() - 1]);
        tracing::info!(
            dir = %dir.display(),
            segments = files.len(),
            conversations = convs.len(),
            messages,
            "message log opened"
        );
        Ok(MessageLog {
            dir: dir.to_owned(),
            first_number,
            segment_bytes: segment_bytes.clamp(1, MAX_SEGMENT_BYTES),
            dedup_hasher,
            state: Mutex::new(State {
                convs,
                messages,
                dedup,
                tail: Tail {
                    seg,
                    pending_start: tail_len,
                    pending: Vec::new(),
                    spare: Vec::new(),
                    queue: VecDeque::new(),
                    queued_bytes: 0,
                    next_chunk: 0,
                    files,
                },
                broken: None,
            }),
            writer: Mutex::new(Writer {
                seg,
                file,
                unsynced: false,
                written_through: 0,
                durable_through: 0,
            }),
            #[cfg(test)]
            refuse_writes: std::sync::atomic::AtomicBool::new(false),
        })
    }

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
    fn write_chunks(&self, w: &mut Writer, target: u64) -> Result<(), LogError> {
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

    fn write_at(&self, file: &File, data: &[u8], at: u64) -> io::Result<()> {
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
    fn retry_later(&self, what: &str, seg: u32, err: io::Error) -> LogError {
        let path = self.segment_path(seg);
        let why = format!("{what} {}: {err}", path.display());
        tracing::error!(cause = %why, "message log write refused; the next sync tries again");
        LogError::Io(io::Error::new(err.kind(), why))
    }

    /// Record a failed fsync: what reached the disk is unknown, so the log refuses appends and
    /// syncs from now on.
    fn fail(&self, what: &str, seg: u32, err: io::Error) -> LogError {
        let path = self.segment_path(seg);
        let why = format!("{what} {}: {err}", path.display());
        tracing::error!(cause = %why, "message log failed; it refuses writes until reopened");
        let mut st = self.state();
        if st.broken.is_none() {
            st.broken = Some((err.kind(), why.clone()));
        }
        LogError::Io(io::Error::new(err.kind(), why))
    }

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
    fn fetch(&self, tail: &Tail, conv: &str, seq: u64, pos: u64) -> Result<Fetch, LogError> {
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

    fn read_disk(&self, file: &File, pos: u64) -> Result<Vec<u8>, LogError> {
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
    fn checked<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn envelope(conv: &str, seq: u64) -> Vec<u8> {
        format!(
            "{{\"conv\":\"{conv}\",\"seq\":{seq},\"body\":\"{}\"}}",
            "x".repeat(seq as usize % 50)
        )
        .into_bytes()
    }

    fn fill(log: &MessageLog, conv: &str, n: u64) {
        for seq in log.last_seq(conv) + 1..=log.last_seq(conv) + n {
            log.append(conv, seq, None, &envelope(conv, seq)).unwrap();
        }
    }

    fn seqs(page: &[(u64, Vec<u8>)]) -> Vec<u64> {
        page.iter().map(|(seq, _)| *seq).collect()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        files
    }

    /// Every message of `conv` from 1 to `n` reads back as written.
    fn check_all(log: &MessageLog, conv: &str, n: u64) {
        assert_eq!(log.last_seq(conv), n, "{conv}");
        let page = log.read(conv, 1, u64::MAX, usize::MAX, false).unwrap();
        assert_eq!(page.len() as u64, n, "{conv}");
        for (i, (seq, env)) in page.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1);
            assert_eq!(env, &envelope(conv, *seq), "{conv}#{seq}");
        }
    }

    #[test]
    fn shareable_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<MessageLog>();
    }

    #[test]
    fn append_read_get_ranges_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let log = MessageLog::open(dir.path()).unwrap();
        assert_eq!(log.last_seq("a"), 0);
        assert!(log.read("a", 1, 10, 10, false).unwrap().is_empty());
        fill(&log, "a", 10);
        fill(&log, "b", 3);
        assert_eq!(log.last_seq("a"), 10);
        assert_eq!(log.stats(), (2, 13));

        let page = log.read("a", 3, 7, 100, false).unwrap();
        assert_eq!(seqs(&page), [3, 4, 5, 6, 7]);
        assert_eq!(page[0].1, envelope("a", 3));
        assert_eq!(seqs(&log.read("a", 3, 7, 2, false).unwrap()), [3, 4]);
        assert_eq!(seqs(&log.read("a", 3, 7, 2, true).unwrap()), [7, 6]);
        assert_eq!(
            seqs(&log.read("a", 0, u64::MAX, 3, true).unwrap()),
            [10, 9, 8]
        );
        assert_eq!(seqs(&log.read("a", 9, 50, 10, false).unwrap()), [9, 10]);
        assert!(log.read("a", 11, 20, 10, false).unwrap().is_empty());
        assert!(log.read("a", 5, 4, 10, false).unwrap().is_empty());
        assert!(log.read("a", 1, 10, 0, false).unwrap().is_empty());

        assert_eq!(log.get("b", 2).unwrap(), Some(envelope("b", 2)));
        assert_eq!(log.get("b", 4).unwrap(), None);
        assert_eq!(log.get("b", 0).unwrap(), None);
        assert_eq!(log.get("c", 1).unwrap(), None);

        // The same answers once the records are on disk.
        log.sync().unwrap();
        assert_eq!(seqs(&log.read("a", 3, 7, 2, true).unwrap()), [7, 6]);
        check_all(&log, "a", 10);
        check_all(&log, "b", 3);
    }

    #[test]
    fn a_full_disk_delays_durability_and_loses_nothing() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let log = MessageLog::open(dir.path()).unwrap();
        fill(&log, "a", 5);
        log.sync().unwrap();
        log.refuse_writes.store(true, Relaxed);
        fill(&log, "a", 5);
        // Not durable, and said so; still readable.
        assert!(log.sync().is_err());
        assert!(log.sync().is_err());
        check_all(&log, "a", 10);
        // Memory stays bounded: past the limit, appends are refused with a clear error.
        let big = vec![b'x'; 1 << 20];
        let refused = (11..200)
            .map(|seq| log.append("b", seq - 10, None, &big))
            .find_map(Result::err)
            .expect("appends refused once the unwritten bytes pass the limit");
        assert!(
            refused.to_string().contains("the disk refuses writes"),
            "{refused}"
        );
        let appended_b = log.last_seq("b");
        assert!(appended_b >= 60, "{appended_b}");
        // Space again: the next sync writes everything, and a reopened log has it all.
        log.refuse_writes.store(false, Relaxed);
        log.sync().unwrap();
        fill(&log, "a", 2);
        log.sync().unwrap();
        drop(log);
        let log = MessageLog::open(dir.path()).unwrap();
        check_all(&log, "a", 12);
        assert_eq!(log.last_seq("b"), appended_b);
        assert_eq!(log.get("b", appended_b).unwrap(), Some(big));
    }

    #[test]
    fn non_contiguous_seq_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = MessageLog::open(dir.path()).unwrap();
        for bad in [0, 2] {
            let err = log.append("a", bad, None, b"{}").unwrap_err();
            assert!(
                matches!(err, LogError::OutOfOrder { expected: 1, got, .. } if got == bad),
                "{err}"
            );
        }
        fill(&log, "a", 2);
        for bad in [1, 2, 4] {
            assert!(matches!(
                log.append("a", bad, None, b"{}"),
                Err(LogError::OutOfOrder { expected: 3, .. })
            ));
        }
        assert_eq!(log.stats(), (1, 2));
        log.append("a", 3, None, b"{}").unwrap();
        let err = log
            .append("a", 4, None, &vec![0; MAX_ENVELOPE_BYTES + 1])
            .unwrap_err();
        assert!(matches!(err, LogError::TooLarge(_)), "{err}");
        assert_eq!(log.last_seq("a"), 3);
    }

    #[test]
    fn dedup_found_and_rebuilt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = MessageLog::open(dir.path()).unwrap();
            log.append("a", 1, Some(("alice", "c1")), b"{\"n\":1}")
                .unwrap();
            log.append("a", 2, None, b"{\"n\":2}").unwrap();
            log.append("a", 3, Some(("bob", "c1")), b"{\"n\":3}")
                .unwrap();
            log.append("b", 1, Some(("alice", "c1")), b"{\"n\":4}")
                .unwrap();
            log.append("b", 2, Some(("alice", "")), b"{\"n\":5}")
                .unwrap();
            assert_eq!(log.find_dedup("a", "alice", "c1"), Some(1));
            assert_eq!(log.find_dedup("a", "bob", "c1"), Some(3));
            assert_eq!(log.find_dedup("b", "alice", "c1"), Some(1));
            assert_eq!(log.find_dedup("a", "alice", "c2"), None);
            assert_eq!(log.find_dedup("b", "alice", ""), None);
            assert_eq!(log.find_dedup("c", "alice", "c1"), None);
        }
        let log = MessageLog::open(dir.path()).unwrap();
        assert_eq!(log.stats(), (2, 5));
        assert_eq!(log.last_seq("a"), 3);
        assert_eq!(log.last_seq("b"), 2);
        assert_eq!(log.get("a", 3).unwrap().unwrap(), b"{\"n\":3}");
        // From disk this time.
        assert_eq!(log.find_dedup("a", "alice", "c1"), Some(1));
        assert_eq!(log.find_dedup("a", "bob", "c1"), Some(3));
        assert_eq!(log.find_dedup("b", "alice", "c1"), Some(1));
        assert_eq!(log.find_dedup("a", "alice", "c2"), None);
        log.append("a", 4, Some(("alice", "c2")), b"{}").unwrap();
        assert_eq!(log.find_dedup("a", "alice", "c2"), Some(4));
    }

    #[test]
    fn dedup_keeps_only_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = MessageLog::open_inner(dir.path(), DEFAULT_SEGMENT_BYTES, 3).unwrap();
            for seq in 1..=5 {
                let cid = format!("c{seq}");
                log.append("a", seq, Some(("alice", &cid)), b"{}").unwrap();
            }
            assert_eq!(log.find_dedup("a", "alice", "c2"), None);
            assert_eq!(log.find_dedup("a", "alice", "c3"), Some(3));
            assert_eq!(log.find_dedup("a", "alice", "c5"), Some(5));
        }
        let log = MessageLog::open_inner(dir.path(), DEFAULT_SEGMENT_BYTES, 3).unwrap();
        assert_eq!(log.find_dedup("a", "alice", "c2"), None);
        assert_eq!(log.find_dedup("a", "alice", "c3"), Some(3));
        assert_eq!(log.dedup_len(), 3);
    }

    #[test]
    fn reopen_rebuilds_the_index() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = MessageLog::open(dir.path()).unwrap();
            for round in 0..3 {
                for conv in ["a", "b", "c"] {
                    fill(&log, conv, 7 + round);
                }
            }
            log.sync().unwrap();
        }
        let log = MessageLog::open(dir.path()).unwrap();
        assert_eq!(log.stats(), (3, 3 * (7 + 8 + 9)));
        for conv in ["a", "b", "c"] {
            check_all(&log, conv, 24);
        }
        fill(&log, "a", 1);
        check_all(&log, "a", 25);
    }

    #[test]
    fn unsynced_records_are_readable_including_past_the_write_behind() {
        let dir = tempfile::tempdir().unwrap();
        let log = MessageLog::open(dir.path()).unwrap();
        fill(&log, "a", 5);
        check_all(&log, "a", 5);
        assert_eq!(fs::metadata(&segments(dir.path())[0]).unwrap().len(), 0);
        // Past 1 MiB the buffer goes to the file without a sync; everything stays readable.
        let big = vec![b'y'; 4000];
        for seq in 6..=600 {
            log.append("a", seq, None, &big).unwrap();
        }
        assert!(fs::metadata(&segments(dir.path())[0]).unwrap().len() >= WRITE_BEHIND_BYTES as u64);
        assert_eq!(log.get("a", 3).unwrap(), Some(envelope("a", 3)));
        assert_eq!(log.read("a", 6, 600, 1000, true).unwrap().len(), 595);
        assert_eq!(log.get("a", 600).unwrap(), Some(big.clone()));
        log.sync().unwrap();
        drop(log);
        let log = MessageLog::open(dir.path()).unwrap();
        assert_eq!(log.last_seq("a"), 600);
        assert_eq!(log.get("a", 300).unwrap(), Some(big));
    }

    #[test]
    fn segments_roll_over() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = MessageLog::open_with(dir.path(), 1000).unwrap();
            for _ in 0..20 {
                fill(&log, "a", 3);
                fill(&log, "b", 2);
                // Reads across sealed segments, queued chunks and the buffer.
                let n = log.last_seq("a");
                check_all(&log, "a", n);
            }
            log.sync().unwrap();
            check_all(&log, "a", 60);
            check_all(&log, "b", 40);
        }
        let files = segments(dir.path());
        assert!(files.len() > 5, "{} segments", files.len());
        assert!(files[0].ends_with("000000000000.log"));
        for file in &files[..files.len() - 1] {
            assert!(fs::metadata(file).unwrap().len() <= 1000);
        }
        let log = MessageLog::open_with(dir.path(), 1000).unwrap();
        check_all(&log, "a", 60);
        check_all(&log, "b", 40);
        fill(&log, "a", 30);
        drop(log);
        let log = MessageLog::open_with(dir.path(), 1000).unwrap();
        check_all(&log, "a", 90);
        // A record larger than a segment gets one of its own.
        log.append("b", 41, None, &vec![b'z'; 5000]).unwrap();
        fill(&log, "b", 1);
        log.sync().unwrap();
        drop(log);
        let log = MessageLog::open_with(dir.path(), 1000).unwrap();
        assert_eq!(log.get("b", 41).unwrap().unwrap().len(), 5000);
        assert_eq!(log.last_seq("b"), 42);
    }

    #[test]
    fn torn_tail_is_cut_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = MessageLog::open(dir.path()).unwrap();
            log.append("a", 1, None, &envelope("a", 1)).unwrap();
            log.append("a", 2, Some(("alice", "c2")), &envelope("a", 2))
                .unwrap();
            log.append("a", 3, Some(("alice", "c3")), &envelope("a", 3))
                .unwrap();
            log.sync().unwrap();
        }
        let path = &segments(dir.path())[0];
        let len = fs::metadata(path).unwrap().len();
        // Cut the last record in the middle, then add garbage after it.
        let file = OpenOptions::new().write(true).open(path).unwrap();
        file.set_len(len - 5).unwrap();
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(&[0xAB; 37]).unwrap();
        drop(file);

        let log = MessageLog::open(dir.path()).unwrap();
        assert_eq!(log.last_seq("a"), 2);
        assert_eq!(log.find_dedup("a", "alice", "c2"), Some(2));
        assert_eq!(log.find_dedup("a", "alice", "c3"), None);
        fill(&log, "a", 2);
        log.sync().unwrap();
        drop(log);
        let log = MessageLog::open(dir.path()).unwrap();
        check_all(&log, "a", 4);
        drop(log);

        // A huge length in the last header is torn too.
        let mut file = OpenOptions::new().append(true).open(path).unwrap();
        file.write_all(&u32::MAX.to_le_bytes()).unwrap();
        file.write_all(&[1, 2, 3, 4, 5, 6]).unwrap();
        drop(file);
        let log = MessageLog::open(dir.path()).unwrap();
        check_all(&log, "a", 4);
    }

    #[test]
    fn corruption_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = MessageLog::open_with(dir.path(), 500).unwrap();
            fill(&log, "a", 40);
        }
        let files = segments(dir.path());
        assert!(files.len() >= 3);
        let mut bytes = fs::read(&files[1]).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x55;
        fs::write(&files[1], &bytes).unwrap();
        let err = MessageLog::open_with(dir.path(), 500).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LogError::Corrupt(_)), "{text}");
        assert!(
            text.contains("000000000001.log") && text.contains("offset"),
            "{text}"
        );

        // A missing segment is an error too.
        fs::remove_file(&files[1]).unwrap();
        let err = MessageLog::open_with(dir.path(), 500).unwrap_err();
        assert!(
            err.to_string().contains("000000000001.log is missing"),
            "{err}"
        );
    }

    #[test]
    fn concurrent_appends_and_syncs_survive_a_reopen() {
        const THREADS: usize = 6;
        const PER_THREAD: u64 = 3000;
        let dir = tempfile::tempdir().unwrap();
        {
            let log = Arc::new(MessageLog::open_with(dir.path(), 256 << 10).unwrap());
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let log = Arc::clone(&log);
                    std::thread::spawn(move || {
                        let conv = format!("conv{t}");
                        for seq in 1..=PER_THREAD {
                            let cid = format!("m{seq}");
                            log.append(&conv, seq, Some(("p", &cid)), &envelope(&conv, seq))
                                .unwrap();
                            if seq % 500 == 0 {
                                log.sync().unwrap();
                                assert_eq!(
                                    log.get(&conv, seq / 2).unwrap(),
                                    Some(envelope(&conv, seq / 2))
                                );
                            }
                        }
                    })
                })
                .collect();
            let syncer = {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        log.sync().unwrap();
                        std::thread::yield_now();
                    }
                })
            };
            // Reads race the appends, the write-behind and the rollovers.
            let reader = {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for round in 0..2000u64 {
                        let conv = format!("conv{}", round as usize % THREADS);
                        let last = log.last_seq(&conv);
                        let page = log.read(&conv, 1, last, 20, true).unwrap();
                        assert_eq!(page.len() as u64, last.min(20));
                        for (seq, env) in page {
                            assert_eq!(env, envelope(&conv, seq));
                        }
                    }
                })
            };
            for worker in workers {
                worker.join().unwrap();
            }
            syncer.join().unwrap();
            reader.join().unwrap();
            log.sync().unwrap();
        }
        let log = MessageLog::open_with(dir.path(), 256 << 10).unwrap();
        assert_eq!(log.stats(), (THREADS, THREADS as u64 * PER_THREAD));
        for t in 0..THREADS {
            let conv = format!("conv{t}");
            check_all(&log, &conv, PER_THREAD);
            assert_eq!(log.find_dedup(&conv, "p", "m77"), Some(77));
        }
    }
}
