//! `mqtter bench-store`: a stress test of the store alone, no network (in the daemon crate:
//! it needs the engine, which the load generator of `mqtter bench` does not know).
//!
//! Many threads for a bounded time, each on keys of its own, make batches of puts and
//! removes, reads, prefix and range scans (both directions, with limits) and flushes through
//! the store as the broker uses it (`Staged` over the chosen engine), and check every read
//! against a model of what they wrote. A thread that makes no progress for `stall_secs` is a
//! stuck store (the test fails: a deadlock such as sled's). At the end the store is flushed,
//! closed and reopened, and every thread's keys must be exactly there (durable after a flush).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mqtter_engine::{Batch, Engine, Space, Staged, Store};
use rand::{Rng, SeedableRng};

/// Options of `mqtter bench-store`.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// The engine to stress: fjall, redb or sled.
    #[arg(long, default_value = "fjall")]
    pub engine: String,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Threads working at once.
    #[arg(long, default_value_t = 16)]
    pub threads: usize,
    /// Data folder (default: a temporary folder, removed at the end).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A thread without progress this long fails the run (a stuck store).
    #[arg(long, default_value_t = 30)]
    pub stall_secs: u64,
}

#[derive(Default)]
struct Counts {
    batches: AtomicU64,
    puts: AtomicU64,
    removes: AtomicU64,
    gets: AtomicU64,
    scans: AtomicU64,
    flushes: AtomicU64,
    mismatches: AtomicU64,
    errors: AtomicU64,
    /// The slowest single call, in microseconds.
    slowest_us: AtomicU64,
}

fn timed<T>(counts: &Counts, call: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = call();
    let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    counts.slowest_us.fetch_max(us, Ordering::Relaxed);
    out
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn key(thread: usize, n: u32) -> Vec<u8> {
    format!("t{thread:03}/{n:08}").into_bytes()
}

/// One thread's work until `stop`; its model of its keys at the end.
fn work(
    store: &dyn Store,
    thread: usize,
    stop: &AtomicBool,
    counts: &Counts,
    beat: &AtomicU64,
) -> Model {
    let mut rng = rand::rngs::StdRng::seed_from_u64(thread as u64);
    let mut model = Model::new();
    let prefix = format!("t{thread:03}/").into_bytes();
    let check = |what: &str, ok: bool| {
        if !ok {
            counts.mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::error!(thread, what, "a read did not match what was written");
        }
    };
    while !stop.load(Ordering::Relaxed) {
        beat.fetch_add(1, Ordering::Relaxed);
        match rng.random_range(0..100u32) {
            0..45 => {
                let mut batch = Batch::new();
                for _ in 0..rng.random_range(1..=8) {
                    let n = rng.random_range(0..20_000);
                    if rng.random_bool(0.7) {
                        let value = vec![rng.random::<u8>(); rng.random_range(16..512)];
                        model.insert(key(thread, n), value.clone());
                        batch.put(Space::Queue, key(thread, n), value);
                        counts.puts.fetch_add(1, Ordering::Relaxed);
                    } else {
                        model.remove(&key(thread, n));
                        batch.remove(Space::Queue, key(thread, n));
                        counts.removes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if timed(counts, || store.apply(batch)).is_err() {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                }
                counts.batches.fetch_add(1, Ordering::Relaxed);
            }
            45..70 => {
                let k = key(thread, rng.random_range(0..20_000));
                match timed(counts, || store.get(Space::Queue, &k)) {
                    Ok(v) => check("get", v.as_ref() == model.get(&k)),
                    Err(_) => _ = counts.errors.fetch_add(1, Ordering::Relaxed),
                }
                counts.gets.fetch_add(1, Ordering::Relaxed);
            }
            70..80 => {
                match timed(counts, || store.scan_prefix(Space::Queue, &prefix)) {
                    Ok(pairs) => check(
                        "scan_prefix",
                        pairs.len() == model.len()
                            && pairs
                                .iter()
                                .zip(&model)
                                .all(|((k, v), (mk, mv))| k == mk && v == mv),
                    ),
                    Err(_) => _ = counts.errors.fetch_add(1, Ordering::Relaxed),
                }
                counts.scans.fetch_add(1, Ordering::Relaxed);
            }
            80..95 => {
                let a = rng.random_range(0..20_000);
                let b = rng.random_range(a..=20_000);
                let (from, to) = (key(thread, a), key(thread, b));
                let limit = rng.random_range(1..50);
                let reverse = rng.random_bool(0.5);
                let expected: Vec<_> = {
                    let range = model.range(from.clone()..to.clone());
                    if reverse {
                        range.rev().take(limit).collect()
                    } else {
                        range.take(limit).collect()
                    }
                };
                match timed(counts, || {
                    store.scan_range(Space::Queue, &from, &to, limit, reverse)
                }) {
                    Ok(pairs) => check(
                        "scan_range",
                        pairs.len() == expected.len()
                            && pairs
                                .iter()
                                .zip(&expected)
                                .all(|((k, v), (mk, mv))| k == *mk && v == *mv),
                    ),
                    Err(_) => _ = counts.errors.fetch_add(1, Ordering::Relaxed),
                }
                counts.scans.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                if timed(counts, || store.flush()).is_err() {
                    counts.errors.fetch_add(1, Ordering::Relaxed);
                }
                counts.flushes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    model
}

/// Run the stress test; its one-line report goes to stdout. Fails on a stuck store, a read
/// that did not match, an error, or data missing after the reopen.
pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    let engine: Engine = serde_json::from_value(serde_json::Value::String(args.engine.clone()))
        .with_context(|| format!("unknown engine {:?} (fjall, redb, sled)", args.engine))?;
    if !(args.seconds > 0.0 && args.seconds <= 24.0 * 3600.0) || args.threads == 0 {
        bail!("--seconds must be in (0, 86400] and --threads at least 1");
    }
    let temp = tempfile_dir()?;
    let data = args.data.clone().unwrap_or_else(|| temp.clone());
    let open = || -> anyhow::Result<Arc<dyn Store>> {
        let inner = mqtter_engine::open::open(&data, engine)?;
        Ok(Arc::new(Staged::new(inner, Duration::from_secs(1))?))
    };
    let store = open()?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let beats: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.threads).map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    let workers: Vec<_> = (0..args.threads)
        .map(|thread| {
            let (store, stop, counts, beats) =
                (store.clone(), stop.clone(), counts.clone(), beats.clone());
            std::thread::spawn(move || work(&*store, thread, &stop, &counts, &beats[thread]))
        })
        .collect();
    let run_for = Duration::from_secs_f64(args.seconds);
    let stall = Duration::from_secs(args.stall_secs.max(1));
    let mut last: Vec<(u64, Instant)> = beats
        .iter()
        .map(|b| (b.load(Ordering::Relaxed), Instant::now()))
        .collect();
    let mut stuck = None;
    while started.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(200));
        for (i, beat) in beats.iter().enumerate() {
            let now = beat.load(Ordering::Relaxed);
            if now != last[i].0 {
                last[i] = (now, Instant::now());
            } else if last[i].1.elapsed() > stall {
                stuck = Some(i);
            }
        }
        if stuck.is_some() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(thread) = stuck {
        println!(
            "bench-store {}: STUCK: thread {thread} made no progress for {:?}",
            engine.name(),
            stall
        );
        // The stuck threads cannot be joined: leave them to the process's exit.
        bail!("the store is stuck");
    }
    let models: Vec<Model> = workers
        .into_iter()
        .map(|w| w.join().map_err(|_| anyhow::anyhow!("a worker panicked")))
        .collect::<anyhow::Result<_>>()?;
    let elapsed = started.elapsed().as_secs_f64();
    store.flush().context("the last flush")?;
    drop(store);
    // Reopen (the writer thread lets go of the backend shortly after) and compare.
    let reopened = {
        let mut attempt = 0;
        loop {
            match mqtter_engine::open::open(&data, engine) {
                Ok(store) => break store,
                Err(_) if attempt < 100 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => return Err(err).context("reopen"),
            }
        }
    };
    let mut missing = 0usize;
    for (thread, model) in models.iter().enumerate() {
        let prefix = format!("t{thread:03}/").into_bytes();
        let stored = reopened.scan_prefix(Space::Queue, &prefix)?;
        if stored.len() != model.len()
            || stored
                .iter()
                .zip(model)
                .any(|((k, v), (mk, mv))| k != mk || v != mv)
        {
            missing += 1;
        }
    }
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let ops = n(&counts.batches) + n(&counts.gets) + n(&counts.scans) + n(&counts.flushes);
    println!(
        "bench-store {}: {} threads, {:.1} s: {} ops ({:.0}/s): {} batches ({} puts, {} removes), \
         {} gets, {} scans, {} flushes; slowest call {:.1} ms; {} errors, {} mismatched reads, \
         {} threads' keys differ after reopen; size {} MB",
        engine.name(),
        args.threads,
        elapsed,
        ops,
        ops as f64 / elapsed,
        n(&counts.batches),
        n(&counts.puts),
        n(&counts.removes),
        n(&counts.gets),
        n(&counts.scans),
        n(&counts.flushes),
        n(&counts.slowest_us) as f64 / 1000.0,
        n(&counts.errors),
        n(&counts.mismatches),
        missing,
        reopened.size_on_disk() / 1_000_000,
    );
    drop(reopened);
    if args.data.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    if n(&counts.errors) + n(&counts.mismatches) > 0 || missing > 0 {
        bail!("the store did not keep what was written");
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("mqtter-bench-store-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
