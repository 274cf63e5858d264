//! The segment files: their names, listing them (checked for gaps), creating one durably.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::{LogError, MAX_SEGMENTS};

pub(super) fn segment_name(number: u64) -> String {
    format!("{number:012}.log")
}

/// The numbers of the segment files in `dir`, in order, checked for gaps.
pub(super) fn segment_numbers(dir: &Path) -> Result<Vec<u64>, LogError> {
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

pub(super) fn io_error(what: &str, path: &Path, err: io::Error) -> LogError {
    LogError::Io(io::Error::new(
        err.kind(),
        format!("{what} {}: {err}", path.display()),
    ))
}

/// Create a new, empty segment file and make its name durable.
pub(super) fn create_segment(dir: &Path, number: u64) -> Result<Arc<File>, LogError> {
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
