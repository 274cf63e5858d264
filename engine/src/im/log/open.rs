//! Opening the log: every segment read and checked, the index and the dedup table rebuilt, a
//! torn record at the end of the newest segment cut off (the module doc's crash recovery).

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::index::{Conv, Dedup};
use super::record::{pack, parse};
use super::segments::{create_segment, io_error, segment_name, segment_numbers};
use super::tail::{Tail, Writer};
use super::*;

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

    pub(super) fn open_inner(
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
}
