//! Validation of a record batch column by column (Flight `DoPut`, files):
//! the same verdicts as [`BatchValidator`](super::BatchValidator) row by
//! row, without building a [`RawEvent`](super::RawEvent) per row or copying
//! a value that needs no change.
//!
//! The checks run in the row path's order (event id, time, channel, type,
//! amount, typed texts, identifiers), each over the rows still standing, so
//! a rejected row is named by the same first failing field. A column whose
//! accepted values are already in stored form (trimmed, lower-case names,
//! no empty text) is kept as it arrived; only identifiers (normalised) and
//! properties (a map) are always rebuilt. The rejected rows are filtered out
//! at the end, once per column.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, RecordBatch, StringArray,
    StringBuilder, TimestampMicrosecondArray,
};
use arrow::compute::filter;

use super::input::ArrowInput;
use super::validate::{
    MICROS_PER_DAY, ValidatedBatch, append_identifiers, append_properties, check_amount,
    check_event_id, check_identifiers, check_text, check_time, identifiers_builder, name_field,
    properties_builder,
};
use super::{AMOUNT_PRECISION, AMOUNT_SCALE, Normalizer, RowError, TZ, events_schema};
use crate::{Error, Result};

/// The rows still standing and the verdicts on the others.
struct Verdicts {
    ok: Vec<bool>,
    rejected: Vec<RowError>,
}

impl Verdicts {
    /// Runs `check` on every row still standing; a failure rejects the row.
    fn check(&mut self, mut check: impl FnMut(usize) -> Result<(), RowError>) {
        for (i, ok) in self.ok.iter_mut().enumerate() {
            if *ok && let Err(e) = check(i) {
                *ok = false;
                self.rejected.push(e);
            }
        }
    }
}

/// `a` if every standing row's value is already in stored form, else the
/// stored forms (`None` for a rejected row).
fn kept_or_built<'a>(
    a: &'a StringArray,
    ok: &[bool],
    stored: impl Fn(&'a str) -> Option<Cow<'a, str>>,
) -> ArrayRef {
    let same = (0..a.len()).all(|i| {
        !ok[i] || !a.is_valid(i) || {
            let v = a.value(i);
            matches!(stored(v), Some(Cow::Borrowed(s)) if s.len() == v.len())
        }
    });
    if same {
        return Arc::new(a.clone());
    }
    let mut b = StringBuilder::with_capacity(a.len(), a.value_data().len());
    for (i, &ok) in ok.iter().enumerate() {
        b.append_option((ok && a.is_valid(i)).then(|| stored(a.value(i))).flatten());
    }
    Arc::new(b.finish())
}

fn str_at(a: Option<&StringArray>, i: usize) -> Option<&str> {
    match a {
        Some(a) if a.is_valid(i) => Some(a.value(i)),
        _ => None,
    }
}

fn trimmed(s: &str) -> Option<Cow<'_, str>> {
    Some(Cow::Borrowed(s.trim()))
}

fn nonempty_trimmed(s: &str) -> Option<Cow<'_, str>> {
    let t = s.trim();
    (!t.is_empty()).then_some(Cow::Borrowed(t))
}

/// Validates and normalises every row of `input`.
pub(crate) fn validate(
    norm: &Normalizer,
    received_at: i64,
    input: &ArrowInput,
) -> Result<ValidatedBatch> {
    let n = input.len();
    let mut v = Verdicts {
        ok: vec![true; n],
        rejected: Vec::new(),
    };
    let ids = input.event_ids();
    v.check(|i| check_event_id(i as u64, str_at(ids, i)).map(|_| ()));
    let mut micros = vec![0i64; n];
    v.check(|i| {
        micros[i] = check_time(i as u64, input.time(i))?;
        Ok(())
    });
    v.check(|i| name_field(i as u64, "channel", str_at(input.channels(), i)).map(|_| ()));
    v.check(|i| name_field(i as u64, "event_type", str_at(input.event_types(), i)).map(|_| ()));
    let mut cents: Vec<Option<i128>> = vec![None; n];
    v.check(|i| {
        cents[i] = check_amount(i as u64, input.amount(i))?;
        Ok(())
    });
    const TEXT: [&str; 6] = [
        "category", "sku", "currency", "store_id", "campaign", "page",
    ];
    v.check(|i| {
        for (name, a) in TEXT.iter().zip(input.typed()) {
            check_text(i as u64, name, str_at(a.as_ref(), i))?;
        }
        Ok(())
    });

    // Identifiers last: the rows that pass are the accepted ones, and only
    // they are appended to the list.
    let mut identifiers = identifiers_builder(n);
    let mut dropped = BTreeMap::new();
    let mut normalized = Vec::with_capacity(4);
    let mut raw = Vec::with_capacity(4);
    v.check(|i| {
        raw.clear();
        input.identifiers_into(i, &mut raw);
        check_identifiers(norm, i as u64, &raw, &mut normalized, &mut dropped)?;
        append_identifiers(&mut identifiers, &normalized);
        Ok(())
    });
    let Verdicts { ok, mut rejected } = v;
    rejected.sort_by_key(|e| e.row);
    let accepted = ok.iter().filter(|o| **o).count();

    let mut properties = properties_builder();
    let mut props = Vec::new();
    for i in (0..n).filter(|&i| ok[i]) {
        props.clear();
        input.properties_into(i, &mut props);
        append_properties(&mut properties, &props);
    }

    let empty = StringArray::new_null(n);
    let event_id = kept_or_built(ids.unwrap_or(&empty), &ok, trimmed);
    let name = |field: &'static str| move |s| name_field(0, field, Some(s)).ok();
    let channel = kept_or_built(input.channels().unwrap_or(&empty), &ok, name("channel"));
    let event_type = kept_or_built(
        input.event_types().unwrap_or(&empty),
        &ok,
        name("event_type"),
    );
    let text = |a: &Option<StringArray>| -> ArrayRef {
        match a {
            Some(a) => kept_or_built(a, &ok, nonempty_trimmed),
            None => Arc::new(StringArray::new_null(n)),
        }
    };
    let [category, sku, currency, store_id, campaign, page] = input.typed();
    let event_date = Date32Array::from(
        micros
            .iter()
            .map(|m| m.div_euclid(MICROS_PER_DAY) as i32)
            .collect::<Vec<_>>(),
    );
    let event_time = TimestampMicrosecondArray::from(micros).with_timezone(TZ);
    let amount = Decimal128Array::from(cents)
        .with_precision_and_scale(AMOUNT_PRECISION, AMOUNT_SCALE)
        .map_err(|e| Error::Internal(format!("amount type: {e}")))?;
    // every row, filtered below
    let all_rows: Vec<(usize, ArrayRef)> = vec![
        (0, event_id),
        (1, Arc::new(event_time)),
        (3, channel),
        (4, event_type),
        (6, text(category)),
        (7, text(sku)),
        (8, Arc::new(amount)),
        (9, text(currency)),
        (10, text(store_id)),
        (11, text(campaign)),
        (12, text(page)),
        (14, Arc::new(event_date)),
    ];
    let mask = (accepted < n).then(|| BooleanArray::from(ok.clone()));
    let mut columns: Vec<Option<ArrayRef>> = vec![None; 15];
    for (at, col) in all_rows {
        columns[at] = Some(match &mask {
            Some(m) => filter(&col, m)?,
            None => col,
        });
    }
    columns[2] = Some(Arc::new(
        TimestampMicrosecondArray::from_value(received_at, accepted).with_timezone(TZ),
    ));
    columns[5] = Some(Arc::new(identifiers.finish()));
    columns[13] = Some(Arc::new(properties.finish()));
    let columns: Vec<ArrayRef> = columns.into_iter().flatten().collect();
    let batch = RecordBatch::try_new(events_schema(), columns)
        .map_err(|e| Error::Internal(format!("validated batch does not fit the schema: {e}")))?;
    let event_ids = batch.column(0).as_any().downcast_ref::<StringArray>();
    let keys = match event_ids {
        Some(a) => a.iter().flatten().map(super::event_key).collect(),
        None => Vec::new(),
    };
    Ok(ValidatedBatch {
        batch,
        keys,
        rejected,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::event::{BatchValidator, NormalizeConfig};

    const IDS: [Option<&str>; 7] = [
        Some("e1"),
        Some(" e2 "),
        Some("e3"),
        Some(""),
        None,
        Some("bad\u{7}id"),
        Some("e1"),
    ];
    const TIMES: [Option<&str>; 6] = [
        Some("2026-03-01T20:34:56+08:00"),
        Some("1700000000"),
        Some("yesterday"),
        Some("1899-01-01 00:00:00"),
        None,
        Some(" 2026-01-02 03:04:05 "),
    ];
    const NAMES: [Option<&str>; 6] = [
        Some("pos"),
        Some("POS"),
        Some(" miniprogram "),
        Some("a b"),
        Some(""),
        None,
    ];
    const PHONES: [Option<&str>; 6] = [
        Some("+86 138-0013-8000"),
        Some("8613800138001"),
        Some("12345"),
        Some("00000000000"),
        Some(""),
        None,
    ];
    const EMAILS: [Option<&str>; 5] = [
        Some(" A@Example.com "),
        Some("test@test.com"),
        Some("not-an-email"),
        Some("b@example.com"),
        None,
    ];
    const TEXTS: [Option<&str>; 5] = [
        Some("skincare"),
        Some(" shoes "),
        Some(""),
        Some("  "),
        None,
    ];
    const AMOUNTS: [Option<&str>; 5] = [Some("199.9"), Some("1.234"), Some(" "), Some("x"), None];

    fn strings<T: Copy>(
        pool: &[Option<&'static str>],
        picks: &[T],
        at: impl Fn(T) -> usize,
    ) -> ArrayRef {
        Arc::new(StringArray::from(
            picks
                .iter()
                .map(|&p| pool[at(p) % pool.len()])
                .collect::<Vec<_>>(),
        ))
    }

    /// A batch in the flat file schema from per-row picks into the pools.
    fn batch(rows: &[[u8; 9]], micros: bool, float_amount: bool) -> RecordBatch {
        let col = |k: usize, pool: &[Option<&'static str>]| {
            strings(pool, rows, move |r: [u8; 9]| r[k] as usize)
        };
        let time: ArrayRef = if micros {
            Arc::new(TimestampMicrosecondArray::from(
                rows.iter()
                    .map(|r| [Some(1_780_000_000_000_000i64), Some(5), None][r[1] as usize % 3])
                    .collect::<Vec<_>>(),
            ))
        } else {
            col(1, &TIMES)
        };
        let amount: ArrayRef = if float_amount {
            Arc::new(Float64Array::from(
                rows.iter()
                    .map(|r| [Some(19.99), Some(f64::NAN), Some(1e20), None][r[7] as usize % 4])
                    .collect::<Vec<_>>(),
            ))
        } else {
            col(7, &AMOUNTS)
        };
        RecordBatch::try_from_iter([
            ("event_id", col(0, &IDS)),
            ("event_time", time),
            ("channel", col(2, &NAMES)),
            ("event_type", col(3, &NAMES)),
            ("phone", col(4, &PHONES)),
            ("email", col(5, &EMAILS)),
            ("category", col(6, &TEXTS)),
            ("amount", amount),
            ("coupon", col(8, &TEXTS)),
        ])
        .unwrap()
    }

    proptest! {
        /// The column path gives the row path's batch, keys and verdicts.
        #[test]
        fn columns_agree_with_rows(
            rows in proptest::collection::vec(any::<[u8; 9]>(), 0..40),
            micros: bool,
            float_amount: bool,
        ) {
            let norm = Normalizer::new(&NormalizeConfig::default()).unwrap();
            let input = ArrowInput::new(&batch(&rows, micros, float_amount)).unwrap();
            let received = 1_790_000_000_000_000;
            let mut by_row = BatchValidator::new(&norm, received, input.len());
            for i in 0..input.len() {
                by_row.push(i as u64, &input.row(i));
            }
            let by_row = by_row.finish().unwrap();
            let by_column = validate(&norm, received, &input).unwrap();
            prop_assert_eq!(&by_column.rejected, &by_row.rejected);
            prop_assert_eq!(&by_column.dropped, &by_row.dropped);
            prop_assert_eq!(&by_column.keys, &by_row.keys);
            prop_assert_eq!(by_column.batch.num_rows(), by_row.batch.num_rows());
            for (c, f) in events_schema().fields().iter().enumerate() {
                prop_assert_eq!(
                    by_column.batch.column(c).as_ref(),
                    by_row.batch.column(c).as_ref(),
                    "column {}", f.name()
                );
            }
        }
    }

    /// Values already in stored form are kept as they arrived, not copied.
    #[test]
    fn clean_columns_are_kept() {
        let norm = Normalizer::new(&NormalizeConfig::default()).unwrap();
        let b = batch(
            &[[0, 0, 0, 0, 0, 0, 0, 0, 0], [2, 1, 0, 0, 1, 3, 4, 0, 0]],
            false,
            false,
        );
        let input = ArrowInput::new(&b).unwrap();
        let out = validate(&norm, 1, &input).unwrap();
        assert_eq!(out.batch.num_rows(), 2, "{:?}", out.rejected);
        let kept = |name: &str| {
            let at = b.schema().index_of(name).unwrap();
            let stored = out.batch.column_by_name(name).unwrap();
            b.column(at).to_data().buffers()[1].as_ptr() == stored.to_data().buffers()[1].as_ptr()
        };
        assert!(kept("event_id"));
        assert!(kept("channel"));
        assert!(kept("category"));
    }
}
