//! Idempotency: which `event_id`s arrived within the dedup window.
//!
//! Keys are `xxh3_128(event_id)` (a false duplicate needs a 128-bit
//! collision) with their arrival time. The set is rebuilt on open from Delta
//! (`event_id` of rows received within the window; file statistics on
//! `received_at` prune the rest) plus the replayed WAL, so a retried event is
//! still a duplicate after a restart.

use hashbrown::hash_map::Entry;

use crate::identity::graph::KeyMap;

#[derive(Debug)]
pub(crate) struct Dedup {
    window_micros: i64,
    seen: KeyMap<i64>,
    last_sweep: i64,
}

impl Dedup {
    pub fn new(window_secs: u64) -> Self {
        Dedup {
            window_micros: (window_secs as i64).saturating_mul(1_000_000),
            seen: KeyMap::default(),
            last_sweep: 0,
        }
    }

    /// For each key: `true` if fresh (and now reserved), `false` if a duplicate.
    pub fn admit(&mut self, keys: &[u128], now: i64) -> Vec<bool> {
        self.sweep(now);
        let cutoff = now - self.window_micros;
        keys.iter()
            .map(|k| match self.seen.entry(*k) {
                Entry::Occupied(e) if *e.get() >= cutoff => false,
                Entry::Occupied(mut e) => {
                    e.insert(now);
                    true
                }
                Entry::Vacant(e) => {
                    e.insert(now);
                    true
                }
            })
            .collect()
    }

    /// Forgets reserved keys whose batch failed to reach the WAL.
    pub fn forget(&mut self, keys: impl IntoIterator<Item = u128>) {
        for k in keys {
            self.seen.remove(&k);
        }
    }

    /// Remembers a key that arrived at `at` (on open).
    pub fn remember(&mut self, key: u128, at: i64) {
        let e = self.seen.entry(key).or_insert(at);
        *e = (*e).max(at);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    fn sweep(&mut self, now: i64) {
        // at most every minute; cost is linear in the set
        if now - self.last_sweep < 60_000_000 {
            return;
        }
        self.last_sweep = now;
        let cutoff = now - self.window_micros;
        self.seen.retain(|_, at| *at >= cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_and_batch() {
        let mut d = Dedup::new(10);
        let s = 1_000_000;
        assert_eq!(d.admit(&[1, 2, 1], 100 * s), vec![true, true, false]);
        assert_eq!(d.admit(&[2, 3], 105 * s), vec![false, true]);
        // 2 arrived at 100 s; at 111 s it is outside the 10 s window
        assert_eq!(d.admit(&[2], 111 * s), vec![true]);
        d.forget([3]);
        assert_eq!(d.admit(&[3], 112 * s), vec![true]);
    }
}
