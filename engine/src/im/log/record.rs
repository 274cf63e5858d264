//! The record format (module doc of `log`): parsing, encoding the strings, packed positions,
//! reading one record from a segment file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::{
    HEADER, KIND_MESSAGE, LogError, MAX_BODY, MIN_BODY, OFFSET_BITS, OFFSET_MASK, READ_GUESS,
};

/// A record as parsed; the strings are bytes as stored.
pub(super) struct Record<'a> {
    pub(super) conv: &'a [u8],
    pub(super) seq: u64,
    pub(super) from: &'a [u8],
    pub(super) cid: &'a [u8],
    pub(super) envelope: &'a [u8],
}

pub(super) fn pack(seg: u32, off: u64) -> u64 {
    (u64::from(seg) << OFFSET_BITS) | off
}

pub(super) fn unpack(pos: u64) -> (u32, u64) {
    ((pos >> OFFSET_BITS) as u32, pos & OFFSET_MASK)
}

pub(super) fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    let (head, rest) = bytes
        .split_at_checked(n)
        .ok_or_else(|| format!("a field of {n} bytes runs past the end of the record"))?;
    *bytes = rest;
    Ok(head)
}

pub(super) fn take_str<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let len = u16::from_le_bytes([take(bytes, 1)?[0], take(bytes, 1)?[0]]);
    take(bytes, usize::from(len))
}

/// The record at the start of `bytes` and its length, or why there is none.
pub(super) fn parse(bytes: &[u8]) -> Result<(Record<'_>, usize), String> {
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

pub(super) fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    // Lengths are checked by the caller.
    buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
    buf.extend_from_slice(s);
}

pub(super) fn check_len(what: &str, s: &str) -> Result<(), LogError> {
    if s.len() > usize::from(u16::MAX) {
        return Err(LogError::TooLarge(format!(
            "{what} is {} bytes; the limit is {}",
            s.len(),
            u16::MAX
        )));
    }
    Ok(())
}

/// Read the whole record at `off` of `file` (one `pread` for most records).
pub(super) fn read_record(file: &File, off: u64) -> io::Result<Vec<u8>> {
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
