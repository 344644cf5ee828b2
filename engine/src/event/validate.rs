//! Row validation: [`RawEvent`]s in, a stored-schema `RecordBatch` of the good
//! rows out, plus one [`RowError`] per rejected row. A row is appended to the
//! builders only once every field of it has passed, so a bad row never leaves
//! half a row behind.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Decimal128Builder, ListBuilder, MapBuilder, MapFieldNames,
    RecordBatch, StringBuilder, StructBuilder, TimestampMicrosecondBuilder,
};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::normalize::{Normalized, Normalizer};
use super::{
    AMOUNT_PRECISION, AMOUNT_SCALE, AmountInput, RawEvent, RowError, TZ, TimeInput, events_schema,
    identifier_fields,
};
use crate::{Error, Result};

/// Earliest and latest accepted event times (UTC years 2000..2100).
const MIN_MICROS: i64 = 946_684_800_000_000;
const MAX_MICROS: i64 = 4_102_444_800_000_000;
pub(super) const MICROS_PER_DAY: i64 = 86_400_000_000;
const MAX_TEXT: usize = 1024;

/// The good rows of a batch, ready for the WAL, and the verdicts on the rest.
#[derive(Debug)]
pub(crate) struct ValidatedBatch {
    /// Accepted rows, in the stored schema.
    pub batch: RecordBatch,
    /// `xxh3_128(event_id)` per accepted row.
    pub keys: Vec<u128>,
    pub rejected: Vec<RowError>,
    pub dropped: BTreeMap<String, u64>,
}

/// Validates and normalises rows into stored-schema builders.
pub(crate) struct BatchValidator<'n> {
    norm: &'n Normalizer,
    received_at: i64,
    rows: usize,
    keys: Vec<u128>,
    rejected: Vec<RowError>,
    dropped: BTreeMap<String, u64>,
    event_id: StringBuilder,
    event_time: TimestampMicrosecondBuilder,
    received: TimestampMicrosecondBuilder,
    channel: StringBuilder,
    event_type: StringBuilder,
    identifiers: ListBuilder<StructBuilder>,
    typed: [StringBuilder; 6],
    amount: Decimal128Builder,
    properties: MapBuilder<StringBuilder, StringBuilder>,
    event_date: Date32Builder,
    ids: Vec<(Cow<'static, str>, String)>,
}

/// Everything one row turned into, before it is appended.
struct Row<'a> {
    event_id: &'a str,
    micros: i64,
    channel: Cow<'a, str>,
    event_type: Cow<'a, str>,
    cents: Option<i128>,
}

fn reject(row: u64, field: impl Into<String>, value: &str, reason: impl Into<String>) -> RowError {
    let value: String = value.chars().take(80).collect();
    RowError {
        row,
        field: field.into(),
        value,
        reason: reason.into(),
    }
}

impl<'n> BatchValidator<'n> {
    pub fn new(norm: &'n Normalizer, received_at: i64, capacity: usize) -> Self {
        BatchValidator {
            norm,
            received_at,
            rows: 0,
            keys: Vec::with_capacity(capacity),
            rejected: Vec::new(),
            dropped: BTreeMap::new(),
            event_id: StringBuilder::with_capacity(capacity, capacity * 24),
            event_time: TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(TZ),
            received: TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone(TZ),
            channel: StringBuilder::with_capacity(capacity, capacity * 8),
            event_type: StringBuilder::with_capacity(capacity, capacity * 10),
            identifiers: identifiers_builder(capacity),
            typed: std::array::from_fn(|_| StringBuilder::new()),
            amount: Decimal128Builder::with_capacity(capacity)
                .with_precision_and_scale(AMOUNT_PRECISION, AMOUNT_SCALE)
                .unwrap_or_else(|_| unreachable!("18,2 is a valid decimal")),
            properties: properties_builder(),
            event_date: Date32Builder::with_capacity(capacity),
            ids: Vec::with_capacity(4),
        }
    }

    /// Validates one row; rejects it with its reason or appends it.
    pub fn push(&mut self, row: u64, ev: &RawEvent<'_>) {
        match self.check(row, ev) {
            Ok(r) => self.append(ev, r),
            Err(e) => self.rejected.push(e),
        }
    }

    fn check<'a>(&mut self, row: u64, ev: &RawEvent<'a>) -> Result<Row<'a>, RowError> {
        let event_id = check_event_id(row, ev.event_id)?;
        let micros = check_time(row, ev.event_time)?;
        let channel = name_field(row, "channel", ev.channel)?;
        let event_type = name_field(row, "event_type", ev.event_type)?;
        let cents = check_amount(row, ev.amount)?;
        for (name, v) in [
            ("category", ev.category),
            ("sku", ev.sku),
            ("currency", ev.currency),
            ("store_id", ev.store_id),
            ("campaign", ev.campaign),
            ("page", ev.page),
        ] {
            check_text(row, name, v)?;
        }
        check_identifiers(
            self.norm,
            row,
            &ev.identifiers,
            &mut self.ids,
            &mut self.dropped,
        )?;
        Ok(Row {
            event_id,
            micros,
            channel,
            event_type,
            cents,
        })
    }

    fn append(&mut self, ev: &RawEvent<'_>, r: Row<'_>) {
        self.rows += 1;
        self.keys.push(event_key(r.event_id));
        self.event_id.append_value(r.event_id);
        self.event_time.append_value(r.micros);
        self.received.append_value(self.received_at);
        self.channel.append_value(&r.channel);
        self.event_type.append_value(&r.event_type);
        append_identifiers(&mut self.identifiers, &self.ids);
        let typed = [
            ev.category,
            ev.sku,
            ev.currency,
            ev.store_id,
            ev.campaign,
            ev.page,
        ];
        for (b, v) in self.typed.iter_mut().zip(typed) {
            b.append_option(v.map(str::trim).filter(|s| !s.is_empty()));
        }
        self.amount.append_option(r.cents);
        append_properties(&mut self.properties, &ev.properties);
        self.event_date
            .append_value(r.micros.div_euclid(MICROS_PER_DAY) as i32);
    }

    /// Finishes the batch.
    pub fn finish(mut self) -> Result<ValidatedBatch> {
        let [category, sku, currency, store_id, campaign, page] = &mut self.typed;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.received.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.identifiers.finish()),
            Arc::new(category.finish()),
            Arc::new(sku.finish()),
            Arc::new(self.amount.finish()),
            Arc::new(currency.finish()),
            Arc::new(store_id.finish()),
            Arc::new(campaign.finish()),
            Arc::new(page.finish()),
            Arc::new(self.properties.finish()),
            Arc::new(self.event_date.finish()),
        ];
        let batch = RecordBatch::try_new(events_schema(), columns).map_err(|e| {
            Error::Internal(format!("validated batch does not fit the schema: {e}"))
        })?;
        Ok(ValidatedBatch {
            batch,
            keys: self.keys,
            rejected: self.rejected,
            dropped: self.dropped,
        })
    }
}

/// A builder of the stored `identifiers` column.
pub(super) fn identifiers_builder(capacity: usize) -> ListBuilder<StructBuilder> {
    let list_field = match events_schema()
        .field_with_name("identifiers")
        .map(|f| f.data_type().clone())
    {
        Ok(arrow::datatypes::DataType::List(f)) => f,
        _ => unreachable!("identifiers is a list in events_schema"),
    };
    ListBuilder::new(StructBuilder::from_fields(identifier_fields(), capacity))
        .with_field(list_field)
}

/// Appends one row's normalised identifiers.
pub(super) fn append_identifiers(
    list: &mut ListBuilder<StructBuilder>,
    ids: &[(Cow<'static, str>, String)],
) {
    let s = list.values();
    for (k, v) in ids {
        s.field_builder::<StringBuilder>(0)
            .unwrap_or_else(|| unreachable!("kind is a string"))
            .append_value(k);
        s.field_builder::<StringBuilder>(1)
            .unwrap_or_else(|| unreachable!("value is a string"))
            .append_value(v);
        s.append(true);
    }
    list.append(true);
}

/// A builder of the stored `properties` map.
pub(super) fn properties_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    let names = MapFieldNames {
        entry: "key_value".into(),
        key: "key".into(),
        value: "value".into(),
    };
    MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
}

/// Appends one row's properties: a null map when it has none.
pub(super) fn append_properties(
    map: &mut MapBuilder<StringBuilder, StringBuilder>,
    props: &[(&str, &str)],
) {
    for (k, v) in props {
        map.keys().append_value(k);
        map.values().append_value(v);
    }
    map.append(!props.is_empty())
        .unwrap_or_else(|_| unreachable!("keys and values agree"));
}

/// The dedup key of an event id.
pub(crate) fn event_key(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// The trimmed event id, or why the row is rejected.
pub(super) fn check_event_id(row: u64, v: Option<&str>) -> Result<&str, RowError> {
    let event_id = v.map(str::trim).unwrap_or("");
    if event_id.is_empty() {
        return Err(reject(
            row,
            "event_id",
            "",
            "missing: every event needs an event_id",
        ));
    }
    if event_id.len() > 256 || event_id.chars().any(char::is_control) {
        return Err(reject(
            row,
            "event_id",
            event_id,
            "must be at most 256 bytes without control characters",
        ));
    }
    Ok(event_id)
}

/// The event time in µs since the epoch, or why the row is rejected.
pub(super) fn check_time(row: u64, t: TimeInput<'_>) -> Result<i64, RowError> {
    let micros = match t {
        TimeInput::Missing => {
            return Err(reject(row, "event_time", "", "missing"));
        }
        TimeInput::Text(t) => parse_time(t).map_err(|r| reject(row, "event_time", t, r))?,
        TimeInput::Micros(m) => m,
    };
    if !(MIN_MICROS..MAX_MICROS).contains(&micros) {
        return Err(reject(
            row,
            "event_time",
            &micros.to_string(),
            "outside the years 2000..2100 (microseconds since the epoch)",
        ));
    }
    Ok(micros)
}

/// The amount in cents (`None` when absent), or why the row is rejected.
pub(super) fn check_amount(row: u64, a: AmountInput<'_>) -> Result<Option<i128>, RowError> {
    Ok(match a {
        AmountInput::Missing => None,
        AmountInput::Text(t) if t.trim().is_empty() => None,
        AmountInput::Text(t) => {
            Some(parse_decimal(t.trim()).map_err(|r| reject(row, "amount", t, r))?)
        }
        AmountInput::Float(f) if f.is_nan() => None,
        AmountInput::Float(f) => {
            if !f.is_finite() || f.abs() >= 1e15 {
                return Err(reject(row, "amount", &f.to_string(), "out of range"));
            }
            Some((f * 100.0).round() as i128)
        }
        AmountInput::Decimal(v, scale) => Some(rescale(v, scale).ok_or_else(|| {
            reject(
                row,
                "amount",
                &v.to_string(),
                "out of range for decimal(18,2)",
            )
        })?),
    })
}

/// A typed text property: at most [`MAX_TEXT`] bytes.
pub(super) fn check_text(row: u64, name: &str, v: Option<&str>) -> Result<(), RowError> {
    match v {
        Some(v) if v.len() > MAX_TEXT => Err(reject(
            row,
            name,
            v,
            format!("longer than {MAX_TEXT} bytes"),
        )),
        _ => Ok(()),
    }
}

/// Normalises a row's identifiers into `ids` (deduplicated, in order). A
/// row left without one is rejected; the values dropped from an accepted
/// row (blocklisted, empty) are counted by reason in `dropped`.
pub(super) fn check_identifiers(
    norm: &Normalizer,
    row: u64,
    identifiers: &[(&str, &str)],
    ids: &mut Vec<(Cow<'static, str>, String)>,
    dropped: &mut BTreeMap<String, u64>,
) -> Result<(), RowError> {
    ids.clear();
    let mut gone = Vec::new();
    for (i, (kind, value)) in identifiers.iter().enumerate() {
        match norm.normalize(kind, value) {
            Ok(Normalized::Value(k, v)) => {
                if !ids.iter().any(|(k2, v2)| *k2 == k && *v2 == v) {
                    ids.push((k, v));
                }
            }
            Ok(Normalized::Dropped(reason)) => gone.push(reason),
            Err(reason) => {
                let field = if kind.contains(':') || kind.is_empty() {
                    format!("identifiers[{i}]")
                } else {
                    format!("identifiers[{i}] ({kind})")
                };
                return Err(reject(row, field, value, reason));
            }
        }
    }
    if ids.is_empty() {
        let reason = if identifiers.is_empty() {
            "empty: an event needs at least one identifier".to_string()
        } else {
            format!("no usable identifier left ({})", gone.join(", "))
        };
        return Err(reject(row, "identifiers", "", reason));
    }
    for reason in gone {
        *dropped.entry(reason).or_default() += 1;
    }
    Ok(())
}

pub(super) fn name_field<'a>(
    row: u64,
    field: &str,
    v: Option<&'a str>,
) -> Result<Cow<'a, str>, RowError> {
    let v = v.map(str::trim).unwrap_or("");
    if v.is_empty() {
        return Err(reject(row, field, "", "missing"));
    }
    // One pass over the bytes: a byte of a multi-byte character is not
    // ASCII, so it fails the check as its character would.
    let mut upper = false;
    let ok = v.len() <= 64
        && v.bytes().all(|b| {
            upper |= b.is_ascii_uppercase();
            b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
        });
    if !ok {
        return Err(reject(
            row,
            field,
            v,
            "must be at most 64 letters, digits, `_`, `-` or `.`",
        ));
    }
    Ok(if upper {
        Cow::Owned(v.to_ascii_lowercase())
    } else {
        Cow::Borrowed(v)
    })
}

/// Parses an event time: RFC 3339, `YYYY-MM-DD[ T]HH:MM:SS[.f]` (UTC),
/// `YYYY-MM-DD` (midnight UTC), or epoch seconds (10 digits) / milliseconds (13 digits).
pub(crate) fn parse_time(t: &str) -> Result<i64, String> {
    let t = t.trim();
    if t.is_empty() {
        return Err("missing".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = t
            .parse()
            .map_err(|_| "epoch number out of range".to_string())?;
        return match t.len() {
            9..=10 => Ok(n * 1_000_000),
            12..=13 => Ok(n * 1_000),
            15..=16 => Ok(n),
            _ => Err("an epoch time needs 10 (s), 13 (ms) or 16 (µs) digits".into()),
        };
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc).timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y/%m/%d %H:%M:%S%.f",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(dt.and_utc().timestamp_micros());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|dt| dt.and_utc().timestamp_micros())
            .unwrap_or_default());
    }
    Err("not a timestamp (RFC 3339, `YYYY-MM-DD HH:MM:SS`, or epoch s/ms)".into())
}

/// Parses decimal text to cents; more than two decimals is an error, not a rounding.
pub(crate) fn parse_decimal(t: &str) -> Result<i128, String> {
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() && frac.is_empty() || !digits(int) || !digits(frac) {
        return Err("not a decimal number".into());
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > 2 {
        return Err("more than 2 decimal places".into());
    }
    if int.len() > 16 {
        return Err("out of range for decimal(18,2)".into());
    }
    let mut cents: i128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| "not a decimal number")?
    };
    cents *= 100;
    let mut f = frac.to_string();
    while f.len() < 2 {
        f.push('0');
    }
    cents += f.parse::<i128>().map_err(|_| "not a decimal number")?;
    Ok(if neg { -cents } else { cents })
}

fn rescale(v: i128, scale: i8) -> Option<i128> {
    let cents = match scale.cmp(&2) {
        std::cmp::Ordering::Equal => v,
        std::cmp::Ordering::Less => v.checked_mul(10i128.checked_pow((2 - scale) as u32)?)?,
        std::cmp::Ordering::Greater => {
            let d = 10i128.checked_pow((scale - 2) as u32)?;
            // round half away from zero
            (v + v.signum() * d / 2) / d
        }
    };
    (cents.abs() < 10i128.pow(18)).then_some(cents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NormalizeConfig;
    use arrow::array::{Array, AsArray};

    fn good<'a>(id: &'a str) -> RawEvent<'a> {
        RawEvent {
            event_id: Some(id),
            event_time: TimeInput::Text("2026-03-01T20:34:56.789+08:00"),
            channel: Some("POS"),
            event_type: Some("purchase"),
            identifiers: vec![("phone", "+86 138-0013-8000"), ("email", "null")],
            amount: AmountInput::Text("199.9"),
            properties: vec![("coupon_id", "C1")],
            ..Default::default()
        }
    }

    #[test]
    fn rejects_with_row_and_field() {
        let n = Normalizer::new(&NormalizeConfig::default()).unwrap();
        let mut v = BatchValidator::new(&n, 1_700_000_000_000_000, 8);
        v.push(0, &good("a"));
        v.push(
            1,
            &RawEvent {
                event_id: None,
                ..good("b")
            },
        );
        v.push(
            2,
            &RawEvent {
                event_time: TimeInput::Text("yesterday"),
                ..good("c")
            },
        );
        v.push(
            3,
            &RawEvent {
                identifiers: vec![],
                ..good("d")
            },
        );
        v.push(
            4,
            &RawEvent {
                identifiers: vec![("phone", "12345")],
                ..good("e")
            },
        );
        v.push(
            5,
            &RawEvent {
                amount: AmountInput::Text("1.234"),
                ..good("f")
            },
        );
        v.push(
            6,
            &RawEvent {
                identifiers: vec![("phone", "null")],
                ..good("g")
            },
        );
        v.push(
            7,
            &RawEvent {
                channel: Some("a b"),
                ..good("h")
            },
        );
        let out = v.finish().unwrap();
        assert_eq!(out.batch.num_rows(), 1);
        let fields: Vec<(u64, &str)> = out
            .rejected
            .iter()
            .map(|e| (e.row, e.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            vec![
                (1, "event_id"),
                (2, "event_time"),
                (3, "identifiers"),
                (4, "identifiers[0] (phone)"),
                (5, "amount"),
                (6, "identifiers"),
                (7, "channel"),
            ]
        );
        assert_eq!(out.rejected[1].value, "yesterday");
        assert_eq!(out.dropped.get("blocklisted email"), Some(&1));
        let b = &out.batch;
        assert_eq!(b.column(3).as_string::<i32>().value(0), "pos");
        let amount = b
            .column(8)
            .as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!(amount.value(0), 19990);
        let ids = b.column(5).as_list::<i32>().value(0);
        assert_eq!(ids.len(), 1);
        let date = b
            .column(14)
            .as_primitive::<arrow::datatypes::Date32Type>()
            .value(0);
        assert_eq!(date, 20513); // 2026-03-01 (12:34:56 UTC)
    }

    #[test]
    fn names() {
        let name = |v: &str| name_field(3, "channel", Some(v)).map(|c| c.into_owned());
        assert_eq!(name(" POS ").as_deref(), Ok("pos"));
        assert_eq!(name("mini_program-2.0").as_deref(), Ok("mini_program-2.0"));
        assert_eq!(name(&"a".repeat(64)).map(|c| c.len()), Ok(64));
        for bad in ["a b", "门店", "posé", "", "   ", &"a".repeat(65)] {
            let e = name(bad).expect_err(bad);
            assert_eq!((e.row, e.field.as_str()), (3, "channel"), "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000_000_000));
        assert_eq!(parse_time("1700000000123"), Ok(1_700_000_000_123_000));
        assert_eq!(parse_time("2023-11-14 22:13:20"), Ok(1_700_000_000_000_000));
        assert_eq!(
            parse_time("2023-11-15T06:13:20+08:00"),
            Ok(1_700_000_000_000_000)
        );
        assert!(parse_time("14/11/2023").is_err());
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal("199.9"), Ok(19990));
        assert_eq!(parse_decimal("-0.05"), Ok(-5));
        assert_eq!(parse_decimal("12"), Ok(1200));
        assert_eq!(parse_decimal("1.500"), Ok(150));
        assert!(parse_decimal("1.234").is_err());
        assert!(parse_decimal("abc").is_err());
        assert!(parse_decimal(".").is_err());
        assert_eq!(rescale(12345, 3), Some(1235));
        assert_eq!(rescale(5, 0), Some(500));
    }
}
