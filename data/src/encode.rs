//! Encodings of a generated [`Unit`]: the event file schema ([`file_schema`]) and its Arrow
//! record batches, NDJSON and CSV lines (`event_time` as RFC 3339 in +08:00, nulls omitted /
//! empty), and the truth schema and batches. Files, rotation and writers live in `sink`.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, Float64Builder, Int32Array, Int64Array, StringBuilder, TimestampMillisecondArray,
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
///
/// To read the NDJSON or CSV files with arrow's readers and this schema, enable arrow's
/// `chrono-tz` feature (it parses the zone name `UTC`), or read `event_time` as
/// `Timestamp(Millisecond, Some("+00:00"))`: the text carries explicit `+08:00` offsets.
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

/// The schema of `truth.parquet`: `kind`, `value` (normalised), `true_person`, and
/// `evidence_group`: values of one person with the same group are linked by the
/// person's own events; different groups share no event.
pub(crate) fn truth_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("kind", DataType::Utf8, false),
                Field::new("value", DataType::Utf8, false),
                Field::new("true_person", DataType::Int64, false),
                Field::new("evidence_group", DataType::Int32, false),
            ]))
        })
        .clone()
}

/// Formatted columns of one row, in one reused buffer.
#[derive(Default)]
struct Scratch {
    buf: String,
}

/// Appends `n` zero-padded to `width` digits.
fn push_digits(out: &mut String, n: u32, width: u32) {
    let mut div = 10u32.pow(width - 1);
    while div > 0 {
        out.push(char::from(b'0' + (n / div % 10) as u8));
        div /= 10;
    }
}

/// Writes `n` zero-padded into all of `out`.
fn digits(out: &mut [u8], mut n: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// The text of every column of `row` except `event_time` and `amount` (None there), in
/// schema order; `None` is null.
fn texts<'a>(row: &Row, arena: &'a str, s: &'a mut Scratch) -> [Option<&'a str>; 20] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = &mut s.buf;
    b.clear();
    for i in 0..16 {
        b.push(char::from(HEX[((row.id >> (60 - 4 * i)) & 15) as usize]));
    }
    let id = 0..16;
    let sku = b.len()..b.len() + 10;
    if row.sku != 0 {
        b.push_str("SKU-");
        push_digits(b, row.sku, 6);
    }
    let store = b.len()..b.len() + 4;
    if row.store != 0 {
        b.push('S');
        push_digits(b, u32::from(row.store), 3);
    }
    let campaign = b.len()..b.len() + 10;
    if row.campaign != 0 {
        b.push('C');
        push_digits(b, row.campaign / 100, 6);
        b.push('-');
        push_digits(b, row.campaign % 100, 2);
    }
    let coupon = b.len()..b.len() + 11;
    if row.coupon != 0 {
        b.push_str("CP");
        push_digits(b, row.coupon / 100, 6);
        b.push('-');
        push_digits(b, row.coupon % 100, 2);
    }
    let page_start = b.len();
    match (row.page, row.category) {
        (Page::Product, _) if row.sku != 0 => {
            b.push_str("/p/SKU-");
            push_digits(b, row.sku, 6);
        }
        (Page::Category, Some(c)) | (Page::Product, Some(c)) => {
            b.push_str("/c/");
            b.push_str(c.as_str());
        }
        _ => {}
    }
    let page = page_start..b.len();
    let b: &'a str = b;
    [
        b.get(id),
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
        if row.sku != 0 { b.get(sku) } else { None },
        None,
        (row.amount_cents != 0).then_some("CNY"),
        if row.store != 0 { b.get(store) } else { None },
        if row.campaign != 0 {
            b.get(campaign)
        } else {
            None
        },
        if page.is_empty() { None } else { b.get(page) },
        row.level.map(|l| l.as_str()),
        row.city.map(city_name),
        if row.coupon != 0 { b.get(coupon) } else { None },
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
    let mut scratch = Scratch::default();
    for row in unit.ordered() {
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
    let mut groups = Vec::with_capacity(n);
    for t in &unit.truth {
        kinds.append_value(t.kind.as_str());
        values.append_value(t.value.get(&unit.truth_arena).unwrap_or_default());
        persons.push(t.person as i64);
        groups.push(i32::from(t.group));
    }
    RecordBatch::try_new(
        truth_schema(),
        vec![
            Arc::new(kinds.finish()),
            Arc::new(values.finish()),
            Arc::new(Int64Array::from(persons)),
            Arc::new(Int32Array::from(groups)),
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
            evidence_group: u32::from(t.group),
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
    let mut scratch = Scratch::default();
    for row in unit.ordered() {
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
    let mut scratch = Scratch::default();
    for row in unit.ordered() {
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
