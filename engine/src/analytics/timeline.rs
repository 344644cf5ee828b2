//! Every person's events in time order, the input of funnels, retention and
//! attribution: one columnar pass over `events` (at the Delta version the
//! last OneID run resolved, so persons, tags and analytics agree), each
//! event attributed to its person as profiles are, then laid out per person
//! (compressed sparse rows: `offsets[o]..offsets[o + 1]` are ordinal `o`'s
//! events, oldest first). Kept in memory per workspace until the next run.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Decimal128Array};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use futures::StreamExt;

use crate::profile::PersonMap;
use crate::store::{Workspace, table_provider};
use crate::{Error, Result};

/// No category.
pub(crate) const NONE: u16 = u16::MAX;

/// Below this many events per core a question runs on one thread (tests
/// split anything, so the merge is what they check).
#[cfg(not(test))]
const MIN_EVENTS_PER_THREAD: usize = 1 << 16;
#[cfg(test)]
const MIN_EVENTS_PER_THREAD: usize = 1;

/// A string ↔ dense `u16` id table.
#[derive(Debug, Default)]
pub(crate) struct Names {
    ids: hashbrown::HashMap<String, u16>,
    pub names: Vec<String>,
}

impl Names {
    fn intern(&mut self, s: &str) -> Result<u16> {
        if let Some(&id) = self.ids.get(s) {
            return Ok(id);
        }
        let id = u16::try_from(self.names.len())
            .ok()
            .filter(|&id| id != NONE)
            .ok_or_else(|| Error::Internal(format!("more than {NONE} distinct values")))?;
        self.ids.insert(s.to_string(), id);
        self.names.push(s.to_string());
        Ok(id)
    }

    /// The id of `s`, if any event has it.
    pub fn get(&self, s: &str) -> Option<u16> {
        self.ids.get(s).copied()
    }
}

/// Per-person event timelines.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    /// The OneID run and the `events` version it covers.
    pub run: u64,
    pub events_version: u64,
    /// `offsets[o]..offsets[o + 1]`: ordinal `o`'s events.
    pub offsets: Vec<u64>,
    /// Event time, µs since the epoch.
    pub times: Vec<i64>,
    pub types: Vec<u16>,
    pub channels: Vec<u16>,
    /// [`NONE`] when the event has no category.
    pub categories: Vec<u16>,
    /// `amount` in cents (0 when absent).
    pub amounts: Vec<i64>,
    pub type_names: Names,
    pub channel_names: Names,
    pub category_names: Names,
    /// Events no live person owns.
    pub unattributed: u64,
}

impl Timeline {
    /// Ordinal `o`'s events as an index range.
    pub fn range(&self, o: u32) -> std::ops::Range<usize> {
        let o = o as usize;
        if o + 1 >= self.offsets.len() {
            return 0..0;
        }
        self.offsets[o] as usize..self.offsets[o + 1] as usize
    }

    /// Ordinals with at least one event.
    pub fn persons(&self) -> impl Iterator<Item = u32> + '_ {
        self.persons_in(0..self.offsets.len().saturating_sub(1) as u32)
    }

    /// Ordinals in `ordinals` with at least one event.
    pub fn persons_in(&self, ordinals: std::ops::Range<u32>) -> impl Iterator<Item = u32> + '_ {
        ordinals.filter(|&o| !self.range(o).is_empty())
    }

    /// Runs `f` on contiguous ordinal ranges covering every person, one per
    /// core, each with about as many events, and returns the results in
    /// ordinal order (so merging them gives what one pass would).
    pub fn par_chunks<S: Send>(&self, f: impl Fn(std::ops::Range<u32>) -> S + Sync) -> Vec<S> {
        let space = self.offsets.len().saturating_sub(1) as u32;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunks = threads.min(self.len() / MIN_EVENTS_PER_THREAD).max(1);
        if chunks == 1 {
            return vec![f(0..space)];
        }
        let total = self.len() as u64;
        let mut bounds = Vec::with_capacity(chunks + 1);
        let mut prev = 0u32;
        bounds.push(prev);
        for c in 1..chunks {
            let target = total * c as u64 / chunks as u64;
            // The first ordinal starting at or after the target event.
            let o = (self.offsets.partition_point(|&x| x < target) as u32).clamp(prev, space);
            bounds.push(o);
            prev = o;
        }
        bounds.push(space);
        std::thread::scope(|scope| {
            let f = &f;
            let handles: Vec<_> = bounds
                .windows(2)
                .map(|w| {
                    let r = w[0]..w[1];
                    scope.spawn(move || f(r))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    /// Events in the timeline.
    pub fn len(&self) -> usize {
        self.times.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.offsets.len() * 8 + self.times.len() * (8 + 2 + 2 + 2 + 8)
    }
}

/// What [`Workspace::load_timelines`] holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TimelineStats {
    /// The OneID run the events are attributed by.
    pub identity_run: u64,
    /// The `events` version covered.
    pub events_version: u64,
    /// Events laid out per person.
    pub events: u64,
    /// Persons with at least one event.
    pub persons: u64,
    /// Events no live person owns (left out).
    pub unattributed: u64,
    /// Bytes held.
    pub bytes: u64,
}

impl Workspace {
    /// Builds (or finds) the per-person timelines that funnels, retention
    /// and attribution read, so the first question after a resolve does not
    /// pay for them. `None` before the first OneID run.
    pub async fn load_timelines(&self) -> Result<Option<TimelineStats>> {
        Ok(self.timeline().await?.map(|t| TimelineStats {
            identity_run: t.run,
            events_version: t.events_version,
            events: t.len() as u64,
            persons: t.persons().count() as u64,
            unattributed: t.unattributed,
            bytes: t.bytes() as u64,
        }))
    }
}

impl Workspace {
    /// The timelines of the events the last OneID run resolved (built on
    /// first use after each run). `None` before the first run.
    pub(crate) async fn timeline(&self) -> Result<Option<Arc<Timeline>>> {
        let state = crate::identity::tables::read_state(self.dir())?;
        if state.run == 0 {
            return Ok(None);
        }
        let events_version = state.events_version.unwrap_or(0);
        let mut slot = self.analytics_state().timeline.lock().await;
        if let Some(t) = slot.as_ref()
            && t.run == state.run
            && t.events_version == events_version
        {
            return Ok(Some(t.clone()));
        }
        let Some(persons) = self.person_map().await? else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let (mut table, _) = self.read_view();
        if table.version() != Some(events_version) {
            table.load_version(events_version).await?;
        }
        let mut t = build(&table, &persons).await?;
        t.run = state.run;
        t.events_version = events_version;
        tracing::info!(ws = %self.name(), events = t.len(), mib = t.bytes() >> 20, seconds = started.elapsed().as_secs_f64(), "analytics timeline built");
        let t = Arc::new(t);
        *slot = Some(t.clone());
        Ok(Some(t))
    }
}

/// Reads `table` once and lays its events out per person.
async fn build(table: &deltalake_core::DeltaTable, persons: &PersonMap) -> Result<Timeline> {
    let ctx = datafusion::prelude::SessionContext::new_with_config(crate::store::session_config());
    let df = ctx
        .read_table(table_provider(table).await?)?
        .select_columns(&[
            "event_time",
            "event_type",
            "channel",
            "category",
            "amount",
            "identifiers",
        ])?;
    let mut stream = df.execute_stream().await?;
    let mut t = Timeline::default();
    // Events in read order, then placed per person.
    let mut ords: Vec<u32> = Vec::new();
    let mut times = Vec::new();
    let mut types = Vec::new();
    let mut channels = Vec::new();
    let mut categories = Vec::new();
    let mut amounts = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let col = |i: usize| batch.column(i);
        let ts = arrow::compute::cast(col(0), &DataType::Timestamp(TimeUnit::Microsecond, None))?;
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let ty = arrow::compute::cast(col(1), &DataType::Utf8)?;
        let ty = ty.as_string::<i32>();
        let ch = arrow::compute::cast(col(2), &DataType::Utf8)?;
        let ch = ch.as_string::<i32>();
        let cat = arrow::compute::cast(col(3), &DataType::Utf8)?;
        let cat = cat.as_string::<i32>();
        let amount = col(4)
            .as_any()
            .downcast_ref::<Decimal128Array>()
            .ok_or_else(|| Error::Internal("events `amount` is not Decimal128".into()))?;
        let ids = col(5).as_list::<i32>();
        let items = ids.values().as_struct();
        let kinds = arrow::compute::cast(items.column(0), &DataType::Utf8)?;
        let values = arrow::compute::cast(items.column(1), &DataType::Utf8)?;
        let (kinds, values) = (kinds.as_string::<i32>(), values.as_string::<i32>());
        let offsets = ids.value_offsets();
        for row in 0..batch.num_rows() {
            let owner = persons.owner_of(
                (offsets[row] as usize..offsets[row + 1] as usize)
                    .filter(|&j| items.is_valid(j))
                    .map(|j| (kinds.value(j), values.value(j))),
            );
            let Some(o) = owner else {
                t.unattributed += 1;
                continue;
            };
            ords.push(o);
            times.push(ts.value(row));
            types.push(t.type_names.intern(ty.value(row))?);
            channels.push(t.channel_names.intern(ch.value(row))?);
            categories.push(if cat.is_valid(row) {
                t.category_names.intern(cat.value(row))?
            } else {
                NONE
            });
            amounts.push(if amount.is_valid(row) {
                amount.value(row) as i64
            } else {
                0
            });
        }
    }
    // Counting sort by person, then each person's events by time.
    let space = persons.ordinal_space();
    let mut offsets = vec![0u64; space + 1];
    for &o in &ords {
        offsets[o as usize + 1] += 1;
    }
    for i in 0..space {
        offsets[i + 1] += offsets[i];
    }
    let mut next: Vec<u64> = offsets[..space].to_vec();
    let mut order = vec![0u32; ords.len()];
    for (i, &o) in ords.iter().enumerate() {
        let slot = &mut next[o as usize];
        order[*slot as usize] = i as u32;
        *slot += 1;
    }
    // Ties in time go by type, channel, category name and amount, so the
    // order does not depend on read order.
    let rank = |names: &Names| {
        let mut by_name: Vec<u16> = (0..names.names.len() as u16).collect();
        by_name.sort_by(|&a, &b| names.names[a as usize].cmp(&names.names[b as usize]));
        let mut rank = vec![0u16; names.names.len()];
        for (r, &id) in by_name.iter().enumerate() {
            rank[id as usize] = r as u16;
        }
        rank
    };
    let (type_rank, channel_rank, category_rank) = (
        rank(&t.type_names),
        rank(&t.channel_names),
        rank(&t.category_names),
    );
    let key = |i: u32| {
        let i = i as usize;
        let cat = categories[i];
        (
            times[i],
            type_rank[types[i] as usize],
            channel_rank[channels[i] as usize],
            if cat == NONE {
                NONE
            } else {
                category_rank[cat as usize]
            },
            amounts[i],
        )
    };
    for o in 0..space {
        let r = offsets[o] as usize..offsets[o + 1] as usize;
        order[r].sort_by_key(|&i| key(i));
    }
    let take = |v: &[i64]| order.iter().map(|&i| v[i as usize]).collect::<Vec<_>>();
    let take16 = |v: &[u16]| order.iter().map(|&i| v[i as usize]).collect::<Vec<_>>();
    t.times = take(&times);
    t.amounts = take(&amounts);
    t.types = take16(&types);
    t.channels = take16(&channels);
    t.categories = take16(&categories);
    t.offsets = offsets;
    Ok(t)
}
