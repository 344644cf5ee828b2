//! Audience requests over a workspace's tag index: count, breakdown,
//! overlap, split, saved segments, snapshots and their diff, export. Every
//! answer comes from bitmap operations on one index version (the latest, or
//! the one in force at an `as_of` date); none scans events. Owns the
//! per-workspace segment state (catalog lock, `person_id` by ordinal); the
//! language is `segment::parse`, evaluation `segment::eval`, names and files
//! `segment::saved`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use futures::StreamExt;
use futures::stream::BoxStream;
use parking_lot::RwLock;
use roaring::RoaringBitmap;

use super::ast::Expr;
use super::eval::{day_number, evaluate, near};
use super::saved::{self, Catalog, SavedSegment, SnapshotInfo};
use crate::index::{Compare, IndexSet};
use crate::store::Workspace;
use crate::{Error, Result};

const DAY_US: i64 = 86_400_000_000;

/// Per-workspace segment state.
#[derive(Debug, Default)]
pub(crate) struct SegmentState {
    /// One catalog write at a time.
    lock: tokio::sync::Mutex<()>,
    /// `person_id` by ordinal, with the OneID run it was read after.
    person_ids: RwLock<Option<(u64, PersonIds)>>,
    /// Kept leaf results (windows, numeric comparisons) of the loaded index
    /// version.
    kept: super::KeptResults,
    /// Each person's value of an enumerated field, for breakdowns.
    codes: ValueCodes,
}

/// Per index version and enumerated field, each ordinal's value as its
/// position among the field's values ([`ValueCodes::NONE`]: no value), built
/// on the first breakdown that walks its members. A breakdown of a small
/// audience then reads one code per member instead of intersecting the
/// audience with every value's bitmap (20 cities: 20 intersections, each
/// merging the audience's containers with the value's).
#[derive(Debug, Default)]
struct ValueCodes {
    /// The index version and its fields' codes (`None`: not usable).
    map: parking_lot::Mutex<(u64, FieldCodes)>,
}

type FieldCodes = std::collections::HashMap<String, Option<Arc<Vec<u16>>>>;

impl ValueCodes {
    const NONE: u16 = u16::MAX;

    /// The codes of `field` (whose value bitmaps are `values`) in index
    /// version `version`; `None` when they cannot stand for the bitmaps: more
    /// than 65,535 values, or a person in two values.
    fn get(
        &self,
        version: u64,
        field: &str,
        values: &std::collections::BTreeMap<String, RoaringBitmap>,
    ) -> Option<Arc<Vec<u16>>> {
        {
            let map = self.map.lock();
            if map.0 == version
                && let Some(codes) = map.1.get(field)
            {
                return codes.clone();
            }
        }
        let codes = Self::build(values).map(Arc::new);
        let mut map = self.map.lock();
        if map.0 != version {
            *map = (version, Default::default());
        }
        map.1.insert(field.to_string(), codes.clone());
        codes
    }

    fn build(values: &std::collections::BTreeMap<String, RoaringBitmap>) -> Option<Vec<u16>> {
        if values.len() >= usize::from(Self::NONE) {
            return None;
        }
        let len = values.values().filter_map(RoaringBitmap::max).max()? as usize + 1;
        let mut codes = vec![Self::NONE; len];
        for (i, b) in values.values().enumerate() {
            for o in b {
                let slot = &mut codes[o as usize];
                if *slot != Self::NONE {
                    return None;
                }
                *slot = i as u16;
            }
        }
        Some(codes)
    }
}

/// Whether counting `m`'s members per value of a field with `values`
/// values is cheaper member by member (one code read each) than by one
/// intersection per value (each at least one pass over `m`'s containers,
/// ~64 members' worth of work per container pair).
fn walk_pays(m: &RoaringBitmap, values: usize) -> bool {
    let containers = u64::from(m.statistics().n_containers).max(1);
    m.len() <= 64 * values as u64 * containers
}

/// `m`'s members per value, by the values' positions in `codes`.
fn count_codes(m: &RoaringBitmap, codes: &[u16], values: usize) -> Vec<u64> {
    let mut counts = vec![0u64; values];
    for o in m {
        if let Some(&c) = codes.get(o as usize)
            && c != ValueCodes::NONE
        {
            counts[usize::from(c)] += 1;
        }
    }
    counts
}

/// A breakdown of `audience`'s members, `(none)` added for those of them
/// not among the `with_value` the rows count.
fn with_none(audience: Evaluated<u64>, mut rows: Vec<BreakdownRow>, with_value: u64) -> Breakdown {
    let none = audience.members.saturating_sub(with_value);
    if none > 0 {
        rows.push(BreakdownRow {
            value: "(none)".into(),
            count: none,
        });
    }
    Breakdown { audience, rows }
}

/// `person_id` by ordinal (`None`: never used).
type PersonIds = Arc<Vec<Option<String>>>;

/// The intersections of 1 to 4 audiences.
#[derive(Debug, Clone)]
pub struct Overlap {
    /// Each audience, in request order.
    pub audiences: Vec<Audience>,
    /// Every non-empty subset (indexes into `audiences`, in binary order:
    /// {0}, {1}, {0, 1}, {2}, ...) and how many persons are in all of it.
    pub intersections: Vec<(Vec<usize>, u64)>,
}

/// When an audience is evaluated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AudienceOptions {
    /// "Now" for windows (`IN LAST n DAYS`), µs since the epoch; default:
    /// the current time (the end of `as_of` when that is given).
    pub now: Option<i64>,
    /// Answer as of the end of this UTC day: the newest kept index version
    /// built by then, windows ending that day.
    pub as_of: Option<NaiveDate>,
}

/// An evaluated audience: its members ([`Audience`]) or how many they are
/// (`Evaluated<u64>`, from [`Workspace::count`]), and what they were
/// evaluated on.
#[derive(Debug, Clone)]
pub struct Evaluated<M> {
    /// Members (person ordinals), or their number.
    pub members: M,
    /// Live persons of the index version.
    pub persons: u64,
    /// The index version evaluated.
    pub index_version: u64,
    /// When that version was built, µs.
    pub built_at: i64,
    /// "Now" of the windows, µs.
    pub now: i64,
    /// Time spent evaluating (bitmap work only, index already loaded).
    pub elapsed: Duration,
}

/// An evaluated audience with its members.
pub type Audience = Evaluated<RoaringBitmap>;

/// One row of a breakdown.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakdownRow {
    /// The value, or a bucket such as `[100.00, 500.00)`; `(none)` for
    /// members without a value.
    pub value: String,
    /// Members with it.
    pub count: u64,
}

impl<M> Evaluated<M> {
    /// The same evaluation with `f(members)` as its members.
    pub fn map<N>(self, f: impl FnOnce(M) -> N) -> Evaluated<N> {
        Evaluated {
            members: f(self.members),
            persons: self.persons,
            index_version: self.index_version,
            built_at: self.built_at,
            now: self.now,
            elapsed: self.elapsed,
        }
    }
}

/// An audience broken down by an enumerated or numeric field.
#[derive(Debug, Clone)]
pub struct Breakdown {
    /// The audience: how many members it has, and what it was evaluated on.
    pub audience: Evaluated<u64>,
    /// Per value or bucket, then `(none)` when some members have no value.
    pub rows: Vec<BreakdownRow>,
}

/// One group of a split.
#[derive(Debug, Clone)]
pub struct SplitGroup {
    /// Its name (`A`, `B`, ... unless named).
    pub name: String,
    /// Its weight.
    pub weight: u32,
    /// Its members.
    pub members: RoaringBitmap,
}

/// Members that entered, left and stayed between two snapshots.
#[derive(Debug, Clone)]
pub struct SnapshotDiff {
    /// The earlier snapshot.
    pub from: SnapshotInfo,
    /// The later snapshot.
    pub to: SnapshotInfo,
    /// In `to`, not in `from`.
    pub entered: RoaringBitmap,
    /// In `from`, not in `to`.
    pub left: RoaringBitmap,
    /// In both.
    pub stayed: RoaringBitmap,
}

/// How exported identifiers are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdHash {
    /// As stored (normalised).
    #[default]
    None,
    /// Lower-case hex SHA-256 of the stored value (ad platforms match on it).
    Sha256,
}

/// `v / 10^scale` as text.
fn scaled_text(v: i64, scale: u8) -> String {
    crate::tag::format_scaled(v, scale)
}

impl Workspace {
    fn segments_dir(&self) -> std::path::PathBuf {
        self.dir().join("segments")
    }

    /// The index version in force at the end of `as_of` (the newest kept one
    /// built by then), else the latest.
    fn audience_index(&self, as_of: Option<NaiveDate>) -> Result<Arc<IndexSet>> {
        let Some(date) = as_of else {
            return self.tag_index()?.ok_or_else(|| {
                Error::invalid(
                    "workspace",
                    format!(
                        "`{}` has no tag index yet: define tags and run `quiver tags refresh`",
                        self.name()
                    ),
                )
            });
        };
        let end = (i64::from(day_number(date)) + 1) * DAY_US - 1;
        let root = self.index_dir();
        let versions = IndexSet::versions(&root)?;
        let mut chosen = None;
        let mut oldest = None;
        for &v in &versions {
            let m = IndexSet::manifest(&root, v)?;
            oldest.get_or_insert(m.built_at);
            if m.built_at <= end {
                chosen = Some(v);
            }
        }
        let Some(v) = chosen else {
            let kept = match oldest {
                Some(t) => format!(
                    "the oldest kept version was built {}",
                    chrono::DateTime::from_timestamp_micros(t)
                        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                        .unwrap_or_default()
                ),
                None => "no version is kept".into(),
            };
            return Err(Error::invalid(
                "as_of",
                format!(
                    "{date}: no tag index version of that day or earlier is kept ({kept}; `tags.keep_versions` sets how many are)"
                ),
            ));
        };
        match self.tag_index()? {
            Some(latest) if latest.version == v => Ok(latest),
            _ => Ok(Arc::new(IndexSet::read(&root, v)?)),
        }
    }

    /// `e` with saved segments inlined (the catalog is read only when `e`
    /// refers to one).
    fn inlined(&self, e: &Expr) -> Result<Expr> {
        fn has_ref(e: &Expr) -> bool {
            match e {
                Expr::Segment { .. } => true,
                Expr::And { args } | Expr::Or { args } => args.iter().any(has_ref),
                Expr::Not { arg } => has_ref(arg),
                _ => false,
            }
        }
        if !has_ref(e) {
            return Ok(e.clone());
        }
        Catalog::read(&self.segments_dir())?.inline(e)
    }

    /// Evaluates `e`: its members among the live persons.
    pub fn audience(&self, e: &Expr, opts: AudienceOptions) -> Result<Audience> {
        self.evaluated(e, opts, super::evaluate_cached)
    }

    /// How many live persons `e` has: [`Workspace::audience`]'s size,
    /// without building the member list where the last step can be an
    /// intersection's size.
    pub fn count(&self, e: &Expr, opts: AudienceOptions) -> Result<Evaluated<u64>> {
        self.evaluated(e, opts, super::count_cached)
    }

    fn evaluated<M>(
        &self,
        e: &Expr,
        opts: AudienceOptions,
        evaluate: impl FnOnce(&Expr, &IndexSet, i32, &super::KeptResults) -> Result<M>,
    ) -> Result<Evaluated<M>> {
        let e = self.inlined(e)?;
        let index = self.audience_index(opts.as_of)?;
        let now = match (opts.now, opts.as_of) {
            (Some(now), _) => now,
            (None, Some(d)) => (i64::from(day_number(d)) + 1) * DAY_US - 1,
            (None, None) => crate::store::now_micros(),
        };
        let started = Instant::now();
        let kept = &self.segment_state().kept;
        let members = evaluate(&e, &index, now.div_euclid(DAY_US) as i32, kept)?;
        Ok(Evaluated {
            members,
            persons: index.live.len(),
            index_version: index.version,
            built_at: index.built_at,
            now,
            elapsed: started.elapsed(),
        })
    }

    /// `e`'s members per value of `by` (an enumerated tag, trait or
    /// attribute, or a boolean tag: `true`/`false`), or per bucket of a
    /// numeric trait: `edges` `[a, b, c]` give `< a`, `[a, b)`, `[b, c)`,
    /// `>= c`; without edges, ten equal-width buckets between the members'
    /// smallest and largest value.
    pub fn breakdown(
        &self,
        e: &Expr,
        by: &str,
        edges: &[f64],
        opts: AudienceOptions,
    ) -> Result<Breakdown> {
        if let Some(b) = self.breakdown_in_pass(e, by, opts)? {
            return Ok(b);
        }
        let audience = self.audience(e, opts)?;
        let index = self.audience_index(opts.as_of)?;
        let started = Instant::now();
        let m = &audience.members;
        let mut rows = Vec::new();
        // Members with a value: a person holds one value of an enumerated
        // field, so the per-value counts add up (no union is built).
        let with_value;
        if let Some(values) = index.enums.get(by) {
            let walked = walk_pays(m, values.len())
                .then(|| self.segment_state().codes.get(index.version, by, values))
                .flatten()
                .map(|codes| count_codes(m, &codes, values.len()));
            for (i, (value, b)) in values.iter().enumerate() {
                let count = match &walked {
                    Some(counts) => counts[i],
                    None => m.intersection_len(b),
                };
                if count > 0 {
                    rows.push(BreakdownRow {
                        value: value.clone(),
                        count,
                    });
                }
            }
            with_value = rows.iter().map(|r| r.count).sum::<u64>();
            rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
        } else if let Some(b) = index.tags.get(by) {
            let yes = m.intersection_len(b);
            rows.push(BreakdownRow {
                value: "true".into(),
                count: yes,
            });
            rows.push(BreakdownRow {
                value: "false".into(),
                count: m.len() - yes,
            });
            with_value = m.len();
        } else if let Some(n) = index.numbers.get(by) {
            let scale = n.scale;
            let factor = 10f64.powi(i32::from(scale));
            let mut cuts: Vec<i64> = edges.iter().map(|x| (x * factor).round() as i64).collect();
            if cuts.is_empty()
                && let Some((lo, hi)) = n.bsi.min_max(m)
            {
                let width = ((hi - lo) / 10).max(1);
                cuts = (1..10)
                    .map(|i| lo + i * width)
                    .filter(|&c| c <= hi)
                    .collect();
                cuts.insert(0, lo);
            }
            cuts.sort_unstable();
            cuts.dedup();
            let label = |lo: Option<i64>, hi: Option<i64>| match (lo, hi) {
                (None, Some(h)) => format!("< {}", scaled_text(h, scale)),
                (Some(l), Some(h)) => {
                    format!("[{}, {})", scaled_text(l, scale), scaled_text(h, scale))
                }
                (Some(l), None) => format!(">= {}", scaled_text(l, scale)),
                (None, None) => "all".into(),
            };
            let bounds: Vec<(Option<i64>, Option<i64>)> = std::iter::once(None)
                .chain(cuts.iter().copied().map(Some))
                .zip(cuts.iter().copied().map(Some).chain(std::iter::once(None)))
                .collect();
            for (lo, hi) in bounds {
                // bit-slice walks over the members only
                let ge = |l: i64| n.bsi.compare_in(Compare::Ge, l, m);
                let lt = |h: i64, within: &RoaringBitmap| n.bsi.compare_in(Compare::Lt, h, within);
                let count = match (lo, hi) {
                    (None, Some(h)) => lt(h, m).len(),
                    (Some(l), Some(h)) => lt(h, &ge(l)).len(),
                    (Some(l), None) => ge(l).len(),
                    (None, None) => m.intersection_len(n.bsi.exists()),
                };
                if count > 0 || (lo.is_some() && hi.is_some()) {
                    rows.push(BreakdownRow {
                        value: label(lo, hi),
                        count,
                    });
                }
            }
            with_value = m.intersection_len(n.bsi.exists());
        } else {
            let names = index
                .enums
                .keys()
                .chain(index.tags.keys())
                .chain(index.numbers.keys())
                .map(String::as_str);
            let near = near(by, names);
            let hint = if near.is_empty() {
                String::new()
            } else {
                format!(" (did you mean {}?)", near.join(", "))
            };
            return Err(Error::invalid(
                "by",
                format!("unknown tag, attribute or trait `{by}`{hint}"),
            ));
        }
        let mut audience = audience.map(|m| m.len());
        audience.elapsed += started.elapsed();
        Ok(with_none(audience, rows, with_value))
    }

    /// A breakdown by an enumerated field of an `AND` that one dense pass
    /// takes, counted per value as the pass reads its words off (each
    /// core its share of the members' codes, no member list built);
    /// `None` for other questions and fields.
    fn breakdown_in_pass(
        &self,
        e: &Expr,
        by: &str,
        opts: AudienceOptions,
    ) -> Result<Option<Breakdown>> {
        let codes = &self.segment_state().codes;
        let mut counted = self.evaluated(e, opts, |e, index, now_day, kept| {
            let Some(values) = index.enums.get(by) else {
                return Ok(None);
            };
            let codes = || codes.get(index.version, by, values);
            let Some((members, counts)) =
                super::code_counts_cached(e, index, now_day, kept, codes, values.len())?
            else {
                return Ok(None);
            };
            let mut rows: Vec<BreakdownRow> = values
                .keys()
                .zip(counts)
                .filter(|(_, count)| *count > 0)
                .map(|(value, count)| BreakdownRow {
                    value: value.clone(),
                    count,
                })
                .collect();
            rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
            Ok(Some((members, rows)))
        })?;
        let Some((members, rows)) = counted.members.take() else {
            return Ok(None);
        };
        let with_value = rows.iter().map(|r| r.count).sum();
        Ok(Some(with_none(counted.map(|_| members), rows, with_value)))
    }

    /// The sizes of every intersection of 1 to 4 audiences: `(members of
    /// the subset, as indexes into exprs; count)`, subsets in binary order.
    pub fn overlap(&self, exprs: &[Expr], opts: AudienceOptions) -> Result<Overlap> {
        if exprs.is_empty() || exprs.len() > 4 {
            return Err(Error::invalid(
                "expressions",
                format!("overlap takes 1 to 4 segments, not {}", exprs.len()),
            ));
        }
        let audiences = exprs
            .iter()
            .map(|e| self.audience(e, opts))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::new();
        for mask in 1u32..(1 << exprs.len()) {
            let parts: Vec<usize> = (0..exprs.len()).filter(|i| mask & (1 << i) != 0).collect();
            let count = match parts.as_slice() {
                [a] => audiences[*a].members.len(),
                [a, b] => audiences[*a]
                    .members
                    .intersection_len(&audiences[*b].members),
                _ => {
                    let mut acc = audiences[parts[0]].members.clone();
                    for &p in &parts[1..] {
                        acc &= &audiences[p].members;
                    }
                    acc.len()
                }
            };
            out.push((parts, count));
        }
        Ok(Overlap {
            audiences,
            intersections: out,
        })
    }

    /// `person_id` by ordinal, read from `persons` once per OneID run.
    async fn person_ids(&self) -> Result<PersonIds> {
        let run = crate::identity::tables::read_state(self.dir())?.run;
        let state = self.segment_state();
        if let Some((r, ids)) = state.person_ids.read().as_ref()
            && *r == run
        {
            return Ok(ids.clone());
        }
        let path = self.dir().join(crate::identity::tables::PERSONS);
        let mut ids: Vec<Option<String>> = Vec::new();
        if crate::identity::tables::open(&path).await?.is_some() {
            for batch in crate::identity::tables::scan(&path, &["person_id", "ordinal"]).await? {
                let names = crate::identity::tables::strings(batch.column(0))?;
                let ords = crate::identity::tables::ints(batch.column(1))?;
                for (name, o) in names.into_iter().zip(ords) {
                    let o = usize::try_from(o).map_err(|_| {
                        Error::Internal(format!("persons: ordinal {o} out of range"))
                    })?;
                    if ids.len() <= o {
                        ids.resize(o + 1, None);
                    }
                    ids[o] = name;
                }
            }
        }
        let ids = Arc::new(ids);
        *state.person_ids.write() = Some((run, ids.clone()));
        Ok(ids)
    }

    /// Splits `e`'s members into groups by `weights` (e.g. `[90, 10]` for a
    /// 10% holdout) from a hash of each person's `person_id` and `salt`: the
    /// same person lands in the same group on every call with that salt,
    /// whatever else is in the audience.
    pub async fn split(
        &self,
        e: &Expr,
        salt: &str,
        weights: &[u32],
        names: &[String],
        opts: AudienceOptions,
    ) -> Result<(Audience, Vec<SplitGroup>)> {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if weights.len() < 2 || weights.len() > 26 || total == 0 {
            return Err(Error::invalid(
                "weights",
                format!("a split needs 2 to 26 weights with a positive sum, not {weights:?}"),
            ));
        }
        if !names.is_empty() && names.len() != weights.len() {
            return Err(Error::invalid(
                "names",
                format!("{} names for {} weights", names.len(), weights.len()),
            ));
        }
        let audience = self.audience(e, opts)?;
        let ids = self.person_ids().await?;
        let mut groups: Vec<SplitGroup> = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| SplitGroup {
                name: names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| char::from(b'A' + i as u8).to_string()),
                weight: w,
                members: RoaringBitmap::new(),
            })
            .collect();
        let mut bounds = Vec::with_capacity(weights.len());
        let mut acc = 0u64;
        for &w in weights {
            acc += u64::from(w);
            bounds.push(acc);
        }
        for o in &audience.members {
            let Some(Some(id)) = ids.get(o as usize) else {
                return Err(Error::Internal(format!(
                    "live ordinal {o} has no person_id in `persons`"
                )));
            };
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(id.as_bytes());
            h.update(&[0]);
            h.update(salt.as_bytes());
            // Multiply-shift to [0, total): unbiased enough for 64-bit hashes.
            let x = ((u128::from(h.digest()) * u128::from(total)) >> 64) as u64;
            let g = bounds.partition_point(|&b| b <= x);
            // ordinals ascend: appends
            if groups[g].members.try_push(o).is_err() {
                groups[g].members.insert(o);
            }
        }
        Ok((audience, groups))
    }

    /// Saves (or replaces) segment `name` after checking that it evaluates.
    pub async fn save_segment(
        &self,
        name: &str,
        e: &Expr,
        description: &str,
    ) -> Result<SavedSegment> {
        saved::check_name(name)?;
        let _g = self.segment_state().lock.lock().await;
        let dir = self.segments_dir();
        let mut catalog = Catalog::read(&dir)?;
        let now = crate::store::now_micros();
        let created_at = catalog.segments.get(name).map_or(now, |s| s.created_at);
        let saved = SavedSegment {
            name: name.to_string(),
            expression: e.to_string(),
            description: description.to_string(),
            created_at,
            updated_at: now,
        };
        let previous = catalog.segments.insert(name.to_string(), saved.clone());
        // A cycle or an unknown reference is refused before anything is written.
        let inlined = catalog.inline(&Expr::Segment {
            name: name.to_string(),
        });
        if let Err(err) = inlined {
            match previous {
                Some(p) => catalog.segments.insert(name.to_string(), p),
                None => catalog.segments.remove(name),
            };
            return Err(err);
        }
        if let Some(index) = self.tag_index()? {
            evaluate(&inlined?, &index, index.now_day)?;
        }
        catalog.write(&dir)?;
        Ok(saved)
    }

    /// Every saved segment, by name.
    pub fn segments(&self) -> Result<Vec<SavedSegment>> {
        Ok(Catalog::read(&self.segments_dir())?
            .segments
            .into_values()
            .collect())
    }

    /// Saved segment `name`.
    pub fn segment(&self, name: &str) -> Result<SavedSegment> {
        match Catalog::read(&self.segments_dir())?.segments.remove(name) {
            Some(s) => Ok(s),
            None => Err(Error::NotFound {
                what: "segment",
                name: name.to_string(),
            }),
        }
    }

    /// Deletes saved segment `name` (its snapshots stay); refused while
    /// another saved segment refers to it.
    pub async fn delete_segment(&self, name: &str) -> Result<()> {
        let _g = self.segment_state().lock.lock().await;
        let dir = self.segments_dir();
        let mut catalog = Catalog::read(&dir)?;
        if !catalog.segments.contains_key(name) {
            return Err(Error::NotFound {
                what: "segment",
                name: name.to_string(),
            });
        }
        let users: Vec<String> = catalog
            .users_of(name)
            .into_iter()
            .filter(|u| u != name)
            .collect();
        if !users.is_empty() {
            return Err(Error::invalid(
                "name",
                format!(
                    "cannot delete `{name}`: {} refer(s) to it",
                    users.join(", ")
                ),
            ));
        }
        catalog.segments.remove(name);
        catalog.write(&dir)
    }

    /// Keeps the current members of saved segment `name` as a snapshot.
    pub async fn snapshot_segment(
        &self,
        name: &str,
        opts: AudienceOptions,
    ) -> Result<SnapshotInfo> {
        let _g = self.segment_state().lock.lock().await;
        let dir = self.segments_dir();
        let mut catalog = Catalog::read(&dir)?;
        let saved = catalog.get(name)?.clone();
        let e = catalog.inline(&Expr::Segment {
            name: name.to_string(),
        })?;
        let a = self.audience(&e, opts)?;
        catalog.next_snapshot = catalog.next_snapshot.max(1);
        let id = catalog.next_snapshot;
        saved::write_snapshot(&dir, id, &a.members)?;
        let info = SnapshotInfo {
            id,
            segment: name.to_string(),
            expression: saved.expression,
            at: crate::store::now_micros(),
            now: a.now,
            index_version: a.index_version,
            count: a.members.len(),
        };
        catalog.snapshots.push(info.clone());
        catalog.next_snapshot = id + 1;
        catalog.write(&dir)?;
        Ok(info)
    }

    /// The snapshots kept, oldest first (of one segment when `name` is given).
    pub fn snapshots(&self, name: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        Ok(Catalog::read(&self.segments_dir())?
            .snapshots
            .into_iter()
            .filter(|s| name.is_none_or(|n| s.segment == n))
            .collect())
    }

    /// Snapshot `id` and its members.
    pub fn snapshot(&self, id: u64) -> Result<(SnapshotInfo, RoaringBitmap)> {
        let dir = self.segments_dir();
        let info = Catalog::read(&dir)?.snapshot(id)?.clone();
        let members = saved::read_snapshot(&dir, id)?;
        Ok((info, members))
    }

    /// Who entered, left and stayed from snapshot `from` to snapshot `to`.
    pub fn diff_snapshots(&self, from: u64, to: u64) -> Result<SnapshotDiff> {
        let (a_info, a) = self.snapshot(from)?;
        let (b_info, b) = self.snapshot(to)?;
        Ok(SnapshotDiff {
            from: a_info,
            to: b_info,
            entered: &b - &a,
            left: &a - &b,
            stayed: a & b,
        })
    }

    /// The identifiers of kind `id_kind` that `members` hold, in pages of
    /// up to `page` values, read from the `identifiers` table as a stream
    /// (the list is never held whole): `person_id`, an identifier kind
    /// (`phone`, `email`, `unionid`, `member`, `device`, `openid` as
    /// `<appid>:<openid>`), or `openid:<appid>` (that app's openids, bare).
    pub async fn export_ids(
        &self,
        members: RoaringBitmap,
        id_kind: &str,
        hash: IdHash,
        page: usize,
    ) -> Result<BoxStream<'static, Result<Vec<String>>>> {
        let page = page.clamp(1, 1 << 20);
        let encode = move |v: &str| match hash {
            IdHash::None => v.to_string(),
            IdHash::Sha256 => {
                use sha2::Digest;
                let d = sha2::Sha256::digest(v.as_bytes());
                d.iter().map(|b| format!("{b:02x}")).collect()
            }
        };
        if id_kind == "person_id" {
            let ids = self.person_ids().await?;
            let all: Vec<u32> = members.iter().collect();
            let pages: Vec<Result<Vec<String>>> = all
                .chunks(page)
                .map(|chunk| {
                    chunk
                        .iter()
                        .map(|&o| match ids.get(o as usize) {
                            Some(Some(id)) => Ok(encode(id)),
                            _ => Err(Error::Internal(format!("ordinal {o} has no person_id"))),
                        })
                        .collect()
                })
                .collect();
            return Ok(futures::stream::iter(pages).boxed());
        }
        let (kind, app) = match id_kind.split_once(':') {
            Some(("openid", app)) if !app.is_empty() => ("openid", Some(format!("{app}:"))),
            Some(_) => {
                return Err(Error::invalid(
                    "id_kind",
                    format!("`{id_kind}`: only `openid:<appid>` takes a suffix"),
                ));
            }
            None => (id_kind, None),
        };
        const KINDS: [&str; 6] = ["phone", "email", "unionid", "openid", "member", "device"];
        if !KINDS.contains(&kind) {
            let near = near(kind, KINDS.iter().copied().chain(["person_id"]));
            let hint = if near.is_empty() {
                String::new()
            } else {
                format!(" (did you mean {}?)", near.join(", "))
            };
            return Err(Error::invalid(
                "id_kind",
                format!("unknown identifier kind `{id_kind}`{hint}"),
            ));
        }
        let sql = format!(
            "SELECT value, ordinal FROM identifiers WHERE kind = '{kind}'{}",
            match &app {
                Some(prefix) =>
                    format!(" AND starts_with(value, '{}')", prefix.replace('\'', "''")),
                None => String::new(),
            }
        );
        let stream = self.sql(&sql).await?;
        let members = Arc::new(members);
        let strip = app.map_or(0, |p| p.len());
        let out = stream
            .map(move |batch| -> Result<Vec<String>> {
                let batch = batch.map_err(|e| Error::Sql(e.to_string()))?;
                let values = crate::identity::tables::strings(batch.column(0))?;
                let ords = crate::identity::tables::ints(batch.column(1))?;
                Ok(values
                    .into_iter()
                    .zip(ords)
                    .filter(|(_, o)| u32::try_from(*o).is_ok_and(|o| members.contains(o)))
                    .filter_map(|(v, _)| v.map(|v| encode(&v[strip.min(v.len())..])))
                    .collect())
            })
            // re-page: batches are as big as the scan makes them
            .flat_map(move |r: Result<Vec<String>>| {
                let pages: Vec<Result<Vec<String>>> = match r {
                    Ok(v) => v.chunks(page).map(|c| Ok(c.to_vec())).collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(pages)
            })
            .boxed();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use roaring::RoaringBitmap;

    use super::{ValueCodes, count_codes};

    proptest! {
        /// Counting members by their codes equals intersecting the members
        /// with each value's bitmap.
        #[test]
        fn codes_count_like_intersections(
            values in prop::collection::vec(prop::option::of(0usize..5), 0..3000),
            members in prop::collection::btree_set(0u32..3500, 0..800),
        ) {
            let mut bitmaps: BTreeMap<String, RoaringBitmap> = BTreeMap::new();
            for (o, v) in values.iter().enumerate() {
                if let Some(v) = v {
                    bitmaps.entry(format!("v{v}")).or_default().insert(o as u32);
                }
            }
            let m: RoaringBitmap = members.into_iter().collect();
            let want: Vec<u64> = bitmaps.values().map(|b| m.intersection_len(b)).collect();
            match ValueCodes::build(&bitmaps) {
                Some(codes) => prop_assert_eq!(count_codes(&m, &codes, bitmaps.len()), want),
                None => prop_assert!(bitmaps.is_empty()),
            }
        }
    }

    #[test]
    fn a_person_in_two_values_has_no_codes() {
        let mut bitmaps = BTreeMap::new();
        bitmaps.insert("a".to_string(), RoaringBitmap::from_iter([1u32, 5]));
        bitmaps.insert("b".to_string(), RoaringBitmap::from_iter([2u32, 5]));
        assert!(ValueCodes::build(&bitmaps).is_none());
        bitmaps.insert("b".to_string(), RoaringBitmap::from_iter([2u32, 6]));
        let codes = ValueCodes::build(&bitmaps).expect("disjoint values");
        assert_eq!(
            codes[1..7],
            [0, 1, ValueCodes::NONE, ValueCodes::NONE, 0, 1]
        );
    }
}
