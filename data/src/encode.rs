//! Encodings of a generated [`Unit`]: the event file schema ([`file_schema`]) and its Arrow
//! record batches, NDJSON and CSV lines (`event_time` as RFC 3339 in +08:00, nulls omitted /
//! empty), and the truth schema and batches. Files, rotation and writers live in `sink`.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, Float64Builder, Int64Array, StringBuilder, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use crate::activity::{city_name, civil_from_days};
use crate::event::{Page, Row, Unit};
use crate::population::{DAY_MS, TZ_OFFSET_MS};

/// Column names of the event files, in order.
pub(crate) const COLUMNS: [&str; 20] = [
    "event_id",
    "event_time",
    "channel",
    "event_type",
    "phone",
    "email",
    "unionid",
    "openid",
    "device",
    "member",
    "category",
    "sku",
    "amount",
    "currency",
    "store_id",
    "campaign",
    "page",
    "member_level",
    "city",
    "coupon_id",
];
const TIME: usize = 1;
const AMOUNT: usize = 12;

/// The schema of the event files (and of [`crate::generate_batches`]): `event_id`,
/// `event_time` (ms, UTC), `channel` and `event_type` are never null; everything else is
/// nullable Utf8 except `amount` (Float64, CNY, two decimals).
pub fn file_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let fields: Vec<Field> = COLUMNS
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let data_type = match i {
                        TIME => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                        AMOUNT => DataType::Float64,
                        _ => DataType::Utf8,
                    };
                    Field::new(*name, data_type, i >= 4)
                })
                .collect();
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// The schema of `truth.parquet`: `kind`, `value` (normalised), `true_person`.
pub(crate) fn truth_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("kind", DataType::Utf8, false),
                Field::new("value", DataType::Utf8, false),
                Field::new("true_person", DataType::Int64, false),
            ]))
        })
        .clone()
}

/// Stack buffers for the formatted columns of one row.
struct Scratch {
    id: [u8; 16],
    sku: [u8; 10],
    store: [u8; 4],
    campaign: [u8; 10],
    page: [u8; 16],
    page_len: usize,
    coupon: [u8; 11],
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            id: [b'0'; 16],
            sku: *b"SKU-000000",
            store: *b"S000",
            campaign: *b"C000000-00",
            page: [b'/'; 16],
            page_len: 0,
            coupon: *b"CP000000-00",
        }
    }
}

/// Writes `n` zero-padded into all of `out`.
fn digits(out: &mut [u8], mut n: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

fn ascii(b: &[u8]) -> &str {
    // Scratch buffers only ever hold ASCII.
    std::str::from_utf8(b).unwrap_or("")
}

/// The text of every column of `row` except `event_time` and `amount` (None there), in
/// schema order; `None` is null.
fn texts<'a>(row: &Row, arena: &'a str, s: &'a mut Scratch) -> [Option<&'a str>; 20] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, slot) in s.id.iter_mut().enumerate() {
        *slot = HEX[((row.id >> (60 - 4 * i)) & 15) as usize];
    }
    if row.sku != 0 {
        digits(&mut s.sku[4..], row.sku);
    }
    if row.store != 0 {
        digits(&mut s.store[1..], u32::from(row.store));
    }
    if row.campaign != 0 {
        digits(&mut s.campaign[1..7], row.campaign / 100);
        digits(&mut s.campaign[8..], row.campaign % 100);
    }
    if row.coupon != 0 {
        digits(&mut s.coupon[2..8], row.coupon / 100);
        digits(&mut s.coupon[9..], row.coupon % 100);
    }
    s.page_len = 0;
    match (row.page, row.category) {
        (Page::Product, _) if row.sku != 0 => {
            s.page[..3].copy_from_slice(b"/p/");
            s.page[3..13].copy_from_slice(&s.sku);
            s.page_len = 13;
        }
        (Page::Category, Some(c)) | (Page::Product, Some(c)) => {
            let name = c.as_str().as_bytes();
            s.page[..3].copy_from_slice(b"/c/");
            s.page[3..3 + name.len()].copy_from_slice(name);
            s.page_len = 3 + name.len();
        }
        _ => {}
    }
    let s: &'a Scratch = s;
    [
        Some(ascii(&s.id)),
        None,
        Some(row.channel.as_str()),
        Some(row.event_type.as_str()),
        row.phone.get(arena),
        row.email.get(arena),
        row.unionid.get(arena),
        row.openid.get(arena),
        row.device.get(arena),
        row.member.get(arena),
        row.category.map(|c| c.as_str()),
        (row.sku != 0).then(|| ascii(&s.sku)),
        None,
        (row.amount_cents != 0).then_some("CNY"),
        (row.store != 0).then(|| ascii(&s.store)),
        (row.campaign != 0).then(|| ascii(&s.campaign)),
        (s.page_len != 0).then(|| ascii(&s.page[..s.page_len])),
        row.level.map(|l| l.as_str()),
        row.city.map(city_name),
        (row.coupon != 0).then(|| ascii(&s.coupon)),
    ]
}

/// The unit's events as one record batch in [`file_schema`].
pub(crate) fn event_batch(unit: &Unit) -> Result<RecordBatch, ArrowError> {
    // Typical bytes per value, for builder capacity.
    const WIDTH: [usize; 20] = [
        16, 0, 8, 10, 8, 6, 18, 30, 14, 4, 6, 6, 0, 2, 2, 2, 8, 1, 1, 1,
    ];
    let n = unit.rows.len();
    let mut builders: Vec<StringBuilder> = WIDTH
        .iter()
        .map(|w| StringBuilder::with_capacity(n, n * w))
        .collect();
    let mut times = Vec::with_capacity(n);
    let mut amounts = Float64Builder::with_capacity(n);
    let mut scratch = Scratch::new();
    for row in &unit.rows {
        times.push(row.time);
        if row.amount_cents == 0 {
            amounts.append_null();
        } else {
            amounts.append_value(f64::from(row.amount_cents) / 100.0);
        }
        let texts = texts(row, &unit.arena, &mut scratch);
        for (i, (b, t)) in builders.iter_mut().zip(texts).enumerate() {
            if i != TIME && i != AMOUNT {
                b.append_option(t);
            }
        }
    }
    let times: ArrayRef = Arc::new(TimestampMillisecondArray::from(times).with_timezone("UTC"));
    let amounts: ArrayRef = Arc::new(amounts.finish());
    let columns: Vec<ArrayRef> = builders
        .iter_mut()
        .enumerate()
        .map(|(i, b)| -> ArrayRef {
            match i {
                TIME => times.clone(),
                AMOUNT => amounts.clone(),
                _ => Arc::new(b.finish()),
            }
        })
        .collect();
    RecordBatch::try_new(file_schema(), columns)
}

/// The unit's truth rows as one record batch in the truth schema.
pub(crate) fn truth_batch(unit: &Unit) -> Result<RecordBatch, ArrowError> {
    let n = unit.truth.len();
    let mut kinds = StringBuilder::with_capacity(n, n * 6);
    let mut values = StringBuilder::with_capacity(n, unit.truth_arena.len());
    let mut persons = Vec::with_capacity(n);
    for t in &unit.truth {
        kinds.append_value(t.kind.as_str());
        values.append_value(t.value.get(&unit.truth_arena).unwrap_or_default());
        persons.push(t.person as i64);
    }
    RecordBatch::try_new(
        truth_schema(),
        vec![
            Arc::new(kinds.finish()),
            Arc::new(values.finish()),
            Arc::new(Int64Array::from(persons)),
        ],
    )
}

/// The unit's truth rows as public [`crate::TruthRow`]s.
pub(crate) fn truth_rows(unit: &Unit) -> Vec<crate::TruthRow> {
    unit.truth
        .iter()
        .map(|t| crate::TruthRow {
            kind: t.kind.as_str().to_owned(),
            value: t
                .value
                .get(&unit.truth_arena)
                .unwrap_or_default()
                .to_owned(),
            true_person: t.person,
        })
        .collect()
}

/// Appends `t` (UTC ms) as RFC 3339 in China Standard Time: `2026-03-01T20:34:56.789+08:00`.
pub(crate) fn push_time(out: &mut Vec<u8>, t: i64) {
    let local = t + TZ_OFFSET_MS;
    let (y, m, d) = civil_from_days(local.div_euclid(DAY_MS));
    let ms = local.rem_euclid(DAY_MS) as u32;
    let mut b = *b"0000-00-00T00:00:00.000+08:00";
    digits(&mut b[0..4], y.clamp(0, 9999) as u32);
    digits(&mut b[5..7], m);
    digits(&mut b[8..10], d);
    digits(&mut b[11..13], ms / 3_600_000);
    digits(&mut b[14..16], ms / 60_000 % 60);
    digits(&mut b[17..19], ms / 1000 % 60);
    digits(&mut b[20..23], ms % 1000);
    out.extend_from_slice(&b);
}

fn push_amount(out: &mut Vec<u8>, cents: u32) {
    let mut buf = [0u8; 10];
    let mut n = cents / 100;
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
    out.push(b'.');
    let mut frac = [0u8; 2];
    digits(&mut frac, cents % 100);
    out.extend_from_slice(&frac);
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Appends the unit's events as NDJSON lines (nulls omitted); `ends` gets each line's end.
pub(crate) fn write_ndjson(unit: &Unit, out: &mut Vec<u8>, ends: &mut Vec<usize>) {
    let mut scratch = Scratch::new();
    for row in &unit.rows {
        let texts = texts(row, &unit.arena, &mut scratch);
        out.push(b'{');
        for (i, (name, text)) in COLUMNS.iter().zip(texts).enumerate() {
            let value_at = |out: &mut Vec<u8>| {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
            };
            match i {
                TIME => {
                    value_at(out);
                    out.push(b'"');
                    push_time(out, row.time);
                    out.push(b'"');
                }
                AMOUNT if row.amount_cents != 0 => {
                    value_at(out);
                    push_amount(out, row.amount_cents);
                }
                _ => {
                    if let Some(t) = text {
                        value_at(out);
                        push_json_str(out, t);
                    }
                }
            }
        }
        out.extend_from_slice(b"}\n");
        ends.push(out.len());
    }
}

/// The CSV header line.
pub(crate) fn csv_header() -> String {
    let mut h = COLUMNS.join(",");
    h.push('\n');
    h
}

fn push_csv_field(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let quote = b.iter().any(|&c| matches!(c, b',' | b'"' | b'\n' | b'\r'))
        || b.first() == Some(&b' ')
        || b.last() == Some(&b' ');
    if !quote {
        out.extend_from_slice(b);
        return;
    }
    out.push(b'"');
    for &c in b {
        if c == b'"' {
            out.push(b'"');
        }
        out.push(c);
    }
    out.push(b'"');
}

/// Appends the unit's events as CSV records (no header; empty for null).
pub(crate) fn write_csv(unit: &Unit, out: &mut Vec<u8>, ends: &mut Vec<usize>) {
    let mut scratch = Scratch::new();
    for row in &unit.rows {
        let texts = texts(row, &unit.arena, &mut scratch);
        for (i, text) in texts.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match i {
                TIME => push_time(out, row.time),
                AMOUNT if row.amount_cents != 0 => push_amount(out, row.amount_cents),
                _ => {
                    if let Some(t) = text {
                        push_csv_field(out, t);
                    }
                }
            }
        }
        out.push(b'\n');
        ends.push(out.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_rfc3339_in_cst() {
        // 2026-03-01T12:34:56.789Z is 20:34:56.789 in Shanghai.
        let t = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:34:56.789Z")
            .unwrap()
            .timestamp_millis();
        let mut out = Vec::new();
        push_time(&mut out, t);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-03-01T20:34:56.789+08:00"
        );
    }

    #[test]
    fn amounts_have_two_decimals() {
        let mut out = Vec::new();
        push_amount(&mut out, 1_005);
        out.push(b' ');
        push_amount(&mut out, 300_000);
        assert_eq!(String::from_utf8(out).unwrap(), "10.05 3000.00");
    }
}
