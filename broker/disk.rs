//! Room on the disk: the free-space limit (`[store] disk_free_limit`, as RabbitMQ's
//! `disk_free_limit`). Below it the broker refuses new durable work (a QoS 1/2 PUBLISH that
//! would be stored, an IM message or request) before the disk is full: sled keeps an I/O error
//! until it is reopened, so a full disk would otherwise refuse every durable write until a
//! restart. The free space of the data folder's filesystem is looked at periodically (statvfs);
//! the broker resumes by itself when room comes back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How much room must stay free: bytes, or a share of the filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeLimit {
    Bytes(u64),
    /// Per cent of the filesystem's size.
    Percent(f64),
}

impl FreeLimit {
    /// `"100MiB"`, `"2GB"`, `"1048576"`, `"5%"`; `"0"` turns the limit off.
    pub fn parse(text: &str) -> Result<FreeLimit, String> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            let value: f64 = percent
                .trim()
                .parse()
                .map_err(|_| format!("{percent:?} is not a number"))?;
            if !(0.0..100.0).contains(&value) {
                return Err("a percentage must be at least 0 and below 100".into());
            }
            return Ok(FreeLimit::Percent(value));
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size (e.g. \"100MiB\" or \"5%\")"))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" => 1 << 10,
            "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            "tb" => 1000 * 1000 * 1000 * 1000,
            "tib" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown unit {other:?} (B, kB, KiB, MB, MiB, GB, GiB)"
                ));
            }
        };
        Ok(FreeLimit::Bytes((number * scale as f64) as u64))
    }

    /// The limit in bytes on a filesystem of `total` bytes.
    pub fn bytes(&self, total: u64) -> u64 {
        match *self {
            FreeLimit::Bytes(bytes) => bytes,
            FreeLimit::Percent(percent) => (total as f64 * percent / 100.0) as u64,
        }
    }
}

/// Free and total bytes of the filesystem holding `path` (for an unprivileged user: `f_bavail`).
pub fn free_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    // SAFETY: statvfs writes into the zeroed struct given, reading the NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = stat.f_frsize as u64;
    Ok((stat.f_bavail as u64 * unit, stat.f_blocks as u64 * unit))
}

/// The broker's view of the disk: whether it is below the limit, and the last free space seen.
#[derive(Debug)]
pub struct Disk {
    path: PathBuf,
    limit: FreeLimit,
    low: AtomicBool,
    free: AtomicU64,
    limit_bytes: AtomicU64,
}

impl Disk {
    pub fn new(path: PathBuf, limit: FreeLimit) -> Disk {
        let disk = Disk {
            path,
            limit,
            low: AtomicBool::new(false),
            free: AtomicU64::new(0),
            limit_bytes: AtomicU64::new(0),
        };
        disk.check();
        disk
    }

    /// Below the limit: new durable work is refused.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes.load(Ordering::Relaxed)
    }

    /// Look at the free space now; logs a change of state.
    pub fn check(&self) {
        let (free, total) = match free_space(&self.path) {
            Ok(space) => space,
            Err(err) => {
                tracing::warn!(cause = %err, path = %self.path.display(), "cannot read the free space");
                return;
            }
        };
        let limit = self.limit.bytes(total);
        self.free.store(free, Ordering::Relaxed);
        self.limit_bytes.store(limit, Ordering::Relaxed);
        let low = limit > 0 && free < limit;
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::error!(
                    free,
                    limit,
                    path = %self.path.display(),
                    "free disk space below disk_free_limit: refusing durable messages until there is room"
                );
            } else {
                tracing::warn!(
                    free,
                    limit,
                    "free disk space above disk_free_limit again: accepting durable messages"
                );
            }
        }
    }
}

/// Look at the disk every `interval` until the broker stops.
pub async fn watch(disk: Arc<Disk>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let disk = disk.clone();
        // statvfs may block on a slow filesystem: not on a worker thread.
        let _ = tokio::task::spawn_blocking(move || disk.check()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_sizes_or_percentages() {
        assert_eq!(FreeLimit::parse("100MiB"), Ok(FreeLimit::Bytes(100 << 20)));
        assert_eq!(
            FreeLimit::parse("2 GB"),
            Ok(FreeLimit::Bytes(2_000_000_000))
        );
        assert_eq!(FreeLimit::parse("4096"), Ok(FreeLimit::Bytes(4096)));
        assert_eq!(FreeLimit::parse("0"), Ok(FreeLimit::Bytes(0)));
        assert_eq!(FreeLimit::parse("5%"), Ok(FreeLimit::Percent(5.0)));
        assert_eq!(FreeLimit::Percent(5.0).bytes(1000), 50);
        assert!(FreeLimit::parse("lots").is_err());
        assert!(FreeLimit::parse("5 parsecs").is_err());
        assert!(FreeLimit::parse("100%").is_err());
    }

    #[test]
    fn the_free_space_of_a_folder_is_known() {
        let (free, total) = free_space(Path::new(".")).unwrap();
        assert!(total > 0 && free <= total);
        let disk = Disk::new(".".into(), FreeLimit::Bytes(0));
        assert!(!disk.is_low());
        let disk = Disk::new(".".into(), FreeLimit::Bytes(u64::MAX));
        assert!(disk.is_low());
    }
}
