//! Behaviour counts of one key (an event type, optionally narrowed to one
//! value of a configured dimension: `purchase`, `page_view / category =
//! skincare`): how many such events each person had on each day, as one
//! [`Bsi`] per day, plus the sums over aligned blocks of 2, 4, 8, ... days
//! (a segment tree). Any window of days is then the sum of at most
//! `2 · log2(days)` indexes, so "did X at least n times in the last 30 days"
//! is exact and costs a few dozen bitmap operations, never an event scan.
//!
//! Days are UTC day numbers (days since 1970-01-01), as `event_date` stores them.

use std::collections::HashMap;
use std::ops::RangeInclusive;

use roaring::RoaringBitmap;

use super::{Bsi, Compare, Ordinal};
use crate::{Error, Result};

/// Per-day, per-person counts of one behaviour, with block sums.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DailyCounts {
    /// The day of slot 0.
    first_day: i32,
    /// `levels[k][j]`: counts summed over slots `j·2^k .. (j+1)·2^k`.
    levels: Vec<Vec<Bsi>>,
}

impl DailyCounts {
    /// Builds the counts from one `(day, person)` pair per event.
    pub fn from_events(events: impl IntoIterator<Item = (i32, Ordinal)>) -> Result<Self> {
        let mut per_day: HashMap<i32, HashMap<u32, i64>> = HashMap::new();
        for (day, o) in events {
            *per_day.entry(day).or_default().entry(o.0).or_default() += 1;
        }
        let (Some(first), Some(last)) =
            (per_day.keys().copied().min(), per_day.keys().copied().max())
        else {
            return Ok(DailyCounts::default());
        };
        let days = (last as i64 - first as i64 + 1) as usize;
        let mut level: Vec<Bsi> = vec![Bsi::default(); days];
        for (day, counts) in per_day {
            level[(day - first) as usize] =
                Bsi::from_values(counts.into_iter().map(|(o, n)| (Ordinal(o), n)));
        }
        let mut levels = vec![level];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let above = below
                .chunks(2)
                .map(|pair| match pair.get(1) {
                    Some(b) => pair[0].add(b).ok_or_else(|| {
                        Error::Internal("behaviour counts overflowed a block sum".into())
                    }),
                    None => Ok(pair[0].clone()),
                })
                .collect::<Result<Vec<Bsi>>>()?;
            levels.push(above);
        }
        Ok(DailyCounts {
            first_day: first,
            levels,
        })
    }

    /// The first and last day with any event.
    pub fn days(&self) -> Option<RangeInclusive<i32>> {
        let n = self.levels.first()?.len();
        Some(self.first_day..=self.first_day + n as i32 - 1)
    }

    /// Per-person event counts over `days` (persons with none are absent).
    pub fn counts(&self, days: RangeInclusive<i32>) -> Result<Bsi> {
        let mut total = Bsi::default();
        for (k, j) in self.cover(days) {
            total = total.add(&self.levels[k][j]).ok_or_else(|| {
                Error::Internal("behaviour counts overflowed a window sum".into())
            })?;
        }
        Ok(total)
    }

    /// Persons with at least `n` events over `days` (`n = 0` means at least one).
    pub fn at_least(&self, days: RangeInclusive<i32>, n: u64) -> Result<RoaringBitmap> {
        if n <= 1 {
            // a union of the covering blocks' members: no additions needed
            return Ok(self
                .cover(days)
                .map(|(k, j)| self.levels[k][j].exists())
                .fold(RoaringBitmap::new(), |acc, b| acc | b));
        }
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        Ok(self.counts(days)?.compare(Compare::Ge, n))
    }

    /// The blocks `(level, index)` that exactly tile the slots of `days`.
    fn cover(&self, days: RangeInclusive<i32>) -> impl Iterator<Item = (usize, usize)> + '_ {
        let len = self.levels.first().map_or(0, Vec::len) as i64;
        let lo = (*days.start() as i64 - self.first_day as i64).clamp(0, len);
        let hi = (*days.end() as i64 - self.first_day as i64 + 1).clamp(lo, len);
        let top = self.levels.len();
        let mut at = lo;
        std::iter::from_fn(move || {
            if at >= hi {
                return None;
            }
            let mut k = 0;
            while k + 1 < top && at % (1 << (k + 1)) == 0 && at + (1 << (k + 1)) <= hi {
                k += 1;
            }
            let block = (k, (at >> k) as usize);
            at += 1 << k;
            Some(block)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(events: &[(i32, u32)], days: RangeInclusive<i32>, n: u64) -> RoaringBitmap {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for (d, o) in events {
            if days.contains(d) {
                *counts.entry(*o).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .filter(|(_, c)| *c >= n.max(1))
            .map(|(o, _)| o)
            .collect()
    }

    fn build(events: &[(i32, u32)]) -> DailyCounts {
        DailyCounts::from_events(events.iter().map(|(d, o)| (*d, Ordinal(*o)))).unwrap()
    }

    #[test]
    fn windows_over_a_sparse_year() {
        let day0 = 20_000;
        let events = [
            (day0, 1),
            (day0, 1),
            (day0 + 3, 1),
            (day0 + 200, 2),
            (day0 + 364, 1),
        ];
        let c = build(&events);
        assert_eq!(c.days(), Some(day0..=day0 + 364));
        assert_eq!(
            c.counts(day0..=day0 + 364).unwrap().get(Ordinal(1)),
            Some(4)
        );
        assert_eq!(c.at_least(day0..=day0 + 3, 3).unwrap().len(), 1);
        assert_eq!(c.at_least(day0 + 1..=day0 + 3, 3).unwrap().len(), 0);
        assert_eq!(c.at_least(day0 + 100..=day0 + 300, 1).unwrap().len(), 1);
        assert!(c.at_least(day0 - 10..=day0 - 1, 1).unwrap().is_empty());
        assert!(
            c.at_least(day0 + 5..=day0 + 2, 1).unwrap().is_empty(),
            "an empty window"
        );
        assert!(build(&[]).at_least(0..=10, 1).unwrap().is_empty());
    }

    proptest! {
        #[test]
        fn at_least_equals_a_count(
            events in prop::collection::vec((-5i32..70, 0u32..40), 0..300),
            from in -10i32..75,
            width in 0i32..80,
            n in 0u64..6,
        ) {
            let c = build(&events);
            let days = from..=from + width;
            prop_assert_eq!(c.at_least(days.clone(), n).unwrap(), naive(&events, days, n));
        }
    }
}
