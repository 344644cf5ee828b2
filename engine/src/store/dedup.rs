//! Idempotency: which `event_id`s arrived within the dedup window.
//!
//! Keys are `xxh3_128(event_id)` (a false duplicate needs a 128-bit
//! collision) with their arrival second, 20 bytes a key. The set is rebuilt on open from Delta
//! (`event_id` of rows received within the window; file statistics on
//! `received_at` prune the rest) plus the replayed WAL, so a retried event is
//! still a duplicate after a restart.

use hashbrown::HashTable;

/// One remembered key: the 128-bit hash as four words (a `u128` would align
/// the entry to 16 bytes and pad it to 32) and the arrival second. 20 bytes.
#[derive(Debug, Clone, Copy)]
struct Seen {
    key: [u32; 4],
    at: u32,
}

fn words(k: u128) -> [u32; 4] {
    [
        k as u32,
        (k >> 32) as u32,
        (k >> 64) as u32,
        (k >> 96) as u32,
    ]
}

/// The key is a uniform hash already: its low 64 bits are the table's hash.
fn hash_of(key: &[u32; 4]) -> u64 {
    u64::from(key[0]) | (u64::from(key[1]) << 32)
}

/// A time in µs as whole seconds since 1970 (what the window is kept to).
fn second(micros: i64) -> u32 {
    micros.div_euclid(1_000_000).clamp(0, i64::from(u32::MAX)) as u32
}

#[derive(Debug)]
pub(crate) struct Dedup {
    window_secs: u32,
    seen: HashTable<Seen>,
    last_sweep: u32,
}

impl Dedup {
    pub fn new(window_secs: u64) -> Self {
        Dedup {
            window_secs: u32::try_from(window_secs).unwrap_or(u32::MAX),
            seen: HashTable::new(),
            last_sweep: 0,
        }
    }

    /// Room for `n` more keys without growing (a rebuild that knows its size
    /// grows the table once, not by doubling through every size).
    pub fn reserve(&mut self, n: usize) {
        self.seen.reserve(n, |e| hash_of(&e.key));
    }

    /// For each key: `true` if fresh (and now reserved), `false` if a duplicate.
    pub fn admit(&mut self, keys: &[u128], now: i64) -> Vec<bool> {
        let now = second(now);
        self.sweep(now);
        let cutoff = now.saturating_sub(self.window_secs);
        keys.iter()
            .map(|&k| {
                let key = words(k);
                match self.seen.find_mut(hash_of(&key), |e| e.key == key) {
                    Some(e) if e.at >= cutoff => false,
                    Some(e) => {
                        e.at = now;
                        true
                    }
                    None => {
                        self.seen
                            .insert_unique(hash_of(&key), Seen { key, at: now }, |e| {
                                hash_of(&e.key)
                            });
                        true
                    }
                }
            })
            .collect()
    }

    /// Forgets reserved keys whose batch failed to reach the WAL.
    pub fn forget(&mut self, keys: impl IntoIterator<Item = u128>) {
        for k in keys {
            let key = words(k);
            if let Ok(e) = self.seen.find_entry(hash_of(&key), |e| e.key == key) {
                e.remove();
            }
        }
    }

    /// Remembers a key that arrived at `at` µs (on open).
    pub fn remember(&mut self, key: u128, at: i64) {
        let (key, at) = (words(key), second(at));
        match self.seen.find_mut(hash_of(&key), |e| e.key == key) {
            Some(e) => e.at = e.at.max(at),
            None => {
                self.seen
                    .insert_unique(hash_of(&key), Seen { key, at }, |e| hash_of(&e.key));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    fn sweep(&mut self, now: u32) {
        // at most every minute; cost is linear in the set
        if now.saturating_sub(self.last_sweep) < 60 {
            return;
        }
        self.last_sweep = now;
        let cutoff = now.saturating_sub(self.window_secs);
        self.seen.retain(|e| e.at >= cutoff);
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

    #[test]
    fn keys_are_compared_in_full_and_remembered_with_their_latest_arrival() {
        let mut d = Dedup::new(10);
        let s = 1_000_000;
        // the same low 64 bits (the table's hash), different keys
        let (a, b) = (7u128, 7u128 | (1 << 100));
        d.reserve(4);
        d.remember(a, 100 * s);
        d.remember(a, 95 * s);
        assert_eq!(d.len(), 1);
        assert_eq!(d.admit(&[b, a], 109 * s), vec![true, false]);
        // a was last seen at 100 s: fresh again once that left the window
        assert_eq!(d.admit(&[a], 111 * s), vec![true]);
        d.forget([b]);
        assert_eq!(d.len(), 1);
        assert_eq!(d.admit(&[b], 112 * s), vec![true]);
    }
}
