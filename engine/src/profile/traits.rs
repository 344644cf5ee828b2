//! Traits derived from a [`Scan`]: scores, preferences, day counts, and the
//! values every trait index is built from.

use std::collections::BTreeMap;

use crate::index::{Bsi, Ordinal};
use roaring::RoaringBitmap;

use super::scan::{NEVER, Scan};
use super::{TRAITS, TraitKind};

const DAY_US: i64 = 86_400_000_000;

/// A numeric trait's `(name, scale, (ordinal, value) of live persons)`.
pub(crate) type NumericTrait = (&'static str, u8, Bsi);

/// Per-ordinal values that need the whole population (RFM) or a choice (preferences).
#[derive(Debug, Default)]
pub(crate) struct Derived {
    /// `(r, f, m)` scores 1-5, purchasers only.
    pub rfm: Vec<Option<(u8, u8, u8)>>,
    /// Channel id with most events (`u32::MAX`: none).
    pub preferred_channel: Vec<u32>,
    /// Category id with most events (`u32::MAX`: none).
    pub preferred_category: Vec<u32>,
    /// The refresh's now, µs.
    pub now: i64,
}

/// Quintile scores 1-5 of `values` (higher value, higher score); ties share a score.
fn quintiles(values: &[(usize, i64)]) -> Vec<(usize, u8)> {
    let mut sorted: Vec<i64> = values.iter().map(|&(_, v)| v).collect();
    sorted.sort_unstable();
    let n = sorted.len().max(1);
    values
        .iter()
        .map(|&(p, v)| {
            let below = sorted.partition_point(|&x| x < v);
            (p, 1 + (5 * below / n) as u8)
        })
        .collect()
}

/// The id with the highest count; ties go to the smallest name.
fn preferred(counts: impl IntoIterator<Item = (u32, u32)>, names: &[String]) -> u32 {
    counts
        .into_iter()
        .max_by(|a, b| {
            a.1.cmp(&b.1)
                .then_with(|| names[b.0 as usize].cmp(&names[a.0 as usize]))
        })
        .map_or(u32::MAX, |(id, _)| id)
}

pub(crate) fn derive(s: &Scan, live: &RoaringBitmap, now: i64) -> Derived {
    let n = s.events.len();
    let purchasers: Vec<usize> = live
        .iter()
        .map(|o| o as usize)
        .filter(|&p| p < n && s.orders[p] > 0)
        .collect();
    let r = quintiles(
        &purchasers
            .iter()
            .map(|&p| (p, s.last_order[p]))
            .collect::<Vec<_>>(),
    );
    let f = quintiles(
        &purchasers
            .iter()
            .map(|&p| (p, i64::from(s.orders[p])))
            .collect::<Vec<_>>(),
    );
    let m = quintiles(
        &purchasers
            .iter()
            .map(|&p| (p, s.spend[p]))
            .collect::<Vec<_>>(),
    );
    let mut rfm = vec![None; n];
    for i in 0..purchasers.len() {
        rfm[r[i].0] = Some((r[i].1, f[i].1, m[i].1));
    }
    Derived {
        rfm,
        preferred_channel: (0..n)
            .map(|p| preferred(s.channel_counts.of(p), &s.channels.names))
            .collect(),
        preferred_category: (0..n)
            .map(|p| preferred(s.category_counts.of(p), &s.categories.names))
            .collect(),
        now,
    }
}

fn days_between(from: i64, to: i64) -> i64 {
    (to - from).max(0) / DAY_US
}

impl Derived {
    /// The value of numeric trait `name` for person `p` (scaled integer).
    pub fn number(&self, s: &Scan, name: &str, p: usize) -> Option<i64> {
        let seen = s.events[p] > 0;
        let bought = s.orders[p] > 0;
        match name {
            "events" => Some(i64::from(s.events[p])),
            "order_count" => Some(i64::from(s.orders[p])),
            "total_spend" => Some(s.spend[p]),
            "avg_order_value" => bought.then(|| {
                let n = i64::from(s.orders[p]);
                // rounded half away from zero, in cents
                (2 * s.spend[p] + n * s.spend[p].signum()) / (2 * n)
            }),
            "days_since_last_seen" => seen.then(|| days_between(s.last_seen[p], self.now)),
            "days_since_first_seen" => seen.then(|| days_between(s.first_seen[p], self.now)),
            "recency_days" => (bought && s.last_order[p] != NEVER)
                .then(|| days_between(s.last_order[p], self.now)),
            "rfm_r" => self.rfm[p].map(|x| i64::from(x.0)),
            "rfm_f" => self.rfm[p].map(|x| i64::from(x.1)),
            "rfm_m" => self.rfm[p].map(|x| i64::from(x.2)),
            _ => None,
        }
    }

    /// The value of enumerated trait `name` for person `p`.
    pub fn label<'a>(&self, s: &'a Scan, name: &str, p: usize) -> Option<String> {
        let pick = |id: u32, names: &'a [String]| names.get(id as usize).cloned();
        match name {
            "preferred_channel" => pick(self.preferred_channel[p], &s.channels.names),
            "preferred_category" => pick(self.preferred_category[p], &s.categories.names),
            "registered_channel" => pick(s.registered[p].1, &s.channels.names),
            "rfm" => self.rfm[p].map(|(r, f, m)| format!("{r}{f}{m}")),
            _ => None,
        }
    }

    /// Every numeric trait as `(name, scale, index over the live persons)`,
    /// built one trait at a time from the persons in ordinal order (no sort,
    /// one trait's values in memory at once).
    pub fn numeric_traits(&self, s: &Scan, live: &RoaringBitmap) -> Vec<NumericTrait> {
        let mut values: Vec<(Ordinal, i64)> = Vec::new();
        TRAITS
            .iter()
            .filter_map(|t| match t.kind {
                TraitKind::Numeric { scale } => Some((t.name, scale)),
                TraitKind::Enumerated => None,
            })
            .map(|(name, scale)| {
                values.clear();
                values.extend(
                    live.iter()
                        .filter(|&o| (o as usize) < s.events.len())
                        .filter_map(|o| self.number(s, name, o as usize).map(|v| (Ordinal(o), v))),
                );
                (name, scale, Bsi::from_sorted_values(&values))
            })
            .collect()
    }

    /// Every enumerated trait and attribute: name → value → persons. Values
    /// are grouped by id first; bitmaps are filled in ascending ordinal order
    /// (appends, no search).
    pub fn enumerated(
        &self,
        s: &Scan,
        live: &RoaringBitmap,
    ) -> BTreeMap<String, BTreeMap<String, RoaringBitmap>> {
        fn push(b: &mut RoaringBitmap, o: u32) {
            if b.try_push(o).is_err() {
                b.insert(o);
            }
        }
        let n = s.events.len();
        let live: Vec<u32> = live.iter().filter(|&o| (o as usize) < n).collect();
        let by_id = |ids: &dyn Fn(usize) -> u32, names: &[String]| {
            let mut bitmaps = vec![RoaringBitmap::new(); names.len()];
            for &o in &live {
                let id = ids(o as usize);
                if let Some(b) = bitmaps.get_mut(id as usize) {
                    push(b, o);
                }
            }
            names
                .iter()
                .cloned()
                .zip(bitmaps)
                .filter(|(_, b)| !b.is_empty())
                .collect::<BTreeMap<String, RoaringBitmap>>()
        };
        let mut out: BTreeMap<String, BTreeMap<String, RoaringBitmap>> = BTreeMap::new();
        out.insert(
            "preferred_channel".into(),
            by_id(&|p| self.preferred_channel[p], &s.channels.names),
        );
        out.insert(
            "preferred_category".into(),
            by_id(&|p| self.preferred_category[p], &s.categories.names),
        );
        out.insert(
            "registered_channel".into(),
            by_id(&|p| s.registered[p].1, &s.channels.names),
        );
        let codes: Vec<String> = (0..125)
            .map(|i| format!("{}{}{}", i / 25 + 1, i / 5 % 5 + 1, i % 5 + 1))
            .collect();
        out.insert(
            "rfm".into(),
            by_id(
                &|p| {
                    self.rfm[p].map_or(u32::MAX, |(r, f, m)| {
                        u32::from(r - 1) * 25 + u32::from(f - 1) * 5 + u32::from(m - 1)
                    })
                },
                &codes,
            ),
        );
        let mut attrs: hashbrown::HashMap<(u32, u32), RoaringBitmap> = hashbrown::HashMap::new();
        for &o in &live {
            for &(key, _, value) in &s.attributes[o as usize] {
                push(attrs.entry((key, value)).or_default(), o);
            }
        }
        for ((key, value), b) in attrs {
            out.entry(s.attr_keys.names[key as usize].clone())
                .or_default()
                .insert(s.attr_values.names[value as usize].clone(), b);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quintiles_share_ties_and_span_one_to_five() {
        let v: Vec<(usize, i64)> = (0..10).map(|i| (i, i as i64 / 2)).collect();
        let q = quintiles(&v);
        let scores: Vec<u8> = q.iter().map(|x| x.1).collect();
        assert_eq!(scores, vec![1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
        let same = quintiles(&[(0, 7), (1, 7), (2, 7)]);
        assert!(same.iter().all(|x| x.1 == 1));
    }

    #[test]
    fn preferred_breaks_ties_by_name() {
        let names = vec!["pos".to_string(), "app".to_string()];
        assert_eq!(preferred([(0, 2), (1, 2)], &names), 1);
        assert_eq!(preferred([(0, 3), (1, 2)], &names), 0);
        assert_eq!(preferred([], &names), u32::MAX);
    }
}
