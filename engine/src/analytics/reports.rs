//! Funnels, retention and channel attribution over the per-person
//! timelines: exact, on persons (OneID), never on raw identifiers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::timeline::{NONE, Timeline};
use crate::segment::{Did, Expr, near, parse};
use crate::{Error, Result, Workspace};

const DAY_US: i64 = 86_400_000_000;

/// Which events a step (or cohort, return, touch, conversion) is: a type,
/// optionally with `channel` / `category` equal to a value.
#[derive(Debug, Clone)]
struct Matcher {
    /// `None`: no event has that type (matches nothing).
    event_type: Option<u16>,
    /// Each `Some(None)`: a value no event has (matches nothing).
    channel: Option<Option<u16>>,
    category: Option<Option<u16>>,
}

impl Matcher {
    /// From `did(TYPE [WHERE ...])` or a bare `TYPE`.
    fn parse(field: &str, text: &str, t: &Timeline) -> Result<Self> {
        let text = text.trim();
        let wrapped;
        let source = if text.to_ascii_lowercase().starts_with("did(") {
            text
        } else {
            wrapped = format!("did({text})");
            &wrapped
        };
        let did: Did = match parse(source) {
            Ok(Expr::Did(d)) => d,
            Ok(_) => {
                return Err(Error::invalid(
                    field,
                    format!(
                        "`{text}`: expected an event, e.g. `purchase` or `did(page_view WHERE category = 'skincare')`"
                    ),
                ));
            }
            Err(e) => return Err(Error::invalid(field, format!("`{text}`: {e}"))),
        };
        if did.count.is_some() || did.window.is_some() {
            return Err(Error::invalid(
                field,
                format!("`{text}`: a step is one event; counts and windows belong to segments"),
            ));
        }
        let event_type = t.type_names.get(&did.event_type);
        if event_type.is_none() {
            let near = near(
                &did.event_type,
                t.type_names.names.iter().map(String::as_str),
            );
            let hint = if near.is_empty() {
                String::new()
            } else {
                format!(" (did you mean {}?)", near.join(", "))
            };
            return Err(Error::invalid(
                field,
                format!("no event has type `{}`{hint}", did.event_type),
            ));
        }
        let mut m = Matcher {
            event_type,
            channel: None,
            category: None,
        };
        for (k, v) in &did.filters {
            match k.as_str() {
                "channel" => m.channel = Some(t.channel_names.get(v)),
                "category" => m.category = Some(t.category_names.get(v)),
                other => {
                    return Err(Error::invalid(
                        field,
                        format!("`{text}`: steps filter on `channel` or `category`, not `{other}`"),
                    ));
                }
            }
        }
        Ok(m)
    }

    fn matches(&self, t: &Timeline, i: usize) -> bool {
        self.event_type == Some(t.types[i])
            && self.channel.is_none_or(|c| c == Some(t.channels[i]))
            && self
                .category
                .is_none_or(|c| c.is_some_and(|c| c != NONE && c == t.categories[i]))
    }
}

/// A funnel question.
#[derive(Debug, Clone, Default)]
pub struct FunnelRequest {
    /// Two or more steps, each `TYPE` or `did(TYPE WHERE prop = 'v' ...)`.
    pub steps: Vec<String>,
    /// Every later step within this long of the first, µs.
    pub window: i64,
    /// First steps at or after this time, µs (default: any).
    pub from: Option<i64>,
    /// First steps before this time, µs (default: any).
    pub to: Option<i64>,
    /// `channel` (of the first step), or an enumerated tag, trait or
    /// attribute, or a boolean tag (per person, latest index).
    pub breakdown: Option<String>,
}

/// One step of a funnel's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelStep {
    /// The step as asked.
    pub step: String,
    /// Persons who reached it.
    pub persons: u64,
    /// Share of the previous step's persons (1 for the first).
    pub from_previous: f64,
    /// Share of the first step's persons.
    pub from_first: f64,
    /// Median seconds from the previous step (`None` for the first or
    /// when nobody reached it).
    pub median_seconds_from_previous: Option<f64>,
}

/// A funnel's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Funnel {
    /// Per step.
    pub steps: Vec<FunnelStep>,
    /// Per breakdown value: persons reaching each step.
    pub breakdown: BTreeMap<String, Vec<u64>>,
    /// The OneID run the events were attributed by.
    pub identity_run: u64,
    /// The `events` version covered.
    pub events_version: u64,
    /// Time spent answering (after the timelines were loaded).
    #[serde(skip)]
    pub elapsed: Duration,
}

/// One thread's share of a funnel.
struct FunnelPart {
    reached: Vec<u64>,
    per_group: Vec<Vec<u64>>,
    gaps: Vec<Vec<i64>>,
}

/// `sum[i] += v[i]`.
fn add(sum: &mut [u64], v: &[u64]) {
    for (s, x) in sum.iter_mut().zip(v) {
        *s += x;
    }
}

fn median(v: &mut [i64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0
    };
    Some(m / 1e6)
}

impl Workspace {
    async fn timeline_or_err(&self) -> Result<std::sync::Arc<Timeline>> {
        self.timeline().await?.ok_or_else(|| {
            Error::Config("no persons yet: run `quiver resolve` before analytics".into())
        })
    }

    /// Person → breakdown group, for a person-level `by`.
    fn person_groups(&self, by: &str, space: usize) -> Result<(Vec<u16>, Vec<String>)> {
        let index = self
            .tag_index()?
            .ok_or_else(|| Error::invalid("breakdown", "no tag index yet: refresh tags first"))?;
        let mut groups = vec![NONE; space];
        let mut names = Vec::new();
        let mut put = |label: String, bits: &roaring::RoaringBitmap| {
            let g = names.len() as u16;
            names.push(label);
            for o in bits {
                if let Some(slot) = groups.get_mut(o as usize) {
                    *slot = g;
                }
            }
        };
        if let Some(values) = index.enums.get(by) {
            for (v, b) in values {
                put(v.clone(), b);
            }
        } else if let Some(b) = index.tags.get(by) {
            put("false".into(), &(&index.live - b));
            put("true".into(), b);
        } else {
            let known = index
                .enums
                .keys()
                .chain(index.tags.keys())
                .map(String::as_str);
            let near = near(by, known.chain(["channel"]));
            return Err(Error::invalid(
                "breakdown",
                format!(
                    "`{by}` is not `channel`, an enumerated tag, trait or attribute, or a boolean tag{}",
                    if near.is_empty() {
                        String::new()
                    } else {
                        format!(" (did you mean {}?)", near.join(", "))
                    }
                ),
            ));
        }
        Ok((groups, names))
    }

    /// An ordered funnel: persons whose events include step 1, then step 2,
    /// ... in time order, every step within `window` of the step-1 event
    /// (ClickHouse's `windowFunnel`). Median times follow, per person, the
    /// first chain found that reaches their furthest step.
    pub async fn funnel(&self, req: &FunnelRequest) -> Result<Funnel> {
        if req.steps.len() < 2 || req.steps.len() > 16 {
            return Err(Error::invalid(
                "steps",
                format!("a funnel has 2 to 16 steps, not {}", req.steps.len()),
            ));
        }
        if req.window <= 0 {
            return Err(Error::invalid("window", "must be positive"));
        }
        let t = self.timeline_or_err().await?;
        let started = Instant::now();
        let steps = req
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| Matcher::parse(&format!("steps[{i}]"), s, &t))
            .collect::<Result<Vec<_>>>()?;
        let n = steps.len();
        let space = t.offsets.len().saturating_sub(1);
        let (groups, group_names, by_channel) = match req.breakdown.as_deref() {
            None => (Vec::new(), Vec::new(), false),
            Some("channel") => (Vec::new(), t.channel_names.names.clone(), true),
            Some(by) => {
                let (g, names) = self.person_groups(by, space)?;
                (g, names, false)
            }
        };
        let (from, to) = (req.from.unwrap_or(i64::MIN), req.to.unwrap_or(i64::MAX));
        let parts = t.par_chunks(|ordinals| {
            let mut part = FunnelPart {
                reached: vec![0; n],
                per_group: vec![vec![0; n]; group_names.len() + 1],
                gaps: vec![Vec::new(); n],
            };
            // Per level: the latest start reaching it, and that chain's
            // event indexes.
            let mut start: Vec<Option<i64>> = vec![None; n];
            let mut chain: Vec<Vec<usize>> = vec![Vec::with_capacity(n); n];
            for o in t.persons_in(ordinals) {
                start.iter_mut().for_each(|s| *s = None);
                let mut level = 0usize;
                for i in t.range(o) {
                    let time = t.times[i];
                    // Highest step first: one event never serves two steps.
                    for k in (0..n).rev() {
                        if !steps[k].matches(&t, i) {
                            continue;
                        }
                        if k == 0 {
                            if time >= from && time < to {
                                start[0] = Some(time);
                                chain[0].clear();
                                chain[0].push(i);
                                level = level.max(1);
                            }
                        } else if let Some(s) = start[k - 1]
                            && time - s <= req.window
                            && start[k].is_none_or(|cur| s > cur)
                        {
                            start[k] = Some(s);
                            let (lower, upper) = chain.split_at_mut(k);
                            upper[0].clear();
                            upper[0].extend_from_slice(&lower[k - 1]);
                            upper[0].push(i);
                            level = level.max(k + 1);
                        }
                    }
                    if level == n {
                        break;
                    }
                }
                if level == 0 {
                    continue;
                }
                let best = &chain[level - 1];
                for k in 0..level {
                    part.reached[k] += 1;
                    if k > 0 {
                        part.gaps[k].push(t.times[best[k]] - t.times[best[k - 1]]);
                    }
                }
                if !group_names.is_empty() {
                    let g = if by_channel {
                        t.channels[best[0]]
                    } else {
                        groups[o as usize]
                    };
                    let row = if g == NONE {
                        group_names.len()
                    } else {
                        g as usize
                    };
                    for c in part.per_group[row].iter_mut().take(level) {
                        *c += 1;
                    }
                }
            }
            part
        });
        let mut reached = vec![0u64; n];
        let mut per_group: Vec<Vec<u64>> = vec![vec![0; n]; group_names.len() + 1];
        let mut gaps: Vec<Vec<i64>> = vec![Vec::new(); n];
        for part in parts {
            add(&mut reached, &part.reached);
            for (sum, g) in per_group.iter_mut().zip(&part.per_group) {
                add(sum, g);
            }
            for (all, g) in gaps.iter_mut().zip(part.gaps) {
                all.extend(g);
            }
        }
        let first = reached[0].max(1) as f64;
        let out_steps = (0..n)
            .map(|k| FunnelStep {
                step: req.steps[k].clone(),
                persons: reached[k],
                from_previous: if k == 0 {
                    1.0
                } else {
                    reached[k] as f64 / reached[k - 1].max(1) as f64
                },
                from_first: reached[k] as f64 / first,
                median_seconds_from_previous: if k == 0 { None } else { median(&mut gaps[k]) },
            })
            .collect();
        let mut breakdown = BTreeMap::new();
        for (g, counts) in per_group.into_iter().enumerate() {
            if counts[0] == 0 {
                continue;
            }
            let name = group_names
                .get(g)
                .cloned()
                .unwrap_or_else(|| "(none)".to_string());
            breakdown.insert(name, counts);
        }
        Ok(Funnel {
            steps: out_steps,
            breakdown,
            identity_run: t.run,
            events_version: t.events_version,
            elapsed: started.elapsed(),
        })
    }
}

/// Retention periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// UTC days.
    Day,
    /// ISO weeks (Monday to Sunday, UTC).
    #[default]
    Week,
}

impl Period {
    /// The start (µs) of the period holding `t`.
    pub fn start(self, t: i64) -> i64 {
        let day = t.div_euclid(DAY_US);
        match self {
            Period::Day => day * DAY_US,
            // 1970-01-01 was a Thursday: Monday is 3 days before.
            Period::Week => (day - (day + 3).rem_euclid(7)) * DAY_US,
        }
    }

    fn len(self) -> i64 {
        match self {
            Period::Day => DAY_US,
            Period::Week => 7 * DAY_US,
        }
    }
}

/// A retention question.
#[derive(Debug, Clone, Default)]
pub struct RetentionRequest {
    /// The event whose first occurrence puts a person in a cohort (default:
    /// any event).
    pub cohort_event: Option<String>,
    /// The event that counts as coming back (default: any event).
    pub return_event: Option<String>,
    /// Day or week.
    pub period: Period,
    /// Periods per cohort, counting the cohort's own as period 0.
    pub periods: u32,
    /// Cohorts whose first event is at or after this time, µs.
    pub from: i64,
    /// ... and before this time, µs.
    pub to: i64,
}

/// One cohort's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cohort {
    /// The cohort period's start, µs.
    pub start: i64,
    /// Persons in it.
    pub persons: u64,
    /// Per period `k` (0 = the cohort's own): persons with a return event in it.
    pub retained: Vec<u64>,
}

/// A retention matrix.
#[derive(Debug, Clone, Serialize)]
pub struct Retention {
    /// Per cohort, oldest first.
    pub cohorts: Vec<Cohort>,
    /// The OneID run the events were attributed by.
    pub identity_run: u64,
    /// The `events` version covered.
    pub events_version: u64,
    /// Time spent answering (after the timelines were loaded).
    #[serde(skip)]
    pub elapsed: Duration,
}

impl Workspace {
    /// Retention by cohort: each person joins the cohort of the period of
    /// their first cohort event (if it falls in `from..to`), and counts in
    /// period `k` of it when they have a return event in that period.
    pub async fn retention(&self, req: &RetentionRequest) -> Result<Retention> {
        if req.periods == 0 || req.periods > 366 {
            return Err(Error::invalid(
                "periods",
                format!("1 to 366, not {}", req.periods),
            ));
        }
        if req.from >= req.to {
            return Err(Error::invalid("from", "must be before `to`"));
        }
        let t = self.timeline_or_err().await?;
        let started = Instant::now();
        let cohort = req
            .cohort_event
            .as_deref()
            .map(|s| Matcher::parse("cohort_event", s, &t))
            .transpose()?;
        let ret = req
            .return_event
            .as_deref()
            .map(|s| Matcher::parse("return_event", s, &t))
            .transpose()?;
        let (len, periods) = (req.period.len(), req.periods as usize);
        let first_cohort = req.period.start(req.from);
        let cohorts = ((req.period.start(req.to - 1) - first_cohort) / len + 1) as usize;
        let parts = t.par_chunks(|ordinals| {
            let mut sizes = vec![0u64; cohorts];
            let mut retained = vec![vec![0u64; periods]; cohorts];
            let mut seen = vec![false; periods];
            for o in t.persons_in(ordinals) {
                let r = t.range(o);
                let Some(first) = r
                    .clone()
                    .find(|&i| cohort.as_ref().is_none_or(|m| m.matches(&t, i)))
                else {
                    continue;
                };
                let t0 = t.times[first];
                if t0 < req.from || t0 >= req.to {
                    continue;
                }
                let c0 = req.period.start(t0);
                let c = ((c0 - first_cohort) / len) as usize;
                sizes[c] += 1;
                seen.iter_mut().for_each(|s| *s = false);
                let end = c0 + len * periods as i64;
                for i in r {
                    let time = t.times[i];
                    if time < c0 {
                        continue;
                    }
                    if time >= end {
                        break;
                    }
                    if ret.as_ref().is_none_or(|m| m.matches(&t, i)) {
                        seen[((time - c0) / len) as usize] = true;
                    }
                }
                for (k, s) in seen.iter().enumerate() {
                    if *s {
                        retained[c][k] += 1;
                    }
                }
            }
            (sizes, retained)
        });
        let mut sizes = vec![0u64; cohorts];
        let mut retained = vec![vec![0u64; periods]; cohorts];
        for (s, r) in parts {
            add(&mut sizes, &s);
            for (sum, row) in retained.iter_mut().zip(&r) {
                add(sum, row);
            }
        }
        Ok(Retention {
            cohorts: (0..cohorts)
                .map(|c| Cohort {
                    start: first_cohort + c as i64 * len,
                    persons: sizes[c],
                    retained: retained[c].clone(),
                })
                .collect(),
            identity_run: t.run,
            events_version: t.events_version,
            elapsed: started.elapsed(),
        })
    }
}

/// An attribution question.
#[derive(Debug, Clone, Default)]
pub struct AttributionRequest {
    /// The conversion event (default `purchase`).
    pub conversion: Option<String>,
    /// The touch events (default: every event that is not a conversion).
    pub touch: Option<String>,
    /// How far back a touch counts, µs (default 30 days).
    pub lookback: Option<i64>,
    /// Conversions at or after this time, µs.
    pub from: Option<i64>,
    /// ... and before this time, µs.
    pub to: Option<i64>,
}

/// One channel's credit.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChannelCredit {
    /// The channel (`(no touch)`: conversions without a touch in the lookback).
    pub channel: String,
    /// Conversions credited by first touch.
    pub first_touch: f64,
    /// ... by last touch.
    pub last_touch: f64,
    /// ... linearly (each touch an equal share).
    pub linear: f64,
    /// Revenue (currency units) credited by first touch.
    pub first_touch_revenue: f64,
    /// ... by last touch.
    pub last_touch_revenue: f64,
    /// ... linearly.
    pub linear_revenue: f64,
}

/// Channel attribution of conversions.
#[derive(Debug, Clone, Serialize)]
pub struct Attribution {
    /// Conversions counted.
    pub conversions: u64,
    /// Per channel, most linear credit first.
    pub channels: Vec<ChannelCredit>,
    /// The OneID run the events were attributed by.
    pub identity_run: u64,
    /// The `events` version covered.
    pub events_version: u64,
    /// Time spent answering (after the timelines were loaded).
    #[serde(skip)]
    pub elapsed: Duration,
}

/// The credit row name of conversions without touches.
pub const NO_TOUCH: &str = "(no touch)";

impl Workspace {
    /// Credits each conversion to the channels of the same person's touches
    /// in the `lookback` before it: first touch, last touch, linear.
    pub async fn attribution(&self, req: &AttributionRequest) -> Result<Attribution> {
        let t = self.timeline_or_err().await?;
        let started = Instant::now();
        let conversion = Matcher::parse(
            "conversion",
            req.conversion.as_deref().unwrap_or("purchase"),
            &t,
        )?;
        let touch = req
            .touch
            .as_deref()
            .map(|s| Matcher::parse("touch", s, &t))
            .transpose()?;
        let lookback = req.lookback.unwrap_or(30 * DAY_US);
        if lookback <= 0 {
            return Err(Error::invalid("lookback", "must be positive"));
        }
        let (from, to) = (req.from.unwrap_or(i64::MIN), req.to.unwrap_or(i64::MAX));
        let k = t.channel_names.names.len();
        let mut credit = vec![ChannelCredit::default(); k + 1];
        let mut conversions = 0u64;
        for o in t.persons() {
            let r = t.range(o);
            for i in r.clone() {
                let time = t.times[i];
                if time < from || time >= to || !conversion.matches(&t, i) {
                    continue;
                }
                conversions += 1;
                let revenue = t.amounts[i] as f64 / 100.0;
                let touches: Vec<usize> = (r.start..i)
                    .filter(|&j| t.times[j] >= time - lookback)
                    .filter(|&j| match &touch {
                        Some(m) => m.matches(&t, j),
                        None => !conversion.matches(&t, j),
                    })
                    .collect();
                let (Some(&first), Some(&last)) = (touches.first(), touches.last()) else {
                    let c = &mut credit[k];
                    c.first_touch += 1.0;
                    c.last_touch += 1.0;
                    c.linear += 1.0;
                    c.first_touch_revenue += revenue;
                    c.last_touch_revenue += revenue;
                    c.linear_revenue += revenue;
                    continue;
                };
                let f = &mut credit[t.channels[first] as usize];
                f.first_touch += 1.0;
                f.first_touch_revenue += revenue;
                let l = &mut credit[t.channels[last] as usize];
                l.last_touch += 1.0;
                l.last_touch_revenue += revenue;
                let share = 1.0 / touches.len() as f64;
                for &j in &touches {
                    let c = &mut credit[t.channels[j] as usize];
                    c.linear += share;
                    c.linear_revenue += revenue * share;
                }
            }
        }
        let mut channels: Vec<ChannelCredit> = credit
            .into_iter()
            .enumerate()
            .filter(|(_, c)| c.first_touch + c.last_touch + c.linear > 0.0)
            .map(|(i, mut c)| {
                c.channel = t
                    .channel_names
                    .names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| NO_TOUCH.to_string());
                c
            })
            .collect();
        channels.sort_by(|a, b| {
            b.linear
                .total_cmp(&a.linear)
                .then_with(|| a.channel.cmp(&b.channel))
        });
        Ok(Attribution {
            conversions,
            channels,
            identity_run: t.run,
            events_version: t.events_version,
            elapsed: started.elapsed(),
        })
    }
}
