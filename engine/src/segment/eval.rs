//! Evaluation of an [`Expr`] over one [`IndexSet`]: bitmap operations only,
//! no event scan. Every result is a subset of the live persons.
//!
//! - every operand is evaluated within a scope (at the top, the live
//!   persons): `AND` takes cheap operands before costly ones (bit-slice
//!   walks, window sums), and within each group its positive operands
//!   smallest first (by sizes the index knows), then each `NOT x` as a
//!   difference, every step within what the steps before left; `NOT e`
//!   alone is the scope minus `e`; `OR` unions its operands;
//! - a boolean tag is its bitmap;
//! - `field = v` / `IN` / `!=` on an enumerated tag, trait or attribute use
//!   its per-value bitmaps (`!=` and `NOT IN`: persons with some other value);
//! - comparisons and `BETWEEN` on a numeric trait run on its bit-sliced
//!   index, the literal scaled to the trait's decimals;
//! - `did(...)` sums the per-day behaviour counts of the window;
//! - a server keeps the members over all live persons of each at-least
//!   window, each numeric comparison and each `IN` list per index version
//!   ([`KeptResults`]): the first question pays for the leaf over everyone,
//!   later ones (any scope) intersect one bitmap. Operands that are whole
//!   bitmaps (tags, enumerated values, kept leaves) are combined in place,
//!   the first two with each other before the scope, and not with the live
//!   persons at all when one of them holds only live persons (a kept leaf
//!   always does; an index bitmap is checked once per version);
//! - a count ([`count_cached`]) builds no member list for its last step: a
//!   last `AND` operand or `NOT` is an intersection's size;
//! - a top-level `AND` of whole operands (and `NOT`s of them) dense enough
//!   for [`dense::worth`] is one pass over their dense copies, kept beside
//!   the kept leaves (`super::dense`).

use std::ops::RangeInclusive;
use std::sync::Arc;

use chrono::NaiveDate;
use roaring::RoaringBitmap;

use super::ast::{Cmp, Did, Expr, Literal, Window};
use super::dense::{self, Dense};
use crate::index::{BehaviourKey, Compare, IndexSet, NumericIndex};
use crate::{Error, Result};

/// The day number (days since 1970-01-01) of `d`.
pub fn day_number(d: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    (d - epoch).num_days() as i32
}

/// Up to three names from `candidates` close to `name`, for "did you mean".
pub fn near<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(f64, &str)> = candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(s, _)| *s >= 0.75)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(3)
        .map(|(_, c)| c.to_string())
        .collect()
}

fn unknown(what: &str, name: &str, near: Vec<String>) -> Error {
    let hint = if near.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", near.join(", "))
    };
    Error::invalid("expression", format!("unknown {what} `{name}`{hint}"))
}

/// Evaluates `e` over `index`, with windows relative to `now_day`.
pub fn evaluate(e: &Expr, index: &IndexSet, now_day: i32) -> Result<RoaringBitmap> {
    Eval {
        index,
        now_day,
        kept: None,
    }
    .eval(e, &index.live)
}

/// [`evaluate`], keeping the members over all live persons of each
/// `did(...) >= n` window and each numeric comparison in `kept`, so later
/// questions over the same leaf and index version (any scope) intersect one
/// bitmap instead of summing the window or walking the bit slices again.
pub(crate) fn evaluate_cached(
    e: &Expr,
    index: &IndexSet,
    now_day: i32,
    kept: &KeptResults,
) -> Result<RoaringBitmap> {
    Eval {
        index,
        now_day,
        kept: Some(kept),
    }
    .eval(e, &index.live)
}

/// How many live persons [`evaluate_cached`] would return, without building
/// the member list where the last step can be a size: `|acc ∩ x|` for a
/// last `AND` operand, `|acc| − |acc ∩ x|` for a last `NOT x`.
pub(crate) fn count_cached(
    e: &Expr,
    index: &IndexSet,
    now_day: i32,
    kept: &KeptResults,
) -> Result<u64> {
    Eval {
        index,
        now_day,
        kept: Some(kept),
    }
    .count(e, &index.live)
}

/// `e`'s members per value code (`codes[o]`: ordinal `o`'s position
/// among a field's `values`, [`u16::MAX`] for none) and their number,
/// counted off the words of one dense pass on every core, with no member
/// list built, when `e` is an `AND` that pass takes; `None` otherwise.
/// `codes` is asked for only then.
pub(crate) fn code_counts_cached(
    e: &Expr,
    index: &IndexSet,
    now_day: i32,
    kept: &KeptResults,
    codes: impl FnOnce() -> Option<Arc<Vec<u16>>>,
    values: usize,
) -> Result<Option<dense::CodeCounts>> {
    let Expr::And { args } = e else {
        return Ok(None);
    };
    let eval = Eval {
        index,
        now_day,
        kept: Some(kept),
    };
    let Some((p, n)) = eval.dense_operands(args)? else {
        return Ok(None);
    };
    Ok(codes().and_then(|codes| dense::code_counts(&p, &n, codes, values)))
}

/// An `AND`'s operands as dense copies: the positive ones, the negated ones.
type DenseOperands = (Vec<Arc<Dense>>, Vec<Arc<Dense>>);

/// A leaf whose members over all live persons can be kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Leaf {
    /// `did(key) >= n` over the days `first..=last`.
    Window(BehaviourKey, i32, i32, u64),
    /// A numeric trait compared with a scaled constant.
    Number(String, Compare, i64),
    /// An enumerated field `IN` a list of values (sorted, no repeats).
    In(String, Vec<String>),
}

/// Members of leaves (windows, numeric comparisons, `IN` lists) over all live persons,
/// per index version: at most [`KeptResults::CAPACITY`] bitmaps and
/// [`KeptResults::BUDGET`] bytes, dropped together when either is exceeded
/// or when the index version changes.
///
/// Beside them, dense copies ([`Dense`]) of the whole operands of top-level
/// `AND`s that [`dense::worth`] sends to one pass over words, at most
/// [`KeptResults::DENSE_BUDGET`] bytes.
#[derive(Debug, Default)]
pub(crate) struct KeptResults {
    map: parking_lot::Mutex<Kept>,
    /// No dense pass (tests of the roaring path).
    roaring_only: bool,
}

/// What a dense copy is of.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DenseKey {
    /// An index bitmap, by the name `within` uses.
    Index(String),
    Leaf(Leaf),
    Live,
}

#[derive(Debug, Default)]
struct Kept {
    version: u64,
    bytes: usize,
    bitmaps: std::collections::HashMap<Leaf, Arc<RoaringBitmap>>,
    /// Index bitmaps (by name) checked against the live persons: `true`
    /// when they hold no one else.
    within: std::collections::HashMap<String, bool>,
    dense: std::collections::HashMap<DenseKey, Arc<Dense>>,
    dense_bytes: usize,
}

impl KeptResults {
    const CAPACITY: usize = 512;
    /// Serialized bytes of the kept bitmaps (about their size in memory).
    const BUDGET: usize = 256 << 20;
    /// Bytes of dense copies (1.75 MiB each at 14 M ordinals).
    const DENSE_BUDGET: usize = 256 << 20;

    /// Kept results that never take the dense pass.
    #[cfg(test)]
    pub(crate) fn roaring_only() -> Self {
        KeptResults {
            roaring_only: true,
            ..Default::default()
        }
    }

    /// The dense copy of `b` (known as `key`) over `words` words, made now
    /// if this version has none.
    fn dense(&self, version: u64, key: DenseKey, b: &RoaringBitmap, words: usize) -> Arc<Dense> {
        {
            let kept = self.map.lock();
            if kept.version == version
                && let Some(d) = kept.dense.get(&key)
            {
                return d.clone();
            }
        }
        let d = Arc::new(Dense::new(b, words));
        let mut kept = self.map.lock();
        if kept.version != version {
            *kept = Kept {
                version,
                ..Kept::default()
            };
        }
        if kept.dense_bytes + d.bytes() > Self::DENSE_BUDGET {
            kept.dense.clear();
            kept.dense_bytes = 0;
        }
        if d.bytes() <= Self::DENSE_BUDGET && kept.dense.insert(key, d.clone()).is_none() {
            kept.dense_bytes += d.bytes();
        }
        d
    }

    fn get(&self, version: u64, leaf: &Leaf) -> Option<Arc<RoaringBitmap>> {
        let kept = self.map.lock();
        (kept.version == version)
            .then(|| kept.bitmaps.get(leaf).cloned())
            .flatten()
    }

    fn get_or_insert(
        &self,
        version: u64,
        leaf: Leaf,
        compute: impl FnOnce() -> Result<RoaringBitmap>,
    ) -> Result<Arc<RoaringBitmap>> {
        if let Some(b) = self.get(version, &leaf) {
            return Ok(b);
        }
        let b = Arc::new(compute()?);
        let size = b.serialized_size();
        let mut kept = self.map.lock();
        if kept.version != version
            || kept.bitmaps.len() >= Self::CAPACITY
            || kept.bytes + size > Self::BUDGET
        {
            *kept = Kept {
                version,
                ..Kept::default()
            };
        }
        if size <= Self::BUDGET && kept.bitmaps.insert(leaf, b.clone()).is_none() {
            kept.bytes += size;
        }
        Ok(b)
    }

    /// Whether the index bitmap `b`, named `name`, holds only persons of
    /// `index.live`: checked once per index version.
    fn within_live(&self, index: &IndexSet, name: &str, b: &RoaringBitmap) -> bool {
        {
            let kept = self.map.lock();
            if kept.version == index.version
                && let Some(&within) = kept.within.get(name)
            {
                return within;
            }
        }
        let within = b.is_subset(&index.live);
        let mut kept = self.map.lock();
        if kept.version != index.version {
            *kept = Kept {
                version: index.version,
                ..Kept::default()
            };
        }
        kept.within.insert(name.to_string(), within);
        within
    }
}

/// A leaf's members, not confined to any scope: a bitmap of the index
/// (with whether it holds only live persons), or one kept over all live
/// persons.
enum Whole<'a> {
    /// With its name (as `within` keeps it).
    Index(&'a RoaringBitmap, bool, String),
    Kept(Arc<RoaringBitmap>, Leaf),
}

impl Whole<'_> {
    /// Whether every member is a live person.
    fn within_live(&self) -> bool {
        match self {
            Whole::Index(_, within, _) => *within,
            Whole::Kept(..) => true,
        }
    }

    fn key(&self) -> DenseKey {
        match self {
            Whole::Index(_, _, name) => DenseKey::Index(name.clone()),
            Whole::Kept(_, leaf) => DenseKey::Leaf(leaf.clone()),
        }
    }
}

/// What an evaluation is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Members,
    Count,
}

/// What it gives.
enum Got {
    Members(RoaringBitmap),
    Count(u64),
}

impl std::ops::Deref for Whole<'_> {
    type Target = RoaringBitmap;

    fn deref(&self) -> &RoaringBitmap {
        match self {
            Whole::Index(b, ..) => b,
            Whole::Kept(b, _) => b,
        }
    }
}

struct Eval<'a> {
    index: &'a IndexSet,
    now_day: i32,
    kept: Option<&'a KeptResults>,
}

impl Eval<'_> {
    /// An upper bound of `e`'s members, from sizes the index knows without
    /// evaluating (the order `AND` evaluates its operands in).
    fn estimate(&self, e: &Expr) -> u64 {
        let live = self.index.live.len();
        if let Some(b) = self.peek(e) {
            return b.len();
        }
        match e {
            Expr::And { args } => args.iter().map(|a| self.estimate(a)).min().unwrap_or(live),
            Expr::Or { args } => args
                .iter()
                .map(|a| self.estimate(a))
                .fold(0u64, u64::saturating_add)
                .min(live),
            Expr::Tag { name } => self.index.tags.get(name).map_or(0, RoaringBitmap::len),
            Expr::Compare {
                field,
                cmp: Cmp::Eq,
                value,
            } => match self.index.enums.get(field) {
                Some(m) => m.get(&literal_text(value)).map_or(0, RoaringBitmap::len),
                None => self.index.numbers.get(field).map_or(live, |n| n.bsi.len()),
            },
            Expr::In {
                field,
                values,
                negated: false,
            } => match self.index.enums.get(field) {
                Some(m) => values
                    .iter()
                    .filter_map(|v| m.get(&literal_text(v)))
                    .map(RoaringBitmap::len)
                    .sum(),
                None => live,
            },
            Expr::Compare { field, .. } | Expr::Between { field, .. } => {
                self.index.numbers.get(field).map_or(live, |n| n.bsi.len())
            }
            _ => live,
        }
    }

    /// The keepable leaf `e` is, if it is one: an at-least window
    /// (`did(...) >= n`, n ≥ 1) or a numeric trait compared with a number
    /// (`<`, `<=`, `=`, `>=`, `>`; an `=` that no stored value can meet is
    /// not one).
    fn leaf(&self, e: &Expr) -> Option<Leaf> {
        match e {
            Expr::Did(d) => {
                let n = at_least(d)?;
                let days = self.window(d.window);
                let key = BehaviourKey::new(&d.event_type, d.filters.clone());
                Some(Leaf::Window(key, *days.start(), *days.end(), n))
            }
            Expr::Compare { field, cmp, value } => {
                let n = self.index.numbers.get(field)?;
                let (op, c) = number_op(field, *cmp, value, n.scale).ok()??;
                Some(Leaf::Number(field.clone(), op, c))
            }
            Expr::In {
                field,
                values,
                negated: false,
            } if self.index.enums.contains_key(field) => {
                let mut values: Vec<String> = values.iter().map(literal_text).collect();
                values.sort_unstable();
                values.dedup();
                Some(Leaf::In(field.clone(), values))
            }
            _ => None,
        }
    }

    /// `e`'s kept members over all live persons, if an earlier question
    /// kept them (nothing is computed).
    fn peek(&self, e: &Expr) -> Option<Arc<RoaringBitmap>> {
        self.kept?.get(self.index.version, &self.leaf(e)?)
    }

    /// `leaf`'s members over all live persons, kept (computed now if no
    /// earlier question kept them); `None` without a place to keep them or
    /// when the index has nothing for the leaf (the general path reports or
    /// answers that).
    fn keep(&self, leaf: Leaf) -> Result<Option<Arc<RoaringBitmap>>> {
        let Some(kept) = self.kept else {
            return Ok(None);
        };
        let (index, version) = (self.index, self.index.version);
        match &leaf {
            Leaf::Window(key, first, last, n) => {
                let Some(counts) = index.behaviour.get(key) else {
                    return Ok(None);
                };
                let (days, n) = (*first..=*last, *n);
                kept.get_or_insert(version, leaf, || counts.at_least_in(days, n, &index.live))
                    .map(Some)
            }
            Leaf::Number(field, op, c) => {
                let Some(num) = index.numbers.get(field) else {
                    return Ok(None);
                };
                let (op, c) = (*op, *c);
                kept.get_or_insert(version, leaf, || Ok(num.bsi.compare_in(op, c, &index.live)))
                    .map(Some)
            }
            Leaf::In(field, values) => {
                let Some(by_value) = index.enums.get(field) else {
                    return Ok(None);
                };
                if let Some(b) = kept.get(version, &leaf) {
                    return Ok(Some(b));
                }
                let mut hit = RoaringBitmap::new();
                for b in values.iter().filter_map(|v| by_value.get(v)) {
                    hit |= b;
                }
                hit &= &index.live;
                kept.get_or_insert(version, leaf, || Ok(hit)).map(Some)
            }
        }
    }

    /// `e`'s members without confining them to a scope, when that costs no
    /// bitmap operation: a boolean tag, one value of an enumerated field,
    /// or a kept leaf (computed now if new).
    fn whole(&self, e: &Expr) -> Result<Option<Whole<'_>>> {
        let value = match e {
            Expr::Tag { name } => {
                return Ok(self
                    .index
                    .tags
                    .get(name)
                    .map(|b| self.index_whole(&format!("tag {name}"), b)));
            }
            Expr::Compare {
                field,
                cmp: Cmp::Eq,
                value,
            } if self.index.enums.contains_key(field) => Some((field, value)),
            Expr::In {
                field,
                values,
                negated: false,
            } if values.len() == 1 && self.index.enums.contains_key(field) => {
                Some((field, &values[0]))
            }
            _ => None,
        };
        if let Some((field, value)) = value {
            let value = literal_text(value);
            return Ok(self
                .index
                .enums
                .get(field)
                .and_then(|m| m.get(&value))
                .map(|b| self.index_whole(&format!("{field} = {value}"), b)));
        }
        match self.leaf(e) {
            Some(leaf) => Ok(self.keep(leaf.clone())?.map(|b| Whole::Kept(b, leaf))),
            None => Ok(None),
        }
    }

    /// An index bitmap as a whole operand.
    fn index_whole<'s>(&self, name: &str, b: &'s RoaringBitmap) -> Whole<'s> {
        let within = self
            .kept
            .is_some_and(|k| k.within_live(self.index, name, b));
        Whole::Index(b, within, name.to_string())
    }

    /// Whether `e` costs more than a few bitmap operations: a bit-slice walk
    /// (numeric comparisons) or a window sum (`did` counts above one) that
    /// no earlier question kept.
    fn costly(&self, e: &Expr) -> bool {
        if self.peek(e).is_some() {
            return false;
        }
        match e {
            Expr::Compare { field, .. } => self.index.numbers.contains_key(field),
            Expr::Between { .. } => true,
            Expr::Did(d) => !matches!(
                d.count.unwrap_or((Cmp::Ge, 1)),
                (Cmp::Ge, 0 | 1) | (Cmp::Gt, 0) | (Cmp::Eq, 0) | (Cmp::Lt, 0 | 1) | (Cmp::Le, 0)
            ),
            Expr::Not { arg } => self.costly(arg),
            Expr::And { args } | Expr::Or { args } => args.iter().any(|a| self.costly(a)),
            _ => false,
        }
    }

    /// `e`'s members within `scope` (a subset of the live persons): every
    /// result is a subset of `scope`, and each operand works on no more
    /// than it has to.
    fn eval(&self, e: &Expr, scope: &RoaringBitmap) -> Result<RoaringBitmap> {
        match e {
            Expr::And { args } => match self.and(args, scope, Want::Members)? {
                Got::Members(m) => Ok(m),
                Got::Count(_) => Err(Error::Internal("an AND asked for members counted".into())),
            },
            Expr::Or { args } => {
                let mut acc = RoaringBitmap::new();
                for a in args {
                    acc |= self.eval(a, scope)?;
                }
                Ok(acc)
            }
            Expr::Not { arg } => Ok(scope - self.eval(arg, scope)?),
            Expr::Tag { name } => Ok(self.tag(name)? & scope),
            Expr::Compare { field, cmp, value } => self.compare(field, *cmp, value, scope),
            Expr::In {
                field,
                values,
                negated,
            } => {
                let by_value = self.enumerated(field)?;
                let mut hit = RoaringBitmap::new();
                for v in values {
                    if let Some(b) = by_value.get(&literal_text(v)) {
                        hit |= b & scope;
                    }
                }
                if *negated {
                    Ok(any_value(by_value, scope) - hit)
                } else {
                    Ok(hit)
                }
            }
            Expr::Between { field, low, high } => {
                let n = self.numeric(field)?;
                let lo = bound(field, low, n.scale, Rounding::Up)?;
                let hi = bound(field, high, n.scale, Rounding::Down)?;
                Ok(if lo > hi {
                    RoaringBitmap::new()
                } else {
                    self.number(field, n, Compare::Ge, lo, scope)?
                        & self.number(field, n, Compare::Le, hi, scope)?
                })
            }
            Expr::Did(d) => self.did(d, scope),
            Expr::Segment { name } => Err(Error::invalid(
                "expression",
                format!("unknown saved segment `{name}`"),
            )),
        }
    }

    /// How many members `e` has within `scope`: [`Eval::eval`]'s size,
    /// with no member list built for a last step that can be a size.
    fn count(&self, e: &Expr, scope: &RoaringBitmap) -> Result<u64> {
        match e {
            Expr::And { args } => match self.and(args, scope, Want::Count)? {
                Got::Count(n) => Ok(n),
                Got::Members(m) => Ok(m.len()),
            },
            // `eval(arg, scope)` is within `scope`.
            Expr::Not { arg } => Ok(scope.len() - self.count(arg, scope)?),
            Expr::Tag { name } => Ok(self.tag(name)?.intersection_len(scope)),
            _ => Ok(self.eval(e, scope)?.len()),
        }
    }

    /// `AND` within `scope`: cheap operands before costly ones (bit-slice
    /// walks, window sums), so those run on what is left; within each,
    /// positive operands smallest first, then every `NOT x` as a difference.
    /// Operands that are whole bitmaps (tags, enumerated values, kept
    /// leaves) are intersected or subtracted in place, and the first two of
    /// them with each other before the scope (not at all when the scope is
    /// the live persons and one of the two holds only live persons): one
    /// operation each, with no copy of an operand. Asked for a count, the
    /// last step is a size where it can be.
    fn and(&self, args: &[Expr], scope: &RoaringBitmap, want: Want) -> Result<Got> {
        let live = self.kept.is_some() && std::ptr::eq(scope, &self.index.live);
        if live && let Some(got) = self.and_dense(args, want)? {
            return Ok(got);
        }
        let mut steps: Vec<(bool, bool, u64, &Expr)> = args
            .iter()
            .map(|a| match a {
                Expr::Not { arg } => (self.costly(arg), true, 0, &**arg),
                other => (self.costly(other), false, self.estimate(other), other),
            })
            .collect();
        steps.sort_by_key(|&(costly, negated, size, _)| (costly, negated, size));
        let last = steps.len().saturating_sub(1);
        // Whether a whole operand needs no confining to `scope`.
        let confined = |w: &Whole<'_>| live && w.within_live();
        // The members so far (within `scope`), or the first whole operand
        // not yet confined to it.
        let mut acc: Option<RoaringBitmap> = None;
        let mut first: Option<Whole<'_>> = None;
        for (k, (_, negated, _, a)) in steps.into_iter().enumerate() {
            let count = want == Want::Count && k == last;
            if !negated && let Some(w) = self.whole(a)? {
                match (&mut acc, first.take()) {
                    (Some(acc), _) if count => return Ok(Got::Count(acc.intersection_len(&w))),
                    (Some(acc), _) => *acc &= &*w,
                    (None, None) => first = Some(w),
                    (None, Some(f)) if count && (confined(&f) || confined(&w)) => {
                        return Ok(Got::Count(f.intersection_len(&w)));
                    }
                    (None, Some(f)) => {
                        let mut both = &*f & &*w;
                        if count {
                            return Ok(Got::Count(both.intersection_len(scope)));
                        }
                        if !(confined(&f) || confined(&w)) {
                            both &= scope;
                        }
                        acc = Some(both);
                    }
                }
                if acc.as_ref().is_some_and(RoaringBitmap::is_empty) {
                    break;
                }
                continue;
            }
            if let Some(f) = first.take() {
                acc = Some(if confined(&f) {
                    (*f).clone()
                } else {
                    &*f & scope
                });
            }
            let within = acc.as_ref().unwrap_or(scope);
            if within.is_empty() {
                break;
            }
            if negated && let Some(w) = self.whole(a)? {
                if count {
                    return Ok(Got::Count(within.len() - within.intersection_len(&w)));
                }
                let mut rest = acc.take().unwrap_or_else(|| scope.clone());
                rest -= &*w;
                acc = Some(rest);
                continue;
            }
            if count {
                // Within `within`, so its size is what it takes away.
                let hit = self.count(a, within)?;
                return Ok(Got::Count(if negated { within.len() - hit } else { hit }));
            }
            let hit = self.eval(a, within)?;
            acc = Some(if negated { within - hit } else { hit });
        }
        Ok(match (want, acc, first) {
            (Want::Count, Some(acc), _) => Got::Count(acc.len()),
            (Want::Count, None, Some(f)) if confined(&f) => Got::Count(f.len()),
            (Want::Count, None, Some(f)) => Got::Count(f.intersection_len(scope)),
            (Want::Count, None, None) => Got::Count(scope.len()),
            (Want::Members, Some(acc), _) => Got::Members(acc),
            (Want::Members, None, Some(f)) if confined(&f) => Got::Members((*f).clone()),
            (Want::Members, None, Some(f)) => Got::Members(&*f & scope),
            (Want::Members, None, None) => Got::Members(scope.clone()),
        })
    }

    /// A top-level `AND` whose operands are all whole bitmaps (or `NOT`s
    /// of them), in one pass over dense copies of them when
    /// [`dense::worth`] says so; `None` to take the roaring path.
    fn and_dense(&self, args: &[Expr], want: Want) -> Result<Option<Got>> {
        Ok(self.dense_operands(args)?.and_then(|(p, n)| match want {
            Want::Count => dense::count(&p, &n).map(Got::Count),
            Want::Members => dense::members(&p, &n).map(Got::Members),
        }))
    }

    /// The dense copies of an `AND`'s positive and negated operands (the
    /// live persons added to the positive ones where needed), when the
    /// operands are whole bitmaps and [`dense::worth`] says the pass pays.
    fn dense_operands(&self, args: &[Expr]) -> Result<Option<DenseOperands>> {
        let Some(kept) = self.kept.filter(|k| !k.roaring_only) else {
            return Ok(None);
        };
        let words = dense::words_for(&self.index.live);
        let negated = args
            .iter()
            .filter(|a| matches!(a, Expr::Not { .. }))
            .count();
        if words == 0 || args.len() - negated >= dense::MAX_POSITIVE || negated > dense::MAX_NEGATED
        {
            return Ok(None);
        }
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for a in args {
            let (arg, into) = match a {
                Expr::Not { arg } => (&**arg, &mut neg),
                other => (other, &mut pos),
            };
            match self.whole(arg)? {
                Some(w) => into.push(w),
                None => return Ok(None),
            }
        }
        let with_live = !pos.iter().any(Whole::within_live);
        let smallest = pos
            .iter()
            .map(|w| w.len())
            .min()
            .unwrap_or_else(|| self.index.live.len());
        if !dense::worth(smallest, words, args.len() + usize::from(with_live)) {
            return Ok(None);
        }
        let version = self.index.version;
        let copy = |w: &Whole<'_>| kept.dense(version, w.key(), w, words);
        let mut p: Vec<Arc<Dense>> = pos.iter().map(copy).collect();
        if with_live {
            p.push(kept.dense(version, DenseKey::Live, &self.index.live, words));
        }
        let n: Vec<Arc<Dense>> = neg.iter().map(copy).collect();
        Ok(Some((p, n)))
    }

    fn tag(&self, name: &str) -> Result<&RoaringBitmap> {
        if let Some(b) = self.index.tags.get(name) {
            return Ok(b);
        }
        if self.index.enums.contains_key(name) || self.index.numbers.contains_key(name) {
            return Err(Error::invalid(
                "expression",
                format!(
                    "`{name}` is not a boolean tag: compare it, e.g. `{name} = ...` or `{name} >= ...`"
                ),
            ));
        }
        Err(unknown(
            "tag",
            name,
            near(name, self.index.tags.keys().map(String::as_str)),
        ))
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.index
            .enums
            .keys()
            .chain(self.index.numbers.keys())
            .map(String::as_str)
    }

    fn enumerated(
        &self,
        field: &str,
    ) -> Result<&std::collections::BTreeMap<String, RoaringBitmap>> {
        if let Some(m) = self.index.enums.get(field) {
            return Ok(m);
        }
        if self.index.numbers.contains_key(field) {
            return Err(Error::invalid(
                "expression",
                format!("`{field}` is numeric: use < <= > >= = != or BETWEEN with a number"),
            ));
        }
        Err(unknown(
            "tag, attribute or trait",
            field,
            near(field, self.names()),
        ))
    }

    fn numeric(&self, field: &str) -> Result<&NumericIndex> {
        if let Some(n) = self.index.numbers.get(field) {
            return Ok(n);
        }
        if self.index.enums.contains_key(field) {
            return Err(Error::invalid(
                "expression",
                format!("`{field}` is enumerated, not numeric: use = != or IN with strings"),
            ));
        }
        Err(unknown("numeric trait", field, near(field, self.names())))
    }

    fn compare(
        &self,
        field: &str,
        cmp: Cmp,
        value: &Literal,
        scope: &RoaringBitmap,
    ) -> Result<RoaringBitmap> {
        if let Some(n) = self.index.numbers.get(field) {
            return Ok(match number_op(field, cmp, value, n.scale)? {
                Some((op, c)) => self.number(field, n, op, c, scope)?,
                None if cmp == Cmp::Ne => {
                    let eq = match scaled(field, value, n.scale, Rounding::Exact)? {
                        Some(c) => self.number(field, n, Compare::Eq, c, scope)?,
                        None => RoaringBitmap::new(),
                    };
                    (n.bsi.exists() & scope) - eq
                }
                // `=` a value with more decimals than the trait keeps.
                None => RoaringBitmap::new(),
            });
        }
        let by_value = self.enumerated(field)?;
        let text = literal_text(value);
        let hit = by_value.get(&text).map(|b| b & scope).unwrap_or_default();
        match cmp {
            Cmp::Eq => Ok(hit),
            Cmp::Ne => Ok(any_value(by_value, scope) - hit),
            _ => Err(Error::invalid(
                "expression",
                format!("`{field}` is enumerated: only = != and IN compare it"),
            )),
        }
    }

    fn did(&self, d: &Did, scope: &RoaringBitmap) -> Result<RoaringBitmap> {
        let key = BehaviourKey::new(&d.event_type, d.filters.clone());
        let Some(counts) = self.index.behaviour.get(&key) else {
            if !self.index.event_types.contains(&d.event_type) {
                return Err(unknown(
                    "event type",
                    &d.event_type,
                    near(
                        &d.event_type,
                        self.index.event_types.iter().map(String::as_str),
                    ),
                ));
            }
            let indexed = match d.filters.as_slice() {
                [] => true,
                [(p, _)] => self.index.dimensions.contains(p),
                _ => false,
            };
            if !indexed {
                return Err(Error::invalid(
                    "expression",
                    format!(
                        "behaviour `{key}` is not indexed (dimensions: {}): add the property to the behaviour dimensions of the tag definitions",
                        self.index.dimensions.join(", ")
                    ),
                ));
            }
            // Indexed, but nobody did it: every count is zero.
            return Ok(match d.count.unwrap_or((Cmp::Ge, 1)) {
                (Cmp::Le, _) | (Cmp::Eq, 0) | (Cmp::Ge, 0) => scope.clone(),
                (Cmp::Lt, n) | (Cmp::Ne, n) if n > 0 => scope.clone(),
                _ => RoaringBitmap::new(),
            });
        };
        let days = self.window(d.window);
        let at_least = |n: u64| -> Result<RoaringBitmap> {
            let n = n.max(1);
            let leaf = Leaf::Window(key.clone(), *days.start(), *days.end(), n);
            match self.keep(leaf)? {
                Some(all) => Ok(&*all & scope),
                None => counts.at_least_in(days.clone(), n, scope),
            }
        };
        let exactly = |n: u64| -> Result<RoaringBitmap> {
            let some = counts.at_least_in(days.clone(), 1, scope)?;
            Ok(counts
                .counts_in(days.clone(), &some)?
                .compare(Compare::Eq, i64::try_from(n).unwrap_or(i64::MAX)))
        };
        Ok(match d.count.unwrap_or((Cmp::Ge, 1)) {
            (Cmp::Ge, 0) => scope.clone(),
            (Cmp::Ge, n) => at_least(n)?,
            (Cmp::Gt, n) => at_least(n + 1)?,
            (Cmp::Eq, 0) => scope - at_least(1)?,
            (Cmp::Eq, n) => exactly(n)?,
            (Cmp::Le, n) => scope - at_least(n + 1)?,
            (Cmp::Lt, 0) => RoaringBitmap::new(),
            (Cmp::Lt, n) => scope - at_least(n)?,
            (Cmp::Ne, n) => {
                let eq = if n == 0 {
                    scope - at_least(1)?
                } else {
                    exactly(n)?
                };
                scope - eq
            }
        })
    }

    /// The persons of `scope` whose value of the numeric trait `field`
    /// compares to `c` as `op` says: from the kept comparison over all live
    /// persons when there is a place to keep it, else by a bit-slice walk
    /// within `scope`.
    fn number(
        &self,
        field: &str,
        n: &NumericIndex,
        op: Compare,
        c: i64,
        scope: &RoaringBitmap,
    ) -> Result<RoaringBitmap> {
        Ok(match self.keep(Leaf::Number(field.to_string(), op, c))? {
            Some(all) => &*all & scope,
            None => n.bsi.compare_in(op, c, scope),
        })
    }

    fn window(&self, w: Option<Window>) -> RangeInclusive<i32> {
        match w {
            None => i32::MIN..=i32::MAX,
            Some(Window::Last { days }) => {
                let days = i32::try_from(days.max(1)).unwrap_or(i32::MAX);
                self.now_day.saturating_sub(days - 1)..=self.now_day
            }
            Some(Window::Between { from, to }) => day_number(from)..=day_number(to),
        }
    }
}

/// Persons of `scope` with any value.
fn any_value(
    by_value: &std::collections::BTreeMap<String, RoaringBitmap>,
    scope: &RoaringBitmap,
) -> RoaringBitmap {
    by_value
        .values()
        .fold(RoaringBitmap::new(), |acc, b| acc | (b & scope))
}

/// A literal as the string an enumerated value is compared with.
fn literal_text(v: &Literal) -> String {
    match v {
        Literal::String(s) => s.clone(),
        Literal::Number(n) => n.to_string(),
    }
}

/// The `n` of a `did(...)` that asks for at least `n` (≥ 1) events.
fn at_least(d: &Did) -> Option<u64> {
    match d.count.unwrap_or((Cmp::Ge, 1)) {
        (Cmp::Ge, n) if n >= 1 => Some(n),
        (Cmp::Gt, n) => n.checked_add(1),
        _ => None,
    }
}

/// A numeric comparison as the bit-sliced index runs it: the operator and
/// the literal scaled to the trait's decimals (rounded so that, e.g.,
/// `x >= 9.999` at scale 2 is `x >= 10.00`). `None` for `!=`, and for an `=`
/// whose literal has more decimals than the trait (no value is equal).
fn number_op(field: &str, cmp: Cmp, value: &Literal, scale: u8) -> Result<Option<(Compare, i64)>> {
    Ok(Some(match cmp {
        Cmp::Eq => match scaled(field, value, scale, Rounding::Exact)? {
            Some(c) => (Compare::Eq, c),
            None => return Ok(None),
        },
        Cmp::Ne => return Ok(None),
        Cmp::Ge => (Compare::Ge, bound(field, value, scale, Rounding::Up)?),
        Cmp::Gt => (Compare::Gt, bound(field, value, scale, Rounding::Down)?),
        Cmp::Le => (Compare::Le, bound(field, value, scale, Rounding::Down)?),
        Cmp::Lt => (Compare::Lt, bound(field, value, scale, Rounding::Up)?),
    }))
}

#[derive(Clone, Copy, PartialEq)]
enum Rounding {
    Up,
    Down,
    Exact,
}

/// A range bound: never `None` for `Up`/`Down`.
fn bound(field: &str, v: &Literal, scale: u8, r: Rounding) -> Result<i64> {
    scaled(field, v, scale, r)?
        .ok_or_else(|| Error::Internal(format!("`{field}`: no bound for {v:?}")))
}

/// `v × 10^scale` as an integer: rounded up or down for range bounds (so
/// `x >= 9.999` at scale 2 means `x >= 10.00`), `None` when `Exact` is asked
/// and the value has more decimals than the trait.
fn scaled(field: &str, v: &Literal, scale: u8, r: Rounding) -> Result<Option<i64>> {
    let Literal::Number(x) = v else {
        return Err(Error::invalid(
            "expression",
            format!("`{field}` is numeric: compare it with a number, not {v:?}"),
        ));
    };
    let s = x * 10f64.powi(i32::from(scale));
    let rounded = s.round();
    // Treat values within float noise of an integer as that integer.
    let near_int = (s - rounded).abs() < 1e-6;
    let out = match (r, near_int) {
        (_, true) => rounded,
        (Rounding::Up, false) => s.ceil(),
        (Rounding::Down, false) => s.floor(),
        (Rounding::Exact, false) => return Ok(None),
    };
    if !(-9.2e18..=9.2e18).contains(&out) {
        return Err(Error::invalid(
            "expression",
            format!("`{field}`: {x} is out of range"),
        ));
    }
    Ok(Some(out as i64))
}
