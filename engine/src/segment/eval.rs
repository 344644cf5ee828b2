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
//! - `did(...)` sums the per-day behaviour counts of the window.

use std::ops::RangeInclusive;

use chrono::NaiveDate;
use roaring::RoaringBitmap;

use super::ast::{Cmp, Did, Expr, Literal, Window};
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
        windows: None,
    }
    .eval(e, &index.live)
}

/// [`evaluate`], keeping each `did(...) >= n` window's members over all live
/// persons in `windows`, so later questions over the same window and index
/// version (any scope) intersect one bitmap instead of summing the window
/// again.
pub(crate) fn evaluate_cached(
    e: &Expr,
    index: &IndexSet,
    now_day: i32,
    windows: &WindowCache,
) -> Result<RoaringBitmap> {
    Eval {
        index,
        now_day,
        windows: Some(windows),
    }
    .eval(e, &index.live)
}

/// (index version, behaviour key, first day, last day, at least n).
type WindowKey = (u64, BehaviourKey, i32, i32, u64);

/// Members of `did(key) >= n` over a window, all live persons, per index
/// version: at most [`WindowCache::CAPACITY`] windows, dropped together
/// when full or when the index version changes.
#[derive(Debug, Default)]
pub(crate) struct WindowCache {
    map: parking_lot::Mutex<std::collections::HashMap<WindowKey, std::sync::Arc<RoaringBitmap>>>,
}

impl WindowCache {
    const CAPACITY: usize = 512;

    fn get(&self, key: &WindowKey) -> Option<std::sync::Arc<RoaringBitmap>> {
        self.map.lock().get(key).cloned()
    }

    fn get_or_insert(
        &self,
        key: WindowKey,
        compute: impl FnOnce() -> Result<RoaringBitmap>,
    ) -> Result<std::sync::Arc<RoaringBitmap>> {
        if let Some(b) = self.map.lock().get(&key) {
            return Ok(b.clone());
        }
        let b = std::sync::Arc::new(compute()?);
        let mut map = self.map.lock();
        if map.len() >= Self::CAPACITY || map.keys().next().is_some_and(|k| k.0 != key.0) {
            map.clear();
        }
        map.insert(key, b.clone());
        Ok(b)
    }
}

struct Eval<'a> {
    index: &'a IndexSet,
    now_day: i32,
    windows: Option<&'a WindowCache>,
}

impl Eval<'_> {
    /// An upper bound of `e`'s members, from sizes the index knows without
    /// evaluating (the order `AND` evaluates its operands in).
    fn estimate(&self, e: &Expr) -> u64 {
        let live = self.index.live.len();
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
            Expr::Did(d) => self.kept_window(d).map_or(live, |b| b.len()),
            _ => live,
        }
    }

    /// The kept members of `d`'s window over all live persons, when `d` is
    /// an at-least question whose window an earlier question kept.
    fn kept_window(&self, d: &Did) -> Option<std::sync::Arc<RoaringBitmap>> {
        let n = match d.count.unwrap_or((Cmp::Ge, 1)) {
            (Cmp::Ge, n) => n.max(1),
            (Cmp::Gt, n) => n + 1,
            _ => return None,
        };
        let days = self.window(d.window);
        let key = BehaviourKey::new(&d.event_type, d.filters.clone());
        self.windows?
            .get(&(self.index.version, key, *days.start(), *days.end(), n))
    }

    /// Whether `e` costs more than a few bitmap operations: a bit-slice walk
    /// (numeric comparisons) or a window sum (`did` counts above one) that
    /// no earlier question kept.
    fn costly(&self, e: &Expr) -> bool {
        match e {
            Expr::Compare { field, .. } => self.index.numbers.contains_key(field),
            Expr::Between { .. } => true,
            Expr::Did(d) if self.kept_window(d).is_some() => false,
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
            Expr::And { args } => {
                // Cheap operands before costly ones (bit-slice walks, window
                // sums), so those run on what is left; within each, positive
                // operands smallest first, each within what the ones before
                // left, then every `NOT x` as a difference.
                let mut steps: Vec<(bool, bool, u64, &Expr)> = args
                    .iter()
                    .map(|a| match a {
                        Expr::Not { arg } => (self.costly(arg), true, 0, &**arg),
                        other => (self.costly(other), false, self.estimate(other), other),
                    })
                    .collect();
                steps.sort_by_key(|&(costly, negated, size, _)| (costly, negated, size));
                let mut acc: Option<RoaringBitmap> = None;
                for (_, negated, _, a) in steps {
                    let within = acc.as_ref().unwrap_or(scope);
                    if within.is_empty() {
                        break;
                    }
                    let hit = self.eval(a, within)?;
                    acc = Some(if negated { within - hit } else { hit });
                }
                Ok(acc.unwrap_or_else(|| scope.clone()))
            }
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
                    n.bsi.compare_in(Compare::Ge, lo, scope)
                        & n.bsi.compare_in(Compare::Le, hi, scope)
                })
            }
            Expr::Did(d) => self.did(d, scope),
            Expr::Segment { name } => Err(Error::invalid(
                "expression",
                format!("unknown saved segment `{name}`"),
            )),
        }
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
        if self.index.numbers.contains_key(field) {
            let n = self.numeric(field)?;
            let (op, c) = match cmp {
                Cmp::Eq | Cmp::Ne => {
                    let exact = scaled(field, value, n.scale, Rounding::Exact)?;
                    let eq = match exact {
                        Some(c) => n.bsi.compare_in(Compare::Eq, c, scope),
                        None => RoaringBitmap::new(),
                    };
                    return Ok(if cmp == Cmp::Eq {
                        eq
                    } else {
                        (n.bsi.exists() & scope) - eq
                    });
                }
                Cmp::Ge => (Compare::Ge, bound(field, value, n.scale, Rounding::Up)?),
                Cmp::Gt => (Compare::Gt, bound(field, value, n.scale, Rounding::Down)?),
                Cmp::Le => (Compare::Le, bound(field, value, n.scale, Rounding::Down)?),
                Cmp::Lt => (Compare::Lt, bound(field, value, n.scale, Rounding::Up)?),
            };
            return Ok(n.bsi.compare_in(op, c, scope));
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
            match self.windows {
                Some(cache) => {
                    let key = (
                        self.index.version,
                        key.clone(),
                        *days.start(),
                        *days.end(),
                        n,
                    );
                    let all = cache.get_or_insert(key, || {
                        counts.at_least_in(days.clone(), n, &self.index.live)
                    })?;
                    Ok(&*all & scope)
                }
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
