//! Loop detection by repetition: how many times each rule ran in each chain, kept at a cost per
//! run that does not grow with the chains seen (`[rules] max_repeats`, docs/RULES.md).

use std::collections::HashMap;
use std::hash::BuildHasher;

/// Runs so far per (chain id, rule id) pair, the pair kept as a seeded 64-bit hash: no copy of
/// either id per run, and a map entry of 16 bytes. Two pairs share a hash with a probability
/// of about 1 in 10^9 at 100,000 pairs kept (a client chooses chain ids, not the seed).
type RepeatMap = HashMap<u64, u32, foldhash::fast::RandomState>;

/// How many times each rule ran in each chain, remembered in two generations: the current one
/// takes every new pair and becomes the old one when it is [`Repeats::SPAN_MS`] old or holds
/// [`Repeats::MAX`] pairs; a pair found in the old one moves to the current one, and the old
/// one is dropped at the next turn. So a pair is remembered for at least the span or the
/// newest `MAX` pairs, whichever is less, at a cost per run that does not grow with the pairs
/// kept (every plain message starts a chain of its own).
#[derive(Debug, Default)]
pub(crate) struct Repeats {
    current: RepeatMap,
    old: RepeatMap,
    /// When `current` started (ms).
    since: u64,
    /// The seed of the pairs' hashes.
    pairs: foldhash::fast::RandomState,
}

impl Repeats {
    const SPAN_MS: u64 = 300_000;
    const MAX: usize = 50_000;

    /// Count one more run of `rule` in `chain` at `now`; returns the runs so far.
    pub(crate) fn count(&mut self, chain: &str, rule: &str, now: u64) -> u32 {
        if self.current.len() >= Self::MAX || now.saturating_sub(self.since) >= Self::SPAN_MS {
            // The maps swap roles and the dropped generation's map is reused, its capacity
            // kept: no growing and rehashing of a fresh map every turn.
            std::mem::swap(&mut self.old, &mut self.current);
            self.current.clear();
            self.since = now;
        }
        let key = self.pairs.hash_one((chain, rule));
        let before = self.old.remove(&key).unwrap_or(0);
        let runs = self.current.entry(key).or_insert(before);
        *runs += 1;
        *runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_per_chain_and_rule_across_generations() {
        let mut r = Repeats::default();
        let (a, b) = ("a", "b");
        let (x, y, z) = ("x", "y", "z");
        assert_eq!(r.count(a, x, 1), 1);
        assert_eq!(r.count(a, x, 2), 2);
        assert_eq!(r.count(a, y, 2), 1);
        assert_eq!(r.count(b, x, 2), 1);
        // A turn keeps what the last generation counted...
        let later = 2 + Repeats::SPAN_MS;
        assert_eq!(r.count(b, y, later), 1);
        assert_eq!(r.count(a, x, later), 3);
        // ...for one more generation only.
        assert_eq!(r.count(a, y, later + Repeats::SPAN_MS), 1);
        assert_eq!(r.count(a, x, later + Repeats::SPAN_MS), 4);
        for i in 0..Repeats::MAX {
            r.count(&i.to_string(), z, later + Repeats::SPAN_MS);
        }
        assert!(r.current.len() + r.old.len() <= 2 * Repeats::MAX + 1);
    }
}
