//! The `profiles` and `attribute_history` Delta tables.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, Decimal128Builder, Int32Builder, Int64Builder, MapBuilder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake_core::protocol::SaveMode;

use super::scan::{AttributeChange, NEVER, PersonMap, Scan};
use super::traits::Derived;
use crate::event::{AMOUNT_PRECISION, AMOUNT_SCALE, TZ};
use crate::identity::tables::{self, ts};
use crate::{Error, Result};

pub(crate) const PROFILES: &str = "profiles";
pub(crate) const ATTRIBUTE_HISTORY: &str = "attribute_history";

fn money() -> DataType {
    DataType::Decimal128(AMOUNT_PRECISION, AMOUNT_SCALE)
}

fn map_of(value: DataType) -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "entries",
            DataType::Struct(
                vec![
                    Field::new("keys", DataType::Utf8, false),
                    Field::new("values", value, true),
                ]
                .into(),
            ),
            false,
        )),
        false,
    )
}

static PROFILES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    let i = |n: &str| Field::new(n, DataType::Int64, false);
    let score = |n: &str| Field::new(n, DataType::Int32, true);
    Arc::new(Schema::new(vec![
        Field::new("person_id", DataType::Utf8, false),
        i("ordinal"),
        Field::new("attributes", map_of(DataType::Utf8), false),
        Field::new("first_seen", ts(), true),
        Field::new("last_seen", ts(), true),
        i("events"),
        Field::new("events_by_channel", map_of(DataType::Int64), false),
        i("order_count"),
        Field::new("total_spend", money(), false),
        Field::new("avg_order_value", money(), true),
        Field::new("last_order", ts(), true),
        score("rfm_r"),
        score("rfm_f"),
        score("rfm_m"),
        s("rfm"),
        s("preferred_channel"),
        s("preferred_category"),
        s("registered_channel"),
        Field::new("refreshed_at", ts(), false),
    ]))
});

static HISTORY_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("person_id", DataType::Utf8, false),
        Field::new("ordinal", DataType::Int64, false),
        Field::new("attribute", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("at", ts(), false),
        Field::new("event_id", DataType::Utf8, false),
    ]))
});

fn ts_builder(n: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(n).with_timezone(TZ)
}

fn opt_time(t: i64) -> Option<i64> {
    (t != NEVER && t != i64::MAX).then_some(t)
}

const CHUNK: usize = 128 * 1024;

/// Overwrites `profiles` (one row per live person) and `attribute_history`,
/// each built a chunk of rows at a time as the Delta writer pulls it.
pub(crate) async fn write_tables(
    dir: &Path,
    persons: Arc<PersonMap>,
    s: Arc<Scan>,
    d: Arc<Derived>,
) -> Result<()> {
    let live: Vec<u32> = persons
        .live
        .iter()
        .filter(|&o| (o as usize) < s.events.len())
        .collect();
    // One Parquet writer per core, each on its own task over a contiguous
    // range of persons: delta-rs would encode the table on a single task.
    let live = Arc::new(live);
    let parts = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = live.len().div_ceil(parts).max(1);
    let profiles: Vec<tables::BatchIter> = (0..live.len().div_ceil(per))
        .map(|p| {
            let (persons, s, d, live) = (persons.clone(), s.clone(), d.clone(), live.clone());
            let range = p * per..((p + 1) * per).min(live.len());
            let iter = (range.start..range.end).step_by(CHUNK).map(move |at| {
                let chunk = &live[at..(at + CHUNK).min(range.end)];
                profiles_batch(&persons, &s, &d, chunk)
            });
            Box::new(iter) as tables::BatchIter
        })
        .collect();
    // delta-rs encodes each table on one task: the two run side by side.
    let mut history = {
        let path = dir.join(ATTRIBUTE_HISTORY);
        let chunks = s.history.len().div_ceil(CHUNK);
        let history = (0..chunks).map(move |i| {
            let chunk = &s.history[i * CHUNK..((i + 1) * CHUNK).min(s.history.len())];
            history_batch(&persons, &s, chunk)
        });
        crate::AbortOnDrop(tokio::spawn(async move {
            tables::write_stream(&path, HISTORY_SCHEMA.clone(), history, SaveMode::Overwrite).await
        }))
    };
    let profiles =
        tables::overwrite_in_parts(&dir.join(PROFILES), PROFILES_SCHEMA.clone(), profiles).await;
    let history = (&mut history.0)
        .await
        .map_err(|e| Error::Internal(format!("attribute history task: {e}")))?;
    profiles.and(history)
}

fn history_batch(persons: &PersonMap, s: &Scan, chunk: &[AttributeChange]) -> Result<RecordBatch> {
    let n = chunk.len();
    let mut pid = StringBuilder::with_capacity(n, n * 24);
    let mut ord = Int64Builder::with_capacity(n);
    let mut attr = StringBuilder::with_capacity(n, n * 12);
    let mut value = StringBuilder::with_capacity(n, n * 12);
    let mut at = ts_builder(n);
    let mut eid = StringBuilder::with_capacity(n, n * 24);
    for c in chunk {
        let Some(Some(id)) = persons.person_ids.get(c.ordinal as usize) else {
            continue;
        };
        pid.append_value(id);
        ord.append_value(i64::from(c.ordinal));
        attr.append_value(&s.attr_keys.names[c.key as usize]);
        value.append_value(&s.attr_values.names[c.value as usize]);
        at.append_value(c.at);
        eid.append_value(&c.event_id);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(pid.finish()),
        Arc::new(ord.finish()),
        Arc::new(attr.finish()),
        Arc::new(value.finish()),
        Arc::new(at.finish()),
        Arc::new(eid.finish()),
    ];
    Ok(RecordBatch::try_new(HISTORY_SCHEMA.clone(), columns)?)
}

fn profiles_batch(
    persons: &PersonMap,
    s: &Scan,
    d: &Derived,
    chunk: &[u32],
) -> Result<RecordBatch> {
    let n = chunk.len();
    let mut pid = StringBuilder::with_capacity(n, n * 24);
    let mut ord = Int64Builder::with_capacity(n);
    let mut attrs = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let mut first = ts_builder(n);
    let mut last = ts_builder(n);
    let mut events = Int64Builder::with_capacity(n);
    let mut by_channel = MapBuilder::new(None, StringBuilder::new(), Int64Builder::new());
    let mut orders = Int64Builder::with_capacity(n);
    let money_builder = || {
        Decimal128Builder::with_capacity(n).with_precision_and_scale(AMOUNT_PRECISION, AMOUNT_SCALE)
    };
    let mut spend = money_builder()?;
    let mut aov = money_builder()?;
    let mut last_order = ts_builder(n);
    let mut scores = [
        Int32Builder::with_capacity(n),
        Int32Builder::with_capacity(n),
        Int32Builder::with_capacity(n),
    ];
    let mut labels: [StringBuilder; 4] = std::array::from_fn(|_| StringBuilder::new());
    let mut refreshed = ts_builder(n);
    for &o in chunk {
        let p = o as usize;
        pid.append_value(persons.person_ids[p].as_deref().unwrap_or_default());
        ord.append_value(i64::from(o));
        let mut kv: Vec<(&str, &str)> = s.attributes[p]
            .iter()
            .map(|&(k, _, v)| {
                (
                    s.attr_keys.names[k as usize].as_str(),
                    s.attr_values.names[v as usize].as_str(),
                )
            })
            .collect();
        kv.sort_unstable();
        for (k, v) in kv {
            attrs.keys().append_value(k);
            attrs.values().append_value(v);
        }
        attrs.append(true)?;
        first.append_option(opt_time(s.first_seen[p]));
        last.append_option(opt_time(s.last_seen[p]));
        events.append_value(i64::from(s.events[p]));
        let mut ch: Vec<(&str, u32)> = s
            .channel_counts
            .of(p)
            .map(|(c, k)| (s.channels.names[c as usize].as_str(), k))
            .collect();
        ch.sort_unstable();
        for (c, k) in ch {
            by_channel.keys().append_value(c);
            by_channel.values().append_value(i64::from(k));
        }
        by_channel.append(true)?;
        orders.append_value(i64::from(s.orders[p]));
        spend.append_value(i128::from(s.spend[p]));
        aov.append_option(d.number(s, "avg_order_value", p).map(i128::from));
        last_order.append_option(opt_time(s.last_order[p]));
        for (i, name) in ["rfm_r", "rfm_f", "rfm_m"].iter().enumerate() {
            scores[i].append_option(d.number(s, name, p).map(|v| v as i32));
        }
        for (i, name) in [
            "rfm",
            "preferred_channel",
            "preferred_category",
            "registered_channel",
        ]
        .iter()
        .enumerate()
        {
            labels[i].append_option(d.label(s, name, p));
        }
        refreshed.append_value(d.now);
    }
    let [mut r, mut f, mut m] = scores;
    let [mut rfm, mut pc, mut pcat, mut reg] = labels;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(pid.finish()),
        Arc::new(ord.finish()),
        Arc::new(attrs.finish()),
        Arc::new(first.finish()),
        Arc::new(last.finish()),
        Arc::new(events.finish()),
        Arc::new(by_channel.finish()),
        Arc::new(orders.finish()),
        Arc::new(spend.finish()),
        Arc::new(aov.finish()),
        Arc::new(last_order.finish()),
        Arc::new(r.finish()),
        Arc::new(f.finish()),
        Arc::new(m.finish()),
        Arc::new(rfm.finish()),
        Arc::new(pc.finish()),
        Arc::new(pcat.finish()),
        Arc::new(reg.finish()),
        Arc::new(refreshed.finish()),
    ];
    Ok(RecordBatch::try_new(PROFILES_SCHEMA.clone(), columns)?)
}
