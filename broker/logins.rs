//! Password checks under load. An argon2 check holds about 19 MiB and tens of milliseconds of a
//! core, and anyone who can reach the port can ask for one; unbounded, a hundred concurrent
//! CONNECTs with wrong passwords took over a gigabyte. So:
//! - at most `password_checks` checks run at once (0: one per core), and at most
//!   `password_queue` CONNECTs wait for one; the rest are refused as Server busy (v5 0x89, v3
//!   0x03), counted in `$SYS/broker/auth/busy`;
//! - a source address with more than `FREE_FAILURES` recent failures has one check at a time
//!   (its other CONNECTs that name an account are refused as busy at once), and that check waits
//!   `failure_delay` after its last failure: guessing from one address gets slow;
//! - a wrong password for an account with recent failures is answered after the account's
//!   `failure_delay`: guessing one account from many addresses gets slow too, while its owner's
//!   right password is answered at once (and from an address of its own, checked at once);
//! - failures are counted in `$SYS/broker/auth/failures`; a record is forgotten after `FORGET`
//!   without a failure, or at a success from its address.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::auth::{Accounts, AuthError};

/// Failures of an address or account that cost nothing.
const FREE_FAILURES: u32 = 3;
/// The first delay after the free failures; it doubles with each further failure.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay: never a lockout, a slowdown.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// A record without a failure for this long is forgotten.
const FORGET: Duration = Duration::from_secs(600);
/// Records kept per kind (addresses, accounts); past it old records are dropped, then new
/// ones are not kept (the concurrency bound still holds).
const MAX_RECORDS: usize = 16_384;

/// How long to wait after the `failures`-th recent failure.
pub fn failure_delay(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(16);
    (FIRST_DELAY * (1u32 << doublings)).min(MAX_DELAY)
}

/// What a password check found.
#[derive(Debug)]
pub enum Verdict {
    /// The right password.
    Good,
    /// A wrong password (answered after the account's delay).
    Bad,
    /// No such account.
    NoAccount,
    /// Too many checks waiting (or this address already has one): refused as Server busy.
    Busy,
    /// The account store failed.
    Failed(AuthError),
    /// The check itself could not run.
    Lost,
}

#[derive(Debug, Default)]
struct Record {
    failures: u32,
    last_failure: Option<Instant>,
    /// Checks of this address admitted and not finished.
    in_flight: u32,
}

impl Record {
    /// Recent failures (0 once forgotten).
    fn recent(&self, now: Instant) -> u32 {
        match self.last_failure {
            Some(at) if now.duration_since(at) < FORGET => self.failures,
            _ => 0,
        }
    }
}

/// Failure records by address or by account, bounded (see `MAX_RECORDS`).
#[derive(Debug)]
struct Records<K> {
    map: HashMap<K, Record>,
}

impl<K: Hash + Eq + Clone> Records<K> {
    fn new() -> Self {
        Self {
            map: HashMap::new(),
        }
    }

    /// The record of `key`, made if there is room.
    fn entry(&mut self, key: &K, now: Instant) -> Option<&mut Record> {
        if !self.map.contains_key(key) {
            if self.map.len() >= MAX_RECORDS {
                self.map.retain(|_, r| r.in_flight > 0 || r.recent(now) > 0);
            }
            if self.map.len() >= MAX_RECORDS {
                return None;
            }
            self.map.insert(key.clone(), Record::default());
        }
        self.map.get_mut(key)
    }

    /// One more failure; how many recent ones now.
    fn fail(&mut self, key: &K, now: Instant) -> u32 {
        let Some(record) = self.entry(key, now) else {
            return 0;
        };
        record.failures = record.recent(now) + 1;
        record.last_failure = Some(now);
        record.failures
    }

    /// Drop the record unless a check of it is running.
    fn clear(&mut self, key: &K) {
        if let Some(record) = self.map.get_mut(key) {
            record.failures = 0;
            record.last_failure = None;
            if record.in_flight == 0 {
                self.map.remove(key);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The broker's password checks (see the module doc).
#[derive(Debug)]
pub struct Logins {
    checks: Semaphore,
    queue_max: usize,
    queued: AtomicUsize,
    sources: Mutex<Records<IpAddr>>,
    accounts: Mutex<Records<String>>,
    /// CONNECTs refused as Server busy.
    pub busy: AtomicU64,
    /// Wrong passwords.
    pub failures: AtomicU64,
}

/// An admitted check of an address: counted in its record until it ends.
struct InFlight<'a> {
    logins: &'a Logins,
    source: IpAddr,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut sources = lock(&self.logins.sources);
        if let Some(record) = sources.map.get_mut(&self.source) {
            record.in_flight = record.in_flight.saturating_sub(1);
            if record.in_flight == 0 && record.last_failure.is_none() {
                sources.map.remove(&self.source);
            }
        }
    }
}

impl Logins {
    /// `checks`: how many run at once (0: one per core); `queue`: how many may wait.
    pub fn new(checks: usize, queue: usize) -> Self {
        let checks = match checks {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Self {
            checks: Semaphore::new(checks),
            queue_max: queue,
            queued: AtomicUsize::new(0),
            sources: Mutex::new(Records::new()),
            accounts: Mutex::new(Records::new()),
            busy: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    fn refuse_busy(&self) -> Verdict {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Verdict::Busy
    }

    /// Check `password` for the account `name`, from `source`, within the bounds above.
    pub async fn check(
        &self,
        accounts: &Accounts,
        source: IpAddr,
        name: &str,
        password: Vec<u8>,
    ) -> Verdict {
        // No account, no hash to compute: answered at once, outside the bounds.
        match accounts.get(name) {
            Ok(Some(_)) => {}
            Ok(None) => return Verdict::NoAccount,
            Err(err) => return Verdict::Failed(err),
        }
        // The address: one check at a time once it has failed repeatedly, after its delay.
        let ready_at = {
            let now = Instant::now();
            let mut sources = lock(&self.sources);
            match sources.entry(&source, now) {
                Some(record) => {
                    let failures = record.recent(now);
                    if failures > FREE_FAILURES && record.in_flight > 0 {
                        drop(sources);
                        return self.refuse_busy();
                    }
                    record.in_flight += 1;
                    record.last_failure.map(|at| at + failure_delay(failures))
                }
                None => None,
            }
        };
        let _in_flight = InFlight {
            logins: self,
            source,
        };
        if let Some(at) = ready_at {
            tokio::time::sleep_until(at.into()).await;
        }
        // The queue, then a check of its own.
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.queue_max {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return self.refuse_busy();
        }
        let permit = self.checks.acquire().await;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let Ok(_permit) = permit else {
            return Verdict::Lost;
        };
        let verifier = accounts.clone();
        let account = name.to_owned();
        let verdict =
            tokio::task::spawn_blocking(move || verifier.verify(&account, &password)).await;
        match verdict {
            Ok(Ok(Some(true))) => {
                lock(&self.sources).clear(&source);
                Verdict::Good
            }
            Ok(Ok(Some(false))) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                lock(&self.sources).fail(&source, now);
                let failures = lock(&self.accounts).fail(&name.to_owned(), now);
                drop(_permit);
                tokio::time::sleep(failure_delay(failures)).await;
                Verdict::Bad
            }
            Ok(Ok(None)) => Verdict::NoAccount,
            Ok(Err(err)) => Verdict::Failed(err),
            Err(_) => Verdict::Lost,
        }
    }

    /// Records kept now (addresses, accounts): bounded by `MAX_RECORDS` each.
    pub fn records(&self) -> (usize, usize) {
        (
            lock(&self.sources).map.len(),
            lock(&self.accounts).map.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_grows_after_the_free_failures_and_stays_bounded() {
        assert_eq!(failure_delay(0), Duration::ZERO);
        assert_eq!(failure_delay(FREE_FAILURES), Duration::ZERO);
        assert_eq!(failure_delay(FREE_FAILURES + 1), FIRST_DELAY);
        assert_eq!(failure_delay(FREE_FAILURES + 2), FIRST_DELAY * 2);
        assert_eq!(failure_delay(1000), MAX_DELAY);
        assert_eq!(failure_delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn records_are_bounded_and_forgotten() {
        let mut records: Records<u32> = Records::new();
        let now = Instant::now();
        for key in 0..MAX_RECORDS as u32 {
            records.fail(&key, now);
        }
        // Full of recent failures: a new key is not kept.
        assert_eq!(records.fail(&u32::MAX, now), 0);
        assert_eq!(records.map.len(), MAX_RECORDS);
        // Once they are old, they make room.
        let later = now + FORGET + Duration::from_secs(1);
        assert_eq!(records.fail(&u32::MAX, later), 1);
        assert_eq!(records.map.len(), 1);
        assert_eq!(records.fail(&u32::MAX, later), 2);
        records.clear(&u32::MAX);
        assert!(records.map.is_empty());
    }
}
