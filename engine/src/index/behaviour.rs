//! Behaviour counts of one key (an event type, optionally narrowed to one
//! value of a configured dimension: `purchase`, `page_view / category =
//! skincare`): how many such events each person had on each day, as one
//! [`Bsi`] per day, plus the sums over aligned blocks of 8, 64 and 512 days.
//! Any window of days is then the sum of at most `2 · 7` indexes per level
//! (a 30-day window: at most 17; the whole year: at most 19), so "did X at
//! least n times in the last 30 days" is exact and costs a few dozen bitmap
//! operations, never an event scan. A fan-out of 8 rather than 2 keeps four
//! levels instead of nine: the index is about half the size of a binary
//! segment tree for sparse activity, where a person's day and block entries
//! barely coalesce.
//!
//! Days are UTC day numbers (days since 1970-01-01), as `event_date` stores them.

use std::fmt;
use std::io::{Read, Write};
use std::ops::RangeInclusive;

use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use super::{Bsi, Compare, Ordinal};
use crate::{Error, Result};

/// A behaviour counted per person and day: an event type, optionally narrowed
/// by property equalities (sorted by property).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BehaviourKey {
    /// The event type.
    pub event_type: String,
    /// `(property, value)`, sorted.
    pub filters: Vec<(String, String)>,
}

impl BehaviourKey {
    /// A key; `filters` are sorted here.
    pub fn new(event_type: &str, mut filters: Vec<(String, String)>) -> Self {
        filters.sort();
        BehaviourKey {
            event_type: event_type.to_string(),
            filters,
        }
    }
}

impl fmt::Display for BehaviourKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.event_type)?;
        for (i, (p, v)) in self.filters.iter().enumerate() {
            let sep = if i == 0 { " WHERE " } else { " AND " };
            write!(f, "{sep}{p} = '{}'", v.replace('\'', "''"))?;
        }
        Ok(())
    }
}

const QBDC_MAGIC: &[u8; 4] = b"QBDC";
const QBDC_VERSION: u32 = 2;

/// Days per block grow by this factor per level: 1, 8, 64, 512 days.
const FAN_OUT: usize = 8;

/// Per-day, per-person counts of one behaviour, with block sums.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DailyCounts {
    /// The day of slot 0.
    first_day: i32,
    /// `levels[k][j]`: counts summed over slots `j·8^k .. (j+1)·8^k`.
    levels: Vec<Vec<Bsi>>,
}

/// One behaviour key's events as a scan reads them: the ordinal of each
/// event's person, grouped by day. Four bytes per event, and each day's list
/// grows on its own, so no list of all events is ever copied to grow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayLists {
    /// The day of `days[0]`.
    first_day: i32,
    /// Ordinals per day, in read order.
    days: Vec<Vec<u32>>,
}

impl DayLists {
    /// Adds one event of person `o` on `day`.
    pub fn push(&mut self, day: i32, o: u32) {
        if self.days.is_empty() {
            self.first_day = day;
        } else if day < self.first_day {
            let n = (i64::from(self.first_day) - i64::from(day)) as usize;
            self.days
                .splice(0..0, std::iter::repeat_with(Vec::new).take(n));
            self.first_day = day;
        }
        let i = (i64::from(day) - i64::from(self.first_day)) as usize;
        if i >= self.days.len() {
            self.days.resize_with(i + 1, Vec::new);
        }
        self.days[i].push(o);
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.days.iter().map(Vec::len).sum()
    }

    /// Whether no event was added.
    pub fn is_empty(&self) -> bool {
        self.days.iter().all(Vec::is_empty)
    }
}

/// Appends `(ordinal, count)` of the sorted `ords` to `out`.
fn runs(ords: &[u32], out: &mut Vec<(Ordinal, i64)>) {
    out.clear();
    let mut i = 0;
    while i < ords.len() {
        let o = ords[i];
        let mut j = i + 1;
        while j < ords.len() && ords[j] == o {
            j += 1;
        }
        out.push((Ordinal(o), (j - i) as i64));
        i = j;
    }
}

/// The per-person sums of `parts` (each sorted by ordinal): merged in pairs,
/// `log2(parts)` linear passes.
fn merge_runs(mut parts: Vec<Vec<(Ordinal, i64)>>) -> Vec<(Ordinal, i64)> {
    while parts.len() > 1 {
        let mut next = Vec::with_capacity(parts.len().div_ceil(2));
        let mut it = parts.into_iter();
        while let Some(a) = it.next() {
            match it.next() {
                Some(b) => next.push(merge_two(&a, &b)),
                None => next.push(a),
            }
        }
        parts = next;
    }
    parts.pop().unwrap_or_default()
}

fn merge_two(a: &[(Ordinal, i64)], b: &[(Ordinal, i64)]) -> Vec<(Ordinal, i64)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].0, a[i].1 + b[j].1));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

impl DailyCounts {
    /// Builds the counts from one `(day, person)` pair per event.
    pub fn from_events(events: impl IntoIterator<Item = (i32, Ordinal)>) -> Result<Self> {
        let mut lists = DayLists::default();
        for (d, o) in events {
            lists.push(d, o.0);
        }
        Ok(Self::from_days(&lists))
    }

    /// Builds the counts from `(day, ordinal)` pairs, one per event, in any order.
    pub fn from_pairs(pairs: &[(i32, u32)]) -> Result<Self> {
        Self::from_events(pairs.iter().map(|&(d, o)| (d, Ordinal(o))))
    }

    /// Builds the counts from a scan's per-day lists, in one pass over the
    /// days: each day's ordinals are sorted and run-length counted once; a
    /// block's per-person sums are its (at most 8) children's merged, built
    /// as soon as its last child is, so only one open block per level is
    /// held. No hashing, no bitmap additions, no second sort of an event.
    pub fn from_days(lists: &DayLists) -> Self {
        let n_days = lists.days.len();
        if n_days == 0 {
            return DailyCounts::default();
        }
        // Blocks per level, down to the level with one.
        let mut blocks = vec![n_days];
        while blocks[blocks.len() - 1] > 1 {
            let b = blocks[blocks.len() - 1].div_ceil(FAN_OUT);
            blocks.push(b);
        }
        let top = blocks.len();
        let mut levels: Vec<Vec<Bsi>> = blocks.iter().map(|&b| Vec::with_capacity(b)).collect();
        // Children waiting for their block, per level.
        let mut open: Vec<Vec<Vec<(Ordinal, i64)>>> = vec![Vec::new(); top];
        let mut scratch: Vec<u32> = Vec::new();
        for day in &lists.days {
            scratch.clear();
            scratch.extend_from_slice(day);
            scratch.sort_unstable();
            let mut counted = Vec::new();
            runs(&scratch, &mut counted);
            let mut k = 0;
            loop {
                levels[k].push(Bsi::from_sorted_values(&counted));
                if k + 1 == top {
                    break;
                }
                open[k].push(counted);
                if open[k].len() < FAN_OUT && levels[k].len() < blocks[k] {
                    break;
                }
                counted = merge_runs(std::mem::take(&mut open[k]));
                k += 1;
            }
        }
        DailyCounts {
            first_day: lists.first_day,
            levels,
        }
    }

    /// These counts plus one `(day, ordinal)` pair per new event: the day
    /// indexes of the new days are added, and a block sum is recomputed only
    /// where a new day falls in it (every block when a day precedes the first
    /// one, which moves the blocks' alignment). Equal, value for value, to
    /// [`DailyCounts::from_pairs`] over the old and new events together.
    pub fn add_pairs(&self, pairs: &[(i32, u32)]) -> Result<Self> {
        let mut lists = DayLists::default();
        for &(d, o) in pairs {
            lists.push(d, o);
        }
        self.add_days(&lists)
    }

    /// [`DailyCounts::add_pairs`] from a scan's per-day lists.
    pub fn add_days(&self, lists: &DayLists) -> Result<Self> {
        if lists.is_empty() {
            return Ok(self.clone());
        }
        let Some(old) = self.days() else {
            return Ok(Self::from_days(lists));
        };
        let delta = Self::from_days(lists);
        let Some(new) = delta.days() else {
            return Ok(self.clone());
        };
        let first = (*old.start()).min(*new.start());
        let last = (*old.end()).max(*new.end());
        let n_days = (i64::from(last) - i64::from(first) + 1) as usize;
        let overflow = || Error::Internal("behaviour counts overflowed a day sum".into());
        // Level 0: old days shifted to the new first day, new days added.
        let mut days = vec![Bsi::default(); n_days];
        let shift = (self.first_day - first) as usize;
        for (i, b) in self.levels[0].iter().enumerate() {
            days[shift + i] = b.clone();
        }
        let new_shift = (delta.first_day - first) as usize;
        let mut touched = vec![false; n_days];
        for (i, b) in delta.levels[0].iter().enumerate() {
            if !b.is_empty() {
                let slot = &mut days[new_shift + i];
                *slot = slot.add(b).ok_or_else(overflow)?;
                touched[new_shift + i] = true;
            }
        }
        let aligned = first == self.first_day;
        let mut levels = vec![days];
        let mut width = 1usize;
        while levels.last().map_or(0, Vec::len) > 1 {
            width *= FAN_OUT;
            let below = levels.last().map(Vec::as_slice).unwrap_or_default();
            let k = levels.len();
            let mut level = Vec::with_capacity(below.len().div_ceil(FAN_OUT));
            for j in 0..below.len().div_ceil(FAN_OUT) {
                let span = j * width..((j + 1) * width).min(n_days);
                let reuse = aligned && !touched[span].iter().any(|&t| t);
                match self.levels.get(k).and_then(|l| l.get(j)).filter(|_| reuse) {
                    Some(b) => level.push(b.clone()),
                    None => {
                        let parts = &below[j * FAN_OUT..((j + 1) * FAN_OUT).min(below.len())];
                        let mut sum = Bsi::default();
                        for b in parts.iter().filter(|b| !b.is_empty()) {
                            sum = sum.add(b).ok_or_else(overflow)?;
                        }
                        level.push(sum);
                    }
                }
            }
            levels.push(level);
        }
        Ok(DailyCounts {
            first_day: first,
            levels,
        })
    }

    /// These counts with the persons of `from` folded into `to(person)`, in
    /// every day and block (a merge in OneID).
    pub fn moved(&self, from: &RoaringBitmap, to: impl Fn(u32) -> u32 + Copy) -> Result<Self> {
        let mut out = self.clone();
        for b in out.levels.iter_mut().flatten() {
            if !b.exists().is_disjoint(from) {
                *b = b.moved(from, to).ok_or_else(|| {
                    Error::Internal("behaviour counts overflowed folding a merge".into())
                })?;
            }
        }
        Ok(out)
    }

    /// Whether `other` holds the same count for every person, day and block
    /// (the bit slices may be laid out differently).
    pub fn same_counts(&self, other: &DailyCounts) -> bool {
        self.first_day == other.first_day
            && self.levels.len() == other.levels.len()
            && self.levels.iter().zip(&other.levels).all(|(a, b)| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.values() == y.values())
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

    /// Per-person event counts over `days` of the persons in `within`: each
    /// block index is cut down to `within` before the additions.
    pub fn counts_in(&self, days: RangeInclusive<i32>, within: &RoaringBitmap) -> Result<Bsi> {
        let mut total = Bsi::default();
        for (k, j) in self.cover(days) {
            let block = self.levels[k][j].restricted(within);
            if block.is_empty() {
                continue;
            }
            total = total.add(&block).ok_or_else(|| {
                Error::Internal("behaviour counts overflowed a window sum".into())
            })?;
        }
        Ok(total)
    }

    /// [`DailyCounts::at_least`] among the persons of `within`.
    pub fn at_least_in(
        &self,
        days: RangeInclusive<i32>,
        n: u64,
        within: &RoaringBitmap,
    ) -> Result<RoaringBitmap> {
        if n <= 1 {
            let mut acc = RoaringBitmap::new();
            for (k, j) in self.cover(days) {
                acc |= self.levels[k][j].exists() & within;
            }
            return Ok(acc);
        }
        // Only those who did it at all in the window need a count.
        let some = self.at_least_in(days.clone(), 1, within)?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        Ok(self.counts_in(days, &some)?.compare(Compare::Ge, n))
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

    /// Writes the counts as a `QBDC` file: magic `QBDC`, `u32` format version
    /// (2; version 1 had no fan-out field and blocks of 2^k days), `i32`
    /// first day, `u32` fan-out (8), `u32` number of levels, then
    /// per level a `u32` count and that many `QBSI` indexes
    /// ([`Bsi::write_to`], each with its own CRC-32); all integers
    /// little-endian. Level 0 holds one index per day, level `k` the sums over
    /// aligned blocks of `8^k` days.
    pub fn write_to(&self, mut w: impl Write) -> std::io::Result<()> {
        w.write_all(QBDC_MAGIC)?;
        w.write_all(&QBDC_VERSION.to_le_bytes())?;
        w.write_all(&self.first_day.to_le_bytes())?;
        w.write_all(&(FAN_OUT as u32).to_le_bytes())?;
        w.write_all(&(self.levels.len() as u32).to_le_bytes())?;
        for level in &self.levels {
            w.write_all(&(level.len() as u32).to_le_bytes())?;
            for b in level {
                b.write_to(&mut w)?;
            }
        }
        Ok(())
    }

    /// Reads counts written by [`DailyCounts::write_to`]; `what` names it in errors.
    pub fn read_from(mut r: impl Read, what: &str) -> Result<Self> {
        let corrupt = |why: String| Error::Internal(format!("behaviour index `{what}`: {why}"));
        let mut head = [0u8; 20];
        r.read_exact(&mut head)
            .map_err(|e| corrupt(format!("truncated or unreadable ({e})")))?;
        if &head[..4] != QBDC_MAGIC {
            return Err(corrupt("not a QBDC file".into()));
        }
        let word = |i: usize| [head[i], head[i + 1], head[i + 2], head[i + 3]];
        let version = u32::from_le_bytes(word(4));
        if version != QBDC_VERSION {
            return Err(corrupt(format!(
                "format version {version}; this build reads {QBDC_VERSION}"
            )));
        }
        let first_day = i32::from_le_bytes(word(8));
        let fan_out = u32::from_le_bytes(word(12)) as usize;
        if fan_out != FAN_OUT {
            return Err(corrupt(format!(
                "fan-out {fan_out}; this build reads {FAN_OUT}"
            )));
        }
        let n_levels = u32::from_le_bytes(word(16)) as usize;
        if n_levels > 40 {
            return Err(corrupt(format!("{n_levels} levels (at most 40)")));
        }
        let mut levels: Vec<Vec<Bsi>> = Vec::with_capacity(n_levels);
        for k in 0..n_levels {
            let mut len = [0u8; 4];
            r.read_exact(&mut len)
                .map_err(|e| corrupt(format!("level {k}: truncated ({e})")))?;
            let len = u32::from_le_bytes(len) as usize;
            let expected = match levels.last() {
                Some(below) => below.len().div_ceil(FAN_OUT),
                None => len,
            };
            if len != expected || len > 1 << 24 {
                return Err(corrupt(format!(
                    "level {k} holds {len} blocks, expected {expected}"
                )));
            }
            let level = (0..len)
                .map(|j| Bsi::read_from(&mut r, &format!("{what} level {k} block {j}")))
                .collect::<Result<Vec<Bsi>>>()?;
            levels.push(level);
        }
        Ok(DailyCounts { first_day, levels })
    }

    /// The blocks `(level, index)` that exactly tile the slots of `days`:
    /// greedily the largest aligned block that fits, at most `2·(FAN_OUT−1)`
    /// per level.
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
            let mut width = 1i64;
            while k + 1 < top {
                let next = width * FAN_OUT as i64;
                if at % next != 0 || at + next > hi {
                    break;
                }
                k += 1;
                width = next;
            }
            let block = (k, (at / width) as usize);
            at += width;
            Some(block)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn qbdc_round_trip_and_corruption() {
        let events: Vec<(i32, Ordinal)> = (0..500u32)
            .map(|i| (20_000 + (i % 37) as i32, Ordinal(i % 53)))
            .collect();
        let d = DailyCounts::from_events(events).unwrap();
        let mut buf = Vec::new();
        d.write_to(&mut buf).unwrap();
        let back = DailyCounts::read_from(&buf[..], "t").unwrap();
        assert_eq!(back, d);
        assert_eq!(
            back.at_least(20_000..=20_036, 9).unwrap(),
            d.at_least(20_000..=20_036, 9).unwrap()
        );
        let mut bad = buf.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x40;
        assert!(DailyCounts::read_from(&bad[..], "t").is_err());
        assert!(DailyCounts::read_from(&buf[..buf.len() - 3], "t").is_err());
        let mut empty = Vec::new();
        DailyCounts::default().write_to(&mut empty).unwrap();
        assert_eq!(
            DailyCounts::read_from(&empty[..], "t").unwrap(),
            DailyCounts::default()
        );
    }

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
        fn adding_events_equals_building_from_all(
            old in prop::collection::vec((-5i32..70, 0u32..40), 0..200),
            new in prop::collection::vec((-20i32..90, 0u32..40), 0..100),
            retired in prop::collection::vec(0u32..40, 0..5),
        ) {
            let mut all = old.clone();
            all.extend(&new);
            let grown = build(&old).add_pairs(&new).unwrap();
            prop_assert!(grown.same_counts(&build(&all)));
            // a merge: each retired person's events go to person 100 + it / 2
            let from: RoaringBitmap = retired.iter().copied().collect();
            let to = |o: u32| 100 + o / 2;
            let merged: Vec<(i32, u32)> = all
                .iter()
                .map(|&(d, o)| (d, if from.contains(o) { to(o) } else { o }))
                .collect();
            prop_assert!(grown.moved(&from, to).unwrap().same_counts(&build(&merged)));
        }
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
            prop_assert_eq!(c.at_least(days.clone(), n).unwrap(), naive(&events, days.clone(), n));
            let within: RoaringBitmap = (0..40).filter(|o| o % 3 != 1).collect();
            prop_assert_eq!(
                c.at_least_in(days.clone(), n, &within).unwrap(),
                naive(&events, days, n) & &within
            );
        }
    }
}
