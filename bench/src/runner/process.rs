//! What the load generator reads about a process: its resident memory, CPU time and open-files limit.

use super::*;

/// Parses the `VmRSS` line of a `/proc/PID/status` text into bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let unit = parts.next().unwrap_or("kB");
    let mult = match unit {
        "kB" => 1024,
        "mB" | "MB" => 1024 * 1024,
        "B" => 1,
        _ => return None,
    };
    Some(value * mult)
}

/// Resident memory of process `pid` in bytes.
pub fn read_rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vm_rss(&text).ok_or_else(|| anyhow!("no VmRSS line in {path}"))
}

/// Clock ticks per second of the `/proc` CPU times (`USER_HZ`, fixed at 100 by the Linux ABI).
pub(super) const USER_HZ: f64 = 100.0;

/// User plus system CPU seconds from a `/proc/PID/stat` text.
pub fn parse_cpu_secs(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// CPU seconds used so far by process `pid` (all threads), or by this process for `None`.
pub fn read_cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_cpu_secs(&std::fs::read_to_string(path).ok()?)
}

/// Soft limit on open files of this process, from `/proc/self/limits`.
pub(super) fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Fails early when this process cannot hold `conns` sockets.
pub(super) fn check_fd_limit(conns: usize) -> anyhow::Result<()> {
    if let Some(limit) = open_files_limit() {
        let need = conns as u64 + 64;
        if need > limit {
            bail!(
                "{conns} connections need about {need} open files but the limit is {limit}; \
                 raise it with `ulimit -n` (the broker needs the same)"
            );
        }
    }
    Ok(())
}
