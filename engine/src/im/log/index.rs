//! The in-memory index of the message log: each conversation's positions, and the table of
//! the newest client message ids.

use std::collections::VecDeque;

use super::FastMap;

/// One conversation's messages: `first`, `first + 1`, ... at these packed positions.
pub(super) struct Conv {
    pub(super) first: u64,
    pub(super) positions: Vec<u64>,
}

impl Conv {
    pub(super) fn next_seq(&self) -> u64 {
        self.first + self.positions.len() as u64
    }

    pub(super) fn position(&self, seq: u64) -> Option<u64> {
        let index = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.positions.get(index).copied()
    }
}

/// The newest client message ids: keyed hash of (conv, from, cid) → seq, evicted in insertion
/// order.
pub(super) struct Dedup {
    pub(super) map: FastMap<u64, u64>,
    pub(super) order: VecDeque<(u64, u64)>,
    pub(super) capacity: usize,
}

impl Dedup {
    pub(super) fn insert(&mut self, hash: u64, seq: u64) {
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
